// ---- instantiation 0 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP, int ACT>
[[kernel]] void custom_kernel_orchard_qswiglu_cd7b6f805635__float_4_32_8_2_0_float_uint32_t_float_float_uint32_t_float_float_int32_tc_float(
  const device float* x [[buffer(0)]],
  const device uint32_t* wg [[buffer(1)]],
  const device float* sg [[buffer(2)]],
  const device float* bg [[buffer(3)]],
  const device uint32_t* wu [[buffer(4)]],
  const device float* su [[buffer(5)]],
  const device float* bu [[buffer(6)]],
  const constant int32_t* dims [[buffer(7)]],
  device float* out [[buffer(8)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Fused gated MLP input: out[m, n] = act(x[m] . Wg[n]) * (x[m] . Wu[n]) with act = SiLU (ACT 0) or
// tanh-approximated GELU (ACT 1), both weights in MLX's affine quantized format.
// Same layout as qmv: one simdgroup per output row, lanes over consecutive packed words; each x
// element a lane loads is used for both the gate and the up row, and the two intermediate vectors
// never reach memory (the unfused form writes and re-reads 2 * M * N values).
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  float acc_g[MAX_M], acc_u[MAX_M];
  for (int m = 0; m < MAX_M; ++m) { acc_g[m] = 0.0f; acc_u[m] = 0.0f; }
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t pg = wg[n * words + wi];
    const uint32_t pu = wu[n * words + wi];
    const int k0 = wi * PER_WORD;
    const int g = n * groups + k0 / GROUP_SIZE;
    const float s_g = float(sg[g]), b_g = float(bg[g]);
    const float s_u = float(su[g]), b_u = float(bu[g]);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot_g = 0.0f, dot_u = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot_g += xv * float((pg >> (BITS * j)) & MASK);
          dot_u += xv * float((pu >> (BITS * j)) & MASK);
          xsum += xv;
        }
        acc_g[m] += s_g * dot_g + b_g * xsum;
        acc_u[m] += s_u * dot_u + b_u * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {
      const float gate = simd_sum(acc_g[m]);
      const float up = simd_sum(acc_u[m]);
      if (lane == 0) {
        float a;
        if (ACT == 0) {
          a = gate / (1.0f + exp(-gate));
        } else {
          const float c = 0.7978845608028654f;  // sqrt(2 / pi)
          a = 0.5f * gate * (1.0f + tanh(c * (gate + 0.044715f * gate * gate * gate)));
        }
        out[m * N + n] = static_cast<T>(a * up);
      }
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qswiglu_cd7b6f805635__float_4_32_8_2_0_float_uint32_t_float_float_uint32_t_float_float_int32_tc_float")]] [[kernel]] decltype(custom_kernel_orchard_qswiglu_cd7b6f805635__float_4_32_8_2_0_float_uint32_t_float_float_uint32_t_float_float_int32_tc_float<float, 4, 32, 8, 2, 0>) custom_kernel_orchard_qswiglu_cd7b6f805635__float_4_32_8_2_0_float_uint32_t_float_float_uint32_t_float_float_int32_tc_float<float, 4, 32, 8, 2, 0>;

// ---- instantiation 1 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP, int ACT>
[[kernel]] void custom_kernel_orchard_qswiglu_cd7b6f805635__float_4_32_8_2_1_float_uint32_t_float_float_uint32_t_float_float_int32_tc_float(
  const device float* x [[buffer(0)]],
  const device uint32_t* wg [[buffer(1)]],
  const device float* sg [[buffer(2)]],
  const device float* bg [[buffer(3)]],
  const device uint32_t* wu [[buffer(4)]],
  const device float* su [[buffer(5)]],
  const device float* bu [[buffer(6)]],
  const constant int32_t* dims [[buffer(7)]],
  device float* out [[buffer(8)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Fused gated MLP input: out[m, n] = act(x[m] . Wg[n]) * (x[m] . Wu[n]) with act = SiLU (ACT 0) or
// tanh-approximated GELU (ACT 1), both weights in MLX's affine quantized format.
// Same layout as qmv: one simdgroup per output row, lanes over consecutive packed words; each x
// element a lane loads is used for both the gate and the up row, and the two intermediate vectors
// never reach memory (the unfused form writes and re-reads 2 * M * N values).
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  float acc_g[MAX_M], acc_u[MAX_M];
  for (int m = 0; m < MAX_M; ++m) { acc_g[m] = 0.0f; acc_u[m] = 0.0f; }
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t pg = wg[n * words + wi];
    const uint32_t pu = wu[n * words + wi];
    const int k0 = wi * PER_WORD;
    const int g = n * groups + k0 / GROUP_SIZE;
    const float s_g = float(sg[g]), b_g = float(bg[g]);
    const float s_u = float(su[g]), b_u = float(bu[g]);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot_g = 0.0f, dot_u = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot_g += xv * float((pg >> (BITS * j)) & MASK);
          dot_u += xv * float((pu >> (BITS * j)) & MASK);
          xsum += xv;
        }
        acc_g[m] += s_g * dot_g + b_g * xsum;
        acc_u[m] += s_u * dot_u + b_u * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {
      const float gate = simd_sum(acc_g[m]);
      const float up = simd_sum(acc_u[m]);
      if (lane == 0) {
        float a;
        if (ACT == 0) {
          a = gate / (1.0f + exp(-gate));
        } else {
          const float c = 0.7978845608028654f;  // sqrt(2 / pi)
          a = 0.5f * gate * (1.0f + tanh(c * (gate + 0.044715f * gate * gate * gate)));
        }
        out[m * N + n] = static_cast<T>(a * up);
      }
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qswiglu_cd7b6f805635__float_4_32_8_2_1_float_uint32_t_float_float_uint32_t_float_float_int32_tc_float")]] [[kernel]] decltype(custom_kernel_orchard_qswiglu_cd7b6f805635__float_4_32_8_2_1_float_uint32_t_float_float_uint32_t_float_float_int32_tc_float<float, 4, 32, 8, 2, 1>) custom_kernel_orchard_qswiglu_cd7b6f805635__float_4_32_8_2_1_float_uint32_t_float_float_uint32_t_float_float_int32_tc_float<float, 4, 32, 8, 2, 1>;

// ---- instantiation 2 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP, int ACT>
[[kernel]] void custom_kernel_orchard_qswiglu_cd7b6f805635__float_4_64_8_2_0_float_uint32_t_float_float_uint32_t_float_float_int32_tc_float(
  const device float* x [[buffer(0)]],
  const device uint32_t* wg [[buffer(1)]],
  const device float* sg [[buffer(2)]],
  const device float* bg [[buffer(3)]],
  const device uint32_t* wu [[buffer(4)]],
  const device float* su [[buffer(5)]],
  const device float* bu [[buffer(6)]],
  const constant int32_t* dims [[buffer(7)]],
  device float* out [[buffer(8)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Fused gated MLP input: out[m, n] = act(x[m] . Wg[n]) * (x[m] . Wu[n]) with act = SiLU (ACT 0) or
// tanh-approximated GELU (ACT 1), both weights in MLX's affine quantized format.
// Same layout as qmv: one simdgroup per output row, lanes over consecutive packed words; each x
// element a lane loads is used for both the gate and the up row, and the two intermediate vectors
// never reach memory (the unfused form writes and re-reads 2 * M * N values).
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  float acc_g[MAX_M], acc_u[MAX_M];
  for (int m = 0; m < MAX_M; ++m) { acc_g[m] = 0.0f; acc_u[m] = 0.0f; }
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t pg = wg[n * words + wi];
    const uint32_t pu = wu[n * words + wi];
    const int k0 = wi * PER_WORD;
    const int g = n * groups + k0 / GROUP_SIZE;
    const float s_g = float(sg[g]), b_g = float(bg[g]);
    const float s_u = float(su[g]), b_u = float(bu[g]);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot_g = 0.0f, dot_u = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot_g += xv * float((pg >> (BITS * j)) & MASK);
          dot_u += xv * float((pu >> (BITS * j)) & MASK);
          xsum += xv;
        }
        acc_g[m] += s_g * dot_g + b_g * xsum;
        acc_u[m] += s_u * dot_u + b_u * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {
      const float gate = simd_sum(acc_g[m]);
      const float up = simd_sum(acc_u[m]);
      if (lane == 0) {
        float a;
        if (ACT == 0) {
          a = gate / (1.0f + exp(-gate));
        } else {
          const float c = 0.7978845608028654f;  // sqrt(2 / pi)
          a = 0.5f * gate * (1.0f + tanh(c * (gate + 0.044715f * gate * gate * gate)));
        }
        out[m * N + n] = static_cast<T>(a * up);
      }
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qswiglu_cd7b6f805635__float_4_64_8_2_0_float_uint32_t_float_float_uint32_t_float_float_int32_tc_float")]] [[kernel]] decltype(custom_kernel_orchard_qswiglu_cd7b6f805635__float_4_64_8_2_0_float_uint32_t_float_float_uint32_t_float_float_int32_tc_float<float, 4, 64, 8, 2, 0>) custom_kernel_orchard_qswiglu_cd7b6f805635__float_4_64_8_2_0_float_uint32_t_float_float_uint32_t_float_float_int32_tc_float<float, 4, 64, 8, 2, 0>;

// ---- instantiation 3 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP, int ACT>
[[kernel]] void custom_kernel_orchard_qswiglu_cd7b6f805635__float_4_64_8_2_1_float_uint32_t_float_float_uint32_t_float_float_int32_tc_float(
  const device float* x [[buffer(0)]],
  const device uint32_t* wg [[buffer(1)]],
  const device float* sg [[buffer(2)]],
  const device float* bg [[buffer(3)]],
  const device uint32_t* wu [[buffer(4)]],
  const device float* su [[buffer(5)]],
  const device float* bu [[buffer(6)]],
  const constant int32_t* dims [[buffer(7)]],
  device float* out [[buffer(8)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Fused gated MLP input: out[m, n] = act(x[m] . Wg[n]) * (x[m] . Wu[n]) with act = SiLU (ACT 0) or
// tanh-approximated GELU (ACT 1), both weights in MLX's affine quantized format.
// Same layout as qmv: one simdgroup per output row, lanes over consecutive packed words; each x
// element a lane loads is used for both the gate and the up row, and the two intermediate vectors
// never reach memory (the unfused form writes and re-reads 2 * M * N values).
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  float acc_g[MAX_M], acc_u[MAX_M];
  for (int m = 0; m < MAX_M; ++m) { acc_g[m] = 0.0f; acc_u[m] = 0.0f; }
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t pg = wg[n * words + wi];
    const uint32_t pu = wu[n * words + wi];
    const int k0 = wi * PER_WORD;
    const int g = n * groups + k0 / GROUP_SIZE;
    const float s_g = float(sg[g]), b_g = float(bg[g]);
    const float s_u = float(su[g]), b_u = float(bu[g]);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot_g = 0.0f, dot_u = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot_g += xv * float((pg >> (BITS * j)) & MASK);
          dot_u += xv * float((pu >> (BITS * j)) & MASK);
          xsum += xv;
        }
        acc_g[m] += s_g * dot_g + b_g * xsum;
        acc_u[m] += s_u * dot_u + b_u * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {
      const float gate = simd_sum(acc_g[m]);
      const float up = simd_sum(acc_u[m]);
      if (lane == 0) {
        float a;
        if (ACT == 0) {
          a = gate / (1.0f + exp(-gate));
        } else {
          const float c = 0.7978845608028654f;  // sqrt(2 / pi)
          a = 0.5f * gate * (1.0f + tanh(c * (gate + 0.044715f * gate * gate * gate)));
        }
        out[m * N + n] = static_cast<T>(a * up);
      }
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qswiglu_cd7b6f805635__float_4_64_8_2_1_float_uint32_t_float_float_uint32_t_float_float_int32_tc_float")]] [[kernel]] decltype(custom_kernel_orchard_qswiglu_cd7b6f805635__float_4_64_8_2_1_float_uint32_t_float_float_uint32_t_float_float_int32_tc_float<float, 4, 64, 8, 2, 1>) custom_kernel_orchard_qswiglu_cd7b6f805635__float_4_64_8_2_1_float_uint32_t_float_float_uint32_t_float_float_int32_tc_float<float, 4, 64, 8, 2, 1>;

// ---- instantiation 4 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP, int ACT>
[[kernel]] void custom_kernel_orchard_qswiglu_cd7b6f805635__float_4_128_8_2_0_float_uint32_t_float_float_uint32_t_float_float_int32_tc_float(
  const device float* x [[buffer(0)]],
  const device uint32_t* wg [[buffer(1)]],
  const device float* sg [[buffer(2)]],
  const device float* bg [[buffer(3)]],
  const device uint32_t* wu [[buffer(4)]],
  const device float* su [[buffer(5)]],
  const device float* bu [[buffer(6)]],
  const constant int32_t* dims [[buffer(7)]],
  device float* out [[buffer(8)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Fused gated MLP input: out[m, n] = act(x[m] . Wg[n]) * (x[m] . Wu[n]) with act = SiLU (ACT 0) or
// tanh-approximated GELU (ACT 1), both weights in MLX's affine quantized format.
// Same layout as qmv: one simdgroup per output row, lanes over consecutive packed words; each x
// element a lane loads is used for both the gate and the up row, and the two intermediate vectors
// never reach memory (the unfused form writes and re-reads 2 * M * N values).
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  float acc_g[MAX_M], acc_u[MAX_M];
  for (int m = 0; m < MAX_M; ++m) { acc_g[m] = 0.0f; acc_u[m] = 0.0f; }
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t pg = wg[n * words + wi];
    const uint32_t pu = wu[n * words + wi];
    const int k0 = wi * PER_WORD;
    const int g = n * groups + k0 / GROUP_SIZE;
    const float s_g = float(sg[g]), b_g = float(bg[g]);
    const float s_u = float(su[g]), b_u = float(bu[g]);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot_g = 0.0f, dot_u = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot_g += xv * float((pg >> (BITS * j)) & MASK);
          dot_u += xv * float((pu >> (BITS * j)) & MASK);
          xsum += xv;
        }
        acc_g[m] += s_g * dot_g + b_g * xsum;
        acc_u[m] += s_u * dot_u + b_u * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {
      const float gate = simd_sum(acc_g[m]);
      const float up = simd_sum(acc_u[m]);
      if (lane == 0) {
        float a;
        if (ACT == 0) {
          a = gate / (1.0f + exp(-gate));
        } else {
          const float c = 0.7978845608028654f;  // sqrt(2 / pi)
          a = 0.5f * gate * (1.0f + tanh(c * (gate + 0.044715f * gate * gate * gate)));
        }
        out[m * N + n] = static_cast<T>(a * up);
      }
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qswiglu_cd7b6f805635__float_4_128_8_2_0_float_uint32_t_float_float_uint32_t_float_float_int32_tc_float")]] [[kernel]] decltype(custom_kernel_orchard_qswiglu_cd7b6f805635__float_4_128_8_2_0_float_uint32_t_float_float_uint32_t_float_float_int32_tc_float<float, 4, 128, 8, 2, 0>) custom_kernel_orchard_qswiglu_cd7b6f805635__float_4_128_8_2_0_float_uint32_t_float_float_uint32_t_float_float_int32_tc_float<float, 4, 128, 8, 2, 0>;

// ---- instantiation 5 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP, int ACT>
[[kernel]] void custom_kernel_orchard_qswiglu_cd7b6f805635__float_4_128_8_2_1_float_uint32_t_float_float_uint32_t_float_float_int32_tc_float(
  const device float* x [[buffer(0)]],
  const device uint32_t* wg [[buffer(1)]],
  const device float* sg [[buffer(2)]],
  const device float* bg [[buffer(3)]],
  const device uint32_t* wu [[buffer(4)]],
  const device float* su [[buffer(5)]],
  const device float* bu [[buffer(6)]],
  const constant int32_t* dims [[buffer(7)]],
  device float* out [[buffer(8)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Fused gated MLP input: out[m, n] = act(x[m] . Wg[n]) * (x[m] . Wu[n]) with act = SiLU (ACT 0) or
// tanh-approximated GELU (ACT 1), both weights in MLX's affine quantized format.
// Same layout as qmv: one simdgroup per output row, lanes over consecutive packed words; each x
// element a lane loads is used for both the gate and the up row, and the two intermediate vectors
// never reach memory (the unfused form writes and re-reads 2 * M * N values).
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  float acc_g[MAX_M], acc_u[MAX_M];
  for (int m = 0; m < MAX_M; ++m) { acc_g[m] = 0.0f; acc_u[m] = 0.0f; }
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t pg = wg[n * words + wi];
    const uint32_t pu = wu[n * words + wi];
    const int k0 = wi * PER_WORD;
    const int g = n * groups + k0 / GROUP_SIZE;
    const float s_g = float(sg[g]), b_g = float(bg[g]);
    const float s_u = float(su[g]), b_u = float(bu[g]);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot_g = 0.0f, dot_u = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot_g += xv * float((pg >> (BITS * j)) & MASK);
          dot_u += xv * float((pu >> (BITS * j)) & MASK);
          xsum += xv;
        }
        acc_g[m] += s_g * dot_g + b_g * xsum;
        acc_u[m] += s_u * dot_u + b_u * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {
      const float gate = simd_sum(acc_g[m]);
      const float up = simd_sum(acc_u[m]);
      if (lane == 0) {
        float a;
        if (ACT == 0) {
          a = gate / (1.0f + exp(-gate));
        } else {
          const float c = 0.7978845608028654f;  // sqrt(2 / pi)
          a = 0.5f * gate * (1.0f + tanh(c * (gate + 0.044715f * gate * gate * gate)));
        }
        out[m * N + n] = static_cast<T>(a * up);
      }
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qswiglu_cd7b6f805635__float_4_128_8_2_1_float_uint32_t_float_float_uint32_t_float_float_int32_tc_float")]] [[kernel]] decltype(custom_kernel_orchard_qswiglu_cd7b6f805635__float_4_128_8_2_1_float_uint32_t_float_float_uint32_t_float_float_int32_tc_float<float, 4, 128, 8, 2, 1>) custom_kernel_orchard_qswiglu_cd7b6f805635__float_4_128_8_2_1_float_uint32_t_float_float_uint32_t_float_float_int32_tc_float<float, 4, 128, 8, 2, 1>;

// ---- instantiation 6 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP, int ACT>
[[kernel]] void custom_kernel_orchard_qswiglu_cd7b6f805635__float_8_32_8_2_0_float_uint32_t_float_float_uint32_t_float_float_int32_tc_float(
  const device float* x [[buffer(0)]],
  const device uint32_t* wg [[buffer(1)]],
  const device float* sg [[buffer(2)]],
  const device float* bg [[buffer(3)]],
  const device uint32_t* wu [[buffer(4)]],
  const device float* su [[buffer(5)]],
  const device float* bu [[buffer(6)]],
  const constant int32_t* dims [[buffer(7)]],
  device float* out [[buffer(8)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Fused gated MLP input: out[m, n] = act(x[m] . Wg[n]) * (x[m] . Wu[n]) with act = SiLU (ACT 0) or
// tanh-approximated GELU (ACT 1), both weights in MLX's affine quantized format.
// Same layout as qmv: one simdgroup per output row, lanes over consecutive packed words; each x
// element a lane loads is used for both the gate and the up row, and the two intermediate vectors
// never reach memory (the unfused form writes and re-reads 2 * M * N values).
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  float acc_g[MAX_M], acc_u[MAX_M];
  for (int m = 0; m < MAX_M; ++m) { acc_g[m] = 0.0f; acc_u[m] = 0.0f; }
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t pg = wg[n * words + wi];
    const uint32_t pu = wu[n * words + wi];
    const int k0 = wi * PER_WORD;
    const int g = n * groups + k0 / GROUP_SIZE;
    const float s_g = float(sg[g]), b_g = float(bg[g]);
    const float s_u = float(su[g]), b_u = float(bu[g]);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot_g = 0.0f, dot_u = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot_g += xv * float((pg >> (BITS * j)) & MASK);
          dot_u += xv * float((pu >> (BITS * j)) & MASK);
          xsum += xv;
        }
        acc_g[m] += s_g * dot_g + b_g * xsum;
        acc_u[m] += s_u * dot_u + b_u * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {
      const float gate = simd_sum(acc_g[m]);
      const float up = simd_sum(acc_u[m]);
      if (lane == 0) {
        float a;
        if (ACT == 0) {
          a = gate / (1.0f + exp(-gate));
        } else {
          const float c = 0.7978845608028654f;  // sqrt(2 / pi)
          a = 0.5f * gate * (1.0f + tanh(c * (gate + 0.044715f * gate * gate * gate)));
        }
        out[m * N + n] = static_cast<T>(a * up);
      }
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qswiglu_cd7b6f805635__float_8_32_8_2_0_float_uint32_t_float_float_uint32_t_float_float_int32_tc_float")]] [[kernel]] decltype(custom_kernel_orchard_qswiglu_cd7b6f805635__float_8_32_8_2_0_float_uint32_t_float_float_uint32_t_float_float_int32_tc_float<float, 8, 32, 8, 2, 0>) custom_kernel_orchard_qswiglu_cd7b6f805635__float_8_32_8_2_0_float_uint32_t_float_float_uint32_t_float_float_int32_tc_float<float, 8, 32, 8, 2, 0>;

// ---- instantiation 7 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP, int ACT>
[[kernel]] void custom_kernel_orchard_qswiglu_cd7b6f805635__float_8_32_8_2_1_float_uint32_t_float_float_uint32_t_float_float_int32_tc_float(
  const device float* x [[buffer(0)]],
  const device uint32_t* wg [[buffer(1)]],
  const device float* sg [[buffer(2)]],
  const device float* bg [[buffer(3)]],
  const device uint32_t* wu [[buffer(4)]],
  const device float* su [[buffer(5)]],
  const device float* bu [[buffer(6)]],
  const constant int32_t* dims [[buffer(7)]],
  device float* out [[buffer(8)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Fused gated MLP input: out[m, n] = act(x[m] . Wg[n]) * (x[m] . Wu[n]) with act = SiLU (ACT 0) or
// tanh-approximated GELU (ACT 1), both weights in MLX's affine quantized format.
// Same layout as qmv: one simdgroup per output row, lanes over consecutive packed words; each x
// element a lane loads is used for both the gate and the up row, and the two intermediate vectors
// never reach memory (the unfused form writes and re-reads 2 * M * N values).
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  float acc_g[MAX_M], acc_u[MAX_M];
  for (int m = 0; m < MAX_M; ++m) { acc_g[m] = 0.0f; acc_u[m] = 0.0f; }
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t pg = wg[n * words + wi];
    const uint32_t pu = wu[n * words + wi];
    const int k0 = wi * PER_WORD;
    const int g = n * groups + k0 / GROUP_SIZE;
    const float s_g = float(sg[g]), b_g = float(bg[g]);
    const float s_u = float(su[g]), b_u = float(bu[g]);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot_g = 0.0f, dot_u = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot_g += xv * float((pg >> (BITS * j)) & MASK);
          dot_u += xv * float((pu >> (BITS * j)) & MASK);
          xsum += xv;
        }
        acc_g[m] += s_g * dot_g + b_g * xsum;
        acc_u[m] += s_u * dot_u + b_u * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {
      const float gate = simd_sum(acc_g[m]);
      const float up = simd_sum(acc_u[m]);
      if (lane == 0) {
        float a;
        if (ACT == 0) {
          a = gate / (1.0f + exp(-gate));
        } else {
          const float c = 0.7978845608028654f;  // sqrt(2 / pi)
          a = 0.5f * gate * (1.0f + tanh(c * (gate + 0.044715f * gate * gate * gate)));
        }
        out[m * N + n] = static_cast<T>(a * up);
      }
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qswiglu_cd7b6f805635__float_8_32_8_2_1_float_uint32_t_float_float_uint32_t_float_float_int32_tc_float")]] [[kernel]] decltype(custom_kernel_orchard_qswiglu_cd7b6f805635__float_8_32_8_2_1_float_uint32_t_float_float_uint32_t_float_float_int32_tc_float<float, 8, 32, 8, 2, 1>) custom_kernel_orchard_qswiglu_cd7b6f805635__float_8_32_8_2_1_float_uint32_t_float_float_uint32_t_float_float_int32_tc_float<float, 8, 32, 8, 2, 1>;

// ---- instantiation 8 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP, int ACT>
[[kernel]] void custom_kernel_orchard_qswiglu_cd7b6f805635__float_8_64_8_2_0_float_uint32_t_float_float_uint32_t_float_float_int32_tc_float(
  const device float* x [[buffer(0)]],
  const device uint32_t* wg [[buffer(1)]],
  const device float* sg [[buffer(2)]],
  const device float* bg [[buffer(3)]],
  const device uint32_t* wu [[buffer(4)]],
  const device float* su [[buffer(5)]],
  const device float* bu [[buffer(6)]],
  const constant int32_t* dims [[buffer(7)]],
  device float* out [[buffer(8)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Fused gated MLP input: out[m, n] = act(x[m] . Wg[n]) * (x[m] . Wu[n]) with act = SiLU (ACT 0) or
// tanh-approximated GELU (ACT 1), both weights in MLX's affine quantized format.
// Same layout as qmv: one simdgroup per output row, lanes over consecutive packed words; each x
// element a lane loads is used for both the gate and the up row, and the two intermediate vectors
// never reach memory (the unfused form writes and re-reads 2 * M * N values).
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  float acc_g[MAX_M], acc_u[MAX_M];
  for (int m = 0; m < MAX_M; ++m) { acc_g[m] = 0.0f; acc_u[m] = 0.0f; }
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t pg = wg[n * words + wi];
    const uint32_t pu = wu[n * words + wi];
    const int k0 = wi * PER_WORD;
    const int g = n * groups + k0 / GROUP_SIZE;
    const float s_g = float(sg[g]), b_g = float(bg[g]);
    const float s_u = float(su[g]), b_u = float(bu[g]);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot_g = 0.0f, dot_u = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot_g += xv * float((pg >> (BITS * j)) & MASK);
          dot_u += xv * float((pu >> (BITS * j)) & MASK);
          xsum += xv;
        }
        acc_g[m] += s_g * dot_g + b_g * xsum;
        acc_u[m] += s_u * dot_u + b_u * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {
      const float gate = simd_sum(acc_g[m]);
      const float up = simd_sum(acc_u[m]);
      if (lane == 0) {
        float a;
        if (ACT == 0) {
          a = gate / (1.0f + exp(-gate));
        } else {
          const float c = 0.7978845608028654f;  // sqrt(2 / pi)
          a = 0.5f * gate * (1.0f + tanh(c * (gate + 0.044715f * gate * gate * gate)));
        }
        out[m * N + n] = static_cast<T>(a * up);
      }
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qswiglu_cd7b6f805635__float_8_64_8_2_0_float_uint32_t_float_float_uint32_t_float_float_int32_tc_float")]] [[kernel]] decltype(custom_kernel_orchard_qswiglu_cd7b6f805635__float_8_64_8_2_0_float_uint32_t_float_float_uint32_t_float_float_int32_tc_float<float, 8, 64, 8, 2, 0>) custom_kernel_orchard_qswiglu_cd7b6f805635__float_8_64_8_2_0_float_uint32_t_float_float_uint32_t_float_float_int32_tc_float<float, 8, 64, 8, 2, 0>;

// ---- instantiation 9 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP, int ACT>
[[kernel]] void custom_kernel_orchard_qswiglu_cd7b6f805635__float_8_64_8_2_1_float_uint32_t_float_float_uint32_t_float_float_int32_tc_float(
  const device float* x [[buffer(0)]],
  const device uint32_t* wg [[buffer(1)]],
  const device float* sg [[buffer(2)]],
  const device float* bg [[buffer(3)]],
  const device uint32_t* wu [[buffer(4)]],
  const device float* su [[buffer(5)]],
  const device float* bu [[buffer(6)]],
  const constant int32_t* dims [[buffer(7)]],
  device float* out [[buffer(8)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Fused gated MLP input: out[m, n] = act(x[m] . Wg[n]) * (x[m] . Wu[n]) with act = SiLU (ACT 0) or
// tanh-approximated GELU (ACT 1), both weights in MLX's affine quantized format.
// Same layout as qmv: one simdgroup per output row, lanes over consecutive packed words; each x
// element a lane loads is used for both the gate and the up row, and the two intermediate vectors
// never reach memory (the unfused form writes and re-reads 2 * M * N values).
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  float acc_g[MAX_M], acc_u[MAX_M];
  for (int m = 0; m < MAX_M; ++m) { acc_g[m] = 0.0f; acc_u[m] = 0.0f; }
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t pg = wg[n * words + wi];
    const uint32_t pu = wu[n * words + wi];
    const int k0 = wi * PER_WORD;
    const int g = n * groups + k0 / GROUP_SIZE;
    const float s_g = float(sg[g]), b_g = float(bg[g]);
    const float s_u = float(su[g]), b_u = float(bu[g]);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot_g = 0.0f, dot_u = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot_g += xv * float((pg >> (BITS * j)) & MASK);
          dot_u += xv * float((pu >> (BITS * j)) & MASK);
          xsum += xv;
        }
        acc_g[m] += s_g * dot_g + b_g * xsum;
        acc_u[m] += s_u * dot_u + b_u * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {
      const float gate = simd_sum(acc_g[m]);
      const float up = simd_sum(acc_u[m]);
      if (lane == 0) {
        float a;
        if (ACT == 0) {
          a = gate / (1.0f + exp(-gate));
        } else {
          const float c = 0.7978845608028654f;  // sqrt(2 / pi)
          a = 0.5f * gate * (1.0f + tanh(c * (gate + 0.044715f * gate * gate * gate)));
        }
        out[m * N + n] = static_cast<T>(a * up);
      }
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qswiglu_cd7b6f805635__float_8_64_8_2_1_float_uint32_t_float_float_uint32_t_float_float_int32_tc_float")]] [[kernel]] decltype(custom_kernel_orchard_qswiglu_cd7b6f805635__float_8_64_8_2_1_float_uint32_t_float_float_uint32_t_float_float_int32_tc_float<float, 8, 64, 8, 2, 1>) custom_kernel_orchard_qswiglu_cd7b6f805635__float_8_64_8_2_1_float_uint32_t_float_float_uint32_t_float_float_int32_tc_float<float, 8, 64, 8, 2, 1>;

// ---- instantiation 10 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP, int ACT>
[[kernel]] void custom_kernel_orchard_qswiglu_cd7b6f805635__float_8_128_8_2_0_float_uint32_t_float_float_uint32_t_float_float_int32_tc_float(
  const device float* x [[buffer(0)]],
  const device uint32_t* wg [[buffer(1)]],
  const device float* sg [[buffer(2)]],
  const device float* bg [[buffer(3)]],
  const device uint32_t* wu [[buffer(4)]],
  const device float* su [[buffer(5)]],
  const device float* bu [[buffer(6)]],
  const constant int32_t* dims [[buffer(7)]],
  device float* out [[buffer(8)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Fused gated MLP input: out[m, n] = act(x[m] . Wg[n]) * (x[m] . Wu[n]) with act = SiLU (ACT 0) or
// tanh-approximated GELU (ACT 1), both weights in MLX's affine quantized format.
// Same layout as qmv: one simdgroup per output row, lanes over consecutive packed words; each x
// element a lane loads is used for both the gate and the up row, and the two intermediate vectors
// never reach memory (the unfused form writes and re-reads 2 * M * N values).
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  float acc_g[MAX_M], acc_u[MAX_M];
  for (int m = 0; m < MAX_M; ++m) { acc_g[m] = 0.0f; acc_u[m] = 0.0f; }
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t pg = wg[n * words + wi];
    const uint32_t pu = wu[n * words + wi];
    const int k0 = wi * PER_WORD;
    const int g = n * groups + k0 / GROUP_SIZE;
    const float s_g = float(sg[g]), b_g = float(bg[g]);
    const float s_u = float(su[g]), b_u = float(bu[g]);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot_g = 0.0f, dot_u = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot_g += xv * float((pg >> (BITS * j)) & MASK);
          dot_u += xv * float((pu >> (BITS * j)) & MASK);
          xsum += xv;
        }
        acc_g[m] += s_g * dot_g + b_g * xsum;
        acc_u[m] += s_u * dot_u + b_u * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {
      const float gate = simd_sum(acc_g[m]);
      const float up = simd_sum(acc_u[m]);
      if (lane == 0) {
        float a;
        if (ACT == 0) {
          a = gate / (1.0f + exp(-gate));
        } else {
          const float c = 0.7978845608028654f;  // sqrt(2 / pi)
          a = 0.5f * gate * (1.0f + tanh(c * (gate + 0.044715f * gate * gate * gate)));
        }
        out[m * N + n] = static_cast<T>(a * up);
      }
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qswiglu_cd7b6f805635__float_8_128_8_2_0_float_uint32_t_float_float_uint32_t_float_float_int32_tc_float")]] [[kernel]] decltype(custom_kernel_orchard_qswiglu_cd7b6f805635__float_8_128_8_2_0_float_uint32_t_float_float_uint32_t_float_float_int32_tc_float<float, 8, 128, 8, 2, 0>) custom_kernel_orchard_qswiglu_cd7b6f805635__float_8_128_8_2_0_float_uint32_t_float_float_uint32_t_float_float_int32_tc_float<float, 8, 128, 8, 2, 0>;

// ---- instantiation 11 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP, int ACT>
[[kernel]] void custom_kernel_orchard_qswiglu_cd7b6f805635__float_8_128_8_2_1_float_uint32_t_float_float_uint32_t_float_float_int32_tc_float(
  const device float* x [[buffer(0)]],
  const device uint32_t* wg [[buffer(1)]],
  const device float* sg [[buffer(2)]],
  const device float* bg [[buffer(3)]],
  const device uint32_t* wu [[buffer(4)]],
  const device float* su [[buffer(5)]],
  const device float* bu [[buffer(6)]],
  const constant int32_t* dims [[buffer(7)]],
  device float* out [[buffer(8)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Fused gated MLP input: out[m, n] = act(x[m] . Wg[n]) * (x[m] . Wu[n]) with act = SiLU (ACT 0) or
// tanh-approximated GELU (ACT 1), both weights in MLX's affine quantized format.
// Same layout as qmv: one simdgroup per output row, lanes over consecutive packed words; each x
// element a lane loads is used for both the gate and the up row, and the two intermediate vectors
// never reach memory (the unfused form writes and re-reads 2 * M * N values).
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  float acc_g[MAX_M], acc_u[MAX_M];
  for (int m = 0; m < MAX_M; ++m) { acc_g[m] = 0.0f; acc_u[m] = 0.0f; }
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t pg = wg[n * words + wi];
    const uint32_t pu = wu[n * words + wi];
    const int k0 = wi * PER_WORD;
    const int g = n * groups + k0 / GROUP_SIZE;
    const float s_g = float(sg[g]), b_g = float(bg[g]);
    const float s_u = float(su[g]), b_u = float(bu[g]);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot_g = 0.0f, dot_u = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot_g += xv * float((pg >> (BITS * j)) & MASK);
          dot_u += xv * float((pu >> (BITS * j)) & MASK);
          xsum += xv;
        }
        acc_g[m] += s_g * dot_g + b_g * xsum;
        acc_u[m] += s_u * dot_u + b_u * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {
      const float gate = simd_sum(acc_g[m]);
      const float up = simd_sum(acc_u[m]);
      if (lane == 0) {
        float a;
        if (ACT == 0) {
          a = gate / (1.0f + exp(-gate));
        } else {
          const float c = 0.7978845608028654f;  // sqrt(2 / pi)
          a = 0.5f * gate * (1.0f + tanh(c * (gate + 0.044715f * gate * gate * gate)));
        }
        out[m * N + n] = static_cast<T>(a * up);
      }
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qswiglu_cd7b6f805635__float_8_128_8_2_1_float_uint32_t_float_float_uint32_t_float_float_int32_tc_float")]] [[kernel]] decltype(custom_kernel_orchard_qswiglu_cd7b6f805635__float_8_128_8_2_1_float_uint32_t_float_float_uint32_t_float_float_int32_tc_float<float, 8, 128, 8, 2, 1>) custom_kernel_orchard_qswiglu_cd7b6f805635__float_8_128_8_2_1_float_uint32_t_float_float_uint32_t_float_float_int32_tc_float<float, 8, 128, 8, 2, 1>;

// ---- instantiation 12 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP, int ACT>
[[kernel]] void custom_kernel_orchard_qswiglu_cd7b6f805635__float16_t_4_32_8_2_0_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t(
  const device float16_t* x [[buffer(0)]],
  const device uint32_t* wg [[buffer(1)]],
  const device float16_t* sg [[buffer(2)]],
  const device float16_t* bg [[buffer(3)]],
  const device uint32_t* wu [[buffer(4)]],
  const device float16_t* su [[buffer(5)]],
  const device float16_t* bu [[buffer(6)]],
  const constant int32_t* dims [[buffer(7)]],
  device float16_t* out [[buffer(8)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Fused gated MLP input: out[m, n] = act(x[m] . Wg[n]) * (x[m] . Wu[n]) with act = SiLU (ACT 0) or
// tanh-approximated GELU (ACT 1), both weights in MLX's affine quantized format.
// Same layout as qmv: one simdgroup per output row, lanes over consecutive packed words; each x
// element a lane loads is used for both the gate and the up row, and the two intermediate vectors
// never reach memory (the unfused form writes and re-reads 2 * M * N values).
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  float acc_g[MAX_M], acc_u[MAX_M];
  for (int m = 0; m < MAX_M; ++m) { acc_g[m] = 0.0f; acc_u[m] = 0.0f; }
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t pg = wg[n * words + wi];
    const uint32_t pu = wu[n * words + wi];
    const int k0 = wi * PER_WORD;
    const int g = n * groups + k0 / GROUP_SIZE;
    const float s_g = float(sg[g]), b_g = float(bg[g]);
    const float s_u = float(su[g]), b_u = float(bu[g]);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot_g = 0.0f, dot_u = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot_g += xv * float((pg >> (BITS * j)) & MASK);
          dot_u += xv * float((pu >> (BITS * j)) & MASK);
          xsum += xv;
        }
        acc_g[m] += s_g * dot_g + b_g * xsum;
        acc_u[m] += s_u * dot_u + b_u * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {
      const float gate = simd_sum(acc_g[m]);
      const float up = simd_sum(acc_u[m]);
      if (lane == 0) {
        float a;
        if (ACT == 0) {
          a = gate / (1.0f + exp(-gate));
        } else {
          const float c = 0.7978845608028654f;  // sqrt(2 / pi)
          a = 0.5f * gate * (1.0f + tanh(c * (gate + 0.044715f * gate * gate * gate)));
        }
        out[m * N + n] = static_cast<T>(a * up);
      }
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qswiglu_cd7b6f805635__float16_t_4_32_8_2_0_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t")]] [[kernel]] decltype(custom_kernel_orchard_qswiglu_cd7b6f805635__float16_t_4_32_8_2_0_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t<float16_t, 4, 32, 8, 2, 0>) custom_kernel_orchard_qswiglu_cd7b6f805635__float16_t_4_32_8_2_0_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t<float16_t, 4, 32, 8, 2, 0>;

// ---- instantiation 13 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP, int ACT>
[[kernel]] void custom_kernel_orchard_qswiglu_cd7b6f805635__float16_t_4_32_8_2_1_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t(
  const device float16_t* x [[buffer(0)]],
  const device uint32_t* wg [[buffer(1)]],
  const device float16_t* sg [[buffer(2)]],
  const device float16_t* bg [[buffer(3)]],
  const device uint32_t* wu [[buffer(4)]],
  const device float16_t* su [[buffer(5)]],
  const device float16_t* bu [[buffer(6)]],
  const constant int32_t* dims [[buffer(7)]],
  device float16_t* out [[buffer(8)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Fused gated MLP input: out[m, n] = act(x[m] . Wg[n]) * (x[m] . Wu[n]) with act = SiLU (ACT 0) or
// tanh-approximated GELU (ACT 1), both weights in MLX's affine quantized format.
// Same layout as qmv: one simdgroup per output row, lanes over consecutive packed words; each x
// element a lane loads is used for both the gate and the up row, and the two intermediate vectors
// never reach memory (the unfused form writes and re-reads 2 * M * N values).
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  float acc_g[MAX_M], acc_u[MAX_M];
  for (int m = 0; m < MAX_M; ++m) { acc_g[m] = 0.0f; acc_u[m] = 0.0f; }
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t pg = wg[n * words + wi];
    const uint32_t pu = wu[n * words + wi];
    const int k0 = wi * PER_WORD;
    const int g = n * groups + k0 / GROUP_SIZE;
    const float s_g = float(sg[g]), b_g = float(bg[g]);
    const float s_u = float(su[g]), b_u = float(bu[g]);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot_g = 0.0f, dot_u = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot_g += xv * float((pg >> (BITS * j)) & MASK);
          dot_u += xv * float((pu >> (BITS * j)) & MASK);
          xsum += xv;
        }
        acc_g[m] += s_g * dot_g + b_g * xsum;
        acc_u[m] += s_u * dot_u + b_u * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {
      const float gate = simd_sum(acc_g[m]);
      const float up = simd_sum(acc_u[m]);
      if (lane == 0) {
        float a;
        if (ACT == 0) {
          a = gate / (1.0f + exp(-gate));
        } else {
          const float c = 0.7978845608028654f;  // sqrt(2 / pi)
          a = 0.5f * gate * (1.0f + tanh(c * (gate + 0.044715f * gate * gate * gate)));
        }
        out[m * N + n] = static_cast<T>(a * up);
      }
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qswiglu_cd7b6f805635__float16_t_4_32_8_2_1_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t")]] [[kernel]] decltype(custom_kernel_orchard_qswiglu_cd7b6f805635__float16_t_4_32_8_2_1_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t<float16_t, 4, 32, 8, 2, 1>) custom_kernel_orchard_qswiglu_cd7b6f805635__float16_t_4_32_8_2_1_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t<float16_t, 4, 32, 8, 2, 1>;

// ---- instantiation 14 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP, int ACT>
[[kernel]] void custom_kernel_orchard_qswiglu_cd7b6f805635__float16_t_4_64_8_2_0_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t(
  const device float16_t* x [[buffer(0)]],
  const device uint32_t* wg [[buffer(1)]],
  const device float16_t* sg [[buffer(2)]],
  const device float16_t* bg [[buffer(3)]],
  const device uint32_t* wu [[buffer(4)]],
  const device float16_t* su [[buffer(5)]],
  const device float16_t* bu [[buffer(6)]],
  const constant int32_t* dims [[buffer(7)]],
  device float16_t* out [[buffer(8)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Fused gated MLP input: out[m, n] = act(x[m] . Wg[n]) * (x[m] . Wu[n]) with act = SiLU (ACT 0) or
// tanh-approximated GELU (ACT 1), both weights in MLX's affine quantized format.
// Same layout as qmv: one simdgroup per output row, lanes over consecutive packed words; each x
// element a lane loads is used for both the gate and the up row, and the two intermediate vectors
// never reach memory (the unfused form writes and re-reads 2 * M * N values).
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  float acc_g[MAX_M], acc_u[MAX_M];
  for (int m = 0; m < MAX_M; ++m) { acc_g[m] = 0.0f; acc_u[m] = 0.0f; }
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t pg = wg[n * words + wi];
    const uint32_t pu = wu[n * words + wi];
    const int k0 = wi * PER_WORD;
    const int g = n * groups + k0 / GROUP_SIZE;
    const float s_g = float(sg[g]), b_g = float(bg[g]);
    const float s_u = float(su[g]), b_u = float(bu[g]);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot_g = 0.0f, dot_u = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot_g += xv * float((pg >> (BITS * j)) & MASK);
          dot_u += xv * float((pu >> (BITS * j)) & MASK);
          xsum += xv;
        }
        acc_g[m] += s_g * dot_g + b_g * xsum;
        acc_u[m] += s_u * dot_u + b_u * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {
      const float gate = simd_sum(acc_g[m]);
      const float up = simd_sum(acc_u[m]);
      if (lane == 0) {
        float a;
        if (ACT == 0) {
          a = gate / (1.0f + exp(-gate));
        } else {
          const float c = 0.7978845608028654f;  // sqrt(2 / pi)
          a = 0.5f * gate * (1.0f + tanh(c * (gate + 0.044715f * gate * gate * gate)));
        }
        out[m * N + n] = static_cast<T>(a * up);
      }
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qswiglu_cd7b6f805635__float16_t_4_64_8_2_0_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t")]] [[kernel]] decltype(custom_kernel_orchard_qswiglu_cd7b6f805635__float16_t_4_64_8_2_0_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t<float16_t, 4, 64, 8, 2, 0>) custom_kernel_orchard_qswiglu_cd7b6f805635__float16_t_4_64_8_2_0_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t<float16_t, 4, 64, 8, 2, 0>;

// ---- instantiation 15 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP, int ACT>
[[kernel]] void custom_kernel_orchard_qswiglu_cd7b6f805635__float16_t_4_64_8_2_1_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t(
  const device float16_t* x [[buffer(0)]],
  const device uint32_t* wg [[buffer(1)]],
  const device float16_t* sg [[buffer(2)]],
  const device float16_t* bg [[buffer(3)]],
  const device uint32_t* wu [[buffer(4)]],
  const device float16_t* su [[buffer(5)]],
  const device float16_t* bu [[buffer(6)]],
  const constant int32_t* dims [[buffer(7)]],
  device float16_t* out [[buffer(8)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Fused gated MLP input: out[m, n] = act(x[m] . Wg[n]) * (x[m] . Wu[n]) with act = SiLU (ACT 0) or
// tanh-approximated GELU (ACT 1), both weights in MLX's affine quantized format.
// Same layout as qmv: one simdgroup per output row, lanes over consecutive packed words; each x
// element a lane loads is used for both the gate and the up row, and the two intermediate vectors
// never reach memory (the unfused form writes and re-reads 2 * M * N values).
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  float acc_g[MAX_M], acc_u[MAX_M];
  for (int m = 0; m < MAX_M; ++m) { acc_g[m] = 0.0f; acc_u[m] = 0.0f; }
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t pg = wg[n * words + wi];
    const uint32_t pu = wu[n * words + wi];
    const int k0 = wi * PER_WORD;
    const int g = n * groups + k0 / GROUP_SIZE;
    const float s_g = float(sg[g]), b_g = float(bg[g]);
    const float s_u = float(su[g]), b_u = float(bu[g]);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot_g = 0.0f, dot_u = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot_g += xv * float((pg >> (BITS * j)) & MASK);
          dot_u += xv * float((pu >> (BITS * j)) & MASK);
          xsum += xv;
        }
        acc_g[m] += s_g * dot_g + b_g * xsum;
        acc_u[m] += s_u * dot_u + b_u * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {
      const float gate = simd_sum(acc_g[m]);
      const float up = simd_sum(acc_u[m]);
      if (lane == 0) {
        float a;
        if (ACT == 0) {
          a = gate / (1.0f + exp(-gate));
        } else {
          const float c = 0.7978845608028654f;  // sqrt(2 / pi)
          a = 0.5f * gate * (1.0f + tanh(c * (gate + 0.044715f * gate * gate * gate)));
        }
        out[m * N + n] = static_cast<T>(a * up);
      }
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qswiglu_cd7b6f805635__float16_t_4_64_8_2_1_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t")]] [[kernel]] decltype(custom_kernel_orchard_qswiglu_cd7b6f805635__float16_t_4_64_8_2_1_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t<float16_t, 4, 64, 8, 2, 1>) custom_kernel_orchard_qswiglu_cd7b6f805635__float16_t_4_64_8_2_1_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t<float16_t, 4, 64, 8, 2, 1>;

// ---- instantiation 16 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP, int ACT>
[[kernel]] void custom_kernel_orchard_qswiglu_cd7b6f805635__float16_t_4_128_8_2_0_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t(
  const device float16_t* x [[buffer(0)]],
  const device uint32_t* wg [[buffer(1)]],
  const device float16_t* sg [[buffer(2)]],
  const device float16_t* bg [[buffer(3)]],
  const device uint32_t* wu [[buffer(4)]],
  const device float16_t* su [[buffer(5)]],
  const device float16_t* bu [[buffer(6)]],
  const constant int32_t* dims [[buffer(7)]],
  device float16_t* out [[buffer(8)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Fused gated MLP input: out[m, n] = act(x[m] . Wg[n]) * (x[m] . Wu[n]) with act = SiLU (ACT 0) or
// tanh-approximated GELU (ACT 1), both weights in MLX's affine quantized format.
// Same layout as qmv: one simdgroup per output row, lanes over consecutive packed words; each x
// element a lane loads is used for both the gate and the up row, and the two intermediate vectors
// never reach memory (the unfused form writes and re-reads 2 * M * N values).
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  float acc_g[MAX_M], acc_u[MAX_M];
  for (int m = 0; m < MAX_M; ++m) { acc_g[m] = 0.0f; acc_u[m] = 0.0f; }
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t pg = wg[n * words + wi];
    const uint32_t pu = wu[n * words + wi];
    const int k0 = wi * PER_WORD;
    const int g = n * groups + k0 / GROUP_SIZE;
    const float s_g = float(sg[g]), b_g = float(bg[g]);
    const float s_u = float(su[g]), b_u = float(bu[g]);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot_g = 0.0f, dot_u = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot_g += xv * float((pg >> (BITS * j)) & MASK);
          dot_u += xv * float((pu >> (BITS * j)) & MASK);
          xsum += xv;
        }
        acc_g[m] += s_g * dot_g + b_g * xsum;
        acc_u[m] += s_u * dot_u + b_u * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {
      const float gate = simd_sum(acc_g[m]);
      const float up = simd_sum(acc_u[m]);
      if (lane == 0) {
        float a;
        if (ACT == 0) {
          a = gate / (1.0f + exp(-gate));
        } else {
          const float c = 0.7978845608028654f;  // sqrt(2 / pi)
          a = 0.5f * gate * (1.0f + tanh(c * (gate + 0.044715f * gate * gate * gate)));
        }
        out[m * N + n] = static_cast<T>(a * up);
      }
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qswiglu_cd7b6f805635__float16_t_4_128_8_2_0_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t")]] [[kernel]] decltype(custom_kernel_orchard_qswiglu_cd7b6f805635__float16_t_4_128_8_2_0_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t<float16_t, 4, 128, 8, 2, 0>) custom_kernel_orchard_qswiglu_cd7b6f805635__float16_t_4_128_8_2_0_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t<float16_t, 4, 128, 8, 2, 0>;

// ---- instantiation 17 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP, int ACT>
[[kernel]] void custom_kernel_orchard_qswiglu_cd7b6f805635__float16_t_4_128_8_2_1_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t(
  const device float16_t* x [[buffer(0)]],
  const device uint32_t* wg [[buffer(1)]],
  const device float16_t* sg [[buffer(2)]],
  const device float16_t* bg [[buffer(3)]],
  const device uint32_t* wu [[buffer(4)]],
  const device float16_t* su [[buffer(5)]],
  const device float16_t* bu [[buffer(6)]],
  const constant int32_t* dims [[buffer(7)]],
  device float16_t* out [[buffer(8)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Fused gated MLP input: out[m, n] = act(x[m] . Wg[n]) * (x[m] . Wu[n]) with act = SiLU (ACT 0) or
// tanh-approximated GELU (ACT 1), both weights in MLX's affine quantized format.
// Same layout as qmv: one simdgroup per output row, lanes over consecutive packed words; each x
// element a lane loads is used for both the gate and the up row, and the two intermediate vectors
// never reach memory (the unfused form writes and re-reads 2 * M * N values).
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  float acc_g[MAX_M], acc_u[MAX_M];
  for (int m = 0; m < MAX_M; ++m) { acc_g[m] = 0.0f; acc_u[m] = 0.0f; }
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t pg = wg[n * words + wi];
    const uint32_t pu = wu[n * words + wi];
    const int k0 = wi * PER_WORD;
    const int g = n * groups + k0 / GROUP_SIZE;
    const float s_g = float(sg[g]), b_g = float(bg[g]);
    const float s_u = float(su[g]), b_u = float(bu[g]);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot_g = 0.0f, dot_u = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot_g += xv * float((pg >> (BITS * j)) & MASK);
          dot_u += xv * float((pu >> (BITS * j)) & MASK);
          xsum += xv;
        }
        acc_g[m] += s_g * dot_g + b_g * xsum;
        acc_u[m] += s_u * dot_u + b_u * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {
      const float gate = simd_sum(acc_g[m]);
      const float up = simd_sum(acc_u[m]);
      if (lane == 0) {
        float a;
        if (ACT == 0) {
          a = gate / (1.0f + exp(-gate));
        } else {
          const float c = 0.7978845608028654f;  // sqrt(2 / pi)
          a = 0.5f * gate * (1.0f + tanh(c * (gate + 0.044715f * gate * gate * gate)));
        }
        out[m * N + n] = static_cast<T>(a * up);
      }
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qswiglu_cd7b6f805635__float16_t_4_128_8_2_1_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t")]] [[kernel]] decltype(custom_kernel_orchard_qswiglu_cd7b6f805635__float16_t_4_128_8_2_1_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t<float16_t, 4, 128, 8, 2, 1>) custom_kernel_orchard_qswiglu_cd7b6f805635__float16_t_4_128_8_2_1_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t<float16_t, 4, 128, 8, 2, 1>;

// ---- instantiation 18 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP, int ACT>
[[kernel]] void custom_kernel_orchard_qswiglu_cd7b6f805635__float16_t_8_32_8_2_0_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t(
  const device float16_t* x [[buffer(0)]],
  const device uint32_t* wg [[buffer(1)]],
  const device float16_t* sg [[buffer(2)]],
  const device float16_t* bg [[buffer(3)]],
  const device uint32_t* wu [[buffer(4)]],
  const device float16_t* su [[buffer(5)]],
  const device float16_t* bu [[buffer(6)]],
  const constant int32_t* dims [[buffer(7)]],
  device float16_t* out [[buffer(8)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Fused gated MLP input: out[m, n] = act(x[m] . Wg[n]) * (x[m] . Wu[n]) with act = SiLU (ACT 0) or
// tanh-approximated GELU (ACT 1), both weights in MLX's affine quantized format.
// Same layout as qmv: one simdgroup per output row, lanes over consecutive packed words; each x
// element a lane loads is used for both the gate and the up row, and the two intermediate vectors
// never reach memory (the unfused form writes and re-reads 2 * M * N values).
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  float acc_g[MAX_M], acc_u[MAX_M];
  for (int m = 0; m < MAX_M; ++m) { acc_g[m] = 0.0f; acc_u[m] = 0.0f; }
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t pg = wg[n * words + wi];
    const uint32_t pu = wu[n * words + wi];
    const int k0 = wi * PER_WORD;
    const int g = n * groups + k0 / GROUP_SIZE;
    const float s_g = float(sg[g]), b_g = float(bg[g]);
    const float s_u = float(su[g]), b_u = float(bu[g]);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot_g = 0.0f, dot_u = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot_g += xv * float((pg >> (BITS * j)) & MASK);
          dot_u += xv * float((pu >> (BITS * j)) & MASK);
          xsum += xv;
        }
        acc_g[m] += s_g * dot_g + b_g * xsum;
        acc_u[m] += s_u * dot_u + b_u * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {
      const float gate = simd_sum(acc_g[m]);
      const float up = simd_sum(acc_u[m]);
      if (lane == 0) {
        float a;
        if (ACT == 0) {
          a = gate / (1.0f + exp(-gate));
        } else {
          const float c = 0.7978845608028654f;  // sqrt(2 / pi)
          a = 0.5f * gate * (1.0f + tanh(c * (gate + 0.044715f * gate * gate * gate)));
        }
        out[m * N + n] = static_cast<T>(a * up);
      }
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qswiglu_cd7b6f805635__float16_t_8_32_8_2_0_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t")]] [[kernel]] decltype(custom_kernel_orchard_qswiglu_cd7b6f805635__float16_t_8_32_8_2_0_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t<float16_t, 8, 32, 8, 2, 0>) custom_kernel_orchard_qswiglu_cd7b6f805635__float16_t_8_32_8_2_0_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t<float16_t, 8, 32, 8, 2, 0>;

// ---- instantiation 19 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP, int ACT>
[[kernel]] void custom_kernel_orchard_qswiglu_cd7b6f805635__float16_t_8_32_8_2_1_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t(
  const device float16_t* x [[buffer(0)]],
  const device uint32_t* wg [[buffer(1)]],
  const device float16_t* sg [[buffer(2)]],
  const device float16_t* bg [[buffer(3)]],
  const device uint32_t* wu [[buffer(4)]],
  const device float16_t* su [[buffer(5)]],
  const device float16_t* bu [[buffer(6)]],
  const constant int32_t* dims [[buffer(7)]],
  device float16_t* out [[buffer(8)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Fused gated MLP input: out[m, n] = act(x[m] . Wg[n]) * (x[m] . Wu[n]) with act = SiLU (ACT 0) or
// tanh-approximated GELU (ACT 1), both weights in MLX's affine quantized format.
// Same layout as qmv: one simdgroup per output row, lanes over consecutive packed words; each x
// element a lane loads is used for both the gate and the up row, and the two intermediate vectors
// never reach memory (the unfused form writes and re-reads 2 * M * N values).
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  float acc_g[MAX_M], acc_u[MAX_M];
  for (int m = 0; m < MAX_M; ++m) { acc_g[m] = 0.0f; acc_u[m] = 0.0f; }
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t pg = wg[n * words + wi];
    const uint32_t pu = wu[n * words + wi];
    const int k0 = wi * PER_WORD;
    const int g = n * groups + k0 / GROUP_SIZE;
    const float s_g = float(sg[g]), b_g = float(bg[g]);
    const float s_u = float(su[g]), b_u = float(bu[g]);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot_g = 0.0f, dot_u = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot_g += xv * float((pg >> (BITS * j)) & MASK);
          dot_u += xv * float((pu >> (BITS * j)) & MASK);
          xsum += xv;
        }
        acc_g[m] += s_g * dot_g + b_g * xsum;
        acc_u[m] += s_u * dot_u + b_u * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {
      const float gate = simd_sum(acc_g[m]);
      const float up = simd_sum(acc_u[m]);
      if (lane == 0) {
        float a;
        if (ACT == 0) {
          a = gate / (1.0f + exp(-gate));
        } else {
          const float c = 0.7978845608028654f;  // sqrt(2 / pi)
          a = 0.5f * gate * (1.0f + tanh(c * (gate + 0.044715f * gate * gate * gate)));
        }
        out[m * N + n] = static_cast<T>(a * up);
      }
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qswiglu_cd7b6f805635__float16_t_8_32_8_2_1_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t")]] [[kernel]] decltype(custom_kernel_orchard_qswiglu_cd7b6f805635__float16_t_8_32_8_2_1_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t<float16_t, 8, 32, 8, 2, 1>) custom_kernel_orchard_qswiglu_cd7b6f805635__float16_t_8_32_8_2_1_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t<float16_t, 8, 32, 8, 2, 1>;

// ---- instantiation 20 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP, int ACT>
[[kernel]] void custom_kernel_orchard_qswiglu_cd7b6f805635__float16_t_8_64_8_2_0_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t(
  const device float16_t* x [[buffer(0)]],
  const device uint32_t* wg [[buffer(1)]],
  const device float16_t* sg [[buffer(2)]],
  const device float16_t* bg [[buffer(3)]],
  const device uint32_t* wu [[buffer(4)]],
  const device float16_t* su [[buffer(5)]],
  const device float16_t* bu [[buffer(6)]],
  const constant int32_t* dims [[buffer(7)]],
  device float16_t* out [[buffer(8)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Fused gated MLP input: out[m, n] = act(x[m] . Wg[n]) * (x[m] . Wu[n]) with act = SiLU (ACT 0) or
// tanh-approximated GELU (ACT 1), both weights in MLX's affine quantized format.
// Same layout as qmv: one simdgroup per output row, lanes over consecutive packed words; each x
// element a lane loads is used for both the gate and the up row, and the two intermediate vectors
// never reach memory (the unfused form writes and re-reads 2 * M * N values).
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  float acc_g[MAX_M], acc_u[MAX_M];
  for (int m = 0; m < MAX_M; ++m) { acc_g[m] = 0.0f; acc_u[m] = 0.0f; }
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t pg = wg[n * words + wi];
    const uint32_t pu = wu[n * words + wi];
    const int k0 = wi * PER_WORD;
    const int g = n * groups + k0 / GROUP_SIZE;
    const float s_g = float(sg[g]), b_g = float(bg[g]);
    const float s_u = float(su[g]), b_u = float(bu[g]);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot_g = 0.0f, dot_u = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot_g += xv * float((pg >> (BITS * j)) & MASK);
          dot_u += xv * float((pu >> (BITS * j)) & MASK);
          xsum += xv;
        }
        acc_g[m] += s_g * dot_g + b_g * xsum;
        acc_u[m] += s_u * dot_u + b_u * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {
      const float gate = simd_sum(acc_g[m]);
      const float up = simd_sum(acc_u[m]);
      if (lane == 0) {
        float a;
        if (ACT == 0) {
          a = gate / (1.0f + exp(-gate));
        } else {
          const float c = 0.7978845608028654f;  // sqrt(2 / pi)
          a = 0.5f * gate * (1.0f + tanh(c * (gate + 0.044715f * gate * gate * gate)));
        }
        out[m * N + n] = static_cast<T>(a * up);
      }
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qswiglu_cd7b6f805635__float16_t_8_64_8_2_0_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t")]] [[kernel]] decltype(custom_kernel_orchard_qswiglu_cd7b6f805635__float16_t_8_64_8_2_0_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t<float16_t, 8, 64, 8, 2, 0>) custom_kernel_orchard_qswiglu_cd7b6f805635__float16_t_8_64_8_2_0_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t<float16_t, 8, 64, 8, 2, 0>;

// ---- instantiation 21 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP, int ACT>
[[kernel]] void custom_kernel_orchard_qswiglu_cd7b6f805635__float16_t_8_64_8_2_1_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t(
  const device float16_t* x [[buffer(0)]],
  const device uint32_t* wg [[buffer(1)]],
  const device float16_t* sg [[buffer(2)]],
  const device float16_t* bg [[buffer(3)]],
  const device uint32_t* wu [[buffer(4)]],
  const device float16_t* su [[buffer(5)]],
  const device float16_t* bu [[buffer(6)]],
  const constant int32_t* dims [[buffer(7)]],
  device float16_t* out [[buffer(8)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Fused gated MLP input: out[m, n] = act(x[m] . Wg[n]) * (x[m] . Wu[n]) with act = SiLU (ACT 0) or
// tanh-approximated GELU (ACT 1), both weights in MLX's affine quantized format.
// Same layout as qmv: one simdgroup per output row, lanes over consecutive packed words; each x
// element a lane loads is used for both the gate and the up row, and the two intermediate vectors
// never reach memory (the unfused form writes and re-reads 2 * M * N values).
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  float acc_g[MAX_M], acc_u[MAX_M];
  for (int m = 0; m < MAX_M; ++m) { acc_g[m] = 0.0f; acc_u[m] = 0.0f; }
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t pg = wg[n * words + wi];
    const uint32_t pu = wu[n * words + wi];
    const int k0 = wi * PER_WORD;
    const int g = n * groups + k0 / GROUP_SIZE;
    const float s_g = float(sg[g]), b_g = float(bg[g]);
    const float s_u = float(su[g]), b_u = float(bu[g]);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot_g = 0.0f, dot_u = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot_g += xv * float((pg >> (BITS * j)) & MASK);
          dot_u += xv * float((pu >> (BITS * j)) & MASK);
          xsum += xv;
        }
        acc_g[m] += s_g * dot_g + b_g * xsum;
        acc_u[m] += s_u * dot_u + b_u * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {
      const float gate = simd_sum(acc_g[m]);
      const float up = simd_sum(acc_u[m]);
      if (lane == 0) {
        float a;
        if (ACT == 0) {
          a = gate / (1.0f + exp(-gate));
        } else {
          const float c = 0.7978845608028654f;  // sqrt(2 / pi)
          a = 0.5f * gate * (1.0f + tanh(c * (gate + 0.044715f * gate * gate * gate)));
        }
        out[m * N + n] = static_cast<T>(a * up);
      }
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qswiglu_cd7b6f805635__float16_t_8_64_8_2_1_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t")]] [[kernel]] decltype(custom_kernel_orchard_qswiglu_cd7b6f805635__float16_t_8_64_8_2_1_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t<float16_t, 8, 64, 8, 2, 1>) custom_kernel_orchard_qswiglu_cd7b6f805635__float16_t_8_64_8_2_1_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t<float16_t, 8, 64, 8, 2, 1>;

// ---- instantiation 22 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP, int ACT>
[[kernel]] void custom_kernel_orchard_qswiglu_cd7b6f805635__float16_t_8_128_8_2_0_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t(
  const device float16_t* x [[buffer(0)]],
  const device uint32_t* wg [[buffer(1)]],
  const device float16_t* sg [[buffer(2)]],
  const device float16_t* bg [[buffer(3)]],
  const device uint32_t* wu [[buffer(4)]],
  const device float16_t* su [[buffer(5)]],
  const device float16_t* bu [[buffer(6)]],
  const constant int32_t* dims [[buffer(7)]],
  device float16_t* out [[buffer(8)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Fused gated MLP input: out[m, n] = act(x[m] . Wg[n]) * (x[m] . Wu[n]) with act = SiLU (ACT 0) or
// tanh-approximated GELU (ACT 1), both weights in MLX's affine quantized format.
// Same layout as qmv: one simdgroup per output row, lanes over consecutive packed words; each x
// element a lane loads is used for both the gate and the up row, and the two intermediate vectors
// never reach memory (the unfused form writes and re-reads 2 * M * N values).
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  float acc_g[MAX_M], acc_u[MAX_M];
  for (int m = 0; m < MAX_M; ++m) { acc_g[m] = 0.0f; acc_u[m] = 0.0f; }
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t pg = wg[n * words + wi];
    const uint32_t pu = wu[n * words + wi];
    const int k0 = wi * PER_WORD;
    const int g = n * groups + k0 / GROUP_SIZE;
    const float s_g = float(sg[g]), b_g = float(bg[g]);
    const float s_u = float(su[g]), b_u = float(bu[g]);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot_g = 0.0f, dot_u = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot_g += xv * float((pg >> (BITS * j)) & MASK);
          dot_u += xv * float((pu >> (BITS * j)) & MASK);
          xsum += xv;
        }
        acc_g[m] += s_g * dot_g + b_g * xsum;
        acc_u[m] += s_u * dot_u + b_u * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {
      const float gate = simd_sum(acc_g[m]);
      const float up = simd_sum(acc_u[m]);
      if (lane == 0) {
        float a;
        if (ACT == 0) {
          a = gate / (1.0f + exp(-gate));
        } else {
          const float c = 0.7978845608028654f;  // sqrt(2 / pi)
          a = 0.5f * gate * (1.0f + tanh(c * (gate + 0.044715f * gate * gate * gate)));
        }
        out[m * N + n] = static_cast<T>(a * up);
      }
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qswiglu_cd7b6f805635__float16_t_8_128_8_2_0_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t")]] [[kernel]] decltype(custom_kernel_orchard_qswiglu_cd7b6f805635__float16_t_8_128_8_2_0_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t<float16_t, 8, 128, 8, 2, 0>) custom_kernel_orchard_qswiglu_cd7b6f805635__float16_t_8_128_8_2_0_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t<float16_t, 8, 128, 8, 2, 0>;

// ---- instantiation 23 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP, int ACT>
[[kernel]] void custom_kernel_orchard_qswiglu_cd7b6f805635__float16_t_8_128_8_2_1_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t(
  const device float16_t* x [[buffer(0)]],
  const device uint32_t* wg [[buffer(1)]],
  const device float16_t* sg [[buffer(2)]],
  const device float16_t* bg [[buffer(3)]],
  const device uint32_t* wu [[buffer(4)]],
  const device float16_t* su [[buffer(5)]],
  const device float16_t* bu [[buffer(6)]],
  const constant int32_t* dims [[buffer(7)]],
  device float16_t* out [[buffer(8)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Fused gated MLP input: out[m, n] = act(x[m] . Wg[n]) * (x[m] . Wu[n]) with act = SiLU (ACT 0) or
// tanh-approximated GELU (ACT 1), both weights in MLX's affine quantized format.
// Same layout as qmv: one simdgroup per output row, lanes over consecutive packed words; each x
// element a lane loads is used for both the gate and the up row, and the two intermediate vectors
// never reach memory (the unfused form writes and re-reads 2 * M * N values).
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  float acc_g[MAX_M], acc_u[MAX_M];
  for (int m = 0; m < MAX_M; ++m) { acc_g[m] = 0.0f; acc_u[m] = 0.0f; }
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t pg = wg[n * words + wi];
    const uint32_t pu = wu[n * words + wi];
    const int k0 = wi * PER_WORD;
    const int g = n * groups + k0 / GROUP_SIZE;
    const float s_g = float(sg[g]), b_g = float(bg[g]);
    const float s_u = float(su[g]), b_u = float(bu[g]);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot_g = 0.0f, dot_u = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot_g += xv * float((pg >> (BITS * j)) & MASK);
          dot_u += xv * float((pu >> (BITS * j)) & MASK);
          xsum += xv;
        }
        acc_g[m] += s_g * dot_g + b_g * xsum;
        acc_u[m] += s_u * dot_u + b_u * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {
      const float gate = simd_sum(acc_g[m]);
      const float up = simd_sum(acc_u[m]);
      if (lane == 0) {
        float a;
        if (ACT == 0) {
          a = gate / (1.0f + exp(-gate));
        } else {
          const float c = 0.7978845608028654f;  // sqrt(2 / pi)
          a = 0.5f * gate * (1.0f + tanh(c * (gate + 0.044715f * gate * gate * gate)));
        }
        out[m * N + n] = static_cast<T>(a * up);
      }
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qswiglu_cd7b6f805635__float16_t_8_128_8_2_1_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t")]] [[kernel]] decltype(custom_kernel_orchard_qswiglu_cd7b6f805635__float16_t_8_128_8_2_1_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t<float16_t, 8, 128, 8, 2, 1>) custom_kernel_orchard_qswiglu_cd7b6f805635__float16_t_8_128_8_2_1_float16_t_uint32_t_float16_t_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t<float16_t, 8, 128, 8, 2, 1>;

// ---- instantiation 24 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP, int ACT>
[[kernel]] void custom_kernel_orchard_qswiglu_cd7b6f805635__bfloat16_t_4_32_8_2_0_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t(
  const device bfloat16_t* x [[buffer(0)]],
  const device uint32_t* wg [[buffer(1)]],
  const device bfloat16_t* sg [[buffer(2)]],
  const device bfloat16_t* bg [[buffer(3)]],
  const device uint32_t* wu [[buffer(4)]],
  const device bfloat16_t* su [[buffer(5)]],
  const device bfloat16_t* bu [[buffer(6)]],
  const constant int32_t* dims [[buffer(7)]],
  device bfloat16_t* out [[buffer(8)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Fused gated MLP input: out[m, n] = act(x[m] . Wg[n]) * (x[m] . Wu[n]) with act = SiLU (ACT 0) or
// tanh-approximated GELU (ACT 1), both weights in MLX's affine quantized format.
// Same layout as qmv: one simdgroup per output row, lanes over consecutive packed words; each x
// element a lane loads is used for both the gate and the up row, and the two intermediate vectors
// never reach memory (the unfused form writes and re-reads 2 * M * N values).
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  float acc_g[MAX_M], acc_u[MAX_M];
  for (int m = 0; m < MAX_M; ++m) { acc_g[m] = 0.0f; acc_u[m] = 0.0f; }
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t pg = wg[n * words + wi];
    const uint32_t pu = wu[n * words + wi];
    const int k0 = wi * PER_WORD;
    const int g = n * groups + k0 / GROUP_SIZE;
    const float s_g = float(sg[g]), b_g = float(bg[g]);
    const float s_u = float(su[g]), b_u = float(bu[g]);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot_g = 0.0f, dot_u = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot_g += xv * float((pg >> (BITS * j)) & MASK);
          dot_u += xv * float((pu >> (BITS * j)) & MASK);
          xsum += xv;
        }
        acc_g[m] += s_g * dot_g + b_g * xsum;
        acc_u[m] += s_u * dot_u + b_u * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {
      const float gate = simd_sum(acc_g[m]);
      const float up = simd_sum(acc_u[m]);
      if (lane == 0) {
        float a;
        if (ACT == 0) {
          a = gate / (1.0f + exp(-gate));
        } else {
          const float c = 0.7978845608028654f;  // sqrt(2 / pi)
          a = 0.5f * gate * (1.0f + tanh(c * (gate + 0.044715f * gate * gate * gate)));
        }
        out[m * N + n] = static_cast<T>(a * up);
      }
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qswiglu_cd7b6f805635__bfloat16_t_4_32_8_2_0_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t")]] [[kernel]] decltype(custom_kernel_orchard_qswiglu_cd7b6f805635__bfloat16_t_4_32_8_2_0_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t<bfloat16_t, 4, 32, 8, 2, 0>) custom_kernel_orchard_qswiglu_cd7b6f805635__bfloat16_t_4_32_8_2_0_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t<bfloat16_t, 4, 32, 8, 2, 0>;

// ---- instantiation 25 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP, int ACT>
[[kernel]] void custom_kernel_orchard_qswiglu_cd7b6f805635__bfloat16_t_4_32_8_2_1_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t(
  const device bfloat16_t* x [[buffer(0)]],
  const device uint32_t* wg [[buffer(1)]],
  const device bfloat16_t* sg [[buffer(2)]],
  const device bfloat16_t* bg [[buffer(3)]],
  const device uint32_t* wu [[buffer(4)]],
  const device bfloat16_t* su [[buffer(5)]],
  const device bfloat16_t* bu [[buffer(6)]],
  const constant int32_t* dims [[buffer(7)]],
  device bfloat16_t* out [[buffer(8)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Fused gated MLP input: out[m, n] = act(x[m] . Wg[n]) * (x[m] . Wu[n]) with act = SiLU (ACT 0) or
// tanh-approximated GELU (ACT 1), both weights in MLX's affine quantized format.
// Same layout as qmv: one simdgroup per output row, lanes over consecutive packed words; each x
// element a lane loads is used for both the gate and the up row, and the two intermediate vectors
// never reach memory (the unfused form writes and re-reads 2 * M * N values).
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  float acc_g[MAX_M], acc_u[MAX_M];
  for (int m = 0; m < MAX_M; ++m) { acc_g[m] = 0.0f; acc_u[m] = 0.0f; }
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t pg = wg[n * words + wi];
    const uint32_t pu = wu[n * words + wi];
    const int k0 = wi * PER_WORD;
    const int g = n * groups + k0 / GROUP_SIZE;
    const float s_g = float(sg[g]), b_g = float(bg[g]);
    const float s_u = float(su[g]), b_u = float(bu[g]);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot_g = 0.0f, dot_u = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot_g += xv * float((pg >> (BITS * j)) & MASK);
          dot_u += xv * float((pu >> (BITS * j)) & MASK);
          xsum += xv;
        }
        acc_g[m] += s_g * dot_g + b_g * xsum;
        acc_u[m] += s_u * dot_u + b_u * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {
      const float gate = simd_sum(acc_g[m]);
      const float up = simd_sum(acc_u[m]);
      if (lane == 0) {
        float a;
        if (ACT == 0) {
          a = gate / (1.0f + exp(-gate));
        } else {
          const float c = 0.7978845608028654f;  // sqrt(2 / pi)
          a = 0.5f * gate * (1.0f + tanh(c * (gate + 0.044715f * gate * gate * gate)));
        }
        out[m * N + n] = static_cast<T>(a * up);
      }
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qswiglu_cd7b6f805635__bfloat16_t_4_32_8_2_1_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t")]] [[kernel]] decltype(custom_kernel_orchard_qswiglu_cd7b6f805635__bfloat16_t_4_32_8_2_1_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t<bfloat16_t, 4, 32, 8, 2, 1>) custom_kernel_orchard_qswiglu_cd7b6f805635__bfloat16_t_4_32_8_2_1_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t<bfloat16_t, 4, 32, 8, 2, 1>;

// ---- instantiation 26 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP, int ACT>
[[kernel]] void custom_kernel_orchard_qswiglu_cd7b6f805635__bfloat16_t_4_64_8_2_0_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t(
  const device bfloat16_t* x [[buffer(0)]],
  const device uint32_t* wg [[buffer(1)]],
  const device bfloat16_t* sg [[buffer(2)]],
  const device bfloat16_t* bg [[buffer(3)]],
  const device uint32_t* wu [[buffer(4)]],
  const device bfloat16_t* su [[buffer(5)]],
  const device bfloat16_t* bu [[buffer(6)]],
  const constant int32_t* dims [[buffer(7)]],
  device bfloat16_t* out [[buffer(8)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Fused gated MLP input: out[m, n] = act(x[m] . Wg[n]) * (x[m] . Wu[n]) with act = SiLU (ACT 0) or
// tanh-approximated GELU (ACT 1), both weights in MLX's affine quantized format.
// Same layout as qmv: one simdgroup per output row, lanes over consecutive packed words; each x
// element a lane loads is used for both the gate and the up row, and the two intermediate vectors
// never reach memory (the unfused form writes and re-reads 2 * M * N values).
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  float acc_g[MAX_M], acc_u[MAX_M];
  for (int m = 0; m < MAX_M; ++m) { acc_g[m] = 0.0f; acc_u[m] = 0.0f; }
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t pg = wg[n * words + wi];
    const uint32_t pu = wu[n * words + wi];
    const int k0 = wi * PER_WORD;
    const int g = n * groups + k0 / GROUP_SIZE;
    const float s_g = float(sg[g]), b_g = float(bg[g]);
    const float s_u = float(su[g]), b_u = float(bu[g]);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot_g = 0.0f, dot_u = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot_g += xv * float((pg >> (BITS * j)) & MASK);
          dot_u += xv * float((pu >> (BITS * j)) & MASK);
          xsum += xv;
        }
        acc_g[m] += s_g * dot_g + b_g * xsum;
        acc_u[m] += s_u * dot_u + b_u * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {
      const float gate = simd_sum(acc_g[m]);
      const float up = simd_sum(acc_u[m]);
      if (lane == 0) {
        float a;
        if (ACT == 0) {
          a = gate / (1.0f + exp(-gate));
        } else {
          const float c = 0.7978845608028654f;  // sqrt(2 / pi)
          a = 0.5f * gate * (1.0f + tanh(c * (gate + 0.044715f * gate * gate * gate)));
        }
        out[m * N + n] = static_cast<T>(a * up);
      }
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qswiglu_cd7b6f805635__bfloat16_t_4_64_8_2_0_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t")]] [[kernel]] decltype(custom_kernel_orchard_qswiglu_cd7b6f805635__bfloat16_t_4_64_8_2_0_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t<bfloat16_t, 4, 64, 8, 2, 0>) custom_kernel_orchard_qswiglu_cd7b6f805635__bfloat16_t_4_64_8_2_0_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t<bfloat16_t, 4, 64, 8, 2, 0>;

// ---- instantiation 27 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP, int ACT>
[[kernel]] void custom_kernel_orchard_qswiglu_cd7b6f805635__bfloat16_t_4_64_8_2_1_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t(
  const device bfloat16_t* x [[buffer(0)]],
  const device uint32_t* wg [[buffer(1)]],
  const device bfloat16_t* sg [[buffer(2)]],
  const device bfloat16_t* bg [[buffer(3)]],
  const device uint32_t* wu [[buffer(4)]],
  const device bfloat16_t* su [[buffer(5)]],
  const device bfloat16_t* bu [[buffer(6)]],
  const constant int32_t* dims [[buffer(7)]],
  device bfloat16_t* out [[buffer(8)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Fused gated MLP input: out[m, n] = act(x[m] . Wg[n]) * (x[m] . Wu[n]) with act = SiLU (ACT 0) or
// tanh-approximated GELU (ACT 1), both weights in MLX's affine quantized format.
// Same layout as qmv: one simdgroup per output row, lanes over consecutive packed words; each x
// element a lane loads is used for both the gate and the up row, and the two intermediate vectors
// never reach memory (the unfused form writes and re-reads 2 * M * N values).
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  float acc_g[MAX_M], acc_u[MAX_M];
  for (int m = 0; m < MAX_M; ++m) { acc_g[m] = 0.0f; acc_u[m] = 0.0f; }
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t pg = wg[n * words + wi];
    const uint32_t pu = wu[n * words + wi];
    const int k0 = wi * PER_WORD;
    const int g = n * groups + k0 / GROUP_SIZE;
    const float s_g = float(sg[g]), b_g = float(bg[g]);
    const float s_u = float(su[g]), b_u = float(bu[g]);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot_g = 0.0f, dot_u = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot_g += xv * float((pg >> (BITS * j)) & MASK);
          dot_u += xv * float((pu >> (BITS * j)) & MASK);
          xsum += xv;
        }
        acc_g[m] += s_g * dot_g + b_g * xsum;
        acc_u[m] += s_u * dot_u + b_u * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {
      const float gate = simd_sum(acc_g[m]);
      const float up = simd_sum(acc_u[m]);
      if (lane == 0) {
        float a;
        if (ACT == 0) {
          a = gate / (1.0f + exp(-gate));
        } else {
          const float c = 0.7978845608028654f;  // sqrt(2 / pi)
          a = 0.5f * gate * (1.0f + tanh(c * (gate + 0.044715f * gate * gate * gate)));
        }
        out[m * N + n] = static_cast<T>(a * up);
      }
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qswiglu_cd7b6f805635__bfloat16_t_4_64_8_2_1_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t")]] [[kernel]] decltype(custom_kernel_orchard_qswiglu_cd7b6f805635__bfloat16_t_4_64_8_2_1_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t<bfloat16_t, 4, 64, 8, 2, 1>) custom_kernel_orchard_qswiglu_cd7b6f805635__bfloat16_t_4_64_8_2_1_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t<bfloat16_t, 4, 64, 8, 2, 1>;

// ---- instantiation 28 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP, int ACT>
[[kernel]] void custom_kernel_orchard_qswiglu_cd7b6f805635__bfloat16_t_4_128_8_2_0_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t(
  const device bfloat16_t* x [[buffer(0)]],
  const device uint32_t* wg [[buffer(1)]],
  const device bfloat16_t* sg [[buffer(2)]],
  const device bfloat16_t* bg [[buffer(3)]],
  const device uint32_t* wu [[buffer(4)]],
  const device bfloat16_t* su [[buffer(5)]],
  const device bfloat16_t* bu [[buffer(6)]],
  const constant int32_t* dims [[buffer(7)]],
  device bfloat16_t* out [[buffer(8)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Fused gated MLP input: out[m, n] = act(x[m] . Wg[n]) * (x[m] . Wu[n]) with act = SiLU (ACT 0) or
// tanh-approximated GELU (ACT 1), both weights in MLX's affine quantized format.
// Same layout as qmv: one simdgroup per output row, lanes over consecutive packed words; each x
// element a lane loads is used for both the gate and the up row, and the two intermediate vectors
// never reach memory (the unfused form writes and re-reads 2 * M * N values).
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  float acc_g[MAX_M], acc_u[MAX_M];
  for (int m = 0; m < MAX_M; ++m) { acc_g[m] = 0.0f; acc_u[m] = 0.0f; }
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t pg = wg[n * words + wi];
    const uint32_t pu = wu[n * words + wi];
    const int k0 = wi * PER_WORD;
    const int g = n * groups + k0 / GROUP_SIZE;
    const float s_g = float(sg[g]), b_g = float(bg[g]);
    const float s_u = float(su[g]), b_u = float(bu[g]);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot_g = 0.0f, dot_u = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot_g += xv * float((pg >> (BITS * j)) & MASK);
          dot_u += xv * float((pu >> (BITS * j)) & MASK);
          xsum += xv;
        }
        acc_g[m] += s_g * dot_g + b_g * xsum;
        acc_u[m] += s_u * dot_u + b_u * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {
      const float gate = simd_sum(acc_g[m]);
      const float up = simd_sum(acc_u[m]);
      if (lane == 0) {
        float a;
        if (ACT == 0) {
          a = gate / (1.0f + exp(-gate));
        } else {
          const float c = 0.7978845608028654f;  // sqrt(2 / pi)
          a = 0.5f * gate * (1.0f + tanh(c * (gate + 0.044715f * gate * gate * gate)));
        }
        out[m * N + n] = static_cast<T>(a * up);
      }
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qswiglu_cd7b6f805635__bfloat16_t_4_128_8_2_0_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t")]] [[kernel]] decltype(custom_kernel_orchard_qswiglu_cd7b6f805635__bfloat16_t_4_128_8_2_0_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t<bfloat16_t, 4, 128, 8, 2, 0>) custom_kernel_orchard_qswiglu_cd7b6f805635__bfloat16_t_4_128_8_2_0_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t<bfloat16_t, 4, 128, 8, 2, 0>;

// ---- instantiation 29 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP, int ACT>
[[kernel]] void custom_kernel_orchard_qswiglu_cd7b6f805635__bfloat16_t_4_128_8_2_1_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t(
  const device bfloat16_t* x [[buffer(0)]],
  const device uint32_t* wg [[buffer(1)]],
  const device bfloat16_t* sg [[buffer(2)]],
  const device bfloat16_t* bg [[buffer(3)]],
  const device uint32_t* wu [[buffer(4)]],
  const device bfloat16_t* su [[buffer(5)]],
  const device bfloat16_t* bu [[buffer(6)]],
  const constant int32_t* dims [[buffer(7)]],
  device bfloat16_t* out [[buffer(8)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Fused gated MLP input: out[m, n] = act(x[m] . Wg[n]) * (x[m] . Wu[n]) with act = SiLU (ACT 0) or
// tanh-approximated GELU (ACT 1), both weights in MLX's affine quantized format.
// Same layout as qmv: one simdgroup per output row, lanes over consecutive packed words; each x
// element a lane loads is used for both the gate and the up row, and the two intermediate vectors
// never reach memory (the unfused form writes and re-reads 2 * M * N values).
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  float acc_g[MAX_M], acc_u[MAX_M];
  for (int m = 0; m < MAX_M; ++m) { acc_g[m] = 0.0f; acc_u[m] = 0.0f; }
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t pg = wg[n * words + wi];
    const uint32_t pu = wu[n * words + wi];
    const int k0 = wi * PER_WORD;
    const int g = n * groups + k0 / GROUP_SIZE;
    const float s_g = float(sg[g]), b_g = float(bg[g]);
    const float s_u = float(su[g]), b_u = float(bu[g]);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot_g = 0.0f, dot_u = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot_g += xv * float((pg >> (BITS * j)) & MASK);
          dot_u += xv * float((pu >> (BITS * j)) & MASK);
          xsum += xv;
        }
        acc_g[m] += s_g * dot_g + b_g * xsum;
        acc_u[m] += s_u * dot_u + b_u * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {
      const float gate = simd_sum(acc_g[m]);
      const float up = simd_sum(acc_u[m]);
      if (lane == 0) {
        float a;
        if (ACT == 0) {
          a = gate / (1.0f + exp(-gate));
        } else {
          const float c = 0.7978845608028654f;  // sqrt(2 / pi)
          a = 0.5f * gate * (1.0f + tanh(c * (gate + 0.044715f * gate * gate * gate)));
        }
        out[m * N + n] = static_cast<T>(a * up);
      }
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qswiglu_cd7b6f805635__bfloat16_t_4_128_8_2_1_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t")]] [[kernel]] decltype(custom_kernel_orchard_qswiglu_cd7b6f805635__bfloat16_t_4_128_8_2_1_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t<bfloat16_t, 4, 128, 8, 2, 1>) custom_kernel_orchard_qswiglu_cd7b6f805635__bfloat16_t_4_128_8_2_1_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t<bfloat16_t, 4, 128, 8, 2, 1>;

// ---- instantiation 30 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP, int ACT>
[[kernel]] void custom_kernel_orchard_qswiglu_cd7b6f805635__bfloat16_t_8_32_8_2_0_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t(
  const device bfloat16_t* x [[buffer(0)]],
  const device uint32_t* wg [[buffer(1)]],
  const device bfloat16_t* sg [[buffer(2)]],
  const device bfloat16_t* bg [[buffer(3)]],
  const device uint32_t* wu [[buffer(4)]],
  const device bfloat16_t* su [[buffer(5)]],
  const device bfloat16_t* bu [[buffer(6)]],
  const constant int32_t* dims [[buffer(7)]],
  device bfloat16_t* out [[buffer(8)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Fused gated MLP input: out[m, n] = act(x[m] . Wg[n]) * (x[m] . Wu[n]) with act = SiLU (ACT 0) or
// tanh-approximated GELU (ACT 1), both weights in MLX's affine quantized format.
// Same layout as qmv: one simdgroup per output row, lanes over consecutive packed words; each x
// element a lane loads is used for both the gate and the up row, and the two intermediate vectors
// never reach memory (the unfused form writes and re-reads 2 * M * N values).
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  float acc_g[MAX_M], acc_u[MAX_M];
  for (int m = 0; m < MAX_M; ++m) { acc_g[m] = 0.0f; acc_u[m] = 0.0f; }
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t pg = wg[n * words + wi];
    const uint32_t pu = wu[n * words + wi];
    const int k0 = wi * PER_WORD;
    const int g = n * groups + k0 / GROUP_SIZE;
    const float s_g = float(sg[g]), b_g = float(bg[g]);
    const float s_u = float(su[g]), b_u = float(bu[g]);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot_g = 0.0f, dot_u = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot_g += xv * float((pg >> (BITS * j)) & MASK);
          dot_u += xv * float((pu >> (BITS * j)) & MASK);
          xsum += xv;
        }
        acc_g[m] += s_g * dot_g + b_g * xsum;
        acc_u[m] += s_u * dot_u + b_u * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {
      const float gate = simd_sum(acc_g[m]);
      const float up = simd_sum(acc_u[m]);
      if (lane == 0) {
        float a;
        if (ACT == 0) {
          a = gate / (1.0f + exp(-gate));
        } else {
          const float c = 0.7978845608028654f;  // sqrt(2 / pi)
          a = 0.5f * gate * (1.0f + tanh(c * (gate + 0.044715f * gate * gate * gate)));
        }
        out[m * N + n] = static_cast<T>(a * up);
      }
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qswiglu_cd7b6f805635__bfloat16_t_8_32_8_2_0_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t")]] [[kernel]] decltype(custom_kernel_orchard_qswiglu_cd7b6f805635__bfloat16_t_8_32_8_2_0_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t<bfloat16_t, 8, 32, 8, 2, 0>) custom_kernel_orchard_qswiglu_cd7b6f805635__bfloat16_t_8_32_8_2_0_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t<bfloat16_t, 8, 32, 8, 2, 0>;

// ---- instantiation 31 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP, int ACT>
[[kernel]] void custom_kernel_orchard_qswiglu_cd7b6f805635__bfloat16_t_8_32_8_2_1_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t(
  const device bfloat16_t* x [[buffer(0)]],
  const device uint32_t* wg [[buffer(1)]],
  const device bfloat16_t* sg [[buffer(2)]],
  const device bfloat16_t* bg [[buffer(3)]],
  const device uint32_t* wu [[buffer(4)]],
  const device bfloat16_t* su [[buffer(5)]],
  const device bfloat16_t* bu [[buffer(6)]],
  const constant int32_t* dims [[buffer(7)]],
  device bfloat16_t* out [[buffer(8)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Fused gated MLP input: out[m, n] = act(x[m] . Wg[n]) * (x[m] . Wu[n]) with act = SiLU (ACT 0) or
// tanh-approximated GELU (ACT 1), both weights in MLX's affine quantized format.
// Same layout as qmv: one simdgroup per output row, lanes over consecutive packed words; each x
// element a lane loads is used for both the gate and the up row, and the two intermediate vectors
// never reach memory (the unfused form writes and re-reads 2 * M * N values).
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  float acc_g[MAX_M], acc_u[MAX_M];
  for (int m = 0; m < MAX_M; ++m) { acc_g[m] = 0.0f; acc_u[m] = 0.0f; }
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t pg = wg[n * words + wi];
    const uint32_t pu = wu[n * words + wi];
    const int k0 = wi * PER_WORD;
    const int g = n * groups + k0 / GROUP_SIZE;
    const float s_g = float(sg[g]), b_g = float(bg[g]);
    const float s_u = float(su[g]), b_u = float(bu[g]);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot_g = 0.0f, dot_u = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot_g += xv * float((pg >> (BITS * j)) & MASK);
          dot_u += xv * float((pu >> (BITS * j)) & MASK);
          xsum += xv;
        }
        acc_g[m] += s_g * dot_g + b_g * xsum;
        acc_u[m] += s_u * dot_u + b_u * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {
      const float gate = simd_sum(acc_g[m]);
      const float up = simd_sum(acc_u[m]);
      if (lane == 0) {
        float a;
        if (ACT == 0) {
          a = gate / (1.0f + exp(-gate));
        } else {
          const float c = 0.7978845608028654f;  // sqrt(2 / pi)
          a = 0.5f * gate * (1.0f + tanh(c * (gate + 0.044715f * gate * gate * gate)));
        }
        out[m * N + n] = static_cast<T>(a * up);
      }
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qswiglu_cd7b6f805635__bfloat16_t_8_32_8_2_1_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t")]] [[kernel]] decltype(custom_kernel_orchard_qswiglu_cd7b6f805635__bfloat16_t_8_32_8_2_1_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t<bfloat16_t, 8, 32, 8, 2, 1>) custom_kernel_orchard_qswiglu_cd7b6f805635__bfloat16_t_8_32_8_2_1_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t<bfloat16_t, 8, 32, 8, 2, 1>;

// ---- instantiation 32 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP, int ACT>
[[kernel]] void custom_kernel_orchard_qswiglu_cd7b6f805635__bfloat16_t_8_64_8_2_0_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t(
  const device bfloat16_t* x [[buffer(0)]],
  const device uint32_t* wg [[buffer(1)]],
  const device bfloat16_t* sg [[buffer(2)]],
  const device bfloat16_t* bg [[buffer(3)]],
  const device uint32_t* wu [[buffer(4)]],
  const device bfloat16_t* su [[buffer(5)]],
  const device bfloat16_t* bu [[buffer(6)]],
  const constant int32_t* dims [[buffer(7)]],
  device bfloat16_t* out [[buffer(8)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Fused gated MLP input: out[m, n] = act(x[m] . Wg[n]) * (x[m] . Wu[n]) with act = SiLU (ACT 0) or
// tanh-approximated GELU (ACT 1), both weights in MLX's affine quantized format.
// Same layout as qmv: one simdgroup per output row, lanes over consecutive packed words; each x
// element a lane loads is used for both the gate and the up row, and the two intermediate vectors
// never reach memory (the unfused form writes and re-reads 2 * M * N values).
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  float acc_g[MAX_M], acc_u[MAX_M];
  for (int m = 0; m < MAX_M; ++m) { acc_g[m] = 0.0f; acc_u[m] = 0.0f; }
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t pg = wg[n * words + wi];
    const uint32_t pu = wu[n * words + wi];
    const int k0 = wi * PER_WORD;
    const int g = n * groups + k0 / GROUP_SIZE;
    const float s_g = float(sg[g]), b_g = float(bg[g]);
    const float s_u = float(su[g]), b_u = float(bu[g]);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot_g = 0.0f, dot_u = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot_g += xv * float((pg >> (BITS * j)) & MASK);
          dot_u += xv * float((pu >> (BITS * j)) & MASK);
          xsum += xv;
        }
        acc_g[m] += s_g * dot_g + b_g * xsum;
        acc_u[m] += s_u * dot_u + b_u * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {
      const float gate = simd_sum(acc_g[m]);
      const float up = simd_sum(acc_u[m]);
      if (lane == 0) {
        float a;
        if (ACT == 0) {
          a = gate / (1.0f + exp(-gate));
        } else {
          const float c = 0.7978845608028654f;  // sqrt(2 / pi)
          a = 0.5f * gate * (1.0f + tanh(c * (gate + 0.044715f * gate * gate * gate)));
        }
        out[m * N + n] = static_cast<T>(a * up);
      }
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qswiglu_cd7b6f805635__bfloat16_t_8_64_8_2_0_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t")]] [[kernel]] decltype(custom_kernel_orchard_qswiglu_cd7b6f805635__bfloat16_t_8_64_8_2_0_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t<bfloat16_t, 8, 64, 8, 2, 0>) custom_kernel_orchard_qswiglu_cd7b6f805635__bfloat16_t_8_64_8_2_0_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t<bfloat16_t, 8, 64, 8, 2, 0>;

// ---- instantiation 33 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP, int ACT>
[[kernel]] void custom_kernel_orchard_qswiglu_cd7b6f805635__bfloat16_t_8_64_8_2_1_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t(
  const device bfloat16_t* x [[buffer(0)]],
  const device uint32_t* wg [[buffer(1)]],
  const device bfloat16_t* sg [[buffer(2)]],
  const device bfloat16_t* bg [[buffer(3)]],
  const device uint32_t* wu [[buffer(4)]],
  const device bfloat16_t* su [[buffer(5)]],
  const device bfloat16_t* bu [[buffer(6)]],
  const constant int32_t* dims [[buffer(7)]],
  device bfloat16_t* out [[buffer(8)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Fused gated MLP input: out[m, n] = act(x[m] . Wg[n]) * (x[m] . Wu[n]) with act = SiLU (ACT 0) or
// tanh-approximated GELU (ACT 1), both weights in MLX's affine quantized format.
// Same layout as qmv: one simdgroup per output row, lanes over consecutive packed words; each x
// element a lane loads is used for both the gate and the up row, and the two intermediate vectors
// never reach memory (the unfused form writes and re-reads 2 * M * N values).
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  float acc_g[MAX_M], acc_u[MAX_M];
  for (int m = 0; m < MAX_M; ++m) { acc_g[m] = 0.0f; acc_u[m] = 0.0f; }
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t pg = wg[n * words + wi];
    const uint32_t pu = wu[n * words + wi];
    const int k0 = wi * PER_WORD;
    const int g = n * groups + k0 / GROUP_SIZE;
    const float s_g = float(sg[g]), b_g = float(bg[g]);
    const float s_u = float(su[g]), b_u = float(bu[g]);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot_g = 0.0f, dot_u = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot_g += xv * float((pg >> (BITS * j)) & MASK);
          dot_u += xv * float((pu >> (BITS * j)) & MASK);
          xsum += xv;
        }
        acc_g[m] += s_g * dot_g + b_g * xsum;
        acc_u[m] += s_u * dot_u + b_u * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {
      const float gate = simd_sum(acc_g[m]);
      const float up = simd_sum(acc_u[m]);
      if (lane == 0) {
        float a;
        if (ACT == 0) {
          a = gate / (1.0f + exp(-gate));
        } else {
          const float c = 0.7978845608028654f;  // sqrt(2 / pi)
          a = 0.5f * gate * (1.0f + tanh(c * (gate + 0.044715f * gate * gate * gate)));
        }
        out[m * N + n] = static_cast<T>(a * up);
      }
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qswiglu_cd7b6f805635__bfloat16_t_8_64_8_2_1_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t")]] [[kernel]] decltype(custom_kernel_orchard_qswiglu_cd7b6f805635__bfloat16_t_8_64_8_2_1_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t<bfloat16_t, 8, 64, 8, 2, 1>) custom_kernel_orchard_qswiglu_cd7b6f805635__bfloat16_t_8_64_8_2_1_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t<bfloat16_t, 8, 64, 8, 2, 1>;

// ---- instantiation 34 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP, int ACT>
[[kernel]] void custom_kernel_orchard_qswiglu_cd7b6f805635__bfloat16_t_8_128_8_2_0_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t(
  const device bfloat16_t* x [[buffer(0)]],
  const device uint32_t* wg [[buffer(1)]],
  const device bfloat16_t* sg [[buffer(2)]],
  const device bfloat16_t* bg [[buffer(3)]],
  const device uint32_t* wu [[buffer(4)]],
  const device bfloat16_t* su [[buffer(5)]],
  const device bfloat16_t* bu [[buffer(6)]],
  const constant int32_t* dims [[buffer(7)]],
  device bfloat16_t* out [[buffer(8)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Fused gated MLP input: out[m, n] = act(x[m] . Wg[n]) * (x[m] . Wu[n]) with act = SiLU (ACT 0) or
// tanh-approximated GELU (ACT 1), both weights in MLX's affine quantized format.
// Same layout as qmv: one simdgroup per output row, lanes over consecutive packed words; each x
// element a lane loads is used for both the gate and the up row, and the two intermediate vectors
// never reach memory (the unfused form writes and re-reads 2 * M * N values).
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  float acc_g[MAX_M], acc_u[MAX_M];
  for (int m = 0; m < MAX_M; ++m) { acc_g[m] = 0.0f; acc_u[m] = 0.0f; }
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t pg = wg[n * words + wi];
    const uint32_t pu = wu[n * words + wi];
    const int k0 = wi * PER_WORD;
    const int g = n * groups + k0 / GROUP_SIZE;
    const float s_g = float(sg[g]), b_g = float(bg[g]);
    const float s_u = float(su[g]), b_u = float(bu[g]);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot_g = 0.0f, dot_u = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot_g += xv * float((pg >> (BITS * j)) & MASK);
          dot_u += xv * float((pu >> (BITS * j)) & MASK);
          xsum += xv;
        }
        acc_g[m] += s_g * dot_g + b_g * xsum;
        acc_u[m] += s_u * dot_u + b_u * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {
      const float gate = simd_sum(acc_g[m]);
      const float up = simd_sum(acc_u[m]);
      if (lane == 0) {
        float a;
        if (ACT == 0) {
          a = gate / (1.0f + exp(-gate));
        } else {
          const float c = 0.7978845608028654f;  // sqrt(2 / pi)
          a = 0.5f * gate * (1.0f + tanh(c * (gate + 0.044715f * gate * gate * gate)));
        }
        out[m * N + n] = static_cast<T>(a * up);
      }
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qswiglu_cd7b6f805635__bfloat16_t_8_128_8_2_0_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t")]] [[kernel]] decltype(custom_kernel_orchard_qswiglu_cd7b6f805635__bfloat16_t_8_128_8_2_0_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t<bfloat16_t, 8, 128, 8, 2, 0>) custom_kernel_orchard_qswiglu_cd7b6f805635__bfloat16_t_8_128_8_2_0_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t<bfloat16_t, 8, 128, 8, 2, 0>;

// ---- instantiation 35 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP, int ACT>
[[kernel]] void custom_kernel_orchard_qswiglu_cd7b6f805635__bfloat16_t_8_128_8_2_1_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t(
  const device bfloat16_t* x [[buffer(0)]],
  const device uint32_t* wg [[buffer(1)]],
  const device bfloat16_t* sg [[buffer(2)]],
  const device bfloat16_t* bg [[buffer(3)]],
  const device uint32_t* wu [[buffer(4)]],
  const device bfloat16_t* su [[buffer(5)]],
  const device bfloat16_t* bu [[buffer(6)]],
  const constant int32_t* dims [[buffer(7)]],
  device bfloat16_t* out [[buffer(8)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Fused gated MLP input: out[m, n] = act(x[m] . Wg[n]) * (x[m] . Wu[n]) with act = SiLU (ACT 0) or
// tanh-approximated GELU (ACT 1), both weights in MLX's affine quantized format.
// Same layout as qmv: one simdgroup per output row, lanes over consecutive packed words; each x
// element a lane loads is used for both the gate and the up row, and the two intermediate vectors
// never reach memory (the unfused form writes and re-reads 2 * M * N values).
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  float acc_g[MAX_M], acc_u[MAX_M];
  for (int m = 0; m < MAX_M; ++m) { acc_g[m] = 0.0f; acc_u[m] = 0.0f; }
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t pg = wg[n * words + wi];
    const uint32_t pu = wu[n * words + wi];
    const int k0 = wi * PER_WORD;
    const int g = n * groups + k0 / GROUP_SIZE;
    const float s_g = float(sg[g]), b_g = float(bg[g]);
    const float s_u = float(su[g]), b_u = float(bu[g]);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot_g = 0.0f, dot_u = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot_g += xv * float((pg >> (BITS * j)) & MASK);
          dot_u += xv * float((pu >> (BITS * j)) & MASK);
          xsum += xv;
        }
        acc_g[m] += s_g * dot_g + b_g * xsum;
        acc_u[m] += s_u * dot_u + b_u * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {
      const float gate = simd_sum(acc_g[m]);
      const float up = simd_sum(acc_u[m]);
      if (lane == 0) {
        float a;
        if (ACT == 0) {
          a = gate / (1.0f + exp(-gate));
        } else {
          const float c = 0.7978845608028654f;  // sqrt(2 / pi)
          a = 0.5f * gate * (1.0f + tanh(c * (gate + 0.044715f * gate * gate * gate)));
        }
        out[m * N + n] = static_cast<T>(a * up);
      }
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qswiglu_cd7b6f805635__bfloat16_t_8_128_8_2_1_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t")]] [[kernel]] decltype(custom_kernel_orchard_qswiglu_cd7b6f805635__bfloat16_t_8_128_8_2_1_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t<bfloat16_t, 8, 128, 8, 2, 1>) custom_kernel_orchard_qswiglu_cd7b6f805635__bfloat16_t_8_128_8_2_1_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t<bfloat16_t, 8, 128, 8, 2, 1>;

