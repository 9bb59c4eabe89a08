// The kernel body, compiled once per instruction-set variant: qmm_<variant>.cpp defines
// ORCHARD_VARIANT (the namespace) and is built with that variant's -m flags, and the preprocessor
// picks the matching inner loop below (AVX-512, AVX2, NEON, or plain C++).
// Everything here stays inside the variant's namespace (an anonymous one, except the three entry
// points), and no std:: template is used: code built with AVX-512 flags must never be what another
// variant's call ends up linked to.
//
// Layout recap (qmm.h). AVX-512 takes the float path: each block of weights dequantized to float
// once, multiplied with float32 x. The others take the integer path: for each output row n and each
// group g of `group_size` inputs,
//   y[m, n] += scale[n, g] * sum_{blocks b of g} dx[m, b] * idot(xq[m, b], q[n, b]) + bias[n, g] * xsum[m, g]
// The integer dot products multiply the unsigned codes (widened to int16) by int16 activations in
// pairs summed into int32 (madd): a block's sums stay below 32 * 255 * 32767 < 2^31. Each
// activation is two int16 parts, x = dx * (hi + lo / 65534): two dot products per block.

#include <cstring>

#include "halves.h"
#include "lanes.h"
#include "qmm.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#endif
#if defined(__aarch64__)
#include <arm_neon.h>
#endif

#ifndef ORCHARD_VARIANT
#error "define ORCHARD_VARIANT (the variant's namespace) before including qmm_impl.h"
#endif

#if defined(ORCHARD_QMM_PLAIN)
// the portable variant, whatever flags the build was given (e.g. CXXFLAGS=-march=native)
#elif defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__)
#define ORCHARD_QMM_AVX512 1
#elif defined(__AVX2__) && defined(__FMA__)
#define ORCHARD_QMM_AVX2 1
#elif defined(__aarch64__)
#define ORCHARD_QMM_NEON 1
#endif

namespace orchard_qmm {
namespace ORCHARD_VARIANT {
namespace {

// ------------------------------------------------------------------------------------------------
// Scalar helpers (the float conversions are halves.h's) and the bit-stream unpacking of MLX's packed
// codes.

inline int imin(int a, int b) {
  return a < b ? a : b;
}

// `count` values of type t starting at element `offset` of `base`, as floats in `out`.
inline void to_float(const void* base, DType t, size_t offset, int count, float* out) {
  if (t == DType::f32) {
    std::memcpy(out, static_cast<const float*>(base) + offset, sizeof(float) * count);
  } else if (t == DType::bf16) {
    const uint16_t* src = static_cast<const uint16_t*>(base) + offset;
#pragma omp simd
    for (int i = 0; i < count; i++) out[i] = bits_to_float(static_cast<uint32_t>(src[i]) << 16);
  } else {
    const uint16_t* src = static_cast<const uint16_t*>(base) + offset;
    int i = 0;
#if defined(ORCHARD_QMM_AVX512)
    // A row of float16 scales (K / 32 of them: 20 for a 640-wide weight) per output: whole vectors
    // and a masked tail, where scalar conversions of the tail cost as much as the row's dot products.
    for (; i < count; i += 16) {
      const __mmask16 lanes = count - i >= 16 ? 0xFFFF : static_cast<__mmask16>((1u << (count - i)) - 1);
      _mm512_mask_storeu_ps(out + i, lanes, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(lanes, src + i)));
    }
#elif defined(__F16C__)
    for (; i + 8 <= count; i += 8) {
      _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
    }
#endif
    for (; i < count; i++) out[i] = half_to_float(src[i]);
  }
}

// A row of scales or biases as floats: the array itself when it already is float32.
inline const float* row_floats(const void* base, DType t, size_t offset, int count, float* tmp) {
  if (t == DType::f32) return static_cast<const float*>(base) + offset;
  to_float(base, t, offset, count, tmp);
  return tmp;
}

inline void store(const Problem& p, int m, int n, float y) {
  size_t i = static_cast<size_t>(m) * p.N + n;
  if (p.out_type == DType::f32) {
    static_cast<float*>(p.out)[i] = y;
  } else if (p.out_type == DType::f16) {
    static_cast<uint16_t*>(p.out)[i] = float_to_half(y);
  } else {
    static_cast<uint16_t*>(p.out)[i] = float_to_bf16(y);
  }
}

// The bias term's dot product over a row's groups (9 to 24 of them): four scalar chains. A vector
// reduction over so few lanes ends in a serial sum of 16 lanes through memory, per output and row.
inline float dot(const float* a, const float* b, int n) {
  float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
  int i = 0;
  for (; i + 4 <= n; i += 4) {
    s0 = __builtin_fmaf(a[i], b[i], s0);
    s1 = __builtin_fmaf(a[i + 1], b[i + 1], s1);
    s2 = __builtin_fmaf(a[i + 2], b[i + 2], s2);
    s3 = __builtin_fmaf(a[i + 3], b[i + 3], s3);
  }
  for (; i < n; i++) s0 = __builtin_fmaf(a[i], b[i], s0);
  return (s0 + s1) + (s2 + s3);
}

// MLX packs `BITS`-bit codes as a little-endian bit stream: eight codes fill exactly BITS bytes.
template <int BITS>
inline void unpack(const uint8_t* src, uint8_t* dst, int count) {
  constexpr uint64_t mask = (1u << BITS) - 1;
  for (int i = 0; i < count; i += 8) {
    uint64_t v = 0;
    std::memcpy(&v, src + (i / 8) * BITS, BITS);
    for (int j = 0; j < 8; j++) dst[i + j] = static_cast<uint8_t>((v >> (BITS * j)) & mask);
  }
}

#if defined(ORCHARD_QMM_AVX512) || defined(ORCHARD_QMM_AVX2)
// Unpacking 32 codes of 2, 3, 5 or 6 bits (4 * BITS bytes) with vector shuffles: code j lies in the
// 16-bit window at byte (BITS * j) / 8, shifted by (BITS * j) % 8. The pattern repeats every 8 codes
// (BITS bytes), so codes 16..31 use codes 0..15's pattern on the bytes from 2 * BITS on.
template <int BITS>
struct UnpackPattern {
  alignas(64) uint8_t shuffle[32];   // per 16-bit lane j (codes 0..15): bytes o_j, o_j + 1
  alignas(64) uint16_t shift[16];    // (BITS * j) % 8
  alignas(64) uint16_t multiplier[16];  // 2^(8 - shift): the code lands in the high byte
  constexpr UnpackPattern() : shuffle(), shift(), multiplier() {
    for (int j = 0; j < 16; j++) {
      int lane = j % 8;  // pshufb indexes within each 128-bit half: codes 0..7, then 8..15
      int byte = (BITS * j) / 8;
      shuffle[(j / 8) * 16 + 2 * lane] = static_cast<uint8_t>(byte);
      shuffle[(j / 8) * 16 + 2 * lane + 1] = static_cast<uint8_t>(byte + 1);
      shift[j] = static_cast<uint16_t>((BITS * j) % 8);
      multiplier[j] = static_cast<uint16_t>(1u << (8 - (BITS * j) % 8));
    }
  }
};

// The two 16-byte windows (codes 0..15 and 16..31) of a block, copied when they would read past
// the weights' end (the last block of the last row).
template <int BITS>
inline void block_windows(const uint8_t* src, const uint8_t* end, __m128i& first, __m128i& second) {
  if (src + 2 * BITS + 16 <= end) {
    first = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
    second = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 2 * BITS));
  } else {
    alignas(64) uint8_t copy[48] = {};
    std::memcpy(copy, src, 4 * BITS);
    first = _mm_load_si128(reinterpret_cast<const __m128i*>(copy));
    second = _mm_loadu_si128(reinterpret_cast<const __m128i*>(copy + 2 * BITS));
  }
}
#endif

