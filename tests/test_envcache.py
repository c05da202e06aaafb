"""The on-prem environment cache (roles/playbooks/module_utils/deepops_envcache.py): an image's
environment built once per host and lock, verified, read-only, layered into each lease's venv;
a changed or half-built entry rebuilt; pruning by age and size; the `env_cache:` settings; and the
lease steps run directly on localhost (providers/onprem/hostcall.py), without a play.

Builds are offline: a wheel made here, served from a folder (PIP_NO_INDEX / --no-index)."""

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from deepops_infra.config import Settings
from deepops_infra.pool import PoolHost
from deepops_infra.yamlfile import FileError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "roles" / "playbooks" / "module_utils"))
import deepops_envcache as envcache

PYTHON = sys.executable


def _wheel(folder: Path, version: str = "1.0") -> Path:
    """A pure-Python wheel `deepopsprobe` whose module says its version."""
    name = f"deepopsprobe-{version}"
    files = {
        "deepopsprobe/__init__.py": f"VERSION = {version!r}\n",
        f"{name}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: deepopsprobe\nVersion: {version}\n",
        f"{name}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }

    def digest(data: bytes) -> str:
        return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()

    record = "".join(f"{p},sha256={digest(t.encode())},{len(t.encode())}\n" for p, t in files.items())
    files[f"{name}.dist-info/RECORD"] = record + f"{name}.dist-info/RECORD,,\n"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for p, t in files.items():
            zf.writestr(p, t)
    return path


@pytest.fixture
def lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """(lock text, its sha256) for the probe wheel, installable offline from a local folder."""
    wheel = _wheel(tmp_path / "wheels")
    text = f"deepopsprobe==1.0 \\\n    --hash=sha256:{hashlib.sha256(wheel.read_bytes()).hexdigest()}\n"
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheel.parent))
    return text, hashlib.sha256(text.encode()).hexdigest()


def lease_python(venv: Path, code: str) -> str:
    return subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("installer", ["pip", "auto"])
def test_built_once_read_only_and_layered_into_each_lease(tmp_path, lock, installer):
    text, sha = lock
    root = tmp_path / "envs"
    entry, info = envcache.ensure(str(root), text, sha, PYTHON, installer=installer)
    assert info["built"] and info["repaired"] is None and Path(entry).name.startswith(sha)
    assert installer == "auto" or info["installer"] == "pip"
    again, info = envcache.ensure(str(root), text, sha, PYTHON, installer=installer)
    assert again == entry and not info["built"]
    assert [p.name for p in root.iterdir() if not p.name.startswith(".")] == [Path(entry).name]
    writable = [p for p in Path(entry).rglob("*") if not p.is_symlink() and p.stat().st_mode & 0o222]
    assert writable == []
    for lease in ("a", "b"):
        venv = tmp_path / lease / "env"
        assert envcache.attach(entry, str(venv))
        assert not envcache.attach(entry, str(venv))  # a second run changes nothing
        out = lease_python(venv, "import deepopsprobe, sys; print(deepopsprobe.VERSION, sys.prefix)")
        assert out.split() == ["1.0", str(venv)]
    manifest = envcache.lease_manifest(entry, str(venv))
    assert manifest["packages"]["deepopsprobe"] == "1.0" and manifest["executable"] == str(venv / "bin" / "python")
    assert envcache.verify(entry, deep=True) is None


