"""Per-layer caches with one interface for every layer kind.

A model's cache is a list with one object per layer. Every cache object offers:

- `offset`: how many tokens the layer has seen (the position of the next token);
- `update_and_fetch(keys, values)`: store the new step's keys/values, return what attention reads;
- `mask(L)`: the attention mask for the `L` queries just stored (None, "causal" or a bool array);
- `can_trim(n)` / `trim(n)`: rewind the last `n` tokens, so a chat can reuse a cached prefix;
- `copy()`: an independent snapshot, for caches that cannot rewind far enough (sliding windows, and
  recurrent state once it exists).

The helpers at the bottom apply an operation to a whole model's cache at once.
"""

from __future__ import annotations

import mlx.core as mx


def window_mask(offset: int, queries: int, keys: int, window: int | None, chunk: int | None = None) -> mx.array:
    """Bool mask [queries, keys] for queries at positions offset-queries..offset-1 attending keys at
    positions offset-keys..offset-1: causal, and within `window` positions (itself included); with
    `chunk`, also within the query's chunk of positions [n * chunk, (n + 1) * chunk) (Llama 4)."""
    q_pos = mx.arange(offset - queries, offset)[:, None]
    k_pos = mx.arange(offset - keys, offset)[None, :]
    allowed = k_pos <= q_pos
    if window is not None:
        allowed = allowed & (q_pos - k_pos < window)
    if chunk is not None:
        allowed = allowed & (q_pos // chunk == k_pos // chunk)
    return allowed


def _grow(buffer: mx.array | None, used: int, needed: int, step: int, like: mx.array) -> mx.array:
    """A buffer holding the first `used` entries of `buffer` with room for `needed` in total."""
    capacity = ((needed + step - 1) // step) * step
    B, H, _, D = like.shape
    fresh = mx.zeros((B, H, capacity, D), dtype=like.dtype)
    if buffer is not None and used > 0:
        fresh[..., :used, :] = buffer[..., :used, :]
    return fresh


class KVCache:
    """Keys and values of every position, in buffers that grow `step` tokens at a time, stored as
    `dtype` (None: as the model computes them; float16 under `kv_bits` 16, which halves what a
    float32 model's cache holds and what each decode step reads)."""

    step = 256

    def __init__(self, dtype: mx.Dtype | None = None):
        self.keys = self.values = None
        self.offset = 0
        self.dtype = dtype

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        if self.dtype is not None and keys.dtype != self.dtype:
            keys, values = keys.astype(self.dtype), values.astype(self.dtype)
        L = keys.shape[2]
        if self.keys is None or self.offset + L > self.keys.shape[2]:
            self.keys = _grow(self.keys, self.offset, self.offset + L, self.step, keys)
            self.values = _grow(self.values, self.offset, self.offset + L, self.step, values)
        self.keys[..., self.offset : self.offset + L, :] = keys
        self.values[..., self.offset : self.offset + L, :] = values
        self.offset += L
        return self.keys[..., : self.offset, :], self.values[..., : self.offset, :]

    def mask(self, L: int):
        return None if L == 1 else "causal"

    def can_trim(self, n: int) -> bool:
        return 0 <= n <= self.offset

    def trim(self, n: int) -> int:
        n = max(0, min(n, self.offset))
        self.offset -= n
        return n

    @property
    def state(self) -> list:
        return [] if self.keys is None else [self.keys, self.values]

    def copy(self) -> "KVCache":
        clone = KVCache(self.dtype)
        clone.offset = self.offset
        if self.keys is not None:
            clone.keys = self.keys[..., : self.offset, :]
            clone.values = self.values[..., : self.offset, :]
        return clone

    @property
    def nbytes(self) -> int:
        return 0 if self.keys is None else self.keys.nbytes + self.values.nbytes


class RotatingKVCache:
    """Keys and values for a sliding-window layer: only the last `window` positions matter.

    Entries stay in time order (no ring arithmetic, so masks stay simple). The buffer keeps up to
    `window - 1 + step` past tokens; when it fills, the useful tail is moved to the front, a copy
    amortised over `step` tokens. The spare history lets a chat rewind up to about `step` tokens.
    """

    step = 256

    def __init__(self, window: int):
        self.window = window
        self.keys = self.values = None
        self.offset = 0  # tokens seen
        self.count = 0  # tokens held in the buffer, the newest at index count - 1
        self._attended = 0  # keys returned by the last update (for its mask)

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        L = keys.shape[2]
        if self.keys is None or self.count + L > self.keys.shape[2]:
            keep = min(self.count, self.window - 1 + self.step)
            drop = self.count - keep
            self.keys = self._compact(self.keys, drop, keep, L, keys)
            self.values = self._compact(self.values, drop, keep, L, values)
            self.count = keep
        self.keys[..., self.count : self.count + L, :] = keys
        self.values[..., self.count : self.count + L, :] = values
        self.count += L
        self.offset += L
        self._attended = self._keys_needed(L)
        start = self.count - self._attended
        return self.keys[..., start : self.count, :], self.values[..., start : self.count, :]

    def _keys_needed(self, L: int) -> int:
        """How many of the newest held keys the `L` new queries read: the oldest of them looks back
        window - 1 positions; older keys are dead."""
        return min(self.count, self.window - 1 + L)

    def _compact(self, buffer, drop: int, keep: int, incoming: int, like: mx.array) -> mx.array:
        capacity = keep + incoming + self.step
        B, H, _, D = like.shape
        fresh = mx.zeros((B, H, capacity, D), dtype=like.dtype)
        if buffer is not None and keep > 0:
            fresh[..., :keep, :] = buffer[..., drop : drop + keep, :]
        return fresh

    def mask(self, L: int):
        if L == 1:
            return None  # at most `window` keys were returned: all visible
        return window_mask(self.offset, L, self._attended, self.window)

    def can_trim(self, n: int) -> bool:
        if n < 0 or n > self.offset:
            return False
        # After rewinding, the next token must still see its window - 1 predecessors.
        return self.count - n >= min(self.offset - n, self.window - 1)

    def trim(self, n: int) -> int:
        if not self.can_trim(n):
            return 0
        self.count -= n
        self.offset -= n
        return n

    @property
    def state(self) -> list:
        return [] if self.keys is None else [self.keys, self.values]

    def copy(self) -> "RotatingKVCache":
        clone = type(self)(self.window)
        clone.offset, clone.count = self.offset, self.count
        if self.keys is not None:
            clone.keys = self.keys[..., : self.count, :]
            clone.values = self.values[..., : self.count, :]
        return clone

    @property
    def nbytes(self) -> int:
        return 0 if self.keys is None else self.keys.nbytes + self.values.nbytes


class ChunkedKVCache(RotatingKVCache):
    """Keys and values for a chunked-attention layer (Llama 4's RoPE layers): positions are cut into
    chunks of `window` tokens, and a token attends only to the tokens of its own chunk up to itself.

    A window that restarts at every chunk boundary instead of sliding: no query looks back more than
    window - 1 positions, so the rotating cache's buffer holds all that is needed; only which keys a
    call returns (from its oldest query's chunk start on) and the mask differ.
    """

    def _keys_needed(self, L: int) -> int:
        oldest = self.offset - L  # position of the oldest new query
        return min(self.count, L + oldest % self.window)

    def mask(self, L: int):
        if L == 1:
            return None  # the returned keys are exactly the query's chunk so far
        return window_mask(self.offset, L, self._attended, None, chunk=self.window)

    def can_trim(self, n: int) -> bool:
        if n < 0 or n > self.offset:
            return False
        # After rewinding, the next token must still see the earlier tokens of its chunk.
        return self.count - n >= (self.offset - n) % self.window


class LatentKVCache:
    """Multi-head Latent Attention's cache (layers/mla.py): per token, only what every head shares.

    `latents` [B, 1, T, kv_lora_rank] holds the normalised KV latent and `rope_keys`
    [B, 1, T, qk_rope_head_dim] the decoupled rope key; the layer expands them into per-head keys
    and values (or absorbs the expansion into the query) when it attends. So a token costs
    (kv_lora_rank + qk_rope_head_dim) values per layer instead of heads x (key + value dims).
    Buffers grow `step` tokens at a time, as in `KVCache`, and rewind the same way.
    """

    step = 256

    def __init__(self):
        self.latents = self.rope_keys = None
        self.offset = 0

    def update_and_fetch(self, latents: mx.array, rope_keys: mx.array) -> tuple[mx.array, mx.array]:
        L = latents.shape[2]
        if self.latents is None or self.offset + L > self.latents.shape[2]:
            self.latents = _grow(self.latents, self.offset, self.offset + L, self.step, latents)
            self.rope_keys = _grow(self.rope_keys, self.offset, self.offset + L, self.step, rope_keys)
        self.latents[..., self.offset : self.offset + L, :] = latents
        self.rope_keys[..., self.offset : self.offset + L, :] = rope_keys
        self.offset += L
        return self.latents[..., : self.offset, :], self.rope_keys[..., : self.offset, :]

    def mask(self, L: int):
        return None if L == 1 else "causal"

    def can_trim(self, n: int) -> bool:
        return 0 <= n <= self.offset

    def trim(self, n: int) -> int:
        n = max(0, min(n, self.offset))
        self.offset -= n
        return n

    @property
    def state(self) -> list:
        return [] if self.latents is None else [self.latents, self.rope_keys]

    def copy(self) -> "LatentKVCache":
        clone = LatentKVCache()
        clone.offset = self.offset
        if self.latents is not None:
            clone.latents = self.latents[..., : self.offset, :]
            clone.rope_keys = self.rope_keys[..., : self.offset, :]
        return clone

    @property
    def nbytes(self) -> int:
        return 0 if self.latents is None else self.latents.nbytes + self.rope_keys.nbytes


def cache_offset(cache: list) -> int:
    return cache[0].offset if cache else 0


def can_trim_cache(cache: list, n: int) -> bool:
    return all(layer.can_trim(n) for layer in cache)


def trim_cache(cache: list, n: int) -> bool:
    """Rewind every layer by `n` tokens, or none of them if any layer cannot."""
    if not can_trim_cache(cache, n):
        return False
    for layer in cache:
        layer.trim(n)
    return True


def cache_state(cache: list) -> list:
    """Every array the cache holds, e.g. to evaluate them between prefill chunks."""
    return [a for layer in cache for a in layer.state]


def copy_cache(cache: list) -> list:
    return [layer.copy() for layer in cache]


def cache_nbytes(cache: list) -> int:
    return sum(layer.nbytes for layer in cache)


def cache_footprint(cache: list) -> dict:
    """What a model's cache holds for the tokens seen so far, in bytes: `attention` (keys and values,
    or MLA latents: grows with the context; counted for the positions held, not the room allocated
    ahead) and `state` (conv windows and recurrent states: a fixed size however long the context)."""
    footprint = {"attention": 0, "state": 0}

    def add(layer) -> None:
        if isinstance(layer, AttentionSSMCache):
            add(layer.attention)
            add(layer.ssm)
        elif isinstance(layer, (KVCache, RotatingKVCache, LatentKVCache)):
            held = getattr(layer, "count", layer.offset)
            for array in layer.state:  # buffers [B, H, capacity, D]
                footprint["attention"] += array.nbytes * min(held, array.shape[2]) // max(array.shape[2], 1)
        else:
            footprint["state"] += layer.nbytes

    for layer in cache:
        add(layer)
    return footprint


class SSMCache:
    """Recurrent state of one state-space (Mamba) layer: the conv window and the SSM state.

    Unlike a KV cache it does not grow with the context: `conv` holds the last `kernel - 1` inputs
    of the causal convolution ([B, kernel - 1, channels]) and `ssm` the scan state (Mamba-1:
    [B, channels, state]; Mamba-2: [B, heads, head_dim, state]). The layer reads both, computes,
    and stores the new ones with `update(conv, ssm, tokens)`.

    A recurrent state cannot be rewound: the tokens it has absorbed are gone. `can_trim(n)` is
    therefore true only for n == 0; to reuse a prefix (a chat's earlier turns), keep a `copy()`
    taken where the prefix ends and continue from that snapshot.
    """

    def __init__(self):
        self.conv = None
        self.ssm = None
        self.offset = 0

    def fetch(self) -> tuple:
        """(conv window, ssm state); both None before the first token."""
        return self.conv, self.ssm

    def update(self, conv: mx.array, ssm: mx.array, tokens: int) -> None:
        self.conv, self.ssm = conv, ssm
        self.offset += tokens

    def mask(self, L: int):
        return None  # causality is built into the scan

    def can_trim(self, n: int) -> bool:
        return n == 0

    def trim(self, n: int) -> int:
        return 0

    @property
    def state(self) -> list:
        return [a for a in (self.conv, self.ssm) if a is not None]

    def copy(self) -> "SSMCache":
        # MLX arrays are immutable and the layer replaces (never mutates) them: sharing is a snapshot.
        clone = SSMCache()
        clone.conv, clone.ssm, clone.offset = self.conv, self.ssm, self.offset
        return clone

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.state)


class StatelessCache:
    """The cache slot of a layer that keeps nothing between calls (Nemotron-H's MLP and MoE blocks).

    It only counts tokens, so a model's cache stays one object per layer, each with an `offset`;
    having nothing to forget, it rewinds any number of tokens it has seen.
    """

    def __init__(self):
        self.offset = 0

    def advance(self, tokens: int) -> None:
        self.offset += tokens

    def mask(self, L: int):
        return None

    def can_trim(self, n: int) -> bool:
        return 0 <= n <= self.offset

    def trim(self, n: int) -> int:
        n = max(0, min(n, self.offset))
        self.offset -= n
        return n

    @property
    def state(self) -> list:
        return []

    def copy(self) -> "StatelessCache":
        clone = StatelessCache()
        clone.offset = self.offset
        return clone

    @property
    def nbytes(self) -> int:
        return 0


class AttentionSSMCache:
    """The cache of a layer that runs attention and an SSM side by side on the same tokens (Falcon-H1):
    a KV cache (`attention`) and an `SSMCache` (`ssm`) under one object, one per layer like every cache.

    The layer hands each part to its own block. Together they honour the common interface: the offset
    and the mask are the attention part's; rewinding needs both parts able to (so, as for any recurrent
    state, only n == 0), and prefix reuse goes through `copy()` snapshots of both.
    `mlxmodels.api.make_cache` swaps the attention part for a `QuantizedKVCache` under `--kv-bits`.
    """

    def __init__(self, attention=None, ssm: SSMCache | None = None):
        self.attention = attention if attention is not None else KVCache()
        self.ssm = ssm if ssm is not None else SSMCache()

    @property
    def offset(self) -> int:
        return self.attention.offset

    def mask(self, L: int):
        return self.attention.mask(L)

    def can_trim(self, n: int) -> bool:
        return self.attention.can_trim(n) and self.ssm.can_trim(n)

    def trim(self, n: int) -> int:
        if not self.can_trim(n):
            return 0
        self.ssm.trim(n)
        return self.attention.trim(n)

    @property
    def state(self) -> list:
        return self.attention.state + self.ssm.state

    def copy(self) -> "AttentionSSMCache":
        return AttentionSSMCache(self.attention.copy(), self.ssm.copy())

    @property
    def nbytes(self) -> int:
        return self.attention.nbytes + self.ssm.nbytes


class QuantizedKVCache(KVCache):
    """Keys and values stored in MLX's affine quantized format (`bits` 4 or 8) along the head dim.

    The same interface as `KVCache` (whose offset, mask and trimming it inherits), but `update_and_fetch` returns `(packed, scales, biases)`
    tuples instead of arrays: attention then reads the packed cache directly
    (`metal_kernels.quantized_decode_attention`), which is the point, since a dequantized copy
    would cost the memory the quantization saves. 8 bits stores a 64-wide head in 80 bytes instead
    of 256 (float32) or 128 (float16). The group size is 64, or 32 for head dims that 64 does not
    divide.
    """

    step = 256
    quantized = True

    def __init__(self, bits: int = 8, group_size: int = 64):
        from mlxmodels.errors import OrchardError

        if bits not in (4, 8):
            raise OrchardError(f"KV cache bits must be 4 or 8, got {bits}")
        if group_size not in (32, 64, 128):
            raise OrchardError(f"KV cache group size must be 32, 64 or 128, got {group_size}")
        self.bits, self.group_size = bits, group_size
        self.keys = self.values = None  # (packed, scales, biases), each [B, H, capacity, ...]
        self.offset = 0

    def _quantize(self, x: mx.array) -> tuple:
        D = x.shape[-1]
        if D % self.group_size:
            if self.offset == 0 and D % 32 == 0:
                self.group_size = 32
            else:
                from mlxmodels.errors import OrchardError

                raise OrchardError(f"a quantized KV cache needs a head dim divisible by 32; this model's is {D}")
        return tuple(mx.quantize(x, group_size=self.group_size, bits=self.bits))

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[tuple, tuple]:
        L = keys.shape[2]
        qk, qv = self._quantize(keys), self._quantize(values)
        if self.keys is None or self.offset + L > self.keys[0].shape[2]:
            need = self.offset + L
            self.keys = tuple(_grow(old, self.offset, need, self.step, new)
                              for old, new in zip(self.keys or (None,) * 3, qk))
            self.values = tuple(_grow(old, self.offset, need, self.step, new)
                                for old, new in zip(self.values or (None,) * 3, qv))
        for buffer, new in zip(self.keys + self.values, qk + qv):
            buffer[..., self.offset : self.offset + L, :] = new
        self.offset += L
        return (tuple(a[..., : self.offset, :] for a in self.keys),
                tuple(a[..., : self.offset, :] for a in self.values))

    @property
    def state(self) -> list:
        return [] if self.keys is None else [*self.keys, *self.values]

    def copy(self) -> "QuantizedKVCache":
        clone = QuantizedKVCache(self.bits, self.group_size)
        clone.offset = self.offset
        if self.keys is not None:
            clone.keys = tuple(a[..., : self.offset, :] for a in self.keys)
            clone.values = tuple(a[..., : self.offset, :] for a in self.values)
        return clone

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.state)


