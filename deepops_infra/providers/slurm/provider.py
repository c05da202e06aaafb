"""The Slurm provider: a lease is a batch job holding an allocation on a cluster of the pool.

Slurm owns exclusivity (no GPU rows in the ledger: the scheduler never double-books), its time
limit (TTL + the dead-man grace) is the hard cap that holds when deepops is gone, and its own
start and end times bound the usage the ledger bills at the cluster's rates. The job's name and
comment carry the machine and installation IDs: discovery lists only jobs with those marks, so
another user's job is never touched. The workspace lives on storage the login node and the
nodes share; the image's environment is installed there from the login side (the configure
play), and the agent runs inside the allocation (the batch script starts it).
"""

import contextlib
import json
import os
import shlex
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepops_infra.config import Settings
from deepops_infra.errors import CapacityError, OperationError, UserError
from deepops_infra.ledger import store
from deepops_infra.ledger.db import Ledger
from deepops_infra.ledger.schema import Machine
from deepops_infra.pool import Pool, PoolHost, load_pool
from deepops_infra.pool_clusters import PoolCluster
from deepops_infra.pricing import onprem_price
from deepops_infra.progress import Progress
from deepops_infra.providers.base import Plan, Provider, ProvisionError, Resource, SessionCommand, Utilization
from deepops_infra.providers.ownership import carries
from deepops_infra.providers.slurm import lease
from deepops_infra.providers.slurm.capacity import Offer, node_gpus, offers
from deepops_infra.providers.slurm.commands import Job, Slurm, SlurmError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from deepops_infra.images import Image
    from deepops_infra.request import MachineRequest

Ended = tuple[datetime | None, datetime | None, str]  # Slurm's start, end, and which record said so
POLL = 0.3
SLOW_POLL = 1.0  # a job still waiting after a few seconds: squeue once a second
END_WAIT = 60.0  # seconds a cancelled job may take to end (KillWait and the epilog)


