"""On-prem up-to-ready and down, cold (empty environment cache) and warm, on localhost and on a
real sshd host (issue 14, item 6: goal warm ready <= 3 s, down <= 2 s on a quiet machine).

Run standalone from the repository root (nothing else needed; it starts its own sshd on
127.0.0.1 when /usr/sbin/sshd exists, in temporary folders it removes afterwards):

    .venv/bin/python tests/benchmarks/bench_onprem_ready.py [--runs 5] [--installer auto|pip|uv]

Each figure is the wall time of the real CLI (`deepops up --host H --gpus 0 --yes --json`, then
`deepops down ID --yes`) as a user sees it. "cold" builds the image's environment into an empty
cache (cpu-minimal, installed offline from a wheelhouse fetched once with `pip download`, so the
figure is not the network's); "warm" is a later lease of the same image (median of --runs). For
scale it also prints a trivial ansible-playbook run on localhost, what each play used to cost.
"""

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


STEP = re.compile(r"✓ (provisioning|configuring|validating|releasing)\b.*\((\d+\.\d+)s\)")


def timed(argv: list[str], env: dict[str, str], what: str, steps: dict | None = None) -> tuple[float, str]:
    """Wall seconds and stdout; `steps` gets the CLI's own step timings (its progress lines)."""
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, cwd=ROOT, check=False)
    took = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}): {proc.stderr[-800:]}")
    for match in STEP.finditer(proc.stderr):
        if steps is not None:
            steps.setdefault(match.group(1), []).append(float(match.group(2)))
    return took, proc.stdout


def wheelhouse(folder: Path) -> dict[str, str]:
    """The cpu-minimal lock's wheel in a local folder: builds without the network."""
    lock = ROOT / "images" / "locks" / "cpu-minimal.txt"
    argv = [str(VENV_BIN / "pip"), "download", "-q", "--no-deps", "--only-binary=:all:", "--require-hashes"]
    proc = subprocess.run([*argv, "-r", str(lock), "-d", str(folder)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        log(f"no wheelhouse ({proc.stderr.strip()[-200:]}): cold builds download from the index")
        return {}
    return {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(folder)}


def start_sshd(base: Path) -> tuple[subprocess.Popen, dict[str, str]] | None:
    """A real OpenSSH server on 127.0.0.1 with keys only this run knows; (process, pool fields)."""
    binary = shutil.which("sshd") or "/usr/sbin/sshd"
    if not Path(binary).exists():
        log("no sshd: the ssh host is skipped")
        return None
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / key)], check=True)
    (base / "authorized_keys").write_text((base / "client_key.pub").read_text())
    os.chmod(base / "authorized_keys", 0o600)
    Path("/run/sshd").mkdir(exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (base / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {base / 'host_key'}\n"
        f"AuthorizedKeysFile {base / 'authorized_keys'}\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nUsePAM no\nStrictModes no\n"
        f"PidFile {base / 'sshd.pid'}\n"
    )
    proc = subprocess.Popen([binary, "-D", "-e", "-f", str(base / "sshd_config")], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    import getpass

    fields = {"port": str(port), "user": getpass.getuser(), "key": str(base / "client_key")}
    return proc, fields


def pool_file(home: Path, ssh: dict[str, str] | None) -> None:
    text = "hosts:\n  - name: localhost\n    connection: local\n    rates: {gpu_hour: 1, host_hour: 0.05}\n"
    if ssh:
        text += (
            "  - name: sshbox\n    connection: ssh\n    address: 127.0.0.1\n"
            f"    port: {ssh['port']}\n    user: {ssh['user']}\n    key: {ssh['key']}\n"
            f"    workspace_root: {home / 'remote-workspaces'}\n    python: /usr/bin/python3\n"
            "    rates: {gpu_hour: 1, host_hour: 0.05}\n"
        )
    home.mkdir(parents=True, exist_ok=True)
    (home / "pool.yaml").write_text(text)


def up_down(env: dict[str, str], host: str, steps: dict | None = None) -> tuple[float, float]:
    deepops = [sys.executable, "-m", "deepops_infra"]
    argv = [*deepops, "up", "--host", host, "--gpus", "0", "--ttl", "30m", "--yes", "--json"]
    up_s, out = timed(argv, env, "up", steps)
    machine = json.loads(out)
    if machine.get("status") != "ready":
        raise RuntimeError(f"up left {machine.get('id')} {machine.get('status')}")
    down_s, _ = timed([*deepops, "down", machine["id"], "--yes"], env, f"down {machine['id']}", steps)
    return up_s, down_s


def trivial_play(work: Path) -> float:
    book = work / "trivial.yml"
    book.write_text("- hosts: all\n  gather_facts: false\n  tasks:\n    - ansible.builtin.command: 'true'\n")
    argv = [str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(book)]
    argv += ["-e", f"ansible_python_interpreter={sys.executable}"]
    env = dict(os.environ, ANSIBLE_LOCAL_TEMP=str(work / "ansible-tmp"), ANSIBLE_HOME=str(work / "ansible"))
    return min(timed(argv, env, "ansible-playbook")[0] for _ in range(3))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="warm leases per host (median printed)")
    parser.add_argument("--installer", default="auto", choices=["auto", "pip", "uv"])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-onprem-ready-"))
    sshd = None
    try:
        home = work / "home"
        (work / "sshd").mkdir()
        sshd = start_sshd(work / "sshd")
        pool_file(home, sshd[1] if sshd else None)
        home.joinpath("config.yaml").write_text(f"env_cache:\n  installer: {args.installer}\n")
        env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPOPS_")}
        env |= {"DEEPOPS_HOME": str(home), "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"}
        env |= wheelhouse(work / "wheels")
        rows = []
        for host in ["localhost"] + (["sshbox"] if sshd else []):
            env["DEEPOPS_ENV_CACHE"] = str(work / f"envs-{host}")  # empty: the first lease builds
            cold = up_down(env, host)
            steps: dict[str, list[float]] = {}
            warm = [up_down(env, host, steps) for _ in range(args.runs)]
            rows.append((host, cold, warm, steps))
        play = trivial_play(work)
        load = os.getloadavg()
        print(f"on-prem up-to-ready and down (cpu-minimal, installer {args.installer}; load {load[0]:.2f})")
        print(
            f"{'host':<10} {'cold up':>8} {'cold down':>10} {'warm up':>8} {'warm down':>10}  (median of {args.runs})"
        )
        for host, (cold_up, cold_down), warm, steps in rows:
            warm_up = statistics.median(u for u, _ in warm)
            warm_down = statistics.median(d for _, d in warm)
            print(f"{host:<10} {cold_up:>7.2f}s {cold_down:>9.2f}s {warm_up:>7.2f}s {warm_down:>9.2f}s")
            parts = ", ".join(f"{k} {statistics.median(v):.2f}s" for k, v in steps.items())
            print(f"{'':<10} warm steps (median, the CLI's own timings): {parts}")
        print(f"goal: warm up <= 3 s, warm down <= 2 s; a trivial ansible-playbook on localhost: {play:.2f} s")
        return 0
    finally:
        if sshd:
            sshd[0].terminate()
            sshd[0].wait(timeout=10)
        for folder in work.glob("envs-*"):
            subprocess.run(["chmod", "-R", "u+w", str(folder)], check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
