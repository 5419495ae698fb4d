"""Hidden workspace of aten ops: memory a kernel allocates and frees inside itself.

The tracer sees every op's outputs but not the buffers a kernel allocates and frees before it
returns: oneDNN reorders and scratchpads, per-thread reduction buffers, copies made to give a
kernel the layout it wants. This module holds, per (op, backend), a rule that gives those bytes.

Keys are ``str(func)`` of an ``OpOverload``, e.g. ``"aten.convolution.default"``; backends are
``"cpu"`` and ``"cuda"``. A rule is ``rule(args, kwargs, outputs, threads) -> int``: the bytes
alive at the op's own peak *on top of* (memory live before the op + the op's outputs). A buffer
freed before the outputs exist is accounted for by the rule itself (``max(0, w - out)``).
``threads`` is ``torch.get_num_threads()`` of the run being estimated.

``workspace_bytes`` answers the rule's bytes for registered ops, 0 for ops in
``NO_WORKSPACE_OPS`` (measured on CPU to allocate nothing hidden; on other backends only its
views and metadata count as nothing), and ``None`` for ops it does not know: unknown is not
zero, the caller reports those.

CPU rules were measured with ``bench/fidelity/audit_workspace.py`` (PyTorch 2.13.0+cpu,
oneDNN 3.12, an AVX-512 CPU, fp32) and derived from the kernels' sources named in each rule;
``docs/workspace.md`` has the table. CUDA rules are marked "not yet measured".
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from nnmem.analyses.workspace_rnn import (
    lstm_layer_dims,
    mkldnn_rnn_layer_backward_cpu,
    mkldnn_rnn_layer_cpu,
)
from nnmem.analyses.workspace_rnn import mkldnn_rnn_workspace_bytes as mkldnn_rnn_workspace_bytes

Args = Sequence[Any]
Kwargs = Mapping[str, Any]
WorkspaceRule = Callable[[Args, Kwargs, Any, int], int]

_RULES: dict[tuple[str, str], WorkspaceRule] = {}


def register_workspace(op: str, backend: str) -> Callable[[WorkspaceRule], WorkspaceRule]:
    """Register ``rule`` as the workspace of ``op`` (``str`` of an OpOverload) on ``backend``."""

    def decorator(rule: WorkspaceRule) -> WorkspaceRule:
        key = (op, backend)
        if key in _RULES:
            raise ValueError(f"a workspace rule for {op} on {backend} is already registered")
        _RULES[key] = rule
        return rule

    return decorator


def workspace_bytes(
    func: object, args: Args, kwargs: Kwargs, outputs: Any, backend: str, threads: int
) -> int | None:
    """Hidden bytes of one call of ``func`` on ``backend``: 0 if none, ``None`` if unknown."""
    op = str(func)
    rule = _RULES.get((op, backend))
    if rule is not None:
        return rule(args, kwargs, outputs, threads)
    if op in _METADATA_OPS or (backend == "cpu" and op in NO_WORKSPACE_OPS):
        return 0
    return None


def registered_rules() -> frozenset[tuple[str, str]]:
    """The (op, backend) keys that have a rule."""
    return frozenset(_RULES)


# Views, metadata and factories: nothing hidden on any backend.
_METADATA_OPS: frozenset[str] = frozenset(
    {
        "aten.view.default", "aten._unsafe_view.default", "aten.t.default", "aten.transpose.int",
        "aten.permute.default", "aten.expand.default", "aten.select.int", "aten.slice.Tensor",
        "aten.unsqueeze.default", "aten.squeeze.dim", "aten.split.Tensor", "aten.unsafe_split.Tensor",
        "aten.unbind.int", "aten.alias.default", "aten.detach.default", "aten.lift_fresh.default",
        "aten.transpose_.default", "aten.empty.memory_format", "aten.empty_like.default",
        "aten.zeros.default", "aten.ones.default", "aten.ones_like.default", "aten.arange.default",
        "aten.scalar_tensor.default", "aten._local_scalar_dense.default", "prim.device.default",
        "aten.zeros_like.default", "aten.new_empty_strided.default",
        "profiler._record_function_enter_new.default", "profiler._record_function_exit._RecordFunction",
    }
)  # fmt: skip

# Measured on CPU (fp32, the audit's cases) to allocate nothing hidden. Elementwise ops with a
# Python scalar operand allocate a 0-dim wrapped scalar (at most 12 bytes), counted as nothing.
# Only the metadata part is assumed for other backends (CUDA reductions, for one, can stage).
NO_WORKSPACE_OPS: frozenset[str] = _METADATA_OPS | frozenset(
    {
        # copies and layout
        "aten.cat.default", "aten.stack.default", "aten.constant_pad_nd.default",
        "aten.tril.default", "aten.where.self", "aten.gather.default", "aten.index_select.default",
        "aten.select_backward.default",
        # elementwise
        "aten.add.Tensor", "aten.add_.Tensor", "aten.sub.Tensor", "aten.mul.Tensor", "aten.mul_.Tensor",
        "aten.mul.Scalar", "aten.div.Tensor", "aten.div.Scalar", "aten.div_.Scalar", "aten.neg.default",
        "aten.pow.Tensor_Scalar", "aten.sqrt.default", "aten.lerp_.Scalar", "aten.addcmul_.default",
        "aten.addcdiv_.default", "aten.relu.default", "aten.relu_.default", "aten.threshold_backward.default",
        "aten.gelu.default", "aten.gelu_backward.default", "aten.tanh.default", "aten.tanh_.default",
        "aten.tanh_backward.default", "aten.sigmoid_.default", "aten.sigmoid_backward.default",
        "aten.bernoulli_.float",
        # reductions, softmax, losses
        "aten.sum.default", "aten.sum.dim_IntList", "aten.mean.default", "aten.mean.dim", "aten.var_mean.correction",
        "aten.argmax.default", "aten.cumsum.default", "aten.topk.default", "aten._softmax.default",
        "aten._softmax_backward_data.default", "aten._log_softmax.default",
        "aten._log_softmax_backward_data.default", "aten.nll_loss_forward.default",
        "aten.nll_loss_backward.default",
        # pooling
        "aten.max_pool2d_with_indices.default", "aten.max_pool2d_with_indices_backward.default",
        "aten.avg_pool2d.default", "aten.avg_pool2d_backward.default", "aten._adaptive_avg_pool2d.default",
        "aten._adaptive_avg_pool2d_backward.default",
        # normalization forward
        "aten.native_layer_norm.default",
        # optimizer foreach kernels
        "aten._foreach_mul_.Scalar", "aten._foreach_div_.ScalarList", "aten._foreach_add_.Scalar",
        "aten._foreach_add_.Tensor", "aten._foreach_lerp_.Scalar", "aten._foreach_addcmul_.Scalar",
        "aten._foreach_sqrt.default", "aten._foreach_addcdiv_.ScalarList",
    }
)  # fmt: skip


# ----------------------------------------------------------------------------- helpers


def _arg(args: Args, kwargs: Kwargs, index: int, name: str, default: Any = None) -> Any:
    if index < len(args):
        return args[index]
    return kwargs.get(name, default)


def _tensor(args: Args, kwargs: Kwargs, index: int, name: str) -> torch.Tensor:
    value = _arg(args, kwargs, index, name)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"argument {name} is {type(value).__name__}, expected a tensor")
    return value


def _nbytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def _outputs(outputs: Any) -> list[torch.Tensor]:
    items = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
    return [t for t in items if isinstance(t, torch.Tensor)]


def _out_bytes(outputs: Any) -> int:
    return sum(_nbytes(t) for t in _outputs(outputs))


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def onednn_channel_block() -> int:
    """Channels per oneDNN blocked-layout block for fp32: 16 with AVX-512, else 8."""
    return 16 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 8


def _suggests_channels_last(t: torch.Tensor) -> bool:
    if t.dim() == 4:
        return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
    if t.dim() == 5:
        return t.is_contiguous(memory_format=torch.channels_last_3d) and not t.is_contiguous()
    return False


# ----------------------------------------------------------------------------- convolution

_SCRATCH_ALIGN = 128  # the oneDNN scratchpad grantor pads each registered buffer


def _conv_uses_mkldnn(x: torch.Tensor, w: torch.Tensor, stride: Sequence[int], dilation: Sequence[int],
                      groups: int, threads: int) -> bool:  # fmt: skip
    """`ConvParams::use_mkldnn` of aten/src/ATen/native/Convolution.cpp, for CPU tensors."""
    if x.dtype in (torch.bfloat16, torch.float16):
        return True  # taken when the CPU has AVX-512 bf16/fp16 (not measured here)
    if x.dtype != torch.float32:
        return False
    strided = any(s != 1 for s in stride)
    dilated = any(d != 1 for d in dilation)
    k_last, k_prev, n = int(w.shape[-1]), int(w.shape[-2]), int(x.shape[0])
    first = strided or dilated or n >= 16 or k_last != 1 or k_prev != 1 or threads > 1
    second = groups > 1 or (k_last > 3 and k_prev > 3) or n > 1 or math.prod(x.shape[:4]) > 20480
    return first and second


def _conv_shapes(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, transposed: bool, groups: int
                 ) -> tuple[int, int, int, int, int, int]:  # fmt: skip
    """(batch, in channels, out channels, kernel volume, in spatial, out spatial) of a conv."""
    n, c = int(x.shape[0]), int(x.shape[1])
    o = int(w.shape[1]) * groups if transposed else int(w.shape[0])
    return n, c, o, math.prod(w.shape[2:]), math.prod(x.shape[2:]), math.prod(out.shape[2:])


def _onednn_conv_forward_nchw(x: torch.Tensor, w: torch.Tensor, has_bias: bool, out: torch.Tensor,
                              stride: Sequence[int], groups: int, threads: int) -> int:  # fmt: skip
    """oneDNN forward on a plain (NCHW) tensor: reorders in, blocked dst, reorder out."""
    blk, it = onednn_channel_block(), x.element_size()
    n, c, o, k, s_in, s_out = _conv_shapes(x, w, out, False, groups)
    cpg, opg = c // groups, o // groups
    jit, scratch = True, 0
    if groups > 1 and cpg == 1 and opg == 1:  # depthwise: jit_dw, channels blocked over groups
        src, wei, dst = (
            n * _round_up(c, blk) * s_in * it,
            _round_up(groups, blk) * k * it,
            n * _round_up(o, blk) * s_out * it,
        )
    elif groups > 1 and (cpg % blk or opg % blk):  # gemm convolution: plain layouts, im2col per thread
        jit, src, wei, dst = False, 0, 0, _nbytes(out)
        scratch = threads * cpg * k * s_out * 4 + _SCRATCH_ALIGN
    elif groups > 1:  # grouped, every group a whole number of blocks
        src, wei, dst = n * c * s_in * it, o * cpg * k * it, n * o * s_out * it
    else:
        first = c < blk  # "first convolution": source stays plain, weights not padded over C
        src = 0 if first else n * _round_up(c, blk) * s_in * it
        wei = _round_up(o, blk) * (c if first else _round_up(c, blk)) * k * it
        dst = n * _round_up(o, blk) * s_out * it
        if k == 1 and any(s != 1 for s in stride) and not first:  # 1x1 strided: "reduce to unit stride"
            scratch = threads * _round_up(c, blk) * s_out * 4 + _SCRATCH_ALIGN
    if jit and has_bias and o % blk:
        scratch += _round_up(o, blk) * 4 + _SCRATCH_ALIGN  # padded bias
    # phase 1: scratch + src + weights + blocked dst; phase 2: blocked dst + the output (reorder)
    return max(scratch + src + wei + dst - _nbytes(out), dst)


@register_workspace("aten.convolution.default", "cpu")
def _convolution_cpu(args: Args, kwargs: Kwargs, outputs: Any, threads: int) -> int:
    """Reorders and scratch of the CPU convolution backends (oneDNN, or the im2col slow path).

    Derivation: oneDNN (mkldnn_convolution) reorders an NCHW source, and weights, to
    channel-blocked layouts (block 16 on AVX-512, channels padded), computes into a blocked dst
    and reorders it into the output: peak = max(scratch + src + weights + dst, dst + output).
    The slow path (thnn_conv2d) builds an im2col matrix of N * C*kh*kw * OH*OW elements.
    Source: aten/src/ATen/native/mkldnn/Conv.cpp, aten/src/ATen/native/Convolution.cpp
    (use_mkldnn), aten/src/ATen/native/ConvolutionMM2d.cpp, oneDNN jit/gemm convolution.

    Known limitations: oneDNN picks formats per ISA; measured on AVX-512 fp32 (block 16) only,
    AVX2 (block 8) is assumed. Channels-last inputs skip the src/dst reorders; their brgemm
    scratchpad (~12 KB measured) is not counted. Transposed convolution measured on one shape;
    bf16/fp16 formats, dilated/transposed slow paths and 3-D slow paths are not measured.
    """
    x, w = _tensor(args, kwargs, 0, "input"), _tensor(args, kwargs, 1, "weight")
    bias = _arg(args, kwargs, 2, "bias")
    stride, dilation = list(_arg(args, kwargs, 3, "stride")), list(_arg(args, kwargs, 5, "dilation"))
    padding = list(_arg(args, kwargs, 4, "padding"))
    transposed, groups = bool(_arg(args, kwargs, 6, "transposed")), int(_arg(args, kwargs, 8, "groups"))
    out = _outputs(outputs)[0]
    if x.dim() == 3:  # conv1d runs as conv2d on an unsqueezed view
        x, w, out = x.unsqueeze(2), w.unsqueeze(2), out.unsqueeze(2)
    it = x.element_size()
    if _conv_uses_mkldnn(x, w, stride, dilation, groups, threads):
        if _suggests_channels_last(x) or _suggests_channels_last(w):
            blk = onednn_channel_block()
            n, c, o, k, _, _ = _conv_shapes(x, w, out, transposed, groups)
            weight_copy = 0 if _suggests_channels_last(w) else _nbytes(w)  # weight.contiguous(channels_last)
            return weight_copy + _round_up(o, blk) * _round_up(c // groups, blk) * groups * k * it
        if transposed:
            blk = onednn_channel_block()
            n, c, o, k, s_in, s_out = _conv_shapes(x, w, out, True, groups)
            src, dst = n * _round_up(c, blk) * s_in * it, n * _round_up(o, blk) * s_out * it
            wei = _round_up(o, blk) * _round_up(c, blk) * k * it
            return max(src + wei + dst - _nbytes(out), dst + _nbytes(out))
        return _onednn_conv_forward_nchw(x, w, bias is not None, out, stride, groups, threads)
    n, c, _, k, _, s_out = _conv_shapes(x, w, out, transposed, groups)
    unit = k == 1 and all(s == 1 for s in stride) and all(p == 0 for p in padding)
    columns = 0 if unit else n * (c // groups) * k * s_out * it  # im2col matrix of the slow path
    return columns + (0 if x.is_contiguous() else _nbytes(x))


def _minibatch_threads(n: int, cpg: int, opg: int, k: int, spatial: tuple[int, int, int], groups: int,
                       first: bool, blk: int, threads: int) -> int:  # fmt: skip
    """Threads oneDNN's backward-weights kernel splits the batch over (each keeps a weight copy).

    jit_avx512_common_conv_bwd_weights_kernel_f32::balance: the (mb, oc blocks, ic blocks)
    split of least per-thread memory traffic (src 1, dst 1, weights 8), then one of least
    compute within 110 % of that traffic. 1x1 kernels use jit_avx512_common_1x1_conv_kernel's
    balance (src 1, dst 1, weights 12, batch x spatial split, no second step).
    """
    s_in, s_out, stride = spatial
    ic_block, nb_ic = (cpg, 1) if first else (blk, -(-cpg // blk))
    nb_oc = -(-opg // blk)
    if threads < groups:
        return 1
    nthr = threads // groups
    rows = n * s_out if k == 1 else n

    def memory(mb: int, oc: int, ic: int) -> int:
        if k == 1:
            per = -(-rows // mb)
            src = per * -(-nb_ic // ic) * ic_block // stride
            return src + per * -(-nb_oc // oc) * blk + 12 * -(-nb_oc // oc) * -(-nb_ic // ic) * ic_block * blk
        src = -(-n // mb) * -(-nb_ic // ic) * ic_block * s_in // stride
        dst = -(-n // mb) * -(-nb_oc // oc) * blk * s_out
        return src + dst + 8 * -(-nb_oc // oc) * -(-nb_ic // ic) * k * ic_block * blk

    def compute(mb: int, oc: int, ic: int) -> int:
        return -(-n // mb) * -(-nb_oc // oc) * -(-nb_ic // ic)

    splits = [
        (mb, oc, min(nthr // mb // oc, nb_ic))
        for mb in range(1, min(nthr, rows) + 1)
        for oc in range(1, min(nthr // mb, nb_oc) + 1)
    ]
    best, best_memory = (1, 1, 1), memory(1, 1, 1)
    for split in splits:
        if memory(*split) <= best_memory:
            best, best_memory = split, memory(*split)
    if k != 1:
        best_compute = compute(*best)
        for split in splits:
            cheaper = compute(*split) <= best_compute and memory(*split) < 1.1 * best_memory
            if cheaper or 4 * compute(*split) <= 3 * best_compute:
                best, best_compute = split, compute(*split)
    return best[0]


@register_workspace("aten.convolution_backward.default", "cpu")
def _convolution_backward_cpu(args: Args, kwargs: Kwargs, outputs: Any, threads: int) -> int:
    """Reorders and scratch of the CPU convolution backward (oneDNN, or the im2col slow path).

    Derivation: oneDNN runs two primitives. Backward-data reorders grad_output and weights to
    blocked layouts and computes a blocked grad_input, reordered to the output; backward-weights
    reorders grad_output (and the source unless it is a "first convolution", C < 16) again and
    keeps a weight-gradient copy per extra thread it splits the batch over (oneDNN's balance()
    picks the split of least memory traffic), reduced at the end:
    peak = max(dd + w + ds, ds + gi, gi + dd + src + dw + reduction + db) - outputs.
    Source: aten/src/ATen/native/mkldnn/Conv.cpp (mkldnn_convolution_backward), oneDNN
    jit_avx512_common_convolution bwd_data/bwd_weights; ConvolutionMM2d.cpp for the slow path.

    Known limitations: the reduction's constant part (8320 bytes, 8064 for 1x1) is a fit, up
    to ~12 KB off on some shapes; strided backward allocates two blocked-source buffers before
    the weight gradient (measured, not traced to the source). Channels-last, transposed and
    non-fp32 backward are not measured (the NCHW rule is applied, channels-last without the
    src/dst reorders).
    """
    go, x = _tensor(args, kwargs, 0, "grad_output"), _tensor(args, kwargs, 1, "input")
    w = _tensor(args, kwargs, 2, "weight")
    stride, padding = list(_arg(args, kwargs, 4, "stride")), list(_arg(args, kwargs, 5, "padding"))
    dilation, transposed = list(_arg(args, kwargs, 6, "dilation")), bool(_arg(args, kwargs, 7, "transposed"))
    groups, mask = int(_arg(args, kwargs, 9, "groups")), list(_arg(args, kwargs, 10, "output_mask"))
    if x.dim() == 3:
        x, w, go = x.unsqueeze(2), w.unsqueeze(2), go.unsqueeze(2)
    it = x.element_size()
    n, c, o, k, s_in, s_out = _conv_shapes(x, w, go, transposed, groups)
    outs = _out_bytes(outputs)
    if not _conv_uses_mkldnn(x, w, stride, dilation, groups, threads):
        unit = k == 1 and all(s == 1 for s in stride) and all(p == 0 for p in padding)
        return 0 if unit else n * (c // groups) * k * s_out * it  # im2col columns, reused by both grads
    blk = onednn_channel_block()
    cpg, opg = c // groups, o // groups
    depthwise = groups > 1 and cpg == 1 and opg == 1
    channels_last = _suggests_channels_last(x) or _suggests_channels_last(w)
    first = groups == 1 and c < blk
    dd = 0 if channels_last else n * _round_up(o, blk) * s_out * it
    ds = 0 if channels_last else n * _round_up(c, blk) * s_in * it
    src = 0 if channels_last or first else n * _round_up(c, blk) * s_in * it
    if depthwise:
        w_data = w_grad = _round_up(groups, blk) * k * it
    else:
        w_data = _round_up(o, blk) * _round_up(cpg, blk) * groups * k * it
        w_grad = _round_up(o, blk) * (c if first else _round_up(cpg, blk) * groups) * k * it
    grad_input = n * c * s_in * it if mask[0] else 0
    peaks = [0]
    if mask[0]:
        peaks += [dd + w_data + ds, ds + grad_input]
    if mask[1] or mask[2]:
        bias_grad = o * it if mask[2] else 0
        spatial = (math.prod(x.shape[2:]), math.prod(go.shape[2:]), math.prod(stride))
        split = 1 if depthwise else _minibatch_threads(n, cpg, opg, k, spatial, groups, first, blk, threads)
        constant = 8064 if k == 1 else 8320  # fitted: barrier and alignment of the reduction
        reduction = (split - 1) * (w_grad + _round_up(o, blk) * it) + constant if split > 1 else 0
        peaks += [grad_input + dd + src + w_grad + reduction + bias_grad, outs + w_grad + bias_grad]
        if any(st != 1 for st in stride) and not (channels_last or first):  # two blocked sources first
            peaks.append(grad_input + 2 * n * _round_up(c, blk) * s_in * it)
    return max(0, max(peaks) - outs)


# ----------------------------------------------------------------------------- normalization


@register_workspace("aten.native_batch_norm.default", "cpu")
def _batch_norm_cpu(args: Args, kwargs: Kwargs, outputs: Any, threads: int) -> int:
    """Per-channel buffers of the CPU batch norm forward.

    Derivation: the transform computes per-channel alpha/beta (2 * C floats); the channels-last
    (and 2-D) training kernel also keeps a threads x C partial-sum buffer; the strided fallback
    keeps a third per-channel buffer in eval and none in training.
    Source: aten/src/ATen/native/Normalization.cpp, aten/src/ATen/native/cpu/batch_norm_kernel.cpp.

    Known limitations: fp32 measured; reduced-precision inputs assumed to use fp32 buffers.
    """
    x, train = _tensor(args, kwargs, 0, "input"), bool(_arg(args, kwargs, 5, "training"))
    c = int(x.shape[1])
    channel = c * 4
    if not (x.is_contiguous() or _suggests_channels_last(x)):
        return 0 if train else 3 * channel
    last = x.dim() == 2 or _suggests_channels_last(x)
    return 2 * channel + (threads * channel if train and last else 0)


@register_workspace("aten.native_batch_norm_backward.default", "cpu")
def _batch_norm_backward_cpu(args: Args, kwargs: Kwargs, outputs: Any, threads: int) -> int:
    """The second grad_input of the CPU batch norm backward, and per-thread buffers.

    Derivation: batch_norm_backward_cpu_template allocates grad_input, and on the contiguous
    path allocates it again in the layout ``suggest_memory_format_dig`` picks; the first is
    freed on return, so an input-sized buffer is hidden. The channels-last (and 2-D) kernel
    adds a 2 x threads x C float buffer (and one C buffer in eval) after that first one is freed;
    the strided fallback only keeps the C-sized sum of grad_output.
    Source: aten/src/ATen/native/Normalization.cpp (batch_norm_backward_cpu_template),
    aten/src/ATen/native/cpu/batch_norm_kernel.cpp.

    Known limitations: fp32 measured; reduced-precision inputs assumed to use fp32 buffers.
    """
    go, x = _tensor(args, kwargs, 0, "grad_out"), _tensor(args, kwargs, 1, "input")
    train, mask = bool(_arg(args, kwargs, 7, "train")), list(_arg(args, kwargs, 9, "output_mask"))
    c = int(x.shape[1])
    channel = c * 4
    contiguous = (x.is_contiguous() and go.is_contiguous()) or (
        _suggests_channels_last(x) and _suggests_channels_last(go)
    )
    if not contiguous:
        return channel
    last = x.dim() == 2 or _suggests_channels_last(x)
    kernel = (2 * threads * channel + (0 if train else channel)) if last else 0
    return max(_nbytes(x) if mask[0] else 0, kernel)


@register_workspace("aten.native_layer_norm_backward.default", "cpu")
def _layer_norm_backward_cpu(args: Args, kwargs: Kwargs, outputs: Any, threads: int) -> int:
    """Per-thread partial sums of dgamma and dbeta in the CPU layer norm backward.

    Derivation: LayerNormBackwardKernelImplInternal allocates a {2, num_threads, N} buffer (N the
    normalized size) when dgamma or dbeta is wanted, and reduces it after the parallel loop.
    Source: aten/src/ATen/native/cpu/layer_norm_kernel.cpp.

    Known limitations: fp32 measured; reduced-precision inputs assumed to use a fp32 buffer.
    """
    normalized = [int(d) for d in _arg(args, kwargs, 2, "normalized_shape")]
    mask = list(_arg(args, kwargs, 7, "output_mask"))
    if not (mask[1] or mask[2]):
        return 0
    return 2 * threads * math.prod(normalized) * 4


# ----------------------------------------------------------------------------- attention


def _flash_split_sizes(q_len: int, kv_len: int) -> tuple[int, int]:
    q_split = 256 if q_len >= 768 else 64 if q_len >= 192 else 32
    return min(q_split, q_len), min(512, kv_len)


@register_workspace("aten._scaled_dot_product_flash_attention_for_cpu.default", "cpu")
def _flash_attention_cpu(args: Args, kwargs: Kwargs, outputs: Any, threads: int) -> int:
    """Per-thread tiles of the CPU flash attention forward.

    Derivation: cpu_flash_attention allocates buf[num_threads, qS*kvS + 2*qS + qS*Ev] in the
    accumulation type, with qS = 32/64/256 for q_len < 192/< 768/>= 768 and kvS = min(512, kv_len).
    Source: aten/src/ATen/native/cpu/FlashAttentionKernel.cpp, transformers/attention.cpp.

    Known limitations: fp32 measured; bf16/fp16 add a reduced-type tile and packed K/V buffers
    that are not counted; an attention mask is not measured.
    """
    q, v = _tensor(args, kwargs, 0, "query"), _tensor(args, kwargs, 2, "value")
    q_split, kv_split = _flash_split_sizes(int(q.shape[-2]), int(v.shape[-2]))
    per_thread = q_split * kv_split + 2 * q_split + q_split * int(v.shape[-1])
    return threads * per_thread * 4


@register_workspace("aten._scaled_dot_product_flash_attention_for_cpu_backward.default", "cpu")
def _flash_attention_backward_cpu(args: Args, kwargs: Kwargs, outputs: Any, threads: int) -> int:
    """Per-thread tiles of the CPU flash attention backward, and a copy of grad_out.

    Derivation: cpu_flash_attention_backward allocates buf[num_threads, 2 * qS * kvS] (attn and
    grad_attn tiles) and a qS-sized row buffer; grad_out is made contiguous in the kernel's
    (B, L, H, E) layout, a copy unless it already is.
    Source: aten/src/ATen/native/cpu/FlashAttentionKernel.cpp.

    Known limitations: fp32 measured; reduced types add buffers not counted.
    """
    go, q = _tensor(args, kwargs, 0, "grad_out"), _tensor(args, kwargs, 1, "query")
    k = _tensor(args, kwargs, 2, "key")
    q_split, kv_split = _flash_split_sizes(int(q.shape[-2]), int(k.shape[-2]))
    grad_out_copy = 0 if go.transpose(1, 2).is_contiguous() else _nbytes(go)
    return threads * 2 * q_split * kv_split * 4 + q_split * 4 + grad_out_copy


@register_workspace("aten._safe_softmax.default", "cpu")
def _safe_softmax_cpu(args: Args, kwargs: Kwargs, outputs: Any, threads: int) -> int:
    """The masks of _safe_softmax: a bool per element, a bool per row, a scalar.

    Derivation: softmax, then ``isneginf(self)`` (numel bools), ``.all(dim)`` (numel / size(dim)
    bools) and a 0-dim zero, all freed once masked_fill_ has written the output.
    Source: aten/src/ATen/native/SoftMax.cpp (_safe_softmax).

    Known limitations: the scalar is counted as 4 bytes (fp32 measured).
    """
    x, dim = _tensor(args, kwargs, 0, "self"), int(_arg(args, kwargs, 1, "dim"))
    rows = x.numel() // max(1, int(x.shape[dim])) if x.dim() else 1
    return x.numel() + rows + 4


def _mha_peak(x: torch.Tensor, num_heads: int, need_weights: bool) -> tuple[int, int]:
    """(peak above the input, bytes left) of _native_multi_head_attention's self-attention path."""
    b, t, d = (int(s) for s in x.shape)
    it = x.element_size()
    qkv = 3 * b * t * d * it
    scores = b * num_heads * t * t * it
    context = b * t * d * it
    # qkv mm + q/k/v split; split + scores; split + 0213 copy + projection (scores kept if wanted)
    peak = max(2 * qkv, qkv + scores, qkv + 2 * context + (scores if need_weights else 0))
    kept = context + (b * t * t * it if need_weights else 0)
    return peak, kept


