#include "threads.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace tinylm {
namespace {

thread_local bool in_worker = false;

// How long a thread waits awake before it sleeps. A decode step issues dozens of
// parallel jobs a few microseconds apart, and waking a sleeping thread costs 5-10 us
// (more on a busy machine): a worker that stays awake through the gaps takes the next
// job at once. A thread with nothing to do sleeps after this long.
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

class Pool {
 public:
  explicit Pool(int threads) {
    for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { work(); });
  }

  ~Pool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
  }

  int size() const { return int(workers_.size()) + 1; }

  void run(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
    std::lock_guard<std::mutex> one_job_at_a_time(job_mutex_);
    const int64_t chunks_wanted = int64_t(size()) * 4;
    fn_ = &fn;
    n_ = n;
    chunk_ = std::max<int64_t>(grain, (n + chunks_wanted - 1) / chunks_wanted);
    next_.store(0);
    pending_.store(int(workers_.size()));
    {
      // under the mutex, so that a worker on its way to sleep sees the new job
      std::lock_guard<std::mutex> lock(mutex_);
      generation_.fetch_add(1);
    }
    wake_.notify_all();
    in_worker = true;
    drain();
    in_worker = false;
    if (!spin_until([this] { return pending_.load() == 0; })) {
      std::unique_lock<std::mutex> lock(mutex_);
      done_.wait(lock, [this] { return pending_.load() == 0; });
    }
    fn_ = nullptr;
  }

 private:
  void drain() {
    for (;;) {
      const int64_t begin = next_.fetch_add(chunk_);
      if (begin >= n_) return;
      (*fn_)(begin, std::min(n_, begin + chunk_));
    }
  }

  void work() {
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
      drain();
      if (pending_.fetch_sub(1) == 1) {
        std::lock_guard<std::mutex> lock(mutex_);
        done_.notify_one();
      }
    }
  }

  std::vector<std::thread> workers_;
  std::mutex job_mutex_, mutex_;
  std::condition_variable wake_, done_;
  // the job: written by run() before it bumps generation_, read by workers after
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0, chunk_ = 1;
  std::atomic<int64_t> next_{0};
  std::atomic<int> pending_{0};  // workers that have not finished the current job
  std::atomic<uint64_t> generation_{0};
  std::atomic<bool> stop_{false};
};

int default_threads() {
  const unsigned cores = std::thread::hardware_concurrency();
  return cores == 0 ? 1 : int(cores);
}

std::mutex pool_mutex;
Pool* pool = nullptr;  // leaked at exit on purpose: joining threads in a static destructor can hang

Pool& get_pool() {
  std::lock_guard<std::mutex> lock(pool_mutex);
  if (pool == nullptr) pool = new Pool(default_threads());
  return *pool;
}

}  // namespace

int num_threads() { return get_pool().size(); }

void set_num_threads(int n) {
  if (n < 1) n = default_threads();
  std::lock_guard<std::mutex> lock(pool_mutex);
  if (pool != nullptr && pool->size() == n) return;
  delete pool;
  pool = new Pool(n);
}

void parallel_for_fn(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  if (in_worker || n <= grain) {
    fn(0, n);
    return;
  }
  Pool& p = get_pool();
  if (p.size() == 1) {
    fn(0, n);
    return;
  }
  p.run(n, grain, fn);
}

}  // namespace tinylm
