"""Foundation benchmarks for the `deepops` CLI: start-up, `ls` on a large ledger, on-prem up+down.

A report, not a test: it always exits 0. Run from the repository root with the project's venv:

    .venv/bin/python tests/benchmarks/bench_foundation.py [--quick] [--json]

1. `deepops --help` wall time (median, p90) next to `python -c "import typer"`, the floor.
2. `deepops ls --json` and `deepops ls --all --json` on a ledger of 1,000 machines seeded with the
   package's own code (half ended, half running); SQLite always, PostgreSQL too when
   DEEPOPS_BENCH_PG_URL is set (a database is created for the run and dropped at the end).
   Then `deepops ls --all` and `deepops gpus` as tables against the same lists as JSON (runs
   interleaved; wall and CPU medians and their ratios; goal: a table <= 1.3x its JSON).
3. `deepops up --cloud onprem --gpus 0` + `deepops down` against the same three playbooks run
   directly with ansible-playbook, with the same extra vars and Ansible environment.

Every command runs in a fresh temporary DEEPOPS_HOME; nothing outside the temp dirs is touched.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"
PYTHON = VENV_BIN / "python"
DEEPOPS = VENV_BIN / "deepops"
ANSIBLE_PLAYBOOK = VENV_BIN / "ansible-playbook"
ROLES = ROOT / "roles"
PLAYBOOKS = ROLES / "playbooks"

sys.path.insert(0, str(ROOT))  # the package from this checkout, even when run from elsewhere

GOAL_HELP_S = 0.15
GOAL_LS_S = 0.30
GOAL_ONPREM_RATIO = 1.2
GOAL_TABLE_RATIO = 1.3  # a table costs no more than 1.3x the same list as JSON
LEDGER_MACHINES = 1000
VERBOSE = False  # --verbose: tracebacks of failed benchmarks
PYCACHE_PREFIX: Path | None = None  # where child processes cache bytecode (None: as the caller's environment says)
TABLE_ROWS: list[list[str]] = []  # table against JSON, filled by bench_ls_sqlite


# -- measuring -----------------------------------------------------------------------------------


@dataclass
class Figure:
    """One line of the final table."""

    name: str
    value: float | None  # None: could not be measured
    unit: str  # "s" or "x"
    goal: float | None = None  # met when value <= goal
    note: str = ""

    @property
    def met(self) -> str:
        if self.value is None:
            return "error"
        if self.goal is None:
            return "-"
        return "yes" if self.value <= self.goal else "no"

    def value_text(self) -> str:
        if self.value is None:
            return "n/a"
        return f"{self.value:.3f} s" if self.unit == "s" else f"{self.value:.2f}x"

    def goal_text(self) -> str:
        if self.goal is None:
            return "-"
        return f"<= {self.goal:g} s" if self.unit == "s" else f"<= {self.goal:g}x"


@dataclass
class Timings:
    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p90(self) -> float:
        """Nearest-rank 90th percentile (the slowest run when there are fewer than 10)."""
        ordered = sorted(self.samples)
        return ordered[max(math.ceil(0.9 * len(ordered)) - 1, 0)]


def log(message: str) -> None:
    sys.stderr.write(f"[bench] {message}\n")
    sys.stderr.flush()


def base_env(home: Path, **extra: str) -> dict[str, str]:
    """The caller's environment without any DEEPOPS_* setting, pointed at a temporary home.

    Bytecode is cached (in a temporary PYTHONPYCACHEPREFIX, never in the checkout) as it is for an
    installed package: with PYTHONDONTWRITEBYTECODE set, every run would recompile the package and
    the many dependency modules that ship without .pyc files, and time that instead.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPOPS_")}
    env["DEEPOPS_HOME"] = str(home)
    if PYCACHE_PREFIX is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(PYCACHE_PREFIX)
    env.update(extra)
    return env


