// Fused CPU forms of the small operations a decode step runs in every layer. MLX's CPU backend runs
// mx.fast.rms_norm, mx.fast.rope and mx.fast.scaled_dot_product_attention as 10-30 plain operations
// each; at one token per step the cost of each operation (an allocation, a hand-off to the stream
// thread) outweighs its arithmetic. Each of these is one operation; so is the row softmax of a
// prefill's attention, where MLX's elementwise chains make several passes over the scores. float32
// only (the CPU backend's compute dtype); inputs may be strided views.
#pragma once

#include <optional>
#include <vector>

#include "mlx/array.h"
#include "mlx/utils.h"

namespace orchard_qmm {

// x * rsqrt(mean(x^2, axis=-1) + eps) * weight (no weight: unscaled), like mx.fast.rms_norm.
mlx::core::array rms_norm(const mlx::core::array& x, const std::optional<mlx::core::array>& weight, float eps,
                          mlx::core::StreamOrDevice s);

// (x + delta, rms_norm(x + delta, weight, eps)): a residual add and the norm after it, both results of
// one operation, each what the two operations give. x and delta have one shape.
std::vector<mlx::core::array> add_rms_norm(const mlx::core::array& x, const mlx::core::array& delta,
                                           const std::optional<mlx::core::array>& weight, float eps,
                                           mlx::core::StreamOrDevice s);

// Rotary embedding from tables: for x [..., L, D] whose token l of batch row b sits at position
// offsets[b] + l (offsets [1] or [x.shape(0)], int32), the first `dims` features become
// x * cos[p] + swap(x) * sin[p] (swap: the halves exchanged, or each pair's two values when
// `traditional`); the rest are copied. cos and sin are [P, dims] float32 with P above every position.
mlx::core::array rope(const mlx::core::array& x, const mlx::core::array& cos, const mlx::core::array& sin,
                      const mlx::core::array& offsets, int dims, bool traditional, mlx::core::StreamOrDevice s);

// softmax(q k^T * scale + mask) v for one query per head: q [B, H, 1, D], k [B, H_kv, S, D],
// v [B, H_kv, S, Dv] (H a multiple of H_kv: grouped-query heads share their KV head). `mask`
// broadcasts to [B, 1, 1, S]: bool (true: attend) or float32 (added to the scores). `sinks` [H]: a
// logit per head that joins the softmax's denominator with no value (gpt-oss). `flat`: the result
// shaped [B, 1, H * Dv] (what an output projection reads: the same memory) instead of [B, H, 1, Dv].
mlx::core::array decode_attention(const mlx::core::array& q, const mlx::core::array& k, const mlx::core::array& v,
                                  float scale, const std::optional<mlx::core::array>& mask,
                                  const std::optional<mlx::core::array>& sinks, bool flat,
                                  mlx::core::StreamOrDevice s);

// softmax over the last axis, like mx.softmax, with exp16's exact zero for masked (-inf) scores.
// key_offset >= 0: x is [..., L, S] causal scores, row l seeing keys s <= l + key_offset (the rest
// count as masked without being read); -1: no mask.
mlx::core::array softmax(const mlx::core::array& x, int key_offset, mlx::core::StreamOrDevice s);

// act(gate) * up for the gated MLPs: `activation` 0 is SiLU (SwiGLU), 1 is tanh-approximated GELU
// (GeGLU), both with the exp of mlxmodels/layers/cpu_math.py. gate and up have the same shape; with
// no `up`, gate's last axis holds [gate | up] (a joined projection's output, read without a split).
mlx::core::array gated_activation(const mlx::core::array& gate, const std::optional<mlx::core::array>& up,
                                  int activation, mlx::core::StreamOrDevice s);

// A joined q/k/v projection's output x [B, L, (heads + 2 kv_heads) D] as q [B, heads, L, D] and k, v
// [B, kv_heads, L, D], q and k rotated as `rope` does (same tables, offsets and dims), v copied.
std::vector<mlx::core::array> rotated_heads(const mlx::core::array& x, const mlx::core::array& cos,
                                            const mlx::core::array& sin, const mlx::core::array& offsets, int heads,
                                            int kv_heads, int dims, bool traditional, mlx::core::StreamOrDevice s);

// The index of each row's largest value over the last axis (uint32, the first of equal ones, a NaN
// above every number), like mx.argmax(x, axis=-1).
mlx::core::array argmax(const mlx::core::array& x, mlx::core::StreamOrDevice s);

}  // namespace orchard_qmm
