// The decode step, layer by layer, as tinylm/engine.py's numpy engine does it:
//
//   x = E[token]
//   per layer:  h = rmsnorm(x);  q, k, v = h Wq^T, h Wk^T, h Wv^T;  rope(q, k) at pos;
//               append k, v to the cache;  x += attention(q, cache) Wo^T
//               h = rmsnorm(x);  x += (silu(h Wg^T) * h Wu^T) Wd^T
//   logits = rmsnorm(x) E^T
//
// A step's products are GEMVs (gemv.cpp); attention is the attention family's decode
// kernel.
// With several threads, each runs the whole step (forward_share) on its own share of
// every product's rows and of the kv heads, keeps its own copy of x, and meets the
// others at a barrier when a vector they all read is complete: 4 barriers a layer,
// instead of a hand-out of work and a wait for it per product (5 a layer), and the
// small steps between products (norms, RoPE, residual adds) run on every thread at once
// rather than on one while the others wait. Each thread reads the same rows at every
// step, so its share of the weights stays in its own core's caches where they fit.
//
// The batched pass over a prompt (prefill, int8 weights) is the same computation for T
// tokens at once: the products are the int8 GEMM's (each weight read once for all T
// rows), attention is the causal kernel of training when the tokens start the cache,
// and the decode kernel token by token otherwise.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <stdexcept>
#include <string>

#include "../attention/attention.h"
#include "../cpu.h"
#include "../half.h"
#include "../int8/int8.h"
#include "engine.h"
#include "gemv_kernels.h"

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
  // eight partial sums: vectors of them, four chains of adds that overlap (with four
  // sums, two chains, the adds' latency made this 2% of a `baby` int8 step)
  double ss[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) ss[j] += double(x[i + j]) * x[i + j];
  for (; i < n; ++i) ss[0] += double(x[i]) * x[i];
  const double sum = ((ss[0] + ss[1]) + (ss[2] + ss[3])) + ((ss[4] + ss[5]) + (ss[6] + ss[7]));
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

int64_t matrix_bytes(const Matrix& m) {
  if (!m.is_int8()) return m.rows * m.cols * int64_t(sizeof(float));
  return panel_bytes(m.rows, m.cols) + m.rows * int64_t(sizeof(float));
}

// Rows [r0, r0 + n) of m, as a matrix of their own.
Matrix rows_of(const Matrix& m, int64_t r0, int64_t n) {
  Matrix r = m;
  if (m.is_int8())
    r.row0 = m.row0 + r0;
  else
    r.f32 = m.f32 + r0 * m.cols;
  r.rows = n;
  return r;
}

// Byte k of row n of an int8 matrix's panels (gemv_panels.h).
int8_t panel_byte(const Matrix& m, int64_t n, int64_t k) {
  n += m.row0;
  const int64_t panel = n / kPanelRows, group = k / 4;
  const int64_t at = (panel * panel_groups(m.cols) + group) * kPanelBytesPerGroup;
  return m.q[at + n % kPanelRows * 4 + k % 4];
}

int64_t weight_bytes(const Weights& w) {  // the matrices': what a step streams
  int64_t bytes = matrix_bytes(w.embed);
  for (const Layer& L : w.layers)
    for (const Matrix* m : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) bytes += matrix_bytes(*m);
  return bytes;
}

void add(float* x, const float* y, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] += y[i];
}

