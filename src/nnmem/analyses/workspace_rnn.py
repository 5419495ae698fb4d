"""Hidden workspace of the oneDNN LSTM layer: ``aten.mkldnn_rnn_layer`` and its backward.

PyTorch runs a CPU ``nn.LSTM`` as one oneDNN primitive per layer and direction
(aten/src/ATen/native/mkldnn/RNN.cpp). Inside each call the kernel sums the two biases,
ideep reorders the weights to the layout the primitive asks for, and oneDNN gets a
scratchpad; the backward also zero-fills diff weights in oneDNN's layout. None of this is an
output. The sizes below follow the sources named in each function; with them the rules equal
the measured transients byte for byte (PyTorch 2.13, oneDNN 3.12, AVX-512, fp32).

Which oneDNN implementation runs decides the layouts and the scratchpad:

* grad mode on (``at::GradMode::is_enabled()``, not the op's ``train`` argument): the ``ref``
  forward_training primitive; weights in ``ldigo`` with a padded leading dimension; a
  workspace (an output, saved for backward) and a scratchpad.
* grad mode off: the ``brgemm`` forward_inference primitive; weights in ``ldgOi32o``
  (hidden size blocked by 32 on AVX-512); the layer states live in the scratchpad.
* backward: the ``ref`` backward primitive; weights in ``ldgoi`` with a padded leading
  dimension, diff weights in padded ``ldigo``.

Registered in `nnmem.analyses.workspace`'s registry (``"cpu"``); the fake kernel's empty
workspace is made up by `nnmem.analyses.workspace.fake_output_shortfall_bytes`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from nnmem.analyses.op_args import arg as _arg

_PAGE = 4096  # rnn_utils::set_offsets starts every buffer at a page
_ALIGN = 128  # memory_tracking::default_alignment: each scratchpad entry reserves it on top
_BATCH_ELEMENT = 40  # sizeof(brgemm_batch_element_t): two pointers, two paddings, one flag
_FLOAT = 4  # oneDNN runs the PyTorch LSTM in fp32; its diff buffers are fp32 for any input


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def good_ld(dim: int) -> int:
    """oneDNN rnn_utils::get_good_ld for fp32: 64-byte aligned, not a multiple of 256 elements."""
    ld = _round_up(dim, 16)
    return ld + 16 if ld % 256 == 0 else ld


def lstm_layer_dims(
    args: Sequence[Any], kwargs: Mapping[str, Any], hidden_index: int
) -> tuple[int, int, int, int]:
    """(T, N, I, H) of one layer call; its input is always (T, N, I) (mkldnn_rnn transposes first)."""
    x, hidden = _arg(args, kwargs, 0, "input"), int(_arg(args, kwargs, hidden_index, "hidden_size"))
    return int(x.shape[0]), int(x.shape[1]), int(x.shape[2]), hidden


def _page_chain(sizes: Sequence[int], start: int = 0) -> int:
    """Offset after registering each buffer at the next page boundary (rnn_utils::set_offsets)."""
    offset = start
    for size in sizes:
        offset = _round_up(offset, _PAGE) + size
    return offset


def _state_buffers(t: int, n: int, i: int, h: int, training: bool) -> list[int]:
    """Bytes of the ws_* buffers in set_offsets order (rnn_utils.hpp, set_workspace_sizes).

    One layer and one direction, so ``(n_layer + 1) * n_dir = 2`` state rows. The last entry
    is the empty ws_grid_comp (GRU-LBR only), which still rounds the offset up to a page.
    """
    states_ld = good_ld(max(i, h))  # ws_states_layer_ld and ws_diff_states_*_ld
    rows = 2 * (t + 1) * n
    return [
        t * n * good_ld(4 * h) * _FLOAT if training else 0,  # ws_gates
        t * n * good_ld(h) * _FLOAT if training else 0,  # ws_ht
        rows * states_ld * _FLOAT,  # ws_states_layer (ws_states_iter is the same buffer)
        rows * h * _FLOAT,  # ws_states_iter_c
        rows * states_ld * _FLOAT if training else 0,  # ws_diff_states_layer
        rows * states_ld * _FLOAT if training else 0,  # ws_diff_states_iter
        rows * h * _FLOAT if training else 0,  # ws_diff_states_iter_c
        0,  # ws_grid_comp
    ]


def mkldnn_rnn_workspace_bytes(seq_len: int, batch: int, input_size: int, hidden_size: int) -> int:
    """Size of the uint8 workspace one LSTM layer (one direction) returns with grad mode on.

    The workspace is saved for backward; the fake-tensor kernel returns it empty, so the
    tracer must add these bytes (see `fake_output_shortfall_bytes`). It is the ws_* buffers
    of `_state_buffers`, each at a page boundary.
    Source: oneDNN src/cpu/rnn/rnn_utils.hpp (set_workspace_sizes), rnn_utils.cpp (set_offsets).
    """
    return _page_chain(_state_buffers(seq_len, batch, input_size, hidden_size, True))


def _scratchpad_bytes(t: int, n: int, i: int, h: int, training: bool, merged: bool, batch_bytes: int) -> int:
    """The scratchpad oneDNN asks ideep for (user scratchpad mode): the rnn space and small entries.

    rnn space (rnn_utils.cpp set_offsets): without a workspace (inference) the ws_* buffers come
    first; then scratch_gates (all T steps when the layer or iteration GEMM is merged across
    time, else one), scratch_ht, scratch_diff_ht (training) and the empty scratch_cell, each
    at a page boundary. Entries (ref_rnn.cpp init_scratchpad, memory_tracking.hpp
    registry_t::book: size + max(alignment, 128)): the rnn space aligned to a page, three
    weight-pointer arrays and one bias-pointer array (8 bytes per pointer, 4 bias pointers),
    and for brgemm the batch of brgemm_batch_element_t.
    """
    start = 0 if training else _page_chain(_state_buffers(t, n, i, h, False))
    scratch = [
        (t if merged else 1) * n * good_ld(4 * h) * _FLOAT,  # scratch_gates
        n * good_ld(h) * _FLOAT,  # scratch_ht
        n * good_ld(h) * _FLOAT if training else 0,  # scratch_diff_ht
        0,  # scratch_cell (GRU only)
    ]
    space = _page_chain(scratch, start)
    entries = [space + _PAGE, *(8 + _ALIGN for _ in range(3)), 4 * 8 + _ALIGN]
    if batch_bytes:
        entries.append(batch_bytes + _ALIGN)
    return sum(entries)


# Weights are (i, g, o) = (input, 4 gates, hidden) in oneDNN's terms. A PyTorch weight
# (4H, I), contiguous, is ldgoi with leading dimension I. Strides below are for (i, g, o).


def _layout_bytes(dims: tuple[int, int, int], strides: tuple[int, int, int]) -> int:
    """memory_desc_wrapper::size of a strided layout: a dimension of size 1 has stride 1."""
    return max([d * s for d, s in zip(dims, strides, strict=True) if d > 1], default=1) * _FLOAT


def _reorder_bytes(i: int, h: int, expected: tuple[int, int, int]) -> int:
    """The copy ideep's reorder_if_differ_in makes when the layout differs from PyTorch's.

    Descriptors compare equal when strides agree on every dimension larger than 1 (e.g. an
    input size of 1 needs no forward reorder).
    """
    dims, user = (i, 4, h), (1, h * i, i)
    same = all(a == b for d, a, b in zip(dims, user, expected, strict=True) if d > 1)
    return 0 if same else _layout_bytes(dims, expected)


def _ldigo(h: int) -> tuple[int, int, int]:
    return good_ld(4 * h), h, 1  # set_good_strides(ldigo): the gates x hidden row padded


def _ldgoi(i: int, h: int) -> tuple[int, int, int]:
    return 1, h * good_ld(i), good_ld(i)  # set_good_strides(ldgoi): the input row padded


def _brgemm_n_block(batch: int) -> int:
    """rnn_brgemm_utils.cpp brgemm_calc_n_block for fp32 LSTM: 2 SIMD widths (4 on AVX2 if N=1)."""
    if torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return 32
    return 32 if batch == 1 else 16


def _copies(*tensors: Any) -> int:
    """Bytes of ``.contiguous()`` copies of the non-contiguous ones."""
    return sum(
        t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor) and not t.is_contiguous()
    )


def mkldnn_rnn_layer_cpu(args: Sequence[Any], kwargs: Mapping[str, Any], outputs: Any, threads: int) -> int:
    """Bias sum, weight reorders and oneDNN scratchpad of one LSTM layer forward.

    Derivation (mkldnn_rnn_layer in aten/src/ATen/native/mkldnn/RNN.cpp, ideep lstm.hpp):
    _shuffle_bias adds b_ih + b_hh (4H floats; zeros(4H) without biases), _shuffle_weight
    copies non-contiguous weights, then
    - grad mode on: lstm_forward_training reorders both weights to ldigo with the 4H row
      padded to ld(4H) (I·ld(4H) and H·ld(4H) floats), and allocates the scratchpad with
      scratch_gates for all T steps when N < 128 (init_conf: merge_gemm_layer);
    - grad mode off: lstm_forward_inference takes the brgemm primitive, reorders both weights
      to ldgOi32o ((I + H)·4·⌈H⌉₃₂ floats), and its scratchpad also holds the layer states;
      scratch_gates holds one step unless N = 1 and T ≥ 2 (configure_brgemm merges the layer
      GEMM), and the brgemm batch is 2 (4 when I = H and not merged) elements per thread.
    The sum is alive at the scratchpad, after the outputs (and the workspace) exist.
    Source: oneDNN src/cpu/rnn/rnn_utils.{hpp,cpp}, ref_rnn.cpp, x64/rnn/rnn_brgemm_utils.cpp.

    Known limitations: fp32, AVX-512 measured; AVX2 blocking assumed; CPUs without AVX2
    take the ref inference primitive (packed GEMM weights), not modeled. bf16/fp16 LSTMs
    not measured.
    """
    t, n, i, h = lstm_layer_dims(args, kwargs, 10)
    bias = 4 * h * _FLOAT
    copies = _copies(_arg(args, kwargs, 1, "w0"), _arg(args, kwargs, 2, "w1"))
    if torch.is_grad_enabled():
        weights = _reorder_bytes(i, h, _ldigo(h)) + _reorder_bytes(h, h, _ldigo(h))
        return bias + copies + weights + _scratchpad_bytes(t, n, i, h, True, n < 128, 0)
    weights = (i + h) * 4 * _round_up(h, _brgemm_n_block(n)) * _FLOAT
    merged = n == 1 and t >= 2
    k_blocks = 2 * (2 if i == h and not merged else 1)  # max(KB1, KB2) + 1, doubled when fused
    batch = k_blocks * threads * _BATCH_ELEMENT
    return bias + copies + weights + _scratchpad_bytes(t, n, i, h, False, merged, batch)


def _same_storage(a: Any, b: Any) -> bool:
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
        return False
    return bool(a.untyped_storage()._cdata == b.untyped_storage()._cdata)


def mkldnn_rnn_layer_backward_cpu(
    args: Sequence[Any], kwargs: Mapping[str, Any], outputs: Any, threads: int
) -> int:
    """Staged grads, bias sum, weight reorders, diff buffers and scratchpad of one LSTM layer backward.

    Derivation (mkldnn_rnn_layer_backward in aten/src/ATen/native/mkldnn/RNN.cpp, then
    ideep lstm_backward::compute), in allocation order:
    - a missing grad_output / grad_hy / grad_cy becomes zeros (T·N·H, N·H, N·H floats), a
      non-contiguous one a contiguous copy; cx is cloned when it shares hx's storage;
    - the bias sum (4H floats), as in the forward;
    - the outputs diff_x, diff_hx, diff_cx, diff_w1, diff_w2, diff_b;
    - weights reordered to ldgoi with the input row padded to ld(I): 4H·ld(I) floats, none
      when ld(I) = I (I a multiple of 16, not of 256); the same for weight_hh with ld(H);
    - diff weights zero-filled in ldigo with the 4H row padded: I·ld(4H) and H·ld(4H) floats
      (4H when the size is 1), and a diff bias (4H floats);
    - the scratchpad (backward merges the layer GEMM: scratch_gates for all T steps);
    after the primitive they are freed, and diff_b2 = clone(diff_b) (4H floats, an output
    made after the peak, so it is taken off).
    Source: oneDNN src/cpu/rnn/rnn_utils.{hpp,cpp}, ref_rnn.cpp; ideep include/ideep/operators/lstm.hpp.

    Known limitations: fp32 only (other dtypes also convert the grads to fp32, not counted).
    """
    t, n, i, h = lstm_layer_dims(args, kwargs, 15)
    grads = [
        _arg(args, kwargs, k, name) for k, name in ((10, "grad_output"), (11, "grad_hy"), (12, "grad_cy"))
    ]
    if all(g is None for g in grads):
        return 0  # the kernel returns undefined tensors at once
    like = (t * n * h, n * h, n * h)
    staged = sum(size * _FLOAT if g is None else _copies(g) for g, size in zip(grads, like, strict=True))
    hx, cx = _arg(args, kwargs, 5, "hx_"), _arg(args, kwargs, 6, "cx_tmp")
    cx_clone = n * h * _FLOAT if _same_storage(hx, cx) else 0
    copies = _copies(_arg(args, kwargs, 1, "weight0"), _arg(args, kwargs, 2, "weight1"))
    bias = 4 * h * _FLOAT
    weights = _reorder_bytes(i, h, _ldgoi(i, h)) + _reorder_bytes(h, h, _ldgoi(h, h))
    diff_weights = _layout_bytes((i, 4, h), _ldigo(h)) + _layout_bytes((h, 4, h), _ldigo(h))
    diff_bias = 4 * h * _FLOAT
    scratchpad = _scratchpad_bytes(t, n, i, h, True, True, 0)
    second_bias_grad = 4 * h * _FLOAT
    return (
        staged + cx_clone + copies + bias + weights + diff_weights + diff_bias + scratchpad - second_bias_grad
    )