#if defined(ORCHARD_QMM_AVX512)
template <int BITS>
inline __m512i unpack32(const uint8_t* src, const uint8_t* end) {
  static constexpr UnpackPattern<BITS> pattern;
  __m128i first, second;
  block_windows<BITS>(src, end, first, second);
  __m512i bytes = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_broadcastsi128_si256(first)),
                                     _mm256_broadcastsi128_si256(second), 1);
  __m256i shuffle = _mm256_load_si256(reinterpret_cast<const __m256i*>(pattern.shuffle));
  __m256i shift = _mm256_load_si256(reinterpret_cast<const __m256i*>(pattern.shift));
  __m512i windows = _mm512_shuffle_epi8(bytes, _mm512_inserti64x4(_mm512_castsi256_si512(shuffle), shuffle, 1));
  __m512i codes = _mm512_srlv_epi16(windows, _mm512_inserti64x4(_mm512_castsi256_si512(shift), shift, 1));
  // Kept as int16 lanes, codes 0..15 then 16..31: narrowing to bytes and widening again would cost
  // four more shuffle-port instructions per block.
  return _mm512_and_si512(codes, _mm512_set1_epi16((1 << BITS) - 1));
}
#elif defined(ORCHARD_QMM_AVX2)
template <int BITS>
inline __m256i unpack32(const uint8_t* src, const uint8_t* end) {
  static constexpr UnpackPattern<BITS> pattern;
  __m128i first, second;
  block_windows<BITS>(src, end, first, second);
  const __m256i shuffle = _mm256_load_si256(reinterpret_cast<const __m256i*>(pattern.shuffle));
  const __m256i multiplier = _mm256_load_si256(reinterpret_cast<const __m256i*>(pattern.multiplier));
  __m256i low = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(first), shuffle);
  __m256i high = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(second), shuffle);
  low = _mm256_srli_epi16(_mm256_mullo_epi16(low, multiplier), 8);  // AVX2 has no per-lane 16-bit shift
  high = _mm256_srli_epi16(_mm256_mullo_epi16(high, multiplier), 8);
  __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi16(low, high), _MM_SHUFFLE(3, 1, 2, 0));
  return _mm256_and_si256(packed, _mm256_set1_epi8((1 << BITS) - 1));
}
#endif

