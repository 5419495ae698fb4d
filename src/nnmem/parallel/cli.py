"""The command line's `--parallel` / `--world-size` (and `nnmem fit --gpus`): parse, call, render.

`nnmem.cli` hands over here when `--parallel` is given, so the one-process commands stay
as they are. No argparse `Namespace` goes further than this module.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rich.console import Console

from nnmem.errors import UsageError


def add_parallel_flags(parser: argparse.ArgumentParser, backend: bool = True) -> None:
    parser.add_argument(
        "--parallel",
        metavar="SPEC",
        help="spread the step over ranks: ddp, fsdp, fsdp-no-reshard, zero1, zero2, tp=N, pp=N,"
        " or a combination like fsdp=8,tp=2 (see docs/parallel.md)",
    )
    parser.add_argument("--world-size", type=int, default=None, help="ranks in all (with --parallel)")
    if backend:
        parser.add_argument(
            "--backend", default=None, help="whose collective buffers to model: nccl (default) or gloo"
        )


def add_gpus_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gpus",
        default=None,
        metavar="N|auto",
        help="fit on N GPUs (or search the fewest, 'auto'), choosing the sharding (see docs/parallel.md)",
    )
    parser.add_argument(
        "--strategies",
        default=None,
        metavar="LIST",
        help="with --gpus: the strategies to try, e.g. ddp,zero1,fsdp (default: all data-parallel ones)",
    )


def wants_parallel(args: argparse.Namespace) -> bool:
    if getattr(args, "world_size", None) is not None and not getattr(args, "parallel", None):
        raise UsageError("--world-size needs --parallel (ddp, fsdp, tp=N, ...)")
    return bool(getattr(args, "parallel", None))


def _step(keywords: dict[str, Any]) -> dict[str, Any]:
    if keywords.get("new_tokens"):
        raise UsageError("--parallel covers training and inference steps, not generation (--new-tokens)")
    return {k: v for k, v in keywords.items() if k != "new_tokens"}


def _emit(console: Console, as_json: bool, document: dict[str, Any], view: Any) -> int:
    if as_json:
        sys.stdout.write(json.dumps(document, indent=2) + "\n")
    else:
        console.print(view)
    return 0


def run_estimate(
    args: argparse.Namespace, model: Any, inputs: Any, keywords: dict[str, Any], console: Console
) -> int:
    keywords = _step(keywords)
    from nnmem.parallel.api import estimate_parallel
    from nnmem.render.parallel import parallel_summary

    report = estimate_parallel(
        model,
        inputs,
        args.parallel,
        args.world_size,
        device=getattr(args, "device", "cuda"),
        backend=getattr(args, "backend", None),
        **keywords,
    )
    return _emit(console, args.json, report.to_dict(), parallel_summary(report))


def run_measure(
    args: argparse.Namespace, model: Any, inputs: Any, keywords: dict[str, Any], console: Console
) -> int:
    keywords = _step(keywords)
    from nnmem.parallel.launch import measure_parallel
    from nnmem.render.parallel import parallel_summary

    report = measure_parallel(model, inputs, args.parallel, args.world_size, **keywords)
    return _emit(console, args.json, report.to_dict(), parallel_summary(report))


def run_compare(
    args: argparse.Namespace, model: Any, inputs: Any, keywords: dict[str, Any], console: Console
) -> int:
    keywords = _step(keywords)
    from nnmem.parallel.api import estimate_parallel
    from nnmem.parallel.launch import measure_parallel
    from nnmem.render.parallel import parallel_compare_table

    guess = estimate_parallel(
        model, inputs, args.parallel, args.world_size, device="cpu", backend="gloo", **keywords
    )
    truth = measure_parallel(model, inputs, args.parallel, args.world_size, **keywords)
    document = {"estimate": guess.to_dict(), "measured": truth.to_dict()}
    return _emit(console, args.json, document, parallel_compare_table(guess, truth))


def run_fit(
    args: argparse.Namespace, model: Any, inputs: Any, keywords: dict[str, Any], console: Console
) -> int:
    keywords = _step(keywords)
    from nnmem.analyses.fit import DEFAULT_MARGIN, parse_margin
    from nnmem.analyses.parallel_fit import fit_gpus
    from nnmem.render.parallel import fit_table

    gpus = None if str(args.gpus).lower() == "auto" else _positive(args.gpus, "--gpus")
    strategies = tuple(s.strip() for s in args.strategies.split(",")) if args.strategies else None
    result = fit_gpus(
        model,
        inputs,
        gpu=args.gpu,
        gpus=gpus,
        strategies=strategies,
        memory=getattr(args, "gpu_memory", None),
        margin=parse_margin(getattr(args, "margin", DEFAULT_MARGIN)),
        **keywords,
    )
    return _emit(console, args.json, result.to_dict(), fit_table(result))


def _positive(text: str, flag: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"{flag} takes a number of GPUs or 'auto', not '{text}'") from None
    if value < 1:
        raise UsageError(f"{flag} must be at least 1, not {value}")
    return value
