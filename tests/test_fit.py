"""`nnmem fit`: the budget, the search, and that the answer fits while the next size does not."""

from __future__ import annotations

import json
import math

import pytest
import torch

from nnmem.analyses.allocator import AllocatorConfig
from nnmem.analyses.cuda_memory import estimate_with_trace, replay
from nnmem.analyses.fit import Probe, fit, gpu_budget, parse_margin, search_largest
from nnmem.analyses.sized import sized_hf, sized_inputs, sized_spec
from nnmem.cli import main
from nnmem.errors import UsageError
from nnmem.gpus import DEFAULT_CONTEXT_BYTES, get_gpu
from nnmem.report import Report

MiB, GiB = 2**20, 2**30
SPEC = "input 16x16x3 / conv 3x3 8 / relu / fc 10"
TINY_LLAMA = {
    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 4, "vocab_size": 256, "max_position_embeddings": 4096,
}  # fmt: skip


# -- the budget ----------------------------------------------------------------------------------


def test_the_budget_is_the_usable_memory_less_the_margin() -> None:
    budget = gpu_budget("rtx-4090", margin=0.05)
    gpu = get_gpu("rtx-4090")
    assert budget.total_bytes == 24_564 * MiB  # the catalogue's figure
    assert budget.usable_bytes == 24_564 * MiB - gpu.context_bytes  # the CUDA context comes off first
    assert budget.budget_bytes == math.floor((24_564 * MiB - 400 * MiB) * 0.95)


def test_a_memory_size_stands_for_a_gpu() -> None:
    budget = gpu_budget(memory="24GiB", margin="10%")
    assert budget.total_bytes == 24 * GiB and budget.context_bytes == DEFAULT_CONTEXT_BYTES
    assert budget.budget_bytes == math.floor((24 * GiB - DEFAULT_CONTEXT_BYTES) * 0.9)
    assert gpu_budget("a100-80gb", memory="40GB").total_bytes == 40 * 10**9  # a GPU with a cap


