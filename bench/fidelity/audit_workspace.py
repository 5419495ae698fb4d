"""Audit the hidden CPU allocations of aten ops: memory a kernel allocates and frees inside itself.

The tracer sees every aten op's outputs but not the buffers a kernel allocates and frees
before it returns. This script runs a real step (inference forward under ``no_grad``, or a
training forward/backward/optimizer step) under the PyTorch profiler with memory profiling on,
and under a dispatch mode that wraps every op the dispatcher shows Python in a
``record_function("@<call index>|<op>")`` marker. Each allocation the c10 CPU allocator makes
is then a node nested under the marker of the op that made it, so for every op call:

* surviving bytes = allocations made inside the op and not freed before it returns (its outputs);
* transient bytes = max(0, peak of the running sum of allocations inside the op - surviving).

Transient bytes are exactly what ``nnmem.analyses.workspace`` must predict. The script prints,
per (op, input shapes), the calls, the measured transient and the rule's prediction, then the
step's measured peak against the "dispatcher view" (the same allocation stream with every
transient allocation dropped) and the dispatcher view plus the rules.

Usage (2 threads, the benchmark's setting)::

    python bench/fidelity/audit_workspace.py              # every case
    python bench/fidelity/audit_workspace.py cnn lstm     # some cases
    python bench/fidelity/audit_workspace.py --ops cnn    # also list the ops the dispatcher
                                                          # shows, real run vs fake tensors
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch._C._profiler import _EventType, _ProfilerEvent
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from nnmem.analyses.workspace import workspace_bytes

THREADS = 2
SCALAR_BYTES = 16  # a wrapped 0-dim scalar an elementwise op allocates; counted as nothing


# ----------------------------------------------------------------------------- measuring


@dataclasses.dataclass
class OpCall:
    index: int
    op: str
    shapes: str
    output_bytes: int  # new storages among the outputs, as the dispatcher sees them
    predicted: int | None  # the rule's bytes; None = op unknown to the registry
    surviving: int = 0
    transient: int = 0
    freed_before: int = 0  # pre-existing allocations the op freed (e.g. resize_)


def _describe(args: Any, kwargs: Any) -> str:
    parts = []
    for a in tree_flatten((args, kwargs))[0]:
        if isinstance(a, torch.Tensor):
            dt = str(a.dtype).replace("torch.", "")
            nc = "" if a.is_contiguous() else "nc"
            parts.append(f"{dt}{list(a.shape)}{nc}")
    return " ".join(parts)


def _new_storage_bytes(outputs: Any, args: Any, kwargs: Any) -> int:
    seen = {
        a.untyped_storage().data_ptr()
        for a in tree_flatten((args, kwargs))[0]
        if isinstance(a, torch.Tensor) and not a.is_sparse
    }
    total = 0
    for t in tree_flatten(outputs)[0]:
        if isinstance(t, torch.Tensor) and not t.is_sparse:
            ptr = t.untyped_storage().data_ptr()
            if ptr not in seen:
                seen.add(ptr)
                total += t.untyped_storage().nbytes()
    return total


class _Marker(TorchDispatchMode):
    """Wraps each op in a profiler marker; records shapes and the rule's prediction."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[OpCall] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func.namespace == "profiler":  # the optimizer's own record_function markers
            return func(*args, **kwargs)
        index = len(self.calls)
        with record_function(f"@{index}|{func}"):
            out = func(*args, **kwargs)
        predicted = workspace_bytes(func, args, kwargs, out, "cpu", torch.get_num_threads())
        self.calls.append(
            OpCall(
                index, str(func), _describe(args, kwargs), _new_storage_bytes(out, args, kwargs), predicted
            )
        )
        return out


def _walk(node: _ProfilerEvent, marker: int | None) -> Iterator[tuple[int, int | None, int, int]]:
    """Yield (time, marker index, size, ptr) for every allocation event under ``node``."""
    kind, fields = node.typed
    if kind == _EventType.Allocation:
        yield node.start_time_ns, marker, fields.alloc_size, fields.ptr
        return
    if kind == _EventType.TorchOp and node.name.startswith("@") and marker is None:
        marker = int(node.name[1:].split("|", 1)[0])
    for child in node.children:
        yield from _walk(child, marker)


