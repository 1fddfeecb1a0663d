"""Inference: a KV-cache engine, streaming text, and the `tinylm.load` model object.

    model = tinylm.load("model.safetensors")        # fp32 or int8, memory-mapped
    for piece in model.generate("Once upon a time", max_tokens=100, seed=1):
        print(piece, end="", flush=True)
    logits = model.logits(model.tokenizer.encode("hello"))   # [T, vocab], for research

How a generation runs
---------------------
The engine keeps the keys and values of every position it has seen in a cache sized to
the model's context (tinylm/kvcache.py): float32 for a float32 model, whose logits then
match the training forward pass; for an int8 model, which already trades exactness for
speed, int8 keys (a scale a key, laid out for vector dot products; each query rounded
to int8 the same way) and float16 values. They shrink the cache's memory and the bytes
a decode step reads from it: a `small` model's cache at position 190 is 2.6 MB in
float32, 43% of its int8 weights, and 1.0 MB as an int8 model keeps it; `medium`'s at
its full context of 1024, 33.5 MB in float32, more than its 25.6 MB of int8 weights, and
12.8 MB. Both engines round alike (the reference engine rounds halves with numpy's
astype, the native engine with csrc/half.h, which rounds exactly as numpy does; both
quantize keys and queries with quant.py's scheme), so they store the same codes and
halves, but where their float keys differ in the last bit, a code can tip by one.

- **Prefill**: the prompt goes through the model in one batched pass (matrix-matrix
  products), filling the cache. `ReferenceEngine` runs it in numpy; `NativeEngine`
  runs an int8 model's in one C++ call (the int8 GEMM; csrc/engine/) and a float32
  model's in numpy with BLAS and the native attention kernel.
- **Decode**: then one token at a time, each picked token fed back in. `NativeEngine`
  runs whole steps (every layer, the tied head and the sampling) in C++ (csrc/engine/),
  several tokens per call (`decode`), so that Python's share of a token's time stays
  small; `ReferenceEngine` does the same arithmetic in numpy and is what the tests hold
  the native engine to.

The prompt is continued as it stands; an empty prompt is the end-of-text token, which
separates documents in training, so that the model starts a document. (Every prompt
began with it once: a model trained on one file, or on standard input, has never seen
it followed by text. By `model.logits` over 60-byte pieces: the `tiny` model trained
200 steps on one 22 KB file read 59 of its pieces at 0.70 nats/token without it and
1.24 with it; the README's standard-library model read the first 60 bytes of 60 files
at 1.553 without and 1.527 with, and their middles at 1.501 without and 1.530 with.)

When the context is full
------------------------
The model never sees more than `context` tokens. A prompt longer than that keeps its
last `context` tokens. When the cache fills during generation, the engine slides the
window: it keeps the most recent `context // 2` tokens, re-prefills them at positions
0.. (rotary positions are baked into the cached keys, so they cannot just be shifted),
and carries on. Generation therefore never stops because of the context, at the cost of
one batched prefill every `context // 2` tokens. It keeps at least one token: a model
with a context of 1 re-reads the newest token alone for every next one (all it was
trained to see). `Engine.decode` slides (given the window); the native engine does it
inside its C++ call for an int8 model, whose batched pass is native too.

One generation at a time
------------------------
A `Model` has one KV cache. A generator of `model.generate` holds it from its first
piece until it finishes, raises, or is closed (its `close()`, or garbage collection, as
after a `break` out of a `for` over it). `model.logits` or a second generator of the
same model in the meantime raises TinylmError rather than silently mixing the two. To
run two at once, load the model twice.
"""
import codecs
import contextlib
import os
import resource
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from . import kvcache
from . import model as M
from .errors import TinylmError
from .sampling import NOT_FINITE, REPETITION_WINDOW, Rng, Sampler, check_sampling

# ---------------------------------------------------------------- the engines


