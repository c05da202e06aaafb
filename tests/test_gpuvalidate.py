"""The GPU validation's logic, proven on the CPU: spec lookup, inventory against the order,
thresholds, the whole probe with tiny sizes, the all-reduce through spawned gloo ranks, and the
one-file script that is shipped to machines."""

import json
import subprocess
import sys

import pytest

from deepops_infra.errors import OperationError
from deepops_infra.gpuvalidate import probe
from deepops_infra.gpuvalidate.runner import expectations, parse_result, payload
from deepops_infra.gpuvalidate.specs import SPECS, THRESHOLDS, spec_key

torch = pytest.importorskip("torch")


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("NVIDIA H100 80GB HBM3", "H100-SXM"),
        ("NVIDIA H100 PCIe", "H100-PCIE"),
        ("NVIDIA H100 NVL", "H100-NVL"),
        ("NVIDIA H200", "H200-SXM"),
        ("NVIDIA H200 NVL", "H200-NVL"),
        ("NVIDIA A100-SXM4-80GB", "A100-SXM4-80GB"),
        ("NVIDIA A100-SXM4-40GB", "A100-SXM4-40GB"),
        ("NVIDIA A100 80GB PCIe", "A100-PCIE-80GB"),
        ("NVIDIA A100-PCIE-40GB", "A100-PCIE-40GB"),
        ("NVIDIA L40S", "L40S"),
        ("NVIDIA L40", "L40"),
        ("NVIDIA L4", "L4"),
        ("NVIDIA A10", "A10"),
        ("NVIDIA A10G", None),  # AWS's variant: no NVIDIA datasheet, so not judged
        ("Tesla T4", "T4"),
        ("Tesla V100-SXM2-32GB", "V100-SXM2"),
        ("NVIDIA GH200 480GB", None),  # "H200" inside "GH200" is not an H200
        ("NVIDIA B200", None),
    ],
)
def test_spec_lookup_by_device_name(name, key):
    assert spec_key(name) == key


def test_spec_table_is_dense_datasheet_figures():
    # Hopper SXM: 1,979 TFLOPS bf16 and 989 TFLOPS tf32 *with sparsity* in the datasheet: dense is half.
    assert SPECS["H100-SXM"]["bf16_tflops"] == pytest.approx(1979 / 2, abs=0.5)
    assert SPECS["H100-SXM"]["tf32_tflops"] == pytest.approx(989 / 2, abs=0.5)
    assert SPECS["H200-SXM"]["hbm_gbps"] == 4800.0 and SPECS["H100-SXM"]["hbm_gbps"] == 3350.0
    assert SPECS["A100-SXM4-80GB"]["bf16_tflops"] == 312.0 and SPECS["A100-SXM4-80GB"]["hbm_gbps"] == 2039.0
    for key, spec in SPECS.items():
        assert spec["source"].startswith("NVIDIA "), key
        assert spec["hbm_gbps"] > 0 and spec["host_link_gbps"] > 0, key
    figures = {"bf16_tflops", "fp16_tflops", "tf32_tflops", "hbm_gbps", "host_link_gbps", "interconnect_gbps"}
    assert set(THRESHOLDS) == figures


H100 = {"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_gib": 79.1, "spec": "H100-SXM"}


@pytest.mark.parametrize(
    ("expect", "found", "passed", "detail"),
    [
        (
            {"count": 2, "model": "H100", "marker": "H100"},
            [H100, {**H100, "index": 1}],
            True,
            "ordered 2 x H100, found 0: NVIDIA H100 80GB HBM3 (79.1 GiB), 1: NVIDIA H100 80GB HBM3 (79.1 GiB)",
        ),
        (
            {"count": 2, "model": "H100", "marker": "H100"},
            [H100],
            False,
            "ordered 2 x H100, found 0: NVIDIA H100 80GB HBM3 (79.1 GiB); 1 found",
        ),
        (
            {"count": 1, "model": "A100-80GB", "marker": "A100", "memory_gb": 80},
            [{"index": 0, "name": "NVIDIA A100-SXM4-40GB", "memory_gib": 39.4, "spec": "A100-SXM4-40GB"}],
            False,
            "ordered 1 x A100-80GB, found 0: NVIDIA A100-SXM4-40GB (39.4 GiB); not 80 GB: [0]",
        ),
        (
            {"count": 1, "model": "A10", "marker": "A10", "memory_gb": 24},
            [{"index": 0, "name": "NVIDIA A100-SXM4-80GB", "memory_gib": 79.1, "spec": "A100-SXM4-80GB"}],
            False,
            "ordered 1 x A10, found 0: NVIDIA A100-SXM4-80GB (79.1 GiB); not A10: [0]; not 24 GB: [0]",
        ),
        ({"count": 1, "model": "H100", "marker": "H100"}, [], False, "ordered 1 x H100, found none; 0 found"),
    ],
)
def test_inventory_against_the_order(expect, found, passed, detail):
    result = probe.check_inventory(expect, found)
    assert result == {"name": "gpu inventory", "passed": passed, "detail": detail}