// Each of the rows [rows, D] of x replaced by its int8 quantization, as floats (code *
// scale): the queries as decode attention over int8 keys sees them.
void round_to_int8(float* x, int64_t rows, int64_t D) {
  std::vector<int8_t> codes(static_cast<size_t>(D));
  for (int64_t r = 0; r < rows; ++r) {
    float scale;
    int8::quantize_rows(x + r * D, 1, D, codes.data(), D, &scale);
    for (int64_t d = 0; d < D; ++d) x[r * D + d] = float(codes[size_t(d)]) * scale;
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
  const bool f32 = st_.k_cache && st_.v_cache && !st_.k_codes && !st_.k_scales && !st_.v_half;
  const bool int8 = !st_.k_cache && !st_.v_cache && st_.k_codes && st_.k_scales && st_.v_half;
  if (!f32 && !int8)
    invalid("engine: the cache must be float32 keys and values, or int8 keys and half values");
  const int64_t d = cfg_.d_model, kv = cfg_.n_kv_head * cfg_.head_dim();
  // A thread must stream enough of the weights between barriers to be worth them: one
  // per MB, and a team of two from 768 KB. On the Xeon, 2 threads, one-token steps
  // before and after the steps became teams (before, the pool handed out each product):
  // `baby` fp32 (3.3 MB) 174 -> 148 us, `small` int8 (6.1 MB) 234 -> 204 us, but `baby`
  // int8 (0.85 MB) 41 -> 45 us, so it had kept one thread. On the Zen 4 EPYC, with
  // steps 2x shorter, 1 and 2 threads forced, best of 3 s of decode calls: `baby` int8
  // 19.5 -> 15.0 us; `tiny` int8 (0.13 MB) 5.8 -> 6.0 us; `tiny` fp32 (0.47 MB) 10.7 ->
  // 9.6 us at best, but as slow as 16.5 us on average in one run, so it keeps one
  // (benchmarks/NOTES.md). Larger teams for smaller shares were not measured.
  constexpr int64_t kBytesPerThread = 1 << 20, kBytesForTwo = 768 << 10;
  weight_bytes_ = weight_bytes(w_);
  const int64_t heads = cfg_.n_layer * cfg_.n_kv_head, D = cfg_.head_dim(), C = cfg_.context;
  const int64_t P = attention::key_positions(C);  // an int8 head's rows of codes and scales
  cache_bytes_ = heads * (int8 ? P * (attention::key_row_bytes(D) + 4) + C * D * 2 : 2 * C * D * 4);
  const int64_t at_least = weight_bytes_ >= kBytesForTwo ? 2 : 1;
  team_threads_ = int(std::min<int64_t>(std::max(weight_bytes_ / kBytesPerThread, at_least), 1024));
  o_out_.resize(size_t(d));
  down_out_.resize(size_t(d));
  qkv_.resize(size_t(d + 2 * kv));
  att_.resize(size_t(d));
  gu_.resize(size_t(2 * cfg_.d_ff));
  logits_.resize(size_t(cfg_.vocab_size));
}

// This thread's share of the kv heads, each with its group of query heads: their rows of
// q/k/v, RoPE, the cache rows at pos, attention over the cache. Nothing another thread
// computes is read, so no barrier is needed before attention.
void Engine::attention_share(const Layer& L, int64_t layer, int64_t pos, Lane& me, const Share& s) {
  const int64_t d = cfg_.d_model, D = cfg_.head_dim(), Hkv = cfg_.n_kv_head;
  const int64_t group = cfg_.n_head / Hkv, kv = Hkv * D;
  const int64_t j0 = Hkv * s.t / s.T, heads = Hkv * (s.t + 1) / s.T - j0;  // kv heads [j0, j0 + heads)
  rmsnorm(me.x.data(), L.attn_norm, cfg_.norm_eps, d, me.h.data());
  if (heads == 0) return;
  float *q = qkv_.data() + j0 * group * D, *k = qkv_.data() + d + j0 * D, *v = k + kv;
  const Matrix wq = rows_of(L.q, j0 * group * D, heads * group * D),
               wk = rows_of(L.k, j0 * D, heads * D), wv = rows_of(L.v, j0 * D, heads * D);
  const Product qkv[3] = {{&wq, q}, {&wk, k}, {&wv, v}};
  gemv(me.h.data(), qkv, 3, {0, 1}, s.prefetch);
  const float* cos = st_.cos + pos * (D / 2);
  const float* sin = st_.sin + pos * (D / 2);
  rope(q, heads * group, D, cos, sin);
  rope(k, heads, D, cos, sin);
  store_kv(layer, j0, heads, pos, k, v);
  attend(layer, j0, heads, pos + 1, q, att_.data() + j0 * group * D, s.cache_prefetch);
}

attention::Int8Keys Engine::int8_keys(int64_t layer, int64_t j) const {
  const int64_t head = layer * cfg_.n_kv_head + j, P = attention::key_positions(cfg_.context);
  return {st_.k_codes + head * P * attention::key_row_bytes(cfg_.head_dim()),
          st_.k_scales + head * P};
}

void Engine::store_kv(int64_t layer, int64_t j0, int64_t heads, int64_t pos, const float* k,
                      const float* v) {
  const int64_t D = cfg_.head_dim(), C = cfg_.context;
  const int64_t first = (layer * cfg_.n_kv_head + j0) * C * D;  // the cache is [layer, Hkv, C, D]
  for (int64_t j = 0; j < heads; ++j) {
    const int64_t row = first + j * C * D + pos * D;
    if (st_.k_codes != nullptr) {  // values rounded as numpy's astype(float16) rounds
      attention::store_int8_key(k + j * D, D, pos, int8_keys(layer, j0 + j));
      to_halves(v + j * D, st_.v_half + row, D);
    } else {
      std::memcpy(st_.k_cache + row, k + j * D, size_t(D) * sizeof(float));
      std::memcpy(st_.v_cache + row, v + j * D, size_t(D) * sizeof(float));
    }
  }
}

void Engine::attend(int64_t layer, int64_t j0, int64_t heads, int64_t length, const float* q,
                    float* out, bool prefetch) const {
  const int64_t D = cfg_.head_dim(), C = cfg_.context, Hkv = cfg_.n_kv_head;
  const int64_t first = (layer * Hkv + j0) * C * D;
  const attention::DecodeDims dims{heads * (cfg_.n_head / Hkv), heads, C, length, D, prefetch};
  if (st_.k_codes != nullptr)
    attention::decode(dims, q, int8_keys(layer, j0), st_.v_half + first, out);
  else
    attention::decode(dims, q, st_.k_cache + first, st_.v_cache + first, out);
}

// This thread's share of the gate and up rows (the same rows of both) and their SiLU.
void Engine::mlp_share(const Layer& L, Lane& me, const Share& s) {
  const int64_t d = cfg_.d_model, ff = cfg_.d_ff;
  rmsnorm(me.x.data(), L.mlp_norm, cfg_.norm_eps, d, me.h.data());
  constexpr int64_t kBlock = 16;  // rows: shares start on whole vectors of the SiLU
  const int64_t blocks = (ff + kBlock - 1) / kBlock;
  const int64_t r0 = std::min(ff, blocks * s.t / s.T * kBlock);
  const int64_t r1 = std::min(ff, blocks * (s.t + 1) / s.T * kBlock);
  if (r0 == r1) return;
  float *g = gu_.data() + r0, *u = gu_.data() + ff + r0;
  const Matrix wg = rows_of(L.gate, r0, r1 - r0), wu = rows_of(L.up, r0, r1 - r0);
  const Product gu[2] = {{&wg, g}, {&wu, u}};
  gemv(me.h.data(), gu, 2, {0, 1}, s.prefetch);
  silu_mul(g, u, r1 - r0);
}

void Engine::embed(int32_t token, float* x) const {
  const Matrix& E = w_.embed;
  const int64_t d = cfg_.d_model;
  if (E.is_int8()) {
    for (int64_t i = 0; i < d; ++i) x[i] = float(panel_byte(E, token, i)) * E.scale[token];
  } else {
    std::memcpy(x, E.f32 + int64_t(token) * d, size_t(d) * sizeof(float));
  }
}

// Software prefetch helped GEMVs whose weights sit in L2 and cost those whose weights
// stream from beyond it on the Zen 4 (gemv_streams.h), so it is asked for where a
// thread's share fits in its L2 (taking each thread to have an L2 of its own). Only the
// float32 kernels take it: the int8 ones read each panel as one stream, where a prefetch
// 1 KB ahead cost `small` 5% and gained `baby` at most 5% (benchmarks/NOTES.md, the
// seventeenth session). Decode attention asks for the cache ahead where the weights and
// the cache together overflow the team's L2, as the cache is then read from beyond it
// (`medium` int8 at 1 thread 859-969 -> 787-876 us a step, the thirteenth session); where
// they fit, the requests only cost (`baby` int8 at 1 thread 18.0-18.2 -> 17.4-17.8 us
// without them, the eighteenth).
Engine::Share Engine::share_of(int t, int T, Barrier& barrier) const {
  const int64_t l2 = T * l2_cache_bytes();
  return Share{t, T, barrier, weight_bytes_ <= l2, weight_bytes_ + cache_bytes_ > l2};
}

void Engine::forward_share(int32_t token, int64_t pos, float* logits, const Share& s) {
  const int64_t d = cfg_.d_model;
  Lane& me = lanes_[size_t(s.t)];
  const Matrix& E = w_.embed;
  embed(token, me.x.data());
  const RowShare mine{s.t, s.T};
  for (int64_t i = 0; i < cfg_.n_layer; ++i) {
    const Layer& L = w_.layers[size_t(i)];
    attention_share(L, i, pos, me, s);
    s.barrier.wait();  // attention's output complete
    const Product o[1] = {{&L.o, o_out_.data()}};
    gemv(att_.data(), o, 1, mine, s.prefetch);
    s.barrier.wait();  // o_proj's output complete
    add(me.x.data(), o_out_.data(), d);
    mlp_share(L, me, s);
    s.barrier.wait();  // silu(gate) * up complete
    const Product down[1] = {{&L.down, down_out_.data()}};
    gemv(gu_.data(), down, 1, mine, s.prefetch);
    s.barrier.wait();  // down_proj's output complete
    add(me.x.data(), down_out_.data(), d);
  }
  rmsnorm(me.x.data(), w_.final_norm, cfg_.norm_eps, d, me.h.data());
  const Product head[1] = {{&E, logits}};
  gemv(me.h.data(), head, 1, mine, s.prefetch);
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

Engine::Decoded Engine::decode(int32_t token, int64_t pos, int64_t max_tokens,
                               const Sampling& s, uint64_t* rng_state, const int32_t* history,
                               int64_t n_history, int32_t stop_token, int64_t window,
                               int32_t* out) {
  check_token(token);
  if (window < 0) invalid("window " + std::to_string(window) + " is negative");
  if (window > 0 && !w_.embed.is_int8())
    invalid("decode: the window slides in C++ for int8 weights only (a float32 model's "
            "batched pass is numpy's): pass window 0");
  if (window > 0 && n_history < 1) invalid("decode: history must end with the token");
  if (window == 0 || pos != cfg_.context) check_position(pos);  // a full cache slides first
  // the recent tokens, oldest first
  recent_keep_ = std::max(kRepetitionWindow, window);
  const int64_t keep = std::min(n_history, recent_keep_);
  recent_.assign(history + n_history - keep, history + n_history);
  Decoded r;
  r.length = pos;
  while (r.picks < max_tokens && (r.picks == 0 || out[r.picks - 1] != stop_token)) {
    if (r.length < cfg_.context) {
      Stopwatch watch(native_seconds_);
      const int64_t n = decode_steps(token, r.length, max_tokens - r.picks, s, rng_state,
                                     stop_token, out + r.picks);
      r.picks += n;
      r.length += n;
    } else if (window > 0) {
      Stopwatch watch(r.slide_seconds);
      r.length = std::min(window, int64_t(recent_.size()));
      out[r.picks++] = slide(r.length, s, rng_state);
      ++r.slides;
      remember(out[r.picks - 1]);
    } else {
      break;
    }
    token = out[r.picks - 1];
  }
  return r;
}

int64_t Engine::decode_steps(int32_t token, int64_t pos, int64_t max_tokens, const Sampling& s,
                             uint64_t* rng_state, int32_t stop_token, int32_t* out) {
  int64_t n = 0;
  bool done = false;
  // One team for the whole call: each token's step runs on all of its threads, thread 0
  // samples, and the others take the token from it at a barrier. (A team per token,
  // handed out to the pool again each time, made `baby` fp32 at 2 threads 4% slower a
  // step and `medium` int8 2%.) The team holds the pool for the call (`generate`'s calls
  // last ~20 ms at most): other work on the pool waits for it. A member that fails breaks
  // the barrier, and the others leave. token, pos, n and done are written by thread 0
  // between the two barriers only.
  run_team(team_size(), [&](int t, int T, Barrier& barrier) {
    const Share share = share_of(t, T, barrier);
    for (;;) {
      forward_share(token, pos, logits_.data(), share);
      barrier.wait();  // the logits complete
      if (barrier.broken()) return;
      if (t == 0) {
        token = sample(logits_.data(), cfg_.vocab_size, s, rng_state, recent_.data(),
                       int64_t(recent_.size()), sample_scratch_);
        out[n++] = token;
        ++pos;
        remember(token);
        done = n == max_tokens || token == stop_token || pos == cfg_.context;
      }
      barrier.wait();  // the token picked
      if (barrier.broken() || done) return;
    }
  });
  return n;
}

// The batched pass runs outside a team, on the whole pool.
int32_t Engine::slide(int64_t T, const Sampling& s, uint64_t* rng_state) {
  prefill(recent_.data() + recent_.size() - T, T, 0, logits_.data(), false);
  return sample(logits_.data(), cfg_.vocab_size, s, rng_state, recent_.data(),
                int64_t(recent_.size()), sample_scratch_);
}

// Adds a pick to the recent tokens, trimming them to recent_keep_ when they have grown
// to twice that.
void Engine::remember(int32_t token) {
  if (int64_t(recent_.size()) >= 2 * recent_keep_)
    recent_.erase(recent_.begin(), recent_.end() - recent_keep_);
  recent_.push_back(token);
}

void Engine::check_token(int32_t token) const {
  if (token < 0 || token >= cfg_.vocab_size)
    invalid("token " + std::to_string(token) + " outside [0, " + std::to_string(cfg_.vocab_size) + ")");
}

void Engine::check_position(int64_t pos) const {
  if (pos < 0 || pos >= cfg_.context)
    invalid("position " + std::to_string(pos) + " outside [0, " + std::to_string(cfg_.context) +
            ") (the cache is full: re-prefill a shorter window)");
}

int Engine::team_size() {
  // run_team uses at most `threads` (fewer if the pool shrinks meanwhile)
  const int threads = std::min(team_threads_, num_threads());
  while (int(lanes_.size()) < threads) {
    lanes_.emplace_back();
    lanes_.back().x.resize(size_t(cfg_.d_model));
    lanes_.back().h.resize(size_t(cfg_.d_model));
  }
  return threads;
}

void Engine::forward(int32_t token, int64_t pos, float* logits) {
  check_token(token);
  check_position(pos);
  run_team(team_size(), [&](int t, int T, Barrier& barrier) {
    forward_share(token, pos, logits, share_of(t, T, barrier));
  });
}

void Engine::attend_causal(int64_t layer, int64_t T, const float* q, float* out) const {
  const int64_t H = cfg_.n_head, Hkv = cfg_.n_kv_head, D = cfg_.head_dim(), C = cfg_.context;
  // the kernel's layout, [heads, T, D]: q and out are [T, heads, D], the cache [Hkv, C, D]
  std::vector<float> qh(size_t(H * T * D)), k(size_t(Hkv * T * D)), v(k.size()),
      oh(qh.size()), lse(size_t(H * T));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h)
      std::memcpy(&qh[size_t((h * T + t) * D)], q + (t * H + h) * D, size_t(D) * sizeof(float));
  if (st_.k_codes != nullptr) round_to_int8(qh.data(), H * T, D);
  const int64_t first = layer * Hkv * C * D;
  for (int64_t j = 0; j < Hkv; ++j) {
    const int64_t from = first + j * C * D, n = T * D;
    if (st_.k_codes != nullptr) {
      for (int64_t t = 0; t < T; ++t)
        attention::load_int8_key(int8_keys(layer, j), D, t, &k[size_t(j * n + t * D)]);
      halves_to_floats(st_.v_half + from, &v[size_t(j * n)], n);
    } else {
      std::memcpy(&k[size_t(j * n)], st_.k_cache + from, size_t(n) * sizeof(float));
      std::memcpy(&v[size_t(j * n)], st_.v_cache + from, size_t(n) * sizeof(float));
    }
  }
  attention::forward({1, H, Hkv, T, D}, qh.data(), k.data(), v.data(), oh.data(), lse.data());
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h)
      std::memcpy(out + (t * H + h) * D, &oh[size_t((h * T + t) * D)], size_t(D) * sizeof(float));
}

