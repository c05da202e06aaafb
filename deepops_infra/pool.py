"""The on-prem pool: hosts that leases are carved from, read from a YAML file IT edits.

`localhost` is in the pool unless the file says `include_localhost: false`. A host either has
its GPUs detected (optionally restricted with `gpu_indexes`) or declares them under `gpus:`
where detection is not possible. Hourly rates are required: on-prem time is never free.
"""

import contextlib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from deepops_infra.accelerators import ACCELERATORS, canonical_model
from deepops_infra.errors import ConflictError, NotFoundError, UserError
from deepops_infra.yamlfile import FileError, Mapping, Sequence, load_yaml

if TYPE_CHECKING:
    from deepops_infra.pool_clusters import PoolCluster

NAME_RE = re.compile(r"[a-z0-9][a-z0-9.-]{0,62}")
DEFAULT_LOCAL_RATES = {"gpu_hour": 1.0, "host_hour": 0.05}


@dataclass(frozen=True)
class DeclaredGpu:
    index: int
    model: str
    memory_mib: int | None = None


@dataclass(frozen=True)
class PoolHost:
    name: str
    connection: str  # "local" or "ssh"
    address: str = "127.0.0.1"
    user: str | None = None
    port: int = 22
    key: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    gpu_hour: float = DEFAULT_LOCAL_RATES["gpu_hour"]
    host_hour: float = DEFAULT_LOCAL_RATES["host_hour"]
    gpu_indexes: tuple[int, ...] | None = None  # restricts detected GPUs
    declared_gpus: tuple[DeclaredGpu, ...] | None = None  # replaces detection
    workspace_root: str | None = None
    python: str = "python3"

    @property
    def detects_gpus(self) -> bool:
        return self.declared_gpus is None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "connection": self.connection}
        if self.connection == "ssh":
            out |= {"address": self.address, "port": self.port}
            if self.user:
                out["user"] = self.user
            if self.key:
                out["key"] = self.key
        if self.labels:
            out["labels"] = dict(self.labels)
        out["rates"] = {"gpu_hour": self.gpu_hour, "host_hour": self.host_hour}
        if self.gpu_indexes is not None:
            out["gpu_indexes"] = list(self.gpu_indexes)
        if self.declared_gpus is not None:
            out["gpus"] = [
                {"index": g.index, "model": g.model} | ({"memory_mib": g.memory_mib} if g.memory_mib else {})
                for g in self.declared_gpus
            ]
        if self.workspace_root:
            out["workspace_root"] = self.workspace_root
        if self.python != "python3":
            out["python"] = self.python
        return out


LOCALHOST = PoolHost(name="localhost", connection="local")
_HOST_KEYS = {
    "name",
    "connection",
    "address",
    "user",
    "port",
    "key",
    "labels",
    "rates",
    "gpu_indexes",
    "gpus",
    "workspace_root",
    "python",
}


