"""Bringing code to a machine: `--workdir DIR` on up/run, and `deepops sync ID [DIR] [--down PATH]`.

The copy is rsync's: incremental (only changed files travel), `.gitignore` files honoured in
every folder (rsync's dir-merge filter), `.git` left out. Before anything travels the folder is
measured with the same filters, and a folder larger than `workdir.max_size` (config, default
1 GB) is refused with the size it would copy. rsync reaches the machine through a remote-shell
command given by the caller (`deepops`'s own ssh path), so the same code serves every target.
"""

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from deepops_infra.config import Settings
from deepops_infra.errors import OperationError, UserError
from deepops_infra.yamlfile import FileError

DEFAULT_MAX_BYTES = 1024**3
FILTERS = ("--exclude=/.git", "--filter=:- .gitignore")
_TOTAL = re.compile(r"Total file size: ([0-9,.]+) bytes")
_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)B?", re.IGNORECASE)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


@dataclass(frozen=True)
class Upload:
    source: Path
    total_bytes: int


def max_bytes(settings: Settings) -> int:
    """`workdir.max_size` from the configuration (e.g. `2G`, `500M`), default 1 GB."""
    section = settings.config.section("workdir")
    for key in section:
        if key != "max_size":
            raise FileError(
                settings.config.path or Path("config.yaml"),
                section.line_of(key),
                f"workdir.{key}: unknown key; known: max_size",
            )
    raw = section.get("max_size")
    if raw is None:
        return DEFAULT_MAX_BYTES
    match = _SIZE.fullmatch(str(raw).strip())
    if not match or float(match[1]) <= 0:
        raise FileError(
            settings.config.path or Path("config.yaml"),
            section.line_of("max_size"),
            f"workdir.max_size: {raw!r} is not a size; write e.g. 500M or 2G",
        )
    return int(float(match[1]) * _UNITS[match[2].upper()])


def human(size: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024  # type: ignore[assignment]
    return f"{size} B"


def _rsync() -> str:
    found = shutil.which("rsync")
    if found is None:
        raise UserError("--workdir: rsync is not installed here; install it (Debian: apt-get install rsync)")
    return found


def measure(source: Path, limit: int, option: str = "--workdir") -> Upload:
    """What `source` would copy after the filters, refused when it is not a folder or too big
    (the message names `option`). Reads only: an rsync dry run into an empty folder."""
    if not source.is_dir():
        raise UserError(f"{option}: {source} is not a folder; give the folder with your code, e.g. {option} .")
    with tempfile.TemporaryDirectory(prefix="deepops-measure-") as empty:
        argv = [_rsync(), "-a", "--dry-run", "--stats", *FILTERS, f"{source}/", f"{empty}/"]
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    found = _TOTAL.search(proc.stdout)
    if proc.returncode != 0 or not found:
        raise UserError(f"{option}: cannot read {source}: {' '.join(proc.stderr.split())[:200] or 'rsync failed'}")
    total = int(found[1].replace(",", "").split(".")[0])
    if total > limit:
        raise UserError(
            f"{option}: {source} holds {human(total)} to copy (after .gitignore), more than the "
            f"{human(limit)} allowed (workdir.max_size); ignore large files in .gitignore or sync a smaller folder"
        )
    return Upload(source=source, total_bytes=total)


def push_argv(rsh: str, upload: Upload, remote: str) -> list[str]:
    """rsync that copies the measured folder into `remote` (a `host:path` the rsh understands)."""
    return [_rsync(), "-az", "--partial", "--info=stats1", *FILTERS, "-e", rsh, f"{upload.source}/", remote]


def pull_argv(rsh: str, remote: str, local: Path) -> list[str]:
    """rsync that copies `remote` (a file or folder in the machine) down into `local`."""
    return [_rsync(), "-az", "--partial", "--info=stats1", "-e", rsh, remote, f"{local}/"]


def run_rsync(argv: list[str], what: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise OperationError(f"{what} failed: {' '.join(proc.stderr.split())[:300] or f'rsync exit {proc.returncode}'}")
