"""The fidelity benchmark's cases: model x step settings, each estimated and measured."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nnmem import zoo

CLASSIC = "examples/classic_cnn.txt"
CLASSIC_RELU = (
    "input 50x50x3 / conv 3x3 32 same / relu / avgpool 2 / conv 3x3 64 same / relu / avgpool 2"
    " / fc 500 / relu / fc 10"
)


@dataclass(frozen=True)
class Case:
    name: str
    model: Callable[[], Any]
    inputs: Callable[[], Any]
    mode: str = "train"
    optimizer: str = "adam"
    implementation: str = "auto"
    amp: str | None = None
    dtype: str | None = None
    new_tokens: int = 0
    tags: tuple[str, ...] = field(default=())
    fast: bool = False  # also run in the test suite

    def keywords(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "optimizer": self.optimizer,
            "implementation": self.implementation,
            "amp": self.amp,
            "dtype": self.dtype,
            **({"new_tokens": self.new_tokens} if self.new_tokens else {}),
        }


def _four(name: str, model: Callable[[], Any], inputs: Callable[[], Any], fast: bool = False) -> list[Case]:
    """Inference, SGD with momentum, Adam and Adam with foreach: the trace engine's acceptance."""
    return [
        Case(f"{name} inference", model, inputs, mode="inference", fast=fast),
        Case(f"{name} momentum", model, inputs, optimizer="momentum", fast=fast),
        Case(f"{name} adam", model, inputs, fast=fast),
        Case(f"{name} adam foreach", model, inputs, implementation="foreach", fast=fast),
    ]


def _spec(text: str, batch: int) -> tuple[Callable[[], Any], Callable[[], Any]]:
    factory = zoo.FromSpec(text)
    return factory, lambda: factory.inputs(batch)


def _hf(**options: Any) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """A tiny Llama (GQA, 2 layers) from its config, as the Hugging Face front end builds it."""
    from nnmem.frontends.hf import from_hf_config

    target = from_hf_config("llama", overrides=TINY_LLAMA, **options)
    return target.model, lambda: target.inputs


TINY_LLAMA = {
    "hidden_size": 256,
    "intermediate_size": 688,
    "num_hidden_layers": 2,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "vocab_size": 4000,
}

classic = _spec(CLASSIC, 64)
classic_relu = _spec(CLASSIC_RELU, 64)
vgg16 = _spec("examples/vgg16.txt", 2)

