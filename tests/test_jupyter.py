"""`deepops up --jupyter` (issue 14, item 2): a Jupyter server from the image's pinned environment,
a local forward, a URL with its token; the agent sees the server; `down` ends server and forward;
an image without Jupyter is refused before anything is written. Local mode on localhost."""

import json
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from deepops_infra import jupyter
from deepops_infra.images import load_images
from deepops_infra.yamlfile import FileError
from tests.conftest import Deepops, wait_for

URL = re.compile(r"http://127\.0\.0\.1:(\d+)/\?token=([A-Za-z0-9_-]{20,})")


def status_of(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return not Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")


def test_the_jupyter_option_of_images(tmp_path: Path) -> None:
    shipped = load_images()
    assert [name for name, image in shipped.items() if image.jupyter] == ["cpu-jupyter"]
    lock = shipped["cpu-jupyter"].onprem.lock_path.read_text()  # type: ignore[union-attr]
    assert "\njupyter-server==2." in lock
    (tmp_path / "x.yaml").write_text("name: x\njupyter: yes please\n")
    with pytest.raises(FileError, match=r"x.yaml:2: jupyter must be true or false"):
        load_images(tmp_path)


def test_a_forward_record_never_signals_a_process_that_is_not_its_ssh(tmp_path: Path) -> None:
    forward = jupyter.Forward("m-0123abcd", os.getpid(), 1234, 5678)  # this test's own pid
    jupyter.save(tmp_path, forward)
    assert oct(jupyter.record_path(tmp_path, "m-0123abcd").stat().st_mode)[-3:] == "600"
    assert jupyter.load(tmp_path, "m-0123abcd") == forward and not jupyter.is_ours(forward)
    assert jupyter.stop(tmp_path, "m-0123abcd") is False  # forgotten, not signalled
    assert jupyter.load(tmp_path, "m-0123abcd") is None


def test_an_image_without_jupyter_is_refused_before_anything_is_written(sqlite_deepops: Deepops) -> None:
    proc = sqlite_deepops.run("up", "--gpus", "0", "--image", "cpu-minimal", "--jupyter", "--yes")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "image cpu-minimal has no Jupyter" in proc.stderr
    assert "cpu-jupyter" in proc.stderr and not sqlite_deepops.home.exists()


@pytest.mark.ansible
def test_up_jupyter_serves_a_url_with_its_token_the_agent_sees_it_and_down_ends_it(sqlite_deepops: Deepops) -> None:
    d = sqlite_deepops
    d.write_config("agent:\n  interval: 1s\n")
    up = d.run("up", "--gpus", "0", "--image", "cpu-jupyter", "--jupyter", "--ttl", "30m", "--yes", timeout=900)
    assert up.returncode == 0, up.stderr
    machine = re.search(r"(m-[0-9a-f]{8}) is ready", up.stderr)[1]  # type: ignore[index]
    match = URL.fullmatch(up.stdout.strip().splitlines()[-1])
    assert match, up.stdout
    port, token = match[1], match[2]
    workspace = d.home / "workspaces" / machine
    try:
        api = f"http://127.0.0.1:{port}/api/status"
        assert status_of(api, {"Authorization": f"token {token}"}) == 200
        assert status_of(f"{api}?token={token}") == 200
        assert status_of(api) == 403
        specs = f"http://127.0.0.1:{port}/api/kernelspecs"
        with urllib.request.urlopen(urllib.request.Request(specs, headers={"Authorization": f"token {token}"})) as r:
            assert "python3" in json.loads(r.read())["kernelspecs"]  # notebooks have a kernel of the image's env
        # the token is in no process listing and no log
        (info,) = [json.loads(p.read_text()) for p in (workspace / ".deepops/jupyter/runtime").glob("jpserver-*.json")]
        server_pid = info["pid"]
        assert all(token not in p.read_text() for p in workspace.glob(".deepops/jobs/*/output.log"))
        cmdlines = [p.read_bytes() for p in Path("/proc").glob("[0-9]*/cmdline") if p.exists()]
        assert not any(token.encode() in c for c in cmdlines)

        def agent_sees_it() -> dict | None:
            try:
                signal = json.loads((workspace / ".deepops/agent/status.json").read_text())["signals"]["jupyter"]
            except (OSError, ValueError, KeyError):
                return None
            return signal if signal.get("servers") == 1 else None

        assert wait_for(agent_sees_it, 120, "the agent seeing the Jupyter server")["state"] == "idle"

        again = d.run("jupyter", machine, check=True)  # the running server and forward, reused
        assert again.stdout.strip() == up.stdout.strip().splitlines()[-1]
        forward = jupyter.load(d.home, machine)
        assert forward is not None and jupyter.is_ours(forward)
    finally:
        d.run("down", machine, "--yes", timeout=300)
    assert jupyter.load(d.home, machine) is None
    wait_for(lambda: not alive(forward.pid), 60, "the port forward ended")
    wait_for(lambda: not alive(server_pid), 60, "the Jupyter server ended with the machine")
