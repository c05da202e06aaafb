"""The steps of an on-prem lease, as run on the host (stdlib only, Python 3.8+).

One implementation, two ways in: the roles' modules (onprem_lease -> deepops_lease,
pinned_env -> deepops_pinned_env, agent's on-prem mode -> deepops_lease_agent, onprem_release
-> deepops_lease_release) call these functions, and deepops calls them directly, without an
Ansible play, over a local process or one SSH round trip (deepops_infra/providers/onprem/
hostcall.py sends these files and a JSON request, `serve` answers with one JSON line).

- `lease`: GPU and disk facts, the checks, the workspace with its ownership marker
  `.deepops/lease.json` (deepops_lease_marker.claim), and `.deepops/env.sh`.
- `pinned_env`: the image's environment from the host's cache (deepops_envcache), layered into
  `<workspace>/env`, and its manifest.
- `install_agent`: the agent's files in the lease, and the agent started in the background.
- `release`: only for a workspace whose marker names this installation and machine: end the
  lease's processes, then wipe the workspace or move it to quarantine.
"""

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

try:
    from ansible.module_utils.deepops_envcache import EnvError, attach, ensure, lease_manifest, prune
    from ansible.module_utils.deepops_gpu_probe import facts
    from ansible.module_utils.deepops_lease_marker import claim, own_marker
except ImportError:  # run directly by deepops (hostcall.py), not by Ansible
    from deepops_envcache import EnvError, attach, ensure, lease_manifest, prune
    from deepops_gpu_probe import facts
    from deepops_lease_marker import claim, own_marker

MACHINE_ID = re.compile(r"^[a-z0-9-]+$")
INSTALLATION_ID = re.compile(r"^[A-Za-z0-9-]+$")


class LeaseError(Exception):
    """A step refused or failed: one line saying why."""


def _check_ids(machine_id, installation_id):
    if not MACHINE_ID.match(machine_id or "") or not INSTALLATION_ID.match(installation_id or ""):
        raise LeaseError("machine_id and installation_id are required (a deepops machine ID, this installation's ID)")


def _write(path, text, mode):
    tmp = f"{path}.tmp"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


# -- lease ---------------------------------------------------------------------------------------


def env_sh(machine_id, workspace, lease_key, gpu_indexes):
    """`.deepops/env.sh`, sourced by `deepops ssh`: the lease's identity, its GPUs, its venv."""
    gpus = ",".join(str(i) for i in gpu_indexes)
    q = shlex.quote
    return (
        f"# Managed by deepops: sourced by `deepops ssh {machine_id}`.\n"
        f"export DEEPOPS_MACHINE={q(machine_id)}\n"
        f"export DEEPOPS_WORKSPACE={q(workspace)}\n"
        "# The lease key of .deepops/lease.json: what proves, at release, that a process was started in this lease.\n"
        f"export DEEPOPS_LEASE_KEY={q(lease_key)}\n"
        f"export CUDA_VISIBLE_DEVICES={q(gpus)}\n"
        f"export NVIDIA_VISIBLE_DEVICES={q(gpus or 'void')}\n"
        'if [ -d "$DEEPOPS_WORKSPACE/env/bin" ]; then\n'
        '  export VIRTUAL_ENV="$DEEPOPS_WORKSPACE/env"\n'
        '  export PATH="$VIRTUAL_ENV/bin:$PATH"\n'
        "fi\n"
        'cd "$DEEPOPS_WORKSPACE" || return 1\n'
    )


