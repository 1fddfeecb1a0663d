// Tests of the runtime every kernel relies on: CPU feature detection and dispatch
// (cpu.cpp) and the thread pool (threads.cpp).
//
// Detection is checked against what the (emulated) CPU must report: csrc/tests/build.py
// sets TINYLM_EXPECT_ISAS to the levels of the qemu CPU model it runs (cortex-a72:
// "scalar,neon"; Westmere: "scalar"), or for a native x86 run to the levels read from
// /proc/cpuinfo. Every detected feature is also *executed* by a tiny probe, so detection
// that claims too much dies with SIGILL instead of passing.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <time.h>
#include <utility>
#include <vector>

#include "../cpu.h"
#include "../threads.h"
#include "check.h"

#if defined(__x86_64__)
#include <immintrin.h>
#elif defined(__aarch64__) || defined(__ARM_NEON)
#include <arm_neon.h>
#endif

namespace {

using tinylm::IsaLevel;

// Runtime data for the probes, so the compiler cannot evaluate them at compile time.
volatile int g_seed = 3;

std::string join(const std::vector<std::string>& parts) {
  std::string out;
  for (const auto& p : parts) out += (out.empty() ? "" : ",") + p;
  return out;
}

// Restores the active level when a test that changes it ends.
struct KeepIsa {
  std::string saved = tinylm::active_isa();
  ~KeepIsa() { tinylm::set_isa(saved); }
};

// Restores the pool size when a test that changes it ends.
struct KeepThreads {
  int saved = tinylm::num_threads();
  ~KeepThreads() { tinylm::set_num_threads(saved); }
};

// ------------------------------------------------------------ instruction probes
// Each probe runs one instruction of a feature on runtime data; the caller compares the
// result with plain C++.

std::vector<int8_t> probe_bytes(int n, int offset) {
  std::vector<int8_t> v(n);
  for (int i = 0; i < n; ++i) v[i] = int8_t((i * 37 + offset * g_seed) % 255 - 127);
  return v;
}

// Sum over i of a[i] * b[i] for the first n bytes; a read as unsigned when `a_unsigned`.
int32_t dot_reference(const std::vector<int8_t>& a, const std::vector<int8_t>& b, int n,
                      bool a_unsigned) {
  int32_t sum = 0;
  for (int i = 0; i < n; ++i) sum += (a_unsigned ? int32_t(uint8_t(a[i])) : int32_t(a[i])) * b[i];
  return sum;
}

#if defined(__x86_64__)
__attribute__((target("avx2,fma,f16c"))) int32_t probe_avx2(const int8_t* a, const int8_t* b) {
  // 32 signed bytes each: widen to 16 bit, multiply-add pairs, sum the eight lanes.
  const __m256i a16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a)));
  const __m256i b16 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b)));
  const __m256i a16h = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + 16)));
  const __m256i b16h = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 16)));
  const __m256i sums = _mm256_add_epi32(_mm256_madd_epi16(a16, b16), _mm256_madd_epi16(a16h, b16h));
  alignas(32) int32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), sums);
  int32_t total = 0;
  for (int32_t lane : lanes) total += lane;
  return total;
}

// (GCC 12's _mm512_reduce_add_epi32 warns about its own uninitialized variable.)
__attribute__((target("avx512f"))) int32_t sum_lanes(__m512i v) {
  alignas(64) int32_t lanes[16];
  _mm512_store_si512(lanes, v);
  int32_t total = 0;
  for (int32_t lane : lanes) total += lane;
  return total;
}

__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl"))) int32_t probe_avx512(const int8_t* a,
                                                                                   const int8_t* b) {
  const __m512i a16 = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a)));
  const __m512i b16 = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b)));
  return sum_lanes(_mm512_madd_epi16(a16, b16));
}

// vpdpbusd: unsigned bytes of a times signed bytes of b, 64 of them.
__attribute__((target("avx512f,avx512bw,avx512vnni"))) int32_t probe_avx512vnni(const int8_t* a,
                                                                                const int8_t* b) {
  const __m512i acc = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_loadu_si512(a),
                                          _mm512_loadu_si512(b));
  return sum_lanes(acc);
}

__attribute__((target("avx2,avxvnni"))) int32_t probe_avxvnni(const int8_t* a, const int8_t* b) {
  const __m256i acc = _mm256_dpbusd_avx_epi32(
      _mm256_setzero_si256(), _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a)),
      _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b)));
  alignas(32) int32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), acc);
  int32_t total = 0;
  for (int32_t lane : lanes) total += lane;
  return total;
}

