"""Sparse Mixture-of-Experts feed-forward: a router picks `top_k` of `num_experts` gated MLPs per token.

The families differ only in switches, all of which live here:
- the router takes a softmax over every expert, then the top k; `norm_topk_prob` renormalises the
  k weights to sum to one (Mixtral always, Qwen3-MoE / OLMoE when the config says so, Qwen2-MoE not);
- or DeepSeek-V3's router (`scoring="sigmoid"`): a sigmoid score per expert, a load-balancing
  correction bias that only steers the choice, group-limited top-k, and a routed scaling factor;
- DeepSeek-V2's "group_limited_greedy" is the softmax router with groups (`n_group`, `topk_group`):
  only the experts of the `topk_group` groups holding the highest single probabilities are eligible;
- an optional shared expert every token goes through, optionally scaled by its own sigmoid gate
  (Qwen2-MoE);
- non-gated experts (`gated=False`: down(act(up(x))), Nemotron-H's relu^2), whose shared expert is
  non-gated too, and optional latent projections that the routed experts run between
  (`latent_dims`: Nemotron-H's `moe_latent_size`);
- gpt-oss: a router with a bias, whose softmax over the k largest logits is the softmax-then-top-k
  above renormalised (`norm_topk_prob`); experts with biases (`expert_bias`) and the clamped SwiGLU
  (`swiglu_limit`, `swiglu_alpha`: see mlp.clamped_swiglu);
- Llama 4: the sigmoid router without correction, and the router weight scaling each chosen expert's
  input rather than its output (`weight_inputs`: the experts are not linear, so the two differ).

Experts run as gathered matmuls over stacked weights ([experts, out, in]), never as a Python loop
over experts: `mx.gather_mm` (or `mx.gather_qmm` once quantized) multiplies each token by the
weights of the experts it chose, so decode reads only the selected experts. For prefill the
(token, expert) pairs are first sorted by expert, so each expert's weights are read once for a
contiguous run of tokens.

The routers stay in float: they are tiny, and quantizing them flips expert choices. They have no
`to_quantized`, so `nn.quantize` and loading's quantization predicate leave them alone.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn

from mlxmodels.layers.mlp import MLP, GatedMLP, activation, clamped_swiglu, gated_activation

# From this many (token, expert) pairs on, sorting them by expert pays for its argsorts: below it
# (decode: one token, k pairs) the unsorted gather reads the same few experts either way.
SORT_THRESHOLD = 16

# Per-expert projection names in checkpoints -> the stacked SwitchGLU's: Hugging Face's (most
# families) and Mixtral's w1/w3/w2.
HF_EXPERT_NAMES = {"gate_proj": "gate_proj", "up_proj": "up_proj", "down_proj": "down_proj"}
MIXTRAL_EXPERT_NAMES = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}


class Router(nn.Module):
    """A linear map that must stay in float: `weight` is [outputs, inputs], and a `bias` [outputs]
    only when asked (gpt-oss).

    `correction_bias` adds DeepSeek-V3's `e_score_correction_bias` [outputs]: a load-balancing offset
    that steers which experts are chosen but not how much they weigh (see `SparseMoE.route`)."""

    def __init__(self, dims: int, outputs: int, correction_bias: bool = False, bias: bool = False):
        super().__init__()
        scale = 1.0 / math.sqrt(dims)
        self.weight = mx.random.uniform(-scale, scale, (outputs, dims))
        if correction_bias:
            self.e_score_correction_bias = mx.zeros((outputs,))
        if bias:
            self.bias = mx.zeros((outputs,))

    def __call__(self, x: mx.array) -> mx.array:
        y = x @ self.weight.T
        return y + self["bias"] if "bias" in self else y


def _add_expert_bias(layer: nn.Module, y: mx.array, indices: mx.array) -> mx.array:
    """y [..., 1, out] from the experts `indices` [...] plus each one's bias row, if the layer has biases."""
    return y + mx.expand_dims(layer["bias"][indices], -2) if "bias" in layer else y


class SwitchLinear(nn.Module):
    """`num_experts` linear maps stacked as one [experts, out, in] weight (and, with `bias`, an
    [experts, out] bias); x picks one per row."""

    def __init__(self, input_dims: int, output_dims: int, num_experts: int, bias: bool = False):
        super().__init__()
        scale = 1.0 / math.sqrt(input_dims)
        self.weight = mx.random.uniform(-scale, scale, (num_experts, output_dims, input_dims))
        if bias:
            self.bias = mx.zeros((num_experts, output_dims))

    @property
    def num_experts(self) -> int:
        return self.weight.shape[0]

    def __call__(self, x: mx.array, indices: mx.array, sorted_indices: bool = False) -> mx.array:
        y = mx.gather_mm(x, self.weight.swapaxes(-1, -2), rhs_indices=indices, sorted_indices=sorted_indices)
        return _add_expert_bias(self, y, indices)

    def to_quantized(self, group_size: int = None, bits: int = None, mode: str = "affine", **_):
        return QuantizedSwitchLinear.from_switch_linear(self, group_size, bits, mode)


