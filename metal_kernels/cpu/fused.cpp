// The fused operations of fused.h as MLX primitives (eval_cpu only). The loops are plain C++ that the
// compiler vectorizes; where GCC or Clang can, each hot loop is built for AVX-512, AVX2 and baseline
// x86-64 and the CPU picks at load time (target_clones), so this file needs no per-variant build.
#include "fused.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <vector>

#include "mlx/allocator.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/primitives.h"
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "halves.h"
#include "lanes.h"
#include "primitive.h"
#include "support.h"
#include "threads.h"

#if defined(__x86_64__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define ORCHARD_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#endif
#endif
#ifndef ORCHARD_CLONES
#define ORCHARD_CLONES
#endif

namespace orchard_qmm {

namespace mx = mlx::core;

namespace {

[[noreturn]] void invalid(const char* op, const std::string& message) {
  throw std::invalid_argument(std::string("[orchard ") + op + "] " + message);
}

// The kernels below read any strides but the last axis's: only an input strided along its last axis
// (rare: a broadcast, a transposed last axis) needs a row-major copy first.
bool strided_rows(const mx::array& a) {
  return !(a.ndim() == 0 || a.shape(-1) <= 1 || a.strides().back() == 1);
}

// The element offset of row `row` of `a` (rows: every index of all axes but the last), by its strides.
int64_t row_offset(const mx::array& a, int64_t row) {
  int64_t offset = 0;
  for (int d = a.ndim() - 2; d >= 0; d--) {
    offset += (row % a.shape(d)) * a.strides()[d];
    row /= a.shape(d);
  }
  return offset;
}

std::string shape_string(const mx::array& a) {
  std::string s = "(";
  for (int i = 0; i < a.ndim(); i++) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

void require_float32(const char* op, const char* name, const mx::array& a) {
  if (a.dtype() != mx::float32) invalid(op, std::string(name) + " must be float32");
}

// What the fused primitives share: they run on the CPU only, and (unless they say otherwise) their
// output has their first input's shape.
class FusedPrimitive : public mx::UnaryPrimitive {
 public:
  using mx::UnaryPrimitive::UnaryPrimitive;
  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error(std::string("[orchard ") + name() + "] runs on the CPU only");
  }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    return {inputs[0].shape()};
  }
};

// The same for the primitives with several outputs (each declares its own shapes).
class FusedOutputsPrimitive : public mx::Primitive {
 public:
  using mx::Primitive::Primitive;
  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error(std::string("[orchard ") + name() + "] runs on the CPU only");
  }
};

// A row-wise primitive with one integer setting.
class SettingPrimitive : public FusedPrimitive {
 public:
  SettingPrimitive(mx::Stream stream, int setting) : FusedPrimitive(stream), setting_(setting) {}
  bool is_equivalent(const mx::Primitive& other) const override {
    return typeid(*this) == typeid(other) && setting_ == static_cast<const SettingPrimitive&>(other).setting_;
  }

 protected:
  int setting_;
};

// ------------------------------------------------------------------------------------------------
// RMS normalisation

ORCHARD_CLONES void norm_row(const float* x, const float* w, float* y, int D, float eps) {
  float squares = 0.0f;
#pragma omp simd reduction(+ : squares)
  for (int i = 0; i < D; i++) squares += x[i] * x[i];
  const float inverse = 1.0f / std::sqrt(squares / static_cast<float>(D) + eps);
  if (w) {
#pragma omp simd
    for (int i = 0; i < D; i++) y[i] = (x[i] * inverse) * w[i];
  } else {
#pragma omp simd
    for (int i = 0; i < D; i++) y[i] = x[i] * inverse;
  }
}

class FusedRMSNorm : public FusedPrimitive {
 public:
  FusedRMSNorm(mx::Stream stream, float eps, bool weighted) : FusedPrimitive(stream), eps_(eps), weighted_(weighted) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    const float eps = eps_;
    const bool weighted = weighted_;
    dispatch(stream(), inputs, out, strided_rows, [eps, weighted](std::vector<mx::array>& in, mx::array& y) {
      const mx::array& x = in[0];
      const int D = x.shape(-1);
      const int64_t rows = D ? static_cast<int64_t>(x.size()) / D : 0;
      const float* w = weighted ? in[1].data<float>() : nullptr;
      for (int64_t r = 0; r < rows; r++) {
        norm_row(x.data<float>() + row_offset(x, r), w, y.data<float>() + r * D, D, eps);
      }
    });
  }

  const char* name() const override {
    return "OrchardRMSNorm";
  }
  bool is_equivalent(const mx::Primitive& other) const override {
    const auto& o = static_cast<const FusedRMSNorm&>(other);
    return eps_ == o.eps_ && weighted_ == o.weighted_;
  }

 private:
  float eps_;
  bool weighted_;
};

// The residual add and the norm after it (x + delta, then that sum normalised): one operation with
// both results, where a layer would run an add and a norm. The sum is stored first and normalised
// from memory by norm_row, so both results are those of the two operations to the bit.
class FusedAddRMSNorm : public FusedOutputsPrimitive {
 public:
  FusedAddRMSNorm(mx::Stream stream, float eps, bool weighted)
      : FusedOutputsPrimitive(stream), eps_(eps), weighted_(weighted) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    const float eps = eps_;
    const bool weighted = weighted_;
    dispatch_outputs(stream(), inputs, outputs, strided_rows,
                     [eps, weighted](std::vector<mx::array>& in, std::vector<mx::array>& out) {
                       const mx::array &x = in[0], &delta = in[1];
                       const int D = x.shape(-1);
                       const int64_t rows = D ? static_cast<int64_t>(x.size()) / D : 0;
                       const float* w = weighted ? in[2].data<float>() : nullptr;
                       for (int64_t r = 0; r < rows; r++) {
                         const float* a = x.data<float>() + row_offset(x, r);
                         const float* b = delta.data<float>() + row_offset(delta, r);
                         float* sum = out[0].data<float>() + r * D;
                         for (int i = 0; i < D; i++) sum[i] = a[i] + b[i];
                         norm_row(sum, w, out[1].data<float>() + r * D, D, eps);
                       }
                     });
  }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    return {inputs[0].shape(), inputs[0].shape()};
  }
  const char* name() const override {
    return "OrchardAddRMSNorm";
  }
  bool is_equivalent(const mx::Primitive& other) const override {
    if (typeid(*this) != typeid(other)) return false;
    const auto& o = static_cast<const FusedAddRMSNorm&>(other);
    return eps_ == o.eps_ && weighted_ == o.weighted_;
  }

 private:
  float eps_;
  bool weighted_;
};

// ------------------------------------------------------------------------------------------------
// Rotary embedding from tables

