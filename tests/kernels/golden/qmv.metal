// ---- instantiation 0 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP>
[[kernel]] void custom_kernel_orchard_qmv_d23a7997c4a0__float_4_32_8_2_float_uint32_t_float_float_int32_tc_float(
  const device float* x [[buffer(0)]],
  const device uint32_t* w [[buffer(1)]],
  const device float* scales [[buffer(2)]],
  const device float* biases [[buffer(3)]],
  const constant int32_t* dims [[buffer(4)]],
  device float* y [[buffer(5)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Quantized matrix-vector product for decode: y[m, n] = sum_k x[m, k] * (s[n, g] * q[n, k] + b[n, g]).
// q is MLX's affine format: uint32 words holding 32/BITS values, value j in bits BITS*j; g = k / GROUP_SIZE.
// One simdgroup owns one output row n for every batch row m, so each weight word is read once per
// call however many (up to 8) rows x has. Lanes take consecutive words (coalesced 128-byte reads);
// per word a lane forms dot(x, q) and sum(x), so the scale and bias are applied once per word:
// s * dot(x, q) + b * sum(x). The 32 lane partials are combined with simd_sum.
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup: every lane of a row takes the same branch
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  const device uint32_t* wrow = w + n * words;
  const device T* srow = scales + n * groups;
  const device T* brow = biases + n * groups;
  float acc[MAX_M];
  for (int m = 0; m < MAX_M; ++m) acc[m] = 0.0f;
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t packed = wrow[wi];
    const int k0 = wi * PER_WORD;
    const float s = float(srow[k0 / GROUP_SIZE]);
    const float b = float(brow[k0 / GROUP_SIZE]);
    float q[PER_WORD];
    for (int j = 0; j < PER_WORD; ++j) q[j] = float((packed >> (BITS * j)) & MASK);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot += xv * q[j];
          xsum += xv;
        }
        acc[m] += s * dot + b * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {  // M is the same for every lane, so all 32 reach this simd_sum together
      const float total = simd_sum(acc[m]);
      if (lane == 0) y[m * N + n] = static_cast<T>(total);
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qmv_d23a7997c4a0__float_4_32_8_2_float_uint32_t_float_float_int32_tc_float")]] [[kernel]] decltype(custom_kernel_orchard_qmv_d23a7997c4a0__float_4_32_8_2_float_uint32_t_float_float_int32_tc_float<float, 4, 32, 8, 2>) custom_kernel_orchard_qmv_d23a7997c4a0__float_4_32_8_2_float_uint32_t_float_float_int32_tc_float<float, 4, 32, 8, 2>;

// ---- instantiation 1 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP>
[[kernel]] void custom_kernel_orchard_qmv_d23a7997c4a0__float_4_64_8_2_float_uint32_t_float_float_int32_tc_float(
  const device float* x [[buffer(0)]],
  const device uint32_t* w [[buffer(1)]],
  const device float* scales [[buffer(2)]],
  const device float* biases [[buffer(3)]],
  const constant int32_t* dims [[buffer(4)]],
  device float* y [[buffer(5)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Quantized matrix-vector product for decode: y[m, n] = sum_k x[m, k] * (s[n, g] * q[n, k] + b[n, g]).
// q is MLX's affine format: uint32 words holding 32/BITS values, value j in bits BITS*j; g = k / GROUP_SIZE.
// One simdgroup owns one output row n for every batch row m, so each weight word is read once per
// call however many (up to 8) rows x has. Lanes take consecutive words (coalesced 128-byte reads);
// per word a lane forms dot(x, q) and sum(x), so the scale and bias are applied once per word:
// s * dot(x, q) + b * sum(x). The 32 lane partials are combined with simd_sum.
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup: every lane of a row takes the same branch
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  const device uint32_t* wrow = w + n * words;
  const device T* srow = scales + n * groups;
  const device T* brow = biases + n * groups;
  float acc[MAX_M];
  for (int m = 0; m < MAX_M; ++m) acc[m] = 0.0f;
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t packed = wrow[wi];
    const int k0 = wi * PER_WORD;
    const float s = float(srow[k0 / GROUP_SIZE]);
    const float b = float(brow[k0 / GROUP_SIZE]);
    float q[PER_WORD];
    for (int j = 0; j < PER_WORD; ++j) q[j] = float((packed >> (BITS * j)) & MASK);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot += xv * q[j];
          xsum += xv;
        }
        acc[m] += s * dot + b * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {  // M is the same for every lane, so all 32 reach this simd_sum together
      const float total = simd_sum(acc[m]);
      if (lane == 0) y[m * N + n] = static_cast<T>(total);
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qmv_d23a7997c4a0__float_4_64_8_2_float_uint32_t_float_float_int32_tc_float")]] [[kernel]] decltype(custom_kernel_orchard_qmv_d23a7997c4a0__float_4_64_8_2_float_uint32_t_float_float_int32_tc_float<float, 4, 64, 8, 2>) custom_kernel_orchard_qmv_d23a7997c4a0__float_4_64_8_2_float_uint32_t_float_float_int32_tc_float<float, 4, 64, 8, 2>;

// ---- instantiation 2 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP>
[[kernel]] void custom_kernel_orchard_qmv_d23a7997c4a0__float_4_128_8_2_float_uint32_t_float_float_int32_tc_float(
  const device float* x [[buffer(0)]],
  const device uint32_t* w [[buffer(1)]],
  const device float* scales [[buffer(2)]],
  const device float* biases [[buffer(3)]],
  const constant int32_t* dims [[buffer(4)]],
  device float* y [[buffer(5)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Quantized matrix-vector product for decode: y[m, n] = sum_k x[m, k] * (s[n, g] * q[n, k] + b[n, g]).
// q is MLX's affine format: uint32 words holding 32/BITS values, value j in bits BITS*j; g = k / GROUP_SIZE.
// One simdgroup owns one output row n for every batch row m, so each weight word is read once per
// call however many (up to 8) rows x has. Lanes take consecutive words (coalesced 128-byte reads);
// per word a lane forms dot(x, q) and sum(x), so the scale and bias are applied once per word:
// s * dot(x, q) + b * sum(x). The 32 lane partials are combined with simd_sum.
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup: every lane of a row takes the same branch
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  const device uint32_t* wrow = w + n * words;
  const device T* srow = scales + n * groups;
  const device T* brow = biases + n * groups;
  float acc[MAX_M];
  for (int m = 0; m < MAX_M; ++m) acc[m] = 0.0f;
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t packed = wrow[wi];
    const int k0 = wi * PER_WORD;
    const float s = float(srow[k0 / GROUP_SIZE]);
    const float b = float(brow[k0 / GROUP_SIZE]);
    float q[PER_WORD];
    for (int j = 0; j < PER_WORD; ++j) q[j] = float((packed >> (BITS * j)) & MASK);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot += xv * q[j];
          xsum += xv;
        }
        acc[m] += s * dot + b * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {  // M is the same for every lane, so all 32 reach this simd_sum together
      const float total = simd_sum(acc[m]);
      if (lane == 0) y[m * N + n] = static_cast<T>(total);
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qmv_d23a7997c4a0__float_4_128_8_2_float_uint32_t_float_float_int32_tc_float")]] [[kernel]] decltype(custom_kernel_orchard_qmv_d23a7997c4a0__float_4_128_8_2_float_uint32_t_float_float_int32_tc_float<float, 4, 128, 8, 2>) custom_kernel_orchard_qmv_d23a7997c4a0__float_4_128_8_2_float_uint32_t_float_float_int32_tc_float<float, 4, 128, 8, 2>;

// ---- instantiation 3 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP>
[[kernel]] void custom_kernel_orchard_qmv_d23a7997c4a0__float_8_32_8_2_float_uint32_t_float_float_int32_tc_float(
  const device float* x [[buffer(0)]],
  const device uint32_t* w [[buffer(1)]],
  const device float* scales [[buffer(2)]],
  const device float* biases [[buffer(3)]],
  const constant int32_t* dims [[buffer(4)]],
  device float* y [[buffer(5)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Quantized matrix-vector product for decode: y[m, n] = sum_k x[m, k] * (s[n, g] * q[n, k] + b[n, g]).
// q is MLX's affine format: uint32 words holding 32/BITS values, value j in bits BITS*j; g = k / GROUP_SIZE.
// One simdgroup owns one output row n for every batch row m, so each weight word is read once per
// call however many (up to 8) rows x has. Lanes take consecutive words (coalesced 128-byte reads);
// per word a lane forms dot(x, q) and sum(x), so the scale and bias are applied once per word:
// s * dot(x, q) + b * sum(x). The 32 lane partials are combined with simd_sum.
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup: every lane of a row takes the same branch
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  const device uint32_t* wrow = w + n * words;
  const device T* srow = scales + n * groups;
  const device T* brow = biases + n * groups;
  float acc[MAX_M];
  for (int m = 0; m < MAX_M; ++m) acc[m] = 0.0f;
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t packed = wrow[wi];
    const int k0 = wi * PER_WORD;
    const float s = float(srow[k0 / GROUP_SIZE]);
    const float b = float(brow[k0 / GROUP_SIZE]);
    float q[PER_WORD];
    for (int j = 0; j < PER_WORD; ++j) q[j] = float((packed >> (BITS * j)) & MASK);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot += xv * q[j];
          xsum += xv;
        }
        acc[m] += s * dot + b * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {  // M is the same for every lane, so all 32 reach this simd_sum together
      const float total = simd_sum(acc[m]);
      if (lane == 0) y[m * N + n] = static_cast<T>(total);
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qmv_d23a7997c4a0__float_8_32_8_2_float_uint32_t_float_float_int32_tc_float")]] [[kernel]] decltype(custom_kernel_orchard_qmv_d23a7997c4a0__float_8_32_8_2_float_uint32_t_float_float_int32_tc_float<float, 8, 32, 8, 2>) custom_kernel_orchard_qmv_d23a7997c4a0__float_8_32_8_2_float_uint32_t_float_float_int32_tc_float<float, 8, 32, 8, 2>;

// ---- instantiation 4 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP>
[[kernel]] void custom_kernel_orchard_qmv_d23a7997c4a0__float_8_64_8_2_float_uint32_t_float_float_int32_tc_float(
  const device float* x [[buffer(0)]],
  const device uint32_t* w [[buffer(1)]],
  const device float* scales [[buffer(2)]],
  const device float* biases [[buffer(3)]],
  const constant int32_t* dims [[buffer(4)]],
  device float* y [[buffer(5)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Quantized matrix-vector product for decode: y[m, n] = sum_k x[m, k] * (s[n, g] * q[n, k] + b[n, g]).
// q is MLX's affine format: uint32 words holding 32/BITS values, value j in bits BITS*j; g = k / GROUP_SIZE.
// One simdgroup owns one output row n for every batch row m, so each weight word is read once per
// call however many (up to 8) rows x has. Lanes take consecutive words (coalesced 128-byte reads);
// per word a lane forms dot(x, q) and sum(x), so the scale and bias are applied once per word:
// s * dot(x, q) + b * sum(x). The 32 lane partials are combined with simd_sum.
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup: every lane of a row takes the same branch
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  const device uint32_t* wrow = w + n * words;
  const device T* srow = scales + n * groups;
  const device T* brow = biases + n * groups;
  float acc[MAX_M];
  for (int m = 0; m < MAX_M; ++m) acc[m] = 0.0f;
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t packed = wrow[wi];
    const int k0 = wi * PER_WORD;
    const float s = float(srow[k0 / GROUP_SIZE]);
    const float b = float(brow[k0 / GROUP_SIZE]);
    float q[PER_WORD];
    for (int j = 0; j < PER_WORD; ++j) q[j] = float((packed >> (BITS * j)) & MASK);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot += xv * q[j];
          xsum += xv;
        }
        acc[m] += s * dot + b * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {  // M is the same for every lane, so all 32 reach this simd_sum together
      const float total = simd_sum(acc[m]);
      if (lane == 0) y[m * N + n] = static_cast<T>(total);
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qmv_d23a7997c4a0__float_8_64_8_2_float_uint32_t_float_float_int32_tc_float")]] [[kernel]] decltype(custom_kernel_orchard_qmv_d23a7997c4a0__float_8_64_8_2_float_uint32_t_float_float_int32_tc_float<float, 8, 64, 8, 2>) custom_kernel_orchard_qmv_d23a7997c4a0__float_8_64_8_2_float_uint32_t_float_float_int32_tc_float<float, 8, 64, 8, 2>;

// ---- instantiation 5 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP>
[[kernel]] void custom_kernel_orchard_qmv_d23a7997c4a0__float_8_128_8_2_float_uint32_t_float_float_int32_tc_float(
  const device float* x [[buffer(0)]],
  const device uint32_t* w [[buffer(1)]],
  const device float* scales [[buffer(2)]],
  const device float* biases [[buffer(3)]],
  const constant int32_t* dims [[buffer(4)]],
  device float* y [[buffer(5)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Quantized matrix-vector product for decode: y[m, n] = sum_k x[m, k] * (s[n, g] * q[n, k] + b[n, g]).
// q is MLX's affine format: uint32 words holding 32/BITS values, value j in bits BITS*j; g = k / GROUP_SIZE.
// One simdgroup owns one output row n for every batch row m, so each weight word is read once per
// call however many (up to 8) rows x has. Lanes take consecutive words (coalesced 128-byte reads);
// per word a lane forms dot(x, q) and sum(x), so the scale and bias are applied once per word:
// s * dot(x, q) + b * sum(x). The 32 lane partials are combined with simd_sum.
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup: every lane of a row takes the same branch
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  const device uint32_t* wrow = w + n * words;
  const device T* srow = scales + n * groups;
  const device T* brow = biases + n * groups;
  float acc[MAX_M];
  for (int m = 0; m < MAX_M; ++m) acc[m] = 0.0f;
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t packed = wrow[wi];
    const int k0 = wi * PER_WORD;
    const float s = float(srow[k0 / GROUP_SIZE]);
    const float b = float(brow[k0 / GROUP_SIZE]);
    float q[PER_WORD];
    for (int j = 0; j < PER_WORD; ++j) q[j] = float((packed >> (BITS * j)) & MASK);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot += xv * q[j];
          xsum += xv;
        }
        acc[m] += s * dot + b * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {  // M is the same for every lane, so all 32 reach this simd_sum together
      const float total = simd_sum(acc[m]);
      if (lane == 0) y[m * N + n] = static_cast<T>(total);
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qmv_d23a7997c4a0__float_8_128_8_2_float_uint32_t_float_float_int32_tc_float")]] [[kernel]] decltype(custom_kernel_orchard_qmv_d23a7997c4a0__float_8_128_8_2_float_uint32_t_float_float_int32_tc_float<float, 8, 128, 8, 2>) custom_kernel_orchard_qmv_d23a7997c4a0__float_8_128_8_2_float_uint32_t_float_float_int32_tc_float<float, 8, 128, 8, 2>;

// ---- instantiation 6 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP>
[[kernel]] void custom_kernel_orchard_qmv_d23a7997c4a0__float16_t_4_32_8_2_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t(
  const device float16_t* x [[buffer(0)]],
  const device uint32_t* w [[buffer(1)]],
  const device float16_t* scales [[buffer(2)]],
  const device float16_t* biases [[buffer(3)]],
  const constant int32_t* dims [[buffer(4)]],
  device float16_t* y [[buffer(5)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Quantized matrix-vector product for decode: y[m, n] = sum_k x[m, k] * (s[n, g] * q[n, k] + b[n, g]).
// q is MLX's affine format: uint32 words holding 32/BITS values, value j in bits BITS*j; g = k / GROUP_SIZE.
// One simdgroup owns one output row n for every batch row m, so each weight word is read once per
// call however many (up to 8) rows x has. Lanes take consecutive words (coalesced 128-byte reads);
// per word a lane forms dot(x, q) and sum(x), so the scale and bias are applied once per word:
// s * dot(x, q) + b * sum(x). The 32 lane partials are combined with simd_sum.
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup: every lane of a row takes the same branch
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  const device uint32_t* wrow = w + n * words;
  const device T* srow = scales + n * groups;
  const device T* brow = biases + n * groups;
  float acc[MAX_M];
  for (int m = 0; m < MAX_M; ++m) acc[m] = 0.0f;
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t packed = wrow[wi];
    const int k0 = wi * PER_WORD;
    const float s = float(srow[k0 / GROUP_SIZE]);
    const float b = float(brow[k0 / GROUP_SIZE]);
    float q[PER_WORD];
    for (int j = 0; j < PER_WORD; ++j) q[j] = float((packed >> (BITS * j)) & MASK);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot += xv * q[j];
          xsum += xv;
        }
        acc[m] += s * dot + b * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {  // M is the same for every lane, so all 32 reach this simd_sum together
      const float total = simd_sum(acc[m]);
      if (lane == 0) y[m * N + n] = static_cast<T>(total);
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qmv_d23a7997c4a0__float16_t_4_32_8_2_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t")]] [[kernel]] decltype(custom_kernel_orchard_qmv_d23a7997c4a0__float16_t_4_32_8_2_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t<float16_t, 4, 32, 8, 2>) custom_kernel_orchard_qmv_d23a7997c4a0__float16_t_4_32_8_2_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t<float16_t, 4, 32, 8, 2>;

// ---- instantiation 7 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP>
[[kernel]] void custom_kernel_orchard_qmv_d23a7997c4a0__float16_t_4_64_8_2_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t(
  const device float16_t* x [[buffer(0)]],
  const device uint32_t* w [[buffer(1)]],
  const device float16_t* scales [[buffer(2)]],
  const device float16_t* biases [[buffer(3)]],
  const constant int32_t* dims [[buffer(4)]],
  device float16_t* y [[buffer(5)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Quantized matrix-vector product for decode: y[m, n] = sum_k x[m, k] * (s[n, g] * q[n, k] + b[n, g]).
// q is MLX's affine format: uint32 words holding 32/BITS values, value j in bits BITS*j; g = k / GROUP_SIZE.
// One simdgroup owns one output row n for every batch row m, so each weight word is read once per
// call however many (up to 8) rows x has. Lanes take consecutive words (coalesced 128-byte reads);
// per word a lane forms dot(x, q) and sum(x), so the scale and bias are applied once per word:
// s * dot(x, q) + b * sum(x). The 32 lane partials are combined with simd_sum.
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup: every lane of a row takes the same branch
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  const device uint32_t* wrow = w + n * words;
  const device T* srow = scales + n * groups;
  const device T* brow = biases + n * groups;
  float acc[MAX_M];
  for (int m = 0; m < MAX_M; ++m) acc[m] = 0.0f;
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t packed = wrow[wi];
    const int k0 = wi * PER_WORD;
    const float s = float(srow[k0 / GROUP_SIZE]);
    const float b = float(brow[k0 / GROUP_SIZE]);
    float q[PER_WORD];
    for (int j = 0; j < PER_WORD; ++j) q[j] = float((packed >> (BITS * j)) & MASK);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot += xv * q[j];
          xsum += xv;
        }
        acc[m] += s * dot + b * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {  // M is the same for every lane, so all 32 reach this simd_sum together
      const float total = simd_sum(acc[m]);
      if (lane == 0) y[m * N + n] = static_cast<T>(total);
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qmv_d23a7997c4a0__float16_t_4_64_8_2_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t")]] [[kernel]] decltype(custom_kernel_orchard_qmv_d23a7997c4a0__float16_t_4_64_8_2_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t<float16_t, 4, 64, 8, 2>) custom_kernel_orchard_qmv_d23a7997c4a0__float16_t_4_64_8_2_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t<float16_t, 4, 64, 8, 2>;

// ---- instantiation 8 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP>
[[kernel]] void custom_kernel_orchard_qmv_d23a7997c4a0__float16_t_4_128_8_2_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t(
  const device float16_t* x [[buffer(0)]],
  const device uint32_t* w [[buffer(1)]],
  const device float16_t* scales [[buffer(2)]],
  const device float16_t* biases [[buffer(3)]],
  const constant int32_t* dims [[buffer(4)]],
  device float16_t* y [[buffer(5)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Quantized matrix-vector product for decode: y[m, n] = sum_k x[m, k] * (s[n, g] * q[n, k] + b[n, g]).
// q is MLX's affine format: uint32 words holding 32/BITS values, value j in bits BITS*j; g = k / GROUP_SIZE.
// One simdgroup owns one output row n for every batch row m, so each weight word is read once per
// call however many (up to 8) rows x has. Lanes take consecutive words (coalesced 128-byte reads);
// per word a lane forms dot(x, q) and sum(x), so the scale and bias are applied once per word:
// s * dot(x, q) + b * sum(x). The 32 lane partials are combined with simd_sum.
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup: every lane of a row takes the same branch
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  const device uint32_t* wrow = w + n * words;
  const device T* srow = scales + n * groups;
  const device T* brow = biases + n * groups;
  float acc[MAX_M];
  for (int m = 0; m < MAX_M; ++m) acc[m] = 0.0f;
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t packed = wrow[wi];
    const int k0 = wi * PER_WORD;
    const float s = float(srow[k0 / GROUP_SIZE]);
    const float b = float(brow[k0 / GROUP_SIZE]);
    float q[PER_WORD];
    for (int j = 0; j < PER_WORD; ++j) q[j] = float((packed >> (BITS * j)) & MASK);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot += xv * q[j];
          xsum += xv;
        }
        acc[m] += s * dot + b * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {  // M is the same for every lane, so all 32 reach this simd_sum together
      const float total = simd_sum(acc[m]);
      if (lane == 0) y[m * N + n] = static_cast<T>(total);
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qmv_d23a7997c4a0__float16_t_4_128_8_2_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t")]] [[kernel]] decltype(custom_kernel_orchard_qmv_d23a7997c4a0__float16_t_4_128_8_2_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t<float16_t, 4, 128, 8, 2>) custom_kernel_orchard_qmv_d23a7997c4a0__float16_t_4_128_8_2_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t<float16_t, 4, 128, 8, 2>;

// ---- instantiation 9 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP>
[[kernel]] void custom_kernel_orchard_qmv_d23a7997c4a0__float16_t_8_32_8_2_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t(
  const device float16_t* x [[buffer(0)]],
  const device uint32_t* w [[buffer(1)]],
  const device float16_t* scales [[buffer(2)]],
  const device float16_t* biases [[buffer(3)]],
  const constant int32_t* dims [[buffer(4)]],
  device float16_t* y [[buffer(5)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Quantized matrix-vector product for decode: y[m, n] = sum_k x[m, k] * (s[n, g] * q[n, k] + b[n, g]).
// q is MLX's affine format: uint32 words holding 32/BITS values, value j in bits BITS*j; g = k / GROUP_SIZE.
// One simdgroup owns one output row n for every batch row m, so each weight word is read once per
// call however many (up to 8) rows x has. Lanes take consecutive words (coalesced 128-byte reads);
// per word a lane forms dot(x, q) and sum(x), so the scale and bias are applied once per word:
// s * dot(x, q) + b * sum(x). The 32 lane partials are combined with simd_sum.
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup: every lane of a row takes the same branch
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  const device uint32_t* wrow = w + n * words;
  const device T* srow = scales + n * groups;
  const device T* brow = biases + n * groups;
  float acc[MAX_M];
  for (int m = 0; m < MAX_M; ++m) acc[m] = 0.0f;
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t packed = wrow[wi];
    const int k0 = wi * PER_WORD;
    const float s = float(srow[k0 / GROUP_SIZE]);
    const float b = float(brow[k0 / GROUP_SIZE]);
    float q[PER_WORD];
    for (int j = 0; j < PER_WORD; ++j) q[j] = float((packed >> (BITS * j)) & MASK);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot += xv * q[j];
          xsum += xv;
        }
        acc[m] += s * dot + b * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {  // M is the same for every lane, so all 32 reach this simd_sum together
      const float total = simd_sum(acc[m]);
      if (lane == 0) y[m * N + n] = static_cast<T>(total);
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qmv_d23a7997c4a0__float16_t_8_32_8_2_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t")]] [[kernel]] decltype(custom_kernel_orchard_qmv_d23a7997c4a0__float16_t_8_32_8_2_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t<float16_t, 8, 32, 8, 2>) custom_kernel_orchard_qmv_d23a7997c4a0__float16_t_8_32_8_2_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t<float16_t, 8, 32, 8, 2>;

// ---- instantiation 10 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP>
[[kernel]] void custom_kernel_orchard_qmv_d23a7997c4a0__float16_t_8_64_8_2_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t(
  const device float16_t* x [[buffer(0)]],
  const device uint32_t* w [[buffer(1)]],
  const device float16_t* scales [[buffer(2)]],
  const device float16_t* biases [[buffer(3)]],
  const constant int32_t* dims [[buffer(4)]],
  device float16_t* y [[buffer(5)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Quantized matrix-vector product for decode: y[m, n] = sum_k x[m, k] * (s[n, g] * q[n, k] + b[n, g]).
// q is MLX's affine format: uint32 words holding 32/BITS values, value j in bits BITS*j; g = k / GROUP_SIZE.
// One simdgroup owns one output row n for every batch row m, so each weight word is read once per
// call however many (up to 8) rows x has. Lanes take consecutive words (coalesced 128-byte reads);
// per word a lane forms dot(x, q) and sum(x), so the scale and bias are applied once per word:
// s * dot(x, q) + b * sum(x). The 32 lane partials are combined with simd_sum.
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup: every lane of a row takes the same branch
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  const device uint32_t* wrow = w + n * words;
  const device T* srow = scales + n * groups;
  const device T* brow = biases + n * groups;
  float acc[MAX_M];
  for (int m = 0; m < MAX_M; ++m) acc[m] = 0.0f;
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t packed = wrow[wi];
    const int k0 = wi * PER_WORD;
    const float s = float(srow[k0 / GROUP_SIZE]);
    const float b = float(brow[k0 / GROUP_SIZE]);
    float q[PER_WORD];
    for (int j = 0; j < PER_WORD; ++j) q[j] = float((packed >> (BITS * j)) & MASK);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot += xv * q[j];
          xsum += xv;
        }
        acc[m] += s * dot + b * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {  // M is the same for every lane, so all 32 reach this simd_sum together
      const float total = simd_sum(acc[m]);
      if (lane == 0) y[m * N + n] = static_cast<T>(total);
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qmv_d23a7997c4a0__float16_t_8_64_8_2_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t")]] [[kernel]] decltype(custom_kernel_orchard_qmv_d23a7997c4a0__float16_t_8_64_8_2_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t<float16_t, 8, 64, 8, 2>) custom_kernel_orchard_qmv_d23a7997c4a0__float16_t_8_64_8_2_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t<float16_t, 8, 64, 8, 2>;

// ---- instantiation 11 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP>
[[kernel]] void custom_kernel_orchard_qmv_d23a7997c4a0__float16_t_8_128_8_2_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t(
  const device float16_t* x [[buffer(0)]],
  const device uint32_t* w [[buffer(1)]],
  const device float16_t* scales [[buffer(2)]],
  const device float16_t* biases [[buffer(3)]],
  const constant int32_t* dims [[buffer(4)]],
  device float16_t* y [[buffer(5)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Quantized matrix-vector product for decode: y[m, n] = sum_k x[m, k] * (s[n, g] * q[n, k] + b[n, g]).
// q is MLX's affine format: uint32 words holding 32/BITS values, value j in bits BITS*j; g = k / GROUP_SIZE.
// One simdgroup owns one output row n for every batch row m, so each weight word is read once per
// call however many (up to 8) rows x has. Lanes take consecutive words (coalesced 128-byte reads);
// per word a lane forms dot(x, q) and sum(x), so the scale and bias are applied once per word:
// s * dot(x, q) + b * sum(x). The 32 lane partials are combined with simd_sum.
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup: every lane of a row takes the same branch
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  const device uint32_t* wrow = w + n * words;
  const device T* srow = scales + n * groups;
  const device T* brow = biases + n * groups;
  float acc[MAX_M];
  for (int m = 0; m < MAX_M; ++m) acc[m] = 0.0f;
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t packed = wrow[wi];
    const int k0 = wi * PER_WORD;
    const float s = float(srow[k0 / GROUP_SIZE]);
    const float b = float(brow[k0 / GROUP_SIZE]);
    float q[PER_WORD];
    for (int j = 0; j < PER_WORD; ++j) q[j] = float((packed >> (BITS * j)) & MASK);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot += xv * q[j];
          xsum += xv;
        }
        acc[m] += s * dot + b * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {  // M is the same for every lane, so all 32 reach this simd_sum together
      const float total = simd_sum(acc[m]);
      if (lane == 0) y[m * N + n] = static_cast<T>(total);
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qmv_d23a7997c4a0__float16_t_8_128_8_2_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t")]] [[kernel]] decltype(custom_kernel_orchard_qmv_d23a7997c4a0__float16_t_8_128_8_2_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t<float16_t, 8, 128, 8, 2>) custom_kernel_orchard_qmv_d23a7997c4a0__float16_t_8_128_8_2_float16_t_uint32_t_float16_t_float16_t_int32_tc_float16_t<float16_t, 8, 128, 8, 2>;

// ---- instantiation 12 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP>
[[kernel]] void custom_kernel_orchard_qmv_d23a7997c4a0__bfloat16_t_4_32_8_2_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t(
  const device bfloat16_t* x [[buffer(0)]],
  const device uint32_t* w [[buffer(1)]],
  const device bfloat16_t* scales [[buffer(2)]],
  const device bfloat16_t* biases [[buffer(3)]],
  const constant int32_t* dims [[buffer(4)]],
  device bfloat16_t* y [[buffer(5)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Quantized matrix-vector product for decode: y[m, n] = sum_k x[m, k] * (s[n, g] * q[n, k] + b[n, g]).
// q is MLX's affine format: uint32 words holding 32/BITS values, value j in bits BITS*j; g = k / GROUP_SIZE.
// One simdgroup owns one output row n for every batch row m, so each weight word is read once per
// call however many (up to 8) rows x has. Lanes take consecutive words (coalesced 128-byte reads);
// per word a lane forms dot(x, q) and sum(x), so the scale and bias are applied once per word:
// s * dot(x, q) + b * sum(x). The 32 lane partials are combined with simd_sum.
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup: every lane of a row takes the same branch
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  const device uint32_t* wrow = w + n * words;
  const device T* srow = scales + n * groups;
  const device T* brow = biases + n * groups;
  float acc[MAX_M];
  for (int m = 0; m < MAX_M; ++m) acc[m] = 0.0f;
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t packed = wrow[wi];
    const int k0 = wi * PER_WORD;
    const float s = float(srow[k0 / GROUP_SIZE]);
    const float b = float(brow[k0 / GROUP_SIZE]);
    float q[PER_WORD];
    for (int j = 0; j < PER_WORD; ++j) q[j] = float((packed >> (BITS * j)) & MASK);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot += xv * q[j];
          xsum += xv;
        }
        acc[m] += s * dot + b * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {  // M is the same for every lane, so all 32 reach this simd_sum together
      const float total = simd_sum(acc[m]);
      if (lane == 0) y[m * N + n] = static_cast<T>(total);
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qmv_d23a7997c4a0__bfloat16_t_4_32_8_2_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t")]] [[kernel]] decltype(custom_kernel_orchard_qmv_d23a7997c4a0__bfloat16_t_4_32_8_2_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t<bfloat16_t, 4, 32, 8, 2>) custom_kernel_orchard_qmv_d23a7997c4a0__bfloat16_t_4_32_8_2_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t<bfloat16_t, 4, 32, 8, 2>;

// ---- instantiation 13 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP>
[[kernel]] void custom_kernel_orchard_qmv_d23a7997c4a0__bfloat16_t_4_64_8_2_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t(
  const device bfloat16_t* x [[buffer(0)]],
  const device uint32_t* w [[buffer(1)]],
  const device bfloat16_t* scales [[buffer(2)]],
  const device bfloat16_t* biases [[buffer(3)]],
  const constant int32_t* dims [[buffer(4)]],
  device bfloat16_t* y [[buffer(5)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Quantized matrix-vector product for decode: y[m, n] = sum_k x[m, k] * (s[n, g] * q[n, k] + b[n, g]).
// q is MLX's affine format: uint32 words holding 32/BITS values, value j in bits BITS*j; g = k / GROUP_SIZE.
// One simdgroup owns one output row n for every batch row m, so each weight word is read once per
// call however many (up to 8) rows x has. Lanes take consecutive words (coalesced 128-byte reads);
// per word a lane forms dot(x, q) and sum(x), so the scale and bias are applied once per word:
// s * dot(x, q) + b * sum(x). The 32 lane partials are combined with simd_sum.
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup: every lane of a row takes the same branch
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  const device uint32_t* wrow = w + n * words;
  const device T* srow = scales + n * groups;
  const device T* brow = biases + n * groups;
  float acc[MAX_M];
  for (int m = 0; m < MAX_M; ++m) acc[m] = 0.0f;
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t packed = wrow[wi];
    const int k0 = wi * PER_WORD;
    const float s = float(srow[k0 / GROUP_SIZE]);
    const float b = float(brow[k0 / GROUP_SIZE]);
    float q[PER_WORD];
    for (int j = 0; j < PER_WORD; ++j) q[j] = float((packed >> (BITS * j)) & MASK);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot += xv * q[j];
          xsum += xv;
        }
        acc[m] += s * dot + b * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {  // M is the same for every lane, so all 32 reach this simd_sum together
      const float total = simd_sum(acc[m]);
      if (lane == 0) y[m * N + n] = static_cast<T>(total);
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qmv_d23a7997c4a0__bfloat16_t_4_64_8_2_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t")]] [[kernel]] decltype(custom_kernel_orchard_qmv_d23a7997c4a0__bfloat16_t_4_64_8_2_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t<bfloat16_t, 4, 64, 8, 2>) custom_kernel_orchard_qmv_d23a7997c4a0__bfloat16_t_4_64_8_2_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t<bfloat16_t, 4, 64, 8, 2>;

// ---- instantiation 14 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP>
[[kernel]] void custom_kernel_orchard_qmv_d23a7997c4a0__bfloat16_t_4_128_8_2_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t(
  const device bfloat16_t* x [[buffer(0)]],
  const device uint32_t* w [[buffer(1)]],
  const device bfloat16_t* scales [[buffer(2)]],
  const device bfloat16_t* biases [[buffer(3)]],
  const constant int32_t* dims [[buffer(4)]],
  device bfloat16_t* y [[buffer(5)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Quantized matrix-vector product for decode: y[m, n] = sum_k x[m, k] * (s[n, g] * q[n, k] + b[n, g]).
// q is MLX's affine format: uint32 words holding 32/BITS values, value j in bits BITS*j; g = k / GROUP_SIZE.
// One simdgroup owns one output row n for every batch row m, so each weight word is read once per
// call however many (up to 8) rows x has. Lanes take consecutive words (coalesced 128-byte reads);
// per word a lane forms dot(x, q) and sum(x), so the scale and bias are applied once per word:
// s * dot(x, q) + b * sum(x). The 32 lane partials are combined with simd_sum.
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup: every lane of a row takes the same branch
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  const device uint32_t* wrow = w + n * words;
  const device T* srow = scales + n * groups;
  const device T* brow = biases + n * groups;
  float acc[MAX_M];
  for (int m = 0; m < MAX_M; ++m) acc[m] = 0.0f;
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t packed = wrow[wi];
    const int k0 = wi * PER_WORD;
    const float s = float(srow[k0 / GROUP_SIZE]);
    const float b = float(brow[k0 / GROUP_SIZE]);
    float q[PER_WORD];
    for (int j = 0; j < PER_WORD; ++j) q[j] = float((packed >> (BITS * j)) & MASK);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot += xv * q[j];
          xsum += xv;
        }
        acc[m] += s * dot + b * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {  // M is the same for every lane, so all 32 reach this simd_sum together
      const float total = simd_sum(acc[m]);
      if (lane == 0) y[m * N + n] = static_cast<T>(total);
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qmv_d23a7997c4a0__bfloat16_t_4_128_8_2_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t")]] [[kernel]] decltype(custom_kernel_orchard_qmv_d23a7997c4a0__bfloat16_t_4_128_8_2_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t<bfloat16_t, 4, 128, 8, 2>) custom_kernel_orchard_qmv_d23a7997c4a0__bfloat16_t_4_128_8_2_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t<bfloat16_t, 4, 128, 8, 2>;

// ---- instantiation 15 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP>
[[kernel]] void custom_kernel_orchard_qmv_d23a7997c4a0__bfloat16_t_8_32_8_2_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t(
  const device bfloat16_t* x [[buffer(0)]],
  const device uint32_t* w [[buffer(1)]],
  const device bfloat16_t* scales [[buffer(2)]],
  const device bfloat16_t* biases [[buffer(3)]],
  const constant int32_t* dims [[buffer(4)]],
  device bfloat16_t* y [[buffer(5)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Quantized matrix-vector product for decode: y[m, n] = sum_k x[m, k] * (s[n, g] * q[n, k] + b[n, g]).
// q is MLX's affine format: uint32 words holding 32/BITS values, value j in bits BITS*j; g = k / GROUP_SIZE.
// One simdgroup owns one output row n for every batch row m, so each weight word is read once per
// call however many (up to 8) rows x has. Lanes take consecutive words (coalesced 128-byte reads);
// per word a lane forms dot(x, q) and sum(x), so the scale and bias are applied once per word:
// s * dot(x, q) + b * sum(x). The 32 lane partials are combined with simd_sum.
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup: every lane of a row takes the same branch
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  const device uint32_t* wrow = w + n * words;
  const device T* srow = scales + n * groups;
  const device T* brow = biases + n * groups;
  float acc[MAX_M];
  for (int m = 0; m < MAX_M; ++m) acc[m] = 0.0f;
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t packed = wrow[wi];
    const int k0 = wi * PER_WORD;
    const float s = float(srow[k0 / GROUP_SIZE]);
    const float b = float(brow[k0 / GROUP_SIZE]);
    float q[PER_WORD];
    for (int j = 0; j < PER_WORD; ++j) q[j] = float((packed >> (BITS * j)) & MASK);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot += xv * q[j];
          xsum += xv;
        }
        acc[m] += s * dot + b * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {  // M is the same for every lane, so all 32 reach this simd_sum together
      const float total = simd_sum(acc[m]);
      if (lane == 0) y[m * N + n] = static_cast<T>(total);
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qmv_d23a7997c4a0__bfloat16_t_8_32_8_2_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t")]] [[kernel]] decltype(custom_kernel_orchard_qmv_d23a7997c4a0__bfloat16_t_8_32_8_2_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t<bfloat16_t, 8, 32, 8, 2>) custom_kernel_orchard_qmv_d23a7997c4a0__bfloat16_t_8_32_8_2_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t<bfloat16_t, 8, 32, 8, 2>;

// ---- instantiation 16 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP>
[[kernel]] void custom_kernel_orchard_qmv_d23a7997c4a0__bfloat16_t_8_64_8_2_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t(
  const device bfloat16_t* x [[buffer(0)]],
  const device uint32_t* w [[buffer(1)]],
  const device bfloat16_t* scales [[buffer(2)]],
  const device bfloat16_t* biases [[buffer(3)]],
  const constant int32_t* dims [[buffer(4)]],
  device bfloat16_t* y [[buffer(5)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Quantized matrix-vector product for decode: y[m, n] = sum_k x[m, k] * (s[n, g] * q[n, k] + b[n, g]).
// q is MLX's affine format: uint32 words holding 32/BITS values, value j in bits BITS*j; g = k / GROUP_SIZE.
// One simdgroup owns one output row n for every batch row m, so each weight word is read once per
// call however many (up to 8) rows x has. Lanes take consecutive words (coalesced 128-byte reads);
// per word a lane forms dot(x, q) and sum(x), so the scale and bias are applied once per word:
// s * dot(x, q) + b * sum(x). The 32 lane partials are combined with simd_sum.
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup: every lane of a row takes the same branch
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  const device uint32_t* wrow = w + n * words;
  const device T* srow = scales + n * groups;
  const device T* brow = biases + n * groups;
  float acc[MAX_M];
  for (int m = 0; m < MAX_M; ++m) acc[m] = 0.0f;
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t packed = wrow[wi];
    const int k0 = wi * PER_WORD;
    const float s = float(srow[k0 / GROUP_SIZE]);
    const float b = float(brow[k0 / GROUP_SIZE]);
    float q[PER_WORD];
    for (int j = 0; j < PER_WORD; ++j) q[j] = float((packed >> (BITS * j)) & MASK);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot += xv * q[j];
          xsum += xv;
        }
        acc[m] += s * dot + b * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {  // M is the same for every lane, so all 32 reach this simd_sum together
      const float total = simd_sum(acc[m]);
      if (lane == 0) y[m * N + n] = static_cast<T>(total);
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qmv_d23a7997c4a0__bfloat16_t_8_64_8_2_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t")]] [[kernel]] decltype(custom_kernel_orchard_qmv_d23a7997c4a0__bfloat16_t_8_64_8_2_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t<bfloat16_t, 8, 64, 8, 2>) custom_kernel_orchard_qmv_d23a7997c4a0__bfloat16_t_8_64_8_2_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t<bfloat16_t, 8, 64, 8, 2>;

// ---- instantiation 17 ----
// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
template <typename T, int BITS, int GROUP_SIZE, int MAX_M, int ROWS_PER_GROUP>
[[kernel]] void custom_kernel_orchard_qmv_d23a7997c4a0__bfloat16_t_8_128_8_2_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t(
  const device bfloat16_t* x [[buffer(0)]],
  const device uint32_t* w [[buffer(1)]],
  const device bfloat16_t* scales [[buffer(2)]],
  const device bfloat16_t* biases [[buffer(3)]],
  const constant int32_t* dims [[buffer(4)]],
  device bfloat16_t* y [[buffer(5)]],
  uint simdgroup_index_in_threadgroup [[simdgroup_index_in_threadgroup]],
  uint thread_index_in_simdgroup [[thread_index_in_simdgroup]],
  uint3 threadgroup_position_in_grid [[threadgroup_position_in_grid]]) {
// Quantized matrix-vector product for decode: y[m, n] = sum_k x[m, k] * (s[n, g] * q[n, k] + b[n, g]).
// q is MLX's affine format: uint32 words holding 32/BITS values, value j in bits BITS*j; g = k / GROUP_SIZE.
// One simdgroup owns one output row n for every batch row m, so each weight word is read once per
// call however many (up to 8) rows x has. Lanes take consecutive words (coalesced 128-byte reads);
// per word a lane forms dot(x, q) and sum(x), so the scale and bias are applied once per word:
// s * dot(x, q) + b * sum(x). The 32 lane partials are combined with simd_sum.
const int M = dims[0];
const int N = dims[1];
const int K = dims[2];
const int n = int(threadgroup_position_in_grid.x) * ROWS_PER_GROUP + int(simdgroup_index_in_threadgroup);
const int lane = int(thread_index_in_simdgroup);
if (n < N) {  // uniform over the simdgroup: every lane of a row takes the same branch
  constexpr int PER_WORD = 32 / BITS;
  constexpr uint32_t MASK = (1u << BITS) - 1u;
  const int words = K / PER_WORD;
  const int groups = K / GROUP_SIZE;
  const device uint32_t* wrow = w + n * words;
  const device T* srow = scales + n * groups;
  const device T* brow = biases + n * groups;
  float acc[MAX_M];
  for (int m = 0; m < MAX_M; ++m) acc[m] = 0.0f;
  for (int wi = lane; wi < words; wi += ORCHARD_SIMD_WIDTH) {
    const uint32_t packed = wrow[wi];
    const int k0 = wi * PER_WORD;
    const float s = float(srow[k0 / GROUP_SIZE]);
    const float b = float(brow[k0 / GROUP_SIZE]);
    float q[PER_WORD];
    for (int j = 0; j < PER_WORD; ++j) q[j] = float((packed >> (BITS * j)) & MASK);
    for (int m = 0; m < MAX_M; ++m) {
      if (m < M) {
        const device T* xr = x + m * K + k0;
        float dot = 0.0f, xsum = 0.0f;
        for (int j = 0; j < PER_WORD; ++j) {
          const float xv = float(xr[j]);
          dot += xv * q[j];
          xsum += xv;
        }
        acc[m] += s * dot + b * xsum;
      }
    }
  }
  for (int m = 0; m < MAX_M; ++m) {
    if (m < M) {  // M is the same for every lane, so all 32 reach this simd_sum together
      const float total = simd_sum(acc[m]);
      if (lane == 0) y[m * N + n] = static_cast<T>(total);
    }
  }
}

}

template [[host_name("custom_kernel_orchard_qmv_d23a7997c4a0__bfloat16_t_8_128_8_2_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t")]] [[kernel]] decltype(custom_kernel_orchard_qmv_d23a7997c4a0__bfloat16_t_8_128_8_2_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t<bfloat16_t, 8, 128, 8, 2>) custom_kernel_orchard_qmv_d23a7997c4a0__bfloat16_t_8_128_8_2_bfloat16_t_uint32_t_bfloat16_t_bfloat16_t_int32_tc_bfloat16_t<bfloat16_t, 8, 128, 8, 2>;

