#include "threads.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <stdexcept>
#include <string>
#include <system_error>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <sched.h>
#endif

namespace tinylm {
namespace {

thread_local bool in_worker = false;

// How long a thread waits awake before it sleeps. Kernels issue jobs a few microseconds
// apart (a prefill's products, a generation's one team job a decode call), and waking a
// sleeping thread costs 5-10 us (more on a busy machine): a worker that stays awake
// through the gaps takes the next job at once. A thread with nothing to do sleeps after
// this long.
constexpr auto kSpin = std::chrono::microseconds(50);

// Waits until done() is true or kSpin has passed; returns done(). It yields the core
// between checks rather than spinning on it: on a machine with more runnable threads
// than cores, the thread waited for may need this very core, and a spinning thread
// holds it until the scheduler's next tick (measured on a loaded 2-core machine: a
// pool round trip of 25-100 us spinning, 9 us after spinning 2 us first, 3 us
// yielding at once, 7-9 us sleeping). With nothing else runnable, a yield returns at
// once.
template <class Done>
bool spin_until(Done&& done) {
  const auto until = std::chrono::steady_clock::now() + kSpin;
  for (;;) {
    if (done()) return true;
    std::this_thread::yield();
    if (std::chrono::steady_clock::now() > until) return done();
  }
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__) || (defined(__arm__) && __ARM_ARCH >= 7)
  asm volatile("yield");
#endif
}

// Pause hints a Barrier spins before it starts yielding: x86's pause takes 10-140 cycles
// by model (up to ~10 us in all), ARM's yield about one.
constexpr int kPausesBeforeYield = 200;

class Pool {
 public:
  // Where the system will not start them all (a 32-bit process runs out of address space
  // for their stacks at a few hundred), the threads started are stopped and the error
  // says so: left running, they hung the process (or ended it in std::terminate).
  explicit Pool(int threads) : ranges_(size_t(threads)) {
    workers_.reserve(size_t(threads - 1));
    try {
      for (int i = 1; i < threads; ++i) workers_.emplace_back([this, i] { work(i); });
    } catch (const std::system_error& e) {
      const int fit = size();  // the caller and the workers that did start
      stop_workers();
      throw std::runtime_error("could not start " + std::to_string(threads) + " threads: the system started " +
                               std::to_string(fit) + " (" + e.what() + "); use at most " + std::to_string(fit));
    } catch (...) {  // std::bad_alloc
      stop_workers();
      throw;
    }
  }

  ~Pool() { stop_workers(); }

  int size() const { return int(workers_.size()) + 1; }

  // team: chunk t for thread t (n <= size()), never taken by another thread (a team's
  // threads wait for each other)
  void run(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn,
           bool team = false) {
    std::lock_guard<std::mutex> one_job_at_a_time(job_mutex_);
    const int64_t threads = size(), chunks_wanted = threads * 4;
    fn_ = &fn;
    n_ = n;
    help_ = !team;
    chunk_ = team ? 1 : std::max<int64_t>(grain, (n + chunks_wanted - 1) / chunks_wanted);
    const int64_t chunks = (n + chunk_ - 1) / chunk_;
    for (int64_t t = 0; t < threads; ++t) {
      if (team)
        ranges_[size_t(t)].set(std::min(t, n), std::min(t + 1, n));
      else
        ranges_[size_t(t)].set(chunks * t / threads, chunks * (t + 1) / threads);
    }
    pending_.store(int(workers_.size()));
    {
      // under the mutex, so that a worker on its way to sleep sees the new job
      std::lock_guard<std::mutex> lock(mutex_);
      generation_.fetch_add(1);
    }
    wake_.notify_all();
    in_worker = true;
    drain(0);
    in_worker = false;
    if (!spin_until([this] { return pending_.load() == 0; })) {
      std::unique_lock<std::mutex> lock(mutex_);
      done_.wait(lock, [this] { return pending_.load() == 0; });
    }
    fn_ = nullptr;
    if (failed_) std::rethrow_exception(std::exchange(failed_, nullptr));
  }

