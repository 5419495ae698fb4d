"""The Hugging Face front end: a `transformers` config in, a model factory and inputs out.

`from_hf_config` takes a local `config.json` (or a folder holding one), a dict, a
`transformers.PretrainedConfig`, or a model type that transformers knows ("llama",
"gpt2", "bert", "vit", ...: its default config), applies `overrides`, picks the task
head, and returns an `HFTarget`: a picklable zero-argument factory that builds the
model (with peft LoRA adapters and gradient checkpointing when asked), meta-device
inputs of the requested size, and the parameter count. Nothing is ever downloaded:
no weights, no Hub configs.

The head is chosen from `task=`, else from the config's `architectures`, else from
the model type: a masked-LM head where transformers has one (BERT-like encoders),
else a causal-LM head, else image classification, else sequence classification.
Reading configs and overrides lives in `nnmem.frontends.hf_config`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from nnmem.categories import Mode
from nnmem.errors import ModelError, UsageError, did_you_mean
from nnmem.frontends.hf_config import config_class, load_config, parse_overrides, parse_value
from nnmem.options import parse_mode

__all__ = [
    "ATTENTION",
    "TASKS",
    "HFModel",
    "HFTarget",
    "LoRA",
    "from_hf_config",
    "parse_overrides",
    "parse_value",
]

CAUSAL_LM = "causal-lm"
MASKED_LM = "masked-lm"
SEQUENCE_CLASSIFICATION = "sequence-classification"
IMAGE_CLASSIFICATION = "image-classification"
TASKS = (CAUSAL_LM, MASKED_LM, SEQUENCE_CLASSIFICATION, IMAGE_CLASSIFICATION)
ATTENTION = ("sdpa", "eager")  # eager materialises the (seq x seq) scores of every head

_AUTO_CLASS = {
    CAUSAL_LM: "AutoModelForCausalLM",
    MASKED_LM: "AutoModelForMaskedLM",
    SEQUENCE_CLASSIFICATION: "AutoModelForSequenceClassification",
    IMAGE_CLASSIFICATION: "AutoModelForImageClassification",
}
_MAPPING = {
    CAUSAL_LM: "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES",
    MASKED_LM: "MODEL_FOR_MASKED_LM_MAPPING_NAMES",
    SEQUENCE_CLASSIFICATION: "MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES",
    IMAGE_CLASSIFICATION: "MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES",
}
_DEFAULT_ORDER = (MASKED_LM, CAUSAL_LM, IMAGE_CLASSIFICATION, SEQUENCE_CLASSIFICATION)
_PEFT_TASK_TYPE = {CAUSAL_LM: "CAUSAL_LM", SEQUENCE_CLASSIFICATION: "SEQ_CLS"}


@dataclass(frozen=True)
class LoRA:
    """peft LoRA adapters on a frozen base: `rank`, and the modules they wrap.

    `targets=None` takes peft's default for the model type (q_proj and v_proj for
    Llama, c_attn for GPT-2); `alpha=None` takes peft's default. Only memory is
    modelled, so alpha changes nothing; a `dropout` above 0 adds a dropout mask.
    """

    rank: int = 8
    targets: tuple[str, ...] | None = None
    alpha: int | None = None
    dropout: float = 0.0


@dataclass(frozen=True)
class HFModel:
    """A picklable zero-argument factory: `HFModel(...)()` builds the model.

    It holds the config as a plain dict, so it can cross into a measuring subprocess;
    the model is built in whatever device context is current (meta for an estimate).
    """

    config: dict[str, Any]
    task: str
    attn: str = "sdpa"
    lora: LoRA | None = None
    gradient_checkpointing: bool = False

    def __call__(self) -> torch.nn.Module:
        import transformers

        config = config_class(self.config["model_type"]).from_dict(dict(self.config))
        auto = getattr(transformers, _AUTO_CLASS[self.task])
        with warnings.catch_warnings():  # transformers 5 renames gradient -> activation checkpointing
            warnings.simplefilter("ignore", FutureWarning)
            model: torch.nn.Module = auto.from_config(config, attn_implementation=self.attn)
            _assume_unpacked_sequences(model)
            if self.gradient_checkpointing:
                _enable_checkpointing(model)
            if self.lora is not None:
                model = _add_lora(model, self.lora, self.task)
        return model


def _assume_unpacked_sequences(model: torch.nn.Module) -> None:
    """While `model` runs, tell transformers' masking that the sequences are not packed.

    Without an attention mask, transformers reads the position ids to find several
    sequences packed in one row; on fake tensors it cannot read them, so it assumes
    packing and builds an explicit (batch, 1, seq, seq) mask, and SDPA then runs with
    that mask instead of `is_causal`: memory the real run does not use. nnmem's inputs
    are never packed (their position ids are 0..seq-1), so the answer is known: none.
    """
    try:
        from transformers import masking_utils
    except ImportError:  # pragma: no cover - older transformers: nothing to do
        return
    if not hasattr(masking_utils, "find_packed_sequence_indices"):
        return
    saved: list[Any] = []

    def enter(module: torch.nn.Module, args: Any) -> None:
        saved.append(masking_utils.find_packed_sequence_indices)
        masking_utils.find_packed_sequence_indices = _no_packed_sequences

    def leave(module: torch.nn.Module, args: Any, output: Any) -> None:
        if saved:
            masking_utils.find_packed_sequence_indices = saved.pop()

    model.register_forward_pre_hook(enter)
    model.register_forward_hook(leave, always_call=True)


def _no_packed_sequences(position_ids: torch.Tensor) -> None:
    return None


def _enable_checkpointing(model: Any) -> None:
    """The model's own activation checkpointing, non-reentrant (what recent transformers defaults to)."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise UsageError(f"{type(model).__name__} does not support gradient checkpointing")
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


