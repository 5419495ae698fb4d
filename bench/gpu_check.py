"""nnmem's CUDA predictions against a real GPU: peak allocated and peak reserved bytes.

    python bench/gpu_check.py                # every case, at most ~5 minutes; writes bench/gpu/
    python bench/gpu_check.py --only llama   # the cases whose name contains "llama"
    python bench/gpu_check.py --report       # rewrite bench/gpu/RESULTS.md from results.json

Without a CUDA device it prints "no CUDA device; nothing measured" and exits with status 0,
writing nothing. docs/gpu.md says what is compared and how; in short:

1. **Warm-up**, once per process, before anything is measured: CUDA is initialised (the
   context), and a small matrix multiply runs forward and backward, so that the Python thread's
   and autograd's cuBLAS handles each hold their workspace, as they would after the first step
   of a real run. What stays allocated then is recorded (`workspace_bytes`: the workspaces), and
   so is the context (`total - free - reserved` from `torch.cuda.mem_get_info`).
2. **Each case**, in this process: `gc.collect()`, `torch.cuda.empty_cache()`,
   `torch.cuda.reset_peak_memory_stats()`; the model is built on the CPU (in its dtype) and moved
   to the GPU, its inputs made there; the step nnmem traces runs (`nnmem.trace.step.run_step`, the
   same code: two training steps, or one forward in inference); then `max_memory_allocated()` and
   `max_memory_reserved()` are read. The prediction is the same step traced on fake tensors for
   this GPU's compute capability and replayed through the simulated allocator with the cuBLAS
   workspaces allocated first (`replay(..., blas_at_start=True)`), as the warm-up left them.
3. **The fit check**: `nnmem fit`'s search with the allocator capped at 2 GiB
   (`torch.cuda.set_per_process_memory_fraction`), then the answer B and B + 1 each run for
   real in a fresh process under that cap: B must run, B + 1 must run out of memory.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.path.join(HERE, "gpu")
RESULTS = os.path.join(OUT, "results.json")
BUDGET_S = 280.0  # the whole run stays under 5 minutes
CAP = 2 * 2**30  # the fit check's allocator cap
os.chdir(ROOT)

SMALL_LLAMA = {
    "hidden_size": 512, "intermediate_size": 1376, "num_hidden_layers": 4, "num_attention_heads": 8,
    "num_key_value_heads": 2, "vocab_size": 32000,
}  # fmt: skip
SMALL_GPT2 = {"n_layer": 4, "n_embd": 512, "n_head": 8}


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[int], tuple[Any, Any]]  # batch -> (model or factory, meta inputs)
    batch: int
    keywords: dict[str, Any] = field(default_factory=dict)  # estimate's: mode, optimizer, amp, dtype


def _spec(batch: int) -> tuple[Any, Any]:
    from nnmem.frontends.spec import load_spec
    from nnmem.zoo import FromSpec

    spec = load_spec("examples/classic_cnn.txt")
    return FromSpec("examples/classic_cnn.txt"), torch.empty(spec.input_shape(batch), device="meta")


def _zoo(name: str, shape: tuple[int, ...]) -> Callable[[int], tuple[Any, Any]]:
    def build(batch: int) -> tuple[Any, Any]:
        from nnmem import zoo

        return getattr(zoo, name), torch.empty((batch, *shape), device="meta")

    return build


def _hf(config: str, overrides: dict[str, Any], seq: int, **options: Any) -> Callable[[int], tuple[Any, Any]]:
    def build(batch: int) -> tuple[Any, Any]:
        from nnmem.frontends.hf import from_hf_config

        target = from_hf_config(config, overrides=overrides, batch=batch, seq=seq, **options)
        return target.model, target.inputs

    return build


CASES: list[Case] = [
    Case("mlp b512 adam", _zoo("mlp", (784,)), 512),
    Case("classic CNN b256 adam", _spec, 256),
    Case("resnet50 b32 adam fp32", _zoo("resnet50", (3, 224, 224)), 32),
    Case(
        "resnet50 b64 sgd bf16-amp", _zoo("resnet50", (3, 224, 224)), 64, {"optimizer": "sgd", "amp": "bf16"}
    ),
    Case("resnet50 b64 inference", _zoo("resnet50", (3, 224, 224)), 64, {"mode": "inference"}),
    Case("llama-small b8 s512 adam bf16-amp (flash)", _hf("llama", SMALL_LLAMA, 512), 8, {"amp": "bf16"}),
    Case("llama-small b8 s512 adam fp32 (efficient)", _hf("llama", SMALL_LLAMA, 512), 8),
    Case(
        "llama-small eager b8 s512 adam bf16-amp",
        _hf("llama", SMALL_LLAMA, 512, attn="eager"),
        8,
        {"amp": "bf16"},
    ),
    Case("gpt2-small4 b8 s512 adam bf16-amp", _hf("gpt2", SMALL_GPT2, 512), 8, {"amp": "bf16"}),
    Case(
        "llama-small LoRA r8 + checkpointing b8 s512 bf16",
        _hf("llama", SMALL_LLAMA, 512, lora=8, gradient_checkpointing=True),
        8,
        {"dtype": "bf16"},
    ),
]
FIT_CASE = "llama-small b8 s512 adam bf16-amp (flash)"


class Quiet:
    def set_phase(self, *args: Any) -> None: ...
    def saw_gradients(self, *args: Any) -> None: ...
    def saw_optimizer_state(self, *args: Any) -> None: ...
    def saw_kv_cache(self, *args: Any) -> None: ...


def _dtype(keywords: dict[str, Any]) -> torch.dtype | None:
    from nnmem.options import parse_dtype

    return parse_dtype(keywords.get("dtype"))


def _real(value: Any, dtype: torch.dtype | None) -> Any:
    if isinstance(value, dict):
        return {k: _real(v, dtype) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return type(value)(_real(v, dtype) for v in value)
    if not isinstance(value, torch.Tensor):
        return value
    if value.is_floating_point():
        return torch.randn(value.shape, dtype=dtype or value.dtype, device="cuda")
    return torch.zeros(value.shape, dtype=value.dtype, device="cuda")


def run_for_real(case: Case, batch: int) -> dict[str, int]:
    """The step on the GPU; the allocator's peaks."""
    from nnmem.estimate import step_config
    from nnmem.trace.step import run_step

    k = case.keywords
    config = step_config(
        k.get("mode", "train"), k.get("optimizer", "adam"), None, "cuda", k.get("amp"), 1, True, "auto", None
    )
    model_or_factory, meta_inputs = case.build(batch)
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(0)
    model = model_or_factory if isinstance(model_or_factory, torch.nn.Module) else model_or_factory()
    dtype = _dtype(k)
    if dtype is not None:
        model = model.to(dtype)
    model = model.to("cuda")
    inputs = _real(meta_inputs, dtype)
    if isinstance(inputs, dict):
        inputs = {
            name: v.to(torch.long) if name in ("input_ids", "labels") else v for name, v in inputs.items()
        }
    run_step(model, inputs, config, Quiet())
    torch.cuda.synchronize()
    result = {
        "allocated": torch.cuda.max_memory_allocated(),
        "reserved": torch.cuda.max_memory_reserved(),
        "allocated_before": before,
    }
    del model, inputs
    gc.collect()
    torch.cuda.empty_cache()
    return result


