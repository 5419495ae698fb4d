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
            nn.Sequential(
                nn.LayerNorm(width), nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width)
            )
            for _ in range(depth)
        )
        self.reuse = reuse
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.reuse):
            for block in self.blocks:
                x = x + block(x)
        result: torch.Tensor = self.head(x)
        return result


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
        result: torch.Tensor = ((self.decoder(self.encoder(x)) - x) ** 2).mean()
        return result


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
        result: torch.Tensor = self.classify(self.embed(tokens).mean(dim=1))
        return result


def embedding_classifier() -> nn.Module:
    return EmbeddingClassifier()


def token_inputs(batch: int = 32, seq: int = 128, vocab: int = 20000) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq))


def frozen_mlp() -> nn.Module:
    """The MLP with its first layer frozen: no gradient, no optimizer state for it."""
    model = mlp()
    first_layer: nn.Module = model.get_submodule("0")
    for p in first_layer.parameters():
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

    return ViTForImageClassification(ViTConfig(num_labels=1000))  # type: ignore[call-arg]


def lm_inputs(batch: int = 4, seq: int = 128, vocab: int = 30522) -> dict[str, Any]:
    ids = torch.randint(0, vocab, (batch, seq))
    return {"input_ids": ids, "labels": ids.clone()}


def image_inputs(batch: int = 4, size: int = 224) -> dict[str, Any]:
    return {"pixel_values": torch.randn(batch, 3, size, size), "labels": torch.randint(0, 1000, (batch,))}


# -- text specs, as picklable factories ---------------------------------------------------
class FromSpec:
    """A zero-argument factory for a text spec (a file path or inline text)."""

    def __init__(self, spec: str) -> None:
        self.spec = spec

    def __call__(self) -> nn.Module:
        from nnmem.frontends.spec import build_model, load_spec

        return build_model(load_spec(self.spec))

    def inputs(self, batch: int) -> torch.Tensor:
        from nnmem.frontends.spec import load_spec

        spec = load_spec(self.spec)
        shape, dtype = spec.input_shape(batch), spec.input_dtype()
        if dtype.is_floating_point:
            return torch.randn(shape, dtype=dtype)
        return torch.zeros(shape, dtype=dtype)


# -- more architectures for the fidelity benchmark ---------------------------------------
class RNNClassifier(nn.Module):
    """Embedding, a 2-layer LSTM or GRU (batch first), a classifier on the last step."""

    def __init__(self, cell: str = "lstm", vocab: int = 5000, width: int = 256) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn(width, width, num_layers=2, batch_first=True)
        self.head = nn.Linear(width, 4)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embed(tokens))
        result: torch.Tensor = self.head(out[:, -1])
        return result


def lstm() -> nn.Module:
    return RNNClassifier("lstm")


def gru() -> nn.Module:
    return RNNClassifier("gru")


def rnn_inputs(batch: int = 16, seq: int = 64) -> torch.Tensor:
    return torch.randint(0, 5000, (batch, seq))


def transformer_encoder() -> nn.Module:
    """`nn.TransformerEncoder`, batch first: in eval under no_grad it takes the fast path."""
    layer = nn.TransformerEncoderLayer(d_model=256, nhead=8, dim_feedforward=1024, batch_first=True)
    return nn.TransformerEncoder(layer, num_layers=4, enable_nested_tensor=False)


def sequence_inputs(batch: int = 16, seq: int = 128, width: int = 256) -> torch.Tensor:
    return torch.randn(batch, seq, width)


class CheckpointedMLP(ResidualMLP):
    """The residual MLP with each block under `torch.utils.checkpoint` (non-reentrant)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch.utils.checkpoint import checkpoint

        for block in self.blocks:
            x = x + checkpoint(block, x, use_reentrant=False)
        result: torch.Tensor = self.head(x)
        return result


def checkpointed_mlp() -> nn.Module:
    return CheckpointedMLP()


class UNet(nn.Module):
    """A small U-Net: two downsampling stages, a bottleneck, two upsampling stages with skips."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            )

        self.down1, self.down2 = block(3, width), block(width, 2 * width)
        self.pool = nn.MaxPool2d(2)
        self.middle = block(2 * width, 4 * width)
        self.up2 = nn.ConvTranspose2d(4 * width, 2 * width, 2, stride=2)
        self.dec2 = block(4 * width, 2 * width)
        self.up1 = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.dec1 = block(2 * width, width)
        self.out = nn.Conv2d(width, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1 = self.down1(x)
        d2 = self.down2(self.pool(d1))
        m = self.middle(self.pool(d2))
        u2 = self.dec2(torch.cat([self.up2(m), d2], dim=1))
        u1 = self.dec1(torch.cat([self.up1(u2), d1], dim=1))
        result: torch.Tensor = self.out(u1)
        return result


def unet() -> nn.Module:
    return UNet()


def unet_inputs(batch: int = 4, size: int = 64) -> torch.Tensor:
    return torch.randn(batch, 3, size, size)


def resnet50() -> nn.Module:
    """ResNet-50 (transformers' ResNet) with a 1000-class head."""
    from transformers import ResNetConfig, ResNetForImageClassification

    return ResNetForImageClassification(ResNetConfig(num_labels=1000))  # type: ignore[call-arg]


def mobilenet_v2() -> nn.Module:
    """MobileNetV2 1.0 at 224 (transformers) with a 1000-class head."""
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    return MobileNetV2ForImageClassification(MobileNetV2Config(num_labels=1000))  # type: ignore[call-arg]


def llama_small() -> nn.Module:
    """A Llama-shaped model (GQA, SwiGLU, RoPE): 4 layers, hidden 512, 8 heads, 2 KV heads."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(
        LlamaConfig(
            hidden_size=512,
            intermediate_size=1376,
            num_hidden_layers=4,
            num_attention_heads=8,
            num_key_value_heads=2,
            vocab_size=32000,
        )
    )


def t5_small() -> nn.Module:
    """T5-small, an encoder-decoder (tied embeddings)."""
    from transformers import T5Config, T5ForConditionalGeneration

    return T5ForConditionalGeneration(T5Config(decoder_start_token_id=0))  # type: ignore[call-arg]


def seq2seq_inputs(batch: int = 4, seq: int = 64) -> dict[str, Any]:
    ids = torch.randint(0, 32000, (batch, seq))
    return {"input_ids": ids, "labels": ids.clone()}


def gpt2_tiny() -> nn.Module:
    """A 2-layer GPT-2 (hidden 256): small enough for the test suite."""
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(
        GPT2Config(n_layer=2, n_embd=256, n_head=4, vocab_size=8000, bos_token_id=0, eos_token_id=0)
    )


def tiny_lm_inputs(batch: int = 4, seq: int = 64) -> dict[str, Any]:
    return lm_inputs(batch, seq, vocab=8000)
