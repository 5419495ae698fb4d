"""Hidden workspace of the CPU convolution kernels: oneDNN (through ideep) and the im2col slow path.

PyTorch runs a CPU fp32 convolution through oneDNN when `ConvParams::use_mkldnn` says so
(aten/src/ATen/native/Convolution.cpp), else through the im2col "slow path"
(ConvolutionMM2d.cpp). On the oneDNN path (aten/src/ATen/native/mkldnn/Conv.cpp) ideep reorders
plain NCHW tensors into the layouts the chosen oneDNN implementation asks for, oneDNN takes a
scratchpad (`memory_tracking::registry_t::book`: every entry reserves its size plus its
alignment, 128 bytes by default, a page for page-aligned entries), and the result is reordered
back into the dense output (`mkldnn_to_dense`). None of that is an output.

Which oneDNN implementation runs decides the layouts and the scratchpad (oneDNN 3.12's
cpu_convolution_list.cpp order, fp32 on AVX-512; confirmed with ONEDNN_VERBOSE):

* forward: `jit:avx512_core` (channel-blocked, block 16), `jit_dw` for depthwise, `gemm` for
  groups whose channels are not whole blocks.
* backward data: `brgconv_strided` for any stride > 1 without groups (channels-last source and
  destination, weights blocked over input channels), else `jit` / `jit_1x1` / `jit_dw`
  (blocked), `gemm` for groups not in whole blocks (plain layouts and an im2col buffer).
* backward weights: `jit_1x1` for 1x1 kernels, `jit_dw` for depthwise, `jit:avx512_core` for
  kernels up to 14 wide (`jit:avx2`, block 8, for the first convolutions and paddings it
  refuses), else `gemm` (ViT's 16x16 stride-16 patch embedding): plain layouts, an im2col
  buffer and a per-thread weight-gradient copy booked 4x too large.

Which implementation takes a shape, and the scratchpad each books, are in
`nnmem.analyses.onednn_conv`; this module adds PyTorch's side: contiguous copies, ideep's
reorders and gradient buffers, and the dense copies `mkldnn_to_dense` makes. The rules equal the measured transient byte for byte on the shapes in tests/test_workspace.py
(PyTorch 2.13, oneDNN 3.12, AVX-512, fp32, 2 threads). Registered in
`nnmem.analyses.workspace`'s registry under ``"aten.convolution.default"`` and
``"aten.convolution_backward.default"`` (``"cpu"``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from nnmem.analyses.onednn_conv import (
    FLOAT_BYTES,
    SCRATCH_ALIGN,
    Conv,
    avx2_backward_weights_scratch_bytes,
    avx512_jit_refuses,
    brgemm_strided_backward_data_scratch_bytes,
    gemm_backward_data_scratch_bytes,
    gemm_backward_weights_scratch_bytes,
    jit_1x1_backward_weights_scratch_bytes,
    jit_backward_weights_scratch_bytes,
    onednn_channel_block,
    round_up,
    uses_gemm_backward_weights,
)
from nnmem.analyses.op_args import arg as _arg
from nnmem.analyses.op_args import nbytes as _nbytes
from nnmem.analyses.op_args import output_tensors as _outputs
from nnmem.analyses.op_args import tensor_arg as _tensor


def suggests_channels_last(t: torch.Tensor) -> bool:
    """Whether `t` is channels-last (and not also contiguous), as `suggest_memory_format` says."""
    if t.dim() == 4:
        return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
    if t.dim() == 5:
        return t.is_contiguous(memory_format=torch.channels_last_3d) and not t.is_contiguous()
    return False


def _copy_bytes(t: torch.Tensor, channels_last: bool) -> int:
    """Bytes of ``t.contiguous(memory_format)`` when that is a copy (mkldnn/Conv.cpp does it)."""
    if channels_last and t.dim() in (4, 5):
        fmt = torch.channels_last if t.dim() == 4 else torch.channels_last_3d
        return 0 if t.is_contiguous(memory_format=fmt) else _nbytes(t)
    return 0 if t.is_contiguous() else _nbytes(t)


def conv_uses_mkldnn(x: torch.Tensor, w: torch.Tensor, stride: Sequence[int], dilation: Sequence[int],
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


def _conv_of(x: torch.Tensor, w: torch.Tensor, y: torch.Tensor, stride: Sequence[int],
             padding: Sequence[int], groups: int, transposed: bool) -> Conv:  # fmt: skip
    """The `Conv` of tensors shaped (N, C, *spatial); conv1d comes as a 2-D view (H = 1)."""
    n, c = int(x.shape[0]), int(x.shape[1])
    o = int(w.shape[1]) * groups if transposed else int(w.shape[0])
    return Conv(
        n, c, o, groups, tuple(int(s) for s in w.shape[2:]), tuple(int(s) for s in x.shape[2:]),
        tuple(int(s) for s in y.shape[2:]), tuple(stride), tuple(padding), x.element_size(),
    )  # fmt: skip


def _view_2d(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """conv1d runs as conv2d on views with H = 1 (Convolution.cpp, view1d_as_2d)."""
    return [t.unsqueeze(2) if t.dim() == 3 else t for t in tensors]


def _params_2d(x: torch.Tensor, stride: list[int], padding: list[int], dilation: list[int]
               ) -> tuple[list[int], list[int], list[int]]:  # fmt: skip
    """Stride, padding and dilation for the 2-D view of a conv1d (H = 1: stride 1, no padding)."""
    extra = x.dim() - 2 - len(stride)
    return [1] * extra + stride, [0] * extra + padding, [1] * extra + dilation


def _blocked(count: int) -> int:
    return round_up(count, onednn_channel_block())


def _blocked_weights(cv: Conv, first_unpadded: bool = False) -> int:
    """Bytes of the weights in oneDNN's blocked layout: per group, output and input channels
    padded to whole blocks; a first convolution's weight gradient keeps its few input channels
    unpadded (`first_unpadded`)."""
    if first_unpadded and cv.first:
        return _blocked(cv.o) * cv.c * cv.k * cv.itemsize
    return cv.groups * _blocked(cv.opg) * _blocked(cv.cpg) * cv.k * cv.itemsize


# ----------------------------------------------------------------------------- forward


def _forward_nchw(cv: Conv, has_bias: bool, out_bytes: int, threads: int) -> int:
    """oneDNN forward on a plain (NCHW) tensor: reorders in, blocked dst, reorder out."""
    it = cv.itemsize
    n, c, o, k, s_in, s_out, groups = cv.n, cv.c, cv.o, cv.k, cv.s_in, cv.s_out, cv.groups
    jit, scratch = True, 0
    if cv.depthwise:  # jit_dw, channels blocked over groups
        src, wei, dst = n * _blocked(c) * s_in * it, _blocked(groups) * k * it, n * _blocked(o) * s_out * it
    elif cv.plain_groups:  # gemm convolution: plain layouts, im2col per thread
        jit, src, wei, dst = False, 0, 0, out_bytes
        scratch = threads * cv.cpg * k * s_out * FLOAT_BYTES + SCRATCH_ALIGN
    elif groups > 1:  # grouped, every group a whole number of blocks
        src, wei, dst = n * c * s_in * it, o * cv.cpg * k * it, n * o * s_out * it
    else:
        src = 0 if cv.first else n * _blocked(c) * s_in * it  # a first convolution reads plain NCHW
        wei = _blocked(o) * (c if cv.first else _blocked(c)) * k * it
        dst = n * _blocked(o) * s_out * it
        if k == 1 and any(s != 1 for s in cv.stride) and not cv.first:  # 1x1 strided: "reduce to unit stride"
            scratch = threads * _blocked(c) * s_out * FLOAT_BYTES + SCRATCH_ALIGN
    if jit and has_bias and o % onednn_channel_block():
        scratch += _blocked(o) * FLOAT_BYTES + SCRATCH_ALIGN  # padded bias
    # phase 1: scratch + src + weights + blocked dst; phase 2: blocked dst + the output (reorder)
    return max(scratch + src + wei + dst - out_bytes, dst)


def convolution_cpu(args: Sequence[Any], kwargs: Mapping[str, Any], outputs: Any, threads: int) -> int:
    """Reorders and scratch of the CPU convolution forward (oneDNN, or the im2col slow path).

    Derivation: mkldnn_convolution makes input and weight contiguous (a copy if they are not),
    ideep reorders an NCHW source, and weights, to channel-blocked layouts (block 16 on AVX-512,
    channels padded), oneDNN computes into a blocked dst that is reordered into the output:
    peak = max(scratch + src + weights + dst, dst + output). The slow path (thnn_conv2d) builds
    an im2col matrix of N * C*kh*kw * OH*OW elements.
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
    x, w, out = _view_2d(x, w, _outputs(outputs)[0])
    stride, padding, dilation = _params_2d(x, stride, padding, dilation)
    cv = _conv_of(x, w, out, stride, padding, groups, transposed)
    it = cv.itemsize
    if not conv_uses_mkldnn(x, w, stride, dilation, groups, threads):
        unit = cv.k == 1 and all(s == 1 for s in stride) and all(p == 0 for p in padding)
        columns = 0 if unit else cv.n * cv.cpg * cv.k * cv.s_out * it  # im2col matrix of the slow path
        return columns + (0 if x.is_contiguous() else _nbytes(x))
    channels_last = suggests_channels_last(x) or suggests_channels_last(w)
    copies = _copy_bytes(x, channels_last) + _copy_bytes(w, channels_last)
    if channels_last:
        weight_copy = 0 if suggests_channels_last(w) else _nbytes(w)  # weight.contiguous(channels_last)
        return weight_copy + copies + _blocked_weights(cv)
    if transposed:
        src, dst = cv.n * _blocked(cv.c) * cv.s_in * it, cv.n * _blocked(cv.o) * cv.s_out * it
        wei = _blocked(cv.o) * _blocked(cv.c) * cv.k * it
        return copies + max(src + wei + dst - _nbytes(out), dst + _nbytes(out))
    return copies + _forward_nchw(cv, bias is not None, _nbytes(out), threads)


