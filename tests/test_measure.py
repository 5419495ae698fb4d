"""nnmem.measure: the real run, its categories, and its errors."""

from __future__ import annotations

import pytest
import torch

import nnmem
from nnmem import zoo
from nnmem.errors import MeasureError, UsageError

FP32 = 4
MLP_PARAMS = 784 * 2048 + 2048 + 2048 * 2048 + 2048 + 2048 * 10 + 10  # zoo.mlp's three Linear layers


def test_measured_categories_come_from_the_real_tensors() -> None:
    report = nnmem.measure(zoo.mlp, torch.randn(8, 784), optimizer="momentum")
    assert report.source == "measure"
    assert report.parameters == MLP_PARAMS
    assert report.categories.parameter == MLP_PARAMS * FP32
    assert report.categories.input == 8 * 784 * FP32
    assert report.categories.optimizer_state == MLP_PARAMS * FP32  # one momentum buffer each
    # the peak is at least the model, its gradients and the momentum buffers
    assert report.peak_bytes >= 3 * MLP_PARAMS * FP32


def test_meta_inputs_are_filled_in() -> None:
    report = nnmem.measure(zoo.mlp, torch.empty(8, 784, device="meta"), mode="inference")
    assert report.categories.input == 8 * 784 * FP32


def test_a_model_that_cannot_travel_to_the_subprocess_says_how_to_fix_it() -> None:
    with pytest.raises(MeasureError, match="importable module"):
        nnmem.measure(lambda: torch.nn.Linear(4, 4), torch.randn(2, 4))


def test_a_failing_real_run_is_reported() -> None:
    with pytest.raises(MeasureError, match="mat1 and mat2|shapes cannot be multiplied"):
        nnmem.measure(zoo.mlp, torch.randn(8, 783), mode="inference")


def test_cuda_measurement_needs_a_gpu() -> None:
    with pytest.raises(UsageError, match="CUDA GPU"):
        nnmem.measure(zoo.mlp, torch.randn(8, 784), device="cuda")
