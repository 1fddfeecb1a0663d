"""Attention: the native kernels (every instruction-set path this CPU runs) against the
numpy reference, the numpy reference against torch, and bad input."""

import types

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinylm import _C
from tinylm import attention as attn
from tinylm import kvcache
from kernel_paths import isa, threads

try:
    import torch
except ImportError:  # optional: the torch comparisons skip without it
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")
FAST = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def random_qkv(seed, B, H, Hkv, T, D, magnitude=1.0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, H, T, D)) * magnitude
    k = rng.standard_normal((B, Hkv, T, D)) * magnitude
    v = rng.standard_normal((B, Hkv, T, D))
    dout = rng.standard_normal((B, H, T, D))
    return [x.astype(dtype) for x in (q, k, v, dout)]


def f64(*xs):
    return [x.astype(np.float64) for x in xs]


def assert_close(actual, expected, tol, what):
    """Error within tol of the expected values' scale (float32 vs a float64 reference)."""
    scale = 1.0 + np.abs(expected).max()
    err = np.abs(actual.astype(np.float64) - expected).max()
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol:.1g} * {scale:.3g}"


# Shapes that hit every case: T and D of 1, odd sizes, sizes off every SIMD width (4, 8,
# 16) and across tile boundaries (32, 64), and GQA groups of 1-3.
shapes = st.tuples(
    st.integers(1, 2),                                      # batch
    st.integers(1, 2),                                      # kv heads
    st.integers(1, 3),                                      # query heads per kv head
    st.one_of(st.integers(1, 40), st.integers(60, 140)),    # T
    st.one_of(st.integers(1, 20), st.sampled_from([32, 48, 64, 100, 128])),  # D
)


@FAST
@given(shape=shapes, magnitude=st.sampled_from([0.1, 1.0, 4.0]), seed=st.integers(0, 2**32 - 1))
def test_native_matches_reference_on_every_isa(shape, magnitude, seed):
    B, Hkv, group, T, D = shape
    q, k, v, dout = random_qkv(seed, B, Hkv * group, Hkv, T, D, magnitude)
    out_ref, lse_ref = attn.attention_forward(*f64(q, k, v))
    grads_ref = attn.attention_backward(*f64(q, k, v), out_ref, lse_ref, dout.astype(np.float64))
    for name in _C.available_isas():
        with isa(name):
            out, lse = attn.forward(q, k, v)
            assert out.dtype == np.float32 and out.shape == q.shape and lse.shape == q.shape[:3]
            assert_close(out, out_ref, 2e-5, f"{name} out")
            assert_close(lse, lse_ref, 2e-5, f"{name} lse")
            grads = attn.backward(q, k, v, out, lse, dout)
            for g, g_ref, label in zip(grads, grads_ref, ("dq", "dk", "dv")):
                assert g.shape == g_ref.shape
                assert_close(g, g_ref, 5e-5, f"{name} {label}")


@pytest.mark.parametrize("D", [32, 48, 64, 128, 256])
def test_fast_head_dims_with_long_sequence(D):
    # Several 64-wide tiles plus a ragged last one, at the head sizes with fast paths.
    q, k, v, dout = random_qkv(D, 1, 2, 1, 200, D)
    out_ref, lse_ref = attn.attention_forward(*f64(q, k, v))
    grads_ref = attn.attention_backward(*f64(q, k, v), out_ref, lse_ref, dout.astype(np.float64))
    for name in _C.available_isas()[1:]:  # the SIMD paths (scalar is covered above)
        with isa(name):
            out, lse = attn.forward(q, k, v)
            assert_close(out, out_ref, 2e-5, f"{name} out")
            for g, g_ref in zip(attn.backward(q, k, v, out, lse, dout), grads_ref):
                assert_close(g, g_ref, 5e-5, f"{name} grads")


