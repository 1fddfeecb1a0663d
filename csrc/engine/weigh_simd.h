// The sampler's weights (sampling.cpp's weigh_ref: floor(e^((x - top) * inverse_temperature)
// * unit + 0.5), e^ by exp_step_by_step, as tinylm.sampling.weight_exp) a vector of
// doubles at a time: the same IEEE operations in the same order, so the same bits; and
// its scan of the logits (extremes_ref's results). Written once as templates on the
// vector "Ops" of each instruction-set file (sampling_avx2.cpp, sampling_avx512.cpp),
// which compiles them with its own flags.
//
// Ops: D (doubles), I (64-bit integers), Mask, kLanes; set1(d), set1_int(i), load(p),
// store(p, I), store(p, D), add, sub, mul (doubles), add_int, sub_int, shift52(I) (each
// lane << 52), as_double(I), as_int(D) (the bits), truncate(D) (toward zero),
// at_least(D, d) (a Mask of the lanes >= d, false for NaN), zero_unless(D, Mask); for the
// scan, max(a, b) and min(a, b) (a > b ? a : b and a < b ? a : b, lane by lane: b where
// either is NaN, as maxpd and minpd do), above_or(v, d, r) (v where v > d, else r),
// nan_bits(D) (all ones in the NaN lanes), bit_or(D, D).
//
// The files that include this must turn FMA contraction off: a multiply and the add
// after it fused into one FMA would change the last bits (and GCC fuses intrinsics too).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "engine.h"
#include "gemv_kernels.h"

namespace tinylm::engine::weigh_simd {

// The whole numbers 0 to 2^52 (as doubles) as integers: the low bits of v + 2^52, exact in
// that range. (SIMDe has no AVX-512 conversion of doubles to 64-bit integers, and AVX2
// none at all.)
template <class O>
typename O::I whole_to_int(typename O::D v) {
  const typename O::D two52 = O::set1(4503599627370496.0);
  return O::sub_int(O::as_int(O::add(v, two52)), O::as_int(two52));
}

template <class O>
typename O::D weight_exp(typename O::D v) {
  using namespace weight_exp_constants;
  // below -40 (or NaN): weight 0, computed on 0 so that every step stays finite
  const typename O::Mask big = O::at_least(v, -40.0);
  v = O::zero_unless(v, big);
  // k = trunc(-x log2(e) + 0.5) (x * -log2e is -x * log2e exactly: rounding is symmetric)
  const typename O::D k = O::truncate(O::add(O::mul(v, O::set1(-kLog2e)), O::set1(0.5)));
  const typename O::D r =
      O::add(O::add(v, O::mul(k, O::set1(kLn2Hi))), O::mul(k, O::set1(kLn2Lo)));
  typename O::D p = O::set1(kTaylor[0]);
  for (int c = 1; c < 11; ++c) p = O::add(O::mul(p, r), O::set1(kTaylor[c]));
  // 2^-k (k is 0 to 58)
  const typename O::I bits = O::shift52(O::sub_int(O::set1_int(1023), whole_to_int<O>(k)));
  return O::zero_unless(O::mul(p, O::as_double(bits)), big);
}

// a vector of weights: floor(e^((x - top) * inverse_temperature) * unit + 0.5), at most
// unit (<= 2^52)
template <class O>
typename O::I weights(typename O::D x, typename O::D top, typename O::D inverse_temperature,
                      typename O::D unit) {
  const typename O::D e = weight_exp<O>(O::mul(O::sub(x, top), inverse_temperature));
  return whole_to_int<O>(O::truncate(O::add(O::mul(e, unit), O::set1(0.5))));
}

// weigh's contract (engine.h): w[i] for i < n, and their sum.
template <class O>
uint64_t weigh(const double* x, int64_t n, double top, double inverse_temperature, double unit,
               uint64_t* w) {
  constexpr int64_t kLanes = O::kLanes;
  const typename O::D t = O::set1(top), it = O::set1(inverse_temperature), u = O::set1(unit);
  typename O::I total = O::set1_int(0);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const typename O::I wv = weights<O>(O::load(x + i), t, it, u);
    O::store(w + i, wv);
    total = O::add_int(total, wv);
  }
  if (i < n) {  // the last few through a buffer padded with -inf (weight 0)
    double tail[kLanes];
    std::fill(tail, tail + kLanes, -HUGE_VAL);
    std::copy(x + i, x + n, tail);
    uint64_t out[kLanes];
    const typename O::I wv = weights<O>(O::load(tail), t, it, u);
    O::store(out, wv);
    total = O::add_int(total, wv);
    std::copy(out, out + (n - i), w + i);
  }
  uint64_t lanes[kLanes];
  O::store(lanes, total);
  uint64_t sum = 0;
  for (uint64_t lane : lanes) sum += lane;
  return sum;
}

// extremes' contract (engine.h): the highest of x[0..n), the lowest above -inf, any NaN.
template <class O>
Extremes extremes(const double* x, int64_t n) {
  constexpr int64_t kLanes = O::kLanes;
  typename O::D top = O::set1(-HUGE_VAL), low = O::set1(HUGE_VAL), nan = O::set1(0.0);
  auto take = [&](typename O::D v) {
    nan = O::bit_or(nan, O::nan_bits(v));
    top = O::max(v, top);  // a NaN v leaves top as it was
    low = O::min(O::above_or(v, -HUGE_VAL, HUGE_VAL), low);
  };
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) take(O::load(x + i));
  if (i < n) {  // the last few through a buffer padded with -inf (neither top nor low)
    double tail[kLanes];
    std::fill(tail, tail + kLanes, -HUGE_VAL);
    std::copy(x + i, x + n, tail);
    take(O::load(tail));
  }
  double tops[kLanes], lows[kLanes], nans[kLanes];
  O::store(tops, top), O::store(lows, low), O::store(nans, nan);
  Extremes e{-HUGE_VAL, HUGE_VAL, false};
  for (int64_t l = 0; l < kLanes; ++l) {
    e.top = std::max(e.top, tops[l]);
    e.low = std::min(e.low, lows[l]);
    e.nan |= nans[l] != 0.0;  // all ones is a NaN: != 0 holds
  }
  return e;
}

}  // namespace tinylm::engine::weigh_simd
