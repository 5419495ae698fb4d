"""Scratch memory of the CUDA attention kernels that `nnmem.trace.cuda` routes attention to.

Registered in `nnmem.analyses.workspace`'s registry for the ``"cuda"`` backend; the ops only
appear in traces for ``device="cuda"``. Not measured on a GPU yet (bench/gpu_check.py does);
derived from the kernels' sources named in each rule.
"""

from __future__ import annotations

from typing import Any

from nnmem.analyses.workspace import Args, Kwargs, register_workspace


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


@register_workspace("aten._scaled_dot_product_flash_attention.default", "cuda")
def _flash_forward(args: Args, kwargs: Kwargs, outputs: Any, threads: int) -> int:
    """Flash attention forward: no scratch beyond its outputs (out, logsumexp, RNG state).

    Known limitations: the split-KV path (taken without dropout when batch x heads x query
    blocks is small next to the SM count) adds float32 partial outputs of a few times the
    output; it is not counted. Source: flash-attention's flash_api.cpp (mha_fwd).
    """
    return 0


@register_workspace("aten._scaled_dot_product_flash_attention_backward.default", "cuda")
def _flash_backward(args: Args, kwargs: Kwargs, outputs: Any, threads: int) -> int:
    """Flash attention backward: softmax_d, the float32 dq accumulator, expanded dk/dv for GQA.

    Derivation: mha_bwd allocates softmax_d[B, H, Lq_128] and dq_accum[B, Lq_128, H, D_r] in
    float32 (Lq_128: Lq rounded up to 128; D_r: the head dim rounded up to 32, or to 64 above
    128), and, when K/V have fewer heads than Q, dk/dv at Q's head count before summing them.
    Source: aten/src/ATen/native/transformers/cuda/flash_attn/flash_api.cpp (mha_bwd).
    """
    q, k = args[1], args[2]
    batch, heads, q_len, head = (int(n) for n in q.shape)
    kv_heads, kv_len = int(k.shape[1]), int(k.shape[2])
    q_rounded = _round_up(q_len, 128)
    head_rounded = _round_up(head, 32 if head <= 128 else 64)
    softmax_d = batch * heads * q_rounded * 4
    dq_accum = batch * q_rounded * heads * head_rounded * 4
    expanded = 2 * batch * kv_len * heads * head * q.element_size() if kv_heads != heads else 0
    return softmax_d + dq_accum + expanded


@register_workspace("aten._scaled_dot_product_efficient_attention.default", "cuda")
def _efficient_forward(args: Args, kwargs: Kwargs, outputs: Any, threads: int) -> int:
    """Memory-efficient attention forward: no scratch beyond its outputs (head dims <= 128).

    Source: aten/src/ATen/native/transformers/cuda/attention.cu (_efficient_attention_forward):
    the float32 output accumulator is used only when the head dim exceeds the kernel's tile.
    """
    return 0


@register_workspace("aten._scaled_dot_product_efficient_attention_backward.default", "cuda")
def _efficient_backward(args: Args, kwargs: Kwargs, outputs: Any, threads: int) -> int:
    """Memory-efficient attention backward: delta, and float32 gradient accumulators for half types.

    Derivation: _efficient_attention_backward allocates delta[B, H, M] in float32 and a
    workspace of B x H x (gq + gk + gv) floats: gq = M_64 x D_64 when the output type is not
    float32, gk = gv = N_64 x D_64 as well when the head dim is over 64 (the gradient does not
    fit the registers); M_64, N_64, D_64 rounded up to 64. float32 inputs need no accumulator.
    Source: aten/src/ATen/native/transformers/cuda/attention_backward.cu,
    mem_eff_attention/kernel_backward.h (workspace_size).

    Known limitations: the kernel's tile sizes (64 here) vary with the GPU and dtype; the
    split-key path (more accumulators) is not modelled.
    """
    q, k = args[1], args[2]
    batch, heads, q_len, head = (int(n) for n in q.shape)
    kv_len = int(k.shape[2])
    delta = batch * heads * q_len * 4
    if q.element_size() >= 4:
        return delta
    gq = _round_up(q_len, 64) * _round_up(head, 64)
    gkv = 2 * _round_up(kv_len, 64) * _round_up(head, 64) if head > 64 else 0
    return delta + batch * heads * (gq + gkv) * 4