@register_workspace("aten._native_multi_head_attention.default", "cpu")
def _native_mha_cpu(args: Args, kwargs: Kwargs, outputs: Any, threads: int) -> int:
    """Intermediates of the fused (inference fast path) multi-head attention.

    Derivation: qkv = x @ W^T (3BTD), _transform_bias_rescale_qkv splits it into q, k, v (3BTD);
    qkv is freed; scores = q @ k^T (B*H*T*T), softmax in place, context written over q; the
    0213 transpose is copied (BTD) before the output projection (BTD).
    Source: aten/src/ATen/native/transformers/attention.cpp (native_multi_head_attention_cpu).

    Known limitations: self-attention (query is key is value) measured; masks, nested tensors
    and need_weights (an averaged B*T*T copy) are not measured.
    """
    query, num_heads = _tensor(args, kwargs, 0, "query"), int(_arg(args, kwargs, 4, "num_head"))
    need_weights = bool(_arg(args, kwargs, 10, "need_weights", True))
    peak, _ = _mha_peak(query, num_heads, need_weights)
    return max(0, peak - _out_bytes(outputs))


@register_workspace("aten._transformer_encoder_layer_fwd.default", "cpu")
def _encoder_layer_cpu(args: Args, kwargs: Kwargs, outputs: Any, threads: int) -> int:
    """Every intermediate of the fused TransformerEncoderLayer (eval fast path).

    Derivation: the layer is one op to the dispatcher; inside, the attention block (see
    _native_multi_head_attention), two layer norms (output + 2 * B*T floats each) and the
    feed-forward block (B*T*F hidden, B*T*D output) run and free their intermediates; the
    output is one B*T*D tensor. Replaying that sequence gives the peak above the input.
    Source: aten/src/ATen/native/transformers/transformer.cpp (transformer_encoder_layer_forward).

    Known limitations: measured with and without norm_first, relu and gelu, no mask; masks and
    nested-tensor inputs (src_key_padding_mask) are not modeled.
    """
    x, num_heads = _tensor(args, kwargs, 0, "src"), int(_arg(args, kwargs, 2, "num_heads"))
    norm_first = bool(_arg(args, kwargs, 8, "norm_first"))
    ffn1_weight = _tensor(args, kwargs, 14, "ffn_weight_1")
    b, t, d = (int(s) for s in x.shape)
    it = x.element_size()
    act, stats, hidden = b * t * d * it, 2 * b * t * 4, b * t * int(ffn1_weight.shape[0]) * it
    attn_peak, _ = _mha_peak(x, num_heads, False)
    # live above the input at each stage, in the order the kernel runs (norm_first or not)
    normed = act if norm_first else 0  # with norm_first, norm(x) is a tensor apart from x
    peaks = [
        act + stats,  # a layer norm: output and mean/rstd
        normed + attn_peak,  # the attention block
        2 * act + stats,  # attention output (+= src) and its layer norm
        normed + act + hidden + act,  # residual, hidden, ffn output
    ]
    return max(0, max(peaks) - _out_bytes(outputs))


