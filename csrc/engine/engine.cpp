// The decode step, layer by layer, as tinylm/engine.py's numpy engine does it:
//
//   x = E[token]
//   per layer:  h = rmsnorm(x);  q, k, v = h Wq^T, h Wk^T, h Wv^T;  rope(q, k) at pos;
//               append k, v to the cache;  x += attention(q, cache) Wo^T
//               h = rmsnorm(x);  x += (silu(h Wg^T) * h Wu^T) Wd^T
//   logits = rmsnorm(x) E^T
//
// Every product is a GEMV (gemv.cpp); attention is the attention family's decode kernel.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "../attention/attention.h"
#include "../half.h"
#include "engine.h"

namespace tinylm::engine {
namespace {

[[noreturn]] void invalid(const std::string& what) { throw std::invalid_argument(what); }

void check_matrix(const Matrix& m, const std::string& name, int64_t rows, int64_t cols) {
  if (m.f32 == nullptr && m.q == nullptr) invalid(name + ": no data");
  if (m.is_int8() && m.scale == nullptr) invalid(name + ": int8 weights need scales");
  if (m.rows != rows || m.cols != cols)
    invalid(name + ": shape (" + std::to_string(m.rows) + ", " + std::to_string(m.cols) +
            "), expected (" + std::to_string(rows) + ", " + std::to_string(cols) + ")");
}

void rmsnorm(const float* x, const float* w, float eps, int64_t n, float* out) {
  double ss[4] = {0, 0, 0, 0};  // four partial sums, so that the compiler can vectorize
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int j = 0; j < 4; ++j) ss[j] += double(x[i + j]) * x[i + j];
  for (; i < n; ++i) ss[0] += double(x[i]) * x[i];
  const double sum = (ss[0] + ss[1]) + (ss[2] + ss[3]);
  const float rstd = float(1.0 / std::sqrt(sum / double(n) + double(eps)));
  for (i = 0; i < n; ++i) out[i] = x[i] * rstd * w[i];
}

// Rotate-half rotary embedding of `heads` vectors of length D at one position.
void rope(float* v, int64_t heads, int64_t D, const float* cos, const float* sin) {
  const int64_t half = D / 2;
  for (int64_t h = 0; h < heads; ++h) {
    float* a = v + h * D;
    for (int64_t i = 0; i < half; ++i) {
      const float x1 = a[i], x2 = a[i + half];
      a[i] = x1 * cos[i] - x2 * sin[i];
      a[i + half] = x2 * cos[i] + x1 * sin[i];
    }
  }
}

}  // namespace

void validate(const Config& c, const Weights& w) {
  if (c.vocab_size < 1 || c.d_model < 1 || c.n_layer < 1 || c.n_head < 1 || c.n_kv_head < 1 ||
      c.d_ff < 1 || c.context < 1)
    invalid("engine config sizes must be at least 1");
  if (c.d_model % c.n_head || c.n_head % c.n_kv_head || c.head_dim() % 2)
    invalid("engine config: d_model must divide by n_head, n_head by n_kv_head, head_dim even");
  if (c.head_dim() > attention::kMaxHeadDim) invalid("engine config: head_dim too large");
  if (int64_t(w.layers.size()) != c.n_layer)
    invalid("engine: " + std::to_string(w.layers.size()) + " layers of weights for n_layer " +
            std::to_string(c.n_layer));
  const int64_t d = c.d_model, kv = c.n_kv_head * c.head_dim();
  check_matrix(w.embed, "embed", c.vocab_size, d);
  const bool int8 = w.embed.is_int8();
  for (int64_t i = 0; i < c.n_layer; ++i) {
    const Layer& L = w.layers[size_t(i)];
    const std::string p = "layer " + std::to_string(i) + " ";
    check_matrix(L.q, p + "q_proj", d, d);
    check_matrix(L.k, p + "k_proj", kv, d);
    check_matrix(L.v, p + "v_proj", kv, d);
    check_matrix(L.o, p + "o_proj", d, d);
    check_matrix(L.gate, p + "gate_proj", c.d_ff, d);
    check_matrix(L.up, p + "up_proj", c.d_ff, d);
    check_matrix(L.down, p + "down_proj", d, c.d_ff);
    for (const Matrix* m : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down})
      if (m->is_int8() != int8) invalid(p + "mixes float32 and int8 matrices");
    if (L.attn_norm == nullptr || L.mlp_norm == nullptr) invalid(p + "norm weights missing");
  }
  if (w.final_norm == nullptr) invalid("final norm weights missing");
}

Engine::Engine(const Config& cfg, Weights weights, State state)
    : cfg_(cfg), w_(std::move(weights)), st_(state) {
  validate(cfg_, w_);
  const bool f32 = st_.k_cache && st_.v_cache && !st_.k_half && !st_.v_half;
  const bool half = !st_.k_cache && !st_.v_cache && st_.k_half && st_.v_half;
  if (!f32 && !half) invalid("engine: the k and v caches must both be float32 or both halves");
  const int64_t d = cfg_.d_model, kv = cfg_.n_kv_head * cfg_.head_dim();
  x_.resize(size_t(d));
  h_.resize(size_t(std::max(d, cfg_.d_ff)));
  qkv_.resize(size_t(d + 2 * kv));
  att_.resize(size_t(d));
  gu_.resize(size_t(2 * cfg_.d_ff));
  logits_.resize(size_t(cfg_.vocab_size));
}