def run_timed(argv: Sequence[str | Path], env: dict[str, str], what: str) -> tuple[float, str]:
    """Run a command to completion; its wall time and stdout. A non-zero exit is an error."""
    start = time.perf_counter()
    proc = subprocess.run([str(a) for a in argv], env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (proc.stderr.strip() or proc.stdout.strip())[-1500:]
        raise RuntimeError(f"{what} exited {proc.returncode}: {tail}")
    return elapsed, proc.stdout


def time_command(argv: Sequence[str | Path], env: dict[str, str], runs: int, what: str, warmup: int = 1) -> Timings:
    for _ in range(warmup):
        run_timed(argv, env, what)
    timings = Timings()
    for _ in range(runs):
        timings.samples.append(run_timed(argv, env, what)[0])
    return timings


@contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# -- 1. deepops --help ---------------------------------------------------------------------------


def bench_help(runs: int) -> tuple[list[Figure], list[list[str]]]:
    figures, rows = [], []
    with temp_dir("bench-help-") as home:
        env = base_env(home)
        for label, argv in (
            ("deepops --help", [DEEPOPS, "--help"]),
            ('python -c "import typer" (floor)', [PYTHON, "-c", "import typer"]),
        ):
            log(f"timing `{label}` x{runs}")
            t = time_command(argv, env, runs, label)
            rows.append([label, str(runs), f"{t.median:.3f}", f"{t.p90:.3f}", f"{min(t.samples):.3f}"])
            is_floor = "floor" in label
            figures.append(
                Figure(
                    f"{label} median",
                    t.median,
                    "s",
                    None if is_floor else GOAL_HELP_S,
                    note=f"p90 {t.p90:.3f} s",
                )
            )
    return figures, rows


# -- 2. deepops ls on 1,000 machines -------------------------------------------------------------

HOSTS = [("localhost", 0.05, 1.0), ("gpu-a01", 0.4, 2.1), ("gpu-a02", 0.4, 2.1), ("gpu-b01", 0.6, 3.4)]
OWNERS = ["alice", "bob", "carol", "dmitri", "eve", "farah", "gus", "hana"]
TEAMS = ["research", "platform", "vision", "nlp"]
PROJECTS = ["default", "llm-eval", "detector", "tokenizer", "rl-sweep"]
TTLS = [timedelta(minutes=30), timedelta(hours=8), timedelta(days=2)]


def seed_ledger(url: str, count: int = LEDGER_MACHINES, seed: int = 7) -> tuple[int, int]:
    """Write `count` machines (every other one ended) in one write session; (running, total).

    Rows are filled the way Lifecycle.record / launch / down fill them: request from a
    MachineRequest, plan from a Plan, frozen price from onprem_price, the transition events, one
    usage interval, provider refs, manifest and validation as the on-prem provider stores them.
    """
    from deepops_infra import states
    from deepops_infra.images import load_images
    from deepops_infra.ledger.db import Ledger
    from deepops_infra.ledger.schema import Event, Machine, UsageInterval
    from deepops_infra.pricing import onprem_price
    from deepops_infra.providers.base import Plan
    from deepops_infra.request import GpuSpec, MachineRequest

    images = load_images()
    cpu, torch = images["cpu-minimal"], images["pytorch"]
    rng = random.Random(seed)
    now = datetime.now(UTC)
    used_ids: set[str] = set()
    ledger = Ledger(url)
    running = 0
    machines: list[Machine] = []
    children: list[Event | UsageInterval] = []
    try:
        with ledger.write() as session:
            for i in range(count):
                mid = f"m-{rng.getrandbits(32):08x}"
                while mid in used_ids:
                    mid = f"m-{rng.getrandbits(32):08x}"
                used_ids.add(mid)
                ended = i % 2 == 0
                host, host_hour, gpu_hour = rng.choice(HOSTS)
                gpus = GpuSpec(None, 0) if host == "localhost" else GpuSpec("A100-80GB", rng.choice([1, 2, 4, 8]))
                image = cpu if gpus.count == 0 else torch
                assert image.onprem is not None
                owner, team = rng.choice(OWNERS), rng.choice(TEAMS)
                ttl = rng.choice(TTLS) if ended else timedelta(days=7)
                request = MachineRequest(
                    gpus=gpus,
                    cloud="onprem",
                    region=None,
                    host=None,
                    image=image.name,
                    spot=False,
                    ttl=ttl,
                    idle_timeout=timedelta(hours=1),
                    disk_gb=rng.choice([None, 100, 500]),
                    owner=owner,
                    team=team,
                    project=rng.choice(PROJECTS),
                    name=f"exp-{i}" if i % 5 == 0 else None,
                )
                price = onprem_price(host_hour, gpu_hour, gpus.count)
                indexes = sorted(rng.sample(range(8), gpus.count))
                plan = Plan(
                    cloud="onprem",
                    region="lab-a" if host != "localhost" else None,
                    host=host,
                    instance_type=None,
                    accelerator=gpus.model,
                    accelerator_count=gpus.count,
                    image_pin=image.onprem.pin,
                    price=price,
                    details={"gpu_indexes": indexes},
                )
                created = now - timedelta(minutes=7 * (count - i) + rng.random())
                provisioning = created + timedelta(milliseconds=7)
                configuring = provisioning + timedelta(seconds=3 + rng.random())
                validating = configuring + timedelta(seconds=7 + 60 * rng.random() * (gpus.count > 0))
                ready = validating + timedelta(milliseconds=4)
                workspace = f"/srv/deepops/workspaces/{mid}"
                host_gpus = [
                    {"index": g, "name": "NVIDIA A100-SXM4-80GB", "memory_mib": 81920}
                    for g in range(8 * (gpus.count > 0))
                ]
                machine = Machine(
                    id=mid,
                    name=request.name,
                    status=states.READY,
                    status_reason="ready",
                    cloud="onprem",
                    region=plan.region,
                    host=host,
                    owner=owner,
                    team=team,
                    project=request.project,
                    image=image.name,
                    image_pin=image.onprem.pin,
                    accelerator=gpus.model,
                    gpu_count=gpus.count,
                    request=request.to_json(),
                    plan=plan.to_json() | {"alternatives": len(HOSTS) - 2},
                    provider_refs={
                        "created": True,
                        "host": host,
                        "connection": "local" if host == "localhost" else "ssh",
                        "address": "127.0.0.1"
                        if host == "localhost"
                        else f"10.0.3.{HOSTS.index((host, host_hour, gpu_hour))}",
                        "workspace": workspace,
                        "gpu_indexes": indexes,
                        "host_gpus": host_gpus,
                        "driver_version": "570.86.15" if gpus.count else None,
                        "host_facts": {
                            "hostname": host,
                            "home": "/root",
                            "cpus": 64,
                            "kernel": "6.8.0",
                            "free_gb": 812.4,
                        },
                    },
                    manifest={
                        "python": "3.11.7",
                        "implementation": "CPython",
                        "platform": "Linux-6.8.0-x86_64-with-glibc2.36",
                        "executable": f"{workspace}/env/bin/python",
                        "packages": dict(image.versions) | {"pip": "23.2.1", "setuptools": "65.5.0"},
                        "cuda_visible_devices": ",".join(map(str, indexes)) or None,
                        "driver_version": "570.86.15" if gpus.count else None,
                        "image_pin": image.onprem.pin,
                    },
                    validation={
                        "passed": True,
                        "checks": [
                            {
                                "name": "python",
                                "passed": True,
                                "detail": f"found 3.11.7, image needs {image.onprem.python}",
                            },
                            {"name": "gpu inventory", "passed": True, "detail": f"ordered {gpus}, leased {indexes}"},
                        ],
                    },
                    price_per_hour=price.per_hour,
                    price_breakdown=price.to_json(),
                    created_at=created,
                    ready_at=ready,
                    expires_at=ready + ttl,
                )
                steps = [
                    (None, states.REQUESTED, f"requested by {owner}", created, {"request": request.to_json()}),
                    (states.REQUESTED, states.PROVISIONING, "creating resources", provisioning, None),
                    (
                        states.PROVISIONING,
                        states.CONFIGURING,
                        f"installing {image.name} ({image.onprem.pin})",
                        configuring,
                        None,
                    ),
                    (states.CONFIGURING, states.VALIDATING, "checking the machine against the order", validating, None),
                    (states.VALIDATING, states.READY, "ready", ready, None),
                ]
                end_at = None
                if ended:
                    end_at = min(ready + ttl * rng.uniform(0.05, 1.0), now - timedelta(seconds=1))
                    reason = rng.choice([f"released by {owner}", "deepops run finished", "expired (TTL)"])
                    steps.append((states.READY, states.TERMINATING, reason, end_at - timedelta(seconds=2), None))
                    steps.append((states.TERMINATING, states.TERMINATED, reason, end_at, None))
                    machine.status, machine.status_reason, machine.ended_at = states.TERMINATED, reason, end_at
                else:
                    running += 1
                machines.append(machine)
                for from_status, to_status, reason, at, data in steps:
                    children.append(
                        Event(
                            machine_id=mid,
                            at=at,
                            kind="transition",
                            from_status=from_status,
                            to_status=to_status,
                            reason=reason,
                            data=data,
                        )
                    )
                children.append(
                    UsageInterval(
                        machine_id=mid,
                        started_at=provisioning,
                        ended_at=end_at,
                        price_per_hour=Decimal(price.per_hour),
                        gpu_count=gpus.count,
                    )
                )
            session.add_all(machines)
            session.flush()  # the parents first: the schema has foreign keys but no relationships
            session.add_all(children)
    finally:
        ledger.close()
    return running, count


def time_ls(
    env: dict[str, str], runs: int, running: int, total: int, backend: str
) -> tuple[list[Figure], list[list[str]]]:
    figures, rows = [], []
    for flags, expected in (([], running), (["--all"], total)):
        label = f"deepops ls {' '.join([*flags, '--json'])} ({backend}, {expected} of {total})"
        argv = [DEEPOPS, "ls", *flags, "--json"]
        _, out = run_timed(argv, env, label)  # unmeasured warm-up, and the correctness check
        got = len(json.loads(out))
        log(f"timing `{label}` x{runs}: the list has {got} machines")
        t = time_command(argv, env, runs, label, warmup=0)
        ok = got == expected
        rows.append([label, str(runs), f"{t.median:.3f}", f"{t.p90:.3f}", "ok" if ok else f"WRONG: {got}"])
        figures.append(
            Figure(
                f"ls {' '.join(flags) or '(running)'} --json, {backend} median",
                t.median if ok else None,
                "s",
                GOAL_LS_S,
                note=f"p90 {t.p90:.3f} s" if ok else f"returned {got} machines, expected {expected}",
            )
        )
    return figures, rows


def cpu_timed(argv: Sequence[str | Path], env: dict[str, str], what: str) -> tuple[float, float, str]:
    """Wall time, CPU time (user + system of the child) and stdout of one run: CPU time is the
    steadier figure on a shared machine, where waiting for a core inflates wall time."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall, out = run_timed(argv, env, what)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), out


def time_table_vs_json(
    label: str, argv: list[str | Path], env: dict[str, str], runs: int, expected: int
) -> tuple[list[Figure], list[list[str]]]:
    """The same list as a table and as JSON, runs interleaved so that load drift hits both alike."""
    checks = {
        "json": lambda out: len(json.loads(out)),
        "table": lambda out: len(out.splitlines()) - 1,  # the header line
    }
    samples: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in checks}
    got: dict[str, int] = {}
    for i in range(runs + 1):  # the first round is an unmeasured warm-up and the correctness check
        for kind, count in checks.items():
            wall, cpu, out = cpu_timed([*argv, *(["--json"] if kind == "json" else [])], env, f"{label} ({kind})")
            if i == 0:
                got[kind] = count(out)
            else:
                samples[kind][0].append(wall)
                samples[kind][1].append(cpu)
    wall = {k: statistics.median(v[0]) for k, v in samples.items()}
    cpu = {k: statistics.median(v[1]) for k, v in samples.items()}
    ok = all(n == expected for n in got.values())
    note = "" if ok else f"listed {got}, expected {expected}"
    rows = [
        [f"{label} ({kind})", str(runs), f"{wall[kind]:.3f}", f"{cpu[kind]:.3f}", str(got[kind])] for kind in checks
    ]
    figures = [
        Figure(f"{label} table median (wall)", wall["table"] if ok else None, "s", note=note),
        Figure(f"{label} --json median (wall)", wall["json"] if ok else None, "s", note=note),
        Figure(f"{label} table / --json (wall)", wall["table"] / wall["json"] if ok else None, "x", GOAL_TABLE_RATIO),
        Figure(
            f"{label} table / --json (CPU)",
            cpu["table"] / cpu["json"] if ok else None,
            "x",
            GOAL_TABLE_RATIO,
            note=f"CPU medians {cpu['table']:.3f} s / {cpu['json']:.3f} s",
        ),
    ]
    return figures, rows


def bench_tables(home: Path, env: dict[str, str], runs: int, total: int) -> tuple[list[Figure], list[list[str]]]:
    """`deepops ls --all` and `deepops gpus`: a table against the same list as JSON."""
    from deepops_infra.catalog import load_catalog

    figures, rows = time_table_vs_json(f"ls --all ({total} machines)", [DEEPOPS, "ls", "--all"], env, runs, total)
    offers = len(load_catalog(home))
    figs, more = time_table_vs_json(f"gpus ({offers} offers)", [DEEPOPS, "gpus"], env, runs, offers)
    return figures + figs, rows + more


def bench_ls_sqlite(runs: int) -> tuple[list[Figure], list[list[str]]]:
    with temp_dir("bench-ls-") as home:
        log(f"seeding {LEDGER_MACHINES} machines into a SQLite ledger")
        start = time.perf_counter()
        running, total = seed_ledger(f"sqlite:///{home / 'ledger.db'}")
        log(f"seeded in {time.perf_counter() - start:.2f} s")
        figures, rows = time_ls(base_env(home), runs, running, total, "sqlite")
        figs, table_rows = bench_tables(home, base_env(home), runs, total)
        global TABLE_ROWS
        TABLE_ROWS = table_rows
        return figures + figs, rows


def _pg_urls(url: str, database: str) -> tuple[str, str]:
    """(libpq URL of the server's `postgres` database, deepops ledger URL of `database`)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url).set(drivername="postgresql")
    admin = parsed.set(database="postgres").render_as_string(hide_password=False)
    return admin, parsed.set(database=database).render_as_string(hide_password=False)


def bench_ls_postgres(runs: int, url: str) -> tuple[list[Figure], list[list[str]]]:
    import psycopg
    from psycopg import sql

    database = f"deepops_bench_{os.getpid()}_{secrets.token_hex(3)}"
    admin_url, ledger_url = _pg_urls(url, database)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    try:
        with temp_dir("bench-ls-pg-") as home:
            log(f"seeding {LEDGER_MACHINES} machines into PostgreSQL database {database}")
            start = time.perf_counter()
            running, total = seed_ledger(ledger_url)
            log(f"seeded in {time.perf_counter() - start:.2f} s")
            return time_ls(base_env(home, DEEPOPS_LEDGER_URL=ledger_url), runs, running, total, "postgres")
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))


