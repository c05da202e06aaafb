"""GPU model matching, prices and costs, delivery checks, and the machine lifecycle."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from deepops_infra import states
from deepops_infra.accelerators import ACCELERATORS, canonical_model, device_matches, model_of
from deepops_infra.images import Image, OnpremPin
from deepops_infra.pricing import Price, cost, dollars, onprem_price, price_text
from deepops_infra.validation import check_gpus, check_manifest

# --- accelerators ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "memory_mib", "model"),
    [
        ("NVIDIA A100-SXM4-80GB", 81920, "A100-80GB"),
        ("NVIDIA A100-SXM4-40GB", 40960, "A100-40GB"),
        ("NVIDIA A100-PCIE-40GB", 40960, "A100-40GB"),
        ("NVIDIA H100 80GB HBM3", 81559, "H100-80GB"),
        ("NVIDIA H100 NVL", 95830, "H100"),  # 94 GB: not the 80 GB part
        ("NVIDIA H200", 143771, "H200"),
        ("NVIDIA GH200 480GB", 97871, "GH200"),
        ("NVIDIA A10G", 23028, "A10G"),
        ("NVIDIA A10", 23028, "A10"),
        ("NVIDIA L40S", 46068, "L40S"),
        ("NVIDIA L40", 46068, "L40"),
        ("NVIDIA L4", 23034, "L4"),
        ("Tesla T4", 15360, "T4"),
        ("Tesla V100-SXM2-16GB", 16384, "V100"),
        ("Quadro RTX 6000", 24576, "RTX6000"),
        ("NVIDIA GeForce RTX 4090", 24564, None),
    ],
)
def test_model_of(name, memory_mib, model):
    assert model_of(name, memory_mib) == model


@pytest.mark.parametrize(
    ("model", "name", "memory_mib", "expected"),
    [
        ("A100", "NVIDIA A100-SXM4-80GB", 81920, True),
        ("A100-80GB", "NVIDIA A100-SXM4-80GB", 81920, True),
        ("A100-40GB", "NVIDIA A100-SXM4-80GB", 81920, False),
        ("A100-40GB", "NVIDIA A100-SXM4-40GB", 40960, True),
        ("A100-80GB", "NVIDIA A100-SXM4-40GB", 40960, False),
        ("H100", "NVIDIA H100 80GB HBM3", 81559, True),
        ("H100-80GB", "NVIDIA H100 80GB HBM3", 81559, True),
        ("A10", "NVIDIA A10G", 23028, False),
        ("A100", "NVIDIA A10G", 23028, False),
        ("A10G", "NVIDIA A10G", 23028, True),
        ("A10", "NVIDIA A100-SXM4-40GB", 40960, False),
        ("H200", "NVIDIA GH200 480GB", 97871, False),
        ("GH200", "NVIDIA GH200 480GB", 97871, True),
        ("L40", "NVIDIA L40S", 46068, False),
        ("L4", "NVIDIA L40S", 46068, False),
        ("L40S", "NVIDIA L40S", 46068, True),
        ("T4", "Tesla T4", 15360, True),
        ("T4", "Tesla T4", None, True),  # memory unknown: the name decides
        ("H100", "Tesla T4", 15360, False),
    ],
)
def test_device_matches(model, name, memory_mib, expected):
    assert device_matches(model, name, memory_mib) is expected


def test_memory_tolerance_is_ten_percent():
    # A100-40GB: 40 GB +- 4 GB, i.e. 36864 to 45056 MiB
    assert device_matches("A100-40GB", "NVIDIA A100-PCIE-40GB", 36864)
    assert device_matches("A100-40GB", "NVIDIA A100-PCIE-40GB", 45056)
    assert not device_matches("A100-40GB", "NVIDIA A100-PCIE-40GB", 36863)
    assert not device_matches("A100-40GB", "NVIDIA A100-PCIE-40GB", 45057)


def test_model_of_without_memory_does_not_guess_the_size():
    assert model_of("NVIDIA A100-SXM4-80GB", None) in ("A100", "A100-80GB")


def test_declared_model_name_does_not_match_another_size():
    assert device_matches("A100-40GB", "A100-80GB", None) is False


@pytest.mark.parametrize(
    ("text", "model"),
    [("a100", "A100"), ("A100-80gb", "A100-80GB"), ("h100_80gb", "H100-80GB"), (" l40s ", "L40S"), ("A1000", None)],
)
def test_canonical_model(text, model):
    assert canonical_model(text) == model


def test_every_model_is_its_own_canonical_name():
    assert all(canonical_model(name) == name for name in ACCELERATORS)


# --- pricing ---------------------------------------------------------------------------------

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def test_onprem_price():
    price = onprem_price(host_hour=0.05, gpu_hour=2.0, gpus=1)
    assert price.per_hour == Decimal("2.05")
    assert price.parts == {"host_hour": "0.05", "gpu_hour": "2.0", "gpus": 1}
    assert price.to_json() == {"per_hour": "2.05", "host_hour": "0.05", "gpu_hour": "2.0", "gpus": 1}


@pytest.mark.parametrize(
    ("host_hour", "gpu_hour", "gpus", "per_hour"),
    [
        (0.05, 1.0, 8, "8.05"),
        (0.1, 2.5, 0, "0.1"),  # CPU only: the host rate alone
        (0.1, 0.2, 3, "0.7"),  # exact decimals, not 0.7000000000000001
    ],
)
def test_onprem_price_is_exact(host_hour, gpu_hour, gpus, per_hour):
    assert onprem_price(host_hour, gpu_hour, gpus).per_hour == Decimal(per_hour)


@pytest.mark.parametrize(
    ("per_hour", "elapsed", "expected"),
    [
        ("2.05", timedelta(minutes=90), "3.075000"),  # 2.05 * 1.5
        ("8.05", timedelta(hours=10), "80.500000"),
        ("3600", timedelta(milliseconds=1), "0.001000"),  # $1 a second
        ("3600", timedelta(microseconds=1), "0.000001"),
        ("1.8", timedelta(seconds=1), "0.000500"),  # 1.8 / 3600
        ("0.0018", timedelta(seconds=1), "0.000001"),  # 0.0000005 rounds half up
        ("0.0017", timedelta(seconds=1), "0.000000"),  # 0.000000472 rounds down
        ("2.05", timedelta(0), "0.000000"),
    ],
)
def test_cost(per_hour, elapsed, expected):
    result = cost(Decimal(per_hour), T0, T0 + elapsed)
    assert result == Decimal(expected)
    assert str(result) == expected  # always to the micro-dollar


def test_cost_of_negative_stretch_is_zero():
    assert cost(Decimal("2.05"), T0, T0 - timedelta(hours=1)) == Decimal("0")


@pytest.mark.parametrize(
    ("per_hour", "text"),
    [
        ("0.050000", "$0.05"),
        ("2.05", "$2.05"),
        ("2", "$2.00"),
        ("2.5", "$2.50"),
        ("10", "$10.00"),
        ("100.000", "$100.00"),
        ("0.125", "$0.125"),
        ("0", "$0.00"),
    ],
)
def test_price_text(per_hour, text):
    assert price_text(Decimal(per_hour)) == text


@pytest.mark.parametrize(
    ("amount", "text"),
    [
        ("3.075000", "$3.08"),  # half up
        ("3.074999", "$3.07"),
        ("80.5", "$80.50"),
        ("0.01", "$0.01"),
        ("0.004", "$0.004"),  # under a cent: shown, not rounded to $0.00
        ("0", "$0.00"),
    ],
)
def test_dollars(amount, text):
    assert dollars(Decimal(amount)) == text


def test_price_default_parts():
    assert Price(Decimal("1.5")).to_json() == {"per_hour": "1.5"}


# --- validation ------------------------------------------------------------------------------


def image(needs: str = ">=3.8", **versions: str) -> Image:
    """An image whose on-prem lock needs Python `needs` and which promises `versions`."""
    pin = OnpremPin(lock_path=Path("/nonexistent/lock.txt"), sha256="0" * 64, python=needs)
    return Image(name="test", description="", gpu_required=False, versions=versions, onprem=pin)


def test_manifest_matches():
    img = image("==3.11", torch="2.13.0", cuda="13.0", python="3.11")
    checks = check_manifest(img, {"python": "3.11.9", "packages": {"torch": "2.13.0"}})
    assert checks == [
        {"name": "python", "passed": True, "detail": "found 3.11.9, image needs ==3.11"},
        {"name": "package torch", "passed": True, "detail": "found 2.13.0, image pins 2.13.0"},
    ]


def test_manifest_mismatch():
    img = image(">=3.8", packaging="24.2", PyYAML="6.0.2")
    checks = check_manifest(img, {"python": "3.6.9", "packages": {"packaging": "23.0"}})
    assert checks == [
        {"name": "python", "passed": False, "detail": "found 3.6.9, image needs >=3.8"},
        {"name": "package packaging", "passed": False, "detail": "found 23.0, image pins 24.2"},
        {"name": "package PyYAML", "passed": False, "detail": "found none, image pins 6.0.2"},
    ]


def test_manifest_package_names_are_looked_up_lower_case():
    checks = check_manifest(image(PyYAML="6.0.2"), {"python": "3.12.1", "packages": {"pyyaml": "6.0.2"}})
    assert [c["passed"] for c in checks] == [True, True]


@pytest.mark.parametrize(
    ("python", "spec", "passed"),
    [
        ("3.11.4", "==3.11", True),
        ("3.12.0", "==3.11", False),
        ("3.8.0", ">=3.8", True),
        ("3.7.17", ">=3.8", False),
        ("3.10.2", ">=3.8,<3.12", True),
        ("3.12.0", ">=3.8,<3.12", False),
        ("", ">=3.8", False),
    ],
)
def test_manifest_python_specifier(python, spec, passed):
    [check] = check_manifest(image(spec), {"python": python, "packages": {}})
    assert check["passed"] is passed


def test_manifest_without_onprem_python_checks_packages_only():
    img = Image(name="x", description="", gpu_required=False, versions={"torch": "2.13.0"})
    assert check_manifest(img, {}) == [
        {"name": "package torch", "passed": False, "detail": "found none, image pins 2.13.0"}
    ]


A100_80 = {"name": "NVIDIA A100-SXM4-80GB", "memory_mib": 81920}
HOST_GPUS = [{"index": 0, **A100_80}, {"index": 1, **A100_80}, {"index": 2, "name": "Tesla T4", "memory_mib": 15360}]


def test_check_gpus_right_model():
    assert check_gpus("A100-80GB", 2, HOST_GPUS, [0, 1]) == {
        "name": "gpu inventory",
        "passed": True,
        "detail": "ordered 2 x A100-80GB, leased [0, 1], found 0: NVIDIA A100-SXM4-80GB, 1: NVIDIA A100-SXM4-80GB",
    }


def test_check_gpus_any_model():
    assert check_gpus(None, 2, HOST_GPUS, [1, 2])["passed"] is True


def test_check_gpus_missing_index():
    check = check_gpus("A100", 2, HOST_GPUS, [1, 5])
    assert check["passed"] is False
    assert check["detail"] == "ordered 2 x A100, leased [1, 5], found 1: NVIDIA A100-SXM4-80GB; missing [5]"


def test_check_gpus_wrong_model():
    check = check_gpus("A100", 2, HOST_GPUS, [1, 2])
    assert check["passed"] is False
    assert check["detail"].endswith("found 1: NVIDIA A100-SXM4-80GB, 2: Tesla T4; not A100: [2]")


def test_check_gpus_wrong_memory_size():
    check = check_gpus("A100-40GB", 1, HOST_GPUS, [0])
    assert check["passed"] is False
    assert check["detail"].endswith("; not A100-40GB: [0]")


def test_check_gpus_count_mismatch():
    check = check_gpus("A100", 2, HOST_GPUS, [0])
    assert check["passed"] is False
    assert check["detail"] == "ordered 2 x A100, leased [0], found 0: NVIDIA A100-SXM4-80GB"


def test_check_gpus_nothing_found():
    check = check_gpus(None, 1, [], [0])
    assert check["passed"] is False
    assert check["detail"] == "ordered 1 x any, leased [0], found none; missing [0]"


# --- states ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (states.REQUESTED, states.PROVISIONING),
        (states.REQUESTED, states.FAILED),
        (states.PROVISIONING, states.CONFIGURING),
        (states.PROVISIONING, states.TERMINATING),
        (states.CONFIGURING, states.VALIDATING),
        (states.VALIDATING, states.READY),
        (states.VALIDATING, states.FAILED),
        (states.READY, states.IDLE),
        (states.IDLE, states.READY),
        (states.IDLE, states.TERMINATING),
        (states.TERMINATING, states.TERMINATED),
    ],
)
def test_allowed_transitions(current, target):
    assert states.can_transition(current, target) is True


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (states.REQUESTED, states.READY),  # no skipping configuration and validation
        (states.PROVISIONING, states.READY),
        (states.CONFIGURING, states.READY),
        (states.READY, states.PROVISIONING),
        (states.READY, states.READY),
        (states.TERMINATING, states.READY),
        (states.TERMINATING, states.FAILED),
        (states.TERMINATED, states.REQUESTED),
        (states.TERMINATED, states.TERMINATING),
        (states.FAILED, states.TERMINATING),
        (states.FAILED, states.READY),
        ("bogus", states.READY),
        (states.READY, "bogus"),
    ],
)
def test_forbidden_transitions(current, target):
    assert states.can_transition(current, target) is False


def test_transition_table_covers_every_status():
    assert set(states.TRANSITIONS) == set(states.STATUSES)
    assert all(targets <= set(states.STATUSES) for targets in states.TRANSITIONS.values())
    assert [s for s in states.STATUSES if not states.TRANSITIONS[s]] == [states.TERMINATED, states.FAILED]
