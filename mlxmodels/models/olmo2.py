"""OLMo 2: Llama's attention and SwiGLU MLP with the norms moved and widened.

- Post-norm: no norm before attention or the MLP; each one's output is RMS-normalised before it is
  added to the residual stream (`post_attention_layernorm`, `post_feedforward_layernorm`).
- QK-norm over the full projection width: one RMSNorm over all heads' queries (width heads x
  head_dim) and one over all keys, before the split into heads and before RoPE.
- `attention_bias` adds biases to q, k, v and o; the MLP never has biases.

OLMo 3 (olmo3.py) is this model with sliding-window layers; the `sliding_rope` and `layer_windows`
fields carry them (OLMo 2 itself has none).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import mlx.nn as nn

from mlxmodels.layers.attention import Attention
from mlxmodels.layers.mlp import GatedMLP
from mlxmodels.layers.norms import RMSNorm
from mlxmodels.layers.rope import RoPE
from mlxmodels.layers.transformer import CausalLM, DecoderLayer, DecoderStack
from mlxmodels.models import llama

# transformers' Olmo2Config defaults where they differ from llama.ModelArgs' (an explicit null stays null).
DEFAULTS = {"rms_norm_eps": 1e-5, "max_position_embeddings": 2048, "tie_word_embeddings": False}


@dataclass
class ModelArgs(llama.ModelArgs):
    sliding_rope: dict = field(default_factory=dict)  # RoPE of sliding-window layers (OLMo 3)

    @classmethod
    def from_config(cls, config: dict) -> "ModelArgs":
        base = llama.ModelArgs.from_config({**DEFAULTS, **config})
        # Olmo2Config has no sliding-window or MLP-bias settings: stray keys must not switch them on.
        return cls(**vars(replace(base, mlp_bias=False, layer_windows=[None] * base.num_hidden_layers)))


class Model(CausalLM):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.tie_embeddings = args.tie_word_embeddings
        self._layer_windows = args.layer_windows
        ropes = {"full": RoPE(args.head_dim, args.rope, args.max_position_embeddings)}
        if any(args.layer_windows):  # OLMo 3's sliding layers have their own RoPE
            ropes["sliding"] = RoPE(args.head_dim, args.sliding_rope, args.max_position_embeddings)
        layers = []
        for window in args.layer_windows:
            rope = ropes["full" if window is None else "sliding"]
            spec = replace(llama.attention_spec(args, rope, window), qk_norm="full_width")
            mlp = GatedMLP(args.hidden_size, args.intermediate_size, args.hidden_act)
            layers.append(DecoderLayer(Attention(spec), mlp, RMSNorm, args.hidden_size, args.rms_norm_eps, "post"))
        self.model = DecoderStack(
            args.vocab_size, args.hidden_size, layers, RMSNorm(args.hidden_size, args.rms_norm_eps)
        )
        if not self.tie_embeddings:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)
