"""The machine lifecycle: statuses and the transitions between them (see DESIGN.md)."""

REQUESTED, PROVISIONING, CONFIGURING, VALIDATING = "requested", "provisioning", "configuring", "validating"
READY, IDLE, TERMINATING, TERMINATED, FAILED = "ready", "idle", "terminating", "terminated", "failed"

STATUSES = (REQUESTED, PROVISIONING, CONFIGURING, VALIDATING, READY, IDLE, TERMINATING, TERMINATED, FAILED)

TRANSITIONS: dict[str, frozenset[str]] = {
    REQUESTED: frozenset({PROVISIONING, FAILED}),
    PROVISIONING: frozenset({CONFIGURING, FAILED, TERMINATING}),
    CONFIGURING: frozenset({VALIDATING, FAILED, TERMINATING}),
    VALIDATING: frozenset({READY, FAILED, TERMINATING}),
    # `deepops validate` takes a running machine back through validating: it returns to ready,
    # or ends failed, so "failed" still only ever follows a step before ready.
    READY: frozenset({IDLE, TERMINATING, VALIDATING}),
    IDLE: frozenset({READY, TERMINATING, VALIDATING}),
    TERMINATING: frozenset({TERMINATED}),
    TERMINATED: frozenset(),
    FAILED: frozenset(),  # a failed machine is torn down; the teardown is an event, not a status
}


def can_transition(current: str, target: str) -> bool:
    return target in TRANSITIONS.get(current, frozenset())
