"""SSH access for AWS machines: the shared module (deepops_infra.providers.access), under its old name."""

from deepops_infra.providers.access import forget_key, key_path, make_key, requester_cidr

__all__ = ["forget_key", "key_path", "make_key", "requester_cidr"]