void run_probes(uint32_t features) {
  const auto a = probe_bytes(64, 1), b = probe_bytes(64, 2);
  if (features & tinylm::kAVX2)
    CHECK(probe_avx2(a.data(), b.data()) == dot_reference(a, b, 32, false), "avx2 probe");
#if defined(TINYLM_SIMDE_FEATURES)
  // The AVX-512/VNNI features of this build are SIMDe's, not necessarily the CPU's.
  features &= ~(tinylm::kAVX512 | tinylm::kAVX512VNNI | tinylm::kAVXVNNI);
#endif
  if (features & tinylm::kAVX512)
    CHECK(probe_avx512(a.data(), b.data()) == dot_reference(a, b, 32, false), "avx512 probe");
  if (features & tinylm::kAVX512VNNI)
    CHECK(probe_avx512vnni(a.data(), b.data()) == dot_reference(a, b, 64, true), "avx512vnni probe");
  if (features & tinylm::kAVXVNNI)
    CHECK(probe_avxvnni(a.data(), b.data()) == dot_reference(a, b, 32, true), "avxvnni probe");
}

#elif defined(__aarch64__) || defined(__ARM_NEON)
int32_t probe_neon(const int8_t* a, const int8_t* b) {
  // smull + sadalp, the ARMv8.0 int8 dot product; vpadd_s32 exists on 32-bit ARM too.
  const int16x8_t lo = vmull_s8(vld1_s8(a), vld1_s8(b));
  const int16x8_t hi = vmull_s8(vld1_s8(a + 8), vld1_s8(b + 8));
  const int32x4_t acc = vpadalq_s16(vpaddlq_s16(lo), hi);
  const int32x2_t half = vpadd_s32(vget_low_s32(acc), vget_high_s32(acc));
  return vget_lane_s32(vpadd_s32(half, half), 0);
}

#if defined(__aarch64__)
__attribute__((target("arch=armv8.2-a+dotprod"))) int32_t probe_dotprod(const int8_t* a,
                                                                        const int8_t* b) {
  const int32x4_t acc = vdotq_s32(vdupq_n_s32(0), vld1q_s8(a), vld1q_s8(b));
#else
int32_t probe_dotprod(const int8_t* a, const int8_t* b) {
  // 32-bit arm_neon.h declares vdotq_s32 only when the whole file targets dotprod, so
  // the instruction is written out (the .arch directive only widens what assembles).
  int32x4_t acc = vdupq_n_s32(0);
  const int8x16_t va = vld1q_s8(a), vb = vld1q_s8(b);
  __asm__(".arch armv8.2-a\n.arch_extension dotprod\nvsdot.s8 %q0, %q1, %q2"
          : "+w"(acc)
          : "w"(va), "w"(vb));
#endif
  const int32x2_t half = vpadd_s32(vget_low_s32(acc), vget_high_s32(acc));
  return vget_lane_s32(vpadd_s32(half, half), 0);
}

#if defined(__aarch64__)
// smmla: rows of a (2x8 bytes) times rows of b (2x8) gives the 2x2 int32 block
// [a0.b0, a0.b1, a1.b0, a1.b1]; the lanes are weighted so a wrong lane order is caught.
__attribute__((target("arch=armv8.2-a+i8mm"))) int32_t probe_i8mm(const int8_t* a, const int8_t* b) {
  const int32x4_t acc = vmmlaq_s32(vdupq_n_s32(0), vld1q_s8(a), vld1q_s8(b));
  return vgetq_lane_s32(acc, 0) + 2 * vgetq_lane_s32(acc, 1) + 3 * vgetq_lane_s32(acc, 2) +
         4 * vgetq_lane_s32(acc, 3);
}

int32_t i8mm_reference(const std::vector<int8_t>& a, const std::vector<int8_t>& b) {
  int32_t c[2][2] = {};  // c[i][j] = row i of a . row j of b, rows of 8 bytes
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j)
      for (int k = 0; k < 8; ++k) c[i][j] += int32_t(a[i * 8 + k]) * b[j * 8 + k];
  return c[0][0] + 2 * c[0][1] + 3 * c[1][0] + 4 * c[1][1];
}
#endif

