"""`nnmem.estimate`: trace one step of a model on fake tensors and report its memory."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch._subclasses.fake_tensor import (
    DataDependentOutputException,
    DynamicOutputShapeException,
    FakeTensorMode,
    UnsupportedOperatorException,
)
from torch.utils._pytree import tree_flatten

from nnmem.analyses.allocator import AllocatorConfig
from nnmem.categories import Category, Mode, Phase
from nnmem.errors import ModelError, NnmemError, TraceError, UsageError
from nnmem.gpus import Gpu
from nnmem.options import parse_amp, parse_device, parse_dtype, parse_mode
from nnmem.report import LayerRow, Report
from nnmem.timeline import alive_at, describe_peak, levels, peak_index, timeline_points
from nnmem.trace.cuda import CudaKernels, cuda_kernels, cuda_step
from nnmem.trace.fake import fake_inputs, fake_parameters
from nnmem.trace.optimizers import Implementation, OptimizerFactory, lookup
from nnmem.trace.step import LossFn, StepConfig, module_names, run_step
from nnmem.trace.tracker import ShortfallRule, StorageTracker, Trace, WorkspaceRule

ModelLike = torch.nn.Module | Callable[[], torch.nn.Module]

_DATA_DEPENDENT = (DataDependentOutputException, DynamicOutputShapeException)


def step_config(
    mode: str | Mode,
    optimizer: str | OptimizerFactory,
    loss: LossFn | None,
    device: str,
    amp: str | torch.dtype | None,
    accumulate: int,
    set_to_none: bool,
    implementation: str | Implementation,
    steps: int | None,
    new_tokens: int = 0,
) -> StepConfig:
    """Check the user's step options and gather them (shared with `nnmem.measure`)."""
    parsed_mode = parse_mode(mode)
    if isinstance(optimizer, str):
        optimizer = lookup(optimizer).name
    elif not callable(optimizer):
        raise UsageError("optimizer must be a name or a callable params -> torch.optim.Optimizer")
    if accumulate < 1:
        raise UsageError(f"accumulate must be at least 1, not {accumulate}")
    try:
        impl = Implementation(str(implementation).lower())
    except ValueError:
        names = ", ".join(i.value for i in Implementation)
        raise UsageError(f"unknown optimizer implementation '{implementation}' (known: {names})") from None
    if new_tokens < 0:
        raise UsageError(f"new_tokens must be 0 or more, not {new_tokens}")
    if new_tokens and parsed_mode is not Mode.GENERATE:
        raise UsageError("new_tokens goes with mode='generate'")
    if steps is None:
        steps = 2 if parsed_mode is Mode.TRAIN else 1
    return StepConfig(
        mode=parsed_mode,
        optimizer=optimizer,
        implementation=impl,
        device=parse_device(device),
        amp=parse_amp(amp),
        accumulate=accumulate,
        set_to_none=set_to_none,
        steps=steps,
        loss=loss,
        new_tokens=new_tokens,
    )


def build_model(model: ModelLike, on_meta: bool = True) -> torch.nn.Module:
    """The model itself, or what a zero-argument factory builds (on the meta device)."""
    if isinstance(model, torch.nn.Module):
        return model
    if not callable(model):
        raise UsageError(
            f"model must be an nn.Module or a zero-argument callable, not {type(model).__name__}"
        )
    try:
        if on_meta:
            with torch.device("meta"):
                built = model()
        else:
            built = model()
    except NnmemError:
        raise
    except Exception as error:
        name = getattr(model, "__qualname__", repr(model))
        raise ModelError(
            f"building the model with {name}() failed: {type(error).__name__}: {error}"
        ) from error
    if not isinstance(built, torch.nn.Module):
        raise ModelError(f"the model factory returned a {type(built).__name__}, not a torch.nn.Module")
    return built