def _host(raw: Any, path: Path, line: int) -> PoolHost:
    if not isinstance(raw, Mapping):
        raise FileError(path, line, "each host must be a mapping with at least `name` and `connection`")
    at = raw.line_of
    for key in raw:
        if key not in _HOST_KEYS:
            raise FileError(path, at(key), f"unknown host setting {key!r}; known: {', '.join(sorted(_HOST_KEYS))}")
    name = raw.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise FileError(path, at("name"), "host `name` is required: lower-case letters, digits, '.' and '-'")
    connection = raw.get("connection", "local" if name == "localhost" else "ssh")
    if connection not in ("local", "ssh"):
        raise FileError(path, at("connection"), f"connection must be `local` or `ssh`, not {connection!r}")
    address = raw.get("address", "127.0.0.1" if connection == "local" else None)
    if not isinstance(address, str) or not address:
        raise FileError(path, raw.line, f"host {name!r}: an ssh host needs `address`")
    port = raw.get("port", 22)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise FileError(path, at("port"), f"port must be a number from 1 to 65535, not {port!r}")
    labels = raw.get("labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str | int | float) for v in labels.values()):
        raise FileError(path, at("labels"), "labels must be a mapping of names to plain values")
    for key in ("user", "key", "python"):
        if key in raw and (not isinstance(raw[key], str) or not raw[key].strip()):
            raise FileError(path, at(key), f"host {name!r}: {key} must be a string")
    parsed_rates = _rates(raw, name, path)
    gpu_indexes = raw.get("gpu_indexes")
    if gpu_indexes is not None:
        if not isinstance(gpu_indexes, list) or not all(isinstance(i, int) and i >= 0 for i in gpu_indexes):
            raise FileError(path, at("gpu_indexes"), "gpu_indexes must be a list of GPU index numbers, e.g. [0, 1]")
        gpu_indexes = tuple(sorted(set(gpu_indexes)))
    declared = _declared_gpus(raw, gpu_indexes, path)
    workspace_root = raw.get("workspace_root")
    if workspace_root is not None and (
        not isinstance(workspace_root, str) or not (workspace_root.startswith("/") or workspace_root.startswith("~"))
    ):
        raise FileError(path, at("workspace_root"), "workspace_root must be an absolute path (or start with ~)")
    return PoolHost(
        name=name,
        connection=connection,
        address=address,
        user=raw.get("user"),
        port=port,
        key=raw.get("key"),
        labels={str(k): str(v) for k, v in labels.items()},
        gpu_hour=parsed_rates["gpu_hour"],
        host_hour=parsed_rates["host_hour"],
        gpu_indexes=gpu_indexes,
        declared_gpus=declared,
        workspace_root=workspace_root,
        python=str(raw.get("python", "python3")),
    )


def _rates(raw: Any, name: str, path: Path) -> dict[str, float]:
    """The host's `rates:` (localhost has defaults): finite positive USD per hour each."""
    at = raw.line_of
    rates = raw.get("rates")
    if rates is None and name == "localhost":
        rates = DEFAULT_LOCAL_RATES
    if not isinstance(rates, dict):
        raise FileError(
            path,
            at("rates") if "rates" in raw else raw.line,
            f"host {name!r}: `rates: {{gpu_hour: N, host_hour: N}}` is required (USD per hour; "
            "on-prem time is never priced at zero)",
        )
    parsed_rates = {}
    for key in ("gpu_hour", "host_hour"):
        value = rates.get(key)
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
            raise FileError(
                path,
                rates.line_of(key) if isinstance(rates, Mapping) else at("rates"),
                f"rates.{key} must be a finite positive number of USD per hour (on-prem time is never priced at zero)",
            )
        parsed_rates[key] = float(value)
    return parsed_rates


def _declared_gpus(raw: Any, gpu_indexes: tuple[int, ...] | None, path: Path) -> tuple[DeclaredGpu, ...] | None:
    """The host's declared `gpus:` (None: detect them), limited to `gpu_indexes` when given."""
    at = raw.line_of
    declared = None
    if "gpus" in raw:
        gpus = raw["gpus"]
        if not isinstance(gpus, Sequence):
            raise FileError(path, at("gpus"), "gpus must be a list of {index: N, model: NAME}")
        declared = []
        for item, item_line in zip(gpus, gpus.item_lines, strict=True):
            index = item.get("index") if isinstance(item, dict) else None
            if not isinstance(index, int) or isinstance(index, bool) or index < 0:
                raise FileError(path, item_line, "each declared GPU needs `index` (a number >= 0) and `model`")
            memory = item.get("memory_mib")
            if memory is not None and (not isinstance(memory, int) or isinstance(memory, bool) or memory <= 0):
                raise FileError(path, item_line, "memory_mib of a declared GPU must be a whole number of MiB")
            model = canonical_model(str(item.get("model", "")))
            if model is None:
                raise FileError(
                    path,
                    item_line,
                    f"unknown GPU model {item.get('model')!r}; known models: {', '.join(ACCELERATORS)}",
                )
            declared.append(DeclaredGpu(index, model, memory))
        if len({g.index for g in declared}) != len(declared):
            raise FileError(path, at("gpus"), "a GPU index is declared twice")
        if gpu_indexes is not None:
            declared = [g for g in declared if g.index in gpu_indexes]
        declared = tuple(declared)
    return declared


@dataclass
class Pool:
    path: Path
    hosts: list[PoolHost]
    include_localhost: bool = True
    clusters: "list[PoolCluster]" = field(default_factory=list)  # scheduler clusters (pool_clusters.py)

    def cluster(self, name: str) -> "PoolCluster | None":
        return next((c for c in self.clusters if c.name == name), None)

    def get(self, name: str) -> PoolHost:
        for host in self.hosts:
            if host.name == name:
                return host
        known = ", ".join(h.name for h in self.hosts) or "none"
        raise NotFoundError(f"unknown host {name!r}; hosts in the pool: {known} (see `deepops pool ls`)")

    def save(self) -> None:
        """Rewrite the pool file atomically (comments are not kept)."""
        body: dict[str, Any] = {}
        if not self.include_localhost:
            body["include_localhost"] = False
        explicit = [h for h in self.hosts if not (h == LOCALHOST and self.include_localhost)]
        body["hosts"] = [h.to_dict() for h in explicit]
        if self.clusters:
            body["clusters"] = [c.to_dict() for c in self.clusters]
        text = "# deepops on-prem pool; see docs/pools.md\n" + yaml.safe_dump(body, sort_keys=False)
        tmp = self.path.with_suffix(".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(text)
            os.replace(tmp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise ConflictError(
                f"the pool file {self.path} cannot be written here ({exc.strerror or exc}); it is managed "
                "elsewhere (e.g. a read-only Kubernetes ConfigMap): change it there"
            ) from None


def load_pool(path: Path) -> Pool:
    """Read the pool file (missing file: just localhost). Errors name the line."""
    if not path.exists():
        return Pool(path=path, hosts=[LOCALHOST])
    raw = load_yaml(path)
    if raw is None:
        return Pool(path=path, hosts=[LOCALHOST])
    if not isinstance(raw, Mapping):
        raise FileError(path, 1, "the pool file must be a mapping with a `hosts:` list")
    for key in raw:
        if key not in ("hosts", "include_localhost", "clusters"):
            known = "hosts, clusters, include_localhost"
            raise FileError(path, raw.line_of(key), f"unknown pool setting {key!r}; known: {known}")
    include_localhost = raw.get("include_localhost", True)
    if not isinstance(include_localhost, bool):
        raise FileError(path, raw.line_of("include_localhost"), "include_localhost must be true or false")
    entries = raw.get("hosts") or Sequence()
    if not isinstance(entries, Sequence):
        raise FileError(path, raw.line_of("hosts"), "`hosts` must be a list of host entries")
    hosts: list[PoolHost] = []
    for entry, line in zip(entries, entries.item_lines, strict=True):
        host = _host(entry, path, line)
        if any(h.name == host.name for h in hosts):
            raise FileError(path, line, f"host {host.name!r} is listed twice")
        hosts.append(host)
    if include_localhost and not any(h.name == "localhost" for h in hosts):
        hosts.insert(0, LOCALHOST)
    clusters = []
    if "clusters" in raw:
        from deepops_infra.pool_clusters import parse_clusters

        clusters = parse_clusters(raw["clusters"], path, raw.line_of("clusters"), {h.name for h in hosts})
    return Pool(path=path, hosts=hosts, include_localhost=include_localhost, clusters=clusters)


def _as_file_data(value: Any) -> Any:
    """Command-line values in the shapes the file parser sees (mappings and lists with lines)."""
    if isinstance(value, dict):
        return Mapping({k: _as_file_data(v) for k, v in value.items()})
    if isinstance(value, list):
        return Sequence(_as_file_data(v) for v in value)
    return value


def parse_host_entry(entry: dict[str, Any], path: Path) -> PoolHost:
    """Validate one host given on the command line (`pool add`) with the file's rules."""
    try:
        return _host(_as_file_data(entry), path, 0)
    except FileError as exc:
        raise UserError(exc.message) from None
