"""A catalogue of GPUs: the memory a program can really use on each, with where each figure is from.

The figure that matters is `total_memory_bytes`: what CUDA reports as the device's memory
(`cudaGetDeviceProperties().totalGlobalMem`, which is `torch.cuda.get_device_properties().total_memory`
and the total of `torch.cuda.mem_get_info()`). It is less than the marketed size and less than
`nvidia-smi`'s total, which also counts memory the driver keeps (ECC, reserved regions). The CUDA
context then takes `context_bytes` of it before the first tensor; `usable_bytes` is what is left
for the caching allocator.

Each figure says how it was obtained (`MemorySource`): read from a published CUDA report of a real
card, or (less exact) from `nvidia-smi`/`rocm-smi`, or the vendor's datasheet where neither was
found. Sizes in this module are bytes; `parse_memory_size` reads GB as 10**9 bytes and GiB as 2**30.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Final

from nnmem.categories import StrEnum
from nnmem.errors import UsageError, did_you_mean

MiB: Final = 1024**2
GB: Final = 1000**3


class Vendor(StrEnum):
    NVIDIA = "NVIDIA"
    AMD = "AMD"


class MemorySource(StrEnum):
    """How a GPU's `total_memory_bytes` was obtained, best first."""

    CUDA_TOTAL = "cuda_total"  # CUDA's own report on a real card (deviceQuery, torch, cudaMemGetInfo)
    SMI_TOTAL = "smi_total"  # nvidia-smi / rocm-smi total: a few hundred MiB above CUDA's total
    DATASHEET = "datasheet"  # the marketed capacity; not confirmed on a real card


# The CUDA context: "around 400MB if CUDA >= 11.7 is used and lazy module loading enabled (default
# in PyTorch)" (ptrblck, https://github.com/pytorch/pytorch/issues/109888); ~300 MB in
# https://github.com/pytorch/pytorch/issues/107667; over 1000 MB before CUDA 11.7's lazy loading.
# It varies with the GPU, driver and libraries loaded (cuBLAS, cuDNN): measure it where it matters.
DEFAULT_CONTEXT_BYTES: Final = 400 * MiB
_CONTEXT_CITATION: Final = (
    "about 400 MB with CUDA >= 11.7 lazy loading: https://github.com/pytorch/pytorch/issues/109888"
)
_MODAL_SMI: Final = "nvidia-smi totals listed in https://github.com/modal-labs/modal-client/pull/2797"


@dataclass(frozen=True)
class Gpu:
    """One GPU model and the memory a PyTorch program can use on it."""

    name: str  # the catalogue's name, e.g. "a100-80gb"
    full_name: str  # e.g. "NVIDIA A100 80GB"
    vendor: Vendor
    aliases: tuple[str, ...]  # other accepted names, including what torch.cuda.get_device_name() says
    marketed: str  # the datasheet's memory, as written there, e.g. "80 GB HBM2e"
    datasheet: str  # the vendor's page for the marketed figure
    total_memory_bytes: int
    total_memory_source: MemorySource
    total_memory_citation: str  # where the total was read, and what it was
    context_bytes: int = DEFAULT_CONTEXT_BYTES
    context_citation: str = _CONTEXT_CITATION

    @property
    def usable_bytes(self) -> int:
        """Memory left for the caching allocator once the CUDA context is made."""
        return self.total_memory_bytes - self.context_bytes


