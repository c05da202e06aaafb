"""Settings of the on-prem environment cache (`env_cache:` in config.yaml) and where it lives.

The cache itself runs on each host: roles/playbooks/module_utils/deepops_envcache.py (an image's
environment built once per host, lock and interpreter; verified; read-only; layered into each
lease's venv). See docs/onprem-environments.md.
"""

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from deepops_infra.config import Settings
from deepops_infra.pool import PoolHost
from deepops_infra.yamlfile import FileError

SECTION = "env_cache"
# DEEPOPS_ENV_CACHE: the cache folder on every host (the test suite points all its tests at one).
ENV_VAR = "DEEPOPS_ENV_CACHE"
REMOTE_DEFAULT = "~/.deepops/envs"
INSTALLERS = ("auto", "pip", "uv")
VERIFY = ("quick", "deep")
SPEC: dict[str, Any] = {
    "dir": "",
    "max_age": timedelta(days=30),
    "max_size_gb": 50.0,
    "installer": "auto",
    "verify": "quick",
}


@dataclass(frozen=True)
class EnvCacheSettings:
    dir: str = ""  # empty: $DEEPOPS_HOME/envs on localhost, ~/.deepops/envs on SSH hosts
    max_age: timedelta = SPEC["max_age"]
    max_size_gb: float = SPEC["max_size_gb"]
    installer: str = "auto"  # auto (uv where the host has it, else pip), pip, uv, or a path to uv
    verify: str = "quick"  # quick: size and mtime of every file at each lease; deep: also sha256

    @classmethod
    def load(cls, settings: Settings) -> "EnvCacheSettings":
        from deepops_infra.agent.settings import parse_section

        values = parse_section(settings, SECTION, SPEC)
        section = settings.config.section(SECTION)
        path = settings.config.path or settings.config_path
        for key, allowed in (("installer", INSTALLERS), ("verify", VERIFY), ("dir", None)):
            value = values[key]
            if not isinstance(value, str):
                raise FileError(path, section.line_of(key), f"{SECTION}.{key} must be a string")
            if allowed and value not in allowed and not (key == "installer" and value.startswith("/")):
                raise FileError(
                    path, section.line_of(key), f"{SECTION}.{key} {value!r} is unknown; known: {', '.join(allowed)}"
                )
        values["max_size_gb"] = float(values["max_size_gb"])
        return cls(**values)

    def root(self, settings: Settings, host: PoolHost) -> str:
        """The cache folder on the host (~ is the host user's home)."""
        chosen = os.environ.get(ENV_VAR) or self.dir
        if chosen:
            return chosen
        return str(settings.home / "envs") if host.connection == "local" else REMOTE_DEFAULT

    def host_args(self, settings: Settings, host: PoolHost, pip_cache: str = "") -> dict[str, Any]:
        """What deepops_onprem_host.pinned_env takes as `cache`."""
        return {
            "dir": self.root(settings, host),
            "installer": self.installer,
            "pip_cache": pip_cache,
            "max_age_seconds": int(self.max_age.total_seconds()),
            "max_size_gb": self.max_size_gb,
            "verify": self.verify,
        }

    def role_vars(self, settings: Settings, host: PoolHost) -> dict[str, Any]:
        """The pinned_env role's cache variables (the configure play: cloud machines, where
        neither DEEPOPS_ENV_CACHE nor $DEEPOPS_HOME mean anything)."""
        args = self.host_args(settings, host)
        return {
            "pinned_env_cache_dir": self.dir or REMOTE_DEFAULT,
            "pinned_env_installer": args["installer"],
            "pinned_env_cache_max_age_seconds": args["max_age_seconds"],
            "pinned_env_cache_max_size_gb": args["max_size_gb"],
            "pinned_env_verify": args["verify"],
        }


def configure_request(
    settings: Settings,
    image: Any,
    workspace: str,
    python: str,
    cache_host: PoolHost,
    agent: dict[str, Any] | None,
    start_agent: bool = True,
) -> dict[str, Any]:
    """The host-side `configure` call's arguments (deepops_onprem_host: the image's environment
    from the host's cache, then the agent), the same for a pool host and a cluster's login node.
    `agent`: the agent role's variables (AgentSettings.role_vars), or None for no agent;
    `start_agent` False when something else starts it (a Slurm job's batch script)."""
    from pathlib import Path

    from deepops_infra.errors import OperationError
    from deepops_infra.images import verify_onprem_lock

    assert image.onprem is not None
    if problem := verify_onprem_lock(image):
        raise OperationError(f"configuring {image.name}: {problem}")
    cache = EnvCacheSettings.load(settings)
    agent_args = None
    if agent:
        agent_args = {
            "config": agent["agent_config"],
            "python": agent["agent_python"],
            "source": Path(agent["agent_source"]).read_text(),
        }
        if not start_agent:
            agent_args["start"] = False
    return {
        "workspace": workspace,
        "lock_text": image.onprem.lock_path.read_bytes().decode(),
        "lock_sha256": image.onprem.sha256,
        "python": python,
        "cache": cache.host_args(settings, cache_host, str(Path(workspace).parent / ".pip-cache")),
        "agent": agent_args,
    }


def configured_manifest(done: dict[str, Any], image: Any) -> dict[str, Any]:
    """The machine's manifest from the host-side `configure` answer."""
    manifest = dict(done["manifest"])
    manifest["environment"] = {k: done["env"].get(k) for k in ("key", "built", "repaired", "build_seconds")}
    manifest["image_pin"] = image.onprem.pin
    return manifest
