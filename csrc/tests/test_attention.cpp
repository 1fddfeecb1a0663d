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

// The same decode without asking for the cache ahead (DecodeDims::prefetch off), which
// must change no bit of the output: run(dims, out) computes one.
template <class Run>
void check_prefetch_changes_nothing(const char* label, const DecodeDims& d,
                                    const std::vector<float>& out, Run run) {
  DecodeDims quiet = d;
  quiet.prefetch = false;
  std::vector<float> again(out.size(), -1.f);
  run(quiet, again.data());
  CHECK(again == out, "%s: decode without prefetching differs (H=%lld length=%lld D=%lld)",
        label, (long long)d.heads, (long long)d.length, (long long)d.head_dim);
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
    check_prefetch_changes_nothing(label, d, out, [&](const DecodeDims& e, float* o) {
      if (dispatch)
        tinylm::attention::decode(e, q.data(), k.data(), v.data(), o);
      else
        detail::decode_with(kernels, e, q.data(), k.data(), v.data(), o);
    });
    // the same cache in IEEE halves
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
    check_prefetch_changes_nothing(label, d, out, [&](const DecodeDims& e, float* o) {
      if (dispatch)
        tinylm::attention::decode(e, q.data(), kh.data(), vh.data(), o);
      else
        detail::decode_with(kernels, e, q.data(), kh.data(), vh.data(), o);
    });
  }
}

// The int8 key cache of `k` [Hkv, capacity, D] (attention.h's Int8Keys), stored as the
// engine stores it; bytes past the stored positions hold 0 (a fresh cache's).
struct Int8Cache {
  std::vector<uint8_t> codes;
  std::vector<float> scales;
  Int8Cache(const std::vector<float>& k, const DecodeDims& d) {
    using namespace tinylm::attention;
    const int64_t C = key_positions(d.capacity), row = key_row_bytes(d.head_dim);
    codes.assign(size_t(d.kv_heads * C * row), 0);
    scales.assign(size_t(d.kv_heads * C), 0.f);
    for (int64_t h = 0; h < d.kv_heads; ++h)
      for (int64_t p = 0; p < d.length; ++p)
        store_int8_key(&k[size_t((h * d.capacity + p) * d.head_dim)], d.head_dim, p,
                       {&codes[size_t(h * C * row)], &scales[size_t(h * C)]});
  }
  tinylm::attention::Int8Keys keys() { return {codes.data(), scales.data()}; }
};

// Decode over int8 keys and half values against the reference; and the reference against
// float32 attention over the keys as stored (what quantizing the queries changes).
void check_decode_int8_keys(const char* label, const detail::TileKernels* kernels,
                            detail::Int8ScoresKernel scores, bool dispatch) {
  const DecodeDims shapes[] = {{1, 1, 1, 1, 2},      {4, 2, 40, 37, 8},     {6, 6, 256, 190, 48},
                               {8, 8, 1030, 1025, 64}, {2, 1, 600, 513, 18}, {12, 4, 100, 77, 32},
                               {3, 1, 512, 512, 48},   {2, 2, 90, 64, 128},  {2, 2, 40, 17, 256}};
  uint32_t seed = 700;
  for (const DecodeDims& d : shapes) {
    const auto q = random_values(d.heads * d.head_dim, seed++, 2.f);
    const auto k = random_values(d.kv_heads * d.capacity * d.head_dim, seed++, 2.f);
    const auto v = random_values(d.kv_heads * d.capacity * d.head_dim, seed++);
    std::vector<uint16_t> vh(v.size());
    for (size_t i = 0; i < v.size(); ++i) vh[i] = tinylm::float_to_half(v[i]);
    Int8Cache cache(k, d);
    std::vector<float> out(d.heads * d.head_dim), out_r(out.size()), out_f(out.size());
    ref::decode(d, q.data(), cache.keys(), vh.data(), out_r.data());
    if (dispatch)
      tinylm::attention::decode(d, q.data(), cache.keys(), vh.data(), out.data());
    else
      detail::decode_with(kernels, scores, d, q.data(), cache.keys(), vh.data(), out.data());
    double err = 0;
    CHECK(close(out, out_r, 5e-5f, &err),
          "%s: decode over int8 keys differs from the reference by %.3g (H=%lld Hkv=%lld "
          "length=%lld D=%lld)", label, err, (long long)d.heads, (long long)d.kv_heads,
          (long long)d.length, (long long)d.head_dim);
    check_prefetch_changes_nothing(label, d, out, [&](const DecodeDims& e, float* o) {
      if (dispatch)
        tinylm::attention::decode(e, q.data(), cache.keys(), vh.data(), o);
      else
        detail::decode_with(kernels, scores, e, q.data(), cache.keys(), vh.data(), o);
    });
    if (!dispatch) continue;
    std::vector<float> keys(k.size());  // the stored keys, as floats
    for (int64_t h = 0; h < d.kv_heads; ++h)
      for (int64_t p = 0; p < d.length; ++p) {
        const int64_t C = tinylm::attention::key_positions(d.capacity);
        tinylm::attention::load_int8_key(
            {&cache.codes[size_t(h * C * tinylm::attention::key_row_bytes(d.head_dim))],
             &cache.scales[size_t(h * C)]},
            d.head_dim, p, &keys[size_t((h * d.capacity + p) * d.head_dim)]);
      }
    for (size_t i = 0; i < k.size(); ++i)  // within half a step of 2 / 127 of the originals
      if (std::fabs(keys[i] - k[i]) > 1.01f / 127 && (i / d.head_dim) % d.capacity < size_t(d.length)) {
        CHECK(false, "%s: key %zu stored as %g, was %g", label, i, keys[i], k[i]);
        break;
      }
    ref::decode(d, q.data(), keys.data(), v.data(), out_f.data());
    CHECK(close(out_r, out_f, 2e-2f, &err) && err > 0,
          "%s: int8 keys' attention differs from float32's over the same keys by %.3g (D=%lld)",
          label, err, (long long)d.head_dim);
  }
}

