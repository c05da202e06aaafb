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


def _create(workspace, marker):
    """Build the workspace under a temporary name and rename it into place."""
    import shutil
    import tempfile

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


def claim(workspace, machine_id, installation_id, create=True):
    """The lease's workspace with its marker: (created now?, marker). Created under a temporary
    name beside its final path (0700, marker 0600) and renamed into place, so it never exists
    without its marker. A path that exists is accepted only when its marker is this lease's (a
    second run); anything else there is someone else's: ValueError, and it is left alone."""
    import secrets
    from datetime import datetime, timezone

    if not os.path.isabs(workspace) or os.path.basename(workspace) != machine_id:
        raise ValueError(f"workspace {workspace} must be an absolute path ending in {machine_id}")
    if os.path.lexists(workspace):
        mark = own_marker(workspace) or {}
        if mark.get("installation_id") != installation_id or mark.get("machine_id") != machine_id:
            raise ValueError(
                f"{workspace} exists and is not this lease's (no marker of installation "
                f"{installation_id} for {machine_id}); it was left alone: move it away, "
                "or choose another workspace root"
            )
        return False, mark
    marker = {
        "installation_id": installation_id,
        "machine_id": machine_id,
        "created_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),  # noqa: UP017
        "lease_key": secrets.token_hex(16),
    }
    if create:
        _create(workspace, marker)
    return True, marker
