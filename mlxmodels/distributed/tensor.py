"""Tensor parallelism: every rank holds a slice of every block and the slices' outputs are summed.

Over the shared layers (mlxmodels/layers), whatever family uses them:
- `Attention`: each rank keeps some heads: q/k/v projections cut by output (column-sharded), o_proj
  by input (row-sharded); the partial outputs meet in one `all_sum`. KV heads are split when there
  are at least as many as ranks, else each rank keeps the KV heads its query heads read.
- `GatedMLP` / `MLP`: gate/up cut by output, down by input, one `all_sum`.
- `SparseMoE`: each rank owns a contiguous range of experts (E/N) and computes only the routed pairs
  that land there; the router stays whole on every rank (it is tiny and decides for all); a shared
  expert is cut like an MLP; one `all_sum` for the whole block.
- Embedding and LM head: cut by vocabulary; a lookup sums the owning rank's row, the logits are
  gathered (see model.py).
An output bias is kept on rank 0 only (it must be added once to the sum).

Everything else is replicated: multi-head latent attention, linear attention (Gated DeltaNet, Kimi
Delta), SSMs and short convolutions compute the same on every rank, so hybrid families run tensor
parallel with only their attention and MLP/MoE blocks split (use --parallel pipeline to split those
too). Attention with one RMSNorm across all heads (OLMo 2/3, OLMoE) stays whole, as its norm needs
every head.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from mlxmodels.distributed.slicing import Reader, drop_bias, ranges, slice_inputs, slice_rows
from mlxmodels.errors import OrchardError
from mlxmodels.layers.attention import Attention
from mlxmodels.layers.mlp import MLP, GatedMLP
from mlxmodels.layers.moe import SparseMoE


def _summed(cls, group, traffic):
    """`cls` whose output is summed over the group (the subclass keeps every parameter name)."""

    class Summed(cls):
        def __call__(self, *args, **kwargs):
            y = super().__call__(*args, **kwargs)
            traffic.add("all_sum", y)
            return mx.distributed.all_sum(y, group=group)

    Summed.__name__ = Summed.__qualname__ = f"TensorParallel{cls.__name__}"
    return Summed


def _local_experts(cls, start: int, stop: int):
    """Stacked experts of which this rank holds [start, stop): other experts' pairs give zeros."""

    class LocalExperts(cls):
        def __call__(self, x, indices):
            owned = (indices >= start) & (indices < stop)
            y = super().__call__(x, mx.where(owned, indices - start, 0))
            return y * owned[..., None].astype(y.dtype)

    LocalExperts.__name__ = LocalExperts.__qualname__ = f"Local{cls.__name__}"
    return LocalExperts


def _vocab_sharded(cls, start: int, stop: int, group, traffic):
    """An embedding holding rows [start, stop): a lookup of another rank's token gives zeros here,
    and the sum over ranks gives every token its row. `as_linear` (a tied head) gives this rank's
    slice of the logits."""

    class VocabShard(cls):
        def __call__(self, ids):
            owned = (ids >= start) & (ids < stop)
            rows = super().__call__(mx.where(owned, ids - start, 0))
            traffic.add("all_sum", rows)
            return mx.distributed.all_sum(rows * owned[..., None].astype(rows.dtype), group=group)

    VocabShard.__name__ = VocabShard.__qualname__ = f"VocabShard{cls.__name__}"
    return VocabShard


def _quant_unit(layer) -> int:
    return layer.group_size if "scales" in layer else 1


def _lcm(a: int, b: int) -> int:
    from math import gcd

    return a * b // gcd(a, b)