// A scores kernel against int8_scores_ref, bit for bit, over the bytes a key may hold.
void check_int8_scores(const char* label, detail::Int8ScoresKernel kernel) {
  for (int64_t Dq : {1, 2, 3, 12, 16, 64})
    for (int64_t blocks : {1, 2, 3, 5}) {
      const int64_t n = blocks * 16;
      const auto r = random_values(n * Dq * 4 + Dq * 4 + n, uint32_t(Dq * 10 + blocks));
      const size_t N = static_cast<size_t>(n);
      std::vector<uint8_t> keys(N * Dq * 4);
      std::vector<int8_t> q(static_cast<size_t>(Dq * 4));
      std::vector<float> scales(N), s(N), s_ref(N);
      for (size_t i = 0; i < keys.size(); ++i)  // codes -127 and 127 too
        keys[i] = i % 97 == 0 ? uint8_t(i % 2 ? 255 : 1) : uint8_t(r[i] * 127 + 128);
      int32_t sum = 0;
      for (size_t i = 0; i < q.size(); ++i) {
        q[i] = i % 5 == 0 ? int8_t(i % 2 ? 127 : -127) : int8_t(r[keys.size() + i] * 127);
        sum += q[i];
      }
      for (int64_t t = 0; t < n; ++t) scales[size_t(t)] = 0.01f + std::fabs(r[size_t(n * Dq * 4 + Dq * 4 + t)]);
      detail::Int8Scores job{q.data(), 128 * sum, 0.03f, keys.data(), scales.data(), blocks, Dq,
                             nullptr, 0, s_ref.data()};
      detail::int8_scores_ref(job);
      job.s = s.data();
      kernel(job);
      CHECK(s == s_ref, "%s: int8 scores differ from the reference (Dq=%lld, %lld blocks)", label,
            (long long)Dq, (long long)blocks);
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

TEST(attention_decode_int8_keys_every_isa) {
  on_every_isa([](const std::string& level) {
    const std::string label = level + " (" + tinylm::attention::active_path() + ")";
    check_decode_int8_keys(label.c_str(), nullptr, nullptr, true);
  });
}

TEST(attention_int8_scores_every_isa) {
  on_every_isa([](const std::string& level) {
    check_int8_scores(level.c_str(), detail::select_int8_scores());
  });
}

#if defined(TINYLM_SIMDE) && (defined(__x86_64__) || defined(_M_X64))
// Built against SIMDe, the AVX-512 source runs on any x86 CPU: check its logic even
// where the CPU (and so the dispatcher) cannot use real AVX-512.
TEST(attention_avx512_source_via_simde) {
  check_training("avx512 (SIMDe)", detail::avx512_kernels(), false);
  check_decode("avx512 (SIMDe)", detail::avx512_kernels(), false);
  check_int8_scores("avx512vnni (SIMDe)", detail::int8_scores_avx512vnni);
  check_decode_int8_keys("avx512 (SIMDe)", detail::avx512_kernels(),
                         detail::int8_scores_avx512vnni, false);
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
