"""Batched caches: many sequences of different lengths decoding together, one model call per step.

A batch is built from per-sequence caches (`mlxmodels/cache.py`, one list per sequence, prefilled
alone) and split back into them, so every cache kind batches and nothing else changes: a model is
called on [B, 1] inputs with a list of batched layer caches that honour the same interface its layers
already use (`offset`, `update_and_fetch`, `mask`, `fetch`/`update`, `advance`).

- Attention caches (growing, sliding-window, chunked, quantized, latent): one [B, H, T, D] buffer per
  stored array, rows right-aligned (left-padded), so every row's newest token sits in the same
  column and a decode step writes one column for all rows. `offset` is an array of per-row positions
  (RoPE rotates each row by its own) and `mask` hides each row's padding (plus, for chunked
  attention, the keys of earlier chunks).
- Recurrent states (SSM, linear attention, short conv): the per-row states stacked along the batch
  axis; a one-token step never mixes rows, so nothing needs masking.
- A layer with both (Falcon-H1) batches each part.

Decode steps: a batched call takes one token per row, or, to verify speculative guesses, a few
per row (right-padded to the longest; `rewind_rows` then drops each row's padding and rejected
guesses). Prompts are prefilled per sequence, in chunks, by the scheduler. `batch_caches`,
`extend_batch`, `select_rows`, `extract_row`, `mark_rows` and `rewind_rows` work on a whole model's
cache.
"""

from __future__ import annotations

import mlx.core as mx

from mlxmodels.cache import (AttentionSSMCache, ChunkedKVCache, KVCache, LatentKVCache, QuantizedKVCache,
                             QuantizedLatentKVCache, RotatingKVCache, SSMCache, StatelessCache)
from mlxmodels.errors import OrchardError

STEP = 256  # columns added when an attention buffer fills (as the per-sequence caches grow)


def _owned(a: mx.array) -> mx.array:
    """A copy that shares no memory with `a` (a slice would keep the whole batch buffer alive)."""
    return mx.contiguous(a, allow_col_major=False) if a.size else a


# -- how each per-sequence attention cache stores its tokens -------------------------------------------


class _Layout:
    """One per-sequence attention cache kind, seen as a few [1, H, T, *] arrays with time on axis 2.

    `held(cache)`: how many of its newest tokens a batch needs; `arrays(cache, n)`: those tokens' arrays;
    `encode(*new)`: what a decode step stores; `package(arrays)`: what `update_and_fetch` returns;
    `rebuild(arrays, held, offset)`: a per-sequence cache again."""

    window: int | None = None  # sliding window or chunk length, in positions
    chunked = False
    quantized = False

    def held(self, cache) -> int:
        return cache.offset

    def arrays(self, cache, n: int) -> list:
        raise NotImplementedError

    def encode(self, *new) -> list:
        return list(new)

    def package(self, arrays: list):
        return tuple(arrays)

    def rebuild(self, arrays: list, held: int, offset: int):
        raise NotImplementedError


class _KVLayout(_Layout):
    def __init__(self, dtype: mx.Dtype | None = None):
        self.dtype = dtype  # the caches' stored dtype (KVCache.dtype)

    def arrays(self, cache, n):
        return [] if cache.keys is None else [a[..., cache.offset - n : cache.offset, :] for a in (cache.keys, cache.values)]

    def encode(self, *new) -> list:
        if self.dtype is None or new[0].dtype == self.dtype:
            return list(new)
        return [a.astype(self.dtype) for a in new]

    def rebuild(self, arrays, held, offset):
        cache = KVCache(self.dtype)
        if arrays:
            cache.keys, cache.values = arrays
        cache.offset = offset
        return cache


