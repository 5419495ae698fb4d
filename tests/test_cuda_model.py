"""device="cuda": the kernels CUDA picks (attention, autocast), the allocator replay, overheads."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

import nnmem
from nnmem.analyses import cuda_workspace  # noqa: F401  (the rules are registered on import)
from nnmem.analyses.allocator import Alloc, Free
from nnmem.analyses.cuda_memory import allocator_events, extend_cuda_memory, replay
from nnmem.analyses.workspace import workspace_bytes
from nnmem.categories import Category, Mode, Phase
from nnmem.errors import UsageError
from nnmem.report import Breakdown, Peak, Report
from nnmem.trace.cuda import Attention, CudaDevice, CudaKernels, cuda_device, sdpa_backend
from nnmem.trace.cuda_autocast import CUDA_POLICIES, Policy, autocast_ops, cuda_autocast
from nnmem.trace.tracker import Event, StorageRecord, Trace

MiB = 2**20
A100 = cuda_device("a100-80gb")
T4 = cuda_device("t4")
RTX_4090 = cuda_device("rtx-4090")


def qkv(
    dtype: torch.dtype = torch.bfloat16, batch: int = 2, heads: int = 4, q_len: int = 128, kv_len: int = 128,
    head: int = 64, grad: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    q = torch.empty(batch, heads, q_len, head, dtype=dtype, device="meta", requires_grad=grad)
    k = torch.empty(batch, heads, kv_len, head, dtype=dtype, device="meta", requires_grad=grad)
    return q, k, torch.empty_like(k, requires_grad=grad)


# -- which attention backend ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("inputs", "options", "device", "expected"),
    [
        (qkv(torch.bfloat16), {}, A100, Attention.FLASH),  # half, no mask, head 64, sm80
        (qkv(torch.float16), {"is_causal": True}, RTX_4090, Attention.FLASH),
        (qkv(torch.float32), {}, A100, Attention.EFFICIENT),  # flash takes half types only
        (
            qkv(torch.bfloat16),
            {"attn_mask": torch.ones(128, 128, dtype=torch.bool)},
            A100,
            Attention.EFFICIENT,
        ),
        (qkv(torch.bfloat16, q_len=1), {"is_causal": True}, A100, Attention.EFFICIENT),  # causal, Lq != Lk
        (qkv(torch.bfloat16, head=512), {}, A100, Attention.EFFICIENT),  # flash stops at head dim 256
        (
            qkv(torch.bfloat16, head=224),
            {},
            RTX_4090,
            Attention.EFFICIENT,
        ),  # sm89 training, head in (192, 224]
        (qkv(torch.bfloat16, head=224, grad=False), {}, RTX_4090, Attention.FLASH),  # ... fine in inference
        (qkv(torch.bfloat16), {}, T4, Attention.MATH),  # sm75: no flash, no bf16 in efficient
        (qkv(torch.float16), {}, T4, Attention.EFFICIENT),
        (qkv(torch.float32, head=62), {}, A100, Attention.MATH),  # fp32 head dims must be multiples of 4
        (qkv(torch.float32, head=60), {}, A100, Attention.EFFICIENT),
    ],
)
def test_the_backend_is_the_one_cuda_would_pick(
    inputs: tuple[torch.Tensor, ...], options: dict[str, Any], device: CudaDevice, expected: Attention
) -> None:
    assert sdpa_backend(*inputs, **options, device=device) is expected


def test_three_dimensional_inputs_take_the_math_path() -> None:
    q = torch.empty(4, 128, 64, dtype=torch.bfloat16, device="meta")
    assert sdpa_backend(q, q, q, device=A100) is Attention.MATH


def test_grouped_query_heads_need_enable_gqa() -> None:
    q, _, _ = qkv(torch.bfloat16, heads=8)
    _, k, v = qkv(torch.bfloat16, heads=2)
    assert sdpa_backend(q, k, v, device=A100) is Attention.MATH  # head counts differ without enable_gqa
    assert sdpa_backend(q, k, v, enable_gqa=True, device=A100) is Attention.FLASH


def _run_attention(
    device: CudaDevice, dtype: torch.dtype, **options: Any
) -> tuple[torch.Tensor, CudaKernels]:
    kernels = CudaKernels(device)
    with FakeTensorMode(), kernels:
        q, k, v = (t.to("cpu").detach().requires_grad_() for t in qkv(dtype, q_len=100, kv_len=100))
        out = F.scaled_dot_product_attention(q, k, v, **options)
    return out, kernels


def test_flash_attention_saves_a_float32_logsumexp_not_the_scores() -> None:
    out, kernels = _run_attention(A100, torch.bfloat16, is_causal=True)
    assert kernels.chosen == {Attention.FLASH: 1}
    node = out.grad_fn
    assert type(node).__name__ == "ScaledDotProductFlashAttentionBackward0"
    lse = node._saved_logsumexp
    assert tuple(lse.shape) == (2, 4, 100) and lse.dtype is torch.float32  # (B, H, L), 3.2 KiB


def test_memory_efficient_attention_pads_its_logsumexp_to_32_rows() -> None:
    out, kernels = _run_attention(A100, torch.float32)
    assert kernels.chosen == {Attention.EFFICIENT: 1}
    lse = out.grad_fn._saved_log_sumexp
    assert tuple(lse.shape) == (2, 4, math.ceil(100 / 32) * 32) and lse.dtype is torch.float32


class Attend(nn.Module):
    """Self-attention over (B, L, 3 * H * E) projections; no other activations to speak of."""

    def __init__(self, heads: int = 4, head: int = 32) -> None:
        super().__init__()
        self.heads, self.head = heads, head
        self.proj = nn.Linear(8, 3 * heads * head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, _ = x.shape
        q, k, v = self.proj(x).view(b, length, 3, self.heads, self.head).permute(2, 0, 3, 1, 4)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def test_the_math_fallback_holds_the_scores_that_flash_does_not() -> None:
    x = torch.empty(2, 256, 8, device="meta")
    flash = nnmem.estimate(Attend(), x, optimizer="sgd", amp="fp16", gpu="a100-80gb")
    math_path = nnmem.estimate(Attend(), x, optimizer="sgd", amp="bf16", gpu="t4")  # sm75 has no bf16 kernel
    assert any(": 2 flash (" in note for note in flash.notes)  # one call in each of the two steps
    assert any(": 2 math (" in note for note in math_path.notes)
    scores = 2 * 4 * 256 * 256 * 4  # B x H x L x S, float32 (math upcasts half inputs)
    assert math_path.peak_bytes >= flash.peak_bytes + scores


def test_the_flash_backward_scratch_is_softmax_d_and_the_dq_accumulator() -> None:
    q, k, v = qkv(torch.bfloat16, batch=2, heads=4, q_len=100, head=64)
    args = (q, q, k, v)
    rounded = 128  # 100 rows rounded up to 128
    expected = 2 * 4 * rounded * 4 + 2 * rounded * 4 * 64 * 4  # softmax_d + dq_accum, float32
    op = torch.ops.aten._scaled_dot_product_flash_attention_backward.default
    assert workspace_bytes(op, args, {}, None, "cuda", 1) == expected


# -- autocast ------------------------------------------------------------------------------


def test_every_cuda_autocast_op_of_this_pytorch_has_a_policy() -> None:
    assert set(autocast_ops("AutocastCUDA")) <= set(CUDA_POLICIES)


def _dtypes_under_autocast(device: str) -> dict[str, torch.dtype]:
    """Output dtypes of a few ops on bf16/fp32 inputs under autocast on `device` (fakes)."""
    with FakeTensorMode():
        x = torch.empty(4, 8, device=device)
        h = torch.empty(4, 8, dtype=torch.bfloat16, device=device)
        v, w = torch.empty(4, device=device), torch.empty(8, device=device)
        if device == "cuda":  # torch.autocast("cuda") refuses without a GPU; the kernels are there
            torch._C.set_autocast_enabled("cuda", True)
            torch._C.set_autocast_dtype("cuda", torch.bfloat16)
            context: Any = torch.autocast("cpu", enabled=False)
        else:
            context = torch.autocast("cpu", dtype=torch.bfloat16)
        try:
            with context:
                return {
                    "mm": (x @ x.T).dtype,
                    "softmax": h.softmax(-1).dtype,
                    "layer_norm": F.layer_norm(h, (8,)).dtype,
                    "exp": h.exp().dtype,
                    "sum": h.sum().dtype,
                    "addmv": torch.addmv(v, x, w).dtype,
                    "avg_pool3d": F.avg_pool3d(h.view(1, 1, 4, 2, 4), 2).dtype,
                }
        finally:
            torch._C.set_autocast_enabled("cuda", False)


def test_the_trace_casts_as_cuda_autocast_does() -> None:
    """The independent answer: PyTorch's own CUDA autocast kernels, run on fake CUDA tensors."""
    cuda = _dtypes_under_autocast("cuda")
    with cuda_autocast():
        emulated = _dtypes_under_autocast("cpu")
    assert emulated == cuda
    assert cuda["softmax"] is torch.float32 and cuda["avg_pool3d"] is torch.bfloat16


