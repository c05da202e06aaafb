#!/usr/bin/python
"""Ansible module: end an on-prem lease this installation made - its processes, then its workspace
(wiped, or moved to quarantine).

Nothing is done unless the workspace carries the lease marker `.deepops/lease.json` naming this
installation and this machine. The work is module_utils/deepops_onprem_host.release, which
deepops also runs directly (without a play): one implementation, two ways in.
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.deepops_onprem_host import LeaseError, release

DOCUMENTATION = r"""
module: deepops_lease_release
short_description: Terminate the processes of a deepops on-prem lease and wipe or quarantine its workspace
options:
  machine_id: {description: The lease's machine ID., type: str, required: true}
  installation_id: {description: The deepops installation that made the lease., type: str, required: true}
  workspace: {description: The lease's workspace directory (absolute, ends in the machine ID)., type: str, default: ""}
  quarantine: {description: Move the workspace here instead of wiping it., type: str, default: ""}
  grace: {description: Seconds between SIGTERM and SIGKILL., type: float, default: 5}
"""


def main():
    module = AnsibleModule(
        argument_spec={
            "machine_id": {"type": "str", "required": True},
            "installation_id": {"type": "str", "required": True},
            "workspace": {"type": "str", "default": ""},
            "quarantine": {"type": "str", "default": ""},
            "grace": {"type": "float", "default": 5.0},
        },
        supports_check_mode=True,
    )
    try:
        report = release(check_mode=module.check_mode, **module.params)
    except (LeaseError, OSError) as exc:
        module.fail_json(msg=str(exc))
    if report["warning"]:
        module.warn(report["warning"])
    module.exit_json(changed=report["ours"], **report)


if __name__ == "__main__":
    main()
