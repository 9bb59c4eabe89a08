"""llama.cpp's names and metadata -> Hugging Face names and config, per GGUF architecture.

llama.cpp's converter (convert_hf_to_gguf.py) renames every tensor (`blk.3.attn_q.weight` is
`model.layers.3.self_attn.q_proj.weight`), writes the config as `<arch>.*` metadata, and changes a
few tensors on the way; what it hard-codes in llama.cpp instead of storing is filled in here:

| architecture | Hugging Face family | undone / filled in |
|---|---|---|
| llama | llama (SmolLM2, Llama 2/3) | Q/K rows permuted for interleaved RoPE (undone); Llama 3.1's `rope_freqs` -> llama3 scaling |
| qwen2 | qwen2 | - |
| qwen3 | qwen3 | - |
| qwen3moe | qwen3_moe | experts stored stacked ([experts, out, in]); top-k weights always renormalised |
| gemma2 | gemma2 | norms stored as 1 + w; sliding and global layers alternate; query scale head_dim (27B: hidden / heads) |
| gemma3 | gemma3_text | norms 1 + w; local RoPE base 10000, every 6th layer global; query scale head_dim |
| phi3 | phi3 | LongRoPE factor lists stored as tensors `rope_factors_long` / `rope_factors_short` |
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from mlxmodels.errors import ConfigError

_BLOCK = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_QK_NORMS = {"attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}
# Gemma's sandwich norms: llama.cpp's `ffn_norm` is the norm *before* the MLP.
_GEMMA_NORMS = {
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
# Experts are stored stacked, [experts, out, in]: our (and mlx-lm's) layout already.
_EXPERTS = {
    "ffn_gate_inp": "mlp.gate",
    "ffn_gate_exps": "mlp.experts.gate_proj",
    "ffn_up_exps": "mlp.experts.up_proj",
    "ffn_down_exps": "mlp.experts.down_proj",
}
BLOCK_NAMES = {
    "llama": _BLOCK,
    "qwen2": _BLOCK,
    "qwen3": {**_BLOCK, **_QK_NORMS},
    "qwen3moe": {**_BLOCK, **_QK_NORMS, **_EXPERTS},
    "gemma2": {**_BLOCK, **_GEMMA_NORMS},
    "gemma3": {**_BLOCK, **_GEMMA_NORMS, **_QK_NORMS},
    "phi3": {**_BLOCK, "attn_qkv": "self_attn.qkv_proj", "ffn_up": "mlp.gate_up_proj"},
}
SUPPORTED_ARCHITECTURES = tuple(BLOCK_NAMES)
_GLOBAL_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
# Tensors that are config, not weights: folded into the config's RoPE settings.
CONFIG_TENSORS = ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight")
_FAMILIES = {
    "llama": ("llama", "LlamaForCausalLM"),
    "qwen2": ("qwen2", "Qwen2ForCausalLM"),
    "qwen3": ("qwen3", "Qwen3ForCausalLM"),
    "qwen3moe": ("qwen3_moe", "Qwen3MoeForCausalLM"),
    "gemma2": ("gemma2", "Gemma2ForCausalLM"),
    "gemma3": ("gemma3_text", "Gemma3ForCausalLM"),
    "phi3": ("phi3", "Phi3ForCausalLM"),
}


def check_architecture(path: Path, arch) -> None:
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ConfigError(
            f"{path}: unsupported GGUF architecture '{arch}' (supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
        )


def hf_name(name: str, arch: str) -> str | None:
    """`blk.3.attn_q.weight` -> `model.layers.3.self_attn.q_proj.weight`; None for unknown names."""
    base, _, kind = name.rpartition(".")  # kind: weight / scales / biases / bias
    m = re.fullmatch(r"blk\.(\d+)\.(\w+)", base)
    if m and m.group(2) in BLOCK_NAMES[arch]:
        return f"model.layers.{m.group(1)}.{BLOCK_NAMES[arch][m.group(2)]}.{kind}"
    if base in _GLOBAL_NAMES:
        return f"{_GLOBAL_NAMES[base]}.{kind}"
    return None


def model_config(path: Path, arch: str, meta: dict, tensor_names: set, read_tensor) -> dict:
    """A Hugging Face (4.x dialect) config from the metadata; `read_tensor(name)` gives a small float
    tensor (RoPE factors) as numpy."""

    def need(key):
        value = meta.get(f"{arch}.{key}")
        if value is None:
            raise ConfigError(f"{path}: GGUF metadata lacks '{arch}.{key}'")
        return value

    def get(key, default):
        value = meta.get(f"{arch}.{key}")
        return default if value is None else value

    hidden = int(need("embedding_length"))
    heads = int(need("attention.head_count"))
    layers = int(need("block_count"))
    vocab = len(meta["tokenizer.ggml.tokens"]) if "tokenizer.ggml.tokens" in meta else int(need("vocab_size"))
    head_dim = int(get("attention.key_length", hidden // heads))
    model_type, architecture = _FAMILIES[arch]
    moe = arch == "qwen3moe"
    config = {
        "_source": str(path),
        "model_type": model_type,
        "architectures": [architecture],
        "hidden_size": hidden,
        "intermediate_size": int(get("feed_forward_length", 0) if moe else need("feed_forward_length")),
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": int(get("attention.head_count_kv", heads)),
        "head_dim": head_dim,
        "rms_norm_eps": float(get("attention.layer_norm_rms_epsilon", 1e-5 if arch == "llama" else 1e-6)),
        "rope_theta": float(get("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(get("context_length", 4096)),
        "vocab_size": vocab,
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "torch_dtype": "float16",
    }
    for key in ("bos_token_id", "eos_token_id", "padding_token_id"):
        if f"tokenizer.ggml.{key}" in meta:
            config[key.replace("padding", "pad")] = int(meta[f"tokenizer.ggml.{key}"])
    scaling = get("rope.scaling.type", None)
    if scaling in ("linear", "yarn"):
        config["rope_scaling"] = {"rope_type": scaling, "factor": float(need("rope.scaling.factor"))}
        if get("rope.scaling.original_context_length", None) is not None:
            config["rope_scaling"]["original_max_position_embeddings"] = int(
                need("rope.scaling.original_context_length"))
    if moe:
        config.update(
            num_experts=int(need("expert_count")),
            num_experts_per_tok=int(need("expert_used_count")),
            moe_intermediate_size=int(need("expert_feed_forward_length")),
            norm_topk_prob=True,  # llama.cpp's qwen3moe graph always renormalises the top-k weights
            decoder_sparse_step=1,  # and every layer is a MoE layer
            mlp_only_layers=[],
        )
        config["intermediate_size"] = config["intermediate_size"] or config["moe_intermediate_size"]
    if arch in ("gemma2", "gemma3"):
        _gemma(config, arch, get, layers)
    if arch == "phi3":
        _phi3(config, path, get, tensor_names, read_tensor)
    if "rope_freqs.weight" in tensor_names:
        # Llama 3.1 GGUFs store the llama3 scaling as per-frequency divisors instead of parameters.
        config["rope_scaling"] = llama3_scaling(
            read_tensor("rope_freqs.weight"), config["rope_theta"], head_dim,
            get("rope.scaling.factor", None), get("rope.scaling.original_context_length", None))
    return config


def _gemma(config: dict, arch: str, get, layers: int) -> None:
    """What llama.cpp hard-codes for Gemma 2 / 3 rather than storing."""
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    # Attention is scaled by head_dim, except for the 27B models (46 / 62 layers): hidden / heads.
    big = layers == (46 if arch == "gemma2" else 62)
    config.update(
        hidden_activation="gelu_pytorch_tanh",
        query_pre_attn_scalar=hidden // heads if big else config["head_dim"],
        sliding_window=int(get("attention.sliding_window", 4096 if arch == "gemma2" else 512)),
    )
    # Every n-th layer is global (Gemma 2: every 2nd, Gemma 3: every 6th), unless the file says otherwise
    # (`attention.sliding_window_pattern`: that n, or one flag per layer, true for sliding layers).
    pattern = get("attention.sliding_window_pattern", 2 if arch == "gemma2" else 6)
    if isinstance(pattern, (list, np.ndarray)):
        config["layer_types"] = ["sliding_attention" if p else "full_attention" for p in pattern]
    else:
        config["sliding_window_pattern"] = int(pattern)
    if arch == "gemma3":
        config["rope_local_base_freq"] = float(get("rope.freq_base_swa", 10000.0))
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        if get(key, None) is not None:  # absent: the family's default, as llama.cpp's
            config[key] = float(get(key, None))


def _phi3(config: dict, path: Path, get, tensor_names: set, read_tensor) -> None:
    """Phi-3: partial rotary from the RoPE dimension count, LongRoPE factors from tensors, and a
    sliding window of 0 meaning none (Phi-4)."""
    head_dim = config["head_dim"]
    rotary = int(get("rope.dimension_count", head_dim))
    config["partial_rotary_factor"] = rotary / head_dim
    window = int(get("attention.sliding_window", 0))
    config["sliding_window"] = window or None
    original = get("rope.scaling.original_context_length", None)
    if original is not None:
        config["original_max_position_embeddings"] = int(original)
    if "rope_factors_long.weight" in tensor_names:
        if "rope_factors_short.weight" not in tensor_names or original is None:
            raise ConfigError(f"{path}: GGUF has 'rope_factors_long' but lacks 'rope_factors_short' or "
                              "'phi3.rope.scaling.original_context_length'")
        config["rope_scaling"] = {
            "type": "longrope",  # Phi-3's own 4.x spelling, which mlx-lm requires
            "long_factor": [float(v) for v in read_tensor("rope_factors_long.weight")],
            "short_factor": [float(v) for v in read_tensor("rope_factors_short.weight")],
        }
        if get("rope.scaling.attn_factor", None) is not None:
            config["rope_scaling"]["attention_factor"] = float(get("rope.scaling.attn_factor", None))


def llama3_scaling(factors: np.ndarray, base: float, head_dim: int, factor=None, original=None) -> dict:
    """The llama3 RoPE scaling that llama.cpp's converter turned into `factors` (one divisor per
    rotated pair), so the config is Hugging Face's and mlx-lm reads it.

    The converter computes, per pair i with wavelength w_i = 2 pi base^(2i / d), with
    s_i = (L / w_i - low) / (high - low) clipped to [0, 1] (L: original_max_position_embeddings):
    factor_i = 1 / ((1 - s_i) / factor + s_i). So `factor` is the largest divisor, and the blended
    pairs give s_i exactly; s_i depends on (L, low, high) only through L / (high - low) and
    low / (high - low), so with low = 1 (as every Llama 3.x) two blended pairs fix L and high.
    With fewer, L is the file's `rope.scaling.original_context_length` or the largest power of two
    the factors allow, and high follows. The result is checked against `factors` (float32 rounding);
    divisors that no llama3 scaling produces stay as they are (`frequency_factors`, Orchard only).
    """
    f = np.asarray(factors, dtype=np.float64)
    kept = {"rope_type": "frequency_factors", "factors": [float(v) for v in f]}
    inv = 1.0 / base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if len(f) != len(inv) or not np.all(f >= 1 - 1e-6):
        return kept
    wavelen = 2 * math.pi / inv
    factor = float(factor) if factor else float(f.max())
    if factor <= 1 + 1e-6:
        return {"rope_type": "default"}
    tol = 1e-5
    ones, full = np.abs(f - 1) <= tol, np.abs(f - factor) <= tol * factor
    blended = ~(ones | full)
    # s_i from the divisor; then L / w_i - 1 = s_i (high - 1): linear in the unknowns L and high - 1.
    s = (1 / f - 1 / factor) / (1 - 1 / factor)
    if blended.sum() >= 2:
        A = np.stack([1 / wavelen[blended], -s[blended]], axis=1)
        L, spread = np.linalg.lstsq(A, np.ones(int(blended.sum())), rcond=None)[0]
    else:
        # Free choice within what the divisors allow: pairs kept at 1 or blended have w <= L, and
        # the fully scaled ones w > L (low = 1 puts the low-frequency cut at L itself).
        lo = wavelen[~full].max() if (~full).any() else 1.0
        hi = wavelen[full].min() if full.any() else math.inf
        if original and lo <= original < hi:
            L = float(original)
        else:
            L = 2.0 ** math.floor(math.log2(hi)) if math.isfinite(hi) else 2.0 ** math.ceil(math.log2(lo))
            if not lo <= L < hi:
                L = lo
        if blended.any():
            spread = (L / wavelen[blended][0] - 1) / s[blended][0]
        else:
            # No blended pair: put the high-frequency cut between the last pair kept at 1 and L.
            top = wavelen[ones].max() if ones.any() else L / 2
            spread = L / math.sqrt(top * L) - 1 if top < L else 1.0
    if spread <= 0 or L <= 0:
        return kept
    # Solved values carry float noise (3.9999999 for 4): the shortest decimal that still gives the
    # same divisors is what the model's config said.
    for digits in (6, 17):
        result = {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0,
                  "high_freq_factor": float(f"{1 + spread:.{digits}g}"),
                  "original_max_position_embeddings": float(f"{L:.{digits}g}")}
        if np.allclose(llama3_factors(result, base, head_dim), f, rtol=1e-5, atol=0):
            if result["original_max_position_embeddings"].is_integer():
                result["original_max_position_embeddings"] = int(result["original_max_position_embeddings"])
            return result
    return kept


def llama3_factors(p: dict, base: float, head_dim: int) -> np.ndarray:
    """The per-pair divisors llama.cpp's converter writes for llama3 parameters `p` (its formula)."""
    inv = 1.0 / base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    L, low, high, factor = (p["original_max_position_embeddings"], p["low_freq_factor"], p["high_freq_factor"],
                            p["factor"])
    out = []
    for w in 2 * math.pi / inv:
        if w < L / high:
            out.append(1.0)
        elif w > L / low:
            out.append(factor)
        else:
            smooth = (L / w - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32).astype(np.float64)