def test_cpu_autocast_is_back_after_the_trace() -> None:
    before = _dtypes_under_autocast("cpu")
    with cuda_autocast():
        pass
    assert _dtypes_under_autocast("cpu") == before
    assert before["softmax"] is torch.bfloat16 and before["avg_pool3d"] is torch.float32  # CPU's lists


def test_binary_cross_entropy_is_refused_under_amp_as_on_cuda() -> None:
    assert CUDA_POLICIES["binary_cross_entropy"] is Policy.BANNED
    model = nn.Sequential(nn.Linear(4, 1), nn.Sigmoid())

    def loss(out: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy(out, torch.zeros_like(out))

    with pytest.raises(nnmem.NnmemError, match="unsafe to autocast"):
        nnmem.estimate(model, torch.empty(2, 4, device="meta"), loss=loss, amp="bf16")


# -- the allocator replay -------------------------------------------------------------------


def _record(index: int, nbytes: int, op: str = "aten.add.Tensor", birth: int = 0, **kw: Any) -> StorageRecord:
    return StorageRecord(index, nbytes, None, "m", op, Phase.FORWARD, 1, 1, birth, **kw)


def test_a_trace_becomes_allocator_requests_in_order() -> None:
    """A parameter alive from the start; an mm output (the first BLAS op: a cuBLAS workspace after
    it); a temporary resized from 1 KiB to 3 KiB (a new block, then the old one freed); deaths."""
    trace = Trace()
    trace.records = [
        _record(0, 4096, "weight", birth=-1, nbytes_at_start=4096),
        _record(1, 2048, "aten.mm.default", birth=0, death=4),
        _record(2, 3072, birth=1, death=3),
    ]
    trace.baseline = [0]
    trace.events = [
        Event(1, 2048, Phase.FORWARD, 1, "m"),
        Event(2, 1024, Phase.FORWARD, 1, "m"),
        Event(2, 2048, Phase.FORWARD, 1, "m"),
        Event(2, -3072, Phase.FORWARD, 1, "m"),
        Event(1, -2048, Phase.FORWARD, 1, "m"),
    ]
    workspace = 8 * MiB
    assert allocator_events(trace, workspace) == [
        Alloc(0, 4096),
        Alloc(1, 2048),
        Alloc(3, workspace),  # after the first matrix multiply's output
        Alloc(2, 1024),
        Alloc(4, 3072),  # the resize: new block first
        Free(2),
        Free(4),
        Free(1),
    ]
    assert allocator_events(trace, workspace, blas_at_start=True)[0] == Alloc(3, workspace)


def test_training_holds_two_cublas_workspaces_and_inference_one() -> None:
    from nnmem.analyses.cuda_memory import estimate_with_trace

    model, x = (
        nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)),
        torch.empty(8, 64, device="meta"),
    )
    _, train, kernels = estimate_with_trace(model, x, optimizer="sgd", gpu="a100-80gb")
    _, infer, _ = estimate_with_trace(model, x, mode="inference", gpu="a100-80gb")
    assert replay(train, kernels.device).blas_workspaces == 2  # the Python thread and autograd's
    assert replay(infer, kernels.device).blas_workspaces == 1
    conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())  # cuDNN, no cuBLAS
    _, conv_trace, _ = estimate_with_trace(conv, torch.empty(2, 3, 8, 8, device="meta"), optimizer="sgd")
    assert replay(conv_trace).blas_workspaces == 0


