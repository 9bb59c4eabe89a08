// Shared by every Orchard kernel (passed as the `header` of mx.fast.metal_kernel / cuda_kernel).
#ifndef ORCHARD_NEG_INF
#define ORCHARD_NEG_INF (-INFINITY)
#endif
#define ORCHARD_SIMD_WIDTH 32
