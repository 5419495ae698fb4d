"""Adam with 8-bit blockwise state, laid out as bitsandbytes' `Adam8bit` lays it out.

bitsandbytes itself needs its compiled kernels and cannot run on fake tensors, so this
is a small real optimizer that holds the same state:

- per parameter of at least `MIN_8BIT_SIZE` (4096) elements: `state1` and `state2`,
  uint8 tensors of the parameter's shape (the quantized first and second moments),
  and `absmax1`, `absmax2`: one float32 per block of `BLOCK_SIZE` (2048) elements;
- per smaller parameter: `state1` and `state2` in float32, as bitsandbytes' 32-bit path;
- two quantization maps of 256 float32 values (signed for the first moment, unsigned
  for the second), shared by all parameters, as bitsandbytes' `qmap1`/`qmap2`;
- the step count as a Python int (no tensor).

Its step dequantizes, updates and re-quantizes in plain torch ops, chunk by chunk, so
the trace sees the temporaries of such an update. bitsandbytes' CUDA kernel does the
same inside registers and holds no temporaries: the estimate's optimizer phase is
therefore up to about 12 bytes per element of one chunk (48 MiB) above the real one.

Known limitations: the quantization maps are a dynamic (log-spaced) code like
bitsandbytes' but not bit-identical to it; percentile clipping, `max_unorm` and paged
state are not modelled. Recent bitsandbytes releases may use smaller blocks; the state
then grows by a float32 per block.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F

from nnmem.trace.optimizers import NOTE_8BIT

BLOCK_SIZE = 2048  # elements quantized together with one float32 absmax
MIN_8BIT_SIZE = 4096  # smaller parameters keep 32-bit state
CHUNK_SIZE = BLOCK_SIZE * 2048  # elements updated at once (a whole number of blocks): 4 Mi
NOTE = NOTE_8BIT


def dynamic_code(signed: bool) -> list[float]:
    """256 sorted values in [-1, 1] (or [0, 1]), dense near zero: a dynamic-exponent code.

    Seven decades (1e-7 .. 1) each get an equal share of the codes, linearly spaced
    within the decade; zero and one are always present.
    """
    values = {0.0, 1.0, -1.0} if signed else {0.0, 1.0}
    per_decade = (127 if signed else 254) // 7
    for decade in range(7):
        top = 10.0 ** (decade - 6)
        for i in range(per_decade):
            magnitude = top * (0.1 + 0.9 * (i + 0.5) / per_decade)
            values.add(magnitude)
            if signed:
                values.add(-magnitude)
    ordered = sorted(values)
    ordered += [1.0] * (256 - len(ordered))  # pad with the top code; duplicates are harmless
    return ordered[:256]


class Adam8bit(torch.optim.Optimizer):
    """Adam (with optional decoupled weight decay) whose moments are stored in 8 bits."""

    nnmem_note = NOTE

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        min_8bit_size: int = MIN_8BIT_SIZE,
    ) -> None:
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)
        self.min_8bit_size = min_8bit_size
        self._codes: tuple[torch.Tensor, torch.Tensor] | None = None

    def _shared_codes(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self._codes is None:
            self._codes = (
                torch.tensor(dynamic_code(signed=True), dtype=torch.float32, device=device),
                torch.tensor(dynamic_code(signed=False), dtype=torch.float32, device=device),
            )
        return self._codes

    def _init_state(self, param: torch.Tensor) -> dict[str, Any]:
        state: dict[str, Any] = self.state[param]
        state["step"] = 0
        n = param.numel()
        if n < self.min_8bit_size:
            state["state1"] = torch.zeros_like(
                param, dtype=torch.float32, memory_format=torch.preserve_format
            )
            state["state2"] = torch.zeros_like(
                param, dtype=torch.float32, memory_format=torch.preserve_format
            )
            return state
        qmap1, qmap2 = self._shared_codes(param.device)
        blocks = math.ceil(n / BLOCK_SIZE)
        state["state1"] = torch.zeros_like(param, dtype=torch.uint8, memory_format=torch.preserve_format)
        state["qmap1"] = qmap1
        state["state2"] = torch.zeros_like(param, dtype=torch.uint8, memory_format=torch.preserve_format)
        state["qmap2"] = qmap2
        state["absmax1"] = torch.zeros(blocks, dtype=torch.float32, device=param.device)
        state["absmax2"] = torch.zeros(blocks, dtype=torch.float32, device=param.device)
        return state

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param] if param in self.state else self._init_state(param)
                state["step"] += 1
                if state["state1"].dtype == torch.uint8:
                    _update_8bit(param, state, group)
                else:
                    _update_32bit(param, state, group)
        return loss


def _step_sizes(group: dict[str, Any], step: int) -> tuple[float, float]:
    beta1, beta2 = group["betas"]
    correction1 = 1 - beta1**step
    correction2 = 1 - beta2**step
    return group["lr"] * math.sqrt(correction2) / correction1, group["eps"] * math.sqrt(correction2)


def _update_32bit(param: torch.Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
    beta1, beta2 = group["betas"]
    grad = param.grad
    assert grad is not None
    grad32 = grad.float()
    state["state1"].mul_(beta1).add_(grad32, alpha=1 - beta1)
    state["state2"].mul_(beta2).addcmul_(grad32, grad32, value=1 - beta2)
    step_size, eps = _step_sizes(group, state["step"])
    if group["weight_decay"]:
        param.mul_(1 - group["lr"] * group["weight_decay"])
    update = state["state1"] / (state["state2"].sqrt() + eps)
    param.add_(update.to(param.dtype), alpha=-step_size)


def _update_8bit(param: torch.Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
    """Dequantize -> Adam update -> quantize, `CHUNK_SIZE` elements (whole blocks) at a time."""
    beta1, beta2 = group["betas"]
    grad = param.grad
    assert grad is not None
    step_size, eps = _step_sizes(group, state["step"])
    if not param.is_contiguous():
        raise ValueError("Adam8bit updates contiguous parameters only")
    flat_param = param.view(-1)
    flat_grad = grad.reshape(-1)
    codes1, codes2 = state["state1"].view(-1), state["state2"].view(-1)
    n = flat_param.numel()
    for start in range(0, n, CHUNK_SIZE):
        end = min(start + CHUNK_SIZE, n)
        blocks = slice(start // BLOCK_SIZE, math.ceil(end / BLOCK_SIZE))
        g = flat_grad[start:end].float()
        m = _dequantize(codes1[start:end], state["absmax1"][blocks], state["qmap1"])
        v = _dequantize(codes2[start:end], state["absmax2"][blocks], state["qmap2"])
        m.mul_(beta1).add_(g, alpha=1 - beta1)
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        del g
        if group["weight_decay"]:
            flat_param[start:end].mul_(1 - group["lr"] * group["weight_decay"])
        update = m / (v.sqrt() + eps)
        flat_param[start:end].add_(update.to(param.dtype), alpha=-step_size)
        del update
        _quantize(m, state["qmap1"], codes1[start:end], state["absmax1"][blocks])
        _quantize(v, state["qmap2"], codes2[start:end], state["absmax2"][blocks])


def _blocks_of(values: torch.Tensor) -> torch.Tensor:
    """`values` padded with zeros to whole blocks, shaped (blocks, BLOCK_SIZE)."""
    short = -values.numel() % BLOCK_SIZE
    if short:
        values = F.pad(values, (0, short))
    return values.view(-1, BLOCK_SIZE)


def _dequantize(codes: torch.Tensor, absmax: torch.Tensor, qmap: torch.Tensor) -> torch.Tensor:
    values = qmap[codes.long()]
    scaled = _blocks_of(values) * absmax[:, None]
    return scaled.view(-1)[: codes.numel()]


def _quantize(
    values: torch.Tensor, qmap: torch.Tensor, codes_out: torch.Tensor, absmax_out: torch.Tensor
) -> None:
    blocks = _blocks_of(values)
    absmax = blocks.abs().amax(dim=1)
    absmax_out.copy_(absmax)
    normalized = blocks / absmax.clamp(min=torch.finfo(torch.float32).tiny)[:, None]
    midpoints = (qmap[1:] + qmap[:-1]) / 2
    nearest = torch.bucketize(normalized, midpoints)
    codes_out.copy_(nearest.view(-1)[: codes_out.numel()])