_CATALOGUE: Final[tuple[Gpu, ...]] = (
    Gpu(
        name="t4",
        full_name="NVIDIA T4",
        vendor=Vendor.NVIDIA,
        aliases=("tesla-t4", "Tesla T4", "nvidia-t4"),
        marketed="16 GB GDDR6",
        datasheet="https://www.nvidia.com/en-us/data-center/tesla-t4/",
        total_memory_bytes=15_843_721_216,
        total_memory_source=MemorySource.CUDA_TOTAL,
        total_memory_citation=(
            "deviceQuery 'Total amount of global memory: 15110 MBytes (15843721216 bytes)',"
            " https://chiemon.github.io/2024/12/25/%E6%98%BE%E5%8D%A1%E4%BF%A1%E6%81%AF.html;"
            f" nvidia-smi says 15360 MiB ({_MODAL_SMI})"
        ),
    ),
    Gpu(
        name="rtx-3090",
        full_name="NVIDIA GeForce RTX 3090",
        vendor=Vendor.NVIDIA,
        aliases=("rtx3090", "3090", "NVIDIA GeForce RTX 3090", "geforce-rtx-3090"),
        marketed="24 GB GDDR6X",
        datasheet="https://www.nvidia.com/en-us/geforce/graphics-cards/30-series/rtx-3090-3090ti/",
        total_memory_bytes=24_125 * MiB,  # 23.56 GiB, to the MiB
        total_memory_source=MemorySource.CUDA_TOTAL,
        total_memory_citation=(
            "vLLM log 'Free memory on device (22.93/23.56 GiB)' (torch.cuda.mem_get_info total, two"
            " decimals), https://github.com/wtdcode/vllm-backport/issues/34; nvidia-smi says 24576 MiB,"
            " https://github.com/noonghunna/club-3090/issues/1127"
        ),
    ),
    Gpu(
        name="rtx-4090",
        full_name="NVIDIA GeForce RTX 4090",
        vendor=Vendor.NVIDIA,
        aliases=("rtx4090", "4090", "NVIDIA GeForce RTX 4090", "geforce-rtx-4090"),
        marketed="24 GB GDDR6X",
        datasheet="https://www.nvidia.com/en-us/geforce/graphics-cards/40-series/rtx-4090/",
        total_memory_bytes=24_564 * MiB,
        total_memory_source=MemorySource.SMI_TOTAL,
        total_memory_citation=(
            "nvidia-smi '23859MiB / 24564MiB', https://github.com/vllm-project/vllm/issues/7553;"
            " CUDA's own total was not found and is a few hundred MiB less"
        ),
    ),
    Gpu(
        name="l4",
        full_name="NVIDIA L4",
        vendor=Vendor.NVIDIA,
        aliases=("nvidia-l4", "NVIDIA L4"),
        marketed="24 GB GDDR6",
        datasheet="https://www.nvidia.com/en-us/data-center/l4/",
        total_memory_bytes=23_583_784_960,
        total_memory_source=MemorySource.CUDA_TOTAL,
        total_memory_citation=(
            "deviceQuery 'Total amount of global memory: 22491 MBytes (23583784960 bytes)',"
            " https://github.com/bottlerocket-os/bottlerocket-kernel-kit/pull/139;"
            f" nvidia-smi says 23034 MiB ({_MODAL_SMI})"
        ),
    ),
    Gpu(
        name="l40s",
        full_name="NVIDIA L40S",
        vendor=Vendor.NVIDIA,
        aliases=("nvidia-l40s", "NVIDIA L40S"),
        marketed="48 GB GDDR6",
        datasheet="https://www.nvidia.com/en-us/data-center/l40s/",
        total_memory_bytes=46_068 * MiB,
        total_memory_source=MemorySource.SMI_TOTAL,
        total_memory_citation=f"nvidia-smi 46068 MiB ({_MODAL_SMI}); CUDA's own total was not found",
    ),
    Gpu(
        name="a10g",
        full_name="NVIDIA A10G",
        vendor=Vendor.NVIDIA,
        aliases=("nvidia-a10g", "NVIDIA A10G"),
        marketed="24 GB GDDR6",
        datasheet="https://aws.amazon.com/ec2/instance-types/g5/",
        total_memory_bytes=23_028 * MiB,
        total_memory_source=MemorySource.SMI_TOTAL,
        total_memory_citation=(
            f"nvidia-smi 23028 MiB, listed as 'A10' among Modal's GPUs ({_MODAL_SMI});"
            " 'A10G reports ~22GB', https://github.com/huggingface/local-gemma/pull/25"
        ),
    ),
    Gpu(
        name="a100-40gb",
        full_name="NVIDIA A100 40GB",
        vendor=Vendor.NVIDIA,
        aliases=("a100-40g", "A100 40GB", "NVIDIA A100-SXM4-40GB", "NVIDIA A100-PCIE-40GB"),
        marketed="40 GB HBM2",
        datasheet="https://www.nvidia.com/en-us/data-center/a100/",
        total_memory_bytes=42_298_834_944,
        total_memory_source=MemorySource.CUDA_TOTAL,
        total_memory_citation=(
            "deviceQuery of an A100-SXM4-40GB 'Total amount of global memory: 40339 MBytes"
            " (42298834944 bytes)', https://github.com/bottlerocket-os/bottlerocket/pull/3873;"
            f" nvidia-smi says 40960 MiB ({_MODAL_SMI})"
        ),
    ),
    Gpu(
        name="a100-80gb",
        full_name="NVIDIA A100 80GB",
        vendor=Vendor.NVIDIA,
        aliases=("a100", "a100-80g", "A100 80GB", "NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe"),
        marketed="80 GB HBM2e",
        datasheet="https://www.nvidia.com/en-us/data-center/a100/",
        total_memory_bytes=81_049 * MiB,
        total_memory_source=MemorySource.CUDA_TOTAL,
        total_memory_citation=(
            "mixbench on an A100 80GB PCIe 'Total global mem: 81049 MB' (MiB, truncated),"
            f" https://github.com/ekondis/mixbench/issues/47; nvidia-smi says 81920 MiB ({_MODAL_SMI})"
        ),
    ),
    Gpu(
        name="h100-80gb",
        full_name="NVIDIA H100 80GB HBM3",
        vendor=Vendor.NVIDIA,
        aliases=("h100", "h100-sxm", "h100-80g", "NVIDIA H100 80GB HBM3"),
        marketed="80 GB HBM3",
        datasheet="https://www.nvidia.com/en-us/data-center/h100/",
        total_memory_bytes=81_121 * MiB,  # 79.22 GiB, to the MiB
        total_memory_source=MemorySource.CUDA_TOTAL,
        total_memory_citation=(
            "vLLM 'total_gpu_memory 79.22GiB' (torch.cuda.mem_get_info total, two decimals),"
            " https://github.com/vllm-project/vllm/pull/10511; nvidia-smi says 81559 MiB,"
            " https://github.com/vllm-project/vllm/issues/55169"
        ),
    ),
    Gpu(
        name="h200",
        full_name="NVIDIA H200",
        vendor=Vendor.NVIDIA,
        aliases=("h200-141gb", "h200-sxm", "NVIDIA H200"),
        marketed="141 GB HBM3e",
        datasheet="https://www.nvidia.com/en-us/data-center/h200/",
        total_memory_bytes=141 * GB,
        total_memory_source=MemorySource.DATASHEET,
        total_memory_citation=(
            "the datasheet's 141 GB (10**9-byte GB); no published CUDA or nvidia-smi total was found"
        ),
    ),
    Gpu(
        name="b200",
        full_name="NVIDIA B200",
        vendor=Vendor.NVIDIA,
        aliases=("b200-180gb", "NVIDIA B200"),
        marketed="180 GB HBM3e",
        datasheet="https://www.nvidia.com/en-us/data-center/dgx-b200/",
        total_memory_bytes=182_630 * MiB,  # 178.35 GiB, to the MiB
        total_memory_source=MemorySource.CUDA_TOTAL,
        total_memory_citation=(
            "a totalGlobalMem query printing 'Total Global Memory: 178.35 GB' (GiB: 178.35e9 bytes would"
            " be below the 180 GB marketed), https://github.com/pytorch/ao/pull/4002"
        ),
    ),
    Gpu(
        name="mi300x",
        full_name="AMD Instinct MI300X",
        vendor=Vendor.AMD,
        aliases=("amd-mi300x", "instinct-mi300x", "AMD Instinct MI300X"),
        marketed="192 GB HBM3",
        datasheet="https://www.amd.com/en/products/accelerators/instinct/mi300/mi300x.html",
        total_memory_bytes=206_141_652_992,
        total_memory_source=MemorySource.SMI_TOTAL,
        total_memory_citation=(
            "rocm-smi 'VRAM Total Memory (B): 206141652992',"
            " https://github.com/ROCm/legacy-rocm-build/issues/4750"
        ),
        context_citation="assumed equal to NVIDIA's (~400 MB); not measured for ROCm",
    ),
)