@pytest.mark.parametrize(("text", "margin"), [("5%", 0.05), ("0.1", 0.1), ("0", 0.0), (0.2, 0.2)])
def test_margins_read_as_fractions_or_percentages(text: str | float, margin: float) -> None:
    assert parse_margin(text) == pytest.approx(margin)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: parse_margin("120%"), "below 1"),
        (lambda: parse_margin("lots"), "fraction"),
        (lambda: gpu_budget(), "--gpu NAME"),
        (lambda: gpu_budget("a10"), "did you mean"),
        (lambda: gpu_budget(memory="300MiB"), "no more than the CUDA context"),
    ],
)
def test_budget_errors_say_what_to_do(call: object, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        call()  # type: ignore[operator]


# -- the search, on needs with known answers ------------------------------------------------------


def _affine(fixed: int, per: int, limit: int | None = None) -> object:
    """A measure whose need is fixed + per x size (a model that cannot run from `limit` on)."""
    calls: list[int] = []

    def measure(size: int) -> tuple[Probe, Report | None]:
        calls.append(size)
        if limit is not None and size >= limit:
            raise UsageError(f"{size} tokens do not fit the model's positions")
        need = fixed + per * size
        return Probe(size, need <= BUDGET, need, need, need, need), None

    measure.calls = calls  # type: ignore[attr-defined]
    return measure


BUDGET = 10 * GiB


def test_an_affine_need_is_found_in_four_traces() -> None:
    measure = _affine(fixed=500 * MiB, per=37 * MiB)
    largest, probes, notes = search_largest(measure, BUDGET, start=1)  # type: ignore[arg-type]
    assert largest == (BUDGET - 500 * MiB) // (37 * MiB)  # = 263
    need = {p.size: p.need_bytes for p in probes}
    assert need[largest] <= BUDGET < need[largest + 1]  # both traced
    assert len(probes) <= 4 and not notes


def test_a_start_that_does_not_fit_searches_down() -> None:
    measure = _affine(fixed=500 * MiB, per=37 * MiB)
    largest, probes, _ = search_largest(measure, BUDGET, start=1000)  # type: ignore[arg-type]
    assert largest == 263 and {263, 264} <= {p.size for p in probes}


def test_nothing_fits_when_size_one_does_not() -> None:
    largest, probes, _ = search_largest(_affine(11 * GiB, MiB), BUDGET, start=1)  # type: ignore[arg-type]
    assert largest == 0 and [p.size for p in probes] == [1]


def test_a_size_the_model_cannot_take_ends_the_search() -> None:
    largest, probes, notes = search_largest(_affine(0, MiB, limit=2048), BUDGET, start=128)  # type: ignore[arg-type]
    assert largest == 2047  # the need would allow 10240; the positions stop at 2047
    assert probes[-1].reason or any("cannot run" in note for note in notes)


def test_a_need_flat_over_many_sizes_is_still_bracketed() -> None:
    """Samples smaller than the allocator's 2 MiB pages: the need climbs in steps."""

    def measure(size: int) -> tuple[Probe, Report | None]:
        need = 64 * MiB + -(-size * 300 * 1024 // (2 * MiB)) * 2 * MiB  # 300 KiB a sample, in whole pages
        return Probe(size, need <= BUDGET, need), None

    largest, probes, _ = search_largest(measure, BUDGET, start=1)
    expected = max(
        s for s in range(30_000, 40_000) if 64 * MiB + -(-s * 300 * 1024 // (2 * MiB)) * 2 * MiB <= BUDGET
    )
    assert largest == expected
    assert len(probes) <= 16


# -- fit on traced models ---------------------------------------------------------------------------


def _fits_within(model: object, inputs: object, budget: int) -> bool:
    """The independent check: trace this size and replay it under the budget as capacity."""
    _, trace, kernels = estimate_with_trace(model, inputs, gpu=None)  # type: ignore[arg-type]
    return not replay(trace, kernels.device, AllocatorConfig(), budget).allocator.oom


def test_the_answer_fits_and_the_next_size_does_not() -> None:
    sized = sized_spec(SPEC)
    result = fit(sized, memory="600MiB")  # 200 MiB usable: a few thousand 16x16 images
    b = result.largest
    budget = result.budget.budget_bytes
    assert budget == math.floor((600 - 400) * MiB * 0.95)
    answer, following = result.answer, result.next
    assert answer is not None and following is not None
    assert answer.fits and not following.fits
    assert answer.need_bytes is not None and following.need_bytes is not None
    assert answer.need_bytes <= budget < following.need_bytes
    assert answer.reserved_bytes is not None and answer.reserved_bytes <= budget
    assert _fits_within(*sized.at(b), budget) and not _fits_within(*sized.at(b + 1), budget)
    assert len(result.probes) <= 16  # 21 KiB a sample: the need climbs in 2 MiB steps of ~100 sizes


def test_model_inputs_scale_in_their_first_dimension() -> None:
    from nnmem.zoo import mlp

    sized = sized_inputs(mlp, torch.empty(4, 784, device="meta"))
    _, inputs = sized.at(64)
    assert sized.start == 4 and inputs.shape == (64, 784)
    result = fit(sized, memory="1GiB", optimizer="sgd")
    assert result.answer is not None and result.next is not None and not result.next.fits


def test_a_transformer_fits_a_longest_sequence() -> None:
    sized = sized_hf("llama", vary="seq", batch=2, seq=64, overrides=TINY_LLAMA)
    result = fit(sized, memory="512MiB")
    assert result.to_dict()["max_seq"] == result.largest > 64
    answer, following = result.answer, result.next
    assert answer is not None and following is not None and answer.fits and not following.fits
    _, inputs = sized.at(result.largest)
    assert inputs["input_ids"].shape == (2, result.largest)


# -- the command line --------------------------------------------------------------------------


def test_fit_json_names_the_answer_and_its_reserved_bytes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fit", SPEC, "--gpu-memory", "600MiB", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    direct = fit(sized_spec(SPEC), memory="600MiB")
    assert data["max_batch"] == direct.largest
    assert data["reserved_bytes"] == direct.answer.reserved_bytes  # type: ignore[union-attr]
    assert data["budget"]["budget_bytes"] == math.floor(200 * MiB * 0.95)


def test_the_what_if_table_has_a_row_per_setting(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["fit", SPEC, "--gpu-memory", "600MiB", "--optimizer", "sgd", "--what-if", "--json"])
    assert code == 0
    rows = {row["label"]: row for row in json.loads(capsys.readouterr().out)["what_if"]}
    assert set(rows) >= {"fp32 (no AMP)", "bf16 AMP", "SGD", "Adam", "checkpointing on", "no LoRA"}
    assert rows["SGD"]["note"] == "as given" and rows["fp32 (no AMP)"]["note"] == "as given"
    assert rows["checkpointing on"]["largest"] is None and "n/a" in rows["checkpointing on"]["note"]
    assert rows["Adam"]["largest"] <= rows["SGD"]["largest"]  # two more states per parameter


def test_fit_renders_for_people(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fit", SPEC, "--gpu-memory", "600MiB", "--margin", "10%"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # as one line, whatever the terminal's width
    assert "Largest batch:" in out and "10 % margin" in out and "does not fit" in out


def test_fit_without_a_gpu_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fit", SPEC]) == UsageError.exit_code
    assert "--gpu NAME" in capsys.readouterr().err


def test_estimate_with_a_gpu_says_whether_the_step_fits(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", SPEC, "--batch", "8", "--gpu", "t4", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert any("on t4:" in note and "fit in" in note for note in data["notes"])
    assert data["reserved_bytes"] >= data["peak_bytes"]
