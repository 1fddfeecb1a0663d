// The experiment behind benchmarks/NOTES.md's "The ninth session: a machine without
// AVX-512": the decode step's
// int8 GEMV on a CPU whose only int8 products are AVX2's (the engine's kernel,
// csrc/engine/gemv_i8_avx2.cpp) against a 32-byte read of the same bytes, and against
// three other ways of forming the products, on one preset's matrices back to back, one
// thread. It also times the instructions involved on their own, to show which of them
// limit it. (The tenth session added the XOR form, the twelfth the weights in panels;
// NOTES.md says what they measured.)
//
// From the repository's root (one command):
//   g++ -O3 -std=c++17 -Icsrc -mavx2 -mfma -mf16c benchmarks/gemv_avx2.cpp
//       csrc/engine/gemv_i8_avx2.cpp csrc/engine/gemv_i8_ref.cpp csrc/int8/read_avx2.cpp
//       -o /tmp/gemv_avx2 && /tmp/gemv_avx2 small
#include <immintrin.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "engine/gemv_kernels.h"
#include "int8/kernels.h"
#include "int8/x86_reduce.h"

namespace {

struct Matrix {
  int64_t N, K;
  const int8_t* w;  // [N, K], as in the model file
};

// The engine's loop shape (four rows from the four quarters of the matrix, x prepared
// once for them, the four horizontal sums done together), for N a multiple of 4 (a row
// reads on to a whole vector, meeting x's zero padding; the engine takes its matrix's
// last rows apart, this does not need to), with the product of one vector of weights
// with x, and what the accumulator's lanes sum to, left to Dot.
template <class Dot>
void quarters(const Matrix& m, const int8_t* x, int32_t* c) {
  const int64_t q = m.N / 4, stride = q * m.K, vectors = (m.K + 31) / 32;
  const int32_t fix = Dot::correction(x, vectors);
  for (int64_t n = 0; n < q; ++n) {
    const int8_t* w = m.w + n * m.K;
    typename Dot::Acc a[4] = {};
    for (int64_t v = 0; v < vectors; ++v) {
      const typename Dot::X xv = Dot::prepare(x + 32 * v);
      for (int r = 0; r < 4; ++r) Dot::dot(a[r], w + r * stride + 32 * v, xv);
    }
    alignas(16) int32_t sums[4];
    _mm_store_si128(reinterpret_cast<__m128i*>(sums),
                    tinylm::int8::lane_sums4(Dot::lanes(a[0], vectors), Dot::lanes(a[1], vectors),
                                             Dot::lanes(a[2], vectors), Dot::lanes(a[3], vectors)));
    for (int r = 0; r < 4; ++r) c[n + r * q] = sums[r] + fix;
  }
}

// One multiply a vector: vpmaddubsw's int16 pair sums p taken into int32 without
// vpmaddwd. As an int32 lane, p ^ 0x8000 is hi * 65536 + lo + 32768 (hi, lo its signed
// halves), so with raw the sum of those and hi_sum the sum of p >> 16 (= hi),
// hi + lo summed = raw - 65535 * hi_sum - 32768 * vectors, lane by lane (exact mod 2^32).
struct OneMultiply {
  struct Acc {
    __m256i raw = _mm256_setzero_si256(), hi = _mm256_setzero_si256();
  };
  struct X {
    __m256i x, ax;
  };
  static X prepare(const int8_t* p) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return {x, _mm256_abs_epi8(x)};
  }
  static void dot(Acc& a, const int8_t* w, const X& x) {
    const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
    const __m256i p = _mm256_maddubs_epi16(x.ax, _mm256_sign_epi8(wv, x.x));
    a.raw = _mm256_add_epi32(a.raw, _mm256_xor_si256(p, _mm256_set1_epi32(0x8000)));
    a.hi = _mm256_add_epi32(a.hi, _mm256_srai_epi32(p, 16));
  }
  static __m256i lanes(const Acc& a, int64_t vectors) {
    const __m256i hi = _mm256_mullo_epi32(a.hi, _mm256_set1_epi32(65535));
    return _mm256_sub_epi32(_mm256_sub_epi32(a.raw, hi), _mm256_set1_epi32(int32_t(32768 * vectors)));
  }
  static int32_t correction(const int8_t*, int64_t) { return 0; }
};