def test_the_workspace_size_follows_the_gpu() -> None:
    assert A100.blas_workspace_bytes == 4096 * 1024 * 2 + 16 * 1024 * 8  # :4096:2:16:8, 8 MiB + 128 KiB
    assert cuda_device("h100-80gb").blas_workspace_bytes == 32 * MiB  # Hopper: :4096:8
    assert cuda_device("mi300x").blas_workspace_bytes == 128 * MiB  # hipBLAS on gfx94x


def test_a_cuda_report_holds_the_allocator_view_and_a_cpu_report_does_not() -> None:
    model, x = (
        nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)),
        torch.empty(32, 256, device="meta"),
    )
    cuda = nnmem.estimate(model, x, gpu="a100-80gb")
    cpu = nnmem.estimate(model, x, device="cpu")
    assert cpu.reserved_bytes is None and "reserved_bytes" not in cpu.to_dict()
    assert cuda.reserved_bytes is not None and cuda.allocated_rounded_bytes is not None
    two_workspaces = 2 * A100.blas_workspace_bytes
    assert cuda.allocated_rounded_bytes >= cuda.peak_bytes + two_workspaces  # blocks round up, never down
    assert cuda.reserved_bytes >= cuda.allocated_rounded_bytes
    assert cuda.reserved_bytes % (2 * MiB) == 0  # segments are whole 2 MiB pages
    assert cuda.to_dict()["reserved_bytes"] == cuda.reserved_bytes
    assert cuda.fragmentation_bytes is not None and 0 <= cuda.fragmentation_bytes <= cuda.reserved_bytes


