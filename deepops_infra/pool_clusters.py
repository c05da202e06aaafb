"""Scheduler clusters in the on-prem pool (`clusters:` in pool.yaml): where a lease is a job.

A cluster entry names how to reach the scheduler's command-line side (`connection: local`, or
`ssh` to a login node, with the same keys as a host), the partitions deepops may use, the Slurm
account and QOS per team (`default` for every other team), hourly rates (per GPU and per node:
never zero) and how the scheduler's GPU types map onto deepops model names. `kind` says which
scheduler: `slurm` today; the entry shape leaves room for others (a Kubernetes cluster would
name namespaces where Slurm names partitions).
"""

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepops_infra.accelerators import ACCELERATORS, canonical_model
from deepops_infra.yamlfile import FileError, Mapping, Sequence

NAME_RE = re.compile(r"[a-z0-9][a-z0-9.-]{0,62}")
SLURM_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # partitions, accounts, QOS, gres types
KINDS = ("slurm",)
DEFAULT_TEAM = "default"
_KEYS = {
    "name",
    "kind",
    "connection",
    "address",
    "user",
    "port",
    "key",
    "slurm_conf",
    "partitions",
    "accounts",
    "rates",
    "gres_models",
    "workspace_root",
    "python",
    "labels",
    "wait",
}
DEFAULT_WAIT_SECONDS = 120.0  # how long a lease may wait for Slurm to start it before it is refused


@dataclass(frozen=True)
class TeamAccount:
    account: str | None = None
    qos: str | None = None


@dataclass(frozen=True)
class PoolCluster:
    name: str
    kind: str
    connection: str  # "local" or "ssh" (to a login node)
    partitions: tuple[str, ...]
    gpu_hour: float
    node_hour: float
    address: str = "127.0.0.1"
    user: str | None = None
    port: int = 22
    key: str | None = None
    slurm_conf: str | None = None
    accounts: dict[str, TeamAccount] = field(default_factory=dict)
    gres_models: dict[str, str] = field(default_factory=dict)  # gres type -> deepops model name
    workspace_root: str | None = None  # on storage the login node and the compute nodes share
    python: str = "python3"
    labels: dict[str, str] = field(default_factory=dict)
    wait_seconds: float = DEFAULT_WAIT_SECONDS  # a job Slurm has not started by then is cancelled

    def account_for(self, team: str) -> TeamAccount:
        return self.accounts.get(team) or self.accounts.get(DEFAULT_TEAM) or TeamAccount()

    def model_of(self, gres_type: str | None) -> str | None:
        """The deepops model name of a gres type (mapped, else recognised by name), or None."""
        if not gres_type:
            return None
        return self.gres_models.get(gres_type) or canonical_model(gres_type)

    def gres_types_of(self, model: str) -> list[str]:
        """The gres types mapped (or named) as `model`."""
        return [t for t, m in self.gres_models.items() if m == model]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "kind": self.kind, "connection": self.connection}
        if self.connection == "ssh":
            out |= {"address": self.address, "port": self.port}
            out |= {k: v for k, v in (("user", self.user), ("key", self.key)) if v}
        if self.slurm_conf:
            out["slurm_conf"] = self.slurm_conf
        out["partitions"] = list(self.partitions)
        if self.accounts:
            out["accounts"] = {
                team: {k: v for k, v in (("account", a.account), ("qos", a.qos)) if v}
                for team, a in self.accounts.items()
            }
        out["rates"] = {"gpu_hour": self.gpu_hour, "node_hour": self.node_hour}
        if self.gres_models:
            out["gres_models"] = dict(self.gres_models)
        for key in ("workspace_root", "labels"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        if self.python != "python3":
            out["python"] = self.python
        if self.wait_seconds != DEFAULT_WAIT_SECONDS:
            out["wait"] = f"{int(self.wait_seconds)}s"
        return out


def _string(raw: Mapping, key: str, path: Path, name: str) -> str | None:
    value = raw.get(key)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise FileError(path, raw.line_of(key), f"cluster {name!r}: {key} must be a non-empty string")
    return value


def _slurm_names(raw: Mapping, key: str, path: Path, name: str) -> tuple[str, ...]:
    value = raw.get(key)
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, str) and SLURM_NAME_RE.fullmatch(v) for v in value)
    ):
        raise FileError(
            path,
            raw.line_of(key) if key in raw else raw.line,
            f"cluster {name!r}: `{key}: [NAME, ...]` is required (the Slurm partitions deepops may use)",
        )
    return tuple(dict.fromkeys(value))


def _accounts(raw: Mapping, path: Path, name: str) -> dict[str, TeamAccount]:
    accounts = raw.get("accounts") or {}
    if not isinstance(accounts, dict):
        raise FileError(path, raw.line_of("accounts"), f"cluster {name!r}: accounts must map teams to {{account, qos}}")
    out = {}
    for team, entry in accounts.items():
        line = accounts.line_of(team) if isinstance(accounts, Mapping) else raw.line_of("accounts")
        if not isinstance(entry, dict) or not entry or set(entry) - {"account", "qos"}:
            raise FileError(path, line, f"cluster {name!r}: accounts.{team} must be {{account: NAME, qos: NAME}}")
        for key, value in entry.items():
            if not isinstance(value, str) or not SLURM_NAME_RE.fullmatch(value):
                raise FileError(path, line, f"cluster {name!r}: accounts.{team}.{key} must be a Slurm name")
        out[str(team)] = TeamAccount(entry.get("account"), entry.get("qos"))
    return out