ORCHARD_CLONES void rotate_row(const float* x, const float* c, const float* s, float* y, int dims, int D,
                               bool traditional) {
  if (traditional) {
    for (int i = 0; i < dims; i += 2) {
      y[i] = x[i] * c[i] + x[i + 1] * s[i];
      y[i + 1] = x[i + 1] * c[i + 1] + x[i] * s[i + 1];
    }
  } else {
    const int half = dims / 2;
#pragma omp simd
    for (int i = 0; i < half; i++) {
      y[i] = x[i] * c[i] + x[i + half] * s[i];
      y[i + half] = x[i + half] * c[i + half] + x[i] * s[i + half];
    }
  }
  for (int i = dims; i < D; i++) y[i] = x[i];
}

class FusedRope : public FusedPrimitive {
 public:
  FusedRope(mx::Stream stream, int dims, bool traditional)
      : FusedPrimitive(stream), dims_(dims), traditional_(traditional) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    const int dims = dims_;
    const bool traditional = traditional_;
    dispatch(stream(), inputs, out, strided_rows, [dims, traditional](std::vector<mx::array>& in, mx::array& y) {
      const mx::array &x = in[0], &cos = in[1], &sin = in[2], &offsets = in[3];
      const int D = x.shape(-1), L = x.shape(-2), positions = cos.shape(0);
      const int64_t rows = D ? static_cast<int64_t>(x.size()) / D : 0;
      const int64_t rows_per_batch = x.ndim() >= 3 && x.shape(0) ? rows / x.shape(0) : rows;
      const bool per_row = offsets.size() > 1;
      const int32_t* start = offsets.data<int32_t>();
      for (int64_t r = 0; r < rows; r++) {
        const int64_t position = start[per_row ? r / rows_per_batch : 0] + r % L;
        float* yr = y.data<float>() + r * D;
        if (position < 0 || position >= positions) {
          // The caller sizes the tables (mlxmodels/layers/rope.py); NaN makes a mistake there loud
          // rather than a silently wrong rotation (an exception cannot leave the stream thread).
          for (int i = 0; i < D; i++) yr[i] = std::numeric_limits<float>::quiet_NaN();
          continue;
        }
        rotate_row(x.data<float>() + row_offset(x, r), cos.data<float>() + row_offset(cos, position),
                   sin.data<float>() + row_offset(sin, position), yr, dims, D, traditional);
      }
    });
  }

  const char* name() const override {
    return "OrchardRope";
  }
  bool is_equivalent(const mx::Primitive& other) const override {
    const auto& o = static_cast<const FusedRope&>(other);
    return dims_ == o.dims_ && traditional_ == o.traditional_;
  }

 private:
  int dims_;
  bool traditional_;
};

// ------------------------------------------------------------------------------------------------
// Attention for one query per head

// v16f (lanes.h): each target_clones clone lowers it to its own registers (one zmm, two ymm, four
// xmm), so the loops below need no per-ISA source.

inline __attribute__((always_inline)) v16f load16(const float* p) {
  v16f v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

inline __attribute__((always_inline)) void store16(float* p, v16f v) {
  std::memcpy(p, &v, sizeof(v));
}

// e**x for x within [-87.33, 87.33], to ~1e-7 relative (the same reduction as
// mlxmodels/layers/cpu_math.py): 2**n * p(r), n = x / ln 2 rounded to nearest by the 1.5 * 2^23
// shift, |r| <= ln(2) / 2, degree-7 Taylor polynomial. T is float or v16f.
template <typename T>
inline __attribute__((always_inline)) T exp_in_range(T x) {
  const T n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const T r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  T p = r * (1.0f / 5040.0f) + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  T power;
  if constexpr (sizeof(T) == sizeof(float)) {
    const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
    std::memcpy(&power, &bits, sizeof(power));
  } else {
    const v16i bits = (__builtin_convertvector(n, v16i) + 127) << 23;
    std::memcpy(&power, &bits, sizeof(power));
  }
  return p * power;
}

// e**x, exactly 0 below e**-87.33 (as cpu_math's: no denormal products downstream), saturating at
// e**87.33.
inline float exp_poly(float x) {
  if (x < -87.33f) return 0.0f;
  return exp_in_range(x > 87.33f ? 87.33f : x);
}

enum MaskKind : int { kNoMask = 0, kBoolMask = 1, kAdditiveMask = 2 };

struct AttentionJob;
using AttendFn = void (*)(const AttentionJob& j, int b, int kv_head, int chunk);

struct AttentionJob {
  const float* q;
  const void *k, *v;                       // float32, or float16 (both the same)
  AttendFn attend;                         // the kernel for their type and this CPU
  int64_t q_batch, q_head;                 // strides of q [B, H, 1, D]
  int64_t k_batch, k_head, k_token;        // of k [B, H_kv, S, D]
  int64_t v_batch, v_head, v_token;        // of v [B, H_kv, S, Dv]
  int B, H, kv_heads, S, D, Dv;
  float scale;
  int mask_kind;
  const void* mask;
  int64_t mask_batch, mask_token;          // 0 where the mask broadcasts
  const float* sinks;                      // nullptr: none
  float* out;                              // [B, H, 1, Dv]
  // Keys split in `chunks` of `chunk_keys` per (row, KV head), each a task of its own: per (row, head,
  // chunk) `partial` holds its scores' maximum, its sum of weights and its weighted values, combined
  // after (combine_chunks). One chunk: the task writes `out` itself.
  int chunks, chunk_keys;
  float* partial;
};

// A register tree: a loop's `omp simd` reduction ends in sixteen dependent scalar adds through memory.
inline __attribute__((always_inline)) float hsum16(v16f v) {
  v8f a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
          __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  v4f b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
  return (b[0] + b[2]) + (b[1] + b[3]);
}

// The largest of n floats (-inf for none): sixteen lanes at a time (a scalar max is a dependent
// compare per element, which the compiler may not reorder).
inline __attribute__((always_inline)) float row_max(const float* x, int n) {
  const float minus_infinity = -std::numeric_limits<float>::infinity();
  int i = 0;
  float top = minus_infinity;
  if (n >= 16) {
    v16f best = load16(x);
    for (i = 16; i + 16 <= n; i += 16) {
      const v16f v = load16(x + i);
      best = v > best ? v : best;
    }
    v8f a = __builtin_shufflevector(best, best, 0, 1, 2, 3, 4, 5, 6, 7);
    v8f b = __builtin_shufflevector(best, best, 8, 9, 10, 11, 12, 13, 14, 15);
    a = a > b ? a : b;
    v4f c = __builtin_shufflevector(a, a, 0, 1, 2, 3), d = __builtin_shufflevector(a, a, 4, 5, 6, 7);
    c = c > d ? c : d;
    top = std::max(std::max(c[0], c[1]), std::max(c[2], c[3]));
  }
  for (; i < n; i++) top = x[i] > top ? x[i] : top;
  return top;
}

// exp_poly on sixteen lanes.
inline __attribute__((always_inline)) v16f exp16(v16f x) {
  const v16f zero = {};
  const auto tiny = x < -87.33f;
  x = tiny ? -87.33f : x;
  return tiny ? zero : exp_in_range(x > 87.33f ? 87.33f : x);
}

// Keys and values as the cache holds them: float32 as they are, or float16 (`kv_bits` 16: half the
// bytes a decode step streams), widened as they are read. `load` gives sixteen as floats, `at` one.
struct Float32KV {
  using T = float;
  static inline __attribute__((always_inline)) v16f load(const float* p) { return load16(p); }
  static inline __attribute__((always_inline)) float at(const float* p) { return *p; }
};

// Any CPU: bit arithmetic, exact (subnormals, infinities and NaNs included), ~3x the cost per
// element of the F16C instruction below.
struct Float16KV {
  using T = uint16_t;
  static inline v16f load(const uint16_t* p) {
    typedef uint16_t v16h __attribute__((vector_size(32)));
    v16h h;
    std::memcpy(&h, p, sizeof(h));
    const v16i x = __builtin_convertvector(h, v16i);
    const v16i magnitude = (x & 0x7FFF) << 13;  // exponent and mantissa where a float keeps them
    v16f f;
    std::memcpy(&f, &magnitude, sizeof(f));
    f *= 0x1p112f;  // rebias the exponent; a half subnormal becomes the float it stands for
    v16i bits;
    std::memcpy(&bits, &f, sizeof(bits));
    bits = magnitude >= (0x7C00 << 13) ? (magnitude | 0x7F800000) : bits;  // infinities, NaNs
    bits |= (x & 0x8000) << 16;
    std::memcpy(&f, &bits, sizeof(f));
    return f;
  }
  static inline float at(const uint16_t* p) { return half_to_float(*p); }
};

#if defined(__x86_64__)
// One instruction per sixteen (AVX-512F) or eight (F16C) values. Inlined only into the kernels built
// for those targets (attend_f16_* below).
struct Float16KVAvx512 : Float16KV {
  static inline __attribute__((target("avx512f"))) v16f load(const uint16_t* p) {
    const __m512 wide = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    v16f v;
    std::memcpy(&v, &wide, sizeof(v));
    return v;
  }
};

struct Float16KVF16C : Float16KV {
  static inline __attribute__((target("avx,f16c"))) v16f load(const uint16_t* p) {
    const __m256 halves[2] = {_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))),
                              _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8)))};
    v16f v;
    std::memcpy(&v, halves, sizeof(v));
    return v;
  }
};
#endif

