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