 private:
  // Chunk indices [front, back) not yet taken, in one word so that the owner (from the
  // front) and helpers (from the back) never take the same chunk.
  struct alignas(64) Range {
    std::atomic<uint64_t> front_back{0};
    void set(int64_t front, int64_t back) { front_back.store(uint64_t(back) << 32 | uint64_t(front)); }
    bool take(bool from_front, int64_t* chunk) {
      uint64_t v = front_back.load();
      for (;;) {
        const uint64_t front = v & 0xffffffffu, back = v >> 32;
        if (front >= back) return false;
        const uint64_t next = from_front ? (back << 32 | (front + 1)) : ((back - 1) << 32 | front);
        if (front_back.compare_exchange_weak(v, next)) {
          *chunk = int64_t(from_front ? front : back - 1);
          return true;
        }
      }
    }
  };

  // Thread `self` runs its own contiguous share of the chunks in order, then helps the
  // others from the far ends of theirs. Contiguous shares matter: when two threads
  // write interleaved stretches of the same output rows, the cache lines at every
  // boundary (and their prefetched neighbours) bounce between the cores (measured: an
  // int8 GEMM writing 64 rows split in 8 interleaved chunks ran 1.3x faster on 2
  // threads than on 1; in 2 contiguous halves, 1.9x).
  void drain(int self) {
    const int threads = size(), shares = help_ ? threads : 1;
    int64_t chunk;
    for (int k = 0; k < shares; ++k) {
      Range& r = ranges_[size_t((self + k) % threads)];
      while (r.take(k == 0, &chunk)) call(chunk);
    }
  }

  // An exception must neither escape a worker (std::terminate) nor leave the caller
  // before the workers are done with its job: the first is kept for run() to rethrow.
  void call(int64_t chunk) noexcept {
    try {
      (*fn_)(chunk * chunk_, std::min(n_, (chunk + 1) * chunk_));
    } catch (...) {
      std::lock_guard<std::mutex> lock(failed_mutex_);
      if (!failed_) failed_ = std::current_exception();
    }
  }

  void work(int self) {
    in_worker = true;
    uint64_t seen = 0;
    for (;;) {
      auto job_or_stop = [&] { return stop_.load() || generation_.load() != seen; };
      if (!spin_until(job_or_stop)) {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, job_or_stop);
      }
      if (stop_.load()) return;
      seen = generation_.load();
      drain(self);
      if (pending_.fetch_sub(1) == 1) {
        std::lock_guard<std::mutex> lock(mutex_);
        done_.notify_one();
      }
    }
  }

  void stop_workers() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
  }

  std::vector<std::thread> workers_;
  std::mutex job_mutex_, mutex_, failed_mutex_;
  std::exception_ptr failed_;  // the current job's first exception
  std::condition_variable wake_, done_;
  // the job: written by run() before it bumps generation_, read by workers after
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0, chunk_ = 1;
  bool help_ = true;  // threads take chunks from others' shares when done with their own
  std::vector<Range> ranges_;  // one per thread, index 0 the caller's
  std::atomic<int> pending_{0};  // workers that have not finished the current job
  std::atomic<uint64_t> generation_{0};
  std::atomic<bool> stop_{false};
};

// One thread per core this process may run on: on Linux the affinity mask (taskset, a
// container's cpuset), which can be fewer than the machine's cores. More threads than
// that would wait for each other at every barrier of a decode step.
int default_threads() {
#if defined(__linux__)
  cpu_set_t mask;
  if (sched_getaffinity(0, sizeof(mask), &mask) == 0 && CPU_COUNT(&mask) > 0) return CPU_COUNT(&mask);
#endif
  const unsigned cores = std::thread::hardware_concurrency();
  return cores == 0 ? 1 : int(cores);
}

// The pool, shared: each job holds it, so that set_num_threads, called on another thread
// while a job runs, replaces it for later jobs and the job finishes on the old one (which
// the last holder deletes). Leaked at exit on purpose: joining threads in a static
// destructor can hang.
std::mutex pool_mutex;

std::shared_ptr<Pool>& current_pool() {  // under pool_mutex
  static auto* pool = new std::shared_ptr<Pool>();
  return *pool;
}

