"""Print what an environment really contains, as JSON: the machine's manifest."""

import json
import os
import platform
import sys
from importlib import metadata

packages = {}
for dist in metadata.distributions():
    name = dist.metadata["Name"]
    if name:
        packages[name.lower()] = dist.version

manifest = {
    "python": platform.python_version(),
    "implementation": platform.python_implementation(),
    "platform": platform.platform(),
    "executable": sys.executable,
    "packages": dict(sorted(packages.items())),
    "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
}
if "torch" in packages:
    try:
        import torch

        manifest["torch"] = {
            "version": torch.__version__,
            "cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(),
        }
    except Exception as exc:  # the manifest reports, it does not judge
        manifest["torch"] = {"error": str(exc)}
print(json.dumps(manifest))
