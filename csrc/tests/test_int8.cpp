// Native tests of the int8 kernels: every kernel this CPU can run (or, in a SIMDe build
// or with TINYLM_INT8_ALL_KERNELS=1, every kernel compiled in) must return exactly the
// int32 sums of a plain triple loop, on odd sizes, K off every vector width, zero rows
// and +-127 extremes. Compiles on x86-64, AArch64 and ARMv7.
#include <cmath>
#include <cstdlib>
#include <string>
#include <vector>

#include "../cpu.h"
#include "../int8/int8.h"
#include "../int8/kernels.h"
#include "../threads.h"
#include "check.h"

namespace {

using namespace tinylm;

struct Rng {  // xorshift64: inputs are runtime data, so nothing can be constant-folded
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint64_t next() {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
  }
  int8_t i8() { return int8_t(int(next() % 255) - 127); }  // [-127, 127]
  float f32() { return float(int64_t(next() % 2000001) - 1000000) / 1000000.0f; }
};

enum class Fill { kRandom, kMax, kMin, kAlternating, kZeroRows };

std::vector<int8_t> make(int64_t rows, int64_t cols, Fill fill, Rng& rng) {
  std::vector<int8_t> v(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      int8_t x = rng.i8();
      if (fill == Fill::kMax) x = 127;
      if (fill == Fill::kMin) x = -127;
      if (fill == Fill::kAlternating) x = (r + c) % 2 ? 127 : -127;
      if (fill == Fill::kZeroRows && r % 2 == 0) x = 0;
      v[size_t(r * cols + c)] = x;
    }
  return v;
}

std::vector<int32_t> reference(const std::vector<int8_t>& a, const std::vector<int8_t>& b,
                               int64_t M, int64_t N, int64_t K) {
  std::vector<int32_t> c(static_cast<size_t>(M * N));
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      int64_t s = 0;
      for (int64_t k = 0; k < K; ++k) s += int64_t(a[size_t(m * K + k)]) * b[size_t(n * K + k)];
      c[size_t(m * N + n)] = int32_t(s);
    }
  return c;
}

bool force_all_kernels() {
#if defined(TINYLM_SIMDE)
  return true;
#else
  const char* env = std::getenv("TINYLM_INT8_ALL_KERNELS");
  return env != nullptr && std::string(env) == "1";
#endif
}

std::vector<int8::KernelInfo> runnable_kernels() {
  std::vector<int8::KernelInfo> out;
  for (const auto& k : int8::kernels())
    if (force_all_kernels() || (k.features & ~cpu_features()) == 0) out.push_back(k);
  return out;
}

// Compares one kernel with the reference on one shape; returns false on the first
// mismatch (reported once, not per element).
bool check_shape(const int8::KernelInfo& kernel, int64_t M, int64_t N, int64_t K, Fill fa,
                 Fill fb, Rng& rng) {
  const auto a = make(M, K, fa, rng), b = make(N, K, fb, rng);
  const auto want = reference(a, b, M, N, K);
  std::vector<int32_t> got(size_t(M * N), 12345);
  int8::gemm_i32_with(kernel, a.data(), b.data(), got.data(), M, N, K);
  for (size_t i = 0; i < got.size(); ++i)
    if (got[i] != want[i]) {
      CHECK(got[i] == want[i], "kernel %s M=%lld N=%lld K=%lld fill=%d/%d: c[%zu] = %d, want %d",
            kernel.name, (long long)M, (long long)N, (long long)K, int(fa), int(fb), i,
            got[i], want[i]);
      return false;
    }
  return true;
}

TEST(int8_kernels_match_reference) {
  const int64_t Ms[] = {1, 2, 3, 4, 5, 9};
  const int64_t Ns[] = {1, 2, 3, 4, 5, 7, 9};
  const int64_t Ks[] = {1, 3, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129, 200};
  for (const auto& kernel : runnable_kernels()) {
    std::printf("  int8 kernel %s\n", kernel.name);
    Rng rng(1);
    for (int64_t M : Ms)
      for (int64_t N : Ns)
        for (int64_t K : Ks)
          if (!check_shape(kernel, M, N, K, Fill::kRandom, Fill::kRandom, rng)) goto next;
  next:;
  }
}

TEST(int8_kernels_extremes) {
  const Fill fills[] = {Fill::kRandom, Fill::kMax, Fill::kMin, Fill::kAlternating,
                        Fill::kZeroRows};
  for (const auto& kernel : runnable_kernels()) {
    Rng rng(2);
    for (Fill fa : fills)
      for (Fill fb : fills) {
        check_shape(kernel, 5, 6, 77, fa, fb, rng);
        check_shape(kernel, 1, 3, 4096, fa, fb, rng);
      }
    // The largest K the bindings accept: 127*127*65536 still fits int32, and kernels that
    // bias w to unsigned must get the right answer even though their raw sum wraps.
    check_shape(kernel, 1, 2, 65536, Fill::kMax, Fill::kMax, rng);
    check_shape(kernel, 2, 2, 65536, Fill::kMin, Fill::kMax, rng);
  }
}

