"""The engine's rules with a fake backend in place of the Pulumi CLI, plus a real-engine test
that runs only where `pulumi` and AWS credentials exist."""

import os
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest

from deepops_infra.engine import Backend, Engine, EngineError
from deepops_infra.errors import OperationError, UserError


class FakeBackend(Backend):
    """Stacks as dicts: config, resources, pending operations; every call is logged."""

    project = "deepops-test"

    def __init__(self) -> None:
        self.stacks: dict[str, dict[str, Any]] = {}
        self.log: list[tuple[str, str]] = []
        self.fail_up: Exception | None = None
        self.destroy_leaves: int = 0
        self.cli = True

    def check(self) -> None:
        if not self.cli:
            raise UserError("the `pulumi` CLI is not installed")

    def exists(self, stack: str) -> bool:
        return stack in self.stacks

    def set_config(self, stack: str, config: dict[str, Any], secret: frozenset[str] = frozenset()) -> None:
        self.log.append(("config", stack))
        self.stacks.setdefault(stack, {"resources": 0, "pending": []})["config"] = dict(config)

    def up(self, stack: str, on_event: Any) -> dict[str, Any]:
        self.log.append(("up", stack))
        on_event(f"create aws:ec2/instance:Instance {stack}")
        if self.fail_up is not None:
            self.stacks[stack]["resources"] = 2  # the security group and key pair were made
            raise self.fail_up
        self.stacks[stack]["resources"] = 3
        return {"instance_id": "i-0123456789abcdef0"}

    def destroy(self, stack: str, on_event: Any) -> None:
        self.log.append(("destroy", stack))
        self.stacks[stack]["resources"] = self.destroy_leaves

    def refresh(self, stack: str, on_event: Any) -> None:
        self.log.append(("refresh", stack))

    def pending_operations(self, stack: str) -> list[dict[str, Any]]:
        return list(self.stacks[stack]["pending"])

    def clear_pending(self, stack: str) -> None:
        self.log.append(("clear", stack))
        self.stacks[stack]["pending"] = []

    def resource_count(self, stack: str) -> int:
        return self.stacks[stack]["resources"]

    def remove(self, stack: str) -> None:
        self.log.append(("remove", stack))
        del self.stacks[stack]


def test_up_sets_config_then_runs_and_streams_events() -> None:
    backend = FakeBackend()
    events: list[str] = []
    outputs = Engine(backend).up("m-1", {"instanceType": "g5.xlarge"}, events.append)
    assert outputs == {"instance_id": "i-0123456789abcdef0"}
    assert backend.log == [("config", "m-1"), ("up", "m-1")]
    assert events == ["create aws:ec2/instance:Instance m-1"]


def test_a_crashed_stack_is_cleared_and_refreshed_before_anything_else() -> None:
    backend = FakeBackend()
    backend.stacks["m-1"] = {"resources": 1, "pending": [{"type": "creating", "resource": {"urn": "x"}}]}
    Engine(backend).up("m-1", {})
    assert backend.log[:3] == [("clear", "m-1"), ("refresh", "m-1"), ("config", "m-1")]
    backend.stacks["m-1"]["pending"] = [{"type": "deleting"}]
    backend.log.clear()
    Engine(backend).destroy("m-1")
    assert backend.log == [("clear", "m-1"), ("refresh", "m-1"), ("destroy", "m-1"), ("remove", "m-1")]


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        (
            "creating EC2 Instance: InsufficientInstanceCapacity: We currently do not have sufficient p5.48xlarge",
            "capacity",
        ),
        ("api error VcpuLimitExceeded: You have requested more vCPU capacity than your current vCPU limit", "quota"),
        ("api error InvalidAMIID.NotFound: The image id '[ami-1]' does not exist", "other"),
    ],
)
def test_failures_are_classified_for_the_retry_across_offers(message: str, kind: str) -> None:
    backend = FakeBackend()
    backend.fail_up = RuntimeError(message)
    with pytest.raises(EngineError) as err:
        Engine(backend).up("m-1", {})
    assert err.value.kind == kind
    assert err.value.retryable == (kind != "other")
    assert backend.stacks["m-1"]["resources"] == 2  # what exists is left for destroy to remove


def test_the_stack_is_removed_only_after_a_confirmed_destroy() -> None:
    backend = FakeBackend()
    engine = Engine(backend)
    engine.up("m-1", {})
    backend.destroy_leaves = 1
    with pytest.raises(OperationError, match="1 resource"):
        engine.destroy("m-1")
    assert "m-1" in backend.stacks and ("remove", "m-1") not in backend.log
    backend.destroy_leaves = 0
    engine.destroy("m-1")
    assert "m-1" not in backend.stacks
    engine.destroy("m-1")  # a stack that is gone: nothing to do, no error


def test_missing_cli_is_a_user_error_with_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deepops_infra.config import Settings
    from deepops_infra.engine.pulumi_backend import INSTALL_HINT, PulumiBackend

    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(UserError, match=r"get\.pulumi\.com"):
        PulumiBackend(Settings(home=tmp_path), "aws").check()
    assert "install" in INSTALL_HINT