# -- 3. on-prem up + down vs ansible-playbook ----------------------------------------------------


def offline_pip_env(workdir: Path) -> tuple[dict[str, str], str]:
    """Environment that makes the pinned_env pip install network-free on both sides.

    pip revalidates index pages on every run (max-age=0), so a warm cache alone still goes to
    the index; a local wheelhouse with the cpu-minimal lock's wheel and PIP_NO_INDEX does not.
    Falls back to the ordinary (online) pip when the wheel cannot be fetched once.
    """
    wheelhouse = workdir / "wheelhouse"
    lock = ROOT / "images" / "locks" / "cpu-minimal.txt"
    pip_download = [str(VENV_BIN / "pip"), "download", "--quiet", "--no-deps", "--only-binary=:all:"]
    proc = subprocess.run(
        [*pip_download, "--require-hashes", "-r", str(lock), "-d", str(wheelhouse)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0 or not any(wheelhouse.glob("*.whl")):
        log(f"could not fetch the cpu-minimal wheel ({proc.stderr.strip()[-300:]}); pip stays online")
        return {}, "online pip (warm-up run only)"
    return {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheelhouse)}, "local wheelhouse, PIP_NO_INDEX=1"


def deepops_up_down(env: dict[str, str]) -> tuple[float, float]:
    """One `deepops up` + `deepops down`; (up seconds, down seconds)."""
    up_s, out = run_timed(
        [DEEPOPS, "up", "--cloud", "onprem", "--gpus", "0", "--ttl", "30m", "--yes", "--json"], env, "deepops up"
    )
    machine = json.loads(out)
    if machine.get("status") != "ready":
        raise RuntimeError(f"deepops up left {machine.get('id')} {machine.get('status')}")
    down_s, _ = run_timed([DEEPOPS, "down", machine["id"], "--yes"], env, f"deepops down {machine['id']}")
    return up_s, down_s


class DirectPlays:
    """The three playbooks run by hand, with the extra vars and environment deepops gives them.

    Mirrors OnpremProvider.create/configure/destroy (extra vars), inventory_for (interpreter and
    remote tmp of a `local` host) and ansible_env (environment), with .venv/bin first on PATH as
    ansible.py's _ensure_ansible_on_path does (so `python3` for the venv is the same on both sides).
    """

    def __init__(self, home: Path, pip_env: dict[str, str]) -> None:
        from deepops_infra.ansible import ansible_env
        from deepops_infra.config import Settings
        from deepops_infra.images import get_image

        self.home = home
        self.workspaces = home / "workspaces"
        self.tmp = home / "ansible" / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.workspaces.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.env = base_env(home, **pip_env)
        self.env.update(ansible_env(Settings(home=home)))
        self.env["ANSIBLE_ROLES_PATH"] = str(ROLES)
        self.env["PATH"] = f"{VENV_BIN}{os.pathsep}{self.env.get('PATH', '')}"
        image = get_image("cpu-minimal")
        assert image.onprem is not None
        self.lock, self.sha256 = image.onprem.lock_path, image.onprem.sha256
        self.connection = {"ansible_python_interpreter": str(PYTHON), "ansible_remote_tmp": str(self.tmp)}

    def _play(self, name: str, machine_id: str, extravars: dict[str, Any]) -> float:
        varfile = self.home / f"{machine_id}-{name}.json"
        varfile.write_text(json.dumps(extravars | self.connection))
        argv = [ANSIBLE_PLAYBOOK, "-i", "localhost,", "-c", "local", PLAYBOOKS / f"{name}.yml", "-e", f"@{varfile}"]
        return run_timed(argv, self.env, f"ansible-playbook {name}.yml ({machine_id})")[0]

    def up_down(self, machine_id: str) -> tuple[float, float]:
        """lease + configure, then release; (up seconds, down seconds)."""
        workspace = self.workspaces / machine_id
        lease = self._play(
            "onprem-lease",
            machine_id,
            {
                "onprem_lease_machine_id": machine_id,
                "onprem_lease_workspace_root": str(self.workspaces),
                "onprem_lease_gpu_indexes": [],
                "onprem_lease_gpus_declared": False,
                "onprem_lease_disk_gb": 0,
            },
        )
        configure = self._play(
            "configure",
            machine_id,
            {
                "pinned_env_workspace": str(workspace),
                "pinned_env_lock_src": str(self.lock),
                "pinned_env_lock_sha256": self.sha256,
                "pinned_env_python": "python3",
                "pinned_env_pip_cache": str(self.workspaces / ".pip-cache"),
            },
        )
        if not (workspace / "env" / "bin" / "python").exists():
            raise RuntimeError(f"configure.yml left no venv in {workspace}")
        release = self._play(
            "release", machine_id, {"onprem_release_machine_id": machine_id, "onprem_release_workspace": str(workspace)}
        )
        if workspace.exists():
            raise RuntimeError(f"release.yml left {workspace} behind")
        return lease + configure, release


def bench_onprem(reps: int) -> tuple[list[Figure], list[list[str]], str]:
    with temp_dir("bench-onprem-") as work:
        pip_env, pip_mode = offline_pip_env(work)
        deepops_env = base_env(work / "deepops-home", **pip_env)
        direct = DirectPlays(work / "direct", pip_env)

        log("warm-up (unmeasured): one deepops up+down and one direct run")
        deepops_up_down(deepops_env)
        direct.up_down("m-bench000")

        rows: list[list[str]] = []
        ours, theirs = Timings(), Timings()
        for rep in range(1, reps + 1):  # interleaved, so drift in the machine hits both sides alike
            up_s, down_s = deepops_up_down(deepops_env)
            ours.samples.append(up_s + down_s)
            rows.append([f"deepops up+down #{rep}", f"{up_s:.2f}", f"{down_s:.2f}", f"{up_s + down_s:.2f}"])
            up_s, down_s = direct.up_down(f"m-bench{rep:03d}")
            theirs.samples.append(up_s + down_s)
            rows.append([f"ansible-playbook x3 #{rep}", f"{up_s:.2f}", f"{down_s:.2f}", f"{up_s + down_s:.2f}"])
            log(f"rep {rep}/{reps}: deepops {ours.samples[-1]:.2f} s, direct {theirs.samples[-1]:.2f} s")
    figures = [
        Figure("onprem up+down, deepops median", ours.median, "s", note=f"{reps} rep(s)"),
        Figure("onprem up+down, ansible-playbook median", theirs.median, "s", note=pip_mode),
        Figure("onprem deepops / direct", ours.median / theirs.median, "x", GOAL_ONPREM_RATIO),
    ]
    return figures, rows, pip_mode


# -- output --------------------------------------------------------------------------------------


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def guarded(name: str, fn: Callable[[], tuple[list[Figure], list[list[str]]]]) -> tuple[list[Figure], list[list[str]]]:
    """Run one benchmark; a failure becomes an `error` figure instead of ending the report."""
    try:
        return fn()
    except Exception as exc:
        short = " ".join(str(exc).split())
        log(f"{name} failed: {type(exc).__name__}: {short[:600]}")
        if VERBOSE:
            log(traceback.format_exc())
        return [Figure(name, None, "s", note=f"{type(exc).__name__}: {short[:160]}")], []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 runs and 1 repetition instead of 20 and 3")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON instead of tables")
    parser.add_argument("--runs", type=int, help="runs per timed command (default 20, --quick 5)")
    parser.add_argument("--reps", type=int, help="on-prem up+down repetitions (default 3, --quick 1)")
    parser.add_argument(
        "--only", choices=["help", "ls", "onprem"], action="append", help="run only these benchmarks (repeatable)"
    )
    parser.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="keep the caller's PYTHONDONTWRITEBYTECODE/PYTHONPYCACHEPREFIX (default: cache bytecode in a temp dir)",
    )
    parser.add_argument("--verbose", action="store_true", help="full tracebacks of failed benchmarks")
    args = parser.parse_args(argv)
    global VERBOSE, PYCACHE_PREFIX
    VERBOSE = args.verbose
    if args.no_bytecode_cache:
        return report(args)
    with temp_dir("bench-pycache-") as prefix:
        PYCACHE_PREFIX = prefix
        return report(args)