# ----------------------------------------------------------------------------- recurrent (oneDNN LSTM)

# Derived from PyTorch's mkldnn/RNN.cpp, ideep and oneDNN's RNN sizing: see workspace_rnn.
register_workspace("aten.mkldnn_rnn_layer.default", "cpu")(mkldnn_rnn_layer_cpu)
register_workspace("aten.mkldnn_rnn_layer_backward.default", "cpu")(mkldnn_rnn_layer_backward_cpu)


# ----------------------------------------------------------------------------- matmul, embedding, dropout


def _blas_ready(t: torch.Tensor) -> bool:
    """Whether the last two dims are row- or column-major, as cpublas accepts without a copy."""
    if t.dim() < 2:
        return True
    rows, cols = int(t.shape[-2]), int(t.shape[-1])
    s_rows, s_cols = t.stride(-2), t.stride(-1)
    return (
        (s_cols == 1 and s_rows >= max(1, cols)) or (s_rows == 1 and s_cols >= max(1, rows)) or t.numel() <= 1
    )


def _matmul_copies(*operands: torch.Tensor) -> int:
    return sum(_nbytes(m) for m in operands if not _blas_ready(m))


@register_workspace("aten.mm.default", "cpu")
def _mm_cpu(args: Args, kwargs: Kwargs, outputs: Any, threads: int) -> int:
    """Contiguous copies of operands BLAS cannot read in place.

    Derivation: row- and column-major operands go straight to MKL sgemm (measured 0 bytes,
    transposed operands included); an operand with no unit stride in its last two dims is
    copied to contiguous first.
    Source: aten/src/ATen/native/LinearAlgebra.cpp (addmm_impl_cpu_, prepare matrix).

    Known limitations: fp32 measured; MKL's own internal buffers (outside the c10 allocator) are
    invisible to the profiler and not counted.
    """
    return _matmul_copies(_tensor(args, kwargs, 0, "self"), _tensor(args, kwargs, 1, "mat2"))


