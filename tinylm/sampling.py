"""Choosing the next token: greedy, temperature, top-k, top-p, repetition penalty.

The random numbers come from a small generator, xorshift64* seeded through splitmix64,
written out here in plain integer arithmetic and again in C++ (csrc/engine/sampling.cpp),
so that a seed gives the same sequence of numbers from the reference and the native
engine on every machine (numpy's generators are not promised to stay stable across
versions, and a C++ port of them would be long).

One sampling step, in this order (the native engine does exactly the same):

1. repetition penalty: each distinct token among the last `REPETITION_WINDOW` of the
   history has its logit divided by the penalty when positive, multiplied when negative
   (as in CTRL and llama.cpp), so penalty 1 changes nothing;
2. temperature 0: the arg-max (the lowest id among equal maxima); no random number used;
3. otherwise the candidates are all tokens, or, when top-k is on, the k best (highest
   logit first, ties by lower id); each one's weight is e^x, x = (logit - max) *
   (1 / temperature), in float64 by `weight_exp` below (not the C library's exp, whose
   last bit differs between machines and from numpy's), then counted in whole units of
   2^-S, rounded to the nearest, with S = 53 - V.bit_length() for a vocabulary of V
   tokens: whole numbers whose sum over the vocabulary stays below 2^53, so that every
   sum of weights is exact whatever the order of adding (a token more than 2^(S+1) times
   less likely than the best gets weight 0 and is never picked);
4. top-p keeps the shortest run of candidates, best first, whose weight reaches p of
   the candidates' total (always at least one token);
5. one uniform number u in [0, 1) from the generator gives r = floor(u * kept total)
   (at most the kept total - 1), and the pick is the first kept candidate, in id order,
   whose running weight exceeds r.

Exact sums are what let the native sampler find the nucleus without sorting the
candidates (csrc/engine/sampling.cpp): any order of adding gives the same sums, so
only the order of the tokens at the nucleus's edge matters.

Logits with a NaN, +infinity or no finite value (a broken model) are refused in every
mode: nothing can be sampled from them.
"""
import math

import numpy as np

from .errors import TinylmError

MASK64 = (1 << 64) - 1
REPETITION_WINDOW = 64  # tokens of history the repetition penalty looks at
MAX_TEMPERATURE = 100.0
# The lowest temperature above 0 (greedy): far below it, 1 / temperature overflows (a
# subnormal temperature) and the best token's weight would be NaN.
MIN_TEMPERATURE = 1e-6
MAX_REPETITION_PENALTY = 10.0
# weight_exp's constants: ln 2 in two parts (the first with 21 trailing zero bits, so that
# n * LN2_HI is exact), log2(e), and the Taylor coefficients 1/k!, k = 10 down to 0
LN2_HI = 6.93147180369123816490e-01
LN2_LO = 1.90821492927058770002e-10
LOG2E = 1.44269504088896338700e+00
EXP_COEFFICIENTS = (1 / 3628800, 1 / 362880, 1 / 40320, 1 / 5040, 1 / 720, 1 / 120, 1 / 24,
                    1 / 6, 1 / 2, 1.0, 1.0)
# Logits with a NaN, +infinity or no finite value: nothing can be sampled from them.
NOT_FINITE = ("the model's logits are NaN or infinite: its weights hold NaN, infinity or "
              "values too large to compute with (a corrupt model file, or a training run "
              "that diverged)")


class Rng:
    """xorshift64* (Vigna 2016) with its state seeded by splitmix64, so any seed,
    including 0, gives a well-mixed non-zero state."""

    def __init__(self, seed: int = 0):
        # the state is 64 bits: any other seed would give the same numbers as its value
        # modulo 2**64
        if (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
                or not 0 <= seed < 2**64):
            raise TinylmError(f"seed must be an integer in [0, 2**64), got {seed!r}")
        self.state = seed_state(int(seed))

    def next_u64(self) -> int:
        x = self.state
        x ^= x >> 12
        x ^= (x << 25) & MASK64
        x ^= x >> 27
        self.state = x
        return (x * 0x2545F4914F6CDD1D) & MASK64

    def uniform(self) -> float:
        """A float64 in [0, 1) from the top 53 bits."""
        return (self.next_u64() >> 11) * (1.0 / (1 << 53))


