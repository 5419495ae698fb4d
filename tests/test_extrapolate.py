"""Extrapolating over repeated blocks must equal tracing them all."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import nnmem
from nnmem.analyses.extrapolate import ExtrapolationError, estimate_repeated


def llama(layers: int) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=128,
        intermediate_size=344,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=1000,
    )
    return LlamaForCausalLM(config)


IDS = torch.zeros(2, 32, dtype=torch.long, device="meta")
INPUTS = {"input_ids": IDS, "labels": IDS}


@pytest.mark.parametrize(("mode", "optimizer"), [("train", "adamw"), ("inference", "adam"), ("train", "sgd")])
def test_extrapolation_equals_the_full_trace(mode: str, optimizer: str) -> None:
    keywords = {"mode": mode, "optimizer": optimizer, "device": "cpu"}
    full = nnmem.estimate(lambda: llama(7), INPUTS, **keywords)
    guess = estimate_repeated(lambda n: lambda: llama(n), 7, INPUTS, max_probe=5, **keywords)
    assert any("extrapolated" in note for note in guess.notes)
    assert guess.peak_bytes == full.peak_bytes
    assert guess.categories == full.categories
    assert guess.parameters == full.parameters
    if full.first_step is not None:
        assert guess.first_step is not None and guess.first_step.bytes == full.first_step.bytes


def test_blocks_that_are_not_alike_are_refused() -> None:
    def widening(n: int) -> nn.Module:  # block i is i times wider: growth is not affine
        return nn.Sequential(*[nn.Linear(8 * (i + 1), 8 * (i + 2)) for i in range(n)])

    with pytest.raises(ExtrapolationError, match="equal steps"):
        estimate_repeated(
            lambda n: lambda: widening(n), 9, torch.empty(4, 8, device="meta"), max_probe=5, device="cpu"
        )
