// The sampler of tinylm/sampling.py, step for step (read the rules there): the same
// generator, the same float64 arithmetic in the same order, so that a seed picks the
// same tokens in both engines.
#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "engine.h"

namespace tinylm::engine {

uint64_t seed_state(uint64_t seed) {  // splitmix64
  uint64_t z = seed + 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return z ? z : 0x9E3779B97F4A7C15ull;
}

uint64_t rng_next(uint64_t* state) {  // xorshift64*
  uint64_t x = *state;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  *state = x;
  return x * 0x2545F4914F6CDD1Dull;
}

double rng_uniform(uint64_t* state) { return double(rng_next(state) >> 11) * (1.0 / 9007199254740992.0); }

namespace {

void penalize(std::vector<double>& l, const int32_t* history, int64_t n, double penalty) {
  const int64_t start = std::max<int64_t>(0, n - kRepetitionWindow);
  const int64_t V = int64_t(l.size());
  std::vector<int32_t> seen;
  seen.reserve(size_t(n - start));
  for (int64_t i = start; i < n; ++i) {
    const int32_t t = history[i];
    if (t < 0 || t >= V || std::find(seen.begin(), seen.end(), t) != seen.end()) continue;
    seen.push_back(t);
    l[size_t(t)] = l[size_t(t)] > 0 ? l[size_t(t)] / penalty : l[size_t(t)] * penalty;
  }
}

}  // namespace

int32_t sample(const float* logits, int64_t V, const Sampling& s, uint64_t* rng_state,
               const int32_t* history, int64_t n_history, std::vector<double>& l,
               std::vector<int32_t>& order) {
  l.assign(logits, logits + V);
  if (s.repetition_penalty != 1.0) penalize(l, history, n_history, s.repetition_penalty);
  if (s.temperature == 0.0)
    return int32_t(std::max_element(l.begin(), l.end()) - l.begin());  // first of equal maxima

  // candidates: id order, or best first (ties by id) cut to top-k
  int64_t n = V;
  order.resize(size_t(V));
  for (int64_t i = 0; i < V; ++i) order[size_t(i)] = int32_t(i);
  const bool sorted = s.top_k > 0 || s.top_p < 1.0;
  if (sorted) {
    // (logit, id) pairs sort faster than ids looked up through the logits
    thread_local std::vector<std::pair<double, int32_t>> pairs;
    pairs.resize(size_t(V));
    for (int64_t i = 0; i < V; ++i) pairs[size_t(i)] = {l[size_t(i)], int32_t(i)};
    auto better = [](const std::pair<double, int32_t>& a, const std::pair<double, int32_t>& b) {
      return a.first > b.first || (a.first == b.first && a.second < b.second);
    };
    n = s.top_k > 0 ? std::min<int64_t>(s.top_k, V) : V;
    if (n * 4 < V)  // a heap for a few of many; otherwise a full sort is faster
      std::partial_sort(pairs.begin(), pairs.begin() + n, pairs.end(), better);
    else
      std::sort(pairs.begin(), pairs.end(), better);
    for (int64_t i = 0; i < n; ++i) order[size_t(i)] = pairs[size_t(i)].second;
  }
  double top = l[size_t(order[0])];
  if (!sorted)
    for (int64_t i = 1; i < n; ++i) top = std::max(top, l[size_t(order[size_t(i)])]);

  // running weights, reusing l's storage after the logits are read
  std::vector<double> cum(static_cast<size_t>(n));
  double run = 0;
  for (int64_t i = 0; i < n; ++i) {
    run += std::exp((l[size_t(order[size_t(i)])] - top) / s.temperature);
    cum[size_t(i)] = run;
  }
  if (s.top_p < 1.0) {
    const double target = s.top_p * cum[size_t(n - 1)];
    int64_t keep = 0;
    while (keep < n - 1 && cum[size_t(keep)] < target) ++keep;
    n = keep + 1;
  }
  const double u = rng_uniform(rng_state) * cum[size_t(n - 1)];
  int64_t pick = 0;
  while (pick < n - 1 && !(cum[size_t(pick)] > u)) ++pick;
  return order[size_t(pick)];
}

}  // namespace tinylm::engine
