"""Parsing and checking what a user asks for: --gpus, durations, labels, names, disk, cloud."""

import json
from datetime import timedelta

import pytest

from deepops_infra.durations import format_duration, parse_duration
from deepops_infra.errors import UserError
from deepops_infra.request import (
    GpuSpec,
    MachineRequest,
    check_cloud,
    check_disk,
    check_label,
    check_name,
    parse_idle_timeout,
    parse_ttl,
)

# --- GpuSpec.parse ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "model", "count"),
    [
        ("A100:8", "A100", 8),
        ("H100", "H100", 1),
        ("h100", "H100", 1),
        ("a100-80gb:2", "A100-80GB", 2),
        ("a100_80gb:2", "A100-80GB", 2),
        ("L4:16", "L4", 16),
        (" T4:3 ", "T4", 3),
        ("0", None, 0),
        ("2", None, 2),
        ("16", None, 16),
    ],
)
def test_gpus_accepted(text, model, count):
    assert GpuSpec.parse(text) == GpuSpec(model, count)


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        (GpuSpec("A100", 8), "A100:8"),
        (GpuSpec("H100", 1), "H100:1"),
        (GpuSpec(None, 0), "0"),
        (GpuSpec(None, 2), "2"),
    ],
)
def test_gpus_str_parses_back(spec, text):
    assert str(spec) == text
    assert GpuSpec.parse(text) == spec


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("FOO:1", "unknown GPU model 'FOO'"),
        ("A100:0", "count '0' must be a whole number from 1 to 16"),
        ("A100:-1", "count '-1' must be a whole number from 1 to 16"),
        ("A100:x", "count 'x' must be a whole number from 1 to 16"),
        (":2", "':2' is malformed"),
        ("", "'' is malformed"),
        ("A100:1:2", "'A100:1:2' is malformed"),
        ("A100 :2", "'A100 :2' is malformed"),
    ],
)
def test_gpus_rejected_with_what_is_allowed(text, expected):
    with pytest.raises(UserError) as info:
        GpuSpec.parse(text)
    message = str(info.value)
    assert message.startswith("--gpus: ")
    assert expected in message
    # every rejection tells the user what to write instead
    assert "--gpus 0" in message or "0 for CPU only" in message


@pytest.mark.parametrize("text", ["FOO:1", ":2", ""])
def test_gpus_malformed_or_unknown_lists_models(text):
    with pytest.raises(UserError) as info:
        GpuSpec.parse(text)
    message = str(info.value)
    assert "MODEL:COUNT (e.g. A100:8)" in message
    assert "models: B200, H200, H100," in message
    assert "A100-80GB" in message


@pytest.mark.parametrize("text", ["A100:17", "17"])
def test_gpus_more_than_a_machine_has(text):
    with pytest.raises(UserError) as info:
        GpuSpec.parse(text)
    assert str(info.value) == "--gpus: 17 GPUs is more than one machine has (at most 16)"


def test_gpus_superscript_count_is_a_user_error():
    with pytest.raises(UserError, match="--gpus"):
        GpuSpec.parse("A100:²")


# --- durations -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30m", 1800),
        ("8h", 28800),
        ("2d", 172800),
        ("1h30m", 5400),
        ("90s", 90),
        ("1w", 604800),
        ("8H", 28800),
        (" 45m ", 2700),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text, "--ttl") == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["-1h", "8", "8 hours", "abc", "", "1.5h", "h"])
def test_parse_duration_rejects_non_durations(text):
    with pytest.raises(UserError) as info:
        parse_duration(text, "--ttl")
    assert str(info.value) == (
        f"--ttl: {text!r} is not a duration; use a number with a unit s, m, h, d or w, e.g. 30m, 8h, 2d or 1h30m"
    )


@pytest.mark.parametrize("text", ["0m", "0h0s"])
def test_parse_duration_rejects_zero(text):
    with pytest.raises(UserError) as info:
        parse_duration(text, "--idle-timeout")
    assert str(info.value) == f"--idle-timeout: {text!r} must be longer than zero, e.g. 30m or 8h"


def test_ttl_and_idle_timeout_name_their_option():
    assert parse_ttl("2h") == timedelta(hours=2)
    assert parse_idle_timeout("15m") == timedelta(minutes=15)
    with pytest.raises(UserError, match=r"^--ttl: 'soon'"):
        parse_ttl("soon")
    with pytest.raises(UserError, match=r"^--idle-timeout: 'soon'"):
        parse_idle_timeout("soon")


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(hours=1, minutes=30), "1h30m"),
        (timedelta(minutes=30), "30m"),
        (timedelta(hours=8), "8h"),
        (timedelta(days=2), "2d"),
        (timedelta(seconds=90), "1m30s"),
        (timedelta(days=1, hours=2, minutes=3), "1d2h3m"),
        (timedelta(0), "0s"),
        (timedelta(seconds=-90), "-1m30s"),
        (timedelta(minutes=10, seconds=5), "10m"),  # seconds only shown under ten minutes
        (3725.0, "1h2m"),
    ],
)
def test_format_duration(delta, text):
    assert format_duration(delta) == text


