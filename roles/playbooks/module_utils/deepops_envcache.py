"""The pinned-environment cache on a host (stdlib only, Python 3.8+; run by the pinned_env
role's module and directly by deepops over local/SSH, see deepops_onprem_host.py).

An image's environment is built once per host, lock and interpreter: the entry
`<root>/<lock sha256>-<cache tag>-<interpreter hash>` is a virtual environment built under a
temporary name (`.build-<key>-*`), its scripts pointed at the final path, its files recorded
in `.deepops-env.json` (size, mtime and sha256 of every file, and the package manifest), made
read-only and renamed into place: an entry exists complete or not at all. Builders of one key
take a lock file (`.<key>.lock`); a lease only reads.

Each lease gets a small venv of its own (`attach`: the interpreter links, a `.pth` that adds the
entry's site-packages with `site.addsitedir`, and the entry's console scripts re-pointed at the
lease's interpreter), made in milliseconds; what a lease installs with pip goes to its own venv.

An entry whose files no longer match its record (changed, missing, added; a half-built or
foreign directory has no record) is moved aside and rebuilt. The quick check compares size and
mtime of every file (a stat each); `deep` also compares sha256. `__pycache__` is not checked:
Python validates its own bytecode against the sources, and root may write new caches.
Entries are pruned by the time of their last use (`.<key>.used`) and by total size.
"""

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

RECORD = ".deepops-env.json"
FORMAT = 1
LOCK_FILE = "lock.txt"
BASE_MARK = ".deepops-base"  # in a lease's venv: the entry it is layered on
PTH = "_deepops_env.pth"
SKIP = "__pycache__"
# Entries used this recently are never removed to meet the size limit (leases may run on them).
RECENT_S = 86400
STALE_BUILD_S = 6 * 3600

MANIFEST_SCRIPT = r"""
import json, os, platform, sys
from importlib import metadata

packages = {}
for dist in metadata.distributions():
    name = dist.metadata["Name"]
    if name:
        packages[name.lower()] = dist.version
manifest = {
    "python": platform.python_version(),
    "implementation": platform.python_implementation(),
    "platform": platform.platform(),
    "executable": sys.executable,
    "packages": dict(sorted(packages.items())),
    "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
}
if "torch" in packages:
    try:
        import torch

        manifest["torch"] = {
            "version": torch.__version__,
            "cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(),
        }
    except Exception as exc:  # the manifest reports, it does not judge
        manifest["torch"] = {"error": str(exc)}
print(json.dumps(manifest))
"""

IDENTITY_SCRIPT = (
    "import json, os, sys; print(json.dumps([sys.implementation.cache_tag, os.path.realpath(sys.executable)]))"
)


class EnvError(Exception):
    """Why an environment could not be had (one line for the user)."""


def _tail(text, limit=600):
    return " ".join((text or "").split())[-limit:]


def _run(argv, env=None, what="command"):
    try:
        done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    except OSError as exc:
        raise EnvError(f"{what}: {exc}") from None
    if done.returncode != 0:
        raise EnvError(f"{what} failed (exit {done.returncode}): {_tail(done.stderr or done.stdout)}")
    return done.stdout


def identity(python):
    """(cache tag, real path) of an interpreter: what an entry is built for besides the lock."""
    tag, real = json.loads(_run([python, "-c", IDENTITY_SCRIPT], what=f"{python}"))
    return tag, real


def entry_key(lock_sha256, python):
    tag, real = identity(python)
    return f"{lock_sha256}-{tag}-{hashlib.sha256(real.encode()).hexdigest()[:8]}"


# -- the record of an entry's files ------------------------------------------------------------


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def scan(top, hashes):
    """{relative path: [size, mtime_ns, sha256 or None]} for files, {path: target} for links."""
    files, links = {}, {}
    for folder, dirs, names in os.walk(top):
        dirs[:] = [d for d in dirs if d != SKIP]
        for name in dirs + names:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, top)
            if rel == RECORD:
                continue
            st = os.lstat(path)
            if os.path.islink(path):
                links[rel] = os.readlink(path)
                if name in dirs:
                    dirs.remove(name)
            elif name in names:
                files[rel] = [st.st_size, st.st_mtime_ns, _sha256(path) if hashes else None]
    return files, links


