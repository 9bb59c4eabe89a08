// The subset of the Metal Shading Language that Orchard's kernels use, as C++ for the CPU emulator.
//
// The emulator compiles the exact MSL text that mx.fast.metal_kernel generates (signature, body,
// explicit instantiation) against this header. Address-space qualifiers are erased, `threadgroup`
// declarations become function-local statics (one copy, shared by the threads of the group being
// run, poisoned by the runtime before every group), and barriers and simdgroup functions are
// rendezvous points of the fiber scheduler in runtime.cpp. Anything the header does not define
// fails to compile: that is the point, the emulator must not silently accept what it cannot model.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <cfloat>

namespace orchard_emu {

// One call site of a barrier or simdgroup function; the scheduler matches lanes by it.
enum class Sync : int { barrier = 1, simd = 2 };

// Suspend the calling fiber until its simdgroup (simd) or threadgroup (barrier) has arrived at
// the same call site. For simd, `value` (size bytes) is published and `lanes` receives a pointer to
// the 32 published slots of the simdgroup, valid until this lane's next simd call.
const unsigned char* rendezvous(Sync kind, int line, const char* what, const void* value, int size);
unsigned lane_id();
unsigned simd_width_present();  // lanes that exist in this simdgroup (< 32 only at a partial edge)
[[noreturn]] void fail(const char* fmt, ...);

constexpr int kSlot = 16;  // bytes per lane slot: enough for float4 / uint4

template <typename T>
inline T lane_value(const unsigned char* slots, unsigned lane) {
  static_assert(sizeof(T) <= kSlot, "simd value too large for the emulator");
  T v;
  std::memcpy(&v, slots + lane * kSlot, sizeof(T));
  return v;
}

template <typename T, typename Op>
inline T butterfly(const unsigned char* slots, const char* what, Op op) {
  // The 32-lane xor butterfly a GPU reduction performs: every lane ends with the same value, and
  // the association order is fixed, so results are reproducible.
  if (simd_width_present() != 32) fail("%s in a partial simdgroup (%u lanes) is not modelled", what, simd_width_present());
  T v[32];
  for (unsigned i = 0; i < 32; ++i) v[i] = lane_value<T>(slots, i);
  for (unsigned off = 16; off >= 1; off >>= 1) {
    T n[32];
    for (unsigned i = 0; i < 32; ++i) n[i] = op(v[i], v[i ^ off]);
    for (unsigned i = 0; i < 32; ++i) v[i] = n[i];
  }
  return v[lane_id()];
}

}  // namespace orchard_emu

// ---- address spaces and function qualifiers: erased -------------------------------------------
#define device
#define constant
#define thread
#define threadgroup static
#define METAL_FUNC inline

// ---- scalar and vector types ------------------------------------------------------------------
typedef unsigned int uint;
typedef unsigned short ushort;
typedef unsigned char uchar;
typedef _Float16 half;
typedef _Float16 float16_t;

struct bfloat16_t {
  uint16_t bits;
  bfloat16_t() = default;
  bfloat16_t(float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) { bits = 0x7fc0; return; }  // NaN stays NaN
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even, like MLX's conversion
    bits = uint16_t(u >> 16);
  }
  operator float() const {
    uint32_t u = uint32_t(bits) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};
typedef bfloat16_t bfloat;

#define ORCHARD_VEC2(T, N) struct N { T x, y; };
#define ORCHARD_VEC3(T, N) struct N { T x, y, z; };
#define ORCHARD_VEC4(T, N) struct N { T x, y, z, w; };
ORCHARD_VEC2(uint, uint2) ORCHARD_VEC3(uint, uint3) ORCHARD_VEC4(uint, uint4)
ORCHARD_VEC2(int, int2) ORCHARD_VEC3(int, int3) ORCHARD_VEC4(int, int4)
ORCHARD_VEC2(float, float2) ORCHARD_VEC3(float, float3) ORCHARD_VEC4(float, float4)
ORCHARD_VEC2(half, half2) ORCHARD_VEC4(half, half4)
#undef ORCHARD_VEC2
#undef ORCHARD_VEC3
#undef ORCHARD_VEC4

