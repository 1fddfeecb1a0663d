// Native tests of the inference engine's pieces: every float32 GEMV kernel this CPU can
// run against a double-precision dot product (odd K, rows split at every boundary), the
// pinned numbers of the sampler's generator (the same as tests/test_sampling.py), the
// sampler's greedy/top-k rules, and a whole decode step that must not depend on the
// thread count. Compiles on x86-64, AArch64 and ARMv7.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "../cpu.h"
#include "../engine/engine.h"
#include "../engine/gemv_kernels.h"
#include "../half.h"
#include "../threads.h"
#include "check.h"

namespace {

using namespace tinylm;

struct Gen {  // inputs made at run time, so nothing can be constant-folded
  uint64_t s;
  explicit Gen(uint64_t seed) : s(engine::seed_state(seed)) {}
  float f32() { return float(engine::rng_uniform(&s) * 2.0 - 1.0); }
};

std::vector<float> randoms(int64_t n, Gen& g) {
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = g.f32();
  return v;
}

bool simde_build() {
#if defined(TINYLM_SIMDE)
  return true;
#else
  return false;
#endif
}

// A kernel this run can call: the CPU has its features, or SIMDe emulates them all.
bool runnable(uint32_t features) { return simde_build() || (features & ~cpu_features()) == 0; }

std::vector<engine::GemvInfo> runnable_gemv() {
  std::vector<engine::GemvInfo> out;
  for (const auto& k : engine::gemv_kernels())
    if (runnable(k.features)) out.push_back(k);
  return out;
}

// One kernel of a family the tests list themselves (the int8 decode products, the
// rescaling): its name, the CPU features it needs, the function.
template <class Fn>
struct NamedKernel {
  const char* name;
  uint32_t features;
  Fn fn;
};

// Which kernels each level selects: the kernels of two levels compute the same bits, so
// the tests that compare results cannot tell a level that fell back to the slower one.
TEST(engine_levels_choose_their_own_kernels) {
#if defined(__x86_64__) || defined(_M_X64)
  const struct {
    const char* level;
    const char* int8_gemv;
  } expected[] = {{"scalar", "scalar"},    {"avx2", "avx2"},
                  {"avxvnni", "avxvnni"},  {"avx512", "avx2"},  // VNNI comes with avx512vnni
                  {"avx512vnni", "avx512vnni"}};
  const std::string saved = active_isa();
  const std::vector<std::string> available = available_isas();
  for (const auto& e : expected) {
    if (std::find(available.begin(), available.end(), e.level) == available.end()) continue;
    set_isa(e.level);
    CHECK(engine::active_gemv_int8() == e.int8_gemv, "level %s: int8 decode GEMV %s, want %s",
          e.level, engine::active_gemv_int8().c_str(), e.int8_gemv);
  }
  set_isa(saved);
  for (const auto& k : engine::gemv_kernels()) {
    if (std::string(k.name) == "avx2")
      CHECK(k.weigh == engine::weigh_avx2 && k.extremes == engine::extremes_avx2,
            "the avx2 level's sampler kernels are not weigh_avx2 and extremes_avx2");
    if (std::string(k.name) == "avx512")
      CHECK(k.weigh == engine::weigh_avx512 && k.extremes == engine::extremes_avx512,
            "the avx512 level's sampler kernels are not weigh_avx512 and extremes_avx512");
  }
#endif
}

TEST(engine_gemv_kernels_match_reference) {
  const int64_t Ks[] = {1, 3, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 288, 1001};
  for (const auto& kernel : runnable_gemv()) {
    std::printf("  gemv kernel %s\n", kernel.name);
    Gen g(7);
    for (int64_t K : Ks) {
      const int64_t N = 13;
      const auto W = randoms(N * K, g), x = randoms(K, g);
      std::vector<float> y(size_t(N), 1e9f);
      // in three uneven pieces: a row's result must not depend on where a split falls,
      // nor on the prefetching (the pieces prefetch, the whole does not)
      kernel.fn(W.data(), x.data(), y.data(), K, 0, 5, true);
      kernel.fn(W.data(), x.data(), y.data(), K, 5, 6, true);
      kernel.fn(W.data(), x.data(), y.data(), K, 6, N, true);
      std::vector<float> whole(static_cast<size_t>(N));
      kernel.fn(W.data(), x.data(), whole.data(), K, 0, N, false);
      for (int64_t n = 0; n < N; ++n) {
        double want = 0, mag = 0;
        for (int64_t k = 0; k < K; ++k) {
          want += double(W[size_t(n * K + k)]) * x[size_t(k)];
          mag += std::fabs(double(W[size_t(n * K + k)]) * x[size_t(k)]);
        }
        CHECK(std::fabs(y[size_t(n)] - want) <= 1e-6 * mag + 1e-7,
              "%s K=%lld row %lld: %g, want %g", kernel.name, (long long)K, (long long)n,
              y[size_t(n)], want);
        CHECK(y[size_t(n)] == whole[size_t(n)],
              "%s K=%lld row %lld depends on the split or the prefetch",
              kernel.name, (long long)K, (long long)n);
      }
    }
  }
}

// The panels of an int8 matrix W [N, K] (gemv_panels.h's layout): byte k of row n in
// panel n / 16, group k / 4, lane n % 16, byte k % 4; the rest zero.
std::vector<int8_t> to_panels(const std::vector<int8_t>& W, int64_t N, int64_t K) {
  const int64_t groups = engine::panel_groups(K);
  std::vector<int8_t> panels(size_t(engine::panel_bytes(N, K)), 0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k)
      panels[size_t((n / 16 * groups + k / 4) * 64 + n % 16 * 4 + k % 4)] = W[size_t(n * K + k)];
  return panels;
}

// The int8 decode kernels over panels: exact int32 sums, rescaled with int8::linear's
// expression, against a plain loop over the rows, bit for bit (which also holds the
// scalar kernel's panel indexing to the layout), for K on and
// off groups of four and vector widths, row counts on and off panels of 16, ranges that
// start and end inside a panel, and values at +-127. The panels end their buffer, so a
// read past them would be caught by the sanitizers (and by the Python test that puts a
// guard page there).
TEST(engine_int8_gemv_kernels_exact) {
  std::vector<NamedKernel<engine::PanelGemvKernel>> kernels;
#if defined(__x86_64__) || defined(_M_X64)
  kernels.push_back({"avx512vnni", kAVX2 | kAVX512 | kAVX512VNNI, engine::gemv_panels_avx512vnni});
  kernels.push_back({"avxvnni", kAVX2 | kAVXVNNI, engine::gemv_panels_avxvnni});
  kernels.push_back({"avx2", kAVX2, engine::gemv_panels_avx2});
#endif
#if defined(__aarch64__) || defined(__arm__)
  kernels.push_back({"neon_dotprod", kNEON | kDotProd, engine::gemv_panels_neon_dotprod});
  kernels.push_back({"neon", kNEON, engine::gemv_panels_neon});
#endif
  kernels.push_back({"scalar", 0, engine::gemv_panels_ref});
  const int64_t Ks[] = {1, 3, 4, 5, 31, 32, 33, 63, 64, 65, 100, 128, 255, 288, 1376};
  const int64_t Ns[] = {1, 3, 15, 16, 17, 33, 48, 70};
  for (const auto& k : kernels) {
    if (!runnable(k.features)) continue;
    std::printf("  int8 gemv kernel %s\n", k.name);
    Gen g(11);
    for (int64_t K : Ks)
      for (int64_t N : Ns)
      // extremes: w = 127 against x = 127, and rows of w = 127 and -127 in turn against
      // x = -127: every pair sum +-2 * 127^2, the largest of either sign (vpmaddubsw's
      // int16 saturates just past them), with the operands' signs the kernels' tricks move
      for (int extreme = 0; extreme < 3; ++extreme) {
        const int64_t groups = engine::panel_groups(K);
        std::vector<int8_t> W(size_t(N * K)), x(size_t(groups * 4), 0);
        for (size_t i = 0; i < W.size(); ++i)
          W[i] = extreme == 1 ? int8_t(127) : extreme == 2 ? int8_t(i / size_t(K) % 2 ? 127 : -127)
                                             : int8_t(std::lround(g.f32() * 127));
        for (int64_t i = 0; i < K; ++i)
          x[size_t(i)] = extreme == 1 ? int8_t(127) : extreme == 2 ? int8_t(-127)
                                       : int8_t(std::lround(g.f32() * 127));
        const std::vector<int8_t> panels = to_panels(W, N, K);
        // scales of both kinds of magnitude: the sums' rounding to float shows
        std::vector<float> scale(static_cast<size_t>(N));
        for (int64_t n = 0; n < N; ++n) scale[size_t(n)] = std::fabs(g.f32()) * (n % 2 ? 1e-3f : 7.0f);
        const float x_scale = 0.0123f + std::fabs(g.f32());
        int32_t x_sum = 0;
        std::vector<float> want(static_cast<size_t>(N));
        for (int64_t n = 0; n < N; ++n) {
          int32_t c = 0;
          for (int64_t i = 0; i < K; ++i) c += int32_t(W[size_t(n * K + i)]) * x[size_t(i)];
          want[size_t(n)] = float(c) * (x_scale * scale[size_t(n)]);  // int8::linear's expression
        }
        for (int64_t i = 0; i < K; ++i) x_sum += x[size_t(i)];
        const int64_t split = std::min(N / 3 + extreme, N);  // [0, split) and [split, N)
        std::vector<float> got(static_cast<size_t>(N) + 1, -1.f);  // got[N]: must be left alone
        const engine::PanelGemv head{panels.data(), K, scale.data(), x.data(), x_sum, x_scale, got.data()};
        engine::PanelGemv tail = head;
        tail.y = got.data() + split;
        k.fn(head, 0, split);
        k.fn(tail, split, N);
        for (int64_t n = 0; n < N; ++n)
          CHECK(std::memcmp(&got[size_t(n)], &want[size_t(n)], 4) == 0,
                "%s K=%lld N=%lld extreme=%d row %lld: %.9g, want %.9g", k.name, (long long)K,
                (long long)N, extreme, (long long)n, double(got[size_t(n)]), double(want[size_t(n)]));
        CHECK(got[size_t(N)] == -1.f, "%s K=%lld N=%lld: wrote past the rows asked for", k.name,
              (long long)K, (long long)N);
      }
  }
}

// The prefill's int8 products over panels, for 1 to 13 rows of x at once (on and off
// every kernel's rows a pass, so each pass size runs): exactly int8::linear's result, the
// int32 sums of a plain loop over the rows rescaled by its expression, for ranges of
// rows that start and end inside a panel.
TEST(engine_int8_gemm_kernels_exact) {
  std::vector<NamedKernel<engine::PanelGemmKernel>> kernels;
#if defined(__x86_64__) || defined(_M_X64)
  kernels.push_back({"avx512vnni", kAVX2 | kAVX512 | kAVX512VNNI, engine::gemm_panels_avx512vnni});
  kernels.push_back({"avxvnni", kAVX2 | kAVXVNNI, engine::gemm_panels_avxvnni});
  kernels.push_back({"avx2", kAVX2, engine::gemm_panels_avx2});
#endif
#if defined(__aarch64__) || defined(__arm__)
  kernels.push_back({"neon_dotprod", kNEON | kDotProd, engine::gemm_panels_neon_dotprod});
  kernels.push_back({"neon", kNEON, engine::gemm_panels_neon});
#endif
  kernels.push_back({"scalar", 0, engine::gemm_panels_ref});
  for (const auto& k : kernels) {
    if (!runnable(k.features)) continue;
    std::printf("  int8 gemm kernel %s\n", k.name);
    Gen g(13);
    for (int64_t K : {1, 5, 64, 130})
      for (int64_t N : {3, 16, 37, 70, 130})
        for (int64_t T = 1; T <= 13; ++T) {
          const int64_t groups = engine::panel_groups(K), stride = groups * 4;
          std::vector<int8_t> W(size_t(N * K)), x(size_t(T * stride), 0);
          for (auto& v : W) v = int8_t(std::lround(g.f32() * 127));
          std::vector<float> scale(static_cast<size_t>(N)), x_scale(static_cast<size_t>(T));
          for (auto& v : scale) v = std::fabs(g.f32()) + 0.01f;
          for (auto& v : x_scale) v = std::fabs(g.f32()) + 0.01f;
          std::vector<int32_t> x_sum(static_cast<size_t>(T), 0);
          for (int64_t t = 0; t < T; ++t)
            for (int64_t i = 0; i < K; ++i) {
              x[size_t(t * stride + i)] = int8_t(std::lround(g.f32() * 127));
              x_sum[size_t(t)] += x[size_t(t * stride + i)];
            }
          const std::vector<int8_t> panels = to_panels(W, N, K);
          const int64_t n0 = N / 4, n1 = N - N / 5;  // rows [n0, n1)
          std::vector<float> y(size_t(T * (n1 - n0)), -1.f);
          k.fn({panels.data(), K, scale.data(), x.data(), stride, T, x_scale.data(), x_sum.data(),
                y.data(), n1 - n0},
               n0, n1);
          for (int64_t t = 0; t < T; ++t)
            for (int64_t n = n0; n < n1; ++n) {
              int32_t c = 0;
              for (int64_t i = 0; i < K; ++i) c += int32_t(W[size_t(n * K + i)]) * x[size_t(t * stride + i)];
              const float want = float(c) * (x_scale[size_t(t)] * scale[size_t(n)]);
              const float got = y[size_t(t * (n1 - n0) + n - n0)];
              CHECK(got == want, "%s K=%lld N=%lld T=%lld row %lld of x %lld: %g, want %g", k.name,
                    (long long)K, (long long)N, (long long)T, (long long)n, (long long)t, got, want);
            }
        }
  }
}

// Every level's SiLU (its polynomial exponential) against double precision, over the
// range where neither e^g nor e^-g saturates, and at the extremes.
TEST(engine_silu_accuracy) {
  std::vector<float> g, u;
  for (float x = -80.0f; x <= 80.0f; x += 0.01953125f) g.push_back(x);  // 2^-9 steps: exact
  for (float x : {1e-30f, -1e-30f, 0.0f, 1e30f, 90.0f, -90.0f, -1e30f}) g.push_back(x);
  u.assign(g.size(), 1.0f);
  u[u.size() - 2] = -2.0f;
  for (const auto& k : runnable_gemv()) {
    std::printf("  silu kernel %s\n", k.name);
    std::vector<float> out = g;
    k.silu(out.data(), u.data(), int64_t(out.size()));
    double worst = 0;
    for (size_t i = 0; i < g.size(); ++i) {
      const double x = g[i], want = x / (1.0 + std::exp(-x)) * u[i];
      const double err = std::fabs(out[i] - want);
      if (std::fabs(want) > 1e-30)
        worst = std::max(worst, err / std::fabs(want));
      else  // g below -87: about -g e^-87 * u
        CHECK(err <= std::fabs(x) * 2e-38 * 2 + 1e-37, "%s: silu(%g) = %g, want %g", k.name, x,
              double(out[i]), want);
    }
    CHECK(worst < 4e-7, "%s: silu relative error %g", k.name, worst);
  }
}

// A decode step's threads each apply the SiLU to their own share of the rows: a value's
// result must not depend on where its share starts (vector body or scalar tail, any
// alignment), or the logits would depend on the thread count.
TEST(engine_silu_same_in_pieces) {
  Gen gen(11);
  const std::vector<float> g = randoms(1001, gen), u = randoms(1001, gen);
  for (const auto& k : runnable_gemv()) {
    std::vector<float> whole = g;
    k.silu(whole.data(), u.data(), int64_t(whole.size()));
    for (int64_t step : {1, 3, 7, 16, 33, 250}) {
      std::vector<float> pieces = g;
      for (int64_t i = 0; i < int64_t(g.size()); i += step)
        k.silu(pieces.data() + i, u.data() + i, std::min<int64_t>(step, int64_t(g.size()) - i));
      CHECK(std::memcmp(pieces.data(), whole.data(), whole.size() * sizeof(float)) == 0,
            "%s: silu in pieces of %lld differs from one call", k.name, (long long)step);
    }
  }
}

// Every level's float-to-half conversion (the int8 models' key/value cache) against
// float_to_half (half.h, itself checked against the nearest half in test_half.cpp): bit
// for bit on floats of every exponent, with both signs and every kind of rounding, in
// vector bodies and scalar tails; NaN stays NaN with its sign. On x86 also with
// denormals flushed (DAZ/FTZ), which must change nothing.
void check_halves(const char* mode) {
  Gen gen(12);
  std::vector<float> x;
  for (int i = 0; i < 200000; ++i) {  // random bit patterns: every exponent, subnormals
    uint32_t bits = uint32_t(engine::rng_next(&gen.s) >> 32);
    float f;
    std::memcpy(&f, &bits, 4);
    x.push_back(f);
  }
  for (float f : {0.0f, -0.0f, 65504.0f, 65519.99f, 65520.0f, -65520.0f, 1e-8f, 2.98023224e-8f,
                  5.96046448e-8f, 6.09755516e-5f, 6.10351562e-5f, 1.0f + 1.0f / 2048, HUGE_VALF,
                  -HUGE_VALF})
    x.push_back(f);
  for (const auto& k : runnable_gemv()) {
    for (int64_t n : {int64_t(x.size()), int64_t(7), int64_t(13)}) {
      std::vector<uint16_t> h(static_cast<size_t>(n));
      k.halves(x.data(), h.data(), n);
      int bad = 0;
      for (int64_t i = 0; i < n; ++i) {
        const uint16_t want = tinylm::float_to_half(x[size_t(i)]);
        const bool nan = (want & 0x7fff) > 0x7c00;
        const bool ok = nan ? (h[size_t(i)] & 0x7fff) > 0x7c00 && (h[size_t(i)] ^ want) < 0x8000
                            : h[size_t(i)] == want;
        if (!ok && bad++ < 5)
          CHECK(false, "%s (%s): %.9g gave 0x%04x, want 0x%04x", k.name, mode,
                double(x[size_t(i)]), unsigned(h[size_t(i)]), unsigned(want));
      }
    }
  }
}

TEST(engine_halves_round_as_float_to_half) {
  check_halves("default");
#if defined(__x86_64__)
  tinylm::testing::with_denormals_flushed([] { check_halves("DAZ/FTZ"); });
#endif
}

// The sampler's own e^x against the C library's, on every target, and a few values bit
// for bit (the Python tests compare it with numpy's arithmetic on many more, on x86).
TEST(engine_weight_exp_accuracy) {
  double worst = 0;
  for (double x = 0; x >= -40; x -= 0.0009765625) {  // 2^-10 steps
    const double want = std::exp(x);
    worst = std::max(worst, std::fabs(engine::weight_exp(x) - want) / want);
  }
  CHECK(worst < 1e-12, "weight_exp relative error %g", worst);
  CHECK(engine::weight_exp(-40.5) == 0 && engine::weight_exp(-HUGE_VAL) == 0,
        "below -40 the weight is 0");
  CHECK(engine::weight_exp(0) == 1, "e^0 = %.17g", engine::weight_exp(0));
  // bit for bit what tinylm.sampling.weight_exp (numpy) gives on x86, so that a seed picks
  // the same tokens on a Pi: a fused multiply-add or another order would change bits
  const std::pair<double, uint64_t> pinned[] = {
      {-0.1, 0x3fecf46d99d52b3aull}, {-1.2345, 0x3fd29f6b7bfe469dull},
      {-7.77, 0x3f3bab902c420358ull}, {-25.5, 0x3da285fd102f8a43ull},
      {-39.9, 0x3c55a7104dde9f55ull}, {-0.3465735902799727, 0x3fe6a09e667f37deull}};
  for (const auto& [x, want] : pinned) {
    const double got = engine::weight_exp(x);
    uint64_t bits;
    std::memcpy(&bits, &got, 8);
    CHECK(bits == want, "weight_exp(%.17g) = %.17g (0x%016llx), numpy's arithmetic gives 0x%016llx",
          x, got, (unsigned long long)bits, (unsigned long long)want);
  }
}

// Every level's weights against weight_exp (the scalar code, pinned to numpy's bits
// above) scaled as the sampler scales it, bit for bit: arguments across [-41, 0] with the
// boundary at -40, -0, -inf and NaN (weight 0); with the finest unit (2^52: a last-bit
// change in e^x near 1 moves the weight) and `baby`'s (2^44), a temperature and a top;
// whole vectors and tails of every length.
TEST(engine_weigh_kernels_are_weight_exp_bit_for_bit) {
  Gen gen(13);
  std::vector<double> x = {0.0, -0.0, -40.0, std::nextafter(-40.0, 0.0), std::nextafter(-40.0, -41.0),
                           -HUGE_VAL, std::nan(""), -1e-300, -0.34657359027997264};
  for (int i = 0; i < 100000; ++i) x.push_back(-41.0 * engine::rng_uniform(&gen.s));
  std::vector<int64_t> lengths = {int64_t(x.size())};
  for (int64_t n = 1; n <= 17; ++n) lengths.push_back(n);
  struct Scaling { double top, inverse_temperature, unit; };
  const Scaling scalings[] = {{0.0, 1.0, 0x1p52}, {2.5, 1.0 / 0.8, 0x1p44}};
  for (const auto& k : runnable_gemv())
    for (const Scaling& c : scalings)
      for (int64_t n : lengths) {
        // the arguments shifted by the top and unscaled by the temperature: the same
        // exponents reach the kernel (up to the rounding of these two operations)
        std::vector<double> logits(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i)
          logits[size_t(i)] = x[size_t(i)] / c.inverse_temperature + c.top;
        std::vector<uint64_t> w(size_t(n) + 1, 123);  // one more: nothing written past n
        const uint64_t total =
            k.weigh(logits.data(), n, c.top, c.inverse_temperature, c.unit, w.data());
        uint64_t want_total = 0;
        for (int64_t i = 0; i < n; ++i) {
          const double e = engine::weight_exp((logits[size_t(i)] - c.top) * c.inverse_temperature);
          const uint64_t want = uint64_t(int64_t(e * c.unit + 0.5));
          want_total += want;
          if (w[size_t(i)] != want) {
            CHECK(false, "%s (n %lld, unit 2^%d): weight of %.17g is %llu, weight_exp gives %llu",
                  k.name, (long long)n, std::ilogb(c.unit), logits[size_t(i)],
                  (unsigned long long)w[size_t(i)], (unsigned long long)want);
            break;
          }
        }
        CHECK(total == want_total, "%s (n %lld): total %llu, the weights add to %llu", k.name,
              (long long)n, (unsigned long long)total, (unsigned long long)want_total);
        CHECK(w[size_t(n)] == 123, "%s: wrote past n = %lld", k.name, (long long)n);
      }
}

// Every level's scan of the logits against the scalar one: random values with NaN, both
// infinities and both zeros planted at random places (or none), whole vectors and tails
// of every length, and the empty row.
TEST(engine_extremes_kernels_match_reference) {
  Gen gen(17);
  const double special[] = {std::nan(""), HUGE_VAL, -HUGE_VAL, 0.0, -0.0};
  for (const auto& k : runnable_gemv())
    for (int64_t n = 0; n <= 40; ++n)
      for (int trial = 0; trial < 20; ++trial) {
        std::vector<double> x(static_cast<size_t>(n));
        for (double& v : x) v = 10.0 * (engine::rng_uniform(&gen.s) - 0.5);
        for (int planted = 0; planted < trial % 4 && n > 0; ++planted)
          x[size_t(engine::rng_next(&gen.s) % uint64_t(n))] =
              special[engine::rng_next(&gen.s) % 5];
        if (trial == 19) std::fill(x.begin(), x.end(), -HUGE_VAL);
        const engine::Extremes got = k.extremes(x.data(), n);
        const engine::Extremes want = engine::extremes_ref(x.data(), n);
        CHECK(got.nan == want.nan && got.top == want.top && got.low == want.low,
              "%s (n %lld, trial %d): top %g low %g nan %d, the scalar scan gives %g %g %d",
              k.name, (long long)n, trial, got.top, got.low, int(got.nan), want.top, want.low,
              int(want.nan));
        bool nan = false;  // and the scalar scan against plain std::max / std::min
        double top = -HUGE_VAL, low = HUGE_VAL;
        for (double v : x) {
          if (v != v) { nan = true; continue; }
          top = std::max(top, v);
          if (v > -HUGE_VAL) low = std::min(low, v);
        }
        CHECK(want.nan == nan && want.top == top && want.low == low,
              "extremes_ref (n %lld): top %g low %g nan %d, want %g %g %d", (long long)n, want.top,
              want.low, int(want.nan), top, low, int(nan));
      }
}

TEST(engine_rng_pinned) {  // the same numbers as tests/test_sampling.py
  uint64_t s = engine::seed_state(0);
  CHECK(engine::rng_next(&s) == 0x7BBCB40D550682D0ull, "seed 0, first number");
  CHECK(engine::rng_next(&s) == 0xDE7FE413D00CC9FDull, "seed 0, second number");
  s = engine::seed_state(42);
  CHECK(engine::rng_next(&s) == 0x31B0ECE7C4F697A2ull, "seed 42, first number");
}

TEST(engine_sampling_rules) {
  const float logits[6] = {0.5f, 3.0f, -1.0f, 3.0f, 2.9f, 0.0f};
  engine::SampleScratch scratch;
  uint64_t s = engine::seed_state(1);
  engine::Sampling greedy;
  CHECK(engine::sample(logits, 6, greedy, &s, nullptr, 0, scratch) == 1,
        "greedy picks the first of equal maxima");
  engine::Sampling top1;
  top1.temperature = 2.0;
  top1.top_k = 1;
  for (int i = 0; i < 20; ++i)
    CHECK(engine::sample(logits, 6, top1, &s, nullptr, 0, scratch) == 1, "top-k 1");
  engine::Sampling top3;
  top3.temperature = 5.0;
  top3.top_k = 3;
  int counts[6] = {0, 0, 0, 0, 0, 0};
  for (int i = 0; i < 600; ++i) ++counts[engine::sample(logits, 6, top3, &s, nullptr, 0, scratch)];
  CHECK(counts[0] + counts[2] + counts[5] == 0 && counts[1] > 0 && counts[3] > 0 && counts[4] > 0,
        "top-k 3 keeps ids 1, 3, 4 only (%d %d %d %d %d %d)", counts[0], counts[1], counts[2],
        counts[3], counts[4], counts[5]);
  engine::Sampling penalized;
  penalized.repetition_penalty = 2.0;
  const int32_t history[2] = {1, 3};
  CHECK(engine::sample(logits, 6, penalized, &s, history, 2, scratch) == 4,
        "the repetition penalty moves greedy off the repeated tokens");
}

// tinylm/sampling.py's rules 3-5 as the reference computes them: every candidate sorted
// best first (ids, then their weights), top-p's nucleus as the first run of them whose
// running weight reaches p of the total, the pick by running weight in id order. No
// repetition penalty.
std::pair<std::vector<int32_t>, std::vector<uint64_t>> sorted_candidates(
    const std::vector<float>& logits, const engine::Sampling& s) {
  const int64_t V = int64_t(logits.size());
  const std::vector<double> l(logits.begin(), logits.end());
  std::vector<int32_t> order(static_cast<size_t>(V));
  for (int64_t i = 0; i < V; ++i) order[size_t(i)] = int32_t(i);
  std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
    return l[size_t(a)] > l[size_t(b)] || (l[size_t(a)] == l[size_t(b)] && a < b);
  });
  if (s.top_k > 0 && s.top_k < V) order.resize(size_t(s.top_k));
  int bits = 0;
  while ((V >> bits) != 0) ++bits;
  const double unit = std::ldexp(1.0, 53 - bits), top = l[size_t(order[0])];
  std::vector<uint64_t> w;
  for (int32_t t : order) {
    const double e = engine::weight_exp((l[size_t(t)] - top) * (1.0 / s.temperature));
    w.push_back(uint64_t(int64_t(e * unit + 0.5)));
  }
  return {order, w};
}

