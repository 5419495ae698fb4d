"""What a step does on a CUDA GPU that its trace on CPU fake tensors would not: the kernels
PyTorch picks there, applied while the trace runs.

Fake CUDA tensors cannot run attention in a CPU build, so `device="cuda"` is traced with CPU
fakes, and the CUDA-side decisions that change memory are made here:

- **Attention.** `F.scaled_dot_product_attention` is replaced while the trace runs (above
  autograd) by the backend PyTorch's CUDA dispatcher would choose
  (`sdpa_backend`, after aten/src/ATen/native/transformers/cuda/sdp_utils.cpp): flash attention
  (fp16/bf16, no explicit mask, head dim <= 256, sm80+), else memory-efficient attention (also
  fp32 and explicit masks), else the math fallback. The CUDA op itself is called on the fakes
  (`aten._scaled_dot_product_flash_attention`, `..._efficient_attention`; their meta kernels
  give the CUDA outputs), so autograd saves exactly what the CUDA kernel saves: the output and a
  float32 logsumexp, (B, H, L) for flash and (B, H, ceil(L/32)*32) for memory-efficient
  attention, never an L x S matrix; the math fallback materialises the L x S scores (in float32
  for half inputs) as it does on CUDA. The preprocessing of attention.cpp comes along: flash pads
  a head dim that is not a multiple of 8; memory-efficient attention turns a boolean mask into an
  additive one and pads its last dim to a multiple of 16. The backward kernels' own scratch
  (flash's float32 dq accumulator) is a workspace rule (`nnmem.analyses.cuda_workspace`).
- **Autocast.** Under `amp`, CUDA's autocast op lists replace CPU's (`nnmem.trace.cuda_autocast`).
- **Optimizers** take their CUDA defaults (foreach) in `nnmem.trace.optimizers`.

`CudaDevice` says which GPU: its compute capability decides flash (sm80+) and bf16 support
(sm80+), and the cuBLAS workspace size (`nnmem.analyses.workspace.cublas_workspace_bytes`).

Known limitations: cuDNN attention, which PyTorch prefers on sm90/sm100 with cuDNN newer than
9.15, is taken as flash attention (it saves the same output and float32 softmax statistics);
flash attention's split-KV scratch for small problems (a few times the output, only when
batch x heads x blocks is small next to the SM count) is not counted; memory-efficient attention
with grouped-query heads is traced with K and V expanded to the query heads; code that bound
`scaled_dot_product_attention` to another name before the trace, or calls
`torch._C._nn.scaled_dot_product_attention` or the inference fast path of `nn.MultiheadAttention`,
keeps the CPU kernel; the replacement (and autocast's) is process-wide while a trace runs, so two
CUDA traces must not run in threads of one process at once.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import torch
import torch.nn.functional as F

from nnmem.analyses import cuda_workspace  # noqa: F401  (registers the CUDA attention workspace rules)
from nnmem.analyses.workspace import cublas_workspace_bytes
from nnmem.categories import StrEnum
from nnmem.errors import UsageError
from nnmem.gpus import Gpu, Vendor, get_gpu
from nnmem.trace.cuda_autocast import cuda_autocast

MiB: Final = 1024**2


class Attention(StrEnum):
    """The scaled-dot-product attention backends of PyTorch on CUDA."""

    FLASH = "flash"
    EFFICIENT = "efficient"
    MATH = "math"


# Compute capability of each GPU in `nnmem.gpus`' catalogue (NVIDIA's CUDA GPUs list,
# https://developer.nvidia.com/cuda-gpus); the MI300X is gfx942 under ROCm.
COMPUTE_CAPABILITY: Final[dict[str, tuple[int, int]]] = {
    "t4": (7, 5),
    "rtx-3090": (8, 6),
    "rtx-4090": (8, 9),
    "l4": (8, 9),
    "l40s": (8, 9),
    "a10g": (8, 6),
    "a100-40gb": (8, 0),
    "a100-80gb": (8, 0),
    "h100-80gb": (9, 0),
    "h200": (9, 0),
    "b200": (10, 0),
    "mi300x": (9, 4),
}
GENERIC_CAPABILITY: Final = (8, 0)  # an A100-class GPU, when no GPU is named


@dataclass(frozen=True)
class CudaDevice:
    """The GPU whose kernels are modelled (or a generic sm80 one)."""

    name: str = "generic sm80"
    compute_capability: tuple[int, int] = GENERIC_CAPABILITY
    rocm: bool = False

    @property
    def blas_workspace_bytes(self) -> int:
        """One cuBLAS workspace (per handle and stream), from the caching allocator.

        `CUBLAS_WORKSPACE_CONFIG` if set, else 8 MiB + 128 KiB, or 32 MiB on Hopper and newer;
        under ROCm hipBLAS takes 32 MiB, 128 MiB on gfx94x (aten/src/ATen/cuda/CublasHandlePool.cpp).
        """
        if self.rocm:
            return 128 * MiB if self.compute_capability == (9, 4) else 32 * MiB
        return cublas_workspace_bytes(compute_capability=self.compute_capability)


def cuda_device(gpu: CudaDevice | Gpu | str | None = None) -> CudaDevice:
    """The `CudaDevice` for a catalogue GPU (or its name); a generic sm80 GPU for None."""
    if gpu is None:
        return CudaDevice()
    if isinstance(gpu, CudaDevice):
        return gpu
    if isinstance(gpu, str):
        gpu = get_gpu(gpu)
    capability = COMPUTE_CAPABILITY.get(gpu.name, GENERIC_CAPABILITY)
    return CudaDevice(gpu.name, capability, rocm=gpu.vendor is Vendor.AMD)


# -- choosing the backend ----------------------------------------------------------------


def _in_range(capability: tuple[int, int], low: tuple[int, int], high: tuple[int, int]) -> bool:
    return low <= capability <= high


def _last_dim_contiguous(t: torch.Tensor, ignore_singleton: bool) -> bool:
    return t.stride(-1) == 1 or (ignore_singleton and t.shape[-1] == 1)


def _heads_ok(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, enable_gqa: bool) -> bool:
    """`check_batch_size_and_num_heads_dense` with grouped-query support."""
    if not (q.shape[0] == k.shape[0] == v.shape[0]):
        return False
    hq, hk, hv = q.shape[1], k.shape[1], v.shape[1]
    if hq == hk == hv:
        return True
    return enable_gqa and hk == hv and hk > 0 and hq % hk == 0


def _alignment(dtype: torch.dtype, capability: tuple[int, int]) -> int:
    """`minimum_gemm_alignment`: elements the head dim must be a multiple of (efficient attention)."""
    half = dtype in (torch.float16, torch.bfloat16)
    tensor_cores = capability[0] >= 8 or (capability[0] >= 7 and half)
    alignment = 4 if capability[0] >= 8 else 1
    return max(alignment, 128 // (16 if half else 32)) if tensor_cores else alignment


def _flash_ok(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    dropout_p: float,
    is_causal: bool,
    enable_gqa: bool,
    grad: bool,
    device: CudaDevice,
) -> bool:
    cc = device.compute_capability
    head = q.shape[-1]
    if mask is not None or not (head == k.shape[-1] == v.shape[-1] and head <= 256):
        return False
    if not _in_range(cc, (8, 0), (12, 1)) and not device.rocm:
        return False
    narrow = _in_range(cc, (8, 6), (8, 9)) or _in_range(cc, (12, 0), (12, 1))
    if grad and narrow and not (head <= 192 or (dropout_p == 0.0 and head > 224)):
        return False
    if is_causal and q.shape[-2] != k.shape[-2]:
        return False
    if q.dtype not in (torch.float16, torch.bfloat16):
        return False
    return (
        _heads_ok(q, k, v, enable_gqa)
        and min(q.shape[-2], k.shape[-2]) > 0
        and all(_last_dim_contiguous(t, True) for t in (q, k, v))
    )


def _efficient_ok(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, enable_gqa: bool, device: CudaDevice
) -> bool:
    cc = device.compute_capability
    if not _in_range(cc, (5, 0), (12, 1)) and not device.rocm:
        return False
    allowed = (torch.float16, torch.float32, torch.bfloat16) if cc[0] >= 8 else (torch.float16, torch.float32)
    if q.dtype not in allowed:
        return False
    align = _alignment(q.dtype, cc)
    if q.shape[-1] != k.shape[-1] or q.shape[-1] % align or v.shape[-1] % align or v.shape[-1] == 0:
        return False
    if cc[0] >= 8 and any(t.storage_offset() % align for t in (q, k, v)):
        return False
    return (
        _heads_ok(q, k, v, enable_gqa)
        and min(q.shape[-2], k.shape[-2]) > 0
        and all(_last_dim_contiguous(t, False) for t in (q, k, v))
    )


def sdpa_backend(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    enable_gqa: bool = False,
    device: CudaDevice = CudaDevice(),
) -> Attention:
    """The backend `F.scaled_dot_product_attention` takes on `device` for these inputs.

    The order and the checks of sdp_utils.cpp's `select_sdp_backend` with the default priority
    (flash, memory-efficient, math): `can_use_flash_attention`, `can_use_mem_efficient_attention`.
    """
    if any(t.dim() != 4 or t.is_nested for t in (query, key, value)):
        return Attention.MATH
    grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
    if _flash_ok(query, key, value, attn_mask, dropout_p, is_causal, enable_gqa, grad, device):
        return Attention.FLASH
    if _efficient_ok(query, key, value, enable_gqa, device):
        return Attention.EFFICIENT
    return Attention.MATH


# -- running it ----------------------------------------------------------------------------


def _additive_mask(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """`convert_boolean_attn_mask`: True (attend) -> 0, False -> -inf, in the query's dtype."""
    if mask is None or mask.dtype is not torch.bool:
        return mask
    return torch.zeros_like(mask, dtype=dtype).masked_fill_(mask.logical_not(), -math.inf)


