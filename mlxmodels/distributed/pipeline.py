"""Pipeline parallelism: each rank holds a contiguous range of layers; hidden states go rank to rank.

Rank r runs its layers on what rank r-1 sends (`mx.distributed.recv_like`) and sends the result to
rank r+1; rank 0 embeds the tokens, the last rank applies the final norm and the LM head, and the
logits reach every rank through one `all_sum` (the other ranks contribute zeros), so every rank
samples the same token from the same numbers. The family's own forward pass is untouched: layers a
rank does not hold become pass-throughs, the embedding and head of ranks that do not use them
become weightless stand-ins that give zeros.

Layer ranges follow each host's available memory (an even split when the hosts are alike).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from mlxmodels.cache import StatelessCache
from mlxmodels.distributed.slicing import Reader, ranges
from mlxmodels.errors import OrchardError

# Hosts whose available memory differs by less than this fraction get an even split: the same
# machine reports slightly different free memory from one moment to the next.
EVEN_SPLIT_SPREAD = 0.15


def layer_ranges(num_layers: int, size: int, memory: list[float]) -> list[tuple[int, int]]:
    """Each rank's [first, last) layers: in proportion to `memory`, even when it is about equal."""
    if num_layers < size:
        raise OrchardError(f"cannot split {num_layers} layers over {size} ranks (use fewer ranks)")
    even = not memory or min(memory) <= 0 or (max(memory) - min(memory)) <= EVEN_SPLIT_SPREAD * max(memory)
    out = ranges(num_layers, size, 1, None if even else memory)
    if any(a == b for a, b in out):
        out = ranges(num_layers, size)  # every rank takes at least one layer
    return out


class PassThrough(nn.Module):
    """A layer another rank holds: hands its input on, and counts the tokens in its cache slot.
    It keeps the layer's plain attributes (say `is_linear`), which a family's code may read."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        for key, value in vars(layer).items():
            if not key.startswith("_"):
                setattr(self, key, value)

    def __call__(self, x, cache=None, *args, **kwargs):
        if cache is not None:
            cache.advance(x.shape[1])
        return x


class _Wrapper(nn.Module):
    """A layer with communication around it; attribute reads go to the layer."""

    def __getattr__(self, key):
        try:
            return super().__getattr__(key)
        except AttributeError:
            if key == "layer":
                raise
            return getattr(self["layer"], key)


class Receive(_Wrapper):
    """This rank's first layer: its input comes from the previous rank."""

    def __init__(self, layer: nn.Module, src: int, group, traffic):
        super().__init__()
        self.layer = layer
        self._src, self._group, self._traffic = src, group, traffic

    def __call__(self, x, *args, **kwargs):
        self._traffic.add("recv", x)
        return self.layer(mx.distributed.recv_like(x, self._src, group=self._group), *args, **kwargs)


class Send(_Wrapper):
    """This rank's last layer: its output goes to the next rank."""

    def __init__(self, layer: nn.Module, dst: int, group, traffic):
        super().__init__()
        self.layer = layer
        self._dst, self._group, self._traffic = dst, group, traffic

    def __call__(self, x, *args, **kwargs):
        y = self.layer(x, *args, **kwargs)
        self._traffic.add("send", y)
        sent = mx.distributed.send(y, self._dst, group=self._group)
        self._traffic.sends.append(sent)
        return sent


def _zero_embedding(cls, dims: int, vocab: int, lookup: bool, head: bool, dtype):
    """An embedding this rank does not look up with (zeros of the right shape), or does not use as
    the tied head (zero logits that still depend on their input, so the send before them runs)."""

    class Partial(cls):
        def __call__(self, ids):
            return super().__call__(ids) if lookup else mx.zeros((*ids.shape, dims), dtype=dtype)

        def as_linear(self, x):
            return super().as_linear(x) if head else _zero_logits(x, vocab)

    Partial.__name__ = Partial.__qualname__ = f"Pipeline{cls.__name__}"
    return Partial