def _rmsnorm(x, w, eps):
    """RMSNorm as the native engine computes it: the mean square in float64, as x * x in
    float32 overflows from |x| ~ 1.8e19 (with weights that large, the float32 norm gave
    rstd 0, finite logits and text, where the native engine refuses the infinite
    logits)."""
    rstd = (1.0 / np.sqrt(np.square(x, dtype=np.float64).mean(axis=-1, keepdims=True) + eps))
    return x * rstd.astype(np.float32) * w


def _is_int8(w):
    return type(w).__name__ == "Int8Weight"


class Engine:
    """The KV cache and the batched prefill shared by both engines.

    `prefill(ids)` appends tokens at positions [length, length + len(ids)) and returns
    their logits; `step(token)` appends one token and returns its logits [V].
    """

    def __init__(self, cfg, params, int8_impl="native"):
        M.check_params(cfg, params)
        self.cfg, self.params = cfg, params
        self.int8 = _is_int8(params[M.EMBED])
        self.int8_impl = int8_impl  # "numpy": the exact int32 reference; "native": the kernel
        shape = (cfg.n_layer, cfg.n_kv_head, cfg.context, cfg.head_dim)
        try:
            self.keys = (kvcache.Int8Keys if self.int8 else kvcache.FloatKeys)(cfg)
            self.v_cache = kvcache.zeroed(shape, np.float16 if self.int8 else np.float32)
            self.cos, self.sin = M.rope_tables(cfg.context, cfg.head_dim, cfg.rope_theta, np.float32)
        except (OSError, MemoryError, OverflowError) as e:  # a damaged or hostile config's context
            size = kvcache.nbytes(cfg, self.int8)
            raise TinylmError(f"the model's context of {cfg.context:,} tokens needs a {size / 1e9:,.1f} GB "
                              f"key/value cache, which this machine cannot map ({e}); is the "
                              "model file's config damaged?") from None
        self.length = 0
        self.slides, self.slide_seconds = 0, 0.0  # decode's, since the engine was made

    def reset(self):
        self.length = 0

    def _linear(self, x, w):
        if _is_int8(w) and self.int8_impl == "numpy":
            from .quant import linear_reference
            return linear_reference(x, w)
        return x @ w.T

    def prefill(self, ids, all_logits=False):
        """Runs tokens `ids` at the next positions; logits of the last one [V] (or of every
        one [T, V] with all_logits). Weights too large for float32 give infinite or NaN
        logits, which the sampler refuses with a clear error: numpy's warnings on the way
        say nothing more."""
        with np.errstate(over="ignore", invalid="ignore"):
            return self._forward(self._checked_ids(ids), all_logits)

    def _forward(self, ids, all_logits):
        cfg, p, T, start = self.cfg, self.params, len(ids), self.length
        H, Hkv, D = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        cos, sin = self.cos[start:start + T], self.sin[start:start + T]
        x = np.asarray(p[M.EMBED][ids], np.float32)  # [T, d]
        for i in range(cfg.n_layer):
            w = lambda name: p[M.layer_param(i, name)]  # noqa: E731
            h = _rmsnorm(x, w("input_layernorm.weight"), cfg.norm_eps)
            q = self._linear(h, w("self_attn.q_proj.weight")).reshape(T, H, D).transpose(1, 0, 2)
            k = self._linear(h, w("self_attn.k_proj.weight")).reshape(T, Hkv, D).transpose(1, 0, 2)
            v = self._linear(h, w("self_attn.v_proj.weight")).reshape(T, Hkv, D).transpose(1, 0, 2)
            self.keys.store(i, start, M.rope_forward(k, cos, sin))
            self.v_cache[i, :, start:start + T] = v  # (numpy rounds float16 to nearest even)
            out = self._attend(i, M.rope_forward(q, cos, sin), start + T)  # [H, T, D]
            x = x + self._linear(out.transpose(1, 0, 2).reshape(T, H * D), w("self_attn.o_proj.weight"))
            h = _rmsnorm(x, w("post_attention_layernorm.weight"), cfg.norm_eps)
            g = self._linear(h, w("mlp.gate_proj.weight"))
            u = self._linear(h, w("mlp.up_proj.weight"))
            x = x + self._linear(g / (1 + np.exp(-g)) * u, w("mlp.down_proj.weight"))
        self.length = start + T
        if not all_logits:
            x = x[-1:]
        h = _rmsnorm(x, p[M.FINAL_NORM], cfg.norm_eps)
        logits = np.asarray(self._linear(h, p[M.EMBED]), np.float32)
        return logits if all_logits else logits[0]

    def _checked_ids(self, ids):
        """ids as an int32 vector that fits after the cached positions, else ValueError."""
        ids = np.asarray(ids).reshape(-1)
        cfg, T = self.cfg, len(ids)
        if T == 0:
            raise ValueError("prefill needs at least one token")
        if self.length + T > cfg.context:
            raise ValueError(f"{self.length + T} tokens exceed the context of {cfg.context}")
        if ids.min() < 0 or ids.max() >= cfg.vocab_size:
            raise ValueError(f"token ids must be in [0, {cfg.vocab_size})")
        return ids.astype(np.int32)

    def _attend(self, layer, q, end):
        """Causal attention of the new queries q [H, T, D] (positions end-T .. end-1) over
        the cached keys and values of positions [0, end)."""
        H, T, D = q.shape
        group = H // self.cfg.n_kv_head
        if self.int8:
            q = kvcache.round_queries(q)
        k = np.repeat(self.keys.load(layer, end), group, axis=0)  # [H, end, D]
        v = np.repeat(self.v_cache[layer, :, :end].astype(np.float32), group, axis=0)
        scores = (q @ k.transpose(0, 2, 1)) / np.float32(np.sqrt(D))  # [H, T, end]
        # query j sits at position end - T + j and sees keys up to that position
        future = np.arange(end)[None, :] > (end - T + np.arange(T))[:, None]
        scores[:, future] = -np.inf
        scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
        return (scores / scores.sum(axis=-1, keepdims=True)) @ v

    def step(self, token):
        raise NotImplementedError

    def sample(self, logits, sampler, history):
        """The next token after `history`, picked from its logits (a prefill's)."""
        return sampler(logits, history)

    def step_sample(self, token, sampler, history):
        """Appends `token` (history ends with it) and picks the next token."""
        return self.sample(self.step(token), sampler, history)

    def decode(self, token, n, sampler, history, stop_token=-1, window=0):
        """Appends `token` (history ends with it), picks the next token, appends that, and
        so on: up to n picks, fewer when a pick equals stop_token (it is included).
        Returns the picks; `history` is not changed. When the cache is full (at the call
        or after a pick), it stops there with window 0; with window > 0 the window slides
        (the module docstring): the newest `window` tokens are prefilled at positions 0..
        and the next token picked from their logits. The native engine does it all in one
        call into C++ (the slides too, for an int8 model)."""
        history, picks = list(history[-max(REPETITION_WINDOW, window):]), []
        while len(picks) < n and not (picks and picks[-1] == stop_token):
            full = self.length == self.cfg.context
            if full and window:
                picks.append(self._slide(window, sampler, history))
            elif full and picks:
                break
            else:  # (a step refuses a cache full at the call)
                picks += self._steps(token, n - len(picks), sampler, history, stop_token)
            token = picks[-1]
        return picks

    def _steps(self, token, n, sampler, history, stop_token):
        """decode's steps until a pick equals stop_token, fills the cache or is the n-th;
        each pick is appended to history."""
        picks = []
        while True:
            token = self.step_sample(token, sampler, history)
            picks.append(token)
            history.append(token)
            if len(picks) == n or token == stop_token or self.length == self.cfg.context:
                return picks

    def _slide(self, window, sampler, history):
        """decode's slide: the newest `window` tokens of history prefilled at positions
        0..; returns the token picked after them, appended to history."""
        t = time.perf_counter()
        self.reset()
        token = self.sample(self.prefill(history[-window:]), sampler, history)
        history.append(token)
        self.slides += 1
        self.slide_seconds += time.perf_counter() - t
        return token


