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