def lease(
    machine_id,
    installation_id,
    workspace_root,
    gpu_indexes=(),
    gpus_declared=False,
    disk_gb=0,
    nvidia_smi="nvidia-smi",
    create=True,
):
    """Check the host and create the lease's workspace; what deepops records about it."""
    _check_ids(machine_id, installation_id)
    found = facts(nvidia_smi, workspace_root)
    gpus, host = found["deepops_gpus"], found["deepops_host"]
    present = [g["index"] for g in gpus]
    missing = [i for i in gpu_indexes if i not in present]
    if missing and not gpus_declared:
        seen = found["deepops_gpu_detection_note"] or "detected: " + ",".join(str(i) for i in present)
        raise LeaseError(f"GPUs {','.join(str(i) for i in missing)} are not on {host['hostname']} ({seen})")
    if float(disk_gb or 0) > 0 and host["free_gb"] is not None and host["free_gb"] < float(disk_gb):
        raise LeaseError(f"{disk_gb} GB requested, {host['free_gb']} GB free under {workspace_root}")
    workspace = os.path.join(os.path.expanduser(workspace_root).rstrip("/"), machine_id)
    try:
        created, mark = claim(workspace, machine_id, installation_id, create=create)
    except (OSError, ValueError) as exc:
        raise LeaseError(f"creating {workspace}: {exc}") from None
    if create:
        text = env_sh(machine_id, workspace, mark["lease_key"], list(gpu_indexes))
        _write(os.path.join(workspace, ".deepops", "env.sh"), text, 0o600)
    return {
        "created": created,
        "workspace": workspace,
        "gpus": gpus,
        "driver_version": found["deepops_driver_version"],
        "host": host,
    }


# -- the pinned environment ----------------------------------------------------------------------


def pinned_env(workspace, lock_text, lock_sha256, python, cache):
    """The image's environment in `<workspace>/env`, from the host's cache: (manifest, what the
    cache did). `cache`: dir, installer, pip_cache, max_age_seconds, max_size_gb, verify."""
    deepops_dir = os.path.join(workspace, ".deepops")
    os.makedirs(deepops_dir, mode=0o700, exist_ok=True)
    _write(os.path.join(deepops_dir, "lock.txt"), lock_text, 0o600)
    root = os.path.expanduser(cache.get("dir") or "~/.deepops/envs")
    entry, info = ensure(
        root,
        lock_text,
        lock_sha256,
        python,
        installer=cache.get("installer") or "auto",
        pip_cache=cache.get("pip_cache") or "",
        deep=cache.get("verify") == "deep",
    )
    venv = os.path.join(workspace, "env")
    info["attached"] = attach(entry, venv)
    max_bytes = int(float(cache.get("max_size_gb") or 0) * 1024**3)
    with contextlib.suppress(OSError):
        info["pruned"] = prune(root, float(cache.get("max_age_seconds") or 0), max_bytes, keep={info["key"]})
    return lease_manifest(entry, venv), info


# -- the agent -------------------------------------------------------------------------------------