// q . k over D values: sixteen lanes at a time, then the tail.
template <class KV>
inline float dot_row(const float* q, const typename KV::T* k, int D) {
  v16f acc = {};
  int i = 0;
  for (; i + 16 <= D; i += 16) acc += load16(q + i) * KV::load(k + i);
  float dot = hsum16(acc);
  for (; i < D; i++) dot += q[i] * KV::at(k + i);
  return dot;
}

// The columns a row's mask leaves visible lie in [first, last): a batch's rows are padded to its
// longest, and a short row need not read the padding's keys and values at all.
inline void visible_span(const AttentionJob& j, int b, int& first, int& last) {
  first = 0;
  last = j.S;
  if (j.mask_kind == kNoMask) return;
  auto visible = [&](int s) {
    const int64_t at = b * j.mask_batch + s * j.mask_token;
    if (j.mask_kind == kBoolMask) return static_cast<const bool*>(j.mask)[at];
    return static_cast<const float*>(j.mask)[at] != -std::numeric_limits<float>::infinity();
  };
  while (first < last && !visible(first)) first++;
  while (last > first && !visible(last - 1)) last--;
}

// scores[s] = scale * q . key s for sixteen keys from `keys` (D a multiple of 16): one accumulator
// per key, folded together at the end.
inline __attribute__((always_inline)) void score16(const float* q, const float* keys, int64_t k_token, int D,
                                                   float scale, float* scores) {
  v16f acc[16] = {};
  for (int i = 0; i < D; i += 16) {
    const v16f qi = load16(q + i);
    for (int t = 0; t < 16; t++) acc[t] += qi * load16(keys + t * k_token + i);
  }
  store16(scores, sum_lanes16(acc) * scale);
}

// out[g][i, i + 64) = inverse[g] * sum over t of weights[g][t] * values[t][i, i + 64), for G query
// heads at once: each value vector is loaded once for all G, and the 4 G accumulators are
// independent chains (one head's four would wait on the FMA latency).
template <class KV, int G>
inline void weigh64(const float* const* weights, const typename KV::T* values, int64_t v_token, int first,
                    int last, int i, const float* inverse, float* const* out) {
  v16f acc[G][4] = {};
  for (int t = first; t < last; t++) {
    const typename KV::T* value = values + t * v_token + i;
    const v16f v0 = KV::load(value), v1 = KV::load(value + 16), v2 = KV::load(value + 32), v3 = KV::load(value + 48);
    for (int g = 0; g < G; g++) {
      const float w = weights[g][t];
      acc[g][0] += w * v0;
      acc[g][1] += w * v1;
      acc[g][2] += w * v2;
      acc[g][3] += w * v3;
    }
  }
  for (int g = 0; g < G; g++) {
    for (int c = 0; c < 4; c++) store16(out[g] + i + 16 * c, acc[g][c] * inverse[g]);
  }
}

// This thread's buffer of at least `floats` floats (kept out of line: the kernels inline all else).
__attribute__((noinline)) float* attention_scratch(size_t floats) {
  thread_local std::vector<float> scratch;
  if (scratch.size() < floats) scratch.resize(floats);
  return scratch.data();
}

