#!/usr/bin/python
"""Ansible module: the agent in an on-prem lease - its config.json, the deepops-agent command (also
in the lease's venv), and the agent started in the background (unless running already).

The work is module_utils/deepops_onprem_host.install_agent, which deepops also runs directly
(without a play): one implementation, two ways in. The agent's file is copied before this runs.
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.deepops_onprem_host import LeaseError, install_agent

DOCUMENTATION = r"""
module: deepops_lease_agent
short_description: Configure and start deepops-agent in an on-prem lease
options:
  state_dir: {description: The agent's state folder (its deepops_agent.py is there)., type: str, required: true}
  bin_dir: {description: Where the deepops-agent command goes., type: str, required: true}
  workspace: {description: The lease's workspace., type: str, required: true}
  config: {description: The agent's configuration., type: dict, required: true}
  python: {description: Python 3.8+ that runs the agent., type: str, default: python3}
  start: {description: Start the agent now (unless running)., type: bool, default: true}
"""


def main():
    module = AnsibleModule(
        argument_spec={
            "state_dir": {"type": "str", "required": True},
            "bin_dir": {"type": "str", "required": True},
            "workspace": {"type": "str", "required": True},
            "config": {"type": "dict", "required": True},
            "python": {"type": "str", "default": "python3"},
            "start": {"type": "bool", "default": True},
        },
    )
    p = module.params
    try:
        started = install_agent(p["state_dir"], p["bin_dir"], p["workspace"], p["config"], p["python"], p["start"])
    except (LeaseError, OSError) as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=started, started=started)


if __name__ == "__main__":
    main()