// The sign trick with vpxor for vpsignb: w ^ m, m = (x < 0 ? -1 : 0), is w or -w - 1,
// so raw = sum x w - sum_{x < 0} |x|, a correction that depends on x alone. (w ^ m is
// in [-128, 126] for w in [-127, 127]: a pair sum is at most 2 * 127 * 128, no
// saturation.) The load folds into the xor, which runs on every vector ALU port.
struct Xor {
  using Acc = __m256i;
  struct X {
    __m256i ax, m;
  };
  static X prepare(const int8_t* p) {
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return {_mm256_abs_epi8(x), _mm256_cmpgt_epi8(_mm256_setzero_si256(), x)};
  }
  static void dot(Acc& a, const int8_t* w, const X& x) {
    const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
    const __m256i p = _mm256_maddubs_epi16(x.ax, _mm256_xor_si256(wv, x.m));
    a = _mm256_add_epi32(a, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
  }
  static __m256i lanes(const Acc& a, int64_t) { return a; }
  static int32_t correction(const int8_t* x, int64_t vectors) {
    int32_t s = 0;
    for (int64_t k = 0; k < 32 * vectors; ++k) s += x[k] < 0 ? -x[k] : 0;
    return s;
  }
};

// No vpmaddubsw and no sign trick: the weights sign-extended to int16 (vpmovsxbw) and
// multiplied by x's int16 with vpmaddwd.
struct Int16 {
  using Acc = __m256i;
  struct X {
    __m256i lo, hi;
  };
  static X prepare(const int8_t* p) {
    return {_mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))),
            _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16)))};
  }
  static void dot(Acc& a, const int8_t* w, const X& x) {
    const __m256i lo = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w)));
    const __m256i hi = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + 16)));
    a = _mm256_add_epi32(a, _mm256_add_epi32(_mm256_madd_epi16(lo, x.lo), _mm256_madd_epi16(hi, x.hi)));
  }
  static __m256i lanes(const Acc& a, int64_t) { return a; }
  static int32_t correction(const int8_t*, int64_t) { return 0; }
};


// The weights in panels (NOTES.md, "Next"): eight rows by four bytes of K to a vector,
// [N / 8][K / 4][8][4], so that x is broadcast four bytes at a time and each lane sums
// one row, with no horizontal sum; the sign trick as an XOR. Four panels at a time, and
// either from the four quarters of the matrix (four streams, as the engine reads rows)
// or adjacent ([N / 32][K / 4][32][4]: one stream). N is padded with zero rows to a
// multiple of 32 (`baby`'s 344 to 352); K must be a multiple of 4.
struct Panels {
  int64_t N, K;  // N padded
  const int8_t* p;
};

int64_t padded_rows(int64_t N) { return (N + 31) / 32 * 32; }

Panels to_panels(const Matrix& m, bool adjacent, int8_t* out) {
  const int64_t N = padded_rows(m.N), block = adjacent ? 32 : 8;
  int8_t* o = out;
  for (int64_t n0 = 0; n0 < N; n0 += block)
    for (int64_t g = 0; g < m.K / 4; ++g)
      for (int64_t n = n0; n < n0 + block; ++n, o += 4) {
        if (n < m.N) std::memcpy(o, m.w + n * m.K + 4 * g, 4);
        else std::memset(o, 0, 4);
      }
  return {N, m.K, out};
}

// x's |x| and sign masks, four bytes a group, to broadcast; and the XOR's correction
struct BroadcastX {
  std::vector<int32_t> ax, m;
  int32_t fix = 0;
};

