"""The decoder-only MoE transformer that Mixtral, Qwen2-MoE, Qwen3-MoE and OLMoE share.

A block is Llama's with the MLP replaced by a sparse MoE (layers/moe.py): softmax router, top-k
experts. Each family's `ModelArgs` subclasses `MoEArgs` and flips switches: shared expert,
renormalisation of the top-k weights, per-head or full-width q/k norms, clipping, dense layers.

Checkpoints keep one tensor per expert (`...experts.7.w1.weight`); `sanitize` stacks them into the
[experts, out, in] weights the gathered matmuls read, and renames Mixtral's `block_sparse_moe` /
`w1,w2,w3` to the `mlp` / `gate,down,up_proj` names every MoE family shares here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import mlx.nn as nn

from mlxmodels.config import ConfigReader
from mlxmodels.errors import ConfigError
from mlxmodels.layers.attention import Attention
from mlxmodels.layers.mlp import GatedMLP
from mlxmodels.layers.moe import (HF_EXPERT_NAMES, MIXTRAL_EXPERT_NAMES, SparseMoE, dequantize_router,
                                  split_fused_experts, stack_experts)
from mlxmodels.layers.norms import RMSNorm
from mlxmodels.layers.rope import RoPE
from mlxmodels.layers.transformer import CausalLM, DecoderLayer, DecoderStack
from mlxmodels.models import llama


@dataclass
class MoEArgs(llama.ModelArgs):
    num_experts: int = 8
    num_experts_per_tok: int = 2
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = True
    shared_expert_intermediate_size: int = 0
    shared_expert_gate: bool = False
    sparse_layers: list = field(default_factory=list)  # per layer: MoE (True) or dense MLP (False)
    qk_norm_full_width: bool = False  # OLMoE: one RMSNorm over all heads' q (and k) together
    clip_qkv: float | None = None
    quantization: dict | None = None



def moe_fields(config: dict, base: llama.ModelArgs, norm_topk_default: bool) -> dict:
    """The MoE switches common to every family, validated with errors that name the field."""
    c = ConfigReader(config)
    # transformers names the expert count `num_local_experts` (Mixtral, Qwen3-MoE in 5.x) or
    # `num_experts` (Qwen2-MoE, OLMoE, Qwen3-MoE in 4.x); either may appear.
    key = "num_experts" if config.get("num_experts") is not None else "num_local_experts"
    if config.get(key) is None:
        raise ConfigError(f"{c.source}: missing required field 'num_experts' (or 'num_local_experts')")
    experts = c.require(key)
    top_k = c.require("num_experts_per_tok")
    if top_k > experts:
        raise ConfigError(
            f"{c.source}: field 'num_experts_per_tok' is {top_k}, more than the {experts} experts ('{key}')"
        )
    layers = base.num_hidden_layers
    step = c.get("decoder_sparse_step", 1, int)
    if step <= 0:
        raise ConfigError(f"{c.source}: field 'decoder_sparse_step' must be positive, got {step}")
    dense = c.get("mlp_only_layers", [], list)
    sparse = [(i not in dense) and (i + 1) % step == 0 for i in range(layers)]
    return dict(
        num_experts=experts,
        num_experts_per_tok=top_k,
        moe_intermediate_size=c.get("moe_intermediate_size", base.intermediate_size, int),
        norm_topk_prob=c.get("norm_topk_prob", norm_topk_default, bool),
        sparse_layers=sparse,
        quantization=config.get("quantization") or config.get("quantization_config"),
    )


def mlx_lm_renames(model_type: str) -> tuple:
    """(ours, theirs) name fragments for checkpoints mlx-lm must read: it stacks experts under
    `switch_mlp`, and Mixtral keeps its `block_sparse_moe` prefix. `sanitize` maps them back."""
    if model_type == "mixtral":
        return ((".mlp.experts.", ".block_sparse_moe.switch_mlp."), (".mlp.gate.", ".block_sparse_moe.gate."))
    return ((".mlp.experts.", ".mlp.switch_mlp."),)


class Model(CausalLM):
    def __init__(self, args: MoEArgs):
        super().__init__()
        self.args = args
        self.tie_embeddings = args.tie_word_embeddings
        self._layer_windows = args.layer_windows
        rope = RoPE(args.head_dim, args.rope, args.max_position_embeddings)
        layers = []
        for window, sparse in zip(args.layer_windows, args.sparse_layers):
            spec = llama.attention_spec(args, rope, window)
            if args.qk_norm_full_width:
                spec = replace(spec, qk_norm="full_width", clip_qkv=args.clip_qkv)
            if sparse:
                mlp = SparseMoE(
                    args.hidden_size, args.moe_intermediate_size, args.num_experts, args.num_experts_per_tok,
                    args.norm_topk_prob, args.hidden_act, args.shared_expert_intermediate_size,
                    args.shared_expert_gate,
                )
            else:
                mlp = GatedMLP(args.hidden_size, args.intermediate_size, args.hidden_act, args.mlp_bias)
            layers.append(DecoderLayer(Attention(spec), mlp, RMSNorm, args.hidden_size, args.rms_norm_eps, "pre"))
        self.model = DecoderStack(
            args.vocab_size, args.hidden_size, layers, RMSNorm(args.hidden_size, args.rms_norm_eps)
        )
        if not self.tie_embeddings:
            self.lm_head = nn.Linear(args.hidden_size, args.vocab_size, bias=False)

    def sanitize(self, weights: dict) -> dict:
        weights = super().sanitize(weights)
        # Mixtral's names -> the shared ones, and mlx-lm's stacked `switch_mlp` -> `experts`, so
        # MLX-format (e.g. mlx-community) checkpoints load too.
        weights = {
            k.replace(".block_sparse_moe.", ".mlp.").replace(".switch_mlp.", ".experts."): v
            for k, v in weights.items()
        }
        for i, sparse in enumerate(self.args.sparse_layers):
            if not sparse:
                continue
            prefix = f"model.layers.{i}.mlp"
            weights = split_fused_experts(weights, prefix)
            for names in (HF_EXPERT_NAMES, MIXTRAL_EXPERT_NAMES):
                weights = stack_experts(weights, prefix, self.args.num_experts, names)
            for router in ("gate", "shared_expert_gate"):
                weights = dequantize_router(weights, f"{prefix}.{router}", self.args.quantization)
        return weights