def test_a_changed_or_half_built_entry_is_detected_and_rebuilt(tmp_path, lock):
    text, sha = lock
    root = tmp_path / "envs"
    entry, _ = envcache.ensure(str(root), text, sha, PYTHON)
    module = next(Path(entry).rglob("deepopsprobe/__init__.py"))
    module.chmod(0o600)
    module.write_text("VERSION = 'tampered'\n")
    assert "changed" in (envcache.verify(entry) or "")
    entry, info = envcache.ensure(str(root), text, sha, PYTHON)
    assert info["built"] and "changed" in info["repaired"]
    assert next(Path(entry).rglob("deepopsprobe/__init__.py")).read_text() == "VERSION = '1.0'\n"
    # half-built: a directory at the entry's path without its record
    os.chmod(entry, 0o700)
    os.chmod(Path(entry) / envcache.RECORD, 0o600)
    (Path(entry) / envcache.RECORD).unlink()
    entry, info = envcache.ensure(str(root), text, sha, PYTHON)
    assert info["built"] and "no record" in info["repaired"]
    # a deep check sees a change that keeps size and mtime
    target = next(Path(entry).rglob("deepopsprobe/__init__.py"))
    stat = target.stat()
    target.chmod(0o600)
    target.write_text("VERSION = '9.9'\n")
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert envcache.verify(entry) is None and "sha256" in (envcache.verify(entry, deep=True) or "")


def test_the_lock_must_match_its_pin(tmp_path, lock):
    text, sha = lock
    with pytest.raises(envcache.EnvError, match="does not match its pin"):
        envcache.ensure(str(tmp_path / "envs"), text + "# edited\n", sha, PYTHON)
    assert not (tmp_path / "envs").exists()


@pytest.mark.skipif(envcache.find_uv("auto", PYTHON) is None, reason="uv not installed")
def test_uv_builds_the_same_environment_with_hashes_checked(tmp_path, lock):
    text, sha = lock
    entry, info = envcache.ensure(str(tmp_path / "uv"), text, sha, PYTHON, installer="uv")
    assert info["installer"] == "uv"
    assert envcache.lease_manifest(entry, entry)["packages"]["deepopsprobe"] == "1.0"
    bad = re.sub("sha256:[0-9a-f]{64}", "sha256:" + "0" * 64, text)
    with pytest.raises(envcache.EnvError, match="uv pip install failed"):
        envcache.ensure(str(tmp_path / "uv-bad"), bad, hashlib.sha256(bad.encode()).hexdigest(), PYTHON, "uv")
    assert [p.name for p in (tmp_path / "uv-bad").iterdir() if not p.name.endswith(".lock")] == []


def _fake_entry(root: Path, key: str, size: int, used_ago: float, now: float) -> None:
    (root / key).mkdir(parents=True)
    record = {"format": envcache.FORMAT, "bytes": size, "files": {}, "links": {}, "built_at": now - used_ago}
    (root / key / envcache.RECORD).write_text(json.dumps(record))
    stamp = root / f".{key}.used"
    stamp.touch()
    os.utime(stamp, (now - used_ago, now - used_ago))


def test_prune_by_age_then_by_size_keeping_recent_and_current(tmp_path):
    root, now, day = tmp_path / "envs", time.time(), 86400.0
    _fake_entry(root, "old", 10, 40 * day, now)
    _fake_entry(root, "big-lru", 100, 5 * day, now)
    _fake_entry(root, "mid", 100, 3 * day, now)
    _fake_entry(root, "recent", 100, 60, now)
    _fake_entry(root, "current", 100, 10 * day, now)
    (root / ".build-stale-x").mkdir()
    os.utime(root / ".build-stale-x", (now - 7 * 3600, now - 7 * 3600))
    removed = envcache.prune(str(root), max_age_s=30 * day, max_bytes=250, keep={"current"}, now=now)
    # over 250 bytes: the least recently used go first; the one in use now and a recent one stay
    assert removed == ["old", "big-lru", "mid"]
    assert sorted(p.name for p in root.iterdir()) == [".current.used", ".recent.used", "current", "recent"]
    assert envcache.prune(str(root), max_age_s=0, max_bytes=0, now=now) == []


# -- settings ---------------------------------------------------------------------------------


