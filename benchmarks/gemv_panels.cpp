// The decode step's int8 GEMV kernels (csrc/engine/gemv_panels_*.cpp) over one preset's
// matrices, stored in panels as the model file stores them, one after another as a step
// reads them, on one thread: best of many passes, against a read of the same bytes in
// the widest loads (the roofline's read, int8::read_checksum). It shows how close the
// products come to the read with nothing else of a step around them. Every kernel this
// CPU runs: AVX-512 VNNI, AVX2.
//
// From the repository's root:
//   F="-O3 -std=c++17 -Icsrc" V="-mavx2 -mfma -mf16c -mavx512f -mavx512bw -mavx512dq -mavx512vl"
//   g++ $F -c $V -mavx512vnni csrc/engine/gemv_panels_avx512vnni.cpp -o /tmp/gp1.o &&
//   g++ $F -c -mavx2 -mfma -mf16c csrc/engine/gemv_panels_avx2.cpp -o /tmp/gp2.o &&
//   g++ $F -c $V csrc/int8/read_avx512.cpp -o /tmp/gp3.o &&
//   g++ $F -c -mavx2 csrc/int8/read_avx2.cpp -o /tmp/gp4.o &&
//   g++ $F benchmarks/gemv_panels.cpp csrc/engine/gemv_panels_ref.cpp /tmp/gp[1-4].o
//       -o /tmp/gemv_panels && /tmp/gemv_panels small
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "engine/gemv_kernels.h"
#include "int8/kernels.h"

namespace {

struct Matrix {
  int64_t N, K;
  const int8_t* panels;
  int32_t x_sum;  // of x's first K bytes, which this matrix multiplies
};

template <class Fn>
double best_us(Fn&& fn, int passes) {
  double best = 1e9;
  for (int r = 0; r < passes; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best * 1e6;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string preset = argc > 1 ? argv[1] : "small";
  struct Shape {
    int64_t d, ff, layers;
    int passes;
  };
  const Shape s = preset == "baby"     ? Shape{128, 344, 4, 3000}
                  : preset == "medium" ? Shape{512, 1376, 8, 200}
                                       : Shape{288, 768, 6, 1000};
  // q, k, v, o, gate, up, down a layer, then the tied head (257 byte tokens)
  std::vector<std::pair<int64_t, int64_t>> shapes;
  for (int layer = 0; layer < s.layers; ++layer)
    for (auto nk : {std::pair<int64_t, int64_t>{s.d, s.d}, {s.d, s.d}, {s.d, s.d}, {s.d, s.d},
                    {s.ff, s.d}, {s.ff, s.d}, {s.d, s.ff}})
      shapes.push_back(nk);
  shapes.push_back({257, s.d});
  int64_t bytes = 0;
  for (auto [N, K] : shapes) bytes += tinylm::engine::panel_bytes(N, K);
  std::vector<int8_t> buf(size_t(bytes) + 64);
  int8_t* base = buf.data() + (64 - uintptr_t(buf.data()) % 64) % 64;
  std::mt19937 rng(1);
  for (int64_t i = 0; i < bytes; ++i) base[i] = int8_t(int(rng() % 255) - 127);
  std::vector<Matrix> matrices;
  int64_t offset = 0;
  for (auto [N, K] : shapes) {
    matrices.push_back({N, K, base + offset, 0});
    offset += tinylm::engine::panel_bytes(N, K);
  }
  std::vector<int8_t> x(size_t(s.ff), 0);
  for (auto& v : x) v = int8_t(int(rng() % 255) - 127);
  for (Matrix& m : matrices)
    for (int64_t k = 0; k < m.K; ++k) m.x_sum += x[size_t(k)];
  std::vector<float> scale(2048, 1.f), y(2048), want(2048);

  __builtin_cpu_init();
  struct Kernel {
    const char* name;
    bool runs;
    tinylm::engine::PanelGemvKernel fn;
  };
  const Kernel kernels[] = {
      {"avx512vnni", __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw"),
       tinylm::engine::gemv_panels_avx512vnni},
      {"avx2", bool(__builtin_cpu_supports("avx2")), tinylm::engine::gemv_panels_avx2}};
  auto run = [&](const Kernel& k, const Matrix& m) {
    k.fn({m.panels, m.K, scale.data(), x.data(), m.x_sum, 1.f, y.data()}, 0, m.N);
  };
  // every kernel must give the scalar kernel's products
  for (const Kernel& k : kernels) {
    if (!k.runs) continue;
    for (const Matrix& m : matrices) {
      tinylm::engine::gemv_panels_ref({m.panels, m.K, scale.data(), x.data(), m.x_sum, 1.f, want.data()},
                                      0, m.N);
      run(k, m);
      if (!std::equal(y.begin(), y.begin() + m.N, want.begin())) {
        std::printf("%s differs from the scalar kernel\n", k.name);
        return 1;
      }
    }
  }
  const bool wide = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  auto read = [&] {
    const auto* words = reinterpret_cast<const uint64_t*>(base);
    volatile uint64_t sink = wide ? tinylm::int8::read_words_avx512(words, bytes / 8)
                                  : tinylm::int8::read_words_avx2(words, bytes / 8);
    (void)sink;
  };
  std::printf("`%s`: %zu int8 matrices in panels, %.2f MB; best of %d passes, one thread, us\n",
              preset.c_str(), matrices.size(), double(bytes) / 1e6, s.passes);
  for (int round = 0; round < 4; ++round) {
    std::printf("round %d: %d-byte read %.2f", round + 1, wide ? 64 : 32, best_us(read, s.passes));
    for (const Kernel& k : kernels)
      if (k.runs)
        std::printf(" | %s %.2f", k.name, best_us([&] { for (const Matrix& m : matrices) run(k, m); }, s.passes));
    std::printf("\n");
  }
}
