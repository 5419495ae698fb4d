"""Per-rank memory of a step spread over ranks: DDP, FSDP / ZeRO, tensor and pipeline parallel.

`estimate_parallel` traces one rank at a time on fake tensors under PyTorch's fake
process group; `measure_parallel` runs every rank for real (gloo on 127.0.0.1).
"""

from nnmem.parallel.api import estimate_parallel
from nnmem.parallel.launch import measure_parallel
from nnmem.parallel.report import ParallelReport, RankReport
from nnmem.parallel.spec import ParallelSpec, parse_parallel

__all__ = [
    "ParallelReport",
    "ParallelSpec",
    "RankReport",
    "estimate_parallel",
    "measure_parallel",
    "parse_parallel",
]