def read_record(entry):
    try:
        with open(os.path.join(entry, RECORD)) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("format") == FORMAT else None


def verify(entry, deep=False):
    """None when the entry is complete and unchanged, else what is wrong with it."""
    record = read_record(entry)
    if record is None:
        return "no record of its files (half-built, or not made by deepops)"
    files, links = scan(entry, hashes=False)
    if links != record["links"]:
        return "its links changed"
    want = record["files"]
    if set(files) != set(want):
        extra = sorted(set(files) - set(want))[:3]
        missing = sorted(set(want) - set(files))[:3]
        return f"files added {extra} or missing {missing}"
    for rel, (size, mtime_ns, _) in files.items():
        if [size, mtime_ns] != want[rel][:2]:
            return f"{rel} changed"
    if deep:
        for rel in want:
            if _sha256(os.path.join(entry, rel)) != want[rel][2]:
                return f"{rel} changed (sha256)"
    return None


# -- building ------------------------------------------------------------------------------------


def find_uv(installer, python):
    """The uv executable to build with, or None for pip. `installer`: auto, pip, uv or a path."""
    if installer == "pip":
        return None
    if installer not in ("auto", "uv"):
        if not os.access(installer, os.X_OK):
            raise EnvError(f"installer {installer}: not an executable")
        return installer
    here = [os.path.dirname(p) for p in (python if os.path.isabs(python) else "", sys.executable) if p]
    for candidate in [shutil.which("uv")] + [os.path.join(d, "uv") for d in here]:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    if installer == "uv":
        raise EnvError("installer uv: no `uv` on the host's PATH or beside its Python; install uv or use pip")
    return None


def _install(staging, lock, python, uv, pip_cache):
    env = dict(os.environ)
    if uv:
        _run([uv, "venv", "--quiet", "--python", python, staging], env, "uv venv")
        argv = [uv, "pip", "install", "--quiet", "--python", os.path.join(staging, "bin", "python")]
        # copies, not hardlinks into uv's cache: the entry's files are its own (made read-only, verified)
        argv += ["--require-hashes", "--no-deps", "--compile-bytecode", "--link-mode", "copy", "-r", lock]
        if env.get("PIP_NO_INDEX"):
            argv.append("--no-index")
        for link in (env.get("PIP_FIND_LINKS") or "").split():
            argv += ["--find-links", link]
        if pip_cache:
            env["UV_CACHE_DIR"] = os.path.join(pip_cache, "uv")
        _run(argv, env, "uv pip install")
        return "uv"
    _run([python, "-m", "venv", staging], env, f"{python} -m venv")
    argv = [os.path.join(staging, "bin", "python"), "-m", "pip", "install", "--quiet", "--no-input"]
    argv += ["--require-hashes", "--no-deps", "--disable-pip-version-check", "-r", lock]
    if pip_cache:
        env["PIP_CACHE_DIR"] = pip_cache
    _run(argv, env, "pip install --require-hashes")
    return "pip"


def _repoint(staging, final):
    """Scripts and pyvenv.cfg name the path they were built at: name the final one."""
    old, new = staging.encode(), final.encode()
    paths = [os.path.join(staging, "pyvenv.cfg")]
    paths += [os.path.join(staging, "bin", n) for n in os.listdir(os.path.join(staging, "bin"))]
    for path in paths:
        if os.path.islink(path) or not os.path.isfile(path):
            continue
        with open(path, "rb") as f:
            data = f.read()
        if old in data:
            mode = os.stat(path).st_mode
            with open(path, "wb") as f:
                f.write(data.replace(old, new))
            os.chmod(path, mode)


def _read_only(top):
    for folder, _dirs, names in os.walk(top, topdown=False):
        for name in names:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, os.stat(path).st_mode & 0o500)  # read (and run) by this user only
        if folder != top:
            os.chmod(folder, 0o500)


def _writable(top):
    for folder, dirs, _ in os.walk(top):
        os.chmod(folder, 0o700)
        for name in dirs:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, 0o700)


def remove(path):
    """Remove an entry (read-only) or a leftover: renamed aside first, so never seen half-gone."""
    if not os.path.lexists(path):
        return
    root = os.path.dirname(path)
    if os.path.isdir(path) and not os.path.islink(path):
        os.chmod(path, 0o700)  # a directory moving to another parent must be writable
    trash = tempfile.mkdtemp(prefix=".trash-", dir=root)
    aside = os.path.join(trash, "x")
    os.rename(path, aside)
    _writable(trash)
    shutil.rmtree(trash, ignore_errors=True)


