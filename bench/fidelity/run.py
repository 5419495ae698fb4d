"""The fidelity benchmark: each case estimated by nnmem, measured for real, and by peers.

    python bench/fidelity/run.py                 # every case; writes results.json, RESULTS.md
    python bench/fidelity/run.py --only gpt2     # the cases whose name contains "gpt2"
    python bench/fidelity/run.py --report        # rewrite RESULTS.md from results.json

Truth is `nnmem.measure` (CPU, torch.profiler memory events, 2 threads): the steady-state
peak. Peers, on the same step: torchinfo's "Estimated Total Size" and PyTorch's MemTracker
(run on fake tensors, one step: it refuses a second call of a module in one context), both
compared with the measured peak over the whole run (both steps).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
os.chdir(ROOT)  # spec paths are relative to the repository

from cases import CASES, Case  # noqa: E402

import nnmem  # noqa: E402

RESULTS = os.path.join(HERE, "results.json")
THREADS = 2


def torchinfo_total(case: Case, inputs: Any) -> int | None:
    try:
        import torchinfo
    except ImportError:
        return None
    try:
        model = case.model()
        data = inputs if not isinstance(inputs, dict) else None
        kwargs = inputs if isinstance(inputs, dict) else {}
        stats = torchinfo.summary(
            model,
            input_data=data,
            verbose=0,
            mode="train" if case.mode == "train" else "eval",
            **({"input_data": list(kwargs.values())} if kwargs else {}),
        )
        return int(stats.total_input + stats.total_output_bytes + stats.total_param_bytes)
    except Exception:
        return None


def memtracker_peak(case: Case, inputs: Any) -> int | None:
    try:
        from torch._subclasses.fake_tensor import FakeTensorMode
        from torch.distributed._tools.mem_tracker import MemTracker
        from torch.utils._pytree import tree_map

        from nnmem.estimate import step_config
        from nnmem.trace.step import run_step

        class Quiet:
            def set_phase(self, *args: Any) -> None: ...
            def saw_gradients(self, *args: Any) -> None: ...
            def saw_optimizer_state(self, *args: Any) -> None: ...
            def saw_kv_cache(self, *args: Any) -> None: ...

        # MemTracker refuses a module called twice in one tracking context, so it gets one step.
        config = step_config(
            case.mode, case.optimizer, None, "cpu", case.amp, 1, True, case.implementation, 1
        )
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            model = case.model()
            if case.dtype:
                model = model.to(getattr(torch, case.dtype))
            fake = tree_map(lambda t: mode.from_tensor(t) if isinstance(t, torch.Tensor) else t, inputs)
            tracker = MemTracker()
            tracker.track_external(model)
            with tracker:
                run_step(model, fake, config, Quiet())
            snapshot = tracker.get_tracker_snapshot("peak")
        return int(max(per_device.get("Total", 0) for per_device in snapshot.values()))
    except Exception:
        return None


def run_case(case: Case) -> dict[str, Any]:
    torch.manual_seed(0)
    inputs = case.inputs()
    start = time.perf_counter()
    guess = nnmem.estimate(case.model, inputs, device="cpu", threads=THREADS, **case.keywords())
    estimate_s = time.perf_counter() - start
    start = time.perf_counter()
    truth = nnmem.measure(case.model, inputs, threads=THREADS, **case.keywords())
    measure_s = time.perf_counter() - start
    whole_run = max(truth.peak_bytes, truth.first_step.bytes if truth.first_step else 0)
    return {
        "case": case.name,
        "truth": truth.peak_bytes,
        "truth_whole_run": whole_run,
        "estimate": guess.peak_bytes,
        "error": (guess.peak_bytes - truth.peak_bytes) / truth.peak_bytes,
        "first_step_truth": truth.first_step.bytes if truth.first_step else None,
        "first_step_estimate": guess.first_step.bytes if guess.first_step else None,
        "estimate_s": estimate_s,
        "measure_s": measure_s,
        "unknown_ops": len(guess.unknown_ops),
        "torchinfo": torchinfo_total(case, inputs),
        "memtracker": memtracker_peak(case, inputs),
    }


def mib(n: int | None) -> str:
    return "—" if n is None else f"{n / 2**20:,.2f}"


def pct(value: int | None, truth: int) -> str:
    return "—" if value is None else f"{(value - truth) / truth * 100:+.3f} %"


def write_report(results: list[dict[str, Any]]) -> None:
    errors = [abs(r["error"]) for r in results]
    lines = [
        "# Fidelity benchmark",
        "",
        f"Run on {time.strftime('%Y-%m-%d')}, torch {torch.__version__}, Python {platform.python_version()},"
        f" CPU, {THREADS} threads. `python bench/fidelity/run.py` regenerates this file.",
        "",
        "Truth: the steady-state peak of the same step run for real (`nnmem.measure`: torch.profiler"
        " memory events, profiler started before the model is built, fresh process). nnmem: `nnmem.estimate(...,"
        " device='cpu')` on fake tensors. Peers (torchinfo's Estimated Total Size, PyTorch's MemTracker on"
        " fake tensors) are compared with the measured peak over the whole run.",
        "",
        f"**{len(results)} cases; median |error| {statistics.median(errors) * 100:.4f} %;"
        f" max |error| {max(errors) * 100:.4f} %; within 1 %: {sum(e <= 0.01 for e in errors)}/{len(errors)};"
        f" within 0.1 %: {sum(e <= 0.001 for e in errors)}/{len(errors)}.**",
        "",
        "| case | truth MiB | nnmem MiB | nnmem error | torchinfo error | MemTracker error | estimate s | measure s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['case']} | {mib(r['truth'])} | {mib(r['estimate'])} | {r['error'] * 100:+.4f} % |"
            f" {pct(r['torchinfo'], r['truth_whole_run'])} | {pct(r['memtracker'], r['truth_whole_run'])} |"
            f" {r['estimate_s']:.1f} | {r['measure_s']:.1f} |"
        )
    with open(os.path.join(HERE, "RESULTS.md"), "w") as file:
        file.write("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="")
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    previous: dict[str, dict[str, Any]] = {}
    if os.path.exists(RESULTS):
        with open(RESULTS) as file:
            previous = {r["case"]: r for r in json.load(file)}
    if not args.report:
        for case in CASES:
            if args.only and args.only not in case.name:
                continue
            try:
                result = run_case(case)
            except Exception as error:  # a case that fails is written down, not hidden
                print(f"{case.name}: FAILED {type(error).__name__}: {error}", flush=True)
                continue
            previous[case.name] = result
            print(
                f"{case.name}: truth {result['truth']:,} estimate {result['estimate']:,}"
                f" error {result['error'] * 100:+.4f} %",
                flush=True,
            )
            with open(RESULTS, "w") as file:
                json.dump([previous[c.name] for c in CASES if c.name in previous], file, indent=1)
    ordered = [previous[c.name] for c in CASES if c.name in previous]
    if ordered:
        write_report(ordered)


if __name__ == "__main__":
    main()
