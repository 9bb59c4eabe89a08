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
    # Hybrid / linear-attention families (docs/families.md has their cache per token of context).
    "qwen3-next-80b-a3b": dict(model_type="qwen3_next", hidden_size=2048, num_hidden_layers=48,
                               num_attention_heads=16, num_key_value_heads=2, head_dim=256, intermediate_size=5120,
                               moe_intermediate_size=512, shared_expert_intermediate_size=512, num_experts=512,
                               num_experts_per_tok=10, norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[],
                               linear_num_key_heads=16, linear_num_value_heads=32, linear_key_head_dim=128,
                               linear_value_head_dim=128, linear_conv_kernel_dim=4, full_attention_interval=4,
                               partial_rotary_factor=0.25, rope_theta=10000000.0, max_position_embeddings=262144,
                               rms_norm_eps=1e-6, vocab_size=151936, tie_word_embeddings=False),
    # Qwen3.6-35B-A3B has Qwen3.5-35B-A3B's architecture (transformers: same model_type and classes).
    "qwen3.6-35b-a3b": dict(model_type="qwen3_5_moe_text", hidden_size=2048, num_hidden_layers=40,
                            num_attention_heads=16, num_key_value_heads=2, head_dim=256,
                            moe_intermediate_size=512, shared_expert_intermediate_size=512, num_experts=256,
                            num_experts_per_tok=8, linear_num_key_heads=16, linear_num_value_heads=32,
                            linear_key_head_dim=128, linear_value_head_dim=128, linear_conv_kernel_dim=4,
                            layer_types=(["linear_attention"] * 3 + ["full_attention"]) * 10,
                            rope_parameters={"rope_type": "default", "rope_theta": 10000000.0,
                                             "partial_rotary_factor": 0.25},
                            max_position_embeddings=262144, rms_norm_eps=1e-6, vocab_size=248320,
                            tie_word_embeddings=False),
    "falcon-h1-7b": dict(model_type="falcon_h1", hidden_size=3072, num_hidden_layers=44, num_attention_heads=12,
                         num_key_value_heads=2, head_dim=128, intermediate_size=12288, mamba_d_ssm=3072,
                         mamba_n_heads=24, mamba_d_head=128, mamba_d_state=256, mamba_n_groups=1, mamba_d_conv=4,
                         mamba_chunk_size=128, mamba_rms_norm=False, rope_theta=1e11,
                         max_position_embeddings=262144, rms_norm_eps=1e-5, vocab_size=130048,
                         tie_word_embeddings=False),
    "lfm2-1.2b": dict(model_type="lfm2", hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                      num_key_value_heads=8, block_ff_dim=12288, block_auto_adjust_ff_dim=True,
                      block_ffn_dim_multiplier=1.0, block_multiple_of=256, conv_L_cache=3, conv_bias=False,
                      full_attn_idxs=[2, 5, 8, 10, 12, 14], rope_theta=1000000.0, norm_eps=1e-5,
                      max_position_embeddings=128000, vocab_size=65536, tie_word_embeddings=True),
    # The 2025 attention variants.
    "gpt-oss-20b": dict(model_type="gpt_oss", hidden_size=2880, intermediate_size=2880, num_hidden_layers=24,
                        num_attention_heads=64, num_key_value_heads=8, head_dim=64, vocab_size=201088,
                        num_local_experts=32, num_experts_per_tok=4, sliding_window=128,
                        layer_types=["sliding_attention", "full_attention"] * 12, rms_norm_eps=1e-5,
                        rope_theta=150000.0, rope_scaling={"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0,
                                                           "beta_slow": 1.0, "truncate": False,
                                                           "original_max_position_embeddings": 4096},
                        max_position_embeddings=131072, attention_bias=True, swiglu_limit=7.0,
                        tie_word_embeddings=False),
    "smollm3-3b": dict(model_type="smollm3", hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                       num_attention_heads=16, num_key_value_heads=4, head_dim=128, vocab_size=128256,
                       no_rope_layer_interval=4, rope_theta=5000000.0, max_position_embeddings=65536,
                       rms_norm_eps=1e-6, tie_word_embeddings=True),
    # LongRoPE factors are learned numbers; ones cost the same as the real ones.
    "phi-4-mini": dict(model_type="phi3", hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
                       num_attention_heads=24, num_key_value_heads=8, vocab_size=200064, partial_rotary_factor=0.75,
                       rope_theta=10000.0, max_position_embeddings=131072, original_max_position_embeddings=4096,
                       rope_scaling={"type": "longrope", "short_factor": [1.0] * 48, "long_factor": [1.0] * 48},
                       rms_norm_eps=1e-5, tie_word_embeddings=True, sliding_window=262144),
    "gemma-2-9b": dict(model_type="gemma2", hidden_size=3584, intermediate_size=14336, num_hidden_layers=42,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=256, vocab_size=256000,
                       query_pre_attn_scalar=256, sliding_window=4096, attn_logit_softcapping=50.0,
                       final_logit_softcapping=30.0, rope_theta=10000.0, max_position_embeddings=8192,
                       hidden_activation="gelu_pytorch_tanh", rms_norm_eps=1e-6, tie_word_embeddings=True),
    "olmo-2-7b": dict(model_type="olmo2", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, vocab_size=100352, rope_theta=500000.0,
                      rms_norm_eps=1e-6, max_position_embeddings=4096, tie_word_embeddings=False),
    "llama-4-scout": dict(model_type="llama4_text", hidden_size=5120, num_hidden_layers=48, num_attention_heads=40,
                          num_key_value_heads=8, head_dim=128, num_local_experts=16, num_experts_per_tok=1,
                          intermediate_size=8192, intermediate_size_mlp=16384, vocab_size=202048,
                          attention_chunk_size=8192, interleave_moe_layer_step=1, use_qk_norm=True,
                          attn_temperature_tuning=True, floor_scale=8192, attn_scale=0.1,
                          rope_theta=500000.0, rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                                             "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                             "original_max_position_embeddings": 8192},
                          max_position_embeddings=262144, rms_norm_eps=1e-5, tie_word_embeddings=False),
    # Multi-head latent attention with DeepSeek routing.
    "deepseek-v2-lite": dict(model_type="deepseek_v2", hidden_size=2048, num_hidden_layers=27,
                             num_attention_heads=16, num_key_value_heads=16, kv_lora_rank=512, q_lora_rank=None,
                             qk_rope_head_dim=64, qk_nope_head_dim=128, v_head_dim=128, n_routed_experts=64,
                             num_experts_per_tok=6, n_shared_experts=2, first_k_dense_replace=1, moe_layer_freq=1,
                             moe_intermediate_size=1408, intermediate_size=10944, vocab_size=102400,
                             topk_method="greedy", n_group=1, topk_group=1, routed_scaling_factor=1.0,
                             norm_topk_prob=False, rope_theta=10000.0, max_position_embeddings=163840,
                             rope_scaling={"type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096,
                                           "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 0.707,
                                           "mscale_all_dim": 0.707},
                             rms_norm_eps=1e-6, tie_word_embeddings=False),
    "moonlight-16b-a3b": dict(model_type="deepseek_v3", hidden_size=2048, num_hidden_layers=27,
                              num_attention_heads=16, num_key_value_heads=16, kv_lora_rank=512, q_lora_rank=None,
                              qk_rope_head_dim=64, qk_nope_head_dim=128, v_head_dim=128, n_routed_experts=64,
                              num_experts_per_tok=6, n_shared_experts=2, first_k_dense_replace=1, moe_layer_freq=1,
                              moe_intermediate_size=1408, intermediate_size=11264, vocab_size=163840,
                              n_group=1, topk_group=1, routed_scaling_factor=2.446, norm_topk_prob=True,
                              rope_theta=50000.0, max_position_embeddings=8192, rms_norm_eps=1e-5,
                              num_nextn_predict_layers=0, tie_word_embeddings=False),
    "glm-4.5-air": dict(model_type="glm4_moe", hidden_size=4096, num_hidden_layers=46, num_attention_heads=96,
                        num_key_value_heads=8, head_dim=128, intermediate_size=10944, n_routed_experts=128,
                        moe_intermediate_size=1408, num_experts_per_tok=8, n_shared_experts=1,
                        first_k_dense_replace=1, routed_scaling_factor=1.0, norm_topk_prob=True, n_group=1,
                        topk_group=1, partial_rotary_factor=0.5, rope_theta=1000000.0,
                        max_position_embeddings=131072, vocab_size=151552, rms_norm_eps=1e-5, attention_bias=True,
                        use_qk_norm=False, num_nextn_predict_layers=0, tie_word_embeddings=False),
    "mamba-1.4b": dict(model_type="mamba", hidden_size=2048, num_hidden_layers=48, vocab_size=50280,
                       state_size=16, conv_kernel=4, expand=2, time_step_rank=128, layer_norm_epsilon=1e-5,
                       use_bias=False, use_conv_bias=True, tie_word_embeddings=True),
}

