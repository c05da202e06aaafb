"""Where state lives and what IT has configured.

Everything local lives under `$DEEPOPS_HOME` (default `~/.deepops`): the SQLite ledger, the
configuration file, the on-prem pool file, the team policies managed through the API and the CLI
(`policy.yaml`, see policy_file.py), Ansible's scratch files and the localhost workspaces.
`DEEPOPS_LEDGER_URL` moves the ledger to PostgreSQL; `DEEPOPS_CONFIG` and `DEEPOPS_POOL` move
the two files.
"""

import os
import re
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

from deepops_infra.durations import parse_duration
from deepops_infra.yamlfile import FileError, Mapping, load_yaml

_LABEL_RE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,62}")
CLOUDS = ("onprem", "aws", "gcp", "azure")
# Top-level sections parsed by the modules that own them (Config.section): each cloud's settings
# (regions, endpoint overrides, credentials profile), the Pulumi engine, the reaper and agent,
# notifications, budgets, and the team server.
SECTIONS = ("aws", "gcp", "azure", "engine", "reaper", "agent", "notify", "budgets", "server", "workdir", "env_cache")
TARGETS = (*CLOUDS, "auto")


@dataclass(frozen=True)
class TeamPolicy:
    """What one team may request. Users cannot lift these from the command line."""

    targets: tuple[str, ...] = CLOUDS
    gpu_models: tuple[str, ...] = ("*",)
    max_gpus_running: int = 8
    max_ttl: timedelta = timedelta(days=7)
    default_ttl: timedelta = timedelta(hours=8)
    default_idle_timeout: timedelta = timedelta(hours=1)
    max_idle_timeout: timedelta = timedelta(days=1)


_POLICY_DURATIONS = ("max_ttl", "default_ttl", "default_idle_timeout", "max_idle_timeout")


@dataclass(frozen=True)
class Defaults:
    team: str = "default"
    project: str = "default"
    image: str = "cpu-minimal"
    cloud: str = "onprem"
    disk_gb: int = 100


@dataclass(frozen=True)
class Config:
    path: Path | None
    defaults: Defaults = field(default_factory=Defaults)
    default_policy: TeamPolicy = field(default_factory=TeamPolicy)
    team_policies: dict[str, TeamPolicy] = field(default_factory=dict)
    ledger_url: str | None = None
    pool_file: Path | None = None
    sections: dict[str, Any] = field(default_factory=dict)
    policy_file: Path | None = None
    # Where each of team_policies is defined: (file, line), config.yaml or policy.yaml.
    team_origins: dict[str, tuple[Path, int]] = field(default_factory=dict)

    def policy_for(self, team: str) -> TeamPolicy:
        return self.team_policies.get(team, self.default_policy)

    def section(self, name: str) -> Mapping:
        """A section owned by another module (see SECTIONS), as parsed YAML that knows its lines.

        The owning module validates it and raises FileError(config.path, section.line_of(key), ...).
        """
        assert name in SECTIONS, f"{name} is not a registered configuration section"
        value = self.sections.get(name)
        return value if isinstance(value, Mapping) else Mapping()


def _gpu_model(name: str, path: Path, line: int) -> str:
    from deepops_infra.accelerators import ACCELERATORS, canonical_model

    if name == "*":
        return name
    model = canonical_model(name)
    if model is None:
        raise FileError(path, line, f"unknown GPU model {name!r} in gpu_models; known: {', '.join(ACCELERATORS)}")
    return model


def _policy(raw: Any, base: TeamPolicy, path: Path, where: str, line: int = 0) -> TeamPolicy:
    if not isinstance(raw, Mapping):
        raise FileError(path, getattr(raw, "line", 0) or line, f"{where} must be a mapping of rules")
    values: dict[str, Any] = {}
    known = set(TeamPolicy.__dataclass_fields__)
    for key, value in raw.items():
        line = raw.line_of(key)
        if key not in known:
            raise FileError(path, line, f"unknown policy rule {key!r}; known: {', '.join(sorted(known))}")
        if key in _POLICY_DURATIONS:
            try:
                values[key] = parse_duration(str(value), key)
            except Exception as exc:
                raise FileError(path, line, str(exc)) from None
        elif key == "max_gpus_running":
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise FileError(path, line, "max_gpus_running must be a whole number >= 0")
            values[key] = value
        else:  # targets, gpu_models
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise FileError(path, line, f"{key} must be a list of names")
            if key == "targets" and (bad := [v for v in value if v not in CLOUDS]):
                raise FileError(path, line, f"unknown target {bad[0]!r}; known: {', '.join(CLOUDS)}")
            if key == "gpu_models":
                value = [_gpu_model(v, path, line) for v in value]
            values[key] = tuple(value)
    policy = TeamPolicy(**{**base.__dict__, **values})
    if policy.default_ttl > policy.max_ttl:
        policy = TeamPolicy(**{**policy.__dict__, "default_ttl": policy.max_ttl})
    if policy.default_idle_timeout > policy.max_idle_timeout:
        policy = TeamPolicy(**{**policy.__dict__, "default_idle_timeout": policy.max_idle_timeout})
    return policy


