// The sampler of tinylm/sampling.py, step for step (read the rules there): the same
// generator, the same float64 arithmetic in the same order, so that a seed picks the
// same tokens in both engines.
//
// Two things make it cheaper than the rules read literally, without changing a pick:
// - top-p leaves out, before sorting, the tokens whose weight is below half of
//   (1 - p) * total / (vocab - 1): such a token can never be inside the nucleus (if the
//   best-first prefix before it held less than p of the total, it and the at most
//   vocab - 1 tokens after it, none heavier, would have to hold more than 1 - p). With a
//   peaked distribution, as a trained model gives, that leaves a handful to sort;
// - the sort is a bucket sort: on the 257 byte tokens of a flat distribution, std::sort
//   took 10-15 us (as long as the rest of a decode step on the `baby` preset), an LSD
//   radix sort 7-8 us (its byte histograms wait on the few counters that near-equal
//   logits share), this one ~3 us.
// Nothing here allocates once the scratch vectors have grown.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
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
  int32_t seen[kRepetitionWindow];
  int64_t n_seen = 0;
  for (int64_t i = start; i < n; ++i) {
    const int32_t t = history[i];
    if (t < 0 || t >= V || std::find(seen, seen + n_seen, t) != seen + n_seen) continue;
    seen[n_seen++] = t;
    l[size_t(t)] = l[size_t(t)] > 0 ? l[size_t(t)] / penalty : l[size_t(t)] * penalty;
  }
}

// Sorts ids (ascending on entry) best first: logit descending, equal logits by id
// ascending, as np.lexsort((ids, -logits)) does. A bucket sort: the range of the logits
// is cut into two buckets per token, the ids are counted into their buckets in order
// (so ids stay ascending within one), and the few ids that share a bucket are put in
// order. Buckets follow the logits' order, so that is the whole order.
// The comparisons are on integer keys, a strict total order of doubles, so the sort is
// well defined whatever the logits.
void sort_best_first(const std::vector<double>& l, std::vector<int32_t>& ids, SampleScratch& m) {
  const size_t n = ids.size();
  std::vector<uint64_t>& key = m.keys;  // by id; increases as the logit decreases
  key.resize(l.size());
  // the range of the finite logits: -inf (a token masked through the library API) goes
  // to the last bucket, instead of stretching the range until every other shares one
  double hi = -HUGE_VAL, lo = HUGE_VAL;
  for (int32_t id : ids) {
    const double v = l[size_t(id)] + 0.0;  // -0.0 becomes 0.0: they are equal
    uint64_t bits;
    std::memcpy(&bits, &v, 8);
    key[size_t(id)] = bits >> 63 ? bits : ~(bits | (uint64_t(1) << 63));
    hi = std::max(hi, v);
    if (v > -HUGE_VAL) lo = std::min(lo, v);
  }
  auto better = [&key](int32_t a, int32_t b) {
    return key[size_t(a)] < key[size_t(b)] || (key[size_t(a)] == key[size_t(b)] && a < b);
  };
  if (!(hi > lo)) {  // all equal: nothing to cut into buckets
    std::sort(ids.begin(), ids.end(), better);
    return;
  }
  const size_t buckets = 2 * n;
  const double scale = double(buckets) / (hi - lo);
  std::vector<uint32_t>& bucket = m.bucket;  // by position in ids
  std::vector<uint32_t>& start = m.bucket_start;
  bucket.resize(n);
  start.assign(buckets + 1, 0);
  for (size_t i = 0; i < n; ++i) {
    const double at = (hi - l[size_t(ids[i])]) * scale;  // 0 for the best, `buckets` for the worst
    bucket[i] = uint32_t(at < double(buckets - 1) ? std::max(at, 0.0) : double(buckets - 1));
    ++start[bucket[i] + 1];
  }
  for (size_t b = 0; b < buckets; ++b) start[b + 1] += start[b];
  std::vector<int32_t>& sorted = m.ids_out;
  sorted.resize(n);
  for (size_t i = 0; i < n; ++i) sorted[start[bucket[i]]++] = ids[i];
  ids.swap(sorted);
  // Only ids in one bucket can be out of order, so an insertion sort finishes in about n
  // steps. Logits bunched into a few buckets would make it quadratic: past 8n moves,
  // std::sort takes over.
  size_t moves = 0;
  for (size_t i = 1; i < n; ++i) {
    const int32_t id = ids[i];
    size_t j = i;
    for (; j > 0 && better(id, ids[j - 1]); --j) ids[j] = ids[j - 1];
    ids[j] = id;
    moves += i - j;
    if (moves > 8 * n) {
      std::sort(ids.begin(), ids.end(), better);
      return;
    }
  }
}

}  // namespace

