"""Working on a machine in team mode, through a real `deepops serve` with member tokens: the
owner's exec, logs -f, jobs and sync go through the server's brokered sessions; the jobs API
(the web page's machine view) answers the owner and their team-admin, and 404 to another member
and to finance."""

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import end_processes_under, wait_for
from tests.test_server_fixtures import Served, start_server, stop_server
from tests.test_webui import browser, no_external_requests, sign_in
from tests.test_work_cli import lease_workspace, make_project, seed_lease

__all__ = ["browser"]

CLI = [sys.executable, "-m", "deepops_infra"]


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, Path]]:
    base = tmp_path_factory.mktemp("work-team")
    served = start_server(base, f"sqlite:///{base / 'srv-home' / 'ledger.db'}")
    ledger = served.db()
    for mid, owner in (("m-alice001", "alice"), ("m-bob00001", "bob")):
        seed_lease(ledger, mid, owner, "ml", "localhost", lease_workspace(base / "ws" / mid, mid))
    yield served, base
    stop_server(served)
    end_processes_under(base)


def laptop(served: Served, base: Path, user: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPOPS_")}
    env.update(
        DEEPOPS_HOME=str(base / user),
        HOME=str(base / f"{user}-home"),
        DEEPOPS_SERVER=served.url,
        DEEPOPS_TOKEN=served.tokens[user],
    )
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def cli(env: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], env=env, capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL, cwd=cwd
    )


def test_owner_works_through_the_server(team: tuple[Served, Path], tmp_path: Path) -> None:
    served, base = team
    alice = laptop(served, base, "alice")
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "train.py").write_text("print('epoch 1'); open('model.txt', 'w').write('weights')\n")
    pushed = cli(alice, "sync", "m-alice001", str(tmp_path / "code"))
    assert pushed.returncode == 0, pushed.stderr + served.log()[-2000:]
    started = cli(alice, "exec", "m-alice001", "--env", "LR=0.1", "--", "echo lr=$LR; python3 train.py")
    assert started.returncode == 0, started.stderr
    job = started.stdout.strip()
    followed = cli(alice, "logs", "m-alice001", job, "-f")
    assert (followed.returncode, followed.stdout) == (0, "lr=0.1\nepoch 1\n"), followed.stderr
    listed = cli(alice, "jobs", "m-alice001", "--json")
    assert listed.returncode == 0, listed.stderr
    assert '"exit_status": 0' in listed.stdout and job in listed.stdout
    back = cli(alice, "sync", "m-alice001", str(tmp_path), "--down", "model.txt")
    assert back.returncode == 0 and (tmp_path / "model.txt").read_text() == "weights", back.stderr

    # The web page's machine view: the jobs and the end of a job's output, over the API.
    api = served.client("alice")
    jobs = wait_for(lambda: api.get("/machines/m-alice001/jobs").json()["jobs"], 60, "the jobs listed")
    assert {j["id"]: (j["state"], j["exit_status"]) for j in jobs}[job] == ("exited", 0)
    log = api.get(f"/machines/m-alice001/jobs/{job}/log").json()
    assert (log["output"], log["truncated"]) == ("lr=0.1\nepoch 1\n", False)
    assert served.client("tina").get("/machines/m-alice001/jobs").status_code == 200  # her team-admin
    assert api.get("/machines/m-alice001/jobs/j-00000000/log").status_code == 404
    assert api.get("/machines/m-alice001/jobs/..%2Fetc/log").status_code in (404, 422)
    assert api.get("/machines/m-alice001/jobs/not-a-job/log").status_code == 422


def test_run_a_task_file_through_the_server(team: tuple[Served, Path], tmp_path: Path) -> None:
    """`deepops run -f task.yaml` from a project folder: the server's machine, the workdir pushed
    and the setup run through brokered sessions, the file's run with its envs, released after."""
    served, base = team
    project = make_project(tmp_path / "project")
    ran = cli(laptop(served, base, "alice"), "run", "-f", "task.yaml", cwd=project)
    assert ran.returncode == 0, ran.stderr + served.log()[-2000:]
    assert ran.stdout.splitlines() == ["trained on 2 rows", "setup saw 42", "rows=2 seed=42"]
    assert "the server is provisioning it" in ran.stderr and " terminated after " in ran.stderr


