"""Every layer's backward against finite differences (float64), and the whole model's."""
import numpy as np
import pytest

from tinylm import model
from tinylm.config import PRESETS, ConfigError, ModelConfig

EPS = 1e-6


def check_grad(f, x, analytic, rng, n=12, rtol=1e-5, atol=1e-8):
    """Compares analytic dL/dx with central differences of the scalar f() at n entries."""
    flat = x.reshape(-1)
    for i in rng.choice(flat.size, size=min(n, flat.size), replace=False):
        old = flat[i]
        flat[i] = old + EPS
        up = f()
        flat[i] = old - EPS
        down = f()
        flat[i] = old
        numeric = (up - down) / (2 * EPS)
        assert abs(numeric - analytic.reshape(-1)[i]) <= atol + rtol * abs(numeric), (i, numeric)


def test_rmsnorm_backward(rng):
    x, w = rng.standard_normal((3, 5, 8)), rng.standard_normal(8)
    dy = rng.standard_normal(x.shape)
    loss = lambda: (model.rmsnorm_forward(x, w, 1e-5)[0] * dy).sum()  # noqa: E731
    _, cache = model.rmsnorm_forward(x, w, 1e-5)
    dw = np.zeros_like(w)
    dx = model.rmsnorm_backward(dy, w, cache, dw)
    check_grad(loss, x, dx, rng)
    check_grad(loss, w, dw, rng)


def test_linear_backward(rng):
    x, W = rng.standard_normal((6, 6)), rng.standard_normal((4, 6))
    dy = rng.standard_normal((6, 4))
    loss = lambda: (model.linear_forward(x, W) * dy).sum()  # noqa: E731
    dW = np.zeros_like(W)
    dx = model.linear_backward(dy, x, W, dW)
    check_grad(loss, x, dx, rng)
    check_grad(loss, W, dW, rng)


def test_rope_backward_and_norm_preservation(rng):
    x = rng.standard_normal((2, 3, 7, 8))
    cos, sin = model.rope_tables(7, 8, 10000.0, np.float64)
    y = model.rope_forward(x, cos, sin)
    # a rotation keeps each (i, i + D/2) pair's length, so each vector's norm
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1))
    np.testing.assert_allclose(y[..., 0, :], x[..., 0, :])  # position 0 is not rotated
    dy = rng.standard_normal(x.shape)
    dx = model.rope_backward(dy, cos, sin)
    check_grad(lambda: (model.rope_forward(x, cos, sin) * dy).sum(), x, dx, rng)


def test_rope_relative_position(rng):
    """q·k after RoPE depends only on the distance between the positions."""
    q, k = rng.standard_normal(8), rng.standard_normal(8)
    cos, sin = model.rope_tables(20, 8, 10000.0, np.float64)
    rot = lambda v, t: model.rope_forward(v, cos[t], sin[t])  # noqa: E731
    assert np.isclose(rot(q, 5) @ rot(k, 2), rot(q, 15) @ rot(k, 12))


def test_swiglu_backward(rng):
    x = rng.standard_normal((6, 6))
    w1, w3, w2 = rng.standard_normal((5, 6)), rng.standard_normal((5, 6)), rng.standard_normal((6, 5))
    dy = rng.standard_normal((6, 6))
    loss = lambda: (model.swiglu_forward(x, w1, w3, w2)[0] * dy).sum()  # noqa: E731
    grads = [np.zeros_like(w) for w in (w1, w3, w2)]
    dx = model.swiglu_backward(dy, w1, w3, w2, model.swiglu_forward(x, w1, w3, w2)[1], *grads)
    for value, grad in [(x, dx), (w1, grads[0]), (w3, grads[1]), (w2, grads[2])]:
        check_grad(loss, value, grad, rng)


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
def test_attention_block_backward(rng, n_kv_head):
    cfg = ModelConfig(d_model=16, n_head=4, n_kv_head=n_kv_head, n_layer=1, d_ff=8, context=8)
    x = rng.standard_normal((2 * 5, 16))  # B=2 sequences of T=5 positions
    kv = n_kv_head * cfg.head_dim
    ws = [rng.standard_normal(s) * 0.3 for s in [(16, 16), (kv, 16), (kv, 16), (16, 16)]]
    cos, sin = model.rope_tables(5, cfg.head_dim, cfg.rope_theta, np.float64)
    dy = rng.standard_normal(x.shape)
    fwd = lambda: model.attention_block_forward(x, *ws, cfg, cos, sin, "numpy")  # noqa: E731
    grads = [np.zeros_like(w) for w in ws]
    dx = model.attention_block_backward(dy, *ws, cfg, cos, sin, fwd()[1], grads, "numpy")
    loss = lambda: (fwd()[0] * dy).sum()  # noqa: E731
    check_grad(loss, x, dx, rng)
    for w, g in zip(ws, grads):
        check_grad(loss, w, g, rng)


def test_cross_entropy_backward(rng):
    logits, targets = rng.standard_normal((6, 11)), rng.integers(0, 11, 6)
    loss, logp = model.cross_entropy_forward(logits, targets)
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    assert np.isclose(loss, -np.log(p[np.arange(6), targets]).mean())
    check_grad(lambda: model.cross_entropy_forward(logits, targets)[0], logits,
               model.cross_entropy_backward(logp, targets), rng)


