"""Team policies managed through `deepops policy` and the team server: `policy.yaml`.

IT edits config.yaml by hand, with comments, and nothing rewrites it. Teams managed through the
CLI and the API live in their own file (`$DEEPOPS_HOME/policy.yaml`, or `policy_file:` in
config.yaml), with the same rules as `policy.teams.<team>` in config.yaml, checked by the same
parser, on top of config.yaml's `policy.default`:

    teams:
      vision: {gpu_models: [A100, H100], max_gpus_running: 16}

A team is defined in one place only: one in both files is an error that names both. The file is
rewritten whole (temp file, fsync, rename; mode 0644) under a lock, so the CLI and the server
never lose each other's changes.
"""

import contextlib
import fcntl
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepops_infra.config import Config, TeamPolicy, _policy
from deepops_infra.durations import format_duration
from deepops_infra.errors import NotFoundError, UserError
from deepops_infra.yamlfile import FileError, Mapping, load_yaml

if TYPE_CHECKING:
    from deepops_infra.config import Settings

RULES = tuple(TeamPolicy.__dataclass_fields__)
DURATIONS = ("max_ttl", "default_ttl", "default_idle_timeout", "max_idle_timeout")
HEADER = (
    "# deepops team policies, written by `deepops policy set` and PUT /api/v1/policy/teams/TEAM.\n"
    "# Same rules as policy.teams in config.yaml (where a team may not be defined as well).\n"
)


class DefinedInConfig(UserError):
    """The team's policy is in config.yaml, which only IT edits, by hand."""


@dataclass(frozen=True)
class PolicyFile:
    path: Path
    teams: dict[str, Mapping]  # each team's rules as written, with their lines
    lines: dict[str, int]


def file_signature(path: Path) -> tuple[int, int, int] | None:
    """What changes when the file is rewritten (a rename gives a new inode); None when absent."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def load_policy_file(path: Path) -> PolicyFile:
    """The file's shape and team names (the rules are checked against a base by `team_policies`)."""
    from deepops_infra.request import check_label

    raw = load_yaml(path) if path.exists() else None
    if raw is None:
        return PolicyFile(path, {}, {})
    if not isinstance(raw, Mapping):
        raise FileError(path, 1, "the policy file must be a mapping with `teams:`")
    for key in raw:
        if key != "teams":
            raise FileError(path, raw.line_of(key), f"unknown setting {key!r}; known: teams")
    teams = raw.get("teams") or Mapping()
    if not isinstance(teams, Mapping):
        raise FileError(path, raw.line_of("teams"), "teams must map team names to rules")
    for name in teams:
        try:
            check_label("team", str(name))
        except UserError as exc:
            raise FileError(path, teams.line_of(str(name)), str(exc)) from None
    return PolicyFile(path, {str(k): v for k, v in teams.items()}, {str(k): teams.line_of(str(k)) for k in teams})


def merge_policy_file(config: Config, path: Path) -> Config:
    """config.yaml's configuration with the teams of the policy file added."""
    found = load_policy_file(path)
    if not found.teams:
        return config
    teams: dict[str, TeamPolicy] = {}
    for name, rules in found.teams.items():
        line = found.lines[name]
        if name in config.team_policies:
            there, at = config.team_origins.get(name, (config.path, 0))
            raise FileError(
                path, line, f"team {name!r} is also defined in {there}:{at} (policy.teams.{name}); keep it in one file"
            )
        teams[name] = _policy(rules, config.default_policy, path, f"teams.{name}", line)
    return replace(
        config,
        team_policies=config.team_policies | teams,
        team_origins=config.team_origins | {name: (path, found.lines[name]) for name in teams},
    )


# -- reading for people -------------------------------------------------------------------------


def rules_json(policy: TeamPolicy) -> dict[str, Any]:
    """A policy in the shape of the files (durations as people write them)."""
    out: dict[str, Any] = {}
    for key in RULES:
        value = getattr(policy, key)
        out[key] = format_duration(value) if key in DURATIONS else list(value) if isinstance(value, tuple) else value
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def team_entry(config: Config, team: str, written: dict[str, Any] | None = None) -> dict[str, Any]:
    """One team's effective policy and where it is defined (`source`: config.yaml or policy.yaml)."""
    path, line = config.team_origins[team]
    from_config = config.path is not None and path == config.path
    return {
        "team": team,
        "source": "config.yaml" if from_config else "policy.yaml",
        "file": str(path),
        "line": line,
        "rules": None if from_config else _plain(written or {}),
        "policy": rules_json(config.team_policies[team]),
    }