@register_workspace("aten.addmm.default", "cpu")
def _addmm_cpu(args: Args, kwargs: Kwargs, outputs: Any, threads: int) -> int:
    """As aten.mm: contiguous copies of non-BLAS operands (mat1, mat2).

    Derivation: see aten.mm.default. Source: aten/src/ATen/native/LinearAlgebra.cpp.

    Known limitations: as aten.mm.default.
    """
    return _matmul_copies(_tensor(args, kwargs, 1, "mat1"), _tensor(args, kwargs, 2, "mat2"))


@register_workspace("aten.bmm.default", "cpu")
def _bmm_cpu(args: Args, kwargs: Kwargs, outputs: Any, threads: int) -> int:
    """As aten.mm, per batch: contiguous copies of operands with no unit stride in the matrices.

    Derivation: see aten.mm.default; any batch stride is accepted (measured).
    Source: aten/src/ATen/native/LinearAlgebra.cpp (bmm_out_or_baddbmm_).

    Known limitations: as aten.mm.default.
    """
    return _matmul_copies(_tensor(args, kwargs, 0, "self"), _tensor(args, kwargs, 1, "mat2"))


@register_workspace("aten.embedding.default", "cpu")
def _embedding_cpu(args: Args, kwargs: Kwargs, outputs: Any, threads: int) -> int:
    """A contiguous copy of non-contiguous (e.g. expanded) indices.

    Derivation: embedding runs index_select on ``indices.contiguous().view(-1)``.
    Source: aten/src/ATen/native/Embedding.cpp.

    Known limitations: none measured.
    """
    indices = _tensor(args, kwargs, 1, "indices")
    return 0 if indices.is_contiguous() else _nbytes(indices)


