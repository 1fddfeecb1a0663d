// The experiment behind benchmarks/NOTES.md's "Next: int8 weights stored in panels": the
// decode step's int8 GEMV (the AVX-512 VNNI kernel, rows in the file's row-major layout)
// against a prototype on weights stored in panels of 16 rows x 4 bytes of K, and a
// 64-byte read of the same bytes, over `baby`'s matrices, on one thread, from L2.
//
// Needs AVX-512 VNNI. From the repository's root (one command):
//   g++ -O3 -std=c++17 -Icsrc -mavx2 -mfma -mavx512f -mavx512bw -mavx512dq -mavx512vl
//       -mavx512vnni benchmarks/gemv_layout.cpp csrc/engine/gemv_i8_avx512vnni.cpp
//       csrc/int8/read_avx512.cpp -o /tmp/gemv_layout && /tmp/gemv_layout
// GCC 12's own AVX-512 headers trip -Wmaybe-uninitialized; not about this code.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "engine/gemv_kernels.h"
#include "int8/kernels.h"

namespace {

struct Matrix {
  int64_t N, K;
  const int8_t* rows;    // [N, K], as in the model file
  const int8_t* panels;  // [N / 16][K / 4][16][4] (only where N % 16 == 0 and K % 4 == 0)
  std::vector<int32_t> row_sums;
};

// c = W x over panels (K a multiple of 16 here): a vector's 16 lanes are 16 rows, x is
// broadcast four bytes at a time, so no lane needs a horizontal sum. vpdpbusd takes its first operand unsigned:
// x + 128 there, and 128 * the row's sum taken off.
void gemv_panels(const Matrix& m, const uint8_t* x_biased, int32_t* c) {
  const int64_t groups = m.K / 4;
  for (int64_t n = 0; n < m.N; n += 16) {
    const int8_t* p = m.panels + n * m.K;
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t g = 0; g < groups; g += 4) {
      _mm_prefetch(reinterpret_cast<const char*>(p + g * 64 + 1024), _MM_HINT_T0);
      int32_t x4[4];
      std::memcpy(x4, x_biased + 4 * g, sizeof x4);
      a0 = _mm512_dpbusd_epi32(a0, _mm512_set1_epi32(x4[0]), _mm512_loadu_si512(p + g * 64));
      a1 = _mm512_dpbusd_epi32(a1, _mm512_set1_epi32(x4[1]), _mm512_loadu_si512(p + g * 64 + 64));
      a2 = _mm512_dpbusd_epi32(a2, _mm512_set1_epi32(x4[2]), _mm512_loadu_si512(p + g * 64 + 128));
      a3 = _mm512_dpbusd_epi32(a3, _mm512_set1_epi32(x4[3]), _mm512_loadu_si512(p + g * 64 + 192));
    }
    const __m512i sums = _mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3));
    const __m512i bias = _mm512_slli_epi32(_mm512_loadu_si512(m.row_sums.data() + n), 7);
    _mm512_storeu_si512(c + n, _mm512_sub_epi32(sums, bias));
  }
}

template <class Fn>
double best_us(Fn&& fn) {
  double best = 1e9;
  for (int r = 0; r < 3000; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best * 1e6;
}

}  // namespace