class _WindowLayout(_Layout):
    """Sliding-window (`RotatingKVCache`) and chunked (`ChunkedKVCache`) attention: the next query looks
    back at most window - 1 positions, so a batch keeps no more than that per row."""

    def __init__(self, window: int, chunked: bool):
        self.window, self.chunked = window, chunked

    def held(self, cache):
        return min(cache.count, self.window - 1)

    def arrays(self, cache, n):
        if cache.keys is None:
            return []
        return [a[..., cache.count - n : cache.count, :] for a in (cache.keys, cache.values)]

    def rebuild(self, arrays, held, offset):
        cache = (ChunkedKVCache if self.chunked else RotatingKVCache)(self.window)
        if arrays:
            cache.keys, cache.values = arrays
        cache.offset, cache.count = offset, held
        return cache


class _QuantizedLayout(_Layout):
    quantized = True

    def __init__(self, bits: int, group_size: int):
        self.bits, self.group_size = bits, group_size

    def _quantize(self, x: mx.array) -> list:
        if x.shape[-1] % self.group_size and x.shape[-1] % 32 == 0:
            self.group_size = 32  # the first token of caches that held none: as the per-sequence kinds do
        return list(mx.quantize(x, group_size=self.group_size, bits=self.bits))


class _QuantizedKVLayout(_QuantizedLayout):

    def arrays(self, cache, n):
        if cache.keys is None:
            return []
        return [a[..., cache.offset - n : cache.offset, :] for a in (*cache.keys, *cache.values)]

    def encode(self, keys, values):
        return self._quantize(keys) + self._quantize(values)

    def package(self, arrays):
        return tuple(arrays[:3]), tuple(arrays[3:])

    def rebuild(self, arrays, held, offset):
        cache = QuantizedKVCache(self.bits, self.group_size)
        if arrays:
            cache.keys, cache.values = tuple(arrays[:3]), tuple(arrays[3:])
        cache.offset = offset
        return cache


class _LatentLayout(_Layout):
    def arrays(self, cache, n):
        if cache.latents is None:
            return []
        return [a[..., cache.offset - n : cache.offset, :] for a in (cache.latents, cache.rope_keys)]

    def rebuild(self, arrays, held, offset):
        cache = LatentKVCache()
        if arrays:
            cache.latents, cache.rope_keys = arrays
        cache.offset = offset
        return cache


class _QuantizedLatentLayout(_QuantizedLayout):
    def arrays(self, cache, n):
        return [] if cache.rows is None else [a[..., cache.offset - n : cache.offset, :] for a in cache.rows]

    def encode(self, latents, rope_keys):
        return self._quantize(mx.concatenate([latents, rope_keys.astype(latents.dtype)], axis=-1))

    def rebuild(self, arrays, held, offset):
        cache = QuantizedLatentKVCache(self.bits, self.group_size)
        if arrays:
            cache.rows = tuple(arrays)
        cache.offset = offset
        return cache


def _layout_of(cache) -> _Layout:
    # Subclasses first: QuantizedKVCache is a KVCache, ChunkedKVCache a RotatingKVCache.
    if isinstance(cache, QuantizedLatentKVCache):
        return _QuantizedLatentLayout(cache.bits, cache.group_size)
    if isinstance(cache, LatentKVCache):
        return _LatentLayout()
    if isinstance(cache, QuantizedKVCache):
        return _QuantizedKVLayout(cache.bits, cache.group_size)
    if isinstance(cache, RotatingKVCache):
        return _WindowLayout(cache.window, isinstance(cache, ChunkedKVCache))
    if isinstance(cache, KVCache):
        return _KVLayout(cache.dtype)
    raise OrchardError(f"no batched form of the cache kind {type(cache).__name__}")


def _joined_layout(layouts: list[_Layout], empty: list[bool]) -> _Layout:
    """The one layout of caches batched together. A quantized cache that holds nothing has not yet
    chosen its group size (head dims 64 does not divide fall back to 32 on the first token): it takes
    the others'."""
    def settings(layout) -> dict:  # as strings: an mx.Dtype does not compare with None
        return {name: str(value) for name, value in vars(layout).items()}

    chosen = next((l for l, e in zip(layouts, empty) if not e), layouts[0])
    for layout, e in zip(layouts, empty):
        settled = settings(layout) == settings(chosen) or (
            e and chosen.quantized and {**settings(layout), "group_size": ""} == {**settings(chosen), "group_size": ""})
        if type(layout) is not type(chosen) or not settled:
            raise OrchardError("cannot batch caches of different kinds in one layer")
    return chosen


