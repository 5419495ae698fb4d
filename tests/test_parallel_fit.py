"""`nnmem fit --gpus`: the fewest GPUs, and the sharding, on which a step fits."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from nnmem.analyses.fit import Budget
from nnmem.analyses.parallel_fit import SINGLE, fit_gpus, search
from nnmem.categories import Mode, Phase
from nnmem.cli import main
from nnmem.gpus import MiB
from nnmem.parallel.report import ParallelReport, RankReport
from nnmem.report import Breakdown, Peak, Report


def _report(peak: int) -> Report:
    steady = Peak(peak, Phase.BACKWARD, "", "", Breakdown(other=peak), ())
    return Report(peak, Mode.TRAIN, "cuda", "estimate", steady, None, 1)


def _parallel(peak: int, world_size: int) -> ParallelReport:
    ranks = [RankReport(r, 0, r, 0, _report(peak), 0) for r in range(world_size)]
    return ParallelReport.of(ranks, "x", world_size, "nccl", ())


MODEL = 64 * MiB  # what a stub model's step needs on one GPU


def stub(name: str, gpus: int) -> ParallelReport | Report:
    """DDP needs a little more than one GPU; a sharded strategy needs 1/N of it, plus 1 MiB."""
    if gpus == 1:
        return _report(MODEL)
    if name == "ddp":
        return _parallel(MODEL + 2 * MiB, gpus)
    return _parallel(MODEL // gpus + MiB, gpus)


def test_the_fewest_gpus_win_then_the_least_sharding() -> None:
    budget = Budget("stub", 400 * MiB + 20 * MiB, 400 * MiB, 0.0)  # 20 MiB per GPU
    result = search(stub, budget, ("ddp", "zero2", "fsdp"), None, 64)
    assert result.best is not None
    assert (result.best.parallel, result.best.gpus) == ("zero2", 4)  # 64/4 + 1 = 17 MiB <= 20 MiB
    tried = [(c.parallel, c.gpus) for c in result.tried]
    assert tried == [(SINGLE, 1), ("ddp", 2), ("zero2", 2), ("zero2", 4), ("fsdp", 2), ("fsdp", 4)]


def test_one_gpu_that_suffices_ends_the_search() -> None:
    budget = Budget("stub", 400 * MiB + 80 * MiB, 400 * MiB, 0.0)
    result = search(stub, budget, ("ddp", "fsdp"), None, 64)
    assert result.best is not None and (result.best.parallel, result.best.gpus) == (SINGLE, 1)


def test_a_given_number_of_gpus_tries_each_strategy_there() -> None:
    budget = Budget("stub", 400 * MiB + 20 * MiB, 400 * MiB, 0.0)
    result = search(stub, budget, ("ddp", "fsdp"), 8, 64)
    assert [(c.parallel, c.gpus, c.fits) for c in result.tried] == [("ddp", 8, False), ("fsdp", 8, True)]


def tiny_mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(32, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 8))


def test_a_real_search_on_a_small_budget() -> None:
    # one GPU holds 1.5 MiB after the 400 MiB context: the model's Adam step needs ~2 MiB
    result = fit_gpus(
        tiny_mlp(), torch.randn(16, 32), memory=400 * MiB + 3 * MiB // 2, margin=0.0,
        strategies=("ddp", "fsdp"), device="cpu",
    )  # fmt: skip
    assert result.best is not None and result.best.parallel == "fsdp"
    assert result.best.peak_bytes <= result.budget.budget_bytes
    assert not result.tried[0].fits  # one GPU is not enough


def test_cli_fit_gpus(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "fit",
            "--model",
            "nnmem.zoo:mlp",
            "--input",
            "8x784",
            "--gpu",
            "a100-80gb",
            "--gpus",
            "auto",
            "--json",
        ]
    )
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["best"]["gpus"] == 1  # a small MLP fits one A100
