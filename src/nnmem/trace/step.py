"""The step itself, run the same way for the estimate (on fake tensors) and for the
measurement (on real ones), so that both see exactly the same program.

Training is, for each of `steps` steps and each of `accumulate` micro-batches:
`loss = loss_fn(model(*inputs))` (divided by `accumulate` when it is above 1),
`loss.backward()`; then `optimizer.step()` and `optimizer.zero_grad(set_to_none=...)`.
Inference is `model.eval()` and one forward pass under `torch.no_grad()`.
An `Observer` is told where the step is, so it can split the step into phases.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from nnmem.categories import Mode, Phase
from nnmem.options import dtype_name
from nnmem.trace.optimizers import Implementation, OptimizerFactory, make_optimizer

LossFn = Callable[[Any], torch.Tensor]


class Observer(Protocol):
    """Told where the step is and what the gradients and optimizer state are."""

    def set_phase(self, phase: Phase, step: int, micro: int = 0) -> None: ...

    def saw_gradients(self, params: list[torch.nn.Parameter]) -> None: ...

    def saw_optimizer_state(self, optimizer: torch.optim.Optimizer) -> None: ...

    def saw_kv_cache(self, tensors: list[torch.Tensor]) -> None: ...


@dataclass(frozen=True)
class StepConfig:
    """What step to run. Plain data, so it can cross into a measuring subprocess."""

    mode: Mode = Mode.TRAIN
    optimizer: str | OptimizerFactory = "adam"
    implementation: Implementation = Implementation.AUTO
    device: str = "cpu"  # whose defaults to follow (optimizer implementation)
    amp: torch.dtype | None = None
    accumulate: int = 1
    set_to_none: bool = True
    steps: int = 2
    loss: LossFn | None = None
    new_tokens: int = 0  # generation: tokens decoded after the prefill

    def settings(self, param_dtype: torch.dtype | None, threads: int) -> tuple[tuple[str, str], ...]:
        """What was modelled, as (name, value) words for reports."""
        optimizer = self.optimizer if isinstance(self.optimizer, str) else "custom"
        return (
            ("optimizer", optimizer if self.mode is Mode.TRAIN else "none"),
            ("implementation", str(self.implementation)),
            ("dtype", dtype_name(param_dtype) if param_dtype else "as built"),
            ("amp", dtype_name(self.amp) if self.amp else "off"),
            ("accumulate", str(self.accumulate)),
            ("steps", str(self.steps)),
            ("threads", str(threads)),
        )


def default_loss(output: Any) -> torch.Tensor:
    """`output.loss` if the model returns one, else the sum of its (first) tensor."""
    loss = getattr(output, "loss", None)
    if isinstance(loss, torch.Tensor):
        return loss
    if isinstance(output, torch.Tensor):
        return output.sum()
    if isinstance(output, dict):
        output = list(output.values())
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, torch.Tensor) and item.is_floating_point():
                return item.sum()
    raise TypeError(
        f"cannot make a loss from a model output of type {type(output).__name__};"
        " pass loss=callable(output) -> scalar tensor"
    )


def call_model(model: torch.nn.Module, inputs: Any) -> Any:
    """Call `model` with a tensor, a tuple of positional tensors or a dict of keywords."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def _autocast(config: StepConfig, model: torch.nn.Module) -> contextlib.AbstractContextManager[Any]:
    """Autocast on the device the model's tensors are on (CPU fakes when tracing)."""
    if config.amp is None:
        return contextlib.nullcontext()
    first = next(model.parameters(), None)
    device = first.device.type if first is not None else "cpu"
    return torch.autocast(device_type=device, dtype=config.amp)


def run_step(model: torch.nn.Module, inputs: Any, config: StepConfig, observer: Observer) -> None:
    """Run the configured step on `model` and `inputs`, telling `observer` as it goes."""
    if config.mode is Mode.GENERATE:
        from nnmem.trace.generate import run_generate

        run_generate(model, inputs, config, observer)
        return
    if config.mode is Mode.INFERENCE:
        model.eval()
        with torch.no_grad(), _autocast(config, model):
            observer.set_phase(Phase.FORWARD, 1)
            output = call_model(model, inputs)
            observer.set_phase(Phase.SETUP, 1)
            del output
        return
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(config.optimizer, params, config.implementation, config.device)
    loss_fn = config.loss or default_loss
    for step in range(1, config.steps + 1):
        for micro in range(1, config.accumulate + 1):
            observer.set_phase(Phase.FORWARD, step, micro)
            with _autocast(config, model):
                loss = loss_fn(call_model(model, inputs))
                if config.accumulate > 1:
                    loss = loss / config.accumulate
            observer.set_phase(Phase.BACKWARD, step, micro)
            loss.backward()  # type: ignore[no-untyped-call]
            observer.saw_gradients(params)
        observer.set_phase(Phase.OPTIMIZER, step)
        optimizer.step()
        observer.saw_optimizer_state(optimizer)
        observer.set_phase(Phase.ZERO_GRAD, step)
        optimizer.zero_grad(set_to_none=config.set_to_none)
        observer.saw_gradients(params)
        del loss
    observer.set_phase(Phase.SETUP, config.steps + 1)


def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict):
        value = list(value.values())
    elif hasattr(value, "to_tuple"):  # transformers' ModelOutput
        value = value.to_tuple()
    if isinstance(value, (tuple, list)):
        for item in value:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


@contextlib.contextmanager
def module_names(
    model: torch.nn.Module,
    stack: list[str],
    output_shapes: dict[str, tuple[int, ...]] | None = None,
) -> Iterator[None]:
    """Keep `stack` equal to the qualified names of the modules now running forward,
    and note in `output_shapes` the shape of each module's first output tensor."""
    names: dict[int, str] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        names.setdefault(id(module), name)

    def enter(module: torch.nn.Module, args: Any) -> None:
        stack.append(names.get(id(module), type(module).__name__))

    def leave(module: torch.nn.Module, args: Any, output: Any) -> None:
        if stack:
            name = stack.pop()
            if output_shapes is not None and name not in output_shapes:
                first = _first_tensor(output)
                if first is not None:
                    output_shapes[name] = tuple(int(n) for n in first.shape)

    pre = torch.nn.modules.module.register_module_forward_pre_hook(enter)
    post = torch.nn.modules.module.register_module_forward_hook(leave, always_call=True)
    try:
        yield
    finally:
        pre.remove()
        post.remove()