def build(root, key, lock_text, python, installer, pip_cache):
    """Build the entry `<root>/<key>`; returns how (pip or uv)."""
    final = os.path.join(root, key)
    staging = tempfile.mkdtemp(prefix=f".build-{key}-", dir=root)
    os.rmdir(staging)  # venv and uv create it
    try:
        lock = os.path.join(tempfile.gettempdir(), f"deepops-lock-{os.getpid()}-{os.path.basename(staging)}.txt")
        with open(os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(lock_text)
        try:
            how = _install(staging, lock, python, find_uv(installer, python), pip_cache)
        finally:
            os.unlink(lock)
        with open(os.path.join(staging, LOCK_FILE), "w") as f:
            f.write(lock_text)
        _repoint(staging, final)
        manifest = json.loads(_run([os.path.join(staging, "bin", "python"), "-c", MANIFEST_SCRIPT], what="manifest"))
        files, links = scan(staging, hashes=True)
        record = {
            "format": FORMAT,
            "key": key,
            "built_at": time.time(),
            "installer": how,
            "bytes": sum(v[0] for v in files.values()),
            "manifest": manifest,
            "files": files,
            "links": links,
        }
        with open(os.path.join(staging, RECORD), "w") as f:
            json.dump(record, f)
        _read_only(staging)
        os.rename(staging, final)
        os.chmod(final, 0o500)
    except BaseException:
        if os.path.lexists(staging):
            _writable(staging)
            shutil.rmtree(staging, ignore_errors=True)
        raise
    return how


class _Locked:
    """The key's lock file, held while an entry is checked, built, repaired or removed."""

    def __init__(self, root, key, wait=True):
        self.path = os.path.join(root, f".{key}.lock")
        self.wait = wait
        self.held = False

    def __enter__(self):
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
            self.held = True
        except OSError:
            self.held = False
        return self

    def __exit__(self, *exc):
        os.close(self.fd)


def _stamp(root, key):
    path = os.path.join(root, f".{key}.used")
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    os.utime(path)


def ensure(root, lock_text, lock_sha256, python, installer="auto", pip_cache="", deep=False):
    """The entry for this lock and interpreter, built or repaired when needed: (path, what was done)."""
    if hashlib.sha256(lock_text.encode()).hexdigest() != lock_sha256:
        raise EnvError(f"the lock does not match its pin sha256:{lock_sha256}")
    root = os.path.expanduser(root)
    os.makedirs(root, mode=0o700, exist_ok=True)
    if os.stat(root).st_uid != os.getuid():
        raise EnvError(f"the environment cache {root} belongs to another user; choose another env_cache.dir")
    key = entry_key(lock_sha256, python)
    final = os.path.join(root, key)
    info = {"key": key, "entry": final, "built": False, "repaired": None}
    if os.path.isdir(final) and verify(final, deep) is None:
        _stamp(root, key)
        return final, info
    started = time.monotonic()
    with _Locked(root, key):
        if os.path.lexists(final):
            problem = verify(final, deep)
            if problem is not None:
                info["repaired"] = problem
                remove(final)
        if not os.path.lexists(final):
            info["installer"] = build(root, key, lock_text, python, installer, pip_cache)
            info["built"] = True
            info["build_seconds"] = round(time.monotonic() - started, 2)
        _stamp(root, key)
    return final, info


# -- a lease's venv ------------------------------------------------------------------------------


def attach(entry, venv):
    """Make `venv` a virtual environment layered on the entry; idempotent for the same entry."""
    mark = os.path.join(venv, BASE_MARK)
    if os.path.isfile(mark):
        with open(mark) as f:
            if f.read() == entry:
                return False
    if os.path.lexists(venv):
        shutil.rmtree(venv)
    [lib] = [n for n in os.listdir(os.path.join(entry, "lib")) if n.startswith("python")]
    site = os.path.join(venv, "lib", lib, "site-packages")
    os.makedirs(os.path.dirname(venv), mode=0o700, exist_ok=True)
    for folder in (venv, os.path.dirname(os.path.dirname(site)), os.path.dirname(site), site):
        os.mkdir(folder, 0o700)  # private whatever the umask, like the workspace
    os.symlink("lib", os.path.join(venv, "lib64"))
    with open(os.path.join(entry, "pyvenv.cfg")) as f:
        cfg = [line for line in f if not line.startswith("command")]
    with open(os.path.join(venv, "pyvenv.cfg"), "w") as f:
        f.writelines(cfg)
    bin_dir = os.path.join(venv, "bin")
    os.mkdir(bin_dir, 0o700)
    os.symlink(os.path.realpath(os.path.join(entry, "bin", "python")), os.path.join(bin_dir, "python"))
    for alias in ("python3", lib):
        os.symlink("python", os.path.join(bin_dir, alias))
    with open(os.path.join(site, PTH), "w") as f:
        f.write(f"import site; site.addsitedir({os.path.join(entry, 'lib', lib, 'site-packages')!r})\n")
    _scripts(entry, bin_dir)
    with open(mark, "w") as f:
        f.write(entry)
    return True


def _scripts(entry, bin_dir):
    """The entry's commands in the lease's bin: scripts that run the entry's interpreter are
    re-pointed at the lease's (so `pip install` goes to the lease), anything else is linked."""
    source = os.path.join(entry, "bin")
    theirs = os.path.join(entry, "bin", "python").encode()
    ours = os.path.join(bin_dir, "python").encode()
    for name in os.listdir(source):
        target = os.path.join(bin_dir, name)
        if name.startswith(("python", "activate", "Activate", "deactivate")) or os.path.lexists(target):
            continue
        path = os.path.join(source, name)
        data = b""
        if os.path.isfile(path) and os.path.getsize(path) < 1 << 20:
            with open(path, "rb") as f:
                data = f.read()
        if theirs not in data[:1024]:
            os.symlink(path, target)
            continue
        with open(os.open(target, os.O_WRONLY | os.O_CREAT, 0o700), "wb") as f:
            f.write(data.replace(theirs, ours))


def lease_manifest(entry, venv):
    """What the lease's environment contains: the entry's manifest, run from the lease's venv."""
    manifest = dict((read_record(entry) or {}).get("manifest") or {})
    manifest["executable"] = os.path.join(venv, "bin", "python")
    return manifest


# -- pruning -------------------------------------------------------------------------------------


def _used(root, key):
    try:
        return os.stat(os.path.join(root, f".{key}.used")).st_mtime
    except OSError:
        return (read_record(os.path.join(root, key)) or {}).get("built_at") or 0.0


def prune(root, max_age_s, max_bytes, keep=(), now=None):
    """Remove entries unused for `max_age_s`, then the least recently used (unused for a day)
    until the rest fit in `max_bytes` (0: no limit), and stale leftovers of builds; the keys removed."""
    root = os.path.expanduser(root)
    if not os.path.isdir(root):
        return []
    now = time.time() if now is None else now
    removed = []
    for name in os.listdir(root):
        path = os.path.join(root, name)
        if name.startswith(".trash-"):
            _writable(path)
            shutil.rmtree(path, ignore_errors=True)
        elif name.startswith(".build-") and now - os.lstat(path).st_mtime > STALE_BUILD_S:
            key = name[len(".build-") :].rsplit("-", 1)[0]
            with _Locked(root, key, wait=False) as lock:
                if lock.held:
                    remove(path)
            if not os.path.isdir(os.path.join(root, key)):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(root, f".{key}.lock"))
    entries = []
    for key in os.listdir(root):
        if key.startswith(".") or key in keep or not os.path.isdir(os.path.join(root, key)):
            continue
        entries.append((_used(root, key), key, (read_record(os.path.join(root, key)) or {}).get("bytes") or 0))
    entries.sort()
    total = sum(e[2] for e in entries) + sum((read_record(os.path.join(root, k)) or {}).get("bytes") or 0 for k in keep)
    for used, key, size in entries:
        too_old = max_age_s and now - used > max_age_s
        too_big = max_bytes and total > max_bytes and now - used > RECENT_S
        if not (too_old or too_big):
            continue
        with _Locked(root, key, wait=False) as lock:
            if not lock.held:
                continue
            remove(os.path.join(root, key))
            for suffix in (".used", ".lock"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(root, f".{key}{suffix}"))
        total -= size
        removed.append(key)
    return removed