def predict(case: Case, batch: int, device: Any) -> dict[str, Any]:
    from nnmem.analyses.cuda_memory import estimate_with_trace, replay

    model, inputs = case.build(batch)
    start = time.perf_counter()
    report, trace, kernels = estimate_with_trace(model, inputs, gpu=device, **case.keywords)
    memory = replay(trace, device, blas_at_start=True)
    return {
        "peak": report.peak_bytes,
        "allocated": memory.allocated_bytes,
        "reserved": memory.reserved_bytes,
        "attention": {str(a): n for a, n in kernels.chosen.items()},
        "unknown_ops": len(report.unknown_ops),
        "estimate_s": time.perf_counter() - start,
    }


def warm_up() -> dict[str, Any]:
    torch.cuda.init()
    torch.zeros(1, device="cuda")
    free, total = torch.cuda.mem_get_info()
    context = total - free - torch.cuda.memory_reserved()
    a = torch.randn(64, 64, device="cuda", requires_grad=True)
    (a @ a).sum().backward()  # the forward's handle and autograd's each make a cuBLAS workspace
    del a
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    props = torch.cuda.get_device_properties(0)
    return {
        "gpu": torch.cuda.get_device_name(0),
        "capability": list(torch.cuda.get_device_capability(0)),
        "total_memory": total,
        "context_bytes": context,
        "workspace_bytes": torch.cuda.memory_allocated(),
        "sm_count": props.multi_processor_count,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
    }


