"""Orchard's MLX engine: model families, loading, caches, sampling and generation.

    model, tokenizer = mlxmodels.load("qwen3-0.6b")      # or a path, a .gguf, a repo id, None
    for chunk in mlxmodels.stream_generate(model, tokenizer, "Hello"):
        print(chunk.text, end="")
"""
# ruff: noqa: E402

# Before anything imports mlx.core: give its CPU backend a fast BLAS (see blas.py), and keep
# freed memory for reuse rather than faulting fresh pages in for every large array (allocator.py).
from mlxmodels import allocator as _allocator
from mlxmodels import blas as _blas

_blas.select()
_allocator.tune()

from mlxmodels.api import load, load_model, make_cache, warm_up
from mlxmodels.errors import OrchardError
from mlxmodels.generate import GenerationChunk, GenerationStats, generate, stream_generate
from mlxmodels.sampling import SamplingParams

__all__ = [
    "GenerationChunk",
    "GenerationStats",
    "OrchardError",
    "SamplingParams",
    "generate",
    "load",
    "load_model",
    "make_cache",
    "stream_generate",
    "warm_up",
]