# -- batched layer caches --------------------------------------------------------------------------------


class BatchAttentionCache:
    """The attention cache of one layer for B sequences: buffers [B, H, capacity, *] per stored array.
    Row i's `held[i]` newest tokens sit in columns ends[i] - held[i] .. ends[i] - 1, in time order; the
    other columns are padding, hidden by the mask. `offsets[i]` is the number of tokens row i has seen
    (its next position). Rows start right-aligned (one common end); a verification pass whose rows keep
    different numbers of tokens (`trim_rows`: speculative decoding) leaves their ends apart, and a
    step then writes each row's tokens at its own end."""

    def __init__(self, layout: _Layout, arrays: list | None, end: int, held: list[int], offsets: list[int]):
        self.layout = layout
        self.arrays = arrays  # None until some row holds a token
        self.ends = [end] * len(held)
        self.held = list(held)
        self.offsets = list(offsets)
        self._mask = None
        self._offset_array = None

    # The attributes attention layers read from the per-sequence kinds.
    @property
    def quantized(self) -> bool:
        return self.layout.quantized

    @property
    def bits(self) -> int:
        return self.layout.bits

    @property
    def group_size(self) -> int:
        return self.layout.group_size

    def dequantized(self, rows: tuple, dtype: mx.Dtype, kv_lora_rank: int) -> tuple[mx.array, mx.array]:
        """Quantized latent rows in float, as `QuantizedLatentKVCache.dequantized` gives them: a
        verification pass (several queries) attends them expanded, as a prefill does."""
        full = mx.dequantize(*rows, group_size=self.group_size, bits=self.bits).astype(dtype)
        return full[..., :kv_lora_rank], full[..., kv_lora_rank:]

    @property
    def offset(self) -> mx.array:
        """Per-row positions of the first token being added ([B] int32): RoPE rotates each row by its own."""
        if self._offset_array is None:
            self._offset_array = _shared(("offsets", tuple(self.offsets)),
                                         lambda: mx.array(self.offsets, dtype=mx.int32))
        return self._offset_array

    @classmethod
    def merge(cls, caches: list) -> "BatchAttentionCache":
        layouts = [_layout_of(c) for c in caches]
        held = [layout.held(c) for layout, c in zip(layouts, caches)]
        rows = [layout.arrays(c, n) for layout, c, n in zip(layouts, caches, held)]
        layout = _joined_layout(layouts, [not r for r in rows])
        end = max(held)
        arrays = None
        template = next((r for r in rows if r), None)
        if template is not None:
            arrays = [_zeros(a, len(caches), end + STEP) for a in template]
            for i, (parts, n) in enumerate(zip(rows, held)):
                for buffer, part in zip(arrays, parts):
                    if n:
                        buffer[i : i + 1, :, end - n : end] = part
        return cls(layout, arrays, end, held, [c.offset for c in caches])

    def update_and_fetch(self, *new: mx.array):
        """Store L new tokens per row (a verification pass feeds several; rows with fewer real ones
        are right-padded, and `trim_rows` drops the padding afterwards)."""
        B, _, L = new[0].shape[:3]
        encoded = self.layout.encode(*new)
        if self.arrays is None:
            self.arrays = [_zeros(e, B, L + STEP) for e in encoded]
            self.ends = [0] * B
        elif max(self.ends) + L > self.arrays[0].shape[2]:
            self._grow(L)
        first = self.ends[0]
        if all(e == first for e in self.ends):
            for buffer, e in zip(self.arrays, encoded):
                buffer[:, :, first : first + L] = e
        else:
            columns = (mx.array(self.ends, dtype=mx.int32)[:, None] + mx.arange(L, dtype=mx.int32))[:, None, :, None]
            self.arrays = [mx.put_along_axis(buffer, mx.broadcast_to(columns, e.shape), e, axis=2)
                           for buffer, e in zip(self.arrays, encoded)]
        window = self.layout.window
        before, positions = self.ends, self.offsets  # where each row's first query sits
        self.ends = [e + L for e in self.ends]
        # A windowed row keeps window - 1 tokens before the oldest new query.
        self.held = [h + L if window is None else min(h + L, window - 1 + L) for h in self.held]
        self.offsets = [o + L for o in self.offsets]
        self._offset_array = None
        start = min(e - h for e, h in zip(self.ends, self.held))
        stop = max(self.ends)
        self._mask = self._visible(start, stop, before, positions, L)
        return self.layout.package([a[:, :, start:stop] for a in self.arrays])

    def _visible(self, start: int, stop: int, before: list[int], positions: list[int], L: int):
        """Bool [B, 1, L, S] for the returned columns start..stop-1: for query j of row i, the row's
        own tokens (not padding) up to its own column, within the window, and for chunked attention
        only those in the query's chunk. None if every query sees every column."""
        aligned = all(e == stop and e - h == start for e, h in zip(self.ends, self.held))
        if L == 1 and aligned and not self.layout.chunked:
            return None
        key = ("mask", start, stop, tuple(before), tuple(self.held), L,
               self.layout.window, self.layout.chunked and tuple(positions))
        return _shared(key, lambda: self._build_mask(start, stop, before, positions, L))

    def _build_mask(self, start: int, stop: int, before: list[int], positions: list[int], L: int) -> mx.array:
        columns = mx.arange(start, stop)[None, None, :]  # [1, 1, S]
        query = mx.array(before)[:, None, None] + mx.arange(L)[None, :, None]  # [B, L, 1]: each query's column
        first = mx.array([e - h for e, h in zip(self.ends, self.held)])[:, None, None]
        visible = (columns >= first) & (columns <= query)
        window = self.layout.window
        if window is not None:
            back = query - columns  # how many positions before the query a column lies
            if self.layout.chunked:
                # Column c shares the chunk of query position p if it lies at most p mod window back.
                p = mx.array(positions)[:, None, None] + mx.arange(L)[None, :, None]
                visible = visible & (back <= p % window)
            else:
                visible = visible & (back < window)
        return visible[:, None]

    def mask(self, L: int):
        return self._mask

    def _grow(self, incoming: int) -> None:
        """Room for `incoming` + STEP more columns; a windowed cache first drops what no row can look
        back to. Every row moves by the same number of columns."""
        window = self.layout.window
        keep = [h if window is None else min(h, window - 1) for h in self.held]
        low = min(e - k for e, k in zip(self.ends, keep))
        high = max(self.ends)
        B = self.arrays[0].shape[0]
        fresh = [_zeros(a, B, high - low + incoming + STEP) for a in self.arrays]
        for buffer, old in zip(fresh, self.arrays):
            buffer[:, :, : high - low] = old[:, :, low:high]
        self.arrays = fresh
        self.ends = [e - low for e in self.ends]
        self.held = keep

    trims = True

    def mark(self):
        return None  # trimming needs no snapshot

    def rewind_rows(self, counts: list[int], mark=None) -> None:
        """Row i forgets its counts[i] newest tokens (rejected guesses, padding)."""
        self.ends = [e - n for e, n in zip(self.ends, counts)]
        self.held = [max(0, h - n) for h, n in zip(self.held, counts)]
        self.offsets = [o - n for o, n in zip(self.offsets, counts)]
        self._offset_array = None

    def _aligned(self, rows: list[int], end: int) -> list | None:
        """Fresh buffers for `rows` (in that order), each row's tokens right-aligned at column `end`."""
        if self.arrays is None:
            return None
        n = max((self.held[i] for i in rows), default=0)
        fresh = [_zeros(a, len(rows), end + STEP) for a in self.arrays]
        if not n:
            return fresh
        ends = {self.ends[i] for i in rows}
        if len(ends) == 1:  # one copy for all rows
            (old_end,) = ends
            index = mx.array(rows, dtype=mx.int32)
            for buffer, old in zip(fresh, self.arrays):
                buffer[:, :, end - n : end] = old[index, :, old_end - n : old_end]
            return fresh
        for r, i in enumerate(rows):
            h, e = self.held[i], self.ends[i]
            if h:
                for buffer, old in zip(fresh, self.arrays):
                    buffer[r : r + 1, :, end - h : end] = old[i : i + 1, :, e - h : e]
        return fresh

    def extend(self, other: "BatchAttentionCache") -> None:
        """Append `other`'s rows (a batch of the same layer)."""
        self.layout = _joined_layout([self.layout, other.layout], [self.arrays is None, other.arrays is None])
        end = max(max(self.held, default=0), max(other.held, default=0))
        parts = [p for p in (self, other) if p.arrays is not None]
        arrays = None
        if parts:
            pieces = []
            for part in (self, other):
                rows = list(range(len(part.held)))
                pieces.append(part._aligned(rows, end) if part.arrays is not None else
                              [_zeros(a, len(rows), end + STEP) for a in parts[0].arrays])
            arrays = [mx.concatenate(group, axis=0) for group in zip(*pieces)]
        self.arrays = arrays
        self.held += other.held
        self.offsets += other.offsets
        self.ends = [end] * len(self.held)
        self._offset_array = None

    def select(self, rows: list[int]) -> None:
        """Keep only `rows` (in that order), in a fresh buffer no wider than they need."""
        end = max((self.held[i] for i in rows), default=0)
        self.arrays = self._aligned(rows, end)
        self.held = [self.held[i] for i in rows]
        self.offsets = [self.offsets[i] for i in rows]
        self.ends = [end] * len(rows)
        self._offset_array = None

    def extract(self, i: int):
        """Row i as a per-sequence cache of the original kind (its own memory)."""
        n, end = self.held[i], self.ends[i]
        arrays = [] if self.arrays is None or n == 0 else [
            _owned(a[i : i + 1, :, end - n : end]) for a in self.arrays]
        return self.layout.rebuild(arrays, n, self.offsets[i])

    @property
    def state(self) -> list:
        return list(self.arrays or [])

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.state)


