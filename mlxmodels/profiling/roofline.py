"""Roofline arithmetic for decode: how many bytes one token must read, and how close to the
machine's memory bandwidth that runs.

Decoding one token at batch 1 multiplies every weight matrix by a vector once, so it must stream
every weight the token uses from memory; its speed limit is bandwidth / bytes-per-token. What a
token uses:

- every parameter, at the size it is *stored for compute* (so the CPU backend's resident fp32
  copies count 4 bytes per weight, 4-bit weights ~0.5 plus scales and biases);
- but only one row of an untied input embedding table (a gather, not a matmul);
- and only `top_k / num_experts` of each mixture-of-experts expert bank (routing is uniform on
  average, so that is the expected share);
- plus the KV cache read by attention: all cached keys and values up to the current position
  (or the fixed recurrent state of an SSM layer).
"""

from __future__ import annotations

import mlx.nn as nn
from mlx.utils import tree_flatten


def _expert_fraction(config: dict) -> float:
    experts = config.get("num_local_experts") or config.get("num_experts") or 0
    top_k = config.get("num_experts_per_tok") or 0
    return top_k / experts if experts and top_k else 1.0


def weight_bytes_per_token(model: nn.Module, config: dict | None = None) -> int:
    """Bytes of parameters one decoded token reads (see the module docstring for what counts).

    `config` (for the expert share) defaults to the loaded model's `model.info.config`."""
    if config is None:
        config = getattr(getattr(model, "info", None), "config", {}) or {}
    share = _expert_fraction(config)
    embed = getattr(getattr(model, "model", None), "embed_tokens", None)
    # An embedding is read as one row, unless it doubles as the LM head (tied, no separate head).
    # (Orchard's models say so in `tie_embeddings`, mlx-lm's only in their config.)
    tied = getattr(model, "tie_embeddings", False) or bool(config.get("tie_word_embeddings", False))
    embedding_is_head = tied and "lm_head" not in dict(model.children())
    total = 0.0
    for name, value in tree_flatten(model.parameters()):
        nbytes = value.nbytes
        if embed is not None and name.startswith("model.embed_tokens.") and not embedding_is_head:
            nbytes = nbytes / value.shape[0]  # one row of weight (or of its scales/biases)
        elif ".experts." in name or ".switch_mlp." in name:
            nbytes = nbytes * share
        total += nbytes
    return int(total)


def _layer_read_bytes(layer) -> int:
    keys = getattr(layer, "keys", None)
    if keys is not None and hasattr(layer, "offset"):
        # Growing buffers are allocated ahead; attention reads only the filled part (a rotating
        # window buffer is always fully read once it is full).
        capacity = keys.shape[2]
        used = min(layer.offset, capacity)
        return int((keys.nbytes + layer.values.nbytes) * used / capacity) if capacity else 0
    return int(getattr(layer, "nbytes", 0) or 0)  # e.g. an SSM state: fixed size, read whole


def cache_read_bytes(cache: list) -> int:
    """Bytes of cached context one decode step reads at the cache's current position."""
    return sum(_layer_read_bytes(layer) for layer in cache)


def achieved_bandwidth(bytes_per_token: float, tokens_per_second: float) -> float:
    """GB/s (1e9 bytes/s) actually streamed at that decode speed."""
    return bytes_per_token * tokens_per_second / 1e9


def roofline(bytes_per_token: float, tokens_per_second: float | None, bandwidth_gbps: float | None) -> dict:
    """The roofline figures for one decode measurement.

    `ceiling_tps` is the fastest decode the memory allows (bandwidth / bytes per token);
    `percent_of_bandwidth` = achieved GB/s / machine GB/s × 100.
    """
    achieved = achieved_bandwidth(bytes_per_token, tokens_per_second) if tokens_per_second else None
    out = {"bytes_per_token": int(bytes_per_token), "achieved_gbps": achieved, "bandwidth_gbps": bandwidth_gbps,
           "percent_of_bandwidth": None, "ceiling_tps": None}
    if bandwidth_gbps:
        out["ceiling_tps"] = bandwidth_gbps * 1e9 / bytes_per_token if bytes_per_token else None
        if achieved is not None:
            out["percent_of_bandwidth"] = 100.0 * achieved / bandwidth_gbps
    return out
