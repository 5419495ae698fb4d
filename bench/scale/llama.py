"""Scale benchmark: a full training-step estimate of a Llama-shaped model on this machine.

Usage: python bench/scale/llama.py 7b|70b [--full]   (prints one JSON line: time, peak RSS, peak)
Each size runs in its own process so that the peak RSS is that estimate's alone. By default
the repeated decoder layers are extrapolated exactly from traces with 2, 3 and 4 layers
(nnmem.analyses.extrapolate); --full traces every layer.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Callable

import torch

import nnmem
from nnmem.analyses.extrapolate import estimate_repeated

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


def main(size: str, full: bool = False) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = dict(SHAPES[size])
    seq = shape.pop("seq")
    config = LlamaConfig(**shape, max_position_embeddings=seq)

    def build(layers: int) -> Callable[[], torch.nn.Module]:
        return lambda: LlamaForCausalLM(LlamaConfig(**{**config.to_dict(), "num_hidden_layers": layers}))

    ids = torch.zeros(1, seq, dtype=torch.long, device="meta")
    keywords = dict(mode="train", optimizer="adamw", dtype="bfloat16", device="cpu")
    inputs = {"input_ids": ids, "labels": ids}
    layers = config.num_hidden_layers
    start = time.perf_counter()
    if full:
        report = nnmem.estimate(build(layers), inputs, **keywords)
    else:
        report = estimate_repeated(build, layers, inputs, **keywords)
    seconds = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    print(
        json.dumps(
            {
                "size": size,
                "method": "full trace" if full else next(n for n in report.notes if "extrapolated" in n),
                "seconds": round(seconds, 2),
                "peak_rss_bytes": rss,
                "parameters": report.parameters,
                "peak_bytes": report.peak_bytes,
                "categories": report.categories.to_dict(),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "7b", "--full" in sys.argv)
