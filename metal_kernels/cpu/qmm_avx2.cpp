// x86-64 with AVX2 + FMA + F16C (Haswell, Zen 1 and later); built with those flags only.
#define ORCHARD_VARIANT avx2
#include "qmm_impl.h"
