"""Follow every storage from birth to death while a step runs on fake tensors.

`StorageTracker` is a `TorchDispatchMode`. Pushed inside a `FakeTensorMode`, it sees
each aten op the step runs; every output storage it has not seen before is a birth,
and a weakref finalizer on the untyped storage reports its death. Nothing is
allocated: the storages are fake. What it records is plain data (`Trace`), turned
into a timeline and a report by `nnmem.timeline`.

Categories are settled after the step from what the storages turned out to be:
parameters, buffers and inputs are registered before the step; a storage that ends
up as some parameter's `.grad` is a gradient; one held in `optimizer.state` is
optimizer state; one born in the forward pass and still alive when the forward pass
ends was saved for backward (an activation); the rest are temporaries.

Tensors made outside the dispatcher show in no op; the one kind a step keeps, the RNG states
`torch.get_rng_state` returns (activation checkpointing holds them), is adopted by the tracker
while it is active.

Known limitations: a storage resized outside the dispatcher (`untyped_storage().resize_`)
is seen only when someone reports it (`storage_resized`; the parallel traces wrap
`UntypedStorage.resize_` for FSDP2, `nnmem.parallel.patches`); buffers that a kernel
allocates and frees inside itself are not seen either, which is what the workspace
rules (`nnmem.analyses.workspace`) add back.
"""

from __future__ import annotations

import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode, is_traceable_wrapper_subclass
from torch.utils._pytree import tree_flatten

from nnmem.categories import Category, Phase

#: A rule for the memory a kernel allocates and frees inside itself:
#: (func, args, kwargs, outputs) -> bytes, or None when the op is unknown to the rules.
WorkspaceRule = Callable[[Any, tuple[Any, ...], dict[str, Any], Any], "int | None"]


_GET_RNG_STATE = "get_rng_state"  # torch.get_rng_state, also torch.random.get_rng_state

#: Bytes a real kernel's outputs hold that its fake kernel does not show (an LSTM's
#: oneDNN workspace): (func, args, kwargs) -> bytes, added to the op's last output.
ShortfallRule = Callable[[Any, tuple[Any, ...], dict[str, Any]], int]


@dataclass
class StorageRecord:
    """One storage's life. Mutable while tracing; read-only afterwards."""

    index: int
    nbytes: int
    category: Category | None  # None: settled after the step
    module: str
    op: str
    phase: Phase
    step: int
    micro: int
    birth: int  # index of its first event; -1 when alive before the step began
    death: int | None = None  # index of its freeing event
    nbytes_at_start: int = 0  # for records alive before the step: their size then


@dataclass(frozen=True)
class Event:
    """A change of live bytes: a birth (+), a death (-) or a resize."""

    record: int
    delta: int
    phase: Phase
    step: int
    module: str


@dataclass
class Trace:
    """Everything the tracker saw, in order."""

    records: list[StorageRecord] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    baseline: list[int] = field(default_factory=list)  # records alive before the first event
    forward_ends: list[tuple[int, int]] = field(default_factory=list)  # (start, end) events
    gradient_records: set[int] = field(default_factory=set)
    optimizer_records: set[int] = field(default_factory=set)
    kv_cache_records: set[int] = field(default_factory=set)
    unknown_ops: Counter[tuple[str, str]] = field(default_factory=Counter)  # (op, module)
    op_count: int = 0


def plain_tensors(tensor: torch.Tensor) -> list[torch.Tensor]:
    """The tensors that hold `tensor`'s memory: itself, or for a wrapper subclass (DTensor,
    FSDP2's sharded parameters) the inner tensors it wraps, which own the storages."""
    if is_traceable_wrapper_subclass(tensor):
        names, _ = tensor.__tensor_flatten__()
        inner = [getattr(tensor, name) for name in names]  # DTensor also names its device mesh
        return [t for value in inner if isinstance(value, torch.Tensor) for t in plain_tensors(value)]
    return [tensor]


def _plain(values: Iterable[Any]) -> list[torch.Tensor]:
    return [p for t in values if isinstance(t, torch.Tensor) for p in plain_tensors(t)]


def _storage_key(tensor: torch.Tensor) -> tuple[int, torch.UntypedStorage] | None:
    if not isinstance(tensor, torch.Tensor) or tensor.is_sparse:
        return None
    storage = tensor.untyped_storage()
    return storage._cdata, storage