void run_probes(uint32_t features) {
  const auto a = probe_bytes(16, 1), b = probe_bytes(16, 2);
  if (features & tinylm::kNEON)
    CHECK(probe_neon(a.data(), b.data()) == dot_reference(a, b, 16, false), "neon probe");
  if (features & tinylm::kDotProd)
    CHECK(probe_dotprod(a.data(), b.data()) == dot_reference(a, b, 16, false), "dotprod probe");
#if defined(__aarch64__)
  if (features & tinylm::kI8MM)
    CHECK(probe_i8mm(a.data(), b.data()) == i8mm_reference(a, b), "i8mm probe");
#endif
}
#else
void run_probes(uint32_t) {}
#endif

}  // namespace

// ------------------------------------------------------------ detection and dispatch

TEST(runtime_detects_the_expected_levels) {
  const std::string available = join(tinylm::available_isas());
  std::printf("  available levels: %s\n", available.c_str());
  const char* expected = std::getenv("TINYLM_EXPECT_ISAS");
  if (expected != nullptr && *expected != 0) {
    CHECK(available == expected, "this CPU reports levels %s, expected %s", available.c_str(),
          expected);
  } else {
    std::printf("  note: TINYLM_EXPECT_ISAS unset, levels not checked against the CPU model\n");
  }
  CHECK(!tinylm::available_isas().empty() && tinylm::available_isas().front() == "scalar",
        "scalar must always be available, got %s", available.c_str());
  // The best available level is the default active one (TINYLM_ISA aside).
  if (std::getenv("TINYLM_ISA") == nullptr)
    CHECK(tinylm::active_isa() == tinylm::available_isas().back(), "active %s, best %s",
          tinylm::active_isa().c_str(), tinylm::available_isas().back().c_str());
}

TEST(runtime_features_imply_their_prerequisites) {
  using namespace tinylm;
  const uint32_t f = cpu_features();
  const std::pair<uint32_t, uint32_t> implies[] = {
      {kAVX2, kSSE41},        {kAVX512, kAVX2},   {kAVX512VNNI, kAVX512},
      {kAVXVNNI, kAVX2},      {kDotProd, kNEON},  {kI8MM, kDotProd}};
  for (auto [feature, needs] : implies)
    CHECK(!(f & feature) || (f & needs), "feature bit %#x reported without %#x", feature, needs);
  for (const IsaLevel& level : isa_levels()) {
    const auto avail = available_isas();
    const bool listed = std::find(avail.begin(), avail.end(), level.name) != avail.end();
    CHECK(listed == ((level.features & ~f) == 0), "level %s listed=%d but features %#x of %#x",
          level.name, int(listed), level.features, f);
  }
}

TEST(runtime_detected_features_execute) {
  // A feature reported but not executable would die here with SIGILL.
  run_probes(tinylm::cpu_features());
}

TEST(runtime_set_isa_switches_and_refuses) {
  KeepIsa keep;
  const auto avail = tinylm::available_isas();
  for (const IsaLevel& level : tinylm::isa_levels()) {
    const bool ok = std::find(avail.begin(), avail.end(), level.name) != avail.end();
    try {
      tinylm::set_isa(level.name);
      CHECK(ok, "set_isa(%s) accepted a level this CPU lacks", level.name);
      CHECK(tinylm::active_isa() == level.name, "active %s after set_isa(%s)",
            tinylm::active_isa().c_str(), level.name);
      CHECK(tinylm::active_features() == level.features, "features %#x for %s, want %#x",
            tinylm::active_features(), level.name, level.features);
    } catch (const std::invalid_argument& e) {
      CHECK(!ok, "set_isa(%s) refused an available level: %s", level.name, e.what());
      CHECK(std::string(e.what()).find("not supported") != std::string::npos, "message: %s",
            e.what());
    }
  }
  bool threw = false;
  try {
    tinylm::set_isa("sse9");
  } catch (const std::invalid_argument& e) {
    threw = true;
    CHECK(std::string(e.what()).find("available: scalar") != std::string::npos,
          "the message should list the available levels: %s", e.what());
  }
  CHECK(threw, "set_isa(\"sse9\") did not throw");
}