@register_workspace("aten.embedding_dense_backward.default", "cpu")
def _embedding_backward_cpu(args: Args, kwargs: Kwargs, outputs: Any, threads: int) -> int:
    """A contiguous copy of non-contiguous indices in the dense embedding backward.

    Derivation: the CPU backward works on ``indices.contiguous()``; with padding_idx or
    scale_grad_by_freq nothing more is allocated (measured).
    Source: aten/src/ATen/native/Embedding.cpp (embedding_dense_backward_cpu).

    Known limitations: none measured.
    """
    indices = _tensor(args, kwargs, 1, "indices")
    return 0 if indices.is_contiguous() else _nbytes(indices)


@register_workspace("aten.native_dropout.default", "cpu")
def _native_dropout_cpu(args: Args, kwargs: Kwargs, outputs: Any, threads: int) -> int:
    """The Bernoulli noise tensor of a training dropout.

    Derivation: the CPU path draws ``noise = empty_like(input).bernoulli_(1 - p)`` in the input's
    dtype, derives the bool mask and the scaled output from it, then frees it.
    Source: aten/src/ATen/native/Dropout.cpp (native_dropout).

    Known limitations: p in (0, 1) in training measured; p = 0 / eval assumed to allocate nothing.
    """
    x, p, train = (
        _tensor(args, kwargs, 0, "input"),
        float(_arg(args, kwargs, 1, "p")),
        _arg(args, kwargs, 2, "train"),
    )
    return _nbytes(x) if train is not False and 0.0 < p < 1.0 else 0