_recent: dict = {}
RECENT = 8  # offsets and a mask or two per decode step: all its layers hit


def _shared(key: tuple, make):
    """`make()`, or what it gave for the same key lately: the layers of one decode step ask for the
    same per-row offsets and (layers of one kind) the same mask."""
    if key not in _recent:
        if len(_recent) >= RECENT:
            del _recent[next(iter(_recent))]
        _recent[key] = make()
    return _recent[key]


def _zeros(like: mx.array, batch: int, columns: int) -> mx.array:
    return mx.zeros((batch, like.shape[1], columns, *like.shape[3:]), dtype=like.dtype)


class BatchStateCache:
    """Recurrent state (`SSMCache`: conv window and scan state) of one layer for B sequences, stacked
    on the batch axis. Rows that have seen nothing yet get zeros, which is what a layer starts from."""

    def __init__(self, conv, ssm, offsets: list[int]):
        self.conv, self.ssm = conv, ssm
        self.offsets = list(offsets)

    @classmethod
    def merge(cls, caches: list) -> "BatchStateCache":
        return cls(_stack([c.conv for c in caches]), _stack([c.ssm for c in caches]), [c.offset for c in caches])

    @property
    def offset(self) -> mx.array:
        return mx.array(self.offsets, dtype=mx.int32)

    def fetch(self) -> tuple:
        return self.conv, self.ssm

    def update(self, conv, ssm, tokens: int) -> None:
        self.conv, self.ssm = conv, ssm
        self.offsets = [o + tokens for o in self.offsets]

    def mask(self, L: int):
        return None

    trims = False  # a recurrent state has absorbed its tokens: it goes back to a mark instead

    def mark(self):
        """A snapshot to go back to (free: the layers replace these arrays, never modify them)."""
        return self.conv, self.ssm, list(self.offsets)

    def rewind_rows(self, counts: list[int], mark=None) -> None:
        """Rows with counts[i] > 0 go back to `mark`, which must be exactly counts[i] tokens back."""
        if not any(counts):
            return
        conv, ssm, offsets = mark
        if any(n and o - n != m for o, n, m in zip(self.offsets, counts, offsets)):
            raise RuntimeError("a recurrent state can only go back to its mark")
        back = mx.array([n > 0 for n in counts])
        self.conv, self.ssm = _pick(back, conv, self.conv), _pick(back, ssm, self.ssm)
        self.offsets = [o - n for o, n in zip(self.offsets, counts)]

    def extend(self, other: "BatchStateCache") -> None:
        B, b = len(self.offsets), len(other.offsets)
        self.conv = _stack([self.conv, other.conv], [B, b])
        self.ssm = _stack([self.ssm, other.ssm], [B, b])
        self.offsets += other.offsets

    def select(self, rows: list[int]) -> None:
        index = mx.array(rows, dtype=mx.int32)
        self.conv = None if self.conv is None else self.conv[index]
        self.ssm = None if self.ssm is None else self.ssm[index]
        self.offsets = [self.offsets[i] for i in rows]

    def extract(self, i: int) -> SSMCache:
        cache = SSMCache()
        cache.conv = None if self.conv is None else _owned(self.conv[i : i + 1])
        cache.ssm = None if self.ssm is None else _owned(self.ssm[i : i + 1])
        cache.offset = self.offsets[i]
        return cache

    @property
    def state(self) -> list:
        return [a for a in (self.conv, self.ssm) if a is not None]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.state)