TEST(runtime_tinylm_isa_env_caps_the_level) {
  KeepIsa keep;
  const char* saved = std::getenv("TINYLM_ISA");
  const std::string saved_value = saved ? saved : "";
  setenv("TINYLM_ISA", "scalar", 1);
  tinylm::init_isa_from_env();
  CHECK(tinylm::active_isa() == "scalar" && tinylm::active_features() == 0, "active %s",
        tinylm::active_isa().c_str());
  setenv("TINYLM_ISA", "bogus", 1);
  bool threw = false;
  try {
    tinylm::init_isa_from_env();
  } catch (const std::invalid_argument& e) {
    threw = std::string(e.what()).find("TINYLM_ISA=bogus") != std::string::npos;
  }
  CHECK(threw, "TINYLM_ISA=bogus must throw naming the variable");
  if (saved) setenv("TINYLM_ISA", saved_value.c_str(), 1); else unsetenv("TINYLM_ISA");
}

// ------------------------------------------------------------ thread pool

namespace {

struct Range {
  int64_t begin, end;
  bool operator<(const Range& o) const { return begin < o.begin; }
};

// Runs parallel_for(n, grain) recording every index and every range it was given, and
// checks: each index exactly once, ranges disjoint and non-empty, and every range but
// the last at least `grain` long.
void check_cover(int64_t n, int64_t grain) {
  std::vector<std::atomic<int>> hits(size_t(std::max<int64_t>(n, 0)));
  std::mutex mutex;
  std::vector<Range> ranges;
  tinylm::parallel_for(n, grain, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) hits[size_t(i)].fetch_add(1);
    std::lock_guard<std::mutex> lock(mutex);
    ranges.push_back({begin, end});
  });
  const int threads = tinylm::num_threads();
  if (n <= 0) {
    CHECK(ranges.empty(), "n=%lld: fn called %zu times", (long long)n, ranges.size());
    return;
  }
  int bad = 0;
  for (int64_t i = 0; i < n; ++i) bad += hits[size_t(i)].load() != 1;
  CHECK(bad == 0, "threads=%d n=%lld grain=%lld: %d indices not visited exactly once", threads,
        (long long)n, (long long)grain, bad);
  std::sort(ranges.begin(), ranges.end());
  int64_t expect_begin = 0;
  for (size_t r = 0; r < ranges.size(); ++r) {
    const Range& range = ranges[r];
    CHECK(range.begin == expect_begin && range.end > range.begin,
          "threads=%d n=%lld: range [%lld,%lld) after %lld", threads, (long long)n,
          (long long)range.begin, (long long)range.end, (long long)expect_begin);
    if (r + 1 < ranges.size())
      CHECK(range.end - range.begin >= grain, "threads=%d n=%lld grain=%lld: range of %lld",
            threads, (long long)n, (long long)grain, (long long)(range.end - range.begin));
    expect_begin = range.end;
  }
  CHECK(expect_begin == n, "ranges end at %lld, n=%lld", (long long)expect_begin, (long long)n);
}

// A loop that runs until the team is done, as a decode call's does, ends once a member
// fails: the others see broken() after their wait and leave (without the check they
// would loop on forever past a barrier that no longer waits). A member may see it right
// after the last wait that all completed (the thrower fails after it), never earlier.
TEST(runtime_barrier_broken_ends_an_open_loop) {
  KeepThreads keep;
  tinylm::set_num_threads(3);
  for (int thrower : {0, 2}) {
    std::atomic<int> left{0}, broken_early{0};
    std::string message;
    try {
      tinylm::run_team(3, [&](int t, int, tinylm::Barrier& barrier) {
        for (int i = 0; i < 1000; ++i) {  // (bounded: a broken() that never says so fails)
          if (t == thrower && i == 7) throw std::runtime_error("member " + std::to_string(t));
          barrier.wait();
          if (barrier.broken()) {
            broken_early += i < 6;
            ++left;
            return;
          }
        }
      });
    } catch (const std::runtime_error& e) {
      message = e.what();
    }
    CHECK(message == "member " + std::to_string(thrower), "thrower %d: caught '%s'", thrower,
          message.c_str());
    CHECK(left.load() == 2 && broken_early.load() == 0,
          "thrower %d: %d members left, %d saw the barrier broken before it was", thrower,
          left.load(), broken_early.load());
  }
}

}  // namespace

