// x86-64 with AVX-512 F/BW/VL/DQ but no VNNI (Skylake-SP, Cascade Lake without it): vpmaddwd.
#define ORCHARD_VARIANT avx512
#include "qmm_impl.h"
