// x86-64 with AVX-512 F/BW/VL/DQ (Skylake-SP and later, Zen 4 and later): the float path, FMA.
#define ORCHARD_VARIANT avx512
#include "qmm_impl.h"
