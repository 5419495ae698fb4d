"""oneDNN's CPU convolution implementations: which one runs for a shape, and what it books.

For fp32 on AVX-512, oneDNN 3.12 tries its implementations in cpu_convolution_list.cpp order and
takes the first whose `init_conf` accepts the problem; each then books a scratchpad with
`memory_tracking::registry_t::book`, every entry reserving its size plus its alignment (128
bytes, or a page for page-aligned entries). This module holds that choice and those sizes, as
functions of a `Conv`; `nnmem.analyses.workspace_conv` turns them into PyTorch's per-op
transients. Each function names the oneDNN source it follows.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

SCRATCH_ALIGN = 128  # memory_tracking::default_alignment: each scratchpad entry reserves it on top
_PAGE = 4096  # P4K: page-aligned scratchpad entries reserve a page on top
_BARRIER = 4096  # sizeof(simple_barrier::ctx_t): STRUCT_ALIGN(4096) on Linux (cpu_barrier.hpp)
_BATCH_ELEMENT = 40  # sizeof(brgemm_batch_element_t)
FLOAT_BYTES = 4  # oneDNN's fp32 scratch (accumulators, reductions) for fp32 convolutions
_MIN_OH_REDUCE = 9  # jit_avx512_common_conv_bwd_weights_kernel_f32::min_oh_reduce
_MAX_JIT_KW = 14  # the jit backward-weights kernel refuses wider kernels ("kw > 14")
_SIMD_W = 16  # fp32 lanes of an AVX-512 register (oneDNN's simd_w)
_MAX_UR_W = 28  # jit_avx512_common_conv_bwd_weights_kernel_f32::max_ur_w: padding bound


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _div_up(value: int, divisor: int) -> int:
    return -(-value // divisor)


def onednn_channel_block() -> int:
    """Channels per oneDNN blocked-layout block for fp32: 16 with AVX-512, else 8."""
    return 16 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 8


class Conv(NamedTuple):
    """A convolution as oneDNN sees it: the source is `x`, the destination `y` (for a transposed
    convolution the roles swap: its data gradient is a forward convolution of grad_output)."""

    n: int
    c: int  # source channels
    o: int  # destination channels
    groups: int
    kernel: tuple[int, ...]
    src: tuple[int, ...]  # source spatial dims
    dst: tuple[int, ...]  # destination spatial dims
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    itemsize: int

    @property
    def k(self) -> int:
        return math.prod(self.kernel)

    @property
    def s_in(self) -> int:
        return math.prod(self.src)

    @property
    def s_out(self) -> int:
        return math.prod(self.dst)

    @property
    def cpg(self) -> int:
        return self.c // self.groups

    @property
    def opg(self) -> int:
        return self.o // self.groups

    @property
    def depthwise(self) -> bool:
        return self.groups > 1 and self.cpg == 1 and self.opg == 1

    @property
    def plain_groups(self) -> bool:
        """Groups whose channels are not whole blocks: oneDNN's gemm convolution takes them."""
        blk = onednn_channel_block()
        return self.groups > 1 and not self.depthwise and bool(self.cpg % blk or self.opg % blk)

    @property
    def first(self) -> bool:
        """oneDNN's "first convolution" (`is_1stconv`): fewer than a block of input channels."""
        return self.groups == 1 and self.c < onednn_channel_block()


def uses_gemm_backward_weights(cv: Conv) -> bool:
    """Whether oneDNN's jit backward-weights kernels refuse `cv` and gemm_convolution takes it."""
    if cv.depthwise:
        return False
    return cv.plain_groups or (cv.kernel[-1] > _MAX_JIT_KW and not _hw_transposed(cv))


def _hw_transposed(cv: Conv) -> bool:
    """The jit kernel's `is_hw_transp` special case: a 14..19-wide kernel as wide as the input."""
    return (
        len(cv.kernel) == 2 and _MAX_JIT_KW <= cv.kernel[-1] < 20 and cv.dst[-1] == 1
        and cv.kernel[-1] == cv.src[-1] and all(s == 1 for s in cv.stride) and not any(cv.padding)
    )  # fmt: skip


