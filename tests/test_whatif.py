"""The what-if over batch sizes: which inputs change, which sizes by default, bad lists."""

from __future__ import annotations

import pytest
import torch

from nnmem.analyses.whatif import batch_of, default_batches, parse_batches, with_batch
from nnmem.errors import UsageError
from nnmem.frontends.spec import load_spec


def meta(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device="meta")


def test_every_input_with_the_batch_size_gets_the_new_one() -> None:
    inputs = {"ids": meta(4, 128, dtype=torch.int64), "mask": meta(128, 128), "extra": (meta(4, 3),)}
    changed = with_batch(inputs, 16)
    assert changed["ids"].shape == (16, 128) and changed["ids"].dtype == torch.int64
    assert changed["mask"].shape == (128, 128)  # not a batch dimension: left as it is
    assert changed["extra"][0].shape == (16, 3)


def test_a_spec_input_matches_the_specs_own_shape_rule() -> None:
    spec = load_spec("input 50x50x3 / conv 3x3 8")
    assert with_batch(meta(*spec.input_shape(1)), 32).shape == spec.input_shape(32) == (32, 3, 50, 50)


def test_default_sizes_and_parsing() -> None:
    assert default_batches(8) == (4, 8, 16, 32)
    assert default_batches(1) == (1, 2, 4, 8)
    assert parse_batches("32, 1,8,8") == (1, 8, 32)
    assert batch_of((meta(6, 2), meta(3))) == 6
    with pytest.raises(UsageError, match="integers joined by commas"):
        parse_batches("1,eight")
    with pytest.raises(UsageError, match="at least 1"):
        parse_batches("0,4")
    with pytest.raises(UsageError, match="0-dimensional"):
        with_batch(meta(), 2)
