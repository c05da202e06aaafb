"""On-machine validation: do the GPUs deliver what was ordered and what their datasheet promises?

Runs ON the machine, in the image's environment (stdlib and torch only). Measures, per GPU:
matmul throughput in bf16, fp16 and tf32; device memory bandwidth (large device-to-device
copies, read + write counted); host-device bandwidth with pinned memory, both directions; and,
with more than one GPU, the all-reduce bus bandwidth through torch.distributed with NCCL in
spawned processes (the nccl-tests convention: algbw x 2(n-1)/n). Each figure is compared with
the device's entry in SPECS and its THRESHOLDS share. Prints one JSON object on stdout; exit 0
when every check passed, 1 when one failed, 2 on a bad configuration.

Without a GPU it runs on the CPU with tiny sizes (gloo instead of NCCL), so the logic can be
proven anywhere; the figures are then not judged unless a spec is given in the configuration.

Shipped to the machine as one script (`payload()` in runner.py prepends specs.py), so it imports
nothing from deepops_infra when it runs there.
"""

import argparse
import json
import math
import platform
import socket
import sys
import time
from datetime import UTC, datetime

try:  # inside the package
    from deepops_infra.gpuvalidate.specs import SPECS, THRESHOLDS, UNITS, _token_in, spec_key
except ImportError:  # shipped as one script: specs.py is prepended and defines these names
    if "SPECS" not in globals():
        raise

# Sizes per device kind. GPU sizes are large enough for steady clocks and to defeat caches
# (a copy of 2 GiB is far beyond the 50-60 MB of L2 on Hopper); CPU sizes only prove the logic.
SIZES = {
    "cuda": {
        "matmul_n": [8192, 16384],
        "matmul_iters": 20,
        "copy_mib": 2048,
        "copy_iters": 20,
        "host_mib": 512,
        "host_iters": 10,
        "allreduce_mib": 512,
        "allreduce_iters": 20,
        "repeats": 3,
    },
    "cpu": {
        "matmul_n": [64],
        "matmul_iters": 2,
        "copy_mib": 1,
        "copy_iters": 2,
        "host_mib": 1,
        "host_iters": 2,
        "allreduce_mib": 1,
        "allreduce_iters": 2,
        "repeats": 2,
    },
}

FIGURES = ("bf16_tflops", "fp16_tflops", "tf32_tflops", "hbm_gbps", "host_link_gbps")


def log(message):
    sys.stderr.write(f"gpuvalidate: {message}\n")
    sys.stderr.flush()


def sig(value):
    """Four significant digits: TFLOPS of a tiny CPU matmul must not round to zero."""
    return float(f"{value:.4g}")


def check(name, passed, detail, **extra):
    return {"name": name, "passed": bool(passed), "detail": detail, **extra}


# -- inventory ------------------------------------------------------------------------------


def devices(torch):
    """The GPUs this process sees (CUDA_VISIBLE_DEVICES applies): index, name, memory, spec."""
    found = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            found.append(
                {
                    "index": index,
                    "name": props.name,
                    "memory_gib": round(props.total_memory / 2**30, 1),
                    "spec": spec_key(props.name),
                }
            )
    return found


def check_inventory(expect, found):
    """The GPUs found against the order: count, model (its name marker) and memory size (+-10%)."""
    count, marker, memory = expect.get("count"), expect.get("marker"), expect.get("memory_gb")
    model = expect.get("model") or marker or "any"
    problems = []
    if count is not None and len(found) != count:
        problems.append(f"{len(found)} found")
    if marker:
        wrong = [d["index"] for d in found if not _token_in(marker, d["name"])]
        if wrong:
            problems.append(f"not {model}: {wrong}")
    if memory:
        off = [d["index"] for d in found if abs(d["memory_gib"] - memory) > 0.1 * memory]
        if off:
            problems.append(f"not {memory} GB: {off}")
    seen = ", ".join(f"{d['index']}: {d['name']} ({d['memory_gib']} GiB)" for d in found) or "none"
    ordered = f"{count if count is not None else 'any'} x {model}"
    detail = f"ordered {ordered}, found {seen}" + (f"; {'; '.join(problems)}" if problems else "")
    return check("gpu inventory", not problems, detail)


# -- measurements ---------------------------------------------------------------------------


def best_seconds(fn, sync, iters, repeats):
    """Seconds per call of the fastest of `repeats` timed batches of `iters` calls, after a warm-up."""
    fn()
    sync()
    best = math.inf
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        sync()
        best = min(best, (time.perf_counter() - start) / iters)
    return best