def report(args: argparse.Namespace) -> int:
    runs = args.runs or (5 if args.quick else 20)
    reps = args.reps or (1 if args.quick else 3)
    selected = set(args.only or ["help", "ls", "onprem"])
    pg_url = os.environ.get("DEEPOPS_BENCH_PG_URL")

    figures: list[Figure] = []
    sections: list[tuple[str, list[str], list[list[str]]]] = []
    timed_headers = ["command", "runs", "median s", "p90 s", "min s / check"]
    meta: dict[str, Any] = {
        "runs": runs,
        "reps": reps,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "bytecode": "cached (temp prefix)"
        if PYCACHE_PREFIX
        else ("not written" if os.environ.get("PYTHONDONTWRITEBYTECODE") else "as environment"),
        "load_before": f"{os.getloadavg()[0]:.2f}",
    }

    if "help" in selected:
        figs, rows = guarded("deepops --help", lambda: bench_help(runs))
        figures += figs
        sections.append(("1. start-up", timed_headers, rows))
    if "ls" in selected:
        ls_rows: list[list[str]] = []
        figs, rows = guarded("ls (sqlite)", lambda: bench_ls_sqlite(runs))
        figures += figs
        ls_rows += rows
        if pg_url:
            figs, rows = guarded("ls (postgres)", lambda: bench_ls_postgres(runs, pg_url))
            figures += figs
            ls_rows += rows
        else:
            log("DEEPOPS_BENCH_PG_URL is not set: skipping the PostgreSQL ledger")
        headers = [*timed_headers[:4], "list length"]
        sections.append((f"2. ls on {LEDGER_MACHINES} machines", headers, ls_rows))
        sections.append(
            ("2b. tables against JSON (sqlite)", ["command", "runs", "median s", "CPU median s", "rows"], TABLE_ROWS)
        )
    if "onprem" in selected:

        def onprem() -> tuple[list[Figure], list[list[str]]]:
            figs, rows, pip_mode = bench_onprem(reps)
            meta["pip"] = pip_mode
            return figs, rows

        figs, rows = guarded("onprem up+down", onprem)
        figures += figs
        sections.append(("3. on-prem up+down (cpu-minimal)", ["run", "up s", "down s", "total s"], rows))
    meta["load_after"] = f"{os.getloadavg()[0]:.2f}"  # 1-minute load: other work on the machine skews figures

    if args.json:
        details = [{"section": t, "rows": [dict(zip(h, r, strict=True)) for r in rows]} for t, h, rows in sections]
        out = {"meta": meta, "figures": [asdict(f) | {"met": f.met} for f in figures], "details": details}
        print(json.dumps(out, indent=2))
        return 0
    for title, headers, rows in sections:
        if rows:
            print(f"\n{title}\n{format_table(headers, rows)}")
    print(f"\nsummary ({', '.join(f'{k}={v}' for k, v in meta.items())})")
    print(
        format_table(
            ["figure", "value", "goal", "met", "note"],
            [[f.name, f.value_text(), f.goal_text(), f.met, f.note] for f in figures],
        )
    )
    return 0


if __name__ == "__main__":
    try:
        main()
    except Exception:  # a report, not a test: never fail the caller
        traceback.print_exc()
    sys.exit(0)