# ----------------------------------------------------------------------------- backward


def _backward_data_peaks(cv: Conv, grad_input: int, threads: int) -> list[int]:
    """Live bytes at the peaks of mkldnn_convolution_backward_input (inside the primitive, and
    while the result is copied into the dense grad_input)."""
    it, blk = cv.itemsize, onednn_channel_block()
    if cv.plain_groups:  # gemm: a plain diff_src and a col2im buffer, then a dense copy
        ds = cv.n * cv.c * cv.s_in * it
        return [ds + gemm_backward_data_scratch_bytes(cv, threads), ds + grad_input]
    if cv.groups == 1 and any(s != 1 for s in cv.stride):  # brgconv_strided, channels-last
        dd, ds = cv.n * cv.o * cv.s_out * it, cv.n * cv.c * cv.s_in * it
        wei = round_up(cv.c, blk) * cv.o * cv.k * it
        scratch = brgemm_strided_backward_data_scratch_bytes(cv, threads)
        # mkldnn_to_dense: a dense tensor with NHWC strides, then .contiguous() (a second copy)
        return [dd + wei + ds + scratch, ds + 2 * grad_input]
    dd, ds = cv.n * _blocked(cv.o) * cv.s_out * it, cv.n * _blocked(cv.c) * cv.s_in * it
    wei = _blocked(cv.groups) * cv.k * it if cv.depthwise else _blocked_weights(cv)
    return [dd + wei + ds, ds + grad_input]


