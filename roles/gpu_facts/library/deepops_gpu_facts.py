#!/usr/bin/python
"""Ansible module: detect NVIDIA GPUs with nvidia-smi and report basic host facts
(module_utils/deepops_gpu_probe.py, which the on-prem lease also uses).

No nvidia-smi, or nvidia-smi failing because no driver is loaded, is a valid answer: no GPUs.
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.deepops_gpu_probe import facts

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


def main():
    module = AnsibleModule(
        argument_spec={"nvidia_smi": {"type": "str", "default": "nvidia-smi"}, "path": {"type": "path"}},
        supports_check_mode=True,
    )
    found = facts(module.params["nvidia_smi"], module.params["path"])
    module.exit_json(changed=False, ansible_facts=found)


if __name__ == "__main__":
    main()
