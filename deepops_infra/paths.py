"""Locations of the project's own files (roles, images, stacks) in a checkout or a wheel, and the
private folders and files this tool keeps under $DEEPOPS_HOME (0700 / 0600 whatever the umask)."""

import contextlib
import os
import stat
from functools import cache
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


@cache
def project_dir(name: str) -> Path:
    """`roles`, `images` or `stacks`: beside the package in a checkout, bundled in a wheel."""
    for candidate in (_PACKAGE.parent / name, _PACKAGE / "_bundled" / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"the {name}/ folder of deepops-infra is missing from {_PACKAGE.parent}")


def roles_dir() -> Path:
    return project_dir("roles")


def playbook(name: str) -> Path:
    return roles_dir() / "playbooks" / f"{name}.yml"


def images_dir() -> Path:
    return project_dir("images")


PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def tighten(path: Path, mode: int) -> None:
    """Take group and other access away from `path` when it is ours and has more than `mode`
    (a file or folder someone else made, or one made under a permissive umask)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    if st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) & ~mode:
        path.chmod(stat.S_IMODE(st.st_mode) & mode)


def private_dir(path: Path) -> Path:
    """`path` as a folder only its owner can enter (0700), whoever created it and whatever the
    umask: missing folders are made 0700 (parents too), an existing one of ours is tightened."""
    missing = []
    here = path
    while not here.exists():
        missing.append(here)
        here = here.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):  # made at this moment by another process
            folder.mkdir(mode=PRIVATE_DIR)
        tighten(folder, PRIVATE_DIR)
    tighten(path, PRIVATE_DIR)
    return path