def test_numpy_impl_float32_matches_float64():
    q, k, v, dout = random_qkv(1, 2, 4, 2, 33, 16)
    out64, lse64 = attn.forward(*f64(q, k, v), impl="numpy")
    out32, lse32 = attn.forward(q, k, v, impl="numpy")
    assert out64.dtype == np.float64 and out32.dtype == np.float32
    assert_close(out32, out64, 1e-5, "out")
    g64 = attn.backward(*f64(q, k, v), out64, lse64, dout.astype(np.float64), impl="numpy")
    g32 = attn.backward(q, k, v, out32, lse32, dout, impl="numpy")
    for a, b in zip(g32, g64):
        assert_close(a, b, 1e-5, "grads")


def test_results_do_not_depend_on_thread_count():
    q, k, v, dout = random_qkv(2, 1, 4, 1, 300, 48)  # one kv head: backward splits keys
    results = []
    for n in (1, 2, 3):
        with threads(n):
            out, lse = attn.forward(q, k, v)
            results.append((out, lse, *attn.backward(q, k, v, out, lse, dout)))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def test_recycled_output_buffers_never_alias_live_arrays():
    # Outputs of 64 KB and more come from a cache of freed buffers (see bindings.cpp).
    q, k, v, dout = random_qkv(4, 2, 4, 2, 130, 64)
    out, lse = attn.forward(q, k, v)
    grads = attn.backward(q, k, v, out, lse, dout)
    expected = [x.copy() for x in (out, lse, *grads)]
    view = grads[0][1]  # a view keeps its buffer alive after the array is gone
    del grads
    q2, k2, v2, dout2 = random_qkv(5, 2, 4, 2, 130, 64)
    for _ in range(3):  # recycles the freed dk and dv buffers
        out2, lse2 = attn.forward(q2, k2, v2)
        grads2 = attn.backward(q2, k2, v2, out2, lse2, dout2)
        for a in (out2, lse2, *grads2):
            assert not any(np.shares_memory(a, b) for b in (out, lse, view))
    np.testing.assert_array_equal(view, expected[2][1])
    np.testing.assert_array_equal(out, expected[0])
    # a recycled buffer holds the new result in full
    ref_out, ref_lse = attn.attention_forward(*f64(q2, k2, v2))
    assert_close(out2, ref_out, 2e-5, "out")
    ref_grads = attn.attention_backward(*f64(q2, k2, v2), ref_out, ref_lse, dout2.astype(np.float64))
    for g, g_ref in zip(grads2, ref_grads):
        assert_close(g, g_ref, 5e-5, "grads")
    assert out2.flags.c_contiguous and out2.flags.writeable and out2.dtype == np.float32


def test_transposed_views_are_accepted_by_the_wrapper():
    # The model hands in [B, T, H, D] activations transposed to [B, H, T, D].
    q, k, v, dout = random_qkv(3, 2, 2, 2, 17, 8)
    qt, kt, vt = (np.ascontiguousarray(x.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3) for x in (q, k, v))
    assert not qt.flags.c_contiguous
    out, lse = attn.forward(qt, kt, vt)
    np.testing.assert_array_equal(out, attn.forward(q, k, v)[0])


# ----------------------------------------------------------------------------- decode


def random_cache(seed, H, Hkv, capacity, D):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((H, D)).astype(np.float32)
    k = rng.standard_normal((Hkv, capacity, D)).astype(np.float32)
    v = rng.standard_normal((Hkv, capacity, D)).astype(np.float32)
    return q, k, v


# Decode shapes: kv heads, query heads a kv head, cache capacity (one 512-position part
# or more), head_dim (odd ones, and whole vectors)
DECODE_SHAPES = dict(
    Hkv=st.integers(1, 3),
    group=st.integers(1, 3),
    capacity=st.one_of(st.integers(1, 80), st.integers(500, 1100)),
    D=st.one_of(st.integers(1, 20), st.sampled_from([32, 48, 64, 128])),
)


