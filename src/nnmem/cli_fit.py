"""`nnmem fit` and the GPU flags: the command-line shell over `nnmem.analyses.fit`.

Parses the front-end flags into a `Sized` model (a text spec, `--model` with `--input`, or
`--hf` with `--seq`), calls `fit` (and `what_if` with `--what-if`), and renders the answer.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from typing import Any

import torch
from rich.console import Console

from nnmem.analyses.fit import MAX_SIZE, FitResult, Variant, WhatIfRow, fit, gpu_budget, what_if
from nnmem.analyses.sized import Sized, Vary, parse_vary, sized_hf, sized_inputs, sized_spec
from nnmem.errors import UsageError
from nnmem.options import parse_amp, parse_dtype
from nnmem.report import Report
from nnmem.trace.optimizers import optimizer_names


def add_gpu_flags(parser: argparse.ArgumentParser) -> None:
    """--gpu NAME and --gpu-memory SIZE."""
    parser.add_argument(
        "--gpu", metavar="NAME",
        help="a GPU from the catalogue (t4, rtx-3090, rtx-4090, l4, a100-80gb, h100-80gb, ...): its"
        " memory, CUDA context and kernels",
    )  # fmt: skip
    parser.add_argument(
        "--gpu-memory", metavar="SIZE",
        help="the device's memory as CUDA reports it, e.g. 24GiB or 80GB (GB = 10**9 bytes); with --gpu,"
        " replaces its memory",
    )  # fmt: skip


def _has(parser: argparse.ArgumentParser, flag: str) -> bool:
    return flag in parser._option_string_actions


def add_fit_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `nnmem fit`, after the common front-end and step flags."""
    add_gpu_flags(parser)
    parser.add_argument(
        "--margin", default="5%", help="memory kept free, a fraction or percent (default 5%%)"
    )
    parser.add_argument("--vary", default="batch", help="batch (default) or seq: which size to find")
    parser.add_argument(
        "--max-size", type=int, default=MAX_SIZE, help=f"the largest size searched (default {MAX_SIZE})"
    )
    parser.add_argument(
        "--allocator-conf",
        metavar="SETTINGS",
        help="PYTORCH_CUDA_ALLOC_CONF settings, e.g. expandable_segments:True",
    )
    parser.add_argument(
        "--what-if", action="store_true",
        help="also the need and the largest size for fp32/bf16 AMP, SGD/Adam/8-bit Adam, checkpointing, LoRA",
    )  # fmt: skip
    # the Hugging Face front end's flags, where the common flags do not have them already
    hf_flags: list[tuple[str, dict[str, Any]]] = [
        ("--hf", {"metavar": "CONFIG", "help": "a transformers config: a model type (llama) or config.json"}),
        ("--seq", {"type": int, "default": 128, "help": "sequence length for --hf (default 128)"}),
        ("--set", {"nargs": "+", "metavar": "KEY=VALUE", "help": "override config fields (--hf)"}),
        ("--lora-rank", {"type": int, "default": 0, "help": "LoRA adapters of this rank (--hf)"}),
        ("--lora-targets", {"metavar": "NAMES", "help": "modules for LoRA, comma-separated (--hf)"}),
        ("--gradient-checkpointing", {"action": "store_true", "help": "gradient checkpointing (--hf)"}),
        ("--attn", {"default": "sdpa", "help": "attention implementation for --hf: sdpa or eager"}),
        ("--task", {"default": None, "help": "the task head for --hf (default: from the config)"}),
        ("--image-size", {"type": int, "default": None, "help": "image side for vision models (--hf)"}),
        ("--new-tokens", {"type": int, "default": 0, "help": "--mode generate: tokens decoded (--hf)"}),
    ]
    for flag, options in hf_flags:
        if not _has(parser, flag):
            parser.add_argument(flag, **options)


def step_keywords(args: argparse.Namespace) -> dict[str, Any]:
    """The step options (`nnmem.estimate` keywords) from the common flags."""
    return {
        "mode": args.mode,
        "optimizer": args.optimizer,
        "dtype": args.dtype,
        "amp": args.amp,
        "accumulate": args.accumulate,
        "set_to_none": not args.zero_grad_keep,
        "implementation": args.optimizer_impl,
        "allocator": getattr(args, "allocator_conf", None),
        **({"new_tokens": args.new_tokens} if getattr(args, "new_tokens", 0) else {}),
    }


def _hf_options(args: argparse.Namespace, lora: int | None, checkpointing: bool) -> dict[str, Any]:
    from nnmem.frontends.hf import LoRA

    targets = (
        tuple(t.strip() for t in args.lora_targets.split(","))
        if getattr(args, "lora_targets", None)
        else None
    )
    options: dict[str, Any] = {"attn": args.attn, "task": args.task, "gradient_checkpointing": checkpointing}
    options["lora"] = LoRA(rank=lora, targets=targets) if lora else None
    options["image_size"] = getattr(args, "image_size", None)
    options["new_tokens"] = getattr(args, "new_tokens", 0) or 0
    return options


def sized_hf_from_args(
    args: argparse.Namespace, lora: int | None = None, checkpointing: bool | None = None
) -> Sized:
    from nnmem.frontends.hf import parse_overrides

    lora = args.lora_rank if lora is None else lora or None
    checkpointing = args.gradient_checkpointing if checkpointing is None else checkpointing
    return sized_hf(
        args.hf, vary=parse_vary(args.vary), batch=args.batch or 1, seq=args.seq or 128,
        overrides=parse_overrides(args.set or []), mode=args.mode, **_hf_options(args, lora, checkpointing),
    )  # fmt: skip


