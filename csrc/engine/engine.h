// The native decode step: a token through every layer and the tied head (step), or
// several tokens a call, each sampled from the last one's logits (decode: Python is
// crossed once per call, not per token); and for int8 models the batched pass over a
// prompt (prefill), which decode also runs when the context's window slides.
//
// The engine owns no weights and no cache: it reads the model's arrays where they
// already are (memory-mapped from the model file) and the key/value cache arrays that
// the Python side allocated (and, for a float32 model, filled in its numpy prefill).
// The caller keeps all of them alive for the engine's lifetime (the Python binding holds
// references).
//
// A matrix is either float32 [rows, cols] row-major or int8 [rows, cols] in panels of 16
// rows (gemv_panels.h, the int8 model file's layout) with one float32 scale per row
// (tinylm/quant.py's scheme). A step's products are matrix-vector (GEMV): float32 with
// the SIMD kernels in gemv_*.cpp, int8 with those in gemv_panels_*.cpp, the activation
// quantized once per input vector; prefill's are the int8 family's GEMM (csrc/int8/), on
// rows unpacked from the panels. A step runs on a team of threads
// (tinylm::run_team), each computing the same rows and heads at every step; each row's
// and head's arithmetic is the same whichever thread does it, so results do not depend
// on the thread count.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "../attention/attention.h"
#include "../threads.h"

namespace tinylm::engine {

struct Config {
  int64_t vocab_size, d_model, n_layer, n_head, n_kv_head, d_ff, context;
  float norm_eps;
  int64_t head_dim() const { return d_model / n_head; }
};

struct Matrix {
  const float* f32 = nullptr;  // float32 weights, or
  const int8_t* q = nullptr;   // int8 weights in panels with
  const float* scale = nullptr;  // one scale per row
  int64_t rows = 0, cols = 0;
  // int8: the matrix is rows [row0, row0 + rows) of the panels at q (and of scale): a
  // share of another's rows (a float32 share starts its own pointer instead)
  int64_t row0 = 0;
  bool is_int8() const { return q != nullptr; }
};

struct Layer {
  const float* attn_norm;
  Matrix q, k, v, o;
  const float* mlp_norm;
  Matrix gate, up, down;
};

struct Weights {
  Matrix embed;  // [vocab, d_model], also the output head
  const float* final_norm;
  std::vector<Layer> layers;
};

// The key/value cache of a float32 model: k and v [n_layer, n_kv_head, context,
// head_dim] float32; of an int8 model: the keys in int8 (attention.h's Int8Keys, per
// layer and kv head: codes [key_positions(context), key_row_bytes(head_dim)] and scales
// [key_positions(context)]) and the values IEEE halves [n_layer, n_kv_head, context,
// head_dim] (one set, the other null). The rotary tables cos and sin [context, head_dim /
// 2] (the same arrays the numpy engine uses).
struct State {
  float* k_cache;
  float* v_cache;
  const float* cos;
  const float* sin;
  uint8_t* k_codes = nullptr;
  float* k_scales = nullptr;
  uint16_t* v_half = nullptr;
};

// The recent tokens the repetition penalty looks at (tinylm/sampling.py's REPETITION_WINDOW).
constexpr int64_t kRepetitionWindow = 64;

struct Sampling {
  double temperature = 0, top_p = 1, repetition_penalty = 1;
  int64_t top_k = 0;
};

struct SampleScratch {  // the sampler's working memory, kept between calls
  std::vector<double> logits, chosen;
  std::vector<uint64_t> weights, bucket_weight;
  std::vector<int32_t> ids, bucket, bucket_first, next_in_bucket, edge_positions;
};

// Throws std::invalid_argument describing the first inconsistency between config and
// weights (shapes, a mix of float and int8 in one matrix, head counts).
void validate(const Config& cfg, const Weights& w);

class Engine {
 public:
  Engine(const Config& cfg, Weights weights, State state);

  // Runs `token` at position `pos` (the cache holds positions [0, pos)), writes its
  // keys and values into the cache and its logits [vocab_size] into `logits`.
  void step(int32_t token, int64_t pos, float* logits);

  // Runs tokens ids[0, T) at positions [pos, pos + T) in one batched pass (the cache
  // holds positions [0, pos)), writes their keys and values into the cache and the logits
  // of the last one [vocab_size] (of all of them [T, vocab_size] with all_logits) into
  // `logits`. The products are the int8 GEMM's (int8 weights only: a float32 model's
  // batched pass is numpy's, with BLAS). Attention is training's causal kernel when the
  // tokens start the cache (pos 0: a prompt, a window that slid), else the decode
  // kernel's, token by token over the cache up to its position.
  void prefill(const int32_t* ids, int64_t T, int64_t pos, float* logits, bool all_logits);