def test_thresholds_applied_to_each_figure():
    spec = SPECS["H100-SXM"]
    # 989.4 x 0.6 = 593.64 TFLOPS is the line.
    at = probe.judge("gpu0 bf16 matmul", "bf16_tflops", 593.7, spec, THRESHOLDS)
    below = probe.judge("gpu0 bf16 matmul", "bf16_tflops", 593.6, spec, THRESHOLDS)
    assert at["passed"] is True and below["passed"] is False
    assert at["ratio"] == pytest.approx(593.7 / 989.4, abs=1e-4) and at["threshold"] == 0.6
    assert below["detail"] == (
        "593.60 TFLOPS = 60% of 989.4 TFLOPS (below the 60% threshold; "
        "NVIDIA H100 Tensor Core GPU datasheet, H100 SXM column)"
    )
    # 3350 GB/s x 0.75 = 2512.5 GB/s for the memory bandwidth.
    assert probe.judge("m", "hbm_gbps", 2512.5, spec, THRESHOLDS)["passed"] is True
    assert probe.judge("m", "hbm_gbps", 2512.4, spec, THRESHOLDS)["passed"] is False
    # A stricter threshold from the configuration wins.
    assert probe.judge("m", "hbm_gbps", 2900, spec, {**THRESHOLDS, "hbm_gbps": 0.9})["passed"] is False
    # No spec (or no such figure in it, e.g. bf16 on a T4): reported, not judged.
    t4 = probe.judge("gpu0 bf16 matmul", "bf16_tflops", 10.0, SPECS["T4"], THRESHOLDS)
    assert t4["passed"] is True and t4["judged"] is False and "no bf16_tflops specification" in t4["detail"]


def test_probe_on_cpu_passes_an_order_for_no_gpu():
    result = probe.run({"expect": {"count": 0}})
    assert result["passed"] is True and result["device"] == "cpu" and result["gpus"] == []
    names = [c["name"] for c in result["checks"]]
    assert names == [
        "gpu inventory",
        "cpu bf16 matmul",
        "cpu fp16 matmul",
        "cpu tf32 matmul",
        "cpu memory bandwidth",
        "cpu host-device bandwidth",
    ]
    figures = result["figures"]["cpu"]
    for figure in ("bf16_tflops", "fp16_tflops", "tf32_tflops", "hbm_gbps", "host_link_gbps"):
        assert figures[figure] > 0
    assert all(c.get("judged") is False for c in result["checks"][1:])
    assert result["sizes"]["matmul_n"] == [64]


def test_probe_on_cpu_detects_a_missing_gpu_and_applies_a_spec():
    spec = {"bf16_tflops": 1e6, "hbm_gbps": 1e-6, "source": "a spec no CPU reaches for matmul"}
    result = probe.run({"expect": {"count": 1, "model": "H100", "marker": "H100"}, "spec": spec})
    assert result["passed"] is False
    checks = {c["name"]: c for c in result["checks"]}
    assert checks["gpu inventory"]["passed"] is False and checks["gpu inventory"]["detail"].endswith("; 0 found")
    assert checks["cpu bf16 matmul"]["passed"] is False and checks["cpu bf16 matmul"]["judged"] is True
    assert checks["cpu memory bandwidth"]["passed"] is True and checks["cpu memory bandwidth"]["ratio"] > 1
    assert checks["cpu fp16 matmul"]["judged"] is False  # the given spec names no fp16 figure


def test_all_reduce_through_spawned_gloo_ranks():
    busbw, extra = probe.allreduce_busbw(2, "gloo", probe.SIZES["cpu"], timeout=120)
    assert busbw > 0
    assert extra["correct"] is True and extra["world"] == 2 and extra["backend"] == "gloo"
    # bus bandwidth = algorithm bandwidth x 2(n-1)/n: equal for two ranks.
    assert busbw == pytest.approx(extra["algbw_gbps"], rel=0.01)


def test_probe_main_exit_codes(capsys):
    assert probe.main(["--config", '{"expect": {"count": 0}}']) == 0
    assert json.loads(capsys.readouterr().out)["passed"] is True
    assert probe.main(["--config", '{"expect": {"count": 4}}']) == 1
    assert json.loads(capsys.readouterr().out)["passed"] is False
    assert probe.main(["--config", "[1, 2]"]) == 2
    assert "bad configuration" in capsys.readouterr().err


def test_shipped_script_runs_without_the_package(tmp_path):
    """The payload is self-contained: with deepops_infra unimportable it still validates, and its
    all-reduce ranks re-import it from a file named as the launcher names it (mktemp, no .py)."""
    script = tmp_path / "deepops-gpuvalidate.Ab12Cd"
    script.write_text(payload())
    blocker = "import sys, runpy; sys.modules['deepops_infra'] = None; sys.argv = sys.argv[1:]; "
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            blocker + "runpy.run_path(sys.argv[0], run_name='__main__')",
            str(script),
            "--config",
            json.dumps({"expect": {"count": 0}, "allreduce_world": 2}),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["passed"] is True and result["checks"][0]["name"] == "gpu inventory"
    assert result["figures"]["allreduce"]["correct"] is True and result["figures"]["allreduce"]["world"] == 2


def test_parse_result_needs_the_json():
    good = json.dumps({"passed": True, "checks": []})
    assert parse_result("noise\n" + good + "\n", "", 0) == {"passed": True, "checks": []}
    with pytest.raises(OperationError) as info:
        parse_result("", "Traceback ...\nModuleNotFoundError: No module named 'torch'\n", 1)
    assert str(info.value) == (
        "the GPU validation printed no result (exit 1): Traceback ... ModuleNotFoundError: No module named 'torch'"
    )


class _Machine:
    def __init__(self, gpu_count, accelerator):
        self.gpu_count, self.accelerator = gpu_count, accelerator


def test_expectations_from_the_order_and_image():
    from deepops_infra.images import get_image

    assert expectations(_Machine(8, "A100-80GB"), get_image("pytorch")) == {
        "count": 8,
        "model": "A100-80GB",
        "marker": "A100",
        "memory_gb": 80,
        "cuda": "13.0",
    }
    assert expectations(_Machine(0, None), get_image("cpu-minimal")) == {"count": 0}