class QuantizedSwitchLinear(nn.Module):
    """SwitchLinear with every expert's weight quantized on its own (per-expert scales, and for the
    affine mode per-expert `biases`); an expert `bias` stays in float."""

    def __init__(self, input_dims: int, output_dims: int, num_experts: int, group_size: int = 64,
                 bits: int = 4, mode: str = "affine", bias: bool = False):
        super().__init__()
        self.group_size, self.bits, self.mode = group_size, bits, mode
        zeros = mx.zeros((num_experts, output_dims, input_dims))
        self.weight, self.scales, *biases = mx.quantize(zeros, group_size, bits, mode=mode)
        if biases:
            self.biases = biases[0]
        if bias:
            self.bias = mx.zeros((num_experts, output_dims))
        self.freeze()

    @classmethod
    def from_switch_linear(cls, layer: SwitchLinear, group_size=None, bits=None, mode="affine"):
        E, out_dims, in_dims = layer.weight.shape
        group_size = group_size or 64
        bits = bits or 4
        q = cls(in_dims, out_dims, E, group_size, bits, mode, bias="bias" in layer)
        q.weight, q.scales, *biases = mx.quantize(layer.weight, group_size, bits, mode=mode)
        if biases:
            q.biases = biases[0]
        if "bias" in layer:
            q.bias = layer.bias
        return q

    def __call__(self, x: mx.array, indices: mx.array, sorted_indices: bool = False) -> mx.array:
        y = mx.gather_qmm(
            x, self["weight"], self["scales"], self.get("biases"), rhs_indices=indices, transpose=True,
            group_size=self.group_size, bits=self.bits, mode=self.mode, sorted_indices=sorted_indices,
        )
        return _add_expert_bias(self, y, indices)