TEST(int8_kernels_packed_panels) {  // M >= panels::kMinRows: the packed-weight form
  const int64_t Ms[] = {8, 13, 31};
  const int64_t Ns[] = {1, 4, 15, 16, 17, 47, 64, 65, 100};
  const int64_t Ks[] = {1, 3, 4, 5, 64, 127, 200};
  for (const auto& kernel : runnable_kernels()) {
    Rng rng(4);
    for (int64_t M : Ms)
      for (int64_t N : Ns)
        for (int64_t K : Ks)
          if (!check_shape(kernel, M, N, K, Fill::kRandom, Fill::kRandom, rng)) goto next;
    check_shape(kernel, 9, 5, 65536, Fill::kMin, Fill::kMax, rng);  // biased sums wrap
  next:;
  }
}

TEST(int8_kernels_large_tiles) {  // many full tiles plus edges, and a threaded split
  for (const auto& kernel : runnable_kernels()) {
    Rng rng(3);
    check_shape(kernel, 67, 70, 300, Fill::kRandom, Fill::kRandom, rng);
  }
}

TEST(int8_dispatch_follows_active_level) {
  const std::string saved = active_isa();
  for (const auto& isa : available_isas()) {
    set_isa(isa);
    const std::string name = int8::active_kernel();
    bool found = false;
    for (const auto& k : int8::kernels())
      if (name == k.name) {
        found = true;
        CHECK((k.features & ~active_features()) == 0, "level %s picked kernel %s it cannot run",
              isa.c_str(), k.name);
      }
    CHECK(found, "level %s: unknown kernel %s", isa.c_str(), name.c_str());
    Rng rng(4);
    const int64_t M = 3, N = 11, K = 70;
    const auto a = make(M, K, Fill::kRandom, rng), b = make(N, K, Fill::kRandom, rng);
    std::vector<int32_t> got(static_cast<size_t>(M * N));
    int8::gemm_i32(a.data(), b.data(), got.data(), M, N, K);
    CHECK(got == reference(a, b, M, N, K), "level %s (kernel %s) differs from reference",
          isa.c_str(), name.c_str());
  }
  CHECK(int8::active_kernel() != "scalar" || available_isas().size() == 1 ||
            available_isas().back() == "scalar",
        "best level should not fall back to the scalar kernel");
  set_isa(saved);
}

TEST(int8_quantize_rows) {
  Rng rng(5);
  const int64_t M = 4, K = 37, stride = 40;
  std::vector<float> x(static_cast<size_t>(M * K));
  for (auto& v : x) v = rng.f32() * 3.0f;
  for (int64_t k = 0; k < K; ++k) x[size_t(2 * K + k)] = 0.0f;  // an all-zero row
  x[5] = -7.5f;                                                  // row 0's max is negative
  std::vector<int8_t> q(size_t(M * stride), 99);
  std::vector<float> scale(static_cast<size_t>(M));
  int8::quantize_rows(x.data(), M, K, q.data(), stride, scale.data());
  CHECK(scale[0] == 7.5f / 127.0f, "scale[0] = %g", double(scale[0]));
  CHECK(q[5] == -127, "the largest magnitude maps to -127, got %d", int(q[5]));
  CHECK(scale[2] == 0.0f, "zero row scale %g", double(scale[2]));
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t k = 0; k < K; ++k) {
      const int8_t v = q[size_t(m * stride + k)];
      CHECK(v >= -127 && v <= 127, "q out of range: %d", int(v));
      if (scale[m] > 0) {  // error within half a step
        const float err = std::fabs(float(v) * scale[m] - x[size_t(m * K + k)]);
        CHECK(err <= 0.5f * scale[m] * 1.0001f, "row %lld col %lld error %g > half step %g",
              (long long)m, (long long)k, double(err), double(0.5f * scale[m]));
      } else {
        CHECK(v == 0, "zero row gives %d", int(v));
      }
    }
    CHECK(q[size_t(m * stride + K)] == 99, "quantize_rows wrote past K");
  }
}

