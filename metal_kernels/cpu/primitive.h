// The MLX operation and the knobs the Python side uses (tests pick a variant, bench reports it).
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "mlx/array.h"
#include "mlx/utils.h"

namespace orchard_qmm {

// x @ dequantize(w, scales, biases).T, like mx.quantized_matmul(..., transpose=True) for MLX's affine
// layout: bits 2, 3, 4, 5, 6 or 8, groups of 32, 64 or 128, any number of rows in x.
mlx::core::array quantized_matmul(const mlx::core::array& x, const mlx::core::array& w,
                                  const mlx::core::array& scales, const std::optional<mlx::core::array>& biases,
                                  bool transpose, int group_size, int bits, mlx::core::StreamOrDevice s);

// dequantize(w, scales, biases) in float32, like mx.dequantize for the same layouts (for the GEMM path).
mlx::core::array dequantize(const mlx::core::array& w, const mlx::core::array& scales,
                            const std::optional<mlx::core::array>& biases, int group_size, int bits,
                            mlx::core::StreamOrDevice s);

std::vector<std::string> variant_names();  // the variants this CPU runs, best first
std::string variant_name();                // the one in use
void set_variant(const std::string& name);

}  // namespace orchard_qmm