BITS = (2, 3, 4, 5, 6, 8, 16)  # 16: unquantized (float weights)


def preset_config(name: str, bits: int = 4, group_size: int = 64, layers: int | None = None,
                  overrides: dict | None = None) -> dict:
    """The preset's config, with the quantization block a converted model would carry; `layers`
    keeps only the first layers (real widths), for models larger than this machine's memory;
    `overrides` replaces config fields (what-if studies, e.g. fewer experts)."""
    if name not in PRESETS:
        raise OrchardError(f"--synthetic: unknown model '{name}' (choose from {', '.join(PRESETS)})")
    if bits not in BITS:
        raise OrchardError(f"--bits: {bits} is not supported (choose from {', '.join(map(str, BITS))})")
    if group_size not in (32, 64, 128):
        raise OrchardError(f"--group-size: {group_size} is not supported (choose 32, 64 or 128)")
    from mlxmodels.models import FAMILIES

    config = dict(PRESETS[name], _source=f"synthetic preset '{name}'")
    for key, value in (overrides or {}).items():
        if key not in config:
            raise OrchardError(f"--override: '{key}' is not a field of the {name} preset "
                               f"(fields: {', '.join(sorted(k for k in config if not k.startswith('_')))})")
        config[key] = value
    if layers is not None:
        config = first_layers(config, layers, name)
    if config["model_type"] not in FAMILIES:
        raise OrchardError(
            f"--synthetic {name}: the '{config['model_type']}' model family is not available in this Orchard build"
        )
    if bits < 16:
        config["quantization"] = {"group_size": group_size, "bits": bits}
    return config