TEST(runtime_parallel_for_covers_every_index_once) {
  KeepThreads keep;
  for (int threads : {1, 2, 3, 5}) {
    tinylm::set_num_threads(threads);
    CHECK(tinylm::num_threads() == threads, "num_threads %d after set_num_threads(%d)",
          tinylm::num_threads(), threads);
    for (int64_t n : {-3, 0, 1, 2, 3, 17, 1000, 65537})
      for (int64_t grain : {int64_t(0), int64_t(1), int64_t(7), n, 2 * n + 1}) check_cover(n, grain);
  }
}

TEST(runtime_parallel_for_uses_several_threads) {
  KeepThreads keep;
  tinylm::set_num_threads(2);
  // Two chunks that each wait for the other: only two threads working at once finish
  // both promptly. One thread alone would time out on the first chunk.
  std::atomic<int> arrived{0};
  std::mutex mutex;
  std::set<std::thread::id> ids;
  bool timed_out = false;
  tinylm::parallel_for(2, 1, [&](int64_t, int64_t) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      ids.insert(std::this_thread::get_id());
    }
    arrived.fetch_add(1);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (arrived.load() < 2) {
      if (std::chrono::steady_clock::now() > deadline) {
        std::lock_guard<std::mutex> lock(mutex);
        timed_out = true;
        return;
      }
      std::this_thread::yield();
    }
  });
  CHECK(!timed_out && ids.size() == 2, "chunks ran on %zu threads (timed out: %d)", ids.size(),
        int(timed_out));
}

// Each thread starts on its own contiguous share of the chunks and helps others from the
// far end of theirs, so along the index order the owner changes at most twice with 2
// threads (caller [0, a) + [b, n), worker [a, b)), whatever the timing. Chunks handed
// out in turn would switch owner at almost every chunk.
TEST(runtime_parallel_for_gives_threads_contiguous_shares) {
  KeepThreads keep;
  tinylm::set_num_threads(2);
  for (int job = 0; job < 200; ++job) {
    std::vector<std::thread::id> owner(64);
    tinylm::parallel_for(64, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) owner[size_t(i)] = std::this_thread::get_id();
      const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(20);
      while (std::chrono::steady_clock::now() < until) {}  // equal work per chunk
    });
    int switches = 0;
    for (size_t i = 1; i < owner.size(); ++i) switches += owner[i] != owner[i - 1];
    CHECK(switches <= 2, "job %d: the owner changes %d times along the indices", job, switches);
    if (switches > 2) return;
  }
}

// Workers wait awake for a while after a job (the pool's kSpin), then sleep: a job
// that comes back-to-back and one that comes after the workers fell asleep both get
// every thread, and many jobs in a row each cover their range exactly once.
TEST(runtime_parallel_for_awake_and_after_sleeping) {
  KeepThreads keep;
  tinylm::set_num_threads(3);
  for (int pause_ms : {0, 0, 200, 0, 200}) {
    std::this_thread::sleep_for(std::chrono::milliseconds(pause_ms));
    std::atomic<int> arrived{0};
    std::atomic<bool> timed_out{false};
    tinylm::parallel_for(3, 1, [&](int64_t, int64_t) {  // three chunks that wait for each other
      arrived.fetch_add(1);
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
      while (arrived.load() < 3) {
        if (std::chrono::steady_clock::now() > deadline) {
          timed_out = true;
          return;
        }
        std::this_thread::yield();
      }
    });
    CHECK(!timed_out.load(), "after a %d ms pause, the three chunks did not run at once", pause_ms);
  }
  std::vector<std::atomic<int>> hits(64);
  for (int job = 0; job < 20000; ++job)
    tinylm::parallel_for(64, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) hits[size_t(i)].fetch_add(1);
    });
  int bad = 0;
  for (auto& h : hits) bad += h.load() != 20000;
  CHECK(bad == 0, "%d of 64 indices not visited once per job in 20000 jobs", bad);
}

TEST(runtime_nested_parallel_for_runs_inline) {
  KeepThreads keep;
  tinylm::set_num_threads(3);
  constexpr int kOuter = 9, kInner = 101;
  std::vector<std::atomic<int>> hits(kOuter * kInner);
  std::atomic<int> foreign{0};  // inner calls made on another thread than their outer call
  tinylm::parallel_for(kOuter, 1, [&](int64_t ob, int64_t oe) {
    const auto outer_thread = std::this_thread::get_id();
    for (int64_t o = ob; o < oe; ++o)
      tinylm::parallel_for(kInner, 1, [&](int64_t ib, int64_t ie) {
        if (std::this_thread::get_id() != outer_thread) foreign.fetch_add(1);
        for (int64_t i = ib; i < ie; ++i) hits[size_t(o * kInner + i)].fetch_add(1);
      });
  });
  int bad = 0;
  for (auto& h : hits) bad += h.load() != 1;
  CHECK(bad == 0, "%d of %d nested indices not visited exactly once", bad, kOuter * kInner);
  CHECK(foreign.load() == 0, "%d inner ranges left their outer thread", foreign.load());
}