@FAST
@given(**DECODE_SHAPES, half=st.booleans(), data=st.data())
def test_decode_matches_reference_on_every_isa(Hkv, group, capacity, D, half, data):
    """Caches of float32, or of float16: the expected output is computed from the same
    halves, widened by numpy."""
    length = data.draw(st.integers(1, capacity), label="length")
    q, k, v = random_cache(capacity * D + length, Hkv * group, Hkv, capacity, D)
    if half:
        k, v = k.astype(np.float16), v.astype(np.float16)
    expected = attn.attention_decode(*f64(q, k, v), length)
    for name in _C.available_isas():
        with isa(name):
            out = attn.decode(q, k, v, length)
            assert out.shape == (Hkv * group, D) and out.dtype == np.float32
            assert_close(out, expected, 2e-5, f"{name} decode")


def int8_keys(k):
    """k [Hkv, capacity, D] stored as an int8 model's keys: (codes, scales) of one layer."""
    Hkv, capacity, D = k.shape
    cfg = types.SimpleNamespace(n_layer=1, n_kv_head=Hkv, context=capacity, head_dim=D)
    keys = kvcache.Int8Keys(cfg)
    keys.store(0, 0, k)
    return keys.codes[0], keys.scales[0]


@FAST
@given(**DECODE_SHAPES, data=st.data())
def test_decode_over_int8_keys_matches_reference_on_every_isa(Hkv, group, capacity, D, data):
    """The int8 models' cache: keys in int8, values float16; the expected output is
    numpy's over the keys as stored (code * scale) and q rounded as they are."""
    length = data.draw(st.integers(1, capacity), label="length")
    q, k, v = random_cache(capacity * D + length + 7, Hkv * group, Hkv, capacity, D)
    keys, v = int8_keys(k), v.astype(np.float16)
    expected = attn.decode(*f64(q), keys, v, length, impl="numpy")
    for name in _C.available_isas():
        with isa(name):
            out = attn.decode(q, keys, v, length)
            assert out.shape == (Hkv * group, D) and out.dtype == np.float32
            assert_close(out, expected, 2e-5, f"{name} decode over int8 keys")


def test_decode_equals_the_forward_row_of_the_same_position():
    B, H, Hkv, T, D = 1, 4, 2, 70, 32
    q, k, v, _ = random_qkv(5, B, H, Hkv, T, D)
    out, _ = attn.forward(q, k, v)
    for t in (0, 1, 31, 69):
        step = attn.decode(q[0, :, t], k[0], v[0], t + 1)
        assert_close(step, out[0, :, t].astype(np.float64), 2e-6, f"position {t}")


# ----------------------------------------------------------------------------- torch


def torch_attention(q, k, v, dout):
    """Output and (dq, dk, dv) from torch's SDPA and autograd."""
    group = q.shape[1] // k.shape[1]
    tq, tk, tv = (torch.from_numpy(x).requires_grad_() for x in (q, k, v))
    expand = lambda x: x.repeat_interleave(group, dim=1)  # noqa: E731
    out = torch.nn.functional.scaled_dot_product_attention(tq, expand(tk), expand(tv), is_causal=True)
    out.backward(torch.from_numpy(dout))
    return out.detach().numpy(), [t.grad.numpy() for t in (tq, tk, tv)]


@needs_torch
@pytest.mark.parametrize("shape", [(1, 2, 1, 1, 1), (2, 4, 2, 37, 24), (1, 6, 3, 130, 64)])
def test_against_torch_sdpa_and_autograd(shape):
    B, H, Hkv, T, D = shape
    q, k, v, dout = random_qkv(7, B, H, Hkv, T, D, dtype=np.float64)
    out_t, grads_t = torch_attention(q, k, v, dout)
    # the numpy reference in float64: agrees to rounding
    out, lse = attn.forward(q, k, v, impl="numpy")
    np.testing.assert_allclose(out, out_t, rtol=1e-10, atol=1e-12)
    for g, g_t in zip(attn.backward(q, k, v, out, lse, dout, impl="numpy"), grads_t):
        np.testing.assert_allclose(g, g_t, rtol=1e-9, atol=1e-11)
    # the native kernels in float32
    q32, k32, v32, d32 = (x.astype(np.float32) for x in (q, k, v, dout))
    out32, lse32 = attn.forward(q32, k32, v32)
    assert_close(out32, out_t, 2e-5, "native out")
    for g, g_t in zip(attn.backward(q32, k32, v32, out32, lse32, d32), grads_t):
        assert_close(g, g_t, 5e-5, "native grads")