def _backward_weights_primitive(
    cv: Conv, with_bias: bool, bias_bytes: int, threads: int, nested: bool = False
) -> tuple[int, int]:
    """(bytes live at the weight-gradient primitive's peak, the ideep weight-gradient buffer).

    The primitive's peak: grad_output (and the source) reordered to its layouts, the ideep
    weight gradient and bias, and its scratchpad; `with_bias` says whether oneDNN computes the
    bias gradient itself (it books a reducer for it). A deconvolution (`nested`) books the
    convolution's scratchpad as one nested entry: + 128."""
    it = cv.itemsize
    if cv.depthwise:  # jit_dw: blocked over groups, no scratchpad (measured)
        w_grad = _blocked(cv.groups) * cv.k * it
        dd, src = cv.n * _blocked(cv.o) * cv.s_out * it, cv.n * _blocked(cv.c) * cv.s_in * it
        return dd + src + w_grad + bias_bytes, w_grad
    if uses_gemm_backward_weights(cv):  # plain layouts: no reorders, the gradient in OIHW
        w_grad = cv.o * cv.cpg * cv.k * it
        return w_grad + bias_bytes + gemm_backward_weights_scratch_bytes(cv, threads), w_grad
    if avx512_jit_refuses(cv):  # jit:avx2, every tensor blocked by 8
        dd, src = cv.n * round_up(cv.o, 8) * cv.s_out * it, cv.n * round_up(cv.c, 8) * cv.s_in * it
        w_grad = cv.groups * round_up(cv.opg, 8) * round_up(cv.cpg, 8) * cv.k * it
        scratch = avx2_backward_weights_scratch_bytes(cv, with_bias, threads)
        return dd + src + w_grad + bias_bytes + scratch, w_grad
    dd = cv.n * _blocked(cv.o) * cv.s_out * it
    src = 0 if cv.first else cv.n * _blocked(cv.c) * cv.s_in * it
    w_grad = _blocked_weights(cv, first_unpadded=True)
    if cv.k == 1 and not any(cv.padding) and not cv.first:
        scratch = jit_1x1_backward_weights_scratch_bytes(cv, with_bias, threads)
    else:
        scratch = jit_backward_weights_scratch_bytes(cv, with_bias, threads)
    if nested and scratch:
        scratch += SCRATCH_ALIGN
    return dd + src + w_grad + bias_bytes + scratch, w_grad