def estimate(
    model: ModelLike,
    inputs: Any,
    mode: str | Mode = "train",
    optimizer: str | OptimizerFactory = "adam",
    loss: LossFn | None = None,
    device: str = "cuda",
    *,
    dtype: str | torch.dtype | None = None,
    amp: str | torch.dtype | None = None,
    accumulate: int = 1,
    set_to_none: bool = True,
    implementation: str | Implementation = "auto",
    steps: int | None = None,
    threads: int | None = None,
    workspace: bool = True,
    new_tokens: int = 0,
    gpu: Gpu | str | None = None,
    allocator: AllocatorConfig | str | None = None,
    parallel: str | None = None,
    world_size: int | None = None,
) -> Report:
    """Trace one step of `model` on `inputs` with fake tensors; no memory is allocated.

    `inputs` is a tensor, a tuple of positional tensors or a dict of keyword tensors,
    real or on the meta device. With `dtype`, floating parameters, buffers and inputs
    take that dtype. `amp` ("bf16"/"fp16") runs forward and loss under autocast.
    `accumulate` micro-batches run before each optimizer step. For training, two steps
    are traced by default and `peak_bytes` is the last one's (the steady state).
    For device "cuda", the trace takes the kernels CUDA would run (on `gpu`, a catalogue name,
    else a generic sm80 GPU) and the report adds the caching allocator's reserved bytes
    (`allocator`: PYTORCH_CUDA_ALLOC_CONF settings); see docs/gpu.md.
    With `parallel` ("ddp", "fsdp", "tp=2", "fsdp=8,tp=2", ...; see docs/parallel.md) the
    step is spread over `world_size` ranks and the result is a `ParallelReport`: the worst
    rank's report, with every rank's; `inputs` are then one rank's inputs.
    """
    if parallel is not None or world_size is not None:
        from nnmem.parallel import estimate_parallel

        if parallel is None:
            raise UsageError("world_size needs parallel=... (ddp, fsdp, tp=N, ...)")
        if new_tokens:
            raise UsageError("parallel estimates cover training and inference steps, not generation")
        return estimate_parallel(
            model,
            inputs,
            parallel,
            world_size,
            mode,
            optimizer,
            loss,
            device,
            dtype=dtype,
            amp=amp,
            accumulate=accumulate,
            set_to_none=set_to_none,
            implementation=implementation,
            steps=steps,
            threads=threads,
            workspace=workspace,
        )
    config = step_config(
        mode, optimizer, loss, device, amp, accumulate, set_to_none, implementation, steps, new_tokens
    )
    param_dtype = parse_dtype(dtype)
    module = build_model(model)
    threads = threads or torch.get_num_threads()
    rule = workspace_rule(config.device, threads) if workspace else None
    kernels = cuda_kernels(config.device, gpu)
    trace, output_shapes, parameter_count = run_trace(
        module,
        inputs,
        config,
        param_dtype,
        rule,
        shortfall_rule(config.device) if workspace else None,
        kernels,
    )
    report = make_report(trace, module, config, param_dtype, output_shapes, parameter_count, threads)
    if kernels is None:
        return report
    from nnmem.analyses.cuda_memory import parse_allocator, with_cuda_memory

    return with_cuda_memory(report, trace, kernels, parse_allocator(allocator))


def workspace_rule(backend: str, threads: int) -> WorkspaceRule | None:
    try:
        from nnmem.analyses import workspace
    except ImportError:  # the rules are optional while they are being written
        return None

    def rule(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any], out: Any) -> int | None:
        return workspace.workspace_bytes(func, args, kwargs, out, backend=backend, threads=threads)

    return rule


def shortfall_rule(backend: str) -> ShortfallRule | None:
    """What real CPU kernels' outputs hold beyond their fake kernels' (an LSTM's workspace)."""
    if backend != "cpu":
        return None
    from nnmem.analyses import workspace

    return workspace.fake_output_shortfall_bytes


def run_trace(
    module: torch.nn.Module,
    inputs: Any,
    config: StepConfig,
    param_dtype: torch.dtype | None,
    rule: WorkspaceRule | None,
    shortfall: ShortfallRule | None = None,
    kernels: CudaKernels | None = None,
) -> tuple[Trace, dict[str, tuple[int, ...]], int]:
    """Trace `config`'s step of `module` on fakes of `inputs`.

    For device "cuda", attention and autocast follow `kernels` (default: a generic sm80 GPU).

    Returns the raw trace (every storage's birth, death and size, in order: what the
    allocator analyses replay), each module's output shape, and the parameter count.
    """
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    if kernels is None:
        kernels = cuda_kernels(config.device)
    cuda = cuda_step(kernels, config.amp is not None) if kernels else contextlib.nullcontext()
    tracker = StorageTracker(rule, shortfall)
    output_shapes: dict[str, tuple[int, ...]] = {}
    with fake_parameters(module, fake_mode, param_dtype):
        parameter_count = count_parameters(module)
        params = dict(module.named_parameters())
        buffers = dict(module.named_buffers())
        fake_in = fake_inputs(inputs, fake_mode, param_dtype)
        tracker.register(params, Category.PARAMETER)
        tracker.register(buffers, Category.BUFFER)
        leaves = [t for t in tree_flatten(fake_in)[0] if isinstance(t, torch.Tensor)]
        tracker.register({f"input{i}": t for i, t in enumerate(leaves)}, Category.INPUT)
        try:
            # The fake-tensor dispatch cache costs more in keys than it saves here (a
            # 4-layer Llama traces in 1.6 s without it, 4.4 s with it; bench/scale).
            with (
                torch._dynamo.config.patch(fake_tensor_cache_enabled=False),
                quiet_fake_tensor_log(),
                fake_mode,
                tracker,
                cuda,
                module_names(module, tracker.module_stack, output_shapes),
            ):
                run_step(module, fake_in, config, tracker)
        except NnmemError:
            raise
        except _DATA_DEPENDENT as error:
            raise TraceError(
                f"{_where(tracker)}: the op {tracker.last_op} needs the tensor's values, which fake"
                " tensors do not have (.item(), nonzero, masked indexing, or Python control flow on"
                " a tensor). Make that part of the model independent of the data, or measure it"
                " for real with `nnmem measure`."
            ) from error
        except UnsupportedOperatorException as error:
            raise TraceError(
                f"{_where(tracker)}: the op {error.func} has no fake-tensor implementation in this"
                " PyTorch; it cannot be traced without running it. Use `nnmem measure` instead."
            ) from error
        except Exception as error:
            raise ModelError(
                f"{_where(tracker)}: running the model on the given inputs failed during"
                f" {tracker.phase}: {type(error).__name__}: {error}"
            ) from error
        finally:
            tracker.close()
    return tracker.trace, output_shapes, parameter_count


