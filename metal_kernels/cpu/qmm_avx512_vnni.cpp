// x86-64 with AVX-512 F/BW/VL/DQ + VNNI (Ice Lake, Sapphire Rapids, Zen 4 and later): vpdpwssd.
#define ORCHARD_VARIANT avx512_vnni
#include "qmm_impl.h"
