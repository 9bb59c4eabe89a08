// A small pool of worker threads for splitting one matmul's output rows.
//
// Decode runs a few hundred matmuls per token, each tens of microseconds long, so waking a sleeping
// thread per matmul (~5-20 us through a condition variable) would cost as much as the work. Workers
// therefore spin on an epoch counter for a short while after each job and only then sleep.
#pragma once

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace orchard_qmm {

class ThreadPool {
 public:
  using Task = void (*)(void* context, int task);

  static ThreadPool& shared();

  // Threads that run a job, the calling one included.
  int size() const {
    return static_cast<int>(workers_->size()) + 1;
  }

  // Restart with `threads` in all (1: everything on the caller).
  void resize(int threads);

  // Runs fn(context, t) for t in [0, tasks) on the pool and the caller; returns when all are done.
  // A job started while another is running (a second MLX stream) runs on its caller alone.
  void run(int tasks, Task fn, void* context);

  // Threads the machine offers this process: its physical cores within the affinity mask, or
  // ORCHARD_CPU_THREADS.
  static int default_threads();

 private:
  ThreadPool();
  void start(int workers);
  void stop();
  void worker_loop(uint32_t seen);
  void participate();

  // One job is a ticket counter: epoch (24 bits) | tasks (20 bits) | next task (20 bits). A thread
  // claims a task with one fetch_add and learns the job's size from the same word, so a worker that
  // wakes late can never take a task of a job that is already over: a valid ticket means its job
  // is still running (the caller waits for every task), and the caller never waits for an idle one.
  static uint32_t epoch_of(uint64_t state) {
    return static_cast<uint32_t>(state >> 40);
  }

  std::vector<std::thread>* workers_;
  std::atomic<bool> busy_{false};
  std::atomic<bool> stopping_{false};
  std::atomic<uint64_t> state_{0};
  std::atomic<int> done_{0};
  std::atomic<int> sleepers_{0};
  Task fn_ = nullptr;
  void* context_ = nullptr;
  std::mutex sleep_mutex_;
  std::condition_variable wake_;
};

}  // namespace orchard_qmm