def _where(tracker: StorageTracker) -> str:
    module = tracker.failed_in or tracker.module
    return f"in module '{module}'" if not module.startswith("(") else f"in {module.strip('()')}"


@contextlib.contextmanager
def quiet_fake_tensor_log() -> Iterator[None]:
    """FakeTensorMode logs a traceback for each failing meta kernel; our error says it all."""
    logger = logging.getLogger("torch._subclasses.fake_tensor")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def count_parameters(module: torch.nn.Module) -> int:
    """Parameter elements, tied (shared) parameters counted once."""
    return sum(p.numel() for p in module.parameters())


def make_report(
    trace: Trace,
    module: torch.nn.Module,
    config: StepConfig,
    param_dtype: torch.dtype | None,
    output_shapes: dict[str, tuple[int, ...]],
    parameter_count: int,
    threads: int,
) -> Report:
    lv = levels(trace)
    last = config.steps

    def in_step(step: int) -> Callable[[int], bool]:
        return lambda i: trace.events[i].step == step and trace.events[i].phase is not Phase.SETUP

    steady_at = peak_index(trace, lv, in_step(last))
    if steady_at is None:
        raise TraceError("the step ran no operation that allocates memory; nothing to report")
    steady = describe_peak(trace, lv, *steady_at)
    first = None
    if config.mode is Mode.TRAIN and last > 1:
        first_at = peak_index(trace, lv, in_step(1))
        first = describe_peak(trace, lv, *first_at) if first_at else None
    layers = _layer_rows(trace, lv.categories, module, output_shapes, steady_at[0])
    notes = []
    if config.device == "cuda":
        notes.append(
            "device=cuda: traced on CPU fakes with CUDA's kernel choices (attention backend,"
            " autocast lists, optimizer defaults); cuDNN workspaces are not counted (docs/gpu.md)"
        )
    unknown = tuple(
        sorted(((op, mod, n) for (op, mod), n in trace.unknown_ops.items()), key=lambda item: -item[2])
    )
    settings = config.settings(param_dtype, threads)
    if config.mode is Mode.TRAIN and isinstance(config.optimizer, str) and lookup(config.optimizer).note:
        notes.append(lookup(config.optimizer).note)
    timeline = timeline_points(trace, lv)
    # the KV cache as generation leaves it: at the last event before the closing setup phase
    kv_cache_bytes = next(
        (p.categories.kv_cache for p in reversed(timeline) if p.phase is not Phase.SETUP), 0
    )
    return Report(
        peak_bytes=steady.bytes,
        mode=config.mode,
        device=config.device,
        source="estimate",
        steady=steady,
        first_step=first,
        parameters=parameter_count,
        layers=layers,
        unknown_ops=unknown,
        notes=tuple(notes),
        settings=settings,
        timeline=timeline,
        kv_cache_bytes=kv_cache_bytes,
    )


def _layer_rows(
    trace: Trace,
    categories: list[Category],
    module: torch.nn.Module,
    output_shapes: dict[str, tuple[int, ...]],
    peak_at: int,
) -> tuple[LayerRow, ...]:
    created: dict[str, int] = {}
    activations: dict[str, int] = {}
    for record, nbytes in alive_at(trace, peak_at).items():
        name = trace.records[record].module
        created[name] = created.get(name, 0) + nbytes
        if categories[record] is Category.ACTIVATION:
            activations[name] = activations.get(name, 0) + nbytes
    seen: set[int] = set()
    rows = []
    for name, child in module.named_modules():
        own = [p for p in child.parameters(recurse=False) if id(p) not in seen]
        seen.update(id(p) for p in own)
        rows.append(
            LayerRow(
                name=name,
                kind=type(child).__name__,
                output_shape=output_shapes.get(name),
                parameters=sum(p.numel() for p in own),
                parameter_bytes=sum(p.numel() * p.element_size() for p in own),
                activation_bytes=activations.get(name, 0),
                created_bytes=created.get(name, 0),
            )
        )
    return tuple(rows)