int32_t sorted_sample(const std::vector<float>& logits, const engine::Sampling& s,
                      uint64_t* state) {
  const auto [order, w] = sorted_candidates(logits, s);
  uint64_t total = 0;
  for (uint64_t weight : w) total += weight;
  size_t keep = order.size();
  if (s.top_p < 1.0) {
    uint64_t run = 0;
    for (size_t j = 0; j < order.size(); ++j)
      if (double(run += w[j]) >= s.top_p * double(total)) {
        keep = j + 1;
        break;
      }
  }
  std::vector<std::pair<int32_t, uint64_t>> kept;  // (id, weight), in id order
  uint64_t kept_total = 0;
  for (size_t j = 0; j < keep; ++j) kept.push_back({order[j], w[j]}), kept_total += w[j];
  std::sort(kept.begin(), kept.end());
  const uint64_t r =
      std::min(uint64_t(engine::rng_uniform(state) * double(kept_total)), kept_total - 1);
  uint64_t run = 0;
  for (const auto& [id, weight] : kept)
    if ((run += weight) > r) return id;
  return -1;
}

// Top-p with and without top-k, on every level, against sorted_sample: vocabularies from
// 1 to 600 tokens, flat, peaked, tied (few distinct logits) and partly -inf logits, and
// top-p just below and at each running weight of the best three (the nucleus's edge).
TEST(engine_top_p_matches_a_sorting_sampler) {
  const std::string saved = active_isa();
  int checked = 0;
  for (const auto& isa : available_isas()) {
    set_isa(isa);
    Gen g(23);
    engine::SampleScratch scratch;
    for (int trial = 0; trial < 300; ++trial) {
      const int64_t V = 1 + int64_t(engine::rng_next(&g.s) % 600);
      const double spread = trial % 3 == 0 ? 0.5 : trial % 3 == 1 ? 4.0 : 12.0;
      std::vector<float> logits(static_cast<size_t>(V));
      for (float& v : logits) {
        v = float(spread * g.f32());
        if (trial % 4 == 1) v = std::round(v);  // ties
        if (trial % 5 == 2 && engine::rng_uniform(&g.s) < 0.3) v = -HUGE_VALF;  // masked
      }
      logits[size_t(engine::rng_next(&g.s) % uint64_t(V))] = float(spread);  // one at least finite
      engine::Sampling s;
      s.temperature = trial % 2 ? 0.8 : 1.7;
      s.top_k = trial % 7 == 3 ? 1 + int64_t(engine::rng_next(&g.s) % uint64_t(V)) : 0;
      // top-p at the best three's running weights over the total, and just below: the
      // nucleus's edge
      std::vector<double> top_ps = {0.05, 0.5, 0.9, 0.95, 0.999};
      const auto [order, w] = sorted_candidates(logits, s);
      uint64_t total = 0, running = 0;
      for (uint64_t weight : w) total += weight;
      for (size_t j = 0; j < 3 && j < w.size(); ++j) {
        const double p = double(running += w[j]) / double(total);
        if (p > 0 && p < 1) top_ps.push_back(p), top_ps.push_back(std::nextafter(p, 0.0));
      }
      for (const double p : top_ps) {
        s.top_p = p;
        uint64_t native_state = engine::seed_state(uint64_t(trial)), oracle_state = native_state;
        for (int call = 0; call < 3; ++call) {
          const int32_t got =
              engine::sample(logits.data(), V, s, &native_state, nullptr, 0, scratch);
          const int32_t want = sorted_sample(logits, s, &oracle_state);
          ++checked;
          if (got != want) {
            CHECK(false, "%s: V %lld, trial %d, top-k %lld, top-p %.17g, call %d: picked %d, "
                  "sorting gives %d", isa.c_str(), (long long)V, trial, (long long)s.top_k, p,
                  call, got, want);
            set_isa(saved);
            return;
          }
        }
      }
    }
  }
  set_isa(saved);
  CHECK(checked > 0, "no case checked");
}

