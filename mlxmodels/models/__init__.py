"""One module per model family; `model_type` in config.json picks it."""

from __future__ import annotations

import importlib

from mlxmodels.errors import ConfigError

# model_type -> module under mlxmodels.models. SmolLM2 checkpoints say "llama".
FAMILIES = {
    "llama": "llama",
    "mistral": "mistral",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "gemma3_text": "gemma3_text",
    "gemma3": "gemma3_text",  # multimodal checkpoints: the text tower (read_config merges text_config)
    "mixtral": "mixtral",
    "qwen2_moe": "qwen2_moe",
    "qwen3_moe": "qwen3_moe",
    "olmoe": "olmoe",
    "gpt_oss": "gpt_oss",
    "smollm3": "smollm3",  # NoPE layers
    "olmo2": "olmo2",  # post-norm, full-width QK-norm
    "olmo3": "olmo3",  # OLMo 2 with sliding-window layers
    "llama4_text": "llama4_text",  # chunked attention, NoPE layers, sigmoid top-1 MoE
    "llama4": "llama4_text",  # multimodal checkpoints: the text model (read_config merges text_config)
    "mamba": "mamba",
    "mamba2": "mamba2",
    # Hybrid and linear-attention families: a layer pattern mixes full attention with linear-time
    # layers (gated delta rule, Mamba, short convolutions).
    "qwen3_next": "qwen3_next",
    "qwen3_5": "qwen3_5",
    "qwen3_5_text": "qwen3_5",  # the text tower of a multimodal checkpoint (read_config merges text_config)
    "qwen3_5_moe": "qwen3_5_moe",
    "qwen3_5_moe_text": "qwen3_5_moe",
    "kimi_linear": "kimi_linear",
    "jamba": "jamba",
    "falcon_h1": "falcon_h1",
    "granitemoehybrid": "granitemoehybrid",
    "nemotron_h": "nemotron_h",
    "lfm2": "lfm2",
    "phi3": "phi3",  # Phi-3, Phi-3.5-mini, Phi-4-mini
    "gemma2": "gemma2",
    # Multi-head Latent Attention and DeepSeek-style mixtures of experts
    "deepseek_v2": "deepseek_v2",
    "deepseek_v3": "deepseek_v3",  # also Moonlight
    "kimi_k2": "deepseek_v3",  # Kimi K2's checkpoints: DeepSeek-V3's architecture under their own name
    "glm4_moe": "glm4_moe",  # GLM-4.5 / 4.6
}


def supported_model_types() -> list[str]:
    return sorted(FAMILIES)


def family_module(config: dict):
    """The module implementing the config's family, or a one-line error listing the supported ones."""
    model_type = config.get("model_type")
    source = config.get("_source", "config.json")
    if not model_type:
        raise ConfigError(f"{source}: missing required field 'model_type'")
    if model_type not in FAMILIES:
        raise ConfigError(
            f"{source}: unsupported model_type '{model_type}' (supported: {', '.join(supported_model_types())})"
        )
    return importlib.import_module(f"mlxmodels.models.{FAMILIES[model_type]}")


def build_model(config: dict):
    module = family_module(config)
    return module.Model(module.ModelArgs.from_config(config))
