"""Multi-token prediction blocks (DeepSeek-V3, GLM-4.5): extra layers that predict one token further.

A checkpoint with `num_nextn_predict_layers` = n stores n such blocks after its decoder layers, as
`model.layers.{num_hidden_layers + k}.*`: one decoder block of the model's own kind (attention, MLP or
MoE, its two norms) plus `enorm`, `hnorm`, `eh_proj` and `shared_head.norm`. The embedding and the
output head are the main model's (the DeepSeek-V3 paper shares them; the checkpoints' copies,
`embed_tokens` and `shared_head.head` in the block, are dropped when loading).

Block k at position i combines the hidden state that predicted token t_{i+1+k} with that token's
embedding and predicts token t_{i+2+k}:

    x = eh_proj([enorm(embed(t_{i+1+k})) ; hnorm(h_i)])   # embedding first: the order of eh_proj's
    h'_i = block(x)                                        # input columns in vLLM's and SGLang's loaders
    logits_i = head(shared_head.norm(h'_i))

For block 0, h is the main model's final hidden state after its final norm (`model.model(ids, cache)`,
what the LM head reads; vLLM and SGLang pass the same); block k > 0 takes block k - 1's h'. Plain
generation never runs these blocks; speculative decoding calls them. There is no reference in
transformers (it drops these weights), so their outputs are checked for shapes and wiring only.
"""

from __future__ import annotations

from typing import Callable

import mlx.core as mx
import mlx.nn as nn

from mlxmodels.layers.norms import RMSNorm
from mlxmodels.layers.transformer import DecoderLayer


class SharedHead(nn.Module):
    """The block's own final norm (`shared_head.norm`); the projection itself is the main model's."""

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.norm = RMSNorm(hidden_size, eps)


class MTPBlock(DecoderLayer):
    """One multi-token-prediction block: a pre-norm decoder layer (its parameters named as the
    checkpoint's `model.layers.{N + k}.*`) plus the input fusion and the shared head's norm.

    `embed(ids)` and `head(hidden)` are the main model's embedding and output projection, passed as
    functions (looked up at call time, so a quantized embedding or head is used as loaded);
    `make_cache()` gives the block's attention the same kind of cache the model's layers use."""

    def __init__(self, attention: nn.Module, mlp: nn.Module, hidden_size: int, eps: float,
                 embed: Callable[[mx.array], mx.array], head: Callable[[mx.array], mx.array],
                 make_cache: Callable[[], object]):
        super().__init__(attention, mlp, RMSNorm, hidden_size, eps, "pre")
        self.enorm = RMSNorm(hidden_size, eps)
        self.hnorm = RMSNorm(hidden_size, eps)
        self.eh_proj = nn.Linear(2 * hidden_size, hidden_size, bias=False)
        self.shared_head = SharedHead(hidden_size, eps)
        # Plain attributes (functions, not modules): they hold no parameters of their own.
        self.embed, self.head, self.make_cache = embed, head, make_cache

    def __call__(self, hidden: mx.array, next_token_ids: mx.array, cache=None) -> tuple[mx.array, mx.array]:
        """hidden [B, L, D] (the states that predicted `next_token_ids`), next_token_ids [B, L] ->
        (logits [B, L, vocab] for the token after each of next_token_ids, this block's hidden
        states [B, L, D] for the next block). `cache`: this block's own, from `make_cache()`; its
        offset is the position of the first of the L tokens."""
        fused = mx.concatenate([self.enorm(self.embed(next_token_ids)), self.hnorm(hidden)], axis=-1)
        h = super().__call__(self.eh_proj(fused), cache)
        return self.head(self.shared_head.norm(h)), h