int32_t sample(const float* logits, int64_t V, const Sampling& s, uint64_t* rng_state,
               const int32_t* history, int64_t n_history, SampleScratch& m) {
  std::vector<double>& l = m.logits;
  l.assign(logits, logits + V);
  if (s.repetition_penalty != 1.0) penalize(l, history, n_history, s.repetition_penalty);
  const auto best = std::max_element(l.begin(), l.end());  // the first of equal maxima
  const bool any_nan = std::any_of(l.begin(), l.end(), [](double v) { return v != v; });
  if (any_nan || !std::isfinite(*best)) throw std::invalid_argument(kNotFinite);
  if (s.temperature == 0.0) return int32_t(best - l.begin());
  const double top = *best;
  auto weight = [&](int32_t id) { return std::exp((l[size_t(id)] - top) / s.temperature); };

  // candidates: id order, or best first cut to top-k; their weights; and the total
  // weight that top-p takes its share of, summed in id order
  std::vector<int32_t>& ids = m.ids;
  std::vector<double>& w = m.weights;
  double total = 0;
  if (s.top_k > 0) {
    const int64_t k = std::min(s.top_k, V);
    ids.resize(size_t(V));
    for (int64_t i = 0; i < V; ++i) ids[size_t(i)] = int32_t(i);
    if (k * 4 < V) {  // a few of many: a partial sort
      auto better = [&](int32_t a, int32_t b) {
        return l[size_t(a)] > l[size_t(b)] || (l[size_t(a)] == l[size_t(b)] && a < b);
      };
      std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), better);
    } else {
      sort_best_first(l, ids, m);
    }
    ids.resize(size_t(k));
    std::vector<int32_t>& by_id = m.ids_out;
    by_id.assign(ids.begin(), ids.end());
    std::sort(by_id.begin(), by_id.end());
    for (int32_t id : by_id) total += weight(id);
    w.resize(ids.size());
    for (size_t i = 0; i < ids.size(); ++i) w[i] = weight(ids[i]);
  } else {
    std::vector<double>& all = m.all_weights;
    all.resize(size_t(V));
    for (int64_t i = 0; i < V; ++i) total += all[size_t(i)] = weight(int32_t(i));
    ids.clear();
    if (s.top_p < 1.0) {
      const double cutoff = V > 1 ? 0.5 * (1.0 - s.top_p) * total / double(V - 1) : 0.0;
      for (int64_t i = 0; i < V; ++i)
        if (all[size_t(i)] >= cutoff) ids.push_back(int32_t(i));
      sort_best_first(l, ids, m);
    } else {
      for (int64_t i = 0; i < V; ++i) ids.push_back(int32_t(i));
    }
    w.resize(ids.size());
    for (size_t i = 0; i < ids.size(); ++i) w[i] = all[size_t(ids[i])];
  }

  // running weights; top-p keeps the shortest prefix that reaches p of the total
  int64_t n = int64_t(ids.size());
  std::vector<double>& cum = m.cum;
  cum.resize(size_t(n));
  double run = 0;
  for (int64_t i = 0; i < n; ++i) cum[size_t(i)] = run += w[size_t(i)];
  if (s.top_p < 1.0) {
    const double target = s.top_p * total;
    int64_t keep = 0;
    while (keep < n - 1 && cum[size_t(keep)] < target) ++keep;
    n = keep + 1;
  }
  const double u = rng_uniform(rng_state) * cum[size_t(n - 1)];
  int64_t pick = 0;
  while (pick < n - 1 && !(cum[size_t(pick)] > u)) ++pick;
  return ids[size_t(pick)];
}

}  // namespace tinylm::engine
