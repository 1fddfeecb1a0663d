import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinylm.errors import TinylmError
from tinylm.sampling import REPETITION_WINDOW, Rng, Sampler, check_sampling, penalize


def test_rng_known_values():
    # Pinned (csrc/engine tests pin the same numbers), so a change to the generator,
    # which would change every seeded output and break agreement with the C++ copy,
    # cannot go unnoticed.
    r = Rng(0)
    assert [r.next_u64() for _ in range(3)] == [
        0x7BBCB40D550682D0, 0xDE7FE413D00CC9FD, 0xB3C638353C668C91]
    r = Rng(42)
    assert [r.next_u64() for _ in range(3)] == [
        0x31B0ECE7C4F697A2, 0x9008A3B1CB686F03, 0x7C7173ABD97BE16F]
    assert all(0 <= Rng(s).uniform() < 1 for s in range(50))


def test_rng_uniform_is_uniform():
    r = Rng(7)
    u = np.array([r.uniform() for _ in range(20000)])
    assert abs(u.mean() - 0.5) < 0.01
    hist, _ = np.histogram(u, bins=10, range=(0, 1))
    assert hist.min() > 1800 and hist.max() < 2200


def test_fixed_seed_reproduces(rng):
    logits = rng.standard_normal(300).astype(np.float32)
    a = Sampler(temperature=0.9, top_k=40, top_p=0.95, seed=123)
    b = Sampler(temperature=0.9, top_k=40, top_p=0.95, seed=123)
    c = Sampler(temperature=0.9, top_k=40, top_p=0.95, seed=124)
    sa = [a(logits) for _ in range(50)]
    assert sa == [b(logits) for _ in range(50)]
    assert sa != [c(logits) for _ in range(50)]


@given(st.lists(st.floats(-30, 30, width=32), min_size=1, max_size=60), st.integers(0, 2**64 - 1))
def test_top_k_1_is_greedy(values, seed):
    logits = np.array(values, np.float32)
    greedy = Sampler(temperature=0)(logits)
    assert Sampler(temperature=1.5, top_k=1, seed=seed)(logits) == greedy
    assert greedy == int(np.argmax(logits))


def test_greedy_picks_lowest_id_among_ties():
    assert Sampler(temperature=0)(np.array([1.0, 3.0, 3.0, 2.0])) == 1


def frequencies(sampler, logits, n=4000):
    counts = np.bincount([sampler(logits) for _ in range(n)], minlength=len(logits))
    return counts / n


@pytest.mark.slow  # frequencies of many draws in Python: the same logic on every machine
def test_temperature_one_matches_softmax():
    p = np.array([0.5, 0.25, 0.15, 0.1])
    f = frequencies(Sampler(temperature=1.0, seed=1), np.log(p))
    np.testing.assert_allclose(f, p, atol=0.03)


@pytest.mark.slow  # frequencies of many draws in Python: the same logic on every machine
def test_temperature_sharpens_and_flattens():
    logits = np.log(np.array([0.6, 0.3, 0.1]))
    cold = frequencies(Sampler(temperature=0.25, seed=2), logits)
    hot = frequencies(Sampler(temperature=10.0, seed=3), logits)
    expected_cold = np.array([0.6, 0.3, 0.1]) ** 4
    np.testing.assert_allclose(cold, expected_cold / expected_cold.sum(), atol=0.03)
    assert np.all(np.abs(hot - 1 / 3) < 0.05)


@pytest.mark.slow  # frequencies of many draws in Python: the same logic on every machine
def test_top_p_keeps_the_smallest_nucleus():
    p = np.array([0.05, 0.5, 0.3, 0.15])  # sorted: 1 (0.5), 2 (0.8), 3 (0.95), 0
    f = frequencies(Sampler(temperature=1.0, top_p=0.79, seed=4), np.log(p))
    assert f[0] == 0 and f[3] == 0
    np.testing.assert_allclose(f[1:3], [0.5 / 0.8, 0.3 / 0.8], atol=0.03)
    # just above 0.8 the third token joins
    f = frequencies(Sampler(temperature=1.0, top_p=0.81, seed=4), np.log(p))
    assert f[3] > 0 and f[0] == 0


def test_top_p_tiny_is_greedy():
    logits = np.array([0.1, 2.0, 1.9, -1.0])
    assert set(frequencies(Sampler(temperature=2.0, top_p=1e-6, seed=5), logits, 300)) <= {0.0, 1.0}
    assert frequencies(Sampler(temperature=2.0, top_p=1e-6, seed=5), logits, 300)[1] == 1.0


def test_top_k_limits_support():
    logits = np.array([3.0, 0.0, 2.0, 1.0, 2.5])
    f = frequencies(Sampler(temperature=5.0, top_k=2, seed=6), logits, 2000)
    assert set(np.nonzero(f)[0]) == {0, 4}


def test_repetition_penalty():
    logits = np.array([2.0, -1.0, 1.0, 0.5])
    out = penalize(logits.copy(), [0, 1, 1], 2.0)
    np.testing.assert_array_equal(out, [1.0, -2.0, 1.0, 0.5])
    # only the recent window counts
    old = [3] + [0] * REPETITION_WINDOW
    assert penalize(logits.copy(), old, 2.0)[3] == 0.5
    # greedy flips to the next best token once the best is penalized
    s = Sampler(temperature=0, repetition_penalty=3.0)
    assert s(logits, history=[0]) == 2


@pytest.mark.parametrize("kwargs, message", [
    (dict(temperature=-0.1), "temperature"),
    (dict(temperature=1e9), "temperature"),
    (dict(temperature=1e-310), "temperature"),  # 1 / t overflows
    (dict(temperature=1e-7), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_k=-1), "top_k"),
    (dict(top_k=2.5), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(repetition_penalty=0.5), "repetition_penalty"),
    (dict(repetition_penalty=float("inf")), "repetition_penalty"),
])
def test_bad_values_are_refused(kwargs, message):
    with pytest.raises(TinylmError, match=message):
        check_sampling(**kwargs)
    with pytest.raises(TinylmError, match=message):
        Sampler(**kwargs)


@pytest.mark.parametrize("seed", ["x", True, -1, 2**64, 1.0])
def test_bad_seed(seed):
    # -1 and 2**64 used to wrap to 2**64 - 1 and 0: another seed's numbers
    with pytest.raises(TinylmError, match=r"seed must be an integer in \[0, 2\*\*64\)"):
        Rng(seed)
    with pytest.raises(TinylmError, match="seed"):
        Sampler(seed=seed)


def test_largest_seed_is_taken():
    from tinylm.sampling import seed_state
    assert Rng(2**64 - 1).state == seed_state(2**64 - 1)


def test_weight_exp_is_accurate():
    """The sampler's own e^x (rule 3) against math.exp, over its whole range."""
    from tinylm.sampling import weight_exp
    xs = np.concatenate([-np.random.default_rng(3).uniform(0, 40, 20000),
                         [0.0, -1e-300, -0.5 * np.log(2), -np.log(2), -39.999, -40.0]])
    want = np.array([math.exp(x) for x in xs])
    np.testing.assert_allclose(weight_exp(xs), want, rtol=1e-12, atol=0)
    assert (weight_exp(np.array([-40.001, -1e300, -np.inf])) == 0).all()  # weight 0 anyway