_TRANSPOSE_BLOCK = 60  # copy_transpose's tile: BLOCK_SZ x BLOCK_SZ elements


def _transpose_copy_bytes(dst: torch.Tensor, src: torch.Tensor) -> int:
    """The tile copy_ uses to write a transposed 2-D tensor into a contiguous one, else 0."""
    valid = (
        dst.is_contiguous()
        and src.dim() == 2
        and src.numel() >= _TRANSPOSE_BLOCK * _TRANSPOSE_BLOCK
        and src.stride(0) == 1
        and src.stride(1) == src.shape[0]
        and src.dtype == dst.dtype
        and src.shape == dst.shape
    )
    return _TRANSPOSE_BLOCK * _TRANSPOSE_BLOCK * src.element_size() if valid else 0


@register_workspace("aten.copy_.default", "cpu")
def _copy_cpu(args: Args, kwargs: Kwargs, outputs: Any, threads: int) -> int:
    """A 60 x 60 tile when a transposed 2-D tensor is copied into a contiguous one.

    Derivation: copy_ takes copy_transpose when the source is a transposed 2-D tensor of the
    destination's dtype and shape with at least 60 * 60 elements; it stages 60 x 60 blocks
    through one buffer. Source: aten/src/ATen/native/Copy.cpp (copy_transpose_valid).

    Known limitations: none measured (fp32, fp64, int64).
    """
    return _transpose_copy_bytes(_tensor(args, kwargs, 0, "self"), _tensor(args, kwargs, 1, "src"))


