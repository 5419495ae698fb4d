"""The caching-allocator simulation against the rules of c10/cuda/CUDACachingAllocator.cpp.

Each expected number is worked out by hand from the rule quoted next to it.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nnmem.analyses.allocator import (
    Alloc,
    AllocatorConfig,
    CachingAllocator,
    Free,
    OutOfMemory,
    simulate,
)
from nnmem.errors import UsageError

KiB = 1024
MiB = 1024**2


def test_one_byte_reserves_a_small_segment_and_allocates_512_bytes() -> None:
    result = simulate([(1, 1)])
    assert result.peak_allocated_bytes == 512  # round_size: sizes below kMinBlockSize (512) become 512
    assert result.peak_requested_bytes == 1
    assert result.peak_reserved_bytes == 2 * MiB  # get_allocation_size: <= kSmallSize -> kSmallBuffer
    assert result.num_segments == 1
    assert result.fragmentation_bytes == 2 * MiB - 512


def test_zero_bytes_take_no_memory() -> None:
    # NativeCachingAllocator::allocate calls malloc only `if (size != 0)`
    result = simulate([Alloc(1, 0), Free(1)])
    assert (result.peak_allocated_bytes, result.peak_reserved_bytes) == (0, 0)


def test_small_requests_share_a_two_mib_segment() -> None:
    # 600 KiB is a multiple of 512, so it is not rounded; three fit in 2 MiB, the fourth does not:
    # should_split in the small pool: remaining >= kMinBlockSize.
    result = simulate([(i, 600 * KiB) for i in range(4)])
    assert result.peak_allocated_bytes == 4 * 600 * KiB
    assert 3 * 600 * KiB <= 2 * MiB < 4 * 600 * KiB
    assert result.peak_reserved_bytes == 2 * 2 * MiB
    assert result.num_segments == 2


def test_exactly_one_mib_is_still_small() -> None:
    # get_pool: size <= kSmallSize (1 MiB) goes to the small pool and its 2 MiB segments
    assert simulate([(1, 1 * MiB)]).peak_reserved_bytes == 2 * MiB


def test_just_over_one_mib_takes_a_twenty_mib_segment() -> None:
    result = simulate([(1, MiB + 1)])
    assert result.peak_allocated_bytes == MiB + 512  # rounded up to a multiple of 512
    # get_allocation_size: kSmallSize < size < kMinLargeAlloc (10 MiB) -> kLargeBuffer (20 MiB);
    # should_split (large pool): remaining 20 MiB - (1 MiB + 512) > kSmallSize, so it is split.
    assert result.peak_reserved_bytes == 20 * MiB


def test_eleven_mib_gets_its_own_segment_rounded_to_twelve() -> None:
    result = simulate([(1, 11 * MiB)])
    # get_allocation_size: >= kMinLargeAlloc -> rounded up to kRoundLarge (2 MiB) = 12 MiB
    assert result.peak_reserved_bytes == 12 * MiB
    # should_split needs remaining > kSmallSize; 12 - 11 = 1 MiB is not more, so the whole
    # 12 MiB block is handed out and counted as allocated.
    assert result.peak_allocated_bytes == 12 * MiB
    assert result.peak_requested_bytes == 11 * MiB


def test_a_freed_block_is_reused_without_a_new_segment() -> None:
    result = simulate([(1, 11 * MiB), (1, -11 * MiB), (2, 11 * MiB)])
    assert result.peak_reserved_bytes == 12 * MiB
    assert result.num_device_allocs == 1


def test_best_fit_takes_the_smallest_block_that_fits() -> None:
    # get_free_block: lower_bound in a set ordered by size: the 50 MiB block for 40 MiB, which is
    # split (remaining 10 MiB > kSmallSize); then the 30 MiB block fits 30 MiB exactly.
    events = [(1, 30 * MiB), (2, 50 * MiB), (1, -30 * MiB), (2, -50 * MiB), (3, 40 * MiB), (4, 30 * MiB)]
    result = simulate(events)
    assert result.peak_reserved_bytes == (30 + 50) * MiB
    assert result.end_allocated_bytes == (40 + 30) * MiB
    assert result.num_device_allocs == 2


def test_a_block_splits_and_its_free_neighbours_merge() -> None:
    # Three 4 MiB requests split one 20 MiB segment: 4 + 4 + 4 + 8 free.
    events: list[tuple[int, int]] = [(1, 4 * MiB), (2, 4 * MiB), (3, 4 * MiB)]
    events += [(2, -4 * MiB)]  # a 4 MiB hole between two live blocks: nothing to merge with
    events += [(4, 8 * MiB)]  # best fit is the 8 MiB tail, not a new segment
    events += [(1, -4 * MiB), (3, -4 * MiB), (4, -8 * MiB)]  # free_block merges with prev and next
    events += [(5, 20 * MiB)]  # fits only in the whole, merged segment
    result = simulate(events)
    assert result.peak_reserved_bytes == 20 * MiB  # one segment throughout
    assert result.end_allocated_bytes == 20 * MiB
    assert result.num_device_allocs == 1


def test_a_block_left_with_one_mib_or_less_is_not_split() -> None:
    # 19.5 MiB: its own segment, 20 MiB (kRoundLarge); remaining 0.5 MiB is not > kSmallSize
    result = simulate([(1, 19 * MiB + 512 * KiB)])
    assert result.peak_allocated_bytes == 20 * MiB


def test_max_split_size_keeps_oversize_blocks_from_small_requests() -> None:
    events = [(1, 5 * MiB), (1, -5 * MiB), (2, 5 * MiB)]
    # Default: the freed 20 MiB segment (split 5 + 15, merged back) is reused.
    assert simulate(events).peak_reserved_bytes == 20 * MiB
    # max_split_size 20 MiB: the merged 20 MiB block is oversize (>= max_split_size) and
    # get_free_block will not give it to a request under max_split_size: a second segment.
    config = AllocatorConfig(max_split_size_bytes=20 * MiB)
    assert simulate(events, config).peak_reserved_bytes == 2 * 20 * MiB


def test_max_split_size_lets_oversize_requests_round_up_only_so_far() -> None:
    config = AllocatorConfig(max_split_size_bytes=20 * MiB)
    # 90 MiB in a cached 100 MiB block: 100 < 90 + max_non_split_rounding (20 MiB), so it is reused,
    # not split (should_split needs size < max_split_size): all 100 MiB count as allocated.
    reused = simulate([(1, 100 * MiB), (1, -100 * MiB), (2, 90 * MiB)], config)
    assert (reused.end_allocated_bytes, reused.peak_reserved_bytes) == (100 * MiB, 100 * MiB)
    # 70 MiB: 100 >= 70 + 20, so the block is refused and a 70 MiB segment is made.
    refused = simulate([(1, 100 * MiB), (1, -100 * MiB), (2, 70 * MiB)], config)
    assert (refused.end_allocated_bytes, refused.peak_reserved_bytes) == (70 * MiB, (100 + 70) * MiB)


def test_running_out_frees_the_cache_and_retries() -> None:
    # 40 MiB cached + a 50 MiB segment > 64 MiB: release_cached_blocks frees the 40 MiB segment,
    # then alloc_block is retried (num_alloc_retries counts it).
    result = simulate([(1, 40 * MiB), (1, -40 * MiB), (2, 50 * MiB)], capacity_bytes=64 * MiB)
    assert not result.oom
    assert result.num_alloc_retries == 1
    assert result.end_reserved_bytes == 50 * MiB
    assert result.num_device_frees == 1


def test_out_of_memory_stops_the_replay() -> None:
    result = simulate([(1, 40 * MiB), (2, 30 * MiB), (1, -40 * MiB)], capacity_bytes=64 * MiB)
    assert result.oom
    assert result.oom_event_index == 1  # 40 + 30 MiB live > 64 MiB, even with the cache emptied
    assert result.oom_request_bytes == 30 * MiB
    assert result.num_events == 2
    assert result.num_alloc_retries == 1


def test_max_split_size_releases_only_oversize_segments_before_retrying() -> None:
    # release_available_cached_blocks frees oversize cached blocks (>= max_split_size), largest
    # first, until the request (80 MiB) is covered: 60 + 30 MiB. The 2 MiB small segment stays,
    # and no full retry (release_cached_blocks) is counted.
    events = [(1, 60 * MiB), (2, 30 * MiB), (3, 1 * MiB), (1, -60 * MiB), (2, -30 * MiB), (3, -1 * MiB)]
    events += [(4, 80 * MiB)]
    config = AllocatorConfig(max_split_size_bytes=20 * MiB)
    oversize = simulate(events, config, capacity_bytes=100 * MiB)
    assert (oversize.end_reserved_bytes, oversize.num_alloc_retries) == ((80 + 2) * MiB, 0)
    everything = simulate(events, capacity_bytes=100 * MiB)
    assert (everything.end_reserved_bytes, everything.num_alloc_retries) == (80 * MiB, 1)


def test_garbage_collection_frees_the_oldest_cached_segments_first() -> None:
    # capacity 100 MiB, threshold 0.5: collection starts when reserved > 50 MiB and aims to bring
    # it back to 50 MiB (target 70 - 50 = 20 MiB). Ages count get_free_block calls on the large pool:
    # at the third request the 30 MiB block was cached after call 1 (age 2), the 40 MiB after call
    # 2 (age 1); the mean age is 1.5, so only the 30 MiB segment goes, which meets the target.
    events = [(1, 30 * MiB), (1, -30 * MiB), (2, 40 * MiB), (2, -40 * MiB), (3, 50 * MiB)]
    config = AllocatorConfig(garbage_collection_threshold=0.5)
    collected = simulate(events, config, capacity_bytes=100 * MiB)
    assert collected.num_alloc_retries == 0
    assert collected.end_reserved_bytes == (40 + 50) * MiB
    # Without collection the request does not fit (70 + 50 > 100) and every cached block goes.
    flushed = simulate(events, capacity_bytes=100 * MiB)
    assert flushed.num_alloc_retries == 1
    assert flushed.end_reserved_bytes == 50 * MiB


def test_garbage_collection_needs_a_capacity() -> None:
    # It runs only under a memory limit (`set_fraction` in the source); without one nothing is freed.
    events = [(1, 30 * MiB), (1, -30 * MiB), (2, 40 * MiB)]
    result = simulate(events, AllocatorConfig(garbage_collection_threshold=0.5))
    assert result.end_reserved_bytes == (30 + 40) * MiB


def test_expandable_segments_grow_one_segment_in_twenty_mib_pages() -> None:
    # Five 15 MiB tensors, all freed, then five 17 MiB ones (a batch that grew).
    events = [(i, 15 * MiB) for i in range(5)] + [(i, -15 * MiB) for i in range(5)]
    events += [(10 + i, 17 * MiB) for i in range(5)]
    # Classic segments: 16 MiB each (kRoundLarge); a cached 16 MiB block cannot hold 17 MiB, so the
    # second batch makes five 18 MiB segments while the first five stay cached.
    classic = simulate(events)
    assert classic.peak_reserved_bytes == 5 * 16 * MiB + 5 * 18 * MiB
    # Expandable: one segment, mapped in 20 MiB pages (the large pool's page); 5 x 15 = 75 MiB
    # needs 4 pages; the freed blocks merge into one 80 MiB range; 5 x 17 = 85 MiB needs 5 pages.
    grown = simulate(events, AllocatorConfig(expandable_segments=True))
    assert grown.peak_reserved_bytes == 5 * 20 * MiB
    assert grown.peak_allocated_bytes == 5 * 17 * MiB  # splits down to 512 B: no whole-block waste
    assert grown.num_segments == 1


def test_expandable_small_pool_maps_two_mib_pages() -> None:
    result = simulate([(1, 1)], AllocatorConfig(expandable_segments=True))
    assert result.peak_reserved_bytes == 2 * MiB  # find_expandable_block: kSmallBuffer pages


def test_expandable_segments_unmap_free_pages_when_out_of_memory() -> None:
    # 60 MiB (3 pages) live then freed; a 2 MiB small-pool segment then needs room: 60 + 2 > 61,
    # so release_cached_blocks unmaps the three free pages and the retry succeeds.
    events = [(1, 60 * MiB), (1, -60 * MiB), (2, 1)]
    result = simulate(events, AllocatorConfig(expandable_segments=True), capacity_bytes=61 * MiB)
    assert not result.oom
    assert result.end_reserved_bytes == 2 * MiB
    assert result.num_alloc_retries == 1


def test_roundup_power2_divisions() -> None:
    config = AllocatorConfig(roundup_power2_divisions=4)
    # 5 MiB + 1 lies in [4 MiB, 8 MiB); four divisions of 1 MiB: rounded up to 6 MiB.
    assert config.round_size(5 * MiB + 1) == 6 * MiB
    assert config.round_size(8 * MiB) == 8 * MiB  # a power of two stays
    # 1200 <= 512 * 4, so it falls back to 512-byte rounding: 3 * 512.
    assert config.round_size(1200) == 3 * 512
    assert simulate([(1, 5 * MiB + 1)], config).peak_allocated_bytes == 6 * MiB


def test_roundup_power2_divisions_per_interval_as_pytorch_parses_them() -> None:
    # The expectations of PyTorch's own AllocatorConfigTest (c10/test/core/AllocatorConfig_test.cpp).
    config = AllocatorConfig.from_string("roundup_power2_divisions:[64:8,128:2,256:4,512:2,1024:4,>:1]")
    divisions = {mb: config.divisions_for(mb * MiB) for mb in (32, 64, 128, 256, 512, 1024, 2048)}
    assert divisions == {32: 8, 64: 8, 128: 2, 256: 4, 512: 2, 1024: 4, 2048: 1}


def test_config_from_string() -> None:
    config = AllocatorConfig.from_string(
        "max_split_size_mb:128, garbage_collection_threshold:0.6,expandable_segments:True,"
        "pinned_use_cuda_host_register:True"
    )
    assert config.max_split_size_bytes == 128 * MiB
    assert config.garbage_collection_threshold == 0.6
    assert config.expandable_segments
    assert AllocatorConfig.from_string("") == AllocatorConfig()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_split_size:128", "did you mean 'max_split_size_mb'"),
        ("max_split_size_mb:10", "at least 20 MiB"),
        ("max_split_size_mb:lots", "whole number"),
        ("expandable_segments:yes", "True or False"),
        ("garbage_collection_threshold:1.5", "(0.0, 1.0)"),
        ("roundup_power2_divisions:3", "powers of two"),
        ("backend:cudaMallocAsync", "not simulated"),
        ("max_split_size_mb", "needs a value"),
    ],
)
def test_config_from_string_rejects_bad_settings(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        AllocatorConfig.from_string(text)


def test_pairs_and_event_objects_give_the_same_result() -> None:
    pairs = [(1, 3 * MiB), (2, 100), (1, -3 * MiB), (3, 50 * MiB), (2, -100), (3, -50 * MiB)]
    objects: list[Alloc | Free] = [
        Alloc(1, 3 * MiB),
        Alloc(2, 100),
        Free(1),
        Alloc(3, 50 * MiB),
        Free(2),
        Free(3),
    ]
    assert simulate(pairs) == simulate(objects)


@pytest.mark.parametrize(
    ("events", "message"),
    [
        ([(1, 10), (1, 10)], "allocated again"),
        ([(1, -10)], "freed but not alive"),
        ([Free(7)], "freed but not alive"),
        ([(1, 10), (1, -11)], "frees 11 bytes but allocated 10"),
        ([Alloc(1, -5)], "allocates -5 bytes"),
    ],
)
def test_inconsistent_events_are_reported(events: list[tuple[int, int] | Alloc | Free], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        simulate(events)


_SIZES = st.one_of(
    st.integers(0, 4 * KiB),
    st.integers(4 * KiB, 2 * MiB),
    st.integers(2 * MiB, 24 * MiB),
    st.integers(24 * MiB, 300 * MiB),
)
_CONFIGS = st.sampled_from(
    [
        AllocatorConfig(),
        AllocatorConfig(max_split_size_bytes=20 * MiB),
        AllocatorConfig(max_split_size_bytes=64 * MiB, max_non_split_rounding_bytes=40 * MiB),
        AllocatorConfig(expandable_segments=True),
        AllocatorConfig(roundup_power2_divisions=4),
        AllocatorConfig(garbage_collection_threshold=0.5),
    ]
)


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(_SIZES, min_size=1, max_size=60),
    frees=st.lists(st.integers(0, 10**6), max_size=60),
    config=_CONFIGS,
    capacity=st.one_of(st.none(), st.integers(0, 2**30)),
)
def test_invariants_hold_at_every_step(
    sizes: list[int], frees: list[int], config: AllocatorConfig, capacity: int | None
) -> None:
    allocator = CachingAllocator(config, capacity)
    live: list[int] = []
    free_picks = iter(frees)
    for nbytes in sizes:
        try:
            live.append(allocator.malloc(nbytes))
        except OutOfMemory:
            assert capacity is not None  # only a capacity can run out
            break
        pick = next(free_picks, None)
        if pick is not None and live:
            allocator.free(live.pop(pick % len(live)))
        assert allocator.requested <= allocator.allocated <= allocator.reserved
        assert allocator.reserved % (2 * MiB) == 0  # every segment or page is whole 2 MiB units
        assert capacity is None or allocator.reserved <= capacity
    for address in live:
        allocator.free(address)
    assert allocator.allocated == 0
    assert allocator.requested == 0
    result = allocator.result()
    assert result.peak_allocated_bytes <= result.peak_reserved_bytes
    assert result.peak_reserved_bytes % (2 * MiB) == 0
    allocator.empty_cache()
    assert allocator.reserved == 0  # with nothing alive, every segment is whole and free again
