"""The on-prem provider: leases of exclusive GPUs on pool hosts.

A lease is a workspace on a host, the image's pinned environment layered into it from the host's
cache (built once per host and lock), and CUDA_VISIBLE_DEVICES set to the leased GPUs. The steps
are the roles' host-side code (roles/playbooks/module_utils/deepops_onprem_host.py), run directly
over a local process or one SSH round trip (hostcall.py): an Ansible play start costs seconds.
Exclusivity is the ledger's job: `gpu_leases` has a
unique index over (host, gpu_index) for active leases, so two `up` can never hold the same GPU.
"""

import json
import os
import shlex
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update

from deepops_infra.config import Settings
from deepops_infra.errors import CapacityError, OperationError, UserError
from deepops_infra.intake import disk_shortfall
from deepops_infra.ledger import store
from deepops_infra.ledger.db import Ledger
from deepops_infra.ledger.schema import GpuLease, Machine
from deepops_infra.pool import Pool, PoolHost, load_pool
from deepops_infra.pricing import onprem_price
from deepops_infra.progress import Progress
from deepops_infra.providers.base import Plan, Provider, ProvisionError, Resource, SessionCommand, Utilization
from deepops_infra.providers.onprem import hostcall
from deepops_infra.providers.onprem.envcache import EnvCacheSettings
from deepops_infra.providers.onprem.inventory import HostCapacity, capacity, detect
from deepops_infra.validation import check_gpus, check_manifest, gpu_validation, has_torch

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from deepops_infra.images import Image
    from deepops_infra.request import MachineRequest


