"""Workspace rules against the real kernels: each rule's bytes equal the measured transient.

Every test runs the real CPU op under the profiler (`_profiler_util.measure`) and compares the
bytes it allocated and freed inside itself with what `nnmem.analyses.workspace` predicts. The
convolution backward's reduction scratch is a fit; its tests say the tolerance and why. The
LSTM rules are also checked end to end (estimate against a measured step). Measured on
PyTorch 2.13 with oneDNN on an AVX-512 CPU, 2 threads.
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
) -> tuple[Any, ...]:
    x, w, _, st, pad, dil, tr, opad, g = conv_args(n, c, hw, o, k, stride, groups, bias=False)
    with torch.no_grad():
        grad_out = torch.randn_like(A.convolution.default(x, w, None, st, pad, dil, tr, opad, g))
    return (grad_out, x, w, [o], st, pad, dil, tr, opad, g, list(mask))


CONV_BACKWARD_EXACT = {
    "classic-cnn conv1, weight grads only": conv_backward_args(8, 1, 20, 32, 3, mask=(False, True, True)),
    "first conv C=3": conv_backward_args(8, 3, 20, 32, 3),
    "C=16": conv_backward_args(8, 16, 20, 32, 3),
    "C=32": conv_backward_args(8, 32, 20, 32, 3),
    "input grad only": conv_backward_args(8, 32, 20, 32, 3, mask=(True, False, False)),
    "depthwise": conv_backward_args(8, 32, 20, 32, 3, groups=32),
    "batch 1, slow path (im2col)": conv_backward_args(1, 16, 20, 16, 3),
    "3x3 stride 2 (two blocked sources first)": conv_backward_args(8, 32, 20, 64, 3, stride=2),
    "1x1 stride 2 downsample": conv_backward_args(2, 256, 32, 512, 1, stride=2),
    "3x3, batch split not worth it (no reduction)": conv_backward_args(2, 512, 4, 512, 3),
    "3x3, batch split by the compute step": conv_backward_args(8, 32, 16, 32, 3),
    "1x1, batch split": conv_backward_args(2, 64, 32, 64, 1),
    "1x1, channel split": conv_backward_args(2, 256, 32, 128, 1),
}

# The constant part of the weight-gradient reduction scratch is a fit (see the rule).
CONV_BACKWARD_FIT = {
    "1x1": conv_backward_args(8, 32, 20, 64, 1),
    "C and O padded": conv_backward_args(8, 24, 20, 40, 3),
    "batch 16, 32x32": conv_backward_args(16, 16, 32, 16, 3),
}


@needs_avx512
@pytest.mark.parametrize("args", CONV_BACKWARD_EXACT.values(), ids=CONV_BACKWARD_EXACT.keys())
def test_convolution_backward(args: tuple[Any, ...]) -> None:
    transient, rule = measured_and_rule(A.convolution_backward.default, *args)
    assert rule == transient


@needs_avx512
@pytest.mark.parametrize("args", CONV_BACKWARD_FIT.values(), ids=CONV_BACKWARD_FIT.keys())
def test_convolution_backward_reduction_scratch_is_a_fit(args: tuple[Any, ...]) -> None:
    transient, rule = measured_and_rule(A.convolution_backward.default, *args)
    assert rule is not None
    assert abs(rule - transient) <= max(16 * 1024, 0.02 * transient)


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


# ----------------------------------------------------------------------------- CUDA (not yet measured)


def test_cublas_workspace_follows_the_config() -> None:
    assert ws.cublas_workspace_bytes(":4096:8") == 4096 * 1024 * 8
    assert ws.cublas_workspace_bytes(":4096:2:16:8") == 4096 * 1024 * 2 + 16 * 1024 * 8
    assert ws.cublas_workspace_bytes("", (8, 0)) == 4096 * 1024 * 2 + 16 * 1024 * 8  # default before Hopper
    assert ws.cublas_workspace_bytes("", (9, 0)) == 32 * 1024 * 1024  # Hopper and later
