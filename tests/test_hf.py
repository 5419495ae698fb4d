"""The Hugging Face front end, generation with a KV cache, LoRA and the 8-bit optimizer.

Big shapes are built on the meta device only; the real (measured) runs use tiny configs
of two layers.
"""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch

import nnmem
from nnmem.errors import ModelError, UsageError
from nnmem.frontends.hf import LoRA, from_hf_config, parse_overrides
from nnmem.trace.adam8bit import BLOCK_SIZE, NOTE, Adam8bit

FP32, FP16 = 4, 2
# hidden 128, 4 heads of 32, 2 KV heads (GQA), MLP 256, vocabulary 512
TINY_LLAMA = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 512,
}


def generation(new_tokens: int) -> dict[str, Any]:
    """Keywords that make `estimate`/`measure` prefill and then decode `new_tokens` tokens."""
    return {"mode": "generate", "new_tokens": new_tokens}


# -- parameter counts: the real transformers models, built on the meta device ----------


def test_llama_2_7b_parameters() -> None:
    # LlamaConfig's defaults are the Llama-2-7B shape; the overrides only say so
    target = from_hf_config(
        "llama",
        overrides={
            "hidden_size": 4096,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "intermediate_size": 11008,
            "vocab_size": 32000,
        },
    )
    # embeddings + untied LM head: 2 x 32000 x 4096; per layer: q, k, v, o (4 x 4096^2),
    # gate, up, down (3 x 4096 x 11008) and two RMSNorms; a final RMSNorm
    per_layer = 4 * 4096 * 4096 + 3 * 4096 * 11008 + 2 * 4096
    assert target.parameters == 2 * 32000 * 4096 + 32 * per_layer + 4096 == 6_738_415_616
    assert target.trainable_parameters == target.parameters
    assert target.task == "causal-lm"


def test_gpt2_small_parameters_count_the_tied_head_once() -> None:
    target = from_hf_config("gpt2")
    # wte 50257 x 768 (shared with the LM head) + wpe 1024 x 768; per block: c_attn, c_proj,
    # c_fc, mlp c_proj with biases and two LayerNorms; a final LayerNorm
    per_block = (768 * 2304 + 2304) + (768 * 768 + 768) + (768 * 3072 + 3072) + (3072 * 768 + 768) + 4 * 768
    assert target.parameters == 50257 * 768 + 1024 * 768 + 12 * per_block + 2 * 768 == 124_439_808


def test_mistral_7b_parameters() -> None:
    target = from_hf_config("mistral")  # MistralConfig's defaults: the Mistral-7B shape
    # 8 KV heads of 128: k and v are 4096 x 1024; MLP 14336
    per_layer = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096
    assert target.parameters == 2 * 32000 * 4096 + 32 * per_layer + 4096 == 7_241_732_096


def test_lora_adapters_are_the_only_trainable_parameters() -> None:
    target = from_hf_config("llama", lora=LoRA(rank=8, targets=("q_proj", "v_proj")))
    # per layer and target: A (8 x 4096) and B (4096 x 8)
    assert target.trainable_parameters == 32 * 2 * (8 * 4096 + 4096 * 8) == 4_194_304
    assert target.parameters == 6_738_415_616 + 4_194_304


# -- configs: files, dicts, overrides, errors -----------------------------------------


def test_config_json_file_with_overrides(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "llama", **TINY_LLAMA, "architectures": ["LlamaForCausalLM"]}))
    target = from_hf_config(path, overrides={"num_hidden_layers": 1}, seq=16)
    by_folder = from_hf_config(str(tmp_path), overrides={"num_hidden_layers": 1}, seq=16)
    # embeddings + head 2 x 512 x 128; one layer: q, o (128^2), k, v (128 x 64), MLP 3 x 128 x 256, 2 norms
    layer = 2 * 128 * 128 + 2 * 128 * 64 + 3 * 128 * 256 + 2 * 128
    assert target.parameters == by_folder.parameters == 2 * 512 * 128 + layer + 128
    assert tuple(target.inputs["input_ids"].shape) == (1, 16)
    assert target.inputs["labels"].shape == target.inputs["input_ids"].shape


def test_head_dim_follows_an_overridden_hidden_size() -> None:
    # LlamaConfig stores head_dim = hidden / heads; overriding the hidden size re-derives it
    from transformers import LlamaConfig

    target = from_hf_config(LlamaConfig(), overrides={"hidden_size": 2048, "num_hidden_layers": 1})
    layer = 4 * 2048 * 2048 + 3 * 2048 * 11008 + 2 * 2048
    assert target.parameters == 2 * 32000 * 2048 + layer + 2048