def _end_padding(size_in: int, size_out: int, k: int, stride: int, pad: int) -> int:
    """oneDNN's `calculate_end_padding`, at least 0."""
    return max(0, (size_out - 1) * stride + k - (size_in + pad))


def avx512_jit_refuses(cv: Conv) -> bool:
    """Whether jit_avx512_common_conv_bwd_weights_kernel_f32::init_conf refuses `cv` (then the
    AVX2 kernel takes it): a first convolution needs 1-3 input channels, and the padding must
    stay under the kernel (left/right) or within half of it (top/bottom)."""
    if cv.first and cv.c > 3:
        return True
    axes = ("d", "h", "w")[-len(cv.src) :]
    for axis, size_in, size_out, k, s, pad in zip(
        axes, cv.src, cv.dst, cv.kernel, cv.stride, cv.padding, strict=True
    ):
        end = _end_padding(size_in, size_out, k, s, pad)
        if axis == "h" and max(pad, end) > k // 2:
            return True
        if axis != "h" and (max(pad, end) >= k or (axis == "w" and max(pad, end) > _MAX_UR_W)):
            return True
    return False


def avx2_backward_weights_scratch_bytes(cv: Conv, with_bias: bool, threads: int) -> int:
    """Scratchpad of oneDNN's jit AVX2 backward-weights convolution (block 8).

    Derivation (jit_avx2_convolution.hpp `init_balancers`, jit_avx2_conv_kernel_f32.cpp
    `init_scratchpad`): a `cpu_reducer_t` of the weight gradient over the batch (jobs of
    kernel x 8 x 8 floats, one per (group, ic block, oc block)), one of the bias, both with a
    2 MiB buffer bound, and a padded bias when O is not a whole block of 8.
    """
    nb_ic, nb_oc = _div_up(cv.cpg, 8), _div_up(cv.opg, 8)
    depth = (1, *cv.dst)[-3] if len(cv.dst) == 3 else 1
    scratch = reducer_scratch_bytes(threads, cv.k * 8 * 8, cv.groups * nb_ic * nb_oc, cv.n * depth, 1 << 21)
    if with_bias:
        scratch += reducer_scratch_bytes(threads, 8, cv.groups * nb_oc, cv.n, 1 << 21)
        if cv.opg % 8:
            scratch += cv.groups * nb_oc * 8 * FLOAT_BYTES + SCRATCH_ALIGN
    return scratch


def best_divider(value: int, min_divider: int, max_divider: int, find_max: bool) -> int:
    """oneDNN's `best_divider` (jit_uni_1x1_conv_utils.hpp): the divider in [min, max] whose
    round-up wastes the least; ties go to the largest (find_max) or the smallest."""
    max_divider = max(1, min(max_divider, value))
    min_divider = max(1, min(min_divider, max_divider))
    best, best_loss = max_divider, math.inf
    for divider in range(max_divider, min_divider - 1, -1):
        padded = round_up(value, divider)
        loss = (padded - value) / padded
        if (find_max and loss < best_loss) or (not find_max and loss <= best_loss):
            best, best_loss = divider, loss
    return best


