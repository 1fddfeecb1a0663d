// The roofline's read (int8.h's read_checksum): picks read.h's loop in the widest loads
// of the active instruction-set level (read_avx512.cpp, read_avx2.cpp, else the portable
// one below) and splits the words over the thread pool. Portable C++ (no ISA flags).
#include <atomic>
#include <cstring>

#include "../cpu.h"
#include "../threads.h"
#include "kernels.h"
#include "read.h"

namespace tinylm::int8 {
namespace {

// read.h's Ops in the compiler's 16-byte vectors (GCC and Clang), which are the
// baseline's widest loads: SSE2's, NEON's.
struct PortableWords {
  using V = uint64_t __attribute__((vector_size(16)));
  static constexpr int64_t kWords = 2;
  static V zero() { return V{0, 0}; }
  static V load(const uint64_t* p) {
    V v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static V add(V a, V b) { return a + b; }
  static uint64_t sum(V v) { return v[0] + v[1]; }
};

uint64_t read_words_portable(const uint64_t* data, int64_t n) {
  return read::sum_words<PortableWords>(data, n);
}

struct ReadKernel {
  const char* name;
  uint64_t (*fn)(const uint64_t* data, int64_t n);
};

ReadKernel select_read() {
#if defined(__x86_64__) || defined(_M_X64)
  const uint32_t active = active_features();
  if (active & kAVX512) return {"avx512", read_words_avx512};
  if (active & kAVX2) return {"avx2", read_words_avx2};
#endif
  return {"portable", read_words_portable};
}

}  // namespace

uint64_t read_checksum(const uint64_t* data, int64_t n_words) {
  const ReadKernel read = select_read();
  std::atomic<uint64_t> total{0};
  parallel_for(n_words, int64_t(1) << 15,
               [&](int64_t b, int64_t e) { total += read.fn(data + b, e - b); });
  return total.load();
}

const char* read_path() { return select_read().name; }

}  // namespace tinylm::int8
