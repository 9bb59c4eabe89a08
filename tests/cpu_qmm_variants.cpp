// Every kernel variant this CPU runs (matmul and dequantize) against exact double arithmetic, without
// MLX: built and run by tests/test_cpu_qmm.py for arm64 under qemu-aarch64 (the x86-64 variants are
// tested through MLX).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>
#include "qmm.h"
#include "qmm_run.h"

using namespace orchard_qmm;

int main() {
  std::mt19937 rng(1);
  std::uniform_int_distribution<int> byte(0, 255);
  std::normal_distribution<float> normal(0.f, 1.f);
  double worst = 0, worst_dequantize = 0;
  int cases = 0;
  for (int bits : {2, 3, 4, 5, 6, 8}) {
    for (int gs : {32, 64, 128}) {
      for (int M = 1; M <= 9; M++) {
        int N = 37, K = 3 * gs;
        size_t row_bytes = (size_t)K * bits / 8;
        std::vector<uint8_t> w(N * row_bytes);
        for (auto& b : w) b = byte(rng);
        std::vector<float> s(N * (K / gs)), b(N * (K / gs)), x(M * K);
        for (auto& v : s) v = normal(rng) * 0.1f;
        for (auto& v : b) v = normal(rng);
        for (auto& v : x) v = normal(rng);
        Problem p{};
        p.M = M; p.N = N; p.K = K; p.group_size = gs; p.bits = bits;
        p.w = w.data(); p.row_bytes = row_bytes; p.w_end = w.data() + w.size();
        p.scales = s.data(); p.biases = b.data(); p.scale_type = p.bias_type = DType::f32;
        p.x = x.data(); p.x_type = DType::f32; p.out_type = DType::f32;
        std::vector<std::vector<float>> outputs;
        for (const Variant* const* v = variants(); *v; v++) {
          if (!(*v)->supported()) continue;
          outputs.emplace_back(M * N);
          p.out = outputs.back().data();
          run(p, **v);
        }
        // exact reference in double: code k of row n is bits [bits*k, bits*(k+1)) of the row
        for (int m = 0; m < M; m++) {
          for (int n = 0; n < N; n++) {
            double ref = 0, mass = 0;
            for (int k = 0; k < K; k++) {
              size_t bit = (size_t)bits * k;
              const uint8_t* row = w.data() + n * row_bytes;
              unsigned v = row[bit / 8] | (bit / 8 + 1 < row_bytes ? row[bit / 8 + 1] << 8 : 0);
              unsigned q = (v >> (bit % 8)) & ((1u << bits) - 1);
              double wk = (double)s[n * (K / gs) + k / gs] * q + b[n * (K / gs) + k / gs];
              ref += (double)x[m * K + k] * wk;
              mass += std::fabs((double)x[m * K + k] * wk);
            }
            for (const auto& y : outputs) {
              double d = std::fabs(y[m * N + n] - ref) / mass;
              if (d > worst) worst = d;
            }
          }
        }
        // dequantize (once per layout): scale * q + bias, one float32 rounding
        std::vector<float> dense(N * K);
        p.out = dense.data();
        for (const Variant* const* v = variants(); M == 1 && *v; v++) {
          if (!(*v)->supported()) continue;
          run_dequantize(p, **v);
          for (int n = 0; n < N; n++) {
            for (int k = 0; k < K; k++) {
              size_t bit = (size_t)bits * k;
              const uint8_t* row = w.data() + n * row_bytes;
              unsigned v2 = row[bit / 8] | (bit / 8 + 1 < row_bytes ? row[bit / 8 + 1] << 8 : 0);
              unsigned q = (v2 >> (bit % 8)) & ((1u << bits) - 1);
              double sq = (double)s[n * (K / gs) + k / gs] * q, bias = b[n * (K / gs) + k / gs];
              double d = std::fabs(dense[n * K + k] - (sq + bias)) / (std::fabs(sq) + std::fabs(bias) + 1e-30);
              if (d > worst_dequantize) worst_dequantize = d;
            }
          }
        }
        cases++;
      }
    }
  }
  std::printf("variants:");
  for (const Variant* const* v = variants(); *v; v++) {
    if ((*v)->supported()) std::printf(" %s", (*v)->name);
  }
  std::printf("\n%d cases, worst error against double, relative to sum |x w|: %.3g; dequantize, relative to "
              "|scale q| + |bias|: %.3g\n", cases, worst, worst_dequantize);
  // float32 summation: a few ulps of the sum of |terms|; dequantize: one rounding
  return worst < 1e-6 && worst_dequantize <= 0x1p-23 ? 0 : 1;
}