@dataclasses.dataclass
class StepResult:
    calls: list[OpCall]
    measured_peak: int  # peak of allocations made during the step, above its start
    dispatcher_peak: int  # the same stream with every transient allocation dropped
    predicted_peak: int  # dispatcher view plus the rules' bytes at each op
    unmarked_bytes: int  # allocations made outside every marked op (e.g. by the autograd engine)


def profile_step(step: Callable[[], object]) -> StepResult:
    """Run ``step`` once under the profiler and the marker mode; attribute every allocation."""
    marker = _Marker()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof, marker:
        step()
    events = sorted(
        (e for root in prof.profiler.kineto_results.experimental_event_tree() for e in _walk(root, None)),
        key=lambda e: e[0],
    )
    calls = marker.calls
    # Per call: running sum, peak, which pointers survive.
    running: dict[int, int] = collections.defaultdict(int)
    peak: dict[int, int] = collections.defaultdict(int)
    owner: dict[int, tuple[int | None, int]] = {}  # ptr -> (marker, size) of a live allocation
    transient_ptrs: set[tuple[int, int]] = set()  # (ptr, alloc event order) freed inside its op
    live_allocs: dict[int, int] = {}  # ptr -> event order of its allocation
    unmarked = 0
    for order, (_, m, size, ptr) in enumerate(events):
        if size > 0:
            owner[ptr] = (m, size)
            live_allocs[ptr] = order
            if m is None:
                unmarked += size
        elif ptr in owner:
            am, _ = owner.pop(ptr)
            start = live_allocs.pop(ptr)
            if m is not None and am == m:
                transient_ptrs.add((ptr, start))
            elif m is not None:
                calls[m].freed_before -= size
        if m is not None:
            running[m] += size
            peak[m] = max(peak[m], running[m])
    for call in calls:
        survive = running[call.index] + call.freed_before
        call.surviving = survive
        call.transient = max(0, peak[call.index] - survive)
    # Step peaks: measured, dispatcher view (transients dropped), dispatcher view + rules.
    last_event = {m: order for order, (_, m, _, _) in enumerate(events) if m is not None}
    measured = measured_peak = visible = visible_peak = predicted_peak = 0
    dropped: set[int] = set()
    for order, (_, m, size, ptr) in enumerate(events):
        measured += size
        measured_peak = max(measured_peak, measured)
        if size > 0 and (ptr, order) in transient_ptrs:
            dropped.add(ptr)
        elif size < 0 and ptr in dropped:
            dropped.discard(ptr)
        else:
            visible += size
            visible_peak = max(visible_peak, visible)
        predicted_peak = max(predicted_peak, visible)
        if m is not None and last_event[m] == order:
            predicted_peak = max(predicted_peak, visible + (calls[m].predicted or 0))
    return StepResult(calls, measured_peak, visible_peak, predicted_peak, unmarked)


# ----------------------------------------------------------------------------- reporting


def _mib(n: int) -> str:
    return f"{n / 2**20:9.3f}"


