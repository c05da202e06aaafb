#!/usr/bin/python
"""Ansible module: end every process of a lease.

A process belongs to the lease when its environment carries DEEPOPS_MACHINE=<id> (set by the
lease's env.sh, inherited by everything started from `deepops ssh`) or its working directory is
inside the workspace. The module never signals itself or its ancestors (the ansible process may
have been started from inside the lease). SIGTERM first, SIGKILL after the grace period.
"""

import contextlib
import os
import signal
import time

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: deepops_lease_processes
short_description: Terminate the processes of a deepops on-prem lease
options:
  machine_id: {description: The lease's machine ID., type: str, required: true}
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


def lease_pids(machine_id, workspace):
    marker = f"DEEPOPS_MACHINE={machine_id}".encode()
    skip = ancestors()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in skip:
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
            if marker in env:
                found.append(pid)
                continue
            if workspace:
                cwd = os.readlink(f"/proc/{pid}/cwd")
                if cwd == workspace or cwd.startswith(workspace.rstrip("/") + "/"):
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


def main():
    module = AnsibleModule(
        argument_spec={
            "machine_id": {"type": "str", "required": True},
            "workspace": {"type": "path"},
            "grace": {"type": "float", "default": 5.0},
        },
        supports_check_mode=True,
    )
    p = module.params
    pids = lease_pids(p["machine_id"], p["workspace"])
    if module.check_mode or not pids:
        module.exit_json(changed=bool(pids), pids=pids, killed=[])
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + p["grace"]
    while time.monotonic() < deadline and any(alive(pid) for pid in pids):
        time.sleep(0.1)
    killed = []
    for pid in pids:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except OSError:
                pass
    module.exit_json(changed=True, pids=pids, killed=killed)


if __name__ == "__main__":
    main()
