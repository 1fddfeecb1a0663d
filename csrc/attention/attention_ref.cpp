// The scalar reference: attention one query row at a time, accumulating in double.
// It is the "scalar" path and the oracle the native tests hold every SIMD path to, so it
// is written to be obviously right rather than fast. It keeps one row of scores (O(T)),
// never a T x T matrix. Parallel over heads; each output element has one writer.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../half.h"
#include "../int8/int8.h"
#include "../threads.h"
#include "attention.h"

namespace tinylm::attention::reference {
namespace {

double dot(const float* a, const float* b, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += double(a[i]) * b[i];
  return s;
}

}  // namespace

void forward(const Dims& d, const float* q, const float* k, const float* v, float* out,
             float* lse) {
  validate(d);
  const int64_t H = d.heads, T = d.seq, D = d.head_dim, group = d.heads / d.kv_heads;
  const double scale = 1.0 / std::sqrt(double(D));
  parallel_for(d.batch * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> p(T), o(D);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t bkv = bh / group;  // (b*H + h) / group == b*Hkv + h/group
      const float* kh = k + bkv * T * D;
      const float* vh = v + bkv * T * D;
      for (int64_t i = 0; i < T; ++i) {
        const float* qi = q + (bh * T + i) * D;
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t j = 0; j <= i; ++j) mx = std::max(mx, p[j] = dot(qi, kh + j * D, D) * scale);
        double sum = 0;
        std::fill(o.begin(), o.end(), 0.0);
        for (int64_t j = 0; j <= i; ++j) {
          const double pj = std::exp(p[j] - mx);
          sum += pj;
          for (int64_t c = 0; c < D; ++c) o[c] += pj * vh[j * D + c];
        }
        for (int64_t c = 0; c < D; ++c) out[(bh * T + i) * D + c] = float(o[c] / sum);
        lse[bh * T + i] = float(mx + std::log(sum));
      }
    }
  });
}

void backward(const Dims& d, const float* q, const float* k, const float* v, const float* out,
              const float* lse, const float* dout, float* dq, float* dk, float* dv) {
  validate(d);
  const int64_t H = d.heads, Hkv = d.kv_heads, T = d.seq, D = d.head_dim, group = H / Hkv;
  const double scale = 1.0 / std::sqrt(double(D));
  // One item per kv head: it owns dk and dv of that head and dq of its query heads.
  parallel_for(d.batch * Hkv, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> dk_acc(T * D), dv_acc(T * D), dq_row(D), ds(T);
    for (int64_t bkv = begin; bkv < end; ++bkv) {
      const float* kh = k + bkv * T * D;
      const float* vh = v + bkv * T * D;
      std::fill(dk_acc.begin(), dk_acc.end(), 0.0);
      std::fill(dv_acc.begin(), dv_acc.end(), 0.0);
      for (int64_t bh = bkv * group; bh < (bkv + 1) * group; ++bh) {
        for (int64_t i = 0; i < T; ++i) {
          const float* qi = q + (bh * T + i) * D;
          const float* doi = dout + (bh * T + i) * D;
          const double delta = dot(doi, out + (bh * T + i) * D, D);
          std::fill(dq_row.begin(), dq_row.end(), 0.0);
          for (int64_t j = 0; j <= i; ++j) {
            const double p = std::exp(dot(qi, kh + j * D, D) * scale - lse[bh * T + i]);
            const double dp = dot(doi, vh + j * D, D);
            const double dsj = p * (dp - delta) * scale;
            for (int64_t c = 0; c < D; ++c) {
              dv_acc[j * D + c] += p * doi[c];
              dk_acc[j * D + c] += dsj * qi[c];
              dq_row[c] += dsj * kh[j * D + c];
            }
          }
          for (int64_t c = 0; c < D; ++c) dq[(bh * T + i) * D + c] = float(dq_row[c]);
        }
      }
      for (int64_t n = 0; n < T * D; ++n) {
        dk[bkv * T * D + n] = float(dk_acc[n]);
        dv[bkv * T * D + n] = float(dv_acc[n]);
      }
    }
  });
}

namespace {

inline double value(float x) { return x; }
inline double value(uint16_t x) { return half_to_float(x); }

// score(h, j): query head h's scaled score for cache position j.
template <class Score, class E>
void decode_scores(const DecodeDims& d, Score score, const E* v_cache, float* out) {
  validate(d);
  const int64_t D = d.head_dim, L = d.length, group = d.heads / d.kv_heads;
  parallel_for(d.heads, 1, [&](int64_t begin, int64_t end) {
    std::vector<double> s(L), o(D);
    for (int64_t h = begin; h < end; ++h) {
      const E* vh = v_cache + (h / group) * d.capacity * D;
      double mx = -std::numeric_limits<double>::infinity(), sum = 0;
      for (int64_t j = 0; j < L; ++j) mx = std::max(mx, s[j] = score(h, j));
      std::fill(o.begin(), o.end(), 0.0);
      for (int64_t j = 0; j < L; ++j) {
        const double p = std::exp(s[j] - mx);
        sum += p;
        for (int64_t c = 0; c < D; ++c) o[c] += p * value(vh[j * D + c]);
      }
      for (int64_t c = 0; c < D; ++c) out[h * D + c] = float(o[c] / sum);
    }
  });
}

template <class E>
void decode_cache(const DecodeDims& d, const float* q, const E* k_cache, const E* v_cache,
                  float* out) {
  const int64_t D = d.head_dim, group = d.heads / d.kv_heads;
  const double scale = 1.0 / std::sqrt(double(D));
  auto score = [&](int64_t h, int64_t j) {
    const E* key = k_cache + ((h / group) * d.capacity + j) * D;
    double dot = 0;
    for (int64_t c = 0; c < D; ++c) dot += double(q[h * D + c]) * value(key[c]);
    return dot * scale;
  };
  decode_scores(d, score, v_cache, out);
}

}  // namespace

void decode(const DecodeDims& d, const float* q, const float* k_cache, const float* v_cache,
            float* out) {
  decode_cache(d, q, k_cache, v_cache, out);
}

void decode(const DecodeDims& d, const float* q, const uint16_t* k_cache, const uint16_t* v_cache,
            float* out) {
  decode_cache(d, q, k_cache, v_cache, out);
}

// The queries quantized as the keys are (attention.h's Int8Keys), the scores exact in
// int32 and rescaled with the kernels' expression; the rest in double.
void decode(const DecodeDims& d, const float* q, Int8Keys k_cache, const uint16_t* v_cache,
            float* out) {
  validate(d);
  const int64_t H = d.heads, D = d.head_dim, group = H / d.kv_heads, C = key_positions(d.capacity);
  std::vector<int8_t> q8(size_t(H * D));
  std::vector<float> q_scale(static_cast<size_t>(H));
  int8::quantize_rows(q, H, D, q8.data(), D, q_scale.data());
  const float inverse_sqrt_d = float(1.0 / std::sqrt(double(D)));
  auto score = [&](int64_t h, int64_t j) {
    const int64_t hk = h / group;
    const Int8Keys head{k_cache.codes + hk * C * key_row_bytes(D), k_cache.scales + hk * C};
    int32_t dot = 0;
    for (int64_t c = 0; c < D; ++c)
      dot += int32_t(int8_key_code(head, D, j, c)) * q8[size_t(h * D + c)];
    return double(float(dot) * (q_scale[size_t(h)] * inverse_sqrt_d) * head.scales[j]);
  };
  decode_scores(d, score, v_cache, out);
}

}  // namespace tinylm::attention::reference