def _defaults(raw: Any, path: Path, line: int) -> Defaults:
    """`defaults:` is checked here, so a bad value blames the file, not an option nobody typed."""
    if not isinstance(raw, Mapping):
        raise FileError(path, line, "defaults must be a mapping (team, project, image, cloud, disk_gb)")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        at = raw.line_of(key)
        if key not in Defaults.__dataclass_fields__:
            raise FileError(path, at, f"unknown default {key!r}; known: {', '.join(Defaults.__dataclass_fields__)}")
        if key == "disk_gb":
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65536:
                raise FileError(path, at, "defaults.disk_gb must be a whole number of GB from 1 to 65536")
        elif not isinstance(value, str) or not value:
            raise FileError(path, at, f"defaults.{key} must be a name")
        elif key == "cloud" and value not in TARGETS:
            raise FileError(path, at, f"defaults.cloud {value!r} is unknown; known: {', '.join(TARGETS)}")
        elif key in ("team", "project") and not _LABEL_RE.fullmatch(value):
            raise FileError(path, at, f"defaults.{key} {value!r}: use lower-case letters, digits, '-', '_' and '.'")
        values[key] = value
    return Defaults(**values)


def _text(raw: Mapping, key: str, path: Path, example: str) -> str | None:
    """A setting that is a string when given (`ledger_url: 5` is an error, not a crash later)."""
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise FileError(path, raw.line_of(key), f"{key} must be a string: {example}")
    return value


def parse_config(raw: Any, path: Path) -> Config:
    if raw is None:
        return Config(path=path)
    if not isinstance(raw, Mapping):
        raise FileError(path, 1, "the configuration must be a mapping")
    known = {"defaults", "policy", "ledger_url", "pool_file", "policy_file", *SECTIONS}
    for key in raw:
        if key not in known:
            raise FileError(path, raw.line_of(key), f"unknown setting {key!r}; known: {', '.join(sorted(known))}")
    for name in SECTIONS:
        if raw.get(name) is not None and not isinstance(raw[name], Mapping):
            raise FileError(path, raw.line_of(name), f"{name} must be a mapping of settings, one per indented line")
    defaults = _defaults(raw["defaults"], path, raw.line_of("defaults")) if "defaults" in raw else Defaults()
    default_policy, teams, team_map = TeamPolicy(), {}, Mapping()
    if "policy" in raw:
        pol = raw["policy"]
        if not isinstance(pol, Mapping):
            raise FileError(path, raw.line_of("policy"), "policy must have `default:` and/or `teams:`")
        if "default" in pol:
            default_policy = _policy(pol["default"], default_policy, path, "policy.default", pol.line_of("default"))
        team_map = pol.get("teams") or Mapping()
        if not isinstance(team_map, Mapping):
            raise FileError(path, pol.line_of("teams"), "policy.teams must map team names to rules")
        teams = {
            str(name): _policy(rules, default_policy, path, f"policy.teams.{name}", team_map.line_of(name))
            for name, rules in team_map.items()
        }
    ledger_url = _text(raw, "ledger_url", path, "a database URL, e.g. postgresql://deepops@db/deepops")
    pool_file = _text(raw, "pool_file", path, "a path, e.g. ~/lab/pool.yaml")
    policy_file = _text(raw, "policy_file", path, "a path, e.g. /etc/deepops/policy.yaml")
    return Config(
        path=path,
        defaults=defaults,
        default_policy=default_policy,
        team_policies=teams,
        ledger_url=ledger_url,
        pool_file=Path(os.path.expanduser(pool_file)) if pool_file else None,
        sections={name: raw[name] for name in SECTIONS if name in raw},
        policy_file=Path(os.path.expanduser(policy_file)) if policy_file else None,
        team_origins={name: (path, team_map.line_of(name)) for name in teams},
    )


@dataclass
class Settings:
    """Resolved locations for this invocation (environment first, then the config file)."""

    home: Path
    _merged: tuple[Any, Config] | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def from_env(cls) -> "Settings":
        home = os.environ.get("DEEPOPS_HOME") or "~/.deepops"
        return cls(home=Path(os.path.expanduser(home)).absolute())

    @property
    def config_path(self) -> Path:
        return Path(os.environ.get("DEEPOPS_CONFIG") or self.home / "config.yaml")

    @cached_property
    def file_config(self) -> Config:
        """config.yaml alone (read once; IT edits it by hand and nothing rewrites it)."""
        path = self.config_path
        if not path.exists():
            return Config(path=None)
        return parse_config(load_yaml(path), path)

    @property
    def config(self) -> Config:
        """config.yaml with the teams of policy.yaml, which is read again whenever it changes (a
        running server follows `deepops policy set` and the policy API at once)."""
        from deepops_infra.policy_file import file_signature, merge_policy_file

        path = self.policy_path
        signature = file_signature(path)
        if self._merged is None or self._merged[0] != signature:
            self._merged = (signature, merge_policy_file(self.file_config, path))
        return self._merged[1]

    @property
    def policy_path(self) -> Path:
        return self.file_config.policy_file or self.home / "policy.yaml"

    @property
    def ledger_url(self) -> str:
        return os.environ.get("DEEPOPS_LEDGER_URL") or self.config.ledger_url or f"sqlite:///{self.home / 'ledger.db'}"

    @property
    def pool_path(self) -> Path:
        env = os.environ.get("DEEPOPS_POOL")
        return Path(env) if env else (self.config.pool_file or self.home / "pool.yaml")

    @property
    def workspaces(self) -> Path:
        return self.home / "workspaces"

    @property
    def ansible_dir(self) -> Path:
        return self.home / "ansible"

    def ensure_home(self) -> Path:
        """$DEEPOPS_HOME, 0700 whoever created it (see paths.private_dir)."""
        from deepops_infra.paths import private_dir

        return private_dir(self.home)