TEST(runtime_parallel_for_from_several_callers) {
  KeepThreads keep;
  tinylm::set_num_threads(2);
  // Independent threads (like Python threads with the GIL released) share the pool.
  constexpr int kCallers = 3, kRounds = 40, kN = 513;
  std::vector<std::vector<std::atomic<int>>> hits(kCallers);
  for (auto& h : hits) h = std::vector<std::atomic<int>>(kN);
  std::vector<std::thread> callers;
  for (int c = 0; c < kCallers; ++c)
    callers.emplace_back([&, c] {
      for (int r = 0; r < kRounds; ++r)
        tinylm::parallel_for(kN, 5, [&](int64_t b, int64_t e) {
          for (int64_t i = b; i < e; ++i) hits[c][size_t(i)].fetch_add(1);
        });
    });
  for (auto& t : callers) t.join();
  int bad = 0;
  for (auto& h : hits)
    for (auto& x : h) bad += x.load() != kRounds;
  CHECK(bad == 0, "%d indices not visited %d times", bad, kRounds);
}

TEST(runtime_set_num_threads) {
  KeepThreads keep;
  const unsigned cores = std::thread::hardware_concurrency();
  const int expect_default = cores == 0 ? 1 : int(cores);
  for (int n : {4, 1, 2, 2}) {
    tinylm::set_num_threads(n);
    CHECK(tinylm::num_threads() == n, "num_threads %d after set_num_threads(%d)",
          tinylm::num_threads(), n);
    check_cover(100, 1);
  }
  for (int n : {0, -1}) {
    tinylm::set_num_threads(n);
    CHECK(tinylm::num_threads() == expect_default, "set_num_threads(%d): %d threads, want %d",
          n, tinylm::num_threads(), expect_default);
  }
}

// A team runs fn once on each of its threads, with distinct indices, all at once (every
// member waits at the barrier for the others), as many as asked up to the pool's size.
TEST(runtime_run_team_runs_each_member_once) {
  KeepThreads keep;
  tinylm::set_num_threads(3);
  for (int asked : {1, 2, 3, 5}) {
    const int want = std::min(asked, 3);
    std::vector<std::atomic<int>> runs(8);
    std::atomic<int> bad_size{0};
    std::set<std::thread::id> ids;
    std::mutex mutex;
    tinylm::run_team(asked, [&](int t, int threads, tinylm::Barrier& barrier) {
      if (threads != want) bad_size.fetch_add(1);
      runs[size_t(t)].fetch_add(1);
      {
        std::lock_guard<std::mutex> lock(mutex);
        ids.insert(std::this_thread::get_id());
      }
      barrier.wait();
    });
    int bad = 0;
    for (int t = 0; t < 8; ++t) bad += runs[size_t(t)].load() != (t < want ? 1 : 0);
    CHECK(bad == 0 && bad_size.load() == 0 && int(ids.size()) == want,
          "run_team(%d) on 3 threads: %d wrong run counts, %d wrong sizes, %zu threads", asked,
          bad, bad_size.load(), ids.size());
  }
  int nested_threads = 0;  // from inside a worker: one member, inline
  tinylm::parallel_for(2, 1, [&](int64_t b, int64_t) {
    if (b == 0) tinylm::run_team(3, [&](int, int threads, tinylm::Barrier&) { nested_threads = threads; });
  });
  CHECK(nested_threads == 1, "a team started inside a worker had %d members", nested_threads);
}

// No member passes a barrier before every member has reached it: each round, members
// write the round number, meet, and then all must see every member's write.
TEST(runtime_barrier_waits_for_every_member) {
  KeepThreads keep;
  tinylm::set_num_threads(3);
  constexpr int kRounds = 2000;
  std::vector<std::atomic<int>> seen(3);
  std::atomic<int> early{0};
  tinylm::run_team(3, [&](int t, int threads, tinylm::Barrier& barrier) {
    for (int round = 1; round <= kRounds; ++round) {
      if (t == round % threads) {  // one member late each round
        const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(5);
        while (std::chrono::steady_clock::now() < until) {}
      }
      seen[size_t(t)].store(round);
      barrier.wait();
      for (int u = 0; u < threads; ++u) early.fetch_add(seen[size_t(u)].load() < round);
      barrier.wait();  // nobody writes the next round before all have checked this one
    }
  });
  CHECK(early.load() == 0, "%d reads after a barrier missed a member's write", early.load());
}

