"""A simulation of PyTorch's CUDA caching allocator: allocated vs reserved bytes.

It replays a sequence of storage allocations and frees through the rules of
`c10/cuda/CUDACachingAllocator.cpp` (`DeviceCachingAllocator`) and reports what
`torch.cuda.max_memory_allocated()` and `torch.cuda.max_memory_reserved()` would say.
See docs/allocator.md for which rule comes from which function of the source.

- Requests are rounded up to 512 B (`kMinBlockSize`), or to a power-of-two division when
  `roundup_power2_divisions` is set (`round_size`).
- Rounded requests of at most 1 MiB (`kSmallSize`) use the small pool, larger ones the large pool
  (`get_pool`). A new segment is 2 MiB for the small pool (`kSmallBuffer`), `large_segment_size`
  (20 MiB, `kLargeBuffer`) for requests under 10 MiB (`kMinLargeAlloc`), else the request rounded
  up to 2 MiB (`kRoundLarge`) (`get_allocation_size`).
- A request takes the smallest cached free block that fits, ties broken by address (the pool is a
  set ordered by (stream, size, address); `get_free_block`), and splits off the rest when
  `should_split` says so; a freed block merges with free neighbours (`free_block`).
- When the device is full, cached blocks are given back and the request retried
  (`release_available_cached_blocks`, `release_cached_blocks`, counted in `num_alloc_retries`).

"Allocated" is the sum of the sizes of the blocks handed out (a request that does not split a
block counts the whole block), exactly as the allocator's `allocated_bytes` statistic.

Known limitations: one stream (no `record_stream`, no cross-stream events, so a freed block is
reusable at once); no CUDA-graph private pools or `MemPool`s; no IPC; no `cudaMallocAsync`
backend; the device's free memory is `capacity_bytes`, fixed for the whole run (no other process,
no memory outside the allocator, such as cuBLAS workspaces made by cudaMalloc or NCCL buffers);
free-memory callbacks are not modelled.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, TypeAlias

from nnmem.errors import UsageError, did_you_mean

MiB: Final = 1024**2

MIN_BLOCK_SIZE: Final = 512  # kMinBlockSize: all sizes are rounded to at least 512 bytes
SMALL_SIZE: Final = 1 * MiB  # kSmallSize: largest "small" allocation
SMALL_BUFFER: Final = 2 * MiB  # kSmallBuffer: small allocations are packed in 2 MiB segments
LARGE_BUFFER: Final = 20 * MiB  # kLargeBuffer: 1-10 MiB requests are packed in 20 MiB segments
MIN_LARGE_ALLOC: Final = 10 * MiB  # kMinLargeAlloc: from here a request gets its own segment
ROUND_LARGE: Final = 2 * MiB  # kRoundLarge: large segments are rounded up to 2 MiB

_ROUNDUP_INTERVALS: Final = 16  # kRoundUpPowerOfTwoIntervals: 1 MiB, 2 MiB, ... 32 GiB and above
_UNLIMITED: Final = 2**64  # max_split_size's default, std::numeric_limits<size_t>::max()
_ADDRESS_BITS: Final = 64  # a free block's key in its pool is (size << 64) | address
_ADDRESS_MASK: Final = 2**_ADDRESS_BITS - 1
_FIRST_ADDRESS: Final = 2**32
_UNLIMITED_ADDRESS_SPACE: Final = 2**44  # an expandable segment's reservation without a capacity

# Settings of PYTORCH_CUDA_ALLOC_CONF that do not change device memory: pinned (host) memory,
# locking, and how an OOM is reported.
_IGNORED_SETTINGS: Final = frozenset(
    {
        "release_lock_on_cudamalloc",
        "release_lock_on_hipmalloc",
        "pinned_use_cuda_host_register",
        "pinned_use_hip_host_register",
        "pinned_num_register_threads",
        "pinned_use_background_threads",
        "pinned_reserve_segment_size_mb",
        "pinned_max_round_threshold",
        "pinned_max_cached_size",
        "pinned_free_catch_all",
        "graph_capture_record_stream_reuse",
        "throw_on_cudamalloc_oom",
    }
)
_SETTINGS: Final = (
    "max_split_size_mb",
    "max_non_split_rounding_mb",
    "large_segment_size_mb",
    "garbage_collection_threshold",
    "expandable_segments",
    "roundup_power2_divisions",
    "backend",
)


@dataclass(frozen=True)
class AllocatorConfig:
    """The allocator's settings (`PYTORCH_CUDA_ALLOC_CONF`), with PyTorch's defaults."""

    max_split_size_bytes: int | None = None  # None: any block may be split (the default)
    max_non_split_rounding_bytes: int = LARGE_BUFFER  # an oversize request may waste this much
    large_segment_size_bytes: int = LARGE_BUFFER  # segment for 1-10 MiB requests
    garbage_collection_threshold: float = 0.0  # 0: off; needs a capacity to act
    expandable_segments: bool = False
    # Divisions per power-of-two interval: one number for all intervals, or 16 numbers for
    # [1 MiB, 2 MiB), [2 MiB, 4 MiB), ... [32 GiB, ...); sizes under 1 MiB use the first. 0/1: off.
    roundup_power2_divisions: int | tuple[int, ...] = 0

    def __post_init__(self) -> None:
        mss = self.max_split_size_bytes
        if mss is not None and mss < LARGE_BUFFER:
            raise UsageError(f"max_split_size must be at least 20 MiB (got {mss} bytes)")
        if self.max_non_split_rounding_bytes < LARGE_BUFFER:
            raise UsageError("max_non_split_rounding must be at least 20 MiB")
        if self.large_segment_size_bytes <= MIN_LARGE_ALLOC:
            raise UsageError("large_segment_size must be more than 10 MiB")
        if not 0.0 <= self.garbage_collection_threshold < 1.0:
            raise UsageError("garbage_collection_threshold must be in (0.0, 1.0), or 0 for off")
        divisions = self.roundup_power2_divisions
        values = (divisions,) if isinstance(divisions, int) else divisions
        if not isinstance(divisions, int) and len(divisions) != _ROUNDUP_INTERVALS:
            raise UsageError(f"roundup_power2_divisions needs {_ROUNDUP_INTERVALS} numbers")
        if any(v < 0 or v & (v - 1) for v in values):
            raise UsageError("roundup_power2_divisions must be powers of two (or 0 for off)")

    @classmethod
    def from_string(cls, text: str) -> AllocatorConfig:
        """Parse `PYTORCH_CUDA_ALLOC_CONF` syntax, e.g. "max_split_size_mb:128,expandable_segments:True".

        Settings of the pinned-memory (host) allocator are accepted and ignored.
        """
        values: dict[str, object] = {}
        for item in _split_top_level(text):
            key, sep, value = item.partition(":")
            key, value = key.strip(), value.strip()
            if not sep or not value:
                raise UsageError(f"allocator setting '{item}' needs a value: key:value")
            if key in _IGNORED_SETTINGS:
                continue
            if key in ("max_split_size_mb", "max_non_split_rounding_mb", "large_segment_size_mb"):
                field = key.removesuffix("_mb") + "_bytes"
                values[field] = _parse_int(key, value) * MiB
            elif key == "garbage_collection_threshold":
                threshold = _parse_float(key, value)
                if not 0.0 < threshold < 1.0:
                    raise UsageError("garbage_collection_threshold must be in (0.0, 1.0)")
                values[key] = threshold
            elif key == "expandable_segments":
                if value not in ("True", "False"):
                    raise UsageError(f"expandable_segments takes True or False, not '{value}'")
                values[key] = value == "True"
            elif key == "roundup_power2_divisions":
                values[key] = _parse_divisions(value)
            elif key == "backend":
                if value != "native":
                    raise UsageError(f"backend '{value}' is not simulated; only 'native' is")
            else:
                choices = [*_SETTINGS, *_IGNORED_SETTINGS]
                raise UsageError(f"unknown allocator setting '{key}'" + did_you_mean(key, choices))
        return cls(**values)  # type: ignore[arg-type]

    def divisions_for(self, size: int) -> int:
        """`roundup_power2_divisions(size)`: the divisions of the interval `size` falls in."""
        divisions = self.roundup_power2_divisions
        if isinstance(divisions, int):
            return divisions
        index = min(max(size.bit_length() - 1 - 20, 0), _ROUNDUP_INTERVALS - 1)
        return divisions[index]

    def round_size(self, nbytes: int) -> int:
        """`round_size`: the block size a request of `nbytes` asks the pools for."""
        if nbytes < MIN_BLOCK_SIZE:
            return MIN_BLOCK_SIZE
        divisions = self.divisions_for(nbytes)
        if divisions > 1 and nbytes > MIN_BLOCK_SIZE * divisions:
            return _roundup_power2_next_division(nbytes, divisions)
        return -(-nbytes // MIN_BLOCK_SIZE) * MIN_BLOCK_SIZE

    def segment_size(self, size: int) -> int:
        """`get_allocation_size`: the segment cudaMalloc'd for a rounded request of `size`."""
        if size <= SMALL_SIZE:
            return SMALL_BUFFER
        if size < MIN_LARGE_ALLOC:
            return self.large_segment_size_bytes
        return -(-size // ROUND_LARGE) * ROUND_LARGE


def _roundup_power2_next_division(size: int, divisions: int) -> int:
    if size & (size - 1) == 0:
        return size
    floor = 1 << (size.bit_length() - 1)
    step = floor >> (divisions.bit_length() - 1)
    if step == 0:
        return floor << 1
    rounded_down = size & ~(step - 1)
    return size if rounded_down == size else rounded_down + step


def _split_top_level(text: str) -> list[str]:
    items: list[str] = []
    depth, start = 0, 0
    for i, char in enumerate(text):
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    items.append(text[start:])
    return [item.strip() for item in items if item.strip()]


def _parse_int(key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"{key} takes a whole number, not '{value}'") from None


def _parse_float(key: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise UsageError(f"{key} takes a number, not '{value}'") from None


def _parse_divisions(value: str) -> int | tuple[int, ...]:
    """Divisions "4" (all intervals) or "[256:1,512:2,>:4]" (interval start in MiB: divisions)."""
    if not value.startswith("["):
        return _parse_int("roundup_power2_divisions", value)
    if not value.endswith("]"):
        raise UsageError("roundup_power2_divisions list must end with ']'")
    table = [0] * _ROUNDUP_INTERVALS
    last_index, first = 0, True
    for entry in _split_top_level(value[1:-1]):
        start, sep, divisions_text = entry.partition(":")
        if not sep:
            raise UsageError(f"roundup_power2_divisions entry '{entry}' needs start_mb:divisions")
        divisions = _parse_int("roundup_power2_divisions", divisions_text.strip())
        if start.strip() == ">":
            table[last_index + 1 :] = [divisions] * (_ROUNDUP_INTERVALS - last_index - 1)
            continue
        start_mb = _parse_int("roundup_power2_divisions", start.strip())
        if start_mb <= 0 or start_mb & (start_mb - 1):
            raise UsageError(f"roundup_power2_divisions interval {start_mb} is not a power of 2")
        index = min(start_mb.bit_length() - 1, _ROUNDUP_INTERVALS - 1)
        if first:  # the first entry also covers every interval below it
            table[:index] = [divisions] * index
            first = False
        table[index] = divisions
        last_index = index
    return tuple(table)


@dataclass(frozen=True, slots=True)
class Alloc:
    """Storage `id` comes alive with `nbytes` bytes."""

    id: int
    nbytes: int


@dataclass(frozen=True, slots=True)
class Free:
    """Storage `id` dies."""

    id: int


AllocEvent: TypeAlias = Alloc | Free


@dataclass(frozen=True)
class AllocatorResult:
    """What the allocator's statistics would read after the events (peaks are high-water marks)."""

    peak_allocated_bytes: int  # torch.cuda.max_memory_allocated(): sum of block sizes handed out
    peak_reserved_bytes: int  # torch.cuda.max_memory_reserved(): segments cudaMalloc'd or mapped
    peak_requested_bytes: int  # sum of the unrounded requests (memory_stats "requested_bytes")
    allocated_at_reserved_peak_bytes: int  # the most allocated while reserved stood at its peak
    fragmentation_bytes: int  # peak reserved - allocated_at_reserved_peak: cached, never used
    end_allocated_bytes: int
    end_reserved_bytes: int
    num_segments: int  # most segments held at once (an expandable segment counts once)
    num_device_allocs: int  # cudaMalloc calls, or page mappings with expandable segments
    num_device_frees: int
    num_alloc_retries: int  # times every cached block was freed to retry a request
    num_events: int  # events replayed (up to and including the one that ran out of memory)
    oom: bool
    oom_event_index: int | None  # index of the allocation that could not be satisfied
    oom_request_bytes: int | None


class OutOfMemory(Exception):
    """A request the simulated allocator cannot satisfy within its capacity."""

    def __init__(self, nbytes: int, reserved: int, capacity: int | None) -> None:
        super().__init__(f"out of memory: {nbytes} bytes requested, {reserved} reserved of {capacity}")
        self.nbytes = nbytes


class _Segment:
    """An expandable segment: reserved address space, mapped in pages on demand."""

    __slots__ = ("base", "page")

    def __init__(self, base: int, page: int) -> None:
        self.base = base
        self.page = page


class _Block:
    __slots__ = (
        "addr",
        "allocated",
        "gc_base",
        "mapped",
        "next",
        "pool",
        "prev",
        "requested",
        "segment",
        "size",
    )

    def __init__(self, addr: int, size: int, pool: _Pool, segment: _Segment | None) -> None:
        self.addr = addr
        self.size = size
        self.requested = 0
        self.allocated = False
        self.mapped = True  # False only for address space of an expandable segment
        self.prev: _Block | None = None  # neighbours in the same segment
        self.next: _Block | None = None
        self.pool = pool
        self.segment = segment
        self.gc_base = 0  # the pool's get_free_block count when the block was cached

    def is_split(self) -> bool:
        return self.prev is not None or self.next is not None


class _Pool:
    """`BlockPool`: the cached free blocks of one pool, ordered by (size, address)."""

    __slots__ = ("blocks", "gc_calls", "is_small", "keys", "unmapped")

    def __init__(self, is_small: bool) -> None:
        self.is_small = is_small
        self.keys: list[int] = []  # sorted (size << 64) | address of free mapped blocks
        self.blocks: dict[int, _Block] = {}  # address -> free mapped block
        self.unmapped: dict[int, _Block] = {}  # address -> unmapped range of an expandable segment
        self.gc_calls = 0

    def insert(self, block: _Block) -> None:
        block.gc_base = self.gc_calls
        insort(self.keys, (block.size << _ADDRESS_BITS) | block.addr)
        self.blocks[block.addr] = block

    def remove(self, block: _Block) -> None:
        del self.keys[bisect_left(self.keys, (block.size << _ADDRESS_BITS) | block.addr)]
        del self.blocks[block.addr]

    def at(self, index: int) -> _Block:
        return self.blocks[self.keys[index] & _ADDRESS_MASK]


class CachingAllocator:
    """One device's caching allocator, one stream. `malloc` returns an address for `free`."""

    def __init__(
        self, config: AllocatorConfig = AllocatorConfig(), capacity_bytes: int | None = None
    ) -> None:
        if capacity_bytes is not None and capacity_bytes < 0:
            raise UsageError(f"capacity must not be negative (got {capacity_bytes} bytes)")
        self.config = config
        self.capacity = capacity_bytes
        self._max_split = config.max_split_size_bytes or _UNLIMITED
        self._expandable = config.expandable_segments
        # Garbage collection runs only with a memory limit (`set_fraction` in the source).
        self._gc = config.garbage_collection_threshold > 0.0 and capacity_bytes is not None
        self._small = _Pool(is_small=True)
        self._large = _Pool(is_small=False)
        self._live: dict[int, _Block] = {}
        self._next_address = _FIRST_ADDRESS
        self.allocated = self.reserved = self.requested = self.segments = 0
        self.peak_allocated = self.peak_reserved = self.peak_requested = self.peak_segments = 0
        self.allocated_at_reserved_peak = 0
        self.device_allocs = self.device_frees = self.alloc_retries = 0

    # -- the public operations -------------------------------------------------------------

    def malloc(self, nbytes: int) -> int:
        """Allocate `nbytes`; 0 bytes returns address 0 and takes nothing (like `allocate(0)`)."""
        if nbytes <= 0:
            if nbytes < 0:
                raise UsageError(f"cannot allocate a negative size ({nbytes} bytes)")
            return 0
        size = self.config.round_size(nbytes)
        pool = self._small if size <= SMALL_SIZE else self._large
        block = self._get_free_block(pool, size)
        if block is None:
            block = self._new_block(pool, size)
            if block is None:
                raise OutOfMemory(nbytes, self.reserved, self.capacity)
        self._hand_out(pool, block, size, nbytes)
        return block.addr

    def free(self, address: int) -> None:
        """Return the block at `address` to its pool, merged with free neighbours (`free_block`)."""
        if address == 0:
            return
        block = self._live.pop(address, None)
        if block is None:
            raise UsageError(f"no live allocation at address {address:#x}")
        self.allocated -= block.size
        self.requested -= block.requested
        block.allocated = False
        _merge_free_neighbours(block)
        block.pool.insert(block)

    def empty_cache(self) -> None:
        """`torch.cuda.empty_cache()`: release every cached segment that is wholly free."""
        self._release_cached_blocks()

    def requested_size(self, address: int) -> int:
        """The unrounded size of the live allocation at `address`."""
        return self._live[address].requested if address else 0

    # -- finding a block ---------------------------------------------------------------------

    def _get_free_block(self, pool: _Pool, size: int) -> _Block | None:
        """`get_free_block`: the best-fitting cached block, or None."""
        if self._gc:
            pool.gc_calls += 1
        keys = pool.keys
        index = bisect_left(keys, size << _ADDRESS_BITS)
        if index == len(keys):
            return None
        block = pool.at(index)
        if block.segment is not None:
            # Judge a block at the mapped end of an expandable segment by what it could grow to.
            while index + 1 < len(keys):
                candidate = pool.at(index + 1)
                if _expandable_size(candidate) >= _expandable_size(block):
                    break
                index, block = index + 1, candidate
                if block.segment is None:
                    break
        if size < self._max_split and block.size >= self._max_split:
            return None  # do not hand an oversize block to a request that could split
        if size >= self._max_split and block.size >= size + self.config.max_non_split_rounding_bytes:
            return None  # an oversize request may only round up so far
        del keys[index]
        del pool.blocks[block.addr]
        return block

    def _new_block(self, pool: _Pool, size: int) -> _Block | None:
        """The rest of `malloc` when no cached block fits: collect, allocate, release and retry."""
        if self._gc:
            self._garbage_collect()
        segment_size = self.config.segment_size(size)
        block = self._alloc_block(pool, size, segment_size)
        if block is None and self._release_available_cached_blocks(pool, size):
            block = self._alloc_block(pool, size, segment_size)
        if block is None:
            self._release_cached_blocks()
            self.alloc_retries += 1
            block = self._alloc_block(pool, size, segment_size)
        return block

    def _alloc_block(self, pool: _Pool, size: int, segment_size: int) -> _Block | None:
        """`alloc_block`: a new segment from the device (or more pages of an expandable one)."""
        if self._expandable:
            return self._allocate_expandable(pool, size)
        if self.capacity is not None and self.reserved + segment_size > self.capacity:
            return None
        block = _Block(self._reserve_addresses(segment_size), segment_size, pool, None)
        self.segments += 1
        self.peak_segments = max(self.peak_segments, self.segments)
        self._grow_reserved(segment_size)
        return block

    def _hand_out(self, pool: _Pool, block: _Block, size: int, nbytes: int) -> None:
        """`alloc_found_block`: split off what is not needed, then count the block as allocated."""
        remaining = block.size - size
        if pool.is_small or self._expandable:
            split = remaining >= MIN_BLOCK_SIZE
        else:
            split = size < self._max_split and remaining > SMALL_SIZE
        if split:
            rest = _Block(block.addr + size, remaining, pool, block.segment)
            rest.prev, rest.next = block, block.next
            if block.next is not None:
                block.next.prev = rest
            block.next = rest
            block.size = size
            pool.insert(rest)
        block.allocated = True
        block.requested = nbytes
        self._live[block.addr] = block
        self.allocated += block.size
        self.requested += nbytes
        if self.allocated > self.peak_allocated:
            self.peak_allocated = self.allocated
        if self.requested > self.peak_requested:
            self.peak_requested = self.requested
        if self.reserved == self.peak_reserved and self.allocated > self.allocated_at_reserved_peak:
            self.allocated_at_reserved_peak = self.allocated

    # -- giving memory back ------------------------------------------------------------------

    def _garbage_collect(self) -> None:
        """`garbage_collect_cached_blocks`: free whole cached large segments, oldest first."""
        assert self.capacity is not None
        threshold = int(self.config.garbage_collection_threshold * self.capacity)
        if self.reserved <= threshold:
            return
        target = self.reserved - threshold
        pool = self._large

        def freeable() -> list[_Block]:
            blocks = (pool.at(i) for i in range(len(pool.keys)))
            return [b for b in blocks if not b.is_split() and b.segment is None]

        candidates = freeable()
        total_age = sum(pool.gc_calls - b.gc_base for b in candidates)
        count = len(candidates)
        reclaimed, freed = 0, True
        while reclaimed < target and freed and count > 0:
            age_threshold = total_age / count  # free blocks at least as old as the average
            freed = False
            for block in freeable():
                age = pool.gc_calls - block.gc_base
                if age >= age_threshold:
                    freed = True
                    reclaimed += block.size
                    total_age -= age
                    count -= 1
                    self._release_block(block)

    def _release_available_cached_blocks(self, pool: _Pool, size: int) -> bool:
        """`release_available_cached_blocks`: free oversize cached segments, largest first."""
        if self._max_split == _UNLIMITED:
            return False
        key_size = max(size, self._max_split)
        index = bisect_left(pool.keys, key_size << _ADDRESS_BITS)
        if index < len(pool.keys) and pool.at(index).segment is None:
            block = pool.at(index)
            if block.is_split():
                return False  # only whole segments can be given back to the device
            self._release_block(block)
            return True
        released = 0
        index -= 1
        while released < key_size and index >= 0:
            block = pool.at(index)
            if block.size < self._max_split:
                break
            index -= 1
            if block.segment is None and not block.is_split():
                self._release_block(block)
                released += block.size
        return released >= key_size

    def _release_cached_blocks(self) -> None:
        """`release_cached_blocks`: free every wholly free segment; unmap free expandable pages."""
        for pool in (self._large, self._small):
            to_unmap: list[_Block] = []
            for block in [pool.at(i) for i in range(len(pool.keys))]:
                if block.segment is not None:
                    to_unmap.append(block)
                elif not block.is_split():
                    self._release_block(block)
            for block in to_unmap:
                self._unmap_block(block)
                if not block.mapped and not block.is_split():
                    del pool.unmapped[block.addr]  # `release_expandable_segment`
                    self.segments -= 1

    def _release_block(self, block: _Block) -> None:
        """`release_block`: cudaFree a whole cached segment."""
        block.pool.remove(block)
        self.reserved -= block.size
        self.segments -= 1
        self.device_frees += 1

    # -- expandable segments -----------------------------------------------------------------

    def _allocate_expandable(self, pool: _Pool, size: int) -> _Block | None:
        """`try_allocate_expandable_block`: map pages until a free run of `size` bytes exists."""
        candidate = self._find_expandable_block(pool, size)
        if not candidate.mapped and not self._map_block(candidate, min(candidate.size, size)):
            return None
        while candidate.size < size:
            following = candidate.next
            assert following is not None and not following.mapped
            if not self._map_block(following, min(size - candidate.size, following.size)):
                return None
            candidate = following  # it has absorbed `candidate` (see `_map_block`)
        pool.remove(candidate)
        return candidate

    def _find_expandable_block(self, pool: _Pool, size: int) -> _Block:
        """`find_expandable_block`: the lowest address where free and unmapped space fits `size`."""
        for address in sorted(pool.unmapped):
            candidate = pool.unmapped[address]
            if candidate.prev is not None and not candidate.prev.allocated:
                candidate = candidate.prev
            room = 0
            walk: _Block | None = candidate
            while room < size and walk is not None and not walk.allocated:
                room += walk.size
                walk = walk.next
            if room >= size:
                return candidate
        page = SMALL_BUFFER if pool.is_small else self.config.large_segment_size_bytes
        wanted = _UNLIMITED_ADDRESS_SPACE if self.capacity is None else self.capacity * 9 // 8
        address_space = -(-max(wanted, size) // page) * page
        segment = _Segment(self._reserve_addresses(address_space), page)
        fresh = _Block(segment.base, address_space, pool, segment)
        fresh.mapped = False
        pool.unmapped[fresh.addr] = fresh
        self.segments += 1
        self.peak_segments = max(self.peak_segments, self.segments)
        return fresh

    def _map_block(self, block: _Block, size: int) -> bool:
        """`map_block`: back the first `size` bytes (whole pages) of an unmapped range."""
        segment = block.segment
        assert segment is not None
        mapped = -(-size // segment.page) * segment.page
        if self.capacity is not None and self.reserved + mapped > self.capacity:
            return False
        pool = block.pool
        del pool.unmapped[block.addr]
        block.mapped = True
        if mapped < block.size:
            rest = _Block(block.addr + mapped, block.size - mapped, pool, segment)
            rest.mapped = False
            rest.prev, rest.next = block, block.next
            if block.next is not None:
                block.next.prev = rest
            block.next = rest
            block.size = mapped
            pool.unmapped[rest.addr] = rest
        _merge_free_neighbours(block)
        pool.insert(block)
        self._grow_reserved(mapped)
        return True

    def _unmap_block(self, block: _Block) -> None:
        """`unmap_block`: give back the whole pages inside a free block of an expandable segment."""
        segment = block.segment
        assert segment is not None
        page, base, pool = segment.page, segment.base, block.pool
        begin = base + -(-(block.addr - base) // page) * page
        end = base + (block.addr + block.size - base) // page * page
        if begin >= end:
            return
        pool.remove(block)
        if begin > block.addr:
            before = _Block(block.addr, begin - block.addr, pool, segment)
            before.prev, before.next = block.prev, block
            if block.prev is not None:
                block.prev.next = before
            block.prev = before
            pool.insert(before)
        if end < block.addr + block.size:
            after = _Block(end, block.addr + block.size - end, pool, segment)
            after.prev, after.next = block, block.next
            if block.next is not None:
                block.next.prev = after
            block.next = after
            pool.insert(after)
        block.addr, block.size, block.mapped = begin, end - begin, False
        prev, nxt = block.prev, block.next
        if prev is not None and not prev.mapped:
            del pool.unmapped[prev.addr]
            block.addr, block.size, block.prev = prev.addr, block.size + prev.size, prev.prev
            if block.prev is not None:
                block.prev.next = block
        if nxt is not None and not nxt.mapped:
            del pool.unmapped[nxt.addr]
            block.size += nxt.size
            block.next = nxt.next
            if block.next is not None:
                block.next.prev = block
        pool.unmapped[block.addr] = block
        self.reserved -= end - begin
        self.device_frees += 1

    # -- bookkeeping -------------------------------------------------------------------------

    def _reserve_addresses(self, nbytes: int) -> int:
        address = self._next_address
        self._next_address += nbytes
        if self._next_address > _ADDRESS_MASK:
            raise OverflowError("simulated address space exhausted")
        return address

    def _grow_reserved(self, nbytes: int) -> None:
        self.reserved += nbytes
        self.device_allocs += 1
        if self.reserved > self.peak_reserved:
            self.peak_reserved = self.reserved
            self.allocated_at_reserved_peak = self.allocated

    def result(
        self, num_events: int = 0, oom_event_index: int | None = None, oom_request_bytes: int | None = None
    ) -> AllocatorResult:
        """The statistics so far as an `AllocatorResult`."""
        return AllocatorResult(
            peak_allocated_bytes=self.peak_allocated,
            peak_reserved_bytes=self.peak_reserved,
            peak_requested_bytes=self.peak_requested,
            allocated_at_reserved_peak_bytes=self.allocated_at_reserved_peak,
            fragmentation_bytes=self.peak_reserved - self.allocated_at_reserved_peak,
            end_allocated_bytes=self.allocated,
            end_reserved_bytes=self.reserved,
            num_segments=self.peak_segments,
            num_device_allocs=self.device_allocs,
            num_device_frees=self.device_frees,
            num_alloc_retries=self.alloc_retries,
            num_events=num_events,
            oom=oom_event_index is not None,
            oom_event_index=oom_event_index,
            oom_request_bytes=oom_request_bytes,
        )


def _merge_free_neighbours(block: _Block) -> None:
    """`try_merge_blocks` with both neighbours: absorb those that are free and mapped."""
    prev, nxt = block.prev, block.next
    if prev is not None and not prev.allocated and prev.mapped:
        block.pool.remove(prev)
        block.addr, block.size, block.prev = prev.addr, block.size + prev.size, prev.prev
        if block.prev is not None:
            block.prev.next = block
    if nxt is not None and not nxt.allocated and nxt.mapped:
        block.pool.remove(nxt)
        block.size += nxt.size
        block.next = nxt.next
        if block.next is not None:
            block.next.prev = block


def _expandable_size(block: _Block) -> int:
    nxt = block.next
    return block.size + (nxt.size if nxt is not None and not nxt.mapped else 0)


def simulate(
    events: Iterable[tuple[int, int] | AllocEvent],
    config: AllocatorConfig = AllocatorConfig(),
    capacity_bytes: int | None = None,
) -> AllocatorResult:
    """Replay allocations and frees through the caching allocator.

    An event is `Alloc(id, nbytes)` / `Free(id)`, or a pair `(id, +nbytes)` for an allocation and
    `(id, -nbytes)` for its free (`(id, 0)` allocates or frees a zero-byte storage, which takes no
    memory). `capacity_bytes` is the device memory the allocator may reserve (None: unlimited); the
    replay stops at the first request that does not fit, and the result says so.
    """
    allocator = CachingAllocator(config, capacity_bytes)
    live: dict[int, int] = {}  # storage id -> address (0 for zero bytes)
    count = 0
    for index, event in enumerate(events):
        count = index + 1
        if isinstance(event, tuple):
            storage, delta = event
            is_free = delta < 0 or (delta == 0 and storage in live)
            nbytes = -delta if is_free else delta
        elif isinstance(event, Alloc):
            storage, nbytes, is_free = event.id, event.nbytes, False
            if nbytes < 0:
                raise UsageError(f"event {index}: storage {storage} allocates {nbytes} bytes")
        else:
            storage, nbytes, is_free = event.id, -1, True
        if is_free:
            address = live.pop(storage, None)
            if address is None:
                raise UsageError(f"event {index}: storage {storage} is freed but not alive")
            if nbytes >= 0 and nbytes != allocator.requested_size(address):
                raise UsageError(
                    f"event {index}: storage {storage} frees {nbytes} bytes"
                    f" but allocated {allocator.requested_size(address)}"
                )
            allocator.free(address)
        else:
            if storage in live:
                raise UsageError(f"event {index}: storage {storage} is allocated again before its free")
            try:
                live[storage] = allocator.malloc(nbytes)
            except OutOfMemory:
                return allocator.result(count, index, nbytes)
    return allocator.result(count)


__all__ = [
    "Alloc",
    "AllocEvent",
    "AllocatorConfig",
    "AllocatorResult",
    "CachingAllocator",
    "Free",
    "OutOfMemory",
    "simulate",
]
