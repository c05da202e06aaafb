"""The tags every cloud resource carries (DESIGN: "Everything is tagged"), and GCP's label form.

`deepops-managed=true` is what the reaper and break-glass terminate key on; `deepops-installation`
scopes discovery to this ledger, so two installations in one account never touch each other's machines.
"""

import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from deepops_infra.ledger.schema import Machine

MANAGED = "deepops-managed"
MACHINE = "deepops-machine"
OWNER = "deepops-owner"
TEAM = "deepops-team"
PROJECT = "deepops-project"
EXPIRES_AT = "deepops-expires-at"
INSTALLATION = "deepops-installation"
ALL = (MANAGED, MACHINE, OWNER, TEAM, PROJECT, EXPIRES_AT, INSTALLATION)

_GCP_BAD = re.compile(r"[^a-z0-9_-]")


def expires_text(at: datetime) -> str:
    """`2026-11-21T14:00:00Z`: UTC, whole seconds."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def machine_tags(machine: "Machine", installation_id: str) -> dict[str, str]:
    """The DESIGN tags of one machine, as cloud tag key -> value."""
    return {
        MANAGED: "true",
        MACHINE: machine.id,
        OWNER: machine.owner,
        TEAM: machine.team,
        PROJECT: machine.project,
        EXPIRES_AT: expires_text(machine.expires_at),
        INSTALLATION: installation_id,
    }


def gcp_label_value(value: str) -> str:
    """GCP labels allow lower-case letters, digits, `_` and `-`, at most 63: `2026-11-21T14:00:00Z`
    becomes `2026-11-21t14-00-00z`; other characters become `_`."""
    return _GCP_BAD.sub(lambda m: "-" if m.group(0) in ":." else "_", value.lower())[:63]


def gcp_labels(tags: dict[str, str]) -> dict[str, str]:
    return {gcp_label_value(k): gcp_label_value(v) for k, v in tags.items()}
