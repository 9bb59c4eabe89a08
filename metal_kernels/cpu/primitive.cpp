// The kernel as an MLX operation: a Primitive with eval_cpu only (Metal and CUDA keep MLX's own
// quantized kernels), created by quantized_matmul() and evaluated on an MLX CPU stream.
#include "primitive.h"

#include <cstring>
#include <sstream>
#include <stdexcept>
#include <string>

#include "mlx/allocator.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/primitives.h"
#include "mlx/utils.h"
#include "qmm_run.h"
#include "support.h"

namespace orchard_qmm {

namespace mx = mlx::core;

namespace {

const Variant* g_variant = nullptr;

const Variant& current_variant() {
  if (!g_variant) g_variant = best_variant();
  return *g_variant;
}

[[noreturn]] void invalid(const std::string& message) {
  throw std::invalid_argument("[orchard quantized_matmul] " + message);
}

std::string shape_string(const mx::array& a) {
  std::ostringstream s;
  s << "(";
  for (int i = 0; i < a.ndim(); i++) s << (i ? ", " : "") << a.shape(i);
  s << (a.ndim() == 1 ? ",)" : ")");
  return s.str();
}

bool is_float(mx::Dtype t) {
  return t == mx::float32 || t == mx::float16 || t == mx::bfloat16;
}

DType to_dtype(mx::Dtype t) {
  if (t == mx::float16) return DType::f16;
  if (t == mx::bfloat16) return DType::bf16;
  return DType::f32;
}

// The quantized kernels read row-major inputs only: strided views (unusual callers; weights never
// are) get a row-major copy first.
bool not_row_major(const mx::array& a) {
  return !a.flags().row_contiguous;
}

// The weight half of a Problem: w, scales, biases.
Problem weight_problem(const mx::array& w, const mx::array& scales, const mx::array& biases, int group_size,
                       int bits) {
  Problem p{};
  p.N = w.shape(0);
  p.K = static_cast<int>(static_cast<int64_t>(w.shape(1)) * 32 / bits);
  p.group_size = group_size;
  p.bits = bits;
  p.w = w.data<uint8_t>();
  p.row_bytes = static_cast<size_t>(p.K) * bits / 8;
  p.w_end = p.w + p.row_bytes * p.N;
  p.scales = scales.data<void>();
  p.biases = biases.data<void>();
  p.scale_type = to_dtype(scales.dtype());
  p.bias_type = to_dtype(biases.dtype());
  return p;
}

class NativeQuantizedMatmul : public mx::UnaryPrimitive {
 public:
  NativeQuantizedMatmul(mx::Stream stream, int group_size, int bits)
      : mx::UnaryPrimitive(stream), group_size_(group_size), bits_(bits) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    const int group_size = group_size_, bits = bits_;
    const Variant* variant = &current_variant();
    dispatch(stream(), inputs, out, not_row_major, [group_size, bits, variant](std::vector<mx::array>& in, mx::array& y) {
      const mx::array& x = in[0];
      Problem p = weight_problem(in[1], in[2], in[3], group_size, bits);
      p.M = static_cast<int>(x.size() / (p.K ? p.K : 1));
      p.x = x.data<void>();
      p.x_type = to_dtype(x.dtype());
      p.out = y.data<void>();
      p.out_type = to_dtype(y.dtype());
      run(p, *variant);
    });
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("[orchard quantized_matmul] runs on the CPU only; use mx.quantized_matmul on a GPU");
  }

  const char* name() const override {
    return "OrchardQuantizedMatmul";
  }

  bool is_equivalent(const mx::Primitive& other) const override {
    const auto& o = static_cast<const NativeQuantizedMatmul&>(other);
    return group_size_ == o.group_size_ && bits_ == o.bits_;
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    mx::Shape shape = inputs[0].shape();
    shape.back() = inputs[1].shape(0);
    return {shape};
  }

 private:
  int group_size_;
  int bits_;
};

class NativeDequantize : public mx::UnaryPrimitive {
 public:
  NativeDequantize(mx::Stream stream, int group_size, int bits)
      : mx::UnaryPrimitive(stream), group_size_(group_size), bits_(bits) {}

  void eval_cpu(const std::vector<mx::array>& inputs, mx::array& out) override {
    const int group_size = group_size_, bits = bits_;
    const Variant* variant = &current_variant();
    dispatch(stream(), inputs, out, not_row_major, [group_size, bits, variant](std::vector<mx::array>& in, mx::array& y) {
      Problem p = weight_problem(in[0], in[1], in[2], group_size, bits);
      p.out = y.data<void>();
      p.out_type = DType::f32;
      run_dequantize(p, *variant);
    });
  }