@pytest.mark.parametrize("text", ["30m", "8h", "2d", "1h30m", "1m30s", "1d2h3m", "9m59s"])
def test_format_duration_round_trips(text):
    delta = parse_duration(text)
    assert format_duration(delta) == text
    assert parse_duration(format_duration(delta)) == delta


@pytest.mark.parametrize(("text", "canonical"), [("90s", "1m30s"), ("120m", "2h"), ("1w", "7d"), ("24h", "1d")])
def test_format_duration_is_canonical(text, canonical):
    assert format_duration(parse_duration(text)) == canonical


# --- labels, names, disk, cloud --------------------------------------------------------------


@pytest.mark.parametrize("value", ["ml", "team-a", "proj_1.v2", "0abc", "a" * 63])
def test_check_label_accepts(value):
    assert check_label("--team", value) == value


@pytest.mark.parametrize("value", ["ML", "-team", "_x", "", "a b", "team/x", "a" * 64, "é"])
def test_check_label_rejects(value):
    with pytest.raises(UserError) as info:
        check_label("--project", value)
    assert str(info.value) == (
        f"--project: {value!r} is not allowed; use lower-case letters, digits, '-', '_' "
        "and '.', starting with a letter or digit (at most 63)"
    )


@pytest.mark.parametrize("value", [None, "box", "my-box-2", "a" * 39])
def test_check_name_accepts(value):
    assert check_name(value) == value


@pytest.mark.parametrize("value", ["Box", "-box", "my_box", "my.box", "", "a" * 40])
def test_check_name_rejects(value):
    with pytest.raises(UserError) as info:
        check_name(value)
    assert str(info.value) == (
        f"--name: {value!r} is not allowed; use lower-case letters, digits and '-', "
        "starting with a letter or digit (at most 39)"
    )


@pytest.mark.parametrize("check", [lambda v: check_label("--team", v), check_name], ids=["label", "name"])
def test_trailing_newline_is_rejected(check):
    with pytest.raises(UserError):
        check("box\n")


@pytest.mark.parametrize("value", [None, 1, 100, 65536])
def test_check_disk_accepts(value):
    assert check_disk(value) == value


@pytest.mark.parametrize("value", [0, -5, 65537])
def test_check_disk_rejects(value):
    with pytest.raises(UserError) as info:
        check_disk(value)
    assert str(info.value) == f"--disk: {value} GB is out of range; give 1 to 65536 (GB)"


@pytest.mark.parametrize("cloud", ["onprem", "aws", "gcp", "azure", "auto"])
def test_check_cloud_accepts(cloud):
    assert check_cloud(cloud) == cloud


@pytest.mark.parametrize("cloud", ["AWS", "ibm", ""])
def test_check_cloud_rejects(cloud):
    with pytest.raises(UserError) as info:
        check_cloud(cloud)
    assert str(info.value) == f"--cloud: unknown cloud {cloud!r}; choose one of onprem, aws, gcp, azure, auto"


# --- MachineRequest --------------------------------------------------------------------------


def _request(**changes) -> MachineRequest:
    fields = {
        "gpus": GpuSpec("A100-80GB", 2),
        "cloud": "onprem",
        "region": None,
        "host": "gpu1",
        "image": "pytorch",
        "spot": False,
        "ttl": timedelta(hours=8),
        "idle_timeout": timedelta(minutes=90),
        "disk_gb": 200,
        "owner": "alice",
        "team": "ml",
        "project": "llm",
        "name": "train-1",
    }
    return MachineRequest(**(fields | changes))


def test_request_to_json():
    assert _request().to_json() == {
        "gpus": "A100-80GB:2",
        "cloud": "onprem",
        "region": None,
        "host": "gpu1",
        "image": "pytorch",
        "spot": False,
        "ttl": 28800,
        "idle_timeout": 5400,
        "disk_gb": 200,
        "owner": "alice",
        "team": "ml",
        "project": "llm",
        "name": "train-1",
    }


@pytest.mark.parametrize(
    "request_",
    [
        _request(),
        _request(gpus=GpuSpec(None, 0), cloud="aws", region="us-east-1", host=None, spot=True, disk_gb=None, name=None),
        _request(gpus=GpuSpec(None, 4), ttl=timedelta(days=2), idle_timeout=timedelta(seconds=45)),
    ],
)
def test_request_json_round_trip(request_):
    # through real JSON text, the way the ledger stores it
    stored = json.loads(json.dumps(request_.to_json()))
    assert MachineRequest.from_json(stored) == request_
