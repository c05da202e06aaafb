"""The AWS provider: a machine is a Pulumi stack (stacks/aws) made from a catalog offer.

Decisions are taken here before Pulumi runs (offer by placement, AMI pin, tags, SSH CIDR, key);
the stack only declares resources from its config. The read path is boto3 (readpath.py).
"""

import socket
import time
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
from deepops_infra.providers.aws import access, readpath
from deepops_infra.providers.aws.clients import Clients
from deepops_infra.providers.aws.images import pin_for, pins_of
from deepops_infra.providers.aws.settings import AwsSettings, aws_settings
from deepops_infra.providers.base import Plan, Provider, ProvisionError, Resource, Utilization

if TYPE_CHECKING:
    from deepops_infra.images import Image
    from deepops_infra.ledger.schema import Machine
    from deepops_infra.placement import Candidate
    from deepops_infra.request import MachineRequest

HOURS_PER_MONTH = Decimal(730)  # AWS bills EBS per GB-month of 730 hours
SSH_WAIT_S = 600
DEFAULT_DISK_GB = 100


def offer_price(candidate: "Candidate", spot: bool, disk_gb: int, gb_month: Decimal) -> Price:
    """Instance (spot or on demand) plus the gp3 root volume, per hour, to the micro-dollar."""
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


