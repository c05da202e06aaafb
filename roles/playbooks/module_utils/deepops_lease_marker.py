"""The on-prem lease marker (`.deepops/lease.json`), read the one way the lease and release
modules both trust: the workspace, its .deepops and the marker real (no links) and this user's."""

import json
import os
import stat

MARKER = os.path.join(".deepops", "lease.json")


def own_marker(workspace):
    """The marker when the workspace, its .deepops and the marker are this user's and no links."""
    for path, kind in ((workspace, stat.S_ISDIR), (os.path.join(workspace, ".deepops"), stat.S_ISDIR)):
        try:
            st = os.lstat(path)
        except OSError:
            return None
        if not kind(st.st_mode) or st.st_uid != os.getuid():
            return None
    path = os.path.join(workspace, MARKER)
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
            return None
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