CASES: list[Case] = [
    # plain torch.nn models
    *_four("mlp", zoo.mlp, lambda: zoo.mlp_inputs(64), fast=True),
    *_four("residual-mlp", zoo.residual_mlp, lambda: zoo.residual_inputs(64), fast=True),
    *_four("autoencoder", zoo.autoencoder, lambda: zoo.autoencoder_inputs(64), fast=True),
    *_four("embedding-classifier", zoo.embedding_classifier, lambda: zoo.token_inputs(32, 128), fast=True),
    *_four("reused-block", zoo.reused_block, lambda: zoo.reused_inputs(64)),
    # transformers, from configs
    *_four("gpt2-small", zoo.gpt2_small, lambda: zoo.lm_inputs(4, 128, vocab=50257)),
    *_four("bert-base", zoo.bert_base, lambda: zoo.lm_inputs(4, 128)),
    *_four("vit-b16", zoo.vit_b16, lambda: zoo.image_inputs(4)),
    Case("gpt2-tiny inference", zoo.gpt2_tiny, lambda: zoo.tiny_lm_inputs(), mode="inference", fast=True),
    Case("gpt2-tiny adamw", zoo.gpt2_tiny, lambda: zoo.tiny_lm_inputs(), optimizer="adamw", fast=True),
    Case("gpt2-tiny adam bf16-autocast", zoo.gpt2_tiny, lambda: zoo.tiny_lm_inputs(), amp="bf16", fast=True),
    Case(
        "llama-small inference", zoo.llama_small, lambda: zoo.lm_inputs(2, 128, vocab=32000), mode="inference"
    ),
    Case("llama-small adamw", zoo.llama_small, lambda: zoo.lm_inputs(2, 128, vocab=32000), optimizer="adamw"),
    Case(
        "llama-small bf16 params",
        zoo.llama_small,
        lambda: zoo.lm_inputs(2, 128, vocab=32000),
        optimizer="adamw",
        dtype="bfloat16",
    ),
    Case(
        "llama-tiny generate 64+32 (KV cache)",
        *_hf(mode="generate", batch=2, seq=64, new_tokens=32),
        mode="generate",
        new_tokens=32,
    ),
    Case(
        "llama-tiny generate eager 64+16",
        *_hf(mode="generate", batch=2, seq=64, new_tokens=16, attn="eager"),
        mode="generate",
        new_tokens=16,
    ),
    Case("llama-tiny LoRA r8 adamw", *_hf(batch=4, seq=128, lora=8), optimizer="adamw"),
    Case(
        "llama-tiny gradient checkpointing adamw",
        *_hf(batch=4, seq=128, gradient_checkpointing=True),
        optimizer="adamw",
    ),
    Case(
        "llama-tiny LoRA + checkpointing adamw",
        *_hf(batch=4, seq=128, lora=8, gradient_checkpointing=True),
        optimizer="adamw",
    ),
    Case("t5-small inference", zoo.t5_small, lambda: zoo.seq2seq_inputs(4, 64), mode="inference"),
    Case("t5-small adam", zoo.t5_small, lambda: zoo.seq2seq_inputs(4, 64)),
    # special structure
    Case("frozen-mlp adam", zoo.frozen_mlp, lambda: zoo.mlp_inputs(64), fast=True),
    Case("checkpointed-mlp adam", zoo.checkpointed_mlp, lambda: zoo.residual_inputs(64), fast=True),
    Case("mlp adam bf16-autocast", zoo.mlp, lambda: zoo.mlp_inputs(64), amp="bf16", fast=True),
    Case(
        "transformer-encoder eval (fast path)",
        zoo.transformer_encoder,
        lambda: zoo.sequence_inputs(),
        mode="inference",
    ),
    Case("transformer-encoder adam", zoo.transformer_encoder, lambda: zoo.sequence_inputs()),
    # recurrent
    Case("lstm inference", zoo.lstm, lambda: zoo.rnn_inputs(), mode="inference"),
    Case("lstm adam", zoo.lstm, lambda: zoo.rnn_inputs()),
    Case("gru inference", zoo.gru, lambda: zoo.rnn_inputs(), mode="inference"),
    Case("gru adam", zoo.gru, lambda: zoo.rnn_inputs()),
    # convolutional
    Case("classic-cnn inference", *classic, mode="inference"),
    Case("classic-cnn momentum", *classic, optimizer="momentum"),
    Case("classic-cnn adam", *classic),
    Case("classic-cnn-relu inference", *classic_relu, mode="inference"),
    Case("classic-cnn-relu adam", *classic_relu),
    Case("vgg16 inference", *vgg16, mode="inference"),
    Case("vgg16 momentum", *vgg16, optimizer="momentum"),
    Case("resnet50 inference", zoo.resnet50, lambda: zoo.image_inputs(2), mode="inference"),
    Case("resnet50 momentum", zoo.resnet50, lambda: zoo.image_inputs(2), optimizer="momentum"),
    Case("mobilenet-v2 inference", zoo.mobilenet_v2, lambda: zoo.image_inputs(4), mode="inference"),
    Case("mobilenet-v2 adam", zoo.mobilenet_v2, lambda: zoo.image_inputs(4)),
    Case("unet inference", zoo.unet, lambda: zoo.unet_inputs(), mode="inference"),
    Case("unet adam", zoo.unet, lambda: zoo.unet_inputs()),
]


@dataclass(frozen=True)
class ParallelCase:
    """A step spread over ranks: estimated per rank, and measured on real gloo ranks
    (`bench/fidelity/distributed.py`, which writes DISTRIBUTED.md)."""

    name: str
    model: Callable[[], Any]
    inputs: Callable[[], Any]  # one rank's inputs
    parallel: str
    world_size: int = 2
    optimizer: str = "adam"


def _parallel_cases(
    name: str, model: Callable[[], Any], inputs: Callable[[], Any], optimizer: str
) -> list[ParallelCase]:
    return [
        ParallelCase(f"{name} {parallel}", model, inputs, parallel, optimizer=optimizer)
        for parallel in ("ddp", "ddp,bucket-view", "fsdp", "fsdp-no-reshard", "fsdp,mp=bf16", "tp=2", "zero1")
    ]


DISTRIBUTED_CASES: list[ParallelCase] = [
    *_parallel_cases("mlp", zoo.mlp, lambda: zoo.mlp_inputs(64), "adam"),
    *_parallel_cases("llama-small", zoo.llama_small, lambda: zoo.lm_inputs(2, 128, vocab=32000), "adamw"),
    ParallelCase("mlp fsdp=2,tp=2", zoo.mlp, lambda: zoo.mlp_inputs(64), "fsdp=2,tp=2", world_size=4),
]
