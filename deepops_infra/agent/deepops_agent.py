# ruff: noqa: UP017
"""deepops-agent: the on-machine activity sampler and dead-man switch (one file, stdlib only).

Copied onto every machine by the `agent` Ansible role and run there with whatever Python 3.8+
the host has; it imports nothing from deepops_infra. Every few seconds it samples:

- gpu:      per-GPU utilization and memory through NVML (ctypes), else nvidia-smi; "absent" on a
            GPU-less host; unreadable when GPUs are expected but cannot be read
- cpu:      CPU used by the machine's processes (on-prem: the lease's processes, i.e. those inside
            its marked workspace or carrying its DEEPOPS_LEASE_KEY; cloud: the whole machine), percent of a core
- sessions: interactive terminals (the /dev/pts devices those processes hold, and utmp on
            clouds); a terminal is active when it saw input or output (its atime/mtime)
- jupyter:  kernels and terminals of Jupyter servers run there (their /api/kernels last_activity)
- jobs:     detached jobs started by `deepops exec` (<workspace>/.deepops/jobs): active while one
            runs (its process, one of the machine's, is alive and it has no exit status yet)
- user:     `deepops-agent touch` (or touching <state_dir>/activity)

A machine is idle only when every signal has been idle for the whole idle timeout; a signal
that cannot be read counts as active. The status is written to <state_dir>/status.json after
every sample (`deepops-agent status` prints it). The control plane checks in by writing
<state_dir>/checkin.json (`{"at": ..., "expires_at": ..., "idle_timeout_seconds": ...}`).

Dead-man switch: past expiry plus grace, or idle past the idle timeout while the control plane
has not checked in for `checkin_timeout_seconds`, the agent ends the machine by itself: on a
cloud it runs `shutdown -h now` (AWS terminates on shutdown), on-prem it ends the lease's own
processes and stops. The TTL holds whatever the signals say.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import glob
import json
import os
import signal
import struct
import subprocess
import sys
import time
import urllib.request
from collections import deque
from datetime import datetime, timedelta, timezone
from typing import Any

VERSION = "1"
ACTIVE, IDLE, ABSENT, UNREADABLE = "active", "idle", "absent", "unreadable"
DEFAULTS: dict[str, Any] = {
    "machine_id": None,
    "installation_id": None,
    "mode": "onprem",  # onprem | cloud
    "state_dir": None,
    "workspace": None,
    "gpu_indexes": None,  # None: every GPU of the host (cloud); a list: only these (on-prem lease)
    "interval_seconds": 5,
    "window_seconds": 3600,
    "idle_timeout_seconds": 3600,
    "expires_at": None,
    "grace_seconds": 600,
    "checkin_timeout_seconds": 1800,
    "gpu_busy_percent": 5.0,
    "cpu_busy_percent": 10.0,
    "deadman": True,
    "kill_grace_seconds": 5,
    "shutdown_command": ["shutdown", "-h", "now"],
    "nvidia_smi": "nvidia-smi",
    "jupyter_runtime_dirs": [],
    "jupyter_timeout_seconds": 2,
    "sinks": [],
    "publish_interval_seconds": 60,
}
UTMP_RECORD = struct.Struct("<hxxi32s4s32s256shhiii4i20s")  # glibc x86_64/aarch64 struct utmp
USER_PROCESS = 7


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    text = str(value).strip().replace("Z", "+00:00")
    # Jupyter writes microseconds and a zone; tolerate both missing.
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def load_config(path: str) -> dict[str, Any]:
    with open(path) as f:
        raw = json.load(f)
    config = {**DEFAULTS, **raw}
    if not config["machine_id"]:
        raise SystemExit(f"deepops-agent: {path}: machine_id is required")
    if not config["state_dir"]:
        config["state_dir"] = os.path.dirname(os.path.abspath(path))
    return config


def write_json(path: str, data: Any, mode: int = 0o600) -> None:
    """Atomically: readers never see half a file."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def read_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# -- processes ------------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def ancestors(pid: int) -> set[int]:
    found = set()
    while pid > 1:
        found.add(pid)
        try:
            pid = int(_stat_fields(pid)[1])
        except (OSError, ValueError, IndexError):
            break
    return found