class AwsProvider(Provider):
    cloud = "aws"

    def __init__(
        self, settings: Settings, ledger: Ledger, engine: Engine | None = None, clients: Clients | None = None
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self._engine = engine
        self._clients = clients

    @cached_property
    def aws(self) -> AwsSettings:
        return aws_settings(self.settings)

    @property
    def clients(self) -> Clients:
        if self._clients is None:
            self._clients = Clients(self.aws)
        return self._clients

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            from deepops_infra.engine import open_engine

            self._engine = open_engine(self.settings, "aws")
        return self._engine

    # -- planning ---------------------------------------------------------------------------

    def image_pin(self, image: "Image", region: str | None) -> str | None:
        return pin_for(image.name, region) if region else None

    def disk_gb(self, request: "MachineRequest") -> int:
        return request.disk_gb or self.settings.config.defaults.disk_gb or DEFAULT_DISK_GB

    def plans_from(self, request: "MachineRequest", candidates: "list[Candidate]") -> list[Plan]:
        disk = self.disk_gb(request)
        return [
            Plan(
                cloud="aws",
                region=c.offer.region,
                host=None,
                instance_type=c.offer.instance_type,
                accelerator=c.offer.accelerator,
                accelerator_count=c.offer.accelerator_count,
                image_pin=c.image_id,
                price=offer_price(c, request.spot, disk, self.aws.gp3_gb_month),
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
            {"aws": lambda region, name: pin_for(name, region)},
            {"aws": self.aws.regions},
        )
        plans = self.plans_from(request, placed.candidates)
        if placed.skipped:
            first = plans[0]
            plans[0] = Plan(**{**first.__dict__, "details": {**first.details, "skipped": placed.skipped}})
        return plans

    def preflight(self, plans: list[Plan]) -> None:
        self.engine.check()
        ok, detail = self.clients.has_credentials()
        if not ok:
            raise UserError(detail)

    # -- lifecycle ---------------------------------------------------------------------------

    def _installation_id(self) -> str:
        from deepops_infra.ledger import store

        with self.ledger.write() as session:
            return store.installation_id(session)

    def stack_config(self, machine: "Machine") -> dict[str, Any]:
        plan = machine.plan
        config: dict[str, Any] = {
            "aws:region": machine.region,
            "machineId": machine.id,
            "instanceType": plan["instance_type"],
            "ami": machine.image_pin,
            "diskGb": int(machine.price_breakdown.get("disk_gb") or self.disk_gb_of(machine)),
            "sshCidr": access.requester_cidr(self.aws.ssh_cidr, self.aws.ip_detect_url, self.aws.allow_any_ssh),
            "publicKey": access.make_key(self.settings.home, machine.id),
            "tags": tags.machine_tags(machine, self._installation_id()),
            "spot": bool(machine.request.get("spot")),
        }
        if self.aws.allow_any_ssh:
            config["allowAnySsh"] = True
        return config

    def disk_gb_of(self, machine: "Machine") -> int:
        return int(machine.request.get("disk_gb") or self.settings.config.defaults.disk_gb or DEFAULT_DISK_GB)

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
            "instance_id": outputs.get("instance_id"),
            "public_ip": outputs.get("public_ip"),
            "private_ip": outputs.get("private_ip"),
            "availability_zone": outputs.get("availability_zone"),
            "ssh_port": int(outputs.get("ssh_port") or 22),
            "ssh_cidr": config["sshCidr"],
            "key": str(access.key_path(self.settings.home, machine.id)),
        }

    def _host(self, machine: "Machine") -> Any:
        from deepops_infra.pool import PoolHost

        refs = machine.provider_refs or {}
        pins = pins_of(machine.image)
        if not refs.get("public_ip"):
            raise OperationError(f"{machine.id} has no public address (stack outputs: {sorted(refs)})")
        return PoolHost(
            name=machine.id,
            connection="ssh",
            address=refs["public_ip"],
            user=self.aws.ssh_user or (pins.ssh_user if pins else "ubuntu"),
            port=int(refs.get("ssh_port") or 22),
            key=refs.get("key"),
            python=pins.python if pins else "/usr/bin/python3",
        )

    @staticmethod
    def wait_for_ssh(address: str, port: int = 22, timeout_s: float | None = None) -> None:
        timeout_s = SSH_WAIT_S if timeout_s is None else timeout_s
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
        if self.aws.workspace_root:
            return f"{self.aws.workspace_root.rstrip('/')}/{machine.id}"
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

    def configure(self, machine: "Machine", image: "Image", progress: Progress) -> dict[str, Any]:
        from deepops_infra.configure import configure_host

        host = self._host(machine)
        progress.detail(f"waiting for SSH on {host.address}")
        self.wait_for_ssh(host.address, host.port)
        self._prepare_workspace(machine, host, self.workspace(machine, host.user))
        manifest = configure_host(self.settings, machine.id, host, image, self.workspace(machine, host.user), progress)
        manifest["image_pin"] = machine.image_pin
        manifest["workspace"] = self.workspace(machine, host.user)
        return manifest

    def validate(self, machine: "Machine", image: "Image", progress: Progress) -> dict[str, Any]:
        from deepops_infra.validation import check_manifest

        checks = check_manifest(image, machine.manifest or {})
        return {"passed": all(c["passed"] for c in checks), "checks": checks}

    def destroy(self, machine: "Machine", progress: Progress) -> None:
        """Destroy the stack; returns only when its state holds no resource (then the stack is removed)."""
        self.engine.destroy(machine.id, progress.detail)
        access.forget_key(self.settings.home, machine.id)

    # -- read path ---------------------------------------------------------------------------

    def regions(self) -> list[str]:
        if self.aws.regions:
            return list(self.aws.regions)
        from deepops_infra.catalog import load_catalog

        return sorted({o.region for o in load_catalog(self.settings.home) if o.cloud == "aws"})

    def discover(self) -> list[Resource]:
        return readpath.discover(self.clients, self.regions(), self._installation_id())

    def utilization(self, machine: "Machine") -> Utilization | None:
        instance_id = (machine.provider_refs or {}).get("instance_id")
        if not instance_id or not machine.region:
            return None
        return readpath.utilization(self.clients, machine.region, instance_id)

    def terminate_resource(self, resource: Resource) -> None:
        """Break-glass terminate by instance ID (the instance must carry this installation's tags)."""
        location = resource.location or ""
        region = location[:-1] if location[-1:].isalpha() else location  # us-east-1b -> us-east-1
        state = readpath.terminate(self.clients, region, resource.resource_id, self._installation_id())
        if state not in ("shutting-down", "terminated"):
            raise OperationError(f"{resource.resource_id}: EC2 reports {state} after terminate")

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

    def doctor(self) -> list[tuple[str, bool, str]]:
        from deepops_infra.engine.pulumi_backend import INSTALL_HINT, pulumi_cli

        rows: list[tuple[str, bool, str]] = []
        cli = pulumi_cli()
        rows.append(("pulumi CLI", cli is not None, cli or INSTALL_HINT))
        try:
            ok, detail = self.clients.has_credentials()
        except UserError as exc:
            ok, detail = False, str(exc)
        rows.append(("credentials", ok, detail))
        from deepops_infra.providers.aws.images import load_pins

        pins = load_pins()
        # Informational: placement skips a region an image has no pin in, and says so.
        detail = "; ".join(f"{name}: {', '.join(sorted(p.regions))}" for name, p in sorted(pins.items()))
        rows.append(("image pins", bool(pins), detail or "images/aws.lock.yaml has no pins"))
        return rows
