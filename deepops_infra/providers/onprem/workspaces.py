"""What leases exist on a host, read from the host itself (stdlib only: this file is also sent
over SSH and run by the host's Python to list a remote workspace root in one round trip)."""

import json
import os
import sys


def _read(path):  # type: ignore[no-untyped-def]
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def scan(root):  # type: ignore[no-untyped-def]
    """The root as the host resolves it, and every lease workspace (`m-*`) under it: its agent's
    installation ID, protect marker, and whether its agent ended it."""
    root = os.path.expanduser(root)
    found = []
    if not os.path.isdir(root):
        return {"root": root, "leases": found}
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if not name.startswith("m-") or not os.path.isdir(path):
            continue
        config = _read(os.path.join(path, ".deepops", "agent", "config.json")) or {}
        status = _read(os.path.join(path, ".deepops", "agent", "status.json")) or {}
        found.append(
            {
                "name": name,
                "path": path,
                "installation_id": config.get("installation_id"),
                "protect": os.path.exists(os.path.join(path, ".deepops", "protect")),
                "ended": (status.get("ended") or {}).get("reason"),
                "mtime": os.stat(path).st_mtime,
            }
        )
    return {"root": root, "leases": found}


if __name__ == "__main__":
    print(json.dumps(scan(sys.argv[1])))