# ----------------------------------------------------------------------------- bad input


def test_impl_selection():
    assert attn.IMPLS == ("native", "numpy")
    assert attn.default_impl() == "native"
    try:
        attn.set_default_impl("numpy")
        assert attn.default_impl() == "numpy"
        q, k, v, _ = random_qkv(0, 1, 1, 1, 4, 4, dtype=np.float64)
        attn.forward(q, k, v)  # float64 is fine for the numpy default
    finally:
        attn.set_default_impl("native")
    with pytest.raises(ValueError, match="unknown attention impl"):
        attn.set_default_impl("cuda")
    with pytest.raises(ValueError, match="unknown attention impl"):
        attn.forward(*random_qkv(0, 1, 1, 1, 4, 4)[:3], impl="torch")


def test_native_refuses_float64_with_a_clear_message():
    q, k, v, dout = random_qkv(0, 1, 2, 1, 8, 4, dtype=np.float64)
    with pytest.raises(ValueError, match="argument 'q'.*float32.*impl='numpy'"):
        attn.forward(q, k, v, impl="native")
    out, lse = attn.forward(q, k, v, impl="numpy")
    with pytest.raises(ValueError, match="float32"):
        attn.backward(q, k, v, out, lse, dout, impl="native")
    with pytest.raises(ValueError, match="float32"):
        attn.decode(q[0, :, 0], k[0], v[0], 3, impl="native")


def good_args():
    q, k, v, dout = random_qkv(0, 2, 4, 2, 8, 4)
    out, lse = _C.attention_forward(q, k, v)
    return dict(q=q, k=k, v=v, out=out, lse=lse, dout=dout)


def call_forward(a):
    return _C.attention_forward(a["q"], a["k"], a["v"])


def call_backward(a):
    return _C.attention_backward(a["q"], a["k"], a["v"], a["out"], a["lse"], a["dout"])


def misaligned(x):
    raw = np.zeros(x.nbytes + 1, dtype=np.uint8)[1:]
    y = raw.view(np.float32).reshape(x.shape)
    y[...] = x
    return y


def replace(**changes):
    """A corruption: new values for some arguments, each computed from the good ones."""
    return lambda a: a.update({name: fn(a) for name, fn in changes.items()})


BAD = [
    (replace(q=lambda a: a["q"][:, :, ::2]), "'q'.*not C-contiguous"),
    (replace(k=lambda a: np.asfortranarray(a["k"])), "'k'.*not C-contiguous"),
    (replace(v=lambda a: a["v"].astype(np.float64)), "'v'.*dtype"),
    (replace(q=lambda a: a["q"].astype(np.int32)), "'q'.*dtype"),
    (replace(q=lambda a: a["q"].tolist()), "'q'.*numpy array"),
    (replace(q=lambda a: a["q"][0]), "'q'.*dimensions"),
    (replace(q=lambda a: a["q"][:, :, :0]), "'q'.*empty"),
    (replace(k=lambda a: a["k"][:, :, :5].copy()), "'k'.*sequence length"),
    (replace(k=lambda a: a["k"][:, :, :, :3].copy()), "'k'.*head_dim"),
    (replace(k=lambda a: a["k"][:1].copy()), "'k'.*batch"),
    (replace(v=lambda a: a["v"][:, :1].copy()), "'v'.*shape of 'k'"),
    (replace(k=lambda a: np.zeros((2, 3, 8, 4), np.float32), v=lambda a: np.zeros((2, 3, 8, 4), np.float32)),
     "'k'.*divide"),
    (replace(q=lambda a: misaligned(a["q"])), "'q'.*aligned"),
    (replace(**{n: (lambda a: np.zeros((1, 1, 2, 300), np.float32)) for n in "qkv"}), "head_dim"),
]