def _pick(rows: mx.array, old, new):
    """Per row (rows: bool [B]): `old` where true, else `new`; None before the first token = zeros."""
    if new is None:
        return old
    old = mx.zeros_like(new) if old is None else old
    return mx.where(rows.reshape(-1, *([1] * (new.ndim - 1))), old, new)


def _stack(parts: list, sizes: list[int] | None = None):
    """Concatenate per-row (or per-batch) states on axis 0; a missing one (None: nothing seen yet) is
    zeros shaped like the others; None if all are missing."""
    template = next((p for p in parts if p is not None), None)
    if template is None:
        return None
    sizes = sizes or [1] * len(parts)
    return mx.concatenate([p if p is not None else mx.zeros((n, *template.shape[1:]), dtype=template.dtype)
                           for p, n in zip(parts, sizes)], axis=0)


class BatchStatelessCache:
    """`StatelessCache` for B sequences: per-row token counts only."""

    def __init__(self, offsets: list[int]):
        self.offsets = list(offsets)

    @classmethod
    def merge(cls, caches: list) -> "BatchStatelessCache":
        return cls([c.offset for c in caches])

    @property
    def offset(self) -> mx.array:
        return mx.array(self.offsets, dtype=mx.int32)

    def advance(self, tokens: int) -> None:
        self.offsets = [o + tokens for o in self.offsets]

    def mask(self, L: int):
        return None

    trims = True

    def mark(self):
        return None

    def rewind_rows(self, counts: list[int], mark=None) -> None:
        self.offsets = [o - n for o, n in zip(self.offsets, counts)]

    def extend(self, other: "BatchStatelessCache") -> None:
        self.offsets += other.offsets

    def select(self, rows: list[int]) -> None:
        self.offsets = [self.offsets[i] for i in rows]

    def extract(self, i: int) -> StatelessCache:
        cache = StatelessCache()
        cache.offset = self.offsets[i]
        return cache

    state = property(lambda self: [])
    nbytes = property(lambda self: 0)


