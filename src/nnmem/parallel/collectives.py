"""What collectives cost in memory beyond their inputs and outputs, by backend.

The tracker sees a collective's outputs like any op's (they are tensors the caller
made or the op returned). What it cannot see is a buffer the backend allocates inside
the collective and frees before it returns. NCCL writes straight into the output
(it needs none); gloo copies an all-gather through a flat buffer of the whole
output (`newLikeFlat` in `ProcessGroupGloo.cpp`'s allgather), which lives while the
collective runs. Each collective op is registered once with its rule; the workspace
rule of the trace (`nnmem.analyses.workspace`) answers for every other op.

Known limitations: gloo runs collectives on its own worker threads, overlapping the
caller's work; the flat buffer is counted as a transient at the op that launches the
collective, which is where a synchronous caller (FSDP2 on CPU waits on each
all-gather before copying out) holds it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from nnmem.parallel.spec import Backend
from nnmem.trace.tracker import WorkspaceRule, plain_tensors

#: (args, kwargs, out) -> bytes the backend holds inside the collective
CollectiveRule = Callable[[tuple[Any, ...], dict[str, Any], Any], int]

_GLOO: dict[str, CollectiveRule] = {}
_KNOWN: set[str] = set()


def register_collective(*names: str) -> Callable[[CollectiveRule], CollectiveRule]:
    """Register gloo's extra memory for the collective ops `names` (each only once)."""

    def decorate(rule: CollectiveRule) -> CollectiveRule:
        for name in names:
            if name in _GLOO:
                raise ValueError(f"collective '{name}' is already registered")
            _GLOO[name] = rule
            _KNOWN.add(name)
        return rule

    return decorate


def _nbytes(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return sum(t.numel() * t.element_size() for t in plain_tensors(value))
    if isinstance(value, (list, tuple)):
        return sum(_nbytes(v) for v in value)
    return 0


@register_collective("c10d._allgather_base_.default")
def _allgather_base(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:
    return _nbytes(args[0])  # (output, input, group, ...): a flat copy of the output


@register_collective("c10d.allgather_.default")
def _allgather(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:
    return _nbytes(args[0][0]) if args[0] else 0  # ([outputs of each input], inputs, ...)


@register_collective("c10d._reduce_scatter_base_.default")
def _reduce_scatter_base(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:
    return _nbytes(args[1])  # (output, input, group, ...): a flat copy of the whole input


@register_collective("_c10d_functional.all_gather_into_tensor.default")
def _functional_allgather(args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int:
    return _nbytes(out)


# Collectives that gloo and NCCL run in place, or into the outputs the caller gives:
# nothing beyond what the tracker sees.
for _name in (
    "c10d.allreduce_.default",
    "c10d.allreduce_coalesced_.default",
    "c10d.broadcast_.default",
    "c10d.reduce_scatter_.default",
    "c10d.reduce_scatter_tensor_coalesced_.default",
    "c10d.barrier.default",
    "c10d.send.default",
    "c10d.recv_.default",
    "c10d.recv_any_source_.default",
    "c10d.allgather_into_tensor_coalesced_.default",
    "_c10d_functional.all_reduce.default",
    "_c10d_functional.all_reduce_.default",
    "_c10d_functional.reduce_scatter_tensor.default",
    "_c10d_functional.wait_tensor.default",
    "_c10d_functional.broadcast.default",
    "_c10d_functional.all_to_all_single.default",
    "fsdp.all_gather_copy_in.default",
    "fsdp.split_with_sizes_copy.default",
    "fsdp.chunk_cat.default",
):
    _KNOWN.add(_name)


def collective_rule(base: WorkspaceRule | None, backend: Backend) -> WorkspaceRule:
    """The workspace rule of a parallel trace: collectives by `backend`, other ops by `base`."""

    def rule(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int | None:
        name = str(func)
        if name in _KNOWN:
            gloo = _GLOO.get(name)
            return gloo(args, kwargs, out) if backend is Backend.GLOO and gloo is not None else 0
        if base is None:
            return 0
        return base(func, args, kwargs, out)

    return rule