  // What a decode call did.
  struct Decoded {
    int64_t picks = 0;          // written to out
    int64_t length = 0;         // positions the cache holds after the call
    int64_t slides = 0;         // times the window slid
    double slide_seconds = 0;   // spent in them (not in native_seconds)
  };
  // Decodes up to max_tokens tokens in one call: step(token, pos), pick the next token
  // from the logits with the sampling rules of tinylm/sampling.py, step it at pos + 1,
  // and so on. Writes the picks to out; fewer than max_tokens when a pick equals
  // stop_token (it is included). rng_state is the xorshift64* state, advanced in place;
  // history holds the tokens so far, ending with `token`, for the repetition penalty
  // (each step sees the last kRepetitionWindow of history and the picks) and the window.
  // When the cache is full (at the call, or after a pick) the call ends with window 0;
  // with window > 0 (int8 weights: the batched pass is native) the window slides as
  // generation's does (tinylm/engine.py, "When the context is full"): the newest
  // `window` tokens are prefilled at positions 0.. and the next token is picked from the
  // last one's logits, all within the call.
  Decoded decode(int32_t token, int64_t pos, int64_t max_tokens, const Sampling& s,
                 uint64_t* rng_state, const int32_t* history, int64_t n_history,
                 int32_t stop_token, int64_t window, int32_t* out);

  const Config& config() const { return cfg_; }

  // Threads a step uses at most (the pool's size caps it): by default one per MB of
  // weights and two from 768 KB, as fewer bytes a thread do not repay a step's barriers.
  // Settable for tests.
  int max_threads() const { return team_threads_; }
  void set_max_threads(int n) { team_threads_ = std::max(1, n); }

  // Seconds spent inside step() and decode()'s steps (its slides are counted apart) since
  // the engine was made: with a clock read around a generation, the share of its time
  // spent outside native code.
  double native_seconds() const { return native_seconds_; }

 private:
  // One thread's working vectors: its own copy of the residual stream x (every thread
  // adds each block's output to it) and of the normed input h.
  struct Lane {
    std::vector<float> x, h;
  };
  // Each thread of a step (share `t` of `T`) runs forward_share: the products' rows and
  // the kv heads are split between the threads, which meet at the barrier whenever a
  // vector they all read is complete (4 times a layer).
  struct Share {
    int t, T;
    Barrier& barrier;
    bool prefetch;  // float32 GEMVs prefetch (this thread's share of the weights fits in L2)
    bool cache_prefetch;  // decode attention asks for the cache ahead (weights and cache don't)
  };
  Share share_of(int t, int T, Barrier& barrier) const;  // thread t's of a team of T
  void forward(int32_t token, int64_t pos, float* logits);  // step() without the clock
  // decode()'s steps from pos until a pick equals stop_token, fills the cache or is the
  // max_tokens-th; returns the picks, written to out
  int64_t decode_steps(int32_t token, int64_t pos, int64_t max_tokens, const Sampling& s,
                       uint64_t* rng_state, int32_t stop_token, int32_t* out);
  // decode()'s slide: the newest T recent tokens prefilled at positions [0, T); returns
  // the token picked after them
  int32_t slide(int64_t T, const Sampling& s, uint64_t* rng_state);
  void remember(int32_t token);  // decode(): a pick joins the recent tokens
  void check_token(int32_t token) const;
  void check_position(int64_t pos) const;
  int team_size();  // the threads a step runs on, each with its lane
  void embed(int32_t token, float* x) const;  // x [d_model] = the token's embedding row
  void forward_share(int32_t token, int64_t pos, float* logits, const Share& s);
  void attention_share(const Layer& L, int64_t layer, int64_t pos, Lane& me, const Share& s);
  void mlp_share(const Layer& L, Lane& me, const Share& s);
  attention::Int8Keys int8_keys(int64_t layer, int64_t j) const;  // kv head j's, int8 models
  // Writes position pos of kv heads [j0, j0 + heads) of a layer into the cache, from k
  // and v [heads, head_dim].
  void store_kv(int64_t layer, int64_t j0, int64_t heads, int64_t pos, const float* k, const float* v);
  // Attention of those kv heads' query heads q [heads * group, head_dim] over cache
  // positions [0, length) into out; prefetch: DecodeDims' (ask for the cache ahead).
  void attend(int64_t layer, int64_t j0, int64_t heads, int64_t length, const float* q,
              float* out, bool prefetch = true) const;
  // Attention of T tokens at positions [0, T), q and out [T, n_head * head_dim], with the
  // causal kernel of training over the cached keys and values (as floats; an int8 model's
  // queries rounded to int8 as the decode kernel rounds them).
  void attend_causal(int64_t layer, int64_t T, const float* q, float* out) const;