def test_a_gpu_needs_device_cuda() -> None:
    with pytest.raises(UsageError, match="device='cuda'"):
        nnmem.estimate(nn.Linear(2, 2), torch.empty(1, 2, device="meta"), device="cpu", gpu="t4")


def _probe_report(reserved: int, allocated: int) -> Report:
    peak = Peak(0, Phase.FORWARD, "", "", Breakdown.of({Category.ACTIVATION: 0}), ())
    return Report(
        0,
        Mode.TRAIN,
        "cuda",
        "estimate",
        peak,
        None,
        0,
        reserved_bytes=reserved,
        allocated_rounded_bytes=allocated,
    )


def test_extrapolated_allocator_numbers_follow_the_probes_line() -> None:
    reports = [
        _probe_report(100 * MiB, 90 * MiB),
        _probe_report(150 * MiB, 130 * MiB),
        _probe_report(199 * MiB, 170 * MiB),
    ]
    reserved, allocated, fragmentation = extend_cuda_memory(reports, (2, 3, 4), 32)
    # the line through the first and last probes: 49.5 MiB a block, 28 blocks past the last probe
    assert reserved == math.ceil((199 + 28 * 49.5) / 2) * 2 * MiB  # rounded up to 2 MiB pages
    assert allocated == (170 + 28 * 40) * MiB
    assert fragmentation == reserved - allocated
    assert extend_cuda_memory(
        [_probe_report(0, 0)] * 2 + [Report(**{**_probe_report(0, 0).__dict__, "reserved_bytes": None})],
        (2, 3, 4),
        8,
    ) == (None, None, None)


def test_checkpointing_recomputes_with_the_cuda_kernels_too() -> None:
    """Recomputation must save what the forward saved (torch.utils.checkpoint checks the count)."""
    from nnmem.frontends.hf import from_hf_config

    tiny = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 4, "vocab_size": 256}  # fmt: skip
    target = from_hf_config("llama", overrides=tiny, batch=2, seq=64, gradient_checkpointing=True)
    report = nnmem.estimate(target.model, target.inputs, amp="bf16", gpu="a100-80gb")
    # two layers, two steps, each layer's attention run in the forward and again in the backward
    assert any(": 8 flash (" in note for note in report.notes)