class ReferenceEngine(Engine):
    """The numpy engine: a decode step is a prefill of one token."""

    def step(self, token):
        return self.prefill([token])


class NativeEngine(Engine):
    """Decode in C++ (csrc/engine/), a whole step per token and several tokens a call;
    prefill batched, in one C++ call for int8 weights, in numpy (BLAS) for float32 ones,
    into the cache arrays the native decode reads."""

    def __init__(self, cfg, params):
        super().__init__(cfg, params, int8_impl="native")
        from . import _C
        weights = []
        for i in range(cfg.n_layer):
            for name, _ in M.LAYER_PARAMS:
                weights.append(_native_weight(params[M.layer_param(i, name)]))
        self._native = _C.Engine(
            dict(vocab_size=cfg.vocab_size, d_model=cfg.d_model, n_layer=cfg.n_layer,
                 n_head=cfg.n_head, n_kv_head=cfg.n_kv_head, d_ff=cfg.d_ff,
                 context=cfg.context, rope_theta=cfg.rope_theta, norm_eps=cfg.norm_eps),
            _native_weight(params[M.EMBED]), np.asarray(params[M.FINAL_NORM]), weights,
            self.keys.native(), self.v_cache, self.cos, self.sin)

    def prefill(self, ids, all_logits=False):
        """An int8 model's batched pass runs in C++ (Engine::prefill, with the int8 GEMM),
        a float32 model's in numpy with BLAS, as the reference's."""
        if not self.int8:
            return super().prefill(ids, all_logits)
        ids = self._checked_ids(ids)
        logits = self._native.prefill(ids, self.length, all_logits)
        self.length += len(ids)
        return logits

    def _attend(self, layer, q, end):
        """A float32 prefill's attention: the native causal kernel when the new queries
        start the cache (a prompt, a window that slid), which is how generation prefills."""
        if q.shape[1] != end:
            return super()._attend(layer, q, end)
        from . import attention
        k = np.ascontiguousarray(self.keys.load(layer, end)[None])
        v = np.ascontiguousarray(self.v_cache[layer, :, :end][None])
        return attention.forward(q[None], k, v, impl="native")[0][0]

    def step(self, token):
        logits = self._native.step(int(token), self.length)
        self.length += 1
        return logits

    def step_sample(self, token, sampler, history):
        return self.decode(token, 1, sampler, history)[0]

    def sample(self, logits, sampler, history):
        """The native sampler: the reference's picks, in ~7 us a call against numpy's ~90."""
        from . import _C
        with _not_finite_as_tinylm_error():
            token, sampler.rng.state = _C.engine_sample(logits, *self._sampling(sampler),
                                                        sampler.rng.state, _recent(history, sampler))
        return token

    def decode(self, token, n, sampler, history, stop_token=-1, window=0):
        """An int8 model's slides run in the same C++ call (its batched pass is native)."""
        if not self.int8:
            return super().decode(token, n, sampler, history, stop_token, window)
        picks, slides, seconds = self._native_decode(token, n, sampler, history, stop_token, window)
        self.slides += slides
        self.slide_seconds += seconds
        return picks

    def _steps(self, token, n, sampler, history, stop_token):
        picks, _, _ = self._native_decode(token, n, sampler, history, stop_token, 0)
        history += picks
        return picks

    def _native_decode(self, token, n, sampler, history, stop_token, window):
        """One C++ decode call: (picks, slides, seconds spent sliding)."""
        recent = _recent(history, sampler, window)
        with _not_finite_as_tinylm_error():
            picks, sampler.rng.state, self.length, slides, seconds = self._native.decode(
                int(token), self.length, n, *self._sampling(sampler), sampler.rng.state,
                recent, stop_token, window)
        return picks, slides, seconds

    def _sampling(self, sampler):
        """The sampler's settings as the C++ sampler takes them."""
        return (sampler.temperature, _top_k(sampler, self.cfg.vocab_size), sampler.top_p,
                sampler.repetition_penalty)

    @property
    def native_seconds(self):
        """Seconds spent in C++ decode steps so far (the benchmark's Python share)."""
        return self._native.native_seconds