// One KV head of one batch row: its `groups` query heads read each visible key once. Instantiated
// in the attend_* functions below, which inline all of it for their instruction set.
template <class KV>
inline void attend_kv_head(const AttentionJob& j, int b, int kv_head, int chunk) {
  using T = typename KV::T;
  const int groups = j.H / j.kv_heads, S = j.S, D = j.D, Dv = j.Dv;
  // Each head's scores, padded to whole blocks of sixteen keys; then, for float16 keys, a block of
  // sixteen keys widened once for all the heads that read it.
  const int stride = (S + 15) / 16 * 16;
  constexpr bool widen_keys = !std::is_same_v<T, float>;
  float* scores = attention_scratch(static_cast<size_t>(groups) * stride + (widen_keys ? 16 * D : 0));
  float* widened = scores + static_cast<size_t>(groups) * stride;
  const T* keys = static_cast<const T*>(j.k) + b * j.k_batch + kv_head * j.k_head;
  const T* values = static_cast<const T*>(j.v) + b * j.v_batch + kv_head * j.v_head;
  constexpr int kLine = 64 / sizeof(T);  // values per cache line
  const float* queries = j.q + b * j.q_batch;
  const int first_head = kv_head * groups;
  const float minus_infinity = -std::numeric_limits<float>::infinity();
  int first, last;  // columns outside [first, last) weigh exactly zero: nothing below touches them
  visible_span(j, b, first, last);
  const bool partial = j.chunks > 1;
  if (partial) {  // this task's share of the keys
    first = std::max(first, chunk * j.chunk_keys);
    last = std::max(first, std::min(last, (chunk + 1) * j.chunk_keys));
  }
  // Keys and values stream from memory once per step (a batch's cache is larger than the caches):
  // each block of keys asks ahead for the next block's keys, and for its own values, which the
  // weighted sums read later.
  int s = first;
  if (D % 16 == 0) {
    for (; s + 16 <= last; s += 16) {
      const T* block = keys + s * j.k_token;
      for (int t = 0; t < 16; t++) {
        if (s + 16 + t < last) {
          for (int i = 0; i < D; i += kLine) __builtin_prefetch(block + (16 + t) * j.k_token + i);
        }
        for (int i = 0; i < Dv; i += kLine) __builtin_prefetch(values + (s + t) * j.v_token + i);
      }
      const float* read;  // the block's keys as floats, k_token apart
      int64_t k_token;
      if constexpr (widen_keys) {
        for (int t = 0; t < 16; t++) {
          for (int i = 0; i < D; i += 16) store16(widened + t * D + i, KV::load(block + t * j.k_token + i));
        }
        read = widened;
        k_token = D;
      } else {
        read = block;
        k_token = j.k_token;
      }
      for (int g = 0; g < groups; g++) {
        score16(queries + (first_head + g) * j.q_head, read, k_token, D, j.scale, scores + g * stride + s);
      }
    }
  }
  for (; s < last; s++) {
    for (int g = 0; g < groups; g++) {
      scores[g * stride + s] =
          dot_row<KV>(queries + (first_head + g) * j.q_head, keys + s * j.k_token, D) * j.scale;
    }
  }
  if (j.mask_kind != kNoMask) {
    for (s = first; s < last; s++) {
      const int64_t at = b * j.mask_batch + s * j.mask_token;
      for (int g = 0; g < groups; g++) {
        float& score = scores[g * stride + s];
        if (j.mask_kind == kBoolMask) {
          if (!static_cast<const bool*>(j.mask)[at]) score = -std::numeric_limits<float>::infinity();
        } else {
          score += static_cast<const float*>(j.mask)[at];
        }
      }
    }
  }
  constexpr int kMaxGroups = 64;  // heads per KV head handled in one pass (more: several passes)
  float inverse[kMaxGroups];
  const float* weights[kMaxGroups];
  float* outs[kMaxGroups];
  for (int g0 = 0; g0 < groups; g0 += kMaxGroups) {
    const int count = std::min(kMaxGroups, groups - g0);
    for (int g = 0; g < count; g++) {
      const int h = first_head + g0 + g;
      float* row = scores + (g0 + g) * stride;
      float top = row_max(row + first, last - first);
      if (j.sinks && !partial) top = j.sinks[h] > top ? j.sinks[h] : top;
      // Masked scores (-inf) weigh exactly zero, also when the whole row is masked (top = -inf).
      float total = 0.0f;
      int t = first;
      const v16f zero = {};
      v16f totals = zero;
      for (; t + 16 <= last; t += 16) {
        const v16f x = load16(row + t);
        const v16f e = x == minus_infinity ? zero : exp16(x - top);
        store16(row + t, e);
        totals += e;
      }
      total = hsum16(totals);
      for (; t < last; t++) {
        const float e = row[t] == minus_infinity ? 0.0f : exp_poly(row[t] - top);
        row[t] = e;
        total += e;
      }
      weights[g] = row;
      if (partial) {  // unnormalised, with what the combination needs (sinks are added there)
        float* slot = j.partial + ((static_cast<int64_t>(b) * j.H + h) * j.chunks + chunk) * (Dv + 2);
        slot[0] = top;
        slot[1] = total;
        inverse[g] = 1.0f;
        outs[g] = slot + 2;
        continue;
      }
      if (j.sinks) total += exp_poly(j.sinks[h] - top);
      // Weighted values, normalised once at the end.
      inverse[g] = 1.0f / total;
      outs[g] = j.out + (static_cast<int64_t>(b) * j.H + h) * Dv;
    }
    int i = 0;
    for (; i + 64 <= Dv; i += 64) {
      int g = 0;
      for (; g + 4 <= count; g += 4) {
        weigh64<KV, 4>(weights + g, values, j.v_token, first, last, i, inverse + g, outs + g);
      }
      switch (count - g) {
        case 3: weigh64<KV, 3>(weights + g, values, j.v_token, first, last, i, inverse + g, outs + g); break;
        case 2: weigh64<KV, 2>(weights + g, values, j.v_token, first, last, i, inverse + g, outs + g); break;
        case 1: weigh64<KV, 1>(weights + g, values, j.v_token, first, last, i, inverse + g, outs + g); break;
        default: break;
      }
    }
    for (int g = 0; g < count; g++) {
      const float* row = weights[g];
      float* out = outs[g];
      int k = i;
      for (; k + 16 <= Dv; k += 16) {
        v16f a = {};
        for (int t = first; t < last; t++) a += row[t] * KV::load(values + t * j.v_token + k);
        store16(out + k, a * inverse[g]);
      }
      for (; k < Dv; k++) {
        float a = 0.0f;
        for (int t = first; t < last; t++) a += row[t] * KV::at(values + t * j.v_token + k);
        out[k] = a * inverse[g];
      }
    }
  }
}

// The kernels, each with everything inlined for its target. Float32 keys and values: one function
// cloned per instruction set. Float16 ones: the widening instruction is target-specific, so one
// function per target (a target_clones clone could not inline another target's instruction).
ORCHARD_CLONES __attribute__((flatten)) void attend_f32(const AttentionJob& j, int b, int kv_head, int chunk) {
  attend_kv_head<Float32KV>(j, b, kv_head, chunk);
}

__attribute__((flatten)) void attend_f16_portable(const AttentionJob& j, int b, int kv_head, int chunk) {
  attend_kv_head<Float16KV>(j, b, kv_head, chunk);
}

#if defined(__x86_64__)
__attribute__((target("avx512f"), flatten)) void attend_f16_avx512(const AttentionJob& j, int b, int kv_head,
                                                                   int chunk) {
  attend_kv_head<Float16KVAvx512>(j, b, kv_head, chunk);
}

__attribute__((target("avx2,fma,f16c"), flatten)) void attend_f16_avx2(const AttentionJob& j, int b, int kv_head,
                                                                       int chunk) {
  attend_kv_head<Float16KVF16C>(j, b, kv_head, chunk);
}
#endif

// The float16 widening follows the matmul's instruction-set variant, which was chosen for this CPU
// (and which `set_variant` switches, so tests reach every widening on one machine).
AttendFn attend_for(bool float16) {
  if (!float16) return attend_f32;
#if defined(__x86_64__)
  const std::string variant = variant_name();
  if (variant == "avx512") return attend_f16_avx512;
  if (variant == "avx2") return attend_f16_avx2;
#endif
  return attend_f16_portable;
}

void attention_task(void* context, int task) {
  const AttentionJob& job = *static_cast<const AttentionJob*>(context);
  const int unit = task / job.chunks;
  job.attend(job, unit / job.kv_heads, unit % job.kv_heads, task % job.chunks);
}