@register_workspace("aten.clone.default", "cpu")
def _clone_cpu(args: Args, kwargs: Kwargs, outputs: Any, threads: int) -> int:
    """As aten.copy_: a 60 x 60 tile when a transposed 2-D tensor is cloned to contiguous.

    Derivation: clone is empty + copy_. Source: aten/src/ATen/native/TensorFactories.cpp, Copy.cpp.

    Known limitations: as aten.copy_.default.
    """
    return _transpose_copy_bytes(_outputs(outputs)[0], _tensor(args, kwargs, 0, "self"))


@register_workspace("aten._to_copy.default", "cpu")
def _to_copy_cpu(args: Args, kwargs: Kwargs, outputs: Any, threads: int) -> int:
    """As aten.copy_: a 60 x 60 tile when a transposed 2-D tensor is copied to contiguous.

    Derivation: _to_copy is empty + copy_. Source: aten/src/ATen/native/TensorConversions.cpp.

    Known limitations: as aten.copy_.default.
    """
    return _transpose_copy_bytes(_outputs(outputs)[0], _tensor(args, kwargs, 0, "self"))


# ----------------------------------------------------------------------------- fake-tensor shortfalls


def fake_output_shortfall_bytes(func: object, args: Args, kwargs: Kwargs) -> int:
    """Bytes a real CPU run's outputs hold that the op's fake (meta) kernel does not show.

    ``aten.mkldnn_rnn_layer.default`` with grad mode on returns an empty workspace under fake
    tensors but a real one of `mkldnn_rnn_workspace_bytes`, saved for backward until the layer's
    backward runs. The kernel decides on ``at::GradMode::is_enabled()``, not on its ``train``
    argument, so this reads grad mode at call time (the tracker calls it inside the op's
    dispatch). Source: torch/_meta_registrations.py (mkldnn_rnn_layer), mkldnn/RNN.cpp.
    """
    if str(func) != "aten.mkldnn_rnn_layer.default" or not torch.is_grad_enabled():
        return 0
    t, n, i, h = lstm_layer_dims(args, kwargs, 10)
    return mkldnn_rnn_workspace_bytes(t, n, i, h)


