// One small persistent thread pool shared by every kernel.
//
// Portable C++17 threads instead of OpenMP, because macOS's compiler has no OpenMP.
// Kernels split their work with parallel_for, or run as a team (run_team) when their
// threads must move through phases together; the calling thread works too, so a pool
// of N threads runs N-1 workers. Either, issued from inside a worker, runs inline.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>

namespace tinylm {

// Threads the kernels use (including the caller). Defaults to the number of cores.
int num_threads();

// The most threads the pool takes: far beyond any core count tinylm runs on, and far
// below what makes creating the threads themselves hang the process (100,000 did).
constexpr int kMaxThreads = 1024;

// Resizes the pool; n < 1 means "one per core", n > kMaxThreads throws
// std::invalid_argument, and threads the system will not start std::runtime_error (the
// pool is then unchanged). Safe while another thread runs a kernel: jobs already running
// finish on the old pool's threads, later ones use the new pool.
void set_num_threads(int n);

// Calls fn(begin, end) on disjoint ranges covering [0, n), in parallel, and returns when
// all are done. Ranges are at least `grain` long (except the last). Each thread first
// runs a contiguous share of the ranges, in order, then helps the others from the far
// ends of theirs, so threads write neighbouring outputs only at a few places. The split never
// changes which element a range holds, so results do not depend on the thread count as
// long as fn writes each element's output from that element alone. If fn throws, the
// first exception is rethrown on the caller once every range has run.
void parallel_for_fn(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

// The same for any callable, passed on by reference: a std::function made from a
// lambda that captures more than two references allocates, one malloc and free per
// call, which a decode step makes dozens of (made from a reference_wrapper it does not).
template <class Fn>
void parallel_for(int64_t n, int64_t grain, Fn&& fn) {
  parallel_for_fn(n, grain, std::ref(fn));
}

// Where the threads of a run_team wait for each other: wait() returns once all
// `threads` have called it. Reusable; spins briefly, then yields the core, and sleeps
// once it has waited longer than the pool's threads stay awake (a member that lost its
// core, e.g. to a container's CPU quota, is not held up further by the others' spinning).
// Once broken (a member failed), wait() returns at once, and broken() says so.
class Barrier {
 public:
  explicit Barrier(int threads) : threads_(threads) {}
  void wait();
  void break_();
  bool broken() const { return broken_.load(); }

 private:
  void wake_sleepers();

  const int threads_;
  std::atomic<bool> broken_{false};
  alignas(64) std::atomic<int> arrived_{0};
  alignas(64) std::atomic<uint32_t> phase_{0};
  std::atomic<int> sleepers_{0};
  std::mutex mutex_;
  std::condition_variable woken_;
};

// Runs fn(thread, threads, barrier) once on each of `threads` threads of the pool (the
// caller is thread 0; at most the pool's size) and returns when all have returned: for
// work that moves through phases in step, each thread taking its own share of each phase
// and meeting the others at the barrier between phases, instead of one parallel_for
// (one hand-out and wait) a phase. Issued from inside a worker it calls fn(0, 1, b).
// An exception from a member breaks the barrier and is rethrown once all have returned.
void run_team(int threads, const std::function<void(int, int, Barrier&)>& fn);

}  // namespace tinylm
