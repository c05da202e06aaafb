#!/usr/bin/python
"""Ansible module: end every process of a lease this installation made.

Nothing is done unless the workspace carries the lease marker `.deepops/lease.json` naming this
installation and this machine (written by the onprem_lease role when it created the workspace;
the workspace, its .deepops and the marker real, not links, and this user's). A process belongs
to the lease when it is inside it: its working directory, root, executable or an open file lies
in the workspace, or its environment carries the lease's own DEEPOPS_LEASE_KEY (from env.sh,
inherited by everything started through `deepops ssh`). DEEPOPS_MACHINE alone proves nothing:
anyone can set it. The module never signals itself or its ancestors (the ansible process may
have been started from inside the lease). SIGTERM first, SIGKILL after the grace period.
"""

import contextlib
import os
import signal
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.deepops_lease_marker import own_marker

DOCUMENTATION = r"""
module: deepops_lease_processes
short_description: Terminate the processes of a deepops on-prem lease
options:
  machine_id: {description: The lease's machine ID., type: str, required: true}
  installation_id: {description: The deepops installation that made the lease., type: str, required: true}
  workspace: {description: The lease's workspace directory., type: path}
  grace: {description: Seconds between SIGTERM and SIGKILL., type: float, default: 5}
"""


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
        time.sleep(0.1)
    killed = []
    for pid in pids:
        if alive(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
    return killed


def main():
    module = AnsibleModule(
        argument_spec={
            "machine_id": {"type": "str", "required": True},
            "installation_id": {"type": "str", "required": True},
            "workspace": {"type": "path"},
            "grace": {"type": "float", "default": 5.0},
        },
        supports_check_mode=True,
    )
    p = module.params
    workspace = (p["workspace"] or "").rstrip("/")
    if not workspace or not os.path.lexists(workspace):
        module.exit_json(changed=False, ours=False, present=False, pids=[], killed=[])
    mark = own_marker(workspace) or {}
    if mark.get("installation_id") != p["installation_id"] or mark.get("machine_id") != p["machine_id"]:
        module.warn(
            f"{workspace} has no lease marker of installation {p['installation_id']} for {p['machine_id']}: "
            "not made by this deepops, so neither it nor any process in it is touched"
        )
        module.exit_json(changed=False, ours=False, present=True, pids=[], killed=[])
    pids = lease_pids(workspace, mark.get("lease_key"))
    if module.check_mode or not pids:
        module.exit_json(changed=bool(pids), ours=True, present=True, pids=pids, killed=[])
    killed = end(pids, p["grace"])
    module.exit_json(changed=True, ours=True, present=True, pids=pids, killed=killed)


if __name__ == "__main__":
    main()
