"""Locations of the project's own files (roles, images, stacks) in a checkout or a wheel."""

from functools import cache
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


@cache
def project_dir(name: str) -> Path:
    """`roles`, `images` or `stacks`: beside the package in a checkout, bundled in a wheel."""
    for candidate in (_PACKAGE.parent / name, _PACKAGE / "_bundled" / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"the {name}/ folder of deepops-infra is missing from {_PACKAGE.parent}")


def roles_dir() -> Path:
    return project_dir("roles")


def playbook(name: str) -> Path:
    return roles_dir() / "playbooks" / f"{name}.yml"


def images_dir() -> Path:
    return project_dir("images")
