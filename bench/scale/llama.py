"""Scale benchmark: a full training-step estimate of a Llama-shaped model on this machine.

Usage: python bench/scale/llama.py 7b|70b   (prints one JSON line: time, peak RSS, peak)
Each size runs in its own process so that the peak RSS is that estimate's alone.
"""

from __future__ import annotations

import json
import resource
import sys
import time

import torch

import nnmem

SHAPES = {
    # hidden, layers, heads, kv heads, intermediate, vocab, seq
    "7b": dict(
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        intermediate_size=11008,
        vocab_size=32000,
        seq=2048,
    ),
    "70b": dict(
        hidden_size=8192,
        num_hidden_layers=80,
        num_attention_heads=64,
        num_key_value_heads=8,
        intermediate_size=28672,
        vocab_size=32000,
        seq=4096,
    ),
}


def main(size: str) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = dict(SHAPES[size])
    seq = shape.pop("seq")
    config = LlamaConfig(**shape, max_position_embeddings=seq)

    def build() -> torch.nn.Module:
        return LlamaForCausalLM(config)

    ids = torch.zeros(1, seq, dtype=torch.long, device="meta")
    start = time.perf_counter()
    report = nnmem.estimate(
        build,
        {"input_ids": ids, "labels": ids},
        mode="train",
        optimizer="adamw",
        dtype="bfloat16",
        device="cpu",
    )
    seconds = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    print(
        json.dumps(
            {
                "size": size,
                "seconds": round(seconds, 2),
                "peak_rss_bytes": rss,
                "parameters": report.parameters,
                "peak_bytes": report.peak_bytes,
                "categories": report.categories.to_dict(),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "7b")
