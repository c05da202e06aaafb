#!/usr/bin/python
"""Ansible module: an image's pinned environment in a workspace, from the host's cache.

The environment is built once per host, lock and interpreter (pip or uv with --require-hashes
--no-deps, into a temporary folder, recorded, made read-only, renamed into place), checked at
every use and rebuilt when it was changed; the workspace gets a venv layered on it
(`<workspace>/env`). The work is module_utils/deepops_onprem_host.pinned_env, which deepops also
runs directly (without a play): one implementation, two ways in.
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.deepops_envcache import EnvError
from ansible.module_utils.deepops_onprem_host import pinned_env

DOCUMENTATION = r"""
module: deepops_pinned_env
short_description: Layer an image's cached, hash-checked environment into a workspace venv
options:
  workspace: {description: The workspace; the venv is <workspace>/env., type: str, required: true}
  lock: {description: The lock file on the host., type: path, required: true}
  lock_sha256: {description: The lock's pinned sha256., type: str, required: true}
  python: {description: The interpreter the environment is built for., type: str, default: python3}
  cache_dir: {description: The cache folder on the host., type: str, default: ~/.deepops/envs}
  installer: {description: auto (uv where found, else pip), pip, uv or a path to uv., type: str, default: auto}
  pip_cache: {description: pip's (and uv's) download cache; empty - their default., type: str, default: ""}
  max_age_seconds: {description: Prune entries unused this long (0 - never)., type: float, default: 2592000}
  max_size_gb: {description: Prune least recently used entries beyond this size (0 - none)., type: float, default: 50}
  verify: {description: quick (size and mtime of every file) or deep (also sha256)., type: str, default: quick}
"""


def main():
    module = AnsibleModule(
        argument_spec={
            "workspace": {"type": "str", "required": True},
            "lock": {"type": "path", "required": True},
            "lock_sha256": {"type": "str", "required": True},
            "python": {"type": "str", "default": "python3"},
            "cache_dir": {"type": "str", "default": "~/.deepops/envs"},
            "installer": {"type": "str", "default": "auto"},
            "pip_cache": {"type": "str", "default": ""},
            "max_age_seconds": {"type": "float", "default": 2592000},
            "max_size_gb": {"type": "float", "default": 50},
            "verify": {"type": "str", "default": "quick", "choices": ["quick", "deep"]},
        },
    )
    p = module.params
    cache = {k: p[k] for k in ("installer", "pip_cache", "max_age_seconds", "max_size_gb", "verify")}
    cache["dir"] = p["cache_dir"]
    try:
        with open(p["lock"], "rb") as f:
            lock_text = f.read().decode()
        manifest, info = pinned_env(p["workspace"], lock_text, p["lock_sha256"], p["python"], cache)
    except (EnvError, OSError) as exc:
        module.fail_json(msg=str(exc))
    module.exit_json(changed=info["built"] or bool(info["attached"]), manifest=manifest, env=info)


if __name__ == "__main__":
    main()
