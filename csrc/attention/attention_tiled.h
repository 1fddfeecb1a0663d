// The tiled attention kernels, written once against a small vector interface and
// compiled by each ISA file (attention_avx2.cpp, attention_avx512.cpp, attention_neon.cpp)
// with its own flags. Everything here has internal linkage, so the copies never meet at
// link time.
//
// The vector interface `O` provides: type V holding W floats; register blocking R (rows)
// and NV (vectors per row) for the matrix-product block; and zero, set1, load, store
// (unaligned), load_half (W IEEE halves widened to floats), add, sub, mul, max,
// fma(a, b, c) = a*b + c, hsum, hmax, hsum4(a, b, c, d, scale, out) (out[0..3] = the four
// vectors' sums times scale, their shuffles shared), round (to nearest integer),
// pow2(n) = 2^n for integral n in [-126, 127], zero_below(v, x, lo) = (x >= lo ? v : 0)
// lane by lane, and transpose_block, which transposes a TB x TB block of floats through
// registers.
//
// Every matrix product is written as C[M x N] (+)= A[M x K] B[K x N] with A read one
// element at a time (broadcast, so A may be stored either way round) and B read along rows
// in vectors. That is why the driver hands over keys and values transposed: the score
// tiles then come out of the same kernel as the value products, with no horizontal sums
// and no transposes inside.
#pragma once

#include <math.h>

#include <cstdint>

#include "../half.h"
#include "kernels.h"

namespace tinylm::attention::detail {
namespace {

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
inline float maxf(float a, float b) { return a > b ? a : b; }

constexpr float kNegInf = -INFINITY;

template <class O>
struct Tiled {
  using V = typename O::V;
  static constexpr int W = O::W;

  // ------------------------------------------------------------------ e^x

  // e^x = 2^n e^r with n = round(x / ln 2) and |r| <= ln(2)/2; e^r by a degree-6
  // polynomial fitted for least maximum relative error on that interval (7e-8 evaluated
  // in float32, as good as the degree-7 Taylor series with one FMA less). Exactly 0 below
  // -87.3, where e^x would be denormal: masked scores (-inf) come out as 0. Every caller
  // passes x <= 0 (a score minus a running maximum or a log-sum-exp, up to rounding), so
  // there is no clamp above.
  static inline V exp(V x) {
    const V lo = O::set1(-87.3f);
    const V xc = O::max(x, lo);
    const V n = O::round(O::mul(xc, O::set1(1.44269504088896341f)));
    V r = O::fma(n, O::set1(-0.693359375f), xc);  // ln 2 = 0.693359375 - 2.12194440e-4
    r = O::fma(n, O::set1(2.12194440e-4f), r);
    V p = O::set1(1.384140458e-3f);
    p = O::fma(p, r, O::set1(8.374841884e-3f));
    p = O::fma(p, r, O::set1(4.166814312e-2f));
    p = O::fma(p, r, O::set1(1.666641980e-1f));
    p = O::fma(p, r, O::set1(4.999999106e-1f));
    p = O::fma(p, r, O::set1(1.f));
    p = O::fma(p, r, O::set1(1.f));
    return O::zero_below(O::mul(p, O::pow2(n)), x, lo);
  }

  // ------------------------------------------------------------------ matrix products

  // One register block: R rows of C, NV vectors wide, over the whole K.
  template <int R, int NV, bool ACC>
  static inline void block(const float* A, int64_t lda, int64_t aks, const float* B, int64_t ldb,
                           float* C, int64_t ldc, int64_t K) {
    V acc[R][NV];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) acc[r][v] = ACC ? O::load(C + r * ldc + v * W) : O::zero();
    for (int64_t k = 0; k < K; ++k) {
      V b[NV];
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) b[v] = O::load(B + k * ldb + v * W);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const V a = O::set1(A[r * lda + k * aks]);
#pragma GCC unroll 8
        for (int v = 0; v < NV; ++v) acc[r][v] = O::fma(a, b[v], acc[r][v]);
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int v = 0; v < NV; ++v) O::store(C + r * ldc + v * W, acc[r][v]);
  }

