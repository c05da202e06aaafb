"""GPUs (nvidia-smi) and host facts, read on the host (stdlib only, Python 3.8+).

One implementation for the `deepops_gpu_facts` module (roles/gpu_facts) and the on-prem lease
(deepops_onprem_host.py, run by Ansible or directly). No nvidia-smi, or nvidia-smi failing
because no driver is loaded, is a valid answer: no GPUs.
"""

import os
import platform
import shutil
import socket
import subprocess

QUERY = "index,uuid,name,memory.total,driver_version,utilization.gpu,memory.used"


def number(text):
    """nvidia-smi prints `[N/A]` or `[Not Supported]` for what it cannot read."""
    try:
        return int(float(text))
    except (TypeError, ValueError):
        return None


def detect(nvidia_smi):
    """(GPUs, driver version, why none were found or None)."""
    exe = shutil.which(nvidia_smi)
    if exe is None:
        return [], None, "nvidia-smi not found"
    try:
        out = subprocess.run(
            [exe, f"--query-gpu={QUERY}", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [], None, f"nvidia-smi failed: {exc}"
    if out.returncode != 0:
        return [], None, (out.stderr or out.stdout).strip().splitlines()[0:1] or "nvidia-smi failed"
    gpus, driver = [], None
    for line in out.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 5:
            continue
        index, uuid, name, memory, driver = parts[:5]
        extra = parts[5:7] + [None] * (2 - len(parts[5:7]))
        gpus.append(
            {
                "index": int(index),
                "uuid": uuid,
                "name": name,
                "memory_mib": number(memory),
                "utilization_percent": number(extra[0]),
                "memory_used_mib": number(extra[1]),
            }
        )
    return gpus, driver, None


def free_gb(path):
    probe = path
    while probe and not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not probe:
        return None
    usage = shutil.disk_usage(probe)
    return round(usage.free / 1024**3, 1)


def facts(nvidia_smi="nvidia-smi", path=None):
    """The facts the gpu_facts role sets: deepops_gpus, deepops_driver_version,
    deepops_gpu_detection_note and deepops_host (free_gb under `path`, ~ expanded)."""
    gpus, driver, note = detect(nvidia_smi)
    return {
        "deepops_gpus": gpus,
        "deepops_driver_version": driver,
        "deepops_gpu_detection_note": note,
        "deepops_host": {
            "hostname": socket.gethostname(),
            "home": os.path.expanduser("~"),
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "free_gb": free_gb(os.path.expanduser(path)) if path else None,
        },
    }