@dataclass(frozen=True)
class HFTarget:
    """What `nnmem.estimate` and `nnmem.measure` need for one Hugging Face model."""

    model: HFModel  # zero-argument factory
    inputs: dict[str, torch.Tensor] = field(repr=False)  # meta tensors
    parameters: int  # elements, tied weights counted once (adapters included)
    trainable_parameters: int  # elements with requires_grad (the adapters only, with LoRA)
    task: str
    mode: Mode
    new_tokens: int
    describe: str


def from_hf_config(
    config: str | os.PathLike[str] | Mapping[str, Any] | Any,
    *,
    task: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    batch: int = 1,
    seq: int = 128,
    image_size: int | None = None,
    mode: str | Mode = "train",
    attn: str = "sdpa",
    lora: LoRA | int | None = None,
    gradient_checkpointing: bool = False,
    new_tokens: int = 0,
) -> HFTarget:
    """A model factory and meta inputs for a `transformers` config; nothing is downloaded.

    `config` is a path to a local config.json (or its folder), a dict, a
    `PretrainedConfig`, or a model type ("llama", "gpt2", "mistral", "bert", "vit", ...).
    `overrides` replace config fields (`{"num_hidden_layers": 2}`). `lora` is a `LoRA`
    or just a rank. In mode "generate", `seq` is the prompt and `new_tokens` the tokens
    generated after it (pass the same `new_tokens` to `estimate`).
    """
    parsed_mode = parse_mode(mode)
    _check_sizes(batch=batch, seq=seq, new_tokens=new_tokens)
    if image_size is not None:
        _check_sizes(image_size=image_size)
    if attn not in ATTENTION:
        raise UsageError(
            f"unknown attention implementation '{attn}'{did_you_mean(attn, ATTENTION)} (use sdpa or eager)"
        )
    if isinstance(lora, int) and not isinstance(lora, bool):
        lora = LoRA(rank=lora)
    if lora is not None and (not isinstance(lora, LoRA) or lora.rank < 1):
        raise UsageError(f"lora must be a LoRA(...) or a rank of at least 1, not {lora!r}")
    if new_tokens and parsed_mode is not Mode.GENERATE:
        raise UsageError(f"new_tokens is for mode=generate (mode is {parsed_mode})")

    built = load_config(config, dict(overrides or {}))
    chosen = _choose_task(built, task)
    if parsed_mode is Mode.GENERATE and chosen != CAUSAL_LM:
        raise UsageError(f"mode=generate needs a causal language model; this config's task is {chosen}")
    if chosen == SEQUENCE_CLASSIFICATION and getattr(built, "pad_token_id", 0) is None:
        # decoder heads pool the last non-padding token and refuse batches above 1 without one
        eos = getattr(built, "eos_token_id", None)
        built.pad_token_id = eos if isinstance(eos, int) else 0
    factory = HFModel(built.to_dict(), chosen, attn, lora, gradient_checkpointing)

    with torch.device("meta"):
        try:
            model = factory()
        except (UsageError, ModelError):
            raise
        except Exception as error:
            raise ModelError(
                f"building {built.model_type} ({_AUTO_CLASS[chosen]}) from its config failed:"
                f" {type(error).__name__}: {error}"
            ) from error
    parameters = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    inputs = _inputs(built, model, chosen, parsed_mode, batch, seq, image_size, new_tokens)
    describe = _describe(
        built,
        model,
        chosen,
        attn,
        lora,
        gradient_checkpointing,
        parameters,
        trainable,
        inputs,
        parsed_mode,
        new_tokens,
    )
    return HFTarget(factory, inputs, parameters, trainable, chosen, parsed_mode, new_tokens, describe)


# -- the task head --------------------------------------------------------------------


def _choose_task(config: Any, task: str | None) -> str:
    mappings = _task_mappings()
    model_type = config.model_type
    if task is not None:
        key = task.strip().lower().replace("_", "-")
        if key not in TASKS:
            raise UsageError(f"unknown task '{task}'{did_you_mean(key, TASKS)} (known: {', '.join(TASKS)})")
        if model_type not in mappings[key]:
            has = [t for t in TASKS if model_type in mappings[t]]
            raise UsageError(
                f"transformers has no {key} head for {model_type}"
                f" (it has: {', '.join(has) if has else 'none of ' + ', '.join(TASKS)})"
            )
        return key
    for architecture in getattr(config, "architectures", None) or ():
        for name in TASKS:
            if architecture in mappings[name].values():
                return name
    for name in _DEFAULT_ORDER:
        if model_type in mappings[name]:
            return name
    raise UsageError(
        f"transformers has no {', '.join(TASKS)} head for model type '{model_type}'; nnmem models these four"
    )


