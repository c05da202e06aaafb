"""The lifecycle on AWS with the engine's backend replaced by one that acts on a moto server:
retry across offers on capacity, teardown of every attempt, events and prices in the ledger, and
bad input that writes nothing."""

from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from deepops_infra import states
from deepops_infra.config import Settings
from deepops_infra.engine import Backend, Engine
from deepops_infra.errors import OperationError, UserError
from deepops_infra.images import get_image
from deepops_infra.ledger.db import Ledger
from deepops_infra.ledger.schema import Event, Machine, UsageInterval
from deepops_infra.lifecycle import Lifecycle
from deepops_infra.progress import QuietProgress
from deepops_infra.providers.aws import provider as aws_provider
from deepops_infra.providers.aws.clients import Clients
from deepops_infra.providers.aws.provider import AwsProvider
from deepops_infra.request import GpuSpec, MachineRequest
from tests import test_aws_readpath as moto_fixtures

AMIS = moto_fixtures.AMIS
moto_url = moto_fixtures.moto_url  # the module's moto server
moto_clients = moto_fixtures.clients  # pytest names an imported fixture by the attribute


class MotoBackend(Backend):
    """Plays the stack against moto: a security group, a key pair and a tagged instance."""

    project = "deepops-aws"

    def __init__(self, clients: Clients, no_capacity: set[str]) -> None:
        self.clients = clients
        self.no_capacity = no_capacity
        self.stacks: dict[str, dict[str, Any]] = {}
        self.ups: list[tuple[str, str]] = []

    def check(self) -> None:
        return None

    def exists(self, stack: str) -> bool:
        return stack in self.stacks

    def set_config(self, stack: str, config: dict[str, Any], secret: frozenset[str] = frozenset()) -> None:
        self.stacks.setdefault(stack, {"resources": {}})["config"] = dict(config)

    def up(self, stack: str, on_event: Any) -> dict[str, Any]:
        cfg = self.stacks[stack]["config"]
        region = cfg["aws:region"]
        self.ups.append((region, cfg["instanceType"]))
        ec2 = self.clients.ec2(region)
        tags = [{"Key": k, "Value": v} for k, v in cfg["tags"].items()]
        group = ec2.create_security_group(
            GroupName=f"deepops-{stack}-{len(self.ups)}",
            Description="ssh",
            TagSpecifications=[{"ResourceType": "security-group", "Tags": tags}],
        )["GroupId"]
        ec2.authorize_security_group_ingress(
            GroupId=group,
            IpPermissions=[
                {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": cfg["sshCidr"]}]}
            ],
        )
        res = self.stacks[stack]["resources"] = {"region": region, "group": group}
        if region in self.no_capacity:
            raise RuntimeError(
                f"creating EC2 Instance: InsufficientInstanceCapacity: We currently do not have sufficient "
                f"{cfg['instanceType']} capacity in the Availability Zone you requested"
            )
        ec2.import_key_pair(KeyName=f"deepops-{stack}", PublicKeyMaterial=cfg["publicKey"].encode())
        res["key"] = f"deepops-{stack}"
        if region not in AMIS:
            AMIS[region] = ec2.describe_images(Owners=["amazon"], MaxResults=5)["Images"][0]["ImageId"]
        inst = ec2.run_instances(
            ImageId=AMIS[region],
            InstanceType=cfg["instanceType"],
            MinCount=1,
            MaxCount=1,
            KeyName=res["key"],
            SecurityGroupIds=[group],
            TagSpecifications=[{"ResourceType": "instance", "Tags": tags}, {"ResourceType": "volume", "Tags": tags}],
        )["Instances"][0]
        res["instance"] = inst["InstanceId"]
        return {
            "instance_id": inst["InstanceId"],
            "public_ip": "192.0.2.10",  # TEST-NET: nothing answers there
            "private_ip": inst["PrivateIpAddress"],
            "availability_zone": inst["Placement"]["AvailabilityZone"],
        }

    def destroy(self, stack: str, on_event: Any) -> None:
        res = self.stacks[stack]["resources"]
        ec2 = self.clients.ec2(res["region"])
        if "instance" in res:
            ec2.terminate_instances(InstanceIds=[res.pop("instance")])
        if "key" in res:
            ec2.delete_key_pair(KeyName=res.pop("key"))
        ec2.delete_security_group(GroupId=res.pop("group"))
        res.pop("region")

    def refresh(self, stack: str, on_event: Any) -> None:
        return None

    def pending_operations(self, stack: str) -> list[dict[str, Any]]:
        return []

    def clear_pending(self, stack: str) -> None:
        return None

    def resource_count(self, stack: str) -> int:
        return len(self.stacks[stack]["resources"])

    def remove(self, stack: str) -> None:
        del self.stacks[stack]


def request(gpus: str = "H100:8", **kw: Any) -> MachineRequest:
    base = dict(
        gpus=GpuSpec.parse(gpus),
        cloud="aws",
        region=None,
        host=None,
        image="cpu-minimal",
        spot=False,
        ttl=timedelta(hours=8),
        idle_timeout=timedelta(hours=1),
        disk_gb=200,
        owner="ada",
        team="vision",
        project="detr",
        name=None,
    )
    return MachineRequest(**(base | kw))


@pytest.fixture
def setup(tmp_path: Path, ledger_url: str, moto_clients: Clients, monkeypatch: pytest.MonkeyPatch) -> Any:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    (home / "config.yaml").write_text("aws:\n  ssh_cidr: 203.0.113.7/32\n")
    monkeypatch.setenv("DEEPOPS_CONFIG", str(home / "config.yaml"))
    monkeypatch.setattr(aws_provider, "SSH_WAIT_S", 0.2)
    settings = Settings(home=home)
    ledger = Ledger(ledger_url)
    return settings, ledger, moto_clients


def test_capacity_failure_moves_to_the_next_offer_and_every_attempt_is_torn_down(setup: Any) -> None:
    settings, ledger, clients = setup
    backend = MotoBackend(clients, no_capacity={"us-east-1"})
    provider = AwsProvider(settings, ledger, engine=Engine(backend), clients=clients)
    image = get_image("cpu-minimal")
    plans = provider.plan(request(), image)
    assert [(p.region, p.instance_type) for p in plans] == [("us-east-1", "p5.48xlarge"), ("us-west-2", "p5.48xlarge")]
    # 55.04 + 200 GB x 0.08 / 730 = 55.04 + 0.021918
    assert plans[0].price.per_hour == Decimal("55.061918")
    life = Lifecycle(settings, ledger, provider, QuietProgress())
    machine = life.record(request(), image, plans)
    with pytest.raises(OperationError, match=r"SSH on 192\.0\.2\.10:22 did not answer"):
        life.launch(machine, image)
    # us-east-1 had no capacity (its partial stack destroyed), us-west-2 was created, then configure
    # could not reach it: the machine failed and its stack was destroyed and removed.
    assert backend.ups == [("us-east-1", "p5.48xlarge"), ("us-west-2", "p5.48xlarge")]
    assert backend.stacks == {}
    west = clients.ec2("us-west-2").describe_instances(
        Filters=[{"Name": "tag:deepops-machine", "Values": [machine.id]}]
    )["Reservations"]
    [inst] = [i for r in west for i in r["Instances"]]
    assert inst["State"]["Name"] in ("shutting-down", "terminated")
    assert {t["Key"]: t["Value"] for t in inst["Tags"]}["deepops-owner"] == "ada"
    with ledger.read() as session:
        row = session.get(Machine, machine.id)
        assert row.status == states.FAILED and row.ended_at is not None
        assert (row.region, row.price_per_hour) == ("us-west-2", Decimal("55.061918"))
        kinds = [
            (e.kind, e.to_status)
            for e in session.scalars(select(Event).where(Event.machine_id == machine.id).order_by(Event.id))
        ]
        assert ("create-attempt", None) in kinds and ("create-retry", None) in kinds
        attempt = session.scalars(select(Event).where(Event.kind == "create-attempt")).first()
        assert "InsufficientInstanceCapacity" in attempt.reason and attempt.data["region"] == "us-east-1"
        intervals = list(
            session.scalars(
                select(UsageInterval).where(UsageInterval.machine_id == machine.id).order_by(UsageInterval.id)
            )
        )
        assert len(intervals) == 2 and all(i.ended_at is not None for i in intervals)
    assert not (settings.home / "keys" / f"{machine.id}.pem").exists()  # the key went with the machine


def test_a_non_capacity_failure_is_not_retried(setup: Any) -> None:
    settings, ledger, clients = setup

    class Broken(MotoBackend):
        def up(self, stack: str, on_event: Any) -> dict[str, Any]:
            raise RuntimeError("api error InvalidAMIID.NotFound: The image id '[ami-0f7c4a792e3fb63c8]' does not exist")

    backend = Broken(clients, set())
    provider = AwsProvider(settings, ledger, engine=Engine(backend), clients=clients)
    image = get_image("cpu-minimal")
    life = Lifecycle(settings, ledger, provider, QuietProgress())
    machine = life.record(request(), image, provider.plan(request(), image))
    with pytest.raises(OperationError, match="InvalidAMIID"):
        life.launch(machine, image)
    with ledger.read() as session:
        assert session.get(Machine, machine.id).status == states.FAILED
        assert len(list(session.scalars(select(Event).where(Event.kind == "create-attempt")))) == 1


def test_the_stack_config_carries_the_decisions(setup: Any) -> None:
    settings, ledger, clients = setup
    provider = AwsProvider(settings, ledger, engine=Engine(MotoBackend(clients, set())), clients=clients)
    image = get_image("cpu-minimal")
    req = request("T4:1", spot=True, disk_gb=80)
    life = Lifecycle(settings, ledger, provider, QuietProgress())
    machine = life.record(req, image, provider.plan(req, image))
    config = provider.stack_config(machine)
    assert config["aws:region"] == "us-east-1" and config["instanceType"] == "g4dn.xlarge"  # spot 0.2
    assert config["ami"] == "ami-0f7c4a792e3fb63c8" and config["spot"] is True and config["diskGb"] == 80
    assert config["sshCidr"] == "203.0.113.7/32"
    assert config["publicKey"].startswith("ssh-ed25519 ")
    assert config["tags"]["deepops-machine"] == machine.id and config["tags"]["deepops-managed"] == "true"
    assert config["tags"]["deepops-installation"].startswith("inst-")
    key = settings.home / "keys" / f"{machine.id}.pem"
    assert oct(key.stat().st_mode)[-3:] == "600" and b"PRIVATE KEY" in key.read_bytes()


def test_missing_cli_or_credentials_writes_nothing(setup: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    settings, ledger, clients = setup
    backend = MotoBackend(clients, set())
    backend.check = lambda: (_ for _ in ()).throw(UserError("the `pulumi` CLI is not installed"))  # type: ignore[method-assign]
    provider = AwsProvider(settings, ledger, engine=Engine(backend), clients=clients)
    image = get_image("cpu-minimal")
    life = Lifecycle(settings, ledger, provider, QuietProgress())
    with pytest.raises(UserError, match="pulumi"):
        life.record(request(), image, provider.plan(request(), image))
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    fresh = AwsProvider(settings, ledger, engine=Engine(MotoBackend(clients, set())))
    with pytest.raises(UserError, match="no AWS credentials"):
        Lifecycle(settings, ledger, fresh, QuietProgress()).record(request(), image, fresh.plan(request(), image))
    with ledger.read() as session:
        assert list(session.scalars(select(Machine))) == []


@pytest.mark.ansible
def test_up_configures_over_ssh_with_the_machine_key_and_down_destroys(setup: Any, sshd: Any, tmp_path: Path) -> None:
    """The whole way to ready: the stack (moto) hands out an address where a real sshd accepts the
    machine's own public key (as cloud-init would install it), the configure play runs over SSH."""
    import subprocess

    settings, ledger, clients = setup
    remote = tmp_path / "remote"
    (settings.home / "config.yaml").write_text(
        f"aws:\n  ssh_cidr: 127.0.0.1/32\n  ssh_user: {sshd.user}\n  workspace_root: {remote}\n"
    )
    settings = Settings(home=settings.home)
    authorized = sshd.key.parent / "authorized_keys"

    class Reachable(MotoBackend):
        def up(self, stack: str, on_event: Any) -> dict[str, Any]:
            outputs = super().up(stack, on_event)
            with authorized.open("a") as fh:  # what cloud-init does with the key pair's public key
                fh.write(self.stacks[stack]["config"]["publicKey"] + "\n")
            return outputs | {"public_ip": "127.0.0.1", "ssh_port": sshd.port}

    backend = Reachable(clients, set())
    provider = AwsProvider(settings, ledger, engine=Engine(backend), clients=clients)
    image = get_image("cpu-minimal")
    req = request("T4:1", image="cpu-minimal")
    life = Lifecycle(settings, ledger, provider, QuietProgress())
    machine = life.launch(life.record(req, image, provider.plan(req, image)), image)
    assert machine.status == states.READY
    assert machine.manifest["packages"]["packaging"] == "24.2"
    assert machine.manifest["workspace"] == f"{remote}/{machine.id}"
    argv = provider.shell_command(machine, ["python", "-c", "import packaging, sys; print(packaging.__version__)"])
    assert argv[:3] == ["ssh", "-p", str(sshd.port)] and str(settings.home / "keys") in argv[4]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False)
    assert out.stdout.strip() == "24.2", out.stderr
    ended = life.down(machine, "test done")
    assert ended.machine.status == states.TERMINATED
    assert backend.stacks == {} and not (settings.home / "keys" / f"{machine.id}.pem").exists()
