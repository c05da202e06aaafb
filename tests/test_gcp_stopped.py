"""Stopped GCE instances (status TERMINATED, also SUSPENDED/SUSPENDING/STOPPING) still exist and bill
for their disks: discovery reports them, break-glass removes a stopped orphan like a running one,
and a ledger machine is confirmed gone only when Compute Engine says its instance is not found.

Through google-cloud-compute (REST transport) against a local Compute Engine that keeps instances
in memory and answers in the API's shapes (aggregatedList, instances.get with its notFound error,
instances.delete with a zone operation, zoneOperations.wait)."""

import copy
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("google.cloud.compute_v1")

from deepops_infra import states, tags
from deepops_infra.config import Settings
from deepops_infra.ledger import store
from deepops_infra.ledger.db import Ledger
from deepops_infra.providers.gcp import readpath
from deepops_infra.providers.gcp.clients import Clients
from deepops_infra.providers.gcp.provider import GcpProvider
from deepops_infra.providers.gcp.settings import GcpSettings
from deepops_infra.reaper import guards
from tests.fake_api import Api, Seen, fixture, serve
from tests.reaper_fakes import add_machine, settings_for

INSTALL = "i-1234abcd"
PROJECT = "gpu-lab"
ZONE = "europe-west4-a"
BASE = f"/compute/v1/projects/{PROJECT}"
Answer = tuple[int, Any, dict[str, str]]


def not_found(path: str) -> Answer:
    """Compute Engine's 404 for an instance that does not exist."""
    message = f"The resource '{path.split('/compute/v1/', 1)[-1]}' was not found"
    return (
        404,
        {
            "error": {
                "code": 404,
                "message": message,
                "errors": [{"message": message, "domain": "global", "reason": "notFound"}],
            }
        },
        {},
    )


class Gce:
    """Instances by (zone, name), served from recorded documents; a delete removes one once its
    operation is waited on (the instance is STOPPING meanwhile)."""

    def __init__(self, api: Api, instances: list[dict[str, Any]]) -> None:
        self.api = api
        self.instances = {(i["zone"].rsplit("/", 1)[-1], i["name"]): i for i in instances}
        self.deleted: list[str] = []
        self.pending: dict[str, tuple[str, str]] = {}
        api.on(self.route)

    def route(self, seen: Seen) -> Answer | None:
        if seen.method == "GET" and seen.path == f"{BASE}/aggregated/instances":
            items: dict[str, Any] = {}
            for (zone, _), inst in sorted(self.instances.items()):
                items.setdefault(f"zones/{zone}", {"instances": []})["instances"].append(inst)
            return (
                200,
                {
                    "kind": "compute#instanceAggregatedList",
                    "id": f"projects/{PROJECT}/aggregated/instances",
                    "items": items,
                },
                {},
            )
        parts = seen.path[len(BASE) :].split("/") if seen.path.startswith(BASE) else []
        if len(parts) == 5 and parts[1] == "zones" and parts[3] == "instances":
            key = (parts[2], parts[4])
            if key not in self.instances:
                return not_found(seen.path)
            if seen.method == "GET":
                return 200, self.instances[key], {}
            if seen.method == "DELETE":
                op = fixture("gcp", "delete_operation.json")
                op["name"] = f"operation-delete-{parts[4]}"
                op["targetLink"] = (
                    op["targetLink"].replace("us-central1-a", parts[2]).replace("deepops-m-0a1b2c3d", parts[4])
                )
                self.instances[key]["status"] = "STOPPING"
                self.pending[op["name"]] = key
                return 200, op, {}
        if seen.method == "POST" and len(parts) == 6 and parts[3] == "operations" and parts[5] == "wait":
            key = self.pending.pop(parts[4])
            self.deleted.append(key[1])
            del self.instances[key]
            op = fixture("gcp", "delete_operation.json") | {"name": parts[4], "status": "DONE", "progress": 100}
            return 200, op, {}
        if seen.path.endswith("/timeSeries"):
            return 200, {"unit": "%"}, {}  # no GPU series: utilization unknown
        return None