def _history_limit(context):
    """The recent tokens a generation keeps: the window's and the repetition penalty's."""
    return max(context, REPETITION_WINDOW)


def _top_k(sampler, vocab_size):
    """top-k for C++ (an int64): any k of at least the vocabulary keeps every token."""
    return min(sampler.top_k, vocab_size)


def _recent(history, sampler, window=0):
    """What of `history` C++ reads: the repetition penalty's window (nothing when it is
    off) or the slide's, whichever is longer."""
    n = max(REPETITION_WINDOW if sampler.repetition_penalty != 1 else 0, window)
    return history[-n:] if n else ()


@contextlib.contextmanager
def _not_finite_as_tinylm_error():
    """The native sampler's refusal of NaN / infinite logits, as the reference's error."""
    try:
        yield
    except ValueError as e:
        if str(e) == NOT_FINITE:
            raise TinylmError(NOT_FINITE) from None
        raise


def _native_weight(w):
    """What the C++ engine takes for a matrix: the float32 array, or (int8 panels, scales)."""
    if _is_int8(w):
        return (w.panels, w.scale)
    return np.asarray(w)


# ---------------------------------------------------------------- streaming text


class TextStream:
    """Turns token bytes into text pieces as they arrive: holds back an incomplete UTF-8
    sequence until it is whole (invalid bytes become U+FFFD, as bytes.decode with
    errors="replace" makes them), and any tail that could be the start of a stop string
    until it is clear that it is not; `stopped` turns true at the first stop string to
    end (whose text, and everything after it, is never emitted)."""

    def __init__(self, stop=()):
        self.stop = [s for s in stop if s]
        # Python's incremental decoder holds back an incomplete sequence itself, in C: a
        # random model's tokens are mostly not ASCII, and decoding them in Python took
        # 2-3 us per token, a tenth of a decode step on the smallest presets
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.held = ""  # text that might begin a stop string
        self.stopped = False

    def feed(self, data: bytes) -> str:
        if self.stopped:
            return ""
        text = self.decoder.decode(data)
        return self._emit(self.held + text) if self.stop else text

    def flush(self) -> str:
        """What is left at the end (an incomplete sequence decodes to U+FFFD)."""
        if self.stopped:
            return ""
        text, self.held = self.held + self.decoder.decode(b"", final=True), ""
        return self._emit(text, final=True) if self.stop else text

    def _emit(self, text, final=False):
        if self.stopped:
            return ""
        # the stop string that ends first (of two ending together, the longer): the same
        # cut however the text arrived in pieces, one byte at a time or all at once
        hits = [(i + len(s), i) for s in self.stop for i in (text.find(s),) if i >= 0]
        if hits:
            self.stopped, self.held = True, ""
            return text[:min(hits)[1]]
        keep = 0 if final else self._stop_prefix_len(text)
        self.held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep]

    def _stop_prefix_len(self, text):
        """Length of the longest tail of text that is a proper prefix of a stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best


# ---------------------------------------------------------------- the model object


@dataclass
class Stats:
    prompt_tokens: int = 0
    # tokens the engine computed: after a stop string, also the rest of the last decode
    # call's (whose size depends on the machine's speed), though not in the text
    generated_tokens: int = 0
    prefill_seconds: float = 0.0  # all batched passes, including re-prefills on a slide
    first_token_seconds: float = 0.0  # from the call to the first token
    decode_seconds: float = 0.0  # the one-token steps
    native_seconds: float = 0.0  # the part of decode_seconds spent in C++ (native engine)
    total_seconds: float = 0.0
    slides: int = 0  # times the context window slid

    @property
    def decode_steps(self):
        """Tokens that came from a one-token step (the first token and the first after
        each slide come from a batched pass)."""
        return max(self.generated_tokens - 1 - self.slides, 0)

    @property
    def decode_tokens_per_second(self):
        return self.decode_steps / self.decode_seconds if self.decode_seconds else 0.0

    @property
    def overall_tokens_per_second(self):
        """The whole generation's: prefills (the prompt's, re-prefills on a slide) included."""
        return self.generated_tokens / self.total_seconds if self.total_seconds else 0.0

    def summary(self):
        slid = (f"; context slid {self.slides}x, {self.overall_tokens_per_second:.1f} tokens/s "
                f"overall" if self.slides else "")
        return (f"{self.prompt_tokens} prompt tokens, {self.generated_tokens} generated; "
                f"first token {self.first_token_seconds * 1e3:.1f} ms; "
                f"decode {self.decode_tokens_per_second:.1f} tokens/s; "
                f"peak memory {peak_rss_mb():.1f} MB" + slid)


def peak_rss_mb():
    """Peak resident memory of this process in MB. On Linux from /proc (VmHWM), which
    starts afresh at exec, unlike getrusage's ru_maxrss, which a child inherits from
    the process that started it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / (1024 * 1024 if sys.platform == "darwin" else 1024)