// Each head's output from its chunks' partial results: every chunk's sum of weights and weighted
// values rescaled from the chunk's own maximum score to the overall one (and the sink's weight, which
// no chunk counted). A chunk with no visible key (maximum -inf) weighs nothing.
void combine_chunks(const AttentionJob& j) {
  const float minus_infinity = -std::numeric_limits<float>::infinity();
  const int Dv = j.Dv, slot = Dv + 2;
  for (int64_t row = 0; row < static_cast<int64_t>(j.B) * j.H; row++) {
    const float* part = j.partial + row * j.chunks * slot;
    const int h = static_cast<int>(row % j.H);
    float top = j.sinks ? j.sinks[h] : minus_infinity;
    for (int c = 0; c < j.chunks; c++) top = std::max(top, part[c * slot]);
    float total = j.sinks ? exp_poly(j.sinks[h] - top) : 0.0f;
    float* out = j.out + row * Dv;
    std::fill(out, out + Dv, 0.0f);
    for (int c = 0; c < j.chunks; c++) {
      const float* chunk = part + c * slot;
      if (chunk[0] == minus_infinity) continue;
      const float weight = exp_poly(chunk[0] - top);
      total += weight * chunk[1];
      for (int d = 0; d < Dv; d++) out[d] += weight * chunk[2 + d];
    }
    const float inverse = 1.0f / total;
    for (int d = 0; d < Dv; d++) out[d] *= inverse;
  }
}

// ------------------------------------------------------------------------------------------------
// Softmax over rows (a prefill's attention weights)

// Elements below which a row-wise operation runs on the calling thread alone (a decode step's).
constexpr int64_t kParallelElements = 1 << 16;

struct RowsJob {
  void* context;
  void (*each)(void* context, int64_t row);
  int64_t rows, rows_per_task;
};

void rows_task(void* context, int task) {
  const RowsJob& j = *static_cast<const RowsJob*>(context);
  const int64_t end = std::min(j.rows, (task + 1) * j.rows_per_task);
  for (int64_t r = task * j.rows_per_task; r < end; r++) j.each(j.context, r);
}

// each(context, r) for every row r < rows: on the calling thread when the rows hold fewer than
// kParallelElements elements in all, else in blocks of rows over the pool's threads.
void for_rows(int64_t rows, int64_t elements, void (*each)(void*, int64_t), void* context) {
  ThreadPool& pool = ThreadPool::shared();
  if (elements < kParallelElements || rows < 2) {
    for (int64_t r = 0; r < rows; r++) each(context, r);
    return;
  }
  const int64_t tasks = pool.size() * 4;
  RowsJob j{context, each, rows, (rows + tasks - 1) / tasks};
  pool.run(static_cast<int>((rows + j.rows_per_task - 1) / j.rows_per_task), rows_task, &j);
}

struct SoftmaxJob {
  const float* x;
  float* out;
  int S, L;
  int key_offset;  // causal: row l of each L keeps keys s <= l + key_offset; -1: no mask
};

ORCHARD_CLONES void softmax_row(const float* x, float* y, int S, int visible) {
  const float minus_infinity = -std::numeric_limits<float>::infinity();
  const float top = row_max(x, visible);
  const v16f zero = {};
  v16f totals = zero;
  int s = 0;
  for (; s + 16 <= visible; s += 16) {
    const v16f v = load16(x + s);
    const v16f e = v == minus_infinity ? zero : exp16(v - top);
    store16(y + s, e);
    totals += e;
  }
  float total = hsum16(totals);
  for (; s < visible; s++) {
    const float e = x[s] == minus_infinity ? 0.0f : exp_poly(x[s] - top);
    y[s] = e;
    total += e;
  }
  for (; s < S; s++) y[s] = 0.0f;  // beyond the causal edge
  const float inverse = 1.0f / total;  // a row with every key masked: 0 / 0, NaN, as MLX's softmax
  s = 0;
  for (; s + 16 <= visible; s += 16) store16(y + s, load16(y + s) * inverse);
  for (; s < visible; s++) y[s] *= inverse;
}

void softmax_at(void* context, int64_t r) {
  const SoftmaxJob& j = *static_cast<const SoftmaxJob*>(context);
  int visible = j.S;
  if (j.key_offset >= 0) visible = std::max(0, std::min(j.S, static_cast<int>(r % j.L) + j.key_offset + 1));
  softmax_row(j.x + r * j.S, j.out + r * j.S, j.S, visible);
}

bool not_row_contiguous(const mx::array& a) {
  return !a.flags().row_contiguous;
}

class FusedSoftmax : public SettingPrimitive {  // the setting: key_offset
 public:
  using SettingPrimitive::SettingPrimitive;

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    const int key_offset = setting_;
    dispatch(stream(), inputs, out, not_row_contiguous, [key_offset](std::vector<mx::array>& in, mx::array& y) {
      const mx::array& x = in[0];
      SoftmaxJob j{x.data<float>(), y.data<float>(), x.shape(-1), x.ndim() >= 2 ? x.shape(-2) : 1, key_offset};
      for_rows(j.S ? static_cast<int64_t>(x.size()) / j.S : 0, x.size(), softmax_at, &j);
    });
  }

  const char* name() const override {
    return "OrchardSoftmax";
  }
};

// ------------------------------------------------------------------------------------------------
// Gated activations

enum Activation : int { kSilu = 0, kGeluTanh = 1 };

ORCHARD_CLONES void gated_row(const float* gate, const float* up, float* y, int n, int activation) {
  if (activation == kSilu) {
#pragma omp simd
    for (int i = 0; i < n; i++) y[i] = gate[i] * (1.0f / (1.0f + exp_poly(-gate[i]))) * up[i];
  } else {  // 0.5 (1 + tanh(z)) = sigmoid(2 z), z = sqrt(2 / pi) (g + 0.044715 g^3)
    const float c = 0.7978845608028654f;
#pragma omp simd
    for (int i = 0; i < n; i++) {
      const float g = gate[i];
      const float z = c * (g + 0.044715f * g * g * g);
      y[i] = g * (1.0f / (1.0f + exp_poly(-2.0f * z))) * up[i];
    }
  }
}

struct GatedJob {
  const mx::array *gate, *up;  // up null: gate's rows are [gate | up] (a joined gate/up projection)
  float* out;
  int width, activation;
};

void gated_at(void* context, int64_t r) {
  const GatedJob& j = *static_cast<const GatedJob*>(context);
  const float* gate = j.gate->data<float>() + row_offset(*j.gate, r);
  const float* up = j.up ? j.up->data<float>() + row_offset(*j.up, r) : gate + j.width;
  gated_row(gate, up, j.out + r * j.width, j.width, j.activation);
}


class FusedGatedActivation : public SettingPrimitive {  // the setting: the activation
 public:
  using SettingPrimitive::SettingPrimitive;

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    const int activation = setting_;
    dispatch(stream(), inputs, out, strided_rows, [activation](std::vector<mx::array>& in, mx::array& y) {
      GatedJob j{&in[0], in.size() > 1 ? &in[1] : nullptr, y.data<float>(), y.shape(-1), activation};
      for_rows(j.width ? static_cast<int64_t>(y.size()) / j.width : 0, y.size(), gated_at, &j);
    });
  }

  const char* name() const override {
    return "OrchardGatedActivation";
  }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    mx::Shape shape = inputs[0].shape();
    if (inputs.size() == 1) shape.back() /= 2;
    return {shape};
  }
};

