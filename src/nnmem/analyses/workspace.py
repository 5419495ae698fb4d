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

from nnmem.analyses.onednn_conv import onednn_channel_block as onednn_channel_block
from nnmem.analyses.op_args import arg as _arg
from nnmem.analyses.op_args import nbytes as _nbytes
from nnmem.analyses.op_args import output_tensors as _outputs
from nnmem.analyses.op_args import tensor_arg as _tensor
from nnmem.analyses.workspace_attention import (
    encoder_layer_cpu,
    flash_attention_backward_cpu,
    flash_attention_cpu,
    native_mha_cpu,
    safe_softmax_cpu,
)
from nnmem.analyses.workspace_conv import convolution_backward_cpu, convolution_cpu, suggests_channels_last
from nnmem.analyses.workspace_matmul import addmm_cpu, bmm_cpu, mm_cpu
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
        "aten.mul.Scalar", "aten.div.Scalar", "aten.div_.Scalar", "aten.neg.default",
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


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


# ----------------------------------------------------------------------------- convolution

# oneDNN's convolution implementations, their layouts and scratchpads: see workspace_conv.
register_workspace("aten.convolution.default", "cpu")(convolution_cpu)
register_workspace("aten.convolution_backward.default", "cpu")(convolution_backward_cpu)


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
    if not (x.is_contiguous() or suggests_channels_last(x)):
        return 0 if train else 3 * channel
    last = x.dim() == 2 or suggests_channels_last(x)
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
        suggests_channels_last(x) and suggests_channels_last(go)
    )
    if not contiguous:
        return channel
    last = x.dim() == 2 or suggests_channels_last(x)
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

# Flash attention tiles, the fused MHA and encoder layer: see workspace_attention.
register_workspace("aten._scaled_dot_product_flash_attention_for_cpu.default", "cpu")(flash_attention_cpu)
register_workspace("aten._scaled_dot_product_flash_attention_for_cpu_backward.default", "cpu")(
    flash_attention_backward_cpu
)
register_workspace("aten._safe_softmax.default", "cpu")(safe_softmax_cpu)
register_workspace("aten._native_multi_head_attention.default", "cpu")(native_mha_cpu)
register_workspace("aten._transformer_encoder_layer_fwd.default", "cpu")(encoder_layer_cpu)


# ----------------------------------------------------------------------------- recurrent (oneDNN LSTM)

# Derived from PyTorch's mkldnn/RNN.cpp, ideep and oneDNN's RNN sizing: see workspace_rnn.
register_workspace("aten.mkldnn_rnn_layer.default", "cpu")(mkldnn_rnn_layer_cpu)
register_workspace("aten.mkldnn_rnn_layer_backward.default", "cpu")(mkldnn_rnn_layer_backward_cpu)


# ----------------------------------------------------------------------------- matmul, embedding, dropout


# oneDNN's bf16 matmul scratchpad and operand copies: see workspace_matmul.
register_workspace("aten.mm.default", "cpu")(mm_cpu)
register_workspace("aten.addmm.default", "cpu")(addmm_cpu)
register_workspace("aten.bmm.default", "cpu")(bmm_cpu)


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


def _binary_cpu(args: Args, kwargs: Kwargs, outputs: Any, threads: int) -> int:
    """Common-dtype copies of mixed-dtype operands of a CPU add/sub/mul/div.

    Derivation: binary ops build their TensorIterator with promote_inputs_to_common_dtype and
    cast_common_dtype_to_outputs. On CPU, compute_types replaces an input of another dtype by
    ``input.to(common_dtype)`` (its own shape, before broadcasting), and an output of another
    dtype (in place on the lower type, ``bf16.add_(fp32)``) by a common-dtype temporary copied
    back at the end. Same-dtype operands allocate nothing (measured). Autocast's fp32 residual
    adds of bf16 activations are the common case: one fp32 copy of the bf16 operand.
    Source: aten/src/ATen/TensorIterator.cpp (TensorIteratorBase::compute_types).

    Known limitations: 0-dim operands (wrapped scalars, at most 8 bytes) are counted as nothing;
    a Python-number operand is taken as matching (an integer tensor times a float scalar makes a
    float copy of the tensor, not counted).
    """
    this, other = _arg(args, kwargs, 0, "self"), _arg(args, kwargs, 1, "other")
    if not isinstance(this, torch.Tensor) or not isinstance(other, torch.Tensor) or this.dtype == other.dtype:
        return 0  # the common case, decided without touching torch
    common = torch.result_type(this, other)
    size = common.itemsize
    copies = sum(
        t.numel() * size
        for t in (this, other)
        if isinstance(t, torch.Tensor) and t.dim() > 0 and t.dtype != common
    )
    in_place = bool(_outputs(outputs)) and _outputs(outputs)[0] is this
    return copies + (this.numel() * size if in_place and this.dtype != common else 0)


for _name in ("add", "sub", "mul", "div"):
    for _overload in (f"aten.{_name}.Tensor", f"aten.{_name}_.Tensor"):
        register_workspace(_overload, "cpu")(_binary_cpu)


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
