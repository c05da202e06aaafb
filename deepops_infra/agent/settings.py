"""The control plane's side of the agent: `agent:` in config.yaml and the config a machine gets.

```yaml
agent:
  enabled: true                 # install and run the agent on every machine
  interval: 5s                  # between samples
  window: 1h                    # rolling window kept for the status' means
  grace: 10m                    # past expiry plus this, the machine ends itself
  checkin_timeout: 30m          # idle and no control-plane check-in for this long: it ends itself
  deadman: true                 # false: the agent only reports
  gpu_busy_percent: 5           # a GPU at or above this utilization is in use
  cpu_busy_percent: 10          # the machine's processes using this much of one core are in use
  sinks:                        # where the agent publishes, besides its status file
    - {type: cloudwatch, namespace: DeepOps}
```
"""

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepops_infra.config import Settings
from deepops_infra.durations import parse_duration
from deepops_infra.yamlfile import FileError, Mapping

if TYPE_CHECKING:
    from deepops_infra.ledger.schema import Machine

AGENT_SOURCE = Path(__file__).with_name("deepops_agent.py")
CLOUDWATCH_NAMESPACE = "DeepOps"  # the agent's default (deepops_agent.cloudwatch_sink)
CLOUD_STATE_DIR = "/var/lib/deepops-agent"  # the systemd unit's state on a cloud machine
# The dead-man switch on a cloud machine: clouds create instances that terminate on shutdown
# (AWS instance_initiated_shutdown_behavior=terminate), so this ends the billing.
CLOUD_SHUTDOWN = ["shutdown", "-h", "now"]


def parse_section(settings: Settings, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Values of a config section by `spec` (key -> default; its type decides the parsing)."""
    section: Mapping = settings.config.section(name)
    path = settings.config.path or settings.config_path
    values = dict(spec)
    for key, value in section.items():
        line = section.line_of(key)
        if key not in spec:
            raise FileError(path, line, f"unknown {name} setting {key!r}; known: {', '.join(sorted(spec))}")
        default = spec[key]
        if isinstance(default, timedelta):
            try:
                values[key] = parse_duration(str(value), f"{name}.{key}")
            except Exception as exc:
                raise FileError(path, line, str(exc)) from None
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise FileError(path, line, f"{name}.{key} must be true or false")
            values[key] = value
        elif isinstance(default, int | float):
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise FileError(path, line, f"{name}.{key} must be a number >= 0")
            if isinstance(default, int) and not isinstance(value, int):
                raise FileError(path, line, f"{name}.{key} must be a whole number")
            values[key] = value
        elif isinstance(default, list):
            if not isinstance(value, list):
                raise FileError(path, line, f"{name}.{key} must be a list")
            values[key] = list(value)
        else:
            values[key] = value
    return values


@dataclass(frozen=True)
class AgentSettings:
    enabled: bool = True
    interval: timedelta = timedelta(seconds=5)
    window: timedelta = timedelta(hours=1)
    grace: timedelta = timedelta(minutes=10)
    checkin_timeout: timedelta = timedelta(minutes=30)
    deadman: bool = True
    gpu_busy_percent: float = 5.0
    cpu_busy_percent: float = 10.0
    sinks: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, settings: Settings) -> "AgentSettings":
        values = parse_section(settings, "agent", dict(cls().__dict__))
        path = settings.config.path or settings.config_path
        for sink in values["sinks"]:
            if not isinstance(sink, dict) or sink.get("type") not in ("cloudwatch",):
                line = settings.config.section("agent").line_of("sinks")
                raise FileError(path, line, "agent.sinks: each needs a `type`; known types: cloudwatch")
        return cls(**values)

    def cloudwatch_namespace(self) -> str:
        """Where agents publish on AWS, and so where the reaper reads them."""
        for sink in self.sinks:
            if sink.get("type") == "cloudwatch":
                return str(sink.get("namespace") or CLOUDWATCH_NAMESPACE)
        return CLOUDWATCH_NAMESPACE

    def machine_config(
        self,
        *,
        machine_id: str,
        installation_id: str,
        mode: str,
        state_dir: str,
        expires_at: str | None,
        idle_timeout_seconds: int,
        workspace: str | None = None,
        gpu_indexes: list[int] | None = None,
    ) -> dict[str, Any]:
        """The JSON the agent reads on the machine (deepops_agent.DEFAULTS lists every key)."""
        return {
            "machine_id": machine_id,
            "installation_id": installation_id,
            "mode": mode,
            "state_dir": state_dir,
            "workspace": workspace,
            "gpu_indexes": gpu_indexes,
            "interval_seconds": max(1, int(self.interval.total_seconds())),
            "window_seconds": int(self.window.total_seconds()),
            "idle_timeout_seconds": idle_timeout_seconds,
            "expires_at": expires_at,
            "grace_seconds": int(self.grace.total_seconds()),
            "checkin_timeout_seconds": int(self.checkin_timeout.total_seconds()),
            "deadman": self.deadman,
            "gpu_busy_percent": self.gpu_busy_percent,
            "cpu_busy_percent": self.cpu_busy_percent,
            "sinks": self.sinks,
        }

    def role_vars(
        self,
        machine: "Machine",
        installation_id: str,
        *,
        mode: str,
        python: str,
        state_dir: str = CLOUD_STATE_DIR,
        workspace: str | None = None,
        gpu_indexes: list[int] | None = None,
        sinks: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """The agent role's variables for a machine being configured (every target calls this);
        {} when agents are off. `sinks` replaces the configured ones (a cloud fills in its own)."""
        if not self.enabled:
            return {}
        # Provisional: the TTL counts from ready, a moment after this. The launch's check-in at ready
        # (agent_control) gives the agent the ledger's expiry, and `extend` and the reaper keep it so.
        expires = datetime.now(UTC) + timedelta(seconds=int(machine.request["ttl"]))
        config = self.machine_config(
            machine_id=machine.id,
            installation_id=installation_id,
            mode=mode,
            state_dir=state_dir,
            expires_at=expires.isoformat(),
            idle_timeout_seconds=int(machine.request.get("idle_timeout") or 3600),
            workspace=workspace,
            gpu_indexes=gpu_indexes,
        )
        if sinks is not None:
            config["sinks"] = sinks
        if mode == "cloud":
            config["shutdown_command"] = CLOUD_SHUTDOWN
        return {"agent_mode": mode, "agent_config": config, "agent_source": str(AGENT_SOURCE), "agent_python": python}


def agent_control(settings: Settings, machine: "Machine", by: str) -> dict[str, Any]:
    """What the control plane tells a machine's agent (its checkin.json): that it is alive, the
    machine's expiry (the ledger's own, capped by the team's maximum TTL as the reaper caps it) and
    its idle timeout. The launch writes it at ready, `extend` after each extension, the reaper on
    every cycle: the dead-man switch ends the machine when the ledger says, not earlier."""
    policy = settings.config.policy_for(machine.team)
    expiry = min(machine.expires_at, (machine.ready_at or machine.created_at) + policy.max_ttl)
    return {
        "at": _iso(datetime.now(UTC)),
        "expires_at": _iso(expiry),
        "idle_timeout_seconds": int(machine.request.get("idle_timeout") or 3600),
        "by": by,
    }


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")
