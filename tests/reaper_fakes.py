"""A small in-test provider and ledger rows for the reaper's guard and reconcile logic.

The fake keeps its "cloud" in memory: resources with tags, per-machine utilization, and a
record of every destroy/terminate call, so tests can count actions exactly.
"""

import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from deepops_infra import states
from deepops_infra.config import Settings
from deepops_infra.ledger import store
from deepops_infra.ledger.db import Ledger
from deepops_infra.ledger.schema import Machine
from deepops_infra.providers.base import Provider, Resource, Utilization


class FakeProvider(Provider):
    cloud = "fake"

    def __init__(self, destroy_seconds: float = 0.0) -> None:
        self.resources: dict[str, Resource] = {}
        self.util: dict[str, Utilization] = {}
        self.gone_at: dict[str, datetime] = {}
        self.destroyed: list[str] = []
        self.terminated: list[str] = []
        self.checkins: list[tuple[str, dict[str, Any]]] = []
        self.destroy_seconds = destroy_seconds
        self.lock = threading.Lock()

    def add(self, machine_id: str | None, tags: dict[str, str], state: str = "running", rid: str | None = None) -> None:
        rid = rid or f"i-{machine_id}"
        self.resources[rid] = Resource("fake", machine_id, rid, state, tags=tags, location="fake-1")

    def plan(self, request, image):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def create(self, machine, progress):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def configure(self, machine, image, progress):  # type: ignore[no-untyped-def]
        return {}

    def validate(self, machine, image, progress):  # type: ignore[no-untyped-def]
        return {"passed": True, "checks": []}

    def destroy(self, machine: Machine, progress: Any) -> None:
        time.sleep(self.destroy_seconds)  # widens any race between two reapers
        with self.lock:
            self.destroyed.append(machine.id)
            for rid in [r for r, res in self.resources.items() if res.machine_id == machine.id]:
                del self.resources[rid]

    def discover(self) -> list[Resource]:
        return list(self.resources.values())

    def utilization(self, machine: Machine) -> Utilization | None:
        return self.util.get(machine.id)

    def confirm_gone(self, machine: Machine) -> datetime | None:
        return self.gone_at.get(machine.id)

    def checkin(self, machine: Machine, control: dict[str, Any]) -> None:
        self.checkins.append((machine.id, control))

    def terminate_resource(self, resource: Resource) -> None:
        with self.lock:
            self.terminated.append(resource.resource_id)
            self.resources.pop(resource.resource_id, None)

    def shell_command(self, machine, command):  # type: ignore[no-untyped-def]
        return ["true"]


def add_machine(
    ledger: Ledger,
    *,
    status: str = states.READY,
    age: timedelta = timedelta(hours=1),
    ttl: timedelta = timedelta(hours=8),
    idle_timeout: timedelta = timedelta(hours=1),
    team: str = "ml",
    owner: str = "ada",
    cloud: str = "fake",
    at: datetime | None = None,
) -> str:
    """A machine row as the lifecycle leaves it: created `age` ago, ready at once, usage open."""
    now = at or datetime.now(UTC)
    created = now - age
    mid = store.new_machine_id()
    request = {"ttl": int(ttl.total_seconds()), "idle_timeout": int(idle_timeout.total_seconds()), "gpus": "A100:1"}
    with ledger.write() as session:
        m = Machine(
            id=mid,
            status=states.REQUESTED,
            cloud=cloud,
            region="fake-1",
            owner=owner,
            team=team,
            project="p",
            image="cpu-minimal",
            gpu_count=1,
            request=request,
            plan={},
            provider_refs={"created": True},
            price_per_hour=Decimal("1.5"),
            price_breakdown={},
            created_at=created,
            expires_at=created + ttl,
        )
        session.add(m)
        session.flush()
        store.add_event(session, m, "transition", "requested", to_status=states.REQUESTED, at=created, first=True)
        path = {
            states.REQUESTED: [],
            states.PROVISIONING: [states.PROVISIONING],
            states.CONFIGURING: [states.PROVISIONING, states.CONFIGURING],
            states.READY: [states.PROVISIONING, states.CONFIGURING, states.VALIDATING, states.READY],
            states.IDLE: [states.PROVISIONING, states.CONFIGURING, states.VALIDATING, states.READY, states.IDLE],
            states.TERMINATING: [states.PROVISIONING, states.CONFIGURING, states.VALIDATING, states.READY],
            states.FAILED: [states.PROVISIONING, states.FAILED],
        }[status]
        for step in path:
            store.transition(session, m, step, step, at=created)
            if step == states.PROVISIONING:
                store.open_usage(session, m, created)
            if step == states.READY:
                m.ready_at = created
        if status == states.TERMINATING:
            store.transition(session, m, states.TERMINATING, "down", at=created)
    return mid


def settings_for(tmp_path: Any, config: str = "") -> Settings:
    home = tmp_path / "home"
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.yaml").write_text(config)
    return Settings(home=home)