// ------------------------------------------------------------------------------------------------
// Activations (the integer path): per block of 32, the step dx = max|x| / 32767 and each x as two int16 parts,
//   x = dx * (hi + lo / 65534),  hi = rint(x / dx),  lo = rint((x - dx * hi) / (dx / 65534)),
// so x is kept to within dx / 131068 (~2.3e-10 of the block's largest |x|: float32 rounding of the
// sums dominates), plus exact group sums for the bias term. One int16 part alone (~1.5e-5) already
// changed greedy answers at near ties where another path (a chunked prefill, a batched decode)
// computes the same row's activations a few float32 ulps apart; with both parts those paths
// agree as closely as float32 arithmetic does.
//
// Each block's 32 codes are taken as two halves of 16: for 4 bits the low nibbles of its 16 bytes
// (codes 0, 2, ..., 30) and the high nibbles (1, 3, ..., 31), else codes 0..15 and 16..31. The
// activations are stored in the order the weight loop reads the halves: per block [h0, h1] of the
// high parts then the same of the low parts.

constexpr float kLow = 65534.0f;  // lo's unit is dx / kLow: |lo| <= kLow / 2 fits int16

inline int16_t* act_position(int16_t* row, int block, int half, int part) {
  return row + block * 64 + part * 32 + half * 16;
}

// Where a variant has it (AVX-512), the float path (float_tile below) dequantizes each block of
// two outputs' weights to float once (scale * code + bias) and multiplies it with every row's
// float32 x by FMA: the weight's unpacking is shared between the rows and each load of x between
// the two outputs, and x stays exact. It measured faster than the integer path from one row on
// (docs/performance.md, "Third pass"), so those variants have no integer path.
#if defined(ORCHARD_QMM_AVX512)
// Where row m's block b of x starts in the float path's layout: a tile's rows side by side per
// block, so the weight loop reaches all of them from one pointer at fixed offsets (separate row
// pointers ran out of registers and slowed the loop: docs/performance.md, "Serving", run 6).
inline size_t float_x_offset(const ActLayout& a, int m, int b) {
  const size_t tile = m / kFloatTileRows;
  return ((tile * a.blocks + b) * kFloatTileRows + m % kFloatTileRows) * kBlock;
}

// The float path's x: per block of 32, for 4 bits the inputs of the low nibbles (0, 2, ..., 30) then
// of the high nibbles (1, 3, ..., 31), as the codes unpack; for other widths in order.
void prepare_impl(const Problem& p, const ActLayout& a, uint8_t* act) {
  const int K = p.K;
  float* xf = reinterpret_cast<float*>(act + a.xf);
  for (int m = 0; m < p.M; m++) {
    for (int b = 0; b < a.blocks; b++) {
      float* out = xf + float_x_offset(a, m, b);
      const size_t offset = static_cast<size_t>(m) * K + static_cast<size_t>(b) * kBlock;
      if (p.bits == 4) {
        alignas(64) float v[kBlock];
        to_float(p.x, p.x_type, offset, kBlock, v);
        for (int i = 0; i < 16; i++) {
          out[i] = v[2 * i];
          out[16 + i] = v[2 * i + 1];
        }
      } else {
        to_float(p.x, p.x_type, offset, kBlock, out);
      }
    }
  }
}

#else
void prepare_impl(const Problem& p, const ActLayout& a, uint8_t* act) {
  const int K = p.K;
  const int blocks_per_group = p.group_size / kBlock;
  const bool nibbles = p.bits == 4;
  for (int m = 0; m < p.M; m++) {
    int16_t* xq = reinterpret_cast<int16_t*>(act + a.xq) + static_cast<size_t>(m) * a.xq_stride;
    float* dx = reinterpret_cast<float*>(act + a.dx) + static_cast<size_t>(m) * a.blocks;
    float* xsum = reinterpret_cast<float*>(act + a.xsum) + static_cast<size_t>(m) * a.groups;
    for (int g = 0; g < a.groups; g++) xsum[g] = 0.0f;
    for (int b = 0; b < a.blocks; b++) {
      alignas(64) float v[kBlock];
      to_float(p.x, p.x_type, static_cast<size_t>(m) * K + static_cast<size_t>(b) * kBlock, kBlock, v);
      float amax = 0.0f, sum = 0.0f;
#pragma omp simd reduction(max : amax) reduction(+ : sum)
      for (int i = 0; i < kBlock; i++) {
        float magnitude = __builtin_fabsf(v[i]);
        amax = magnitude > amax ? magnitude : amax;
        sum += v[i];
      }
      float step = amax / 32767.0f;
      float inverse = amax > 0.0f ? 32767.0f / amax : 0.0f;
      alignas(64) int16_t hi[kBlock], lo[kBlock];
#pragma omp simd
      for (int i = 0; i < kBlock; i++) {
        float h = __builtin_rintf(v[i] * inverse);
        float l = __builtin_rintf(__builtin_fmaf(-h, step, v[i]) * inverse * kLow);
        hi[i] = static_cast<int16_t>(h);
        lo[i] = static_cast<int16_t>(l < -32767.0f ? -32767.0f : (l > 32767.0f ? 32767.0f : l));
      }
      for (int h = 0; h < 2; h++) {
        int16_t* out_hi = act_position(xq, b, h, 0);
        int16_t* out_lo = act_position(xq, b, h, 1);
        for (int i = 0; i < 16; i++) {
          int k = nibbles ? 2 * i + h : 16 * h + i;
          out_hi[i] = hi[k];
          out_lo[i] = lo[k];
        }
      }
      dx[b] = step;
      xsum[b / blocks_per_group] += sum;
    }
  }
}
#endif