def matmul_tflops(torch, device, kind, sizes, sync):
    """Dense square GEMM throughput (2 n^3 flops each); the best over the sizes tried."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "tf32": torch.float32}[kind]
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if kind == "tf32" else "highest")
    try:
        best, best_n = 0.0, None
        for n in sizes["matmul_n"]:
            a = torch.randn(n, n, device=device, dtype=dtype)
            b = torch.randn(n, n, device=device, dtype=dtype)
            out = torch.empty(n, n, device=device, dtype=dtype)
            seconds = best_seconds(
                lambda a=a, b=b, out=out: torch.matmul(a, b, out=out), sync, sizes["matmul_iters"], sizes["repeats"]
            )
            tflops = 2 * n**3 / seconds / 1e12
            if tflops > best:
                best, best_n = tflops, n
            del a, b, out
        return best, {"n": best_n}
    finally:
        torch.set_float32_matmul_precision(previous)


def copy_gbps(torch, device, sizes, sync):
    """Device memory bandwidth: bytes read plus bytes written by a large device-to-device copy."""
    numel = sizes["copy_mib"] * 2**20 // 4
    src = torch.empty(numel, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    seconds = best_seconds(lambda: dst.copy_(src), sync, sizes["copy_iters"], sizes["repeats"])
    return 2 * numel * 4 / seconds / 1e9, {"bytes": numel * 4}


def host_gbps(torch, device, sizes, sync):
    """Host-device bandwidth with page-locked host memory; the slower direction is the figure."""
    numel = sizes["host_mib"] * 2**20 // 4
    pinned = device.type == "cuda"
    host = torch.empty(numel, dtype=torch.float32, pin_memory=pinned).fill_(1.0)
    dev = torch.empty(numel, dtype=torch.float32, device=device)
    h2d = best_seconds(lambda: dev.copy_(host, non_blocking=True), sync, sizes["host_iters"], sizes["repeats"])
    d2h = best_seconds(lambda: host.copy_(dev, non_blocking=True), sync, sizes["host_iters"], sizes["repeats"])
    to_dev, to_host = numel * 4 / h2d / 1e9, numel * 4 / d2h / 1e9
    return min(to_dev, to_host), {"h2d_gbps": sig(to_dev), "d2h_gbps": sig(to_host), "pinned": pinned}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _allreduce_worker(rank, world, backend, port, numel, iters, repeats, results):
    """One rank of the all-reduce measurement (module level: spawned processes import it)."""
    import torch
    import torch.distributed as dist

    if backend == "nccl":
        torch.cuda.set_device(rank)
        device = torch.device("cuda", rank)

        def sync():
            torch.cuda.synchronize(device)
    else:
        device = torch.device("cpu")

        def sync():
            return None

    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        data = torch.ones(numel, dtype=torch.float32, device=device)
        best = math.inf
        for _ in range(3):
            dist.all_reduce(data)  # warm-up: NCCL sets up its rings here
        for _ in range(repeats):
            sync()
            dist.barrier()
            start = time.perf_counter()
            for _ in range(iters):
                dist.all_reduce(data)
            sync()
            best = min(best, (time.perf_counter() - start) / iters)
        data.fill_(1.0)
        dist.all_reduce(data)
        sync()
        correct = bool(torch.all(data == world).item())
        took = torch.tensor([best], dtype=torch.float64, device=device)
        dist.all_reduce(took, op=dist.ReduceOp.MAX)  # the slowest rank is the collective's time
        if rank == 0:
            results.put({"seconds": took.item(), "correct": correct})
    finally:
        dist.destroy_process_group()


def allreduce_busbw(world, backend, sizes, timeout=600):
    """All-reduce bus bandwidth (GB/s) over `world` spawned processes, and whether the sum was right."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    results = ctx.SimpleQueue()
    numel = sizes["allreduce_mib"] * 2**20 // 4
    port = _free_port()
    args = (world, backend, port, numel, sizes["allreduce_iters"], sizes["repeats"], results)
    procs = [ctx.Process(target=_allreduce_worker, args=(rank, *args)) for rank in range(world)]
    for proc in procs:
        proc.start()
    deadline = time.monotonic() + timeout
    for proc in procs:
        proc.join(max(1.0, deadline - time.monotonic()))
    for proc in procs:
        if proc.is_alive():
            proc.kill()
            proc.join()
    codes = [proc.exitcode for proc in procs]
    if any(code != 0 for code in codes) or results.empty():
        raise RuntimeError(f"all-reduce ranks exited with {codes}")
    got = results.get()
    algbw = numel * 4 / got["seconds"] / 1e9
    return algbw * 2 * (world - 1) / world, {
        "world": world,
        "backend": backend,
        "bytes": numel * 4,
        "algbw_gbps": sig(algbw),
        "correct": got["correct"],
    }


# -- judging --------------------------------------------------------------------------------


def judge(name, figure, value, spec, thresholds, extra=None):
    """A measured figure against the spec: passes at or above threshold x spec (not judged: no spec)."""
    unit = UNITS[figure]
    base = {"figure": figure, "value": sig(value), "unit": unit, **(extra or {})}
    target = (spec or {}).get(figure)
    if not target:
        why = f"no {figure} specification for this device" if spec else "no specification for this device"
        return check(name, True, f"{value:.2f} {unit} measured; not judged ({why})", judged=False, **base)
    share = thresholds[figure]
    ratio = value / target
    passed = ratio >= share
    detail = (
        f"{value:.2f} {unit} = {ratio:.0%} of {target:g} {unit} "
        f"({'at least' if passed else 'below'} the {share:.0%} threshold; {spec.get('source', 'given spec')})"
    )
    source = spec.get("source")
    return check(name, passed, detail, judged=True, spec=target, ratio=round(ratio, 4), threshold=share, source=source)


