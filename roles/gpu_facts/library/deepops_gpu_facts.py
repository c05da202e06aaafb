#!/usr/bin/python
"""Ansible module: detect NVIDIA GPUs with nvidia-smi and report basic host facts.

No nvidia-smi, or nvidia-smi failing because no driver is loaded, is a valid answer: no GPUs.
"""

import os
import platform
import shutil
import socket
import subprocess

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: deepops_gpu_facts
short_description: Detect NVIDIA GPUs (index, model, memory, driver) and host facts
options:
  nvidia_smi:
    description: nvidia-smi executable to run.
    type: str
    default: nvidia-smi
  path:
    description: A path whose free disk space is reported (created parents need not exist).
    type: path
"""

QUERY = "index,uuid,name,memory.total,driver_version,utilization.gpu,memory.used"


def number(text):
    """nvidia-smi prints `[N/A]` or `[Not Supported]` for what it cannot read."""
    try:
        return int(float(text))
    except (TypeError, ValueError):
        return None


def detect(nvidia_smi):
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


def main():
    module = AnsibleModule(
        argument_spec={"nvidia_smi": {"type": "str", "default": "nvidia-smi"}, "path": {"type": "path"}},
        supports_check_mode=True,
    )
    gpus, driver, note = detect(module.params["nvidia_smi"])
    facts = {
        "deepops_gpus": gpus,
        "deepops_driver_version": driver,
        "deepops_gpu_detection_note": note,
        "deepops_host": {
            "hostname": socket.gethostname(),
            "home": os.path.expanduser("~"),
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "free_gb": free_gb(module.params["path"]) if module.params["path"] else None,
        },
    }
    module.exit_json(changed=False, ansible_facts=facts)


if __name__ == "__main__":
    main()
