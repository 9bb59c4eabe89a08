// What the generated driver and the scheduler share: the thread attributes of one emulated thread.
#pragma once

namespace orchard_emu {

struct Attrs {
  uint3 thread_position_in_grid, thread_position_in_threadgroup, threadgroup_position_in_grid;
  uint3 threads_per_threadgroup, threads_per_grid, threadgroups_per_grid, grid_size, grid_origin;
  uint3 dispatch_threads_per_threadgroup;
  uint thread_index_in_threadgroup, thread_index_in_simdgroup, simdgroup_index_in_threadgroup;
  uint simdgroups_per_threadgroup, threads_per_simdgroup, thread_execution_width;
  uint thread_index_in_quadgroup, quadgroup_index_in_threadgroup, quadgroups_per_threadgroup;
  uint dispatch_simdgroups_per_threadgroup, dispatch_quadgroups_per_threadgroup;
};

// Defined by the generated driver: call the kernel once, as the thread described by `a`.
void run_thread(unsigned char** buffers, const Attrs& a);
extern const int kNumBuffers;

}  // namespace orchard_emu