// ------------------------------------------------------------------------------------------------
// A joined q/k/v projection split into heads, q and k rotated: one operation where the layer would
// run a split, three reshapes and two rotations (each with its own fixed cost at one token a step).

struct HeadsJob {
  const mx::array *x, *cos, *sin, *offsets;
  float *q, *k, *v;
  int L, H, kv_heads, D, dims;
  bool traditional;
};

void heads_at(void* context, int64_t r) {  // r: one token of one row (b * L + l)
  const HeadsJob& j = *static_cast<const HeadsJob*>(context);
  const int64_t b = r / j.L, l = r % j.L;
  const int64_t position = j.offsets->data<int32_t>()[j.offsets->size() > 1 ? b : 0] + l;
  const float* row = j.x->data<float>() + row_offset(*j.x, r);
  const int D = j.D;
  auto at = [&](float* base, int heads, int h) { return base + ((b * heads + h) * j.L + l) * D; };
  if (position < 0 || position >= j.cos->shape(0)) {
    // As FusedRope: tables too short are the caller's mistake, made loud (NaN) rather than silent.
    const float nan = std::numeric_limits<float>::quiet_NaN();
    for (int h = 0; h < j.H; h++) std::fill(at(j.q, j.H, h), at(j.q, j.H, h) + D, nan);
    for (int h = 0; h < j.kv_heads; h++) std::fill(at(j.k, j.kv_heads, h), at(j.k, j.kv_heads, h) + D, nan);
  } else {
    const float* c = j.cos->data<float>() + row_offset(*j.cos, position);
    const float* s = j.sin->data<float>() + row_offset(*j.sin, position);
    for (int h = 0; h < j.H; h++) rotate_row(row + h * D, c, s, at(j.q, j.H, h), j.dims, D, j.traditional);
    for (int h = 0; h < j.kv_heads; h++) {
      rotate_row(row + (j.H + h) * D, c, s, at(j.k, j.kv_heads, h), j.dims, D, j.traditional);
    }
  }
  for (int h = 0; h < j.kv_heads; h++) {
    std::memcpy(at(j.v, j.kv_heads, h), row + (j.H + j.kv_heads + h) * D, sizeof(float) * D);
  }
}

class FusedRotatedHeads : public FusedOutputsPrimitive {
 public:
  FusedRotatedHeads(mx::Stream stream, int heads, int kv_heads, int dims, bool traditional)
      : FusedOutputsPrimitive(stream), heads_(heads), kv_heads_(kv_heads), dims_(dims), traditional_(traditional) {}

  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override {
    const int heads = heads_, kv_heads = kv_heads_, dims = dims_;
    const bool traditional = traditional_;
    dispatch_outputs(stream(), inputs, outputs, strided_rows,
                     [heads, kv_heads, dims, traditional](std::vector<mx::array>& in, std::vector<mx::array>& out) {
                       const mx::array& x = in[0];
                       HeadsJob j{&x, &in[1], &in[2], &in[3], out[0].data<float>(), out[1].data<float>(),
                                  out[2].data<float>(), x.shape(1), heads, kv_heads, out[0].shape(3), dims,
                                  traditional};
                       const int64_t tokens = static_cast<int64_t>(x.shape(0)) * x.shape(1);
                       for_rows(tokens, x.size(), heads_at, &j);
                     });
  }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    const mx::array& x = inputs[0];
    const int B = x.shape(0), L = x.shape(1), D = x.shape(2) / (heads_ + 2 * kv_heads_);
    return {{B, heads_, L, D}, {B, kv_heads_, L, D}, {B, kv_heads_, L, D}};
  }
  const char* name() const override {
    return "OrchardRotatedHeads";
  }
  bool is_equivalent(const mx::Primitive& other) const override {
    if (typeid(*this) != typeid(other)) return false;
    const auto& o = static_cast<const FusedRotatedHeads&>(other);
    return heads_ == o.heads_ && kv_heads_ == o.kv_heads_ && dims_ == o.dims_ && traditional_ == o.traditional_;
  }

 private:
  int heads_, kv_heads_, dims_;
  bool traditional_;
};

// Work (multiply-adds) below which one attention runs on the calling thread alone.
constexpr int64_t kParallelWork = 1 << 15;
// The fewest keys a chunk of a split (row, KV head) takes: its combination costs ~Dv per head.
constexpr int kMinChunkKeys = 128;

class FusedDecodeAttention : public FusedPrimitive {
 public:
  FusedDecodeAttention(mx::Stream stream, float scale, int mask_kind, bool sinks, bool flat)
      : FusedPrimitive(stream), scale_(scale), mask_kind_(mask_kind), sinks_(sinks), flat_(flat) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    const float scale = scale_;
    const int mask_kind = mask_kind_;
    const bool sinks = sinks_;
    dispatch(stream(), inputs, out, strided_rows, [scale, mask_kind, sinks](std::vector<mx::array>& in, mx::array& y) {
      const mx::array &q = in[0], &k = in[1], &v = in[2];
      AttentionJob j{};
      j.q = q.data<float>();
      j.k = k.data<void>();
      j.v = v.data<void>();
      j.attend = attend_for(k.dtype() == mx::float16);
      j.q_batch = q.strides()[0], j.q_head = q.strides()[1];
      j.k_batch = k.strides()[0], j.k_head = k.strides()[1], j.k_token = k.strides()[2];
      j.v_batch = v.strides()[0], j.v_head = v.strides()[1], j.v_token = v.strides()[2];
      j.B = q.shape(0), j.H = q.shape(1), j.kv_heads = k.shape(1), j.S = k.shape(2);
      j.D = q.shape(3), j.Dv = v.shape(3);
      j.scale = scale;
      j.mask_kind = mask_kind;
      int next = 3;
      if (mask_kind != kNoMask) {
        const mx::array& m = in[next++];
        const int nd = m.ndim();
        j.mask = m.data<void>();
        j.mask_batch = nd >= 4 && m.shape(0) > 1 ? m.strides()[0] : 0;
        j.mask_token = nd >= 1 && m.shape(-1) > 1 ? m.strides()[nd - 1] : 0;
      }
      j.sinks = sinks ? in[next].data<float>() : nullptr;
      j.out = y.data<float>();
      const int units = j.B * j.kv_heads;  // (row, KV head) pairs
      const bool parallel = static_cast<int64_t>(j.B) * j.H * j.S * (j.D + j.Dv) >= kParallelWork;
      const int threads = ThreadPool::shared().size();
      j.chunks = 1;
      std::vector<float> partial;
      if (parallel && threads > 1 && units < 2 * threads && j.S >= 2 * kMinChunkKeys) {
        // Too few pairs to keep the threads busy (one sequence over few KV heads: Gemma 3 has one):
        // their keys are split in chunks, as flash-decoding does, and combined after.
        const int chunks = std::min((2 * threads + units - 1) / units, j.S / kMinChunkKeys);
        j.chunk_keys = ((j.S + chunks - 1) / chunks + 15) / 16 * 16;  // whole blocks of sixteen keys
        j.chunks = (j.S + j.chunk_keys - 1) / j.chunk_keys;
        partial.resize(static_cast<size_t>(j.B) * j.H * j.chunks * (j.Dv + 2));
        j.partial = partial.data();
      }
      const int tasks = units * j.chunks;
      if (j.S == 0) {
        std::memset(j.out, 0, y.nbytes());
      } else if (!parallel || tasks < 2) {
        for (int t = 0; t < tasks; t++) attention_task(&j, t);
      } else {
        ThreadPool::shared().run(tasks, attention_task, &j);
      }
      if (j.chunks > 1) combine_chunks(j);
    });
  }

  const char* name() const override {
    return "OrchardDecodeAttention";
  }
  bool is_equivalent(const mx::Primitive& other) const override {
    const auto& o = static_cast<const FusedDecodeAttention&>(other);
    return scale_ == o.scale_ && mask_kind_ == o.mask_kind_ && sinks_ == o.sinks_ && flat_ == o.flat_;
  }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    const int B = inputs[0].shape(0), H = inputs[0].shape(1), Dv = inputs[2].shape(3);
    if (flat_) return {{B, 1, H * Dv}};
    return {{B, H, 1, Dv}};
  }

 private:
  float scale_;
  int mask_kind_;
  bool sinks_;
  bool flat_;  // the output declared [B, 1, H * Dv]: the same memory as [B, H, 1, Dv]
};

