// Sixteen floats as one value (GCC/Clang vector extensions), and the one reduction the fused
// operations and the AVX-512 matmul tiles share. Each includer compiles these for its own target (a
// target_clones clone lowers v16f to one zmm, two ymm or four xmm); `static` keeps every copy
// private to its file, so code built for one instruction set is never what another file links to.
#pragma once

#include <cstdint>

typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
typedef float v8f __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16)));

// Which lanes of (l, r) one round of sum_lanes16 adds together: lane i of the result is
// lo[i] + hi[i], indexes 0-15 from l, 16-31 from r.
struct LaneFold {
  int lo[16], hi[16];
};

template <LaneFold F>
static inline __attribute__((always_inline)) v16f fold_lanes(v16f l, v16f r) {
  return __builtin_shufflevector(l, r, F.lo[0], F.lo[1], F.lo[2], F.lo[3], F.lo[4], F.lo[5], F.lo[6], F.lo[7],
                                 F.lo[8], F.lo[9], F.lo[10], F.lo[11], F.lo[12], F.lo[13], F.lo[14], F.lo[15]) +
         __builtin_shufflevector(l, r, F.hi[0], F.hi[1], F.hi[2], F.hi[3], F.hi[4], F.hi[5], F.hi[6], F.hi[7],
                                 F.hi[8], F.hi[9], F.hi[10], F.hi[11], F.hi[12], F.hi[13], F.hi[14], F.hi[15]);
}

// Lane i of the result: the sum of a[i]'s sixteen lanes. Four rounds of pairwise folds, each halving
// the lanes a vector spends on one sum: 15 additions and 30 two-source shuffles, where sixteen
// separate reductions take ~8 dependent instructions each. The folds leave the sums in bit-reversed
// lane order, so the inputs are taken in that order.
static inline __attribute__((always_inline)) v16f sum_lanes16(const v16f* a) {
  constexpr LaneFold halves{{0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23},
                            {8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31}};
  constexpr LaneFold quarters{{0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27},
                              {4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31}};
  constexpr LaneFold pairs{{0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29},
                           {2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31}};
  constexpr LaneFold singles{{0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30},
                             {1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31}};
  constexpr int reversed[16] = {0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15};
  v16f x[8], y[4], z[2];
  for (int i = 0; i < 8; i++) x[i] = fold_lanes<halves>(a[reversed[2 * i]], a[reversed[2 * i + 1]]);
  for (int i = 0; i < 4; i++) y[i] = fold_lanes<quarters>(x[2 * i], x[2 * i + 1]);
  for (int i = 0; i < 2; i++) z[i] = fold_lanes<pairs>(y[2 * i], y[2 * i + 1]);
  return fold_lanes<singles>(z[0], z[1]);
}