def test_another_member_gets_404(team: tuple[Served, Path]) -> None:
    served, base = team
    for user in ("bob", "fiona"):
        api = served.client(user)
        for path in ("/machines/m-alice001/jobs", "/machines/m-alice001/jobs/j-00000000/log"):
            refused = api.get(path)
            assert refused.status_code == 404 and "visible to you" in refused.json()["detail"], (user, path)
    bob = laptop(served, base, "bob")
    for args in (("jobs", "m-alice001"), ("logs", "m-alice001"), ("exec", "m-alice001", "--", "true")):
        refused = cli(bob, *args)
        assert refused.returncode == 2 and "no machine 'm-alice001' visible to you" in refused.stderr, refused.stderr
    assert served.client("bob").get("/machines/m-bob00001/jobs").json() == {"machine": "m-bob00001", "jobs": []}


def test_the_machine_view_lists_jobs_and_shows_a_log(team: tuple[Served, Path], browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    from deepops_infra.jobs import new_job_id, start_command

    served, base = team
    workspace = base / "ws" / "m-alice001"
    job = new_job_id()
    env = {**os.environ, "DEEPOPS_WORKSPACE": str(workspace), "DEEPOPS_MACHINE": "m-alice001"}
    subprocess.run(start_command(job, "echo hello from the page"), env=env, check=True, capture_output=True)
    sign_in(browser, served, "alice")
    wait = WebDriverWait(browser, 30)
    jobs_button = wait.until(
        ec.element_to_be_clickable((By.XPATH, "//tr[@data-id='m-alice001']//button[text()='Jobs and logs']"))
    )
    jobs_button.click()
    row = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, f"#jobs-table tr[data-job='{job}']")))
    wait.until(
        lambda d: (
            "exited" in d.find_element(By.CSS_SELECTOR, f"#jobs-table tr[data-job='{job}']").text
            or d.find_element(By.ID, "jobs-refresh").click()
        )
    )
    row = browser.find_element(By.CSS_SELECTOR, f"#jobs-table tr[data-job='{job}']")
    row.find_element(By.XPATH, ".//button[text()='Log']").click()
    wait.until(ec.text_to_be_present_in_element((By.ID, "job-log-text"), "hello from the page"))
    assert browser.find_element(By.ID, "jobs-title").text == "Jobs in m-alice001"
    no_external_requests(browser, served)
    browser.save_screenshot(str(tmp_path / "jobs.png"))


def test_up_jupyter_through_the_server(team: tuple[Served, Path]) -> None:
    """`up --jupyter` in team mode: the server's machine, Jupyter started and forwarded through the
    brokered session, a local URL that answers with its token; `down` ends the forward."""
    import re

    from tests.test_jupyter import URL, status_of

    served, base = team
    alice = laptop(served, base, "alice")
    up = cli(alice, "up", "--image", "cpu-jupyter", "--jupyter", "--ttl", "30m", "--yes")
    assert up.returncode == 0, up.stderr + served.log()[-2000:]
    match = URL.fullmatch(up.stdout.strip().splitlines()[-1])
    assert match, up.stdout
    api = f"http://127.0.0.1:{match[1]}/api/status"
    assert status_of(api, {"Authorization": f"token {match[2]}"}) == 200 and status_of(api) == 403
    machine = re.search(r"(m-[0-9a-f]{8}) is ready", up.stderr)[1]  # type: ignore[index]
    down = cli(alice, "down", machine, "--yes")
    assert down.returncode == 0, down.stderr
    wait_for(lambda: not list((base / "alice" / "jupyter").glob("*.json")), 60, "the forward record gone")
