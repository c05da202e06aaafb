"""Reaper benchmarks. A report, not a test: it prints figures and always exits 0.

    .venv/bin/python tests/benchmarks/bench_reaper.py [--instances 10000] [--managed 9000] [--skip-lease]
        [--profile FILE]

1. A dry-run reaper cycle over N instances in a moto server (its own process, so the CPU time
   is the reaper's) across two regions, through the real AWS provider: wall time, CPU time and
   API calls by operation, next to the bare boto3 listing of the same instances (the same
   paginated, filtered DescribeInstances; goal: the cycle's CPU <= 1.2x the listing's). The garbage
   collector's share of each is shown, and the listing again with the process's earlier objects
   frozen and young collections less often, as a cycle runs (reaper/heap.py): next to
   that one, the cycle's figure is the reaper's own work alone.
   Discovery is paginated (100 per page) and filtered server-side, so
   DescribeInstances calls grow with pages, not instances; `--managed` of them have live ledger
   rows, whose utilization the provider reads from CloudWatch (calls per machine), the rest are
   orphans with no ledger row (planned marks: mark-then-act, removed a later cycle).
2. Teardown start after the last activity on an idle localhost lease with the agent, against the
   goal idle timeout + 30 s, with `deepops reap --daemon` as a team would run it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
GOAL_CPU_RATIO = 1.2  # a dry-run cycle's CPU time against the bare listing of the same instances
VENV_BIN = ROOT / ".venv" / "bin"
sys.path.insert(0, str(ROOT))


# moto looks up an instance's tags by scanning every tag of every resource (describe_tags with a
# resource-id filter), so each filtered DescribeInstances page costs instances x tags there: hours
# at 10,000 instances. Real EC2 indexes tags. The mock server is given a per-resource lookup with the
# same answer, so that its wall time stops hiding the reaper's; what the reaper sends (calls,
# filters, pages) and its own CPU time are measured the same either way.
MOTO_WITH_TAG_INDEX = """
import sys
from moto.ec2.models.core import TaggedEC2Resource
from moto.ec2.models.tags import EC2_PREFIX_TO_RESOURCE, get_prefix
from moto.server import main

def get_tags(self):
    if not self.id:
        return []
    kind = EC2_PREFIX_TO_RESOURCE.get(get_prefix(self.id), "")
    stored = self.ec2_backend.tags.get(self.id, {})
    return [{"resource_id": self.id, "key": k, "value": v, "resource_type": kind} for k, v in stored.items()]

TaggedEC2Resource.get_tags = get_tags
main(["-H", "127.0.0.1", "-p", sys.argv[1]])
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ratio(part: float, whole: float) -> float | None:
    return round(part / whole, 2) if whole else None


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class GcTime:
    """CPU seconds the garbage collector's passes took (gc.callbacks): how much of a figure is theirs."""

    def __init__(self) -> None:
        self.total = 0.0
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.process_time()
        else:
            self.total += time.process_time() - self._start


def bare_listing(clients: Any, regions: tuple[str, ...], installation: str) -> tuple[float, float, int]:
    """The floor: the same paginated, filtered DescribeInstances the reaper sends, through the same
    boto3 clients, reading each instance's ID, state and tags and nothing else (wall, CPU, count)."""
    from deepops_infra.providers.aws.readpath import LIVE_STATES, PAGE_SIZE

    filters = [
        {"Name": "tag:deepops-managed", "Values": ["true"]},
        {"Name": "tag:deepops-installation", "Values": [installation]},
        {"Name": "instance-state-name", "Values": LIVE_STATES},
    ]
    wall0, cpu0 = time.monotonic(), cpu_seconds()
    seen = 0
    for region in regions:
        pages = clients.ec2(region).get_paginator("describe_instances")
        for page in pages.paginate(Filters=filters, PaginationConfig={"PageSize": PAGE_SIZE}):
            for reservation in page.get("Reservations", []):
                for inst in reservation.get("Instances", []):
                    seen += bool((inst["InstanceId"], inst["State"]["Name"], inst.get("Tags")))
    return time.monotonic() - wall0, cpu_seconds() - cpu0, seen


