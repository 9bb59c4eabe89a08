// arm64: NEON is part of every AArch64 CPU, so this variant needs no extra flags.
#define ORCHARD_VARIANT neon
#include "qmm_impl.h"