def first_layers(config: dict, layers: int, name: str) -> dict:
    """`config` cut to its first `layers` layers: per-layer lists and patterns are cut alike, and
    layer indices past the cut dropped, so a hybrid keeps its layer kinds in their order."""
    total = config["num_hidden_layers"]
    if not 1 <= layers <= total:
        raise OrchardError(f"--layers: {layers} is not between 1 and {total} (the layers of {name})")
    out = dict(config, num_hidden_layers=layers)
    for key, value in config.items():
        if isinstance(value, (list, str)) and len(value) == total and key != "model_type":
            out[key] = value[:layers]  # layer_types, hybrid_override_pattern, ...
    for key in ("full_attn_idxs", "mlp_only_layers", "moe_layers", "attn_layer_indices"):
        if isinstance(config.get(key), list):
            out[key] = [i for i in config[key] if i < layers]
    return out


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


def build_synthetic(name: str, bits: int = 4, group_size: int = 64, cpu_weights: str = "auto", progress=None,
                    layers: int | None = None, overrides: dict | None = None):
    """(model, weights, config): an Orchard model with the preset's shapes and random weights.

    `weights` is kept so a comparison engine can load the very same tensors.
    """
    from mlxmodels.loading import assemble

    config = preset_config(name, bits, group_size, layers, overrides)
    weights = synthetic_weights(config, progress=progress)
    model = assemble(config, dict(weights), {}, Path(f"synthetic:{name}"), None, cpu_weights)
    return model, weights, config
