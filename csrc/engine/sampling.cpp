// The sampler of tinylm/sampling.py, rule for rule (read the rules there): the same
// generator and the same float64 arithmetic, the exponential included (our own, not the
// C library's), so that a seed picks the same tokens in both engines on every machine.
//
// The reference sorts the candidates; this does not need to. The weights are whole
// numbers whose sums are exact, so the total of any set of tokens is the same in any
// order: top-p's nucleus comes from the weight in each of a set of logit buckets (the
// logits' range cut into one bucket per candidate, best first), and only the few tokens
// in the bucket where the running weight reaches p of the total are put in order; the
// weights of the tokens left out are then set to 0, and the pick is one running sum over
// the candidates in id order. The scan of the logits and their weights run in the active
// level's vectors (weigh_simd.h). What each step of this design measured:
// benchmarks/NOTES.md and the README's paragraph on the sampler; benchmarks/sampler.cpp
// times it alone.
// Nothing here allocates once the scratch vectors have grown.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "engine.h"
#include "gemv_kernels.h"

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

// e^x for x <= 0, tinylm.sampling.weight_exp's arithmetic step for step (read why
// there): 0 below -40, else x = n ln 2 + r, e^r by Horner's rule on its Taylor series to
// r^10, times 2^n. Without branches, so that a loop over it vectorizes. (Portable code:
// no FMA contracts these, on x86 for want of -mfma, on ARM by -ffp-contract=off.)
inline double exp_step_by_step(double x) {
  using namespace weight_exp_constants;
  const bool small = !(x >= -40.0);
  x = small ? 0.0 : x;
  const double k = double(int32_t(-x * kLog2e + 0.5));  // n = -k; truncating a positive: the floor
  const double r = (x + k * kLn2Hi) + k * kLn2Lo;
  double p = kTaylor[0];
  for (int c = 1; c < 11; ++c) p = p * r + kTaylor[c];
  const int64_t bits = (1023 - int64_t(k)) << 52;  // 2^-k, k <= 58: a normal double
  double scale;
  std::memcpy(&scale, &bits, 8);
  return small ? 0.0 : p * scale;
}

}  // namespace

double weight_exp(double x) { return exp_step_by_step(x); }

uint64_t weigh_ref(const double* x, int64_t n, double top, double inverse_temperature,
                   double unit, uint64_t* w) {
  // In blocks: e * unit + 0.5 in a loop of its own, which vectorizes (a conversion of
  // doubles to 64-bit integers in it would stop that on SSE2), then those to integers.
  constexpr int64_t kBlock = 64;
  double y[kBlock];
  uint64_t total = 0;
  for (int64_t i0 = 0; i0 < n; i0 += kBlock) {
    const int64_t m = std::min(kBlock, n - i0);
    for (int64_t i = 0; i < m; ++i)
      y[i] = exp_step_by_step((x[i0 + i] - top) * inverse_temperature) * unit + 0.5;
    for (int64_t i = 0; i < m; ++i)  // floor(y): below 2^53, not negative, so the truncation
      total += w[i0 + i] = uint64_t(int64_t(y[i]));
  }
  return total;
}

Extremes extremes_ref(const double* x, int64_t n) {
  Extremes e{-HUGE_VAL, HUGE_VAL, false};
  for (int64_t i = 0; i < n; ++i) {
    const double v = x[i];
    e.nan |= v != v;
    e.top = v > e.top ? v : e.top;
    e.low = v < e.low && v > -HUGE_VAL ? v : e.low;
  }
  return e;
}

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

// A strict total order, best first: logit descending, equal logits by id ascending
// (np.lexsort((ids, -logits))). No NaN reaches it; -0.0 and 0.0 are equal logits.
struct Better {
  const double* l;
  bool operator()(int32_t a, int32_t b) const { return l[a] > l[b] || (l[a] == l[b] && a < b); }
};

// The whole units of 2^-S that a weight is counted in, S = 53 - bit_length(V).
double weight_unit(int64_t V) {
  int bits = 0;
  while (bits < 63 && (V >> bits) != 0) ++bits;
  return std::ldexp(1.0, 53 - bits);
}

