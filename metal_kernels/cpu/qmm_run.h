// Entry points of the kernel for the MLX primitive: choosing a variant and running one problem.
#pragma once

#include "qmm.h"

namespace orchard_qmm {

// The fastest variant this CPU supports.
const Variant* best_variant();

// A variant built into this module by name (see variants()), or nullptr.
const Variant* find_variant(const char* name);

// Computes p.out on the calling thread and the shared pool; p's arrays must be row-contiguous.
void run(const Problem& p, const Variant& variant);

// p.out = dequantize(p.w, p.scales, p.biases) as float32 [N][K] (p.x, p.M unused), likewise.
void run_dequantize(const Problem& p, const Variant& variant);

}  // namespace orchard_qmm
