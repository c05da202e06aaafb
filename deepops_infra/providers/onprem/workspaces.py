# ruff: noqa: UP017  (hosts may run Python 3.8: no datetime.UTC)
"""What leases exist on a host, read from the host itself (stdlib only, Python 3.8+: this file is
also sent over SSH and run by the host's Python to list a remote workspace root in one round trip).

A workspace is a lease this tool made only when it holds the lease marker `.deepops/lease.json`
(installation ID, machine ID, creation time), written by the onprem_lease role when it created
the workspace, and the workspace, its `.deepops` and the marker are real (no symlinks) and owned
by the user listing them. The caller compares the marker's IDs with its own.

`python - ROOT` lists the leases under ROOT; `python - --prune ROOT SECONDS INSTALLATION` removes
the quarantined workspaces of this installation older than SECONDS and lists them.
"""

import json
import os
import re
import shutil
import stat
import sys
import time
from datetime import datetime, timezone

MARKER = os.path.join(".deepops", "lease.json")
QUARANTINE = ".deepops-quarantine"
# A quarantined workspace: <machine ID>-<UTC time it was moved there>
QUARANTINED = re.compile(r"^(m-[a-z0-9-]+)-([0-9]{8}T[0-9]{6}Z)$")
STAMP = "%Y%m%dT%H%M%SZ"


def _read(path):  # type: ignore[no-untyped-def]
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _owned(path, kind):  # type: ignore[no-untyped-def]
    """The path itself (not a link) is of this kind and belongs to the user running this."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return kind(st.st_mode) and st.st_uid == os.getuid()


def marker(path):  # type: ignore[no-untyped-def]
    """The workspace's lease marker (installation_id, machine_id, created_at), or None when it has
    none that this user wrote (missing, unreadable, a link, or owned by someone else)."""
    if not (_owned(path, stat.S_ISDIR) and _owned(os.path.join(path, ".deepops"), stat.S_ISDIR)):
        return None
    if not _owned(os.path.join(path, MARKER), stat.S_ISREG):
        return None
    data = _read(os.path.join(path, MARKER))
    if not isinstance(data, dict):
        return None
    return {k: data.get(k) for k in ("installation_id", "machine_id", "created_at")}


def scan(root):  # type: ignore[no-untyped-def]
    """The root as the host resolves it, and every lease workspace (`m-*`) under it: its marker,
    protect marker, and whether its agent ended it."""
    root = os.path.expanduser(root)
    found = []
    if not os.path.isdir(root):
        return {"root": root, "leases": found}
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if not name.startswith("m-") or not os.path.isdir(path):
            continue
        status = _read(os.path.join(path, ".deepops", "agent", "status.json")) or {}
        found.append(
            {
                "name": name,
                "path": path,
                "marker": marker(path),
                "protect": os.path.exists(os.path.join(path, ".deepops", "protect")),
                "ended": ((status.get("ended") or {}) if isinstance(status, dict) else {}).get("reason"),
                "mtime": os.stat(path).st_mtime,
            }
        )
    return {"root": root, "leases": found}


def prune(root, older_than, installation_id, now=None):  # type: ignore[no-untyped-def]
    """Remove this installation's quarantined workspaces moved there more than `older_than`
    seconds ago; the paths removed. Anything else in the quarantine folder is left alone."""
    folder = os.path.join(os.path.expanduser(root), QUARANTINE)
    if not _owned(folder, stat.S_ISDIR):
        return []
    now = time.time() if now is None else now
    removed = []
    for name in sorted(os.listdir(folder)):
        match = QUARANTINED.match(name)
        path = os.path.join(folder, name)
        if not match:
            continue
        mark = marker(path) or {}
        if mark.get("installation_id") != installation_id or mark.get("machine_id") != match.group(1):
            continue
        at = datetime.strptime(match.group(2), STAMP).replace(tzinfo=timezone.utc).timestamp()
        if now - at < older_than:
            continue
        shutil.rmtree(path)
        removed.append(path)
    return removed


if __name__ == "__main__":
    if sys.argv[1] == "--prune":
        print(json.dumps(prune(sys.argv[2], float(sys.argv[3]), sys.argv[4])))
    else:
        print(json.dumps(scan(sys.argv[1])))
