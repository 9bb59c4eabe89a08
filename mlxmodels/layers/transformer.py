"""The decoder-only transformer skeleton shared by the dense families.

Parameter names follow Hugging Face's (`model.layers.N.self_attn.q_proj`, ...), so checkpoints load
without renaming. A family supplies the attention and MLP of each layer and picks the norm layout:
"pre" (Llama: norm before attention and before the MLP), "sandwich" (Gemma 2/3: a norm before and
after each of them) or "post" (OLMo 2/3: a norm after each of them only, inside the residual branch).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from mlxmodels.cache import KVCache, RotatingKVCache


class DecoderLayer(nn.Module):
    def __init__(self, attention: nn.Module, mlp: nn.Module, norm, hidden_size: int, eps: float, layout: str):
        super().__init__()
        self.self_attn = attention
        self.mlp = mlp
        self.post = layout == "post"
        if not self.post:
            self.input_layernorm = norm(hidden_size, eps)
        self.post_attention_layernorm = norm(hidden_size, eps)
        self.sandwich = layout == "sandwich"
        if self.sandwich:
            self.pre_feedforward_layernorm = norm(hidden_size, eps)
        if self.sandwich or self.post:
            self.post_feedforward_layernorm = norm(hidden_size, eps)

    def __call__(self, x: mx.array, cache=None) -> mx.array:
        if self.post:
            h = x + self.post_attention_layernorm(self.self_attn(x, cache))
            return h + self.post_feedforward_layernorm(self.mlp(h))
        if self.sandwich:
            h, normed = _add_and_norm(self.pre_feedforward_layernorm, x,
                                      self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), cache)))
            return h + self.post_feedforward_layernorm(self.mlp(normed))
        h, normed = _add_and_norm(self.post_attention_layernorm, x, self.self_attn(self.input_layernorm(x), cache))
        return h + self.mlp(normed)


def _add_and_norm(norm: nn.Module, x: mx.array, delta: mx.array) -> tuple[mx.array, mx.array]:
    """(x + delta, norm(x + delta)): one operation where the norm has a fused form (RMSNorm's kinds)."""
    fused = getattr(norm, "add_and_norm", None)
    if fused is not None:
        return fused(x, delta)
    h = x + delta
    return h, norm(h)


class DecoderStack(nn.Module):
    """Embedding, layers and final norm: Hugging Face's `model.*` prefix."""

    def __init__(self, vocab_size: int, hidden_size: int, layers: list, final_norm: nn.Module, embed_scale: float = 1.0):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab_size, hidden_size)
        self.layers = layers
        self.norm = final_norm
        self.embed_scale = embed_scale

    def __call__(self, inputs: mx.array, cache=None) -> mx.array:
        h = self.embed_tokens(inputs)
        if self.embed_scale != 1.0:
            # Gemma multiplies by sqrt(hidden) rounded to the activation dtype, as its reference does.
            h = h * mx.array(self.embed_scale, dtype=h.dtype)
        cache = cache if cache is not None else [None] * len(self.layers)
        for layer, layer_cache in zip(self.layers, cache):
            h = layer(h, layer_cache)
        return self.norm(h)


class CausalLM(nn.Module):
    """`model` (the stack) plus the output projection, tied to the embedding or not.

    Subclasses build `self.model`, set `self.tie_embeddings` / `self.final_softcap`, and list each
    layer's sliding window in `self._layer_windows` so `make_cache` knows which cache each layer needs.
    """

    tie_embeddings: bool = True
    final_softcap: float | None = None
    _layer_windows: list

    def __call__(self, inputs: mx.array, cache=None) -> mx.array:
        h = self.model(inputs, cache)
        if self.tie_embeddings:
            logits = self.model.embed_tokens.as_linear(h)
        else:
            logits = self.lm_head(h)
        if self.final_softcap is not None:
            logits = mx.tanh(logits / self.final_softcap) * self.final_softcap
        return logits

    @property
    def layers(self):
        return self.model.layers

    def make_cache(self) -> list:
        return [KVCache() if w is None else RotatingKVCache(w) for w in self._layer_windows]

    def sanitize(self, weights: dict) -> dict:
        """Drop what Hugging Face checkpoints carry but the model does not use."""
        weights = {k: v for k, v in weights.items() if "rotary_emb.inv_freq" not in k}
        if self.tie_embeddings:
            weights.pop("lm_head.weight", None)
            for suffix in ("scales", "biases"):
                weights.pop(f"lm_head.{suffix}", None)
        return weights