// ------------------------------------------------------------------------------------------------
// The weight loop: float_tile (AVX-512) or tile<BITS, MT> (the integer path: MT rows m of one output
// n, without the bias term).

// The weights stream from memory once per call (a model's are larger than the caches), and the loop
// stalls on them unless it asks kPrefetchRows rows ahead (measured in docs/performance.md, "Third
// pass": the hardware prefetchers alone left it waiting).
constexpr int kPrefetchRows = 8;

inline void prefetch_rows(const Problem& p, int n, int count) {
  const uint8_t* later = p.w + static_cast<size_t>(n + kPrefetchRows) * p.row_bytes;
  if (later + count * p.row_bytes > p.w_end) return;
  for (size_t at = 0; at < count * p.row_bytes; at += 64) __builtin_prefetch(later + at);
}

#if defined(ORCHARD_QMM_AVX512)
constexpr int kMaxTile = kFloatTileRows;

// A block's 32 codes as two float vectors, in the order prepare_impl lays x out (4 bits: looked up
// in float_tile instead).
template <int BITS>
inline void float_codes(const uint8_t* row, int block, const uint8_t* end, __m512& first, __m512& second) {
  if constexpr (BITS == 8) {
    const uint8_t* src = row + 32 * block;
    first = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src))));
    second = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 16))));
  } else {
    __m512i codes = unpack32<BITS>(row + block * 4 * BITS, end);  // int16 lanes: codes 0..15, then 16..31
    first = _mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(_mm512_castsi512_si256(codes)));
    second = _mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(codes, 1)));
  }
}

// MT rows of NT outputs on the float path: sum over blocks of (scale * code + bias) . x, each
// block's weights converted once for all MT rows, each x vector loaded once for all NT outputs.
// y is [MT][NT].
template <int BITS, int MT, int NT>
inline void float_tile(const Problem& p, const ActLayout& a, const uint8_t* act, const uint8_t* const* rows,
                       const float* const* scales, const float* const* biases, int m0, float (*y)[2]) {
  static_assert(MT <= kFloatTileRows, "a tile's rows share one block of the x layout");
  const float* xf = reinterpret_cast<const float*>(act + a.xf) + float_x_offset(a, m0, 0);  // m0: a tile's first row
  __m512 acc[MT][NT];
  for (int m = 0; m < MT; m++) {
    for (int t = 0; t < NT; t++) acc[m][t] = _mm512_setzero_ps();
  }
  const int group_shift = __builtin_ctz(p.group_size / kBlock);  // group sizes are powers of two
  const __m512 codes = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  // One flat loop over blocks, each recomputing its group's table (two instructions per output):
  // a loop per group around a loop per block left the compiler juggling its counters through the
  // stack and ran slower (docs/performance.md, "Serving", run 6).
  for (int b = 0; b < a.blocks; b++) {
    const int g = b >> group_shift;
    __m512 first[NT], second[NT];
    for (int t = 0; t < NT; t++) {
      const __m512 scale = _mm512_set1_ps(scales[t][g]), bias = _mm512_set1_ps(biases[t][g]);
      if constexpr (BITS == 4) {
        // The group's sixteen weight values, scale * code + bias, looked up by code (one permute)
        // where converting and scaling each code would take three instructions.
        const __m512 table = _mm512_fmadd_ps(codes, scale, bias);
        const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(rows[t] + 16 * b)));
        first[t] = _mm512_permutexvar_ps(bytes, table);  // the index is each lane's low 4 bits
        second[t] = _mm512_permutexvar_ps(_mm512_srli_epi32(bytes, 4), table);
      } else {
        float_codes<BITS>(rows[t], b, p.w_end, first[t], second[t]);
        first[t] = _mm512_fmadd_ps(first[t], scale, bias);
        second[t] = _mm512_fmadd_ps(second[t], scale, bias);
      }
    }
    for (int m = 0; m < MT; m++) {
      const float* x = xf + (static_cast<size_t>(b) * kFloatTileRows + m) * kBlock;
      __m512 x0 = _mm512_loadu_ps(x), x1 = _mm512_loadu_ps(x + 16);
      // Held in registers: left alone, the compiler folds each load into both outputs' FMAs, twice
      // the loads, and the load ports then bound the loop (docs/performance.md, "Serving", run 6).
      __asm__("" : "+v"(x0), "+v"(x1));
      for (int t = 0; t < NT; t++) {
        acc[m][t] = _mm512_fmadd_ps(first[t], x0, acc[m][t]);
        acc[m][t] = _mm512_fmadd_ps(second[t], x1, acc[m][t]);
      }
    }
  }
  if constexpr (MT * NT == 16) {
    v16f sums[MT * NT];  // lanes.h's fold, shared with the fused operations
    std::memcpy(sums, acc, sizeof(sums));
    const v16f total = sum_lanes16(sums);
    std::memcpy(&y[0][0], &total, sizeof(total));  // y is [8][2]: the accumulators' order
  } else {
    for (int m = 0; m < MT; m++) {
      for (int t = 0; t < NT; t++) y[m][t] = _mm512_reduce_add_ps(acc[m][t]);
    }
  }
}

