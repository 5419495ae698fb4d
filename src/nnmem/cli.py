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
from rich.text import Text

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
    if getattr(args, "hf", None):
        return _hf_target(args)
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
        example = torch.empty(spec.input_shape(batch), dtype=spec.input_dtype(dtype), device="meta")
        return Target(FromSpec(args.spec), example, args.spec)
    raise UsageError(
        "say what to estimate: a spec file or text, or --model FILE.py:FACTORY with --input SHAPE"
    )


def _hf_target(args: argparse.Namespace) -> Target:
    """A Hugging Face architecture from a config file or a model type, with its inputs."""
    from nnmem.frontends.hf import LoRA, from_hf_config, parse_overrides

    lora = None
    if args.lora_rank:
        targets = tuple(args.lora_targets.split(",")) if args.lora_targets else None
        lora = LoRA(rank=args.lora_rank, targets=targets)
    target = from_hf_config(
        args.hf,
        task=args.task,
        overrides=parse_overrides(args.set or []),
        batch=args.batch or 1,
        seq=args.seq,
        image_size=args.image_size,
        mode=args.mode,
        attn=args.attn,
        lora=lora,
        gradient_checkpointing=args.gradient_checkpointing,
        new_tokens=args.new_tokens,
    )
    return Target(target.model, target.inputs, target.describe)