# -- the run --------------------------------------------------------------------------------


def run(config):
    started = time.perf_counter()
    import torch

    expect = config.get("expect") or {}
    use_cuda = torch.cuda.is_available() and config.get("device", "auto") != "cpu"
    kind = "cuda" if use_cuda else "cpu"
    sizes = {**SIZES[kind], **(config.get("sizes") or {})}
    if config.get("quick"):
        sizes = {**SIZES["cpu"], **(config.get("sizes") or {})}
    thresholds = {**THRESHOLDS, **(config.get("thresholds") or {})}
    found = devices(torch) if use_cuda else []
    checks = [check_inventory(expect, found)]
    if use_cuda and expect.get("cuda"):
        have = torch.version.cuda or "none"
        checks.append(
            check(
                "cuda runtime",
                have == expect["cuda"] or have.startswith(expect["cuda"] + "."),
                f"torch built for CUDA {have}, image pins {expect['cuda']}",
            )
        )
    targets = [(f"gpu{d['index']}", torch.device("cuda", d["index"]), d) for d in found]
    if not use_cuda:
        targets = [("cpu", torch.device("cpu"), {"index": None, "name": platform.processor() or "cpu", "spec": None})]
    figures = {}
    for label, device, info in targets:
        spec = config.get("spec") or SPECS.get(info["spec"] or "")

        def sync(device=device):
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        if device.type == "cuda":
            torch.cuda.set_device(device)
        measured = {}
        steps = [
            ("bf16 matmul", "bf16_tflops", lambda d=device, s=sync: matmul_tflops(torch, d, "bf16", sizes, s)),
            ("fp16 matmul", "fp16_tflops", lambda d=device, s=sync: matmul_tflops(torch, d, "fp16", sizes, s)),
            ("tf32 matmul", "tf32_tflops", lambda d=device, s=sync: matmul_tflops(torch, d, "tf32", sizes, s)),
            ("memory bandwidth", "hbm_gbps", lambda d=device, s=sync: copy_gbps(torch, d, sizes, s)),
            ("host-device bandwidth", "host_link_gbps", lambda d=device, s=sync: host_gbps(torch, d, sizes, s)),
        ]
        for what, figure, measure in steps:
            name = f"{label} {what}"
            log(f"{name} ...")
            try:
                value, extra = measure()
            except Exception as exc:  # one failed measurement fails its check, the others still run
                checks.append(check(name, False, f"measurement failed: {type(exc).__name__}: {exc}", figure=figure))
                continue
            measured[figure] = sig(value)
            checks.append(judge(name, figure, value, spec, thresholds, extra))
        figures[label] = {"device": info["name"], "spec": info["spec"], **measured}
        if device.type == "cuda":
            torch.cuda.empty_cache()
    world = len(found) if use_cuda else int(config.get("allreduce_world") or 1)
    if world > 1:
        backend = "nccl" if use_cuda else "gloo"
        name = f"all-reduce bus bandwidth ({world} x {backend})"
        log(f"{name} ...")
        spec = config.get("spec") or (SPECS.get(found[0]["spec"] or "") if found else None)
        try:
            value, extra = allreduce_busbw(world, backend, sizes)
        except Exception as exc:
            checks.append(check(name, False, f"measurement failed: {type(exc).__name__}: {exc}"))
        else:
            figures["allreduce"] = {"busbw_gbps": sig(value), **extra}
            checks.append(check("all-reduce result", extra["correct"], f"sum over {world} ranks exact"))
            checks.append(judge(name, "interconnect_gbps", value, spec, thresholds, extra))
    return {
        "version": 1,
        "passed": all(c["passed"] for c in checks),
        "device": kind,
        "hostname": socket.gethostname(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "seconds": round(time.perf_counter() - started, 2),
        "sizes": sizes,
        "thresholds": thresholds,
        "gpus": found,
        "figures": figures,
        "checks": checks,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(prog="gpuvalidate", description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="{}", help="JSON: expect, quick, spec, thresholds, sizes, device")
    parser.add_argument("--config-file", help="the configuration as a JSON file")
    args = parser.parse_args(argv)
    try:
        if args.config_file:
            with open(args.config_file) as handle:
                text = handle.read()
        else:
            text = args.config
        config = json.loads(text)
        if not isinstance(config, dict):
            raise ValueError("the configuration must be a JSON object")
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"gpuvalidate: bad configuration: {exc}\n")
        return 2
    try:
        result = run(config)
    except ImportError as exc:
        result = {"version": 1, "passed": False, "checks": [check("torch", False, f"not importable: {exc}")]}
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