template <int BITS, int MT, int NT>
inline void float_tile_rows(const Problem& p, const ActLayout& a, const uint8_t* act, const uint8_t* const* rows,
                            const float* const* scales, const float* const* biases, int m0, int count,
                            float (*y)[2]) {
  if constexpr (MT > 1) {
    if (count < MT) return float_tile_rows<BITS, MT - 1, NT>(p, a, act, rows, scales, biases, m0, count, y);
  }
  float_tile<BITS, MT, NT>(p, a, act, rows, scales, biases, m0, y);
}

// Outputs n0 <= n < n1 on the float path, two at a time; `scratch` holds two rows' scales and biases.
template <int BITS>
void float_rows_bits(const Problem& p, const ActLayout& a, const uint8_t* act, int n0, int n1, float* scratch) {
  const int groups = a.groups;
  for (int n = n0; n < n1; n += 2) {
    const int outputs = imin(2, n1 - n);
    prefetch_rows(p, n, 2);
    const uint8_t* rows[2];
    const float* scales[2];
    const float* biases[2];
    for (int t = 0; t < outputs; t++) {
      rows[t] = p.w + static_cast<size_t>(n + t) * p.row_bytes;
      const size_t offset = static_cast<size_t>(n + t) * groups;
      scales[t] = row_floats(p.scales, p.scale_type, offset, groups, scratch + (2 * t) * groups);
      biases[t] = row_floats(p.biases, p.bias_type, offset, groups, scratch + (2 * t + 1) * groups);
    }
    for (int m0 = 0; m0 < p.M; m0 += kMaxTile) {
      const int count = imin(kMaxTile, p.M - m0);
      float y[kMaxTile][2];
      if (outputs == 2) {
        float_tile_rows<BITS, kMaxTile, 2>(p, a, act, rows, scales, biases, m0, count, y);
      } else {
        float_tile_rows<BITS, kMaxTile, 1>(p, a, act, rows, scales, biases, m0, count, y);
      }
      for (int m = 0; m < count; m++) {
        for (int t = 0; t < outputs; t++) store(p, m0 + m, n + t, y[m][t]);
      }
    }
  }
}

#elif defined(ORCHARD_QMM_AVX2)
constexpr int kMaxTile = 4;  // 16 ymm registers: 2 x 4 accumulators plus the operands

// The codes of a block as two registers of 16 int16: its halves h0 and h1.
template <int BITS>
inline void load_block(const uint8_t* row, int block, const uint8_t* end, __m256i& first, __m256i& second) {
  if constexpr (BITS == 4) {
    __m256i bytes = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 16 * block)));
    first = _mm256_and_si256(bytes, _mm256_set1_epi16(0x0F));
    second = _mm256_srli_epi16(bytes, 4);
  } else if constexpr (BITS == 8) {
    first = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 32 * block)));
    second = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 32 * block + 16)));
  } else {
    __m256i c = unpack32<BITS>(row + block * 4 * BITS, end);
    first = _mm256_cvtepu8_epi16(_mm256_castsi256_si128(c));
    second = _mm256_cvtepu8_epi16(_mm256_extracti128_si256(c, 1));
  }
}

inline __m256i block_dot(__m256i w0, __m256i w1, const int16_t* x) {
  __m256i x0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x));
  __m256i x1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + 16));
  return _mm256_add_epi32(_mm256_madd_epi16(w0, x0), _mm256_madd_epi16(w1, x1));
}

