// PLANTED BUG (test only): simdgroups with no keys in the chunk return before the merge barriers.
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

if (k_lo + sg >= k_hi) return;
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