def _sort_by_expert(x: mx.array, indices: mx.array):
    """Flatten (token, choice) pairs and order them by expert: x [N, 1, 1, D] (or [N, k, 1, D], a row
    per choice) -> [N*k, 1, D]."""
    k = indices.shape[-1]
    flat = indices.flatten()
    order = mx.argsort(flat)
    inverse = mx.argsort(order)
    x = x.reshape(-1, 1, x.shape[-1])[order if x.shape[1] == k else order // k]
    return x, flat[order], inverse


def _run_experts(x: mx.array, indices: mx.array, expert) -> mx.array:
    """x [N, D] (or [N, k, D]: an input per choice), indices [N, k] -> each chosen expert's output
    [N, k, D]; `expert(rows, idx, sorted)` applies the stacked projections to the gathered rows."""
    N, k = indices.shape
    # [N, 1, 1, D]: one row per token, broadcast over its k choices; or [N, k, 1, D]: one per choice.
    x = x[:, None, None, :] if x.ndim == 2 else x[:, :, None, :]
    sort = indices.size >= SORT_THRESHOLD
    if sort:
        x, idx, inverse = _sort_by_expert(x, indices)
    else:
        idx = indices
    y = expert(x, idx, sort)
    if sort:
        y = y[inverse]  # back to (token, choice) order: [N*k, 1, D]
    return y.reshape(N, k, -1)


class SwitchGLU(nn.Module):
    """Every expert a gated MLP, down(act(gate(x)) * up(x)), on stacked weights; with `bias`, each
    projection has per-expert biases; with `swiglu_limit`, gpt-oss's clamped SwiGLU replaces act."""

    def __init__(self, dims: int, hidden_dims: int, num_experts: int, act: str = "silu", bias: bool = False,
                 swiglu_limit: float | None = None, swiglu_alpha: float = 1.702):
        super().__init__()
        self.gate_proj = SwitchLinear(dims, hidden_dims, num_experts, bias)
        self.up_proj = SwitchLinear(dims, hidden_dims, num_experts, bias)
        self.down_proj = SwitchLinear(hidden_dims, dims, num_experts, bias)
        if swiglu_limit is None:
            self.gated = gated_activation(act)
        else:
            self.gated = clamped_swiglu(swiglu_limit, swiglu_alpha)

    def __call__(self, x: mx.array, indices: mx.array) -> mx.array:
        """x [N, D] (or [N, k, D]), indices [N, k] -> each chosen expert's output [N, k, D]."""
        return _run_experts(x, indices, lambda x, idx, sort: self.down_proj(
            self.gated(self.gate_proj(x, idx, sort), self.up_proj(x, idx, sort)), idx, sort))


class SwitchMLP(nn.Module):
    """Every expert a plain MLP, down(act(up(x))), on stacked weights (Nemotron-H: relu^2)."""

    def __init__(self, dims: int, hidden_dims: int, num_experts: int, act: str = "relu2"):
        super().__init__()
        self.up_proj = SwitchLinear(dims, hidden_dims, num_experts)
        self.down_proj = SwitchLinear(hidden_dims, dims, num_experts)
        self.act = activation(act)

    def __call__(self, x: mx.array, indices: mx.array) -> mx.array:
        """x [N, D], indices [N, k] -> each chosen expert's output [N, k, D]."""
        return _run_experts(x, indices, lambda x, idx, sort: self.down_proj(
            self.act(self.up_proj(x, idx, sort)), idx, sort))


class SparseMoE(nn.Module):
    """Router + top-k experts (+ optional shared expert). Parameter names follow Qwen2-MoE's:
    `gate`, `experts.{gate,up,down}_proj`, `shared_expert`, `shared_expert_gate`; and Nemotron-H's
    `fc1_latent_proj` / `fc2_latent_proj`. `mlp_bias` gives the shared expert and the latent
    projections biases; `expert_bias` the routed (gated) experts', `router_bias` the router's."""

    def __init__(self, dims: int, hidden_dims: int, num_experts: int, top_k: int, norm_topk_prob: bool,
                 act: str = "silu", shared_hidden_dims: int = 0, shared_gate: bool = False,
                 scoring: str = "softmax", correction_bias: bool = False, n_group: int = 1, topk_group: int = 1,
                 routed_scaling_factor: float = 1.0, gated: bool = True, latent_dims: int = 0,
                 mlp_bias: bool = False, router_bias: bool = False, expert_bias: bool = False,
                 swiglu_limit: float | None = None, swiglu_alpha: float = 1.702, weight_inputs: bool = False):
        super().__init__()
        if scoring not in ("softmax", "sigmoid"):
            raise ValueError(f"unknown expert scoring '{scoring}'")
        self.top_k = top_k
        self.norm_topk_prob = norm_topk_prob
        self.scoring = scoring
        self.n_group, self.topk_group = n_group, topk_group
        self.routed_scaling_factor = routed_scaling_factor
        self.weight_inputs = weight_inputs
        self.gate = Router(dims, num_experts, correction_bias, router_bias)
        expert_dims = latent_dims or dims
        if latent_dims:
            self.fc1_latent_proj = nn.Linear(dims, latent_dims, bias=mlp_bias)
            self.fc2_latent_proj = nn.Linear(latent_dims, dims, bias=mlp_bias)
        if gated:
            self.experts = SwitchGLU(expert_dims, hidden_dims, num_experts, act, expert_bias, swiglu_limit,
                                     swiglu_alpha)
        else:
            self.experts = SwitchMLP(expert_dims, hidden_dims, num_experts, act)
        if shared_hidden_dims:
            self.shared_expert = (GatedMLP if gated else MLP)(dims, shared_hidden_dims, act, mlp_bias)
            if shared_gate:
                self.shared_expert_gate = Router(dims, 1)

    def route(self, x: mx.array) -> tuple[mx.array, mx.array]:
        """(expert indices [N, k], their weights [N, k]) for tokens x [N, D].

        softmax: probabilities over every expert, the k largest; with groups (DeepSeek-V2's
        group_limited_greedy) only within the `topk_group` groups whose best probability is highest.
        sigmoid (DeepSeek-V3, Kimi, Nemotron-H): independent scores; the choice adds the correction bias
        and, with groups, is limited to the `topk_group` groups whose two best biased scores sum
        highest; the weights are the unbiased scores."""
        logits = self.gate(x).astype(mx.float32)
        k = self.top_k
        if self.scoring == "softmax":
            scores = mx.softmax(logits, axis=-1)
            choice = scores
        else:
            scores = mx.sigmoid(logits)
            if "e_score_correction_bias" in self.gate:
                choice = scores + self.gate.e_score_correction_bias
            else:
                # Ranked by the logits when nothing else enters: the sigmoid's order without the ties of
                # float32's sigmoid at 1 (Llama 4 takes the top k of the logits).
                choice = scores if self.topk_group < self.n_group else logits
        if self.topk_group < self.n_group:
            choice = self._limit_to_best_groups(choice)
        # argpartition gives the k largest in no particular order: the weighted sum does not care.
        indices = mx.stop_gradient(mx.argpartition(-choice, kth=k - 1, axis=-1)[..., :k])
        weights = mx.take_along_axis(scores, indices, axis=-1)
        if self.norm_topk_prob:
            # The epsilon is the reference's (sigmoid weights are never all zero; softmax ones never sum to 0).
            weights = weights / (weights.sum(axis=-1, keepdims=True) + (1e-20 if self.scoring == "sigmoid" else 0.0))
        if self.routed_scaling_factor != 1.0:
            weights = weights * self.routed_scaling_factor
        return indices, weights.astype(x.dtype)

    def _limit_to_best_groups(self, choice: mx.array) -> mx.array:
        """Scores of experts outside the `topk_group` best groups set to -inf (never chosen). A group
        ranks by its two best scores summed (sigmoid, DeepSeek-V3) or by its best one (softmax, V2)."""
        N, E = choice.shape
        grouped = choice.reshape(N, self.n_group, E // self.n_group)
        if self.scoring == "softmax":
            group_scores = grouped.max(axis=-1)  # [N, groups]
        else:
            group_scores = mx.sort(grouped, axis=-1)[..., -2:].sum(axis=-1)
        drop = mx.argpartition(group_scores, kth=self.n_group - self.topk_group - 1, axis=-1)[
            ..., : self.n_group - self.topk_group]
        keep = mx.ones_like(group_scores)
        keep = mx.put_along_axis(keep, drop, mx.array(0.0), axis=-1)
        return mx.where(mx.repeat(keep, E // self.n_group, axis=-1) > 0, choice, -mx.inf)

    def __call__(self, x: mx.array) -> mx.array:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        indices, weights = self.route(x)
        routed = self.fc1_latent_proj(x) if "fc1_latent_proj" in self else x
        if self.weight_inputs:  # one input row per (token, choice): the token times that expert's weight
            y = self.experts(routed[:, None, :] * weights[..., None], indices).sum(axis=-2)
        else:
            y = (self.experts(routed, indices) * weights[..., None]).sum(axis=-2)
        if "fc2_latent_proj" in self:
            y = self.fc2_latent_proj(y)
        if "shared_expert" in self:
            shared = self.shared_expert(x)
            if "shared_expert_gate" in self:
                shared = mx.sigmoid(self.shared_expert_gate(x)) * shared
            y = y + shared
        return y.reshape(shape)


def stack_experts(weights: dict, prefix: str, num_experts: int, names: dict) -> dict:
    """Replace per-expert tensors `{prefix}.experts.{e}.{hf_name}.{suffix}` by one stacked
    `{prefix}.experts.{ours}.{suffix}` per projection; `names` maps HF's projection names to ours
    (Mixtral: w1 -> gate_proj, w3 -> up_proj, w2 -> down_proj). Missing experts are left for the
    weight check to report by name."""
    for hf_name, ours in names.items():
        for suffix in ("weight", "scales", "biases"):
            keys = [f"{prefix}.experts.{e}.{hf_name}.{suffix}" for e in range(num_experts)]
            if all(k in weights for k in keys):
                weights[f"{prefix}.experts.{ours}.{suffix}"] = mx.stack([weights.pop(k) for k in keys])
    return weights


def split_fused_experts(weights: dict, prefix: str) -> dict:
    """transformers >= 5 keeps experts fused in memory: `experts.gate_up_proj` [E, 2I, D] and
    `experts.down_proj` [E, D, I] (no `.weight`). Checkpoints written that way are split here."""
    fused = weights.pop(f"{prefix}.experts.gate_up_proj", None)
    if fused is not None:
        half = fused.shape[1] // 2
        weights[f"{prefix}.experts.gate_proj.weight"] = fused[:, :half]
        weights[f"{prefix}.experts.up_proj.weight"] = fused[:, half:]
    down = weights.pop(f"{prefix}.experts.down_proj", None)
    if down is not None:
        weights[f"{prefix}.experts.down_proj.weight"] = down
    return weights


def dequantize_router(weights: dict, prefix: str, quantization: dict | None) -> dict:
    """Routers stay in float: a checkpoint that quantized one (mlx-lm's default recipe does) is
    dequantized here rather than computed with low-precision routing."""
    scales = weights.pop(f"{prefix}.scales", None)
    if scales is None:
        return weights
    q = quantization or {}
    override = q.get(prefix) if isinstance(q.get(prefix), dict) else {}
    biases = weights.pop(f"{prefix}.biases", None)
    weights[f"{prefix}.weight"] = mx.dequantize(
        weights[f"{prefix}.weight"], scales, biases,
        override.get("group_size", q.get("group_size", 64)), override.get("bits", q.get("bits", 4)),
        # A per-module entry without a mode is affine (as nn.quantize reads it), whatever the default.
        mode=override.get("mode", "affine") if override else q.get("mode", "affine"),
    )
    return weights