// ------------------------------------------------------------------------------------------------
// Argmax over rows (greedy sampling's pick from a vocabulary of logits)

struct ArgmaxJob {
  const mx::array* x;
  uint32_t* out;
  int width;
};

// The index of the first largest value, a NaN counting as larger than any number (mx.argmax's
// answer): one pass for the largest value sixteen lanes at a time, one for its first position.
ORCHARD_CLONES uint32_t argmax_row(const float* x, int n) {
  int i = 0;
  float top = -std::numeric_limits<float>::infinity();
  bool nan = false;
  if (n >= 16) {
    v16f best = load16(x);
    v16i unordered = best != best;
    for (i = 16; i + 16 <= n; i += 16) {
      const v16f v = load16(x + i);
      best = v > best ? v : best;
      unordered |= v != v;
    }
    for (int lane = 0; lane < 16; lane++) {
      top = best[lane] > top ? best[lane] : top;
      nan |= unordered[lane] != 0;
    }
  }
  for (; i < n; i++) {
    top = x[i] > top ? x[i] : top;
    nan |= x[i] != x[i];
  }
  for (i = 0; i < n; i++) {
    if (nan ? x[i] != x[i] : x[i] == top) return static_cast<uint32_t>(i);
  }
  return 0;  // n == 0, which the op refuses
}

void argmax_at(void* context, int64_t r) {
  const ArgmaxJob& j = *static_cast<const ArgmaxJob*>(context);
  j.out[r] = argmax_row(j.x->data<float>() + row_offset(*j.x, r), j.width);
}

class FusedArgmax : public FusedPrimitive {
 public:
  using FusedPrimitive::FusedPrimitive;

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    dispatch(stream(), inputs, out, strided_rows, [](std::vector<mx::array>& in, mx::array& y) {
      ArgmaxJob j{&in[0], y.data<uint32_t>(), in[0].shape(-1)};
      for_rows(j.width ? static_cast<int64_t>(in[0].size()) / j.width : 0, in[0].size(), argmax_at, &j);
    });
  }

  const char* name() const override {
    return "OrchardArgmax";
  }
  bool is_equivalent(const mx::Primitive& other) const override {
    return typeid(*this) == typeid(other);
  }
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    return {mx::Shape(inputs[0].shape().begin(), inputs[0].shape().end() - 1)};
  }
};

}  // namespace

mx::array rms_norm(const mx::array& x, const std::optional<mx::array>& weight, float eps, mx::StreamOrDevice s) {
  const char* op = "rms_norm";
  require_float32(op, "x", x);
  if (x.ndim() < 1) invalid(op, "x must have at least one axis");
  std::vector<mx::array> inputs = {x};
  if (weight) {
    require_float32(op, "weight", *weight);
    if (weight->ndim() != 1 || weight->shape(0) != x.shape(-1)) {
      invalid(op, "weight " + shape_string(*weight) + " does not match x's last axis " + std::to_string(x.shape(-1)));
    }
    inputs.push_back(*weight);
  }
  return mx::array(x.shape(), mx::float32, std::make_shared<FusedRMSNorm>(cpu_stream(s, op), eps, weight.has_value()),
                   inputs);
}

std::vector<mx::array> add_rms_norm(const mx::array& x, const mx::array& delta, const std::optional<mx::array>& weight,
                                    float eps, mx::StreamOrDevice s) {
  const char* op = "add_rms_norm";
  require_float32(op, "x", x);
  require_float32(op, "delta", delta);
  if (x.ndim() < 1 || delta.shape() != x.shape()) {
    invalid(op, "x " + shape_string(x) + " and delta " + shape_string(delta) + " must have one shape");
  }
  std::vector<mx::array> inputs = {x, delta};
  if (weight) {
    require_float32(op, "weight", *weight);
    if (weight->ndim() != 1 || weight->shape(0) != x.shape(-1)) {
      invalid(op, "weight " + shape_string(*weight) + " does not match x's last axis " + std::to_string(x.shape(-1)));
    }
    inputs.push_back(*weight);
  }
  return mx::array::make_arrays({x.shape(), x.shape()}, {mx::float32, mx::float32},
                                std::make_shared<FusedAddRMSNorm>(cpu_stream(s, op), eps, weight.has_value()), inputs);
}

mx::array rope(const mx::array& x, const mx::array& cos, const mx::array& sin, const mx::array& offsets, int dims,
               bool traditional, mx::StreamOrDevice s) {
  const char* op = "rope";
  require_float32(op, "x", x);
  require_float32(op, "cos", cos);
  require_float32(op, "sin", sin);
  if (x.ndim() < 2) invalid(op, "x must be [..., L, D]");
  if (dims < 2 || dims % 2 || dims > x.shape(-1)) {
    invalid(op, "dims must be even and at most x's last axis " + std::to_string(x.shape(-1)) + ", got " +
                    std::to_string(dims));
  }
  if (cos.ndim() != 2 || cos.shape(1) != dims || sin.shape() != cos.shape()) {
    invalid(op, "cos and sin must both be [positions, " + std::to_string(dims) + "], got " + shape_string(cos) +
                    " and " + shape_string(sin));
  }
  if (offsets.dtype() != mx::int32 || offsets.ndim() != 1 ||
      (offsets.size() != 1 && (x.ndim() < 3 || static_cast<int>(offsets.size()) != x.shape(0)))) {
    invalid(op, "offsets must be int32 [1] or [batch], got " + shape_string(offsets));
  }
  return mx::array(x.shape(), mx::float32, std::make_shared<FusedRope>(cpu_stream(s, op), dims, traditional),
                   {x, cos, sin, offsets});
}

