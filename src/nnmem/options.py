"""Turning the words a user writes (dtypes, modes, devices) into values, with clear errors."""

from __future__ import annotations

import torch

from nnmem.categories import Mode
from nnmem.errors import UsageError, did_you_mean

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
    "fp64": torch.float64,
    "int64": torch.int64,
    "long": torch.int64,
    "int32": torch.int32,
    "int": torch.int32,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
AMP_DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}
DEVICES = ("cuda", "cpu")


def parse_dtype(value: str | torch.dtype | None, what: str = "dtype") -> torch.dtype | None:
    if value is None or isinstance(value, torch.dtype):
        return value
    key = value.strip().lower().removeprefix("torch.")
    if key not in DTYPES:
        raise UsageError(f"unknown {what} '{value}'{did_you_mean(key, DTYPES)} (known: {', '.join(DTYPES)})")
    return DTYPES[key]


def parse_amp(value: str | torch.dtype | None) -> torch.dtype | None:
    """`"bf16"` or `"fp16"` autocast; None or "off"/"none" for none."""
    if value is None or isinstance(value, torch.dtype):
        return value
    key = value.strip().lower()
    if key in ("", "off", "none", "no"):
        return None
    if key not in AMP_DTYPES:
        raise UsageError(f"unknown amp '{value}'{did_you_mean(key, AMP_DTYPES)} (use bf16 or fp16)")
    return AMP_DTYPES[key]


def parse_mode(value: str | Mode) -> Mode:
    try:
        return Mode(str(value).strip().lower())
    except ValueError:
        names = [m.value for m in Mode]
        raise UsageError(
            f"unknown mode '{value}'{did_you_mean(str(value), names)} (known: {', '.join(names)})"
        ) from None


def parse_device(value: str) -> str:
    key = value.strip().lower()
    if key.startswith("cuda:"):
        key = "cuda"
    if key not in DEVICES:
        raise UsageError(f"unknown device '{value}'{did_you_mean(key, DEVICES)} (use cuda or cpu)")
    return key


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
