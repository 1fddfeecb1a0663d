// Attention kernels: every path this CPU can run (each level of available_isas(), which
// the public functions dispatch on) against the scalar reference. Built natively and
// cross-compiled for aarch64 / armv7 and run under qemu.
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "../attention/attention.h"
#include "../attention/kernels.h"
#include "../cpu.h"
#include "../half.h"
#include "check.h"

namespace {

using tinylm::attention::DecodeDims;
using tinylm::attention::Dims;
namespace ref = tinylm::attention::reference;
namespace detail = tinylm::attention::detail;

// Deterministic values in [-scale, scale), generated at run time so that nothing folds.
std::vector<float> random_values(int64_t n, uint32_t seed, float scale = 1.f) {
  std::vector<float> x(static_cast<size_t>(n));
  uint32_t s = seed * 2654435761u + 12345u;
  for (auto& v : x) {
    s ^= s << 13, s ^= s >> 17, s ^= s << 5;  // xorshift32
    v = scale * (float(s >> 8) / float(1 << 24) * 2.f - 1.f);
  }
  return x;
}

// max |a - b| <= tol * (1 + max |b|)
bool close(const std::vector<float>& a, const std::vector<float>& b, float tol, double* err) {
  double worst = 0, scale = 1;
  for (size_t i = 0; i < b.size() && i < a.size(); ++i) {
    // Plain branches: GCC 12 for aarch64 crashes vectorizing an fmax reduction here.
    const double e = std::fabs(double(a[i]) - b[i]), m = 1 + std::fabs(double(b[i]));
    if (!(e <= worst)) worst = e;  // keeps a NaN
    if (m > scale) scale = m;
  }
  *err = worst / scale;
  return a.size() == b.size() && std::isfinite(worst) && worst <= tol * scale;
}

const Dims kShapes[] = {
    // batch, heads, kv_heads, T, head_dim
    {1, 1, 1, 1, 1},   {2, 4, 2, 5, 3},    {1, 2, 1, 33, 17},  {1, 3, 1, 70, 48},
    {2, 2, 2, 64, 32}, {1, 2, 2, 130, 64}, {1, 1, 1, 65, 128}, {1, 1, 1, 40, 256},
    {1, 2, 1, 200, 20},
};

// Runs forward and backward with `kernels` (nullptr: the public, dispatching functions)
// and compares them with the reference.
void check_training(const char* label, const detail::TileKernels* kernels, bool dispatch) {
  uint32_t seed = 1;
  for (const Dims& d : kShapes) {
    const int64_t nq = d.batch * d.heads * d.seq * d.head_dim;
    const int64_t nk = d.batch * d.kv_heads * d.seq * d.head_dim;
    const auto q = random_values(nq, seed++, 2.f), k = random_values(nk, seed++, 2.f);
    const auto v = random_values(nk, seed++), dout = random_values(nq, seed++);
    std::vector<float> out_r(nq), lse_r(nq / d.head_dim), dq_r(nq), dk_r(nk), dv_r(nk);
    ref::forward(d, q.data(), k.data(), v.data(), out_r.data(), lse_r.data());
    ref::backward(d, q.data(), k.data(), v.data(), out_r.data(), lse_r.data(), dout.data(),
                  dq_r.data(), dk_r.data(), dv_r.data());

    std::vector<float> out(nq), lse(nq / d.head_dim), dq(nq), dk(nk), dv(nk);
    if (dispatch) {
      tinylm::attention::forward(d, q.data(), k.data(), v.data(), out.data(), lse.data());
      tinylm::attention::backward(d, q.data(), k.data(), v.data(), out.data(), lse.data(),
                                  dout.data(), dq.data(), dk.data(), dv.data());
    } else {
      detail::forward_with(kernels, d, q.data(), k.data(), v.data(), out.data(), lse.data());
      detail::backward_with(kernels, d, q.data(), k.data(), v.data(), out.data(), lse.data(),
                            dout.data(), dq.data(), dk.data(), dv.data());
    }
    const std::pair<const char*, std::pair<std::vector<float>*, std::vector<float>*>> outputs[] = {
        {"out", {&out, &out_r}}, {"lse", {&lse, &lse_r}}, {"dq", {&dq, &dq_r}},
        {"dk", {&dk, &dk_r}},    {"dv", {&dv, &dv_r}}};
    for (const auto& [name, pair] : outputs) {
      double err = 0;
      CHECK(close(*pair.first, *pair.second, 5e-5f, &err),
            "%s: %s differs from the reference by %.3g (B=%lld H=%lld Hkv=%lld T=%lld D=%lld)",
            label, name, err, (long long)d.batch, (long long)d.heads, (long long)d.kv_heads,
            (long long)d.seq, (long long)d.head_dim);
    }
  }
}

void check_decode(const char* label, const detail::TileKernels* kernels, bool dispatch) {
  const DecodeDims shapes[] = {
      // heads, kv_heads, capacity, length, head_dim
      {1, 1, 1, 1, 1}, {4, 2, 40, 37, 8}, {6, 2, 1100, 1025, 64}, {2, 1, 600, 513, 19},
      {2, 2, 90, 64, 128},
      // the presets' head dims (32, 48, 64) and every remainder of the value sum's
      // column blocks (1 to 3 vectors) on each vector width
      {6, 6, 300, 190, 48}, {4, 4, 64, 33, 32}, {2, 1, 70, 67, 16}, {3, 3, 80, 66, 24},
      {2, 2, 40, 39, 40}, {8, 8, 700, 600, 64}, {2, 2, 130, 129, 96},
      // groups of 3 query heads to a kv head, nine heads over a short cache; one part less
      // a position, one whole part, two whole parts
      {12, 4, 100, 77, 32}, {9, 9, 20, 5, 16}, {2, 1, 520, 511, 48}, {3, 1, 512, 512, 48},
      {2, 2, 1030, 1024, 32}};
  uint32_t seed = 100;
  for (const DecodeDims& d : shapes) {
    const auto q = random_values(d.heads * d.head_dim, seed++, 2.f);
    const auto k = random_values(d.kv_heads * d.capacity * d.head_dim, seed++, 2.f);
    const auto v = random_values(d.kv_heads * d.capacity * d.head_dim, seed++);
    std::vector<float> out(d.heads * d.head_dim), out_r(out.size());
    ref::decode(d, q.data(), k.data(), v.data(), out_r.data());
    if (dispatch)
      tinylm::attention::decode(d, q.data(), k.data(), v.data(), out.data());
    else
      detail::decode_with(kernels, d, q.data(), k.data(), v.data(), out.data());
    double err = 0;
    CHECK(close(out, out_r, 5e-5f, &err),
          "%s: decode differs from the reference by %.3g (H=%lld Hkv=%lld length=%lld D=%lld)",
          label, err, (long long)d.heads, (long long)d.kv_heads, (long long)d.length,
          (long long)d.head_dim);
    // the same cache in IEEE halves (the int8 models' cache)
    std::vector<uint16_t> kh(k.size()), vh(v.size());
    for (size_t i = 0; i < k.size(); ++i)
      kh[i] = tinylm::float_to_half(k[i]), vh[i] = tinylm::float_to_half(v[i]);
    ref::decode(d, q.data(), kh.data(), vh.data(), out_r.data());
    if (dispatch)
      tinylm::attention::decode(d, q.data(), kh.data(), vh.data(), out.data());
    else
      detail::decode_with(kernels, d, q.data(), kh.data(), vh.data(), out.data());
    CHECK(close(out, out_r, 5e-5f, &err),
          "%s: decode of a half cache differs from the reference by %.3g (H=%lld Hkv=%lld "
          "length=%lld D=%lld)", label, err, (long long)d.heads, (long long)d.kv_heads,
          (long long)d.length, (long long)d.head_dim);
  }
}

// Runs `body(level)` with the kernels capped at each level this CPU can execute.
template <typename Fn>
void on_every_isa(Fn body) {
  const std::string before = tinylm::active_isa();
  for (const auto& level : tinylm::available_isas()) {
    tinylm::set_isa(level);
    body(level);
  }
  tinylm::set_isa(before);
}

}  // namespace