BroadcastX broadcast_x(const int8_t* x, int64_t K) {
  BroadcastX b{std::vector<int32_t>(K / 4), std::vector<int32_t>(K / 4)};
  for (int64_t g = 0; g < K / 4; ++g) {
    uint8_t ax[4], m[4];
    for (int j = 0; j < 4; ++j) {
      const int8_t v = x[4 * g + j];
      ax[j] = uint8_t(v < 0 ? -v : v);
      m[j] = v < 0 ? 0xff : 0;
      b.fix += v < 0 ? -v : 0;
    }
    std::memcpy(&b.ax[g], ax, 4);
    std::memcpy(&b.m[g], m, 4);
  }
  return b;
}

inline __m256i panel_dot(__m256i acc, const int8_t* w, __m256i ax, __m256i m) {
  const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w));
  const __m256i p = _mm256_maddubs_epi16(ax, _mm256_xor_si256(wv, m));
  return _mm256_add_epi32(acc, _mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}

// step: bytes from one panel's vector to the next panel's (adjacent: 32; quarters: a
// quarter of the matrix); out: from one panel's results to the next's.
void gemv_panels(const Panels& P, bool adjacent, const BroadcastX& x, int32_t* c) {
  const int64_t groups = P.K / 4, q = P.N / 32;
  const int64_t step = adjacent ? 32 : q * 8 * P.K, advance = adjacent ? 128 : 32;
  for (int64_t i = 0; i < q; ++i) {
    const int8_t* w = P.p + i * (adjacent ? 32 : 8) * P.K;
    __m256i a[4] = {};
    for (int64_t g = 0; g < groups; ++g, w += advance) {
      const __m256i ax = _mm256_set1_epi32(x.ax[g]), m = _mm256_set1_epi32(x.m[g]);
      for (int j = 0; j < 4; ++j) a[j] = panel_dot(a[j], w + j * step, ax, m);
    }
    for (int j = 0; j < 4; ++j) {
      int32_t* out = c + (adjacent ? 32 * i + 8 * j : 8 * i + 8 * q * j);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out), _mm256_add_epi32(a[j], _mm256_set1_epi32(x.fix)));
    }
  }
}

template <class Fn>
double best_us(Fn&& fn, int reps) {
  double best = 1e9;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best * 1e6;
}

// Steps a nanosecond of step(i, a), which updates eight independent vectors a[0..7].
template <class Step>
double per_ns(Step step) {
  constexpr long kSteps = 25000000;
  __m256i a[8];
  for (int i = 0; i < 8; ++i) a[i] = _mm256_set1_epi32(i + 1);
  const auto t0 = std::chrono::steady_clock::now();
  for (long i = 0; i < kSteps; ++i) step(i, a);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  volatile int32_t sink = 0;
  for (const __m256i& v : a) sink = sink + _mm256_extract_epi32(v, 0);
  return 8.0 * kSteps / s / 1e9;
}

// One instruction, op(a, b), on each of the eight vectors.
template <class Op>
double instructions_per_ns(Op op) {
  const __m256i b = _mm256_set1_epi8(3);
  return per_ns([&](long, __m256i* a) {
    for (int j = 0; j < 8; ++j) a[j] = op(a[j], b);
  });
}

// The engine's product of 32 bytes (vpsignb, vpmaddubsw, vpmaddwd, vpaddd), or Xor's
// (vpxor for vpsignb), into each of the eight, formed as its loop forms them: the
// weights loaded (from 2 KB that stay in L1), only the add waiting on the product before.
double products_per_ns(bool xor_form) {
  alignas(32) static int8_t w[2048];
  for (int i = 0; i < 2048; ++i) w[i] = int8_t(i * 37 % 255 - 127);
  const __m256i x = _mm256_set1_epi8(-3), ax = _mm256_abs_epi8(x), ones = _mm256_set1_epi16(1);
  const __m256i m = _mm256_cmpgt_epi8(_mm256_setzero_si256(), x);
  return per_ns([&](long i, __m256i* a) {
    const int8_t* p = w + (i & 7) * 256;
    for (int j = 0; j < 8; ++j) {
      const __m256i wv = _mm256_load_si256(reinterpret_cast<const __m256i*>(p + 32 * j));
      const __m256i sw = xor_form ? _mm256_xor_si256(wv, m) : _mm256_sign_epi8(wv, x);
      a[j] = _mm256_add_epi32(a[j], _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sw), ones));
    }
  });
}