def convolution_backward_cpu(
    args: Sequence[Any], kwargs: Mapping[str, Any], outputs: Any, threads: int
) -> int:
    """Reorders and scratch of the CPU convolution backward (oneDNN, or the im2col slow path).

    Derivation: mkldnn_convolution_backward makes grad_output, input and weight contiguous
    (copies held to the end if they are not), then runs two primitives.
    Backward data: `jit` reorders grad_output and weights to blocked layouts, computes a blocked
    grad_input and reorders it into the output (dd + w + ds, then ds + gi); `brgconv_strided`
    (any stride > 1, no groups) works in channels-last: dd, ds unpadded, weights blocked over
    input channels, a scratchpad (`brgemm_strided_backward_data_scratch_bytes`), and
    `mkldnn_to_dense` makes an NHWC copy and then a contiguous one (ds + 2 gi); `gemm` (groups
    not in whole blocks) writes a plain ds with a col2im buffer.
    Backward weights: grad_output (and the source, unless a first convolution) reordered to
    blocked layouts, the ideep weight gradient and bias, and the implementation's scratchpad
    (jit, jit_1x1: per-thread weight copies, barriers, bias reducer; gemm: 4x over-booked weight
    copies and im2col), then dense copies of the gradients: gi + dd + src + dw + db + scratch,
    and outputs + dw + db. A transposed convolution's data gradient is a forward convolution of
    grad_output, its weight gradient a backward-weights convolution with grad_output as source.
    Source: aten/src/ATen/native/mkldnn/Conv.cpp (mkldnn_convolution_backward), oneDNN
    cpu_convolution_list.cpp, jit_avx512_common_conv_kernel.cpp, jit_avx512_common_1x1_conv_kernel.cpp,
    gemm_convolution_utils.cpp, jit_brgemm_conv_bwd_utils.cpp, cpu_reducer.cpp, cpu_barrier.hpp,
    memory_tracking.hpp; ConvolutionMM2d.cpp for the slow path.

    Known limitations: fp32 on AVX-512 only (AMX, bf16/fp16 take other implementations).
    `brgconv_strided` may pick an output-channel block above 16 (more padding than counted).
    Channels-last backward uses the NCHW formulas without the src/dst reorders; dilated
    convolutions are sized as undilated ones.
    """
    go, x = _tensor(args, kwargs, 0, "grad_output"), _tensor(args, kwargs, 1, "input")
    w = _tensor(args, kwargs, 2, "weight")
    stride, padding = list(_arg(args, kwargs, 4, "stride")), list(_arg(args, kwargs, 5, "padding"))
    dilation, transposed = list(_arg(args, kwargs, 6, "dilation")), bool(_arg(args, kwargs, 7, "transposed"))
    groups, mask = (
        int(_arg(args, kwargs, 9, "groups")),
        [bool(m) for m in _arg(args, kwargs, 10, "output_mask")],
    )
    outs = sum(_nbytes(t) for t in _outputs(outputs))
    go_2d, x_2d, w_2d = _view_2d(go, x, w)
    stride, padding, dilation = _params_2d(x_2d, stride, padding, dilation)
    it = x.element_size()
    if transposed:  # oneDNN's view: a convolution from grad_output (its source) to the input
        cv = _conv_of(go_2d, w_2d, x_2d, stride, padding, groups, False)  # weight is (C_in, C_out/g, k)
    else:
        cv = _conv_of(x_2d, w_2d, go_2d, stride, padding, groups, False)
    if not conv_uses_mkldnn(x_2d, w_2d, stride, dilation, groups, threads):
        slow = _conv_of(x_2d, w_2d, go_2d, stride, padding, groups, transposed)
        unit = slow.k == 1 and all(s == 1 for s in stride) and all(p == 0 for p in padding)
        return 0 if unit else slow.n * slow.cpg * slow.k * slow.s_out * it  # im2col columns, both grads
    channels_last = suggests_channels_last(x) or suggests_channels_last(w)
    copies = sum(_copy_bytes(t, channels_last) for t in (go, x, w))
    grad_input = _nbytes(x) if mask[0] else 0
    bias = (cv.c if transposed else cv.o) * it if mask[2] else 0
    peaks = [0]
    if channels_last:
        return copies + _channels_last_backward(cv, mask, grad_input, outs, threads)
    if mask[0]:
        if transposed:  # a forward convolution of grad_output: blocked src, weights, dst
            dd, ds = cv.n * _blocked(cv.c) * cv.s_in * it, cv.n * _blocked(cv.o) * cv.s_out * it
            peaks += [dd + _blocked_weights(cv) + ds, ds + grad_input]
        else:
            peaks += _backward_data_peaks(cv, grad_input, threads)
    if mask[1] or mask[2]:
        # transposed: oneDNN's backward weights of the swapped convolution (grad_output as source)
        primitive, w_grad = _backward_weights_primitive(
            cv, mask[2] and not transposed, bias, threads, nested=transposed
        )
        peaks += [grad_input + primitive, outs + w_grad + bias]
    return copies + max(0, max(peaks) - outs)


def _channels_last_backward(cv: Conv, mask: list[bool], grad_input: int, outs: int, threads: int) -> int:
    """Channels-last backward: no src/dst reorders; weights and scratch as the NCHW rule."""
    it = cv.itemsize
    peaks = [0]
    if mask[0]:
        peaks.append(_blocked_weights(cv) + grad_input)
    if mask[1] or mask[2]:
        w_grad = _blocked_weights(cv, first_unpadded=True)
        bias = cv.o * it if mask[2] else 0
        scratch = 0 if cv.depthwise else jit_backward_weights_scratch_bytes(cv, mask[2], threads)
        peaks += [grad_input + w_grad + bias + scratch, outs + w_grad + bias]
    return max(0, max(peaks) - outs)