def install_agent(state_dir, bin_dir, workspace, config, python, start=True, source_text=None):
    """The agent's files in the lease (config.json, the deepops-agent command, also in the venv's
    bin) and, with `start`, the agent running in the background; whether it was started now."""
    for folder in (state_dir, bin_dir):
        os.makedirs(folder, mode=0o700, exist_ok=True)
        os.chmod(folder, 0o700)
    script = os.path.join(state_dir, "deepops_agent.py")
    if source_text is not None:
        _write(script, source_text, 0o600)
    config_path = os.path.join(state_dir, "config.json")
    config = dict(config, state_dir=state_dir, mode="onprem")
    _write(config_path, json.dumps(config, indent=4, sort_keys=True), 0o600)
    command = os.path.join(bin_dir, "deepops-agent")
    q = shlex.quote
    wrapper = (
        "#!/bin/sh\n# Managed by deepops: `deepops-agent status`, `deepops-agent touch`.\n"
        f'exec {q(python)} {q(script)} --config {q(config_path)} --state-dir {q(state_dir)} "$@"\n'
    )
    _write(command, wrapper, 0o700)
    with contextlib.suppress(OSError):  # on PATH in `deepops ssh` when the lease has a venv
        link = os.path.join(workspace, "env", "bin", "deepops-agent")
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(command, link)
    if not start:
        return False
    env = dict(os.environ, DEEPOPS_MACHINE=str(config.get("machine_id")))
    done = subprocess.run(
        [python, script, "--config", config_path, "start"], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        raise LeaseError(f"starting the agent failed: {' '.join((done.stderr or done.stdout).split())[-400:]}")
    return bool(json.loads(done.stdout.strip().splitlines()[-1]).get("started"))


def configure(workspace, lock_text, lock_sha256, python, cache, agent=None):
    """The pinned environment, then the agent (direct calls; the play runs the two roles)."""
    manifest, info = pinned_env(workspace, lock_text, lock_sha256, python, cache)
    if agent:
        config = agent["config"]
        state_dir = config["state_dir"]
        agent_started = install_agent(
            state_dir,
            os.path.join(workspace, ".deepops", "bin"),
            workspace,
            config,
            agent["python"],
            start=agent.get("start", True),
            source_text=agent["source"],
        )
        info["agent_started"] = agent_started
    return {"manifest": manifest, "env": info}


# -- release ---------------------------------------------------------------------------------------


def ancestors():
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def _paths(pid):
    """Where the process is: working directory, root, executable and every open file."""
    for link in ("cwd", "root", "exe"):
        with contextlib.suppress(OSError):
            yield os.readlink(f"/proc/{pid}/{link}")
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                yield os.readlink(f"/proc/{pid}/fd/{fd}")


def lease_pids(workspace, lease_key):
    """The processes inside the lease: any path of theirs in the workspace, or its lease key in
    their environment (DEEPOPS_MACHINE alone proves nothing: anyone can set it). Never this
    process or its ancestors."""
    real = os.path.realpath(workspace).rstrip("/")
    key = f"DEEPOPS_LEASE_KEY={lease_key}".encode() if lease_key else None
    skip = ancestors()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in skip:
            continue
        pid = int(entry)
        if any(p == real or p.startswith(real + "/") for p in _paths(pid)):
            found.append(pid)
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if key and key in f.read().split(b"\0"):
                    found.append(pid)
        except OSError:
            continue  # gone, or not ours to read
    return found


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def end(pids, grace):
    """SIGTERM, then SIGKILL for those still alive after the grace; the PIDs killed."""
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(pid) for pid in pids):
        time.sleep(0.05)
    killed = []
    for pid in pids:
        if alive(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    return killed


def check_release(machine_id, installation_id, workspace, quarantine):
    _check_ids(machine_id, installation_id)
    if workspace and not (workspace.startswith("/") and workspace.rstrip("/").endswith("/" + machine_id)):
        raise LeaseError(f"workspace {workspace} must be the lease's own absolute workspace (ending in /{machine_id})")
    pattern = re.compile("^/.*/" + re.escape(machine_id) + "-[0-9]{8}T[0-9]{6}Z$")
    if quarantine and not pattern.match(quarantine):
        raise LeaseError(f"quarantine {quarantine} must be an absolute path ending in {machine_id}-<UTC time>")


def release(machine_id, installation_id, workspace="", quarantine="", grace=5.0, check_mode=False):
    """End the lease this installation made, and nothing else (see the module docstring)."""
    check_release(machine_id, installation_id, workspace, quarantine)
    workspace = (workspace or "").rstrip("/")
    report = {"ours": False, "present": False, "pids": [], "killed": [], "quarantined": False, "warning": None}
    if not workspace or not os.path.lexists(workspace):
        return report
    report["present"] = True
    mark = own_marker(workspace) or {}
    if mark.get("installation_id") != installation_id or mark.get("machine_id") != machine_id:
        report["warning"] = (
            f"{workspace} has no lease marker of installation {installation_id} for {machine_id}: "
            "not made by this deepops, so neither it nor any process in it is touched"
        )
        return report
    report["ours"] = True
    report["pids"] = lease_pids(workspace, mark.get("lease_key"))
    if check_mode:
        return report
    if report["pids"]:
        report["killed"] = end(report["pids"], float(grace))
    if quarantine:
        os.makedirs(os.path.dirname(quarantine), mode=0o700, exist_ok=True)
        if os.path.lexists(quarantine):
            raise LeaseError(f"{quarantine} exists already; {workspace} left where it is")
        os.rename(workspace, quarantine)
        report["quarantined"] = True
    else:
        shutil.rmtree(workspace)
    return report


# -- direct calls --------------------------------------------------------------------------------

OPERATIONS = {"lease": lease, "configure": configure, "release": release}


def serve(op, args):
    """Run one operation and print its answer as one JSON line: {"result": ...} or {"error": ...}."""
    try:
        answer = {"result": OPERATIONS[op](**args)}
    except (LeaseError, EnvError) as exc:
        answer = {"error": str(exc)}
    except OSError as exc:
        answer = {"error": f"{op}: {exc}"}
    sys.stdout.write(json.dumps(answer) + "\n")
    return 0
