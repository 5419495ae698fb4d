"""Hidden workspace of CPU attention: flash attention's tiles, the fused MHA and encoder layer.

PyTorch's CPU scaled_dot_product_attention runs `cpu_flash_attention` (per-thread tiles in the
accumulation type, and reduced-type copies for bf16/fp16); `nn.MultiheadAttention` and
`nn.TransformerEncoderLayer` in eval take fused fast paths whose intermediates never reach the
dispatcher. Sources are named in each rule. Registered in `nnmem.analyses.workspace`'s
registry (``"cpu"``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from nnmem.analyses.op_args import arg as _arg
from nnmem.analyses.op_args import nbytes as _nbytes
from nnmem.analyses.op_args import output_bytes as _out_bytes
from nnmem.analyses.op_args import tensor_arg as _tensor


def _is_reduced(t: torch.Tensor) -> bool:
    return t.dtype in (torch.bfloat16, torch.float16)


def _opmath_size(t: torch.Tensor) -> int:
    """Bytes of at::opmath_type: float for fp32 and the reduced types, double for double."""
    return 8 if t.dtype == torch.float64 else 4


def _flash_split_sizes(q_len: int, kv_len: int) -> tuple[int, int]:
    q_split = 256 if q_len >= 768 else 64 if q_len >= 192 else 32
    return min(q_split, q_len), min(512, kv_len)


def flash_attention_cpu(args: Sequence[Any], kwargs: Mapping[str, Any], outputs: Any, threads: int) -> int:
    """Per-thread tiles of the CPU flash attention forward.

    Derivation: cpu_flash_attention allocates buf[num_threads, qS*kvS + 2*qS + qS*Ev] in the
    accumulation type, with qS = 32/64/256 for q_len < 192/< 768/>= 768 and kvS = min(512, kv_len).
    Source: aten/src/ATen/native/cpu/FlashAttentionKernel.cpp, transformers/attention.cpp.

    For bf16/fp16 it also allocates buf_reduced[num_threads, qS, kvS] in the input type (the
    softmax tile converted for the second GEMM).

    Known limitations: fp32 and bf16 measured; fp16 on CPUs where oneDNN packs K and V adds
    packed copies that are not counted; an attention mask is not measured.
    """
    q, v = _tensor(args, kwargs, 0, "query"), _tensor(args, kwargs, 2, "value")
    q_split, kv_split = _flash_split_sizes(int(q.shape[-2]), int(v.shape[-2]))
    per_thread = q_split * kv_split + 2 * q_split + q_split * int(v.shape[-1])
    reduced = threads * q_split * kv_split * q.element_size() if _is_reduced(q) else 0
    return threads * per_thread * _opmath_size(q) + reduced


def flash_attention_backward_cpu(
    args: Sequence[Any], kwargs: Mapping[str, Any], outputs: Any, threads: int
) -> int:
    """Per-thread tiles of the CPU flash attention backward, and a copy of grad_out.

    Derivation: cpu_flash_attention_backward allocates buf[num_threads, 2 * qS * kvS] (attn and
    grad_attn tiles) and a qS-sized row buffer; grad_out is made contiguous in the kernel's
    (B, L, H, E) layout, a copy unless it already is.
    Source: aten/src/ATen/native/cpu/FlashAttentionKernel.cpp.

    For bf16/fp16 it also allocates buf_reduced[num_threads, 2 * qS * kvS] in the input type.

    Known limitations: fp32 and bf16 measured. In bf16/fp16 each of the kernel's small GEMMs
    (cpublas::gemm, oneDNN brgemm matmul) takes a scratchpad of its own (22 272 bytes measured
    for qS 32, kvS 64, head 32), not counted: about a quarter of the transient.
    """
    go, q = _tensor(args, kwargs, 0, "grad_out"), _tensor(args, kwargs, 1, "query")
    k = _tensor(args, kwargs, 2, "key")
    q_split, kv_split = _flash_split_sizes(int(q.shape[-2]), int(k.shape[-2]))
    grad_out_copy = 0 if go.transpose(1, 2).is_contiguous() else _nbytes(go)
    acc = _opmath_size(q)
    reduced = threads * 2 * q_split * kv_split * q.element_size() if _is_reduced(q) else 0
    return threads * 2 * q_split * kv_split * acc + q_split * acc + reduced + grad_out_copy


def safe_softmax_cpu(args: Sequence[Any], kwargs: Mapping[str, Any], outputs: Any, threads: int) -> int:
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


def native_mha_cpu(args: Sequence[Any], kwargs: Mapping[str, Any], outputs: Any, threads: int) -> int:
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


def encoder_layer_cpu(args: Sequence[Any], kwargs: Mapping[str, Any], outputs: Any, threads: int) -> int:
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