def _zero_logits(x: mx.array, vocab: int) -> mx.array:
    return mx.depends(mx.zeros((*x.shape[:-1], vocab), dtype=x.dtype), [x])


class ZeroEmbedding(nn.Module):
    """The embedding of a rank that neither looks tokens up nor computes logits: no weights."""

    def __init__(self, dims: int, vocab: int, dtype):
        super().__init__()
        self._dims, self._vocab, self._dtype = dims, vocab, dtype

    def __call__(self, ids):
        return mx.zeros((*ids.shape, self._dims), dtype=self._dtype)

    def as_linear(self, x):
        return _zero_logits(x, self._vocab)


class ZeroHead(nn.Module):
    """The untied LM head of a rank other than the last: zero logits, no weights."""

    def __init__(self, vocab: int):
        super().__init__()
        self._vocab = vocab

    def __call__(self, x):
        return _zero_logits(x, self._vocab)


class PipelinePlan:
    def __init__(self, group, memory: list[float], traffic):
        self.group, self.traffic = group.group, traffic
        self.rank, self.size = group.rank, group.size
        self.memory = memory
        self.range: tuple[int, int] = (0, 0)
        self.notes: list[str] = []
        self._embed_swap = None  # (embedding, looks up here, is the head here, dims, vocab)
        self._zero_embed: ZeroEmbedding | None = None

    @property
    def is_last(self) -> bool:
        return self.rank == self.size - 1

    def split(self, model: nn.Module, reader: Reader) -> None:
        layers = model.layers
        self.ranges = layer_ranges(len(layers), self.size, self.memory)
        first, last = self.range = self.ranges[self.rank]
        # The family's make_cache reads its layers; fresh caches are copies of these empty ones.
        self._cache_template = model.make_cache()
        for i in range(len(layers)):
            if not first <= i < last:
                layers[i] = PassThrough(layers[i])
        if self.rank > 0:
            layers[first] = Receive(layers[first], self.rank - 1, self.group, self.traffic)
        if not self.is_last:
            layers[last - 1] = Send(layers[last - 1], self.rank + 1, self.group, self.traffic)
        self._ends(model)

    def _ends(self, model: nn.Module) -> None:
        """Embedding on rank 0, LM head on the last rank (a tied head: the embedding there too)."""
        embed_path, embed = next(((p, m) for p, m in model.named_modules()
                                  if isinstance(m, (nn.Embedding, nn.QuantizedEmbedding))), (None, None))
        if embed is None:
            raise OrchardError("pipeline parallelism needs the model's token embedding; none found")
        vocab = embed.weight.shape[0]
        dims = embed.scales.shape[-1] * embed.group_size if "scales" in embed else embed.weight.shape[-1]
        tied = "lm_head" not in model
        lookup, head = self.rank == 0, tied and self.is_last
        if not tied and not self.is_last:
            model.lm_head = ZeroHead(model.lm_head.weight.shape[0])
        if not lookup and not head:
            parent = model
            *parents, name = embed_path.split(".")
            for p in parents:
                parent = parent[p]
            parent[name] = self._zero_embed = ZeroEmbedding(dims, vocab, mx.float32)
        elif not (lookup and head):
            self._embed_swap = (embed, lookup, head, dims, vocab)

    def install(self, model: nn.Module) -> None:
        # The zeros a stand-in gives must have the dtype the real hidden states have (recv_like
        # takes its dtype from them): the compute dtype, known once the dtype policy has run.
        dtype = getattr(mx, model.info.compute_dtype)
        if self._zero_embed is not None:
            self._zero_embed._dtype = dtype
        if self._embed_swap is not None:
            embed, lookup, head, dims, vocab = self._embed_swap
            embed.__class__ = _zero_embedding(embed.__class__, dims, vocab, lookup, head, dtype)

    def make_cache(self) -> list:
        """Layers another rank holds keep no state here: a counting slot in place of theirs."""
        first, last = self.range
        return [c.copy() if first <= i < last else StatelessCache() for i, c in enumerate(self._cache_template)]