def report(name: str, result: StepResult, show_all: bool = False) -> None:
    groups: dict[tuple[str, str], list[OpCall]] = collections.defaultdict(list)
    for call in result.calls:
        groups[(call.op, call.shapes)].append(call)
    print(f"\n=== {name}")
    print(f"{'calls':>5} {'out B':>11} {'transient B':>11} {'rule B':>11}  op  shapes")
    for (op, shapes), calls in groups.items():
        transient = max(c.transient for c in calls)
        rule = [c.predicted for c in calls]
        known = None if any(r is None for r in rule) else max(r or 0 for r in rule)
        if not show_all and max(transient, known or 0) <= SCALAR_BYTES:  # nothing, or a 0-dim scalar
            continue
        if known == transient:
            flag = ""
        elif known is not None and abs(known - transient) <= max(SCALAR_BYTES, 0.05 * transient):
            flag = f"   ({(known - transient) / max(1, transient):+.1%})"
        else:
            flag = "   <-- MISMATCH"
        rule_s = "none" if known is None else str(known)
        print(
            f"{len(calls):5d} {calls[0].output_bytes:11d} {transient:11d} {rule_s:>11}  {op}  {shapes}{flag}"
        )
    surv_mismatch = [c for c in result.calls if c.surviving != c.output_bytes]
    for c in surv_mismatch[:5]:
        print(f"  note: {c.op} survived {c.surviving} B but new output storages are {c.output_bytes} B")
    unknown = collections.Counter(c.op for c in result.calls if c.predicted is None)
    if unknown:
        print("  ops unknown to the registry:", dict(unknown))
    m, d, p = result.measured_peak, result.dispatcher_peak, result.predicted_peak
    print(
        f"  step peak: measured {_mib(m)} MiB | dispatcher view {_mib(d)} MiB ({(d - m) / m:+.1%})"
        f" | + rules {_mib(p)} MiB ({(p - m) / m:+.1%}) | unmarked allocations {_mib(result.unmarked_bytes)} MiB"
    )