def lease_of(config: dict[str, Any]) -> tuple[str | None, str | None]:
    """On-prem: the lease's workspace (real path) and its own key, read from the marker the lease
    wrote (`.deepops/lease.json`, naming this machine); (None, None) when there is no such lease."""
    workspace = config.get("workspace")
    if not workspace or not os.path.isdir(workspace):
        return None, None
    marker = read_json(os.path.join(workspace, ".deepops", "lease.json"))
    if not isinstance(marker, dict) or marker.get("machine_id") != config.get("machine_id"):
        return None, None
    key = marker.get("lease_key")
    return os.path.realpath(workspace).rstrip("/"), key if isinstance(key, str) and key else None


def _paths(pid: int) -> Any:
    """Where a process is: working directory, root, executable and every open file."""
    for link in ("cwd", "root", "exe"):
        with contextlib.suppress(OSError):
            yield os.readlink(f"/proc/{pid}/{link}")
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                yield os.readlink(f"/proc/{pid}/fd/{fd}")


def machine_pids(config: dict[str, Any], mode: str | None = None) -> list[int]:
    """The processes that make up the machine. Cloud: every process. On-prem: those inside the
    lease we made (working directory, root, executable or an open file in its marked workspace) or
    carrying its own DEEPOPS_LEASE_KEY; DEEPOPS_MACHINE alone proves nothing (anyone can set it)."""
    me = os.getpid()
    if (mode or config["mode"]) == "cloud":
        return [int(e) for e in os.listdir("/proc") if e.isdigit() and int(e) != me]
    workspace, key = lease_of(config)
    if workspace is None:
        return []
    marker = f"DEEPOPS_LEASE_KEY={key}".encode() if key else None
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        pid = int(entry)
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if marker and marker in f.read().split(b"\0"):
                    pids.append(pid)
                    continue
        except OSError:
            pass  # not ours to read: only where it is can tell
        if any(p == workspace or p.startswith(workspace + "/") for p in _paths(pid)):
            pids.append(pid)
    return pids


def alive(pid: int) -> bool:
    try:
        return _stat_fields(pid)[0] != "Z"
    except (OSError, IndexError):
        return False


def pts_path(tty_nr: int) -> str | None:
    major = (tty_nr >> 8) & 0xFFF
    minor = (tty_nr & 0xFF) | ((tty_nr >> 12) & 0xFFF00)
    if 136 <= major <= 143:  # Unix98 pseudo-terminals
        return f"/dev/pts/{(major - 136) * 256 + minor}"
    return None


# -- signals --------------------------------------------------------------------------------


class Nvml:
    """The few NVML calls needed, through ctypes; None when the library is not there."""

    class _Util(ctypes.Structure):
        _fields_ = [("gpu", ctypes.c_uint), ("memory", ctypes.c_uint)]

    class _Mem(ctypes.Structure):
        _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]

    def __init__(self) -> None:
        self.lib = ctypes.CDLL("libnvidia-ml.so.1")
        if self.lib.nvmlInit_v2() != 0:
            raise OSError("nvmlInit failed")

    def read(self) -> list[dict[str, Any]]:
        count = ctypes.c_uint()
        if self.lib.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0:
            raise OSError("nvmlDeviceGetCount failed")
        gpus = []
        for index in range(count.value):
            handle = ctypes.c_void_p()
            util, mem = self._Util(), self._Mem()
            if self.lib.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle)) != 0:
                raise OSError(f"nvmlDeviceGetHandleByIndex({index}) failed")
            if self.lib.nvmlDeviceGetUtilizationRates(handle, ctypes.byref(util)) != 0:
                raise OSError(f"nvmlDeviceGetUtilizationRates({index}) failed")
            if self.lib.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(mem)) != 0:
                raise OSError(f"nvmlDeviceGetMemoryInfo({index}) failed")
            gpus.append(
                {"index": index, "util": float(util.gpu), "mem": 100.0 * mem.used / mem.total if mem.total else 0.0}
            )
        return gpus