// The block's dot products in units of dx: hi + lo / kLow, per lane.
inline __m256 block_sums(__m256i w0, __m256i w1, const int16_t* x) {
  __m256 lo = _mm256_cvtepi32_ps(block_dot(w0, w1, x + 32));
  return _mm256_fmadd_ps(lo, _mm256_set1_ps(1.0f / kLow), _mm256_cvtepi32_ps(block_dot(w0, w1, x)));
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

template <int BITS, int MT>
inline void tile(const Problem& p, const ActLayout& a, const uint8_t* act, const uint8_t* row, const float* scales,
                 int m0, float* y) {
  const int16_t* xq[MT];
  const float* dx[MT];
  for (int m = 0; m < MT; m++) {
    xq[m] = reinterpret_cast<const int16_t*>(act + a.xq) + static_cast<size_t>(m0 + m) * a.xq_stride;
    dx[m] = reinterpret_cast<const float*>(act + a.dx) + static_cast<size_t>(m0 + m) * a.blocks;
  }
  __m256 acc[MT];
  for (int m = 0; m < MT; m++) acc[m] = _mm256_setzero_ps();
  const int blocks_per_group = p.group_size / kBlock;
  for (int g = 0, b = 0; g < a.groups; g++) {
    __m256 gacc[MT];
    for (int m = 0; m < MT; m++) gacc[m] = _mm256_setzero_ps();
    for (int j = 0; j < blocks_per_group; j++, b++) {
      __m256i w0, w1;
      load_block<BITS>(row, b, p.w_end, w0, w1);
      for (int m = 0; m < MT; m++) {
        __m256 d = block_sums(w0, w1, xq[m] + 64 * b);
        gacc[m] = _mm256_fmadd_ps(d, _mm256_broadcast_ss(dx[m] + b), gacc[m]);
      }
    }
    __m256 sv = _mm256_broadcast_ss(scales + g);
    for (int m = 0; m < MT; m++) acc[m] = _mm256_fmadd_ps(gacc[m], sv, acc[m]);
  }
  for (int m = 0; m < MT; m++) y[m] = hsum(acc[m]);
}

#elif defined(ORCHARD_QMM_NEON)
constexpr int kMaxTile = 4;

// The codes of a block as four int16x8: its halves h0 (first two) and h1.
template <int BITS>
inline void load_block(const uint8_t* row, int block, int16x8_t w[4]) {
  uint8x16_t h0, h1;
  if constexpr (BITS == 4) {
    uint8x16_t raw = vld1q_u8(row + 16 * block);
    h0 = vandq_u8(raw, vdupq_n_u8(0x0F));
    h1 = vshrq_n_u8(raw, 4);
  } else if constexpr (BITS == 8) {
    h0 = vld1q_u8(row + 32 * block);
    h1 = vld1q_u8(row + 32 * block + 16);
  } else {
    alignas(16) uint8_t codes[kBlock];
    unpack<BITS>(row + block * 4 * BITS, codes, kBlock);
    h0 = vld1q_u8(codes);
    h1 = vld1q_u8(codes + 16);
  }
  w[0] = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(h0)));
  w[1] = vreinterpretq_s16_u16(vmovl_high_u8(h0));
  w[2] = vreinterpretq_s16_u16(vmovl_u8(vget_low_u8(h1)));
  w[3] = vreinterpretq_s16_u16(vmovl_high_u8(h1));
}

template <int BITS, int MT>
inline void tile(const Problem& p, const ActLayout& a, const uint8_t* act, const uint8_t* row, const float* scales,
                 int m0, float* y) {
  const int16_t* xq[MT];
  const float* dx[MT];
  for (int m = 0; m < MT; m++) {
    xq[m] = reinterpret_cast<const int16_t*>(act + a.xq) + static_cast<size_t>(m0 + m) * a.xq_stride;
    dx[m] = reinterpret_cast<const float*>(act + a.dx) + static_cast<size_t>(m0 + m) * a.blocks;
  }
  float32x4_t acc[MT];
  for (int m = 0; m < MT; m++) acc[m] = vdupq_n_f32(0.0f);
  const int blocks_per_group = p.group_size / kBlock;
  for (int g = 0, b = 0; g < a.groups; g++) {
    float32x4_t gacc[MT];
    for (int m = 0; m < MT; m++) gacc[m] = vdupq_n_f32(0.0f);
    for (int j = 0; j < blocks_per_group; j++, b++) {
      int16x8_t w[4];
      load_block<BITS>(row, b, w);
      for (int m = 0; m < MT; m++) {
        const int16_t* x = xq[m] + 64 * b;
        int32x4_t d[2] = {vdupq_n_s32(0), vdupq_n_s32(0)};  // hi, lo
        for (int part = 0; part < 2; part++) {
          for (int i = 0; i < 4; i++) {
            int16x8_t xi = vld1q_s16(x + 32 * part + 8 * i);
            d[part] = vmlal_s16(d[part], vget_low_s16(w[i]), vget_low_s16(xi));
            d[part] = vmlal_high_s16(d[part], w[i], xi);
          }
        }
        float32x4_t sums = vfmaq_n_f32(vcvtq_f32_s32(d[0]), vcvtq_f32_s32(d[1]), 1.0f / kLow);
        gacc[m] = vfmaq_n_f32(gacc[m], sums, dx[m][b]);
      }
    }
    for (int m = 0; m < MT; m++) acc[m] = vfmaq_n_f32(acc[m], gacc[m], scales[g]);
  }
  for (int m = 0; m < MT; m++) y[m] = vaddvq_f32(acc[m]);
}

#else  // plain C++: any CPU (the compiler vectorizes what it can)
constexpr int kMaxTile = 1;

