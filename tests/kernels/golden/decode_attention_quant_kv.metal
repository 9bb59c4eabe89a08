// ---- instantiation 0 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
// Decode attention over a quantized KV cache in MLX's affine format along the head dimension:
// k is uint32 [B, Hkv, S, D * BITS / 32], k_scales / k_biases are [B, Hkv, S, D / GROUP_SIZE]
// (the layout mx.quantize gives the cache's last axis); the same for v.
#define KV_PER_WORD (32 / BITS)
#define KV_DEQUANT(packed, sc, bi, row, d)                                                         \
  (float(sc[(row) * (D / GROUP_SIZE) + (d) / GROUP_SIZE]) *                                        \
       float((packed[(row) * (D / KV_PER_WORD) + (d) / KV_PER_WORD] >> (BITS * ((d) % KV_PER_WORD))) & \
             ((1u << BITS) - 1u)) +                                                                \
   float(bi[(row) * (D / GROUP_SIZE) + (d) / GROUP_SIZE]))
#define LOAD_K(row, d) KV_DEQUANT(k, k_scales, k_biases, row, d)
#define LOAD_V(row, d) KV_DEQUANT(v, v_scales, v_biases, row, d)
template <typename T, int NSG, int MAX_ROWS, int DPL, int BITS, int GROUP_SIZE>
[[kernel]] void custom_kernel_orchard_decode_attention_3ff96f7a9812__float_4_16_4_4_32_float_uint32_t_float_float_uint32_t_float_float_int32_t_floatc_float_float_float(
  const device float* q [[buffer(0)]],
  const device uint32_t* k [[buffer(1)]],
  const device float* k_scales [[buffer(2)]],
  const device float* k_biases [[buffer(3)]],
  const device uint32_t* v [[buffer(4)]],
  const device float* v_scales [[buffer(5)]],
  const device float* v_biases [[buffer(6)]],
  const device int32_t* params [[buffer(7)]],
  const constant float* scale [[buffer(8)]],
  device float* o_part [[buffer(9)]],
  device float* m_part [[buffer(10)]],
  device float* l_part [[buffer(11)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Flash-decoding, pass 1: one threadgroup per (chunk of keys, KV head, batch). It serves every query
// row that reads this KV head (the G = Hq / Hkv query heads times the Lq new tokens), so each key and
// value row is loaded once per chunk however large the GQA group is. Its NSG simdgroups take keys
// round-robin; lanes split the head dimension (d = lane + 32 i). Per row each simdgroup keeps an
// online softmax (running max m, denominator l, weighted sum of v); the simdgroups are then merged
// through threadgroup memory and the chunk's normalised partial output, m and l are written for
// pass 2 (decode_reduce) to combine across chunks. LOAD_K / LOAD_V come from kv_float.h or
// kv_quant.h, so the same body reads a float or a quantized cache.
// params: B, Hq, Hkv, Lq, S, D, window (0 = none), chunk, chunks.
const int Hq = params[1], Hkv = params[2], Lq = params[3], S = params[4], D = params[5];
const int window = params[6], chunk = params[7], chunks = params[8];
const int c = int(threadgroup_position_in_grid.x);
const int hk = int(threadgroup_position_in_grid.y);
const int b = int(threadgroup_position_in_grid.z);
const int sg = int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
const int G = Hq / Hkv;
const int R = G * Lq;
const int k_lo = c * chunk;
const int k_hi = min(S, k_lo + chunk);
const int kv_plane = (b * Hkv + hk) * S;
const float sc = scale[0];

float q_reg[MAX_ROWS][DPL];
float m_run[MAX_ROWS], l_run[MAX_ROWS], acc[MAX_ROWS][DPL];
for (int r = 0; r < MAX_ROWS; ++r) {
  m_run[r] = ORCHARD_NEG_INF;
  l_run[r] = 0.0f;
  const int hq = hk * G + r / max(Lq, 1);
  const int iq = r % max(Lq, 1);
  for (int i = 0; i < DPL; ++i) {
    const int d = lane + ORCHARD_SIMD_WIDTH * i;
    acc[r][i] = 0.0f;
    q_reg[r][i] = (r < R && d < D) ? float(q[((b * Hq + hq) * Lq + iq) * D + d]) * sc : 0.0f;
  }
}

for (int j = k_lo + sg; j < k_hi; j += NSG) {
  const int row = kv_plane + j;
  float kd[DPL], vd[DPL];
  for (int i = 0; i < DPL; ++i) {
    const int d = lane + ORCHARD_SIMD_WIDTH * i;
    kd[i] = d < D ? LOAD_K(row, d) : 0.0f;
    vd[i] = d < D ? LOAD_V(row, d) : 0.0f;
  }
  for (int r = 0; r < R; ++r) {
    // Query r sits at position S - Lq + r % Lq: causal, and within the window if there is one.
    // The test depends on j and r only, so the whole simdgroup agrees and reaches simd_sum together.
    const int pos = S - Lq + r % Lq;
    if (j > pos || (window > 0 && pos - j >= window)) continue;
    float part = 0.0f;
    for (int i = 0; i < DPL; ++i) part += q_reg[r][i] * kd[i];
    const float s = simd_sum(part);
    const float m_new = max(m_run[r], s);
    const float corr = exp(m_run[r] - m_new);
    const float p = exp(s - m_new);
    l_run[r] = l_run[r] * corr + p;
    for (int i = 0; i < DPL; ++i) acc[r][i] = acc[r][i] * corr + p * vd[i];
    m_run[r] = m_new;
  }
}

threadgroup float tg_m[NSG];
threadgroup float tg_l[NSG];
threadgroup float tg_acc[NSG * DPL * ORCHARD_SIMD_WIDTH];
for (int r = 0; r < R; ++r) {
  if (lane == 0) {
    tg_m[sg] = m_run[r];
    tg_l[sg] = l_run[r];
  }
  for (int i = 0; i < DPL; ++i) tg_acc[sg * DPL * ORCHARD_SIMD_WIDTH + lane + ORCHARD_SIMD_WIDTH * i] = acc[r][i];
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (sg == 0) {
    float m_all = ORCHARD_NEG_INF;
    for (int s2 = 0; s2 < NSG; ++s2) m_all = max(m_all, tg_m[s2]);
    const int out_row = ((b * Hq + hk * G + r / Lq) * Lq + r % Lq) * chunks + c;
    float l_all = 0.0f;
    float o[DPL];
    for (int i = 0; i < DPL; ++i) o[i] = 0.0f;
    if (m_all != ORCHARD_NEG_INF) {  // some key of this chunk is visible to row r
      for (int s2 = 0; s2 < NSG; ++s2) {
        const float w8 = tg_m[s2] == ORCHARD_NEG_INF ? 0.0f : exp(tg_m[s2] - m_all);
        l_all += tg_l[s2] * w8;
        for (int i = 0; i < DPL; ++i) o[i] += tg_acc[s2 * DPL * ORCHARD_SIMD_WIDTH + lane + ORCHARD_SIMD_WIDTH * i] * w8;
      }
      for (int i = 0; i < DPL; ++i) o[i] /= l_all;
    }
    for (int i = 0; i < DPL; ++i) {
      const int d = lane + ORCHARD_SIMD_WIDTH * i;
      if (d < D) o_part[out_row * D + d] = o[i];
    }
    if (lane == 0) {
      m_part[out_row] = m_all;
      l_part[out_row] = l_all;
    }
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
}

}

template [[host_name("custom_kernel_orchard_decode_attention_3ff96f7a9812__float_4_16_4_4_32_float_uint32_t_float_float_uint32_t_float_float_int32_t_floatc_float_float_float")]] [[kernel]] decltype(custom_kernel_orchard_decode_attention_3ff96f7a9812__float_4_16_4_4_32_float_uint32_t_float_float_uint32_t_float_float_int32_t_floatc_float_float_float<float, 4, 16, 4, 4, 32>) custom_kernel_orchard_decode_attention_3ff96f7a9812__float_4_16_4_4_32_float_uint32_t_float_float_uint32_t_float_float_int32_t_floatc_float_float_float<float, 4, 16, 4, 4, 32>;

// ---- instantiation 1 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
// Decode attention over a quantized KV cache in MLX's affine format along the head dimension:
// k is uint32 [B, Hkv, S, D * BITS / 32], k_scales / k_biases are [B, Hkv, S, D / GROUP_SIZE]
// (the layout mx.quantize gives the cache's last axis); the same for v.
#define KV_PER_WORD (32 / BITS)
#define KV_DEQUANT(packed, sc, bi, row, d)                                                         \
  (float(sc[(row) * (D / GROUP_SIZE) + (d) / GROUP_SIZE]) *                                        \
       float((packed[(row) * (D / KV_PER_WORD) + (d) / KV_PER_WORD] >> (BITS * ((d) % KV_PER_WORD))) & \
             ((1u << BITS) - 1u)) +                                                                \
   float(bi[(row) * (D / GROUP_SIZE) + (d) / GROUP_SIZE]))
#define LOAD_K(row, d) KV_DEQUANT(k, k_scales, k_biases, row, d)
#define LOAD_V(row, d) KV_DEQUANT(v, v_scales, v_biases, row, d)
template <typename T, int NSG, int MAX_ROWS, int DPL, int BITS, int GROUP_SIZE>
[[kernel]] void custom_kernel_orchard_decode_attention_3ff96f7a9812__float_4_16_4_4_64_float_uint32_t_float_float_uint32_t_float_float_int32_t_floatc_float_float_float(
  const device float* q [[buffer(0)]],
  const device uint32_t* k [[buffer(1)]],
  const device float* k_scales [[buffer(2)]],
  const device float* k_biases [[buffer(3)]],
  const device uint32_t* v [[buffer(4)]],
  const device float* v_scales [[buffer(5)]],
  const device float* v_biases [[buffer(6)]],
  const device int32_t* params [[buffer(7)]],
  const constant float* scale [[buffer(8)]],
  device float* o_part [[buffer(9)]],
  device float* m_part [[buffer(10)]],
  device float* l_part [[buffer(11)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Flash-decoding, pass 1: one threadgroup per (chunk of keys, KV head, batch). It serves every query
// row that reads this KV head (the G = Hq / Hkv query heads times the Lq new tokens), so each key and
// value row is loaded once per chunk however large the GQA group is. Its NSG simdgroups take keys
// round-robin; lanes split the head dimension (d = lane + 32 i). Per row each simdgroup keeps an
// online softmax (running max m, denominator l, weighted sum of v); the simdgroups are then merged
// through threadgroup memory and the chunk's normalised partial output, m and l are written for
// pass 2 (decode_reduce) to combine across chunks. LOAD_K / LOAD_V come from kv_float.h or
// kv_quant.h, so the same body reads a float or a quantized cache.
// params: B, Hq, Hkv, Lq, S, D, window (0 = none), chunk, chunks.
const int Hq = params[1], Hkv = params[2], Lq = params[3], S = params[4], D = params[5];
const int window = params[6], chunk = params[7], chunks = params[8];
const int c = int(threadgroup_position_in_grid.x);
const int hk = int(threadgroup_position_in_grid.y);
const int b = int(threadgroup_position_in_grid.z);
const int sg = int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
const int G = Hq / Hkv;
const int R = G * Lq;
const int k_lo = c * chunk;
const int k_hi = min(S, k_lo + chunk);
const int kv_plane = (b * Hkv + hk) * S;
const float sc = scale[0];

float q_reg[MAX_ROWS][DPL];
float m_run[MAX_ROWS], l_run[MAX_ROWS], acc[MAX_ROWS][DPL];
for (int r = 0; r < MAX_ROWS; ++r) {
  m_run[r] = ORCHARD_NEG_INF;
  l_run[r] = 0.0f;
  const int hq = hk * G + r / max(Lq, 1);
  const int iq = r % max(Lq, 1);
  for (int i = 0; i < DPL; ++i) {
    const int d = lane + ORCHARD_SIMD_WIDTH * i;
    acc[r][i] = 0.0f;
    q_reg[r][i] = (r < R && d < D) ? float(q[((b * Hq + hq) * Lq + iq) * D + d]) * sc : 0.0f;
  }
}

for (int j = k_lo + sg; j < k_hi; j += NSG) {
  const int row = kv_plane + j;
  float kd[DPL], vd[DPL];
  for (int i = 0; i < DPL; ++i) {
    const int d = lane + ORCHARD_SIMD_WIDTH * i;
    kd[i] = d < D ? LOAD_K(row, d) : 0.0f;
    vd[i] = d < D ? LOAD_V(row, d) : 0.0f;
  }
  for (int r = 0; r < R; ++r) {
    // Query r sits at position S - Lq + r % Lq: causal, and within the window if there is one.
    // The test depends on j and r only, so the whole simdgroup agrees and reaches simd_sum together.
    const int pos = S - Lq + r % Lq;
    if (j > pos || (window > 0 && pos - j >= window)) continue;
    float part = 0.0f;
    for (int i = 0; i < DPL; ++i) part += q_reg[r][i] * kd[i];
    const float s = simd_sum(part);
    const float m_new = max(m_run[r], s);
    const float corr = exp(m_run[r] - m_new);
    const float p = exp(s - m_new);
    l_run[r] = l_run[r] * corr + p;
    for (int i = 0; i < DPL; ++i) acc[r][i] = acc[r][i] * corr + p * vd[i];
    m_run[r] = m_new;
  }
}

threadgroup float tg_m[NSG];
threadgroup float tg_l[NSG];
threadgroup float tg_acc[NSG * DPL * ORCHARD_SIMD_WIDTH];
for (int r = 0; r < R; ++r) {
  if (lane == 0) {
    tg_m[sg] = m_run[r];
    tg_l[sg] = l_run[r];
  }
  for (int i = 0; i < DPL; ++i) tg_acc[sg * DPL * ORCHARD_SIMD_WIDTH + lane + ORCHARD_SIMD_WIDTH * i] = acc[r][i];
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (sg == 0) {
    float m_all = ORCHARD_NEG_INF;
    for (int s2 = 0; s2 < NSG; ++s2) m_all = max(m_all, tg_m[s2]);
    const int out_row = ((b * Hq + hk * G + r / Lq) * Lq + r % Lq) * chunks + c;
    float l_all = 0.0f;
    float o[DPL];
    for (int i = 0; i < DPL; ++i) o[i] = 0.0f;
    if (m_all != ORCHARD_NEG_INF) {  // some key of this chunk is visible to row r
      for (int s2 = 0; s2 < NSG; ++s2) {
        const float w8 = tg_m[s2] == ORCHARD_NEG_INF ? 0.0f : exp(tg_m[s2] - m_all);
        l_all += tg_l[s2] * w8;
        for (int i = 0; i < DPL; ++i) o[i] += tg_acc[s2 * DPL * ORCHARD_SIMD_WIDTH + lane + ORCHARD_SIMD_WIDTH * i] * w8;
      }
      for (int i = 0; i < DPL; ++i) o[i] /= l_all;
    }
    for (int i = 0; i < DPL; ++i) {
      const int d = lane + ORCHARD_SIMD_WIDTH * i;
      if (d < D) o_part[out_row * D + d] = o[i];
    }
    if (lane == 0) {
      m_part[out_row] = m_all;
      l_part[out_row] = l_all;
    }
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
}

}

template [[host_name("custom_kernel_orchard_decode_attention_3ff96f7a9812__float_4_16_4_4_64_float_uint32_t_float_float_uint32_t_float_float_int32_t_floatc_float_float_float")]] [[kernel]] decltype(custom_kernel_orchard_decode_attention_3ff96f7a9812__float_4_16_4_4_64_float_uint32_t_float_float_uint32_t_float_float_int32_t_floatc_float_float_float<float, 4, 16, 4, 4, 64>) custom_kernel_orchard_decode_attention_3ff96f7a9812__float_4_16_4_4_64_float_uint32_t_float_float_uint32_t_float_float_int32_t_floatc_float_float_float<float, 4, 16, 4, 4, 64>;

// ---- instantiation 2 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
// Decode attention over a quantized KV cache in MLX's affine format along the head dimension:
// k is uint32 [B, Hkv, S, D * BITS / 32], k_scales / k_biases are [B, Hkv, S, D / GROUP_SIZE]
// (the layout mx.quantize gives the cache's last axis); the same for v.
#define KV_PER_WORD (32 / BITS)
#define KV_DEQUANT(packed, sc, bi, row, d)                                                         \
  (float(sc[(row) * (D / GROUP_SIZE) + (d) / GROUP_SIZE]) *                                        \
       float((packed[(row) * (D / KV_PER_WORD) + (d) / KV_PER_WORD] >> (BITS * ((d) % KV_PER_WORD))) & \
             ((1u << BITS) - 1u)) +                                                                \
   float(bi[(row) * (D / GROUP_SIZE) + (d) / GROUP_SIZE]))
#define LOAD_K(row, d) KV_DEQUANT(k, k_scales, k_biases, row, d)
#define LOAD_V(row, d) KV_DEQUANT(v, v_scales, v_biases, row, d)
template <typename T, int NSG, int MAX_ROWS, int DPL, int BITS, int GROUP_SIZE>
[[kernel]] void custom_kernel_orchard_decode_attention_3ff96f7a9812__float_4_16_4_4_128_float_uint32_t_float_float_uint32_t_float_float_int32_t_floatc_float_float_float(
  const device float* q [[buffer(0)]],
  const device uint32_t* k [[buffer(1)]],
  const device float* k_scales [[buffer(2)]],
  const device float* k_biases [[buffer(3)]],
  const device uint32_t* v [[buffer(4)]],
  const device float* v_scales [[buffer(5)]],
  const device float* v_biases [[buffer(6)]],
  const device int32_t* params [[buffer(7)]],
  const constant float* scale [[buffer(8)]],
  device float* o_part [[buffer(9)]],
  device float* m_part [[buffer(10)]],
  device float* l_part [[buffer(11)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Flash-decoding, pass 1: one threadgroup per (chunk of keys, KV head, batch). It serves every query
// row that reads this KV head (the G = Hq / Hkv query heads times the Lq new tokens), so each key and
// value row is loaded once per chunk however large the GQA group is. Its NSG simdgroups take keys
// round-robin; lanes split the head dimension (d = lane + 32 i). Per row each simdgroup keeps an
// online softmax (running max m, denominator l, weighted sum of v); the simdgroups are then merged
// through threadgroup memory and the chunk's normalised partial output, m and l are written for
// pass 2 (decode_reduce) to combine across chunks. LOAD_K / LOAD_V come from kv_float.h or
// kv_quant.h, so the same body reads a float or a quantized cache.
// params: B, Hq, Hkv, Lq, S, D, window (0 = none), chunk, chunks.
const int Hq = params[1], Hkv = params[2], Lq = params[3], S = params[4], D = params[5];
const int window = params[6], chunk = params[7], chunks = params[8];
const int c = int(threadgroup_position_in_grid.x);
const int hk = int(threadgroup_position_in_grid.y);
const int b = int(threadgroup_position_in_grid.z);
const int sg = int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
const int G = Hq / Hkv;
const int R = G * Lq;
const int k_lo = c * chunk;
const int k_hi = min(S, k_lo + chunk);
const int kv_plane = (b * Hkv + hk) * S;
const float sc = scale[0];

float q_reg[MAX_ROWS][DPL];
float m_run[MAX_ROWS], l_run[MAX_ROWS], acc[MAX_ROWS][DPL];
for (int r = 0; r < MAX_ROWS; ++r) {
  m_run[r] = ORCHARD_NEG_INF;
  l_run[r] = 0.0f;
  const int hq = hk * G + r / max(Lq, 1);
  const int iq = r % max(Lq, 1);
  for (int i = 0; i < DPL; ++i) {
    const int d = lane + ORCHARD_SIMD_WIDTH * i;
    acc[r][i] = 0.0f;
    q_reg[r][i] = (r < R && d < D) ? float(q[((b * Hq + hq) * Lq + iq) * D + d]) * sc : 0.0f;
  }
}

for (int j = k_lo + sg; j < k_hi; j += NSG) {
  const int row = kv_plane + j;
  float kd[DPL], vd[DPL];
  for (int i = 0; i < DPL; ++i) {
    const int d = lane + ORCHARD_SIMD_WIDTH * i;
    kd[i] = d < D ? LOAD_K(row, d) : 0.0f;
    vd[i] = d < D ? LOAD_V(row, d) : 0.0f;
  }
  for (int r = 0; r < R; ++r) {
    // Query r sits at position S - Lq + r % Lq: causal, and within the window if there is one.
    // The test depends on j and r only, so the whole simdgroup agrees and reaches simd_sum together.
    const int pos = S - Lq + r % Lq;
    if (j > pos || (window > 0 && pos - j >= window)) continue;
    float part = 0.0f;
    for (int i = 0; i < DPL; ++i) part += q_reg[r][i] * kd[i];
    const float s = simd_sum(part);
    const float m_new = max(m_run[r], s);
    const float corr = exp(m_run[r] - m_new);
    const float p = exp(s - m_new);
    l_run[r] = l_run[r] * corr + p;
    for (int i = 0; i < DPL; ++i) acc[r][i] = acc[r][i] * corr + p * vd[i];
    m_run[r] = m_new;
  }
}

threadgroup float tg_m[NSG];
threadgroup float tg_l[NSG];
threadgroup float tg_acc[NSG * DPL * ORCHARD_SIMD_WIDTH];
for (int r = 0; r < R; ++r) {
  if (lane == 0) {
    tg_m[sg] = m_run[r];
    tg_l[sg] = l_run[r];
  }
  for (int i = 0; i < DPL; ++i) tg_acc[sg * DPL * ORCHARD_SIMD_WIDTH + lane + ORCHARD_SIMD_WIDTH * i] = acc[r][i];
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (sg == 0) {
    float m_all = ORCHARD_NEG_INF;
    for (int s2 = 0; s2 < NSG; ++s2) m_all = max(m_all, tg_m[s2]);
    const int out_row = ((b * Hq + hk * G + r / Lq) * Lq + r % Lq) * chunks + c;
    float l_all = 0.0f;
    float o[DPL];
    for (int i = 0; i < DPL; ++i) o[i] = 0.0f;
    if (m_all != ORCHARD_NEG_INF) {  // some key of this chunk is visible to row r
      for (int s2 = 0; s2 < NSG; ++s2) {
        const float w8 = tg_m[s2] == ORCHARD_NEG_INF ? 0.0f : exp(tg_m[s2] - m_all);
        l_all += tg_l[s2] * w8;
        for (int i = 0; i < DPL; ++i) o[i] += tg_acc[s2 * DPL * ORCHARD_SIMD_WIDTH + lane + ORCHARD_SIMD_WIDTH * i] * w8;
      }
      for (int i = 0; i < DPL; ++i) o[i] /= l_all;
    }
    for (int i = 0; i < DPL; ++i) {
      const int d = lane + ORCHARD_SIMD_WIDTH * i;
      if (d < D) o_part[out_row * D + d] = o[i];
    }
    if (lane == 0) {
      m_part[out_row] = m_all;
      l_part[out_row] = l_all;
    }
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
}

}

template [[host_name("custom_kernel_orchard_decode_attention_3ff96f7a9812__float_4_16_4_4_128_float_uint32_t_float_float_uint32_t_float_float_int32_t_floatc_float_float_float")]] [[kernel]] decltype(custom_kernel_orchard_decode_attention_3ff96f7a9812__float_4_16_4_4_128_float_uint32_t_float_float_uint32_t_float_float_int32_t_floatc_float_float_float<float, 4, 16, 4, 4, 128>) custom_kernel_orchard_decode_attention_3ff96f7a9812__float_4_16_4_4_128_float_uint32_t_float_float_uint32_t_float_float_int32_t_floatc_float_float_float<float, 4, 16, 4, 4, 128>;

// ---- instantiation 3 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
// Decode attention over a quantized KV cache in MLX's affine format along the head dimension:
// k is uint32 [B, Hkv, S, D * BITS / 32], k_scales / k_biases are [B, Hkv, S, D / GROUP_SIZE]
// (the layout mx.quantize gives the cache's last axis); the same for v.
#define KV_PER_WORD (32 / BITS)
#define KV_DEQUANT(packed, sc, bi, row, d)                                                         \
  (float(sc[(row) * (D / GROUP_SIZE) + (d) / GROUP_SIZE]) *                                        \
       float((packed[(row) * (D / KV_PER_WORD) + (d) / KV_PER_WORD] >> (BITS * ((d) % KV_PER_WORD))) & \
             ((1u << BITS) - 1u)) +                                                                \
   float(bi[(row) * (D / GROUP_SIZE) + (d) / GROUP_SIZE]))
#define LOAD_K(row, d) KV_DEQUANT(k, k_scales, k_biases, row, d)
#define LOAD_V(row, d) KV_DEQUANT(v, v_scales, v_biases, row, d)
template <typename T, int NSG, int MAX_ROWS, int DPL, int BITS, int GROUP_SIZE>
[[kernel]] void custom_kernel_orchard_decode_attention_3ff96f7a9812__float_4_16_4_8_32_float_uint32_t_float_float_uint32_t_float_float_int32_t_floatc_float_float_float(
  const device float* q [[buffer(0)]],
  const device uint32_t* k [[buffer(1)]],
  const device float* k_scales [[buffer(2)]],
  const device float* k_biases [[buffer(3)]],
  const device uint32_t* v [[buffer(4)]],
  const device float* v_scales [[buffer(5)]],
  const device float* v_biases [[buffer(6)]],
  const device int32_t* params [[buffer(7)]],
  const constant float* scale [[buffer(8)]],
  device float* o_part [[buffer(9)]],
  device float* m_part [[buffer(10)]],
  device float* l_part [[buffer(11)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Flash-decoding, pass 1: one threadgroup per (chunk of keys, KV head, batch). It serves every query
// row that reads this KV head (the G = Hq / Hkv query heads times the Lq new tokens), so each key and
// value row is loaded once per chunk however large the GQA group is. Its NSG simdgroups take keys
// round-robin; lanes split the head dimension (d = lane + 32 i). Per row each simdgroup keeps an
// online softmax (running max m, denominator l, weighted sum of v); the simdgroups are then merged
// through threadgroup memory and the chunk's normalised partial output, m and l are written for
// pass 2 (decode_reduce) to combine across chunks. LOAD_K / LOAD_V come from kv_float.h or
// kv_quant.h, so the same body reads a float or a quantized cache.
// params: B, Hq, Hkv, Lq, S, D, window (0 = none), chunk, chunks.
const int Hq = params[1], Hkv = params[2], Lq = params[3], S = params[4], D = params[5];
const int window = params[6], chunk = params[7], chunks = params[8];
const int c = int(threadgroup_position_in_grid.x);
const int hk = int(threadgroup_position_in_grid.y);
const int b = int(threadgroup_position_in_grid.z);
const int sg = int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
const int G = Hq / Hkv;
const int R = G * Lq;
const int k_lo = c * chunk;
const int k_hi = min(S, k_lo + chunk);
const int kv_plane = (b * Hkv + hk) * S;
const float sc = scale[0];

float q_reg[MAX_ROWS][DPL];
float m_run[MAX_ROWS], l_run[MAX_ROWS], acc[MAX_ROWS][DPL];
for (int r = 0; r < MAX_ROWS; ++r) {
  m_run[r] = ORCHARD_NEG_INF;
  l_run[r] = 0.0f;
  const int hq = hk * G + r / max(Lq, 1);
  const int iq = r % max(Lq, 1);
  for (int i = 0; i < DPL; ++i) {
    const int d = lane + ORCHARD_SIMD_WIDTH * i;
    acc[r][i] = 0.0f;
    q_reg[r][i] = (r < R && d < D) ? float(q[((b * Hq + hq) * Lq + iq) * D + d]) * sc : 0.0f;
  }
}

for (int j = k_lo + sg; j < k_hi; j += NSG) {
  const int row = kv_plane + j;
  float kd[DPL], vd[DPL];
  for (int i = 0; i < DPL; ++i) {
    const int d = lane + ORCHARD_SIMD_WIDTH * i;
    kd[i] = d < D ? LOAD_K(row, d) : 0.0f;
    vd[i] = d < D ? LOAD_V(row, d) : 0.0f;
  }
  for (int r = 0; r < R; ++r) {
    // Query r sits at position S - Lq + r % Lq: causal, and within the window if there is one.
    // The test depends on j and r only, so the whole simdgroup agrees and reaches simd_sum together.
    const int pos = S - Lq + r % Lq;
    if (j > pos || (window > 0 && pos - j >= window)) continue;
    float part = 0.0f;
    for (int i = 0; i < DPL; ++i) part += q_reg[r][i] * kd[i];
    const float s = simd_sum(part);
    const float m_new = max(m_run[r], s);
    const float corr = exp(m_run[r] - m_new);
    const float p = exp(s - m_new);
    l_run[r] = l_run[r] * corr + p;
    for (int i = 0; i < DPL; ++i) acc[r][i] = acc[r][i] * corr + p * vd[i];
    m_run[r] = m_new;
  }
}

threadgroup float tg_m[NSG];
threadgroup float tg_l[NSG];
threadgroup float tg_acc[NSG * DPL * ORCHARD_SIMD_WIDTH];
for (int r = 0; r < R; ++r) {
  if (lane == 0) {
    tg_m[sg] = m_run[r];
    tg_l[sg] = l_run[r];
  }
  for (int i = 0; i < DPL; ++i) tg_acc[sg * DPL * ORCHARD_SIMD_WIDTH + lane + ORCHARD_SIMD_WIDTH * i] = acc[r][i];
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (sg == 0) {
    float m_all = ORCHARD_NEG_INF;
    for (int s2 = 0; s2 < NSG; ++s2) m_all = max(m_all, tg_m[s2]);
    const int out_row = ((b * Hq + hk * G + r / Lq) * Lq + r % Lq) * chunks + c;
    float l_all = 0.0f;
    float o[DPL];
    for (int i = 0; i < DPL; ++i) o[i] = 0.0f;
    if (m_all != ORCHARD_NEG_INF) {  // some key of this chunk is visible to row r
      for (int s2 = 0; s2 < NSG; ++s2) {
        const float w8 = tg_m[s2] == ORCHARD_NEG_INF ? 0.0f : exp(tg_m[s2] - m_all);
        l_all += tg_l[s2] * w8;
        for (int i = 0; i < DPL; ++i) o[i] += tg_acc[s2 * DPL * ORCHARD_SIMD_WIDTH + lane + ORCHARD_SIMD_WIDTH * i] * w8;
      }
      for (int i = 0; i < DPL; ++i) o[i] /= l_all;
    }
    for (int i = 0; i < DPL; ++i) {
      const int d = lane + ORCHARD_SIMD_WIDTH * i;
      if (d < D) o_part[out_row * D + d] = o[i];
    }
    if (lane == 0) {
      m_part[out_row] = m_all;
      l_part[out_row] = l_all;
    }
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
}

}

template [[host_name("custom_kernel_orchard_decode_attention_3ff96f7a9812__float_4_16_4_8_32_float_uint32_t_float_float_uint32_t_float_float_int32_t_floatc_float_float_float")]] [[kernel]] decltype(custom_kernel_orchard_decode_attention_3ff96f7a9812__float_4_16_4_8_32_float_uint32_t_float_float_uint32_t_float_float_int32_t_floatc_float_float_float<float, 4, 16, 4, 8, 32>) custom_kernel_orchard_decode_attention_3ff96f7a9812__float_4_16_4_8_32_float_uint32_t_float_float_uint32_t_float_float_int32_t_floatc_float_float_float<float, 4, 16, 4, 8, 32>;

// ---- instantiation 4 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
// Decode attention over a quantized KV cache in MLX's affine format along the head dimension:
// k is uint32 [B, Hkv, S, D * BITS / 32], k_scales / k_biases are [B, Hkv, S, D / GROUP_SIZE]
// (the layout mx.quantize gives the cache's last axis); the same for v.
#define KV_PER_WORD (32 / BITS)
#define KV_DEQUANT(packed, sc, bi, row, d)                                                         \
  (float(sc[(row) * (D / GROUP_SIZE) + (d) / GROUP_SIZE]) *                                        \
       float((packed[(row) * (D / KV_PER_WORD) + (d) / KV_PER_WORD] >> (BITS * ((d) % KV_PER_WORD))) & \
             ((1u << BITS) - 1u)) +                                                                \
   float(bi[(row) * (D / GROUP_SIZE) + (d) / GROUP_SIZE]))
#define LOAD_K(row, d) KV_DEQUANT(k, k_scales, k_biases, row, d)
#define LOAD_V(row, d) KV_DEQUANT(v, v_scales, v_biases, row, d)
template <typename T, int NSG, int MAX_ROWS, int DPL, int BITS, int GROUP_SIZE>
[[kernel]] void custom_kernel_orchard_decode_attention_3ff96f7a9812__float_4_16_4_8_64_float_uint32_t_float_float_uint32_t_float_float_int32_t_floatc_float_float_float(
  const device float* q [[buffer(0)]],
  const device uint32_t* k [[buffer(1)]],
  const device float* k_scales [[buffer(2)]],
  const device float* k_biases [[buffer(3)]],
  const device uint32_t* v [[buffer(4)]],
  const device float* v_scales [[buffer(5)]],
  const device float* v_biases [[buffer(6)]],
  const device int32_t* params [[buffer(7)]],
  const constant float* scale [[buffer(8)]],
  device float* o_part [[buffer(9)]],
  device float* m_part [[buffer(10)]],
  device float* l_part [[buffer(11)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Flash-decoding, pass 1: one threadgroup per (chunk of keys, KV head, batch). It serves every query
// row that reads this KV head (the G = Hq / Hkv query heads times the Lq new tokens), so each key and
// value row is loaded once per chunk however large the GQA group is. Its NSG simdgroups take keys
// round-robin; lanes split the head dimension (d = lane + 32 i). Per row each simdgroup keeps an
// online softmax (running max m, denominator l, weighted sum of v); the simdgroups are then merged
// through threadgroup memory and the chunk's normalised partial output, m and l are written for
// pass 2 (decode_reduce) to combine across chunks. LOAD_K / LOAD_V come from kv_float.h or
// kv_quant.h, so the same body reads a float or a quantized cache.
// params: B, Hq, Hkv, Lq, S, D, window (0 = none), chunk, chunks.
const int Hq = params[1], Hkv = params[2], Lq = params[3], S = params[4], D = params[5];
const int window = params[6], chunk = params[7], chunks = params[8];
const int c = int(threadgroup_position_in_grid.x);
const int hk = int(threadgroup_position_in_grid.y);
const int b = int(threadgroup_position_in_grid.z);
const int sg = int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
const int G = Hq / Hkv;
const int R = G * Lq;
const int k_lo = c * chunk;
const int k_hi = min(S, k_lo + chunk);
const int kv_plane = (b * Hkv + hk) * S;
const float sc = scale[0];

float q_reg[MAX_ROWS][DPL];
float m_run[MAX_ROWS], l_run[MAX_ROWS], acc[MAX_ROWS][DPL];
for (int r = 0; r < MAX_ROWS; ++r) {
  m_run[r] = ORCHARD_NEG_INF;
  l_run[r] = 0.0f;
  const int hq = hk * G + r / max(Lq, 1);
  const int iq = r % max(Lq, 1);
  for (int i = 0; i < DPL; ++i) {
    const int d = lane + ORCHARD_SIMD_WIDTH * i;
    acc[r][i] = 0.0f;
    q_reg[r][i] = (r < R && d < D) ? float(q[((b * Hq + hq) * Lq + iq) * D + d]) * sc : 0.0f;
  }
}

for (int j = k_lo + sg; j < k_hi; j += NSG) {
  const int row = kv_plane + j;
  float kd[DPL], vd[DPL];
  for (int i = 0; i < DPL; ++i) {
    const int d = lane + ORCHARD_SIMD_WIDTH * i;
    kd[i] = d < D ? LOAD_K(row, d) : 0.0f;
    vd[i] = d < D ? LOAD_V(row, d) : 0.0f;
  }
  for (int r = 0; r < R; ++r) {
    // Query r sits at position S - Lq + r % Lq: causal, and within the window if there is one.
    // The test depends on j and r only, so the whole simdgroup agrees and reaches simd_sum together.
    const int pos = S - Lq + r % Lq;
    if (j > pos || (window > 0 && pos - j >= window)) continue;
    float part = 0.0f;
    for (int i = 0; i < DPL; ++i) part += q_reg[r][i] * kd[i];
    const float s = simd_sum(part);
    const float m_new = max(m_run[r], s);
    const float corr = exp(m_run[r] - m_new);
    const float p = exp(s - m_new);
    l_run[r] = l_run[r] * corr + p;
    for (int i = 0; i < DPL; ++i) acc[r][i] = acc[r][i] * corr + p * vd[i];
    m_run[r] = m_new;
  }
}

threadgroup float tg_m[NSG];
threadgroup float tg_l[NSG];
threadgroup float tg_acc[NSG * DPL * ORCHARD_SIMD_WIDTH];
for (int r = 0; r < R; ++r) {
  if (lane == 0) {
    tg_m[sg] = m_run[r];
    tg_l[sg] = l_run[r];
  }
  for (int i = 0; i < DPL; ++i) tg_acc[sg * DPL * ORCHARD_SIMD_WIDTH + lane + ORCHARD_SIMD_WIDTH * i] = acc[r][i];
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (sg == 0) {
    float m_all = ORCHARD_NEG_INF;
    for (int s2 = 0; s2 < NSG; ++s2) m_all = max(m_all, tg_m[s2]);
    const int out_row = ((b * Hq + hk * G + r / Lq) * Lq + r % Lq) * chunks + c;
    float l_all = 0.0f;
    float o[DPL];
    for (int i = 0; i < DPL; ++i) o[i] = 0.0f;
    if (m_all != ORCHARD_NEG_INF) {  // some key of this chunk is visible to row r
      for (int s2 = 0; s2 < NSG; ++s2) {
        const float w8 = tg_m[s2] == ORCHARD_NEG_INF ? 0.0f : exp(tg_m[s2] - m_all);
        l_all += tg_l[s2] * w8;
        for (int i = 0; i < DPL; ++i) o[i] += tg_acc[s2 * DPL * ORCHARD_SIMD_WIDTH + lane + ORCHARD_SIMD_WIDTH * i] * w8;
      }
      for (int i = 0; i < DPL; ++i) o[i] /= l_all;
    }
    for (int i = 0; i < DPL; ++i) {
      const int d = lane + ORCHARD_SIMD_WIDTH * i;
      if (d < D) o_part[out_row * D + d] = o[i];
    }
    if (lane == 0) {
      m_part[out_row] = m_all;
      l_part[out_row] = l_all;
    }
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
}

}

template [[host_name("custom_kernel_orchard_decode_attention_3ff96f7a9812__float_4_16_4_8_64_float_uint32_t_float_float_uint32_t_float_float_int32_t_floatc_float_float_float")]] [[kernel]] decltype(custom_kernel_orchard_decode_attention_3ff96f7a9812__float_4_16_4_8_64_float_uint32_t_float_float_uint32_t_float_float_int32_t_floatc_float_float_float<float, 4, 16, 4, 8, 64>) custom_kernel_orchard_decode_attention_3ff96f7a9812__float_4_16_4_8_64_float_uint32_t_float_float_uint32_t_float_float_int32_t_floatc_float_float_float<float, 4, 16, 4, 8, 64>;

// ---- instantiation 5 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
// Decode attention over a quantized KV cache in MLX's affine format along the head dimension:
// k is uint32 [B, Hkv, S, D * BITS / 32], k_scales / k_biases are [B, Hkv, S, D / GROUP_SIZE]
// (the layout mx.quantize gives the cache's last axis); the same for v.
#define KV_PER_WORD (32 / BITS)
#define KV_DEQUANT(packed, sc, bi, row, d)                                                         \
  (float(sc[(row) * (D / GROUP_SIZE) + (d) / GROUP_SIZE]) *                                        \
       float((packed[(row) * (D / KV_PER_WORD) + (d) / KV_PER_WORD] >> (BITS * ((d) % KV_PER_WORD))) & \
             ((1u << BITS) - 1u)) +                                                                \
   float(bi[(row) * (D / GROUP_SIZE) + (d) / GROUP_SIZE]))
#define LOAD_K(row, d) KV_DEQUANT(k, k_scales, k_biases, row, d)
#define LOAD_V(row, d) KV_DEQUANT(v, v_scales, v_biases, row, d)
template <typename T, int NSG, int MAX_ROWS, int DPL, int BITS, int GROUP_SIZE>
[[kernel]] void custom_kernel_orchard_decode_attention_3ff96f7a9812__float_4_16_4_8_128_float_uint32_t_float_float_uint32_t_float_float_int32_t_floatc_float_float_float(
  const device float* q [[buffer(0)]],
  const device uint32_t* k [[buffer(1)]],
  const device float* k_scales [[buffer(2)]],
  const device float* k_biases [[buffer(3)]],
  const device uint32_t* v [[buffer(4)]],
  const device float* v_scales [[buffer(5)]],
  const device float* v_biases [[buffer(6)]],
  const device int32_t* params [[buffer(7)]],
  const constant float* scale [[buffer(8)]],
  device float* o_part [[buffer(9)]],
  device float* m_part [[buffer(10)]],
  device float* l_part [[buffer(11)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Flash-decoding, pass 1: one threadgroup per (chunk of keys, KV head, batch). It serves every query
// row that reads this KV head (the G = Hq / Hkv query heads times the Lq new tokens), so each key and
// value row is loaded once per chunk however large the GQA group is. Its NSG simdgroups take keys
// round-robin; lanes split the head dimension (d = lane + 32 i). Per row each simdgroup keeps an
// online softmax (running max m, denominator l, weighted sum of v); the simdgroups are then merged
// through threadgroup memory and the chunk's normalised partial output, m and l are written for
// pass 2 (decode_reduce) to combine across chunks. LOAD_K / LOAD_V come from kv_float.h or
// kv_quant.h, so the same body reads a float or a quantized cache.
// params: B, Hq, Hkv, Lq, S, D, window (0 = none), chunk, chunks.
const int Hq = params[1], Hkv = params[2], Lq = params[3], S = params[4], D = params[5];
const int window = params[6], chunk = params[7], chunks = params[8];
const int c = int(threadgroup_position_in_grid.x);
const int hk = int(threadgroup_position_in_grid.y);
const int b = int(threadgroup_position_in_grid.z);
const int sg = int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
const int G = Hq / Hkv;
const int R = G * Lq;
const int k_lo = c * chunk;
const int k_hi = min(S, k_lo + chunk);
const int kv_plane = (b * Hkv + hk) * S;
const float sc = scale[0];

float q_reg[MAX_ROWS][DPL];
float m_run[MAX_ROWS], l_run[MAX_ROWS], acc[MAX_ROWS][DPL];
for (int r = 0; r < MAX_ROWS; ++r) {
  m_run[r] = ORCHARD_NEG_INF;
  l_run[r] = 0.0f;
  const int hq = hk * G + r / max(Lq, 1);
  const int iq = r % max(Lq, 1);
  for (int i = 0; i < DPL; ++i) {
    const int d = lane + ORCHARD_SIMD_WIDTH * i;
    acc[r][i] = 0.0f;
    q_reg[r][i] = (r < R && d < D) ? float(q[((b * Hq + hq) * Lq + iq) * D + d]) * sc : 0.0f;
  }
}

for (int j = k_lo + sg; j < k_hi; j += NSG) {
  const int row = kv_plane + j;
  float kd[DPL], vd[DPL];
  for (int i = 0; i < DPL; ++i) {
    const int d = lane + ORCHARD_SIMD_WIDTH * i;
    kd[i] = d < D ? LOAD_K(row, d) : 0.0f;
    vd[i] = d < D ? LOAD_V(row, d) : 0.0f;
  }
  for (int r = 0; r < R; ++r) {
    // Query r sits at position S - Lq + r % Lq: causal, and within the window if there is one.
    // The test depends on j and r only, so the whole simdgroup agrees and reaches simd_sum together.
    const int pos = S - Lq + r % Lq;
    if (j > pos || (window > 0 && pos - j >= window)) continue;
    float part = 0.0f;
    for (int i = 0; i < DPL; ++i) part += q_reg[r][i] * kd[i];
    const float s = simd_sum(part);
    const float m_new = max(m_run[r], s);
    const float corr = exp(m_run[r] - m_new);
    const float p = exp(s - m_new);
    l_run[r] = l_run[r] * corr + p;
    for (int i = 0; i < DPL; ++i) acc[r][i] = acc[r][i] * corr + p * vd[i];
    m_run[r] = m_new;
  }
}

threadgroup float tg_m[NSG];
threadgroup float tg_l[NSG];
threadgroup float tg_acc[NSG * DPL * ORCHARD_SIMD_WIDTH];
for (int r = 0; r < R; ++r) {
  if (lane == 0) {
    tg_m[sg] = m_run[r];
    tg_l[sg] = l_run[r];
  }
  for (int i = 0; i < DPL; ++i) tg_acc[sg * DPL * ORCHARD_SIMD_WIDTH + lane + ORCHARD_SIMD_WIDTH * i] = acc[r][i];
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (sg == 0) {
    float m_all = ORCHARD_NEG_INF;
    for (int s2 = 0; s2 < NSG; ++s2) m_all = max(m_all, tg_m[s2]);
    const int out_row = ((b * Hq + hk * G + r / Lq) * Lq + r % Lq) * chunks + c;
    float l_all = 0.0f;
    float o[DPL];
    for (int i = 0; i < DPL; ++i) o[i] = 0.0f;
    if (m_all != ORCHARD_NEG_INF) {  // some key of this chunk is visible to row r
      for (int s2 = 0; s2 < NSG; ++s2) {
        const float w8 = tg_m[s2] == ORCHARD_NEG_INF ? 0.0f : exp(tg_m[s2] - m_all);
        l_all += tg_l[s2] * w8;
        for (int i = 0; i < DPL; ++i) o[i] += tg_acc[s2 * DPL * ORCHARD_SIMD_WIDTH + lane + ORCHARD_SIMD_WIDTH * i] * w8;
      }
      for (int i = 0; i < DPL; ++i) o[i] /= l_all;
    }
    for (int i = 0; i < DPL; ++i) {
      const int d = lane + ORCHARD_SIMD_WIDTH * i;
      if (d < D) o_part[out_row * D + d] = o[i];
    }
    if (lane == 0) {
      m_part[out_row] = m_all;
      l_part[out_row] = l_all;
    }
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
}

}

template [[host_name("custom_kernel_orchard_decode_attention_3ff96f7a9812__float_4_16_4_8_128_float_uint32_t_float_float_uint32_t_float_float_int32_t_floatc_float_float_float")]] [[kernel]] decltype(custom_kernel_orchard_decode_attention_3ff96f7a9812__float_4_16_4_8_128_float_uint32_t_float_float_uint32_t_float_float_int32_t_floatc_float_float_float<float, 4, 16, 4, 8, 128>) custom_kernel_orchard_decode_attention_3ff96f7a9812__float_4_16_4_8_128_float_uint32_t_float_float_uint32_t_float_float_int32_t_floatc_float_float_float<float, 4, 16, 4, 8, 128>;

// ---- instantiation 6 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
// Decode attention over a quantized KV cache in MLX's affine format along the head dimension:
// k is uint32 [B, Hkv, S, D * BITS / 32], k_scales / k_biases are [B, Hkv, S, D / GROUP_SIZE]
// (the layout mx.quantize gives the cache's last axis); the same for v.
#define KV_PER_WORD (32 / BITS)
#define KV_DEQUANT(packed, sc, bi, row, d)                                                         \
  (float(sc[(row) * (D / GROUP_SIZE) + (d) / GROUP_SIZE]) *                                        \
       float((packed[(row) * (D / KV_PER_WORD) + (d) / KV_PER_WORD] >> (BITS * ((d) % KV_PER_WORD))) & \
             ((1u << BITS) - 1u)) +                                                                \
   float(bi[(row) * (D / GROUP_SIZE) + (d) / GROUP_SIZE]))
#define LOAD_K(row, d) KV_DEQUANT(k, k_scales, k_biases, row, d)
#define LOAD_V(row, d) KV_DEQUANT(v, v_scales, v_biases, row, d)
template <typename T, int NSG, int MAX_ROWS, int DPL, int BITS, int GROUP_SIZE>
[[kernel]] void custom_kernel_orchard_decode_attention_3ff96f7a9812__float16_t_4_16_4_4_32_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_t_floatc_float_float_float(
  const device float16_t* q [[buffer(0)]],
  const device uint32_t* k [[buffer(1)]],
  const device float16_t* k_scales [[buffer(2)]],
  const device float16_t* k_biases [[buffer(3)]],
  const device uint32_t* v [[buffer(4)]],
  const device float16_t* v_scales [[buffer(5)]],
  const device float16_t* v_biases [[buffer(6)]],
  const device int32_t* params [[buffer(7)]],
  const constant float* scale [[buffer(8)]],
  device float* o_part [[buffer(9)]],
  device float* m_part [[buffer(10)]],
  device float* l_part [[buffer(11)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Flash-decoding, pass 1: one threadgroup per (chunk of keys, KV head, batch). It serves every query
// row that reads this KV head (the G = Hq / Hkv query heads times the Lq new tokens), so each key and
// value row is loaded once per chunk however large the GQA group is. Its NSG simdgroups take keys
// round-robin; lanes split the head dimension (d = lane + 32 i). Per row each simdgroup keeps an
// online softmax (running max m, denominator l, weighted sum of v); the simdgroups are then merged
// through threadgroup memory and the chunk's normalised partial output, m and l are written for
// pass 2 (decode_reduce) to combine across chunks. LOAD_K / LOAD_V come from kv_float.h or
// kv_quant.h, so the same body reads a float or a quantized cache.
// params: B, Hq, Hkv, Lq, S, D, window (0 = none), chunk, chunks.
const int Hq = params[1], Hkv = params[2], Lq = params[3], S = params[4], D = params[5];
const int window = params[6], chunk = params[7], chunks = params[8];
const int c = int(threadgroup_position_in_grid.x);
const int hk = int(threadgroup_position_in_grid.y);
const int b = int(threadgroup_position_in_grid.z);
const int sg = int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
const int G = Hq / Hkv;
const int R = G * Lq;
const int k_lo = c * chunk;
const int k_hi = min(S, k_lo + chunk);
const int kv_plane = (b * Hkv + hk) * S;
const float sc = scale[0];

float q_reg[MAX_ROWS][DPL];
float m_run[MAX_ROWS], l_run[MAX_ROWS], acc[MAX_ROWS][DPL];
for (int r = 0; r < MAX_ROWS; ++r) {
  m_run[r] = ORCHARD_NEG_INF;
  l_run[r] = 0.0f;
  const int hq = hk * G + r / max(Lq, 1);
  const int iq = r % max(Lq, 1);
  for (int i = 0; i < DPL; ++i) {
    const int d = lane + ORCHARD_SIMD_WIDTH * i;
    acc[r][i] = 0.0f;
    q_reg[r][i] = (r < R && d < D) ? float(q[((b * Hq + hq) * Lq + iq) * D + d]) * sc : 0.0f;
  }
}

for (int j = k_lo + sg; j < k_hi; j += NSG) {
  const int row = kv_plane + j;
  float kd[DPL], vd[DPL];
  for (int i = 0; i < DPL; ++i) {
    const int d = lane + ORCHARD_SIMD_WIDTH * i;
    kd[i] = d < D ? LOAD_K(row, d) : 0.0f;
    vd[i] = d < D ? LOAD_V(row, d) : 0.0f;
  }
  for (int r = 0; r < R; ++r) {
    // Query r sits at position S - Lq + r % Lq: causal, and within the window if there is one.
    // The test depends on j and r only, so the whole simdgroup agrees and reaches simd_sum together.
    const int pos = S - Lq + r % Lq;
    if (j > pos || (window > 0 && pos - j >= window)) continue;
    float part = 0.0f;
    for (int i = 0; i < DPL; ++i) part += q_reg[r][i] * kd[i];
    const float s = simd_sum(part);
    const float m_new = max(m_run[r], s);
    const float corr = exp(m_run[r] - m_new);
    const float p = exp(s - m_new);
    l_run[r] = l_run[r] * corr + p;
    for (int i = 0; i < DPL; ++i) acc[r][i] = acc[r][i] * corr + p * vd[i];
    m_run[r] = m_new;
  }
}

threadgroup float tg_m[NSG];
threadgroup float tg_l[NSG];
threadgroup float tg_acc[NSG * DPL * ORCHARD_SIMD_WIDTH];
for (int r = 0; r < R; ++r) {
  if (lane == 0) {
    tg_m[sg] = m_run[r];
    tg_l[sg] = l_run[r];
  }
  for (int i = 0; i < DPL; ++i) tg_acc[sg * DPL * ORCHARD_SIMD_WIDTH + lane + ORCHARD_SIMD_WIDTH * i] = acc[r][i];
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (sg == 0) {
    float m_all = ORCHARD_NEG_INF;
    for (int s2 = 0; s2 < NSG; ++s2) m_all = max(m_all, tg_m[s2]);
    const int out_row = ((b * Hq + hk * G + r / Lq) * Lq + r % Lq) * chunks + c;
    float l_all = 0.0f;
    float o[DPL];
    for (int i = 0; i < DPL; ++i) o[i] = 0.0f;
    if (m_all != ORCHARD_NEG_INF) {  // some key of this chunk is visible to row r
      for (int s2 = 0; s2 < NSG; ++s2) {
        const float w8 = tg_m[s2] == ORCHARD_NEG_INF ? 0.0f : exp(tg_m[s2] - m_all);
        l_all += tg_l[s2] * w8;
        for (int i = 0; i < DPL; ++i) o[i] += tg_acc[s2 * DPL * ORCHARD_SIMD_WIDTH + lane + ORCHARD_SIMD_WIDTH * i] * w8;
      }
      for (int i = 0; i < DPL; ++i) o[i] /= l_all;
    }
    for (int i = 0; i < DPL; ++i) {
      const int d = lane + ORCHARD_SIMD_WIDTH * i;
      if (d < D) o_part[out_row * D + d] = o[i];
    }
    if (lane == 0) {
      m_part[out_row] = m_all;
      l_part[out_row] = l_all;
    }
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
}

}

template [[host_name("custom_kernel_orchard_decode_attention_3ff96f7a9812__float16_t_4_16_4_4_32_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_t_floatc_float_float_float")]] [[kernel]] decltype(custom_kernel_orchard_decode_attention_3ff96f7a9812__float16_t_4_16_4_4_32_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_t_floatc_float_float_float<float16_t, 4, 16, 4, 4, 32>) custom_kernel_orchard_decode_attention_3ff96f7a9812__float16_t_4_16_4_4_32_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_t_floatc_float_float_float<float16_t, 4, 16, 4, 4, 32>;

// ---- instantiation 7 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
// Decode attention over a quantized KV cache in MLX's affine format along the head dimension:
// k is uint32 [B, Hkv, S, D * BITS / 32], k_scales / k_biases are [B, Hkv, S, D / GROUP_SIZE]
// (the layout mx.quantize gives the cache's last axis); the same for v.
#define KV_PER_WORD (32 / BITS)
#define KV_DEQUANT(packed, sc, bi, row, d)                                                         \
  (float(sc[(row) * (D / GROUP_SIZE) + (d) / GROUP_SIZE]) *                                        \
       float((packed[(row) * (D / KV_PER_WORD) + (d) / KV_PER_WORD] >> (BITS * ((d) % KV_PER_WORD))) & \
             ((1u << BITS) - 1u)) +                                                                \
   float(bi[(row) * (D / GROUP_SIZE) + (d) / GROUP_SIZE]))
#define LOAD_K(row, d) KV_DEQUANT(k, k_scales, k_biases, row, d)
#define LOAD_V(row, d) KV_DEQUANT(v, v_scales, v_biases, row, d)
template <typename T, int NSG, int MAX_ROWS, int DPL, int BITS, int GROUP_SIZE>
[[kernel]] void custom_kernel_orchard_decode_attention_3ff96f7a9812__float16_t_4_16_4_4_64_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_t_floatc_float_float_float(
  const device float16_t* q [[buffer(0)]],
  const device uint32_t* k [[buffer(1)]],
  const device float16_t* k_scales [[buffer(2)]],
  const device float16_t* k_biases [[buffer(3)]],
  const device uint32_t* v [[buffer(4)]],
  const device float16_t* v_scales [[buffer(5)]],
  const device float16_t* v_biases [[buffer(6)]],
  const device int32_t* params [[buffer(7)]],
  const constant float* scale [[buffer(8)]],
  device float* o_part [[buffer(9)]],
  device float* m_part [[buffer(10)]],
  device float* l_part [[buffer(11)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Flash-decoding, pass 1: one threadgroup per (chunk of keys, KV head, batch). It serves every query
// row that reads this KV head (the G = Hq / Hkv query heads times the Lq new tokens), so each key and
// value row is loaded once per chunk however large the GQA group is. Its NSG simdgroups take keys
// round-robin; lanes split the head dimension (d = lane + 32 i). Per row each simdgroup keeps an
// online softmax (running max m, denominator l, weighted sum of v); the simdgroups are then merged
// through threadgroup memory and the chunk's normalised partial output, m and l are written for
// pass 2 (decode_reduce) to combine across chunks. LOAD_K / LOAD_V come from kv_float.h or
// kv_quant.h, so the same body reads a float or a quantized cache.
// params: B, Hq, Hkv, Lq, S, D, window (0 = none), chunk, chunks.
const int Hq = params[1], Hkv = params[2], Lq = params[3], S = params[4], D = params[5];
const int window = params[6], chunk = params[7], chunks = params[8];
const int c = int(threadgroup_position_in_grid.x);
const int hk = int(threadgroup_position_in_grid.y);
const int b = int(threadgroup_position_in_grid.z);
const int sg = int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
const int G = Hq / Hkv;
const int R = G * Lq;
const int k_lo = c * chunk;
const int k_hi = min(S, k_lo + chunk);
const int kv_plane = (b * Hkv + hk) * S;
const float sc = scale[0];

float q_reg[MAX_ROWS][DPL];
float m_run[MAX_ROWS], l_run[MAX_ROWS], acc[MAX_ROWS][DPL];
for (int r = 0; r < MAX_ROWS; ++r) {
  m_run[r] = ORCHARD_NEG_INF;
  l_run[r] = 0.0f;
  const int hq = hk * G + r / max(Lq, 1);
  const int iq = r % max(Lq, 1);
  for (int i = 0; i < DPL; ++i) {
    const int d = lane + ORCHARD_SIMD_WIDTH * i;
    acc[r][i] = 0.0f;
    q_reg[r][i] = (r < R && d < D) ? float(q[((b * Hq + hq) * Lq + iq) * D + d]) * sc : 0.0f;
  }
}

for (int j = k_lo + sg; j < k_hi; j += NSG) {
  const int row = kv_plane + j;
  float kd[DPL], vd[DPL];
  for (int i = 0; i < DPL; ++i) {
    const int d = lane + ORCHARD_SIMD_WIDTH * i;
    kd[i] = d < D ? LOAD_K(row, d) : 0.0f;
    vd[i] = d < D ? LOAD_V(row, d) : 0.0f;
  }
  for (int r = 0; r < R; ++r) {
    // Query r sits at position S - Lq + r % Lq: causal, and within the window if there is one.
    // The test depends on j and r only, so the whole simdgroup agrees and reaches simd_sum together.
    const int pos = S - Lq + r % Lq;
    if (j > pos || (window > 0 && pos - j >= window)) continue;
    float part = 0.0f;
    for (int i = 0; i < DPL; ++i) part += q_reg[r][i] * kd[i];
    const float s = simd_sum(part);
    const float m_new = max(m_run[r], s);
    const float corr = exp(m_run[r] - m_new);
    const float p = exp(s - m_new);
    l_run[r] = l_run[r] * corr + p;
    for (int i = 0; i < DPL; ++i) acc[r][i] = acc[r][i] * corr + p * vd[i];
    m_run[r] = m_new;
  }
}

threadgroup float tg_m[NSG];
threadgroup float tg_l[NSG];
threadgroup float tg_acc[NSG * DPL * ORCHARD_SIMD_WIDTH];
for (int r = 0; r < R; ++r) {
  if (lane == 0) {
    tg_m[sg] = m_run[r];
    tg_l[sg] = l_run[r];
  }
  for (int i = 0; i < DPL; ++i) tg_acc[sg * DPL * ORCHARD_SIMD_WIDTH + lane + ORCHARD_SIMD_WIDTH * i] = acc[r][i];
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (sg == 0) {
    float m_all = ORCHARD_NEG_INF;
    for (int s2 = 0; s2 < NSG; ++s2) m_all = max(m_all, tg_m[s2]);
    const int out_row = ((b * Hq + hk * G + r / Lq) * Lq + r % Lq) * chunks + c;
    float l_all = 0.0f;
    float o[DPL];
    for (int i = 0; i < DPL; ++i) o[i] = 0.0f;
    if (m_all != ORCHARD_NEG_INF) {  // some key of this chunk is visible to row r
      for (int s2 = 0; s2 < NSG; ++s2) {
        const float w8 = tg_m[s2] == ORCHARD_NEG_INF ? 0.0f : exp(tg_m[s2] - m_all);
        l_all += tg_l[s2] * w8;
        for (int i = 0; i < DPL; ++i) o[i] += tg_acc[s2 * DPL * ORCHARD_SIMD_WIDTH + lane + ORCHARD_SIMD_WIDTH * i] * w8;
      }
      for (int i = 0; i < DPL; ++i) o[i] /= l_all;
    }
    for (int i = 0; i < DPL; ++i) {
      const int d = lane + ORCHARD_SIMD_WIDTH * i;
      if (d < D) o_part[out_row * D + d] = o[i];
    }
    if (lane == 0) {
      m_part[out_row] = m_all;
      l_part[out_row] = l_all;
    }
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
}

}

template [[host_name("custom_kernel_orchard_decode_attention_3ff96f7a9812__float16_t_4_16_4_4_64_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_t_floatc_float_float_float")]] [[kernel]] decltype(custom_kernel_orchard_decode_attention_3ff96f7a9812__float16_t_4_16_4_4_64_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_t_floatc_float_float_float<float16_t, 4, 16, 4, 4, 64>) custom_kernel_orchard_decode_attention_3ff96f7a9812__float16_t_4_16_4_4_64_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_t_floatc_float_float_float<float16_t, 4, 16, 4, 4, 64>;

// ---- instantiation 8 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
// Decode attention over a quantized KV cache in MLX's affine format along the head dimension:
// k is uint32 [B, Hkv, S, D * BITS / 32], k_scales / k_biases are [B, Hkv, S, D / GROUP_SIZE]
// (the layout mx.quantize gives the cache's last axis); the same for v.
#define KV_PER_WORD (32 / BITS)
#define KV_DEQUANT(packed, sc, bi, row, d)                                                         \
  (float(sc[(row) * (D / GROUP_SIZE) + (d) / GROUP_SIZE]) *                                        \
       float((packed[(row) * (D / KV_PER_WORD) + (d) / KV_PER_WORD] >> (BITS * ((d) % KV_PER_WORD))) & \
             ((1u << BITS) - 1u)) +                                                                \
   float(bi[(row) * (D / GROUP_SIZE) + (d) / GROUP_SIZE]))
#define LOAD_K(row, d) KV_DEQUANT(k, k_scales, k_biases, row, d)
#define LOAD_V(row, d) KV_DEQUANT(v, v_scales, v_biases, row, d)
template <typename T, int NSG, int MAX_ROWS, int DPL, int BITS, int GROUP_SIZE>
[[kernel]] void custom_kernel_orchard_decode_attention_3ff96f7a9812__float16_t_4_16_4_4_128_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_t_floatc_float_float_float(
  const device float16_t* q [[buffer(0)]],
  const device uint32_t* k [[buffer(1)]],
  const device float16_t* k_scales [[buffer(2)]],
  const device float16_t* k_biases [[buffer(3)]],
  const device uint32_t* v [[buffer(4)]],
  const device float16_t* v_scales [[buffer(5)]],
  const device float16_t* v_biases [[buffer(6)]],
  const device int32_t* params [[buffer(7)]],
  const constant float* scale [[buffer(8)]],
  device float* o_part [[buffer(9)]],
  device float* m_part [[buffer(10)]],
  device float* l_part [[buffer(11)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Flash-decoding, pass 1: one threadgroup per (chunk of keys, KV head, batch). It serves every query
// row that reads this KV head (the G = Hq / Hkv query heads times the Lq new tokens), so each key and
// value row is loaded once per chunk however large the GQA group is. Its NSG simdgroups take keys
// round-robin; lanes split the head dimension (d = lane + 32 i). Per row each simdgroup keeps an
// online softmax (running max m, denominator l, weighted sum of v); the simdgroups are then merged
// through threadgroup memory and the chunk's normalised partial output, m and l are written for
// pass 2 (decode_reduce) to combine across chunks. LOAD_K / LOAD_V come from kv_float.h or
// kv_quant.h, so the same body reads a float or a quantized cache.
// params: B, Hq, Hkv, Lq, S, D, window (0 = none), chunk, chunks.
const int Hq = params[1], Hkv = params[2], Lq = params[3], S = params[4], D = params[5];
const int window = params[6], chunk = params[7], chunks = params[8];
const int c = int(threadgroup_position_in_grid.x);
const int hk = int(threadgroup_position_in_grid.y);
const int b = int(threadgroup_position_in_grid.z);
const int sg = int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
const int G = Hq / Hkv;
const int R = G * Lq;
const int k_lo = c * chunk;
const int k_hi = min(S, k_lo + chunk);
const int kv_plane = (b * Hkv + hk) * S;
const float sc = scale[0];

float q_reg[MAX_ROWS][DPL];
float m_run[MAX_ROWS], l_run[MAX_ROWS], acc[MAX_ROWS][DPL];
for (int r = 0; r < MAX_ROWS; ++r) {
  m_run[r] = ORCHARD_NEG_INF;
  l_run[r] = 0.0f;
  const int hq = hk * G + r / max(Lq, 1);
  const int iq = r % max(Lq, 1);
  for (int i = 0; i < DPL; ++i) {
    const int d = lane + ORCHARD_SIMD_WIDTH * i;
    acc[r][i] = 0.0f;
    q_reg[r][i] = (r < R && d < D) ? float(q[((b * Hq + hq) * Lq + iq) * D + d]) * sc : 0.0f;
  }
}

for (int j = k_lo + sg; j < k_hi; j += NSG) {
  const int row = kv_plane + j;
  float kd[DPL], vd[DPL];
  for (int i = 0; i < DPL; ++i) {
    const int d = lane + ORCHARD_SIMD_WIDTH * i;
    kd[i] = d < D ? LOAD_K(row, d) : 0.0f;
    vd[i] = d < D ? LOAD_V(row, d) : 0.0f;
  }
  for (int r = 0; r < R; ++r) {
    // Query r sits at position S - Lq + r % Lq: causal, and within the window if there is one.
    // The test depends on j and r only, so the whole simdgroup agrees and reaches simd_sum together.
    const int pos = S - Lq + r % Lq;
    if (j > pos || (window > 0 && pos - j >= window)) continue;
    float part = 0.0f;
    for (int i = 0; i < DPL; ++i) part += q_reg[r][i] * kd[i];
    const float s = simd_sum(part);
    const float m_new = max(m_run[r], s);
    const float corr = exp(m_run[r] - m_new);
    const float p = exp(s - m_new);
    l_run[r] = l_run[r] * corr + p;
    for (int i = 0; i < DPL; ++i) acc[r][i] = acc[r][i] * corr + p * vd[i];
    m_run[r] = m_new;
  }
}

threadgroup float tg_m[NSG];
threadgroup float tg_l[NSG];
threadgroup float tg_acc[NSG * DPL * ORCHARD_SIMD_WIDTH];
for (int r = 0; r < R; ++r) {
  if (lane == 0) {
    tg_m[sg] = m_run[r];
    tg_l[sg] = l_run[r];
  }
  for (int i = 0; i < DPL; ++i) tg_acc[sg * DPL * ORCHARD_SIMD_WIDTH + lane + ORCHARD_SIMD_WIDTH * i] = acc[r][i];
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (sg == 0) {
    float m_all = ORCHARD_NEG_INF;
    for (int s2 = 0; s2 < NSG; ++s2) m_all = max(m_all, tg_m[s2]);
    const int out_row = ((b * Hq + hk * G + r / Lq) * Lq + r % Lq) * chunks + c;
    float l_all = 0.0f;
    float o[DPL];
    for (int i = 0; i < DPL; ++i) o[i] = 0.0f;
    if (m_all != ORCHARD_NEG_INF) {  // some key of this chunk is visible to row r
      for (int s2 = 0; s2 < NSG; ++s2) {
        const float w8 = tg_m[s2] == ORCHARD_NEG_INF ? 0.0f : exp(tg_m[s2] - m_all);
        l_all += tg_l[s2] * w8;
        for (int i = 0; i < DPL; ++i) o[i] += tg_acc[s2 * DPL * ORCHARD_SIMD_WIDTH + lane + ORCHARD_SIMD_WIDTH * i] * w8;
      }
      for (int i = 0; i < DPL; ++i) o[i] /= l_all;
    }
    for (int i = 0; i < DPL; ++i) {
      const int d = lane + ORCHARD_SIMD_WIDTH * i;
      if (d < D) o_part[out_row * D + d] = o[i];
    }
    if (lane == 0) {
      m_part[out_row] = m_all;
      l_part[out_row] = l_all;
    }
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
}

}

template [[host_name("custom_kernel_orchard_decode_attention_3ff96f7a9812__float16_t_4_16_4_4_128_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_t_floatc_float_float_float")]] [[kernel]] decltype(custom_kernel_orchard_decode_attention_3ff96f7a9812__float16_t_4_16_4_4_128_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_t_floatc_float_float_float<float16_t, 4, 16, 4, 4, 128>) custom_kernel_orchard_decode_attention_3ff96f7a9812__float16_t_4_16_4_4_128_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_t_floatc_float_float_float<float16_t, 4, 16, 4, 4, 128>;

// ---- instantiation 9 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
// Decode attention over a quantized KV cache in MLX's affine format along the head dimension:
// k is uint32 [B, Hkv, S, D * BITS / 32], k_scales / k_biases are [B, Hkv, S, D / GROUP_SIZE]
// (the layout mx.quantize gives the cache's last axis); the same for v.
#define KV_PER_WORD (32 / BITS)
#define KV_DEQUANT(packed, sc, bi, row, d)                                                         \
  (float(sc[(row) * (D / GROUP_SIZE) + (d) / GROUP_SIZE]) *                                        \
       float((packed[(row) * (D / KV_PER_WORD) + (d) / KV_PER_WORD] >> (BITS * ((d) % KV_PER_WORD))) & \
             ((1u << BITS) - 1u)) +                                                                \
   float(bi[(row) * (D / GROUP_SIZE) + (d) / GROUP_SIZE]))
#define LOAD_K(row, d) KV_DEQUANT(k, k_scales, k_biases, row, d)
#define LOAD_V(row, d) KV_DEQUANT(v, v_scales, v_biases, row, d)
template <typename T, int NSG, int MAX_ROWS, int DPL, int BITS, int GROUP_SIZE>
[[kernel]] void custom_kernel_orchard_decode_attention_3ff96f7a9812__float16_t_4_16_4_8_32_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_t_floatc_float_float_float(
  const device float16_t* q [[buffer(0)]],
  const device uint32_t* k [[buffer(1)]],
  const device float16_t* k_scales [[buffer(2)]],
  const device float16_t* k_biases [[buffer(3)]],
  const device uint32_t* v [[buffer(4)]],
  const device float16_t* v_scales [[buffer(5)]],
  const device float16_t* v_biases [[buffer(6)]],
  const device int32_t* params [[buffer(7)]],
  const constant float* scale [[buffer(8)]],
  device float* o_part [[buffer(9)]],
  device float* m_part [[buffer(10)]],
  device float* l_part [[buffer(11)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Flash-decoding, pass 1: one threadgroup per (chunk of keys, KV head, batch). It serves every query
// row that reads this KV head (the G = Hq / Hkv query heads times the Lq new tokens), so each key and
// value row is loaded once per chunk however large the GQA group is. Its NSG simdgroups take keys
// round-robin; lanes split the head dimension (d = lane + 32 i). Per row each simdgroup keeps an
// online softmax (running max m, denominator l, weighted sum of v); the simdgroups are then merged
// through threadgroup memory and the chunk's normalised partial output, m and l are written for
// pass 2 (decode_reduce) to combine across chunks. LOAD_K / LOAD_V come from kv_float.h or
// kv_quant.h, so the same body reads a float or a quantized cache.
// params: B, Hq, Hkv, Lq, S, D, window (0 = none), chunk, chunks.
const int Hq = params[1], Hkv = params[2], Lq = params[3], S = params[4], D = params[5];
const int window = params[6], chunk = params[7], chunks = params[8];
const int c = int(threadgroup_position_in_grid.x);
const int hk = int(threadgroup_position_in_grid.y);
const int b = int(threadgroup_position_in_grid.z);
const int sg = int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
const int G = Hq / Hkv;
const int R = G * Lq;
const int k_lo = c * chunk;
const int k_hi = min(S, k_lo + chunk);
const int kv_plane = (b * Hkv + hk) * S;
const float sc = scale[0];

float q_reg[MAX_ROWS][DPL];
float m_run[MAX_ROWS], l_run[MAX_ROWS], acc[MAX_ROWS][DPL];
for (int r = 0; r < MAX_ROWS; ++r) {
  m_run[r] = ORCHARD_NEG_INF;
  l_run[r] = 0.0f;
  const int hq = hk * G + r / max(Lq, 1);
  const int iq = r % max(Lq, 1);
  for (int i = 0; i < DPL; ++i) {
    const int d = lane + ORCHARD_SIMD_WIDTH * i;
    acc[r][i] = 0.0f;
    q_reg[r][i] = (r < R && d < D) ? float(q[((b * Hq + hq) * Lq + iq) * D + d]) * sc : 0.0f;
  }
}

for (int j = k_lo + sg; j < k_hi; j += NSG) {
  const int row = kv_plane + j;
  float kd[DPL], vd[DPL];
  for (int i = 0; i < DPL; ++i) {
    const int d = lane + ORCHARD_SIMD_WIDTH * i;
    kd[i] = d < D ? LOAD_K(row, d) : 0.0f;
    vd[i] = d < D ? LOAD_V(row, d) : 0.0f;
  }
  for (int r = 0; r < R; ++r) {
    // Query r sits at position S - Lq + r % Lq: causal, and within the window if there is one.
    // The test depends on j and r only, so the whole simdgroup agrees and reaches simd_sum together.
    const int pos = S - Lq + r % Lq;
    if (j > pos || (window > 0 && pos - j >= window)) continue;
    float part = 0.0f;
    for (int i = 0; i < DPL; ++i) part += q_reg[r][i] * kd[i];
    const float s = simd_sum(part);
    const float m_new = max(m_run[r], s);
    const float corr = exp(m_run[r] - m_new);
    const float p = exp(s - m_new);
    l_run[r] = l_run[r] * corr + p;
    for (int i = 0; i < DPL; ++i) acc[r][i] = acc[r][i] * corr + p * vd[i];
    m_run[r] = m_new;
  }
}

threadgroup float tg_m[NSG];
threadgroup float tg_l[NSG];
threadgroup float tg_acc[NSG * DPL * ORCHARD_SIMD_WIDTH];
for (int r = 0; r < R; ++r) {
  if (lane == 0) {
    tg_m[sg] = m_run[r];
    tg_l[sg] = l_run[r];
  }
  for (int i = 0; i < DPL; ++i) tg_acc[sg * DPL * ORCHARD_SIMD_WIDTH + lane + ORCHARD_SIMD_WIDTH * i] = acc[r][i];
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (sg == 0) {
    float m_all = ORCHARD_NEG_INF;
    for (int s2 = 0; s2 < NSG; ++s2) m_all = max(m_all, tg_m[s2]);
    const int out_row = ((b * Hq + hk * G + r / Lq) * Lq + r % Lq) * chunks + c;
    float l_all = 0.0f;
    float o[DPL];
    for (int i = 0; i < DPL; ++i) o[i] = 0.0f;
    if (m_all != ORCHARD_NEG_INF) {  // some key of this chunk is visible to row r
      for (int s2 = 0; s2 < NSG; ++s2) {
        const float w8 = tg_m[s2] == ORCHARD_NEG_INF ? 0.0f : exp(tg_m[s2] - m_all);
        l_all += tg_l[s2] * w8;
        for (int i = 0; i < DPL; ++i) o[i] += tg_acc[s2 * DPL * ORCHARD_SIMD_WIDTH + lane + ORCHARD_SIMD_WIDTH * i] * w8;
      }
      for (int i = 0; i < DPL; ++i) o[i] /= l_all;
    }
    for (int i = 0; i < DPL; ++i) {
      const int d = lane + ORCHARD_SIMD_WIDTH * i;
      if (d < D) o_part[out_row * D + d] = o[i];
    }
    if (lane == 0) {
      m_part[out_row] = m_all;
      l_part[out_row] = l_all;
    }
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
}

}

template [[host_name("custom_kernel_orchard_decode_attention_3ff96f7a9812__float16_t_4_16_4_8_32_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_t_floatc_float_float_float")]] [[kernel]] decltype(custom_kernel_orchard_decode_attention_3ff96f7a9812__float16_t_4_16_4_8_32_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_t_floatc_float_float_float<float16_t, 4, 16, 4, 8, 32>) custom_kernel_orchard_decode_attention_3ff96f7a9812__float16_t_4_16_4_8_32_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_t_floatc_float_float_float<float16_t, 4, 16, 4, 8, 32>;

// ---- instantiation 10 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
// Decode attention over a quantized KV cache in MLX's affine format along the head dimension:
// k is uint32 [B, Hkv, S, D * BITS / 32], k_scales / k_biases are [B, Hkv, S, D / GROUP_SIZE]
// (the layout mx.quantize gives the cache's last axis); the same for v.
#define KV_PER_WORD (32 / BITS)
#define KV_DEQUANT(packed, sc, bi, row, d)                                                         \
  (float(sc[(row) * (D / GROUP_SIZE) + (d) / GROUP_SIZE]) *                                        \
       float((packed[(row) * (D / KV_PER_WORD) + (d) / KV_PER_WORD] >> (BITS * ((d) % KV_PER_WORD))) & \
             ((1u << BITS) - 1u)) +                                                                \
   float(bi[(row) * (D / GROUP_SIZE) + (d) / GROUP_SIZE]))
#define LOAD_K(row, d) KV_DEQUANT(k, k_scales, k_biases, row, d)
#define LOAD_V(row, d) KV_DEQUANT(v, v_scales, v_biases, row, d)
template <typename T, int NSG, int MAX_ROWS, int DPL, int BITS, int GROUP_SIZE>
[[kernel]] void custom_kernel_orchard_decode_attention_3ff96f7a9812__float16_t_4_16_4_8_64_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_t_floatc_float_float_float(
  const device float16_t* q [[buffer(0)]],
  const device uint32_t* k [[buffer(1)]],
  const device float16_t* k_scales [[buffer(2)]],
  const device float16_t* k_biases [[buffer(3)]],
  const device uint32_t* v [[buffer(4)]],
  const device float16_t* v_scales [[buffer(5)]],
  const device float16_t* v_biases [[buffer(6)]],
  const device int32_t* params [[buffer(7)]],
  const constant float* scale [[buffer(8)]],
  device float* o_part [[buffer(9)]],
  device float* m_part [[buffer(10)]],
  device float* l_part [[buffer(11)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Flash-decoding, pass 1: one threadgroup per (chunk of keys, KV head, batch). It serves every query
// row that reads this KV head (the G = Hq / Hkv query heads times the Lq new tokens), so each key and
// value row is loaded once per chunk however large the GQA group is. Its NSG simdgroups take keys
// round-robin; lanes split the head dimension (d = lane + 32 i). Per row each simdgroup keeps an
// online softmax (running max m, denominator l, weighted sum of v); the simdgroups are then merged
// through threadgroup memory and the chunk's normalised partial output, m and l are written for
// pass 2 (decode_reduce) to combine across chunks. LOAD_K / LOAD_V come from kv_float.h or
// kv_quant.h, so the same body reads a float or a quantized cache.
// params: B, Hq, Hkv, Lq, S, D, window (0 = none), chunk, chunks.
const int Hq = params[1], Hkv = params[2], Lq = params[3], S = params[4], D = params[5];
const int window = params[6], chunk = params[7], chunks = params[8];
const int c = int(threadgroup_position_in_grid.x);
const int hk = int(threadgroup_position_in_grid.y);
const int b = int(threadgroup_position_in_grid.z);
const int sg = int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
const int G = Hq / Hkv;
const int R = G * Lq;
const int k_lo = c * chunk;
const int k_hi = min(S, k_lo + chunk);
const int kv_plane = (b * Hkv + hk) * S;
const float sc = scale[0];

float q_reg[MAX_ROWS][DPL];
float m_run[MAX_ROWS], l_run[MAX_ROWS], acc[MAX_ROWS][DPL];
for (int r = 0; r < MAX_ROWS; ++r) {
  m_run[r] = ORCHARD_NEG_INF;
  l_run[r] = 0.0f;
  const int hq = hk * G + r / max(Lq, 1);
  const int iq = r % max(Lq, 1);
  for (int i = 0; i < DPL; ++i) {
    const int d = lane + ORCHARD_SIMD_WIDTH * i;
    acc[r][i] = 0.0f;
    q_reg[r][i] = (r < R && d < D) ? float(q[((b * Hq + hq) * Lq + iq) * D + d]) * sc : 0.0f;
  }
}

for (int j = k_lo + sg; j < k_hi; j += NSG) {
  const int row = kv_plane + j;
  float kd[DPL], vd[DPL];
  for (int i = 0; i < DPL; ++i) {
    const int d = lane + ORCHARD_SIMD_WIDTH * i;
    kd[i] = d < D ? LOAD_K(row, d) : 0.0f;
    vd[i] = d < D ? LOAD_V(row, d) : 0.0f;
  }
  for (int r = 0; r < R; ++r) {
    // Query r sits at position S - Lq + r % Lq: causal, and within the window if there is one.
    // The test depends on j and r only, so the whole simdgroup agrees and reaches simd_sum together.
    const int pos = S - Lq + r % Lq;
    if (j > pos || (window > 0 && pos - j >= window)) continue;
    float part = 0.0f;
    for (int i = 0; i < DPL; ++i) part += q_reg[r][i] * kd[i];
    const float s = simd_sum(part);
    const float m_new = max(m_run[r], s);
    const float corr = exp(m_run[r] - m_new);
    const float p = exp(s - m_new);
    l_run[r] = l_run[r] * corr + p;
    for (int i = 0; i < DPL; ++i) acc[r][i] = acc[r][i] * corr + p * vd[i];
    m_run[r] = m_new;
  }
}

threadgroup float tg_m[NSG];
threadgroup float tg_l[NSG];
threadgroup float tg_acc[NSG * DPL * ORCHARD_SIMD_WIDTH];
for (int r = 0; r < R; ++r) {
  if (lane == 0) {
    tg_m[sg] = m_run[r];
    tg_l[sg] = l_run[r];
  }
  for (int i = 0; i < DPL; ++i) tg_acc[sg * DPL * ORCHARD_SIMD_WIDTH + lane + ORCHARD_SIMD_WIDTH * i] = acc[r][i];
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (sg == 0) {
    float m_all = ORCHARD_NEG_INF;
    for (int s2 = 0; s2 < NSG; ++s2) m_all = max(m_all, tg_m[s2]);
    const int out_row = ((b * Hq + hk * G + r / Lq) * Lq + r % Lq) * chunks + c;
    float l_all = 0.0f;
    float o[DPL];
    for (int i = 0; i < DPL; ++i) o[i] = 0.0f;
    if (m_all != ORCHARD_NEG_INF) {  // some key of this chunk is visible to row r
      for (int s2 = 0; s2 < NSG; ++s2) {
        const float w8 = tg_m[s2] == ORCHARD_NEG_INF ? 0.0f : exp(tg_m[s2] - m_all);
        l_all += tg_l[s2] * w8;
        for (int i = 0; i < DPL; ++i) o[i] += tg_acc[s2 * DPL * ORCHARD_SIMD_WIDTH + lane + ORCHARD_SIMD_WIDTH * i] * w8;
      }
      for (int i = 0; i < DPL; ++i) o[i] /= l_all;
    }
    for (int i = 0; i < DPL; ++i) {
      const int d = lane + ORCHARD_SIMD_WIDTH * i;
      if (d < D) o_part[out_row * D + d] = o[i];
    }
    if (lane == 0) {
      m_part[out_row] = m_all;
      l_part[out_row] = l_all;
    }
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
}

}

template [[host_name("custom_kernel_orchard_decode_attention_3ff96f7a9812__float16_t_4_16_4_8_64_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_t_floatc_float_float_float")]] [[kernel]] decltype(custom_kernel_orchard_decode_attention_3ff96f7a9812__float16_t_4_16_4_8_64_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_t_floatc_float_float_float<float16_t, 4, 16, 4, 8, 64>) custom_kernel_orchard_decode_attention_3ff96f7a9812__float16_t_4_16_4_8_64_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_t_floatc_float_float_float<float16_t, 4, 16, 4, 8, 64>;

// ---- instantiation 11 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
// Decode attention over a quantized KV cache in MLX's affine format along the head dimension:
// k is uint32 [B, Hkv, S, D * BITS / 32], k_scales / k_biases are [B, Hkv, S, D / GROUP_SIZE]
// (the layout mx.quantize gives the cache's last axis); the same for v.
#define KV_PER_WORD (32 / BITS)
#define KV_DEQUANT(packed, sc, bi, row, d)                                                         \
  (float(sc[(row) * (D / GROUP_SIZE) + (d) / GROUP_SIZE]) *                                        \
       float((packed[(row) * (D / KV_PER_WORD) + (d) / KV_PER_WORD] >> (BITS * ((d) % KV_PER_WORD))) & \
             ((1u << BITS) - 1u)) +                                                                \
   float(bi[(row) * (D / GROUP_SIZE) + (d) / GROUP_SIZE]))
#define LOAD_K(row, d) KV_DEQUANT(k, k_scales, k_biases, row, d)
#define LOAD_V(row, d) KV_DEQUANT(v, v_scales, v_biases, row, d)
template <typename T, int NSG, int MAX_ROWS, int DPL, int BITS, int GROUP_SIZE>
[[kernel]] void custom_kernel_orchard_decode_attention_3ff96f7a9812__float16_t_4_16_4_8_128_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_t_floatc_float_float_float(
  const device float16_t* q [[buffer(0)]],
  const device uint32_t* k [[buffer(1)]],
  const device float16_t* k_scales [[buffer(2)]],
  const device float16_t* k_biases [[buffer(3)]],
  const device uint32_t* v [[buffer(4)]],
  const device float16_t* v_scales [[buffer(5)]],
  const device float16_t* v_biases [[buffer(6)]],
  const device int32_t* params [[buffer(7)]],
  const constant float* scale [[buffer(8)]],
  device float* o_part [[buffer(9)]],
  device float* m_part [[buffer(10)]],
  device float* l_part [[buffer(11)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Flash-decoding, pass 1: one threadgroup per (chunk of keys, KV head, batch). It serves every query
// row that reads this KV head (the G = Hq / Hkv query heads times the Lq new tokens), so each key and
// value row is loaded once per chunk however large the GQA group is. Its NSG simdgroups take keys
// round-robin; lanes split the head dimension (d = lane + 32 i). Per row each simdgroup keeps an
// online softmax (running max m, denominator l, weighted sum of v); the simdgroups are then merged
// through threadgroup memory and the chunk's normalised partial output, m and l are written for
// pass 2 (decode_reduce) to combine across chunks. LOAD_K / LOAD_V come from kv_float.h or
// kv_quant.h, so the same body reads a float or a quantized cache.
// params: B, Hq, Hkv, Lq, S, D, window (0 = none), chunk, chunks.
const int Hq = params[1], Hkv = params[2], Lq = params[3], S = params[4], D = params[5];
const int window = params[6], chunk = params[7], chunks = params[8];
const int c = int(threadgroup_position_in_grid.x);
const int hk = int(threadgroup_position_in_grid.y);
const int b = int(threadgroup_position_in_grid.z);
const int sg = int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
const int G = Hq / Hkv;
const int R = G * Lq;
const int k_lo = c * chunk;
const int k_hi = min(S, k_lo + chunk);
const int kv_plane = (b * Hkv + hk) * S;
const float sc = scale[0];

float q_reg[MAX_ROWS][DPL];
float m_run[MAX_ROWS], l_run[MAX_ROWS], acc[MAX_ROWS][DPL];
for (int r = 0; r < MAX_ROWS; ++r) {
  m_run[r] = ORCHARD_NEG_INF;
  l_run[r] = 0.0f;
  const int hq = hk * G + r / max(Lq, 1);
  const int iq = r % max(Lq, 1);
  for (int i = 0; i < DPL; ++i) {
    const int d = lane + ORCHARD_SIMD_WIDTH * i;
    acc[r][i] = 0.0f;
    q_reg[r][i] = (r < R && d < D) ? float(q[((b * Hq + hq) * Lq + iq) * D + d]) * sc : 0.0f;
  }
}

for (int j = k_lo + sg; j < k_hi; j += NSG) {
  const int row = kv_plane + j;
  float kd[DPL], vd[DPL];
  for (int i = 0; i < DPL; ++i) {
    const int d = lane + ORCHARD_SIMD_WIDTH * i;
    kd[i] = d < D ? LOAD_K(row, d) : 0.0f;
    vd[i] = d < D ? LOAD_V(row, d) : 0.0f;
  }
  for (int r = 0; r < R; ++r) {
    // Query r sits at position S - Lq + r % Lq: causal, and within the window if there is one.
    // The test depends on j and r only, so the whole simdgroup agrees and reaches simd_sum together.
    const int pos = S - Lq + r % Lq;
    if (j > pos || (window > 0 && pos - j >= window)) continue;
    float part = 0.0f;
    for (int i = 0; i < DPL; ++i) part += q_reg[r][i] * kd[i];
    const float s = simd_sum(part);
    const float m_new = max(m_run[r], s);
    const float corr = exp(m_run[r] - m_new);
    const float p = exp(s - m_new);
    l_run[r] = l_run[r] * corr + p;
    for (int i = 0; i < DPL; ++i) acc[r][i] = acc[r][i] * corr + p * vd[i];
    m_run[r] = m_new;
  }
}

threadgroup float tg_m[NSG];
threadgroup float tg_l[NSG];
threadgroup float tg_acc[NSG * DPL * ORCHARD_SIMD_WIDTH];
for (int r = 0; r < R; ++r) {
  if (lane == 0) {
    tg_m[sg] = m_run[r];
    tg_l[sg] = l_run[r];
  }
  for (int i = 0; i < DPL; ++i) tg_acc[sg * DPL * ORCHARD_SIMD_WIDTH + lane + ORCHARD_SIMD_WIDTH * i] = acc[r][i];
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (sg == 0) {
    float m_all = ORCHARD_NEG_INF;
    for (int s2 = 0; s2 < NSG; ++s2) m_all = max(m_all, tg_m[s2]);
    const int out_row = ((b * Hq + hk * G + r / Lq) * Lq + r % Lq) * chunks + c;
    float l_all = 0.0f;
    float o[DPL];
    for (int i = 0; i < DPL; ++i) o[i] = 0.0f;
    if (m_all != ORCHARD_NEG_INF) {  // some key of this chunk is visible to row r
      for (int s2 = 0; s2 < NSG; ++s2) {
        const float w8 = tg_m[s2] == ORCHARD_NEG_INF ? 0.0f : exp(tg_m[s2] - m_all);
        l_all += tg_l[s2] * w8;
        for (int i = 0; i < DPL; ++i) o[i] += tg_acc[s2 * DPL * ORCHARD_SIMD_WIDTH + lane + ORCHARD_SIMD_WIDTH * i] * w8;
      }
      for (int i = 0; i < DPL; ++i) o[i] /= l_all;
    }
    for (int i = 0; i < DPL; ++i) {
      const int d = lane + ORCHARD_SIMD_WIDTH * i;
      if (d < D) o_part[out_row * D + d] = o[i];
    }
    if (lane == 0) {
      m_part[out_row] = m_all;
      l_part[out_row] = l_all;
    }
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
}

}

template [[host_name("custom_kernel_orchard_decode_attention_3ff96f7a9812__float16_t_4_16_4_8_128_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_t_floatc_float_float_float")]] [[kernel]] decltype(custom_kernel_orchard_decode_attention_3ff96f7a9812__float16_t_4_16_4_8_128_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_t_floatc_float_float_float<float16_t, 4, 16, 4, 8, 128>) custom_kernel_orchard_decode_attention_3ff96f7a9812__float16_t_4_16_4_8_128_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_t_floatc_float_float_float<float16_t, 4, 16, 4, 8, 128>;

// ---- instantiation 12 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
// Decode attention over a quantized KV cache in MLX's affine format along the head dimension:
// k is uint32 [B, Hkv, S, D * BITS / 32], k_scales / k_biases are [B, Hkv, S, D / GROUP_SIZE]
// (the layout mx.quantize gives the cache's last axis); the same for v.
#define KV_PER_WORD (32 / BITS)
#define KV_DEQUANT(packed, sc, bi, row, d)                                                         \
  (float(sc[(row) * (D / GROUP_SIZE) + (d) / GROUP_SIZE]) *                                        \
       float((packed[(row) * (D / KV_PER_WORD) + (d) / KV_PER_WORD] >> (BITS * ((d) % KV_PER_WORD))) & \
             ((1u << BITS) - 1u)) +                                                                \
   float(bi[(row) * (D / GROUP_SIZE) + (d) / GROUP_SIZE]))
#define LOAD_K(row, d) KV_DEQUANT(k, k_scales, k_biases, row, d)
#define LOAD_V(row, d) KV_DEQUANT(v, v_scales, v_biases, row, d)
template <typename T, int NSG, int MAX_ROWS, int DPL, int BITS, int GROUP_SIZE>
[[kernel]] void custom_kernel_orchard_decode_attention_3ff96f7a9812__bfloat16_t_4_16_4_4_32_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_t_floatc_float_float_float(
  const device bfloat16_t* q [[buffer(0)]],
  const device uint32_t* k [[buffer(1)]],
  const device bfloat16_t* k_scales [[buffer(2)]],
  const device bfloat16_t* k_biases [[buffer(3)]],
  const device uint32_t* v [[buffer(4)]],
  const device bfloat16_t* v_scales [[buffer(5)]],
  const device bfloat16_t* v_biases [[buffer(6)]],
  const device int32_t* params [[buffer(7)]],
  const constant float* scale [[buffer(8)]],
  device float* o_part [[buffer(9)]],
  device float* m_part [[buffer(10)]],
  device float* l_part [[buffer(11)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Flash-decoding, pass 1: one threadgroup per (chunk of keys, KV head, batch). It serves every query
// row that reads this KV head (the G = Hq / Hkv query heads times the Lq new tokens), so each key and
// value row is loaded once per chunk however large the GQA group is. Its NSG simdgroups take keys
// round-robin; lanes split the head dimension (d = lane + 32 i). Per row each simdgroup keeps an
// online softmax (running max m, denominator l, weighted sum of v); the simdgroups are then merged
// through threadgroup memory and the chunk's normalised partial output, m and l are written for
// pass 2 (decode_reduce) to combine across chunks. LOAD_K / LOAD_V come from kv_float.h or
// kv_quant.h, so the same body reads a float or a quantized cache.
// params: B, Hq, Hkv, Lq, S, D, window (0 = none), chunk, chunks.
const int Hq = params[1], Hkv = params[2], Lq = params[3], S = params[4], D = params[5];
const int window = params[6], chunk = params[7], chunks = params[8];
const int c = int(threadgroup_position_in_grid.x);
const int hk = int(threadgroup_position_in_grid.y);
const int b = int(threadgroup_position_in_grid.z);
const int sg = int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
const int G = Hq / Hkv;
const int R = G * Lq;
const int k_lo = c * chunk;
const int k_hi = min(S, k_lo + chunk);
const int kv_plane = (b * Hkv + hk) * S;
const float sc = scale[0];

float q_reg[MAX_ROWS][DPL];
float m_run[MAX_ROWS], l_run[MAX_ROWS], acc[MAX_ROWS][DPL];
for (int r = 0; r < MAX_ROWS; ++r) {
  m_run[r] = ORCHARD_NEG_INF;
  l_run[r] = 0.0f;
  const int hq = hk * G + r / max(Lq, 1);
  const int iq = r % max(Lq, 1);
  for (int i = 0; i < DPL; ++i) {
    const int d = lane + ORCHARD_SIMD_WIDTH * i;
    acc[r][i] = 0.0f;
    q_reg[r][i] = (r < R && d < D) ? float(q[((b * Hq + hq) * Lq + iq) * D + d]) * sc : 0.0f;
  }
}

for (int j = k_lo + sg; j < k_hi; j += NSG) {
  const int row = kv_plane + j;
  float kd[DPL], vd[DPL];
  for (int i = 0; i < DPL; ++i) {
    const int d = lane + ORCHARD_SIMD_WIDTH * i;
    kd[i] = d < D ? LOAD_K(row, d) : 0.0f;
    vd[i] = d < D ? LOAD_V(row, d) : 0.0f;
  }
  for (int r = 0; r < R; ++r) {
    // Query r sits at position S - Lq + r % Lq: causal, and within the window if there is one.
    // The test depends on j and r only, so the whole simdgroup agrees and reaches simd_sum together.
    const int pos = S - Lq + r % Lq;
    if (j > pos || (window > 0 && pos - j >= window)) continue;
    float part = 0.0f;
    for (int i = 0; i < DPL; ++i) part += q_reg[r][i] * kd[i];
    const float s = simd_sum(part);
    const float m_new = max(m_run[r], s);
    const float corr = exp(m_run[r] - m_new);
    const float p = exp(s - m_new);
    l_run[r] = l_run[r] * corr + p;
    for (int i = 0; i < DPL; ++i) acc[r][i] = acc[r][i] * corr + p * vd[i];
    m_run[r] = m_new;
  }
}

threadgroup float tg_m[NSG];
threadgroup float tg_l[NSG];
threadgroup float tg_acc[NSG * DPL * ORCHARD_SIMD_WIDTH];
for (int r = 0; r < R; ++r) {
  if (lane == 0) {
    tg_m[sg] = m_run[r];
    tg_l[sg] = l_run[r];
  }
  for (int i = 0; i < DPL; ++i) tg_acc[sg * DPL * ORCHARD_SIMD_WIDTH + lane + ORCHARD_SIMD_WIDTH * i] = acc[r][i];
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (sg == 0) {
    float m_all = ORCHARD_NEG_INF;
    for (int s2 = 0; s2 < NSG; ++s2) m_all = max(m_all, tg_m[s2]);
    const int out_row = ((b * Hq + hk * G + r / Lq) * Lq + r % Lq) * chunks + c;
    float l_all = 0.0f;
    float o[DPL];
    for (int i = 0; i < DPL; ++i) o[i] = 0.0f;
    if (m_all != ORCHARD_NEG_INF) {  // some key of this chunk is visible to row r
      for (int s2 = 0; s2 < NSG; ++s2) {
        const float w8 = tg_m[s2] == ORCHARD_NEG_INF ? 0.0f : exp(tg_m[s2] - m_all);
        l_all += tg_l[s2] * w8;
        for (int i = 0; i < DPL; ++i) o[i] += tg_acc[s2 * DPL * ORCHARD_SIMD_WIDTH + lane + ORCHARD_SIMD_WIDTH * i] * w8;
      }
      for (int i = 0; i < DPL; ++i) o[i] /= l_all;
    }
    for (int i = 0; i < DPL; ++i) {
      const int d = lane + ORCHARD_SIMD_WIDTH * i;
      if (d < D) o_part[out_row * D + d] = o[i];
    }
    if (lane == 0) {
      m_part[out_row] = m_all;
      l_part[out_row] = l_all;
    }
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
}

}

template [[host_name("custom_kernel_orchard_decode_attention_3ff96f7a9812__bfloat16_t_4_16_4_4_32_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_t_floatc_float_float_float")]] [[kernel]] decltype(custom_kernel_orchard_decode_attention_3ff96f7a9812__bfloat16_t_4_16_4_4_32_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_t_floatc_float_float_float<bfloat16_t, 4, 16, 4, 4, 32>) custom_kernel_orchard_decode_attention_3ff96f7a9812__bfloat16_t_4_16_4_4_32_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_t_floatc_float_float_float<bfloat16_t, 4, 16, 4, 4, 32>;

// ---- instantiation 13 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
// Decode attention over a quantized KV cache in MLX's affine format along the head dimension:
// k is uint32 [B, Hkv, S, D * BITS / 32], k_scales / k_biases are [B, Hkv, S, D / GROUP_SIZE]
// (the layout mx.quantize gives the cache's last axis); the same for v.
#define KV_PER_WORD (32 / BITS)
#define KV_DEQUANT(packed, sc, bi, row, d)                                                         \
  (float(sc[(row) * (D / GROUP_SIZE) + (d) / GROUP_SIZE]) *                                        \
       float((packed[(row) * (D / KV_PER_WORD) + (d) / KV_PER_WORD] >> (BITS * ((d) % KV_PER_WORD))) & \
             ((1u << BITS) - 1u)) +                                                                \
   float(bi[(row) * (D / GROUP_SIZE) + (d) / GROUP_SIZE]))
#define LOAD_K(row, d) KV_DEQUANT(k, k_scales, k_biases, row, d)
#define LOAD_V(row, d) KV_DEQUANT(v, v_scales, v_biases, row, d)
template <typename T, int NSG, int MAX_ROWS, int DPL, int BITS, int GROUP_SIZE>
[[kernel]] void custom_kernel_orchard_decode_attention_3ff96f7a9812__bfloat16_t_4_16_4_4_64_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_t_floatc_float_float_float(
  const device bfloat16_t* q [[buffer(0)]],
  const device uint32_t* k [[buffer(1)]],
  const device bfloat16_t* k_scales [[buffer(2)]],
  const device bfloat16_t* k_biases [[buffer(3)]],
  const device uint32_t* v [[buffer(4)]],
  const device bfloat16_t* v_scales [[buffer(5)]],
  const device bfloat16_t* v_biases [[buffer(6)]],
  const device int32_t* params [[buffer(7)]],
  const constant float* scale [[buffer(8)]],
  device float* o_part [[buffer(9)]],
  device float* m_part [[buffer(10)]],
  device float* l_part [[buffer(11)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Flash-decoding, pass 1: one threadgroup per (chunk of keys, KV head, batch). It serves every query
// row that reads this KV head (the G = Hq / Hkv query heads times the Lq new tokens), so each key and
// value row is loaded once per chunk however large the GQA group is. Its NSG simdgroups take keys
// round-robin; lanes split the head dimension (d = lane + 32 i). Per row each simdgroup keeps an
// online softmax (running max m, denominator l, weighted sum of v); the simdgroups are then merged
// through threadgroup memory and the chunk's normalised partial output, m and l are written for
// pass 2 (decode_reduce) to combine across chunks. LOAD_K / LOAD_V come from kv_float.h or
// kv_quant.h, so the same body reads a float or a quantized cache.
// params: B, Hq, Hkv, Lq, S, D, window (0 = none), chunk, chunks.
const int Hq = params[1], Hkv = params[2], Lq = params[3], S = params[4], D = params[5];
const int window = params[6], chunk = params[7], chunks = params[8];
const int c = int(threadgroup_position_in_grid.x);
const int hk = int(threadgroup_position_in_grid.y);
const int b = int(threadgroup_position_in_grid.z);
const int sg = int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
const int G = Hq / Hkv;
const int R = G * Lq;
const int k_lo = c * chunk;
const int k_hi = min(S, k_lo + chunk);
const int kv_plane = (b * Hkv + hk) * S;
const float sc = scale[0];

float q_reg[MAX_ROWS][DPL];
float m_run[MAX_ROWS], l_run[MAX_ROWS], acc[MAX_ROWS][DPL];
for (int r = 0; r < MAX_ROWS; ++r) {
  m_run[r] = ORCHARD_NEG_INF;
  l_run[r] = 0.0f;
  const int hq = hk * G + r / max(Lq, 1);
  const int iq = r % max(Lq, 1);
  for (int i = 0; i < DPL; ++i) {
    const int d = lane + ORCHARD_SIMD_WIDTH * i;
    acc[r][i] = 0.0f;
    q_reg[r][i] = (r < R && d < D) ? float(q[((b * Hq + hq) * Lq + iq) * D + d]) * sc : 0.0f;
  }
}

for (int j = k_lo + sg; j < k_hi; j += NSG) {
  const int row = kv_plane + j;
  float kd[DPL], vd[DPL];
  for (int i = 0; i < DPL; ++i) {
    const int d = lane + ORCHARD_SIMD_WIDTH * i;
    kd[i] = d < D ? LOAD_K(row, d) : 0.0f;
    vd[i] = d < D ? LOAD_V(row, d) : 0.0f;
  }
  for (int r = 0; r < R; ++r) {
    // Query r sits at position S - Lq + r % Lq: causal, and within the window if there is one.
    // The test depends on j and r only, so the whole simdgroup agrees and reaches simd_sum together.
    const int pos = S - Lq + r % Lq;
    if (j > pos || (window > 0 && pos - j >= window)) continue;
    float part = 0.0f;
    for (int i = 0; i < DPL; ++i) part += q_reg[r][i] * kd[i];
    const float s = simd_sum(part);
    const float m_new = max(m_run[r], s);
    const float corr = exp(m_run[r] - m_new);
    const float p = exp(s - m_new);
    l_run[r] = l_run[r] * corr + p;
    for (int i = 0; i < DPL; ++i) acc[r][i] = acc[r][i] * corr + p * vd[i];
    m_run[r] = m_new;
  }
}

threadgroup float tg_m[NSG];
threadgroup float tg_l[NSG];
threadgroup float tg_acc[NSG * DPL * ORCHARD_SIMD_WIDTH];
for (int r = 0; r < R; ++r) {
  if (lane == 0) {
    tg_m[sg] = m_run[r];
    tg_l[sg] = l_run[r];
  }
  for (int i = 0; i < DPL; ++i) tg_acc[sg * DPL * ORCHARD_SIMD_WIDTH + lane + ORCHARD_SIMD_WIDTH * i] = acc[r][i];
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (sg == 0) {
    float m_all = ORCHARD_NEG_INF;
    for (int s2 = 0; s2 < NSG; ++s2) m_all = max(m_all, tg_m[s2]);
    const int out_row = ((b * Hq + hk * G + r / Lq) * Lq + r % Lq) * chunks + c;
    float l_all = 0.0f;
    float o[DPL];
    for (int i = 0; i < DPL; ++i) o[i] = 0.0f;
    if (m_all != ORCHARD_NEG_INF) {  // some key of this chunk is visible to row r
      for (int s2 = 0; s2 < NSG; ++s2) {
        const float w8 = tg_m[s2] == ORCHARD_NEG_INF ? 0.0f : exp(tg_m[s2] - m_all);
        l_all += tg_l[s2] * w8;
        for (int i = 0; i < DPL; ++i) o[i] += tg_acc[s2 * DPL * ORCHARD_SIMD_WIDTH + lane + ORCHARD_SIMD_WIDTH * i] * w8;
      }
      for (int i = 0; i < DPL; ++i) o[i] /= l_all;
    }
    for (int i = 0; i < DPL; ++i) {
      const int d = lane + ORCHARD_SIMD_WIDTH * i;
      if (d < D) o_part[out_row * D + d] = o[i];
    }
    if (lane == 0) {
      m_part[out_row] = m_all;
      l_part[out_row] = l_all;
    }
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
}

}

template [[host_name("custom_kernel_orchard_decode_attention_3ff96f7a9812__bfloat16_t_4_16_4_4_64_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_t_floatc_float_float_float")]] [[kernel]] decltype(custom_kernel_orchard_decode_attention_3ff96f7a9812__bfloat16_t_4_16_4_4_64_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_t_floatc_float_float_float<bfloat16_t, 4, 16, 4, 4, 64>) custom_kernel_orchard_decode_attention_3ff96f7a9812__bfloat16_t_4_16_4_4_64_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_t_floatc_float_float_float<bfloat16_t, 4, 16, 4, 4, 64>;

// ---- instantiation 14 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
// Decode attention over a quantized KV cache in MLX's affine format along the head dimension:
// k is uint32 [B, Hkv, S, D * BITS / 32], k_scales / k_biases are [B, Hkv, S, D / GROUP_SIZE]
// (the layout mx.quantize gives the cache's last axis); the same for v.
#define KV_PER_WORD (32 / BITS)
#define KV_DEQUANT(packed, sc, bi, row, d)                                                         \
  (float(sc[(row) * (D / GROUP_SIZE) + (d) / GROUP_SIZE]) *                                        \
       float((packed[(row) * (D / KV_PER_WORD) + (d) / KV_PER_WORD] >> (BITS * ((d) % KV_PER_WORD))) & \
             ((1u << BITS) - 1u)) +                                                                \
   float(bi[(row) * (D / GROUP_SIZE) + (d) / GROUP_SIZE]))
#define LOAD_K(row, d) KV_DEQUANT(k, k_scales, k_biases, row, d)
#define LOAD_V(row, d) KV_DEQUANT(v, v_scales, v_biases, row, d)
template <typename T, int NSG, int MAX_ROWS, int DPL, int BITS, int GROUP_SIZE>
[[kernel]] void custom_kernel_orchard_decode_attention_3ff96f7a9812__bfloat16_t_4_16_4_4_128_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_t_floatc_float_float_float(
  const device bfloat16_t* q [[buffer(0)]],
  const device uint32_t* k [[buffer(1)]],
  const device bfloat16_t* k_scales [[buffer(2)]],
  const device bfloat16_t* k_biases [[buffer(3)]],
  const device uint32_t* v [[buffer(4)]],
  const device bfloat16_t* v_scales [[buffer(5)]],
  const device bfloat16_t* v_biases [[buffer(6)]],
  const device int32_t* params [[buffer(7)]],
  const constant float* scale [[buffer(8)]],
  device float* o_part [[buffer(9)]],
  device float* m_part [[buffer(10)]],
  device float* l_part [[buffer(11)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Flash-decoding, pass 1: one threadgroup per (chunk of keys, KV head, batch). It serves every query
// row that reads this KV head (the G = Hq / Hkv query heads times the Lq new tokens), so each key and
// value row is loaded once per chunk however large the GQA group is. Its NSG simdgroups take keys
// round-robin; lanes split the head dimension (d = lane + 32 i). Per row each simdgroup keeps an
// online softmax (running max m, denominator l, weighted sum of v); the simdgroups are then merged
// through threadgroup memory and the chunk's normalised partial output, m and l are written for
// pass 2 (decode_reduce) to combine across chunks. LOAD_K / LOAD_V come from kv_float.h or
// kv_quant.h, so the same body reads a float or a quantized cache.
// params: B, Hq, Hkv, Lq, S, D, window (0 = none), chunk, chunks.
const int Hq = params[1], Hkv = params[2], Lq = params[3], S = params[4], D = params[5];
const int window = params[6], chunk = params[7], chunks = params[8];
const int c = int(threadgroup_position_in_grid.x);
const int hk = int(threadgroup_position_in_grid.y);
const int b = int(threadgroup_position_in_grid.z);
const int sg = int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
const int G = Hq / Hkv;
const int R = G * Lq;
const int k_lo = c * chunk;
const int k_hi = min(S, k_lo + chunk);
const int kv_plane = (b * Hkv + hk) * S;
const float sc = scale[0];

float q_reg[MAX_ROWS][DPL];
float m_run[MAX_ROWS], l_run[MAX_ROWS], acc[MAX_ROWS][DPL];
for (int r = 0; r < MAX_ROWS; ++r) {
  m_run[r] = ORCHARD_NEG_INF;
  l_run[r] = 0.0f;
  const int hq = hk * G + r / max(Lq, 1);
  const int iq = r % max(Lq, 1);
  for (int i = 0; i < DPL; ++i) {
    const int d = lane + ORCHARD_SIMD_WIDTH * i;
    acc[r][i] = 0.0f;
    q_reg[r][i] = (r < R && d < D) ? float(q[((b * Hq + hq) * Lq + iq) * D + d]) * sc : 0.0f;
  }
}

for (int j = k_lo + sg; j < k_hi; j += NSG) {
  const int row = kv_plane + j;
  float kd[DPL], vd[DPL];
  for (int i = 0; i < DPL; ++i) {
    const int d = lane + ORCHARD_SIMD_WIDTH * i;
    kd[i] = d < D ? LOAD_K(row, d) : 0.0f;
    vd[i] = d < D ? LOAD_V(row, d) : 0.0f;
  }
  for (int r = 0; r < R; ++r) {
    // Query r sits at position S - Lq + r % Lq: causal, and within the window if there is one.
    // The test depends on j and r only, so the whole simdgroup agrees and reaches simd_sum together.
    const int pos = S - Lq + r % Lq;
    if (j > pos || (window > 0 && pos - j >= window)) continue;
    float part = 0.0f;
    for (int i = 0; i < DPL; ++i) part += q_reg[r][i] * kd[i];
    const float s = simd_sum(part);
    const float m_new = max(m_run[r], s);
    const float corr = exp(m_run[r] - m_new);
    const float p = exp(s - m_new);
    l_run[r] = l_run[r] * corr + p;
    for (int i = 0; i < DPL; ++i) acc[r][i] = acc[r][i] * corr + p * vd[i];
    m_run[r] = m_new;
  }
}

threadgroup float tg_m[NSG];
threadgroup float tg_l[NSG];
threadgroup float tg_acc[NSG * DPL * ORCHARD_SIMD_WIDTH];
for (int r = 0; r < R; ++r) {
  if (lane == 0) {
    tg_m[sg] = m_run[r];
    tg_l[sg] = l_run[r];
  }
  for (int i = 0; i < DPL; ++i) tg_acc[sg * DPL * ORCHARD_SIMD_WIDTH + lane + ORCHARD_SIMD_WIDTH * i] = acc[r][i];
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (sg == 0) {
    float m_all = ORCHARD_NEG_INF;
    for (int s2 = 0; s2 < NSG; ++s2) m_all = max(m_all, tg_m[s2]);
    const int out_row = ((b * Hq + hk * G + r / Lq) * Lq + r % Lq) * chunks + c;
    float l_all = 0.0f;
    float o[DPL];
    for (int i = 0; i < DPL; ++i) o[i] = 0.0f;
    if (m_all != ORCHARD_NEG_INF) {  // some key of this chunk is visible to row r
      for (int s2 = 0; s2 < NSG; ++s2) {
        const float w8 = tg_m[s2] == ORCHARD_NEG_INF ? 0.0f : exp(tg_m[s2] - m_all);
        l_all += tg_l[s2] * w8;
        for (int i = 0; i < DPL; ++i) o[i] += tg_acc[s2 * DPL * ORCHARD_SIMD_WIDTH + lane + ORCHARD_SIMD_WIDTH * i] * w8;
      }
      for (int i = 0; i < DPL; ++i) o[i] /= l_all;
    }
    for (int i = 0; i < DPL; ++i) {
      const int d = lane + ORCHARD_SIMD_WIDTH * i;
      if (d < D) o_part[out_row * D + d] = o[i];
    }
    if (lane == 0) {
      m_part[out_row] = m_all;
      l_part[out_row] = l_all;
    }
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
}

}

template [[host_name("custom_kernel_orchard_decode_attention_3ff96f7a9812__bfloat16_t_4_16_4_4_128_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_t_floatc_float_float_float")]] [[kernel]] decltype(custom_kernel_orchard_decode_attention_3ff96f7a9812__bfloat16_t_4_16_4_4_128_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_t_floatc_float_float_float<bfloat16_t, 4, 16, 4, 4, 128>) custom_kernel_orchard_decode_attention_3ff96f7a9812__bfloat16_t_4_16_4_4_128_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_t_floatc_float_float_float<bfloat16_t, 4, 16, 4, 4, 128>;

// ---- instantiation 15 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
// Decode attention over a quantized KV cache in MLX's affine format along the head dimension:
// k is uint32 [B, Hkv, S, D * BITS / 32], k_scales / k_biases are [B, Hkv, S, D / GROUP_SIZE]
// (the layout mx.quantize gives the cache's last axis); the same for v.
#define KV_PER_WORD (32 / BITS)
#define KV_DEQUANT(packed, sc, bi, row, d)                                                         \
  (float(sc[(row) * (D / GROUP_SIZE) + (d) / GROUP_SIZE]) *                                        \
       float((packed[(row) * (D / KV_PER_WORD) + (d) / KV_PER_WORD] >> (BITS * ((d) % KV_PER_WORD))) & \
             ((1u << BITS) - 1u)) +                                                                \
   float(bi[(row) * (D / GROUP_SIZE) + (d) / GROUP_SIZE]))
#define LOAD_K(row, d) KV_DEQUANT(k, k_scales, k_biases, row, d)
#define LOAD_V(row, d) KV_DEQUANT(v, v_scales, v_biases, row, d)
template <typename T, int NSG, int MAX_ROWS, int DPL, int BITS, int GROUP_SIZE>
[[kernel]] void custom_kernel_orchard_decode_attention_3ff96f7a9812__bfloat16_t_4_16_4_8_32_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_t_floatc_float_float_float(
  const device bfloat16_t* q [[buffer(0)]],
  const device uint32_t* k [[buffer(1)]],
  const device bfloat16_t* k_scales [[buffer(2)]],
  const device bfloat16_t* k_biases [[buffer(3)]],
  const device uint32_t* v [[buffer(4)]],
  const device bfloat16_t* v_scales [[buffer(5)]],
  const device bfloat16_t* v_biases [[buffer(6)]],
  const device int32_t* params [[buffer(7)]],
  const constant float* scale [[buffer(8)]],
  device float* o_part [[buffer(9)]],
  device float* m_part [[buffer(10)]],
  device float* l_part [[buffer(11)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Flash-decoding, pass 1: one threadgroup per (chunk of keys, KV head, batch). It serves every query
// row that reads this KV head (the G = Hq / Hkv query heads times the Lq new tokens), so each key and
// value row is loaded once per chunk however large the GQA group is. Its NSG simdgroups take keys
// round-robin; lanes split the head dimension (d = lane + 32 i). Per row each simdgroup keeps an
// online softmax (running max m, denominator l, weighted sum of v); the simdgroups are then merged
// through threadgroup memory and the chunk's normalised partial output, m and l are written for
// pass 2 (decode_reduce) to combine across chunks. LOAD_K / LOAD_V come from kv_float.h or
// kv_quant.h, so the same body reads a float or a quantized cache.
// params: B, Hq, Hkv, Lq, S, D, window (0 = none), chunk, chunks.
const int Hq = params[1], Hkv = params[2], Lq = params[3], S = params[4], D = params[5];
const int window = params[6], chunk = params[7], chunks = params[8];
const int c = int(threadgroup_position_in_grid.x);
const int hk = int(threadgroup_position_in_grid.y);
const int b = int(threadgroup_position_in_grid.z);
const int sg = int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
const int G = Hq / Hkv;
const int R = G * Lq;
const int k_lo = c * chunk;
const int k_hi = min(S, k_lo + chunk);
const int kv_plane = (b * Hkv + hk) * S;
const float sc = scale[0];

float q_reg[MAX_ROWS][DPL];
float m_run[MAX_ROWS], l_run[MAX_ROWS], acc[MAX_ROWS][DPL];
for (int r = 0; r < MAX_ROWS; ++r) {
  m_run[r] = ORCHARD_NEG_INF;
  l_run[r] = 0.0f;
  const int hq = hk * G + r / max(Lq, 1);
  const int iq = r % max(Lq, 1);
  for (int i = 0; i < DPL; ++i) {
    const int d = lane + ORCHARD_SIMD_WIDTH * i;
    acc[r][i] = 0.0f;
    q_reg[r][i] = (r < R && d < D) ? float(q[((b * Hq + hq) * Lq + iq) * D + d]) * sc : 0.0f;
  }
}

for (int j = k_lo + sg; j < k_hi; j += NSG) {
  const int row = kv_plane + j;
  float kd[DPL], vd[DPL];
  for (int i = 0; i < DPL; ++i) {
    const int d = lane + ORCHARD_SIMD_WIDTH * i;
    kd[i] = d < D ? LOAD_K(row, d) : 0.0f;
    vd[i] = d < D ? LOAD_V(row, d) : 0.0f;
  }
  for (int r = 0; r < R; ++r) {
    // Query r sits at position S - Lq + r % Lq: causal, and within the window if there is one.
    // The test depends on j and r only, so the whole simdgroup agrees and reaches simd_sum together.
    const int pos = S - Lq + r % Lq;
    if (j > pos || (window > 0 && pos - j >= window)) continue;
    float part = 0.0f;
    for (int i = 0; i < DPL; ++i) part += q_reg[r][i] * kd[i];
    const float s = simd_sum(part);
    const float m_new = max(m_run[r], s);
    const float corr = exp(m_run[r] - m_new);
    const float p = exp(s - m_new);
    l_run[r] = l_run[r] * corr + p;
    for (int i = 0; i < DPL; ++i) acc[r][i] = acc[r][i] * corr + p * vd[i];
    m_run[r] = m_new;
  }
}

threadgroup float tg_m[NSG];
threadgroup float tg_l[NSG];
threadgroup float tg_acc[NSG * DPL * ORCHARD_SIMD_WIDTH];
for (int r = 0; r < R; ++r) {
  if (lane == 0) {
    tg_m[sg] = m_run[r];
    tg_l[sg] = l_run[r];
  }
  for (int i = 0; i < DPL; ++i) tg_acc[sg * DPL * ORCHARD_SIMD_WIDTH + lane + ORCHARD_SIMD_WIDTH * i] = acc[r][i];
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (sg == 0) {
    float m_all = ORCHARD_NEG_INF;
    for (int s2 = 0; s2 < NSG; ++s2) m_all = max(m_all, tg_m[s2]);
    const int out_row = ((b * Hq + hk * G + r / Lq) * Lq + r % Lq) * chunks + c;
    float l_all = 0.0f;
    float o[DPL];
    for (int i = 0; i < DPL; ++i) o[i] = 0.0f;
    if (m_all != ORCHARD_NEG_INF) {  // some key of this chunk is visible to row r
      for (int s2 = 0; s2 < NSG; ++s2) {
        const float w8 = tg_m[s2] == ORCHARD_NEG_INF ? 0.0f : exp(tg_m[s2] - m_all);
        l_all += tg_l[s2] * w8;
        for (int i = 0; i < DPL; ++i) o[i] += tg_acc[s2 * DPL * ORCHARD_SIMD_WIDTH + lane + ORCHARD_SIMD_WIDTH * i] * w8;
      }
      for (int i = 0; i < DPL; ++i) o[i] /= l_all;
    }
    for (int i = 0; i < DPL; ++i) {
      const int d = lane + ORCHARD_SIMD_WIDTH * i;
      if (d < D) o_part[out_row * D + d] = o[i];
    }
    if (lane == 0) {
      m_part[out_row] = m_all;
      l_part[out_row] = l_all;
    }
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
}

}

template [[host_name("custom_kernel_orchard_decode_attention_3ff96f7a9812__bfloat16_t_4_16_4_8_32_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_t_floatc_float_float_float")]] [[kernel]] decltype(custom_kernel_orchard_decode_attention_3ff96f7a9812__bfloat16_t_4_16_4_8_32_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_t_floatc_float_float_float<bfloat16_t, 4, 16, 4, 8, 32>) custom_kernel_orchard_decode_attention_3ff96f7a9812__bfloat16_t_4_16_4_8_32_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_t_floatc_float_float_float<bfloat16_t, 4, 16, 4, 8, 32>;

// ---- instantiation 16 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
// Decode attention over a quantized KV cache in MLX's affine format along the head dimension:
// k is uint32 [B, Hkv, S, D * BITS / 32], k_scales / k_biases are [B, Hkv, S, D / GROUP_SIZE]
// (the layout mx.quantize gives the cache's last axis); the same for v.
#define KV_PER_WORD (32 / BITS)
#define KV_DEQUANT(packed, sc, bi, row, d)                                                         \
  (float(sc[(row) * (D / GROUP_SIZE) + (d) / GROUP_SIZE]) *                                        \
       float((packed[(row) * (D / KV_PER_WORD) + (d) / KV_PER_WORD] >> (BITS * ((d) % KV_PER_WORD))) & \
             ((1u << BITS) - 1u)) +                                                                \
   float(bi[(row) * (D / GROUP_SIZE) + (d) / GROUP_SIZE]))
#define LOAD_K(row, d) KV_DEQUANT(k, k_scales, k_biases, row, d)
#define LOAD_V(row, d) KV_DEQUANT(v, v_scales, v_biases, row, d)
template <typename T, int NSG, int MAX_ROWS, int DPL, int BITS, int GROUP_SIZE>
[[kernel]] void custom_kernel_orchard_decode_attention_3ff96f7a9812__bfloat16_t_4_16_4_8_64_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_t_floatc_float_float_float(
  const device bfloat16_t* q [[buffer(0)]],
  const device uint32_t* k [[buffer(1)]],
  const device bfloat16_t* k_scales [[buffer(2)]],
  const device bfloat16_t* k_biases [[buffer(3)]],
  const device uint32_t* v [[buffer(4)]],
  const device bfloat16_t* v_scales [[buffer(5)]],
  const device bfloat16_t* v_biases [[buffer(6)]],
  const device int32_t* params [[buffer(7)]],
  const constant float* scale [[buffer(8)]],
  device float* o_part [[buffer(9)]],
  device float* m_part [[buffer(10)]],
  device float* l_part [[buffer(11)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Flash-decoding, pass 1: one threadgroup per (chunk of keys, KV head, batch). It serves every query
// row that reads this KV head (the G = Hq / Hkv query heads times the Lq new tokens), so each key and
// value row is loaded once per chunk however large the GQA group is. Its NSG simdgroups take keys
// round-robin; lanes split the head dimension (d = lane + 32 i). Per row each simdgroup keeps an
// online softmax (running max m, denominator l, weighted sum of v); the simdgroups are then merged
// through threadgroup memory and the chunk's normalised partial output, m and l are written for
// pass 2 (decode_reduce) to combine across chunks. LOAD_K / LOAD_V come from kv_float.h or
// kv_quant.h, so the same body reads a float or a quantized cache.
// params: B, Hq, Hkv, Lq, S, D, window (0 = none), chunk, chunks.
const int Hq = params[1], Hkv = params[2], Lq = params[3], S = params[4], D = params[5];
const int window = params[6], chunk = params[7], chunks = params[8];
const int c = int(threadgroup_position_in_grid.x);
const int hk = int(threadgroup_position_in_grid.y);
const int b = int(threadgroup_position_in_grid.z);
const int sg = int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
const int G = Hq / Hkv;
const int R = G * Lq;
const int k_lo = c * chunk;
const int k_hi = min(S, k_lo + chunk);
const int kv_plane = (b * Hkv + hk) * S;
const float sc = scale[0];

float q_reg[MAX_ROWS][DPL];
float m_run[MAX_ROWS], l_run[MAX_ROWS], acc[MAX_ROWS][DPL];
for (int r = 0; r < MAX_ROWS; ++r) {
  m_run[r] = ORCHARD_NEG_INF;
  l_run[r] = 0.0f;
  const int hq = hk * G + r / max(Lq, 1);
  const int iq = r % max(Lq, 1);
  for (int i = 0; i < DPL; ++i) {
    const int d = lane + ORCHARD_SIMD_WIDTH * i;
    acc[r][i] = 0.0f;
    q_reg[r][i] = (r < R && d < D) ? float(q[((b * Hq + hq) * Lq + iq) * D + d]) * sc : 0.0f;
  }
}

for (int j = k_lo + sg; j < k_hi; j += NSG) {
  const int row = kv_plane + j;
  float kd[DPL], vd[DPL];
  for (int i = 0; i < DPL; ++i) {
    const int d = lane + ORCHARD_SIMD_WIDTH * i;
    kd[i] = d < D ? LOAD_K(row, d) : 0.0f;
    vd[i] = d < D ? LOAD_V(row, d) : 0.0f;
  }
  for (int r = 0; r < R; ++r) {
    // Query r sits at position S - Lq + r % Lq: causal, and within the window if there is one.
    // The test depends on j and r only, so the whole simdgroup agrees and reaches simd_sum together.
    const int pos = S - Lq + r % Lq;
    if (j > pos || (window > 0 && pos - j >= window)) continue;
    float part = 0.0f;
    for (int i = 0; i < DPL; ++i) part += q_reg[r][i] * kd[i];
    const float s = simd_sum(part);
    const float m_new = max(m_run[r], s);
    const float corr = exp(m_run[r] - m_new);
    const float p = exp(s - m_new);
    l_run[r] = l_run[r] * corr + p;
    for (int i = 0; i < DPL; ++i) acc[r][i] = acc[r][i] * corr + p * vd[i];
    m_run[r] = m_new;
  }
}

threadgroup float tg_m[NSG];
threadgroup float tg_l[NSG];
threadgroup float tg_acc[NSG * DPL * ORCHARD_SIMD_WIDTH];
for (int r = 0; r < R; ++r) {
  if (lane == 0) {
    tg_m[sg] = m_run[r];
    tg_l[sg] = l_run[r];
  }
  for (int i = 0; i < DPL; ++i) tg_acc[sg * DPL * ORCHARD_SIMD_WIDTH + lane + ORCHARD_SIMD_WIDTH * i] = acc[r][i];
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (sg == 0) {
    float m_all = ORCHARD_NEG_INF;
    for (int s2 = 0; s2 < NSG; ++s2) m_all = max(m_all, tg_m[s2]);
    const int out_row = ((b * Hq + hk * G + r / Lq) * Lq + r % Lq) * chunks + c;
    float l_all = 0.0f;
    float o[DPL];
    for (int i = 0; i < DPL; ++i) o[i] = 0.0f;
    if (m_all != ORCHARD_NEG_INF) {  // some key of this chunk is visible to row r
      for (int s2 = 0; s2 < NSG; ++s2) {
        const float w8 = tg_m[s2] == ORCHARD_NEG_INF ? 0.0f : exp(tg_m[s2] - m_all);
        l_all += tg_l[s2] * w8;
        for (int i = 0; i < DPL; ++i) o[i] += tg_acc[s2 * DPL * ORCHARD_SIMD_WIDTH + lane + ORCHARD_SIMD_WIDTH * i] * w8;
      }
      for (int i = 0; i < DPL; ++i) o[i] /= l_all;
    }
    for (int i = 0; i < DPL; ++i) {
      const int d = lane + ORCHARD_SIMD_WIDTH * i;
      if (d < D) o_part[out_row * D + d] = o[i];
    }
    if (lane == 0) {
      m_part[out_row] = m_all;
      l_part[out_row] = l_all;
    }
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
}

}

template [[host_name("custom_kernel_orchard_decode_attention_3ff96f7a9812__bfloat16_t_4_16_4_8_64_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_t_floatc_float_float_float")]] [[kernel]] decltype(custom_kernel_orchard_decode_attention_3ff96f7a9812__bfloat16_t_4_16_4_8_64_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_t_floatc_float_float_float<bfloat16_t, 4, 16, 4, 8, 64>) custom_kernel_orchard_decode_attention_3ff96f7a9812__bfloat16_t_4_16_4_8_64_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_t_floatc_float_float_float<bfloat16_t, 4, 16, 4, 8, 64>;

// ---- instantiation 17 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
// Decode attention over a quantized KV cache in MLX's affine format along the head dimension:
// k is uint32 [B, Hkv, S, D * BITS / 32], k_scales / k_biases are [B, Hkv, S, D / GROUP_SIZE]
// (the layout mx.quantize gives the cache's last axis); the same for v.
#define KV_PER_WORD (32 / BITS)
#define KV_DEQUANT(packed, sc, bi, row, d)                                                         \
  (float(sc[(row) * (D / GROUP_SIZE) + (d) / GROUP_SIZE]) *                                        \
       float((packed[(row) * (D / KV_PER_WORD) + (d) / KV_PER_WORD] >> (BITS * ((d) % KV_PER_WORD))) & \
             ((1u << BITS) - 1u)) +                                                                \
   float(bi[(row) * (D / GROUP_SIZE) + (d) / GROUP_SIZE]))
#define LOAD_K(row, d) KV_DEQUANT(k, k_scales, k_biases, row, d)
#define LOAD_V(row, d) KV_DEQUANT(v, v_scales, v_biases, row, d)
template <typename T, int NSG, int MAX_ROWS, int DPL, int BITS, int GROUP_SIZE>
[[kernel]] void custom_kernel_orchard_decode_attention_3ff96f7a9812__bfloat16_t_4_16_4_8_128_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_t_floatc_float_float_float(
  const device bfloat16_t* q [[buffer(0)]],
  const device uint32_t* k [[buffer(1)]],
  const device bfloat16_t* k_scales [[buffer(2)]],
  const device bfloat16_t* k_biases [[buffer(3)]],
  const device uint32_t* v [[buffer(4)]],
  const device bfloat16_t* v_scales [[buffer(5)]],
  const device bfloat16_t* v_biases [[buffer(6)]],
  const device int32_t* params [[buffer(7)]],
  const constant float* scale [[buffer(8)]],
  device float* o_part [[buffer(9)]],
  device float* m_part [[buffer(10)]],
  device float* l_part [[buffer(11)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Flash-decoding, pass 1: one threadgroup per (chunk of keys, KV head, batch). It serves every query
// row that reads this KV head (the G = Hq / Hkv query heads times the Lq new tokens), so each key and
// value row is loaded once per chunk however large the GQA group is. Its NSG simdgroups take keys
// round-robin; lanes split the head dimension (d = lane + 32 i). Per row each simdgroup keeps an
// online softmax (running max m, denominator l, weighted sum of v); the simdgroups are then merged
// through threadgroup memory and the chunk's normalised partial output, m and l are written for
// pass 2 (decode_reduce) to combine across chunks. LOAD_K / LOAD_V come from kv_float.h or
// kv_quant.h, so the same body reads a float or a quantized cache.
// params: B, Hq, Hkv, Lq, S, D, window (0 = none), chunk, chunks.
const int Hq = params[1], Hkv = params[2], Lq = params[3], S = params[4], D = params[5];
const int window = params[6], chunk = params[7], chunks = params[8];
const int c = int(threadgroup_position_in_grid.x);
const int hk = int(threadgroup_position_in_grid.y);
const int b = int(threadgroup_position_in_grid.z);
const int sg = int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
const int G = Hq / Hkv;
const int R = G * Lq;
const int k_lo = c * chunk;
const int k_hi = min(S, k_lo + chunk);
const int kv_plane = (b * Hkv + hk) * S;
const float sc = scale[0];

float q_reg[MAX_ROWS][DPL];
float m_run[MAX_ROWS], l_run[MAX_ROWS], acc[MAX_ROWS][DPL];
for (int r = 0; r < MAX_ROWS; ++r) {
  m_run[r] = ORCHARD_NEG_INF;
  l_run[r] = 0.0f;
  const int hq = hk * G + r / max(Lq, 1);
  const int iq = r % max(Lq, 1);
  for (int i = 0; i < DPL; ++i) {
    const int d = lane + ORCHARD_SIMD_WIDTH * i;
    acc[r][i] = 0.0f;
    q_reg[r][i] = (r < R && d < D) ? float(q[((b * Hq + hq) * Lq + iq) * D + d]) * sc : 0.0f;
  }
}

for (int j = k_lo + sg; j < k_hi; j += NSG) {
  const int row = kv_plane + j;
  float kd[DPL], vd[DPL];
  for (int i = 0; i < DPL; ++i) {
    const int d = lane + ORCHARD_SIMD_WIDTH * i;
    kd[i] = d < D ? LOAD_K(row, d) : 0.0f;
    vd[i] = d < D ? LOAD_V(row, d) : 0.0f;
  }
  for (int r = 0; r < R; ++r) {
    // Query r sits at position S - Lq + r % Lq: causal, and within the window if there is one.
    // The test depends on j and r only, so the whole simdgroup agrees and reaches simd_sum together.
    const int pos = S - Lq + r % Lq;
    if (j > pos || (window > 0 && pos - j >= window)) continue;
    float part = 0.0f;
    for (int i = 0; i < DPL; ++i) part += q_reg[r][i] * kd[i];
    const float s = simd_sum(part);
    const float m_new = max(m_run[r], s);
    const float corr = exp(m_run[r] - m_new);
    const float p = exp(s - m_new);
    l_run[r] = l_run[r] * corr + p;
    for (int i = 0; i < DPL; ++i) acc[r][i] = acc[r][i] * corr + p * vd[i];
    m_run[r] = m_new;
  }
}

threadgroup float tg_m[NSG];
threadgroup float tg_l[NSG];
threadgroup float tg_acc[NSG * DPL * ORCHARD_SIMD_WIDTH];
for (int r = 0; r < R; ++r) {
  if (lane == 0) {
    tg_m[sg] = m_run[r];
    tg_l[sg] = l_run[r];
  }
  for (int i = 0; i < DPL; ++i) tg_acc[sg * DPL * ORCHARD_SIMD_WIDTH + lane + ORCHARD_SIMD_WIDTH * i] = acc[r][i];
  threadgroup_barrier(mem_flags::mem_threadgroup);
  if (sg == 0) {
    float m_all = ORCHARD_NEG_INF;
    for (int s2 = 0; s2 < NSG; ++s2) m_all = max(m_all, tg_m[s2]);
    const int out_row = ((b * Hq + hk * G + r / Lq) * Lq + r % Lq) * chunks + c;
    float l_all = 0.0f;
    float o[DPL];
    for (int i = 0; i < DPL; ++i) o[i] = 0.0f;
    if (m_all != ORCHARD_NEG_INF) {  // some key of this chunk is visible to row r
      for (int s2 = 0; s2 < NSG; ++s2) {
        const float w8 = tg_m[s2] == ORCHARD_NEG_INF ? 0.0f : exp(tg_m[s2] - m_all);
        l_all += tg_l[s2] * w8;
        for (int i = 0; i < DPL; ++i) o[i] += tg_acc[s2 * DPL * ORCHARD_SIMD_WIDTH + lane + ORCHARD_SIMD_WIDTH * i] * w8;
      }
      for (int i = 0; i < DPL; ++i) o[i] /= l_all;
    }
    for (int i = 0; i < DPL; ++i) {
      const int d = lane + ORCHARD_SIMD_WIDTH * i;
      if (d < D) o_part[out_row * D + d] = o[i];
    }
    if (lane == 0) {
      m_part[out_row] = m_all;
      l_part[out_row] = l_all;
    }
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
}

}

template [[host_name("custom_kernel_orchard_decode_attention_3ff96f7a9812__bfloat16_t_4_16_4_8_128_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_t_floatc_float_float_float")]] [[kernel]] decltype(custom_kernel_orchard_decode_attention_3ff96f7a9812__bfloat16_t_4_16_4_8_128_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_t_floatc_float_float_float<bfloat16_t, 4, 16, 4, 8, 128>) custom_kernel_orchard_decode_attention_3ff96f7a9812__bfloat16_t_4_16_4_8_128_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_t_floatc_float_float_float<bfloat16_t, 4, 16, 4, 8, 128>;

