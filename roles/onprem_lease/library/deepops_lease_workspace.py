#!/usr/bin/python
# ruff: noqa: UP017  (hosts may run Python 3.8: no datetime.UTC)
"""Ansible module: create a lease's workspace together with its ownership marker.

The marker `.deepops/lease.json` (installation ID, machine ID, creation time, and a random lease
key that the lease's env.sh exports as DEEPOPS_LEASE_KEY) is what proves later that deepops made
this workspace: the reaper and the release role act on nothing without it. The workspace is built
under a temporary name beside its final path (0700, marker 0600) and renamed into place, so it
never exists without its marker, even when the play is killed half-way. A path that exists
already is accepted only when its marker is this lease's (a second run); anything else there is
someone else's and is left alone.
"""

import json
import os
import secrets
import shutil
import tempfile
from datetime import datetime, timezone

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.deepops_lease_marker import MARKER, own_marker

DOCUMENTATION = r"""
module: deepops_lease_workspace
short_description: Create a deepops on-prem lease workspace with its ownership marker
options:
  workspace: {description: The lease's workspace (absolute; ends in the machine ID)., type: path, required: true}
  machine_id: {description: The lease's machine ID., type: str, required: true}
  installation_id: {description: The deepops installation that owns the lease., type: str, required: true}
"""


def create(workspace, marker):
    """Build the workspace under a temporary name and rename it into place."""
    root = os.path.dirname(workspace)
    if not os.path.isdir(root):
        os.makedirs(root, mode=0o700)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(workspace)}.", dir=root)  # 0700
    try:
        os.mkdir(os.path.join(staging, ".deepops"), 0o700)
        fd = os.open(os.path.join(staging, MARKER), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(marker, f)
            f.flush()
            os.fsync(f.fileno())
        os.rename(staging, workspace)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def main():
    module = AnsibleModule(
        argument_spec={
            "workspace": {"type": "path", "required": True},
            "machine_id": {"type": "str", "required": True},
            "installation_id": {"type": "str", "required": True},
        },
        supports_check_mode=True,
    )
    p = module.params
    workspace = p["workspace"].rstrip("/")
    if not os.path.isabs(workspace) or os.path.basename(workspace) != p["machine_id"]:
        module.fail_json(msg=f"workspace {workspace} must be an absolute path ending in {p['machine_id']}")
    if os.path.lexists(workspace):
        mark = own_marker(workspace) or {}
        if mark.get("installation_id") != p["installation_id"] or mark.get("machine_id") != p["machine_id"]:
            module.fail_json(
                msg=f"{workspace} exists and is not this lease's (no marker of installation "
                f"{p['installation_id']} for {p['machine_id']}); it was left alone: move it away, "
                "or choose another workspace root"
            )
        module.exit_json(
            changed=False, workspace=workspace, created_at=mark.get("created_at"), lease_key=mark.get("lease_key")
        )
    marker = {
        "installation_id": p["installation_id"],
        "machine_id": p["machine_id"],
        "created_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "lease_key": secrets.token_hex(16),
    }
    if not module.check_mode:
        try:
            create(workspace, marker)
        except OSError as exc:
            module.fail_json(msg=f"creating {workspace}: {exc}")
    module.exit_json(changed=True, workspace=workspace, created_at=marker["created_at"], lease_key=marker["lease_key"])


if __name__ == "__main__":
    main()