def _normalized(name: str) -> str:
    """Lower case, letters and digits only: "NVIDIA A100-SXM4-80GB" -> "nvidiaa100sxm480gb"."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


_BY_NAME: Final[dict[str, Gpu]] = {
    _normalized(alias): gpu for gpu in _CATALOGUE for alias in (gpu.name, gpu.full_name, *gpu.aliases)
}
_VENDOR_PREFIXES: Final = ("nvidia", "geforce", "tesla", "amd", "instinct")


def list_gpus() -> tuple[Gpu, ...]:
    """Every GPU in the catalogue, in catalogue order."""
    return _CATALOGUE


def get_gpu(name: str) -> Gpu:
    """The GPU called `name`: its catalogue name, full name, or an alias (case and punctuation free).

    Raises UsageError, with the nearest known name, for a GPU the catalogue does not have.
    """
    key = _normalized(name)
    gpu = _BY_NAME.get(key)
    stripped = key
    while gpu is None and stripped.startswith(_VENDOR_PREFIXES):
        prefix = next(p for p in _VENDOR_PREFIXES if stripped.startswith(p))
        stripped = stripped.removeprefix(prefix)
        gpu = _BY_NAME.get(stripped)
    if gpu is not None:
        return gpu
    names = [g.name for g in _CATALOGUE]
    choices = [*names, *(alias.lower() for g in _CATALOGUE for alias in g.aliases)]
    hint = did_you_mean(name.strip().lower(), choices)
    raise UsageError(
        f"unknown GPU '{name}'{hint} (known: {', '.join(names)}; or give a memory size such as '24GiB')"
    )


_UNITS: Final[dict[str, int]] = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE: Final = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*")


def parse_memory_size(text: str) -> int:
    """Bytes in a size such as "24GiB", "24GB", "80 GiB", "24000MiB" or "512" (bytes).

    Decimal units are powers of 1000 (GB = 10**9 bytes), binary ones powers of 1024
    (GiB = 2**30 bytes), as the SI and IEC define them; case does not matter. A fraction of a
    byte is rounded to the nearest byte.
    """
    match = _SIZE.fullmatch(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise UsageError(
            f"cannot read memory size '{text}': expected a number and a unit such as '24GiB', '80GB'"
            " or '24000MiB' (GB = 10**9 bytes, GiB = 2**30 bytes)"
        )
    return int((Decimal(match.group(1)) * _UNITS[unit]).to_integral_value())


__all__ = [
    "DEFAULT_CONTEXT_BYTES",
    "Gpu",
    "MemorySource",
    "Vendor",
    "get_gpu",
    "list_gpus",
    "parse_memory_size",
]