class BatchAttentionSSMCache:
    """`AttentionSSMCache` (attention and an SSM side by side, Falcon-H1) for B sequences."""

    def __init__(self, attention: BatchAttentionCache, ssm: BatchStateCache):
        self.attention, self.ssm = attention, ssm

    @classmethod
    def merge(cls, caches: list) -> "BatchAttentionSSMCache":
        return cls(BatchAttentionCache.merge([c.attention for c in caches]),
                   BatchStateCache.merge([c.ssm for c in caches]))

    @property
    def offset(self) -> mx.array:
        return self.attention.offset

    def mask(self, L: int):
        return self.attention.mask(L)

    trims = False

    def mark(self):
        return self.ssm.mark()

    def rewind_rows(self, counts: list[int], mark=None) -> None:
        self.attention.rewind_rows(counts)
        self.ssm.rewind_rows(counts, mark)

    def extend(self, other: "BatchAttentionSSMCache") -> None:
        self.attention.extend(other.attention)
        self.ssm.extend(other.ssm)

    def select(self, rows: list[int]) -> None:
        self.attention.select(rows)
        self.ssm.select(rows)

    def extract(self, i: int) -> AttentionSSMCache:
        return AttentionSSMCache(self.attention.extract(i), self.ssm.extract(i))

    @property
    def state(self) -> list:
        return self.attention.state + self.ssm.state

    @property
    def nbytes(self) -> int:
        return self.attention.nbytes + self.ssm.nbytes


