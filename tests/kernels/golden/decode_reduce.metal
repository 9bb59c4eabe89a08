// ---- instantiation 0 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T>
[[kernel]] void custom_kernel_orchard_decode_reduce_974eb07622bd__float_float_float_float_int32_tc_float(
  const device float* o_part [[buffer(0)]],
  const device float* m_part [[buffer(1)]],
  const device float* l_part [[buffer(2)]],
  const constant int32_t* params [[buffer(3)]],
  device float* out [[buffer(4)]],
  uint3 thread_position_in_grid [[thread_position_in_grid]]) {
// Flash-decoding, pass 2: merge the per-chunk partial outputs of decode_attention. One thread per
// (query row, d): out = sum_c o_c * l_c * exp(m_c - M) / sum_c l_c * exp(m_c - M), M = max_c m_c.
// Chunks no key of which the row may see have l_c = 0 and drop out.
// params: rows (B * Hq * Lq), D, chunks.
const int rows = params[0], D = params[1], chunks = params[2];
const int d = int(thread_position_in_grid.x);
const int row = int(thread_position_in_grid.y);
if (d < D && row < rows) {
  float m_all = ORCHARD_NEG_INF;
  for (int c = 0; c < chunks; ++c) m_all = max(m_all, m_part[row * chunks + c]);
  float num = 0.0f, den = 0.0f;
  for (int c = 0; c < chunks; ++c) {
    const float l = l_part[row * chunks + c];
    if (l > 0.0f) {
      const float w8 = l * exp(m_part[row * chunks + c] - m_all);
      num += o_part[(row * chunks + c) * D + d] * w8;
      den += w8;
    }
  }
  out[row * D + d] = static_cast<T>(den > 0.0f ? num / den : 0.0f);
}

}

template [[host_name("custom_kernel_orchard_decode_reduce_974eb07622bd__float_float_float_float_int32_tc_float")]] [[kernel]] decltype(custom_kernel_orchard_decode_reduce_974eb07622bd__float_float_float_float_int32_tc_float<float>) custom_kernel_orchard_decode_reduce_974eb07622bd__float_float_float_float_int32_tc_float<float>;

// ---- instantiation 1 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T>
[[kernel]] void custom_kernel_orchard_decode_reduce_974eb07622bd__float16_t_float_float_float_int32_tc_float16_t(
  const device float* o_part [[buffer(0)]],
  const device float* m_part [[buffer(1)]],
  const device float* l_part [[buffer(2)]],
  const constant int32_t* params [[buffer(3)]],
  device float16_t* out [[buffer(4)]],
  uint3 thread_position_in_grid [[thread_position_in_grid]]) {
// Flash-decoding, pass 2: merge the per-chunk partial outputs of decode_attention. One thread per
// (query row, d): out = sum_c o_c * l_c * exp(m_c - M) / sum_c l_c * exp(m_c - M), M = max_c m_c.
// Chunks no key of which the row may see have l_c = 0 and drop out.
// params: rows (B * Hq * Lq), D, chunks.
const int rows = params[0], D = params[1], chunks = params[2];
const int d = int(thread_position_in_grid.x);
const int row = int(thread_position_in_grid.y);
if (d < D && row < rows) {
  float m_all = ORCHARD_NEG_INF;
  for (int c = 0; c < chunks; ++c) m_all = max(m_all, m_part[row * chunks + c]);
  float num = 0.0f, den = 0.0f;
  for (int c = 0; c < chunks; ++c) {
    const float l = l_part[row * chunks + c];
    if (l > 0.0f) {
      const float w8 = l * exp(m_part[row * chunks + c] - m_all);
      num += o_part[(row * chunks + c) * D + d] * w8;
      den += w8;
    }
  }
  out[row * D + d] = static_cast<T>(den > 0.0f ? num / den : 0.0f);
}

}

template [[host_name("custom_kernel_orchard_decode_reduce_974eb07622bd__float16_t_float_float_float_int32_tc_float16_t")]] [[kernel]] decltype(custom_kernel_orchard_decode_reduce_974eb07622bd__float16_t_float_float_float_int32_tc_float16_t<float16_t>) custom_kernel_orchard_decode_reduce_974eb07622bd__float16_t_float_float_float_int32_tc_float16_t<float16_t>;

// ---- instantiation 2 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T>
[[kernel]] void custom_kernel_orchard_decode_reduce_974eb07622bd__bfloat16_t_float_float_float_int32_tc_bfloat16_t(
  const device float* o_part [[buffer(0)]],
  const device float* m_part [[buffer(1)]],
  const device float* l_part [[buffer(2)]],
  const constant int32_t* params [[buffer(3)]],
  device bfloat16_t* out [[buffer(4)]],
  uint3 thread_position_in_grid [[thread_position_in_grid]]) {
// Flash-decoding, pass 2: merge the per-chunk partial outputs of decode_attention. One thread per
// (query row, d): out = sum_c o_c * l_c * exp(m_c - M) / sum_c l_c * exp(m_c - M), M = max_c m_c.
// Chunks no key of which the row may see have l_c = 0 and drop out.
// params: rows (B * Hq * Lq), D, chunks.
const int rows = params[0], D = params[1], chunks = params[2];
const int d = int(thread_position_in_grid.x);
const int row = int(thread_position_in_grid.y);
if (d < D && row < rows) {
  float m_all = ORCHARD_NEG_INF;
  for (int c = 0; c < chunks; ++c) m_all = max(m_all, m_part[row * chunks + c]);
  float num = 0.0f, den = 0.0f;
  for (int c = 0; c < chunks; ++c) {
    const float l = l_part[row * chunks + c];
    if (l > 0.0f) {
      const float w8 = l * exp(m_part[row * chunks + c] - m_all);
      num += o_part[(row * chunks + c) * D + d] * w8;
      den += w8;
    }
  }
  out[row * D + d] = static_cast<T>(den > 0.0f ? num / den : 0.0f);
}

}

template [[host_name("custom_kernel_orchard_decode_reduce_974eb07622bd__bfloat16_t_float_float_float_int32_tc_bfloat16_t")]] [[kernel]] decltype(custom_kernel_orchard_decode_reduce_974eb07622bd__bfloat16_t_float_float_float_int32_tc_bfloat16_t<bfloat16_t>) custom_kernel_orchard_decode_reduce_974eb07622bd__bfloat16_t_float_float_float_int32_tc_bfloat16_t<bfloat16_t>;

