// Python bindings. The module joins MLX's nanobind domain ("mlx"), so mx.array passes straight in.
#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/variant.h>
#include <nanobind/stl/vector.h>

#include "mlx/version.h"
#include "fused.h"
#include "primitive.h"
#include "threads.h"

namespace nb = nanobind;
using namespace nb::literals;

#define ORCHARD_STR2(x) #x
#define ORCHARD_STR(x) ORCHARD_STR2(x)

NB_MODULE(_qmm, m) {
  nb::module_::import_("mlx.core");  // registers mx.array, Stream and Device with the domain
  m.doc() = "Orchard's native quantized matmul for MLX's CPU backend";

  m.def("quantized_matmul", &orchard_qmm::quantized_matmul, "x"_a, "w"_a, "scales"_a, "biases"_a = nb::none(),
        "transpose"_a = true, "group_size"_a = 64, "bits"_a = 4, nb::kw_only(), "stream"_a = nb::none(),
        "x @ dequantize(w, scales, biases).T (activations as two int16 parts per value), like mx.quantized_matmul.");
  m.def("dequantize", &orchard_qmm::dequantize, "w"_a, "scales"_a, "biases"_a = nb::none(), "group_size"_a = 64,
        "bits"_a = 4, nb::kw_only(), "stream"_a = nb::none(), "dequantize(w, scales, biases) in float32.");
  m.def("rms_norm", &orchard_qmm::rms_norm, "x"_a, "weight"_a = nb::none(), "eps"_a = 1e-6f, nb::kw_only(),
        "stream"_a = nb::none(), "x * rsqrt(mean(x^2, -1) + eps) * weight as one operation (float32).");
  m.def("add_rms_norm", &orchard_qmm::add_rms_norm, "x"_a, "delta"_a, "weight"_a = nb::none(), "eps"_a = 1e-6f,
        nb::kw_only(), "stream"_a = nb::none(),
        "(x + delta, rms_norm(x + delta) * weight) as one operation (float32): a residual add and the next norm.");
  m.def("rope", &orchard_qmm::rope, "x"_a, "cos"_a, "sin"_a, "offsets"_a, "dims"_a, "traditional"_a = false,
        nb::kw_only(), "stream"_a = nb::none(),
        "Rotary embedding of x [..., L, D] from [positions, dims] cos/sin tables, token l of row b at offsets[b] + l.");
  m.def("decode_attention", &orchard_qmm::decode_attention, "q"_a, "k"_a, "v"_a, "scale"_a, "mask"_a = nb::none(),
        "sinks"_a = nb::none(), nb::kw_only(), "flat"_a = false, "stream"_a = nb::none(),
        "softmax(q k^T * scale + mask) v for one query per head, grouped-query heads sharing KV heads.");
  m.def("softmax", &orchard_qmm::softmax, "x"_a, "key_offset"_a = -1, nb::kw_only(), "stream"_a = nb::none(),
        "softmax over the last axis; key_offset >= 0: causal [..., L, S] scores, row l seeing keys <= l + key_offset.");
  m.def("gated_activation", &orchard_qmm::gated_activation, "gate"_a, "up"_a.none(), "activation"_a, nb::kw_only(),
        "stream"_a = nb::none(),
        "act(gate) * up; activation 0: silu, 1: tanh-approximated gelu. up None: gate's last axis is [gate | up].");
  m.def("rotated_heads", &orchard_qmm::rotated_heads, "x"_a, "cos"_a, "sin"_a, "offsets"_a, "heads"_a, "kv_heads"_a,
        "dims"_a, "traditional"_a = false, nb::kw_only(), "stream"_a = nb::none(),
        "A joined q/k/v projection [B, L, (heads + 2 kv_heads) D] as (q, k, v) heads-first, q and k rotated by tables.");
  m.def("argmax", &orchard_qmm::argmax, "x"_a, nb::kw_only(), "stream"_a = nb::none(),
        "The index of each row's largest value over the last axis (uint32), like mx.argmax(x, axis=-1).");
  m.def("variants", &orchard_qmm::variant_names, "The instruction-set variants this CPU runs, best first.");
  m.def("variant", &orchard_qmm::variant_name, "The variant in use.");
  m.def("set_variant", &orchard_qmm::set_variant, "name"_a, "Use another supported variant (for tests).");
  m.def("threads", [] { return orchard_qmm::ThreadPool::shared().size(); }, "Threads one matmul runs on.");
  m.def("set_threads", [](int n) { orchard_qmm::ThreadPool::shared().resize(n); }, "threads"_a);
  m.attr("mlx_version") = ORCHARD_STR(MLX_VERSION_MAJOR) "." ORCHARD_STR(MLX_VERSION_MINOR) "." ORCHARD_STR(
      MLX_VERSION_PATCH);
}