def bench_aws_dry_run(
    instances: int, managed: int, regions: tuple[str, ...], profile: str | None = None
) -> dict[str, Any]:
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench")
    os.environ.pop("AWS_PROFILE", None)
    port = free_port()
    server = subprocess.Popen(
        [str(VENV_BIN / "python"), "-c", MOTO_WITH_TAG_INDEX, str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    home = Path(tempfile.mkdtemp(prefix="bench-reaper-"))
    try:
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("moto_server did not start") from None
                time.sleep(0.1)
        from deepops_infra import states
        from deepops_infra.config import Settings
        from deepops_infra.ledger import store
        from deepops_infra.ledger.db import Ledger
        from deepops_infra.ledger.schema import Machine
        from deepops_infra.providers.aws.clients import Clients
        from deepops_infra.providers.aws.provider import AwsProvider
        from deepops_infra.providers.aws.settings import AwsSettings
        from deepops_infra.reaper.cycle import Reaper

        (home / "config.yaml").write_text(f"aws:\n  regions: [{', '.join(regions)}]\n  endpoint_url: {endpoint}\n")
        settings = Settings(home=home)
        ledger = Ledger(f"sqlite:///{home / 'ledger.db'}")
        with ledger.write() as session:
            inst = store.installation_id(session)
        # moto filters every page over all instances in Python: give it the time real EC2 does not
        # need. Otherwise the provider's own clients, as configured (retries, validation), are measured.
        clients = Clients(AwsSettings(endpoint_url=endpoint, regions=regions, read_timeout=900))
        t0 = time.monotonic()
        per_region = instances // len(regions)
        machine_rows: list[tuple[str, str, str]] = []
        for region in regions:
            ec2 = clients.ec2(region)
            ami = ec2.describe_images(Owners=["amazon"], MaxResults=5)["Images"][0]["ImageId"]
            for _ in range(per_region):
                # one instance per reservation, tags at launch: how deepops launches (one stack each)
                mid = store.new_machine_id()
                tags = {"deepops-managed": "true", "deepops-installation": inst, "deepops-machine": mid}
                answer = ec2.run_instances(
                    ImageId=ami,
                    InstanceType="g5.xlarge",
                    MinCount=1,
                    MaxCount=1,
                    TagSpecifications=[
                        {"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
                    ],
                )
                if len(machine_rows) < managed:
                    machine_rows.append((mid, region, answer["Instances"][0]["InstanceId"]))
        seeded = time.monotonic() - t0
        now = datetime.now(UTC)
        from decimal import Decimal

        with ledger.write() as session:
            for mid, region, iid in machine_rows:
                session.add(
                    Machine(
                        id=mid,
                        status=states.READY,
                        cloud="aws",
                        region=region,
                        owner="bench",
                        team="bench",
                        project="bench",
                        image="pytorch",
                        gpu_count=1,
                        request={"ttl": 28800, "idle_timeout": 3600},
                        plan={},
                        provider_refs={"created": True, "instance_id": iid},
                        price_per_hour=Decimal("1.006"),
                        price_breakdown={},
                        created_at=now - timedelta(hours=1),
                        ready_at=now - timedelta(hours=1),
                        expires_at=now + timedelta(hours=7),
                    )
                )
        calls: Counter[str] = Counter()
        provider = AwsProvider(settings, ledger, clients=clients)
        for region in regions:
            for client in (clients.ec2(region), clients.cloudwatch(region)):
                client.meta.events.register(
                    "before-call.*.*",
                    lambda model, **_: calls.update([model.service_model.service_name + ":" + model.name]),
                )
        import gc

        gc_time = GcTime()
        gc.callbacks.append(gc_time)
        bare_wall, bare_cpu, listed = bare_listing(clients, regions, inst)
        bare_gc = gc_time.total
        # The same listing under the collector settings a cycle runs with (reaper/heap.py: the
        # earlier heap frozen, young collections less often): the floor that compares the reaper's
        # own work alone.
        from deepops_infra.reaper.heap import cycle_heap

        with cycle_heap():
            _, bare_as_cycle_cpu, _ = bare_listing(clients, regions, inst)
        gc_before_cycle = gc_time.total
        calls.clear()  # the cycle's own calls only
        reaper = Reaper(settings, ledger, {"aws": provider})
        profiler = None
        if profile:
            import cProfile

            profiler = cProfile.Profile(time.process_time)  # CPU time: waits for the mock server are not the reaper's
            profiler.enable()
        wall0, cpu0 = time.monotonic(), cpu_seconds()
        report = reaper.run(dry_run=True)
        wall, cpu = time.monotonic() - wall0, cpu_seconds() - cpu0
        cycle_gc = gc_time.total - gc_before_cycle
        gc.callbacks.remove(gc_time)
        # A second cycle, as a reaper service runs them: its clients and their service models are
        # loaded (the first cycle pays for the CloudWatch client the bare listing does not need).
        first_calls = dict(calls)
        cpu1 = cpu_seconds()
        reaper.run(dry_run=True)
        again = cpu_seconds() - cpu1
        if profiler is not None:
            import pstats

            profiler.disable()
            profiler.dump_stats(profile)
            pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(40)  # both cycles
        kinds = Counter((a.kind, a.outcome) for a in report.actions)
        return {
            "instances": instances,
            "regions": list(regions),
            "ledger_machines": len(machine_rows),
            "seed_seconds": round(seeded, 1),
            "bare_listing_instances": listed,
            "bare_listing_wall_seconds": round(bare_wall, 2),
            "bare_listing_cpu_seconds": round(bare_cpu, 2),
            "bare_listing_gc_cpu_seconds": round(bare_gc, 2),  # the collector's passes, part of the CPU above
            "bare_listing_as_a_cycle_runs_cpu_seconds": round(bare_as_cycle_cpu, 2),
            "cycle_wall_seconds": round(wall, 2),
            "cycle_cpu_seconds": round(cpu, 2),
            "cycle_gc_cpu_seconds": round(cycle_gc, 2),
            "cycle_cpu_over_bare_listing": ratio(cpu, bare_cpu),
            "cycle_cpu_over_bare_listing_as_a_cycle_runs": ratio(cpu, bare_as_cycle_cpu),
            "second_cycle_cpu_seconds": round(again, 2),
            "second_cycle_cpu_over_bare_listing": ratio(again, bare_cpu),
            "second_cycle_cpu_over_bare_listing_as_a_cycle_runs": ratio(again, bare_as_cycle_cpu),
            "goal_cpu_ratio": GOAL_CPU_RATIO,
            "load_1min": round(os.getloadavg()[0], 2),
            "api_calls": dict(sorted(first_calls.items())),  # of the first cycle
            "describe_instances_pages_expected": sum(-(-per_region // 100) for _ in regions),
            "resources_seen": dict(report.resources),
            "actions": {f"{k}/{o}": n for (k, o), n in sorted(kinds.items())},
            "capped": report.capped,
            "errors": report.errors[:5],
        }
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        shutil.rmtree(home, ignore_errors=True)


def bench_idle_lease(idle_s: int, interval_s: int, grace_s: int) -> dict[str, Any]:
    """A real localhost lease: 3 s of CPU, then nothing. When are the warning and the teardown?"""
    from deepops_infra.ledger import store
    from deepops_infra.ledger.db import Ledger

    home = Path(tempfile.mkdtemp(prefix="bench-idle-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPOPS_")}
    env.update(DEEPOPS_HOME=str(home), PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}")
    (home / "config.yaml").write_text(f"agent:\n  interval: 1s\n  checkin_timeout: 1h\nreaper:\n  grace: {grace_s}s\n")
    deepops = [str(VENV_BIN / "python"), "-m", "deepops_infra"]
    reaper = None
    mid = None
    try:
        up = subprocess.run(
            [*deepops, "up", "--gpus", "0", "--ttl", "1h", "--idle-timeout", f"{idle_s}s", "--yes", "--json"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        mid = json.loads(up.stdout)["id"]
        reaper = subprocess.Popen(
            [*deepops, "reap", "--daemon", "--interval", f"{interval_s}s", "--metrics-port", "0"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        burn = "import time\nend = time.time() + 3\nwhile time.time() < end: pass"
        subprocess.run([*deepops, "ssh", mid, "--", "python", "-c", burn], env=env, check=True)
        last_activity = datetime.now(UTC)  # the CPU burst just ended
        ledger = Ledger(f"sqlite:///{home / 'ledger.db'}")
        deadline = time.monotonic() + idle_s + grace_s + 4 * interval_s + 120
        warning = teardown = None
        while time.monotonic() < deadline and teardown is None:
            time.sleep(0.2)
            with ledger.read() as session:
                events = store.events(session, mid)
            warning = next((e.at for e in events if e.kind == "reaper-warning"), None)
            teardown = next((e.at for e in events if e.kind == "reaper"), None)
        goal = idle_s + 30
        after = (teardown - last_activity).total_seconds() if teardown else None
        return {
            "idle_timeout_s": idle_s,
            "reaper_interval_s": interval_s,
            "warning_grace_s": grace_s,
            "warning_after_last_activity_s": round((warning - last_activity).total_seconds(), 1) if warning else None,
            "teardown_start_after_last_activity_s": round(after, 1) if after is not None else None,
            "goal_s": goal,
            "goal_met": after is not None and after <= goal,
            "note": "teardown = idle timeout + up to one cycle to notice + grace + up to one cycle to act",
        }
    finally:
        if reaper is not None:
            reaper.send_signal(signal.SIGTERM)
            reaper.wait(timeout=120)
        if mid is not None:
            subprocess.run([*deepops, "down", mid, "--yes"], env=env, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", type=int, default=10000)
    parser.add_argument("--managed", type=int, default=9000, help="instances with a live ledger row")
    parser.add_argument("--profile", metavar="FILE", help="cProfile the cycle into FILE (top 40 on stderr)")
    parser.add_argument("--idle", type=int, default=20)
    parser.add_argument("--interval", type=int, default=10)
    parser.add_argument("--grace", type=int, default=1, help="warning grace in seconds (at least 1)")
    parser.add_argument("--skip-aws", action="store_true")
    parser.add_argument("--skip-lease", action="store_true")
    args = parser.parse_args()
    if not args.skip_aws:
        figures = bench_aws_dry_run(args.instances, args.managed, ("us-east-1", "us-west-2"), args.profile)
        print(json.dumps({"aws_dry_run_cycle": figures}, indent=2))
    if not args.skip_lease:
        print(json.dumps({"idle_lease": bench_idle_lease(args.idle, args.interval, args.grace)}, indent=2, default=str))


if __name__ == "__main__":
    main()