def test_tasks_from_the_model_type_and_from_the_flag() -> None:
    assert from_hf_config("bert").task == "masked-lm"
    vit = from_hf_config("vit", batch=2)
    assert vit.task == "image-classification"
    assert tuple(vit.inputs["pixel_values"].shape) == (2, 3, 224, 224)
    assert tuple(vit.inputs["labels"].shape) == (2,)
    classify = from_hf_config("llama", overrides=TINY_LLAMA, task="sequence_classification", batch=2)
    assert classify.task == "sequence-classification"
    assert tuple(classify.inputs["labels"].shape) == (2,)
    assert set(from_hf_config("gpt2", mode="inference").inputs) == {"input_ids"}


def test_parse_overrides_reads_cli_values() -> None:
    parsed = parse_overrides(
        [
            "hidden_size=2048",
            "rms_norm_eps=1e-5",
            "tie_word_embeddings=true",
            "rope_scaling=None",
            'rope_parameters={"rope_type": "default", "rope_theta": 500000.0}',
            "hidden_act=gelu",
        ]
    )
    assert parsed == {
        "hidden_size": 2048,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True,
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0},
        "hidden_act": "gelu",
    }
    with pytest.raises(UsageError, match="KEY=VALUE"):
        parse_overrides(["hidden_size"])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: from_hf_config("lama"), "did you mean 'llama'"),
        (lambda: from_hf_config("llama", overrides={"hiden_size": 8}), "did you mean 'hidden_size'"),
        (lambda: from_hf_config("llama", task="causal_ln"), "did you mean 'causal-lm'"),
        (lambda: from_hf_config("vit", task="causal-lm"), "no causal-lm head for vit"),
        (lambda: from_hf_config("llama", attn="flash"), "sdpa or eager"),
        (lambda: from_hf_config("meta-llama/Llama-2-7b-hf"), "never downloads"),
        (lambda: from_hf_config("bert", mode="generate"), "causal language model"),
        (lambda: from_hf_config("llama", lora=LoRA(8, ("q_prj",))), "did you mean 'q_proj'"),
        (lambda: from_hf_config("gpt2", seq=2048), "1024 learned positions"),
        (lambda: from_hf_config("llama", new_tokens=4), "mode=generate"),
    ],
)
def test_errors_say_what_to_do(call: Any, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        call()


def test_a_config_that_cannot_build_is_a_model_error() -> None:
    with pytest.raises(ModelError, match="not a multiple"):
        from_hf_config("llama", overrides={"hidden_size": 100, "num_attention_heads": 3})


def test_the_factory_pickles() -> None:
    target = from_hf_config("llama", overrides=TINY_LLAMA, lora=4, gradient_checkpointing=True)
    rebuilt = pickle.loads(pickle.dumps(target.model))
    with torch.device("meta"):
        model = rebuilt()
    assert sum(p.numel() for p in model.parameters()) == target.parameters


# -- generation and the KV cache ------------------------------------------------------


def test_kv_cache_of_a_7b_shape_at_4096_tokens() -> None:
    # Two layers of the Llama-2-7B shape with GQA (8 KV heads of 128), fp16: a prompt of
    # 4093 tokens and 4 new ones leave 4096 tokens in the cache (the last token is not fed back)
    target = from_hf_config(
        "llama",
        overrides={"num_hidden_layers": 2, "num_key_value_heads": 8},
        mode="generate",
        seq=4093,
        new_tokens=4,
    )
    report = nnmem.estimate(target.model, target.inputs, device="cuda", dtype="fp16", **generation(4))
    # layers x (keys, values) x KV heads x head dim x tokens x fp16; 32 MHA layers: 2 GiB
    assert report.kv_cache_bytes == 2 * 2 * 8 * 128 * 4096 * FP16 == (2 * 32 * 4096 * 4096 * FP16) // 16 // 4


def test_decoding_matches_the_measured_run_and_shows_the_cache_growing() -> None:
    # a short prompt and a long generation: the peak is in decoding, when DynamicCache's
    # torch.cat makes a layer's new keys (or values) while the old ones are still alive
    overrides = {**TINY_LLAMA, "num_key_value_heads": 4, "vocab_size": 256}
    target = from_hf_config("llama", overrides=overrides, mode="generate", batch=4, seq=4, new_tokens=60)
    keywords = generation(60)
    guess = nnmem.estimate(target.model, target.inputs, device="cpu", threads=2, **keywords)
    truth = nnmem.measure(target.model, target.inputs, threads=2, **keywords)
    assert abs(guess.peak_bytes - truth.peak_bytes) <= 0.01 * truth.peak_bytes
    # 2 layers x (keys, values) x batch 4 x 4 KV heads x 32 dims x (4 + 60 - 1) tokens, fp32
    final = 2 * 2 * 4 * 4 * 32 * 63 * FP32
    assert guess.kv_cache_bytes == final
    assert guess.steady.op == "aten.cat.default"
    # at the peak: the final cache and the 62-token copy of the last layer's values it replaces
    assert guess.categories.kv_cache == final + 4 * 4 * 32 * 62 * FP32
    assert truth.kv_cache_bytes == final  # the real run's cache, sized from its tensors


def test_generate_refuses_a_model_without_a_cache() -> None:
    model = torch.nn.Linear(4, 4)
    with pytest.raises(UsageError, match="KV cache"):
        nnmem.estimate(model, torch.zeros(1, 4, dtype=torch.long), mode="generate", device="cpu", steps=1)


# -- fine-tuning ----------------------------------------------------------------------


def test_lora_adam_state_is_for_the_adapters_only() -> None:
    target = from_hf_config("llama", overrides=TINY_LLAMA, lora=LoRA(8, ("q_proj", "v_proj")), seq=32)
    report = nnmem.estimate(target.model, target.inputs, device="cpu")
    # q_proj: 128 -> 128, v_proj: 128 -> 64; A is 8 x in, B is out x 8; 2 layers
    adapters = 2 * ((8 * 128 + 128 * 8) + (8 * 128 + 64 * 8))
    assert target.trainable_parameters == adapters
    # exp_avg and exp_avg_sq in fp32, plus a float32 step per adapter tensor (2 layers x 2 targets x A, B)
    assert report.categories.optimizer_state == 2 * adapters * FP32 + 2 * 2 * 2 * FP32
    assert report.categories.gradient <= adapters * FP32


def test_lora_with_gradient_checkpointing_matches_the_measured_run() -> None:
    target = from_hf_config(
        "llama",
        overrides=TINY_LLAMA,
        lora=LoRA(8, ("q_proj", "v_proj")),
        gradient_checkpointing=True,
        batch=2,
        seq=64,
    )
    guess = nnmem.estimate(target.model, target.inputs, device="cpu", threads=2)
    truth = nnmem.measure(target.model, target.inputs, threads=2)
    assert abs(guess.peak_bytes - truth.peak_bytes) <= 0.01 * truth.peak_bytes


def test_gradient_checkpointing_keeps_less_than_the_full_forward() -> None:
    plain = from_hf_config("llama", overrides=TINY_LLAMA, batch=2, seq=256)
    checkpointed = from_hf_config(
        "llama", overrides=TINY_LLAMA, batch=2, seq=256, gradient_checkpointing=True
    )
    full = nnmem.estimate(plain.model, plain.inputs, device="cpu", steps=1)
    saved = nnmem.estimate(checkpointed.model, checkpointed.inputs, device="cpu", steps=1)
    # with checkpointing the forward keeps each layer's input, not its insides
    assert saved.steady.bytes < full.steady.bytes


# -- the 8-bit optimizer --------------------------------------------------------------


def _adam8bit_state_bytes(numels: list[int]) -> int:
    total = 2 * 256 * FP32  # the two shared quantization maps
    for n in numels:
        if n < 4096:  # bitsandbytes keeps 32-bit state for small tensors
            total += 2 * n * FP32
        else:  # two uint8 moments and a float32 absmax per block of 2048, for each
            total += 2 * n + 2 * math.ceil(n / BLOCK_SIZE) * FP32
    return total


def test_adam8bit_state_follows_the_bitsandbytes_layout() -> None:
    def build() -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Linear(64, 3000), torch.nn.ReLU(), torch.nn.Linear(3000, 10))

    report = nnmem.estimate(build, torch.empty(8, 64, device="meta"), optimizer="adam8bit", device="cpu")
    numels = [64 * 3000, 3000, 3000 * 10, 10]
    assert report.categories.optimizer_state == _adam8bit_state_bytes(numels)
    assert Adam8bit.nnmem_note == NOTE


def test_adam8bit_updates_like_adam_roughly() -> None:
    torch.manual_seed(0)
    start = torch.randn(5000)
    weight, reference = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    ours, theirs = Adam8bit([weight], lr=1e-2), torch.optim.Adam([reference], lr=1e-2)
    for _ in range(3):
        gradient = torch.randn(5000)
        weight.grad, reference.grad = gradient.clone(), gradient.clone()
        ours.step()
        theirs.step()
    # 8-bit moments: the same steps up to a little quantization noise (3 steps of lr 0.01 move 0.03)
    ours_moved, adam_moved = weight.detach() - start, reference.detach() - start
    assert torch.nn.functional.cosine_similarity(ours_moved, adam_moved, dim=0) > 0.999
    assert (ours_moved - adam_moved).abs().max() < 0.1 * adam_moved.abs().max()