# ----------------------------------------------------------------------------- CUDA (not yet measured)


def cublas_workspace_bytes(config: str | None = None, compute_capability: tuple[int, int] = (8, 0)) -> int:
    """The cuBLAS workspace PyTorch allocates once per (device, stream) at the first matmul.

    Not yet measured. It comes from the CUDA caching allocator and stays allocated, so it is a
    one-time persistent cost, not a per-op transient: ``CUBLAS_WORKSPACE_CONFIG`` is a list of
    ``:SIZE_KiB:COUNT`` pairs summed; the default is ``:4096:2:16:8`` (8 MiB + 128 KiB), or
    32 MiB on compute capability 9.x, 10.x and 12.x. cuBLASLt shares this workspace by default
    (unified workspaces; ``CUBLASLT_WORKSPACE_SIZE`` in KiB when not unified, 1 MiB default).
    Source: aten/src/ATen/cuda/CublasHandlePool.cpp (parseChosenWorkspaceSize).
    """
    if config is None:
        config = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    if config:
        pairs = re.findall(r":([0-9]+):([0-9]+)", config)
        if pairs:
            return sum(int(size) * 1024 * int(count) for size, count in pairs)
    if compute_capability[0] in (9, 10, 12):
        return 4096 * 8 * 1024
    return 4096 * 1024 * 2 + 16 * 1024 * 8


@register_workspace("aten.convolution.default", "cuda")
def _convolution_cuda(args: Args, kwargs: Kwargs, outputs: Any, threads: int) -> int:
    """cuDNN convolution workspace: not yet measured, counted as 0.

    Derivation: cuDNN picks an algorithm whose workspace fits what the caching allocator can
    still give (benchmark mode tries the fastest that fits); the workspace is allocated and
    freed around the call, so it is bounded by free memory rather than by the shapes.
    Source: aten/src/ATen/native/cudnn/Conv_v8.cpp / Conv_v7.cpp (workspace allocation).

    Known limitations: not yet measured; the real value can be anything up to free memory.
    """
    return 0


@register_workspace("aten.convolution_backward.default", "cuda")
def _convolution_backward_cuda(args: Args, kwargs: Kwargs, outputs: Any, threads: int) -> int:
    """cuDNN convolution backward workspace: not yet measured, counted as 0.

    Derivation: as the forward: the data and weight gradient algorithms each take a workspace
    bounded by the memory the caching allocator can give.
    Source: aten/src/ATen/native/cudnn/Conv_v8.cpp.

    Known limitations: not yet measured.
    """
    return 0