// A member far later than the barrier's spin: the one waiting for it sleeps rather than
// burn its core (a container's CPU quota is spent by whoever spins), and is woken when
// it comes. Fails with a barrier that yields until the phase changes: that waiter uses
// the whole wait of CPU.
TEST(runtime_barrier_sleeps_through_a_long_wait) {
  KeepThreads keep;
  tinylm::set_num_threads(2);
  constexpr auto kLate = std::chrono::milliseconds(60);
  std::atomic<bool> arrived{false}, passed_early{false};
  double waiter_cpu_ms = -1;
  auto thread_cpu_ms = [] {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
  };
  for (int round = 0; round < 3; ++round) {
    tinylm::run_team(2, [&](int t, int, tinylm::Barrier& barrier) {
      if (t == 1) {
        std::this_thread::sleep_for(kLate);
        arrived.store(true);
        barrier.wait();
      } else {
        const double before = thread_cpu_ms();
        barrier.wait();
        waiter_cpu_ms = thread_cpu_ms() - before;
        if (!arrived.load()) passed_early.store(true);
      }
    });
    CHECK(!passed_early.load(), "round %d: the waiter passed before the late member came", round);
    CHECK(waiter_cpu_ms >= 0 && waiter_cpu_ms < 20, "round %d: the waiter used %.1f ms of CPU "
          "waiting %lld ms", round, waiter_cpu_ms, (long long)kLate.count());
    arrived.store(false);
  }
}

// Fails the test run, naming `test`, once `progress` has not moved for 10 s: a lost
// wake-up stalls a team for good, while a slow or loaded machine only slows it.
class StallWatchdog {
 public:
  StallWatchdog(const char* test, const std::atomic<int>& progress, int total)
      : thread_([=, &progress] { watch(test, progress, total); }) {}
  ~StallWatchdog() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      done_ = true;
    }
    finished_.notify_one();
    thread_.join();
  }

 private:
  void watch(const char* test, const std::atomic<int>& progress, int total) {
    std::unique_lock<std::mutex> lock(mutex_);
    int seen = -1;
    while (!finished_.wait_for(lock, std::chrono::seconds(10), [this] { return done_; })) {
      if (progress.load() == seen) {
        std::fprintf(stderr, "%s: stalled after %d of %d steps (a lost wake-up)\n", test, seen,
                     total);
        std::_Exit(1);
      }
      seen = progress.load();
    }
  }

  std::mutex mutex_;
  std::condition_variable finished_;
  bool done_ = false;
  std::thread thread_;  // last: starts once the members above exist
};

// Waits `late` microseconds without sleeping (a sleep would overshoot by far more).
void busy_wait_us(int late) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(late);
  while (std::chrono::steady_clock::now() < until) {}
}

// A member arriving just as the others give up spinning and go to sleep must still wake
// them. The last member's "phase moved on" and a sleeper's "I am asleep" are a Dekker
// pair: each writes its own flag, then reads the other's, and one of them must see the
// other's write. Here one member a round is late by 30-90 us (the barrier spins ~50 us
// before it sleeps), so thousands of rounds land in that window; the watchdog turns a
// lost wake-up into a failure that names it. Under qemu-aarch64, whose translation lets
// a seq_cst load pass an earlier seq_cst store, 2 of 4 runs stalled with the barrier
// writing its phase by a plain store (0 of 10 with threads.cpp's RMW).
TEST(runtime_barrier_wakes_members_going_to_sleep) {
  KeepThreads keep;
  tinylm::set_num_threads(3);
  constexpr int kThreads = 3, kRounds = 20000;
  std::atomic<int> arrivals{0}, early{0};
  {
    StallWatchdog watchdog("runtime_barrier_wakes_members_going_to_sleep", arrivals,
                           kThreads * kRounds);
    tinylm::run_team(kThreads, [&](int t, int threads, tinylm::Barrier& barrier) {
      for (int round = 0; round < kRounds; ++round) {
        if (t == round % threads) busy_wait_us(30 + (round * 7919) % 61);
        arrivals.fetch_add(1);
        barrier.wait();
        early.fetch_add(arrivals.load() < threads * (round + 1));  // passed before all came
      }
    });
  }
  CHECK(early.load() == 0, "%d members passed a barrier before every member reached it",
        early.load());
}