def read_gpus_smi(nvidia_smi: str) -> list[dict[str, Any]] | None:
    """nvidia-smi readings; None when there is no nvidia-smi (a GPU-less host)."""
    env = {k: v for k, v in os.environ.items() if k != "DEEPOPS_MACHINE"}
    try:
        out = subprocess.run(
            [nvidia_smi, "--query-gpu=index,utilization.gpu,memory.used,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            env=env,
            check=True,
        ).stdout
    except FileNotFoundError:
        return None
    gpus = []
    for line in out.strip().splitlines():
        index, util, used, total = (part.strip() for part in line.split(","))
        gpus.append({"index": int(index), "util": float(util), "mem": 100.0 * float(used) / float(total)})
    return gpus


class Agent:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.state_dir = config["state_dir"]
        self.started_at = utcnow()
        self.window: deque[dict[str, Any]] = deque()
        self.last_active: dict[str, datetime | None] = {"gpu": None, "cpu": None}
        self.cpu_prev: tuple[float, dict[int, float]] | None = None
        self.nvml: Nvml | None = None
        self.nvml_failed = False
        self.last_publish = 0.0
        self.sinks = []
        for spec in config.get("sinks") or []:
            try:
                self.sinks.append(make_sink(spec, config))
            except ImportError as exc:  # e.g. no boto3 on the image: report, never stop sampling
                log(f"not publishing to {spec.get('type')}: {exc}")
        self.ended: dict[str, Any] | None = None

    # paths
    def path(self, name: str) -> str:
        return os.path.join(self.state_dir, name)

    def write_status(self, status: dict[str, Any]) -> None:
        # On a cloud machine the agent is root and users read the status: 0644 there.
        write_json(self.path("status.json"), status, 0o644 if self.config["mode"] == "cloud" else 0o600)

    # -- one signal each -------------------------------------------------------------------

    def sample_gpu(self) -> dict[str, Any]:
        wanted = self.config.get("gpu_indexes")
        try:
            if self.nvml is None and not self.nvml_failed:
                try:
                    self.nvml = Nvml()
                except OSError:
                    self.nvml_failed = True
            gpus = self.nvml.read() if self.nvml is not None else read_gpus_smi(self.config["nvidia_smi"])
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            return {"state": UNREADABLE, "detail": f"{type(exc).__name__}: {exc}"[:200]}
        if gpus is None:
            if wanted:
                return {"state": UNREADABLE, "detail": "GPUs leased but neither NVML nor nvidia-smi is available"}
            return {"state": ABSENT, "gpus": []}
        if wanted is not None:
            gpus = [g for g in gpus if g["index"] in set(wanted)]
            if len(gpus) < len(wanted):
                return {"state": UNREADABLE, "detail": f"leased GPUs {wanted} not all visible"}
        if not gpus:
            return {"state": ABSENT, "gpus": []}
        busy = any(g["util"] >= float(self.config["gpu_busy_percent"]) for g in gpus)
        return {"state": ACTIVE if busy else IDLE, "gpus": gpus}

    def _cpu_times(self, pids: list[int]) -> dict[int, float]:
        ticks = os.sysconf("SC_CLK_TCK")
        times = {}
        for pid in pids:
            try:
                fields = _stat_fields(pid)
                # utime + stime (fields 14 and 15 of stat; 11, 12 after the command name)
                times[pid] = (int(fields[11]) + int(fields[12])) / ticks
            except (OSError, ValueError, IndexError):
                continue
        return times

    def sample_cpu(self, pids: list[int]) -> dict[str, Any]:
        now = time.monotonic()
        times = self._cpu_times(pids)
        previous, self.cpu_prev = self.cpu_prev, (now, times)
        if previous is None:
            return {"state": IDLE, "percent": 0.0, "detail": "first sample"}
        then, before = previous
        used = sum(max(0.0, t - before[pid]) for pid, t in times.items() if pid in before)
        # A process started since the last sample counts with all it used.
        used += sum(t for pid, t in times.items() if pid not in before)
        percent = 100.0 * used / max(now - then, 1e-3)
        state = ACTIVE if percent >= float(self.config["cpu_busy_percent"]) else IDLE
        return {"state": state, "percent": round(percent, 2), "processes": len(times)}

    def sample_sessions(self, pids: list[int]) -> dict[str, Any]:
        ttys = set()
        for pid in pids:
            try:
                path = pts_path(int(_stat_fields(pid)[4]))
            except (OSError, ValueError, IndexError):
                continue
            if path:
                ttys.add(path)
        if self.config["mode"] == "cloud":
            ttys |= utmp_ttys()
        last = None
        for tty in ttys:
            try:
                st = os.stat(tty)
            except OSError:
                continue
            seen = datetime.fromtimestamp(max(st.st_atime, st.st_mtime), timezone.utc)
            last = seen if last is None or seen > last else last
        if not ttys:
            return {"state": ABSENT, "count": 0}
        return {"state": IDLE, "count": len(ttys), "last_active_at": last}

    def jupyter_servers(self, pids: list[int]) -> list[dict[str, Any]]:
        dirs = list(self.config.get("jupyter_runtime_dirs") or [])
        for pid in pids:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if b"jupyter" not in f.read():
                        continue
                with open(f"/proc/{pid}/environ", "rb") as f:
                    env = dict(e.split(b"=", 1) for e in f.read().split(b"\0") if b"=" in e)
            except OSError:
                continue
            if b"JUPYTER_RUNTIME_DIR" in env:
                dirs.append(env[b"JUPYTER_RUNTIME_DIR"].decode())
            data = env.get(b"XDG_DATA_HOME", env.get(b"HOME", b"") + b"/.local/share").decode()
            dirs.append(os.path.join(data, "jupyter", "runtime"))
        servers, pidset = [], set(pids)
        for directory in dict.fromkeys(dirs):
            for path in glob.glob(os.path.join(directory, "jpserver-*.json")) + glob.glob(
                os.path.join(directory, "nbserver-*.json")
            ):
                info = read_json(path)
                if not isinstance(info, dict) or not alive(int(info.get("pid", 0))):
                    continue
                if self.config["mode"] == "onprem" and int(info["pid"]) not in pidset:
                    continue  # another lease's (or user's) server
                servers.append(info)
        return servers

    def sample_jupyter(self, pids: list[int]) -> dict[str, Any]:
        servers = self.jupyter_servers(pids)
        if not servers:
            return {"state": ABSENT, "kernels": 0}
        last, busy, kernels = None, False, 0
        for info in servers:
            base = str(info.get("url", "")).rstrip("/") + "/"
            headers = {"Authorization": f"token {info['token']}"} if info.get("token") else {}
            for endpoint in ("api/kernels", "api/terminals"):
                try:
                    request = urllib.request.Request(base + endpoint, headers=headers)
                    with urllib.request.urlopen(request, timeout=self.config["jupyter_timeout_seconds"]) as response:
                        items = json.load(response)
                except (OSError, ValueError) as exc:
                    if endpoint == "api/terminals":
                        continue  # terminals may be disabled; kernels are what matter
                    return {"state": UNREADABLE, "detail": f"{base}{endpoint}: {exc}"[:200]}
                for item in items:
                    kernels += endpoint == "api/kernels"
                    busy = busy or item.get("execution_state") == "busy"
                    seen = parse_time(item.get("last_activity"))
                    if seen and (last is None or seen > last):
                        last = seen
        return {"state": ACTIVE if busy else IDLE, "kernels": kernels, "servers": len(servers), "last_active_at": last}

    def sample_jobs(self, pids: list[int]) -> dict[str, Any]:
        workspace = self.config.get("workspace")
        jobs_dir = os.path.join(workspace, ".deepops", "jobs") if workspace else None
        if not jobs_dir or not os.path.isdir(jobs_dir):
            return {"state": ABSENT}
        ours, running = set(pids), []
        for job in sorted(os.listdir(jobs_dir)):
            folder = os.path.join(jobs_dir, job)
            if os.path.exists(os.path.join(folder, "exit")):
                continue
            try:
                with open(os.path.join(folder, "pid")) as f:
                    pid = int(f.read().strip())
            except (OSError, ValueError):
                continue
            if pid in ours and alive(pid):
                running.append(job)
        return {"state": ACTIVE if running else IDLE, "running": running}

    def sample_user(self) -> dict[str, Any]:
        try:
            seen = datetime.fromtimestamp(os.stat(self.path("activity")).st_mtime, timezone.utc)
        except FileNotFoundError:
            return {"state": ABSENT}
        except OSError as exc:
            return {"state": UNREADABLE, "detail": str(exc)}
        return {"state": IDLE, "last_active_at": seen}

    # -- the sample, the window, the decision ----------------------------------------------

    def _guard(self, name: str, fn: Any, *args: Any) -> dict[str, Any]:
        try:
            return fn(*args)
        except Exception as exc:  # a broken signal must never make a machine look idle
            return {"state": UNREADABLE, "detail": f"{type(exc).__name__}: {exc}"[:200]}

    def sample(self) -> dict[str, Any]:
        now = utcnow()
        pids = machine_pids(self.config)
        signals = {
            "gpu": self._guard("gpu", self.sample_gpu),
            "cpu": self._guard("cpu", self.sample_cpu, pids),
            "sessions": self._guard("sessions", self.sample_sessions, pids),
            "jupyter": self._guard("jupyter", self.sample_jupyter, pids),
            "jobs": self._guard("jobs", self.sample_jobs, pids),
            "user": self._guard("user", self.sample_user),
        }
        last_active = self.started_at  # nothing is idle for longer than the agent has watched it
        for name, sig in signals.items():
            seen = sig.get("last_active_at")
            if sig["state"] in (ACTIVE, UNREADABLE):
                seen = now
                if name in self.last_active:
                    self.last_active[name] = now
            elif name in self.last_active:
                seen = self.last_active[name]
            if seen is not None and seen > last_active:
                last_active = min(seen, now)
            sig["last_active_at"] = iso(seen)
        gpus = (signals["gpu"].get("gpus") or []) if signals["gpu"]["state"] in (ACTIVE, IDLE) else []
        self.window.append(
            {
                "at": now,
                "gpu_util": [g["util"] for g in gpus],
                "gpu_mem": [g["mem"] for g in gpus],
                "active": any(s["state"] in (ACTIVE, UNREADABLE) for s in signals.values()),
            }
        )
        while self.window and (now - self.window[0]["at"]).total_seconds() > float(self.config["window_seconds"]):
            self.window.popleft()
        return self.status(now, signals, last_active)

    def control(self) -> dict[str, Any]:
        """What the control plane last said (check-in), over what the role installed."""
        checkin = read_json(self.path("checkin.json"))
        checkin = checkin if isinstance(checkin, dict) else {}
        return {
            "checkin_at": parse_time(checkin.get("at")),
            "expires_at": parse_time(checkin.get("expires_at") or self.config.get("expires_at")),
            "idle_timeout": float(checkin.get("idle_timeout_seconds") or self.config["idle_timeout_seconds"]),
        }

    def status(self, now: datetime, signals: dict[str, Any], last_active: datetime) -> dict[str, Any]:
        ctl = self.control()
        idle_seconds = max(0.0, (now - last_active).total_seconds())
        idle = idle_seconds >= ctl["idle_timeout"]
        reference = ctl["checkin_at"] or self.started_at
        checkin_age = max(0.0, (now - reference).total_seconds())
        fire_reason, fires_at = None, []
        if ctl["expires_at"] is not None:
            hard = ctl["expires_at"] + timedelta(seconds=float(self.config["grace_seconds"]))
            fires_at.append(hard)
            if now >= hard:
                grace = self.config["grace_seconds"]
                fire_reason = f"expired at {iso(ctl['expires_at'])} and the grace of {grace}s passed"
        if fire_reason is None and idle and checkin_age >= float(self.config["checkin_timeout_seconds"]):
            fire_reason = (
                f"idle for {int(idle_seconds)}s (timeout {int(ctl['idle_timeout'])}s) and no control-plane "
                f"check-in for {int(checkin_age)}s"
            )
        samples = list(self.window)
        n_gpus = max((len(s["gpu_util"]) for s in samples), default=0)

        def mean(key: str, i: int) -> float | None:
            values = [s[key][i] for s in samples if len(s[key]) > i]
            return round(sum(values) / len(values), 2) if values else None

        return {
            "agent_version": VERSION,
            "machine_id": self.config["machine_id"],
            "installation_id": self.config.get("installation_id"),
            "mode": self.config["mode"],
            "pid": os.getpid(),
            "started_at": iso(self.started_at),
            "at": iso(now),
            "interval_seconds": self.config["interval_seconds"],
            "active": not idle,
            "idle": idle,
            "idle_seconds": round(idle_seconds, 1),
            "idle_timeout_seconds": ctl["idle_timeout"],
            "last_active_at": iso(last_active),
            "signals": signals,
            "window": {
                "seconds": self.config["window_seconds"],
                "samples": len(samples),
                "active_fraction": round(sum(s["active"] for s in samples) / len(samples), 3) if samples else None,
                "gpu_util_mean": [mean("gpu_util", i) for i in range(n_gpus)],
                "gpu_mem_mean": [mean("gpu_mem", i) for i in range(n_gpus)],
            },
            "expires_at": iso(ctl["expires_at"]),
            "checkin_at": iso(ctl["checkin_at"]),
            "checkin_age_seconds": round(checkin_age, 1),
            "deadman": {
                "enabled": bool(self.config["deadman"]),
                "reason": fire_reason,
                "hard_stop_at": iso(min(fires_at)) if fires_at else None,
            },
            "ended": self.ended,
        }

    # -- ending the machine -----------------------------------------------------------------

    def end(self, status: dict[str, Any], reason: str) -> None:
        self.ended = {"at": iso(utcnow()), "reason": reason, "by": "dead-man switch"}
        status["ended"] = self.ended
        self.write_status(status)
        log(f"dead-man switch: ending {self.config['machine_id']}: {reason}")
        if self.config["mode"] == "cloud":
            subprocess.run(list(self.config["shutdown_command"]), check=False)
            return
        skip = ancestors(os.getpid())
        pids = [p for p in machine_pids(self.config, "onprem") if p not in skip]
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + float(self.config["kill_grace_seconds"])
        while time.monotonic() < deadline and any(alive(p) for p in pids):
            time.sleep(0.1)
        for pid in pids:
            if alive(pid):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        log(f"ended {len(pids)} lease processes")

    def publish(self, status: dict[str, Any]) -> None:
        if not self.sinks or time.monotonic() - self.last_publish < float(self.config["publish_interval_seconds"]):
            return
        self.last_publish = time.monotonic()
        for sink in self.sinks:
            try:
                sink(status)
            except Exception as exc:  # publishing is best effort; the status file is the truth
                log(f"publishing failed: {type(exc).__name__}: {exc}")

    def step(self) -> dict[str, Any]:
        status = self.sample()
        self.write_status(status)
        self.publish(status)
        if self.config["deadman"] and status["deadman"]["reason"] and self.ended is None:
            self.end(status, status["deadman"]["reason"])
        return status

    def run(self) -> int:
        stop = {"now": False}

        def on_term(signum: int, frame: Any) -> None:
            stop["now"] = True

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        log(f"watching {self.config['machine_id']} every {self.config['interval_seconds']}s")
        while not stop["now"]:
            workspace = self.config.get("workspace")
            if workspace and not os.path.isdir(workspace):
                log("the workspace is gone: the lease was released")
                return 0
            self.step()
            if self.ended is not None:
                return 0
            deadline = time.monotonic() + float(self.config["interval_seconds"])
            while not stop["now"] and time.monotonic() < deadline:
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        return 0


def utmp_ttys(path: str = "/var/run/utmp") -> set[str]:
    ttys = set()
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return ttys
    for offset in range(0, len(data) - UTMP_RECORD.size + 1, UTMP_RECORD.size):
        record = UTMP_RECORD.unpack_from(data, offset)
        if record[0] == USER_PROCESS and alive(record[1]):
            line = record[2].split(b"\0", 1)[0].decode(errors="replace")
            if line:
                ttys.add("/dev/" + line)
    return ttys


# -- metric sinks ---------------------------------------------------------------------------


def cloudwatch_sink(spec: dict[str, Any], config: dict[str, Any]) -> Any:
    """AWS CloudWatch put_metric_data (boto3 must be on the machine; images that publish ship it)."""
    import boto3  # only on machines configured to publish

    client = boto3.client("cloudwatch", region_name=spec.get("region"), endpoint_url=spec.get("endpoint_url"))
    namespace = spec.get("namespace", "DeepOps")
    dimensions = [{"Name": "MachineId", "Value": config["machine_id"]}]

    def publish(status: dict[str, Any]) -> None:
        at = parse_time(status["at"])
        gpu = status["signals"]["gpu"].get("gpus") or []
        data = [
            {"MetricName": "Active", "Value": 0.0 if status["idle"] else 1.0, "Unit": "None"},
            {"MetricName": "IdleSeconds", "Value": float(status["idle_seconds"]), "Unit": "Seconds"},
        ]
        if gpu:
            data.append({"MetricName": "GPUUtilization", "Value": max(g["util"] for g in gpu), "Unit": "Percent"})
            data.append({"MetricName": "GPUMemoryUtilization", "Value": max(g["mem"] for g in gpu), "Unit": "Percent"})
        client.put_metric_data(
            Namespace=namespace, MetricData=[{**d, "Dimensions": dimensions, "Timestamp": at} for d in data]
        )

    return publish


SINKS = {"cloudwatch": cloudwatch_sink}


def make_sink(spec: dict[str, Any], config: dict[str, Any]) -> Any:
    kind = spec.get("type")
    if kind not in SINKS:
        raise SystemExit(f"deepops-agent: unknown metric sink {kind!r}; known: {', '.join(SINKS)}")
    return SINKS[kind](spec, config)


# -- command line ---------------------------------------------------------------------------


def log(message: str) -> None:
    sys.stderr.write(f"{iso(utcnow())} deepops-agent: {message}\n")
    sys.stderr.flush()


def running_pid(pidfile: str) -> int | None:
    try:
        with open(pidfile) as f:
            pid = int(f.read().strip())
    except (OSError, ValueError):
        return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            is_agent = b"deepops_agent" in f.read()
    except OSError:
        return None
    return pid if is_agent and alive(pid) else None


def daemonize(config: dict[str, Any], config_path: str) -> int:
    """Start `run` in the background, detached from the caller (on-prem leases have no systemd)."""
    pidfile = os.path.join(config["state_dir"], "agent.pid")
    if (pid := running_pid(pidfile)) is not None:
        print(json.dumps({"started": False, "pid": pid}))
        return 0
    logfile = os.path.join(config["state_dir"], "agent.log")
    # (one `with` per file: parenthesized context managers need Python 3.9; hosts may have 3.8)
    out = open(os.open(logfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab")  # noqa: SIM115
    env = {**os.environ, "DEEPOPS_MACHINE": config["machine_id"]}
    key = lease_of(config)[1]
    if key:  # the agent is one of the lease's processes: released with it
        env["DEEPOPS_LEASE_KEY"] = key
    with out, open(os.devnull, "rb") as devnull:
        proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--config", config_path, "run"],
            stdin=devnull,
            stdout=out,
            stderr=out,
            start_new_session=True,
            close_fds=True,
            env=env,
        )
    with open(pidfile, "w") as f:
        f.write(str(proc.pid))
    print(json.dumps({"started": True, "pid": proc.pid}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deepops-agent", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="the agent's config.json")
    parser.add_argument("--state-dir", help="where status.json lives (default: beside the config)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="sample until stopped (foreground)")
    sub.add_parser("start", help="run in the background unless already running (pidfile in the state dir)")
    sub.add_parser("stop", help="stop the background agent")
    sub.add_parser("sample", help="take one sample and print the status (nothing is ended)")
    sub.add_parser("status", help="print the last status as JSON")
    sub.add_parser("touch", help="mark the machine as in use now")
    args = parser.parse_args(argv)
    state_dir = args.state_dir or (os.path.dirname(os.path.abspath(args.config)) if args.config else None)
    if args.command in ("status", "touch"):
        if not state_dir:
            parser.error("--config or --state-dir is required")
        if args.command == "touch":
            path = os.path.join(state_dir, "activity")
            with open(path, "a"):
                os.utime(path)
            return 0
        status = read_json(os.path.join(state_dir, "status.json"))
        if status is None:
            sys.stderr.write(f"deepops-agent: no status yet in {state_dir}\n")
            return 1
        print(json.dumps(status, indent=1, sort_keys=True))
        return 0
    if not args.config:
        parser.error("--config is required")
    config = load_config(args.config)
    if args.state_dir:
        config["state_dir"] = args.state_dir
    os.makedirs(config["state_dir"], mode=0o700, exist_ok=True)
    if args.command == "start":
        return daemonize(config, os.path.abspath(args.config))
    if args.command == "stop":
        pid = running_pid(os.path.join(config["state_dir"], "agent.pid"))
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
        return 0
    agent = Agent(config)
    if args.command == "sample":
        agent.sample()  # the first CPU reading needs a baseline
        time.sleep(min(1.0, float(config["interval_seconds"])))
        print(json.dumps(agent.sample(), indent=1, sort_keys=True))
        return 0
    return agent.run()


if __name__ == "__main__":
    sys.exit(main())