def cuda_device_here() -> Any:
    from nnmem.gpus import get_gpu
    from nnmem.trace.cuda import CudaDevice

    name = torch.cuda.get_device_name(0)
    try:
        catalogue = get_gpu(name).name
    except Exception:
        catalogue = name
    major, minor = torch.cuda.get_device_capability(0)
    return CudaDevice(catalogue, (major, minor), rocm=torch.version.hip is not None)


def fit_check(device: Any) -> dict[str, Any]:
    """The fit's answer under a 2 GiB allocator cap, then B and B + 1 run for real in fresh processes."""
    from nnmem.analyses.fit import measure_sized, search_largest
    from nnmem.analyses.sized import Sized, Vary

    case = next(c for c in CASES if c.name == FIT_CASE)
    sized = Sized(lambda b: case.build(b), Vary.BATCH, case.batch, case.name)
    start = time.perf_counter()
    largest, probes, _ = search_largest(measure_sized(sized, CAP, device, **case.keywords), CAP, case.batch)
    search_s = time.perf_counter() - start
    outcome = {}
    for batch in (largest, largest + 1):
        command = [sys.executable, __file__, "--run-capped", FIT_CASE, str(batch)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        outcome[batch] = (
            done.stdout.strip().splitlines()[-1] if done.stdout.strip() else f"failed: {done.stderr[-300:]}"
        )
    return {
        "case": FIT_CASE,
        "cap": CAP,
        "largest": largest,
        "probes": [p.to_dict() for p in probes],
        "search_s": search_s,
        "answer_run": outcome[largest],
        "next_run": outcome[largest + 1],
    }


def run_capped(name: str, batch: int) -> None:
    """In a fresh process: cap the allocator, run one step, say "ok" or "oom"."""
    case = next(c for c in CASES if c.name == name)
    torch.cuda.set_per_process_memory_fraction(CAP / torch.cuda.get_device_properties(0).total_memory)
    try:
        run_for_real(case, batch)
        print("ok")
    except torch.OutOfMemoryError:
        print("oom")


def pct(estimate: int, truth: int) -> str:
    return f"{(estimate - truth) / truth * 100:+.2f} %" if truth else "n/a"


def mib(n: int) -> str:
    return f"{n / 2**20:,.1f}"


def write_report(data: dict[str, Any]) -> None:
    m = data["machine"]
    lines = [
        "# GPU check: nnmem's CUDA predictions against a real GPU",
        "",
        f"Run on {m['date']}: {m['gpu']} (sm{m['capability'][0]}{m['capability'][1]}, {m['sm_count']} SMs,"
        f" {mib(m['total_memory'])} MiB), torch {m['torch']}, CUDA {m['cuda']}, cuDNN {m['cudnn']},"
        f" Python {m['python']}. `python bench/gpu_check.py` regenerates this file (docs/gpu.md).",
        "",
        f"Warm-up: the CUDA context took {mib(m['context_bytes'])} MiB (the catalogue assumes 400 MiB);"
        f" the cuBLAS workspaces left allocated after one forward and backward matrix multiply:"
        f" {m['workspace_bytes']:,} bytes (predicted: {data['predicted_workspace_bytes']:,}).",
        "",
        "Peaks are `torch.cuda.max_memory_allocated()` / `max_memory_reserved()` over the step (two training"
        " steps, or one forward), after the warm-up; predictions replay the traced step through the simulated"
        " caching allocator with the warm-up's workspaces first. Error = (predicted - measured) / measured.",
        "",
        "| case | live peak MiB | allocated MiB predicted | measured | error | reserved MiB predicted | measured | error | attention |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in data["cases"]:
        if "error" in r:
            lines.append(f"| {r['case']} | — | — | — | — | — | — | — | failed: {r['error']} |")
            continue
        p, t = r["predicted"], r["measured"]
        attention = ", ".join(f"{n} {a}" for a, n in p["attention"].items()) or "—"
        lines.append(
            f"| {r['case']} | {mib(p['peak'])} | {mib(p['allocated'])} | {mib(t['allocated'])} |"
            f" {pct(p['allocated'], t['allocated'])} | {mib(p['reserved'])} | {mib(t['reserved'])} |"
            f" {pct(p['reserved'], t['reserved'])} | {attention} |"
        )
    for name in data.get("skipped", []):
        lines.append(f"| {name} | skipped: the 5-minute budget ran out | | | | | | | |")
    fc = data.get("fit_check")
    if fc:
        lines += [
            "",
            f"**Fit check** ({fc['case']}, allocator capped at {mib(fc['cap'])} MiB): nnmem's answer is batch"
            f" {fc['largest']} ({len(fc['probes'])} traces, {fc['search_s']:.1f} s); run for real: batch"
            f" {fc['largest']} → {fc['answer_run']}, batch {fc['largest'] + 1} → {fc['next_run']}"
            " (expected: ok, oom).",
        ]
    lines += ["", f"Total time {data['seconds']:.0f} s.", ""]
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "RESULTS.md"), "w", encoding="utf-8") as file:
        file.write("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="run the cases whose name contains this")
    parser.add_argument("--report", action="store_true", help="rewrite RESULTS.md from results.json")
    parser.add_argument("--no-fit-check", action="store_true", help="skip the capped fit check")
    parser.add_argument("--run-capped", nargs=2, metavar=("CASE", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.report:
        with open(RESULTS, encoding="utf-8") as file:
            write_report(json.load(file))
        return 0
    if not torch.cuda.is_available():
        print("no CUDA device; nothing measured")
        return 0
    if args.run_capped:
        run_capped(args.run_capped[0], int(args.run_capped[1]))
        return 0
    start = time.perf_counter()
    machine = warm_up()
    device = cuda_device_here()
    data: dict[str, Any] = {
        "machine": machine, "cases": [], "skipped": [], "predicted_workspace_bytes": 2 * device.blas_workspace_bytes,
    }  # fmt: skip
    for case in CASES:
        if args.only and args.only not in case.name:
            continue
        if time.perf_counter() - start > BUDGET_S - 60:
            data["skipped"].append(case.name)
            continue
        print(f"{case.name} ...", flush=True)
        try:
            predicted = predict(case, case.batch, device)
            measured = run_for_real(case, case.batch)
            data["cases"].append({"case": case.name, "predicted": predicted, "measured": measured})
        except Exception as error:  # one failing case must not lose the others' numbers
            data["cases"].append({"case": case.name, "error": f"{type(error).__name__}: {error}"[:300]})
    if not args.no_fit_check and not args.only and time.perf_counter() - start < BUDGET_S - 60:
        print("fit check ...", flush=True)
        try:
            data["fit_check"] = fit_check(device)
        except Exception as error:
            data["fit_check_error"] = f"{type(error).__name__}: {error}"[:300]
    data["seconds"] = time.perf_counter() - start
    os.makedirs(OUT, exist_ok=True)
    with open(RESULTS, "w", encoding="utf-8") as file:
        json.dump(data, file, indent=2)
    write_report(data)
    with open(os.path.join(OUT, "RESULTS.md"), encoding="utf-8") as file:
        print(file.read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
