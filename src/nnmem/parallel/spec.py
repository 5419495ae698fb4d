"""`--parallel` strings: how a step is spread over ranks, as a frozen value.

A spec is terms joined by commas. A *strategy* names how the model is spread, with an
optional degree after `=`; an *option* tunes a strategy:

    ddp                 data parallel (DistributedDataParallel), degree = the world size
    fsdp=8,tp=2         FSDP2 over 8 ranks times tensor parallel over 2: 16 ranks
    fsdp-no-reshard     FSDP2 keeping parameters unsharded between forward and backward
    zero1               DDP with ZeroRedundancyOptimizer: optimizer state sharded
    zero2               fsdp-no-reshard: FSDP2's equivalent of SHARD_GRAD_OP (ZeRO-2)
    zero3               the same as fsdp
    tp=N, pp=N          tensor parallel (parallelize_module) / pipeline stages

    options: bucket-view (DDP gradient_as_bucket_view), bucket=MiB (DDP bucket_cap_mb),
             mp=bf16 (FSDP parameter dtype), reduce=fp32 (FSDP gradient reduce dtype),
             wrap=block|model (what FSDP shards as one unit), micro=N (pipeline
             micro-batches), schedule=gpipe|1f1b, backend=nccl|gloo (whose collective
             buffers to model)

A data-parallel strategy without a degree takes what the world size leaves after the
tensor and pipeline degrees.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nnmem.categories import StrEnum
from nnmem.errors import UsageError, did_you_mean
from nnmem.options import parse_dtype


class DataParallel(StrEnum):
    """How the data-parallel ranks hold the model."""

    NONE = "none"  # one data-parallel rank
    DDP = "ddp"  # replicated parameters, gradients all-reduced in buckets
    FSDP = "fsdp"  # FSDP2 fully_shard: parameters, gradients and optimizer state sharded
    ZERO1 = "zero1"  # DDP + ZeroRedundancyOptimizer: optimizer state sharded


class Schedule(StrEnum):
    """A pipeline schedule of torch.distributed.pipelining."""

    GPIPE = "gpipe"
    ONE_F_ONE_B = "1f1b"


class Backend(StrEnum):
    """Whose collectives to model: NCCL's work in place, gloo's all-gather adds a flat buffer."""

    NCCL = "nccl"
    GLOO = "gloo"


STRATEGIES = ("ddp", "fsdp", "fsdp-no-reshard", "zero1", "zero2", "zero3", "tp", "pp")
FLAGS = ("bucket-view",)
OPTIONS = ("bucket", "mp", "reduce", "wrap", "micro", "schedule", "backend")
WRAPS = ("block", "model")


@dataclass(frozen=True)
class ParallelSpec:
    """A parsed `--parallel`: the degrees of each kind of parallelism and their options."""

    data: DataParallel = DataParallel.NONE
    data_degree: int = 1
    tensor: int = 1  # tensor-parallel degree
    pipeline: int = 1  # pipeline stages
    reshard_after_forward: bool = True  # FSDP: free unsharded parameters after forward
    bucket_view: bool = False  # DDP: gradients as views of the communication buckets
    bucket_mib: float = 25.0  # DDP bucket_cap_mb
    param_dtype: torch.dtype | None = None  # FSDP mixed precision: unsharded parameter dtype
    reduce_dtype: torch.dtype | None = None  # FSDP mixed precision: gradient reduction dtype
    wrap: str = "block"  # FSDP: shard each block as a unit (and the root), or the model as one
    micro_batches: int = 1  # pipeline micro-batches per step (default with pp=N: N)
    schedule: Schedule = Schedule.ONE_F_ONE_B
    backend: Backend = Backend.NCCL
    text: str = ""  # as the user wrote it

    @property
    def world_size(self) -> int:
        return self.data_degree * self.tensor * self.pipeline

    @property
    def sharded(self) -> bool:
        """Whether FSDP shards parameters, gradients and optimizer state (ZeRO-2 and -3)."""
        return self.data is DataParallel.FSDP

    def describe(self) -> str:
        parts = []
        if self.data is not DataParallel.NONE:
            name = str(self.data)
            if self.data is DataParallel.FSDP and not self.reshard_after_forward:
                name = "fsdp-no-reshard"
            parts.append(f"{name}={self.data_degree}")
        if self.tensor > 1:
            parts.append(f"tp={self.tensor}")
        if self.pipeline > 1:
            parts.append(f"pp={self.pipeline}")
        return ",".join(parts) or "single rank"


def _integer(term: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise UsageError(f"--parallel '{term}': '{value}' is not a whole number") from None
    if number < 1:
        raise UsageError(f"--parallel '{term}': the degree must be at least 1, not {number}")
    return number


def parse_parallel(text: str, world_size: int | None = None) -> ParallelSpec:
    """Read a `--parallel` string; `world_size` fills a data-parallel degree left out.

    Raises `UsageError` naming the bad term, with the nearest valid word.
    """
    terms = [t.strip().lower() for t in text.split(",") if t.strip()]
    if not terms:
        raise UsageError(f"--parallel is empty; use one of {', '.join(STRATEGIES)}")
    if world_size is not None and world_size < 1:
        raise UsageError(f"--world-size must be at least 1, not {world_size}")
    fields: dict[str, object] = {}
    data: DataParallel | None = None
    data_degree: int | None = None
    for term in terms:
        name, _, value = term.partition("=")
        name = name.strip()
        value = value.strip()
        if name in ("ddp", "fsdp", "fsdp-no-reshard", "zero1", "zero2", "zero3"):
            if data is not None:
                raise UsageError(f"--parallel '{text}': give one data-parallel strategy, not two")
            data = {
                "ddp": DataParallel.DDP,
                "fsdp": DataParallel.FSDP,
                "fsdp-no-reshard": DataParallel.FSDP,
                "zero1": DataParallel.ZERO1,
                "zero2": DataParallel.FSDP,
                "zero3": DataParallel.FSDP,
            }[name]
            if name in ("fsdp-no-reshard", "zero2"):
                fields["reshard_after_forward"] = False
            data_degree = _integer(term, value) if value else None
        elif name in ("tp", "pp"):
            if not value:
                raise UsageError(f"--parallel '{term}': say the degree, e.g. {name}=2")
            fields["tensor" if name == "tp" else "pipeline"] = _integer(term, value)
        elif name == "bucket-view":
            fields["bucket_view"] = True
        elif name in OPTIONS:
            if not value:
                raise UsageError(f"--parallel '{term}': the option {name} needs a value ({name}=...)")
            _option(fields, term, name, value)
        else:
            words = (*STRATEGIES, *FLAGS, *OPTIONS)
            raise UsageError(
                f"--parallel: unknown term '{name}'{did_you_mean(name, words)}"
                f" (strategies: {', '.join(STRATEGIES)}; options: {', '.join((*FLAGS, *OPTIONS))})"
            )
    tensor = int(str(fields.get("tensor", 1)))
    pipeline = int(str(fields.get("pipeline", 1)))
    if pipeline > 1:
        micro = int(str(fields.setdefault("micro_batches", pipeline)))  # one micro-batch per stage at least
        if micro < pipeline and fields.get("schedule", Schedule.ONE_F_ONE_B) is Schedule.ONE_F_ONE_B:
            raise UsageError(
                f"--parallel '{text}': 1F1B needs at least as many micro-batches as stages (micro>={pipeline})"
            )
    others = tensor * pipeline
    if data_degree is None:
        if data is None:
            data_degree = 1
        elif world_size is None:
            raise UsageError(f"--parallel '{text}': say how many ranks, with --world-size N or {data}=N")
        elif world_size % others:
            raise UsageError(f"--world-size {world_size} is not a multiple of tp x pp = {others} in '{text}'")
        else:
            data_degree = world_size // others
    if data is None and world_size is not None and world_size > others and world_size % others == 0:
        raise UsageError(
            f"--parallel '{text}' leaves {world_size // others} data-parallel ranks of --world-size"
            f" {world_size} but names no data-parallel strategy; add ddp or fsdp"
        )
    spec = ParallelSpec(
        data=data or DataParallel.NONE,
        data_degree=data_degree,
        text=text,
        **fields,  # type: ignore[arg-type]
    )
    if world_size is not None and spec.world_size != world_size:
        raise UsageError(
            f"--parallel '{text}' uses {spec.world_size} ranks ({spec.describe()}), but --world-size"
            f" is {world_size}"
        )
    if spec.bucket_view and spec.data not in (DataParallel.DDP, DataParallel.ZERO1):
        raise UsageError(f"--parallel '{text}': bucket-view is an option of ddp (and zero1)")
    return spec


def _option(fields: dict[str, object], term: str, name: str, value: str) -> None:
    if name == "bucket":
        try:
            mib = float(value.lower().removesuffix("mib").removesuffix("mb"))
        except ValueError:
            raise UsageError(f"--parallel '{term}': write the bucket size in MiB, e.g. bucket=25") from None
        if mib <= 0:
            raise UsageError(f"--parallel '{term}': the bucket size must be positive")
        fields["bucket_mib"] = mib
    elif name in ("mp", "reduce"):
        dtype = parse_dtype(value, "--parallel dtype")
        fields["param_dtype" if name == "mp" else "reduce_dtype"] = dtype
    elif name == "wrap":
        if value not in WRAPS:
            raise UsageError(f"--parallel '{term}': wrap is block or model{did_you_mean(value, WRAPS)}")
        fields["wrap"] = value
    elif name == "micro":
        fields["micro_batches"] = _integer(term, value)
    elif name == "schedule":
        try:
            fields["schedule"] = Schedule(value)
        except ValueError:
            names = [s.value for s in Schedule]
            raise UsageError(
                f"--parallel '{term}': unknown schedule{did_you_mean(value, names)} (known: {', '.join(names)})"
            ) from None
    elif name == "backend":
        try:
            fields["backend"] = Backend(value)
        except ValueError:
            names = [b.value for b in Backend]
            raise UsageError(
                f"--parallel '{term}': unknown backend{did_you_mean(value, names)} (known: {', '.join(names)})"
            ) from None