def sized_from_args(args: argparse.Namespace) -> Sized:
    """The model to fit, from the front-end flags."""
    vary = parse_vary(args.vary)
    if getattr(args, "hf", None):
        return sized_hf_from_args(args)
    if args.model:
        from nnmem.cli import resolve_target

        target = resolve_target(args)
        return sized_inputs(target.model, target.inputs, vary, target.describe)
    if args.spec:
        if vary is not Vary.BATCH:
            raise UsageError(
                "--vary seq needs --hf, or --model with an input whose dimension 1 is the sequence"
            )
        return sized_spec(args.spec, parse_dtype(args.dtype), args.batch or 1)
    raise UsageError(
        "say what to fit: a spec file or text, --model FILE.py:FACTORY with --input SHAPE, or --hf CONFIG"
    )


def what_if_variants(args: argparse.Namespace) -> list[Variant]:
    """One row per setting: precision, optimizer, checkpointing, LoRA (each alone changed)."""
    hf = bool(getattr(args, "hf", None))
    training = str(args.mode).lower() == "train"
    variants = [  # float32 weights, with or without bf16 autocast
        Variant("fp32 (no AMP)", {"amp": None, "dtype": "float32"}),
        Variant("bf16 AMP", {"amp": "bf16", "dtype": "float32"}),
    ]
    for name, label in (("sgd", "SGD"), ("adam", "Adam"), ("adam8bit", "8-bit Adam")):
        if not training:
            variants.append(Variant(label, unavailable="inference: no optimizer"))
        elif name not in optimizer_names():
            variants.append(Variant(label, unavailable=f"optimizer '{name}' is not in this nnmem"))
        else:
            variants.append(Variant(label, {"optimizer": name}))
    for on in (False, True):
        label = f"checkpointing {'on' if on else 'off'}"
        if not hf:
            variants.append(Variant(label, unavailable="n/a: --hf models only (gradient_checkpointing)"))
        elif not training:
            variants.append(Variant(label, unavailable="inference: nothing to recompute"))
        else:
            variants.append(Variant(label, sized=sized_hf_from_args(args, checkpointing=on)))
    rank = args.lora_rank if hf and args.lora_rank else 8
    for lora in (0, rank):
        label = f"LoRA r={lora}" if lora else "no LoRA"
        if not hf:
            variants.append(Variant(label, unavailable="n/a: --hf models only"))
        else:
            variants.append(Variant(label, sized=sized_hf_from_args(args, lora=lora)))
    return variants


def _same_as_given(variant: Variant, args: argparse.Namespace) -> bool:
    """A variant that changes nothing: the base row stands for it."""
    if variant.unavailable:
        return False
    changes = dict(variant.keywords)
    if "amp" in changes:
        float32 = parse_dtype(args.dtype) in (None, torch.float32)
        return float32 and parse_amp(changes["amp"]) == parse_amp(args.amp)
    if "optimizer" in changes and changes["optimizer"] == args.optimizer:
        return True
    if variant.sized is not None:
        label = variant.label
        if label.startswith("checkpointing"):
            return (label == "checkpointing on") == bool(args.gradient_checkpointing)
        if label == "no LoRA":
            return not args.lora_rank
        return bool(args.lora_rank) and label == f"LoRA r={args.lora_rank}"
    return False


def _what_if_rows(
    args: argparse.Namespace, sized: Sized, result: FitResult, keywords: dict[str, Any]
) -> list[WhatIfRow]:
    first = result.probes[0]
    rows: list[WhatIfRow] = []
    for variant in what_if_variants(args):
        if _same_as_given(variant, args):
            rows.append(
                WhatIfRow(
                    variant.label, first.size, first.peak_bytes, first.need_bytes, result.largest, "as given"
                )
            )
        else:
            rows.extend(
                what_if(
                    sized, [variant], gpu=args.gpu, memory=args.gpu_memory, margin=args.margin, **keywords
                )
            )
    return rows


def run_fit(args: argparse.Namespace, console: Console) -> int:
    sized = sized_from_args(args)
    keywords = step_keywords(args)
    result = fit(
        sized, gpu=args.gpu, memory=args.gpu_memory, margin=args.margin, max_size=args.max_size, **keywords
    )
    rows = _what_if_rows(args, sized, result, keywords) if args.what_if else []
    if args.json:
        data = result.to_dict()
        if args.what_if:
            data["what_if"] = [row.to_dict() for row in rows]
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return 0
    from nnmem.render.fit import fit_view

    console.print(fit_view(result, f"nnmem fit: {sized.describe}", rows))
    return 0


def with_gpu_note(report: Report, args: argparse.Namespace) -> Report:
    """`nnmem estimate --gpu/--gpu-memory`: a note on whether the reserved bytes fit its memory."""
    gpu, memory = getattr(args, "gpu", None), getattr(args, "gpu_memory", None)
    if (gpu is None and memory is None) or report.reserved_bytes is None:
        return report
    budget = gpu_budget(gpu, memory, 0.0)
    verdict = "fit in" if report.reserved_bytes <= budget.usable_bytes else "do NOT fit in"
    note = (
        f"on {budget.gpu}: the step's reserved bytes ({report.reserved_bytes:,}) {verdict} the"
        f" {budget.usable_bytes:,} bytes left after the CUDA context; `nnmem fit` finds the largest batch"
    )
    return replace(report, notes=(*report.notes, note))


__all__ = [
    "add_fit_arguments",
    "add_gpu_flags",
    "run_fit",
    "sized_from_args",
    "step_keywords",
    "with_gpu_note",
]