def op_names(make: Callable[[], tuple[nn.Module, tuple[Any, ...]]], train: bool, fake: bool) -> list[str]:
    """The ops the dispatcher shows Python for one step, on real tensors or on fake ones."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    names: list[str] = []

    class _Log(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            if func is not torch.ops.prim.device.default:  # fake tensors answer .device here
                names.append(str(func))
            return func(*args, **(kwargs or {}))

    model, inputs = make()
    if fake:
        mode = FakeTensorMode()
        fakes: dict[int, torch.Tensor] = {}  # by id, so that tied weights stay tied
        for module in model.modules():
            for name, p in module._parameters.items():
                if p is not None:
                    if id(p) not in fakes:
                        fakes[id(p)] = nn.Parameter(mode.from_tensor(p), p.requires_grad)
                    module._parameters[name] = fakes[id(p)]  # type: ignore[assignment]
            for name, b in module._buffers.items():
                if b is not None:
                    module._buffers[name] = fakes.setdefault(id(b), mode.from_tensor(b))
            if isinstance(module, nn.RNNBase):
                module._init_flat_weights()  # its list of weights still holds the real ones
        inputs = tuple(mode.from_tensor(x) if isinstance(x, torch.Tensor) else x for x in inputs)
        step = _make_step(model, inputs, train)
        with mode, _Log():
            step()
    else:
        step = _make_step(model, inputs, train)
        with _Log():
            step()
    return names


# ----------------------------------------------------------------------------- cases

Case = Callable[[], tuple[nn.Module, tuple[Any, ...]]]


def _make_step(model: nn.Module, inputs: tuple[Any, ...], train: bool) -> Callable[[], object]:
    """Inference: forward under no_grad. Train: forward, loss, backward, Adam step, zero_grad."""
    if not train:
        model.eval()

        def infer() -> object:
            with torch.no_grad():
                return model(*inputs)

        return infer
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    foreach = getattr(model, "foreach", False)
    optimizer = torch.optim.Adam(params, lr=1e-3, foreach=foreach) if params else None

    def train_step() -> object:
        out = model(*inputs)
        loss = _loss(out)
        loss.backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return None

    return train_step


def _loss(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor) and out.dim() == 0:
        return out
    if hasattr(out, "loss") and out.loss is not None:
        return out.loss  # type: ignore[no-any-return]
    if isinstance(out, tuple):
        out = out[0]
    if hasattr(out, "last_hidden_state"):
        out = out.last_hidden_state
    return out.float().pow(2).mean()


class ClassicCNN(nn.Module):
    """conv3x3-32 same, avgpool2, conv3x3-64 same, avgpool2, fc500, fc10 on 50x50 inputs."""

    def __init__(self, in_channels: int = 1, relu: bool = True) -> None:
        super().__init__()
        act: Callable[[], nn.Module] = nn.ReLU if relu else nn.Identity
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 32, 3, padding=1), act(), nn.AvgPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), act(), nn.AvgPool2d(2),
        )  # fmt: skip
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64 * 12 * 12, 500), act(), nn.Linear(500, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))  # type: ignore[no-any-return]


class WithLoss(nn.Module):
    """A classifier and its cross-entropy loss in one module."""

    def __init__(self, body: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.body = body
        self.num_classes = num_classes

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return nn.functional.cross_entropy(out, target) if self.training else out  # type: ignore[no-any-return]


def cnn(in_channels: int = 1, relu: bool = True, batch: int = 64) -> Case:
    def make() -> tuple[nn.Module, tuple[Any, ...]]:
        model = WithLoss(ClassicCNN(in_channels, relu), 10)
        return model, (torch.randn(batch, in_channels, 50, 50), torch.randint(0, 10, (batch,)))

    return make


def vgg_small() -> tuple[nn.Module, tuple[Any, ...]]:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]  # fmt: skip

    body = nn.Sequential(*block(3, 16), *block(16, 32), nn.Flatten(), nn.Linear(32 * 8 * 8, 10))
    return WithLoss(body, 10), (torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,)))


class ResBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + x)


def resnet_small() -> tuple[nn.Module, tuple[Any, ...]]:
    body = nn.Sequential(
        nn.Conv2d(3, 32, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, padding=1), ResBlock(32), ResBlock(32),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )  # fmt: skip
    return WithLoss(body, 10), (torch.randn(8, 3, 64, 64), torch.randint(0, 10, (8,)))


def vgg16() -> tuple[nn.Module, tuple[Any, ...]]:
    """VGG-16 (configuration D) on one 224x224 image."""
    layers: list[nn.Module] = []
    cin = 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(2))
        else:
            layers += [nn.Conv2d(cin, int(v), 3, padding=1), nn.ReLU(inplace=True)]
            cin = int(v)
    head = [nn.Flatten(), nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Linear(4096, 4096), nn.ReLU(True)]
    body = nn.Sequential(*layers, *head, nn.Linear(4096, 1000))
    return WithLoss(body, 1000), (torch.randn(1, 3, 224, 224), torch.randint(0, 1000, (1,)))


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = 4 * width
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )  # fmt: skip
        self.down = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.down(x))


def resnet50() -> tuple[nn.Module, tuple[Any, ...]]:
    """ResNet-50 on two 128x128 images (small, to keep the run light on 2 cores)."""
    layers: list[nn.Module] = [
        nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1),
    ]  # fmt: skip
    cin = 64
    for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(blocks):
            layers.append(Bottleneck(cin, width, stride if i == 0 else 1))
            cin = 4 * width
    body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 1000))
    return WithLoss(body, 1000), (torch.randn(2, 3, 128, 128), torch.randint(0, 1000, (2,)))


class RNNModel(nn.Module):
    def __init__(self, kind: type[nn.RNNBase]) -> None:
        super().__init__()
        self.rnn = kind(32, 64, num_layers=2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0]  # type: ignore[no-any-return]


def lstm() -> tuple[nn.Module, tuple[Any, ...]]:
    return RNNModel(nn.LSTM), (torch.randn(8, 20, 32),)


def gru() -> tuple[nn.Module, tuple[Any, ...]]:
    return RNNModel(nn.GRU), (torch.randn(8, 20, 32),)


def transformer_encoder() -> tuple[nn.Module, tuple[Any, ...]]:
    layer = nn.TransformerEncoderLayer(64, 4, dim_feedforward=256, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False), (torch.randn(4, 32, 64),)


def gpt2() -> tuple[nn.Module, tuple[Any, ...]]:
    import transformers

    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=1000, n_positions=128)
    model = transformers.GPT2LMHeadModel(config)
    ids = torch.randint(0, 1000, (4, 64))
    return _HF(model), (ids,)


def bert() -> tuple[nn.Module, tuple[Any, ...]]:
    import transformers

    config = transformers.BertConfig(
        num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=256, vocab_size=1000
    )
    model = transformers.BertForMaskedLM(config)
    ids = torch.randint(0, 1000, (4, 64))
    return _HF(model), (ids,)


class _HF(nn.Module):
    """A Hugging Face causal/masked LM called with labels = inputs (loss in train mode)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> Any:
        return self.model(input_ids=ids, labels=ids if self.training else None)