std::shared_ptr<Pool> get_pool() {
  std::lock_guard<std::mutex> lock(pool_mutex);
  std::shared_ptr<Pool>& pool = current_pool();
  if (pool == nullptr) pool = std::make_shared<Pool>(std::min(default_threads(), kMaxThreads));
  return pool;
}

}  // namespace

int num_threads() { return get_pool()->size(); }

void set_num_threads(int n) {
  if (n > kMaxThreads)
    throw std::invalid_argument("set_num_threads: " + std::to_string(n) + " threads is more than the " +
                                std::to_string(kMaxThreads) + " tinylm allows (this machine has " +
                                std::to_string(default_threads()) + " cores)");
  if (n < 1) n = std::min(default_threads(), kMaxThreads);
  std::shared_ptr<Pool> old;  // dropped after the lock is released: deleting a pool joins its threads
  std::lock_guard<std::mutex> lock(pool_mutex);
  std::shared_ptr<Pool>& pool = current_pool();
  if (pool != nullptr && pool->size() == n) return;
  old = std::exchange(pool, std::make_shared<Pool>(n));
}

// The phase and the sleepers are sequentially consistent (Dekker's pattern): either the
// last member to arrive sees a sleeper and wakes it under the mutex, or the sleeper,
// about to wait, sees the new phase. Both sides write with a read-modify-write, not a
// store: the C++ model orders a seq_cst store before a later seq_cst load, and ARM
// hardware does (stlr, ldar), but qemu-aarch64 7.2 on x86 lets the load pass the store
// (a store-buffering litmus test shows it in 17% of tries), which lost a wake-up and
// hung a decode step now and then in CI's emulated runs. An atomic RMW is a full
// barrier there too, and one per phase costs no more than the store did. So in this
// file, no seq_cst store is followed by a load that must see the other side's store:
// write with an RMW, or under the mutex.
void Barrier::wait() {
  // alone, there is no one to wait for (and the atomics below were 1% of a `baby` step)
  if (threads_ == 1 || broken_.load()) return;
  const uint32_t phase = phase_.load();
  if (arrived_.fetch_add(1) == threads_ - 1) {
    arrived_.store(0, std::memory_order_relaxed);
    phase_.fetch_add(1);
    wake_sleepers();
    return;
  }
  // The phases of a decode step are a few microseconds apart: spin (with the CPU's pause
  // hint) for a short while first, as a yield costs about a microsecond in a VM; then
  // yield, in case the thread waited for needs this core; then sleep.
  auto passed = [&] { return phase_.load() != phase || broken_.load(); };
  for (int i = 0; i < kPausesBeforeYield; ++i) {
    if (passed()) return;
    cpu_relax();
  }
  if (spin_until(passed)) return;
  std::unique_lock<std::mutex> lock(mutex_);
  sleepers_.fetch_add(1);
  woken_.wait(lock, passed);
  sleepers_.fetch_sub(1);
}

void Barrier::break_() {
  broken_.exchange(true);  // a read-modify-write, as in wait()
  wake_sleepers();
}

void Barrier::wake_sleepers() {
  if (sleepers_.load() == 0) return;
  std::lock_guard<std::mutex> lock(mutex_);  // a sleeper is either waiting or yet to check
  woken_.notify_all();
}

void run_team(int threads, const std::function<void(int, int, Barrier&)>& fn) {
  const std::shared_ptr<Pool> p = in_worker || threads <= 1 ? nullptr : get_pool();
  threads = p == nullptr ? 1 : std::min(threads, p->size());
  Barrier barrier(threads);
  if (threads == 1) return fn(0, 1, barrier);
  // A member that throws (std::bad_alloc growing a scratch buffer) must not leave the
  // others waiting for it; the pool rethrows the exception here.
  p->run(threads, 1, [&](int64_t begin, int64_t) {
    try {
      fn(int(begin), threads, barrier);
    } catch (...) {
      barrier.break_();
      throw;
    }
  }, true);
}

void parallel_for_fn(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  if (in_worker || n <= grain) {
    fn(0, n);
    return;
  }
  const std::shared_ptr<Pool> p = get_pool();
  if (p->size() == 1) {
    fn(0, n);
    return;
  }
  p->run(n, grain, fn);
}

}  // namespace tinylm