def _batched_kind(layer):
    if isinstance(layer, AttentionSSMCache):
        return BatchAttentionSSMCache
    if isinstance(layer, SSMCache):
        return BatchStateCache
    if isinstance(layer, StatelessCache):
        return BatchStatelessCache
    return BatchAttentionCache


# -- a whole model's cache -----------------------------------------------------------------------------


def batch_caches(caches: list[list]) -> list:
    """One batched cache (a list with one object per layer) from per-sequence caches of one model,
    row i being caches[i]. The per-sequence caches are read, not changed."""
    if not caches:
        raise OrchardError("a batch needs at least one sequence")
    layers = len(caches[0])
    return [_batched_kind(caches[0][l]).merge([c[l] for c in caches]) for l in range(layers)]


def extend_batch(batch: list, other: list) -> None:
    """Append the rows of batch `other` to `batch` (both from `batch_caches`, same model)."""
    for layer, more in zip(batch, other):
        layer.extend(more)


def select_rows(batch: list, rows: list[int]) -> None:
    """Keep only `rows` of the batch, in that order (sequences that finished leave)."""
    for layer in batch:
        layer.select(rows)


def extract_row(batch: list, i: int) -> list:
    """Row i as a per-sequence cache (`mlxmodels.cache` kinds), sharing no memory with the batch."""
    return [layer.extract(i) for layer in batch]


def batch_trims(batch: list) -> bool:
    """Whether every layer can drop any row's newest tokens (no recurrent state)."""
    return all(layer.trims for layer in batch)


def caches_trim(cache: list) -> bool:
    """Whether a batch of per-sequence caches like `cache` could drop any row's newest tokens
    (`batch_trims` of their batch, without building it)."""
    return all(_batched_kind(layer).trims for layer in cache)


def mark_rows(batch: list) -> list:
    """What `rewind_rows` needs to send recurrent states back to this point (free to take)."""
    return [layer.mark() for layer in batch]


def rewind_rows(batch: list, counts: list[int], mark: list | None = None) -> None:
    """Row i forgets its counts[i] newest tokens. Attention layers trim them; a recurrent state
    cannot, so a row with counts[i] > 0 must be going back exactly to `mark` (from `mark_rows`),
    where its state is restored (speculative decoding then feeds the accepted tokens again)."""
    for layer, m in zip(batch, mark or [None] * len(batch)):
        layer.rewind_rows(counts, m)


def batch_state(batch: list) -> list:
    return [a for layer in batch for a in layer.state]
