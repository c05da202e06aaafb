"""Errors the CLI turns into one line on stderr.

`UserError` is bad input or a refused request: exit status 2, nothing was changed.
`OperationError` is a failure while acting (a play failed, a host is unreachable): exit status 1.
"""


class DeepopsError(Exception):
    exit_code = 1


class UserError(DeepopsError):
    """The request is wrong or not allowed; raised before any side effect."""

    exit_code = 2


class PolicyError(UserError):
    """The request breaks a policy rule set by IT; the message names the rule."""


class CapacityError(UserError):
    """No target has room for the request right now (nothing was written)."""


class ConflictError(UserError):
    """The request cannot be done in the present state of things (a file managed elsewhere, ...)."""


class NotFoundError(UserError):
    """A machine, host or image named on the command line does not exist."""


class OperationError(DeepopsError):
    """Something failed while acting on real resources."""
