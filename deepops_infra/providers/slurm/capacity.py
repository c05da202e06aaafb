"""GPUs per model on a Slurm cluster's nodes, from `sinfo --json` (what `pool ls` shows and what
planning checks a request against: whether any node could ever hold it, and how many are free)."""

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from deepops_infra.pool_clusters import PoolCluster

_GRES = re.compile(r"gpu(?::([A-Za-z0-9_.-]+))?:(\d+)")
UNUSABLE = ("down", "drain", "fail", "maint", "reboot", "unknown", "future", "not_responding", "power")


@dataclass(frozen=True)
class NodeGpus:
    name: str
    partitions: tuple[str, ...]
    usable: bool
    total: dict[str, int]  # gres type ("" when untyped) -> GPUs
    used: dict[str, int]

    def free(self, gres_type: str) -> int:
        return max(0, self.total.get(gres_type, 0) - self.used.get(gres_type, 0)) if self.usable else 0


def _counts(text: str) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for part in re.split(r",(?![^()]*\))", text or ""):
        match = _GRES.match(part.strip())
        if match:
            counts[match.group(1) or ""] += int(match.group(2))
    return dict(counts)


def _state_text(node: dict[str, Any]) -> str:
    state = node.get("state")
    flags = node.get("state_flags") or []
    if isinstance(state, list):
        return " ".join(str(s) for s in state + flags).lower()
    return " ".join([str(state or ""), *map(str, flags)]).lower()


def node_gpus(raw: dict[str, Any]) -> NodeGpus:
    state = _state_text(raw)
    return NodeGpus(
        name=str(raw.get("name") or raw.get("hostname")),
        partitions=tuple(raw.get("partitions") or ()),
        usable=not any(word in state for word in UNUSABLE),
        total=_counts(str(raw.get("gres") or "")),
        used=_counts(str(raw.get("gres_used") or "")),
    )


@dataclass
class Offer:
    """What one partition offers for one model: the most GPUs any node has, and free ones."""

    partition: str
    model: str | None
    gres_type: str | None
    largest_node: int = 0
    largest_free: int = 0  # on one node: what a single-node lease can get now
    free: int = 0
    total: int = 0
    nodes: list[str] = field(default_factory=list)


def offers(cluster: PoolCluster, nodes: list[NodeGpus]) -> list[Offer]:
    """(partition, gres type) offers of the cluster's own partitions, with model names."""
    found: dict[tuple[str, str], Offer] = {}
    for node in nodes:
        for partition in node.partitions:
            if partition not in cluster.partitions:
                continue
            for kind, total in node.total.items():
                key = (partition, kind)
                offer = found.setdefault(key, Offer(partition, cluster.model_of(kind), kind or None))
                offer.total += total
                offer.free += node.free(kind)
                offer.largest_node = max(offer.largest_node, total if node.usable else 0)
                offer.largest_free = max(offer.largest_free, node.free(kind))
                offer.nodes.append(node.name)
    return sorted(found.values(), key=lambda o: (cluster.partitions.index(o.partition), o.gres_type or ""))


def free_by_model(cluster: PoolCluster, nodes: list[NodeGpus]) -> dict[str, tuple[int, int]]:
    """model (or gres type when unmapped) -> (free, total) over the cluster's partitions' nodes."""
    seen: set[str] = set()
    out: dict[str, tuple[int, int]] = {}
    for node in nodes:
        if node.name in seen or not set(node.partitions) & set(cluster.partitions):
            continue
        seen.add(node.name)
        for kind, total in node.total.items():
            model = cluster.model_of(kind) or kind or "gpu"
            free, all_ = out.get(model, (0, 0))
            out[model] = (free + node.free(kind), all_ + total)
    return out


def cluster_rows(clusters: list[PoolCluster], known_hosts: Any = None) -> list[dict[str, Any]]:
    """`pool ls` rows of the pool's clusters: their entry, and GPUs free per model right now
    (`error` when the cluster does not answer)."""
    from deepops_infra.providers.slurm.commands import Slurm, SlurmError

    rows = []
    for cluster in clusters:
        row = cluster.to_dict() | {"gpus_free": {}, "error": None}
        try:
            nodes = [node_gpus(n) for n in Slurm(cluster, known_hosts).nodes()]
        except SlurmError as exc:
            row["error"] = str(exc)
        else:
            found = free_by_model(cluster, nodes)
            row["gpus_free"] = {model: {"free": free, "total": total} for model, (free, total) in sorted(found.items())}
        rows.append(row)
    return rows
