"""`reaper:` in config.yaml.

```yaml
reaper:
  interval: 1m            # between cycles of `deepops reap --daemon`
  grace: 10m              # a warning is sent this long before the machine is ended
  idle_grace_fraction: 0.25  # an idle machine is warned at its idle timeout minus the grace, the grace
                          #   at most this fraction of the idle timeout (10m timeout: warned at 7.5m)
  setup_timeout: 1h       # a launch (or a release) with no progress for this long is over
  max_actions: 20         # destructive actions per cycle, at most ...
  max_fraction: 0.5       # ... and at most this fraction of the machines, once there are
  fraction_min_fleet: 10  #     this many (a small fleet is not capped by the fraction)
  max_sample_gap: 5m      # utilization samples further apart than this leave a gap: activity unknown
  metrics_port: 9464      # Prometheus metrics of the daemon (0: off)
  metrics_address: 127.0.0.1
  clouds: []              # targets to discover besides on-prem, those with live machines and configured ones
  orphan_grace: 1h        # an orphan with no ledger row is reported and notified, and removed once
                          #   seen again at least this long after (on-prem: moved to quarantine)
  quarantine_retention: 7d  # quarantined on-prem workspaces are deleted this long after
```
"""

import math
from dataclasses import dataclass, field
from datetime import timedelta

from deepops_infra.agent.settings import parse_section
from deepops_infra.config import CLOUDS, Settings
from deepops_infra.yamlfile import FileError


@dataclass(frozen=True)
class ReaperSettings:
    interval: timedelta = timedelta(minutes=1)
    grace: timedelta = timedelta(minutes=10)
    idle_grace_fraction: float = 0.25
    setup_timeout: timedelta = timedelta(hours=1)
    max_actions: int = 20
    max_fraction: float = 0.5
    fraction_min_fleet: int = 10
    max_sample_gap: timedelta = timedelta(minutes=5)
    metrics_port: int = 9464
    metrics_address: str = "127.0.0.1"
    clouds: list[str] = field(default_factory=list)
    orphan_grace: timedelta = timedelta(hours=1)
    quarantine_retention: timedelta = timedelta(days=7)

    @classmethod
    def load(cls, settings: Settings) -> "ReaperSettings":
        values = parse_section(settings, "reaper", dict(cls().__dict__))
        section = settings.config.section("reaper")
        path = settings.config.path or settings.config_path
        if bad := [c for c in values["clouds"] if c not in CLOUDS]:
            raise FileError(path, section.line_of("clouds"), f"reaper.clouds: unknown {bad[0]!r}; known: {CLOUDS}")
        if values["max_fraction"] > 1:
            raise FileError(path, section.line_of("max_fraction"), "reaper.max_fraction must be from 0 to 1")
        if values["idle_grace_fraction"] > 1:
            raise FileError(
                path, section.line_of("idle_grace_fraction"), "reaper.idle_grace_fraction must be from 0 to 1"
            )
        if values["metrics_port"] > 65535:
            raise FileError(path, section.line_of("metrics_port"), "reaper.metrics_port must be a port (0: off)")
        return cls(**values)

    def idle_grace(self, idle_timeout: timedelta) -> timedelta:
        """How long before its idle timeout an idle machine is warned: the grace, shortened for a
        short timeout so that a machine idle a moment between jobs is not warned at once."""
        return min(self.grace, idle_timeout * self.idle_grace_fraction)

    def allowed_actions(self, fleet: int) -> int:
        """Destructive actions one cycle may take over a fleet of this many machines/resources."""
        if fleet < self.fraction_min_fleet:
            return self.max_actions
        return min(self.max_actions, math.floor(self.max_fraction * fleet))
