"""The DESIGN tags and their GCP label form; the `aws:` configuration section and its errors."""

from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from deepops_infra import tags
from deepops_infra.config import Settings
from deepops_infra.yamlfile import FileError


def test_machine_tags_carry_every_design_key() -> None:
    machine = SimpleNamespace(
        id="m-0a1b2c3d",
        owner="ada",
        team="vision",
        project="detr",
        expires_at=datetime(2026, 11, 21, 16, 30, 5, 999, tzinfo=timezone(timedelta(hours=2))),
    )
    got = tags.machine_tags(machine, "inst-0123456789ab")  # type: ignore[arg-type]
    assert set(got) == set(tags.ALL)
    assert got["deepops-managed"] == "true" and got["deepops-expires-at"] == "2026-11-21T14:30:05Z"
    assert got["deepops-installation"] == "inst-0123456789ab"


def test_gcp_labels_use_the_allowed_charset() -> None:
    labels = tags.gcp_labels(
        {"deepops-expires-at": "2026-11-21T14:30:05Z", "deepops-owner": "Ada.Lovelace@x", "k": "v" * 80}
    )
    assert labels["deepops-expires-at"] == "2026-11-21t14-30-05z"
    assert labels["deepops-owner"] == "ada-lovelace_x"
    assert len(labels["k"]) == 63


def settings_with(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> Settings:
    (tmp_path / "config.yaml").write_text(text)
    monkeypatch.setenv("DEEPOPS_CONFIG", str(tmp_path / "config.yaml"))
    return Settings(home=tmp_path)


def test_aws_section_parses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deepops_infra.providers.aws.settings import aws_settings

    s = settings_with(
        tmp_path,
        monkeypatch,
        "aws:\n  regions: us-west-2\n  ssh_cidr: 203.0.113.9/24\n"
        "  endpoints: {pricing: http://p}\n  gp3_gb_month: 0.0952\n  read_timeout: 120\n",
    )
    got = aws_settings(s)
    assert got.read_timeout == 120
    assert got.regions == ("us-west-2",) and got.ssh_cidr == "203.0.113.0/24"
    assert got.endpoint("pricing") == "http://p" and got.endpoint("ec2") is None
    assert str(got.gp3_gb_month) == "0.0952"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("aws:\n  region: us-east-1\n", r"config.yaml:2: aws.region: unknown setting"),
        ("aws:\n  ssh_cidr: everyone\n", r"config.yaml:2: aws.ssh_cidr: 'everyone' is not a CIDR"),
        ("aws:\n  ssh_cidr: 0.0.0.0/0\n", r"opens SSH to everyone; set aws.allow_any_ssh"),
        ("aws:\n  endpoints: {s3: http://x}\n", r"aws.endpoints: a mapping of service -> URL"),
        ("aws:\n  regions: []\n", r"aws.regions: a list of region names"),
        ("aws:\n  agent_metrics: no-thanks\n", r"config.yaml:2: aws.agent_metrics: true or false"),
        ("aws:\n  read_timeout: 0\n", r"config.yaml:2: aws.read_timeout: whole seconds"),
        ("aws:\n  gp3_gb_month: 'NaN'\n", r"config.yaml:2: aws.gp3_gb_month: a finite positive price"),
        ("aws:\n  gp3_gb_month: Infinity\n", r"config.yaml:2: aws.gp3_gb_month: a finite positive price"),
        ("aws:\n  gp3_gb_month: -0.08\n", r"config.yaml:2: aws.gp3_gb_month: a finite positive price"),
    ],
)
def test_aws_section_errors_name_file_and_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, message: str
) -> None:
    from deepops_infra.providers.aws.settings import aws_settings

    with pytest.raises(FileError, match=message):
        aws_settings(settings_with(tmp_path, monkeypatch, text))


def test_open_ssh_only_when_meant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deepops_infra.providers.aws.access import requester_cidr
    from deepops_infra.providers.aws.settings import aws_settings

    s = settings_with(tmp_path, monkeypatch, "aws:\n  ssh_cidr: 0.0.0.0/0\n  allow_any_ssh: true\n")
    assert aws_settings(s).ssh_cidr == "0.0.0.0/0"
    assert requester_cidr("198.51.100.0/24", "http://unused") == "198.51.100.0/24"


def test_detected_address_becomes_a_slash_32(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from deepops_infra.errors import UserError
    from deepops_infra.providers.aws.access import requester_cidr

    class CheckIp(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"198.51.100.23\n" if self.path == "/" else b"<html>nope</html>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return None

    server = HTTPServer(("127.0.0.1", 0), CheckIp)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert requester_cidr(None, url + "/") == "198.51.100.23/32"
        with pytest.raises(UserError, match=r"set aws\.ssh_cidr"):
            requester_cidr(None, url + "/bad")
    finally:
        server.shutdown()


@pytest.mark.parametrize(
    ("text", "metrics", "namespace"),
    [
        ("", True, "DeepOps"),
        ("agent:\n  sinks: [{type: cloudwatch, namespace: Research/GPU}]\n", True, "Research/GPU"),
        ("aws:\n  agent_metrics: false\n", False, "DeepOps"),
        ("agent:\n  enabled: false\n", False, "DeepOps"),  # no agent, no role for it
    ],
)
def test_the_stack_gets_the_agents_namespace_and_whether_to_make_its_role(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, metrics: bool, namespace: str
) -> None:
    from deepops_infra.providers.aws.provider import AwsProvider

    provider = AwsProvider(settings_with(tmp_path, monkeypatch, text), ledger=None)  # type: ignore[arg-type]
    machine = SimpleNamespace(region="us-east-1", image_pin="ami-0f7c4a792e3fb63c8")
    config = provider.cloud_config(machine)  # type: ignore[arg-type]
    assert (config["agentMetrics"], config["metricsNamespace"]) == (metrics, namespace)
    assert (config["aws:region"], config["ami"]) == ("us-east-1", "ami-0f7c4a792e3fb63c8")