def test_env_cache_settings_from_config_and_environment(tmp_path, monkeypatch):
    from deepops_infra.providers.onprem.envcache import EnvCacheSettings

    monkeypatch.delenv("DEEPOPS_ENV_CACHE", raising=False)
    home = tmp_path / "home"
    home.mkdir()
    local, remote = PoolHost(name="localhost", connection="local"), PoolHost(name="gpu1", connection="ssh")
    defaults = EnvCacheSettings.load(Settings(home=home))
    assert defaults.root(Settings(home=home), local) == str(home / "envs")
    assert defaults.root(Settings(home=home), remote) == "~/.deepops/envs"
    (home / "config.yaml").write_text(
        "env_cache:\n  dir: /srv/envs\n  max_age: 7d\n  max_size_gb: 20\n  installer: pip\n  verify: deep\n"
    )
    settings = Settings(home=home)
    loaded = EnvCacheSettings.load(settings)
    args = loaded.host_args(settings, remote)
    assert args == {
        "dir": "/srv/envs",
        "installer": "pip",
        "pip_cache": "",
        "max_age_seconds": 7 * 86400,
        "max_size_gb": 20.0,
        "verify": "deep",
    }
    monkeypatch.setenv("DEEPOPS_ENV_CACHE", str(tmp_path / "shared"))
    assert loaded.root(settings, local) == str(tmp_path / "shared")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("env_cache:\n  installer: conda\n", "config.yaml:2: env_cache.installer 'conda' is unknown"),
        ("env_cache:\n  max_age: soon\n", "config.yaml:2: "),
        ("env_cache:\n  max_size_gb: -1\n", "config.yaml:2: env_cache.max_size_gb must be a number >= 0"),
        ("env_cache:\n  dirr: /x\n", "config.yaml:2: unknown env_cache setting 'dirr'"),
    ],
)
def test_bad_env_cache_settings_name_the_line(tmp_path, text, message):
    from deepops_infra.providers.onprem.envcache import EnvCacheSettings

    (tmp_path / "config.yaml").write_text(text)
    with pytest.raises(FileError, match=message):
        EnvCacheSettings.load(Settings(home=tmp_path))


# -- the lease steps run directly --------------------------------------------------------------


def test_lease_configure_release_directly_on_localhost(tmp_path, lock):
    """The roles' host-side code through hostcall: the workspace with its marker and env.sh, the
    environment from the cache, then the release (processes ended, workspace wiped)."""
    from deepops_infra.providers.onprem import hostcall

    text, sha = lock
    settings, host = Settings(home=tmp_path / "home"), PoolHost(name="localhost", connection="local")
    args = {"machine_id": "m-direct1", "installation_id": "inst-1", "workspace_root": str(tmp_path / "ws")}
    lease = hostcall.call(settings, host, [], "lease", args)
    workspace = Path(lease["workspace"])
    assert lease["created"] and workspace == tmp_path / "ws" / "m-direct1"
    assert json.loads((workspace / ".deepops" / "lease.json").read_text())["installation_id"] == "inst-1"
    assert "export CUDA_VISIBLE_DEVICES=''" in (workspace / ".deepops" / "env.sh").read_text()
    cache = {"dir": str(tmp_path / "envs"), "installer": "auto", "max_age_seconds": 0, "max_size_gb": 0}
    done = hostcall.call(
        settings,
        host,
        [],
        "configure",
        {"workspace": str(workspace), "lock_text": text, "lock_sha256": sha, "python": PYTHON, "cache": cache},
    )
    assert done["manifest"]["packages"]["deepopsprobe"] == "1.0" and done["env"]["built"]
    sleeper = subprocess.Popen(["sleep", "300"], cwd=workspace)
    try:
        gone = hostcall.call(
            settings,
            host,
            [],
            "release",
            {"machine_id": "m-direct1", "installation_id": "inst-1", "workspace": str(workspace)},
        )
        assert gone["ours"] and sleeper.pid in gone["pids"] and not workspace.exists()
        assert sleeper.wait(timeout=30) != 0
    finally:
        sleeper.kill()
    assert (tmp_path / "envs").exists()  # the cache outlives the lease
    with pytest.raises(Exception, match="not this lease's"):
        (tmp_path / "ws" / "m-other").mkdir()
        hostcall.call(settings, host, [], "lease", {**args, "machine_id": "m-other"})
    shutil.rmtree(tmp_path / "ws")