def test_embedding_backward_accumulates_repeated_ids(rng):
    E = rng.standard_normal((5, 3))
    ids = np.array([[1, 1, 4]])
    dx = rng.standard_normal((1, 3, 3))
    dE = np.zeros_like(E)
    model.embedding_backward(dx, ids, dE)
    np.testing.assert_allclose(dE[1], dx[0, 0] + dx[0, 1])
    np.testing.assert_allclose(dE[4], dx[0, 2])
    assert not dE[[0, 2, 3]].any()


@pytest.mark.parametrize("n_kv_head", [4, 2])
def test_full_model_gradients(rng, n_kv_head):
    cfg = ModelConfig(vocab_size=19, d_model=16, n_layer=2, n_head=4, n_kv_head=n_kv_head,
                      d_ff=12, context=8)
    params = model.init_params(cfg, seed=3, dtype=np.float64)
    for name in params:  # move norms off 1 so their gradients are exercised generally
        params[name] += rng.standard_normal(params[name].shape) * 0.1
    ids, targets = rng.integers(0, 19, (2, 7)), rng.integers(0, 19, (2, 7))
    _, grads = model.loss_and_grads(params, cfg, ids, targets, impl="numpy")
    loss = lambda: model.forward(params, cfg, ids, targets, impl="numpy")[0]  # noqa: E731
    for name, w in params.items():
        check_grad(loss, w, grads[name], rng, n=4)


def test_initial_loss_is_near_uniform():
    cfg = PRESETS["tiny"]
    params = model.init_params(cfg, seed=0)
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (4, cfg.context))
    loss, _ = model.forward(params, cfg, ids, np.roll(ids, -1, axis=1))
    assert abs(loss - np.log(cfg.vocab_size)) < 0.1


def test_forward_refuses_sequence_longer_than_context():
    cfg = PRESETS["tiny"]
    params = model.init_params(cfg)
    with pytest.raises(ValueError, match="exceeds the model's context"):
        model.forward(params, cfg, np.zeros((1, cfg.context + 1), dtype=np.intp))


def test_presets_match_the_documented_shapes():
    assert PRESETS["tiny"].num_params() < 150_000
    b, s, m = PRESETS["baby"], PRESETS["small"], PRESETS["medium"]
    assert (b.n_layer, b.n_head, b.d_model, b.context) == (4, 4, 128, 64)
    assert (s.n_layer, s.n_head, s.d_model, s.d_ff, s.context) == (6, 6, 288, 768, 256)
    assert (m.n_layer, m.n_head, m.d_model, m.d_ff, m.context) == (8, 8, 512, 1376, 1024)
    for cfg in PRESETS.values():
        shapes = model.param_shapes(cfg)
        assert sum(int(np.prod(s)) for s in shapes.values()) == cfg.num_params()


@pytest.mark.parametrize("kwargs, message", [
    (dict(d_model=100, n_head=3), "divisible by n_head"),
    (dict(n_head=4, n_kv_head=3), "divisible by n_kv_head"),
    (dict(d_model=12, n_head=4, n_kv_head=4), "must be even"),
    (dict(n_layer=0), "n_layer must be positive"),
    (dict(context=2.5), "context must be an integer"),
    # a NaN rope_theta made NaN logits, reported as NaN weights
    (dict(rope_theta=float("nan")), "rope_theta must be a finite number, got nan"),
    (dict(norm_eps=float("inf")), "norm_eps must be a finite number, got inf"),
    (dict(rope_theta=True), "rope_theta must be a finite number, got True"),
    (dict(rope_theta=10**400), r"rope_theta must be a finite number, got 1000\d+\.\.\."),
])
def test_invalid_configs_are_refused_with_a_clear_message(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig(**kwargs)


def test_a_config_that_is_not_an_object_is_refused():
    with pytest.raises(ConfigError, match="must be a JSON object of fields, got list"):
        ModelConfig.from_dict([1, 2])


def test_float_fields_take_any_finite_real():
    """An integer rope_theta (JSON's 10000) and numpy's scalars are numbers too."""
    assert ModelConfig(rope_theta=10000).rope_theta == 10000
    assert ModelConfig(rope_theta=np.float32(1e4), norm_eps=np.float64(1e-6)).norm_eps == 1e-6


@pytest.mark.parametrize("n_kv_head", [4, 2])
def test_float32_model_with_native_attention_matches_float64_reference(rng, n_kv_head):
    """The training configuration (float32, native attention kernel) against the float64
    numpy reference whose gradients the checks above verified."""
    cfg = ModelConfig(vocab_size=31, d_model=32, n_layer=2, n_head=4, n_kv_head=n_kv_head,
                      d_ff=40, context=24)
    params64 = model.init_params(cfg, seed=5, dtype=np.float64)
    params32 = {k: v.astype(np.float32) for k, v in params64.items()}
    ids, targets = rng.integers(0, 31, (3, 24)), rng.integers(0, 31, (3, 24))
    loss64, grads64 = model.loss_and_grads(params64, cfg, ids, targets, impl="numpy")
    loss32, grads32 = model.loss_and_grads(params32, cfg, ids, targets, impl="native")
    assert loss32 == pytest.approx(loss64, rel=1e-5)
    for name in params64:
        scale = np.abs(grads64[name]).max()
        np.testing.assert_allclose(grads32[name], grads64[name], atol=2e-4 * scale, err_msg=name)