class SDPA(nn.Module):
    def __init__(self, causal: bool) -> None:
        super().__init__()
        self.proj = nn.Linear(32, 3 * 32)
        self.causal = causal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.proj(x).view(b, t, 3, 4, 8).permute(2, 0, 3, 1, 4)
        return nn.functional.scaled_dot_product_attention(q, k, v, is_causal=self.causal)


def sdpa(causal: bool) -> Case:
    return lambda: (SDPA(causal), (torch.randn(4, 256, 32),))


def embedding() -> tuple[nn.Module, tuple[Any, ...]]:
    return nn.Embedding(5000, 64), (torch.randint(0, 5000, (16, 128)),)


def cross_entropy() -> tuple[nn.Module, tuple[Any, ...]]:
    return WithLoss(nn.Linear(64, 1000), 1000), (torch.randn(128, 64), torch.randint(0, 1000, (128,)))


def mlp(foreach: bool) -> Case:
    def make() -> tuple[nn.Module, tuple[Any, ...]]:
        model = nn.Sequential(nn.Linear(256, 1024), nn.GELU(), nn.LayerNorm(1024), nn.Linear(1024, 256))
        model.foreach = foreach  # type: ignore[assignment]
        return model, (torch.randn(64, 256),)

    return make


CASES: dict[str, tuple[Case, tuple[bool, ...]]] = {
    "cnn": (cnn(1, True), (False, True)),
    "cnn_norelu": (cnn(1, False), (False, True)),
    "cnn_rgb": (cnn(3, True), (False, True)),
    "vgg_small": (vgg_small, (False, True)),
    "vgg16": (vgg16, (False,)),
    "resnet50": (resnet50, (True,)),
    "resnet_small": (resnet_small, (False, True)),
    "lstm": (lstm, (False, True)),
    "gru": (gru, (False, True)),
    "transformer_encoder": (transformer_encoder, (False, True)),
    "gpt2": (gpt2, (False, True)),
    "bert": (bert, (False, True)),
    "sdpa": (sdpa(False), (False, True)),
    "sdpa_causal": (sdpa(True), (False, True)),
    "embedding": (embedding, (True,)),
    "cross_entropy": (cross_entropy, (True,)),
    "adam_forloop": (mlp(False), (True,)),
    "adam_foreach": (mlp(True), (True,)),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("cases", nargs="*", help=f"cases to run (default: all of {', '.join(CASES)})")
    parser.add_argument("--all", action="store_true", help="list every op, not only those with a transient")
    parser.add_argument("--ops", action="store_true", help="compare the op sequence of a real and a fake run")
    options = parser.parse_args()
    torch.set_num_threads(THREADS)
    for name in options.cases or list(CASES):
        make, modes = CASES[name]
        for train in modes:
            torch.manual_seed(0)
            model, inputs = make()
            step = _make_step(model, inputs, train)
            step()  # warm-up: optimizer state, oneDNN primitive caches
            title = f"{name} {'train' if train else 'inference'} (threads={torch.get_num_threads()})"
            report(title, profile_step(step), options.all)
            if options.ops:
                real = op_names(make, train, fake=False)
                fake = op_names(make, train, fake=True)
                if real == fake:
                    print(f"  real and fake runs show the same {len(real)} ops")
                else:
                    print(f"  OP PATHS DIFFER: real {collections.Counter(real) - collections.Counter(fake)}")
                    print(f"                   fake {collections.Counter(fake) - collections.Counter(real)}")


if __name__ == "__main__":
    main()