def instance(name: str, status: str, labels: dict[str, str], zone: str = ZONE) -> dict[str, Any]:
    """A recorded instance document (page 2 of the aggregated list) with this name, status and labels."""
    doc = copy.deepcopy(
        fixture("gcp", "aggregated_instances_page2.json")["items"]["zones/europe-west4-a"]["instances"][0]
    )
    doc = {**doc, "name": name, "status": status, "labels": labels, "zone": doc["zone"].replace(ZONE, zone)}
    doc["selfLink"] = f"https://www.googleapis.com/compute/v1/projects/{PROJECT}/zones/{zone}/instances/{name}"
    return doc


def labels_of(machine: str, installation: str = INSTALL) -> dict[str, str]:
    marks = {tags.MANAGED: "true", tags.MACHINE: machine, tags.OWNER: "ada", tags.INSTALLATION: installation}
    return tags.gcp_labels(marks)


@pytest.fixture
def api() -> Iterator[Api]:
    with serve() as api:
        yield api


def provider_for(api: Api, settings: Settings, ledger: Any = None) -> GcpProvider:
    from google.auth.credentials import AnonymousCredentials

    gcp = GcpSettings(project=PROJECT, endpoints={"compute": api.url, "monitoring": api.url})
    return GcpProvider(settings, ledger, clients=Clients(gcp, credentials=AnonymousCredentials()))


@pytest.fixture
def provider(api: Api, tmp_path: Path) -> GcpProvider:
    (tmp_path / "config.yaml").write_text(f"gcp:\n  project: {PROJECT}\n  regions: [europe-west4, us-central1]\n")
    p = provider_for(api, Settings(home=tmp_path))
    p._installation_id = lambda: INSTALL  # type: ignore[method-assign]
    return p


def test_no_gce_status_of_an_existing_instance_reads_as_gone() -> None:
    from google.cloud import compute_v1

    statuses = [s.name for s in compute_v1.Instance.Status if s.name != "UNDEFINED_STATUS"]
    assert {"TERMINATED", "SUSPENDED", "SUSPENDING", "STOPPING", "RUNNING"} <= set(statuses)
    assert [s for s in statuses if readpath.state_of(s) in guards.GONE_STATES] == []
    assert readpath.state_of("TERMINATED") == readpath.state_of("STOPPED") == "stopped"
    assert readpath.state_of("SUSPENDED") == "suspended" and readpath.state_of("RUNNING") == "running"


@pytest.mark.parametrize("status", ["TERMINATED", "SUSPENDED", "SUSPENDING", "STOPPING"])
def test_a_stopped_orphan_is_reported_and_removed_like_a_running_one(
    api: Api, provider: GcpProvider, status: str
) -> None:
    gce = Gce(
        api,
        [
            instance("deepops-m-0rphan00", status, labels_of("m-0rphan00")),
            instance("deepops-m-11112222", "RUNNING", labels_of("m-11112222"), zone="us-central1-a"),
            instance("notebook-ada", "TERMINATED", {"team": "ml"}),
            instance("deepops-m-77778888", "TERMINATED", labels_of("m-77778888", "i-someoneelse")),
        ],
    )
    found = {r.resource_id: r for r in provider.discover()}
    assert sorted(found) == ["deepops-m-0rphan00", "deepops-m-11112222"]
    orphan = found["deepops-m-0rphan00"]
    assert orphan.machine_id == "m-0rphan00" and orphan.location == ZONE
    assert orphan.state not in guards.GONE_STATES and orphan.state == readpath.state_of(status)
    provider.terminate_resource(orphan)
    assert gce.deleted == ["deepops-m-0rphan00"]
    assert [s.path for s in api.seen if s.method == "DELETE"] == [f"{BASE}/zones/{ZONE}/instances/deepops-m-0rphan00"]
    assert ("us-central1-a", "deepops-m-11112222") in gce.instances and len(gce.instances) == 3