namespace {

// y [T, m.rows] = x [T, m.cols] m^T for each product (all of the same m.cols), over the
// panels (tinylm/quant.py's linear, bit for bit), x quantized once for all of them
void linear(const float* x, int64_t T, std::initializer_list<Product> products) {
  gemm_int8(x, T, products.begin(), int(products.size()));
}

}  // namespace

void Engine::prefill(const int32_t* ids, int64_t T, int64_t pos, float* logits, bool all_logits) {
  const Matrix& E = w_.embed;
  if (!E.is_int8()) invalid("prefill: the native batched pass takes int8 weights");
  if (T < 1) invalid("prefill needs at least one token");
  if (pos < 0 || pos > cfg_.context - T)  // (not pos + T: that can wrap)
    invalid("prefill: " + std::to_string(T) + " tokens at position " + std::to_string(pos) +
            " do not fit in the context of " + std::to_string(cfg_.context));
  for (int64_t t = 0; t < T; ++t)
    if (ids[t] < 0 || ids[t] >= cfg_.vocab_size)
      invalid("token " + std::to_string(ids[t]) + " outside [0, " + std::to_string(cfg_.vocab_size) + ")");
  const int64_t d = cfg_.d_model, D = cfg_.head_dim(), H = cfg_.n_head, Hkv = cfg_.n_kv_head;
  const int64_t kv = Hkv * D, ff = cfg_.d_ff;
  auto rows = [T](int64_t n) { return std::vector<float>(size_t(T * n)); };
  std::vector<float> x = rows(d), h = rows(d), q = rows(d), k = rows(kv), v = rows(kv),
                     att = rows(d), y = rows(d), g = rows(ff), u = rows(ff);
  for (int64_t t = 0; t < T; ++t) embed(ids[t], &x[size_t(t * d)]);
  auto norm_rows = [&](const float* w, int64_t t0) {  // h = rmsnorm(x) for rows [t0, T)
    for (int64_t t = t0; t < T; ++t)
      rmsnorm(&x[size_t(t * d)], w, cfg_.norm_eps, d, &h[size_t((t - t0) * d)]);
  };
  for (int64_t i = 0; i < cfg_.n_layer; ++i) {
    const Layer& L = w_.layers[size_t(i)];
    norm_rows(L.attn_norm, 0);
    linear(h.data(), T, {{&L.q, q.data()}, {&L.k, k.data()}, {&L.v, v.data()}});
    for (int64_t t = 0; t < T; ++t) {
      const float* cos = st_.cos + (pos + t) * (D / 2);
      const float* sin = st_.sin + (pos + t) * (D / 2);
      rope(&q[size_t(t * d)], H, D, cos, sin);
      rope(&k[size_t(t * kv)], Hkv, D, cos, sin);
      store_kv(i, 0, Hkv, pos + t, &k[size_t(t * kv)], &v[size_t(t * kv)]);
    }
    if (pos == 0) {
      attend_causal(i, T, q.data(), att.data());
    } else {  // each token over the cache up to its own position, with the decode kernel
      parallel_for(T, 1, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t)
          attend(i, 0, Hkv, pos + t + 1, &q[size_t(t * d)], &att[size_t(t * d)]);
      });
    }
    linear(att.data(), T, {{&L.o, y.data()}});
    add(x.data(), y.data(), T * d);
    norm_rows(L.mlp_norm, 0);
    linear(h.data(), T, {{&L.gate, g.data()}, {&L.up, u.data()}});
    silu_mul(g.data(), u.data(), T * ff);
    linear(g.data(), T, {{&L.down, y.data()}});
    add(x.data(), y.data(), T * d);
  }
  const int64_t first = all_logits ? 0 : T - 1;
  norm_rows(w_.final_norm, first);
  linear(h.data(), T - first, {{&E, logits}});
}

}  // namespace tinylm::engine