def _efficient_mask(mask: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """`preprocess_mask`: expanded to (B, H, L, S); the last dim padded to a multiple of 16."""
    mask = mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    length = mask.shape[-1]
    if length % 16:
        return F.pad(mask, (0, 16 - length % 16))[..., :length]
    if any(mask.stride(i) % 16 for i in range(3)):
        return mask.contiguous()
    return mask


def _flash(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float, is_causal: bool, scale: float | None
) -> torch.Tensor:
    head = q.shape[-1]
    if scale is None:
        scale = 1.0 / math.sqrt(head)
    if head % 8:  # pad_last_dim<8>: the kernel wants head dims in multiples of 8
        q, k, v = (F.pad(t, (0, 8 - head % 8)) for t in (q, k, v))
    out: torch.Tensor = torch.ops.aten._scaled_dot_product_flash_attention(
        q, k, v, dropout_p, is_causal, False, scale=scale
    )[0]
    return out[..., :head] if head % 8 else out


def _lower(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype is not torch.float64:
        return value.to(dtype)
    return value


class CudaKernels:
    """While entered, attention runs the CUDA backend `device` would pick; `chosen` counts them.

    It replaces `torch.nn.functional.scaled_dot_product_attention` for the duration (and puts it
    back), so that callers that look it up when they call it (transformers, `nn.MultiheadAttention`)
    get the CUDA path, in the forward and in activation checkpointing's recomputation alike.
    """

    def __init__(self, device: CudaDevice) -> None:
        self.device = device
        self.chosen: Counter[Attention] = Counter()
        self._saved: list[Any] = []

    def __enter__(self) -> CudaKernels:
        self._saved.append(F.scaled_dot_product_attention)
        F.scaled_dot_product_attention = self.attention
        return self

    def __exit__(self, *exc: object) -> None:
        F.scaled_dot_product_attention = self._saved.pop()

    def attention(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attn_mask: torch.Tensor | None = None,
        dropout_p: float = 0.0,
        is_causal: bool = False,
        scale: float | None = None,
        enable_gqa: bool = False,
    ) -> torch.Tensor:
        """`F.scaled_dot_product_attention` as CUDA runs it (attention.cpp's dispatch)."""
        if torch.is_autocast_enabled("cpu"):  # autocast casts q, k, v (and a float mask) first
            dtype = torch.get_autocast_dtype("cpu")
            query, key, value, attn_mask = (_lower(t, dtype) for t in (query, key, value, attn_mask))
        with torch.autocast("cpu", enabled=False):
            backend = sdpa_backend(
                query, key, value, attn_mask, dropout_p, is_causal, enable_gqa, self.device
            )
            self.chosen[backend] += 1
            if backend is Attention.FLASH:
                return _flash(query, key, value, dropout_p, is_causal, scale)
            mask = _additive_mask(attn_mask, query.dtype)
            if backend is Attention.EFFICIENT:
                if key.shape[1] != query.shape[1]:  # grouped-query heads: traced expanded
                    groups = query.shape[1] // key.shape[1]
                    key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
                if mask is not None:
                    mask = _efficient_mask(mask, query, key)
                grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
                out: torch.Tensor = torch.ops.aten._scaled_dot_product_efficient_attention(
                    query, key, value, mask, grad, dropout_p, is_causal, scale=scale
                )[0]
                return out
            out = torch.ops.aten._scaled_dot_product_attention_math(
                query, key, value, mask, dropout_p, is_causal, None, scale=scale, enable_gqa=enable_gqa
            )[0]
            return out


def cuda_kernels(device: str, gpu: CudaDevice | Gpu | str | None = None) -> CudaKernels | None:
    """The CUDA kernel choices for a trace on `device`: None for "cpu"; `gpu` only with "cuda"."""
    if device != "cuda":
        if gpu is not None:
            raise UsageError(f"a GPU ({gpu}) was given with device='{device}'; a GPU needs device='cuda'")
        return None
    return CudaKernels(cuda_device(gpu))


@contextlib.contextmanager
def cuda_step(kernels: CudaKernels, amp: bool) -> Iterator[CudaKernels]:
    """Within the block, attention and (with `amp`) autocast follow CUDA on `kernels.device`."""
    autocast = cuda_autocast() if amp else contextlib.nullcontext()
    with kernels, autocast:
        yield kernels


__all__ = [
    "COMPUTE_CAPABILITY",
    "Attention",
    "CudaDevice",
    "CudaKernels",
    "cuda_device",
    "cuda_kernels",
    "cuda_step",
    "sdpa_backend",
]