@pytest.mark.parametrize("corrupt,message", BAD)
def test_bad_arguments_raise_value_error(corrupt, message):
    for call in (call_forward, call_backward):
        a = good_args()
        corrupt(a)
        with pytest.raises(ValueError, match=message):
            call(a)


@pytest.mark.parametrize(
    "corrupt,message",
    [
        (replace(out=lambda a: a["out"][:, :2].copy()), "'out'.*shape of 'q'"),
        (replace(dout=lambda a: a["dout"].astype(np.float16)), "'dout'.*dtype"),
        (replace(lse=lambda a: a["lse"][:, :, :3].copy()), "'lse'"),
        (replace(lse=lambda a: a["out"]), "'lse'.*dimensions"),
    ],
)
def test_bad_backward_arguments_raise_value_error(corrupt, message):
    a = good_args()
    corrupt(a)
    with pytest.raises(ValueError, match=message):
        call_backward(a)


def test_read_only_inputs_are_fine():
    a = good_args()
    for x in a.values():
        x.setflags(write=False)
    call_forward(a)
    call_backward(a)


def test_bad_decode_arguments_raise_value_error():
    q, k, v = random_cache(0, 4, 2, 16, 8)
    for length in (0, -1, 17):
        with pytest.raises(ValueError, match="length"):
            _C.attention_decode(q, k, v, length)
        with pytest.raises(ValueError, match="length"):
            attn.decode(q, k, v, length, impl="numpy")
    with pytest.raises(ValueError, match="k_cache.*divide"):
        _C.attention_decode(q, k[:1].repeat(3, axis=0), v[:1].repeat(3, axis=0), 4)
    with pytest.raises(ValueError, match="k_cache.*head_dim"):
        _C.attention_decode(q, k[:, :, :4].copy(), v[:, :, :4].copy(), 4)
    with pytest.raises(ValueError, match="v_cache"):
        _C.attention_decode(q, k, v[:, :8].copy(), 4)
    with pytest.raises(ValueError, match="not C-contiguous"):
        _C.attention_decode(q, k[:, ::2], v[:, ::2], 4)
    with pytest.raises(ValueError, match="empty"):
        _C.attention_decode(q, k[:, :0], v[:, :0], 1)
    # float16 caches: both or neither, in this machine's byte order, aligned
    k16, v16 = k.astype(np.float16), v.astype(np.float16)
    with pytest.raises(ValueError, match="v_cache.*dtype"):
        _C.attention_decode(q, k16, v, 4)
    swapped = np.dtype(np.float16).newbyteorder("S")
    with pytest.raises(ValueError, match="byte order"):
        _C.attention_decode(q, k16.astype(swapped), v16.astype(swapped), 4)
    shifted = np.frombuffer(bytes(k16.nbytes + 1), np.uint8)[1:].view(np.float16).reshape(k16.shape)
    with pytest.raises(ValueError, match="not aligned"):
        _C.attention_decode(q, shifted, v16, 4)
    with pytest.raises(ValueError, match="q"):
        _C.attention_decode(q[None], k, v, 4)
    # int8 keys: a pair in the layout of the values' capacity and head_dim, float16 values
    codes, scales = int8_keys(k)
    for keys, values, match in [((codes, scales), v, "v_cache.*float16"),
                                ((codes, scales), np.zeros((2, 40, 8), np.float16), "codes.*dimension 1 must be 3"),
                                ((codes[:, :, :1].copy(), scales), v16, "codes.*dimension 2 must be 2"),
                                ((codes, scales[:1].copy()), v16, "scales.*dimension 0 must be 2"),
                                ((codes,), v16, "pair")]:
        with pytest.raises(ValueError, match=match):
            _C.attention_decode(q, keys, values, 4)
    with pytest.raises(ValueError, match="length"):
        _C.attention_decode(q, (codes, scales), v16, 17)
