#!/usr/bin/python
"""Ansible module: NVIDIA GPUs on the PCI bus, read from sysfs.

Works before any driver is installed (nvidia-smi needs the driver), so the driver role can tell
a GPU machine from a CPU one. Only display (0x0300) and 3D (0x0302) controllers of vendor
0x10de count: the audio and USB functions of a graphics card are not GPUs.
"""

import os

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: deepops_pci_gpus
short_description: List NVIDIA GPUs on the PCI bus (no driver needed)
options:
  root:
    description: The sysfs directory of PCI devices.
    type: path
    default: /sys/bus/pci/devices
"""

NVIDIA = "0x10de"
GPU_CLASSES = ("0x0300", "0x0302")


def read(path):
    try:
        with open(path) as handle:
            return handle.read().strip().lower()
    except OSError:
        return ""


def scan(root):
    found = []
    try:
        entries = sorted(os.listdir(root))
    except OSError:
        return found
    for address in entries:
        base = os.path.join(root, address)
        if read(os.path.join(base, "vendor")) != NVIDIA:
            continue
        pci_class = read(os.path.join(base, "class"))
        if not pci_class.startswith(GPU_CLASSES):
            continue
        found.append({"address": address, "device_id": read(os.path.join(base, "device")), "class": pci_class})
    return found


def main():
    module = AnsibleModule(
        argument_spec={"root": {"type": "path", "default": "/sys/bus/pci/devices"}}, supports_check_mode=True
    )
    module.exit_json(changed=False, ansible_facts={"deepops_pci_gpus": scan(module.params["root"])})


if __name__ == "__main__":
    main()