// The same for a barrier broken (a member failed) just as the others go to sleep: the
// break must wake them, so the team ends. The breaker is late by 45-75 us, a narrower
// window than above: with break_() setting its flag by a plain store, 2-3 of 6 runs under
// qemu-aarch64 stalled (1 of 4 with 30-90 us); 10 of 10 passed with the exchange.
TEST(runtime_barrier_break_wakes_members_going_to_sleep) {
  KeepThreads keep;
  tinylm::set_num_threads(3);
  constexpr int kTeams = 20000;
  std::atomic<int> teams{0}, passed_unbroken{0};
  {
    StallWatchdog watchdog("runtime_barrier_break_wakes_members_going_to_sleep", teams, kTeams);
    for (int i = 0; i < kTeams; ++i) {
      std::atomic<bool> broken{false};
      tinylm::run_team(3, [&](int t, int, tinylm::Barrier& barrier) {
        barrier.wait();  // all start together
        if (t == i % 3) {
          busy_wait_us(45 + (i * 7919) % 31);
          broken.store(true);
          barrier.break_();
        } else {
          barrier.wait();  // the breaker never comes
          passed_unbroken.fetch_add(!broken.load());
        }
      });
      teams.fetch_add(1);
    }
  }
  CHECK(passed_unbroken.load() == 0, "%d waits returned before the barrier was broken",
        passed_unbroken.load());
}

// An exception in a parallel_for, on the caller's share or a worker's, reaches the
// caller once the job is done, and the caller's next parallel_for runs on the pool again
// (it ran inline for good when an exception left the caller marked as a worker).
TEST(runtime_parallel_for_rethrows_on_the_caller) {
  KeepThreads keep;
  tinylm::set_num_threads(3);
  for (int64_t bad : {0, 500, 999}) {  // the caller's first chunk, a worker's, the last
    std::string message;
    try {
      tinylm::parallel_for(1000, 1, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i)
          if (i == bad) throw std::runtime_error("element " + std::to_string(i));
      });
    } catch (const std::runtime_error& e) {
      message = e.what();
    }
    CHECK(message == "element " + std::to_string(bad), "element %lld threw: caught '%s'",
          (long long)bad, message.c_str());
    std::mutex mutex;
    std::set<std::thread::id> threads;
    tinylm::parallel_for(24, 1, [&](int64_t b, int64_t e) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2 * (e - b)));
      std::lock_guard<std::mutex> lock(mutex);
      threads.insert(std::this_thread::get_id());
    });
    CHECK(threads.size() >= 2, "after element %lld threw, a parallel_for ran on %zu thread(s)",
          (long long)bad, threads.size());
  }
}

// A member that throws does not leave the others waiting at the barrier or escape its
// thread: run_team rethrows it on the caller, and the pool works on afterwards. The
// thrower is late enough that the others have gone to sleep at the barrier, so breaking
// it must wake them.
TEST(runtime_run_team_rethrows_a_member_exception) {
  KeepThreads keep;
  tinylm::set_num_threads(3);
  for (int thrower : {0, 1, 2}) {
    std::string message;
    try {
      tinylm::run_team(3, [&](int t, int, tinylm::Barrier& barrier) {
        barrier.wait();
        if (t == thrower) {
          std::this_thread::sleep_for(std::chrono::milliseconds(5));
          throw std::runtime_error("member " + std::to_string(t));
        }
        for (int i = 0; i < 100; ++i) barrier.wait();  // the thrower never comes
      });
    } catch (const std::runtime_error& e) {
      message = e.what();
    }
    CHECK(message == "member " + std::to_string(thrower), "thrower %d: caught '%s'", thrower,
          message.c_str());
    std::vector<std::atomic<int>> hits(1000);
    tinylm::parallel_for(1000, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) hits[size_t(i)].fetch_add(1);
    });
    int bad = 0;
    for (auto& h : hits) bad += h.load() != 1;
    CHECK(bad == 0, "after member %d threw: %d indices not visited once", thrower, bad);
  }
}
