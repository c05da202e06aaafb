"""`deepops up --like ID|NAME` on every target: the earlier machine's image pin is checked against
what its provider pins today (the one authority, one lock reader) and the new plan repeats its
target, region, GPUs and image pin. A name finds the live machine, else the latest ended one the
caller may see (locally: all; through the team server: the caller's visibility)."""

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from deepops_infra.config import Settings
from deepops_infra.intake import Options, build_request
from deepops_infra.ledger import store
from deepops_infra.ledger.schema import Machine
from deepops_infra.providers import get_provider
from tests.conftest import Deepops
from tests.test_server_fixtures import Served, served, served_pg

__all__ = ["served", "served_pg"]  # fixtures used here


GPUS = {"gcp": "A100:1", "azure": "A100:1", "aws": "T4:1"}  # offers in several regions of each cloud


def ran(
    home: Any,
    ledger: Any,
    cloud: str,
    *,
    owner: str = "ada",
    team: str = "vision",
    name: str | None = None,
    pin: str | None = None,
    days_ago: float = 30,
) -> Machine:
    """A machine that ran and ended, recorded as a launch records one: its request, and the plan
    placement made with the pins then in force (`pin` overrides the pin, as if it has moved since).
    It ran in the cheapest region after the cheapest, so repeating it is not what a fresh plan does."""
    settings = Settings(home=home)
    opts = Options(
        gpus=GPUS[cloud], cloud=cloud, image="cpu-minimal", spot=True, disk=150, owner=owner, team=team, name=name
    )
    request, image = build_request(settings, opts)
    plans = get_provider(cloud, settings, ledger).plan(request, image)
    plan = next(p for p in plans if p.region != plans[0].region)
    at = store.now() - timedelta(days=days_ago)
    with ledger.write() as session:
        m = Machine(
            id=store.new_machine_id(),
            name=name,
            status="ready",
            cloud=cloud,
            region=plan.region,
            host=None,
            owner=owner,
            team=team,
            project="detr",
            image=image.name,
            image_pin=pin or plan.image_pin,
            accelerator=plan.accelerator,
            gpu_count=plan.accelerator_count,
            request=request.to_json(),
            plan=plan.to_json(),
            provider_refs={},
            price_per_hour=plan.price.per_hour,
            price_breakdown=plan.price.to_json(),
            created_at=at,
            ready_at=at,
            expires_at=at + request.ttl,
        )
        session.add(m)
        session.flush()
        store.add_event(session, m, "transition", "recorded", to_status="ready", at=at, first=True)
        store.open_usage(session, m, at)
        store.transition(session, m, "terminating", "released", at=at + timedelta(hours=2))
        store.transition(session, m, "terminated", "gone", at=at + timedelta(hours=2))
        store.end_machine(session, m, at + timedelta(hours=2))
    return m


def same_machine_again(plan: dict[str, Any], earlier: Machine) -> None:
    assert (plan["cloud"], plan["region"], plan["image_id"]) == (earlier.cloud, earlier.region, earlier.image_pin)
    assert (plan["accelerator"], plan["accelerator_count"]) == (earlier.accelerator, earlier.gpu_count)
    assert (plan["instance_type"], plan["spot"], plan["price"]["disk_gb"]) == (earlier.plan["instance_type"], True, 150)


def machines(d: Deepops) -> int:
    ledger = d.ledger()
    with ledger.read() as session:
        return session.scalar(select(func.count()).select_from(Machine))


@pytest.mark.parametrize("cloud", ["gcp", "azure", "aws"])
def test_like_an_ended_cloud_machine_plans_it_again(deepops: Deepops, cloud: str) -> None:
    earlier = ran(deepops.home, deepops.ledger(), cloud)
    assert earlier.image_pin  # a real pin: a GCP self-link, an Azure URN, an AMI
    plan = deepops.json("up", "--like", earlier.id, "--dry-run")
    same_machine_again(plan, earlier)
    assert machines(deepops) == 1  # a dry run records nothing


@pytest.mark.parametrize(
    ("cloud", "old_pin"),
    [
        ("gcp", "https://www.googleapis.com/compute/v1/projects/deeplearning-platform-release/global/images/old-1"),
        ("azure", "microsoft-dsvm:ubuntu-hpc:2204:22.04.2024010101"),
    ],
)
def test_like_refuses_when_the_pin_has_moved_since(deepops: Deepops, cloud: str, old_pin: str) -> None:
    earlier = ran(deepops.home, deepops.ledger(), cloud, pin=old_pin)
    today = earlier.plan["image_id"]  # what placement pinned in that region, from today's lock
    proc = deepops.run("up", "--like", earlier.id, "--dry-run")
    assert proc.returncode == 2 and proc.stdout == ""
    [line] = proc.stderr.splitlines()
    assert f"now pins {today} in {cloud} {earlier.region}" in line and f"ran {old_pin}" in line
    assert "None" not in line


def test_like_a_name_finds_the_latest_ended_machine(deepops: Deepops) -> None:
    ledger = deepops.ledger()
    ran(deepops.home, ledger, "gcp", name="detr-sweep", days_ago=40)
    latest = ran(deepops.home, ledger, "azure", name="detr-sweep", days_ago=10)
    ran(deepops.home, ledger, "aws", name="other", days_ago=1)
    same_machine_again(deepops.json("up", "--like", "detr-sweep", "--dry-run"), latest)
    proc = deepops.run("up", "--like", "no-such-name", "--dry-run")
    assert (
        proc.returncode == 2
        and proc.stderr.strip() == "deepops: error: no machine 'no-such-name'; see `deepops ls --all`"
    )


def test_like_a_name_through_the_server_sees_what_the_caller_may(served: Served) -> None:
    """alice's and bob's (team ml) ended `sweep`s, bob's the later one: each member repeats their
    own, the team-admin and the IT admin the latest they see, another team's admin none of them."""
    ledger = served.ledger()
    alices = ran(served.home, ledger, "gcp", owner="alice", team="ml", name="sweep", days_ago=20)
    bobs = ran(served.home, ledger, "azure", owner="bob", team="ml", name="sweep", days_ago=5)
    ledger.close()
    for user, expected in (("alice", alices), ("bob", bobs), ("tina", bobs), ("ivan", bobs)):
        with served.client(user) as c:
            r = c.post("/machines", json={"like": "sweep", "dry_run": True})
            assert r.status_code == 200, (user, r.text)
            same_machine_again(r.json()["plan"], expected)
    with served.client("carl") as c:
        r = c.post("/machines", json={"like": "sweep", "dry_run": True})
        assert r.status_code == 404 and "sweep" in r.json()["detail"]
    with served.client("alice") as c:
        assert c.post("/machines", json={"like": bobs.id, "dry_run": True}).status_code == 404