class OnpremProvider(Provider):
    cloud = "onprem"

    def __init__(self, settings: Settings, ledger: Ledger) -> None:
        self.settings = settings
        self.ledger = ledger
        self._pool: Pool | None = None
        self._capacity: dict[str, HostCapacity] = {}
        # host -> (the root listed, the lease workspaces found there) by the last discover()
        self._scanned: dict[str, tuple[str, set[str]]] = {}

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            self._pool = load_pool(self.settings.pool_path)
        return self._pool

    def workspace_root(self, host: PoolHost) -> str:
        if host.workspace_root:
            return host.workspace_root
        return str(self.settings.workspaces) if host.connection == "local" else "~/.deepops/workspaces"

    # -- planning ---------------------------------------------------------------------------

    def _candidates(self, request: "MachineRequest") -> list[PoolHost]:
        if request.spot:
            raise UserError("--spot: on-prem leases are never preempted; drop --spot or use a cloud target")
        hosts = self.pool.hosts
        if request.host:
            hosts = [self.pool.get(request.host)]
        if request.region:
            hosts = [h for h in hosts if h.labels.get("region") == request.region]
            if not hosts:
                regions = sorted({h.labels["region"] for h in self.pool.hosts if "region" in h.labels})
                raise UserError(
                    f"--region: no pool host has label region={request.region}; "
                    f"regions in the pool: {', '.join(regions) or 'none'}"
                )
        if not hosts:
            raise UserError("the on-prem pool is empty; add a host with `deepops pool add`")
        return hosts

    def image_pin(self, image: "Image", region: str | None) -> str | None:
        """On-prem an image is pinned by its hashed package lock, the same on every host."""
        return image.onprem.pin if image.onprem else None

    def plan(self, request: "MachineRequest", image: "Image") -> list[Plan]:
        """The pool's hosts, and its clusters where it has any (planned by their own provider)."""
        if not self.pool.clusters:
            return self._host_plans(request, image)
        from deepops_infra.providers.slurm.placement import combined

        return combined(self, self._host_plans, request, image)

    def _host_plans(self, request: "MachineRequest", image: "Image") -> list[Plan]:
        from deepops_infra.agent.settings import AgentSettings

        AgentSettings.load(self.settings)  # a bad `agent:` section fails here, before anything is written
        EnvCacheSettings.load(self.settings)  # and so does a bad `env_cache:`
        pin = self.image_pin(image, None)
        if pin is None:
            raise UserError(f"--image {image.name}: the image has no on-prem pin; choose another image")
        plans, offered = [], []
        for host in self._candidates(request):
            if request.disk_gb and (short := disk_shortfall(self.settings, host, request.disk_gb)):
                offered.append(short)  # --disk: a host known to lack the room is never planned
                continue
            if request.gpus.count == 0:
                gpus: list[int] = []
            else:
                cap = capacity(self.settings, self.ledger, host)
                self._capacity[host.name] = cap
                matching = [g for g in cap.gpus if g.matches(request.gpus.model)]
                offered.append(f"{host.name} has {len(matching)}")
                if len(matching) < request.gpus.count:
                    continue
                gpus = [g.index for g in matching]
            price = onprem_price(host.host_hour, host.gpu_hour, request.gpus.count)
            plans.append(
                Plan(
                    cloud="onprem",
                    region=host.labels.get("region"),
                    host=host.name,
                    instance_type=None,
                    accelerator=request.gpus.model
                    or (self._capacity[host.name].gpus[0].model if request.gpus.count else None),
                    accelerator_count=request.gpus.count,
                    image_pin=pin,
                    price=price,
                    details={"candidate_gpus": gpus},
                )
            )
        if not plans:
            what = f"{request.gpus.count} x {request.gpus.model or 'any GPU'}"
            raise CapacityError(
                f"--gpus {request.gpus}: no pool host offers {what} ({'; '.join(offered)}); see `deepops pool ls`"
            )
        return sorted(plans, key=lambda p: (p.price.per_hour, p.host or ""))

    def reserve(self, session: "Session", machine: Machine, plans: list[Plan]) -> Plan:
        now = machine.created_at
        busy_hosts = []
        for plan in plans:
            if plan.cloud != self.cloud:  # a cluster's plan: its scheduler holds the GPUs
                return plan
            wanted = plan.accelerator_count
            if wanted:
                held = set(
                    session.scalars(
                        select(GpuLease.gpu_index).where(GpuLease.host == plan.host, GpuLease.released_at.is_(None))
                    )
                )
                free = [i for i in plan.details["candidate_gpus"] if i not in held]
                if len(free) < wanted:
                    busy_hosts.append(f"{plan.host}: {len(free)} free")
                    continue
                chosen = free[:wanted]
                session.add_all(
                    GpuLease(machine_id=machine.id, host=plan.host, gpu_index=i, leased_at=now) for i in chosen
                )
                if (cap := self._capacity.get(plan.host or "")) and cap.detected_at is not None:
                    session.merge(cap.to_cache())
            else:
                chosen = []
            session.flush()  # the unique index speaks now, not at commit
            details = {k: v for k, v in plan.details.items() if k != "candidate_gpus"}
            return Plan(**{**plan.__dict__, "details": {**details, "gpu_indexes": chosen}})
        raise CapacityError(
            f"--gpus {machine.request['gpus']}: every matching GPU is leased right now "
            f"({'; '.join(busy_hosts)}); try again later or see `deepops ls`"
        )

    def release_reservation(self, session: "Session", machine: Machine, at: datetime) -> None:
        session.execute(
            update(GpuLease)
            .where(GpuLease.machine_id == machine.id, GpuLease.released_at.is_(None))
            .values(released_at=at)
        )

    # -- lifecycle ---------------------------------------------------------------------------

    def _host(self, machine: Machine) -> PoolHost:
        return self.pool.get(machine.host or "")

    def _host_call(self, host: PoolHost, op: str, args: dict[str, Any], what: str) -> Any:
        """A lease step on the host, run directly (no play; the roles' modules run the same code).
        Its failure says `what` failed, keeping the error's kind (unreachable, cancelled)."""
        from deepops_infra.ansible import PlayCancelled

        try:
            return hostcall.call(self.settings, host, self._ssh(host), op, args)
        except PlayCancelled:
            raise
        except OperationError as exc:
            raise type(exc)(f"{what}: {exc}") from None

    def _installation(self) -> str:
        with self.ledger.write() as session:
            return store.installation_id(session)

    def create(self, machine: Machine, progress: Progress) -> dict[str, Any]:
        from deepops_infra.ansible import PlayCancelled

        host = self._host(machine)
        indexes = machine.plan.get("gpu_indexes", [])
        progress.detail(f"lease workspace on {host.name}")
        args = {
            "machine_id": machine.id,
            "installation_id": self._installation(),
            "workspace_root": self.workspace_root(host),
            "gpu_indexes": indexes,
            "gpus_declared": host.declared_gpus is not None,
            "disk_gb": machine.request.get("disk_gb") or 0,
        }
        try:
            lease = self._host_call(host, "lease", args, f"lease on {host.name} failed")
        except hostcall.HostUnreachable as exc:
            raise ProvisionError(str(exc), created=False) from None
        except PlayCancelled:
            raise
        except OperationError as exc:
            raise ProvisionError(str(exc), created=True) from None
        return {
            "created": True,
            "host": host.name,
            "connection": host.connection,
            "address": host.address,
            "workspace": lease.get("workspace"),
            "gpu_indexes": indexes,
            "host_gpus": lease.get("gpus", []),
            "driver_version": lease.get("driver_version"),
            "host_facts": lease.get("host", {}),
        }

    def configure(self, machine: Machine, image: "Image", progress: Progress) -> dict[str, Any]:
        """The image's environment from the host's cache (built there once per lock), and the agent."""
        from deepops_infra.providers.onprem.envcache import configure_request, configured_manifest

        assert image.onprem is not None
        host = self._host(machine)
        workspace = machine.provider_refs["workspace"]
        agent = self._agent_vars(machine, host, workspace)
        args = configure_request(self.settings, image, workspace, host.python, host, agent)
        progress.detail(f"pinned environment sha256:{image.onprem.sha256[:12]} (built once per host)")
        done = self._host_call(host, "configure", args, f"configuring {image.name} on {host.name} failed")
        manifest = configured_manifest(done, image)
        manifest["driver_version"] = machine.provider_refs.get("driver_version")
        return manifest

    def validate(self, machine: Machine, image: "Image", progress: Progress) -> dict[str, Any]:
        refs = machine.provider_refs or {}
        checks = check_manifest(image, machine.manifest or {})
        if self._host(machine).declared_gpus is None:
            checks.append(
                check_gpus(
                    machine.accelerator, machine.gpu_count, refs.get("host_gpus", []), refs.get("gpu_indexes", [])
                )
            )
        result: dict[str, Any] = {}
        if machine.gpu_count > 0:
            # A GPU lease proves its GPUs deliver (torch in the lease); CPU leases stay fast.
            if has_torch(machine):
                progress.detail("GPU validation: inventory, matmul, bandwidths")
                measured = gpu_validation(self, machine, image)
                checks += measured["checks"]
                result["gpu"] = measured["gpu"]
            else:
                checks.append(
                    {
                        "name": "gpu performance",
                        "passed": True,
                        "detail": f"not measured: image {image.name} has no torch (an image with torch is validated)",
                    }
                )
        return {"passed": all(c["passed"] for c in checks), "checks": checks, **result}

    def destroy(self, machine: Machine, progress: Progress) -> None:
        refs = machine.provider_refs or {}
        try:
            host = self._host(machine)
        except UserError:
            if not refs.get("created"):
                return  # never got to the host
            raise OperationError(
                f"{machine.id}: host {machine.host} is no longer in the pool; add it back to release the lease"
            ) from None
        workspace = refs.get("workspace") or f"{self.workspace_root(host).rstrip('/')}/{machine.id}"
        if workspace.startswith("~"):
            workspace = ""  # never resolved on the host: nothing was created there
        args = {"machine_id": machine.id, "installation_id": self._installation(), "workspace": workspace}
        try:
            self._host_call(host, "release", args, f"releasing {machine.id} on {host.name} failed")
        except hostcall.HostUnreachable:
            if refs.get("created"):
                raise
            # the lease step never reached the host: nothing exists there

    # -- read path ---------------------------------------------------------------------------

    def _agent_vars(self, machine: Machine, host: PoolHost, workspace: str) -> dict[str, Any]:
        """The agent role's variables (configure installs and starts it in the lease)."""
        from deepops_infra.agent.settings import AgentSettings

        installation = self._installation()
        return AgentSettings.load(self.settings).role_vars(
            machine,
            installation,
            mode="onprem",
            python=host.python,
            state_dir=f"{workspace}/.deepops/agent",
            workspace=workspace,
            gpu_indexes=list((machine.provider_refs or {}).get("gpu_indexes") or []),
        )

    def _ssh(self, host: PoolHost) -> list[str]:
        from deepops_infra.providers.onprem.session import pool_ssh

        return pool_ssh(self.settings.home, host)

    def _on_host(self, host: PoolHost, argv: list[str], stdin: str | None = None) -> str:
        """Run a short command on the host (locally or over SSH); its stdout, or OperationError."""
        if host.connection != "local":
            target = f"{host.user}@{host.address}" if host.user else host.address
            ssh = [*self._ssh(host), *hostcall.reuse(self.settings), "-o", "ConnectTimeout=10"]
            argv = [*ssh, target, shlex.join(argv)]
        try:
            proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise OperationError(f"{host.name}: {exc}") from None
        if proc.returncode != 0:
            raise OperationError(f"{host.name}: {' '.join(proc.stderr.split())[:300] or f'exit {proc.returncode}'}")
        return proc.stdout

    @staticmethod
    def _agent_dir(machine: Machine) -> str | None:
        workspace = (machine.provider_refs or {}).get("workspace")
        return f"{workspace}/.deepops/agent" if workspace else None

    def _workspaces(self, host: PoolHost, *args: str) -> Any:
        """workspaces.py on the host: `ROOT` lists the leases, `--prune ROOT SECONDS ID` prunes."""
        from deepops_infra.providers.onprem import workspaces

        if host.connection == "local":
            if args[0] == "--prune":
                return workspaces.prune(args[1], float(args[2]), args[3])
            return workspaces.scan(args[0])
        source = Path(workspaces.__file__).read_text()
        return json.loads(self._on_host(host, [host.python, "-", *args], stdin=source))

    def discover(self) -> list[Resource]:
        """The lease workspaces found on every reachable pool host, tagged like cloud resources.

        A workspace is this installation's only when its lease marker (written by the lease
        role when it created the workspace, owned by the host user) names this installation and
        the workspace's own machine ID. Any other `m-*` directory is listed as unmanaged (a
        marker of another installation: as that installation's), so the reaper never acts on
        it. Hosts that cannot be listed are skipped, so nothing on them is ever taken for gone.
        """
        self._scanned = {}
        resources = []
        for host in self.pool.hosts:
            root = self.workspace_root(host)
            try:
                listing = self._workspaces(host, root)
            except (OperationError, ValueError):
                continue
            found = listing["leases"]
            self._scanned[host.name] = (listing["root"].rstrip("/"), {f["name"] for f in found})
            for lease in found:
                tags = {"deepops-machine": lease["name"]}
                marker = lease.get("marker") or {}
                if marker.get("machine_id") == lease["name"] and marker.get("installation_id"):
                    tags["deepops-managed"] = "true"
                    tags["deepops-installation"] = marker["installation_id"]
                if lease["protect"]:
                    tags["deepops-protect"] = "true"
                resources.append(
                    Resource(
                        cloud="onprem",
                        machine_id=lease["name"],
                        resource_id=lease["path"],
                        state="ended" if lease["ended"] else "leased",
                        tags=tags,
                        location=host.name,
                    )
                )
        return resources

    def confirm_gone(self, machine: Machine) -> datetime | None:
        """Gone when the last discover() listed the root of the machine's recorded workspace on its
        host and the workspace was not there (a root moved in the pool file proves nothing)."""
        scanned = self._scanned.get(machine.host or "")
        workspace = (machine.provider_refs or {}).get("workspace")
        if scanned is None or not workspace:
            return None
        root, names = scanned
        if machine.id in names or os.path.dirname(workspace.rstrip("/")) != root:
            return None
        return datetime.now(UTC)

    def terminate_resource(self, resource: Resource) -> str | None:
        """Release a lease workspace that has no live machine: end its processes, then move the
        workspace to `<root>/.deepops-quarantine/<machine>-<UTC time>` on its host (pruned by
        prune_quarantine), never delete it. The release step checks the marker again first."""
        from deepops_infra.providers.onprem.workspaces import QUARANTINE, STAMP

        host = self.pool.get(resource.location or "")
        name = resource.machine_id or Path(resource.resource_id).name
        now = datetime.now(UTC)
        quarantine = f"{os.path.dirname(resource.resource_id.rstrip('/'))}/{QUARANTINE}/{name}-{now:{STAMP}}"
        args = {
            "machine_id": name,
            "installation_id": self._installation(),
            "workspace": resource.resource_id,
            "quarantine": quarantine,
        }
        released = self._host_call(host, "release", args, f"releasing orphan {name} on {host.name} failed") or {}
        if not released.get("present", True):
            return "already gone"
        if not released.get("quarantined"):
            raise OperationError(f"{resource.resource_id} on {host.name}: its lease marker is gone; left alone")
        return f"processes ended ({len(released.get('pids') or [])}), workspace moved to {quarantine}"

    def prune_quarantine(self, older_than: timedelta) -> list[Resource]:
        """Remove the quarantined workspaces of this installation older than `older_than` from
        every reachable pool host; what was removed."""
        installation = self._installation()
        pruned = []
        for host in self.pool.hosts:
            args = ("--prune", self.workspace_root(host), str(int(older_than.total_seconds())), installation)
            try:
                paths = self._workspaces(host, *args)
            except (OperationError, ValueError):
                continue
            for path in paths:
                name = os.path.basename(path).rsplit("-", 1)[0]
                tags = {"deepops-managed": "true", "deepops-installation": installation, "deepops-machine": name}
                pruned.append(Resource("onprem", name, path, "deleted", tags=tags, location=host.name))
        return pruned

    def checkin(self, machine: Machine, control: dict[str, Any]) -> None:
        """Write the agent's checkin.json: the control plane is alive, and the current expiry."""
        from deepops_infra.agent import status as agent_status

        state_dir = self._agent_dir(machine)
        if not state_dir:
            return
        data = json.dumps(control)
        host = self._host(machine)
        if host.connection == "local":
            if not os.path.isdir(state_dir):
                return
            tmp = f"{state_dir}/checkin.json.tmp"
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
                f.write(data)
            os.replace(tmp, f"{state_dir}/checkin.json")
            return
        self._on_host(host, ["sh", "-c", agent_status.checkin_script(state_dir)], stdin=data)

    def utilization(self, machine: Machine) -> Utilization | None:
        """The agent's status where the lease has an agent; else a fresh nvidia-smi reading."""
        from deepops_infra.agent import status as agent_status

        state_dir = self._agent_dir(machine)
        host = self._host(machine)
        if state_dir:
            if host.connection == "local":
                if os.path.exists(f"{state_dir}/config.json"):
                    try:
                        return agent_status.from_status(Path(state_dir, "status.json").read_text())
                    except OSError as exc:
                        return agent_status.unreadable(f"agent status: {exc}")
            else:
                quoted = shlex.quote(state_dir)
                script = f"if [ -f {quoted}/config.json ]; then echo agent; cat {quoted}/status.json 2>/dev/null; fi"
                try:
                    out = self._on_host(host, ["sh", "-c", script])
                except OperationError as exc:
                    return agent_status.unreadable(str(exc))
                if out.startswith("agent"):
                    return agent_status.from_status(out[len("agent") :].strip())
        found = detect(self.settings, [host])[host.name]
        now = datetime.now(UTC)
        if isinstance(found, str):
            return Utilization(at=now, gpu_percent=[], gpu_memory_percent=[], active=None)
        leased = set((machine.provider_refs or {}).get("gpu_indexes", []))
        gpus = [g for g in found.facts.get("raw_gpus", []) if g["index"] in leased]
        util = [float(g.get("utilization_percent") or 0) for g in gpus]
        mem = [100.0 * (g.get("memory_used_mib") or 0) / g["memory_mib"] for g in gpus if g.get("memory_mib")]
        return Utilization(
            at=now, gpu_percent=util, gpu_memory_percent=mem, active=None if not gpus else any(u > 0 for u in util)
        )

    def shell_command(self, machine: Machine, command: list[str] | None) -> list[str]:
        refs = machine.provider_refs or {}
        if not refs.get("workspace"):
            raise UserError(f"{machine.id} is {machine.status}: its lease has no workspace yet")
        env_file = f"{refs['workspace']}/.deepops/env.sh"
        inner = ["bash", "-c", '. "$0" && exec "$@"', env_file, *(command or ["bash", "-il"])]
        host = self._host(machine)
        if host.connection == "local":
            return inner
        ssh = self._ssh(host)
        if command is None:
            ssh.append("-t")
        target = f"{host.user}@{host.address}" if host.user else host.address
        return [*ssh, target, shlex.join(inner)]

    def session_command(self, machine: Machine, public_key: str) -> SessionCommand:
        from deepops_infra.providers.onprem import session

        return session.session_command(self.settings, self._host(machine), machine, public_key)

    def doctor(self) -> list[tuple[str, bool, str]]:
        import shutil

        rows: list[tuple[str, bool, str]] = []
        try:
            pool = self.pool
            rows.append(("pool file", True, f"{self.settings.pool_path} ({len(pool.hosts)} hosts)"))
        except UserError as exc:
            return [("pool file", False, str(exc))]
        try:
            import ansible_runner  # noqa: F401

            rows.append(("ansible-runner", True, "importable"))
        except ImportError:
            rows.append(("ansible-runner", False, "pip install ansible-runner"))
        for host in pool.hosts:
            if host.key and not Path(host.key).expanduser().exists():
                rows.append((f"host {host.name}", False, f"SSH key {host.key} not found"))
        if any(h.connection == "ssh" for h in pool.hosts):
            ok = shutil.which("ssh") is not None
            rows.append(("ssh client", ok, "found" if ok else "install openssh-client"))
        return rows
