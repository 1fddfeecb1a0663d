#include "threads.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace tinylm {
namespace {

thread_local bool in_worker = false;

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
    const int64_t chunk = std::max<int64_t>(grain, (n + chunks_wanted - 1) / chunks_wanted);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      fn_ = &fn;
      n_ = n;
      chunk_ = chunk;
      next_.store(0);
      busy_ = int(workers_.size());
      ++generation_;
    }
    wake_.notify_all();
    in_worker = true;
    drain();
    in_worker = false;
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return busy_ == 0; });
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
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
      }
      drain();
      std::lock_guard<std::mutex> lock(mutex_);
      if (--busy_ == 0) done_.notify_one();
    }
  }

  std::vector<std::thread> workers_;
  std::mutex job_mutex_, mutex_;
  std::condition_variable wake_, done_;
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0, chunk_ = 1;
  std::atomic<int64_t> next_{0};
  int busy_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
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

void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
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