def _step_keywords(args: argparse.Namespace) -> dict[str, Any]:
    keywords: dict[str, Any] = {"new_tokens": args.new_tokens} if args.new_tokens else {}
    return keywords | {
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
    parser.add_argument("--mode", default="train", help="train, inference or generate (default train)")
    parser.add_argument("--optimizer", default="adam", help=f"one of {', '.join(optimizer_names())}")
    parser.add_argument("--optimizer-impl", default="auto", help="auto, for-loop, foreach or fused")
    parser.add_argument("--dtype", default=None, help="parameter dtype: float32, float16, bfloat16")
    parser.add_argument("--amp", default=None, help="autocast mixed precision: bf16 or fp16")
    parser.add_argument("--accumulate", type=int, default=1, help="micro-batches per optimizer step")
    parser.add_argument("--zero-grad-keep", action="store_true", help="zero_grad(set_to_none=False)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    hf = parser.add_argument_group("Hugging Face models (built from a config; nothing is downloaded)")
    hf.add_argument(
        "--hf", metavar="CONFIG", help="a config.json (or its folder), or a model type: llama, gpt2, ..."
    )
    hf.add_argument("--set", nargs="+", metavar="KEY=VALUE", help="config overrides, e.g. hidden_size=2048")
    hf.add_argument("--seq", type=int, default=128, help="sequence length (the prompt, for --mode generate)")
    hf.add_argument(
        "--new-tokens", type=int, default=0, help="--mode generate: tokens decoded after the prompt"
    )
    hf.add_argument("--task", help="causal-lm, masked-lm, sequence-classification or image-classification")
    hf.add_argument("--image-size", type=int, default=None, help="image side for vision models")
    hf.add_argument("--attn", default="sdpa", help="attention implementation: sdpa or eager")
    hf.add_argument(
        "--lora-rank", type=int, default=0, help="LoRA adapters of this rank on a frozen base (peft)"
    )
    hf.add_argument(
        "--lora-targets", help="comma-separated module names for LoRA (default: peft's for the model)"
    )
    hf.add_argument(
        "--gradient-checkpointing", action="store_true", help="the model's own gradient checkpointing"
    )


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
    from nnmem.cli_fit import add_fit_arguments, add_gpu_flags

    add_gpu_flags(estimate)
    _add_report_flags(estimate)
    measure = commands.add_parser("measure", help="run the same step for real (CPU) and report its memory")
    _add_common(measure)
    compare = commands.add_parser("compare", help="estimate and measure the same step, side by side")
    _add_common(compare)
    fit = commands.add_parser("fit", help="the largest batch (or sequence) whose step fits a GPU")
    _add_common(fit)
    add_fit_arguments(fit)
    from nnmem.parallel.cli import add_gpus_flag, add_parallel_flags

    add_parallel_flags(estimate)
    add_parallel_flags(measure, backend=False)
    add_parallel_flags(compare, backend=False)
    add_gpus_flag(fit)
    return parser


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def _add_report_flags(parser: argparse.ArgumentParser) -> None:
    """How to write the report: format, file, the table's columns, plots (docs/reports.md)."""
    parser.add_argument(
        "--format",
        choices=("table", "json", "csv", "markdown", "html"),
        default=None,
        help="table (the terminal; default), json, csv or markdown (the per-layer table), html (one file)",
    )
    parser.add_argument("--output", "-o", metavar="FILE", help="write the report to FILE (atomically)")
    parser.add_argument(
        "--columns",
        metavar="LIST",
        help="the per-layer table's columns, e.g. name,output_shape,activation_bytes",
    )
    parser.add_argument(
        "--plot",
        metavar="FILE",
        help="plot live memory over the step to FILE.png or .svg (needs nnmem[plot])",
    )
    parser.add_argument("--plot-layers", metavar="FILE", help="plot each layer's activations and parameters")
    parser.add_argument("--plot-batches", metavar="FILE", help="plot the peak against the --batches sizes")
    parser.add_argument(
        "--batches",
        metavar="LIST",
        help="batch sizes to estimate the peak at, e.g. 1,8,32,64 (default: ½, 1, 2, 4 × the batch); "
        "shown in --format html, markdown and json",
    )


def _batch_peaks(
    args: argparse.Namespace, target: Target, inputs_for: Any = None
) -> tuple[tuple[int, int], ...]:
    """The what-if of --batches / --plot-batches: one estimate per batch size, same settings."""
    if not (args.batches or args.plot_batches):
        return ()
    from nnmem.analyses.whatif import batch_of, default_batches, parse_batches, peaks_by_batch

    sizes = parse_batches(args.batches) if args.batches else default_batches(batch_of(target.inputs))
    keywords = {**_step_keywords(args), "device": args.device}
    return peaks_by_batch(target.model, target.inputs, sizes, inputs_for, **keywords)


def _deliver(args: argparse.Namespace, console: Console, document: Any) -> int:
    """Write `document` in the chosen format to the terminal or --output, then any plots."""
    from nnmem.render import plot
    from nnmem.render.document import document_figure, render_text, terminal_view
    from nnmem.render.files import write_atomic
    from nnmem.render.formats import parse_columns

    fmt = "json" if args.json else (args.format or "table")
    columns = parse_columns(args.columns)
    plots = [
        (path, kind)
        for path, kind in (
            (args.plot, "timeline"),
            (args.plot_layers, "layers"),
            (args.plot_batches, "batches"),
        )
        if path
    ]
    plot.check_plot_paths([path for path, _ in plots])  # before anything is written
    document.layers.select(columns)  # an unknown column is an error before anything is written
    if args.output:
        write_atomic(args.output, render_text(document, fmt, columns, console.width))
    elif fmt == "table":
        console.print(terminal_view(document, columns, console.width))
    else:
        sys.stdout.write(render_text(document, fmt, columns, console.width))
    for path, kind in plots:
        plot.save_figure(document_figure(document, kind), path)
    return 0


def run_estimate(args: argparse.Namespace, console: Console) -> int:
    from nnmem.cli_fit import with_gpu_note
    from nnmem.estimate import estimate
    from nnmem.render.document import engine_document

    target = resolve_target(args)
    if _parallel(args):
        from nnmem.parallel import cli as parallel_cli

        return parallel_cli.run_estimate(args, target.model, target.inputs, _step_keywords(args), console)
    report = estimate(target.model, target.inputs, device=args.device, gpu=args.gpu, **_step_keywords(args))
    report = with_gpu_note(report, args)
    if args.spec and not args.model:
        return _spec_estimate(args, target, report, console)
    title = f"nnmem estimate: {target.describe}"
    return _deliver(args, console, engine_document(report, title, _batch_peaks(args, target)))


def _spec_estimate(args: argparse.Namespace, target: Target, report: Any, console: Console) -> int:
    """A spec gets the hand calculation: its layer table, the textbook, and both real peaks."""
    from nnmem.estimate import estimate
    from nnmem.frontends.spec import load_spec, textbook
    from nnmem.render.document import spec_document

    dtype = parse_dtype(args.dtype) or torch.float32
    spec = load_spec(args.spec)
    book = textbook(spec, batch=args.batch or 1, dtype_bytes=dtype.itemsize)
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

    def inputs_for(batch: int) -> torch.Tensor:
        return torch.empty(spec.input_shape(batch), dtype=spec.input_dtype(dtype), device="meta")

    peaks = _batch_peaks(args, target, inputs_for)
    title = f"nnmem estimate: {target.describe}"
    return _deliver(args, console, spec_document(report, book, inference, training, title, peaks))


def run_measure(args: argparse.Namespace, console: Console) -> int:
    from nnmem.measure import measure
    from nnmem.render.text import summary

    target = resolve_target(args)
    if _parallel(args):
        from nnmem.parallel import cli as parallel_cli

        return parallel_cli.run_measure(args, target.model, target.inputs, _step_keywords(args), console)
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
    if _parallel(args):
        from nnmem.parallel import cli as parallel_cli

        return parallel_cli.run_compare(args, target.model, target.inputs, keywords, console)
    guess = estimate(target.model, target.inputs, device="cpu", **keywords)
    truth = measure(target.model, target.inputs, device="cpu", **keywords)
    if args.json:
        _print_json({"estimate": guess.to_dict(), "measured": truth.to_dict()})
    else:
        console.print(compare_table(guess, truth))
    return 0


def run_fit(args: argparse.Namespace, console: Console) -> int:
    from nnmem.cli_fit import run_fit as fit_command

    if args.gpus is not None:  # how many GPUs, and which sharding (nnmem.analyses.parallel_fit)
        from nnmem.parallel import cli as parallel_cli

        target = resolve_target(args)
        return parallel_cli.run_fit(args, target.model, target.inputs, _step_keywords(args), console)
    return fit_command(args, console)


def _parallel(args: argparse.Namespace) -> bool:
    from nnmem.parallel.cli import wants_parallel

    return wants_parallel(args)


COMMANDS: dict[str, Callable[[argparse.Namespace, Console], int]] = {
    "estimate": run_estimate,
    "measure": run_measure,
    "compare": run_compare,
    "fit": run_fit,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = Console()
    err = Console(stderr=True)
    try:
        return COMMANDS[args.command](args, console)
    except NnmemError as error:
        message = Text(str(error))  # as text, not markup: "pip install 'nnmem[plot]'" keeps its brackets
        err.print("[bold red]error:[/bold red]", message, highlight=False, soft_wrap=True)
        return error.exit_code
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
