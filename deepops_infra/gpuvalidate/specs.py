"""What each GPU model is specified to deliver, from NVIDIA's product datasheets.

Dense figures (no structured sparsity): the datasheets print the sparse figure first for
Hopper/Ampere/Ada tensor cores ("1,979 TFLOPS*", * with sparsity), the dense one is half of it.
Bandwidths are in GB/s (10^9 bytes/s). `host_link_gbps` is one direction of the PCIe link
(the datasheets print both directions together: PCIe Gen5 x16 "128 GB/s" is 64 GB/s each way).
`interconnect_gbps` is what one GPU can send at once to its peers: half the NVLink figure of the
datasheet (which adds both directions), or the PCIe link for cards without NVLink. That is the
ceiling of the all-reduce bus bandwidth that nccl-tests reports.

Stdlib only, no imports at all: this file is prepended to probe.py and shipped to the machine.
"""

SPECS = {
    "H100-SXM": {
        "names": ["H100 80GB HBM3", "H100 SXM"],
        "memory_gb": 80,
        "bf16_tflops": 989.4,
        "fp16_tflops": 989.4,
        "tf32_tflops": 494.7,
        "hbm_gbps": 3350.0,
        "host_link_gbps": 64.0,
        "interconnect_gbps": 450.0,
        "source": "NVIDIA H100 Tensor Core GPU datasheet, H100 SXM column",
    },
    "H100-NVL": {
        "names": ["H100 NVL"],
        "memory_gb": 94,
        "bf16_tflops": 835.5,
        "fp16_tflops": 835.5,
        "tf32_tflops": 417.5,
        "hbm_gbps": 3900.0,
        "host_link_gbps": 64.0,
        "interconnect_gbps": 300.0,
        "source": "NVIDIA H100 Tensor Core GPU datasheet, H100 NVL column",
    },
    "H100-PCIE": {
        "names": ["H100 PCIe"],
        "memory_gb": 80,
        "bf16_tflops": 756.5,
        "fp16_tflops": 756.5,
        "tf32_tflops": 378.0,
        "hbm_gbps": 2000.0,
        "host_link_gbps": 64.0,
        "interconnect_gbps": 64.0,
        "source": "NVIDIA H100 Tensor Core GPU datasheet, H100 PCIe column",
    },
    "H200-NVL": {
        "names": ["H200 NVL"],
        "memory_gb": 141,
        "bf16_tflops": 835.5,
        "fp16_tflops": 835.5,
        "tf32_tflops": 417.5,
        "hbm_gbps": 4800.0,
        "host_link_gbps": 64.0,
        "interconnect_gbps": 450.0,
        "source": "NVIDIA H200 Tensor Core GPU datasheet, H200 NVL column",
    },
    "H200-SXM": {
        "names": ["H200"],
        "memory_gb": 141,
        "bf16_tflops": 989.4,
        "fp16_tflops": 989.4,
        "tf32_tflops": 494.7,
        "hbm_gbps": 4800.0,
        "host_link_gbps": 64.0,
        "interconnect_gbps": 450.0,
        "source": "NVIDIA H200 Tensor Core GPU datasheet, H200 SXM column",
    },
    "A100-SXM4-80GB": {
        "names": ["A100-SXM4-80GB", "A100 80GB SXM"],
        "memory_gb": 80,
        "bf16_tflops": 312.0,
        "fp16_tflops": 312.0,
        "tf32_tflops": 156.0,
        "hbm_gbps": 2039.0,
        "host_link_gbps": 32.0,
        "interconnect_gbps": 300.0,
        "source": "NVIDIA A100 Tensor Core GPU datasheet, A100 80GB SXM column",
    },
    "A100-SXM4-40GB": {
        "names": ["A100-SXM4-40GB"],
        "memory_gb": 40,
        "bf16_tflops": 312.0,
        "fp16_tflops": 312.0,
        "tf32_tflops": 156.0,
        "hbm_gbps": 1555.0,
        "host_link_gbps": 32.0,
        "interconnect_gbps": 300.0,
        "source": "NVIDIA A100 Tensor Core GPU datasheet, A100 40GB SXM column",
    },
    "A100-PCIE-80GB": {
        "names": ["A100 80GB PCIe", "A100-PCIE-80GB"],
        "memory_gb": 80,
        "bf16_tflops": 312.0,
        "fp16_tflops": 312.0,
        "tf32_tflops": 156.0,
        "hbm_gbps": 1935.0,
        "host_link_gbps": 32.0,
        "interconnect_gbps": 32.0,
        "source": "NVIDIA A100 Tensor Core GPU datasheet, A100 80GB PCIe column",
    },
    "A100-PCIE-40GB": {
        "names": ["A100-PCIE-40GB", "A100 40GB PCIe"],
        "memory_gb": 40,
        "bf16_tflops": 312.0,
        "fp16_tflops": 312.0,
        "tf32_tflops": 156.0,
        "hbm_gbps": 1555.0,
        "host_link_gbps": 32.0,
        "interconnect_gbps": 32.0,
        "source": "NVIDIA A100 Tensor Core GPU datasheet, A100 40GB PCIe column",
    },
    "L40S": {
        "names": ["L40S"],
        "memory_gb": 48,
        "bf16_tflops": 362.05,
        "fp16_tflops": 362.05,
        "tf32_tflops": 183.0,
        "hbm_gbps": 864.0,
        "host_link_gbps": 32.0,
        "interconnect_gbps": 32.0,
        "source": "NVIDIA L40S GPU datasheet",
    },
    "L40": {
        "names": ["L40"],
        "memory_gb": 48,
        "bf16_tflops": 181.05,
        "fp16_tflops": 181.05,
        "tf32_tflops": 90.5,
        "hbm_gbps": 864.0,
        "host_link_gbps": 32.0,
        "interconnect_gbps": 32.0,
        "source": "NVIDIA L40 GPU datasheet",
    },
    "L4": {
        "names": ["L4"],
        "memory_gb": 24,
        "bf16_tflops": 121.0,
        "fp16_tflops": 121.0,
        "tf32_tflops": 60.0,
        "hbm_gbps": 300.0,
        "host_link_gbps": 32.0,
        "interconnect_gbps": 32.0,
        "source": "NVIDIA L4 Tensor Core GPU datasheet",
    },
    "A40": {
        "names": ["A40"],
        "memory_gb": 48,
        "bf16_tflops": 149.7,
        "fp16_tflops": 149.7,
        "tf32_tflops": 74.8,
        "hbm_gbps": 696.0,
        "host_link_gbps": 32.0,
        "interconnect_gbps": 32.0,
        "source": "NVIDIA A40 datasheet",
    },
    "A10": {
        "names": ["A10"],
        "memory_gb": 24,
        "bf16_tflops": 125.0,
        "fp16_tflops": 125.0,
        "tf32_tflops": 62.5,
        "hbm_gbps": 600.0,
        "host_link_gbps": 32.0,
        "interconnect_gbps": 32.0,
        "source": "NVIDIA A10 Tensor Core GPU datasheet",
    },
    "T4": {
        "names": ["T4"],
        "memory_gb": 16,
        "fp16_tflops": 65.0,
        "hbm_gbps": 320.0,
        "host_link_gbps": 16.0,
        "interconnect_gbps": 16.0,
        "source": "NVIDIA T4 Tensor Core GPU datasheet (no bf16 or tf32 tensor cores)",
    },
    "V100-SXM2": {
        "names": ["V100-SXM2", "V100 SXM2"],
        "memory_gb": None,
        "fp16_tflops": 125.0,
        "hbm_gbps": 900.0,
        "host_link_gbps": 16.0,
        "interconnect_gbps": 150.0,
        "source": "NVIDIA V100 Tensor Core GPU datasheet, V100 SXM2 column (no bf16 or tf32 tensor cores)",
    },
    "V100-PCIE": {
        "names": ["V100-PCIE", "V100 PCIe"],
        "memory_gb": None,
        "fp16_tflops": 112.0,
        "hbm_gbps": 900.0,
        "host_link_gbps": 16.0,
        "interconnect_gbps": 16.0,
        "source": "NVIDIA V100 Tensor Core GPU datasheet, V100 PCIe column (no bf16 or tf32 tensor cores)",
    },
}