class TensorPlan:
    """Cuts the model's parameters (`split`, before the dtype policy) and installs the communicating
    forward passes (`install`, after it: the CPU weight policy swaps layer classes in between)."""

    def __init__(self, group, traffic):
        self.group, self.traffic = group.group, traffic
        self.rank, self.size = group.rank, group.size
        self.swaps: list = []  # (module, new class factory) applied by install
        self.notes: list[str] = []  # what stays whole, and why
        self.vocab: tuple[int, int] | None = None

    def split(self, model: nn.Module, reader: Reader) -> None:
        inside_moe = set()
        for path, module in model.named_modules():
            if isinstance(module, SparseMoE):
                self._moe(path, module, reader)
                if "shared_expert" in module:
                    inside_moe.add(id(module.shared_expert))
        for path, module in model.named_modules():
            if isinstance(module, Attention):
                self._attention(path, module, reader)
            elif isinstance(module, (GatedMLP, MLP)) and id(module) not in inside_moe:  # cut by _moe
                self._mlp(path, module, reader, summed=True)
        self._vocabulary(model, reader)

    def install(self, model: nn.Module) -> None:
        for module, factory in self.swaps:
            module.__class__ = factory(module.__class__)

    # --- blocks -------------------------------------------------------------------------------

    def _head_ranges(self, attn: Attention) -> tuple[tuple[int, int], tuple[int, int]] | None:
        H, KV, N = attn.num_heads, attn.num_kv_heads, self.size
        group = H // KV
        if KV >= N:
            kv = ranges(KV, N)[self.rank]
            return (kv[0] * group, kv[1] * group), kv
        if H < N:
            return None
        q = ranges(H, N)[self.rank]
        kv = (q[0] // group, (q[1] - 1) // group + 1)
        if (q[1] - q[0]) % (kv[1] - kv[0]):
            return None
        local_group = (q[1] - q[0]) // (kv[1] - kv[0])
        # Each local query head must read the KV head it read before: local head i -> i // local_group.
        if any((q[0] + i) // group - kv[0] != i // local_group for i in range(q[1] - q[0])):
            return None
        return q, kv

    def _attention(self, path: str, attn: Attention, reader: Reader) -> None:
        if attn.qk_norm == "full_width":
            self.notes.append(f"{path}: kept whole (its q/k norm spans all heads)")
            return
        cut = self._head_ranges(attn)
        if cut is None:
            self.notes.append(f"{path}: kept whole ({attn.num_heads} heads, {attn.num_kv_heads} KV heads "
                              f"do not split over {self.size} ranks)")
            return
        (q0, q1), (k0, k1) = cut
        d = attn.head_dim
        qd = d * (2 if attn.output_gate else 1)  # an output gate rides beside each head's query
        o_unit = _quant_unit(attn.o_proj)
        if (q0 * d) % o_unit or (q1 * d) % o_unit:
            raise OrchardError(f"cannot shard {path}.o_proj: its inputs {q0 * d}..{q1 * d} (heads {q0}-{q1 - 1}) "
                               f"would split a quantization group of {o_unit} (use --parallel pipeline)")
        if "qkv_proj" in attn:
            self._fused_qkv(attn, (q0 * qd, q1 * qd), (k0 * d, k1 * d), reader)
        else:
            slice_rows(attn.q_proj, q0 * qd, q1 * qd, reader)
            slice_rows(attn.k_proj, k0 * d, k1 * d, reader)
            slice_rows(attn.v_proj, k0 * d, k1 * d, reader)
        slice_inputs(attn.o_proj, q0 * d, q1 * d, reader, f"{path}.o_proj")
        if self.rank:
            drop_bias(attn.o_proj)
        if "sinks" in attn:
            attn.sinks = reader.take(attn.sinks, 0, q0, q1)
        attn.num_heads, attn.num_kv_heads = q1 - q0, k1 - k0
        self.swaps.append((attn, lambda cls: _summed(cls, self.group, self.traffic)))

    def _fused_qkv(self, attn, q, kv, reader: Reader) -> None:
        """Phi-3's [q | k | v] projection: each part cut on its own, then joined again."""
        layer = attn.qkv_proj
        if "scales" in layer:
            raise OrchardError("tensor parallelism does not cut a quantized fused qkv_proj; use --parallel pipeline")
        qn = attn.num_heads * attn.head_dim * (2 if attn.output_gate else 1)
        kn = attn.num_kv_heads * attn.head_dim
        bounds = [(q[0], q[1]), (qn + kv[0], qn + kv[1]), (qn + kn + kv[0], qn + kn + kv[1])]
        for name in ("weight", "bias"):
            if name in layer:
                full = layer[name]
                layer[name] = mx.concatenate([reader.take(full, 0, a, b) for a, b in bounds], axis=0)
                mx.eval(layer[name])

    def _mlp(self, path: str, mlp: nn.Module, reader: Reader, summed: bool) -> None:
        down = mlp.down_proj
        hidden = down.weight.shape[-1] if "scales" not in down else down.scales.shape[-1] * down.group_size
        unit = _quant_unit(down)
        if hidden % unit or hidden // unit < self.size:
            raise OrchardError(f"cannot shard {path}: {hidden} hidden units in quantization groups of {unit} "
                               f"do not split over {self.size} ranks (use --parallel pipeline)")
        h0, h1 = ranges(hidden, self.size, unit)[self.rank]
        if "gate_up_proj" in mlp:
            if "scales" in mlp.gate_up_proj:
                raise OrchardError(f"tensor parallelism does not cut a quantized fused {path}.gate_up_proj; "
                                   "use --parallel pipeline")
            full = mlp.gate_up_proj
            for name in ("weight", "bias"):
                if name in full:
                    w = full[name]
                    full[name] = mx.concatenate([reader.take(w, 0, h0, h1), reader.take(w, 0, hidden + h0, hidden + h1)])
                    mx.eval(full[name])
        else:
            for name in ("gate_proj", "up_proj"):
                if name in mlp:
                    slice_rows(mlp[name], h0, h1, reader)
        slice_inputs(down, h0, h1, reader, f"{path}.down_proj")
        if self.rank:
            drop_bias(down)
        if summed:
            self.swaps.append((mlp, lambda cls: _summed(cls, self.group, self.traffic)))

    def _moe(self, path: str, moe: SparseMoE, reader: Reader) -> None:
        experts = moe.experts
        E = experts.down_proj.weight.shape[0]
        if E < self.size:
            raise OrchardError(f"cannot shard {path}: {E} experts over {self.size} ranks")
        e0, e1 = ranges(E, self.size)[self.rank]
        for name in ("gate_proj", "up_proj", "down_proj"):
            if name in experts:
                slice_rows(experts[name], e0, e1, reader)
        if "shared_expert" in moe:
            self._mlp(f"{path}.shared_expert", moe.shared_expert, reader, summed=False)
        if "fc2_latent_proj" in moe and self.rank:
            drop_bias(moe.fc2_latent_proj)  # the latent projection is linear: it runs on the partial sum
        self.swaps.append((experts, lambda cls, a=e0, b=e1: _local_experts(cls, a, b)))
        self.swaps.append((moe, lambda cls: _summed(cls, self.group, self.traffic)))

    def _vocabulary(self, model: nn.Module, reader: Reader) -> None:
        """Embedding and LM head cut by vocabulary rows when the vocabulary splits evenly (the
        logits' all_gather needs equal parts); else both stay whole."""
        embeds = [(p, m) for p, m in model.named_modules() if isinstance(m, (nn.Embedding, nn.QuantizedEmbedding))]
        head = model["lm_head"] if "lm_head" in model else None
        vocab = (head.weight.shape[0] if head is not None else
                 embeds[0][1].weight.shape[0] if embeds else 0)
        if not vocab or vocab % self.size:
            self.notes.append(f"embedding and LM head kept whole (vocabulary {vocab} does not split evenly)")
            return
        v0, v1 = ranges(vocab, self.size)[self.rank]
        for path, embed in embeds:
            if embed.weight.shape[0] == vocab:
                slice_rows(embed, v0, v1, reader)
                self.swaps.append((embed, lambda cls: _vocab_sharded(cls, v0, v1, self.group, self.traffic)))
        if head is not None:
            slice_rows(head, v0, v1, reader)
        self.vocab = (v0, v1)