mx::array decode_attention(const mx::array& q, const mx::array& k, const mx::array& v, float scale,
                           const std::optional<mx::array>& mask, const std::optional<mx::array>& sinks, bool flat,
                           mx::StreamOrDevice s) {
  const char* op = "decode_attention";
  require_float32(op, "q", q);
  if ((k.dtype() != mx::float32 && k.dtype() != mx::float16) || v.dtype() != k.dtype()) {
    invalid(op, "k and v must both be float32 or both float16");
  }
  if (q.ndim() != 4 || k.ndim() != 4 || v.ndim() != 4 || q.shape(2) != 1) {
    invalid(op, "q must be [B, H, 1, D] and k, v [B, H_kv, S, D], got " + shape_string(q) + ", " + shape_string(k) +
                    ", " + shape_string(v));
  }
  const int B = q.shape(0), H = q.shape(1), kv_heads = k.shape(1), S = k.shape(2);
  if (k.shape(0) != B || v.shape(0) != B || v.shape(1) != kv_heads || v.shape(2) != S || k.shape(3) != q.shape(3) ||
      kv_heads == 0 || H % kv_heads) {
    invalid(op, "shapes do not match: q " + shape_string(q) + ", k " + shape_string(k) + ", v " + shape_string(v));
  }
  std::vector<mx::array> inputs = {q, k, v};
  int mask_kind = kNoMask;
  if (mask) {
    const mx::array& m = *mask;
    bool fits = m.ndim() <= 4 && (m.ndim() < 1 || m.shape(-1) == 1 || m.shape(-1) == S);
    for (int d = 2; d <= 3 && d <= m.ndim(); d++) fits = fits && m.shape(-d) == 1;
    fits = fits && (m.ndim() < 4 || m.shape(0) == 1 || m.shape(0) == B);
    if (!fits) invalid(op, "mask " + shape_string(*mask) + " does not broadcast to [B, 1, 1, S]");
    if (m.dtype() == mx::bool_) {
      mask_kind = kBoolMask;
    } else if (m.dtype() == mx::float32) {
      mask_kind = kAdditiveMask;
    } else {
      invalid(op, "mask must be bool or float32");
    }
    inputs.push_back(m);
  }
  if (sinks) {
    require_float32(op, "sinks", *sinks);
    if (sinks->ndim() != 1 || sinks->shape(0) != H) invalid(op, "sinks must be [H], got " + shape_string(*sinks));
    inputs.push_back(*sinks);
  }
  const mx::Shape shape = flat ? mx::Shape{B, 1, H * v.shape(3)} : mx::Shape{B, H, 1, v.shape(3)};
  return mx::array(shape, mx::float32,
                   std::make_shared<FusedDecodeAttention>(cpu_stream(s, op), scale, mask_kind, sinks.has_value(), flat),
                   inputs);
}

mx::array gated_activation(const mx::array& gate, const std::optional<mx::array>& up, int activation,
                           mx::StreamOrDevice s) {
  const char* op = "gated_activation";
  require_float32(op, "gate", gate);
  if (activation != kSilu && activation != kGeluTanh) invalid(op, "activation must be 0 (silu) or 1 (gelu_tanh)");
  auto primitive = std::make_shared<FusedGatedActivation>(cpu_stream(s, op), activation);
  if (!up) {  // gate's last axis is [gate | up]
    if (gate.ndim() < 1 || gate.shape(-1) % 2) {
      invalid(op, "a joined gate/up " + shape_string(gate) + " needs an even last axis");
    }
    mx::Shape shape = gate.shape();
    shape.back() /= 2;
    return mx::array(shape, mx::float32, primitive, {gate});
  }
  require_float32(op, "up", *up);
  if (gate.shape() != up->shape() || gate.ndim() < 1) {
    invalid(op, "gate " + shape_string(gate) + " and up " + shape_string(*up) + " must have one shape");
  }
  return mx::array(gate.shape(), mx::float32, primitive, {gate, *up});
}

std::vector<mx::array> rotated_heads(const mx::array& x, const mx::array& cos, const mx::array& sin,
                                     const mx::array& offsets, int heads, int kv_heads, int dims, bool traditional,
                                     mx::StreamOrDevice s) {
  const char* op = "rotated_heads";
  require_float32(op, "x", x);
  require_float32(op, "cos", cos);
  require_float32(op, "sin", sin);
  if (heads < 1 || kv_heads < 1 || x.ndim() != 3 || x.shape(2) % (heads + 2 * kv_heads)) {
    invalid(op, "x must be [B, L, (heads + 2 kv_heads) D] for " + std::to_string(heads) + " and " +
                    std::to_string(kv_heads) + " heads, got " + shape_string(x));
  }
  const int D = x.shape(2) / (heads + 2 * kv_heads);
  if (dims < 2 || dims % 2 || dims > D) {
    invalid(op, "dims must be even and at most the head size " + std::to_string(D) + ", got " + std::to_string(dims));
  }
  if (cos.ndim() != 2 || cos.shape(1) != dims || sin.shape() != cos.shape()) {
    invalid(op, "cos and sin must both be [positions, " + std::to_string(dims) + "], got " + shape_string(cos) +
                    " and " + shape_string(sin));
  }
  if (offsets.dtype() != mx::int32 || offsets.ndim() != 1 ||
      (offsets.size() != 1 && static_cast<int>(offsets.size()) != x.shape(0))) {
    invalid(op, "offsets must be int32 [1] or [batch], got " + shape_string(offsets));
  }
  const int B = x.shape(0), L = x.shape(1);
  auto primitive = std::make_shared<FusedRotatedHeads>(cpu_stream(s, op), heads, kv_heads, dims, traditional);
  return mx::array::make_arrays({{B, heads, L, D}, {B, kv_heads, L, D}, {B, kv_heads, L, D}},
                                {mx::float32, mx::float32, mx::float32}, primitive, {x, cos, sin, offsets});
}

mx::array softmax(const mx::array& x, int key_offset, mx::StreamOrDevice s) {
  const char* op = "softmax";
  require_float32(op, "x", x);
  if (x.ndim() < 1 || (key_offset >= 0 && x.ndim() < 2)) invalid(op, "x " + shape_string(x) + " has no rows");
  return mx::array(x.shape(), mx::float32, std::make_shared<FusedSoftmax>(cpu_stream(s, op), key_offset < 0 ? -1 : key_offset),
                   {x});
}

mx::array argmax(const mx::array& x, mx::StreamOrDevice s) {
  const char* op = "argmax";
  require_float32(op, "x", x);
  if (x.ndim() < 1 || x.shape(-1) < 1) invalid(op, "x " + shape_string(x) + " has no values to pick from");
  return mx::array(mx::Shape(x.shape().begin(), x.shape().end() - 1), mx::uint32,
                   std::make_shared<FusedArgmax>(cpu_stream(s, op)), {x});
}

}  // namespace orchard_qmm
