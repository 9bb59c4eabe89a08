"""Rotary position embeddings with every scaling scheme the supported configs ask for.

Each scheme reduces to what `mx.fast.rope` takes: a base (or explicit per-pair periods), a position
scale, and for YaRN a magnitude factor applied to q and k. The formulas follow the papers and the
Hugging Face reference (`modeling_rope_utils`), which the parity fixtures check.
"""

from __future__ import annotations

import math
from functools import partial

import mlx.core as mx
import mlx.nn as nn

from mlxmodels.errors import ConfigError
from mlxmodels.layers import ops

SUPPORTED_ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn", "longrope", "frequency_factors")
# "frequency_factors" is not a Hugging Face type: it is how GGUF files store Llama 3.1's scaling
# (a `rope_freqs` tensor of per-frequency divisors), carried through our in-memory config.


def _inverse_frequencies(dims: int, base: float) -> mx.array:
    return 1.0 / (base ** (mx.arange(0, dims, 2, dtype=mx.float32) / dims))


def _llama3_inverse_frequencies(dims: int, base: float, p: dict) -> mx.array:
    """Llama 3.1: long wavelengths divided by `factor`, short ones kept, a smooth blend between."""
    factor = p["factor"]
    low, high = p.get("low_freq_factor", 1.0), p.get("high_freq_factor", 4.0)
    original = p["original_max_position_embeddings"]
    inv = _inverse_frequencies(dims, base)
    wavelen = 2 * math.pi / inv
    smooth = (original / wavelen - low) / (high - low)
    blended = (1 - smooth) * inv / factor + smooth * inv
    scaled = mx.where(wavelen > original / low, inv / factor, inv)
    is_medium = (wavelen <= original / low) & (wavelen >= original / high)
    return mx.where(is_medium, blended, scaled)


