"""Hidden workspace of CPU matrix products: operand copies, and oneDNN's bf16 matmul scratchpad.

An fp32 `mm`/`addmm`/`bmm` goes to MKL's sgemm, which reads row- and column-major operands in
place (its own buffers live outside the c10 allocator, invisible to the profiler and to
`nnmem.measure`); only an operand with no unit stride is copied first.

A bf16 `mm`/`addmm` on a CPU with AVX-512 bf16 goes to oneDNN's brgemm matmul
(`brg_matmul:avx512_core_bf16`, aten/src/ATen/native/mkldnn/Matmul.cpp `use_mkldnn_bf16_matmul`
when M*K*N > 16^3), which takes a scratchpad: a copy of B in its VNNI layout, an fp32
accumulator for C, the brgemm batch, and a copy of A when A is transposed. Its sizes follow
oneDNN's brgemm_matmul_utils.cpp (`compute_blocking_heuristic_avx512`, `init_aux_values`,
`init_scratchpad`). Registered in `nnmem.analyses.workspace`'s registry (``"cpu"``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from nnmem.analyses.op_args import tensor_arg as _tensor

_ALIGN = 128  # memory_tracking::default_alignment, reserved on top of every scratchpad entry
_BATCH_ELEMENT = 40  # sizeof(brgemm_batch_element_t)
_BATCH_PER_THREAD = 16  # brgemm_batch_element_per_thr_sz = 16 * brgemm_batch_size (1)
_WEI_N_BLK = 64  # bf16 B is packed in 64-column blocks (LDB)
_WEI_K_BLK = 32  # 16 rows x VNNI pairs: B's K is padded to 32
_ACC = 4  # fp32 accumulator
_BF16 = 2


def _div_up(value: int, divisor: int) -> int:
    return -(-value // divisor)


def _round_up(value: int, multiple: int) -> int:
    return _div_up(value, multiple) * multiple


def _blas_ready(t: torch.Tensor) -> bool:
    """Whether the last two dims are row- or column-major, as cpublas accepts without a copy."""
    if t.dim() < 2:
        return True
    rows, cols = int(t.shape[-2]), int(t.shape[-1])
    s_rows, s_cols = t.stride(-2), t.stride(-1)
    return (
        (s_cols == 1 and s_rows >= max(1, cols)) or (s_rows == 1 and s_cols >= max(1, rows)) or t.numel() <= 1
    )


def matmul_copies(*operands: torch.Tensor) -> int:
    """Bytes of contiguous copies of operands with no unit stride in their last two dims."""
    return sum(m.numel() * m.element_size() for m in operands if not _blas_ready(m))


def _onednn_bf16_matmul(a: torch.Tensor, b: torch.Tensor) -> bool:
    """`use_mkldnn_bf16_matmul` for 2-D operands, on a CPU with bf16 but without AMX tiles
    (AMX takes other blockings, not modelled)."""
    if a.dtype != torch.bfloat16 or b.dtype != torch.bfloat16 or a.dim() != 2 or b.dim() != 2:
        return False
    if int(a.shape[0]) * int(a.shape[1]) * int(b.shape[1]) <= 16 * 16 * 16:
        return False
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and not amx


def _spatial_disbalance(work: int, block: int) -> float:
    mod = work % block
    return (block - mod if work < block else min(block - mod, mod)) / block


def _blocking(m: int, n: int, k: int, copy_a: bool, threads: int) -> tuple[int, int, int, int]:
    """(M_blk, N_blk, N_chunk_size, k_blk) of `compute_blocking_heuristic_avx512` for a bf16
    2-D matmul: the (m_blk, n_chunk) of least imbalance (thread split, M tail, N chunks, K),
    largest m_blk first, skipping splits of fewer than 3 jobs per thread that do not divide."""
    n_blk = min(_WEI_N_BLK, n)
    max_m_blk, min_m_blk = min(256, m), min(32, m)
    n_chunks = _div_up(n, n_blk)
    k_blk = min(k, 1024 if k > 1024 and not copy_a else 512)
    if threads > n_chunks:  # low parallel work: smaller M blocks allowed
        min_m_blk = min(m, 16)
        if m <= 40 and n_chunks != 1:
            n_blk = min(n, 32)
            n_chunks = _div_up(n, n_blk)
    best, best_score = (min_m_blk, 1), 1.0
    found = False
    for n_chunk in range(min(16 if copy_a else 1, n_chunks), 0, -1):
        for m_blk in range(max_m_blk, min_m_blk - 1, -1):
            work = _div_up(m, m_blk) * _div_up(n, n_blk * n_chunk)
            if work < threads * 3 and work % threads:
                continue
            num_n_blk = _div_up(n, n_blk)
            score = (
                _spatial_disbalance(work, threads)
                + (m_blk * _div_up(m, m_blk)) % m / m
                + (_div_up(num_n_blk, n_chunk) * n_chunk - num_n_blk) / num_n_blk
                + _spatial_disbalance(k, k_blk)
            ) / 5
            if score < best_score:
                best, best_score, found = (m_blk, n_chunk), score, True
    if not found:
        best = (min_m_blk, 1)
    return best[0], n_blk, best[1], k_blk


def bf16_matmul_scratch_bytes(m: int, k: int, n: int, a_transposed: bool, threads: int) -> int:
    """Scratchpad of oneDNN's brgemm matmul for a bf16 (M x K) @ (K x N) with a bf16 result.

    Derivation (brgemm_matmul_utils.cpp): blocking from `compute_blocking_heuristic_avx512`
    (`_blocking`); `init_aux_values` and `init_scratchpad` book, per thread and each + 128:
    the brgemm batch (16 elements of 40 bytes), B packed in VNNI blocks
    (2 x round_up(N_blk, 64) x round_up(K_blk, 32) bytes), the fp32 C accumulator
    (4 x N_blk x M_blk) and, for a transposed A, a row-major copy of A's block
    (2 x M_blk x round_up(K_blk, 32)). Measured: 128x128 @ 128x128 on 2 threads,
    1280 + 32768 + 65536 + 3 x 128 = 99 968 bytes.

    Known limitations: the C accumulator is counted for a bf16 result as measured (oneDNN's
    newest sources book it only when K is split); AMX CPUs take another heuristic.
    """
    m_blk, n_blk, n_chunk, k_blk = _blocking(m, n, k, a_transposed, threads)
    k_rows = _round_up(_round_up(k_blk, 2), _WEI_K_BLK)
    scratch = threads * _BATCH_PER_THREAD * _BATCH_ELEMENT + _ALIGN
    if a_transposed:
        lda = _round_up(k_blk, 32)
        lda += 32 if lda >= 512 and lda & (lda - 1) == 0 else 0
        scratch += threads * _BF16 * m_blk * lda + _ALIGN
    scratch += threads * _BF16 * _round_up(n_blk, _WEI_N_BLK) * k_rows + _ALIGN
    chunk = _ACC * n_blk * m_blk
    per_thread = chunk if k_blk >= k else chunk * n_chunk
    return scratch + threads * per_thread + _ALIGN


def _matmul_cpu(a: torch.Tensor, b: torch.Tensor, threads: int) -> int:
    copies = matmul_copies(a, b)
    if not _onednn_bf16_matmul(a, b):
        return copies
    transposed = a.stride(-1) != 1 and int(a.shape[-1]) > 1
    return copies + bf16_matmul_scratch_bytes(
        int(a.shape[0]), int(a.shape[1]), int(b.shape[1]), transposed, threads
    )


def mm_cpu(args: Sequence[Any], kwargs: Mapping[str, Any], outputs: Any, threads: int) -> int:
    """Contiguous copies of operands BLAS cannot read in place; oneDNN's scratchpad for bf16.

    Derivation: row- and column-major fp32 operands go straight to MKL sgemm (measured 0 bytes,
    transposed operands included); an operand with no unit stride in its last two dims is
    copied to contiguous first. bf16 operands go to oneDNN (`bf16_matmul_scratch_bytes`).
    Source: aten/src/ATen/native/LinearAlgebra.cpp (addmm_impl_cpu_), mkldnn/Matmul.cpp.

    Known limitations: fp32 and bf16 measured; MKL's own internal buffers (outside the c10
    allocator) are invisible to the profiler and not counted; fp16 not measured.
    """
    return _matmul_cpu(_tensor(args, kwargs, 0, "self"), _tensor(args, kwargs, 1, "mat2"), threads)


def addmm_cpu(args: Sequence[Any], kwargs: Mapping[str, Any], outputs: Any, threads: int) -> int:
    """As aten.mm on (mat1, mat2): copies of non-BLAS operands, oneDNN's scratchpad for bf16.

    Derivation: see aten.mm.default (the bias is copied into the output first, then the
    product accumulates onto it). Source: aten/src/ATen/native/LinearAlgebra.cpp.

    Known limitations: as aten.mm.default.
    """
    return _matmul_cpu(_tensor(args, kwargs, 1, "mat1"), _tensor(args, kwargs, 2, "mat2"), threads)


def bmm_cpu(args: Sequence[Any], kwargs: Mapping[str, Any], outputs: Any, threads: int) -> int:
    """As aten.mm, per batch: contiguous copies of operands with no unit stride in the matrices.

    Derivation: see aten.mm.default; any batch stride is accepted (measured).
    Source: aten/src/ATen/native/LinearAlgebra.cpp (bmm_out_or_baddbmm_).

    Known limitations: fp32 measured; oneDNN's scratchpad for a bf16 bmm is not counted.
    """
    return matmul_copies(_tensor(args, kwargs, 0, "self"), _tensor(args, kwargs, 1, "mat2"))
