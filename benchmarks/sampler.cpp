// The native sampler (csrc/engine/sampling.cpp) alone, as generation calls it once a token:
// temperature 0.8, top-p 0.95, over 256 rows of 257 logits (the byte vocabulary) drawn
// from a normal distribution, flat (spread 1, what a model with random weights gives:
// top-p's worst case, most tokens in the nucleus) and peaked (spread 3). Best and mean of
// 200 passes over the rows, five rounds, with the active instruction-set level's kernels.
//
// From the repository's root, linked with the native test driver's objects:
//   python csrc/tests/build.py --no-run &&
//   g++ -O2 -std=c++17 -Icsrc benchmarks/sampler.cpp $(find csrc/tests/out/host/obj/csrc
//       -name '*.o' ! -path '*/obj/csrc/tests/*') -lpthread -o /tmp/sampler && /tmp/sampler
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <vector>

#include "engine/engine.h"

using namespace tinylm::engine;

int main() {
  constexpr int V = 257, kRows = 256, kPasses = 200;
  for (const double spread : {1.0, 3.0}) {
    std::mt19937 gen(1);
    std::normal_distribution<float> normal(0.0f, float(spread));
    std::vector<float> logits(size_t(V) * kRows);
    for (float& v : logits) v = normal(gen);
    Sampling s;
    s.temperature = 0.8;
    s.top_p = 0.95;
    SampleScratch scratch;
    uint64_t state = seed_state(1);
    volatile int sink = 0;
    for (int round = 0; round < 5; ++round) {
      double best = 1e9, total = 0;
      for (int pass = 0; pass < kPasses; ++pass) {
        const auto t0 = std::chrono::steady_clock::now();
        for (int r = 0; r < kRows; ++r)
          sink = sink + sample(&logits[size_t(r) * V], V, s, &state, nullptr, 0, scratch);
        const double us = std::chrono::duration<double, std::micro>(
                              std::chrono::steady_clock::now() - t0).count() / kRows;
        best = std::min(best, us);
        total += us;
      }
      std::printf("spread %.0f: best %.3f us a call, mean %.3f\n", spread, best, total / kPasses);
    }
  }
}