TEST(attention_training_every_isa) {
  on_every_isa([](const std::string& level) {
    const std::string label = level + " (" + tinylm::attention::active_path() + ")";
    check_training(label.c_str(), nullptr, true);
  });
}

TEST(attention_decode_every_isa) {
  on_every_isa([](const std::string& level) {
    const std::string label = level + " (" + tinylm::attention::active_path() + ")";
    check_decode(label.c_str(), nullptr, true);
  });
}

#if defined(TINYLM_SIMDE) && (defined(__x86_64__) || defined(_M_X64))
// Built against SIMDe, the AVX-512 source runs on any x86 CPU: check its logic even
// where the CPU (and so the dispatcher) cannot use real AVX-512.
TEST(attention_avx512_source_via_simde) {
  check_training("avx512 (SIMDe)", detail::avx512_kernels(), false);
  check_decode("avx512 (SIMDe)", detail::avx512_kernels(), false);
}
#endif

TEST(attention_dispatch_follows_the_active_isa) {
  on_every_isa([](const std::string& level) {
    const std::string path = tinylm::attention::active_path();
    const bool ok = level == "scalar" ? path == "scalar"
                    : level.rfind("avx512", 0) == 0 ? path == "avx512"
                    : level.rfind("avx", 0) == 0    ? path == "avx2"
                    : level.rfind("neon", 0) == 0   ? path == "neon"
                                                    : false;
    CHECK(ok, "level %s runs attention path %s", level.c_str(), path.c_str());
  });
}

TEST(attention_rejects_invalid_dimensions) {
  auto throws = [](auto fn) {
    try {
      fn();
    } catch (const std::invalid_argument&) {
      return true;
    }
    return false;
  };
  using tinylm::attention::validate;
  CHECK(throws([] { validate(Dims{1, 3, 2, 4, 8}); }), "heads not a multiple of kv_heads");
  CHECK(throws([] { validate(Dims{1, 2, 1, 4, 257}); }), "head_dim above the limit");
  CHECK(throws([] { validate(Dims{1, 2, 1, 0, 8}); }), "empty sequence");
  CHECK(throws([] { validate(DecodeDims{2, 1, 16, 17, 8}); }), "length above capacity");
  CHECK(throws([] { validate(DecodeDims{2, 1, 16, 0, 8}); }), "length 0");
  CHECK(!throws([] { validate(DecodeDims{2, 1, 16, 16, 8}); }), "full cache is valid");
}