def ghost(refs: dict[str, str]) -> Any:
    return SimpleNamespace(id="m-0a1b2c3d", cloud="gcp", provider_refs=refs)


REFS = {"instance_name": "deepops-m-0a1b2c3d", "instance_id": "4567890123456789012", "zone": ZONE}


def test_confirm_gone_when_compute_engine_says_not_found(api: Api, provider: GcpProvider) -> None:
    gce = Gce(api, [instance("deepops-m-0a1b2c3d", "TERMINATED", labels_of("m-0a1b2c3d"))])
    assert provider.confirm_gone(ghost(REFS)) is None  # stopped: it still exists
    assert provider.confirm_gone(ghost({"created": "true"})) is None  # nothing recorded: cannot tell
    gce.instances.clear()
    assert provider.confirm_gone(ghost(REFS)) is not None
    full_zone = f"https://www.googleapis.com/compute/v1/projects/{PROJECT}/zones/{ZONE}"
    assert provider.confirm_gone(ghost(REFS | {"zone": full_zone})) is not None
    gets = [s.path for s in api.seen if s.method == "GET"]
    assert set(gets) == {f"{BASE}/zones/{ZONE}/instances/deepops-m-0a1b2c3d"}


@pytest.mark.parametrize(
    "answer",
    [
        (404, {"error": {"code": 404, "message": "no route"}}, {}),  # a 404 without Compute Engine's notFound
        (
            403,
            {
                "error": {
                    "code": 403,
                    "message": "Required 'compute.instances.get' permission",
                    "errors": [{"message": "denied", "domain": "global", "reason": "forbidden"}],
                }
            },
            {},
        ),
        (
            400,
            {
                "error": {
                    "code": 400,
                    "message": "Invalid value for field 'zone'",
                    "errors": [{"message": "bad", "domain": "global", "reason": "invalid"}],
                }
            },
            {},
        ),
    ],
    ids=["foreign-404", "forbidden", "bad-request"],
)
def test_confirm_gone_never_on_another_error(api: Api, provider: GcpProvider, answer: Answer) -> None:
    api.on(lambda seen: answer)
    assert provider.confirm_gone(ghost(REFS)) is None
    assert [s for s in api.seen if s.path.endswith("/instances/deepops-m-0a1b2c3d")]


def test_the_reaper_keeps_a_machine_on_a_stopped_instance_and_closes_a_ghost(
    api: Api, tmp_path: Path, ledger_url: str
) -> None:
    """A ledger machine whose instance is stopped is seen (never "not confirmed gone", never closed);
    one whose instance Compute Engine no longer knows is closed as a ghost."""
    from deepops_infra.reaper.cycle import Reaper
    from deepops_infra.reaper.settings import ReaperSettings

    settings = settings_for(tmp_path, f"gcp:\n  project: {PROJECT}\n  regions: [europe-west4]\n")
    ledger = Ledger(ledger_url)
    with ledger.write() as session:
        installation = store.installation_id(session)
    stopped, vanished = add_machine(ledger, cloud="gcp"), add_machine(ledger, cloud="gcp")
    with ledger.write() as session:
        for mid in (stopped, vanished):
            row = store.find_machine(session, mid)
            row.region = "europe-west4"
            row.provider_refs = {"created": True, "instance_name": f"deepops-{mid}", "instance_id": "1", "zone": ZONE}
    Gce(api, [instance(f"deepops-{stopped}", "TERMINATED", labels_of(stopped, installation))])
    reaper = Reaper(settings, ledger, {"gcp": provider_for(api, settings, ledger)}, ReaperSettings(grace=timedelta(0)))
    report = reaper.run()
    assert not report.errors, report.errors
    assert [(a.machine_id, a.kind, a.outcome) for a in report.actions] == [(vanished, "close-ghost", "done")]
    assert not [w for w in report.waiting if w["machine"] == stopped]
    with ledger.read() as session:
        assert store.find_machine(session, stopped).ended_at is None
        assert store.find_machine(session, vanished).status == states.TERMINATED
    assert not [s for s in api.seen if s.method == "DELETE"]
