"""Synthetic models: real models' shapes with random weights, built without any download.

Decode and prefill speed depend on shapes, dtypes and quantization, not on weight values, so a
model with a real config and random weights times like the real thing. Quantized weights are drawn
directly in packed form (random uint32 words plus scales and biases), so an 8B shape never exists
as fp32; only small unquantized tensors (norms, biases, SSM parameters) keep their initialisers.

Mixture-of-experts presets: the router's weights are random like the rest, so each token's top-k
experts are effectively drawn uniformly at random, the same on average as a balanced real router.
"""

from __future__ import annotations

import math
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from mlxmodels.errors import OrchardError

_LLAMA3_ROPE = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}

# Configs as in the models' config.json (the fields the families read), transformers 4.x dialect.
PRESETS: dict[str, dict] = {
    "smollm2-135m": dict(model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, vocab_size=49152, rms_norm_eps=1e-5,
                         rope_theta=100000.0, max_position_embeddings=8192, tie_word_embeddings=True),
    "llama-3.2-1b": dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
                         rms_norm_eps=1e-5, rope_theta=500000.0, rope_scaling=_LLAMA3_ROPE,
                         max_position_embeddings=131072, tie_word_embeddings=True),
    "llama-3.2-3b": dict(model_type="llama", hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                         num_attention_heads=24, num_key_value_heads=8, head_dim=128, vocab_size=128256,
                         rms_norm_eps=1e-5, rope_theta=500000.0, rope_scaling=_LLAMA3_ROPE,
                         max_position_embeddings=131072, tie_word_embeddings=True),
    "llama-3.1-8b": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=128256,
                         rms_norm_eps=1e-5, rope_theta=500000.0, rope_scaling=_LLAMA3_ROPE,
                         max_position_embeddings=131072, tie_word_embeddings=False),
    "qwen3-0.6b": dict(model_type="qwen3", hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                       rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=40960,
                       tie_word_embeddings=True),
    "qwen3-8b": dict(model_type="qwen3", hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                     rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=40960,
                     tie_word_embeddings=False),
    "qwen3-30b-a3b": dict(model_type="qwen3_moe", hidden_size=2048, intermediate_size=6144, num_hidden_layers=48,
                          num_attention_heads=32, num_key_value_heads=4, head_dim=128, vocab_size=151936,
                          rms_norm_eps=1e-6, rope_theta=1000000.0, max_position_embeddings=40960,
                          tie_word_embeddings=False, num_experts=128, num_experts_per_tok=8,
                          moe_intermediate_size=768, decoder_sparse_step=1, mlp_only_layers=[],
                          norm_topk_prob=True),
    "mixtral-8x7b": dict(model_type="mixtral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=32000, rms_norm_eps=1e-5,
                         rope_theta=1000000.0, max_position_embeddings=32768, tie_word_embeddings=False,
                         num_local_experts=8, num_experts_per_tok=2),
    "mamba-1.4b": dict(model_type="mamba", hidden_size=2048, num_hidden_layers=48, vocab_size=50280,
                       state_size=16, conv_kernel=4, expand=2, time_step_rank=128, layer_norm_epsilon=1e-5,
                       use_bias=False, use_conv_bias=True, tie_word_embeddings=True),
}

BITS = (2, 3, 4, 5, 6, 8, 16)  # 16: unquantized (float weights)


def preset_config(name: str, bits: int = 4, group_size: int = 64) -> dict:
    """The preset's config, with the quantization block a converted model would carry."""
    if name not in PRESETS:
        raise OrchardError(f"--synthetic: unknown model '{name}' (choose from {', '.join(PRESETS)})")
    if bits not in BITS:
        raise OrchardError(f"--bits: {bits} is not supported (choose from {', '.join(map(str, BITS))})")
    if group_size not in (32, 64, 128):
        raise OrchardError(f"--group-size: {group_size} is not supported (choose 32, 64 or 128)")
    from mlxmodels.models import FAMILIES

    config = dict(PRESETS[name], _source=f"synthetic preset '{name}'")
    if config["model_type"] not in FAMILIES:
        raise OrchardError(
            f"--synthetic {name}: the '{config['model_type']}' model family is not available in this Orchard build"
        )
    if bits < 16:
        config["quantization"] = {"group_size": group_size, "bits": bits}
    return config


def _random_quantized(shape: tuple, bits: int, group_size: int, dtype, kind: str) -> mx.array:
    """Packed random words, or scales/biases that map them onto ±1/sqrt(fan_in) (a sane activation scale)."""
    if kind == "weight":
        # Full-range int32 draws reinterpreted as uint32: every 4-bit (or b-bit) field is uniform.
        return mx.random.randint(-(2**31), 2**31 - 1, shape, dtype=mx.int32).view(mx.uint32)
    fan_in = shape[-1] * group_size
    bound = 1.0 / math.sqrt(fan_in)
    if kind == "scales":
        return mx.full(shape, 2 * bound / (2**bits - 1), dtype=dtype)
    return mx.full(shape, -bound, dtype=dtype)


def synthetic_weights(config: dict, seed: int = 0, progress=None) -> dict[str, mx.array]:
    """Random weights for `config`, named as a converted checkpoint names them."""
    from mlxmodels.models import build_model

    mx.random.seed(seed)
    q = config.get("quantization")
    model = build_model(config)
    # Parameters are still lazy here: quantizing only records the graph, which is dropped below
    # when every quantized tensor is replaced by fresh random words.
    if q:
        nn.quantize(model, group_size=q["group_size"], bits=q["bits"])
    quantized_paths = {p for p, m in model.named_modules() if hasattr(m, "scales") and hasattr(m, "bits")}
    params = tree_flatten(model.parameters())
    if not q:
        size = sum(a.nbytes for _, a in params)
        from mlxmodels.cpu_weights import physical_memory

        if size > 0.5 * physical_memory():
            raise OrchardError(
                f"--synthetic: unquantized weights need {size / 1e9:.1f} GB, more than half of this "
                "machine's memory (use --bits 4)"
            )
    weights = {}
    for i, (name, value) in enumerate(params):
        owner, _, kind = name.rpartition(".")
        if owner in quantized_paths and kind in ("weight", "scales", "biases"):
            value = _random_quantized(value.shape, q["bits"], q["group_size"], value.dtype, kind)
        mx.eval(value)  # one tensor at a time: peak memory stays near the final size
        weights[name] = value
        if progress is not None and (i % 50 == 0 or i == len(params) - 1):
            progress(i + 1, len(params))
    return weights


def build_synthetic(name: str, bits: int = 4, group_size: int = 64, cpu_weights: str = "auto", progress=None):
    """(model, weights, config): an Orchard model with the preset's shapes and random weights.

    `weights` is kept so a comparison engine can load the very same tensors.
    """
    from mlxmodels.loading import assemble

    config = preset_config(name, bits, group_size)
    weights = synthetic_weights(config, progress=progress)
    model = assemble(config, dict(weights), {}, Path(f"synthetic:{name}"), None, cpu_weights)
    return model, weights, config
