// PLANTED BUG (test only): declares a double accumulator (Metal has none).
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
  double acc[MAX_M];
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