# Share of the specification a healthy machine reaches, below which it fails. Sustained GEMMs
# run at 70-80% of the datasheet peak (clocks under power limits), copies at 85-92% of the HBM
# figure, pinned PCIe transfers at 75-85% of the link, NCCL all-reduce at 75-90% of the links.
# The cut-offs sit below those so that only a defective or misconfigured machine fails.
THRESHOLDS = {
    "bf16_tflops": 0.6,
    "fp16_tflops": 0.6,
    "tf32_tflops": 0.6,
    "hbm_gbps": 0.75,
    "host_link_gbps": 0.5,
    "interconnect_gbps": 0.5,
}

UNITS = {
    "bf16_tflops": "TFLOPS",
    "fp16_tflops": "TFLOPS",
    "tf32_tflops": "TFLOPS",
    "hbm_gbps": "GB/s",
    "host_link_gbps": "GB/s",
    "interconnect_gbps": "GB/s",
}


def _token_in(marker, text):
    """`marker` stands as its own token in `text` ("L4" is not in "L40S", "A10" not in "A100")."""
    marker, text = marker.upper(), text.upper()
    start = text.find(marker)
    while start >= 0:
        end = start + len(marker)
        before = text[start - 1] if start else " "
        after = text[end] if end < len(text) else " "
        if not before.isalnum() and not after.isalnum():
            return True
        start = text.find(marker, start + 1)
    return False


def spec_key(device_name):
    """The SPECS entry a device (`NVIDIA H100 80GB HBM3`) belongs to; None when the table has none.

    The most specific name wins: "H200 NVL" before "H200", "L40S" is never "L40"."""
    best, best_len = None, 0
    for key, spec in SPECS.items():
        for name in spec["names"]:
            if _token_in(name, device_name) and len(name) > best_len:
                best, best_len = key, len(name)
    return best