def seed_state(seed: int) -> int:
    """splitmix64 of the seed (taken modulo 2^64); never 0."""
    z = (seed + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    z ^= z >> 31
    return z or 0x9E3779B97F4A7C15


def check_sampling(temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0, as_flags=False):
    """Raises TinylmError naming the first bad value and the range it must lie in: as the
    API's argument (top_p), or with as_flags as the command line's option (--top-p)."""
    def called(name):
        return "--" + name.replace("_", "-") if as_flags else name

    def number(name, value):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            raise TinylmError(f"{called(name)} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise TinylmError(f"{called(name)} must be finite, got {value}")
        return float(value)

    t = number("temperature", temperature)
    if not (t == 0 or MIN_TEMPERATURE <= t <= MAX_TEMPERATURE):
        raise TinylmError(f"{called('temperature')} must be 0 (greedy) or in "
                          f"[{MIN_TEMPERATURE:g}, {MAX_TEMPERATURE:g}], got {t:g}")
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
        raise TinylmError(f"{called('top_k')} must be a non-negative integer (0 = off), "
                          f"got {top_k!r}")
    p = number("top_p", top_p)
    if not 0 < p <= 1:
        raise TinylmError(f"{called('top_p')} must be in (0, 1] (1 = off), got {p:g}")
    r = number("repetition_penalty", repetition_penalty)
    if not 1 <= r <= MAX_REPETITION_PENALTY:
        raise TinylmError(f"{called('repetition_penalty')} must be in "
                          f"[1, {MAX_REPETITION_PENALTY:g}] (1 = off), got {r:g}")


class Sampler:
    """Picks next tokens from logits; holds the generator, so a run is reproducible."""

    def __init__(self, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0, seed=0):
        check_sampling(temperature, top_k, top_p, repetition_penalty)
        self.temperature = float(temperature)
        self.top_k = int(top_k)
        self.top_p = float(top_p)
        self.repetition_penalty = float(repetition_penalty)
        self.seed = seed
        self.rng = Rng(seed)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def __call__(self, logits, history=()) -> int:
        logits = np.array(logits, dtype=np.float64).reshape(-1)
        if self.repetition_penalty != 1:
            penalize(logits, history, self.repetition_penalty)
        if not np.isfinite(logits.max()):  # max is NaN if any logit is
            raise TinylmError(NOT_FINITE)
        if self.greedy:
            return int(np.argmax(logits))  # first index among equal maxima
        ids, weights = self.candidates(logits)
        if self.top_p < 1:
            cum = np.cumsum(weights)  # best first; exact integers
            keep = int(np.searchsorted(cum, self.top_p * float(cum[-1]), side="left")) + 1
            ids, weights = ids[:keep], weights[:keep]
        by_id = np.argsort(ids)
        ids, cum = ids[by_id], np.cumsum(weights[by_id])
        total = int(cum[-1])
        r = min(int(self.rng.uniform() * float(total)), total - 1)
        return int(ids[np.searchsorted(cum, r, side="right")])  # first running weight > r

    def candidates(self, logits):
        """(ids, weights): best first and cut to top-k when k or p is on, else in id
        order; the weights in whole units of 2^-S (rule 3)."""
        if self.top_k or self.top_p < 1:
            ids = np.lexsort((np.arange(len(logits)), -logits))  # logit desc, then id asc
            if self.top_k:
                ids = ids[:self.top_k]
        else:
            ids = np.arange(len(logits))
        chosen = logits[ids]
        unit = 2.0 ** (53 - len(logits).bit_length())
        scaled = (chosen - chosen.max()) * (1.0 / self.temperature)
        weights = np.floor(weight_exp(scaled) * unit + 0.5)
        return ids, weights.astype(np.uint64)


def weight_exp(x):
    """e^x for float64 x <= 0, within 3e-13 of it, by IEEE additions and multiplications
    alone in a fixed order, so that the C++ sampler (csrc/engine/sampling.cpp) computes
    the same bits on every machine: x = n ln 2 + r with |r| <= ln(2) / 2 (Cody and Waite's
    two-part ln 2), e^r by its Taylor series to r^10 (Horner), times 2^n. Below -40 it
    gives 0: e^-40 * 2^53 < 0.5, a weight that rounds to 0 whatever the unit."""
    x = np.asarray(x, np.float64)
    small = ~(x >= -40.0)  # (also -inf)
    x = np.where(small, 0.0, x)
    k = np.floor(-x * LOG2E + 0.5)  # n = -k; the argument is >= 0.5, so this is its truncation
    r = (x + k * LN2_HI) + k * LN2_LO
    p = np.full_like(x, EXP_COEFFICIENTS[0])
    for c in EXP_COEFFICIENTS[1:]:
        p = p * r + c
    return np.where(small, 0.0, np.ldexp(p, -k.astype(np.int32)))  # (int64: not on 32-bit ARM)


def penalize(logits, history, penalty):
    """CTRL-style repetition penalty on the distinct tokens of the recent history."""
    recent = np.unique(np.asarray(history, dtype=np.int64)[-REPETITION_WINDOW:])
    recent = recent[(recent >= 0) & (recent < len(logits))]
    values = logits[recent]
    logits[recent] = np.where(values > 0, values / penalty, values * penalty)
    return logits