// ---- math: the Metal spellings of what the kernels call ---------------------------------------
using std::abs;
using std::exp;
using std::fabs;
using std::fma;
using std::fmax;
using std::fmin;
using std::log;
using std::sqrt;
using std::tanh;
using std::isinf;
using std::isnan;
template <typename T> inline T max(T a, T b) { return a > b ? a : b; }
template <typename T> inline T min(T a, T b) { return a < b ? a : b; }
inline float precise_divide(float a, float b) { return a / b; }
namespace metal {
using ::max;
using ::min;
using std::exp;
using std::fabs;
using std::tanh;
namespace fast { using std::exp; using std::tanh; }
namespace precise { using std::exp; using std::tanh; }
}  // namespace metal
namespace fast = metal::fast;
namespace precise = metal::precise;
#ifndef INFINITY
#define INFINITY __builtin_inff()
#endif

// ---- barriers ---------------------------------------------------------------------------------
enum class mem_flags { mem_none = 0, mem_device = 1, mem_threadgroup = 2, mem_texture = 4 };
inline mem_flags operator|(mem_flags a, mem_flags b) { return mem_flags(int(a) | int(b)); }
inline void threadgroup_barrier(mem_flags, int line = __builtin_LINE()) {
  orchard_emu::rendezvous(orchard_emu::Sync::barrier, line, "threadgroup_barrier", nullptr, 0);
}
inline void simdgroup_barrier(mem_flags, int line = __builtin_LINE()) {
  orchard_emu::rendezvous(orchard_emu::Sync::simd, line, "simdgroup_barrier", nullptr, 0);
}

// ---- simdgroup functions (32 lanes) -----------------------------------------------------------
template <typename T> inline T simd_sum(T x, int line = __builtin_LINE()) {
  auto s = orchard_emu::rendezvous(orchard_emu::Sync::simd, line, "simd_sum", &x, sizeof(T));
  return orchard_emu::butterfly<T>(s, "simd_sum", [](T a, T b) { return T(a + b); });
}
template <typename T> inline T simd_max(T x, int line = __builtin_LINE()) {
  auto s = orchard_emu::rendezvous(orchard_emu::Sync::simd, line, "simd_max", &x, sizeof(T));
  return orchard_emu::butterfly<T>(s, "simd_max", [](T a, T b) { return a > b ? a : b; });
}
template <typename T> inline T simd_min(T x, int line = __builtin_LINE()) {
  auto s = orchard_emu::rendezvous(orchard_emu::Sync::simd, line, "simd_min", &x, sizeof(T));
  return orchard_emu::butterfly<T>(s, "simd_min", [](T a, T b) { return a < b ? a : b; });
}
template <typename T> inline T simd_shuffle(T x, ushort lane, int line = __builtin_LINE()) {
  auto s = orchard_emu::rendezvous(orchard_emu::Sync::simd, line, "simd_shuffle", &x, sizeof(T));
  if (lane >= orchard_emu::simd_width_present()) orchard_emu::fail("simd_shuffle at line %d reads absent lane %u", line, unsigned(lane));
  return orchard_emu::lane_value<T>(s, lane);
}
template <typename T> inline T simd_broadcast(T x, ushort lane, int line = __builtin_LINE()) {
  return simd_shuffle(x, lane, line);
}
template <typename T> inline T simd_shuffle_xor(T x, ushort mask, int line = __builtin_LINE()) {
  auto s = orchard_emu::rendezvous(orchard_emu::Sync::simd, line, "simd_shuffle_xor", &x, sizeof(T));
  unsigned src = orchard_emu::lane_id() ^ mask;
  if (src >= orchard_emu::simd_width_present()) orchard_emu::fail("simd_shuffle_xor at line %d reads absent lane %u", line, src);
  return orchard_emu::lane_value<T>(s, src);
}
template <typename T> inline T simd_shuffle_down(T x, ushort delta, int line = __builtin_LINE()) {
  auto s = orchard_emu::rendezvous(orchard_emu::Sync::simd, line, "simd_shuffle_down", &x, sizeof(T));
  unsigned src = orchard_emu::lane_id() + delta;  // lanes past the end keep their own value
  return src < orchard_emu::simd_width_present() ? orchard_emu::lane_value<T>(s, src) : x;
}
template <typename T> inline T simd_shuffle_up(T x, ushort delta, int line = __builtin_LINE()) {
  auto s = orchard_emu::rendezvous(orchard_emu::Sync::simd, line, "simd_shuffle_up", &x, sizeof(T));
  unsigned me = orchard_emu::lane_id();
  return me >= delta ? orchard_emu::lane_value<T>(s, me - delta) : x;
}

// Metal has no double: a kernel that spells it must fail here, not run in higher precision.
#pragma GCC poison double