def _task_mappings() -> dict[str, Mapping[str, str]]:
    from transformers.models.auto import modeling_auto

    return {task: getattr(modeling_auto, name) for task, name in _MAPPING.items()}


def _add_lora(model: torch.nn.Module, lora: LoRA, task: str) -> torch.nn.Module:
    from peft import LoraConfig, get_peft_model

    if lora.targets is not None:
        _check_targets(model, lora.targets)
    options: dict[str, Any] = {"r": lora.rank, "lora_dropout": lora.dropout, "target_modules": lora.targets}
    if lora.targets is not None:
        options["target_modules"] = list(lora.targets)
    if lora.alpha is not None:
        options["lora_alpha"] = lora.alpha
    if task in _PEFT_TASK_TYPE:
        options["task_type"] = _PEFT_TASK_TYPE[task]
    try:
        wrapped: torch.nn.Module = get_peft_model(model, LoraConfig(**options))
    except ValueError as error:
        raise UsageError(
            f"peft cannot add LoRA adapters here: {error} (name them with lora targets)"
        ) from error
    return wrapped


def _check_targets(model: torch.nn.Module, targets: tuple[str, ...]) -> None:
    leaves = {
        name.rpartition(".")[2] for name, module in model.named_modules() if not list(module.children())
    }
    for target in targets:
        if target not in leaves:
            raise UsageError(
                f"no module named '{target}' to put a LoRA adapter on{did_you_mean(target, leaves)}"
                f" (the model's leaf modules: {', '.join(sorted(leaves))})"
            )


# -- inputs and the description -------------------------------------------------------


def _check_sizes(**sizes: int) -> None:
    for name, value in sizes.items():
        low = 0 if name == "new_tokens" else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise UsageError(f"{name} must be an integer of at least {low}, not {value!r}")


def _inputs(
    config: Any,
    model: torch.nn.Module,
    task: str,
    mode: Mode,
    batch: int,
    seq: int,
    image_size: int | None,
    new_tokens: int,
) -> dict[str, torch.Tensor]:
    labels_needed = mode is Mode.TRAIN
    if task == IMAGE_CLASSIFICATION:
        size = image_size or getattr(config, "image_size", None) or 224
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        channels = getattr(config, "num_channels", 3)
        inputs = {"pixel_values": torch.empty(batch, channels, height, width, device="meta")}
        if labels_needed:
            inputs["labels"] = torch.zeros(batch, dtype=torch.long, device="meta")
        return inputs
    _check_positions(model, seq + max(new_tokens - 1, 0))
    ids = torch.zeros(batch, seq, dtype=torch.long, device="meta")
    inputs = {"input_ids": ids}
    if labels_needed:
        shape = (batch,) if task == SEQUENCE_CLASSIFICATION else (batch, seq)
        inputs["labels"] = torch.zeros(shape, dtype=torch.long, device="meta")
    return inputs


def _check_positions(model: torch.nn.Module, tokens: int) -> None:
    """Learned position tables (GPT-2's wpe, BERT's position_embeddings) bound the sequence."""
    for name, module in model.named_modules():
        leaf = name.rpartition(".")[2]
        learned = isinstance(module, torch.nn.Embedding) and (leaf == "wpe" or "position" in leaf)
        if learned and tokens > module.num_embeddings:
            raise UsageError(
                f"{tokens} tokens do not fit the model's {module.num_embeddings} learned positions"
                f" ({name}); use a shorter seq or set the config's position count"
            )


def _describe(
    config: Any,
    model: torch.nn.Module,
    task: str,
    attn: str,
    lora: LoRA | None,
    gradient_checkpointing: bool,
    parameters: int,
    trainable: int,
    inputs: Mapping[str, torch.Tensor],
    mode: Mode,
    new_tokens: int,
) -> str:
    architecture = type(model.get_base_model() if lora is not None else model).__name__  # type: ignore[operator]
    dtype = str(getattr(config, "dtype", None) or "float32").removeprefix("torch.")
    parts = [f"{config.model_type} {architecture} ({task}, {attn} attention, built in {dtype})"]
    parts.append(f"{parameters:,} parameters")
    if lora is not None:
        targets = ", ".join(lora.targets) if lora.targets else "peft's default modules"
        parts.append(f"LoRA r={lora.rank} on {targets}: {trainable:,} trainable")
    if gradient_checkpointing:
        parts.append("gradient checkpointing")
    shapes = ", ".join(f"{name} {tuple(t.shape)}" for name, t in inputs.items())
    parts.append(f"inputs {shapes}")
    if mode is Mode.GENERATE:
        prompt = inputs["input_ids"].shape[1]
        parts.append(
            f"generate {new_tokens} tokens after the {prompt}-token prompt"
            f" (the cache ends at {prompt + max(new_tokens - 1, 0)} tokens)"
        )
    return "; ".join(parts)
