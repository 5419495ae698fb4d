"""`--parallel` strings: what they mean, and the errors a user can act on."""

from __future__ import annotations

import pytest
import torch

from nnmem.errors import UsageError
from nnmem.parallel.mesh import coordinates, rank_of
from nnmem.parallel.spec import Backend, DataParallel, parse_parallel


def test_a_data_parallel_strategy_takes_the_world_size() -> None:
    spec = parse_parallel("ddp", world_size=8)
    assert (spec.data, spec.data_degree, spec.world_size) == (DataParallel.DDP, 8, 8)


def test_combinations_multiply_into_the_world_size() -> None:
    spec = parse_parallel("fsdp=8,tp=2")
    assert (spec.data, spec.data_degree, spec.tensor, spec.world_size) == (DataParallel.FSDP, 8, 2, 16)
    assert parse_parallel("fsdp,tp=2", world_size=16).data_degree == 16 // 2


def test_zero_stages_and_options() -> None:
    assert parse_parallel("zero1", 4).data is DataParallel.ZERO1
    zero2 = parse_parallel("zero2", 4)
    assert zero2.data is DataParallel.FSDP and not zero2.reshard_after_forward
    zero3 = parse_parallel("zero3", 4)
    assert zero3.data is DataParallel.FSDP and zero3.reshard_after_forward
    ddp = parse_parallel("ddp,bucket-view,bucket=10", 2)
    assert ddp.bucket_view and ddp.bucket_mib == 10
    fsdp = parse_parallel("fsdp,mp=bf16,reduce=fp32,backend=gloo", 2)
    assert (fsdp.param_dtype, fsdp.reduce_dtype, fsdp.backend) == (
        torch.bfloat16,
        torch.float32,
        Backend.GLOO,
    )
    assert parse_parallel("tp=2").world_size == 2


@pytest.mark.parametrize(
    ("text", "world_size", "message"),
    [
        ("fdsp", 2, "did you mean 'fsdp'"),
        ("ddp,bucket-veiw", 2, "did you mean 'bucket-view'"),
        ("ddp", None, "--world-size"),
        ("tp", 2, "say the degree"),
        ("fsdp=3", 2, "uses 3 ranks"),
        ("tp=2", 4, "names no data-parallel strategy"),
        ("fsdp,tp=3", 8, "not a multiple"),
        ("ddp,fsdp", 2, "not two"),
        ("fsdp=0", None, "at least 1"),
        ("fsdp,bucket-view", 2, "option of ddp"),
        ("ddp,backend=mpi", 2, "unknown backend"),
        ("", 2, "empty"),
    ],
)
def test_bad_specs_say_what_to_write(text: str, world_size: int | None, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_parallel(text, world_size)


def test_ranks_are_laid_out_tensor_parallel_innermost() -> None:
    spec = parse_parallel("fsdp=4,tp=2")
    places = [coordinates(spec, rank) for rank in range(spec.world_size)]
    assert [(c.data, c.tensor) for c in places[:4]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [rank_of(spec, c.stage, c.data, c.tensor) for c in places] == list(range(spec.world_size))