template <int BITS, int MT>
inline void tile(const Problem& p, const ActLayout& a, const uint8_t* act, const uint8_t* row, const float* scales,
                 int m0, float* y) {
  static_assert(MT == 1, "the plain variant works one row at a time");
  const int16_t* xq = reinterpret_cast<const int16_t*>(act + a.xq) + static_cast<size_t>(m0) * a.xq_stride;
  const float* dx = reinterpret_cast<const float*>(act + a.dx) + static_cast<size_t>(m0) * a.blocks;
  const int blocks_per_group = p.group_size / kBlock;
  alignas(64) uint8_t codes[kBlock];
  float acc = 0.0f;
  for (int g = 0, b = 0; g < a.groups; g++) {
    float gacc = 0.0f;
    for (int j = 0; j < blocks_per_group; j++, b++) {
      const int16_t* x = xq + 64 * b;  // [h0, h1] of the high parts, then of the low parts
      if constexpr (BITS == 4) {
        const uint8_t* bytes = row + 16 * b;
        for (int i = 0; i < 16; i++) {
          codes[i] = bytes[i] & 0x0F;
          codes[16 + i] = bytes[i] >> 4;
        }
      } else if constexpr (BITS == 8) {
        std::memcpy(codes, row + kBlock * b, kBlock);
      } else {
        unpack<BITS>(row + b * 4 * BITS, codes, kBlock);
      }
      int32_t hi = 0, lo = 0;
      for (int i = 0; i < kBlock; i++) {
        hi += codes[i] * x[i];
        lo += codes[i] * x[kBlock + i];
      }
      gacc += dx[b] * (static_cast<float>(hi) + static_cast<float>(lo) / kLow);
    }
    acc += scales[g] * gacc;
  }
  y[0] = acc;
}
#endif

#if defined(ORCHARD_QMM_AVX512)
template <int BITS>
void rows_bits(const Problem& p, const ActLayout& a, const uint8_t* act, int n0, int n1, float* scratch) {
  float_rows_bits<BITS>(p, a, act, n0, n1, scratch);
}
#else
template <int BITS, int MT>
inline void tile_rows(const Problem& p, const ActLayout& a, const uint8_t* act, const uint8_t* row, const float* scales,
                      int m0, int count, float* y) {
  if constexpr (MT > 1) {
    if (count < MT) return tile_rows<BITS, MT - 1>(p, a, act, row, scales, m0, count, y);
  }
  tile<BITS, MT>(p, a, act, row, scales, m0, y);
}

template <int BITS>
void rows_bits(const Problem& p, const ActLayout& a, const uint8_t* act, int n0, int n1, float* scratch) {
  const int groups = a.groups;
  float* scale_tmp = scratch;
  float* bias_tmp = scratch + groups;
  const float* xsum_all = reinterpret_cast<const float*>(act + a.xsum);
  for (int n = n0; n < n1; n++) {
    prefetch_rows(p, n, 1);
    const uint8_t* row = p.w + static_cast<size_t>(n) * p.row_bytes;
    const size_t offset = static_cast<size_t>(n) * groups;
    const float* scales = row_floats(p.scales, p.scale_type, offset, groups, scale_tmp);
    const float* biases = row_floats(p.biases, p.bias_type, offset, groups, bias_tmp);
    for (int m0 = 0; m0 < p.M; m0 += kMaxTile) {
      const int count = imin(kMaxTile, p.M - m0);
      float y[kMaxTile];
      tile_rows<BITS, kMaxTile>(p, a, act, row, scales, m0, count, y);
      for (int m = 0; m < count; m++) {
        const float* xsum = xsum_all + static_cast<size_t>(m0 + m) * groups;
        store(p, m0 + m, n, y[m] + dot(biases, xsum, groups));
      }
    }
  }
}
#endif

// ------------------------------------------------------------------------------------------------
// Dequantization to float32 (the GEMM path for many rows): row n of the output is
// scale * q + bias for each code, in MLX's order. Memory-bound: it writes 4 bytes per weight.

#if defined(ORCHARD_QMM_AVX512) || defined(ORCHARD_QMM_AVX2)
// A block's 32 codes as bytes, in order.
template <int BITS>
inline __m256i natural_codes(const uint8_t* row, int block, const uint8_t* end) {
  if constexpr (BITS == 4) {
    __m128i raw = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + 16 * block));
    const __m128i mask = _mm_set1_epi8(0x0F);
    __m128i lo = _mm_and_si128(raw, mask), hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
    return _mm256_set_m128i(_mm_unpackhi_epi8(lo, hi), _mm_unpacklo_epi8(lo, hi));  // code 2i, 2i + 1 interleaved
  } else if constexpr (BITS == 8) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 32 * block));
  } else {
#if defined(ORCHARD_QMM_AVX512)
    return _mm512_cvtepi16_epi8(unpack32<BITS>(row + block * 4 * BITS, end));
#else
    return unpack32<BITS>(row + block * 4 * BITS, end);
#endif
  }
}
#endif