class SlurmProvider(Provider):
    cloud = "slurm"

    def __init__(self, settings: Settings, ledger: Ledger) -> None:
        self.settings = settings
        self.ledger = ledger
        self._pool: Pool | None = None
        self._listed: dict[str, dict[str, Job]] = {}  # cluster -> job ID -> job, by the last discover()
        self._ended: dict[str, Ended] = {}  # machine -> Slurm's start, end and where they came from

    @property
    def pool(self) -> Pool:
        if self._pool is None:
            self._pool = load_pool(self.settings.pool_path)
        return self._pool

    def cluster(self, name: str) -> PoolCluster:
        found = self.pool.cluster(name)
        if found is None:
            known = ", ".join(c.name for c in self.pool.clusters) or "none"
            raise UserError(f"unknown cluster {name!r}; clusters in the pool: {known} (see `deepops pool ls`)")
        return found

    def slurm(self, cluster: PoolCluster) -> Slurm:
        return Slurm(cluster, self.settings.home / "known_hosts")

    def workspace_root(self, cluster: PoolCluster) -> str:
        if cluster.workspace_root:
            return cluster.workspace_root
        return str(self.settings.home / "slurm") if cluster.connection == "local" else "~/.deepops/slurm"

    def image_pin(self, image: "Image", region: str | None) -> str | None:
        return image.onprem.pin if image.onprem else None

    # -- planning ---------------------------------------------------------------------------

    def _clusters(self, request: "MachineRequest") -> list[PoolCluster]:
        if request.spot:
            raise UserError("--spot: Slurm leases are never preempted by deepops; drop --spot")
        clusters = list(self.pool.clusters)
        if request.host:
            clusters = [self.cluster(request.host)]
        if not clusters:
            raise UserError("the pool has no clusters; add a `clusters:` entry to pool.yaml (see docs/slurm.md)")
        return clusters

    def plan(self, request: "MachineRequest", image: "Image") -> list[Plan]:
        pin = self.image_pin(image, None)
        if pin is None:
            raise UserError(f"--image {image.name}: the image has no on-prem pin; choose another image")
        plans: list[Plan] = []
        said: list[str] = []
        for cluster in self._clusters(request):
            partitions = cluster.partitions
            if request.region:
                if request.region not in partitions:
                    said.append(f"{cluster.name}: no partition {request.region} (offers {', '.join(partitions)})")
                    continue
                partitions = (request.region,)
            try:
                nodes = [node_gpus(n) for n in self.slurm(cluster).nodes()]
            except SlurmError as exc:
                said.append(str(exc))
                continue
            plans += self._cluster_plans(cluster, partitions, offers(cluster, nodes), request, pin, said)
        if not plans:
            raise CapacityError(f"--gpus {request.gpus}: no cluster can ever hold it ({'; '.join(said)})")
        # Price first, then availability: the offer with more free GPUs on one node now.
        return sorted(plans, key=lambda p: (p.price.per_hour, -p.details["free_gpus"], p.host or "", p.region or ""))

    def _cluster_plans(
        self,
        cluster: PoolCluster,
        partitions: tuple[str, ...],
        found: list[Offer],
        request: "MachineRequest",
        pin: str,
        said: list[str],
    ) -> list[Plan]:
        wanted, model = request.gpus.count, request.gpus.model
        price = onprem_price(cluster.node_hour, cluster.gpu_hour, wanted)
        plans = []
        for partition in partitions:
            here = [o for o in found if o.partition == partition]
            if wanted:
                here = [o for o in here if model is None or _same_model(o.model, model)]
                fits = [o for o in here if o.largest_node >= wanted]
                if not fits:
                    most = max((o.largest_node for o in here), default=0)
                    said.append(f"{cluster.name}/{partition}: {most} x {model or 'GPU'} on its largest node")
                    continue
                best = max(fits, key=lambda o: o.largest_free)
                kind, accel, free = best.gres_type, best.model, best.largest_free
            else:
                kind, accel, free = None, None, 0
            details = {"cluster": cluster.name, "partition": partition, "gres_type": kind, "free_gpus": free}
            plans.append(
                Plan(
                    cloud=self.cloud,
                    region=partition,
                    host=cluster.name,
                    instance_type=None,
                    accelerator=accel,
                    accelerator_count=wanted,
                    image_pin=pin,
                    price=price,
                    details=details,
                )
            )
        return plans

    def reserve(self, session: "Session", machine: Machine, plans: list[Plan]) -> Plan:
        return plans[0]  # Slurm keeps GPUs exclusive; the job is the reservation

    # -- lifecycle ---------------------------------------------------------------------------

    def _installation(self) -> str:
        with self.ledger.write() as session:
            return store.installation_id(session)

    def create(self, machine: Machine, progress: Progress) -> dict[str, Any]:
        from deepops_infra.agent.settings import AgentSettings

        cluster = self.cluster(machine.host or "")
        slurm = self.slurm(cluster)
        plan = machine.plan
        installation = self._installation()
        workspace = f"{self.workspace_root(cluster).rstrip('/')}/{machine.id}"
        if cluster.connection == "local":
            Path(workspace).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        grace = AgentSettings.load(self.settings).grace
        from datetime import timedelta

        minutes = lease.time_limit_minutes(timedelta(seconds=int(machine.request["ttl"])), grace)
        options = lease.sbatch_options(
            cluster,
            machine_id=machine.id,
            comment_text=lease.comment(machine, installation),
            partition=plan["partition"],
            team=machine.team,
            minutes=minutes,
            gpus=machine.gpu_count,
            gres_type=plan.get("gres_type"),
        )
        try:
            job_id = slurm.sbatch(options, lease.holder_script(workspace, machine.id, installation, cluster.python))
        except SlurmError as exc:
            raise ProvisionError(f"Slurm refused the job: {_reason_text(exc)}", created=False) from None
        refs = {"created": True, "cluster": cluster.name, "job_id": job_id, "workspace": workspace}
        self._save_refs(machine, refs)  # the job exists: a crash from here on leaves a traceable job
        wait = machine.request.get("wait")  # `--wait`, else the cluster's setting
        job = self._await_start(slurm, job_id, float(wait) if wait is not None else cluster.wait_seconds, progress)
        self._started(machine, job)
        return refs | {
            "node": job.nodes,
            "gpu_indexes": list(job.gpu_indexes),
            "gres_type": job.gres_type,
            "started_at": job.start.isoformat() if job.start else None,
            "time_limit_minutes": job.time_limit_minutes,
        }

    def _save_refs(self, machine: Machine, refs: dict[str, Any]) -> None:
        with self.ledger.write() as session:
            row = store.find_machine(session, machine.id)
            row.provider_refs = dict(refs)
        machine.provider_refs = dict(refs)

    def _await_start(self, slurm: Slurm, job_id: str, wait: float, progress: Progress) -> Job:
        """The job once RUNNING. While it waits, its reason and queue position are shown; past
        `wait` it is cancelled (and confirmed ended) and the lease refused with Slurm's reason."""
        from deepops_infra.ansible import PLAY_CANCEL, PlayCancelled

        cancelled = PLAY_CANCEL.get()  # the launch's release asked for (`down` while it waits)
        deadline = time.monotonic() + wait
        shown = None
        while True:
            if cancelled is not None and cancelled():
                raise PlayCancelled(f"job {job_id}: stopped waiting, the launch was cancelled")
            jobs = slurm.jobs(all_states=True)
            job = next((j for j in jobs if j.id == job_id), None)
            if job is None:
                raise ProvisionError(f"job {job_id} is no longer known to Slurm", created=True)
            if job.state == "RUNNING" and job.start is not None:
                return job
            if job.state not in lease.WAITING_STATES:
                raise ProvisionError(f"job {job_id} ended {job.state} ({job.reason}) before it ran", created=True)
            position = _queue_position(job, jobs)
            note = f"waiting for Slurm: {job.reason}, position {position} in the {job.partition} queue"
            if note != shown:
                progress.detail(note)
                shown = note
            if time.monotonic() >= deadline:
                self._cancel_and_confirm(slurm, job_id)
                raise CapacityError(
                    f"Slurm could not start the lease within {int(wait)}s: {job.reason} "
                    f"(position {position} in partition {job.partition}); the job was cancelled"
                )
            time.sleep(POLL if deadline - time.monotonic() > wait - 5 else SLOW_POLL)  # quick first, then gentle

    def _cancel_and_confirm(self, slurm: Slurm, job_id: str) -> Job | None:
        """scancel, then wait until Slurm says the job ended; the ended job (None: forgotten)."""
        try:
            slurm.scancel(job_id)
        except SlurmError as exc:
            if "Invalid job id" not in str(exc) and "already completing" not in str(exc):
                raise
        deadline = time.monotonic() + END_WAIT
        while True:
            job = next(iter(slurm.jobs([job_id], all_states=True)), None)
            if job is None or (not job.active and job.state != "COMPLETING"):
                return job
            if time.monotonic() > deadline:
                raise OperationError(f"job {job_id} is still {job.state} {int(END_WAIT)}s after scancel")
            time.sleep(POLL)

    def _started(self, machine: Machine, job: Job) -> None:
        """The job runs: its GPUs go into the plan (as a host lease's do), and the machine's usage
        starts when Slurm started the job, not when it was submitted."""
        from sqlalchemy import select

        from deepops_infra.ledger.schema import UsageInterval

        started = job.start
        with self.ledger.write() as session:
            row = store.find_machine(session, machine.id)
            row.plan = machine.plan = {**row.plan, "gpu_indexes": list(job.gpu_indexes)}
            if started is None:
                return
            for interval in session.scalars(
                select(UsageInterval).where(UsageInterval.machine_id == machine.id, UsageInterval.ended_at.is_(None))
            ):
                if interval.started_at < started:
                    interval.started_at = started
            from deepops_infra.pricing import epoch_us

            row.usage_from_us = epoch_us(started)

    def configure(self, machine: Machine, image: "Image", progress: Progress) -> dict[str, Any]:
        """The image's environment layered from the login side's cache into the workspace (shared
        with the nodes), and the agent's files; the batch script starts the agent in the allocation.
        The same host-side code as an on-prem host's lease (providers/onprem/hostcall.py)."""
        from deepops_infra.agent.settings import AgentSettings
        from deepops_infra.providers.onprem import hostcall
        from deepops_infra.providers.onprem.envcache import configure_request, configured_manifest

        assert image.onprem is not None
        cluster = self.cluster(machine.host or "")
        workspace = machine.provider_refs["workspace"]
        login = self._login_host(cluster)
        agent = AgentSettings.load(self.settings).role_vars(
            machine,
            self._installation(),
            mode="onprem",
            python=cluster.python,
            state_dir=f"{workspace}/.deepops/agent",
            workspace=workspace,
            gpu_indexes=list(machine.provider_refs.get("gpu_indexes") or []),
        )
        # the batch script starts the agent inside the allocation
        args = configure_request(self.settings, image, workspace, cluster.python, login, agent, start_agent=False)
        progress.detail(f"pinned environment sha256:{image.onprem.sha256[:12]} (built once per login node)")
        try:
            done = hostcall.call(self.settings, login, self.slurm(cluster).ssh_options(), "configure", args)
        except OperationError as exc:
            raise type(exc)(f"configuring {image.name} on {cluster.name} failed: {exc}") from None
        return configured_manifest(done, image)

    def _login_host(self, cluster: PoolCluster) -> PoolHost:
        """The cluster's controller side as a pool host, for the configure play."""
        return PoolHost(
            name=cluster.name,
            connection=cluster.connection,
            address=cluster.address,
            user=cluster.user,
            port=cluster.port,
            key=cluster.key,
            python=cluster.python,
            declared_gpus=(),
        )

    def validate(self, machine: Machine, image: "Image", progress: Progress) -> dict[str, Any]:
        from deepops_infra.validation import check_manifest

        refs = machine.provider_refs or {}
        checks = check_manifest(image, machine.manifest or {})
        got = refs.get("gpu_indexes") or []
        model = self.cluster(machine.host or "").model_of(refs.get("gres_type"))
        ok = len(got) == machine.gpu_count and (machine.gpu_count == 0 or model == machine.accelerator)
        detail = f"Slurm allocated {len(got)} x {model or 'GPU'} (indices {got}) on {refs.get('node')}"
        checks.append({"name": "gpus", "passed": ok, "detail": detail})
        return {"passed": all(c["passed"] for c in checks), "checks": checks}

    def destroy(self, machine: Machine, progress: Progress) -> None:
        refs = machine.provider_refs or {}
        if not refs.get("job_id"):
            if refs.get("created"):
                raise OperationError(f"{machine.id}: its job ID was never recorded; see `squeue --name`")
            return  # never submitted
        cluster = self.cluster(refs.get("cluster") or machine.host or "")
        slurm = self.slurm(cluster)
        job = self._cancel_and_confirm(slurm, refs["job_id"])
        self._ended[machine.id] = _end_record(slurm, refs["job_id"], job)
        self._remove_workspace(cluster, refs.get("workspace"), machine.id)

    def _remove_workspace(self, cluster: PoolCluster, workspace: str | None, machine_id: str) -> None:
        """Remove the lease's workspace when its marker names this machine (data of a released
        lease: the release was asked for; orphans' workspaces are left to their owners)."""
        if not workspace:
            return
        if cluster.connection == "local":
            marker = Path(workspace, ".deepops", "lease.json")
            try:
                if json.loads(marker.read_text()).get("machine_id") == machine_id:
                    shutil.rmtree(workspace, ignore_errors=True)
            except (OSError, ValueError):
                pass
            return
        quoted = shlex.quote(workspace)
        script = f'grep -q \'"machine_id": "{machine_id}"\' {quoted}/.deepops/lease.json && rm -rf {quoted}'
        with contextlib.suppress(SlurmError):
            self.slurm(cluster).run(["sh", "-c", script])

    def release_reservation(self, session: "Session", machine: Machine, at: datetime) -> None:
        """The usage ends when Slurm ended the job: its intervals are clipped to Slurm's own start and
        end, and the machine's totals recomputed."""
        from sqlalchemy import select

        from deepops_infra.costs.query import finalize
        from deepops_infra.ledger.schema import UsageInterval
        from deepops_infra.pricing import epoch_us

        start, end, source = self._ended.pop(machine.id, (None, None, ""))
        if end is None or end > at:
            return
        row = store.find_machine(session, machine.id)
        row.provider_refs = {**(row.provider_refs or {}), "usage_from": source}
        for interval in session.scalars(select(UsageInterval).where(UsageInterval.machine_id == machine.id)):
            if start is not None and interval.started_at < start:
                interval.started_at = min(start, interval.ended_at or start)
            if interval.ended_at is not None and interval.ended_at > end:
                interval.ended_at = max(end, interval.started_at)
        session.flush()
        finalize(session, session.get_bind().dialect.name, [machine.id], epoch_us(at))

    def extend_to(self, machine: Machine, expires_at: datetime) -> None:
        """Raise the job's time limit so it ends at `expires_at` + grace; Slurm's refusal is the user's."""
        from deepops_infra.agent.settings import AgentSettings

        refs = machine.provider_refs or {}
        started = refs.get("started_at")
        if not refs.get("job_id") or not started:
            return  # not running yet: the job is submitted with the ledger's TTL
        grace = AgentSettings.load(self.settings).grace
        minutes = lease.time_limit_minutes(expires_at - datetime.fromisoformat(started), grace)
        cluster = self.cluster(refs.get("cluster") or machine.host or "")
        try:
            self.slurm(cluster).set_time_limit(refs["job_id"], minutes)
        except SlurmError as exc:
            raise UserError(f"{machine.id}: Slurm refused the longer time limit: {_reason_text(exc)}") from None

    # -- read path ---------------------------------------------------------------------------

    def discover(self) -> list[Resource]:
        """Jobs carrying deepops' marks on every cluster that answers (others are skipped, so nothing
        on them is taken for gone). A job without the marks is never listed as ours."""
        self._listed = {}
        resources = []
        for cluster in self.pool.clusters:
            try:
                jobs = self.slurm(cluster).jobs(all_states=True)
            except SlurmError:
                continue
            self._listed[cluster.name] = {j.id: j for j in jobs}
            for job in jobs:
                tags = lease.parse_comment(job.comment)
                if not job.active or not (tags or job.name.startswith(lease.JOB_PREFIX)):
                    continue
                resources.append(
                    Resource(
                        cloud=self.cloud,
                        machine_id=tags.get("deepops-machine") or job.name.removeprefix(lease.JOB_PREFIX),
                        resource_id=f"{cluster.name}:{job.id}",
                        state=job.state.lower(),
                        tags=tags,
                        location=cluster.name,
                    )
                )
        return resources

    def confirm_gone(self, machine: Machine) -> datetime | None:
        """When the machine's job ended (Slurm's own end time), once the last discover() listed its
        cluster and the job was no longer active there."""
        refs = machine.provider_refs or {}
        listed = self._listed.get(refs.get("cluster") or machine.host or "")
        job_id = refs.get("job_id")
        if listed is None or not job_id:
            return None
        job = listed.get(job_id)
        if job is not None and job.active:
            return None
        ended = _end_record(self.slurm(self.cluster(refs.get("cluster") or machine.host or "")), job_id, job)
        if ended[1] is not None:
            self._ended[machine.id] = ended
            return ended[1]
        return datetime.now(UTC) if job is not None else None

    def terminate_resource(self, resource: Resource) -> str | None:
        """Cancel an orphan job, after reading its marks again from Slurm itself."""
        cluster_name, _, job_id = resource.resource_id.partition(":")
        slurm = self.slurm(self.cluster(cluster_name))
        job = next(iter(slurm.jobs([job_id], all_states=True)), None)
        if job is None or not job.active:
            return "already gone"
        if not carries(lease.parse_comment(job.comment), self._installation(), resource.machine_id):
            raise OperationError(f"job {job_id} on {cluster_name} does not carry this installation's marks; left alone")
        self._cancel_and_confirm(slurm, job_id)
        return f"job {job_id} cancelled on {cluster_name}"

    def _agent_dir(self, machine: Machine) -> str | None:
        workspace = (machine.provider_refs or {}).get("workspace")
        return f"{workspace}/.deepops/agent" if workspace else None

    def checkin(self, machine: Machine, control: dict[str, Any]) -> None:
        from deepops_infra.agent import status as agent_status

        state_dir = self._agent_dir(machine)
        if not state_dir:
            return
        cluster = self.cluster(machine.host or "")
        data = json.dumps(control)
        if cluster.connection == "local":
            if os.path.isdir(state_dir):
                tmp = f"{state_dir}/checkin.json.tmp"
                with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
                    f.write(data)
                os.replace(tmp, f"{state_dir}/checkin.json")
            return
        self.slurm(cluster).run(["sh", "-c", agent_status.checkin_script(state_dir)], stdin=data)

    def utilization(self, machine: Machine) -> Utilization | None:
        """The agent's status from the lease's workspace; unreadable counts as active."""
        from deepops_infra.agent import status as agent_status

        state_dir = self._agent_dir(machine)
        if not state_dir:
            return Utilization.unknown(datetime.now(UTC), "no workspace yet")
        cluster = self.cluster(machine.host or "")
        try:
            if cluster.connection == "local":
                text = Path(state_dir, "status.json").read_text()
            else:
                text = self.slurm(cluster).run(["cat", f"{state_dir}/status.json"])
        except (OSError, SlurmError) as exc:
            return agent_status.unreadable(f"agent status: {exc}")
        return agent_status.from_status(text)

    def shell_command(self, machine: Machine, command: list[str] | None) -> list[str]:
        """`srun --jobid=<job> --overlap` from the controller side: inside the allocation, with
        exactly its GPUs; the lease's env.sh first."""
        refs = machine.provider_refs or {}
        if not refs.get("job_id") or not refs.get("workspace"):
            raise UserError(f"{machine.id} is {machine.status}: its job is not running yet")
        cluster = self.cluster(refs.get("cluster") or machine.host or "")
        env_file = f"{refs['workspace']}/.deepops/env.sh"
        inner = ["bash", "-c", '. "$0" && exec "$@"', env_file, *(command or ["bash", "-il"])]
        full = [*self._srun(cluster, refs["job_id"]), *(["--pty"] if command is None else []), *inner]
        if cluster.connection == "local":
            return full
        return [*self.slurm(cluster).ssh_prefix(tty=command is None), shlex.join(full)]

    def session_command(self, machine: Machine, public_key: str) -> SessionCommand:
        """The lease's own `sshd -i` (connect/lease.py) as a step of the job: inside the allocation,
        with exactly its GPUs, started from the controller side (`srun --overlap`, unbuffered: the
        SSH stream is binary)."""
        import getpass

        from deepops_infra.connect import lease as session

        refs = machine.provider_refs or {}
        if not refs.get("job_id") or not refs.get("workspace") or machine.ended_at is not None:
            raise UserError(f"{machine.id} is {machine.status}: only a running machine takes sessions")
        try:
            inner = session.script_argv(refs["workspace"], public_key)
        except ValueError as exc:
            raise UserError(f"{machine.id}: {exc}") from None
        cluster = self.cluster(refs.get("cluster") or machine.host or "")
        # sshd -i ends 255 when the client hangs up: not a failure of the step (srun would say so)
        quiet_end = ["sh", "-c", '"$@"; rc=$?; [ "$rc" = 255 ] && exit 0; exit "$rc"', "deepops-step"]
        argv = [*self._srun(cluster, refs["job_id"]), "--unbuffered", *quiet_end, *inner]
        if cluster.connection == "local":
            import pwd

            return SessionCommand(argv, pwd.getpwuid(os.getuid()).pw_name)  # who sshd runs as, whatever $USER says
        ssh = [*self.slurm(cluster).ssh_prefix()[:-1], "-T", "-o", "ConnectTimeout=10", "-o", "ServerAliveInterval=30"]
        target = self.slurm(cluster).ssh_prefix()[-1]
        return SessionCommand([*ssh, target, session.remote_command(argv)], cluster.user or getpass.getuser())

    @staticmethod
    def _srun(cluster: PoolCluster, job_id: str) -> list[str]:
        conf = ["env", f"SLURM_CONF={cluster.slurm_conf}"] if cluster.slurm_conf else []
        return [*conf, "srun", f"--jobid={job_id}", "--overlap", "--quiet", "--nodes=1", "--ntasks=1"]

    def doctor(self) -> list[tuple[str, bool, str]]:
        rows: list[tuple[str, bool, str]] = []
        try:
            clusters = self.pool.clusters
        except UserError as exc:
            return [("pool file", False, str(exc))]
        for cluster in clusters:
            slurm = self.slurm(cluster)
            try:
                version = slurm.version()
                nodes = [node_gpus(n) for n in slurm.nodes()]
            except SlurmError as exc:
                rows.append((f"cluster {cluster.name}", False, f"unreachable: {exc}"))
                continue
            found = {p for n in nodes for p in n.partitions}
            missing = [p for p in cluster.partitions if p not in found]
            detail = f"{version}; partitions {', '.join(cluster.partitions)}; {len(nodes)} nodes"
            if missing:
                rows.append((f"cluster {cluster.name}", False, f"{detail}; not on the cluster: {', '.join(missing)}"))
            else:
                rows.append((f"cluster {cluster.name}", True, detail))
        return rows