def reducer_scratch_bytes(nthr: int, job_size: int, njobs: int, reduction: int, max_buffer: int) -> int:
    """Scratch of oneDNN's `cpu_reducer_t` (cpu_reducer.cpp): a page-aligned space for all but the
    first thread of each group, and one page-sized barrier per group (0 without a split)."""
    min_jobs = max(1, njobs // nthr)
    max_jobs = max(1, max_buffer // (nthr * job_size))
    groups = min(njobs // min_jobs, nthr)
    per_group = min(nthr // groups, reduction)
    jobs_ub = _div_up(njobs, groups)
    best = njobs * job_size * reduction
    for jobs in range(min_jobs, njobs):
        c_groups = min(njobs // jobs, nthr)
        c_per_group = min(nthr // c_groups, reduction)
        c_jobs_ub = _div_up(njobs, c_groups)
        if c_per_group > 1 and c_jobs_ub > max_jobs:
            continue
        complexity = job_size * c_jobs_ub * (_div_up(reduction, c_per_group) + (c_per_group != 1))
        if complexity < best:
            groups, per_group, jobs_ub, best = c_groups, c_per_group, c_jobs_ub, complexity
    if per_group == 1:
        return 0
    space = groups * (per_group - 1) * jobs_ub * job_size * FLOAT_BYTES
    return space + _PAGE + groups * _BARRIER + _BARRIER


class _Split(NamedTuple):
    mb: int  # threads splitting the batch (each but the first keeps a weight-gradient copy)
    total: int  # threads used: mb x groups x oc blocks x ic blocks


def jit_backward_weights_split(cv: Conv, threads: int) -> _Split:
    """jit_avx512_common_conv_bwd_weights_kernel_f32::balance (jit_avx512_common_conv_kernel.cpp).

    Step 1 picks the (batch, oc blocks, ic blocks) split of least per-thread memory traffic
    (src 1, dst 1, weights 8); step 2 one of less compute within 110 % of that traffic. A 2-D
    convolution with more than 9 output rows uses the "2d reduction" harness, which also
    splits the rows: up to `oh // 9` threads per image.
    """
    blk = onednn_channel_block()
    if threads < cv.groups:
        return _Split(1, threads)
    ic_block, nb_ic = (cv.cpg, 1) if cv.first else (blk, _div_up(cv.cpg, blk))
    nb_oc = _div_up(cv.opg, blk)
    spatial_in, spatial_out = (1, 1, *cv.src)[-3:], (1, 1, *cv.dst)[-3:]
    stride = (1, 1, *cv.stride)[-3:]
    kd, kh, kw = (1, 1, *cv.kernel)[-3:]
    (i_d, i_h, i_w), (o_d, o_h, o_w) = spatial_in, spatial_out
    two_d = len(cv.src) == 2 and o_h > _MIN_OH_REDUCE
    ih_reduce, oh_reduce = (i_h, o_h) if two_d else (1, 1)
    ih_rest, oh_rest = (1, 1) if two_d else (i_h, o_h)
    nthr_g = cv.groups
    nthr = threads // nthr_g
    oh_threads = max(1, oh_reduce // _MIN_OH_REDUCE)

    def memory(mb: int, oc_b: int, ic_b: int) -> int:
        groups = _div_up(cv.groups, nthr_g)
        src = _div_up(cv.n * ih_reduce, mb) * groups * _div_up(nb_ic, ic_b) * ic_block * ih_rest * i_w * i_d
        src = src // stride[0] // stride[1] // stride[2]
        dst = _div_up(cv.n * oh_reduce, mb) * groups * _div_up(nb_oc, oc_b) * blk * oh_rest * o_w * o_d
        wei = 8 * groups * _div_up(nb_oc, oc_b) * _div_up(nb_ic, ic_b) * kh * kw * kd * ic_block * blk
        return src + dst + wei

    def compute(mb: int, oc_b: int, ic_b: int) -> int:
        groups = _div_up(cv.groups, nthr_g)
        return _div_up(cv.n * oh_reduce, mb) * groups * _div_up(nb_oc, oc_b) * _div_up(nb_ic, ic_b)

    mb_max = min(nthr, cv.n * o_d * oh_threads)
    splits = [
        (mb, oc_b, min(nthr // mb // oc_b, nb_ic))
        for mb in range(1, mb_max + 1)
        for oc_b in range(1, min(nthr // mb, nb_oc) + 1)
    ]
    best, best_memory = (1, 1, 1), memory(1, 1, 1)
    for split in splits:
        if memory(*split) <= best_memory:
            best, best_memory = split, memory(*split)
    best_compute = compute(*best)
    for split in splits:
        cheaper = compute(*split) <= best_compute and memory(*split) < 1.1 * best_memory
        if cheaper or 4 * compute(*split) <= 3 * best_compute:
            best, best_compute = split, compute(*split)
    mb, oc_b, ic_b = best
    if threads // 2 < mb < threads:
        mb = min(cv.n * o_d * oh_threads, threads)
    return _Split(mb, mb * nthr_g * oc_b * ic_b)


def jit_backward_weights_scratch_bytes(cv: Conv, with_bias: bool, threads: int) -> int:
    """Scratchpad of oneDNN's jit (avx512_common) backward-weights convolution.

    Derivation (jit_avx512_common_conv_kernel.cpp `init_scratchpad`, jit_avx512_common_convolution
    `init_balancers`): with the batch split over `mb` threads, `(mb - 1)` copies of the padded
    weight gradient and bias, `(wei + bia) * (mb - 1)` floats + 128, and a barrier (a 4 KiB
    page-aligned `simple_barrier::ctx_t`: 4096 + 4096); a padded bias when O is not a whole
    block; with a bias, the `cpu_reducer_t` of the bias over the batch (`reducer_scratch_bytes`).
    This replaces the fitted "8320 bytes" (8192 barrier + 128 alignment) and "8064" constants.
    """
    blk = onednn_channel_block()
    split = jit_backward_weights_split(cv, threads)
    ic = cv.cpg if cv.first else round_up(cv.cpg, blk)
    oc = round_up(cv.opg, blk)
    scratch = 0
    if split.mb > 1:
        wei, bia = cv.groups * oc * ic * cv.k, cv.groups * oc
        scratch += (wei + bia) * (split.mb - 1) * FLOAT_BYTES + SCRATCH_ALIGN + _BARRIER + _BARRIER
    if with_bias and cv.opg % blk:
        scratch += cv.groups * oc * FLOAT_BYTES + SCRATCH_ALIGN
    if with_bias:
        max_buffer = split.total * 3 * 5 * 5 * 16 * 16
        scratch += reducer_scratch_bytes(split.total, blk, cv.groups * (oc // blk), cv.n, max_buffer)
    return scratch


def jit_1x1_backward_weights_scratch_bytes(cv: Conv, with_bias: bool, threads: int) -> int:
    """Scratchpad of oneDNN's jit 1x1 backward-weights convolution.

    Derivation (jit_avx512_common_1x1_conv_kernel.cpp `init_conf`, `balance`, `init_scratchpad`;
    jit_uni_1x1_conv_utils.hpp `rtus_prepare_space_info`): the reduction runs over the input
    spatial size in blocks of `best_divider(is, 7, 16)`; `balance` picks the split of least
    memory traffic (src 1, dst 1, weights 12). The scratchpad has `(mb - 1)` weight-gradient
    copies + 128 and a page-sized barrier (8192) when the batch is split, a padded bias, the
    bias reducer, and for a strided 1x1 the "reduce to unit stride" copy of the source:
    threads x `best_divider(nb_ic, 5, nb_ic)` blocks x OH*OW x 16 floats + 128.
    """
    blk = onednn_channel_block()
    strided = any(s != 1 for s in cv.stride)
    spatial = cv.dst if strided else cv.src  # rtus hands the kernel a unit-stride problem
    reduce_dim, width = math.prod(spatial), spatial[-1]
    reduce_block = best_divider(reduce_dim, 7, 16, True)
    if reduce_dim % reduce_block:
        reduce_block = best_divider(width, 4, width, False)
    if reduce_block > 256:
        reduce_block = 1
    nb_reduce = _div_up(reduce_dim, reduce_block)
    nb_ic, nb_oc = _div_up(cv.cpg, blk), _div_up(cv.opg, blk)
    if threads < cv.groups:
        mb, total = 1, 1
    else:
        nthr = threads // cv.groups

        def memory(mb: int, oc_b: int, ic_b: int) -> int:
            rows = _div_up(cv.n * nb_reduce, mb)
            return (
                rows * _div_up(nb_ic, ic_b) * blk * reduce_block
                + rows * _div_up(nb_oc, oc_b) * blk * reduce_block
                + 12 * _div_up(nb_oc, oc_b) * _div_up(nb_ic, ic_b) * blk * blk
            )

        best, best_memory = (1, 1, 1), memory(1, 1, 1)
        for mb in range(1, min(nthr, cv.n * nb_reduce) + 1):
            for oc_b in range(1, min(nthr // mb, nb_oc) + 1):
                split = (mb, oc_b, min(nthr // mb // oc_b, nb_ic))
                if memory(*split) <= best_memory:
                    best, best_memory = split, memory(*split)
        mb, oc_b, ic_b = best
        if threads // 2 < mb < threads:
            mb = min(cv.n, threads)
        total = mb * cv.groups * oc_b * ic_b
    scratch = 0
    if with_bias and cv.opg % blk:
        scratch += cv.groups * nb_oc * blk * FLOAT_BYTES + SCRATCH_ALIGN
    if mb > 1:
        scratch += (
            cv.groups * nb_oc * blk * nb_ic * blk * (mb - 1) * FLOAT_BYTES
            + SCRATCH_ALIGN
            + _BARRIER
            + _BARRIER
        )
    if with_bias:
        scratch += reducer_scratch_bytes(total, blk, cv.groups * nb_oc, cv.n, total * 3 * 5 * 5 * 16 * 16)
    if strided:
        bcast_blocks = best_divider(nb_ic, 5, nb_ic, False)
        scratch += total * bcast_blocks * reduce_dim * blk * FLOAT_BYTES + SCRATCH_ALIGN
    return scratch


def _gemm_scratch_limit(cv: Conv, threads: int) -> int:
    """gemm_convolution_utils::init_conf's scratchpad limit: 1 GiB, or 15 x threads x the tensors."""
    tensors = (cv.n * cv.c * cv.s_in + cv.o * cv.cpg * cv.k + cv.n * cv.o * cv.s_out) * FLOAT_BYTES
    return min(1 << 30, 15 * threads * tensors)


def _im2col_elements(cv: Conv) -> int:
    """One thread's im2col matrix (C/g * kernel * OH*OW), 0 when the convolution is a plain GEMM."""
    unit = cv.k == 1 and cv.src == cv.dst and all(s == 1 for s in cv.stride)
    return 0 if unit else cv.cpg * cv.k * math.prod(cv.dst[-2:])


def gemm_backward_weights_scratch_bytes(cv: Conv, threads: int) -> int:
    """Scratchpad of oneDNN's gemm (ncsp) backward-weights convolution.

    Derivation (gemm_convolution_utils.cpp `init_conf`, !is_nspc && is_bwd_w): it runs threads
    over the batch ("outer threading") when the per-thread buffers fit the scratchpad limit, the
    output plane is small (OH*OW / threads < 256) and there is more than one image. It books
    `key_conv_wei_reduction` as `book<float>(nthr * weights_d.size())`, and `size()` is already
    in bytes: 4 x nthr x weight bytes (+ 128), booked even for one thread; and the im2col
    buffer, nthr x C/g*kh*kw*OH*OW floats (+ 128), cut to a spatial block when it would pass
    the limit. ViT's patch embedding (3 -> 128, 16x16 stride 16, 2x3x64x64): 4*2*393216 + 128
    + 2*12288*4 + 128 = 3 244 288 bytes.
    """
    weight_bytes = cv.o * cv.cpg * cv.k * FLOAT_BYTES
    plane = math.prod(cv.dst[-2:])
    limit = _gemm_scratch_limit(cv, threads)
    per_thread = FLOAT_BYTES * threads * weight_bytes + FLOAT_BYTES * threads * cv.cpg * cv.k * _SIMD_W
    outer = per_thread < limit and plane // threads < 256 and (cv.n != 1 or cv.groups > 2)
    nthr = threads if outer else 1
    scratch = FLOAT_BYTES * nthr * weight_bytes + SCRATCH_ALIGN
    return scratch + _gemm_columns(cv, nthr, limit - scratch, 0.05)


def _gemm_columns(cv: Conv, nthr: int, available: int, coefficient: float) -> int:
    columns = _im2col_elements(cv)
    if not columns:
        return 0
    if available < nthr * columns * FLOAT_BYTES:  # too big: a spatial block of the output plane
        plane = math.prod(cv.dst[-2:])
        max_block = available // (FLOAT_BYTES * nthr * (columns // plane))
        columns = cv.cpg * cv.k * max(_SIMD_W, int(max_block * coefficient))
    return nthr * columns * FLOAT_BYTES + SCRATCH_ALIGN


def gemm_backward_data_scratch_bytes(cv: Conv, threads: int) -> int:
    """Scratchpad of oneDNN's gemm (ncsp) backward-data convolution: the col2im buffer.

    Derivation (gemm_convolution_utils.cpp `init_conf`, !is_nspc && is_bwd_d): threads run over
    groups x images when (OH*OW / threads < 512 or the kernel has < 64 taps), there is more than
    one image (or > 2 groups), and that split is as even as the GEMM's own or the GEMM is small
    (IH*IW*C*O / threads < 64 Ki); then each thread has a C/g*kernel*OH*OW buffer (+ 128).
    """
    outer_work = cv.groups * cv.n
    outer_eff = outer_work / round_up(outer_work, threads)
    inner_work = _div_up(cv.s_in, _SIMD_W) * _div_up(cv.cpg, _SIMD_W)
    inner_eff = inner_work / round_up(inner_work, threads)
    plane = math.prod(cv.dst[-2:])
    outer = (
        (plane // threads < 512 or cv.k < 64)
        and (cv.n != 1 or cv.groups > 2)
        and (outer_eff / inner_eff >= 1 or cv.s_in * cv.cpg * cv.opg // threads < 64 * 1024)
    )
    return _gemm_columns(cv, threads if outer else 1, _gemm_scratch_limit(cv, threads), 0.1)


def brgemm_strided_backward_data_scratch_bytes(cv: Conv, threads: int) -> int:
    """Scratchpad of oneDNN's `brgconv_strided` backward data (stride > 1, no groups).

    Derivation (jit_brgemm_conv_bwd_utils.cpp `init_conf`, `init_scratchpad`): per thread, a
    page-rounded copy of one image's diff_dst with the kernel's overflow rows and columns,
    `(OH + ovf) x (OW + ovf) x O` floats (ovf = (ext_k - 1 - pad) / stride at each edge); a
    page of masks; a brgemm batch of kh*kw elements of 40 bytes, rounded to a page; each entry
    page-aligned (+ 4096); with an input width not a multiple of the stride, an output row
    buffer, IW x C floats rounded to a page.

    Known limitations: O is taken as padded to 16 (oneDNN may pick a larger block); the blocked
    row buffer of non-fp32 types is not counted.
    """
    blk = onednn_channel_block()
    overflow_rows = []
    for size_in, size_out, k, s, pad in zip(cv.src, cv.dst, cv.kernel, cv.stride, cv.padding, strict=True):
        end_pad = _end_padding(size_in, size_out, k, s, pad)
        overflow_rows.append(size_out + max(0, k - 1 - pad) // s + max(0, k - 1 - end_pad) // s)
    image = round_up(math.prod(overflow_rows) * round_up(cv.o, blk), _PAGE) * FLOAT_BYTES
    batch = _div_up(round_up(cv.k * _BATCH_ELEMENT, _PAGE), _BATCH_ELEMENT) * _BATCH_ELEMENT
    scratch = threads * image + _PAGE + threads * _PAGE + _PAGE + threads * batch + _PAGE
    if cv.src[-1] % cv.stride[-1]:
        row = round_up(cv.src[-1], cv.stride[-1]) * cv.c
        scratch += threads * round_up(row, _PAGE) * FLOAT_BYTES + _PAGE
    return scratch
