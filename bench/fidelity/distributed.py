"""The fidelity benchmark for parallel steps: per-rank estimates against real gloo ranks.

    python bench/fidelity/distributed.py                # every case, then the 70B scaling
    python bench/fidelity/distributed.py --only llama   # the cases whose name contains "llama"
    python bench/fidelity/distributed.py --no-70b       # skip the Llama-2-70B FSDP scaling
    python bench/fidelity/distributed.py --report       # rewrite DISTRIBUTED.md from the JSON

Truth is `nnmem.parallel.measure_parallel`: real CPU ranks (torch.multiprocessing spawn,
gloo on 127.0.0.1), each rank's steady-state peak from torch.profiler memory events with
libc10's FLAGS_caffe2_report_cpu_memory_usage set. The estimate is traced on one rank
under PyTorch's fake process group, with gloo's collective buffers (`backend="gloo"`);
the NCCL column is the same estimate without them (what a GPU run would hold).

The Llama-2-70B shape (68,976,648,192 parameters, fp32, AdamW) is estimated only, with
FSDP over 8 to 64 ranks, extrapolated from 2-4 traced layers: the time it takes, and each
rank's parameter + gradient + optimizer-state shards against 16 x P / N bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
os.chdir(ROOT)

from cases import DISTRIBUTED_CASES, ParallelCase  # noqa: E402

from nnmem.parallel import estimate_parallel, measure_parallel  # noqa: E402
from nnmem.parallel.repeated import estimate_parallel_repeated  # noqa: E402

RESULTS = os.path.join(HERE, "distributed.json")
REPORT = os.path.join(HERE, "DISTRIBUTED.md")
LLAMA_70B_PARAMETERS = 68_976_648_192
MiB = 2**20


def run_case(case: ParallelCase) -> dict[str, Any]:
    torch.manual_seed(0)
    inputs = case.inputs()
    keywords = {"optimizer": case.optimizer}
    start = time.perf_counter()
    guess = estimate_parallel(
        case.model, inputs, case.parallel, case.world_size, device="cpu", backend="gloo", **keywords
    )
    estimate_s = time.perf_counter() - start
    nccl = estimate_parallel(case.model, inputs, case.parallel, case.world_size, device="cpu", **keywords)
    start = time.perf_counter()
    truth = measure_parallel(case.model, inputs, case.parallel, case.world_size, **keywords)
    measure_s = time.perf_counter() - start
    ranks = []
    for g, n, t in zip(guess.ranks, nccl.ranks, truth.ranks, strict=True):
        ranks.append(
            {
                "rank": g.rank,
                "truth": t.peak_bytes,
                "estimate": g.peak_bytes,
                "estimate_nccl": n.peak_bytes,
                "error": (g.peak_bytes - t.peak_bytes) / t.peak_bytes,
                "phase_truth": str(t.report.steady.phase),
                "phase_estimate": str(g.report.steady.phase),
            }
        )
    return {"case": case.name, "estimate_s": estimate_s, "measure_s": measure_s, "ranks": ranks}


def llama_70b(layers: int) -> Any:
    def build() -> torch.nn.Module:
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(
            hidden_size=8192,
            intermediate_size=28672,
            num_hidden_layers=layers,
            num_attention_heads=64,
            num_key_value_heads=8,
            vocab_size=32000,
            max_position_embeddings=4096,
        )
        return LlamaForCausalLM(config)

    return build


def run_70b(ranks: int, seq: int = 2048) -> dict[str, Any]:
    ids = torch.zeros(1, seq, dtype=torch.long, device="meta")
    start = time.perf_counter()
    report = estimate_parallel_repeated(
        llama_70b, 80, {"input_ids": ids, "labels": ids}, f"fsdp={ranks}", optimizer="adamw", device="cuda"
    )
    seconds = time.perf_counter() - start
    state = report.ranks[0].model_state
    expected = 16 * LLAMA_70B_PARAMETERS / ranks
    return {
        "ranks": ranks,
        "seconds": seconds,
        "parameters": report.parameters,
        "peak_bytes": report.peak_bytes,
        "model_state_bytes": state.total,
        "parameter_bytes": state.parameter,
        "gradient_bytes": state.gradient,
        "optimizer_state_bytes": state.optimizer_state,
        "expected_state_bytes": expected,
        "state_error": (state.total - expected) / expected,
        "distinct_ranks_traced": len({r.traced_as for r in report.ranks}),
    }


def write_report(results: dict[str, Any]) -> None:
    lines = [
        "# Distributed fidelity: per-rank estimates against real gloo ranks",
        "",
        "Written by `python bench/fidelity/distributed.py`. Truth: real CPU ranks (gloo, 127.0.0.1; 2, or 4 for fsdp=2,tp=2),",
        "each rank's steady-state peak (step 2) from torch.profiler memory events, with",
        "`FLAGS_caffe2_report_cpu_memory_usage` set so that frees on gloo's threads are counted.",
        "Estimate: one rank traced on fake tensors under PyTorch's fake process group, counting",
        "gloo's flat collective buffers; `nccl` is the same estimate without them.",
        "",
        f"Machine: {results['machine']}; torch {results['torch']}.",
        "",
        "| case | rank | measured | estimate (gloo) | error | bytes off | estimate (nccl) | phase (measured / estimated) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for case in results["cases"]:
        for r in case["ranks"]:
            lines.append(
                f"| {case['case']} | {r['rank']} | {r['truth'] / MiB:,.2f} MiB | {r['estimate'] / MiB:,.2f} MiB"
                f" | {r['error'] * 100:+.4f} % | {r['estimate'] - r['truth']:+,} | {r['estimate_nccl'] / MiB:,.2f} MiB"
                f" | {r['phase_truth']} / {r['phase_estimate']} |"
            )
    worst = max((abs(r["error"]) for c in results["cases"] for r in c["ranks"]), default=0.0)
    most = max((abs(r["estimate"] - r["truth"]) for c in results["cases"] for r in c["ranks"]), default=0)
    lines += [
        "",
        f"Largest per-rank error: {worst * 100:.5f} % ({most} bytes: the profiler's own small",
        "allocations inside the measured run).",
        "",
    ]
    if results.get("llama_70b"):
        lines += [
            "## Llama-2-70B shape, FSDP, fp32 with AdamW (estimate only)",
            "",
            "68,976,648,192 parameters; one rank's batch 1 x 2048 tokens; 80 layers extrapolated",
            "exactly from traces with 2, 3 and 4 layers. Model state is the rank's parameter,",
            "gradient and optimizer-state shards; expected 16 x P / N bytes (4 + 4 + 8 per parameter).",
            "",
            "| ranks | time | peak per rank | model state per rank | expected | error |",
            "| ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in results["llama_70b"]:
            lines.append(
                f"| {r['ranks']} | {r['seconds']:.1f} s | {r['peak_bytes'] / 2**30:,.2f} GiB"
                f" | {r['model_state_bytes']:,} B | {r['expected_state_bytes']:,.0f} B | {r['state_error'] * 100:+.5f} % |"
            )
        lines.append("")
    with open(REPORT, "w") as file:
        file.write("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default=None)
    parser.add_argument("--report", action="store_true")
    parser.add_argument("--no-70b", action="store_true")
    args = parser.parse_args()
    if args.report:
        with open(RESULTS) as file:
            write_report(json.load(file))
        return 0
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "torch": torch.__version__,
        "cases": [],
        "llama_70b": [],
    }
    if args.only and os.path.exists(RESULTS):  # rerun some cases, keep the others' results
        with open(RESULTS) as file:
            kept = json.load(file)
        results["cases"] = [c for c in kept["cases"] if args.only not in c["case"]]
        results["llama_70b"] = kept.get("llama_70b", []) if args.no_70b else []
    for case in DISTRIBUTED_CASES:
        if args.only and args.only not in case.name:
            continue
        result = run_case(case)
        worst = max(abs(r["error"]) for r in result["ranks"])
        print(f"{case.name}: worst rank error {worst * 100:.3f} %", flush=True)
        results["cases"].append(result)
    if not args.no_70b:
        for ranks in (8, 16, 32, 64):
            result = run_70b(ranks)
            print(
                f"70B fsdp={ranks}: {result['seconds']:.1f} s, state error {result['state_error'] * 100:+.5f} %",
                flush=True,
            )
            results["llama_70b"].append(result)
    with open(RESULTS, "w") as file:
        json.dump(results, file, indent=2)
    write_report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