def _rates(raw: Mapping, path: Path, name: str) -> tuple[float, float]:
    rates = raw.get("rates")
    if not isinstance(rates, dict):
        raise FileError(
            path,
            raw.line_of("rates") if "rates" in raw else raw.line,
            f"cluster {name!r}: `rates: {{gpu_hour: N, node_hour: N}}` is required (USD per hour; "
            "on-prem time is never priced at zero)",
        )
    values = []
    for key in ("gpu_hour", "node_hour"):
        value = rates.get(key)
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
            line = rates.line_of(key) if isinstance(rates, Mapping) else raw.line_of("rates")
            raise FileError(
                path,
                line,
                f"cluster {name!r}: rates.{key} must be a finite positive number of USD per hour "
                "(on-prem time is never priced at zero)",
            )
        values.append(float(value))
    return values[0], values[1]


def _gres_models(raw: Mapping, path: Path, name: str) -> dict[str, str]:
    mapping = raw.get("gres_models") or {}
    if not isinstance(mapping, dict):
        raise FileError(path, raw.line_of("gres_models"), f"cluster {name!r}: gres_models maps gres types to models")
    out = {}
    for gres, model in mapping.items():
        line = mapping.line_of(gres) if isinstance(mapping, Mapping) else raw.line_of("gres_models")
        known = canonical_model(str(model)) if isinstance(model, str) else None
        if not isinstance(gres, str) or not SLURM_NAME_RE.fullmatch(gres) or known is None:
            raise FileError(
                path,
                line,
                f"cluster {name!r}: gres_models.{gres}: unknown GPU model {model!r}; "
                f"known models: {', '.join(ACCELERATORS)}",
            )
        out[gres] = known
    return out


def parse_cluster(raw: Any, path: Path, line: int) -> PoolCluster:
    """One `clusters:` entry, validated; a FileError naming the line otherwise."""
    if not isinstance(raw, Mapping):
        raise FileError(path, line, "each cluster must be a mapping with at least `name`, `kind` and `partitions`")
    at = raw.line_of
    for key in raw:
        if key not in _KEYS:
            raise FileError(path, at(key), f"unknown cluster setting {key!r}; known: {', '.join(sorted(_KEYS))}")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise FileError(path, at("name"), "cluster `name` is required: lower-case letters, digits, '.' and '-'")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise FileError(path, at("kind"), f"cluster {name!r}: kind must be one of {', '.join(KINDS)}, not {kind!r}")
    connection = raw.get("connection", "local")
    if connection not in ("local", "ssh"):
        raise FileError(path, at("connection"), f"connection must be `local` or `ssh`, not {connection!r}")
    address = raw.get("address", "127.0.0.1" if connection == "local" else None)
    if not isinstance(address, str) or not address:
        raise FileError(path, raw.line, f"cluster {name!r}: an ssh cluster needs `address` (its login node)")
    port = raw.get("port", 22)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise FileError(path, at("port"), f"port must be a number from 1 to 65535, not {port!r}")
    strings = {k: _string(raw, k, path, name) for k in ("user", "key", "slurm_conf", "workspace_root", "python")}
    for key in ("slurm_conf", "workspace_root"):
        value = strings[key]
        if value is not None and not value.startswith(("/", "~")):
            raise FileError(path, at(key), f"cluster {name!r}: {key} must be an absolute path (or start with ~)")
    labels = raw.get("labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str | int | float) for v in labels.values()):
        raise FileError(path, at("labels"), "labels must be a mapping of names to plain values")
    gpu_hour, node_hour = _rates(raw, path, name)
    wait = DEFAULT_WAIT_SECONDS
    if "wait" in raw:
        from deepops_infra.durations import parse_duration
        from deepops_infra.errors import UserError

        try:
            wait = parse_duration(str(raw["wait"]), "wait").total_seconds()
        except UserError as exc:
            raise FileError(path, at("wait"), f"cluster {name!r}: {exc}") from None
    return PoolCluster(
        name=name,
        kind=kind,
        connection=connection,
        partitions=_slurm_names(raw, "partitions", path, name),
        gpu_hour=gpu_hour,
        node_hour=node_hour,
        address=address,
        user=strings["user"],
        port=port,
        key=strings["key"],
        slurm_conf=strings["slurm_conf"],
        accounts=_accounts(raw, path, name),
        gres_models=_gres_models(raw, path, name),
        workspace_root=strings["workspace_root"],
        python=strings["python"] or "python3",
        labels={str(k): str(v) for k, v in labels.items()},
        wait_seconds=wait,
    )


def parse_clusters(entries: Any, path: Path, line: int, host_names: set[str]) -> list[PoolCluster]:
    """The `clusters:` list; a name may not repeat, nor be a host's (`--host` picks either)."""
    if entries is None:
        return []
    if not isinstance(entries, Sequence):
        raise FileError(path, line, "`clusters` must be a list of cluster entries")
    clusters: list[PoolCluster] = []
    for entry, item_line in zip(entries, entries.item_lines, strict=True):
        cluster = parse_cluster(entry, path, item_line)
        if any(c.name == cluster.name for c in clusters) or cluster.name in host_names:
            raise FileError(path, item_line, f"cluster {cluster.name!r}: the name is already used in the pool")
        clusters.append(cluster)
    return clusters


def cluster_targets(pool_path: Path) -> set[str]:
    """The providers the pool's clusters need (their kinds), for the reaper's discovery; none when
    the pool file cannot be read (the on-prem target reports that)."""
    from deepops_infra.errors import UserError
    from deepops_infra.pool import load_pool

    try:
        return {c.kind for c in load_pool(pool_path).clusters}
    except UserError:
        return set()