void Engine::attention_block(const Layer& L, int64_t layer, int64_t pos) {
  const int64_t d = cfg_.d_model, D = cfg_.head_dim(), Hkv = cfg_.n_kv_head;
  const int64_t kv = Hkv * D, C = cfg_.context;
  rmsnorm(x_.data(), L.attn_norm, cfg_.norm_eps, d, h_.data());
  float *q = qkv_.data(), *k = q + d, *v = k + kv;
  const Product qkv[3] = {{&L.q, q}, {&L.k, k}, {&L.v, v}};
  gemv(h_.data(), qkv, 3);
  const float* cos = st_.cos + pos * (D / 2);
  const float* sin = st_.sin + pos * (D / 2);
  rope(q, cfg_.n_head, D, cos, sin);
  rope(k, Hkv, D, cos, sin);
  const int64_t layer_off = layer * Hkv * C * D;
  const attention::DecodeDims dims{cfg_.n_head, Hkv, C, pos + 1, D};
  for (int64_t h = 0; h < Hkv; ++h) {  // the cache is [Hkv, C, D] per layer
    const int64_t row = layer_off + (h * C + pos) * D;
    if (st_.k_half != nullptr) {  // rounded as numpy's astype(float16) rounds
      floats_to_halves(k + h * D, st_.k_half + row, D);
      floats_to_halves(v + h * D, st_.v_half + row, D);
    } else {
      std::memcpy(st_.k_cache + row, k + h * D, size_t(D) * sizeof(float));
      std::memcpy(st_.v_cache + row, v + h * D, size_t(D) * sizeof(float));
    }
  }
  if (st_.k_half != nullptr)
    attention::decode(dims, q, st_.k_half + layer_off, st_.v_half + layer_off, att_.data());
  else
    attention::decode(dims, q, st_.k_cache + layer_off, st_.v_cache + layer_off, att_.data());
  const Product o[1] = {{&L.o, h_.data()}};
  gemv(att_.data(), o, 1);
  for (int64_t i = 0; i < d; ++i) x_[size_t(i)] += h_[size_t(i)];
}

void Engine::mlp_block(const Layer& L) {
  const int64_t d = cfg_.d_model, ff = cfg_.d_ff;
  rmsnorm(x_.data(), L.mlp_norm, cfg_.norm_eps, d, h_.data());
  float *g = gu_.data(), *u = g + ff;
  const Product gu[2] = {{&L.gate, g}, {&L.up, u}};
  gemv(h_.data(), gu, 2);
  silu_mul(g, u, ff);
  const Product down[1] = {{&L.down, h_.data()}};
  gemv(g, down, 1);
  for (int64_t i = 0; i < d; ++i) x_[size_t(i)] += h_[size_t(i)];
}

namespace {

// Adds the time from its construction to its destruction to `total` (seconds).
class Stopwatch {
 public:
  explicit Stopwatch(double& total) : total_(total), start_(std::chrono::steady_clock::now()) {}
  ~Stopwatch() {
    total_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  double& total_;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace

void Engine::step(int32_t token, int64_t pos, float* logits) {
  Stopwatch watch(native_seconds_);
  forward(token, pos, logits);
}

int64_t Engine::decode(int32_t token, int64_t pos, int64_t max_tokens, const Sampling& s,
                       uint64_t* rng_state, const int32_t* history, int64_t n_history,
                       int32_t stop_token, int32_t* out) {
  Stopwatch watch(native_seconds_);
  // the recent tokens, oldest first, trimmed to the window when grown to twice that
  const int64_t keep = std::min(n_history, kRepetitionWindow);
  recent_.assign(history + n_history - keep, history + n_history);
  int64_t n = 0;
  for (;;) {
    forward(token, pos, logits_.data());
    token = sample(logits_.data(), cfg_.vocab_size, s, rng_state, recent_.data(),
                   int64_t(recent_.size()), sample_scratch_);
    out[n++] = token;
    if (n == max_tokens || token == stop_token || ++pos == cfg_.context) return n;
    if (int64_t(recent_.size()) >= 2 * kRepetitionWindow)
      recent_.erase(recent_.begin(), recent_.end() - kRepetitionWindow);
    recent_.push_back(token);
  }
}

void Engine::forward(int32_t token, int64_t pos, float* logits) {
  if (token < 0 || token >= cfg_.vocab_size)
    invalid("token " + std::to_string(token) + " outside [0, " + std::to_string(cfg_.vocab_size) + ")");
  if (pos < 0 || pos >= cfg_.context)
    invalid("position " + std::to_string(pos) + " outside [0, " + std::to_string(cfg_.context) +
            ") (the cache is full: re-prefill a shorter window)");
  const int64_t d = cfg_.d_model;
  const Matrix& E = w_.embed;
  if (E.is_int8()) {
    const int8_t* row = E.q + int64_t(token) * d;
    for (int64_t i = 0; i < d; ++i) x_[size_t(i)] = float(row[i]) * E.scale[token];
  } else {
    std::memcpy(x_.data(), E.f32 + int64_t(token) * d, size_t(d) * sizeof(float));
  }
  for (int64_t i = 0; i < cfg_.n_layer; ++i) {
    const Layer& L = w_.layers[size_t(i)];
    attention_block(L, i, pos);
    mlp_block(L);
  }
  rmsnorm(x_.data(), w_.final_norm, cfg_.norm_eps, d, h_.data());
  const Product head[1] = {{&E, logits}};
  gemv(h_.data(), head, 1);
}

}  // namespace tinylm::engine