  void eval_gpu(const std::vector<mx::array>&, mx::array&) override {
    throw std::runtime_error("[orchard dequantize] runs on the CPU only; use mx.dequantize on a GPU");
  }

  const char* name() const override {
    return "OrchardDequantize";
  }

  bool is_equivalent(const mx::Primitive& other) const override {
    const auto& o = static_cast<const NativeDequantize&>(other);
    return group_size_ == o.group_size_ && bits_ == o.bits_;
  }

  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override {
    return {{inputs[0].shape(0), static_cast<int>(static_cast<int64_t>(inputs[0].shape(1)) * 32 / bits_)}};
  }

 private:
  int group_size_;
  int bits_;
};

// The checks both ops make on a quantized weight; returns K.
int check_weight(const mx::array& w, const mx::array& scales, const std::optional<mx::array>& biases, int group_size,
                 int bits) {
  if (!biases) invalid("biases are required (MLX's affine quantization)");
  if (bits != 2 && bits != 3 && bits != 4 && bits != 5 && bits != 6 && bits != 8) {
    invalid("bits must be 2, 3, 4, 5, 6 or 8, got " + std::to_string(bits));
  }
  if (group_size != 32 && group_size != 64 && group_size != 128) {
    invalid("group_size must be 32, 64 or 128, got " + std::to_string(group_size));
  }
  if (w.ndim() != 2 || w.dtype() != mx::uint32) {
    invalid("w must be a 2-D uint32 array of packed codes, got shape " + shape_string(w));
  }
  const int N = w.shape(0);
  const int64_t K = static_cast<int64_t>(w.shape(1)) * 32 / bits;
  if (static_cast<int64_t>(w.shape(1)) * 32 % bits || K % group_size) {
    invalid("w " + shape_string(w) + " does not hold whole " + std::to_string(bits) + "-bit groups of " +
            std::to_string(group_size));
  }
  for (const mx::array* a : {&scales, &*biases}) {
    if (a->ndim() != 2 || a->shape(0) != N || a->shape(1) != K / group_size || !is_float(a->dtype())) {
      invalid("scales and biases must be float arrays of shape (" + std::to_string(N) + ", " +
              std::to_string(K / group_size) + "), got " + shape_string(*a));
    }
  }
  return static_cast<int>(K);
}

}  // namespace

mx::array quantized_matmul(const mx::array& x, const mx::array& w, const mx::array& scales,
                           const std::optional<mx::array>& biases, bool transpose, int group_size, int bits,
                           mx::StreamOrDevice s) {
  if (!transpose) invalid("only transpose=True (x @ dequantize(w).T) is implemented");
  if (x.ndim() < 1 || !is_float(x.dtype())) invalid("x must be a float32, float16 or bfloat16 array");
  const int K = check_weight(w, scales, biases, group_size, bits);
  if (x.shape(-1) != K) {
    invalid("x has " + std::to_string(x.shape(-1)) + " features but w " + shape_string(w) + " holds " +
            std::to_string(K) + " " + std::to_string(bits) + "-bit codes per row");
  }
  mx::Dtype out_type = mx::promote_types(mx::promote_types(x.dtype(), scales.dtype()), biases->dtype());
  mx::Shape out_shape = x.shape();
  out_shape.back() = w.shape(0);
  return mx::array(out_shape, out_type, std::make_shared<NativeQuantizedMatmul>(cpu_stream(s, "quantized_matmul"), group_size, bits),
                   {x, w, scales, *biases});
}

mx::array dequantize(const mx::array& w, const mx::array& scales, const std::optional<mx::array>& biases,
                     int group_size, int bits, mx::StreamOrDevice s) {
  const int K = check_weight(w, scales, biases, group_size, bits);
  return mx::array({w.shape(0), K}, mx::float32, std::make_shared<NativeDequantize>(cpu_stream(s, "dequantize"), group_size, bits),
                   {w, scales, *biases});
}

std::vector<std::string> variant_names() {
  std::vector<std::string> names;
  for (const Variant* const* v = variants(); *v; v++) {
    if ((*v)->supported()) names.emplace_back((*v)->name);
  }
  return names;
}

std::string variant_name() {
  return current_variant().name;
}

void set_variant(const std::string& name) {
  const Variant* v = find_variant(name.c_str());
  if (!v || !v->supported()) {
    std::string known;
    for (const auto& n : variant_names()) known += (known.empty() ? "" : ", ") + n;
    invalid("no variant '" + name + "' on this CPU (have: " + known + ")");
  }
  g_variant = v;
}

}  // namespace orchard_qmm
