"""What a trace on fake tensors must see or skip that PyTorch's wrappers do outside the dispatcher.

- `watch_storage_resizes`: FSDP2 frees an unsharded parameter with
  `untyped_storage().resize_(0)` and refills it with `resize_(size)`. That is not an aten
  op, so the tracker would never see the memory come and go (and would overcount by
  the full unsharded size); during the trace `UntypedStorage.resize_` reports to it.
- `no_bucket_rebuild`: after its first backward DDP rebuilds its buckets in gradient
  order and broadcasts the new order from rank 0, which reads tensor data. The rebuilt
  buckets hold the same gradients in the same bytes (CPU and CUDA buckets are not
  padded), so the trace keeps the first assignment.
- `real_meshes`: FSDP2 over tensor parallel joins the data and tensor meshes while it
  shards, and a new mesh finds its rank with `nonzero`; under `FakeTensorMode` that has no
  answer, so new meshes are computed on real (tiny) tensors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from nnmem.categories import Category
from nnmem.trace.tracker import StorageTracker


@contextlib.contextmanager
def watch_storage_resizes(tracker: StorageTracker, category: Category = Category.PARAMETER) -> Iterator[None]:
    """Within the block, every `UntypedStorage.resize_` is told to `tracker` (as `category`)."""
    original = torch.UntypedStorage.resize_

    def resize_(self: torch.UntypedStorage, size: int) -> Any:
        before = int(self.nbytes())
        result = original(self, size)
        tracker.storage_resized(self, before, category)
        return result

    torch.UntypedStorage.resize_ = resize_  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        torch.UntypedStorage.resize_ = original  # type: ignore[method-assign]


@contextlib.contextmanager
def no_bucket_rebuild() -> Iterator[None]:
    """Within the block, DDP's reducer keeps its first bucket assignment."""
    from torch._C._distributed_c10d import Reducer as reducer

    original = reducer._rebuild_buckets

    def keep(self: Any) -> bool:
        return False

    reducer._rebuild_buckets = keep  # type: ignore[method-assign]
    try:
        yield
    finally:
        reducer._rebuild_buckets = original  # type: ignore[method-assign]


@contextlib.contextmanager
def real_meshes() -> Iterator[None]:
    """Within the block, new device meshes are computed on real tensors, even inside
    `FakeTensorMode`: FSDP2 over tensor parallel joins the two meshes while it shards
    (`DeviceMesh._concatenate`), and a mesh finds its rank's coordinates with `nonzero`,
    which fake tensors cannot answer. Mesh tensors are tiny (one integer per rank)."""
    from torch._subclasses.fake_tensor import unset_fake_temporarily
    from torch.distributed.device_mesh import DeviceMesh

    originals = {
        name: DeviceMesh.__dict__[name] for name in ("_concatenate", "_compute_coordinates_from_mesh")
    }

    def real(function: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            with unset_fake_temporarily():
                return function(*args, **kwargs)

        return staticmethod(call)

    for name, original in originals.items():
        setattr(DeviceMesh, name, real(original.__func__))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(DeviceMesh, name, original)
