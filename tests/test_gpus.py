"""The GPU catalogue: names, cited memory figures, and memory sizes as people write them."""

from __future__ import annotations

import re

import pytest

from nnmem.errors import UsageError
from nnmem.gpus import DEFAULT_CONTEXT_BYTES, Gpu, MemorySource, get_gpu, list_gpus, parse_memory_size

MiB = 1024**2

REQUIRED = [
    "t4",
    "rtx-3090",
    "rtx-4090",
    "l4",
    "l40s",
    "a10g",
    "a100-40gb",
    "a100-80gb",
    "h100-80gb",
    "h200",
    "b200",
    "mi300x",
]


def test_the_required_gpus_are_listed() -> None:
    names = [gpu.name for gpu in list_gpus()]
    assert sorted(names) == sorted(REQUIRED)


@pytest.mark.parametrize(
    ("gpu", "total"),
    [
        ("t4", 15_843_721_216),  # deviceQuery: 15110 MBytes (15843721216 bytes)
        ("l4", 23_583_784_960),  # deviceQuery: 22491 MBytes (23583784960 bytes)
        ("a100-40gb", 42_298_834_944),  # deviceQuery: 40339 MBytes (42298834944 bytes)
        ("a100-80gb", 81_049 * MiB),  # mixbench: 81049 MB
        ("h100-80gb", 81_121 * MiB),  # vLLM: total_gpu_memory 79.22 GiB = 81121.28 MiB
        ("rtx-3090", 24_125 * MiB),  # vLLM: 23.56 GiB = 24125.44 MiB
        ("b200", 182_630 * MiB),  # 178.35 GiB = 182630.4 MiB
        ("rtx-4090", 24_564 * MiB),  # nvidia-smi 24564MiB
        ("l40s", 46_068 * MiB),  # nvidia-smi 46068MiB
        ("a10g", 23_028 * MiB),  # nvidia-smi 23028MiB
        ("h200", 141 * 1000**3),  # datasheet: 141 GB
        ("mi300x", 206_141_652_992),  # rocm-smi VRAM Total Memory (B)
    ],
)
def test_total_memory_is_the_cited_figure(gpu: str, total: int) -> None:
    assert get_gpu(gpu).total_memory_bytes == total


def test_cuda_reports_less_than_nvidia_smi() -> None:
    # nvidia-smi's totals (modal-labs/modal-client#2797) include memory the driver keeps.
    assert get_gpu("t4").total_memory_bytes < 15_360 * MiB
    assert get_gpu("l4").total_memory_bytes < 23_034 * MiB
    assert get_gpu("a100-40gb").total_memory_bytes < 40_960 * MiB
    assert get_gpu("a100-80gb").total_memory_bytes < 81_920 * MiB
    assert get_gpu("h100-80gb").total_memory_bytes < 81_559 * MiB


@pytest.mark.parametrize("gpu", list_gpus(), ids=lambda gpu: gpu.name)
def test_every_figure_is_sourced_and_near_the_marketed_size(gpu: Gpu) -> None:
    assert gpu.datasheet.startswith("https://")
    assert gpu.total_memory_source is MemorySource.DATASHEET or "https://" in gpu.total_memory_citation
    assert gpu.context_citation
    # A unit slip (GB for GiB, MB for MiB) would show as a gap of 7% or far more.
    marketed = parse_memory_size(" ".join(gpu.marketed.split()[:2]))
    assert abs(gpu.total_memory_bytes / marketed - 1) < 0.1


def test_usable_memory_is_total_less_the_context() -> None:
    t4 = get_gpu("t4")
    assert t4.context_bytes == DEFAULT_CONTEXT_BYTES == 400 * MiB  # ~400 MB, pytorch/pytorch#109888
    assert t4.usable_bytes == 15_843_721_216 - 400 * MiB


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("A100", "a100-80gb"),
        ("a100-80GB", "a100-80gb"),
        ("A100 80GB", "a100-80gb"),
        ("NVIDIA A100-SXM4-80GB", "a100-80gb"),  # torch.cuda.get_device_name()
        ("NVIDIA A100 80GB PCIe", "a100-80gb"),
        ("NVIDIA A100-SXM4-40GB", "a100-40gb"),
        ("Tesla T4", "t4"),
        ("NVIDIA GeForce RTX 3090", "rtx-3090"),
        ("rtx4090", "rtx-4090"),
        ("NVIDIA H100 80GB HBM3", "h100-80gb"),
        ("H100", "h100-80gb"),
        ("nvidia h200", "h200"),
        ("AMD Instinct MI300X", "mi300x"),
        ("MI300X", "mi300x"),
    ],
)
def test_names_and_aliases(name: str, expected: str) -> None:
    assert get_gpu(name).name == expected


def test_no_alias_names_two_gpus() -> None:
    seen: dict[str, str] = {}
    for gpu in list_gpus():
        for alias in (gpu.name, gpu.full_name, *gpu.aliases):
            key = re.sub(r"[^a-z0-9]", "", alias.lower())
            assert seen.setdefault(key, gpu.name) == gpu.name, alias


def test_an_unknown_gpu_suggests_the_nearest_name() -> None:
    with pytest.raises(UsageError, match=r"unknown GPU 'h10' — did you mean 'h100'\?"):
        get_gpu("h10")
    with pytest.raises(UsageError, match="known: t4, "):
        get_gpu("quantum-9000")


@pytest.mark.parametrize(
    ("text", "nbytes"),
    [
        ("24GiB", 24 * 2**30),
        ("24GB", 24 * 10**9),
        ("80 GiB", 80 * 2**30),
        ("24000MiB", 24_000 * 2**20),
        ("512", 512),
        ("512B", 512),
        ("1.5 gib", 3 * 2**29),
        ("2 TB", 2 * 10**12),
        ("64kib", 64 * 1024),
        ("0.5KB", 500),
    ],
)
def test_parse_memory_size(text: str, nbytes: int) -> None:
    assert parse_memory_size(text) == nbytes


@pytest.mark.parametrize("text", ["", "GiB", "24 GiBs", "-1GB", "lots", "1e3GB", "24 G", "24 GiB extra"])
def test_parse_memory_size_rejects_garbage(text: str) -> None:
    with pytest.raises(UsageError, match=r"GB = 10\*\*9 bytes, GiB = 2\*\*30 bytes"):
        parse_memory_size(text)
