"""A fast subset of the fidelity benchmark: estimate against a real measured run.

Each case runs the same step twice: on fake tensors (`nnmem.estimate`) and for real in a
fresh process under torch.profiler (`nnmem.measure`). The trace engine's promise for
models whose kernels allocate nothing hidden is 0.1 %.
"""

from __future__ import annotations

import os
import sys

import pytest

import nnmem

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench", "fidelity"))

from cases import CASES, Case  # noqa: E402

FAST = [case for case in CASES if case.fast]


@pytest.mark.parametrize("case", FAST, ids=[case.name for case in FAST])
def test_estimate_matches_the_measured_peak(case: Case) -> None:
    inputs = case.inputs()
    guess = nnmem.estimate(case.model, inputs, device="cpu", threads=2, **case.keywords())
    truth = nnmem.measure(case.model, inputs, threads=2, **case.keywords())
    assert abs(guess.peak_bytes - truth.peak_bytes) <= 0.001 * truth.peak_bytes
    if truth.first_step is not None:
        assert guess.first_step is not None
        assert abs(guess.first_step.bytes - truth.first_step.bytes) <= 0.001 * truth.first_step.bytes
    # the categories a real run can size from its tensors agree exactly
    for category in ("parameter", "buffer", "input", "optimizer_state"):
        if truth.categories[category]:
            assert guess.categories[category] == pytest.approx(truth.categories[category], abs=64)
