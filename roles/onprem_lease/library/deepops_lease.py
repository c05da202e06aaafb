#!/usr/bin/python
"""Ansible module: create an on-prem lease - check the host (GPUs, disk), create the workspace with
its ownership marker `.deepops/lease.json`, write `.deepops/env.sh`.

The work is module_utils/deepops_onprem_host.lease, which deepops also runs directly (without a
play) for a fast lease: one implementation, two ways in.
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.deepops_onprem_host import LeaseError, lease

DOCUMENTATION = r"""
module: deepops_lease
short_description: Create a deepops on-prem lease workspace with its ownership marker and env.sh
options:
  machine_id: {description: The lease's machine ID., type: str, required: true}
  installation_id: {description: The deepops installation that owns the lease., type: str, required: true}
  workspace_root: {description: Where the workspace is created (~ is the user's home)., type: str, required: true}
  gpu_indexes: {description: The leased GPU indexes., type: list, elements: int, default: []}
  gpus_declared: {description: The pool declares the GPUs (no presence check)., type: bool, default: false}
  disk_gb: {description: Free space required under the root (0 - no check)., type: float, default: 0}
  nvidia_smi: {description: nvidia-smi executable., type: str, default: nvidia-smi}
"""


def main():
    module = AnsibleModule(
        argument_spec={
            "machine_id": {"type": "str", "required": True},
            "installation_id": {"type": "str", "required": True},
            "workspace_root": {"type": "str", "required": True},
            "gpu_indexes": {"type": "list", "elements": "int", "default": []},
            "gpus_declared": {"type": "bool", "default": False},
            "disk_gb": {"type": "float", "default": 0},
            "nvidia_smi": {"type": "str", "default": "nvidia-smi"},
        },
        supports_check_mode=True,
    )
    p = dict(module.params)
    try:
        report = lease(create=not module.check_mode, **p)
    except LeaseError as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=report["created"], lease=report, workspace=report["workspace"])


if __name__ == "__main__":
    main()
