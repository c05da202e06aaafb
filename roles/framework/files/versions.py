"""Print {package: installed version} as JSON for the packages named on the command line."""

import contextlib
import json
import sys
from importlib import metadata

found = {}
for name in sys.argv[1:]:
    with contextlib.suppress(metadata.PackageNotFoundError):
        found[name] = metadata.version(name)
print(json.dumps(found))
