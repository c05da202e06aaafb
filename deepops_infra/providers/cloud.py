"""What every Pulumi-backed cloud provider shares: placement into plans, the stack's common config,
create/destroy through the engine, SSH to the machine (configure, validate, shell) and doctor rows.

A cloud subclasses `PulumiCloudProvider` and supplies only what differs: its settings, its image
pins, its disk price, the cloud-specific stack config and outputs, and the read path.
"""

import socket
import time
from abc import abstractmethod
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from functools import cached_property
from typing import TYPE_CHECKING, Any

from deepops_infra import tags
from deepops_infra.config import Settings
from deepops_infra.engine import Engine, EngineError
from deepops_infra.errors import OperationError, UserError
from deepops_infra.ledger.db import Ledger
from deepops_infra.pricing import Price
from deepops_infra.progress import Progress
from deepops_infra.providers import access
from deepops_infra.providers.base import Plan, Provider, ProvisionError

if TYPE_CHECKING:
    from deepops_infra.agent.settings import AgentSettings
    from deepops_infra.images import Image
    from deepops_infra.ledger.schema import Machine
    from deepops_infra.placement import Candidate
    from deepops_infra.request import MachineRequest

HOURS_PER_MONTH = Decimal(730)  # the clouds bill disks per GB-month of 730 hours
SSH_WAIT_S = 600
DEFAULT_DISK_GB = 100


def offer_price(candidate: "Candidate", spot: bool, disk_gb: int, gb_month: Decimal) -> Price:
    """Instance (spot or on demand) plus the root disk, per hour, to the micro-dollar."""
    disk_hour = (Decimal(disk_gb) * gb_month / HOURS_PER_MONTH).quantize(Decimal("0.000001"), ROUND_HALF_UP)
    return Price(
        per_hour=candidate.price_per_hour + disk_hour,
        parts={
            "instance_hour": str(candidate.price_per_hour),
            "market": "spot" if spot else "on-demand",
            "disk_gb": disk_gb,
            "disk_hour": str(disk_hour),
        },
    )


BACKSTOP_GRACE_S = 3600


def backstop_seconds(settings: Settings, machine: "Machine") -> int:
    """How long the cloud's own TTL backstop lets a machine run: the longest lifetime its team may
    reach (extensions stay within max_ttl) plus an hour, so the reaper always acts first."""
    policy = settings.config.policy_for(machine.team)
    return int(policy.max_ttl.total_seconds()) + BACKSTOP_GRACE_S


@dataclass(frozen=True)
class Login:
    """How to log in to a machine of one image: the user and the Python Ansible uses."""

    ssh_user: str = "ubuntu"
    python: str = "/usr/bin/python3"