  Config cfg_;
  Weights w_;
  State st_;
  std::vector<Lane> lanes_;  // one per thread
  int team_threads_ = 1;  // at most this many threads run a step
  int64_t weight_bytes_ = 0;  // what a step streams
  int64_t cache_bytes_ = 0;   // the KV cache's, at its full length
  // shared by the threads, each writing its share: q/k/v of their kv heads, attention's
  // output, the gate / up products, the o_proj and down_proj products
  std::vector<float> qkv_, att_, gu_, o_out_, down_out_, logits_;
  SampleScratch sample_scratch_;
  std::vector<int32_t> recent_;  // decode()'s history: at least the last recent_keep_ tokens
  int64_t recent_keep_ = kRepetitionWindow;  // the penalty's window, or the slide's if longer
  double native_seconds_ = 0;
};

// ---- pieces, exposed for the tests and the benchmark ---------------------------------

// y[r] = sum_k W[r, k] x[k] for several matrices that share the input x, in one
// parallel pass over their rows (q/k/v, gate/up). Float32 and int8 matrices can't mix.
struct Product {
  const Matrix* m;
  float* y;
};
// Which rows a gemv computes: all of them, split over the thread pool (count 0), or the
// index-th of `count` contiguous shares of them, on the calling thread.
struct RowShare {
  int index = 0, count = 0;
};
// prefetch: the float32 kernels ask for their weights ahead of the loads (gemv_kernels.h),
// which pays where those weights sit in L2.
void gemv(const float* x, const Product* products, int n_products, RowShare share = {},
          bool prefetch = true);

// y [T, m.rows] = x [T, K] m^T for each of several int8 matrices of one K (the prefill's
// products), x quantized once per row for all of them, as int8::linear does and bit for
// bit the same (but over panels), split over the thread pool.
void gemm_int8(const float* x, int64_t T, const Product* products, int n_products);

// The float kernels of one instruction-set level: the GEMV, rows [n0, n1) of y = W x
// (W [N, K] row-major), the MLP's g = silu(g) * u (silu.h), the key/value cache's
// float-to-half conversion (bit for bit float_to_half of half.h, NaN payloads aside), and
// the sampler's weights (bit for bit weigh_ref's arithmetic) and its scan of the logits.
using GemvKernel = void (*)(const float* W, const float* x, float* y, int64_t K, int64_t n0,
                            int64_t n1, bool prefetch);
using SiluKernel = void (*)(float* g, const float* u, int64_t n);
using HalvesKernel = void (*)(const float* x, uint16_t* h, int64_t n);
using WeighKernel = uint64_t (*)(const double* x, int64_t n, double top,
                                 double inverse_temperature, double unit, uint64_t* w);
// The sampler's scan of the logits (extremes, below); NaN values are left out of top and
// low and only set nan.
struct Extremes {
  double top;  // the highest value; -inf if there is none
  double low;  // the lowest value above -inf; +inf if there is none
  bool nan;    // whether any value is NaN
};
using ExtremesKernel = Extremes (*)(const double* x, int64_t n);
struct GemvInfo {
  const char* name;
  uint32_t features;
  GemvKernel fn;
  SiluKernel silu;
  HalvesKernel halves;
  WeighKernel weigh;
  ExtremesKernel extremes;
};
const std::vector<GemvInfo>& gemv_kernels();  // best first; the last is the scalar reference
const char* active_gemv();
std::string active_gemv_int8();  // the int8 decode kernel the active level selects

// g[i] = silu(g[i]) * u[i] = g[i] / (1 + e^-g[i]) * u[i] with the active level's kernel
// (silu.h: within 2 ulp of expf's; g below -87 gives about -g e^-87 * u instead of ~0).
void silu_mul(float* g, const float* u, int64_t n);
// h[i] = float_to_half(x[i]) (half.h) with the active level's kernel.
void to_halves(const float* x, uint16_t* h, int64_t n);

// The random generator and sampler of tinylm/sampling.py.
uint64_t seed_state(uint64_t seed);
uint64_t rng_next(uint64_t* state);
double rng_uniform(uint64_t* state);
// e^x for x <= 0 with tinylm.sampling.weight_exp's arithmetic, bit for bit (0 below -40).
double weight_exp(double x);
// The sampler's weights, tinylm.sampling's rule 3, with the active level's kernel:
// w[i] = floor(weight_exp((x[i] - top) * inverse_temperature) * unit + 0.5) for x[i] <= top
// (0 for -inf or NaN) and unit <= 2^52; returns their sum.
uint64_t weigh(const double* x, int64_t n, double top, double inverse_temperature, double unit,
               uint64_t* w);
// The highest of x[0..n), the lowest above -inf, and whether any is NaN, with the active
// level's kernel (when the highest is a zero, its sign is either).
Extremes extremes(const double* x, int64_t n);
// Logits with a NaN, +infinity or no finite value are refused (std::invalid_argument
// with this message): nothing can be sampled from them.
inline constexpr const char* kNotFinite =
    "the model's logits are NaN or infinite: its weights hold NaN, infinity or values too "
    "large to compute with (a corrupt model file, or a training run that diverged)";
int32_t sample(const float* logits, int64_t vocab, const Sampling& s, uint64_t* rng_state,
               const int32_t* history, int64_t n_history, SampleScratch& scratch);

}  // namespace tinylm::engine
