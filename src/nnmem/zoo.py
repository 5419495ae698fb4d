"""Small, importable model factories: the examples, tests and the fidelity benchmark.

Every factory takes no argument and returns an `nn.Module` with random weights, so it
can be passed as `--model nnmem.zoo:NAME` and pickled into a measuring process. Each
`*_inputs(batch)` function makes matching inputs. Transformers models are built from
configs; nothing is downloaded.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def mlp() -> nn.Module:
    """A 784-2048-2048-10 multilayer perceptron with ReLU (MNIST-sized)."""
    return nn.Sequential(
        nn.Linear(784, 2048), nn.ReLU(), nn.Linear(2048, 2048), nn.ReLU(), nn.Linear(2048, 10)
    )


def mlp_inputs(batch: int = 64) -> torch.Tensor:
    return torch.randn(batch, 784)


class ResidualMLP(nn.Module):
    """Pre-norm residual MLP blocks (LayerNorm, GELU), one block reused several times."""

    def __init__(self, width: int = 512, depth: int = 4, reuse: int = 1) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
            for _ in range(depth)
        )
        self.reuse = reuse
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.reuse):
            for block in self.blocks:
                x = x + block(x)
        return self.head(x)


def residual_mlp() -> nn.Module:
    return ResidualMLP()


def reused_block() -> nn.Module:
    """One residual block applied 6 times: the same module, many activations."""
    return ResidualMLP(width=256, depth=1, reuse=6)


def residual_inputs(batch: int = 64) -> torch.Tensor:
    return torch.randn(batch, 512)


def reused_inputs(batch: int = 64) -> torch.Tensor:
    return torch.randn(batch, 256)


class Autoencoder(nn.Module):
    """A dense autoencoder with tanh and sigmoid, trained to reconstruct its input."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(1024, 512), nn.Tanh(), nn.Linear(512, 64), nn.Tanh())
        self.decoder = nn.Sequential(nn.Linear(64, 512), nn.Tanh(), nn.Linear(512, 1024), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((self.decoder(self.encoder(x)) - x) ** 2).mean()


def autoencoder() -> nn.Module:
    return Autoencoder()


def autoencoder_inputs(batch: int = 64) -> torch.Tensor:
    return torch.randn(batch, 1024)


class EmbeddingClassifier(nn.Module):
    """Token embeddings averaged over the sequence, then a two-layer classifier."""

    def __init__(self, vocab: int = 20000, width: int = 256) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.classify = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, 4))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.classify(self.embed(tokens).mean(dim=1))


def embedding_classifier() -> nn.Module:
    return EmbeddingClassifier()


def token_inputs(batch: int = 32, seq: int = 128, vocab: int = 20000) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq))


def frozen_mlp() -> nn.Module:
    """The MLP with its first layer frozen: no gradient, no optimizer state for it."""
    model = mlp()
    for p in model[0].parameters():
        p.requires_grad_(False)
    return model


# -- transformers, from configs ---------------------------------------------------------
def gpt2_small() -> nn.Module:
    """GPT-2 small (124M parameters, tied embeddings) with a language-model head."""
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config())


def bert_base() -> nn.Module:
    """BERT-base with a masked-language-model head."""
    from transformers import BertConfig, BertForMaskedLM

    return BertForMaskedLM(BertConfig())


def vit_b16() -> nn.Module:
    """ViT-B/16 at 224x224 with a 1000-class head."""
    from transformers import ViTConfig, ViTForImageClassification

    return ViTForImageClassification(ViTConfig(num_labels=1000))


def lm_inputs(batch: int = 4, seq: int = 128, vocab: int = 30522) -> dict[str, Any]:
    ids = torch.randint(0, vocab, (batch, seq))
    return {"input_ids": ids, "labels": ids.clone()}


def image_inputs(batch: int = 4, size: int = 224) -> dict[str, Any]:
    return {"pixel_values": torch.randn(batch, 3, size, size), "labels": torch.randint(0, 1000, (batch,))}