template <int BITS>
void dequantize_bits(const Problem& p, int n0, int n1, float* scratch) {
  const int groups = p.K / p.group_size;
  const int blocks_per_group = p.group_size / kBlock;
  float* scale_tmp = scratch;
  float* bias_tmp = scratch + groups;
  for (int n = n0; n < n1; n++) {
    const uint8_t* row = p.w + static_cast<size_t>(n) * p.row_bytes;
    const size_t offset = static_cast<size_t>(n) * groups;
    const float* scales = row_floats(p.scales, p.scale_type, offset, groups, scale_tmp);
    const float* biases = row_floats(p.biases, p.bias_type, offset, groups, bias_tmp);
    float* out = static_cast<float*>(p.out) + static_cast<size_t>(n) * p.K;
    for (int b = 0; b < p.K / kBlock; b++) {
      const float s = scales[b / blocks_per_group], bias = biases[b / blocks_per_group];
      float* dst = out + kBlock * b;
#if defined(ORCHARD_QMM_AVX512)
      __m256i c = natural_codes<BITS>(row, b, p.w_end);
      const __m512 sv = _mm512_set1_ps(s), bv = _mm512_set1_ps(bias);
      _mm512_storeu_ps(dst, _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm256_castsi256_si128(c))), sv, bv));
      _mm512_storeu_ps(dst + 16,
                       _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm256_extracti128_si256(c, 1))), sv, bv));
#elif defined(ORCHARD_QMM_AVX2)
      __m256i c = natural_codes<BITS>(row, b, p.w_end);
      const __m256 sv = _mm256_set1_ps(s), bv = _mm256_set1_ps(bias);
      __m128i halves[2] = {_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1)};
      for (int i = 0; i < 4; i++) {
        __m128i bytes = i % 2 ? _mm_srli_si128(halves[i / 2], 8) : halves[i / 2];
        _mm256_storeu_ps(dst + 8 * i, _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes)), sv, bv));
      }
#elif defined(ORCHARD_QMM_NEON)
      uint8x16_t c[2];
      if constexpr (BITS == 4) {
        uint8x16_t raw = vld1q_u8(row + 16 * b);
        uint8x16_t lo = vandq_u8(raw, vdupq_n_u8(0x0F)), hi = vshrq_n_u8(raw, 4);
        c[0] = vzip1q_u8(lo, hi);
        c[1] = vzip2q_u8(lo, hi);
      } else if constexpr (BITS == 8) {
        c[0] = vld1q_u8(row + 32 * b);
        c[1] = vld1q_u8(row + 32 * b + 16);
      } else {
        alignas(16) uint8_t codes[kBlock];
        unpack<BITS>(row + b * 4 * BITS, codes, kBlock);
        c[0] = vld1q_u8(codes);
        c[1] = vld1q_u8(codes + 16);
      }
      const float32x4_t bv = vdupq_n_f32(bias);
      for (int h = 0; h < 2; h++) {
        uint16x8_t wide[2] = {vmovl_u8(vget_low_u8(c[h])), vmovl_high_u8(c[h])};
        for (int i = 0; i < 4; i++) {
          uint32x4_t q = i % 2 ? vmovl_high_u16(wide[i / 2]) : vmovl_u16(vget_low_u16(wide[i / 2]));
          vst1q_f32(dst + 16 * h + 4 * i, vfmaq_n_f32(bv, vcvtq_f32_u32(q), s));
        }
      }
#else
      alignas(64) uint8_t codes[kBlock];
      if constexpr (BITS == 4) {
        for (int i = 0; i < 16; i++) {
          codes[2 * i] = row[16 * b + i] & 0x0F;
          codes[2 * i + 1] = row[16 * b + i] >> 4;
        }
      } else if constexpr (BITS == 8) {
        std::memcpy(codes, row + kBlock * b, kBlock);
      } else {
        unpack<BITS>(row + b * 4 * BITS, codes, kBlock);
      }
      for (int i = 0; i < kBlock; i++) dst[i] = __builtin_fmaf(static_cast<float>(codes[i]), s, bias);
#endif
    }
  }
}

}  // namespace

void prepare(const Problem& p, const ActLayout& a, uint8_t* act) {
  prepare_impl(p, a, act);
}

void dequantize(const Problem& p, int n0, int n1, float* scratch) {
  switch (p.bits) {
    case 2: return dequantize_bits<2>(p, n0, n1, scratch);
    case 3: return dequantize_bits<3>(p, n0, n1, scratch);
    case 4: return dequantize_bits<4>(p, n0, n1, scratch);
    case 5: return dequantize_bits<5>(p, n0, n1, scratch);
    case 6: return dequantize_bits<6>(p, n0, n1, scratch);
    default: return dequantize_bits<8>(p, n0, n1, scratch);
  }
}

void rows(const Problem& p, const ActLayout& a, const uint8_t* act, int n0, int n1, float* scratch) {
  switch (p.bits) {
    case 2: return rows_bits<2>(p, a, act, n0, n1, scratch);
    case 3: return rows_bits<3>(p, a, act, n0, n1, scratch);
    case 4: return rows_bits<4>(p, a, act, n0, n1, scratch);
    case 5: return rows_bits<5>(p, a, act, n0, n1, scratch);
    case 6: return rows_bits<6>(p, a, act, n0, n1, scratch);
    default: return rows_bits<8>(p, a, act, n0, n1, scratch);
  }
}

}  // namespace ORCHARD_VARIANT
}  // namespace orchard_qmm
