"""The int8 key cache's layout and rounding (tinylm/kvcache.py), against its definition in
csrc/attention/attention.h, and the native engine's writes against the numpy engine's."""
import numpy as np
import pytest

from tinylm import kvcache
from tinylm.config import ModelConfig
from tinylm.engine import NativeEngine, ReferenceEngine
from tinylm.model import init_params
from tinylm.quant import quantize_params, quantize_rows


@pytest.mark.parametrize("head_dim, context", [(12, 24), (32, 64), (10, 17), (2, 1)])
def test_int8_keys_lay_out_codes_as_the_kernels_read_them(head_dim, context):
    cfg = ModelConfig(vocab_size=257, d_model=2 * head_dim, n_layer=2, n_head=2, n_kv_head=2,
                      d_ff=8, context=context)
    keys = kvcache.Int8Keys(cfg)
    k = np.random.default_rng(head_dim).standard_normal((2, context, head_dim)).astype(np.float32)
    split = context // 2
    keys.store(1, 0, k[:, :split])  # in two calls, as a prompt and a continuation
    keys.store(1, split, k[:, split:])
    flat = keys.codes[1].reshape(2, -1)
    Dq = (head_dim + 3) // 4
    for h in range(2):
        codes, scales = quantize_rows(k[h])
        np.testing.assert_array_equal(keys.scales[1, h, :context], scales)
        for p in range(context):
            for d in range(Dq * 4):  # attention.h's byte of dimension d of position p
                byte = flat[h, ((p // 16 * Dq + d // 4) * 16 + p % 16) * 4 + d % 4]
                assert byte == (int(codes[p, d]) + 128 if d < head_dim else 128)
    assert not keys.codes[0].any() and not keys.scales[0].any()  # the other layer untouched
    loaded = keys.load(1, context)
    assert np.abs(loaded - k).max() <= 0.5001 * keys.scales[1].max()
    np.testing.assert_array_equal(keys.load(1, split), loaded[:, :split])


def test_queries_round_as_keys_do():
    q = np.random.default_rng(1).standard_normal((3, 5, 48)).astype(np.float32)
    rounded = kvcache.round_queries(q)
    codes, scales = quantize_rows(q.reshape(-1, 48))
    np.testing.assert_array_equal(rounded.reshape(-1, 48), codes * scales[:, None])
    assert 0 < np.abs(rounded - q).max() <= 0.5001 * scales.max()


def test_cache_size_counts_codes_scales_and_halves():
    cfg = ModelConfig(vocab_size=257, d_model=72, n_layer=2, n_head=6, n_kv_head=2, d_ff=8,
                      context=24)
    # keys: 2 layers x 2 heads x 32 positions x (12 bytes + a 4-byte scale); values halves
    assert kvcache.nbytes(cfg, int8=True) == 2 * 2 * 32 * 16 + 2 * 2 * 24 * 12 * 2
    assert kvcache.nbytes(cfg, int8=False) == 2 * 2 * 2 * 24 * 12 * 4
    engine = NativeEngine(cfg, quantize_params(init_params(cfg, seed=0)))
    assert kvcache.nbytes(cfg, True) == (engine.keys.codes.nbytes + engine.keys.scales.nbytes
                                         + engine.v_cache.nbytes)


def test_native_decode_writes_the_keys_the_reference_writes():
    """Decode steps in C++ quantize and place each key as the numpy engine does."""
    cfg = ModelConfig(vocab_size=257, d_model=64, n_layer=2, n_head=2, n_kv_head=1, d_ff=96,
                      context=40)
    q = quantize_params(init_params(cfg, seed=3))
    nat, ref = NativeEngine(cfg, q), ReferenceEngine(cfg, q, int8_impl="numpy")
    for engine in (nat, ref):
        engine.prefill([256])
        for t in range(1, 37):
            engine.step(t * 7 % 256)
    for layer in range(cfg.n_layer):
        np.testing.assert_allclose(nat.keys.scales[layer], ref.keys.scales[layer], rtol=1e-5)
        differ = nat.keys.rows(layer) != ref.keys.rows(layer)
        assert differ.mean() < 0.01  # a rounding may tip a code by one
        assert np.abs(nat.keys.rows(layer).astype(int) - ref.keys.rows(layer)).max() <= 1
        assert not nat.keys.rows(layer)[:, 37:].any()