// The sums of the quantized rows that quantize_rows adds up on the side (the vector
// quantizer as it goes), on every level: rows long enough for its 32-value blocks,
// 8-value groups and a scalar tail, plus an all-zero row and one with NaN.
TEST(int8_quantize_rows_sums) {
  const std::string saved = active_isa();
  for (const auto& isa : available_isas()) {
    set_isa(isa);
    for (int64_t K : {5, 37, 77, 344}) {
      Rng rng(static_cast<uint64_t>(K));
      const int64_t M = 4;
      std::vector<float> x(static_cast<size_t>(M * K));
      for (auto& v : x) v = rng.f32() * 2.0f;
      for (int64_t k = 0; k < K; ++k) x[size_t(2 * K + k)] = 0.0f;
      x[size_t(3 * K + K / 2)] = NAN;
      std::vector<int8_t> q(static_cast<size_t>(M * K));
      std::vector<float> scale(static_cast<size_t>(M));
      std::vector<int32_t> sums(static_cast<size_t>(M), 12345);
      int8::quantize_rows(x.data(), M, K, q.data(), K, scale.data(), sums.data());
      for (int64_t m = 0; m < M; ++m) {
        int32_t want = 0;
        for (int64_t k = 0; k < K; ++k) want += q[size_t(m * K + k)];
        CHECK(sums[size_t(m)] == want, "level %s K %lld row %lld: sum %d, want %d", isa.c_str(),
              (long long)K, (long long)m, sums[size_t(m)], want);
      }
    }
  }
  set_isa(saved);
}

TEST(int8_linear_matches_int32_reference) {
  Rng rng(6);
  for (int64_t M : {1, 6}) {
    const int64_t N = 13, K = 75;
    std::vector<float> x(static_cast<size_t>(M * K)), ws(static_cast<size_t>(N)), y(static_cast<size_t>(M * N));
    for (auto& v : x) v = rng.f32();
    for (auto& v : ws) v = 0.01f + std::fabs(rng.f32()) * 0.01f;
    const auto w = make(N, K, Fill::kRandom, rng);
    int8::linear(x.data(), M, K, w.data(), ws.data(), N, y.data());
    std::vector<int8_t> xq(static_cast<size_t>(M * K));
    std::vector<float> xs(static_cast<size_t>(M));
    int8::quantize_rows(x.data(), M, K, xq.data(), K, xs.data());
    const auto c = reference(xq, w, M, N, K);
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        const float want = float(c[size_t(m * N + n)]) * (xs[size_t(m)] * ws[size_t(n)]);
        CHECK(y[size_t(m * N + n)] == want, "linear M=%lld y[%lld,%lld] = %g, want %g",
              (long long)M, (long long)m, (long long)n, double(y[size_t(m * N + n)]),
              double(want));
      }
  }
}

TEST(int8_threads_do_not_change_results) {
  Rng rng(7);
  const int64_t M = 64, N = 203, K = 513;  // big enough to be split over threads
  const auto a = make(M, K, Fill::kRandom, rng), b = make(N, K, Fill::kRandom, rng);
  const int saved = num_threads();
  std::vector<int32_t> one(static_cast<size_t>(M * N)), two(static_cast<size_t>(M * N));
  set_num_threads(1);
  int8::gemm_i32(a.data(), b.data(), one.data(), M, N, K);
  set_num_threads(3);
  int8::gemm_i32(a.data(), b.data(), two.data(), M, N, K);
  set_num_threads(saved);
  CHECK(one == two, "1 and 3 threads differ");
  CHECK(one == reference(a, b, M, N, K), "threaded result differs from reference");
}

// The active level's read (on ARM and x86 without AVX2, the portable one), over every
// size of tail from an odd word, and over more words than one thread's chunk.
TEST(int8_read_checksum) {
  std::vector<uint64_t> v(100003);
  uint64_t want = 0;
  for (size_t i = 0; i < v.size(); ++i) want += (v[i] = i * 0x9E3779B97F4A7C15ull);
  CHECK(int8::read_checksum(v.data(), int64_t(v.size())) == want, "checksum differs");
  for (int64_t n = 0; n < 150; ++n) {
    uint64_t part = 0;
    for (int64_t i = 0; i < n; ++i) part += v[size_t(1 + i)];
    CHECK(int8::read_checksum(v.data() + 1, n) == part, "%s read of %lld words",
          int8::read_path(), (long long)n);
  }
}

#if defined(__x86_64__) || defined(_M_X64)
// The wide reads themselves, whatever the active level (under SIMDe, the AVX-512 one on
// any CPU), over every size of tail and from an odd word.
TEST(int8_read_words_kernels) {
  std::vector<uint64_t> v(200);
  for (size_t i = 0; i < v.size(); ++i) v[i] = (i + 1) * 0x9E3779B97F4A7C15ull;
  std::vector<std::pair<const char*, uint64_t (*)(const uint64_t*, int64_t)>> reads;
  if (force_all_kernels() || (cpu_features() & kAVX2)) reads.push_back({"avx2", int8::read_words_avx2});
  if (force_all_kernels() || (cpu_features() & kAVX512)) reads.push_back({"avx512", int8::read_words_avx512});
  for (const auto& [name, read] : reads)
    for (int64_t n = 0; n < 150; ++n) {
      uint64_t want = 0;
      for (int64_t i = 0; i < n; ++i) want += v[size_t(1 + i)];
      CHECK(read(v.data() + 1, n) == want, "%s read of %lld words", name, (long long)n);
    }
}
#endif

}  // namespace