class PulumiCloudProvider(Provider):
    """A machine is one Pulumi stack of stacks/<cloud>; every decision is stack config."""

    cloud: str

    def __init__(self, settings: Settings, ledger: Ledger, engine: Engine | None = None, clients: Any = None) -> None:
        self.settings = settings
        self.ledger = ledger
        self._engine = engine
        self._clients = clients

    # -- what a cloud supplies ---------------------------------------------------------------

    default_login: Login = Login()  # for an image whose lock names no login

    @abstractmethod
    def load_conf(self) -> Any:
        """The cloud's settings: regions, ssh_cidr, allow_any_ssh, ip_detect_url, ssh_user,
        workspace_root and disk_gb_month at least."""

    @abstractmethod
    def make_clients(self, conf: Any) -> Any:
        """The cloud's SDK clients (read path), built from its settings; they answer has_credentials()."""

    @abstractmethod
    def pins(self, image: str) -> Any:
        """The image's pins on this cloud (its lock entry, with ssh_user and python), or None."""

    @abstractmethod
    def pin_for(self, image: str, region: str) -> str | None:
        """The image's pin in a region (its cloud lock file), None where it has none."""

    # -- written once from the above ----------------------------------------------------------

    @cached_property
    def conf(self) -> Any:
        return self.load_conf()

    @property
    def clients(self) -> Any:
        if self._clients is None:
            self._clients = self.make_clients(self.conf)
        return self._clients

    def has_credentials(self) -> tuple[bool, str]:
        """Whether credentials can be found, without a network call."""
        return self.clients.has_credentials()

    def login_for(self, image: str) -> Login:
        """The login of an image's pinned base on this cloud."""
        pins = self.pins(image)
        return Login(pins.ssh_user, pins.python) if pins else self.default_login

    @abstractmethod
    def cloud_config(self, machine: "Machine") -> dict[str, Any]:
        """Stack config only this cloud has (location keys, project or subscription)."""

    @abstractmethod
    def refs_from(self, outputs: dict[str, Any]) -> dict[str, Any]:
        """Provider references worth keeping from the stack's outputs."""

    def gb_month(self) -> Decimal:
        return Decimal(self.conf.disk_gb_month)

    def ssh_wait_s(self) -> float:
        return SSH_WAIT_S

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            from deepops_infra.engine import open_engine

            self._engine = open_engine(self.settings, self.cloud)
        return self._engine

    # -- planning ---------------------------------------------------------------------------

    def image_pin(self, image: "Image", region: str | None) -> str | None:
        return self.pin_for(image.name, region) if region else None

    def disk_gb(self, request: "MachineRequest") -> int:
        return request.disk_gb or self.settings.config.defaults.disk_gb or DEFAULT_DISK_GB

    def plans_from(self, request: "MachineRequest", candidates: "list[Candidate]") -> list[Plan]:
        disk = self.disk_gb(request)
        return [
            Plan(
                cloud=self.cloud,
                region=c.offer.region,
                host=None,
                instance_type=c.offer.instance_type,
                accelerator=c.offer.accelerator,
                accelerator_count=c.offer.accelerator_count,
                image_pin=c.image_id,
                price=offer_price(c, request.spot, disk, self.gb_month()),
                details={"spot": request.spot, "vcpus": c.offer.vcpus, "memory_gib": str(c.offer.memory_gib)},
            )
            for c in candidates
        ]

    def plan(self, request: "MachineRequest", image: "Image") -> list[Plan]:
        from deepops_infra.catalog import load_catalog
        from deepops_infra.placement import place

        placed = place(
            request,
            load_catalog(self.settings.home),
            {self.cloud: lambda region, name: self.pin_for(name, region)},
            {self.cloud: self.conf.regions},
        )
        plans = self.plans_from(request, placed.candidates)
        if placed.skipped:
            first = plans[0]
            plans[0] = Plan(**{**first.__dict__, "details": {**first.details, "skipped": placed.skipped}})
        return plans

    def preflight(self, plans: list[Plan]) -> None:
        self.engine.check()
        ok, detail = self.has_credentials()
        if not ok:
            raise UserError(detail)

    # -- lifecycle ---------------------------------------------------------------------------

    def _installation_id(self) -> str:
        from deepops_infra.ledger import store

        with self.ledger.write() as session:
            return store.installation_id(session)

    def disk_gb_of(self, machine: "Machine") -> int:
        return int(machine.request.get("disk_gb") or self.settings.config.defaults.disk_gb or DEFAULT_DISK_GB)

    def ssh_cidr(self) -> str:
        c = self.conf
        return access.requester_cidr(c.ssh_cidr, c.ip_detect_url, c.allow_any_ssh, section=self.cloud)

    def machine_tags(self, machine: "Machine") -> dict[str, str]:
        return tags.machine_tags(machine, self._installation_id())

    def stack_config(self, machine: "Machine") -> dict[str, Any]:
        """The config every cloud's program reads, then the cloud's own keys (checked first: a missing
        project or subscription is refused before a key is made)."""
        own = self.cloud_config(machine)
        plan = machine.plan
        config: dict[str, Any] = {
            "machineId": machine.id,
            "instanceType": plan["instance_type"],
            "diskGb": int((machine.price_breakdown or {}).get("disk_gb") or self.disk_gb_of(machine)),
            "sshCidr": self.ssh_cidr(),
            "publicKey": access.make_key(self.settings.home, machine.id),
            "tags": self.machine_tags(machine),
            "spot": bool(machine.request.get("spot")),
        }
        if self.conf.allow_any_ssh:
            config["allowAnySsh"] = True
        return config | own

    def create(self, machine: "Machine", progress: Progress) -> dict[str, Any]:
        config = self.stack_config(machine)
        try:
            outputs = self.engine.up(machine.id, config, progress.detail)
        except EngineError as exc:
            # Whatever the error, a partial stack may exist: the lifecycle destroys it.
            raise ProvisionError(str(exc), created=True, retryable=exc.retryable) from None
        return {
            "created": True,
            "stack": f"{self.engine.backend.project}/{machine.id}",
            **self.refs_from(dict(outputs)),
            "public_ip": outputs.get("public_ip"),
            "private_ip": outputs.get("private_ip"),
            "ssh_port": int(outputs.get("ssh_port") or 22),
            "ssh_cidr": config["sshCidr"],
            "key": str(access.key_path(self.settings.home, machine.id)),
        }

    def _host(self, machine: "Machine") -> Any:
        from deepops_infra.pool import PoolHost

        refs = machine.provider_refs or {}
        login = self.login_for(machine.image)
        if not refs.get("public_ip"):
            raise OperationError(f"{machine.id} has no public address (stack outputs: {sorted(refs)})")
        return PoolHost(
            name=machine.id,
            connection="ssh",
            address=refs["public_ip"],
            user=self.conf.ssh_user or login.ssh_user,
            port=int(refs.get("ssh_port") or 22),
            key=refs.get("key"),
            python=login.python,
        )

    @staticmethod
    def wait_for_ssh(address: str, port: int = 22, timeout_s: float = SSH_WAIT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with socket.create_connection((address, port), timeout=min(5, max(timeout_s, 0.1))):
                    return
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise OperationError(f"SSH on {address}:{port} did not answer in {timeout_s:.0f}s: {exc}") from None
                time.sleep(5)

    def workspace(self, machine: "Machine", user: str | None) -> str:
        if self.conf.workspace_root:
            return f"{self.conf.workspace_root.rstrip('/')}/{machine.id}"
        home = "/root" if user == "root" else f"/home/{user or 'ubuntu'}"
        return f"{home}/deepops/{machine.id}"

    def _ssh(self, host: Any) -> list[str]:
        """ssh with the machine's own key; its host key is trusted on first use and remembered."""
        return [
            "ssh",
            "-p",
            str(host.port),
            "-i",
            str(host.key),
            "-o",
            "StrictHostKeyChecking=accept-new",
            "-o",
            f"UserKnownHostsFile={self.settings.home / 'known_hosts'}",
            "-o",
            "IdentitiesOnly=yes",
        ]

    def _prepare_workspace(self, machine: "Machine", host: Any, workspace: str) -> None:
        """The machine is the lease: a private workspace and the env.sh `deepops ssh` sources."""
        import shlex
        import subprocess

        env = (
            f"export DEEPOPS_MACHINE={shlex.quote(machine.id)}\n"
            f"export DEEPOPS_WORKSPACE={shlex.quote(workspace)}\n"
            'if [ -d "$DEEPOPS_WORKSPACE/env/bin" ]; then\n'
            '  export VIRTUAL_ENV="$DEEPOPS_WORKSPACE/env"\n  export PATH="$VIRTUAL_ENV/bin:$PATH"\nfi\n'
            'cd "$DEEPOPS_WORKSPACE" || return 1\n'
        )
        script = (
            f"umask 077 && mkdir -p {shlex.quote(workspace + '/.deepops')} && "
            f"printf %s {shlex.quote(env)} > {shlex.quote(workspace + '/.deepops/env.sh')}"
        )
        argv = [*self._ssh(host), "-o", "BatchMode=yes", f"{host.user}@{host.address}", script]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)
        if done.returncode != 0:
            raise OperationError(f"preparing {workspace} on {host.address}: {' '.join(done.stderr.split())[:300]}")

    # -- the agent ---------------------------------------------------------------------------

    def agent_sinks(self, machine: "Machine", agent: "AgentSettings") -> list[dict[str, Any]]:
        """Where this cloud's agents publish: the configured sinks this cloud can take (CloudWatch
        is AWS's); a cloud with a metric service of its own overrides this."""
        return [s for s in agent.sinks if s.get("type") != "cloudwatch"]

    def agent_vars(self, machine: "Machine", host: Any) -> dict[str, Any]:
        """The agent role's variables: a systemd unit with the machine's expiry, idle timeout and
        grace, whose dead-man switch runs `shutdown -h now` (the instance terminates)."""
        from deepops_infra.agent.settings import AgentSettings

        agent = AgentSettings.load(self.settings)
        return agent.role_vars(
            machine,
            self._installation_id(),
            mode="cloud",
            python=host.python,
            sinks=self.agent_sinks(machine, agent),
        )

    def checkin(self, machine: "Machine", control: dict[str, Any]) -> None:
        """Write the agent's checkin.json over SSH (with the machine's key, as root through sudo):
        the control plane is alive, and the expiry after any `deepops extend`."""
        import json
        import subprocess
        from pathlib import Path

        from deepops_infra.agent.status import checkin_script

        agent = (machine.manifest or {}).get("agent") or {}
        refs = machine.provider_refs or {}
        if not agent.get("state_dir") or not refs.get("key") or not Path(refs["key"]).exists():
            return  # no agent there, or this control plane does not hold the machine's key
        host = self._host(machine)
        script = checkin_script(agent["state_dir"], sudo=host.user != "root")
        argv = [*self._ssh(host), "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", f"{host.user}@{host.address}"]
        done = subprocess.run(
            [*argv, script], input=json.dumps(control), capture_output=True, text=True, timeout=60, check=False
        )
        if done.returncode != 0:
            raise OperationError(f"check-in on {host.address}: {' '.join(done.stderr.split())[:300]}")

    def configure(self, machine: "Machine", image: "Image", progress: Progress) -> dict[str, Any]:
        from deepops_infra.configure import configure_host

        host = self._host(machine)
        progress.detail(f"waiting for SSH on {host.address}")
        self.wait_for_ssh(host.address, host.port, self.ssh_wait_s())
        workspace = self.workspace(machine, host.user)
        self._prepare_workspace(machine, host, workspace)
        agent = self.agent_vars(machine, host)
        manifest = configure_host(self.settings, machine.id, host, image, workspace, progress, extra_vars=agent)
        manifest["image_pin"] = machine.image_pin
        manifest["workspace"] = workspace
        if agent:
            manifest["agent"] = {"mode": agent["agent_mode"], "state_dir": agent["agent_config"]["state_dir"]}
        return manifest

    def validate(self, machine: "Machine", image: "Image", progress: Progress) -> dict[str, Any]:
        from deepops_infra.validation import check_manifest

        checks = check_manifest(image, machine.manifest or {})
        return {"passed": all(c["passed"] for c in checks), "checks": checks}

    def destroy(self, machine: "Machine", progress: Progress) -> None:
        """Destroy the stack; returns only when its state holds no resource (then the stack is removed)."""
        self.engine.destroy(machine.id, progress.detail)
        access.forget_key(self.settings.home, machine.id)

    # -- read path helpers -------------------------------------------------------------------

    def regions(self) -> list[str]:
        if self.conf.regions:
            return list(self.conf.regions)
        from deepops_infra.catalog import load_catalog

        return sorted({o.region for o in load_catalog(self.settings.home) if o.cloud == self.cloud})

    def shell_command(self, machine: "Machine", command: list[str] | None) -> list[str]:
        import shlex

        host = self._host(machine)
        ssh = self._ssh(host)
        if command is None:
            ssh.append("-t")
        workspace = self.workspace(machine, host.user)
        inner = [
            "bash",
            "-c",
            '. "$0" 2>/dev/null; exec "$@"',
            f"{workspace}/.deepops/env.sh",
            *(command or ["bash", "-il"]),
        ]
        return [*ssh, f"{host.user}@{host.address}", shlex.join(inner)]

    def pin_summary(self) -> tuple[bool, str]:
        """(any pins, which images in which regions) for doctor."""
        return True, ""

    def doctor(self) -> list[tuple[str, bool, str]]:
        from deepops_infra.engine.pulumi_backend import INSTALL_HINT, pulumi_cli

        rows: list[tuple[str, bool, str]] = []
        cli = pulumi_cli()
        rows.append(("pulumi CLI", cli is not None, cli or INSTALL_HINT))
        try:
            ok, detail = self.has_credentials()
        except UserError as exc:
            ok, detail = False, str(exc)
        rows.append(("credentials", ok, detail))
        # Informational: placement skips a region an image has no pin in, and says so.
        rows.append(("image pins", *self.pin_summary()))
        return rows
