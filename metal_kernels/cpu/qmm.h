// Orchard's native quantized matmul for MLX's CPU backend: the problem description shared by the
// instruction-set variants (qmm_impl.h, compiled once per variant) and the MLX primitive (primitive.cpp).
//
// y[m, n] = sum_k x[m, k] * (scale[n, g(k)] * q[n, k] + bias[n, g(k)])    (MLX's affine layout)
//
// Two ways to compute it (qmm_impl.h, by instruction-set variant):
// - integer: activations held per block of 32 inputs as a float step dx and two int16 parts per x
//   (~30 bits together), so each block of a weight row is integer dot products:
//     y[m, n] = sum_g scale[n, g] * sum_{b in g} dx[m, b] * idot(xq[m, b], q[n, b])
//             + sum_g bias[n, g] * xsum[m, g]
//   where xsum is the exact float sum of x over the group (the bias term is not quantized);
// - float (AVX-512): each block of weights dequantized once, scale * q + bias as MLX does, and
//   multiplied with every row's float32 x.
//
// This header holds plain data only: the variants are compiled with different -m flags, so nothing
// inline or templated may be shared between them (the linker would keep one copy, of any ISA).
#pragma once

#include <cstddef>
#include <cstdint>

namespace orchard_qmm {

constexpr int kBlock = 32;  // activation quantization block (inputs)
constexpr int kFloatTileRows = 8;  // rows of x one float-path tile multiplies (AVX-512)

enum class DType : int { f32 = 0, f16 = 1, bf16 = 2 };

struct Problem {
  int M, N, K;          // x is M x K, w is N x K (packed), out is M x N
  int group_size, bits;
  const uint8_t* w;     // row n starts at w + n * row_bytes
  size_t row_bytes;     // K * bits / 8
  const uint8_t* w_end; // w + N * row_bytes: vector loads that could pass it are made from a copy
  const void* scales;   // N x (K / group_size), dtype scale_type
  const void* biases;   // same shape, dtype bias_type
  DType scale_type, bias_type;
  const void* x;        // M x K, dtype x_type
  DType x_type;
  void* out;            // M x N, dtype out_type
  DType out_type;
};

// Where the prepared (quantized) activations live inside one scratch buffer.
struct ActLayout {
  int blocks;           // K / 32
  int groups;           // K / group_size
  int xq_stride;        // int16 elements per row of xq: blocks * 64
  size_t xq;            // int16 [M][xq_stride]: two parts per activation, in the order the variant's
                        // weight loop reads them (qmm_impl.h)
  size_t dx;            // float [M][blocks]: the block's step
  size_t xsum;          // float [M][groups]: exact sum of x over the group (integer path)
  size_t xf;            // float [M / 8 rounded up][blocks][8][32]: x itself, one tile's eight rows
                        // side by side per block, in the order the float path reads it (qmm_impl.h)
  size_t bytes;         // total
};

ActLayout act_layout(int M, int K, int group_size);

// Scratch floats one thread needs for a row's converted scales and biases.
size_t row_scratch_floats(int K, int group_size);

// One instruction-set variant of the kernel.
struct Variant {
  const char* name;
  bool (*supported)();  // does this CPU run it
  // Quantize x into the scratch (single thread; O(M K)).
  void (*prepare)(const Problem& p, const ActLayout& a, uint8_t* act);
  // Outputs n0 <= n < n1 for every row m; `scratch` holds row_scratch_floats() floats.
  void (*rows)(const Problem& p, const ActLayout& a, const uint8_t* act, int n0, int n1, float* scratch);
  // Rows n0 <= n < n1 of the dequantized weight, float32 [N][K] in p.out (x unused).
  void (*dequantize)(const Problem& p, int n0, int n1, float* scratch);
};

// Every variant built into this module for this architecture, best first; nullptr-terminated.
const Variant* const* variants();

}  // namespace orchard_qmm
