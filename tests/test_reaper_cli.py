"""`deepops reap` as shipped: bad input refused before anything runs, the deploy manifests' own
commands run as they are (CronJob: --once; systemd: --daemon, stopped by SIGTERM) with metrics."""

import json
import shlex
import signal
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import free_port

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--once", "--daemon"], "--once and --daemon exclude each other"),
        (["--once", "--interval", "5m"], "--interval is for --daemon"),
        (["--daemon", "--interval", "soon"], "--interval: 'soon' is not a duration"),
        (["--daemon", "--metrics-port", "70000"], "--metrics-port: 70000 is not a port"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(sqlite_deepops, args, message):
    proc = sqlite_deepops.run("reap", *args)
    assert proc.returncode == 2 and proc.stderr.startswith("deepops: error: " + message)
    assert len(proc.stderr.strip().splitlines()) == 1 and not (sqlite_deepops.home / "ledger.db").exists()


def test_bad_reaper_config_names_the_file_and_line(sqlite_deepops):
    sqlite_deepops.write_config("reaper:\n  grace: 10m\n  max_fraction: 3\n")
    proc = sqlite_deepops.run("reap", "--once")
    assert proc.returncode == 2 and "config.yaml:3: reaper.max_fraction must be from 0 to 1" in proc.stderr
    sqlite_deepops.write_config("reaper:\n  graze: 10m\n")
    assert "config.yaml:2: unknown reaper setting 'graze'" in sqlite_deepops.run("reap", "--once").stderr
    sqlite_deepops.write_config("agent:\n  interval: often\n")
    proc = sqlite_deepops.run("up", "--gpus", "0", "--yes")  # refused at planning: nothing recorded
    assert proc.returncode == 2 and "config.yaml:2: agent.interval: 'often' is not a duration" in proc.stderr
    assert sqlite_deepops.json("ls", "--all") == []


def test_the_cronjob_command_runs_once(sqlite_deepops):
    [cron] = list(yaml.safe_load_all((DEPLOY / "kubernetes" / "reaper-cronjob.yaml").read_text()))
    assert cron["kind"] == "CronJob" and cron["spec"]["concurrencyPolicy"] == "Forbid"
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    command = container["command"]
    assert command[:2] == ["deepops", "reap"] and "--once" in command
    proc = sqlite_deepops.run(*command[1:], "--dry-run")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["dry_run"] is True and report["actions"] == [] and report["installation_id"].startswith("inst-")


def test_the_systemd_daemon_serves_metrics_and_stops_on_sigterm(sqlite_deepops):
    unit = (DEPLOY / "systemd" / "deepops-reaper.service").read_text()
    [exec_start] = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("ExecStart=")]
    argv = shlex.split(exec_start)
    assert argv[0].endswith("/deepops") and argv[1:3] == ["reap", "--daemon"]
    assert "KillSignal=SIGTERM" in unit and "User=deepops" in unit
    port = free_port()
    proc = sqlite_deepops.popen(*argv[1:], "--interval", "1s", "--metrics-port", str(port))
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
                if "deepops_reaper_cycle_duration_seconds_count 2" in body:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the daemon did not run two cycles"
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "# TYPE deepops_reaper_actions_total counter" in body and "deepops_reaper_errors_total 0" in body
    cycles = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert len(cycles) >= 2 and all(c["errors"] == [] for c in cycles[:-1])