  // block<rr, nv> for run-time rr <= R, nv <= NV (the ragged edges of a product).
  template <bool ACC, int Rt, int NVt>
  static inline void block_any(int64_t rr, int64_t nv, const float* A, int64_t lda, int64_t aks,
                               const float* B, int64_t ldb, float* C, int64_t ldc, int64_t K) {
    if constexpr (Rt > 1)
      if (rr < Rt) return block_any<ACC, Rt - 1, NVt>(rr, nv, A, lda, aks, B, ldb, C, ldc, K);
    if constexpr (NVt > 1)
      if (nv < NVt) return block_any<ACC, Rt, NVt - 1>(rr, nv, A, lda, aks, B, ldb, C, ldc, K);
    block<Rt, NVt, ACC>(A, lda, aks, B, ldb, C, ldc, K);
  }

  // Which blocks of a product the causal mask leaves non-zero, on a diagonal tile (where
  // query and key tiles coincide). Skipped parts of C are left as they were: the caller
  // masks them (scores) or never reads them.
  enum class Causal {
    none,
    cols_upto_row,  // C[r][c] needed for c <= r only (scores, query rows)
    ks_upto_row,    // sum over k <= r only (P V: probabilities of keys after r are 0)
    cols_from_row,  // C[r][c] needed for c >= r only (scores transposed, key rows)
    ks_from_row,    // sum over k >= r only (P^T dO, dS^T Q)
    ks_upto_col,    // sum over k <= c only (K^T dS^T)
  };

  static int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