def listing(settings: "Settings") -> dict[str, Any]:
    """Every team's effective policy and where it comes from (GET /policy/teams, `policy ls`)."""
    config = settings.config
    written = load_policy_file(settings.policy_path).teams
    return {
        "policy_file": str(settings.policy_path),
        "default": {
            "source": "config.yaml" if config.path is not None else "built-in",
            "file": str(config.path) if config.path is not None else None,
            "policy": rules_json(config.default_policy),
        },
        "teams": [team_entry(config, name, written.get(name)) for name in sorted(config.team_policies)],
    }


# -- writing -------------------------------------------------------------------------------------


def _refuse_config_team(config: Config, team: str) -> None:
    if team in config.team_policies:
        path, line = config.team_origins.get(team, (config.path, 0))
        raise DefinedInConfig(
            f"team {team!r} is defined in {path} line {line} (policy.teams.{team}); edit config.yaml there"
        )


def _as_file_data(value: Any) -> Any:
    """Values from the command line or a request body in the shapes the parser reads."""
    if isinstance(value, dict):
        return Mapping({k: _as_file_data(v) for k, v in value.items()})
    return value


def normalize_rules(rules: dict[str, Any], base: TeamPolicy, path: Path) -> dict[str, Any]:
    """Rules given on the command line or in a request, checked by the file's parser and written
    back in its canonical spelling (GPU model names, durations); errors are one line, no file."""
    try:
        policy = _policy(_as_file_data(rules), base, path, "the policy", 0)
    except FileError as exc:
        raise UserError(exc.message) from None
    from deepops_infra.durations import parse_duration

    out: dict[str, Any] = {}
    for key in RULES:  # in the order of the file's documentation
        if key not in rules:
            continue
        if key in DURATIONS:  # as given (the parsed policy caps the defaults at the maxima)
            out[key] = format_duration(parse_duration(str(rules[key]), key))
        else:
            value = getattr(policy, key)
            out[key] = list(value) if isinstance(value, tuple) else value
    return out


def _current(config: Config, path: Path) -> dict[str, dict[str, Any]]:
    """The teams of the file as it is, which must be valid (errors name its lines)."""
    merge_policy_file(config, path)
    return {name: _plain(rules) for name, rules in load_policy_file(path).teams.items()}


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One writer at a time across processes (the server and the CLI on its machine)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(f".{path.name}.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write(path: Path, teams: dict[str, Any], config: Config) -> None:
    """Write atomically; the new file is checked with the reader before it replaces the old one."""
    import yaml

    body = {"teams": {name: teams[name] for name in sorted(teams)}}
    text = HEADER + yaml.safe_dump(body, sort_keys=False, default_flow_style=None)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o644)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        merge_policy_file(config, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def set_team(settings: "Settings", team: str, rules: dict[str, Any], merge: bool = False) -> dict[str, Any]:
    """Write `team`'s rules (replacing its entry, or with `merge` updating the rules given) and
    return its listing entry. Refused, with nothing written, for a team of config.yaml."""
    from deepops_infra.request import check_label

    check_label("team", team)
    config, path = settings.file_config, settings.policy_path
    _refuse_config_team(config, team)
    clean = normalize_rules(rules, config.default_policy, path)
    with _locked(path):
        current = _current(config, path)
        if merge:
            clean = normalize_rules(current.get(team, {}) | clean, config.default_policy, path)
        current[team] = clean
        _write(path, current, config)
    return team_entry(settings.config, team, clean)


def remove_team(settings: "Settings", team: str) -> None:
    """Drop `team`'s entry: the team falls back to the default policy."""
    from deepops_infra.request import check_label

    check_label("team", team)
    config, path = settings.file_config, settings.policy_path
    _refuse_config_team(config, team)
    with _locked(path):
        current = _current(config, path)
        if team not in current:
            raise NotFoundError(f"team {team!r} has no policy in {path}")
        del current[team]
        _write(path, current, config)