class QuantizedLatentKVCache(LatentKVCache):
    """`LatentKVCache` under `--kv-bits`: each token's latent and rope key, side by side as one
    [latent | rope key] row (kv_lora_rank + qk_rope_head_dim wide: 576 in DeepSeek-V2/V3 and Kimi),
    stored in MLX's affine quantized format (`bits` 4 or 8, groups of 64, or 32 where 64 does not
    divide the row).

    `update_and_fetch` returns that row as a (packed, scales, biases) triple, [B, 1, T, ...]: the
    layer's absorbed decode multiplies by it directly (`mx.quantized_matmul`), and a prefill
    dequantizes it to expand keys and values. 8 bits keep a 576-wide row in 576 + 36 bytes instead
    of 1152 (float16); offsets, masks and rewinding are the float cache's.
    """

    quantized = True

    def __init__(self, bits: int = 8, group_size: int = 64):
        from mlxmodels.errors import OrchardError

        super().__init__()
        if bits not in (4, 8):
            raise OrchardError(f"KV cache bits must be 4 or 8, got {bits}")
        if group_size not in (32, 64, 128):
            raise OrchardError(f"KV cache group size must be 32, 64 or 128, got {group_size}")
        self.bits, self.group_size = bits, group_size
        self.rows = None  # (packed, scales, biases), each [B, 1, capacity, ...]

    def _quantize(self, row: mx.array) -> tuple:
        D = row.shape[-1]
        if D % self.group_size:
            if self.offset == 0 and D % 32 == 0:
                self.group_size = 32
            else:
                from mlxmodels.errors import OrchardError

                raise OrchardError(
                    "a quantized latent KV cache needs kv_lora_rank + qk_rope_head_dim divisible by 32; "
                    f"this model's is {D}"
                )
        return tuple(mx.quantize(row, group_size=self.group_size, bits=self.bits))

    def update_and_fetch(self, latents: mx.array, rope_keys: mx.array) -> tuple:
        L = latents.shape[2]
        new = self._quantize(mx.concatenate([latents, rope_keys.astype(latents.dtype)], axis=-1))
        if self.rows is None or self.offset + L > self.rows[0].shape[2]:
            need = self.offset + L
            self.rows = tuple(_grow(old, self.offset, need, self.step, part)
                              for old, part in zip(self.rows or (None,) * 3, new))
        for buffer, part in zip(self.rows, new):
            buffer[..., self.offset : self.offset + L, :] = part
        self.offset += L
        return tuple(a[..., : self.offset, :] for a in self.rows)

    def dequantized(self, rows: tuple, dtype: mx.Dtype, kv_lora_rank: int) -> tuple[mx.array, mx.array]:
        """(latents, rope keys) in float from a fetched triple, for a prefill's expanded attention."""
        full = mx.dequantize(*rows, group_size=self.group_size, bits=self.bits).astype(dtype)
        return full[..., :kv_lora_rank], full[..., kv_lora_rank:]

    @property
    def state(self) -> list:
        return [] if self.rows is None else list(self.rows)

    def copy(self) -> "QuantizedLatentKVCache":
        clone = QuantizedLatentKVCache(self.bits, self.group_size)
        clone.offset = self.offset
        if self.rows is not None:
            clone.rows = tuple(a[..., : self.offset, :] for a in self.rows)
        return clone

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.state)