// Dependent 64-bit adds a nanosecond: the clock, in GHz, as near as a loop tells it.
double clock_ghz() {
  constexpr long kSteps = 100000000;
  long a = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (long i = 0; i < kSteps; ++i)
    asm volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0" : "+r"(a));
  return 4.0 * kSteps / std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx2")) {
    std::puts("needs a CPU with AVX2");
    return 1;
  }
  const std::string preset = argc > 1 ? argv[1] : "small";
  struct Shape { int64_t d, ff; int layers, reps; };
  const Shape s = preset == "baby"     ? Shape{128, 344, 4, 3000}
                  : preset == "medium" ? Shape{512, 1376, 8, 200}
                                       : Shape{288, 768, 6, 1000};
  // q, k, v, o, gate, up, down a layer, then the head (256 rows here, where the model
  // has 257: every matrix splits into quarters), one after another as in the file
  std::vector<std::pair<int64_t, int64_t>> shapes;
  for (int layer = 0; layer < s.layers; ++layer)
    for (auto nk : {std::pair<int64_t, int64_t>{s.d, s.d}, {s.d, s.d}, {s.d, s.d}, {s.d, s.d},
                    {s.ff, s.d}, {s.ff, s.d}, {s.d, s.ff}})
      shapes.push_back(nk);
  shapes.push_back({256, s.d});
  int64_t bytes = 0;
  for (auto [N, K] : shapes) bytes += N * K;
  std::vector<int8_t> buf(size_t(bytes) + 64);
  int8_t* base = buf.data() + (64 - uintptr_t(buf.data()) % 64) % 64;
  std::mt19937 rng(1);
  for (int64_t i = 0; i < bytes; ++i) base[i] = int8_t(int(rng() % 255) - 127);
  std::vector<Matrix> matrices;
  int64_t offset = 0;
  for (auto [N, K] : shapes) {
    matrices.push_back({N, K, base + offset});
    offset += N * K;
  }
  alignas(64) int8_t x[1408] = {};  // zero-padded to whole vectors, as the engine pads it
  for (int64_t k = 0; k < s.ff; ++k) x[k] = int8_t(int(rng() % 255) - 127);
  std::vector<int32_t> c(2048), want(2048);

  // the engine's kernel as a one-thread step runs it: prefetching only where the weights
  // fit in this core's L2 (Engine::share_of)
  const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
  const bool prefetch = bytes <= (l2 > 0 ? l2 : 1L << 20);
  std::printf("the engine's kernel %s software prefetch here\n", prefetch ? "with" : "without");
  auto engine = [&](const Matrix& m) {
    tinylm::engine::gemv_i8_avx2({m.w, m.N, m.K, x, 0, c.data(), prefetch}, 0, m.N);
  };
  // every variant must give the engine's products
  for (const Matrix& m : matrices) {
    engine(m);
    want = c;
    quarters<OneMultiply>(m, x, c.data());
    const bool one_ok = std::equal(c.begin(), c.begin() + m.N, want.begin());
    quarters<Xor>(m, x, c.data());
    const bool xor_ok = std::equal(c.begin(), c.begin() + m.N, want.begin());
    quarters<Int16>(m, x, c.data());
    if (!one_ok || !xor_ok || !std::equal(c.begin(), c.begin() + m.N, want.begin())) {
      std::puts("a variant's products differ from the engine's");
      return 1;
    }
  }

  // the same matrices in panels, both ways, with x broadcast once per width
  int64_t panel_bytes = 0;
  for (const Matrix& m : matrices) panel_bytes += padded_rows(m.N) * m.K;
  std::vector<int8_t> panel_bufs[2] = {std::vector<int8_t>(size_t(panel_bytes)),
                                       std::vector<int8_t>(size_t(panel_bytes))};
  std::vector<Panels> panels[2];
  for (int adjacent = 0; adjacent < 2; ++adjacent) {
    int8_t* o = panel_bufs[adjacent].data();
    for (const Matrix& m : matrices) {
      panels[adjacent].push_back(to_panels(m, adjacent, o));
      o += padded_rows(m.N) * m.K;
    }
  }
  const BroadcastX xd = broadcast_x(x, s.d), xff = broadcast_x(x, s.ff);
  auto run_panels = [&](int adjacent) {
    for (const Panels& P : panels[adjacent]) gemv_panels(P, adjacent, P.K == s.d ? xd : xff, c.data());
  };
  for (size_t i = 0; i < matrices.size(); ++i) {
    engine(matrices[i]);
    want = c;
    for (int adjacent = 0; adjacent < 2; ++adjacent) {
      std::fill(c.begin(), c.end(), -1);
      const Panels& P = panels[adjacent][i];
      gemv_panels(P, adjacent, P.K == s.d ? xd : xff, c.data());
      if (!std::equal(c.begin(), c.begin() + matrices[i].N, want.begin())) {
        std::puts("the panels' products differ from the engine's");
        return 1;
      }
    }
  }

  std::printf("clock ~%.2f GHz; instructions a ns, on eight independent vectors:\n", clock_ghz());
  std::printf("  vpmaddubsw %.2f, vpmaddwd %.2f, vpsignb %.2f, vpaddd %.2f, vpsrad %.2f\n",
              instructions_per_ns([](__m256i a, __m256i b) { return _mm256_maddubs_epi16(a, b); }),
              instructions_per_ns([](__m256i a, __m256i b) { return _mm256_madd_epi16(a, b); }),
              instructions_per_ns([](__m256i a, __m256i b) { return _mm256_sign_epi8(a, b); }),
              instructions_per_ns([](__m256i a, __m256i b) { return _mm256_add_epi32(a, b); }),
              instructions_per_ns([](__m256i a, __m256i) { return _mm256_srai_epi32(a, 3); }));
  std::printf("  the engine's product of 32 bytes (sign, maddubs, madd, add): %.2f; with xor "
              "for sign: %.2f\n", products_per_ns(false), products_per_ns(true));
  volatile uint64_t sink = 0;
  std::printf("%s (%.2f MB), best of %d passes over all %zu matrices, us:\n", preset.c_str(),
              double(bytes) / 1e6, s.reps, matrices.size());
  for (int round = 0; round < 3; ++round) {
    const double e = best_us([&] { for (const Matrix& m : matrices) engine(m); }, s.reps);
    const double read = best_us([&] {
      sink = sink + tinylm::int8::read_words_avx2(reinterpret_cast<const uint64_t*>(base), bytes / 8);
    }, s.reps);
    const double one = best_us([&] { for (const Matrix& m : matrices) quarters<OneMultiply>(m, x, c.data()); }, s.reps);
    const double xo = best_us([&] { for (const Matrix& m : matrices) quarters<Xor>(m, x, c.data()); }, s.reps);
    const double i16 = best_us([&] { for (const Matrix& m : matrices) quarters<Int16>(m, x, c.data()); }, s.reps);
    const double quarters_p = best_us([&] { run_panels(0); }, s.reps);
    const double adjacent_p = best_us([&] { run_panels(1); }, s.reps);
    const Matrix& first = matrices[0];
    const double hot = best_us([&] { engine(first); }, 10 * s.reps);
    const double hot_p = best_us([&] { gemv_panels(panels[0][0], false, xd, c.data()); }, 10 * s.reps);
    std::printf("  engine %.1f | read %.1f | xor %.1f | one multiply %.1f | int16 %.1f | panels: four "
                "streams %.1f, one stream %.1f || the first matrix alone, from L1/L2: %.2f us, %.1f "
                "GB/s (in panels %.2f us)\n", e, read, xo, one, i16, quarters_p, adjacent_p, hot,
                double(first.N * first.K) / hot / 1e3, hot_p);
  }
}
