// What the MLX operations of this module share: their stream, and reading arrays whose evaluated
// layout is a strided view (a transpose, a slice of a cache).
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include <stdexcept>
#include <utility>
#include <string>

#include "mlx/allocator.h"
#include "mlx/array.h"
#include "mlx/backend/cpu/encoder.h"
#include "mlx/stream.h"
#include "mlx/utils.h"

namespace orchard_qmm {

// A row-major copy of `src` (any strides, broadcasts included) into `dst`. Run on the stream thread,
// once `src` holds its values. Only unusual callers pass a strided view; weights never are.
inline void copy_strided(const mlx::core::array& src, mlx::core::array& dst) {
  const size_t item = src.itemsize();
  const char* in = src.data<char>();
  char* out = dst.data<char>();
  const int ndim = src.ndim();
  if (ndim == 0) {
    std::memcpy(out, in, item);
    return;
  }
  std::vector<int> index(ndim, 0);
  const size_t total = src.size();
  for (size_t i = 0; i < total; i++) {
    int64_t offset = 0;
    for (int d = 0; d < ndim; d++) offset += static_cast<int64_t>(index[d]) * src.strides()[d];
    std::memcpy(out + i * item, in + offset * static_cast<int64_t>(item), item);
    for (int d = ndim - 1; d >= 0; d--) {
      if (++index[d] < src.shape(d)) break;
      index[d] = 0;
    }
  }
}

// Schedules `compute(inputs, outputs)` on `stream`, every output allocated. Inputs for which
// `needs_copy(input)` holds (a layout the kernel cannot read) get a row-major copy there first, once
// their values exist.
template <typename NeedsCopy, typename Compute>
void dispatch_outputs(mlx::core::Stream stream, const std::vector<mlx::core::array>& inputs,
                      std::vector<mlx::core::array>& outputs, NeedsCopy needs_copy, Compute compute) {
  namespace mx = mlx::core;
  for (auto& out : outputs) out.set_data(mx::allocator::malloc(out.nbytes()));
  auto& encoder = mx::cpu::get_command_encoder(stream);
  std::vector<mx::array> sources = inputs, usable;
  std::vector<bool> copied;
  for (const auto& in : inputs) {
    copied.push_back(needs_copy(in));
    if (!copied.back()) {
      usable.push_back(in);
      continue;
    }
    mx::array copy(in.shape(), in.dtype(), nullptr, {});
    copy.set_data(mx::allocator::malloc(copy.nbytes()));
    usable.push_back(copy);
    encoder.add_temporary(copy);
  }
  for (const auto& in : inputs) encoder.set_input_array(in);
  for (auto& out : outputs) encoder.set_output_array(out);
  encoder.dispatch([sources = std::move(sources), usable = std::move(usable), copied = std::move(copied),
                    outs = outputs, compute]() mutable {
    for (size_t i = 0; i < sources.size(); i++) {
      if (copied[i]) copy_strided(sources[i], usable[i]);
    }
    compute(usable, outs);
  });
}

// `dispatch_outputs` for an operation with one output: `compute(inputs, out)`.
template <typename NeedsCopy, typename Compute>
void dispatch(mlx::core::Stream stream, const std::vector<mlx::core::array>& inputs, mlx::core::array& out,
              NeedsCopy needs_copy, Compute compute) {
  std::vector<mlx::core::array> outputs = {out};
  dispatch_outputs(stream, inputs, outputs, needs_copy,
                   [compute](std::vector<mlx::core::array>& in, std::vector<mlx::core::array>& outs) mutable {
                     compute(in, outs[0]);
                   });
}

// The CPU stream an operation is scheduled on (`s` as MLX's ops take it); `op` names the caller.
inline mlx::core::Stream cpu_stream(mlx::core::StreamOrDevice s, const char* op) {
  mlx::core::Stream stream = mlx::core::to_stream(s, mlx::core::Device::cpu);
  if (stream.device != mlx::core::Device::cpu) {
    throw std::invalid_argument(std::string("[orchard ") + op + "] the stream must be a CPU stream");
  }
  return stream;
}

}  // namespace orchard_qmm
