"""How long `nnmem fit` takes, end to end, for the acceptance cases (bench/fit/RESULTS.md).

    python bench/fit/time_fit.py            # 3 runs of each case; writes RESULTS.md and results.json
    python bench/fit/time_fit.py --runs 5

Each run is the command line in a fresh process (`python -m nnmem fit ... --json`), timed from
start to exit: Python and torch start-up, building the model, every trace and the answer.
The machine is shared, so the table quotes medians, with the load average when it ran.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

MODELS = {
    "classic CNN (examples/classic_cnn.txt)": ["examples/classic_cnn.txt"],
    "ResNet-50 (nnmem.zoo:resnet50, --input 1x3x224x224)": ["--model", "nnmem.zoo:resnet50", "--input", "1x3x224x224"],
    "Llama-7B LoRA r8, seq 512, bf16 weights (--hf llama)": [
        "--hf", "llama", "--lora-rank", "8", "--seq", "512", "--dtype", "bf16",
    ],
}  # fmt: skip
GPUS = {"24 GB (rtx-4090)": "rtx-4090", "80 GB (a100-80gb)": "a100-80gb"}


def run(args: list[str]) -> tuple[float, dict[str, object]]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "nnmem", "fit", *args, "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return time.perf_counter() - start, json.loads(done.stdout)


def write_report(rows: list[dict[str, Any]]) -> None:
    lines = [
        "# `nnmem fit` timings",
        "",
        f"Run on {time.strftime('%Y-%m-%d')}, torch {torch.__version__}, Python {platform.python_version()},"
        f" {os.cpu_count()} CPUs shared with other work (load average shown). Each time is one command in a"
        " fresh process, start to exit (Python and torch start-up, building the model, every trace, the"
        " answer); the median of the runs is quoted. `python bench/fit/time_fit.py` regenerates this file.",
        "",
        "The commands: `nnmem fit MODEL --gpu GPU --json` with MODEL one of",
        "`examples/classic_cnn.txt`; `--model nnmem.zoo:resnet50 --input 1x3x224x224`;",
        "`--hf llama --lora-rank 8 --seq 512 --dtype bf16` (LlamaConfig's defaults: the 7B shape, 6.74 B",
        'parameters, LoRA on q_proj and v_proj); training with Adam, 5 % margin. "sizes traced" counts',
        "the batch sizes the search traced; for the Llama each is three traces (2, 3 and 4 layers,",
        "extrapolated to 32). The answer's size and the next one are always among them. At these batch",
        "sizes the classic CNN's tensors are gigabytes, and the caching allocator's fragmentation makes its",
        "need non-monotone (batch 20,933 does not fit the 4090 while 28,875 does): its answer is where the",
        "search ended, with the next size not fitting (docs/gpu.md).",
        "",
        "| model | GPU | largest batch | reserved at it | sizes traced | median s | runs (s) | load |",
        "|---|---|---:|---:|---:|---:|---|---:|",
    ]
    for r in rows:
        runs = ", ".join(f"{t:.1f}" for t in r["times"])
        reserved = f"{r['reserved_bytes'] / 2**30:.2f} GiB"
        lines.append(
            f"| {r['model']} | {r['gpu']} | {r['max_batch']} | {reserved} | {r['sizes']} |"
            f" {r['median']:.1f} | {runs} | {r['load']:.1f} |"
        )
    lines.append("")
    with open(os.path.join(HERE, "RESULTS.md"), "w", encoding="utf-8") as file:
        file.write("\n".join(lines))
    print("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--report", action="store_true", help="rewrite RESULTS.md from results.json")
    options = parser.parse_args()
    if options.report:
        with open(os.path.join(HERE, "results.json"), encoding="utf-8") as file:
            write_report(json.load(file))
        return 0
    rows = []
    for model, model_args in MODELS.items():
        for gpu_label, gpu in GPUS.items():
            times, answer = [], {}
            for _ in range(options.runs):
                load = os.getloadavg()[0]
                seconds, answer = run([*model_args, "--gpu", gpu])
                times.append(seconds)
                print(f"{model} on {gpu}: {seconds:.1f} s (load {load:.1f})", flush=True)
            rows.append({
                "model": model, "gpu": gpu_label, "times": times, "median": statistics.median(times),
                "max_batch": answer["max_batch"], "reserved_bytes": answer["reserved_bytes"],
                "sizes": len(answer["probes"]),  # type: ignore[arg-type]
                "load": os.getloadavg()[0],
            })  # fmt: skip
    with open(os.path.join(HERE, "results.json"), "w", encoding="utf-8") as file:
        json.dump(rows, file, indent=2)
    write_report(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
