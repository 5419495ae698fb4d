"""Workspace rules against the real kernels: each rule's bytes equal the measured transient.

Every test runs the real CPU op under the profiler (`_profiler_util.measure`) and compares the
bytes it allocated and freed inside itself with what `nnmem.analyses.workspace` predicts. The
oneDNN convolution scratchpads, the bf16 matmul scratchpad and the LSTM rules are derived from
the kernels' sources and checked term by term on a few shapes; the LSTM, tiny ViT and
checkpointed Llama are also checked end to end (estimate against a measured step). Measured on
PyTorch 2.13 with oneDNN 3.12 on an AVX-512 (bf16) CPU, 2 threads.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from _profiler_util import measure
from torch import nn

import nnmem
from nnmem import zoo
from nnmem.analyses import onednn_conv as oc
from nnmem.analyses import workspace as ws

A = torch.ops.aten
THREADS = 2  # the benchmark's setting
AVX512 = torch.backends.cpu.get_cpu_capability().startswith("AVX512")
needs_avx512 = pytest.mark.skipif(not AVX512, reason="oneDNN layouts measured on AVX-512 (block 16)")


@pytest.fixture(autouse=True)
def _two_threads() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(before)


def measured_and_rule(func: Any, *args: Any, **kwargs: Any) -> tuple[int, int | None]:
    """(bytes the real call allocated and freed inside itself, the rule's bytes)."""
    with torch.no_grad():
        transient = measure(lambda: func(*args, **kwargs)).transient_bytes
        outputs = func(*args, **kwargs)
    return transient, ws.workspace_bytes(func, args, kwargs, outputs, "cpu", torch.get_num_threads())


# ----------------------------------------------------------------------------- registry


def test_key_is_the_overload_name() -> None:
    assert str(A.convolution.default) == "aten.convolution.default"
    assert ("aten.convolution.default", "cpu") in ws.registered_rules()


def test_registering_a_key_twice_is_refused() -> None:
    with pytest.raises(ValueError, match=r"aten\.convolution\.default on cpu"):
        ws.register_workspace("aten.convolution.default", "cpu")(lambda args, kwargs, out, threads: 0)


def test_unknown_op_is_none_and_hidden_free_op_is_zero() -> None:
    x = torch.randn(4, 4)
    assert ws.workspace_bytes(A.sort.default, (x,), {}, A.sort.default(x), "cpu", THREADS) is None
    assert ws.workspace_bytes(A.relu.default, (x,), {}, A.relu.default(x), "cpu", THREADS) == 0
    assert "aten.relu.default" in ws.NO_WORKSPACE_OPS


def test_only_views_and_metadata_are_hidden_free_on_cuda() -> None:
    x = torch.randn(4, 4)
    assert ws.workspace_bytes(A.view.default, (x, [16]), {}, x.view(16), "cuda", 1) == 0
    assert ws.workspace_bytes(A.relu.default, (x,), {}, x, "cuda", 1) is None  # not measured on CUDA


def test_rules_and_hidden_free_ops_do_not_overlap() -> None:
    assert not {op for op, _ in ws.registered_rules()} & ws.NO_WORKSPACE_OPS


# ----------------------------------------------------------------------------- hidden-free ops

x4 = torch.randn(8, 32, 20, 20)
pooled, indices = A.max_pool2d_with_indices.default(x4, [2, 2], [2, 2])
logits = torch.randn(128, 1000)
log_probs = A._log_softmax.default(logits, 1, False)
target = torch.randint(0, 1000, (128,))

HIDDEN_FREE: list[tuple[Any, tuple[Any, ...]]] = [
    (A.max_pool2d_with_indices.default, (x4, [3, 3], [2, 2], [1, 1])),
    (
        A.max_pool2d_with_indices_backward.default,
        (pooled.clone(), x4, [2, 2], [2, 2], [0, 0], [1, 1], False, indices),
    ),
    (A.avg_pool2d.default, (x4, [2, 2], [2, 2])),
    (A._adaptive_avg_pool2d.default, (x4, [7, 7])),
    (A._adaptive_avg_pool2d_backward.default, (torch.randn(8, 32, 7, 7), x4)),
    (A._softmax.default, (logits, 1, False)),
    (A._log_softmax_backward_data.default, (log_probs.clone(), log_probs, 1, torch.float32)),
    (A.nll_loss_forward.default, (log_probs, target, None, 1, -100)),
    (A.gelu.default, (logits,)),
    (A.cat.default, ([logits, logits],)),
    (A.native_layer_norm.default, (logits, [1000], torch.randn(1000), torch.randn(1000), 1e-5)),
]


@pytest.mark.parametrize(("func", "args"), HIDDEN_FREE, ids=[str(f) for f, _ in HIDDEN_FREE])
def test_hidden_free_ops_allocate_at_most_a_scalar(func: Any, args: tuple[Any, ...]) -> None:
    transient, rule = measured_and_rule(func, *args)
    assert str(func) in ws.NO_WORKSPACE_OPS
    assert rule == 0
    assert transient <= 16  # a wrapped 0-dim scalar at most


# ----------------------------------------------------------------------------- convolution


def conv_args(
    n: int,
    c: int,
    hw: int,
    o: int,
    k: int,
    stride: int = 1,
    groups: int = 1,
    bias: bool = True,
    dims: int = 2,
) -> tuple[Any, ...]:
    x = torch.randn(n, c, *([hw] * dims))
    w = torch.randn(o, c // groups, *([k] * dims))
    b = torch.randn(o) if bias else None
    return (x, w, b, [stride] * dims, [k // 2] * dims, [1] * dims, False, [0] * dims, groups)


CONV_FORWARD = {
    "classic-cnn conv1 (first conv, C=1)": conv_args(64, 1, 50, 32, 3),
    "classic-cnn conv2 (blocked)": conv_args(64, 32, 25, 64, 3),
    "rgb first conv, O padded 20->32": conv_args(8, 3, 20, 20, 3),
    "C and O padded (24->32, 40->48)": conv_args(8, 24, 20, 40, 3),
    "O < block (8 -> 16)": conv_args(8, 32, 20, 8, 3),
    "1x1": conv_args(8, 32, 20, 64, 1),
    "1x1 stride 2 (reduce-to-unit-stride scratch)": conv_args(8, 48, 30, 64, 1, stride=2),
    "3x3 stride 2": conv_args(8, 64, 8, 128, 3, stride=2),
    "7x7 stride 2 stem": conv_args(8, 3, 64, 32, 7, stride=2, bias=False),
    "depthwise, channels padded": conv_args(8, 20, 20, 20, 3, groups=20),
    "grouped, 16 per group (blocked)": conv_args(8, 48, 20, 48, 3, groups=3),
    "grouped, 5 per group (gemm + im2col)": conv_args(8, 20, 20, 20, 3, groups=4),
    "conv1d": conv_args(8, 32, 100, 64, 3, dims=1),
    "conv3d": conv_args(2, 16, 8, 32, 3, dims=3, bias=False),
    "batch 1, small: slow path (im2col)": conv_args(1, 16, 20, 16, 3),
}


@needs_avx512
@pytest.mark.parametrize("args", CONV_FORWARD.values(), ids=CONV_FORWARD.keys())
def test_convolution_forward(args: tuple[Any, ...]) -> None:
    transient, rule = measured_and_rule(A.convolution.default, *args)
    assert rule == transient


@needs_avx512
def test_classic_cnn_conv1_reorders_its_whole_output() -> None:
    transient, rule = measured_and_rule(
        A.convolution.default, *CONV_FORWARD["classic-cnn conv1 (first conv, C=1)"]
    )
    assert rule == transient == 64 * 32 * 50 * 50 * 4  # the blocked dst, then the NCHW output


def conv_backward_args(
    n: int,
    c: int,
    hw: int,
    o: int,
    k: int,
    stride: int = 1,
    groups: int = 1,
    mask: tuple[bool, bool, bool] = (True, True, True),
    padding: int | None = None,
) -> tuple[Any, ...]:
    x, w, _, st, pad, dil, tr, opad, g = conv_args(n, c, hw, o, k, stride, groups, bias=False)
    pad = pad if padding is None else [padding, padding]
    with torch.no_grad():
        grad_out = torch.randn_like(A.convolution.default(x, w, None, st, pad, dil, tr, opad, g))
    return (grad_out, x, w, [o], st, pad, dil, tr, opad, g, list(mask))


WEIGHTS_ONLY = (False, True, True)  # the first layer: its input needs no gradient
DATA_ONLY = (True, False, False)

CONV_BACKWARD = {
    "classic-cnn conv1, weight grads only": conv_backward_args(8, 1, 20, 32, 3, mask=WEIGHTS_ONLY),
    "first conv C=3": conv_backward_args(8, 3, 20, 32, 3),
    "C=16": conv_backward_args(8, 16, 20, 32, 3),
    "C=32": conv_backward_args(8, 32, 20, 32, 3),
    "input grad only": conv_backward_args(8, 32, 20, 32, 3, mask=DATA_ONLY),
    "depthwise": conv_backward_args(8, 32, 20, 32, 3, groups=32),
    "batch 1, slow path (im2col)": conv_backward_args(1, 16, 20, 16, 3),
    "3x3, batch split not worth it (no reduction)": conv_backward_args(2, 512, 4, 512, 3),
    "3x3, batch split by the compute step": conv_backward_args(8, 32, 16, 32, 3),
    "1x1, batch split": conv_backward_args(2, 64, 32, 64, 1),
    "1x1, channel split": conv_backward_args(2, 256, 32, 128, 1),
    # the reduction's barrier and bias reducer (formerly the fitted 8320 / 8064 bytes)
    "1x1, batch split, bias": conv_backward_args(8, 32, 20, 64, 1, mask=WEIGHTS_ONLY),
    "C and O padded: padded bias, bias reducer": conv_backward_args(8, 24, 20, 40, 3, mask=WEIGHTS_ONLY),
    "one oc block: bias reducer over the batch": conv_backward_args(16, 16, 32, 16, 3, mask=WEIGHTS_ONLY),
    "1x1 to one channel (U-Net head)": conv_backward_args(4, 16, 64, 1, 1),
    "grouped in whole blocks, strided": conv_backward_args(8, 48, 20, 48, 3, stride=2, groups=3),
    # brgconv_strided backward data: channels-last, scratchpad, two dense copies
    "3x3 stride 2 (brgconv_strided)": conv_backward_args(8, 32, 20, 64, 3, stride=2),
    "3x3 stride 2, data only": conv_backward_args(8, 32, 20, 64, 3, stride=2, mask=DATA_ONLY),
    "3x3 stride 2, O padded, data only": conv_backward_args(2, 24, 30, 40, 3, stride=2, mask=DATA_ONLY),
    "odd width, stride 2: row buffer": conv_backward_args(2, 48, 17, 20, 3, stride=2, mask=DATA_ONLY),
    "7x7 stride 2 stem, data only": conv_backward_args(2, 3, 64, 64, 7, stride=2, mask=DATA_ONLY),
    "5x5 stride 3": conv_backward_args(2, 64, 15, 64, 5, stride=3),
    "1x1 stride 2 downsample (rtus)": conv_backward_args(2, 256, 32, 512, 1, stride=2),
    "depthwise stride 2 (jit_dw, no strided path)": conv_backward_args(8, 32, 20, 32, 3, stride=2, groups=32),
    # gemm: patchify and wide kernels, groups not in whole blocks
    "ViT patch embedding 16x16 stride 16": conv_backward_args(2, 3, 64, 128, 16, stride=16, padding=0),
    "ViT patch embedding, weights only": conv_backward_args(
        2, 3, 64, 128, 16, 16, mask=WEIGHTS_ONLY, padding=0
    ),
    "15x15 kernel: gemm on one thread": conv_backward_args(2, 16, 32, 32, 15, mask=WEIGHTS_ONLY),
    "grouped, 5 per group (gemm)": conv_backward_args(8, 20, 20, 20, 3, groups=4),
    # AVX2 kernel: first convolutions with 4-15 channels, padding past half the kernel
    "first conv C=8 (jit:avx2)": conv_backward_args(8, 8, 20, 32, 3, mask=WEIGHTS_ONLY),
    "C=5, O=6: AVX2 weight and bias reducers": conv_backward_args(4, 5, 16, 6, 3, mask=WEIGHTS_ONLY),
    "padding 2 on a 3x3 (jit:avx2)": conv_backward_args(8, 32, 20, 32, 3, mask=WEIGHTS_ONLY, padding=2),
}


@needs_avx512
@pytest.mark.parametrize("args", CONV_BACKWARD.values(), ids=CONV_BACKWARD.keys())
def test_convolution_backward(args: tuple[Any, ...]) -> None:
    transient, rule = measured_and_rule(A.convolution_backward.default, *args)
    assert rule == transient


@needs_avx512
def test_vit_patch_embedding_gradient_is_gemm_with_over_booked_weight_copies() -> None:
    """ViT's 16x16 stride-16 patch embedding: the jit kernel refuses kw > 14, gemm takes it.

    gemm_convolution_utils books `book<float>(key_conv_wei_reduction, nthr * weights_d.size())`
    with size() in bytes (4x the weights per thread) and an im2col buffer per thread."""
    args = CONV_BACKWARD["ViT patch embedding, weights only"]
    weight_bytes = 128 * 3 * 16 * 16 * 4  # OIHW fp32
    im2col = 3 * 16 * 16 * (4 * 4)  # C * kh * kw * OH * OW floats, per thread
    scratch = 4 * THREADS * weight_bytes + 128 + THREADS * im2col * 4 + 128
    transient, rule = measured_and_rule(A.convolution_backward.default, *args)
    assert rule == transient == scratch == 3_244_288  # the scratchpad is the whole transient
    assert scratch in allocations(args)


@needs_avx512
def test_jit_weight_gradient_reduction_has_a_page_aligned_barrier() -> None:
    """The formerly fitted 8320 bytes: 128 of alignment + a 4 KiB simple_barrier::ctx_t booked
    with 4 KiB alignment (cpu_barrier.hpp STRUCT_ALIGN(4096), memory_tracking::registry_t::book)."""
    cv = oc.Conv(8, 32, 32, 1, (3, 3), (16, 16), (16, 16), (1, 1), (1, 1), 4)
    assert oc.jit_backward_weights_split(cv, THREADS).mb == 2
    copy = (32 * 32 * 9 + 32) * 4  # one more thread's weight gradient and bias, fp32
    scratch = oc.jit_backward_weights_scratch_bytes(cv, with_bias=True, threads=THREADS)
    assert scratch == copy + 128 + 4096 + 4096
    grad_output, src, weight_grad = 8 * 32 * 16 * 16 * 4, 8 * 32 * 16 * 16 * 4, 32 * 32 * 9 * 4
    assert allocations(conv_backward_args(8, 32, 16, 32, 3, mask=WEIGHTS_ONLY))[:5] == (
        grad_output,
        src,
        weight_grad,
        scratch,
        32 * 4,  # blocked reorders, ideep gradients, scratchpad
    )


def allocations(args: tuple[Any, ...]) -> tuple[int, ...]:
    """Sizes of the allocations one convolution backward makes (frees left out), in order."""
    with torch.no_grad():
        return tuple(
            size for size in measure(lambda: A.convolution_backward.default(*args)).sizes if size > 0
        )


@needs_avx512
def test_bias_reducer_splits_the_batch_when_there_is_one_oc_block() -> None:
    """cpu_reducer_t: one job (O = 16), two threads in its group: one thread's partial bias in a
    page-aligned space (64 + 4096) and one page-sized barrier (4096 + 4096)."""
    assert oc.reducer_scratch_bytes(2, 16, 1, 16, 2 * 3 * 5 * 5 * 16 * 16) == 16 * 4 + 4096 + 4096 + 4096
    assert oc.reducer_scratch_bytes(2, 16, 4, 8, 2 * 3 * 5 * 5 * 16 * 16) == 0  # 2 groups of 2 jobs


def transposed_backward_args(n: int, cin: int, hw: int, cout: int, sliced: bool) -> tuple[Any, ...]:
    """A 2x2 stride-2 ConvTranspose2d (U-Net's up-sampling); `sliced`: grad_output is a channel
    slice of a larger gradient, as torch.cat's backward hands it over (not contiguous)."""
    x, w = torch.randn(n, cin, hw, hw), torch.randn(cin, cout, 2, 2)
    y_shape = (n, cout, 2 * hw, 2 * hw)
    grad = torch.randn(n, 2 * cout, *y_shape[2:])[:, :cout] if sliced else torch.randn(y_shape)
    return (grad, x, w, [cout], [2, 2], [0, 0], [1, 1], True, [0, 0], 1, [True, True, True])


@needs_avx512
@pytest.mark.parametrize("sliced", [False, True], ids=["contiguous grad", "sliced grad"])
@pytest.mark.parametrize("shape", [(4, 64, 16, 32), (4, 32, 32, 16)], ids=str)
def test_transposed_convolution_backward(shape: tuple[int, int, int, int], sliced: bool) -> None:
    args = transposed_backward_args(*shape, sliced=sliced)
    transient, rule = measured_and_rule(A.convolution_backward.default, *args)
    assert rule == transient


@needs_avx512
def test_backward_copies_a_non_contiguous_grad_output_for_the_whole_op() -> None:
    contiguous = measured_and_rule(
        A.convolution_backward.default, *transposed_backward_args(4, 64, 16, 32, False)
    )
    sliced = measured_and_rule(A.convolution_backward.default, *transposed_backward_args(4, 64, 16, 32, True))
    assert sliced[0] - contiguous[0] == 4 * 32 * 32 * 32 * 4  # grad_output.contiguous(), held to the end
    assert sliced[1] == sliced[0]


# ----------------------------------------------------------------------------- batch norm, layer norm


def channels_last(x: torch.Tensor) -> torch.Tensor:
    return (
        x.contiguous(memory_format=torch.channels_last)
        if x.dim() == 4
        else x.transpose(1, 2).contiguous().transpose(1, 2)
    )


BN_INPUTS = {
    "NCHW": torch.randn(8, 100, 5, 5),
    "channels last": channels_last(torch.randn(8, 100, 5, 5)),
    "2-D": torch.randn(64, 100),
    "NCL": torch.randn(16, 100, 7),
    "NCL strided": channels_last(torch.randn(16, 100, 7)),
}


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("x", BN_INPUTS.values(), ids=BN_INPUTS.keys())
def test_batch_norm_forward(x: torch.Tensor, train: bool) -> None:
    c = x.shape[1]
    args = (x, torch.randn(c), torch.randn(c), torch.zeros(c), torch.ones(c), train, 0.1, 1e-5)
    transient, rule = measured_and_rule(A.native_batch_norm.default, *args)
    assert rule == transient


@pytest.mark.parametrize("mask", [(True, True, True), (True, False, False), (False, True, True)])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("x", BN_INPUTS.values(), ids=BN_INPUTS.keys())
def test_batch_norm_backward(x: torch.Tensor, train: bool, mask: tuple[bool, bool, bool]) -> None:
    c = x.shape[1]
    weight, mean, var = torch.randn(c), torch.zeros(c), torch.ones(c)
    out, save_mean, save_invstd = A.native_batch_norm.default(x, weight, None, mean, var, True, 0.1, 1e-5)
    grad = torch.randn_like(out)
    saved = (save_mean, save_invstd) if train else (None, None)
    args = (grad, x, weight, mean, var, *saved, train, 1e-5, list(mask))
    transient, rule = measured_and_rule(A.native_batch_norm_backward.default, *args)
    assert rule == transient


def test_batch_norm_backward_hides_a_second_grad_input() -> None:
    x = torch.randn(8, 32, 20, 20)
    out, mean, invstd = A.native_batch_norm.default(x, torch.ones(32), None, None, None, True, 0.1, 1e-5)
    args = (
        torch.randn_like(out),
        x,
        torch.ones(32),
        None,
        None,
        mean,
        invstd,
        True,
        1e-5,
        [True, True, True],
    )
    transient, rule = measured_and_rule(A.native_batch_norm_backward.default, *args)
    assert rule == transient == 8 * 32 * 20 * 20 * 4  # an input-sized grad_input, allocated twice


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("mask", [(True, True, True), (True, False, False), (False, True, True)])
@pytest.mark.parametrize("shape", [(64, 128, 256), (64, 1024), (2, 1000), (3, 5, 100)])
def test_layer_norm_backward(shape: tuple[int, ...], mask: tuple[bool, bool, bool], threads: int) -> None:
    torch.set_num_threads(threads)
    x, d = torch.randn(*shape), shape[-1]
    weight = torch.randn(d)
    out, mean, rstd = A.native_layer_norm.default(x, [d], weight, weight, 1e-5)
    args = (torch.randn_like(out), x, [d], mean, rstd, weight, weight, list(mask))
    transient, rule = measured_and_rule(A.native_layer_norm_backward.default, *args)
    assert rule == transient
    if mask[1]:
        assert rule == 2 * threads * d * 4  # {2, threads, N} fp32 partial sums


# ----------------------------------------------------------------------------- attention


def bhle(b: int, h: int, length: int, e: int, strided: bool) -> torch.Tensor:
    t = torch.randn(b, length, h, e).transpose(1, 2)  # (B, H, L, E) view of (B, L, H, E)
    return t if strided else t.contiguous()


ATTENTION = {
    "L=256 (q split 64), strided": (4, 4, 256, 256, 8, True, False),
    "L=256, contiguous": (4, 4, 256, 256, 8, False, False),
    "L=100 causal (q split 32)": (2, 4, 100, 100, 16, False, True),
    "L=1000 (q split 256)": (2, 2, 1000, 1000, 32, False, False),
    "kv shorter than q": (2, 2, 700, 300, 32, False, False),
    "kv longer than 512": (1, 2, 50, 600, 64, False, False),
}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("shape", ATTENTION.values(), ids=ATTENTION.keys())
def test_flash_attention_forward_and_backward(shape: tuple[Any, ...], threads: int) -> None:
    torch.set_num_threads(threads)
    b, h, lq, lk, e, strided, causal = shape
    q, k, v = bhle(b, h, lq, e, strided), bhle(b, h, lk, e, strided), bhle(b, h, lk, e, strided)
    forward = A._scaled_dot_product_flash_attention_for_cpu.default
    transient, rule = measured_and_rule(forward, q, k, v, 0.0, causal)
    assert rule == transient
    out, logsumexp = forward(q, k, v, 0.0, causal)
    backward = A._scaled_dot_product_flash_attention_for_cpu_backward.default
    transient, rule = measured_and_rule(backward, torch.randn_like(out), q, k, v, out, logsumexp, 0.0, causal)
    assert rule == transient


def test_flash_attention_forward_tiles_are_per_thread() -> None:
    q = bhle(4, 4, 256, 8, True)
    transient, rule = measured_and_rule(
        A._scaled_dot_product_flash_attention_for_cpu.default, q, q, q, 0.0, False
    )
    assert rule == transient == THREADS * (64 * 256 + 2 * 64 + 64 * 8) * 4  # qk tile, max, sum, dst


@pytest.mark.parametrize("shape", [(4, 4, 64, 64), (4, 4, 64, 50), (2, 1000)])
def test_safe_softmax(shape: tuple[int, ...]) -> None:
    transient, rule = measured_and_rule(A._safe_softmax.default, torch.randn(*shape), -1)
    assert rule == transient


@pytest.mark.parametrize(
    ("b", "t", "d", "heads", "need_weights"),
    [(4, 32, 64, 4, False), (2, 100, 128, 8, False), (4, 32, 64, 4, True)],
)
def test_native_multi_head_attention(b: int, t: int, d: int, heads: int, need_weights: bool) -> None:
    mha = nn.MultiheadAttention(d, heads, batch_first=True).eval()
    x = torch.randn(b, t, d)
    args = (
        x,
        x,
        x,
        d,
        heads,
        mha.in_proj_weight,
        mha.in_proj_bias,
        mha.out_proj.weight,
        mha.out_proj.bias,
        None,
        need_weights,
    )
    transient, rule = measured_and_rule(A._native_multi_head_attention.default, *args)
    assert rule == transient


@pytest.mark.parametrize(
    ("norm_first", "activation", "ffn"), [(False, "relu", 256), (True, "gelu", 256), (False, "gelu", 512)]
)
def test_transformer_encoder_layer_fast_path(norm_first: bool, activation: str, ffn: int) -> None:
    layer = nn.TransformerEncoderLayer(
        64, 4, ffn, dropout=0.0, activation=activation, batch_first=True, norm_first=norm_first
    ).eval()
    attn = layer.self_attn
    args = (
        torch.randn(4, 50, 64),
        64,
        4,
        attn.in_proj_weight,
        attn.in_proj_bias,
        attn.out_proj.weight,
        attn.out_proj.bias,
        activation == "gelu",
        norm_first,
        1e-5,
        layer.norm1.weight,
        layer.norm1.bias,
        layer.norm2.weight,
        layer.norm2.bias,
        layer.linear1.weight,
        layer.linear1.bias,
        layer.linear2.weight,
        layer.linear2.bias,
    )
    transient, rule = measured_and_rule(A._transformer_encoder_layer_fwd.default, *args)
    assert rule == transient


# ----------------------------------------------------------------------------- oneDNN LSTM


def lstm_layer(
    t: int, n: int, i: int, h: int, train: bool, reverse: bool = False, bias: bool = True
) -> tuple[Any, ...]:
    """Arguments of one mkldnn_rnn_layer call: (T, N, I) input, LSTM (mode 2), one direction.

    Without biases mkldnn_rnn passes zeros shaped like the weights, as here.
    """
    x, hx, cx = torch.randn(t, n, i), torch.zeros(n, h), torch.zeros(n, h)
    biases = (
        (torch.randn(4 * h), torch.randn(4 * h)) if bias else (torch.zeros(4 * h, i), torch.zeros(4 * h, h))
    )
    weights = (torch.randn(4 * h, i), torch.randn(4 * h, h), *biases)
    return (x, *weights, hx, cx, reverse, [], 2, h, 1, bias, False, False, train)


def lstm_backward_args(forward_args: tuple[Any, ...], grad_output: torch.Tensor | None = None,
                       grad_states: bool = False) -> tuple[Any, ...]:  # fmt: skip
    """Arguments of the matching mkldnn_rnn_layer_backward call, after a forward with grad mode on."""
    with torch.enable_grad():
        output, hy, cy, workspace = A.mkldnn_rnn_layer.default(*forward_args)
    reverse, h, bias = forward_args[7], forward_args[10], forward_args[12]
    grad_hy, grad_cy = (torch.randn_like(hy), torch.randn_like(cy)) if grad_states else (None, None)
    grad = torch.randn_like(output) if grad_output is None else grad_output
    return (*forward_args[:7], output, hy, cy, grad, grad_hy, grad_cy,
            reverse, 2, h, 1, bias, True, False, [], False, workspace)  # fmt: skip


LSTM_SHAPES = {
    "T20 N8 I32 H64": (20, 8, 32, 64),  # the audit's first layer: I and H need no padding
    "T10 N4 I100 H50": (10, 4, 100, 50),  # ld(I) = 112, ld(H) = 64: backward reorders both weights
    "T6 N3 I256 H24": (6, 3, 256, 24),  # ld(256) = 272: a multiple of 256 is bumped
    "T7 N3 I5 H9": (7, 3, 5, 9),  # sizes below one 16-float line
    "T9 N4 I40 H40": (9, 4, 40, 40),  # I = H: brgemm fuses the layer and iteration GEMMs
    "T5 N1 I1 H16": (5, 1, 1, 16),  # input size 1: no forward reorder; N = 1: brgemm merges over T
    "T3 N128 I16 H16": (3, 128, 16, 16),  # N >= 128: the training forward keeps one step of gates
}


@pytest.mark.parametrize("grad", [False, True], ids=["grad off (brgemm)", "grad on (ref, training)"])
@pytest.mark.parametrize("shape", LSTM_SHAPES.values(), ids=LSTM_SHAPES.keys())
def test_mkldnn_rnn_layer_forward(shape: tuple[int, int, int, int], grad: bool) -> None:
    args = lstm_layer(*shape, train=grad)
    with torch.set_grad_enabled(grad):  # the kernel picks its path from grad mode
        transient = measure(lambda: A.mkldnn_rnn_layer.default(*args)).transient_bytes
        outputs = A.mkldnn_rnn_layer.default(*args)
        rule = ws.workspace_bytes(A.mkldnn_rnn_layer.default, args, {}, outputs, "cpu", THREADS)
    assert rule == transient


@pytest.mark.parametrize("grad", [False, True], ids=["grad off", "grad on"])
@pytest.mark.parametrize("variant", ["reverse", "no bias"])
def test_mkldnn_rnn_layer_forward_variants(variant: str, grad: bool) -> None:
    args = lstm_layer(12, 4, 20, 48, train=grad, reverse=variant == "reverse", bias=variant != "no bias")
    with torch.set_grad_enabled(grad):
        transient = measure(lambda: A.mkldnn_rnn_layer.default(*args)).transient_bytes
        outputs = A.mkldnn_rnn_layer.default(*args)
        rule = ws.workspace_bytes(A.mkldnn_rnn_layer.default, args, {}, outputs, "cpu", THREADS)
    assert rule == transient


@pytest.mark.parametrize("shape", LSTM_SHAPES.values(), ids=LSTM_SHAPES.keys())
def test_mkldnn_rnn_layer_backward(shape: tuple[int, int, int, int]) -> None:
    bwd_args = lstm_backward_args(lstm_layer(*shape, train=True))
    transient, rule = measured_and_rule(A.mkldnn_rnn_layer_backward.default, *bwd_args)
    assert rule == transient


@pytest.mark.parametrize(
    "variant", ["reverse", "no bias", "grad_hy and grad_cy given", "strided grad_output"]
)
def test_mkldnn_rnn_layer_backward_variants(variant: str) -> None:
    t, n, i, h = 12, 4, 20, 48
    forward_args = lstm_layer(t, n, i, h, train=True, reverse=variant == "reverse", bias=variant != "no bias")
    strided = (
        torch.randn(n, t, h).transpose(0, 1) if variant == "strided grad_output" else None
    )  # batch first
    bwd_args = lstm_backward_args(forward_args, strided, grad_states=variant == "grad_hy and grad_cy given")
    transient, rule = measured_and_rule(A.mkldnn_rnn_layer_backward.default, *bwd_args)
    assert rule == transient


def test_mkldnn_rnn_layer_backward_term_by_term() -> None:
    """Every allocation of one backward, in order, against its source (zoo.lstm's layer size)."""
    t, n, i, h = 4, 2, 256, 256
    bwd_args = lstm_backward_args(lstm_layer(t, n, i, h, train=True))
    with torch.no_grad():
        calls = measure(lambda: A.mkldnn_rnn_layer_backward.default(*bwd_args))
    gates = 4 * h  # 1024
    ld_i, ld_h, ld_gates = 272, 272, 1040  # get_good_ld: 256 and 1024 are multiples of 256, so +16
    page = lambda size: -(-size // 4096) * 4096  # noqa: E731  set_offsets puts each buffer at a page
    # rnn space: scratch_gates (all T steps), scratch_ht, scratch_diff_ht, then the empty scratch_cell
    rnn_space = page(page(page(t * n * ld_gates * 4) + n * ld_h * 4) + n * ld_h * 4)
    expected = [
        n * h * 4, n * h * 4,  # zeros for the missing grad_hy and grad_cy
        gates * 4,  # bias_ih + bias_hh
        t * n * i * 4, n * h * 4, n * h * 4, gates * i * 4, gates * h * 4, gates * 4,  # the outputs
        gates * ld_i * 4, gates * ld_h * 4,  # weights reordered to ldgoi, leading dimension ld(I), ld(H)
        i * ld_gates * 4, h * ld_gates * 4,  # diff weights zero-filled in ldigo, leading dimension ld(4H)
        gates * 4,  # diff bias zero-filled
        rnn_space + 4096 + 3 * (8 + 128) + (4 * 8 + 128),  # + its page alignment, pointer arrays
        gates * 4,  # diff_b2 = clone(diff_b), after the scratch and the reorders are freed
    ]  # fmt: skip
    assert [size for size in calls.sizes if size > 0] == expected
    assert rnn_space == 45056
    _, rule = measured_and_rule(A.mkldnn_rnn_layer_backward.default, *bwd_args)
    assert rule == calls.transient_bytes


@pytest.mark.parametrize(
    "shape", [*LSTM_SHAPES.values(), (64, 16, 256, 256), (20, 8, 32, 32), (4, 2, 1, 1)], ids=str
)
def test_lstm_workspace_size_is_exact(shape: tuple[int, int, int, int]) -> None:
    args = lstm_layer(*shape, train=True)
    with torch.enable_grad():
        workspace = A.mkldnn_rnn_layer.default(*args)[3]
        shortfall = ws.fake_output_shortfall_bytes(A.mkldnn_rnn_layer.default, args, {})
    assert ws.mkldnn_rnn_workspace_bytes(*shape) == workspace.numel()
    assert shortfall == workspace.numel()
    with torch.no_grad():  # no workspace without grad mode, whatever the train argument says
        assert ws.fake_output_shortfall_bytes(A.mkldnn_rnn_layer.default, args, {}) == 0


def test_fake_lstm_layer_returns_an_empty_workspace() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        args = tuple(
            mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in lstm_layer(20, 8, 32, 64, True)
        )
        workspace = A.mkldnn_rnn_layer.default(*args)[3]
    assert workspace.numel() == 0  # hence fake_output_shortfall_bytes


LSTM_MODELS = {
    # zoo.lstm's architecture, small: batch first, 2 layers, last-step head; ld(40) = 48, so the
    # backward reorders the weights (vocabulary 100 keeps the peak in the LSTM, not in Adam)
    "zoo classifier, width 40": (
        lambda: zoo.RNNClassifier("lstm", vocab=100, width=40),
        lambda: torch.randint(0, 100, (8, 16)),
    ),
    # loss = output.sum(): an expanded grad_output; layer 2 reads 2H = 48 features; I = 1
    "bidirectional, no bias, input size 1": (
        lambda: nn.LSTM(1, 24, num_layers=2, bidirectional=True, bias=False),
        lambda: torch.randn(9, 3, 1),
    ),
}


@pytest.mark.parametrize("make", LSTM_MODELS.values(), ids=LSTM_MODELS.keys())
def test_lstm_training_estimate_matches_measured_peak(make: tuple[Any, Any]) -> None:
    """nnmem.estimate (fake tensors + these rules) against nnmem.measure (a real run), Adam."""
    model, inputs = make
    x = inputs()
    guess = nnmem.estimate(model(), x, mode="train", device="cpu", threads=THREADS)
    truth = nnmem.measure(model(), x, mode="train", threads=THREADS)
    assert guess.steady.op == "aten.mkldnn_rnn_layer_backward.default"  # the peak is the LSTM backward
    assert abs(guess.peak_bytes - truth.peak_bytes) <= 0.005 * truth.peak_bytes  # exact when written


# ----------------------------------------------------------------------------- matmul, embedding, dropout

a = torch.randn(256, 128)
b = torch.randn(128, 64)
MATMUL = {
    "mm": (A.mm.default, (a, b), 0),
    "mm, transposed operands": (A.mm.default, (a.t().contiguous().t(), b.t().contiguous().t()), 0),
    "mm, no unit stride": (A.mm.default, (torch.randn(256, 256)[:, ::2], b), 256 * 128 * 4),
    "addmm, transposed weight": (A.addmm.default, (torch.randn(64), a, torch.randn(64, 128).t()), 0),
    "bmm, transposed batch": (
        A.bmm.default,
        (torch.randn(8, 32, 64).transpose(1, 2), torch.randn(8, 32, 48)),
        0,
    ),
    "bmm, permuted batch": (
        A.bmm.default,
        (torch.randn(64, 8, 32).transpose(0, 1), torch.randn(8, 32, 48)),
        0,
    ),
}


@pytest.mark.parametrize(("func", "args", "expected"), MATMUL.values(), ids=MATMUL.keys())
def test_matmul_copies_only_operands_blas_cannot_read(
    func: Any, args: tuple[Any, ...], expected: int
) -> None:
    transient, rule = measured_and_rule(func, *args)
    assert rule == transient == expected


weight = torch.randn(1000, 64)
EMBEDDING = {
    "contiguous indices": torch.randint(0, 1000, (16, 128)),
    "transposed indices": torch.randint(0, 1000, (128, 16)).t(),
    "expanded indices": torch.zeros(1, 128, dtype=torch.long).expand(16, 128),
}


@pytest.mark.parametrize("indices", EMBEDDING.values(), ids=EMBEDDING.keys())
def test_embedding_forward_and_backward(indices: torch.Tensor) -> None:
    transient, rule = measured_and_rule(A.embedding.default, weight, indices)
    assert rule == transient
    grad = torch.randn(*indices.shape, 64)
    transient, rule = measured_and_rule(A.embedding_dense_backward.default, grad, indices, 1000, -1, False)
    assert rule == transient


TRANSPOSED = torch.randn(300, 100).t()
CONTIGUOUS = {"memory_format": torch.contiguous_format}
COPIES = {
    "copy_ transposed": (A.copy_.default, (torch.empty(100, 300), TRANSPOSED), {}, 60 * 60 * 4),
    "copy_ transposed, 59 x 61 (below 3600 elements)": (
        A.copy_.default,
        (torch.empty(59, 61), torch.randn(61, 59).t()),
        {},
        0,
    ),
    "copy_ transposed fp64": (
        A.copy_.default,
        (torch.empty(100, 300, dtype=torch.float64), torch.randn(300, 100, dtype=torch.float64).t()),
        {},
        60 * 60 * 8,
    ),
    "copy_ permuted 4-D": (
        A.copy_.default,
        (torch.empty(8, 32, 16, 64), torch.randn(8, 16, 32, 64).transpose(1, 2)),
        {},
        0,
    ),
    "clone to contiguous": (A.clone.default, (TRANSPOSED,), CONTIGUOUS, 60 * 60 * 4),
    "clone preserving strides": (A.clone.default, (TRANSPOSED,), {}, 0),
    "_to_copy to contiguous": (A._to_copy.default, (TRANSPOSED,), CONTIGUOUS, 60 * 60 * 4),
}


@pytest.mark.parametrize(("func", "args", "kwargs", "expected"), COPIES.values(), ids=COPIES.keys())
def test_transposed_copies_stage_a_60_by_60_tile(
    func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], expected: int
) -> None:
    transient, rule = measured_and_rule(func, *args, **kwargs)
    assert rule == transient == expected


@pytest.mark.parametrize(("p", "train"), [(0.1, True), (0.5, True)])
def test_native_dropout(p: float, train: bool) -> None:
    x = torch.randn(64, 1024)
    transient, rule = measured_and_rule(A.native_dropout.default, x, p, train)
    assert rule == transient == 64 * 1024 * 4  # the Bernoulli noise, in the input's dtype


# ----------------------------------------------------------------------------- mixed dtypes, bf16

BF16 = torch.bfloat16
act_bf16, act_fp32 = torch.randn(2, 64, 128, dtype=BF16), torch.randn(2, 64, 128)
MIXED = {
    "fp32 residual + bf16 (autocast)": (A.add.Tensor, (act_fp32, act_bf16), 2 * 64 * 128 * 4),
    "bf16 * fp32 broadcast (rotary cos)": (
        A.mul.Tensor,
        (torch.randn(2, 4, 64, 32, dtype=BF16), torch.randn(1, 1, 64, 32)),
        2 * 4 * 64 * 32 * 4,  # the bf16 operand in fp32; the fp32 one is the common dtype
    ),
    "small bf16 * large fp32: cast before broadcast": (
        A.mul.Tensor,
        (torch.randn(64, 128, dtype=BF16), act_fp32),
        64 * 128 * 4,
    ),
    "bf16 += fp32: input cast and output temporary": (
        A.add_.Tensor,
        (act_bf16.clone(), act_fp32),
        2 * 2 * 64 * 128 * 4,
    ),
    "fp32 += bf16": (A.add_.Tensor, (act_fp32.clone(), act_bf16), 2 * 64 * 128 * 4),
    "int64 / fp32": (A.div.Tensor, (torch.ones(1000, dtype=torch.long), torch.randn(1000)), 1000 * 4),
    "same dtype: nothing": (A.sub.Tensor, (act_bf16, act_bf16), 0),
}


@pytest.mark.parametrize(("func", "args", "expected"), MIXED.values(), ids=MIXED.keys())
def test_mixed_dtype_binary_ops_copy_operands_to_the_common_dtype(
    func: Any, args: tuple[Any, ...], expected: int
) -> None:
    transient, rule = measured_and_rule(func, *args)
    assert rule == transient == expected


needs_bf16 = pytest.mark.skipif(
    not torch.ops.mkldnn._is_mkldnn_bf16_supported()
    or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)(),
    reason="oneDNN's bf16 brgemm matmul on AVX-512 bf16 without AMX was measured",
)


def bf16(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=BF16)


BF16_MM = {
    "128x128 @ 128x128": (bf16(128, 128), bf16(128, 128)),
    "weight transposed, N = 64": (bf16(128, 128), bf16(64, 128).t()),
    "K = 512": (bf16(128, 512), bf16(512, 128)),
    "M = 512 (M block 256)": (bf16(512, 128), bf16(128, 128)),
    "M = 1000 (M block 250), K, N tails": (bf16(1000, 300), bf16(300, 200)),
    "A transposed: a row-major copy of A": (bf16(128, 512).t(), bf16(128, 128)),
    "A transposed, N in 4 chunks": (bf16(128, 128).t(), bf16(128, 256)),
    "K = 2048 (K block 1024)": (bf16(64, 2048), bf16(2048, 128)),
    "N = 32": (bf16(128, 128), bf16(128, 32)),
    "M = 8": (bf16(8, 128), bf16(128, 128)),
}


@needs_bf16
@pytest.mark.parametrize(("a", "b"), BF16_MM.values(), ids=BF16_MM.keys())
def test_bf16_mm_scratchpad(a: torch.Tensor, b: torch.Tensor) -> None:
    transient, rule = measured_and_rule(A.mm.default, a, b)
    assert rule == transient


@needs_bf16
def test_bf16_mm_scratchpad_term_by_term() -> None:
    """128x128 @ 128x128 on 2 threads: M_blk 128, N_blk 64, each entry + 128 bytes."""
    batch = THREADS * 16 * 40  # brgemm batch elements
    packed_b = THREADS * 2 * 64 * 128  # B in VNNI blocks of 64 columns
    accumulator = THREADS * 4 * 64 * 128  # fp32 C block
    transient, rule = measured_and_rule(A.mm.default, bf16(128, 128), bf16(128, 128))
    assert rule == transient == batch + packed_b + accumulator + 3 * 128


@needs_bf16
@pytest.mark.parametrize("kv_heads", [4, 2], ids=["MHA", "GQA"])
def test_bf16_flash_attention_adds_reduced_tiles(kv_heads: int) -> None:
    q, k, v = (
        bhle(2, 4, 64, 32, True).to(BF16),
        bhle(2, kv_heads, 64, 32, True).to(BF16),
        bhle(2, kv_heads, 64, 32, True).to(BF16),
    )
    forward = A._scaled_dot_product_flash_attention_for_cpu.default
    transient, rule = measured_and_rule(forward, q, k, v, 0.0, True)
    fp32_tiles = THREADS * (32 * 64 + 2 * 32 + 32 * 32) * 4
    assert rule == transient == fp32_tiles + THREADS * 32 * 64 * 2  # + the bf16 softmax tile
    out, lse = forward(q, k, v, 0.0, True)
    backward = A._scaled_dot_product_flash_attention_for_cpu_backward.default
    transient, rule = measured_and_rule(backward, torch.randn_like(out), q, k, v, out, lse, 0.0, True)
    tiles = THREADS * 2 * 32 * 64 * 4 + 32 * 4 + THREADS * 2 * 32 * 64 * 2
    assert rule == tiles
    assert 0 < transient - rule <= 32 * 1024  # each small bf16 GEMM's oneDNN scratchpad: not counted


# ----------------------------------------------------------------------------- CUDA (not yet measured)


def test_cublas_workspace_follows_the_config() -> None:
    assert ws.cublas_workspace_bytes(":4096:8") == 4096 * 1024 * 8
    assert ws.cublas_workspace_bytes(":4096:2:16:8") == 4096 * 1024 * 2 + 16 * 1024 * 8
    assert ws.cublas_workspace_bytes("", (8, 0)) == 4096 * 1024 * 2 + 16 * 1024 * 8  # default before Hopper
    assert ws.cublas_workspace_bytes("", (9, 0)) == 32 * 1024 * 1024  # Hopper and later


# ----------------------------------------------------------------------------- end to end


def tiny_vit() -> nn.Module:
    """ViT with a 16x16 stride-16 patch embedding (a gemm weight gradient in oneDNN)."""
    import transformers

    config = transformers.ViTConfig(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        image_size=64,
        patch_size=16,
    )
    return transformers.ViTModel(config)


@needs_avx512
def test_tiny_vit_training_estimate_matches_measured_peak() -> None:
    torch.manual_seed(0)
    model, pixels = tiny_vit(), torch.randn(2, 3, 64, 64)
    guess = nnmem.estimate(model, pixels, mode="train", optimizer="adam", device="cpu", threads=THREADS)
    truth = nnmem.measure(model, pixels, mode="train", optimizer="adam", threads=THREADS)
    assert abs(guess.peak_bytes - truth.peak_bytes) <= 0.001 * truth.peak_bytes  # exact when written


class Checkpointed(nn.Module):
    """Two linear blocks, each under non-reentrant activation checkpointing."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(32, 32), nn.GELU()) for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch.utils.checkpoint import checkpoint

        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False)
        return x


def test_tracker_adopts_the_rng_states_checkpointing_keeps() -> None:
    """torch.get_rng_state builds its tensor outside the dispatcher; checkpoint keeps one per
    call until the recomputation, and fork_rng takes another during each recomputation."""
    from nnmem.estimate import run_trace, step_config

    original = torch.get_rng_state
    config = step_config("train", "sgd", None, "cpu", None, 1, True, "auto", 1)
    trace, _, _ = run_trace(Checkpointed(), torch.randn(4, 32), config, None, None)
    states = [record for record in trace.records if record.op == "torch.get_rng_state"]
    state_bytes = original().numel()  # 5056 for the CPU generator
    assert [record.nbytes for record in states] == [state_bytes] * 4  # 2 kept in forward, 2 forks
    assert all(record.death is not None for record in states)
    assert torch.get_rng_state is original and torch.random.get_rng_state is original


LLAMA = {"hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "vocab_size": 512}  # fmt: skip
LLAMA_CASES = {
    "fp32": ({}, None),
    "bf16 autocast": ({"amp": "bf16"}, None),
    "LoRA rank 8": ({}, 8),
}


@needs_avx512
@pytest.mark.parametrize(("options", "lora"), LLAMA_CASES.values(), ids=LLAMA_CASES.keys())
def test_checkpointed_llama_estimate_matches_measured_peak(options: dict[str, Any], lora: int | None) -> None:
    """Gradient checkpointing's RNG states, autocast's fp32 copies and oneDNN's bf16 matmul
    scratchpads: estimate (fake tensors) against a real run, Adam."""
    from nnmem.frontends.hf import from_hf_config

    if options.get("amp") and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("bf16 matmul scratchpads measured on AVX-512 bf16")
    target = from_hf_config("llama", overrides=LLAMA, gradient_checkpointing=True, batch=2, seq=64, lora=lora)
    guess = nnmem.estimate(
        target.model, target.inputs, mode="train", device="cpu", threads=THREADS, **options
    )
    truth = nnmem.measure(target.model, target.inputs, mode="train", threads=THREADS, **options)
    assert abs(guess.peak_bytes - truth.peak_bytes) <= 0.001 * truth.peak_bytes  # 0 (LoRA: 48 bytes)
