"""The GPU models a request may name, and how detected devices map onto them.

Memory sizes are NVIDIA's published figures (product datasheets). A request names a model
(`A100`) or a model with its memory (`A100-80GB`); a detected device matches when its
`nvidia-smi` name contains the model's marker and, for a sized model, its memory agrees.
"""

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Accelerator:
    name: str
    marker: str  # substring of the `nvidia-smi --query-gpu=name` output
    memory_gb: int | None = None  # None: any memory size of that model


ACCELERATORS: dict[str, Accelerator] = {
    a.name: a
    for a in [
        Accelerator("B200", "B200", 180),
        Accelerator("H200", "H200", 141),
        Accelerator("H100", "H100"),
        Accelerator("H100-80GB", "H100", 80),
        Accelerator("GH200", "GH200", 96),
        Accelerator("A100", "A100"),
        Accelerator("A100-40GB", "A100", 40),
        Accelerator("A100-80GB", "A100", 80),
        Accelerator("L40S", "L40S", 48),
        Accelerator("L40", "L40", 48),
        Accelerator("L4", "L4", 24),
        Accelerator("A10G", "A10G", 24),
        Accelerator("A10", "A10", 24),
        Accelerator("A40", "A40", 48),
        Accelerator("RTX6000", "RTX 6000"),
        Accelerator("T4", "T4", 16),
        Accelerator("V100", "V100"),
        Accelerator("P100", "P100", 16),
        Accelerator("MI300X", "MI300X", 192),
    ]
}


def _has_sizes(acc: Accelerator) -> bool:
    """Whether the model comes in several memory sizes (A100 40/80 GB), so a size must be confirmed."""
    return any(other.marker == acc.marker and other.name != acc.name for other in ACCELERATORS.values())


def canonical_model(text: str) -> str | None:
    """The canonical name for `a100`, `A100-80gb`, `h100`; None when unknown."""
    key = text.strip().upper().replace("_", "-")
    return key if key in ACCELERATORS else None


def device_matches(model: str, device_name: str, memory_mib: int | None) -> bool:
    """Whether a detected device (`NVIDIA A100-SXM4-80GB`, 81920 MiB) is of the requested model."""
    acc = ACCELERATORS[model]
    # A marker must stand as its own token: "A10" is not "A100", "H200" is not "GH200".
    if not re.search(rf"(?<![A-Z0-9]){re.escape(acc.marker.upper())}(?![A-Z0-9])", device_name.upper()):
        return False
    if acc.memory_gb is None:
        return True
    if memory_mib is None and not _has_sizes(acc):
        return True  # one size only (T4, L4, H200): the name is enough
    if memory_mib is None:
        # No reading: only a size written in the name ("A100-SXM4-80GB") can confirm a sized model.
        sized = re.search(r"(\d+)\s*GB", device_name.upper())
        return sized is not None and int(sized.group(1)) == acc.memory_gb
    return abs(memory_mib / 1024 - acc.memory_gb) <= acc.memory_gb * 0.1


def model_of(device_name: str, memory_mib: int | None) -> str | None:
    """The most specific known model a detected device belongs to."""
    sized = [a for a in ACCELERATORS.values() if a.memory_gb is not None]
    for acc in sized + [a for a in ACCELERATORS.values() if a.memory_gb is None]:
        if device_matches(acc.name, device_name, memory_mib):
            return acc.name
    return None


def model_allows(allowed: str, model: str) -> bool:
    """A policy naming `A100` allows every A100 (`A100-40GB`, `A100-80GB`); `A100-80GB` only that one."""
    return model == allowed or model.startswith(allowed + "-")