def test_passphrase_generated_once_0600_or_taken_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deepops_infra.config import Settings
    from deepops_infra.engine.pulumi_backend import backend_url, passphrase

    monkeypatch.delenv("PULUMI_CONFIG_PASSPHRASE", raising=False)
    s = Settings(home=tmp_path / "home")
    first = passphrase(s)
    assert len(first) >= 40 and passphrase(s) == first
    mode = stat.S_IMODE(os.stat(s.home / "pulumi-passphrase").st_mode)
    assert mode == 0o600
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "from-env")
    assert passphrase(s) == "from-env"
    assert backend_url(s) == f"file://{s.home / 'pulumi'}"


def test_backend_url_from_the_engine_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from deepops_infra.config import Settings
    from deepops_infra.engine.pulumi_backend import backend_url
    from deepops_infra.yamlfile import FileError

    (tmp_path / "config.yaml").write_text("engine:\n  backend_url: s3://team-state/pulumi\n")
    monkeypatch.setenv("DEEPOPS_CONFIG", str(tmp_path / "config.yaml"))
    assert backend_url(Settings(home=tmp_path)) == "s3://team-state/pulumi"
    (tmp_path / "config.yaml").write_text("engine:\n  backend_url: not-a-url\n")
    with pytest.raises(FileError, match=r"config.yaml:2: engine.backend_url must be a URL"):
        backend_url(Settings(home=tmp_path))


def _real_engine_missing() -> str | None:
    if shutil.which("pulumi") is None:
        return "the pulumi CLI is not installed here"
    try:
        import boto3

        if boto3.session.Session().get_credentials() is None:
            return "no AWS credentials here"
    except Exception as exc:
        return f"boto3 cannot read credentials: {exc}"
    if os.environ.get("DEEPOPS_REAL_AWS") != "1":
        return "set DEEPOPS_REAL_AWS=1 to create (and destroy) a real t3-class machine stack"
    return None


@pytest.mark.skipif(_real_engine_missing() is not None, reason=str(_real_engine_missing()))
def test_real_engine_round_trip(tmp_path: Path) -> None:
    """A real stack on AWS: up a security group + key pair + instance, then destroy and remove it."""
    from deepops_infra.config import Settings
    from deepops_infra.engine import open_engine
    from deepops_infra.providers.aws import access
    from deepops_infra.providers.aws.images import pin_for

    s = Settings(home=tmp_path)
    engine = open_engine(s, "aws")
    stack = "m-realtest"
    config = {
        "aws:region": "us-east-1",
        "machineId": stack,
        "instanceType": "g4dn.xlarge",
        "ami": pin_for("cpu-minimal", "us-east-1"),
        "diskGb": 60,
        "sshCidr": access.requester_cidr(None, "https://checkip.amazonaws.com"),
        "publicKey": access.make_key(tmp_path, stack),
        "tags": {"deepops-managed": "true", "deepops-machine": stack},
        "spot": False,
    }
    try:
        outputs = engine.up(stack, config, print)
        assert outputs["instance_id"].startswith("i-")
    finally:
        engine.destroy(stack, print)
    assert not engine.backend.exists(stack)


def test_engine_events_become_progress_lines() -> None:
    from pulumi.automation import events as ev

    from deepops_infra.engine.pulumi_backend import describe

    urn = "urn:pulumi:m-1::deepops-aws::aws:ec2/instance:Instance::m-1"
    pre = ev.EngineEvent(
        1,
        0,
        resource_pre_event=ev.ResourcePreEvent(
            ev.StepEventMetadata(ev.OpType.CREATE, urn, "aws:ec2/instance:Instance", "p")
        ),
    )
    stack = ev.EngineEvent(
        2,
        0,
        resource_pre_event=ev.ResourcePreEvent(
            ev.StepEventMetadata(
                ev.OpType.CREATE, "urn:pulumi:m-1::deepops-aws::pulumi:pulumi:Stack::x", "pulumi:pulumi:Stack", "p"
            )
        ),
    )
    failed = ev.EngineEvent(
        3,
        0,
        res_op_failed_event=ev.ResOpFailedEvent(
            ev.StepEventMetadata(ev.OpType.CREATE, urn, "aws:ec2/instance:Instance", "p"), 1, 1
        ),
    )
    diag = ev.EngineEvent(
        4, 0, diagnostic_event=ev.DiagnosticEvent("InsufficientInstanceCapacity:\n  no p5", "never", "error")
    )
    info = ev.EngineEvent(5, 0, diagnostic_event=ev.DiagnosticEvent("fine", "never", "info"))
    assert [describe(e) for e in (pre, stack, failed, diag, info)] == [
        "create aws:ec2/instance:Instance m-1",
        None,
        "failed aws:ec2/instance:Instance m-1",
        "InsufficientInstanceCapacity: no p5",
        None,
    ]


def test_the_program_is_run_from_a_private_copy(tmp_path: Path) -> None:
    from deepops_infra.config import Settings
    from deepops_infra.engine.pulumi_backend import PulumiBackend

    work = PulumiBackend(Settings(home=tmp_path), "aws").work_dir
    assert work == tmp_path / "pulumi" / "work" / "aws"
    assert sorted(p.name for p in work.iterdir()) == ["Pulumi.yaml", "__main__.py"]
    assert "name: deepops-aws" in (work / "Pulumi.yaml").read_text()
