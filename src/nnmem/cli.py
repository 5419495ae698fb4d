"""`nnmem` on the command line: a thin shell that parses, calls the library, renders,
and turns `NnmemError`s into a message and an exit code (never a traceback)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from rich.console import Console

from nnmem.errors import NnmemError, UsageError
from nnmem.options import parse_dtype
from nnmem.trace.optimizers import optimizer_names


@dataclass(frozen=True)
class Target:
    """What the user asked about: a model (or factory) and its inputs."""

    model: Any
    inputs: Any
    describe: str


def parse_shape(text: str) -> tuple[int, ...]:
    """`64x3x224x224` -> (64, 3, 224, 224)."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise UsageError(f"--input '{text}': write a shape as sizes joined by x, e.g. 64x3x224x224") from None
    if not shape or any(n < 0 for n in shape):
        raise UsageError(f"--input '{text}': sizes must be non-negative integers")
    return shape


def _inputs_from_flags(shapes: list[str], dtypes: list[str]) -> tuple[torch.Tensor, ...]:
    if not shapes:
        raise UsageError("--model needs at least one --input SHAPE (e.g. --input 64x3x224x224)")
    if len(dtypes) not in (0, 1, len(shapes)):
        raise UsageError(f"give one --input-dtype for all inputs or one per --input ({len(shapes)})")
    parsed = [parse_dtype(d, "input dtype") for d in dtypes] or [torch.float32]
    if len(parsed) == 1:
        parsed = parsed * len(shapes)
    return tuple(
        torch.empty(parse_shape(s), dtype=d, device="meta") for s, d in zip(shapes, parsed, strict=True)
    )


def resolve_target(args: argparse.Namespace) -> Target:
    """Turn the front-end flags into a model and inputs."""
    if args.model:
        from nnmem.frontends.pymodule import load_factory

        factory = load_factory(args.model)
        inputs = _inputs_from_flags(args.input or [], args.input_dtype or [])
        return Target(factory, inputs if len(inputs) > 1 else inputs[0], args.model)
    if args.spec:
        from nnmem.frontends.spec import load_spec
        from nnmem.zoo import FromSpec

        spec = load_spec(args.spec)
        batch = args.batch or 1
        dtype = parse_dtype(args.dtype) or torch.float32
        inputs = torch.empty(spec.input_shape(batch), dtype=spec.input_dtype(dtype), device="meta")
        return Target(FromSpec(args.spec), inputs, args.spec)
    raise UsageError(
        "say what to estimate: a spec file or text, or --model FILE.py:FACTORY with --input SHAPE"
    )


def _step_keywords(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "mode": args.mode,
        "optimizer": args.optimizer,
        "dtype": args.dtype,
        "amp": args.amp,
        "accumulate": args.accumulate,
        "set_to_none": not args.zero_grad_keep,
        "implementation": args.optimizer_impl,
    }


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "spec", nargs="?", help="a layer spec: a file, or inline text ('input 32x32x3 / conv 3x3 16')"
    )
    parser.add_argument("--model", help="a factory: path/to/file.py:build_fn or package.module:build_fn")
    parser.add_argument(
        "--input", action="append", metavar="SHAPE", help="an input shape, e.g. 64x3x224x224 (repeatable)"
    )
    parser.add_argument(
        "--input-dtype", action="append", metavar="DTYPE", help="dtype of the inputs (default float32)"
    )
    parser.add_argument("--batch", type=int, default=None, help="batch size for a spec (default 1)")
    parser.add_argument("--mode", default="train", help="train or inference (default train)")
    parser.add_argument("--optimizer", default="adam", help=f"one of {', '.join(optimizer_names())}")
    parser.add_argument("--optimizer-impl", default="auto", help="auto, for-loop, foreach or fused")
    parser.add_argument("--dtype", default=None, help="parameter dtype: float32, float16, bfloat16")
    parser.add_argument("--amp", default=None, help="autocast mixed precision: bf16 or fp16")
    parser.add_argument("--accumulate", type=int, default=1, help="micro-batches per optimizer step")
    parser.add_argument("--zero-grad-keep", action="store_true", help="zero_grad(set_to_none=False)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnmem", description="How much memory a neural network needs, before anything runs."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    estimate = commands.add_parser("estimate", help="trace a step on fake tensors and report its memory")
    _add_common(estimate)
    estimate.add_argument(
        "--device", default="cuda", help="whose kernels to model: cuda or cpu (default cuda)"
    )
    measure = commands.add_parser("measure", help="run the same step for real (CPU) and report its memory")
    _add_common(measure)
    compare = commands.add_parser("compare", help="estimate and measure the same step, side by side")
    _add_common(compare)
    return parser


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def run_estimate(args: argparse.Namespace, console: Console) -> int:
    from nnmem.estimate import estimate
    from nnmem.render.text import summary

    target = resolve_target(args)
    report = estimate(target.model, target.inputs, device=args.device, **_step_keywords(args))
    if args.spec and not args.model:
        return _spec_estimate(args, target, report, console)
    if args.json:
        _print_json(report.to_dict())
    else:
        console.print(summary(report))
    return 0


def _spec_estimate(args: argparse.Namespace, target: Target, report: Any, console: Console) -> int:
    """A spec gets the hand calculation: its layer table, the textbook, and both real peaks."""
    from nnmem.estimate import estimate
    from nnmem.frontends.spec import load_spec, textbook
    from nnmem.render.handcalc import handcalc, handcalc_dict

    dtype = parse_dtype(args.dtype) or torch.float32
    book = textbook(load_spec(args.spec), batch=args.batch or 1, dtype_bytes=dtype.itemsize)
    keywords = {**_step_keywords(args), "mode": "inference"}
    inference = (
        report
        if report.mode == "inference"
        else estimate(target.model, target.inputs, device=args.device, **keywords)
    )
    keywords["mode"] = "train"
    training = (
        report
        if report.mode == "train"
        else estimate(target.model, target.inputs, device=args.device, **keywords)
    )
    if args.json:
        _print_json(handcalc_dict(book, inference, training, report))
    else:
        console.print(handcalc(book, inference, training))
    return 0


def run_measure(args: argparse.Namespace, console: Console) -> int:
    from nnmem.measure import measure
    from nnmem.render.text import summary

    target = resolve_target(args)
    report = measure(target.model, target.inputs, device="cpu", **_step_keywords(args))
    if args.json:
        _print_json(report.to_dict())
    else:
        console.print(summary(report))
    return 0


def run_compare(args: argparse.Namespace, console: Console) -> int:
    from nnmem.estimate import estimate
    from nnmem.measure import measure
    from nnmem.render.text import compare_table

    target = resolve_target(args)
    keywords = _step_keywords(args)
    guess = estimate(target.model, target.inputs, device="cpu", **keywords)
    truth = measure(target.model, target.inputs, device="cpu", **keywords)
    if args.json:
        _print_json({"estimate": guess.to_dict(), "measured": truth.to_dict()})
    else:
        console.print(compare_table(guess, truth))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace, Console], int]] = {
    "estimate": run_estimate,
    "measure": run_measure,
    "compare": run_compare,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console()
    err = Console(stderr=True)
    try:
        return COMMANDS[args.command](args, console)
    except NnmemError as error:
        err.print("[bold red]error:[/bold red]", str(error), highlight=False, soft_wrap=True)
        return error.exit_code
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
