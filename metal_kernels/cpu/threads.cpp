#include "threads.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <utility>

#if defined(__linux__)
#include <pthread.h>
#include <sched.h>
#endif
#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace orchard_qmm {

namespace {

// How long an idle worker waits for the next job before it sleeps: longer than the gap between two
// matmuls of a decode step (the norms, RoPE and attention between them). After kBusySpin of pure
// spinning it yields the core at every check, so the Python thread building the next step's graph,
// or another process, runs first where a core is short.
constexpr auto kSpin = std::chrono::microseconds(300);
constexpr auto kBusySpin = std::chrono::microseconds(20);

inline void relax() {
#if defined(__x86_64__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

}  // namespace

ThreadPool& ThreadPool::shared() {
  // Never destroyed: its threads would have to be joined during interpreter shutdown.
  static ThreadPool* pool = [] {
    auto* created = new ThreadPool();
#if defined(__linux__)
    // A forked child has none of the parent's threads: it runs every job on its caller.
    pthread_atfork(nullptr, nullptr, [] {
      ThreadPool& p = ThreadPool::shared();
      p.workers_ = new std::vector<std::thread>();  // the parent's handles are meaningless here
      p.busy_ = false;
      p.stopping_ = false;
      p.sleepers_ = 0;
    });
#endif
    return created;
  }();
  return *pool;
}

ThreadPool::ThreadPool() : workers_(new std::vector<std::thread>()) {
  start(default_threads() - 1);
}

int ThreadPool::default_threads() {
  if (const char* env = std::getenv("ORCHARD_CPU_THREADS")) {
    int requested = std::atoi(env);
    if (requested > 0) return requested;
  }
#if defined(__linux__)
  cpu_set_t mask;
  if (sched_getaffinity(0, sizeof(mask), &mask) == 0) {
    int logical = CPU_COUNT(&mask);
    // Decode streams weights from memory: a second hyperthread on a core adds no bandwidth.
    std::set<std::pair<int, int>> cores;
    for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
      if (!CPU_ISSET(cpu, &mask)) continue;
      int ids[2] = {-1, -1};
      const char* names[2] = {"physical_package_id", "core_id"};
      for (int i = 0; i < 2; i++) {
        char path[128];
        std::snprintf(path, sizeof(path), "/sys/devices/system/cpu/cpu%d/topology/%s", cpu, names[i]);
        if (FILE* f = std::fopen(path, "r")) {
          if (std::fscanf(f, "%d", &ids[i]) != 1) ids[i] = -1;
          std::fclose(f);
        }
      }
      if (ids[1] < 0) return logical;  // no topology in sysfs: count logical CPUs
      cores.insert({ids[0], ids[1]});
    }
    return cores.empty() ? logical : static_cast<int>(cores.size());
  }
#endif
  unsigned hw = std::thread::hardware_concurrency();
  return hw ? static_cast<int>(hw) : 1;
}

void ThreadPool::start(int workers) {
  stopping_ = false;
  uint32_t seen = epoch_of(state_.load());
  for (int i = 0; i < workers; i++) workers_->emplace_back([this, seen] { worker_loop(seen); });
}

void ThreadPool::stop() {
  {
    std::lock_guard<std::mutex> lock(sleep_mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  for (auto& t : *workers_) t.join();
  workers_->clear();
}

void ThreadPool::resize(int threads) {
  bool expected = false;
  while (!busy_.compare_exchange_weak(expected, true)) {
    expected = false;
    std::this_thread::yield();
  }
  stop();
  start(threads > 1 ? threads - 1 : 0);
  busy_ = false;
}

void ThreadPool::participate() {
  constexpr uint64_t kField = (1u << 20) - 1;
  while (true) {
    uint64_t ticket = state_.fetch_add(1, std::memory_order_acq_rel);
    int task = static_cast<int>(ticket & kField);
    if (task >= static_cast<int>((ticket >> 20) & kField)) return;
    fn_(context_, task);
    done_.fetch_add(1, std::memory_order_release);
  }
}

void ThreadPool::run(int tasks, Task fn, void* context) {
  bool expected = false;
  if (tasks <= 1 || tasks >= (1 << 20) || workers_->empty() || !busy_.compare_exchange_strong(expected, true)) {
    for (int t = 0; t < tasks; t++) fn(context, t);
    return;
  }
  fn_ = fn;
  context_ = context;
  done_.store(0, std::memory_order_relaxed);
  uint64_t epoch = (epoch_of(state_.load()) + 1) & 0xFFFFFFu;
  state_.store((epoch << 40) | (static_cast<uint64_t>(tasks) << 20));  // seq_cst: before the read below
  if (sleepers_.load() > 0) {
    { std::lock_guard<std::mutex> lock(sleep_mutex_); }
    wake_.notify_all();
  }
  participate();
  // The remaining tasks are running on workers; one descheduled by an oversubscribed machine gets
  // the core back sooner if we yield instead of spinning.
  auto since = std::chrono::steady_clock::now();
  for (int spins = 1; done_.load(std::memory_order_acquire) < tasks; spins++) {
    relax();
    if (spins % 64 == 0 && std::chrono::steady_clock::now() - since > kBusySpin) std::this_thread::yield();
  }
  busy_.store(false, std::memory_order_release);
}

void ThreadPool::worker_loop(uint32_t seen) {
  while (true) {
    auto since = std::chrono::steady_clock::now();
    for (int spins = 1; epoch_of(state_.load(std::memory_order_acquire)) == seen && !stopping_; spins++) {
      relax();
      if (spins % 64 != 0) continue;
      auto waited = std::chrono::steady_clock::now() - since;
      if (waited > kBusySpin) std::this_thread::yield();
      if (waited > kSpin) {
        std::unique_lock<std::mutex> lock(sleep_mutex_);
        sleepers_.fetch_add(1);  // seq_cst: either run() sees a sleeper, or we see its new job
        wake_.wait(lock, [&] { return epoch_of(state_.load()) != seen || stopping_; });
        sleepers_.fetch_sub(1);
        break;
      }
    }
    if (stopping_) return;
    seen = epoch_of(state_.load(std::memory_order_acquire));
    participate();
  }
}

}  // namespace orchard_qmm
