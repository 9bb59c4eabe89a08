// Scalar conversions between float32 and the 16-bit floats (IEEE half, bfloat16) that MLX arrays
// hold: the matmul variants' scales and outputs, the attention's float16 keys and values. In an
// anonymous namespace: each file compiles its own copy for its own instruction set.
#pragma once

#include <cstdint>
#include <cstring>

namespace orchard_qmm {
namespace {

[[maybe_unused]] inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

[[maybe_unused]] inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

[[maybe_unused]] inline float half_to_float(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  int exponent = (h >> 10) & 0x1F;
  uint32_t mantissa = h & 0x3FFu;
  if (exponent == 31) return bits_to_float(sign | 0x7F800000u | (mantissa << 13));
  if (exponent == 0) {
    if (mantissa == 0) return bits_to_float(sign);
    exponent = 1;  // subnormal: shift the leading one up to the implicit bit
    while (!(mantissa & 0x400u)) {
      mantissa <<= 1;
      exponent--;
    }
    mantissa &= 0x3FFu;
  }
  return bits_to_float(sign | (static_cast<uint32_t>(exponent + 112) << 23) | (mantissa << 13));
}

[[maybe_unused]] inline uint16_t float_to_half(float f) {  // round to nearest even, like every IEEE conversion
  uint32_t x = float_to_bits(f);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t a = x & 0x7FFFFFFFu;
  if (a >= 0x7F800000u) return static_cast<uint16_t>(sign | 0x7C00u | (a > 0x7F800000u ? 0x200u : 0u));
  if (a >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // rounds past 65504: infinity
  if (a < 0x38800000u) {  // below 2^-14: a half subnormal, in units of 2^-24
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(__builtin_rintf(bits_to_float(a) * 16777216.0f)));
  }
  a += 0xC8000FFFu + ((a >> 13) & 1u);  // rebias the exponent (-112 << 23) and round the 13 dropped bits
  return static_cast<uint16_t>(sign | (a >> 13));
}

[[maybe_unused]] inline float bf16_to_float(uint16_t h) {
  return bits_to_float(static_cast<uint32_t>(h) << 16);
}

[[maybe_unused]] inline uint16_t float_to_bf16(float f) {
  uint32_t u = float_to_bits(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  u += 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

}  // namespace
}  // namespace orchard_qmm