// A whole small model (grouped-query heads, odd sizes) stepped on 1, 2 and 3 threads on
// every level: the logits must be identical across thread counts.
TEST(engine_step_independent_of_threads) {
  const engine::Config c{61, 48, 2, 6, 2, 75, 16, 1e-5f};
  const int64_t d = c.d_model, ff = c.d_ff, D = c.head_dim(), kv = c.n_kv_head * D;
  Gen g(3);
  std::vector<std::vector<float>> store;
  store.reserve(64);
  auto mat = [&](int64_t rows, int64_t cols) {
    store.push_back(randoms(rows * cols, g));
    engine::Matrix m;
    m.f32 = store.back().data();
    m.rows = rows;
    m.cols = cols;
    return m;
  };
  auto ones = [&](int64_t n) {
    store.emplace_back(size_t(n), 1.0f);
    return static_cast<const float*>(store.back().data());
  };
  engine::Weights w;
  w.embed = mat(c.vocab_size, d);
  w.final_norm = ones(d);
  for (int64_t i = 0; i < c.n_layer; ++i)
    w.layers.push_back({ones(d), mat(d, d), mat(kv, d), mat(kv, d), mat(d, d), ones(d),
                        mat(ff, d), mat(ff, d), mat(d, ff)});
  std::vector<float> cos(size_t(c.context * D / 2)), sin(cos.size());
  for (int64_t t = 0; t < c.context; ++t)
    for (int64_t i = 0; i < D / 2; ++i) {
      const double a = double(t) * std::pow(10000.0, -2.0 * double(i) / double(D));
      cos[size_t(t * D / 2 + i)] = float(std::cos(a));
      sin[size_t(t * D / 2 + i)] = float(std::sin(a));
    }
  const std::string saved = active_isa();
  for (const auto& isa : available_isas()) {
    set_isa(isa);
    std::vector<float> f32_logits, f32_k;  // the float32 cache's run, for the halves'
    for (const bool int8 : {false, true}) {  // a float32 cache, and int8 models' cache
      std::vector<std::vector<float>> runs;
      for (int threads = 1; threads <= 3; ++threads) {
        set_num_threads(threads);
        const size_t cache = size_t(c.n_layer * c.n_kv_head * c.context * D);
        const int64_t keys = c.n_layer * c.n_kv_head * attention::key_positions(c.context);
        std::vector<float> kc(cache), vc(cache), logits(size_t(c.vocab_size)), all;
        std::vector<uint8_t> codes(size_t(keys * attention::key_row_bytes(D)));
        std::vector<float> scales(static_cast<size_t>(keys));
        std::vector<uint16_t> vh(cache);
        engine::State state{kc.data(), vc.data(), cos.data(), sin.data()};
        if (int8) state = {nullptr, nullptr, cos.data(), sin.data(), codes.data(), scales.data(), vh.data()};
        engine::Engine e(c, w, state);
        e.set_max_threads(threads);  // these weights are too small to split by default
        for (int64_t pos = 0; pos < c.context; ++pos) {
          e.step(int32_t((pos * 7) % c.vocab_size), pos, logits.data());
          all.insert(all.end(), logits.begin(), logits.end());
        }
        bool written = false;  // the engine wrote the cache it was given
        for (size_t i = 0; i < cache; ++i) written |= int8 ? vh[i] != 0 : kc[i] != 0.f;
        if (int8) written &= *std::max_element(scales.begin(), scales.end()) > 0.f;
        CHECK(written, "isa %s, int8 cache %d: the cache was not written", isa.c_str(), int(int8));
        if (!int8 && threads == 1) f32_logits = all, f32_k = kc;
        if (int8 && threads == 1) {
          // position 0 of layer 0 depends on the embedding alone: the same keys, rounded
          const int64_t P = attention::key_positions(c.context);
          for (int64_t h = 0; h < c.n_kv_head; ++h) {
            std::vector<float> key(static_cast<size_t>(D));
            attention::load_int8_key({&codes[size_t(h * P * attention::key_row_bytes(D))],
                                      &scales[size_t(h * P)]}, D, 0, key.data());
            for (int64_t i = 0; i < D; ++i) {
              const float want = f32_k[size_t(h * c.context * D + i)];
              CHECK(std::fabs(key[size_t(i)] - want) <= 0.51f * scales[size_t(h * P)],
                    "isa %s: layer 0 head %lld key %lld stored as %g, was %g", isa.c_str(),
                    (long long)h, (long long)i, key[size_t(i)], want);
            }
          }
          double worst = 0, scale = 0;  // and logits close to the float32 cache's
          for (size_t i = 0; i < all.size(); ++i) {
            worst = std::max(worst, double(std::fabs(all[i] - f32_logits[i])));
            scale = std::max(scale, double(std::fabs(f32_logits[i])));
          }
          // (int8 queries and keys: 0.066 of the largest logit on every path; float16
          // keys and values were within 0.02)
          CHECK(worst > 0 && worst < 0.1 * scale,
                "isa %s: int8 cache logits differ from float32 cache's by %g (max logit %g)",
                isa.c_str(), worst, scale);
        }
        runs.push_back(all);
      }
      bool finite = true;
      for (float v : runs[0]) finite &= std::isfinite(v);
      CHECK(finite, "isa %s, int8 cache %d: logits not finite", isa.c_str(), int(int8));
      CHECK(runs[0] == runs[1] && runs[0] == runs[2],
            "isa %s, int8 cache %d: logits depend on the thread count", isa.c_str(), int(int8));
    }
  }
  set_isa(saved);
  set_num_threads(0);
}

TEST(engine_rejects_bad_input) {
  const engine::Config c{10, 8, 1, 2, 2, 4, 4, 1e-5f};
  engine::Weights w;  // no layers
  bool threw = false;
  try {
    engine::validate(c, w);
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  CHECK(threw, "validate accepts weights without layers");
}

}  // namespace
