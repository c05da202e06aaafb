"""What GPUs each pool host offers: declared in the pool, or detected and cached in the ledger."""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from deepops_infra.accelerators import device_matches, model_of
from deepops_infra.ansible import run_playbook
from deepops_infra.config import Settings
from deepops_infra.errors import OperationError
from deepops_infra.ledger.db import Ledger
from deepops_infra.ledger.schema import HostInventory
from deepops_infra.pool import PoolHost

CACHE_MAX_AGE = timedelta(hours=1)


@dataclass(frozen=True)
class HostGpu:
    index: int
    name: str
    model: str | None
    memory_mib: int | None

    def matches(self, model: str | None) -> bool:
        if model is None:
            return True
        return device_matches(model, self.name, self.memory_mib)


@dataclass(frozen=True)
class HostCapacity:
    host: PoolHost
    gpus: tuple[HostGpu, ...]
    detected_at: datetime | None  # None: declared in the pool
    facts: dict[str, Any]

    def to_cache(self) -> HostInventory:
        return HostInventory(
            host=self.host.name,
            detected_at=self.detected_at or datetime.now(UTC),
            gpus=[{"index": g.index, "name": g.name, "memory_mib": g.memory_mib} for g in self.gpus],
            facts=self.facts,
        )


def _offered(host: PoolHost, raw_gpus: list[dict[str, Any]]) -> tuple[HostGpu, ...]:
    gpus = [
        HostGpu(int(g["index"]), str(g["name"]), model_of(str(g["name"]), g.get("memory_mib")), g.get("memory_mib"))
        for g in raw_gpus
    ]
    if host.gpu_indexes is not None:
        gpus = [g for g in gpus if g.index in host.gpu_indexes]
    return tuple(sorted(gpus, key=lambda g: g.index))


def declared_capacity(host: PoolHost) -> HostCapacity:
    assert host.declared_gpus is not None
    return HostCapacity(
        host, tuple(HostGpu(g.index, g.model, g.model, g.memory_mib) for g in host.declared_gpus), None, {}
    )


def detect(settings: Settings, hosts: list[PoolHost]) -> dict[str, HostCapacity | str]:
    """Run the detection play on hosts; per host its capacity, or why it could not be read."""
    result = run_playbook(settings, "detect", hosts, {}, ident=f"detect-{datetime.now(UTC):%Y%m%d%H%M%S%f}")
    found = result.stats.get("deepops_inventory") or {}
    now = datetime.now(UTC)
    out: dict[str, HostCapacity | str] = {}
    for host in hosts:
        if host.name in found:
            data = found[host.name]
            out[host.name] = HostCapacity(
                host,
                _offered(host, data.get("gpus") or []),
                now,
                {
                    "driver_version": data.get("driver_version"),
                    "note": data.get("note"),
                    "raw_gpus": data.get("gpus") or [],
                    **(data.get("host") or {}),
                },
            )
        else:
            out[host.name] = result.failure or result.status
    return out


def capacity(settings: Settings, ledger: Ledger, host: PoolHost, refresh: bool = False) -> HostCapacity:
    """Declared GPUs, else a detection younger than CACHE_MAX_AGE, else detect now."""
    if host.declared_gpus is not None:
        return declared_capacity(host)
    if not refresh:
        with ledger.read() as session:
            cached = session.get(HostInventory, host.name)
            if cached and datetime.now(UTC) - cached.detected_at < CACHE_MAX_AGE:
                return HostCapacity(host, _offered(host, cached.gpus), cached.detected_at, cached.facts)
    detected = detect(settings, [host])[host.name]
    if isinstance(detected, str):
        raise OperationError(f"cannot detect the GPUs of {host.name}: {detected}")
    return detected
