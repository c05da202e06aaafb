"""GPU validation figures against the datasheet: bf16 GEMM TFLOPS and HBM bandwidth (and the rest).

    .venv/bin/python tests/benchmarks/bench_validate.py            # full sizes on the GPUs here
    .venv/bin/python tests/benchmarks/bench_validate.py --quick    # tiny sizes (CPU: proves the path only)
    .venv/bin/python tests/benchmarks/bench_validate.py --json     # the probe's whole result

Prints each measured figure with its specification, the share reached, and the issue's goals:
bf16 dense GEMM at least 75% of 989 TFLOPS on H100/H200, memory bandwidth at least 85% of the
specification. Runs the same probe `deepops validate` ships to machines (deepops_infra/gpuvalidate).
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from deepops_infra.gpuvalidate import probe
from deepops_infra.gpuvalidate.specs import SPECS

GOALS = {"bf16_tflops": 0.75, "hbm_gbps": 0.85}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes")
    parser.add_argument("--json", action="store_true", help="print the probe's JSON result")
    parser.add_argument("--matmul-n", type=int, nargs="*", help="GEMM sizes to try (default: the probe's)")
    args = parser.parse_args()
    config: dict = {"quick": args.quick}
    if args.matmul_n:
        config["sizes"] = {"matmul_n": args.matmul_n}
    result = probe.run(config)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"torch {result['torch']} (CUDA {result['cuda']}), device {result['device']}, {result['seconds']}s")
    if result["device"] != "cuda":
        print("no GPU here: figures below are the CPU's at tiny sizes and prove only the path")
    for label, figures in result["figures"].items():
        if label == "allreduce":
            print(
                f"  all-reduce {figures['world']} x {figures['backend']}: bus {figures['busbw_gbps']} GB/s "
                f"(algorithm {figures['algbw_gbps']} GB/s, {figures['bytes'] // 2**20} MiB, "
                f"correct={figures['correct']})"
            )
            continue
        spec = SPECS.get(figures.get("spec") or "")
        print(f"  {label}: {figures['device']} (spec {figures.get('spec') or 'none'})")
        for figure, unit in (
            ("bf16_tflops", "TFLOPS"),
            ("fp16_tflops", "TFLOPS"),
            ("tf32_tflops", "TFLOPS"),
            ("hbm_gbps", "GB/s"),
            ("host_link_gbps", "GB/s"),
        ):
            value = figures.get(figure)
            if value is None:
                print(f"    {figure:<15} failed")
                continue
            target = (spec or {}).get(figure)
            line = f"    {figure:<15} {value:>10.4g} {unit}"
            if target:
                line += f"  = {value / target:6.1%} of {target:g}"
                if figure in GOALS:
                    goal = GOALS[figure]
                    line += f"  (goal {goal:.0%}: {'met' if value / target >= goal else 'NOT met'})"
            print(line)
    failed = [c for c in result["checks"] if not c["passed"]]
    print(f"validation {'passed' if result['passed'] else 'FAILED'}; {len(failed)} failed checks")
    for check in failed:
        print(f"  ✗ {check['name']}: {check['detail']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
