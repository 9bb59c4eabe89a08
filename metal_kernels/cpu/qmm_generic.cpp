// The portable variant: plain C++ for any CPU, built without extra instruction-set flags.
#define ORCHARD_VARIANT generic
#define ORCHARD_QMM_PLAIN 1
#include "qmm_impl.h"