def _yarn(dims: int, base: float, p: dict, max_positions: int) -> tuple[mx.array, float]:
    """YaRN: per-dimension blend of interpolated and extrapolated frequencies, plus an attention factor."""
    original = p.get("original_max_position_embeddings") or max_positions
    factor = p.get("factor") or max_positions / original

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = p.get("attention_factor")
    if attention_factor is None:
        if p.get("mscale") and p.get("mscale_all_dim"):
            attention_factor = mscale(factor, p["mscale"]) / mscale(factor, p["mscale_all_dim"])
        else:
            attention_factor = mscale(factor)
    beta_fast, beta_slow = p.get("beta_fast") or 32, p.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return dims * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dims - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = mx.clip((mx.arange(dims // 2, dtype=mx.float32) - low) / (high - low), 0, 1)
    extrapolated = _inverse_frequencies(dims, base)
    interpolated = extrapolated / factor
    keep = 1 - ramp  # 1 where the original (extrapolated) frequency is kept
    return interpolated * (1 - keep) + extrapolated * keep, float(attention_factor)


def _longrope(dims: int, base: float, p: dict, max_positions: int) -> tuple[mx.array, mx.array, int, float]:
    """LongRoPE (Phi-3): per-pair divisors of the frequencies, `short_factor` while the sequence stays
    within the original training length and `long_factor` past it, and an attention factor on cos/sin.

    Returns (short periods, long periods, original length, attention factor)."""
    original = int(p.get("original_max_position_embeddings") or max_positions)
    periods = []
    for key in ("short_factor", "long_factor"):
        value = p.get(key)
        if not (isinstance(value, list) and len(value) == dims // 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            raise ConfigError(f"rope scaling 'longrope' needs '{key}': a list of {dims // 2} numbers "
                              f"(one per rotated pair of features)")
        # Periods factor_i * base^(2i/d): the reference's inv_freq = 1 / (factor_i * base^(2i/d)).
        periods.append(mx.array(value, dtype=mx.float32) * base ** (mx.arange(0, dims, 2, dtype=mx.float32) / dims))
    # Without an explicit factor, the context extension is max_position_embeddings / original.
    factor = p.get("factor") or max_positions / original
    attention_factor = p.get("attention_factor")
    if attention_factor is None:
        attention_factor = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(original))
    return periods[0], periods[1], original, float(attention_factor)


class RoPE(nn.Module):
    """Rotates the first `dims` features of q or k ([B, heads, L, head_dim]) by position."""

    def __init__(self, dims: int, params: dict, max_position_embeddings: int, traditional: bool = False):
        super().__init__()
        self.dims = dims
        self.traditional = traditional
        self.rope_type = params["rope_type"]
        self.base = params["rope_theta"]
        self.scale = 1.0
        self.magnitude = 1.0
        self._periods = None
        # LongRoPE: the periods used once the sequence seen so far exceeds `original_positions`.
        self._long_periods = None
        self.original_positions = None
        self._table_sets = {}  # the CPU path's cos/sin tables, per factor set (long: True/False)
        self.max_positions = max_position_embeddings
        kind = self.rope_type
        if kind not in SUPPORTED_ROPE_TYPES:
            raise ConfigError(
                f"unsupported rope type '{kind}' (supported: {', '.join(SUPPORTED_ROPE_TYPES)})"
            )
        needs_factor = kind in ("linear", "dynamic", "llama3")
        if needs_factor and not isinstance(params.get("factor"), (int, float)):
            raise ConfigError(f"rope scaling '{kind}' needs a numeric 'factor'")
        if kind == "llama3" and "original_max_position_embeddings" not in params:
            raise ConfigError("rope scaling 'llama3' needs 'original_max_position_embeddings'")
        self.factor = float(params.get("factor") or 1.0)
        if kind == "linear":
            self.scale = 1.0 / self.factor
        elif kind == "llama3":
            self._periods = 1.0 / _llama3_inverse_frequencies(dims, self.base, params)
        elif kind == "frequency_factors":
            self._periods = mx.array(params["factors"], dtype=mx.float32) / _inverse_frequencies(dims, self.base)
        elif kind == "yarn":
            inv, self.magnitude = _yarn(dims, self.base, params, max_position_embeddings)
            self._periods = 1.0 / inv
        elif kind == "longrope":
            self._periods, self._long_periods, self.original_positions, self.magnitude = _longrope(
                dims, self.base, params, max_position_embeddings)

    def _dynamic_base(self, length: int) -> float:
        """Dynamic NTK: past the trained length the base grows with the length seen so far."""
        if length <= self.max_positions:
            return self.base
        stretch = self.factor * length / self.max_positions - (self.factor - 1)
        return self.base * stretch ** (self.dims / (self.dims - 2))

    def _uses_long_factors(self, end: int) -> bool:
        """LongRoPE picks its factor set per call by the length seen so far (cached tokens plus this
        call's), as the reference does: keys cached before the switch keep their short rotation."""
        return self._long_periods is not None and end > self.original_positions

    def __call__(self, x: mx.array, offset: int | mx.array = 0) -> mx.array:
        """`offset`: the position of x's first token, or an array [B] of one per row (a batch of
        sequences decoding together, each at its own position)."""
        if isinstance(offset, mx.array) and (self.rope_type == "dynamic" or self._long_periods is not None):
            # The rotation itself depends on each row's length here: row by row.
            return mx.concatenate([self(x[i : i + 1], o) for i, o in enumerate(offset.tolist())])
        return ops.rotate(x, offset, self._rotate_fused,
                          None if self.rope_type == "dynamic" else self._rotate_with_tables)

    def _rotate_fused(self, x: mx.array, offset: int | mx.array) -> mx.array:
        periods = self._long_periods if self._uses_long_factors(offset + x.shape[-2]) else self._periods
        if self.magnitude != 1.0:  # YaRN and LongRoPE scale the rotated features (cos and sin) only
            if self.dims == x.shape[-1]:
                x = x * self.magnitude
            else:
                x = mx.concatenate([x[..., : self.dims] * self.magnitude, x[..., self.dims :]], axis=-1)
        if periods is not None:
            return mx.fast.rope(
                x, self.dims, traditional=self.traditional, base=None, scale=1.0,
                offset=offset, freqs=periods,
            )
        base = self._dynamic_base(offset + x.shape[-2]) if self.rope_type == "dynamic" else self.base
        return mx.fast.rope(
            x, self.dims, traditional=self.traditional, base=base, scale=self.scale, offset=offset
        )

    # --- the CPU backend's path -------------------------------------------------------------
    # mx.fast.rope runs as ~15 plain ops on the CPU, cos and sin among them (which MLX's CPU backend
    # evaluates element by element): 47 us for one decode token's query, 1.2 ms for a 511-token
    # prefill's. Tables of cos and sin per position, computed once, leave two multiplies and an add
    # (10 us and 0.2 ms), and follow Hugging Face's recipe exactly: angle = position x inv_freq in
    # float32, then cos and sin.

    def _inverse_frequencies(self, long: bool = False) -> mx.array:
        if long:
            return 1.0 / self._long_periods
        if self._periods is not None:
            return 1.0 / self._periods
        return _inverse_frequencies(self.dims, self.base) * self.scale

    def _tables(self, positions: int, long: bool = False) -> tuple[mx.array, mx.array]:
        """[P, dims] factors with rotate(x) = x * cos + swap(x) * sin, for P >= positions (for
        LongRoPE's long factors when `long`)."""
        cached = self._table_sets.get(long)
        if cached is not None and cached[0].shape[0] >= positions:
            return cached
        n = max(positions, 2 * (0 if cached is None else cached[0].shape[0]), 256)
        angles = mx.arange(n, dtype=mx.float32)[:, None] * self._inverse_frequencies(long)[None, :]
        cos, sin = mx.cos(angles) * self.magnitude, mx.sin(angles) * self.magnitude
        if self.traditional:  # pairs (x0, x1) rotate together: swap(x) swaps within each pair
            tables = (mx.stack([cos, cos], axis=-1).reshape(n, self.dims),
                      mx.stack([-sin, sin], axis=-1).reshape(n, self.dims))
        else:  # halves rotate together: swap(x) = [x2, x1]
            tables = (mx.concatenate([cos, cos], axis=-1), mx.concatenate([-sin, sin], axis=-1))
        mx.eval(*tables)
        self._table_sets[long] = tables
        return tables

    def table_args(self, L: int, offset: int | mx.array) -> tuple | None:
        """(cos, sin, starts) that rotate L tokens from `offset` (an int, or [B] per row) by tables, as
        the CPU path does; None where this rotation has no table form (dynamic NTK, or LongRoPE with
        per-row positions, which rotates row by row)."""
        if self.rope_type == "dynamic" or (isinstance(offset, mx.array) and self._long_periods is not None):
            return None
        if isinstance(offset, mx.array):  # per-row positions
            # tolist() reads the (evaluated) offsets; mx.max would wait for queued work to finish.
            cos, sin = self._tables(max(offset.tolist()) + L)
            return cos, sin, offset.astype(mx.int32)
        cos, sin = self._tables(offset + L, self._uses_long_factors(offset + L))
        return cos, sin, mx.array([offset], dtype=mx.int32)

    def _rotate_with_tables(self, x: mx.array, offset: int | mx.array) -> mx.array:
        cos, sin, starts = self.table_args(x.shape[-2], offset)
        return ops.rotate_by_tables(x, cos, sin, starts, self.dims, self.traditional,
                                    lambda: self._rotate_composed(x, offset, cos, sin))

    def _rotate_composed(self, x: mx.array, offset: int | mx.array, cos: mx.array, sin: mx.array) -> mx.array:
        L = x.shape[-2]
        if isinstance(offset, mx.array):  # gather each row's [L, dims] slice
            positions = offset[:, None] + mx.arange(L)
            cos, sin = cos[positions][:, None], sin[positions][:, None]  # [B, 1, L, dims]
        else:
            cos, sin = cos[offset : offset + L], sin[offset : offset + L]
        rotate = _rotate_pairs if self.traditional else _rotate_halves
        if self.dims == x.shape[-1]:
            return rotate(x, cos, sin)
        return mx.concatenate([rotate(x[..., : self.dims], cos, sin), x[..., self.dims :]], axis=-1)


def _rotate_halves(x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
    half = x.shape[-1] // 2
    return _rotate(x, mx.concatenate([x[..., half:], x[..., :half]], axis=-1), cos, sin)


def _rotate_pairs(x: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
    return _rotate(x, x.reshape(*x.shape[:-1], -1, 2)[..., ::-1].reshape(x.shape), cos, sin)


# Compiled shapeless, as cpu_math's functions: one trace for every length. The swaps above (slices
# and a concatenation, which a compiled graph runs as separate ops anyway) cannot be traced shapeless.
@partial(mx.compile, shapeless=True)
def _rotate(x: mx.array, swapped: mx.array, cos: mx.array, sin: mx.array) -> mx.array:
    return x * cos + swapped * sin
