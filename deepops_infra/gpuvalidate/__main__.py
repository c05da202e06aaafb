"""`python -m deepops_infra.gpuvalidate [--config JSON]`: run the probe here;
`--write-payload PATH`: write the one-file script that is shipped to machines."""

import sys


def main() -> int:
    if sys.argv[1:2] == ["--write-payload"] and len(sys.argv) == 3:
        from pathlib import Path

        from deepops_infra.gpuvalidate.runner import payload

        Path(sys.argv[2]).write_text(payload())
        return 0
    from deepops_infra.gpuvalidate.probe import main as probe_main

    return probe_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