def _same_model(offered: str | None, wanted: str) -> bool:
    return offered is not None and (offered == wanted or offered.startswith(wanted + "-"))


def _end_record(slurm: Slurm, job_id: str, job: Job | None) -> Ended:
    """Slurm's start and end of an ended job: from accounting (slurmdbd) where the cluster has it,
    else the controller's memory (`squeue`, for MinJobAge), else the job completion log."""
    start, end = slurm.accounted(job_id)
    if end is not None:
        return start, end, "sacct"
    if job is not None and job.end is not None:
        return job.start, job.end, "squeue"
    start, end = slurm.completion_log(job_id)
    return start, end, "jobcomp"


def _queue_position(job: Job, jobs: list[Job]) -> int:
    """1 + the pending jobs of the partition Slurm will consider first (higher priority, or the
    same priority and submitted earlier)."""
    ahead = 0
    for other in jobs:
        if other.id == job.id or other.state != "PENDING" or other.partition != job.partition:
            continue
        if other.priority > job.priority or (
            other.priority == job.priority and (other.submit or job.submit) < (job.submit or other.submit)  # type: ignore[operator]
        ):
            ahead += 1
    return ahead + 1


def _reason_text(exc: SlurmError) -> str:
    """Slurm's message without the cluster prefix and sbatch's boilerplate."""
    text = str(exc).split(": ", 1)[-1]
    return text.replace("sbatch: error: Batch job submission failed: ", "").replace("scontrol: error: ", "")