int main() {
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx512vnni")) {
    std::puts("needs a CPU with AVX-512 VNNI");
    return 1;
  }
  // `baby` (d_model 128, d_ff 344, 4 layers, 257 tokens): q, k, v, o, gate, up, down a
  // layer, then the tied head, one after another as in the file
  std::vector<std::pair<int64_t, int64_t>> shapes;
  for (int layer = 0; layer < 4; ++layer)
    for (auto nk : {std::pair<int64_t, int64_t>{128, 128}, {128, 128}, {128, 128}, {128, 128},
                    {344, 128}, {344, 128}, {128, 344}})
      shapes.push_back(nk);
  shapes.push_back({257, 128});
  int64_t bytes = 0;
  for (auto [N, K] : shapes) bytes += N * K;
  std::vector<int8_t> rows_buf(size_t(bytes) + 64), panels_buf(size_t(bytes) + 64);
  int8_t* rows = rows_buf.data() + (64 - uintptr_t(rows_buf.data()) % 64) % 64;
  int8_t* panels = panels_buf.data() + (64 - uintptr_t(panels_buf.data()) % 64) % 64;
  std::mt19937 rng(1);
  for (int64_t i = 0; i < bytes; ++i) rows[i] = int8_t(int(rng() % 255) - 127);

  std::vector<Matrix> matrices;
  int64_t offset = 0;
  for (auto [N, K] : shapes) {
    Matrix m{N, K, rows + offset, nullptr, std::vector<int32_t>(size_t(N))};
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) m.row_sums[size_t(n)] += m.rows[n * K + k];
    if (N % 16 == 0 && K % 4 == 0) {
      int8_t* p = panels + offset;
      for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < K; ++k)
          p[(n / 16) * 16 * K + (k / 4) * 64 + (n % 16) * 4 + k % 4] = m.rows[n * K + k];
      m.panels = p;
    }
    matrices.push_back(std::move(m));
    offset += N * K;
  }

  alignas(64) int8_t x[384] = {};  // zero-padded to whole vectors, as the engine pads it
  alignas(64) uint8_t x_biased[384] = {};
  for (int k = 0; k < 344; ++k) x[k] = int8_t(int(rng() % 255) - 127);
  for (int k = 0; k < 384; ++k) x_biased[k] = uint8_t(int(x[k]) + 128);
  std::vector<int32_t> c(512), want(512);

  auto rows_gemv = [&](const Matrix& m) {
    int32_t x_sum = 0;
    for (int64_t k = 0; k < m.K; ++k) x_sum += x[k];
    tinylm::engine::gemv_i8_avx512vnni({m.rows, m.N, m.K, x, x_sum, c.data()}, 0, m.N);
  };
  auto qkvo = [](const Matrix& m) { return m.N == 128 && m.K == 128; };
  // the two layouts must give the same products
  for (const Matrix& m : matrices) {
    if (!qkvo(m)) continue;
    rows_gemv(m);
    want = c;
    gemv_panels(m, x_biased, c.data());
    if (!std::equal(c.begin(), c.begin() + m.N, want.begin())) {
      std::puts("the panel GEMV differs from the engine's");
      return 1;
    }
  }

  volatile uint64_t sink = 0;
  auto read = [&](auto&& which, bool panel_copy) {
    for (const Matrix& m : matrices)
      if (which(m))
        sink = sink + tinylm::int8::read_words_avx512(
                          reinterpret_cast<const uint64_t*>(panel_copy ? m.panels : m.rows),
                          m.N * m.K / 8);
  };
  auto all = [](const Matrix&) { return true; };
  auto k128 = [](const Matrix& m) { return m.K == 128; };
  std::printf("best of 3,000 passes, us: the engine's GEMV (rows) | a 64-byte read of the same bytes\n");
  for (int round = 0; round < 4; ++round) {
    const double all_rows = best_us([&] { for (const Matrix& m : matrices) rows_gemv(m); });
    const double all_read = best_us([&] { read(all, false); });
    const double k128_rows = best_us([&] { for (const Matrix& m : matrices) if (k128(m)) rows_gemv(m); });
    const double qkvo_rows = best_us([&] { for (const Matrix& m : matrices) if (qkvo(m)) rows_gemv(m); });
    const double qkvo_panels = best_us([&] {
      for (const Matrix& m : matrices) if (qkvo(m)) gemv_panels(m, x_biased, c.data());
    });
    const double qkvo_read = best_us([&] { read(qkvo, true); });
    std::printf("all %zu matrices: %.2f | %.2f   the %d of K = 128: %.2f   q/k/v/o: %.2f, in "
                "panels %.2f | %.2f\n",
                matrices.size(), all_rows, all_read,
                int(std::count_if(matrices.begin(), matrices.end(), k128)), k128_rows, qkvo_rows,
                qkvo_panels, qkvo_read);
  }
}