  // C[M x N] = (ACC ? C : 0) + A[M x K] B[K x N]; N is a multiple of W. A[r][k] is at
  // A + r*lda + k*aks (aks = 1: row-major; lda = 1: A is stored transposed). Row blocks of
  // R, column blocks of NV vectors, each summing over the part of K that `mode` needs.
  template <bool ACC>
  static void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, int64_t aks,
                   const float* B, int64_t ldb, float* C, int64_t ldc,
                   Causal mode = Causal::none) {
    for (int64_t r0 = 0; r0 < M; r0 += O::R) {
      const int64_t r1 = min64(M, r0 + O::R);
      int64_t nb = 0, ne = N;
      if (mode == Causal::cols_upto_row) ne = min64(N, round_up(r1, W));
      if (mode == Causal::cols_from_row) nb = r0 / W * W;
      for (int64_t n0 = nb; n0 < ne; n0 += O::NV * W) {
        const int64_t n1 = min64(ne, n0 + O::NV * W);
        int64_t kb = 0, ke = K;
        if (mode == Causal::ks_upto_row) ke = min64(K, r1);
        if (mode == Causal::ks_from_row) kb = r0;
        if (mode == Causal::ks_upto_col) ke = min64(K, n1);
        if (kb >= ke) {  // an empty sum
          if (!ACC)
            for (int64_t r = r0; r < r1; ++r)
              for (int64_t n = n0; n < n1; n += W) O::store(C + r * ldc + n, O::zero());
          continue;
        }
        block_any<ACC, O::R, O::NV>(r1 - r0, (n1 - n0) / W, A + r0 * lda + kb * aks, lda, aks,
                                    B + kb * ldb + n0, ldb, C + r0 * ldc + n0, ldc, ke - kb);
      }
    }
  }

  // ------------------------------------------------------------------ packing

  // src rows [T x D] -> dst [D x Tp], columns T..Tp zero. TB rows of src at a time, so
  // that the lines read are all used before moving on; the ragged edges element by element.
  static void transpose(const float* src, int64_t T, int64_t D, float* dst, int64_t Tp) {
    constexpr int TB = O::TB;
    const int64_t Db = D / TB * TB;
    int64_t t = 0;
    for (; t + TB <= T; t += TB) {
      for (int64_t d = 0; d < Db; d += TB) O::transpose_block(src + t * D + d, D, dst + d * Tp + t, Tp);
      for (int64_t d = Db; d < D; ++d)
        for (int64_t i = t; i < t + TB; ++i) dst[d * Tp + i] = src[i * D + d];
    }
    for (int64_t d = 0; d < D; ++d) {
      for (int64_t i = t; i < T; ++i) dst[d * Tp + i] = src[i * D + d];
      for (int64_t i = T; i < Tp; ++i) dst[d * Tp + i] = 0.f;
    }
  }

  // ------------------------------------------------------------------ forward

  // Columns of score row r that a diagonal tile uses: the products read at most R - 1
  // columns past the diagonal (a register block's rows share their sums), so the rest,
  // wholly masked, need neither exp nor storing.
  static int64_t diag_cols(int64_t r, int tile) { return min64(tile, round_up(r + O::R, W)); }

  // s[r][c] = -inf where key c comes after query r, up to diag_cols(r) (the diagonal tile).
  static void mask_future(float* s, int64_t M, int tile) {
    const V neg_inf = O::set1(kNegInf);
    for (int64_t r = 0; r < M; ++r) {
      float* row = s + r * tile;
      const int64_t end = diag_cols(r, tile);
      int64_t c = r + 1;
      for (; c < end && c % W != 0; ++c) row[c] = kNegInf;
      for (; c < end; c += W) O::store(row + c, neg_inf);
    }
  }

  // Online softmax over one key tile: scores s [M x tile] become probabilities relative to
  // the new running max; l and the output accumulator are rescaled to that max. In passes
  // over all rows, with no library call inside (every vector register is caller-saved):
  // the rows' chains of dependent operations then overlap instead of running one by one.
  // m and m_new have room for M rounded up to whole vectors, the extra entries finite.
  static void softmax_update(float* s, int64_t M, int tile, bool diag, float scale, float* m,
                             float* m_new, float* l, float* acc, int64_t Dp) {
    for (int64_t r = 0; r < M; ++r) {
      const float* row = s + r * tile;
      const int64_t cols = diag ? diag_cols(r, tile) : tile;
      V mx = O::load(row);
      for (int64_t c = W; c < cols; c += W) mx = O::max(mx, O::load(row + c));
      m_new[r] = maxf(m[r], O::hmax(mx) * scale);
    }
    float* alpha = m;  // alpha = e^(m - m_new): 0 on the first tile, where m = -inf
    for (int64_t r = 0; r < M; r += W)
      O::store(alpha + r, exp(O::sub(O::load(m + r), O::load(m_new + r))));
    const V vscale = O::set1(scale);
    for (int64_t r = 0; r < M; ++r) {
      float* row = s + r * tile;
      const int64_t cols = diag ? diag_cols(r, tile) : tile;
      const V neg_max = O::set1(-m_new[r]);
      V sum = O::zero();
      for (int64_t c = 0; c < cols; c += W) {
        const V p = exp(O::fma(O::load(row + c), vscale, neg_max));
        O::store(row + c, p);
        sum = O::add(sum, p);
      }
      l[r] = l[r] * alpha[r] + O::hsum(sum);
    }
    for (int64_t r = 0; r < M; ++r) {
      if (alpha[r] != 1.f) {
        const V va = O::set1(alpha[r]);
        float* a = acc + r * Dp;
        for (int64_t d = 0; d < Dp; d += W) O::store(a + d, O::mul(O::load(a + d), va));
      }
      m[r] = m_new[r];
    }
  }

  static void forward_tile(const ForwardJob& j, int64_t bh, int64_t qt, float* work) {
    const int64_t b = bh / j.H, h = bh % j.H, hk = h / (j.H / j.Hkv);
    const int tile = j.tile;
    const int64_t T = j.T, D = j.D, Dp = j.Dp, q0 = qt * tile, M = min64(tile, T - q0);
    const float* q = j.q + (bh * T + q0) * D;
    const float* kT = j.kT + (b * j.Hkv + hk) * D * j.Tp;  // this head's tiles, D * tile each
    const float* v = j.v + (b * j.Hkv + hk) * T * Dp;

    float* s = work;                          // [tile x tile] scores, then probabilities
    float* acc = s + kMaxTile * kMaxTile;     // [tile x Dp] unnormalized output
    float* m = acc + kMaxTile * kMaxHeadDim;  // running max per row
    float* m_new = m + kMaxTile;              // and the next one
    float* l = m_new + kMaxTile;              // running sum per row
    for (int64_t r = 0; r < M; ++r) m[r] = kNegInf, l[r] = 0.f;
    for (int64_t r = M; r < round_up(M, W); ++r) m[r] = m_new[r] = 0.f;
    for (int64_t i = 0; i < M * Dp; i += W) O::store(acc + i, O::zero());

    for (int64_t kt = 0; kt <= qt; ++kt) {
      const int64_t k0 = kt * tile;
      const bool diag = kt == qt;
      gemm<false>(M, tile, D, q, D, 1, kT + k0 * D, tile, s, tile,
                  diag ? Causal::cols_upto_row : Causal::none);
      if (diag) mask_future(s, M, tile);
      softmax_update(s, M, tile, diag, j.scale, m, m_new, l, acc, Dp);
      gemm<true>(M, Dp, min64(tile, T - k0), s, tile, 1, v + k0 * Dp, Dp, acc, Dp,
                 diag ? Causal::ks_upto_row : Causal::none);
    }

    float* out = j.out + (bh * T + q0) * D;
    float* lse = j.lse + bh * T + q0;
    for (int64_t r = 0; r < M; ++r) {
      const float inv = 1.f / l[r];
      for (int64_t d = 0; d < D; ++d) out[r * D + d] = acc[r * Dp + d] * inv;
      lse[r] = m[r] + logf(l[r]);
    }
  }

  // ------------------------------------------------------------------ backward

  // From scores s and dP (rows: queries, columns: keys): s becomes P = exp(scale*s - lse)
  // and dp becomes dS = P (dP - delta) * scale, the gradient of the scaled scores.
  static void probs_and_grads(float* s, float* dp, int64_t M, int tile, bool diag,
                              const float* lse, const float* delta, float scale) {
    const V vscale = O::set1(scale);
    for (int64_t r = 0; r < M; ++r) {
      float* srow = s + r * tile;
      float* drow = dp + r * tile;
      const V neg_lse = O::set1(-lse[r]), neg_delta = O::set1(-delta[r]);
      const int64_t cols = diag ? diag_cols(r, tile) : tile;
      for (int64_t c = 0; c < cols; c += W) {
        const V p = exp(O::fma(O::load(srow + c), vscale, neg_lse));
        O::store(srow + c, p);
        O::store(drow + c, O::mul(O::mul(p, O::add(O::load(drow + c), neg_delta)), vscale));
      }
    }
  }

  static void backward_keys(const BackwardJob& j, int64_t bkv, int64_t kt_begin,
                            int64_t kt_end, float* dq, float* work) {
    const int64_t b = bkv / j.Hkv, hk = bkv % j.Hkv, group = j.H / j.Hkv;
    const int tile = j.tile;
    const int64_t T = j.T, D = j.D, Dp = j.Dp, Tp = j.Tp, nq = Tp / tile;
    const float* kp = j.kp + bkv * T * Dp;

    float* s = work;                        // scores, then probabilities
    float* dp = s + kMaxTile * kMaxTile;    // dP, then dS
    float* dk = dp + kMaxTile * kMaxTile;   // [tile x Dp]
    float* dv = dk + kMaxTile * kMaxHeadDim;
    // The key tile's keys and values transposed, [D x tile]: packed here, where they are
    // used, so that they are still in cache for every query tile.
    float* kT = dv + kMaxTile * kMaxHeadDim;
    float* vT = kT + kMaxHeadDim * kMaxTile;
    // The diagonal tiles skip score blocks the mask zeroes; what they read there must be
    // finite (0 * finite = 0), so start from zeros.
    for (int i = 0; i < kMaxTile * kMaxTile; i += W) {
      O::store(s + i, O::zero());
      O::store(dp + i, O::zero());
    }

    for (int64_t kt = kt_begin; kt < kt_end; ++kt) {
      const int64_t k0 = kt * tile, Mk = min64(tile, T - k0);
      transpose(j.k + (bkv * T + k0) * D, Mk, D, kT, tile);
      transpose(j.v + (bkv * T + k0) * D, Mk, D, vT, tile);
      for (int64_t i = 0; i < Mk * Dp; i += W) {
        O::store(dk + i, O::zero());
        O::store(dv + i, O::zero());
      }
      for (int64_t g = 0; g < group; ++g) {
        const int64_t bh = b * j.H + hk * group + g;
        for (int64_t qt = kt; qt < nq; ++qt) {
          const int64_t q0 = qt * tile, Mq = min64(tile, T - q0), row = bh * T + q0;
          const bool diag = qt == kt;
          const Causal upper = diag ? Causal::cols_upto_row : Causal::none;
          gemm<false>(Mq, tile, D, j.q + row * D, D, 1, kT, tile, s, tile, upper);
          gemm<false>(Mq, tile, D, j.dout + row * D, D, 1, vT, tile, dp, tile, upper);
          if (diag) mask_future(s, Mq, tile);
          probs_and_grads(s, dp, Mq, tile, diag, j.lse + row, j.delta + row, j.scale);
          // dV += P^T dO and dK += dS^T Q: P and dS read transposed (lda = 1, aks = tile).
          const Causal sums = diag ? Causal::ks_from_row : Causal::none;
          gemm<true>(Mk, Dp, Mq, s, 1, tile, j.dop + row * Dp, Dp, dv, Dp, sums);
          gemm<true>(Mk, Dp, Mq, dp, 1, tile, j.qp + row * Dp, Dp, dk, Dp, sums);
          // dQ += dS K
          gemm<true>(Mq, Dp, Mk, dp, tile, 1, kp + k0 * Dp, Dp, dq + row * Dp, Dp,
                     diag ? Causal::ks_upto_row : Causal::none);
        }
      }
      float* dk_out = j.dk + (bkv * T + k0) * D;
      float* dv_out = j.dv + (bkv * T + k0) * D;
      for (int64_t r = 0; r < Mk; ++r)
        for (int64_t d = 0; d < D; ++d) {
          dk_out[r * D + d] = dk[r * Dp + d];
          dv_out[r * D + d] = dv[r * Dp + d];
        }
    }
  }

  // ------------------------------------------------------------------ decode
  //
  // The cache holds float32 or IEEE halves (E = uint16_t, kernels.h's DecodeJob): the
  // same code reads either, widening halves to float as it loads them. Int8 keys (with
  // halves for values) are scored by the job's int8_scores kernel (int8_keys_*.cpp).

  static inline V load(const float* p) { return O::load(p); }
  static inline V load(const uint16_t* p) { return O::load_half(p); }
  static inline float scalar(float x) { return x; }
  static inline float scalar(uint16_t x) { return half_to_float(x); }

  // Asks for the cache entries [p, p + n) (a hint: it never faults): the rows the same
  // thread reads next, so that they arrive while it computes on the rows it has.
  template <class E>
  static inline void prefetch_entries(const E* p, int64_t n) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(p);
    for (uintptr_t b = 0; b < uintptr_t(n) * sizeof(E); b += 64)
      __builtin_prefetch(reinterpret_cast<const void*>(a + b), 0, 3);
  }

  // ... and the entries kCacheAheadBytes further on, ahead of a run's own loads (with the
  // kernel before this one, chunks of 64 keys: 1 KB ahead was slower, 4 KB the same, for
  // `medium` int8 on the Zen 4 EPYC).
  static constexpr int64_t kCacheAheadBytes = 2048;
  template <class E>
  static inline void prefetch_entries_ahead(const E* p, int64_t n) {
    // as an integer: the address may lie past the cache's end
    const uintptr_t ahead = reinterpret_cast<uintptr_t>(p) + kCacheAheadBytes;
    prefetch_entries(reinterpret_cast<const E*>(ahead), n);
  }

  template <class E>
  static inline float dot(const float* a, const E* b, int64_t D) {
    V s = O::zero();
    int64_t d = 0;
    for (; d + W <= D; d += W) s = O::fma(O::load(a + d), load(b + d), s);
    float t = O::hsum(s);
    for (; d < D; ++d) t += a[d] * scalar(b[d]);
    return t;
  }

  // acc[0:D] += p * x[0:D] (acc has room for Dp floats; x only for D).
  template <class E>
  static inline void axpy(float* acc, float p, const E* x, int64_t D) {
    const V vp = O::set1(p);
    int64_t d = 0;
    for (; d + W <= D; d += W) O::store(acc + d, O::fma(vp, load(x + d), O::load(acc + d)));
    for (; d < D; ++d) acc[d] += p * scalar(x[d]);
  }

  // s[t] = q . k_t for n keys (D a multiple of W), four keys at a time so that four
  // independent chains of FMAs overlap, their horizontal sums done together (one sum at a
  // time, its shuffles were most of a key's work at D = 48). Unless `values` is null,
  // asks for the keys ahead and for the same keys' rows of `values`, which the weighted
  // sum reads next.
  template <class E>
  static void scores4(const float* q, const E* K, const E* values, int64_t D, int64_t n,
                      float scale, float* s) {
    int64_t t = 0;
    for (; t + 4 <= n; t += 4) {
      const E* k = K + t * D;
      if (values != nullptr) {
        prefetch_entries_ahead(k, 4 * D);
        prefetch_entries(values + t * D, 4 * D);
      }
      V a0 = O::zero(), a1 = O::zero(), a2 = O::zero(), a3 = O::zero();
      for (int64_t d = 0; d < D; d += W) {
        const V qv = O::load(q + d);
        a0 = O::fma(qv, load(k + d), a0);
        a1 = O::fma(qv, load(k + D + d), a1);
        a2 = O::fma(qv, load(k + 2 * D + d), a2);
        a3 = O::fma(qv, load(k + 3 * D + d), a3);
      }
      O::hsum4(a0, a1, a2, a3, scale, s + t);
    }
    if (values != nullptr) prefetch_entries(values + t * D, (n - t) * D);
    for (; t < n; ++t) s[t] = dot(q, K + t * D, D) * scale;
  }

  // The next head's key rows, which the weighted sum asks for on the way: `bytes` a row.
  struct Next {
    const char* rows;
    int64_t bytes;
  };

  // acc[d0 : d0 + NVt*W] += sum_t p[t] * Vrows[t][same], accumulated in registers: even
  // and odd keys in separate accumulators, so that each FMA waits on the one two keys
  // back (with one set, every key waited out the FMA latency of the key before). With
  // `ask`, asks for the rows ahead, and for n rows of `next` on the way (when not null).
  template <int NVt, class E>
  static inline void weighted_rows(float* acc, const float* p, const E* Vrows, int64_t D,
                                   int64_t n, Next next, bool ask) {
    V r[NVt], r2[NVt];
#pragma GCC unroll 8
    for (int v = 0; v < NVt; ++v) r[v] = O::load(acc + v * W), r2[v] = O::zero();
    int64_t t = 0;
    for (; t + 2 <= n; t += 2) {
      const V p0 = O::set1(p[t]), p1 = O::set1(p[t + 1]);
      const E* row = Vrows + t * D;
      if (ask) {
        prefetch_entries_ahead(row, NVt * W);  // this block's columns of both rows
        prefetch_entries_ahead(row + D, NVt * W);
        if (next.rows != nullptr) prefetch_entries(next.rows + t * next.bytes, 2 * next.bytes);
      }
#pragma GCC unroll 8
      for (int v = 0; v < NVt; ++v) {
        r[v] = O::fma(p0, load(row + v * W), r[v]);
        r2[v] = O::fma(p1, load(row + D + v * W), r2[v]);
      }
    }
    if (t < n) {
      if (ask && next.rows != nullptr) prefetch_entries(next.rows + t * next.bytes, next.bytes);
      const V pt = O::set1(p[t]);
#pragma GCC unroll 8
      for (int v = 0; v < NVt; ++v) r[v] = O::fma(pt, load(Vrows + t * D + v * W), r[v]);
    }
#pragma GCC unroll 8
    for (int v = 0; v < NVt; ++v) O::store(acc + v * W, O::add(r[v], r2[v]));
  }

  // acc[0:D] += sum_t p[t] * Vrows[t] (D a multiple of W), in column blocks of 4 vectors;
  // with `ask`, each block asks for its rows ahead and the first for n rows of `next`.
  template <class E>
  static void weighted_sum(float* acc, const float* p, const E* Vrows, Next next, int64_t D,
                           int64_t n, bool ask) {
    int64_t d = 0;
    for (; d + 4 * W <= D; d += 4 * W, next.rows = nullptr)
      weighted_rows<4>(acc + d, p, Vrows + d, D, n, next, ask);
    switch ((D - d) / W) {
      case 3: weighted_rows<3>(acc + d, p, Vrows + d, D, n, next, ask); break;
      case 2: weighted_rows<2>(acc + d, p, Vrows + d, D, n, next, ask); break;
      case 1: weighted_rows<1>(acc + d, p, Vrows + d, D, n, next, ask); break;
      default: break;
    }
  }

  // A kv head's key rows from cache position `begin` (a multiple of 16 for int8 keys),
  // and the bytes of a row.
  template <class E>
  static const E* key_rows(const DecodeJob& j, const E* cache, int64_t hk, int64_t begin) {
    return cache + (hk * j.capacity + begin) * j.D;
  }
  static const uint8_t* key_rows(const DecodeJob& j, const uint8_t* codes, int64_t hk,
                                 int64_t begin) {
    return codes + (hk * key_positions(j.capacity) + begin) * key_row_bytes(j.D);
  }
  template <class E>
  static int64_t key_bytes(const DecodeJob& j, const E*) { return j.D * int64_t(sizeof(E)); }
  static int64_t key_bytes(const DecodeJob& j, const uint8_t*) { return key_row_bytes(j.D); }

  // s[t] = q . key_t * scale for the n keys from `begin` of kv head hk, for query head h
  // (counted over all heads); asks for the same positions' `values` on the way.
  template <class E>
  static void head_scores(const DecodeJob& j, int64_t h, const E* keys, const E* values,
                          int64_t hk, int64_t begin, int64_t n, float* s) {
    const float* q = j.q + h * j.D;
    if (j.D % W == 0) return scores4(q, keys, j.prefetch ? values : nullptr, j.D, n, j.scale, s);
    for (int64_t t = 0; t < n; ++t) s[t] = dot(q, keys + t * j.D, j.D) * j.scale;
  }
  static void head_scores(const DecodeJob& j, int64_t h, const uint8_t* keys,
                          const uint16_t* values, int64_t hk, int64_t begin, int64_t n,
                          float* s) {
    const int64_t Dq = key_row_bytes(j.D) / 4;
    const bool whole = j.D % W == 0;  // the weighted sum reads whole vectors
    j.int8_scores({j.q8 + h * Dq * 4, j.q8_bias[h], j.q8_scale[h], keys,
                   j.k_scales + hk * key_positions(j.capacity) + begin,
                   (n + kKeyBlock - 1) / kKeyBlock, Dq,
                   whole && j.prefetch ? reinterpret_cast<const char*>(values) : nullptr,
                   kKeyBlock * j.D * int64_t(sizeof(uint16_t)), s});
  }

  // Cache positions [begin, end) (at most kDecodePart) for the query heads of kv heads
  // [hk0, hk1), m, l and acc indexed from the first of them: a head at a time, a run of
  // its keys (the scores), their softmax, a run of its values (the weighted sum). The
  // cache is read as long runs, each asked for while the one before is computed on: the
  // scores ask for the values they will weigh, the weighted sum for the next head's keys
  // (rows of whole vectors; the other path asks for nothing). Where the weights push the
  // cache out to memory (`medium` int8 on the Zen 4 EPYC, 1 thread, positions 128-384),
  // attention took 204-252 us a step against 298-365 with chunks of 64 keys read by
  // batches of 8 heads side by side, each run asked for 2 KB ahead only (143-152 against
  // 292-344 for a scratch build of the same reads in a quieter spell); `baby` and `small`,
  // whose caches stay in L2 and L3, ran the same (benchmarks/NOTES.md, the fifteenth
  // session). A group of query heads sharing a kv head reads its runs once a head (from
  // L1 or L2 after the first): over a hot cache, 8 query heads on 2 kv heads ran as fast
  // as before on halves (no preset has such groups; not measured in a step).
  // K is the key type (float, uint16_t halves, uint8_t int8 codes), E the values'.
  template <class K, class E>
  static void decode_cache(const DecodeJob& j, const K* k_cache, const E* v_cache, int64_t hk0,
                           int64_t hk1, int64_t begin, int64_t end, float* m, float* l,
                           float* acc) {
    const int64_t group = j.H / j.Hkv, D = j.D, Dp = j.Dp, heads = (hk1 - hk0) * group;
    const int64_t n = end - begin, nv = round_up(n, W);
    const bool fast = D % W == 0;  // whole vectors per cache row
    static_assert(kDecodePart % kKeyBlock == 0 && kKeyBlock % W == 0,
                  "the scores are padded to whole vectors and key blocks in s");
    alignas(64) float s[kDecodePart];  // n <= kDecodePart: the driver's parts
    for (int64_t h = 0; h < heads; ++h) {
      const int64_t hk = hk0 + h / group;
      const K* keys = key_rows(j, k_cache, hk, begin);
      const E* values = v_cache + (hk * j.capacity + begin) * D;
      head_scores(j, hk0 * group + h, keys, values, hk, begin, n, s);
      // the softmax over whole vectors of scores, the last one padded with -inf (whose
      // weights are 0)
      for (int64_t t = n; t < nv; ++t) s[t] = kNegInf;
      V vmax = O::load(s);  // in vectors: a scalar loop waits on every max in turn
      for (int64_t t = W; t < nv; t += W) vmax = O::max(vmax, O::load(s + t));
      m[h] = O::hmax(vmax);
      const V neg_max = O::set1(-m[h]);
      V sum = O::zero();
      for (int64_t t = 0; t < nv; t += W) {
        const V p = exp(O::add(O::load(s + t), neg_max));
        O::store(s + t, p);
        sum = O::add(sum, p);
      }
      l[h] = O::hsum(sum);
      float* a = acc + h * Dp;
      for (int64_t d = 0; d < Dp; d += W) O::store(a + d, O::zero());
      if (fast) {
        const bool last = h + 1 == heads;
        const K* next = last ? nullptr : key_rows(j, k_cache, hk0 + (h + 1) / group, begin);
        weighted_sum(a, s, values, {reinterpret_cast<const char*>(next), key_bytes(j, next)}, D, n,
                     j.prefetch);
      } else {
        for (int64_t t = 0; t < n; ++t) axpy(a, s[t], values + t * D, D);
      }
    }
  }

  static void decode_part(const DecodeJob& j, int64_t hk0, int64_t hk1, int64_t begin,
                          int64_t end, float* m, float* l, float* acc) {
    if (j.k_codes != nullptr)
      return decode_cache(j, j.k_codes, j.v_half, hk0, hk1, begin, end, m, l, acc);
    if (j.k_half != nullptr)
      return decode_cache(j, j.k_half, j.v_half, hk0, hk1, begin, end, m, l, acc);
    decode_cache(j, j.k_cache, j.v_cache, hk0, hk1, begin, end, m, l, acc);
  }

  static const TileKernels* table(const char* name) {
    static const TileKernels k = {name, W, &transpose, &forward_tile, &backward_keys, &decode_part};
    return &k;
  }
};

}  // namespace
}  // namespace tinylm::attention::detail