class StorageTracker(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """Record the birth, death and size of every storage an op creates."""

    def __init__(
        self, workspace_rule: WorkspaceRule | None = None, shortfall_rule: ShortfallRule | None = None
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._shortfall_rule = shortfall_rule
        self.trace = Trace()
        self._live: dict[int, int] = {}  # storage _cdata -> record index
        self._finalizers: dict[int, weakref.finalize[Any, Any]] = {}
        self._workspace_rule = workspace_rule
        self.phase = Phase.SETUP
        self.step = 0
        self.micro = 0
        self.module_stack: list[str] = []
        self.owners: dict[int, str] = {}  # id(parameter) -> the module that owns it
        self.failed_in: str | None = None  # the module running when an op raised
        self.last_op = ""
        self._forward_start: int | None = None

    # -- what the step runner tells us -------------------------------------------------
    @property
    def module(self) -> str:
        """The module running now; outside any module, the phase in parentheses."""
        if self.module_stack:
            return self.module_stack[-1] or "(model)"
        return f"({self.phase})"

    def set_phase(self, phase: Phase, step: int, micro: int = 0) -> None:
        now = len(self.trace.events)
        if self.phase is Phase.FORWARD and self._forward_start is not None:
            self.trace.forward_ends.append((self._forward_start, now))
            self._forward_start = None
        if phase is Phase.FORWARD:
            self._forward_start = now
        self.phase, self.step, self.micro = phase, step, micro

    def register(self, tensors: Mapping[str, torch.Tensor], category: Category) -> None:
        """Adopt tensors that exist before the step (parameters, buffers, inputs), by name.

        A parameter's or buffer's memory is attributed to the module that owns it. A storage
        seen already (say a DDP bucket, first met as an op's input) takes `category`.
        """
        for name, tensor in tensors.items():
            owner = name.rpartition(".")[0] if category is not Category.INPUT else "(inputs)"
            if category is Category.PARAMETER:
                self.owners[id(tensor)] = owner
            self._adopt(tensor, category, owner, op=name)
            for plain in plain_tensors(tensor):
                key = _storage_key(plain)
                if key is not None and key[0] in self._live:
                    self.trace.records[self._live[key[0]]].category = category

    def mark(self, tensors: Iterable[torch.Tensor], category: Category, owner: str | None = None) -> None:
        """Note that the storages of `tensors` are gradients or optimizer state (of `owner`)."""
        target = {
            Category.GRADIENT: self.trace.gradient_records,
            Category.OPTIMIZER_STATE: self.trace.optimizer_records,
            Category.KV_CACHE: self.trace.kv_cache_records,
        }[category]
        for tensor in _plain(tensors):
            key = _storage_key(tensor)
            if key is not None and key[0] in self._live:
                index = self._live[key[0]]
                target.add(index)
                if owner is not None:
                    self.trace.records[index].module = owner

    def saw_gradients(self, params: list[torch.nn.Parameter]) -> None:
        for param in params:
            if param.grad is not None:
                self.mark([param.grad], Category.GRADIENT, self.owners.get(id(param)))

    def saw_optimizer_state(self, optimizer: torch.optim.Optimizer) -> None:
        for param, state in optimizer.state.items():
            tensors = [v for v in state.values() if isinstance(v, torch.Tensor)]
            self.mark(tensors, Category.OPTIMIZER_STATE, self.owners.get(id(param)))

    def saw_kv_cache(self, tensors: list[torch.Tensor]) -> None:
        self.mark(tensors, Category.KV_CACHE)

    def storage_resized(
        self, storage: torch.UntypedStorage, before: int, category: Category | None = None
    ) -> None:
        """A storage changed size outside the dispatcher (`untyped_storage().resize_`, how
        FSDP2 frees and refills unsharded parameters); `before` is its size in bytes before.
        A storage not seen yet is taken as alive at `before` bytes since the start."""
        now = int(storage.nbytes())
        cdata = storage._cdata
        if cdata not in self._live:
            record = self._new_record(before, category, self.module, "(resized storage)")
            record.birth, record.nbytes_at_start = -1, before
            self.trace.baseline.append(record.index)
            self._live[cdata] = record.index
            self._finalizers[cdata] = weakref.finalize(storage, self._on_death, cdata, record.index)
        record = self.trace.records[self._live[cdata]]
        if category is not None:
            record.category = category
        if now != record.nbytes:
            self._emit(record.index, now - record.nbytes)
            record.nbytes = now

    # -- the dispatcher's view ---------------------------------------------------------
    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        self.last_op = str(func)
        self.trace.op_count += 1
        inputs = _plain(tree_flatten((args, kwargs))[0])
        for tensor in inputs:  # tensors made outside the step's view: constants the model holds
            key = _storage_key(tensor)
            if key is not None and key[0] not in self._live:
                self._adopt(tensor, Category.BUFFER, self.module, op="(held by the model)", at_start=True)
        mutable = func._schema.is_mutable
        sizes_before = (  # storage and its size, by _cdata (the storage object sees a resize)
            {key[0]: (key[1], key[1].nbytes()) for key in map(_storage_key, inputs) if key is not None}
            if mutable
            else {}
        )
        try:
            out = func(*args, **kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = self.module
            raise
        for tensor in _plain(tree_flatten(out)[0]):
            key = _storage_key(tensor)
            if key is not None and key[0] not in self._live:
                self._adopt(tensor, None, self.module, op=str(func))
        for cdata, (storage, before) in sizes_before.items():  # in-place resizes (out=, resize_)
            if cdata in self._live:
                record = self.trace.records[self._live[cdata]]
                now = int(storage.nbytes())
                if now != before:
                    self._emit(record.index, now - record.nbytes)
                    record.nbytes = now
        if self._shortfall_rule is not None:
            self._make_up_shortfall(func, args, kwargs, out)
        if self._workspace_rule is not None:
            extra = self._workspace_rule(func, args, kwargs, out)
            if extra is None:
                self.trace.unknown_ops[(str(func), self.module)] += 1
            elif extra > 0:
                self._transient(extra, str(func))
        return out

    # -- bookkeeping -------------------------------------------------------------------
    def _emit(self, record: int, delta: int) -> None:
        self.trace.events.append(Event(record, delta, self.phase, self.step, self.module))

    def _new_record(self, nbytes: int, category: Category | None, module: str, op: str) -> StorageRecord:
        record = StorageRecord(
            index=len(self.trace.records),
            nbytes=nbytes,
            category=category,
            module=module,
            op=op,
            phase=self.phase,
            step=self.step,
            micro=self.micro,
            birth=len(self.trace.events),
        )
        self.trace.records.append(record)
        return record

    def _adopt(
        self,
        tensor: torch.Tensor,
        category: Category | None,
        module: str,
        op: str,
        at_start: bool = False,
    ) -> None:
        if is_traceable_wrapper_subclass(tensor):
            for inner in plain_tensors(tensor):
                self._adopt(inner, category, module, op, at_start)
            return
        key = _storage_key(tensor)
        if key is None or key[0] in self._live:
            return
        cdata, storage = key
        record = self._new_record(int(storage.nbytes()), category, module, op)
        if at_start or self.phase is Phase.SETUP:  # alive before the step began
            record.birth = -1
            record.nbytes_at_start = record.nbytes
            self.trace.baseline.append(record.index)
        else:
            self._emit(record.index, record.nbytes)
        self._live[cdata] = record.index
        self._finalizers[cdata] = weakref.finalize(storage, self._on_death, cdata, record.index)

    # -- tensors made outside the dispatcher ------------------------------------------
    def __enter__(self) -> StorageTracker:
        """Also adopt the tensors `torch.get_rng_state` returns while the step runs.

        It builds its ByteTensor in C++ without the dispatcher, so no op shows it, and it is a
        real tensor even under fake tensors. Activation checkpointing keeps one per checkpointed
        call until its recomputation (5,056 bytes for the CPU generator), and `fork_rng`
        takes another during the recomputation (torch/utils/checkpoint.py, torch/random.py).
        """
        original = getattr(torch, _GET_RNG_STATE)

        def get_rng_state() -> torch.Tensor:
            state: torch.Tensor = original()
            self._adopt(state, None, self.module, op="torch.get_rng_state")
            return state

        self._restore_rng = original
        for module in (torch, torch.random):
            setattr(module, _GET_RNG_STATE, get_rng_state)
        return super().__enter__()  # type: ignore[no-any-return,no-untyped-call]

    def __exit__(self, *exc: object) -> None:
        for module in (torch, torch.random):
            setattr(module, _GET_RNG_STATE, self._restore_rng)
        super().__exit__(*exc)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        """Stop listening: deaths after this are not part of the step."""
        for finalizer in self._finalizers.values():
            finalizer.detach()
        self._finalizers.clear()
        self._live.clear()

    def _make_up_shortfall(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> None:
        assert self._shortfall_rule is not None
        missing = self._shortfall_rule(func, args, kwargs)
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if missing <= 0 or not outputs:
            return
        key = _storage_key(outputs[-1])
        if key is not None and key[0] in self._live:
            record = self.trace.records[self._live[key[0]]]
            self._emit(record.index, missing)
            record.nbytes += missing

    def _transient(self, nbytes: int, op: str) -> None:
        record = self._new_record(nbytes, Category.WORKSPACE, self.module, op)
        self._emit(record.index, nbytes)
        record.death = len(self.trace.events)
        self._emit(record.index, -nbytes)

    def _on_death(self, cdata: int, index: int) -> None:
        if self._live.get(cdata) != index:
            return
        del self._live[cdata]
        self._finalizers.pop(cdata, None)
        record = self.trace.records[index]
        record.death = len(self.trace.events)
        self._emit(index, -record.nbytes)
