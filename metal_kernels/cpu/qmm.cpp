// What every variant shares: the activation layout, the run-time choice of variant, and the split
// of one problem's output rows over the thread pool. Built without instruction-set flags.
#include "qmm.h"

#include <cstdlib>
#include <cstring>
#include <new>

#include "qmm_run.h"
#include "threads.h"


namespace orchard_qmm {

#define ORCHARD_DECLARE_VARIANT(ns)                                                              \
  namespace ns {                                                                                 \
  void prepare(const Problem& p, const ActLayout& a, uint8_t* act);                              \
  void rows(const Problem& p, const ActLayout& a, const uint8_t* act, int n0, int n1, float* s); \
  void dequantize(const Problem& p, int n0, int n1, float* s);                                   \
  }

ORCHARD_DECLARE_VARIANT(generic)
#if defined(ORCHARD_HAVE_AVX2)
ORCHARD_DECLARE_VARIANT(avx2)
#endif
#if defined(ORCHARD_HAVE_AVX512)
ORCHARD_DECLARE_VARIANT(avx512)
#endif
#if defined(ORCHARD_HAVE_NEON)
ORCHARD_DECLARE_VARIANT(neon)
#endif

namespace {

constexpr size_t kAlign = 64;

size_t align_up(size_t n) {
  return (n + kAlign - 1) / kAlign * kAlign;
}

bool always() {
  return true;
}

#if defined(__x86_64__)
bool cpu_has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

bool cpu_has_avx512() {
  __builtin_cpu_init();
  return cpu_has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}
#endif

#if defined(ORCHARD_HAVE_AVX512)
const Variant kAvx512 = {"avx512", cpu_has_avx512, avx512::prepare, avx512::rows, avx512::dequantize};
#endif
#if defined(ORCHARD_HAVE_AVX2)
const Variant kAvx2 = {"avx2", cpu_has_avx2, avx2::prepare, avx2::rows, avx2::dequantize};
#endif
#if defined(ORCHARD_HAVE_NEON)
// NEON is part of every arm64 CPU.
const Variant kNeon = {"neon", always, neon::prepare, neon::rows, neon::dequantize};
#endif
const Variant kGeneric = {"generic", always, generic::prepare, generic::rows, generic::dequantize};

// A buffer that only ever grows: after the first call of a size, the hot path allocates nothing.
struct Scratch {
  void* data = nullptr;
  size_t bytes = 0;
  void* reserve(size_t need) {
    if (need > bytes) {
      std::free(data);
      data = std::aligned_alloc(kAlign, align_up(need));
      if (!data) throw std::bad_alloc();
      bytes = align_up(need);
    }
    return data;
  }
  ~Scratch() {
    std::free(data);
  }
};

// Below this many weight bytes x rows a job is a few microseconds: not worth waking another thread.
constexpr size_t kParallelBytes = 96 * 1024;
// Tasks per thread: a shared or throttled core finishes fewer of them, the others take the rest.
constexpr int kTasksPerThread = 4;
constexpr int kMinRowsPerTask = 16;

struct Job {
  const Problem* problem;
  const Variant* variant;
  const ActLayout* layout;  // nullptr: dequantize
  const uint8_t* act;
  int rows_per_task;
};

void run_task(void* context, int task) {
  const Job& job = *static_cast<const Job*>(context);
  const Problem& p = *job.problem;
  thread_local Scratch scratch;
  float* floats = static_cast<float*>(scratch.reserve(sizeof(float) * row_scratch_floats(p.K, p.group_size)));
  int n0 = task * job.rows_per_task;
  int n1 = n0 + job.rows_per_task < p.N ? n0 + job.rows_per_task : p.N;
  if (job.layout) {
    job.variant->rows(p, *job.layout, job.act, n0, n1, floats);
  } else {
    job.variant->dequantize(p, n0, n1, floats);
  }
}

// Splits p's output rows over the pool; `work` is bytes of weights times rows of x.
void split_rows(const Problem& p, Job& job, size_t work) {
  ThreadPool& pool = ThreadPool::shared();
  int threads = work < kParallelBytes ? 1 : pool.size();
  int tasks = threads * kTasksPerThread;
  int rows_per_task = (p.N + tasks - 1) / tasks;
  if (rows_per_task < kMinRowsPerTask) rows_per_task = kMinRowsPerTask;
  tasks = (p.N + rows_per_task - 1) / rows_per_task;
  job.rows_per_task = rows_per_task;
  if (threads == 1) {
    for (int t = 0; t < tasks; t++) run_task(&job, t);
  } else {
    pool.run(tasks, run_task, &job);
  }
}

}  // namespace

ActLayout act_layout(int M, int K, int group_size) {
  ActLayout a;
  a.blocks = K / kBlock;
  a.groups = K / group_size;
  a.xq_stride = a.blocks * 64;  // two int16 parts per activation
  size_t offset = 0;
  a.xq = offset;
  offset = align_up(offset + sizeof(int16_t) * M * a.xq_stride);
  a.dx = offset;
  offset = align_up(offset + sizeof(float) * M * a.blocks);
  a.xsum = offset;
  offset = align_up(offset + sizeof(float) * M * a.groups);
  a.xf = offset;
  const size_t tiles = (M + kFloatTileRows - 1) / kFloatTileRows;
  offset = align_up(offset + sizeof(float) * tiles * kFloatTileRows * K);
  a.bytes = offset;
  return a;
}

size_t row_scratch_floats(int K, int group_size) {
  return 4 * static_cast<size_t>(K / group_size) + 32;  // two outputs' scales and biases
}

const Variant* const* variants() {
  static const Variant* const list[] = {
#if defined(ORCHARD_HAVE_AVX512)
      &kAvx512,
#endif
#if defined(ORCHARD_HAVE_AVX2)
      &kAvx2,
#endif
#if defined(ORCHARD_HAVE_NEON)
      &kNeon,
#endif
      &kGeneric,
      nullptr,
  };
  return list;
}

const Variant* best_variant() {
  for (const Variant* const* v = variants(); *v; v++) {
    if ((*v)->supported()) return *v;
  }
  return &kGeneric;
}

const Variant* find_variant(const char* name) {
  for (const Variant* const* v = variants(); *v; v++) {
    if (std::strcmp((*v)->name, name) == 0) return *v;
  }
  return nullptr;
}

void run(const Problem& p, const Variant& variant) {
  if (p.M == 0 || p.N == 0) return;
  thread_local Scratch activations;
  ActLayout layout = act_layout(p.M, p.K, p.group_size);
  auto* act = static_cast<uint8_t*>(activations.reserve(layout.bytes));
  variant.prepare(p, layout, act);
  Job job = {&p, &variant, &layout, act, 0};
  split_rows(p, job, p.row_bytes * static_cast<size_t>(p.N) * static_cast<size_t>(p.M));
}

void run_dequantize(const Problem& p, const Variant& variant) {
  if (p.N == 0 || p.K == 0) return;
  Job job = {&p, &variant, nullptr, nullptr, 0};
  split_rows(p, job, p.row_bytes * static_cast<size_t>(p.N));
}

}  // namespace orchard_qmm