class Model:
    """A loaded model file, ready to generate. Weights stay memory-mapped (fp32 or int8).

    `model.engine` is the engine underneath (prefill, step, decode over its own cache),
    for research and the benchmarks: calls on it bypass the rule that one generator or
    `logits()` call uses the model at a time, so do not mix them with a generation."""

    def __init__(self, path, engine="native"):
        from .modelfile import read_model
        from .quant import WEIGHTS_KEY, load_any_model
        if not isinstance(path, (str, bytes, os.PathLike)):
            raise TinylmError(f"the model path must be a str or os.PathLike (a model file's "
                              f"path), got {path!r}")
        if not os.path.exists(path):
            raise TinylmError(f"model file '{path}' does not exist")
        self.path = path
        self.cfg, self.params, self.tokenizer = load_any_model(path)
        self.weights = read_model(path)[3].get(WEIGHTS_KEY, "fp32")
        if engine not in ("native", "numpy"):
            raise TinylmError(f"engine must be 'native' or 'numpy', got {engine!r}")
        self.engine = (NativeEngine if engine == "native" else ReferenceEngine)(self.cfg, self.params)
        self.stats = Stats()
        self._bytes_of = {}
        self._cache_lock = threading.Lock()  # held while something uses the engine's cache

    def __repr__(self):
        c = self.cfg
        return (f"Model('{self.path}', {self.weights}, {c.n_layer} layers, d_model {c.d_model}, "
                f"context {c.context}, {self.tokenizer.name} tokenizer)")

    def logits(self, ids):
        """Logits [T, vocab] (float32) of token ids [T] (T <= context), from a fresh cache."""
        ids = np.asarray(ids)
        if ids.ndim != 1 or len(ids) == 0 or ids.dtype.kind not in "iu":
            raise TinylmError(f"ids must be a non-empty 1-d integer array, got {ids.dtype} {ids.shape}")
        if len(ids) > self.cfg.context:
            raise TinylmError(f"{len(ids)} ids exceed the model's context of {self.cfg.context}")
        if ids.min() < 0 or ids.max() >= self.cfg.vocab_size:
            raise TinylmError(f"ids must lie in [0, {self.cfg.vocab_size})")
        with self._using_cache("model.logits()"):
            self.engine.reset()
            return self.engine.prefill(ids, all_logits=True)

    @contextlib.contextmanager
    def _using_cache(self, what):
        """Holds the one KV cache for `what`, or refuses: a generator still using it would
        go on from another input's keys and values and silently give other text."""
        if not self._cache_lock.acquire(blocking=False):
            raise TinylmError(f"cannot run {what} while the model is in use (a generator of it "
                              "unfinished, or another thread's call): it has one key/value cache. "
                              "Finish the generator or call its close() first, or load the model "
                              "twice to use both at once")
        try:
            yield
        finally:
            self._cache_lock.release()

    def generate(self, prompt="", max_tokens=256, temperature=0.8, top_k=0, top_p=0.95,
                 repetition_penalty=1.0, seed=None, stop=(), stop_at_eot=True):
        """Yields the text as it is produced, for `prompt` (str, bytes, or a 1-d sequence of
        token ids, as the tokenizer's encode gives them). Stops after
        max_tokens tokens, at the end-of-text token (unless stop_at_eot is false, as for
        a benchmark that wants exactly max_tokens), or before the first stop string
        (`stop`: a str, a list of str, or None for none). `seed`: an integer in
        [0, 2**64), or None for a random one. Timings of the last call are in
        `self.stats`. One generator of a model at a time (see the module docstring)."""
        check_sampling(temperature, top_k, top_p, repetition_penalty)
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, (int, np.integer)) or max_tokens < 0:
            raise TinylmError(f"max_tokens must be a non-negative integer, got {max_tokens!r}")
        sampler = Sampler(temperature, top_k, top_p, repetition_penalty, _seed(seed))
        stream = TextStream(_stop_strings(stop))
        ids = self._prompt_ids(prompt)
        # only the last context's worth is read (a list of every id of a long prompt took
        # 8 bytes a token more, 480 MB for a 60 MB prompt); nothing: start a document
        history = ids[-self.cfg.context:].tolist() or [self.tokenizer.eot_id]
        return self._generate(history, len(ids) or 1, int(max_tokens), sampler, stream,
                              bool(stop_at_eot))

    def _prompt_ids(self, prompt):
        """The prompt's token ids: a str or bytes encoded, token ids checked."""
        tok = self.tokenizer
        if isinstance(prompt, str):
            return tok.encode(prompt)
        if isinstance(prompt, (bytes, bytearray, memoryview)):
            return tok.encode_bytes(prompt)
        ids = np.asarray(prompt)
        if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
            raise TinylmError(f"a prompt is a str, bytes or a 1-d sequence of token ids, got "
                              f"{type(prompt).__name__} ({ids.dtype} {ids.shape})")
        if ids.size and (ids.min() < 0 or ids.max() >= self.cfg.vocab_size):
            raise TinylmError(f"a prompt's token ids must lie in [0, {self.cfg.vocab_size})")
        return ids.astype(np.int32, copy=False)

    def _token_bytes(self, token):
        """The bytes of one token, memoized (decode_bytes goes through numpy)."""
        b = self._bytes_of.get(token)
        if b is None:
            b = self._bytes_of[token] = self.tokenizer.decode_bytes([token])
        return b

    def _generate(self, history, prompt_tokens, max_tokens, sampler, stream, stop_at_eot=True):
        # the cache is claimed at the first piece: a generator never started runs no
        # code, not even a `finally`, so it must not hold anything
        with self._using_cache("a second model.generate()"):
            yield from self._stream(history, prompt_tokens, max_tokens, sampler, stream,
                                    stop_at_eot)

    def _stream(self, history, prompt_tokens, max_tokens, sampler, stream, stop_at_eot):
        tok, eng, ctx = self.tokenizer, self.engine, self.cfg.context
        eot = tok.eot_id if stop_at_eot else -1
        # what the window and the repetition penalty read; history is cut back to it when
        # it has grown to twice that, so a long generation's memory stays bounded
        history_limit = _history_limit(ctx)
        st = self.stats = Stats(prompt_tokens=prompt_tokens)
        t0 = time.perf_counter()
        if max_tokens == 0:
            return
        eng.reset()
        picks = [eng.sample(eng.prefill(history), sampler, history)]
        st.prefill_seconds = st.first_token_seconds = time.perf_counter() - t0
        t_decode = time.perf_counter()
        native_start = getattr(eng, "native_seconds", 0.0)
        chunk = 1  # tokens per decode call: grows while a call stays short (see below)
        window = max(1, ctx // 2)  # a full cache's newest tokens kept (a context of 1: 1, not 0)
        while True:
            # A call's picks at once: one piece of text for all of them, so that Python's
            # work per token stays a few list operations (handled token by token, they
            # made Python's share of a `baby` int8 step 4.2%, against 3.0% this way). The
            # engines end their picks at the end-of-text token; it is counted, not shown.
            # After a stop string, the rest of the call's picks are counted, not shown.
            st.generated_tokens += len(picks)
            done = picks[-1] == eot
            if done:
                picks = picks[:-1]
            history += picks
            if len(history) >= 2 * history_limit:
                del history[:-history_limit]
            text = stream.feed(b"".join(map(self._token_bytes, picks)))
            if text:
                yield text
            if done or stream.stopped or st.generated_tokens >= max_tokens:
                break
            # The next tokens in one call (one C++ call for the native engine, the window's
            # slides included for an int8 model), so that Python's share of a token's time
            # stays small on fast models. The text of a call's tokens appears when the call
            # returns: calls are kept under CHUNK_SECONDS, so the stream still looks smooth
            # on a slow machine. Re-prefills count as prefill time, not decode time.
            slides, slid, t = eng.slides, eng.slide_seconds, time.perf_counter()
            picks = eng.decode(history[-1], min(chunk, max_tokens - st.generated_tokens),
                               sampler, history, eot, window)
            seconds_per_token = (time.perf_counter() - t) / len(picks)
            st.slides += eng.slides - slides
            slid = eng.slide_seconds - slid
            st.prefill_seconds += slid
            t_decode += slid
            chunk = max(1, min(8 * chunk, MAX_CHUNK, int(CHUNK_SECONDS / seconds_per_token)))
        st.decode_seconds = time.perf_counter() - t_decode
        st.native_seconds = getattr(eng, "native_seconds", 0.0) - native_start
        tail = stream.flush()
        if tail:
            yield tail
        st.total_seconds = time.perf_counter() - t0


def _seed(seed):
    """seed, if an integer in [0, 2**64) (the generator's state is 64 bits: any other
    would give the same text as its value modulo 2**64); a random one for None."""
    if seed is None:
        return int.from_bytes(os.urandom(8), "little")
    Rng(seed)  # refuses anything else
    return int(seed)


def _stop_strings(stop):
    """stop (a str, an iterable of str, or None for none) as a tuple of str."""
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,)
    if isinstance(stop, Iterable) and not isinstance(stop, (bytes, bytearray)):
        strings = tuple(stop)
        if all(isinstance(s, str) for s in strings):
            return strings
    raise TinylmError(f"stop must be a str or a list of str (None: no stop strings), got {stop!r}")


# Tokens decoded per call during generation: at most MAX_CHUNK, and no more than fit in
# CHUNK_SECONDS at the speed measured so far; from one token, up to 8x the last call's
# (growing 2x a call, a `baby` int8 generation of 256 tokens at 2 threads took 13 calls
# instead of 10, and Python's share of its steps was 4.4-4.7% instead of 4.0-4.3%).
# Each return to Python costs ~10-40 us on the fastest models (the interpreter resumes
# with cold caches), so CHUNK_SECONDS is what bounds a call; MAX_CHUNK only caps a
# call's list of picks.
MAX_CHUNK = 1024
CHUNK_SECONDS = 0.02


def load(path, engine="native"):
    """Opens a model file (fp32 or int8) for generation: see `Model`."""
    return Model(path, engine)