// Keeps top-p's nucleus: the shortest best-first run of the candidates (their logits
// `chosen` and weights w by position; ids their tokens) whose running weight reaches
// `target` (at least one: the best's weight is 1 unit, far above 0); lo is the lowest
// finite logit among them and hi the highest. Every other candidate's weight becomes 0,
// so that the pick never lands on it; returns the nucleus's weight.
uint64_t keep_nucleus(const double* chosen, uint64_t* w, const std::vector<int32_t>& ids,
                      const Better& better, double hi, double lo, double target,
                      SampleScratch& m) {
  // Buckets follow the best-first order: a higher logit never lands in a later bucket
  // (every operation here is monotonic), equal logits share one, and -inf goes last.
  // (The logits come as float32, so hi - lo, when not 0, is far above 2^-1000 and the
  // scale finite.) The buckets first, in a loop of their own that the compiler
  // vectorizes, then their weights and members.
  const size_t n = ids.size(), buckets = n;  // one per candidate
  const double scale = hi > lo ? double(buckets) / (hi - lo) : 0.0;
  const double last_bucket = double(buckets - 1);
  std::vector<int32_t>& bucket = m.bucket;  // by position
  bucket.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const double v = chosen[i];
    bucket[i] = int32_t(std::min(v > -HUGE_VAL ? (hi - v) * scale : last_bucket, last_bucket));
  }
  // Each bucket's weight, and its members as a list: positions bucket_first[b],
  // next_in_bucket[that], ... until -1.
  std::vector<uint64_t>& bucket_weight = m.bucket_weight;
  std::vector<int32_t> &bucket_first = m.bucket_first, &next_in_bucket = m.next_in_bucket;
  bucket_weight.assign(buckets, 0);
  bucket_first.assign(buckets, -1);
  next_in_bucket.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const size_t b = size_t(bucket[i]);
    bucket_weight[b] += w[i];
    next_in_bucket[i] = bucket_first[b];
    bucket_first[b] = int32_t(i);
  }
  // Weights are whole numbers below 2^53 (exact as doubles): a running weight is below
  // target when it is below its ceiling, compared as integers.
  const uint64_t need = target > 0 ? uint64_t(std::ceil(target)) : 0;
  uint64_t run = 0;  // the weight of the buckets before `edge`: below need
  int32_t edge = 0;
  while (size_t(edge) + 1 < buckets && run + bucket_weight[size_t(edge)] < need)
    run += bucket_weight[size_t(edge++)];
  // The edge bucket's members, best first: those up to the one where the running weight
  // reaches need are kept (all of them if it never does: the last bucket).
  std::vector<int32_t>& members = m.edge_positions;
  members.clear();
  for (int32_t i = bucket_first[size_t(edge)]; i >= 0; i = next_in_bucket[size_t(i)])
    members.push_back(i);
  std::sort(members.begin(), members.end(),
            [&](int32_t a, int32_t b) { return better(ids[size_t(a)], ids[size_t(b)]); });
  size_t kept = 0;
  while (kept < members.size() && run < need) run += w[size_t(members[kept++])];
  // the later buckets out, with a mask (a branch here mispredicts on random buckets),
  // then the edge bucket's members past the last kept one
  for (size_t i = 0; i < n; ++i) w[i] &= uint64_t(0) - uint64_t(bucket[i] <= edge);
  for (size_t j = kept; j < members.size(); ++j) w[size_t(members[j])] = 0;
  return run;
}

}  // namespace

int32_t sample(const float* logits, int64_t V, const Sampling& s, uint64_t* rng_state,
               const int32_t* history, int64_t n_history, SampleScratch& m) {
  std::vector<double>& l = m.logits;
  l.assign(logits, logits + V);
  if (s.repetition_penalty != 1.0) penalize(l, history, n_history, s.repetition_penalty);
  const Extremes e = extremes(l.data(), V);
  if (e.nan || !std::isfinite(e.top)) throw std::invalid_argument(kNotFinite);
  const double top = e.top;
  double lo = e.low;  // the lowest finite logit (of the candidates, once top-k has chosen)
  if (s.temperature == 0.0)  // the first of equal maxima
    return int32_t(std::find(l.begin(), l.end(), top) - l.begin());
  const Better better{l.data()};

  // The candidates, in id order: all tokens, or those no worse than the k-th best.
  std::vector<int32_t>& ids = m.ids;
  ids.resize(size_t(V));
  for (int64_t i = 0; i < V; ++i) ids[size_t(i)] = int32_t(i);
  const int64_t k = s.top_k > 0 ? std::min(s.top_k, V) : V;
  if (k < V) {
    std::nth_element(ids.begin(), ids.begin() + (k - 1), ids.end(), better);
    const int32_t kth = ids[size_t(k - 1)];
    if (l[size_t(kth)] > -HUGE_VAL) lo = l[size_t(kth)];
    ids.clear();
    for (int64_t i = 0; i < V; ++i)
      if (!better(kth, int32_t(i))) ids.push_back(int32_t(i));
  }

  // Their logits side by side (all of l when every token is a candidate), and their
  // weights in whole units, by position, with the active level's kernel.
  const size_t n = ids.size();
  const double* chosen = l.data();
  if (n < size_t(V)) {
    m.chosen.resize(n);
    for (size_t i = 0; i < n; ++i) m.chosen[i] = l[size_t(ids[i])];
    chosen = m.chosen.data();
  }
  std::vector<uint64_t>& w = m.weights;
  w.resize(n);
  const uint64_t total =
      weigh(chosen, int64_t(n), top, 1.0 / s.temperature, weight_unit(V), w.data());

  // The pick: the first kept candidate, in id order, whose running weight exceeds r
  // (top-p has set the weights of the others to 0; without it all are kept).
  const uint64_t kept = s.top_p < 1.0 ? keep_nucleus(chosen, w.data(), ids, better, top, lo,
                                                     s.top_p * double(total), m)
                                      : total;
  const uint64_t r = std::min(uint64_t(rng_uniform(rng_state) * double(kept)), kept - 1);
  uint64_t run = 0;
  for (size_t i = 0; i < n; ++i)
    if ((run += w[i]) > r) return ids[i];
  return ids.back();  // not reached: the kept tokens' running weight ends above r
}

}  // namespace tinylm::engine
