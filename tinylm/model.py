"""The transformer in plain numpy: parameters, forward pass, hand-written backward pass.

A Llama-style decoder, written the llm.c way: each layer has a `*_forward` that returns
its output and what its backward needs, and a `*_backward` that returns the gradient
with respect to its input and adds parameter gradients into a dict. Read top to bottom:

    x = E[ids]
    for each layer:  x += attention(rmsnorm(x));  x += swiglu(rmsnorm(x))
    logits = rmsnorm(x) @ E.T          (the output head is tied to the embedding)

Parameters are a dict of arrays named like Hugging Face's Llama, stored
[out_features, in_features], so an export to the wider ecosystem is a copy.
Every function works in whatever float dtype it is given: float32 for training, float64
for the gradient checks.
"""
import numpy as np

from . import attention
from .config import ModelConfig

# ---------------------------------------------------------------- parameters

EMBED = "model.embed_tokens.weight"
FINAL_NORM = "model.norm.weight"
LAYER_PARAMS = (  # (name, is_norm)
    ("input_layernorm.weight", True),
    ("self_attn.q_proj.weight", False),
    ("self_attn.k_proj.weight", False),
    ("self_attn.v_proj.weight", False),
    ("self_attn.o_proj.weight", False),
    ("post_attention_layernorm.weight", True),
    ("mlp.gate_proj.weight", False),  # w1: goes through silu
    ("mlp.up_proj.weight", False),  # w3: the linear branch
    ("mlp.down_proj.weight", False),  # w2: back to d_model
)


def layer_param(i: int, name: str) -> str:
    return f"model.layers.{i}.{name}"


def param_shapes(cfg: ModelConfig) -> dict:
    d, kv, ff = cfg.d_model, cfg.n_kv_head * cfg.head_dim, cfg.d_ff
    per_layer = {
        "input_layernorm.weight": (d,),
        "self_attn.q_proj.weight": (d, d),
        "self_attn.k_proj.weight": (kv, d),
        "self_attn.v_proj.weight": (kv, d),
        "self_attn.o_proj.weight": (d, d),
        "post_attention_layernorm.weight": (d,),
        "mlp.gate_proj.weight": (ff, d),
        "mlp.up_proj.weight": (ff, d),
        "mlp.down_proj.weight": (d, ff),
    }
    shapes = {EMBED: (cfg.vocab_size, d)}
    for i in range(cfg.n_layer):
        for name, _ in LAYER_PARAMS:
            shapes[layer_param(i, name)] = per_layer[name]
    shapes[FINAL_NORM] = (d,)
    return shapes


def is_norm(name: str) -> bool:
    return name.endswith("norm.weight")


def init_params(cfg: ModelConfig, seed: int = 0, dtype=np.float32) -> dict:
    """Normal(0, 0.02) weights, ones for norms; the projections that write into the
    residual stream (o_proj, down_proj) are scaled down by sqrt(2 * n_layer) so the
    stream's variance does not grow with depth (as in GPT-2)."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in param_shapes(cfg).items():
        if is_norm(name):
            params[name] = np.ones(shape, dtype=dtype)
            continue
        std = 0.02
        if name.endswith(("o_proj.weight", "down_proj.weight")):
            std /= np.sqrt(2 * cfg.n_layer)
        params[name] = (rng.standard_normal(shape) * std).astype(dtype)
    return params


def check_params(cfg: ModelConfig, params: dict):
    """Raises ValueError naming the first tensor that is missing or has the wrong shape."""
    for name, shape in param_shapes(cfg).items():
        if name not in params:
            raise ValueError(f"missing tensor '{name}'")
        if tuple(params[name].shape) != shape:
            raise ValueError(f"tensor '{name}' has shape {tuple(params[name].shape)}, "
                             f"expected {shape} for this config")


# ---------------------------------------------------------------- layers


def embedding_forward(E, ids):
    return E[ids]


def embedding_backward(dx, ids, dE):
    np.add.at(dE, ids.reshape(-1), dx.reshape(-1, dx.shape[-1]))


def rmsnorm_forward(x, w, eps):
    rstd = 1.0 / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)
    xhat = x * rstd
    return xhat * w, (xhat, rstd)


def rmsnorm_backward(dy, w, cache, dw):
    xhat, rstd = cache
    dw += (dy * xhat).reshape(-1, w.shape[0]).sum(axis=0)
    dxhat = dy * w
    # y = w * x / rms(x): the normalisation couples every element of a row
    return rstd * (dxhat - xhat * (dxhat * xhat).mean(axis=-1, keepdims=True))


def linear_forward(x, W):
    return x @ W.T


def linear_backward(dy, x, W, dW):
    dW += dy.T @ x
    return dy @ W


def rope_tables(T, head_dim, theta, dtype):
    """cos and sin of the rotation angles, [T, head_dim / 2]: position t rotates the
    pair (i, i + head_dim/2) by t * theta^(-2i/head_dim)."""
    inv_freq = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    angles = np.outer(np.arange(T, dtype=np.float64), inv_freq)
    return np.cos(angles).astype(dtype), np.sin(angles).astype(dtype)


def rope_forward(x, cos, sin):
    """Rotary embedding, rotate-half convention (as Hugging Face's Llama): the first half
    of each head's dimensions pairs with the second half. x is [..., T, head_dim]."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def rope_backward(dy, cos, sin):
    # a rotation's inverse is its transpose: rotate the gradient back
    half = dy.shape[-1] // 2
    d1, d2 = dy[..., :half], dy[..., half:]
    return np.concatenate([d1 * cos + d2 * sin, d2 * cos - d1 * sin], axis=-1)


def swiglu_forward(x, w1, w3, w2):
    h1, h3 = x @ w1.T, x @ w3.T
    gate = 1.0 / (1.0 + np.exp(-h1))
    a = h1 * gate * h3  # silu(h1) * h3
    return a @ w2.T, (x, h1, h3, gate, a)


def swiglu_backward(dy, w1, w3, w2, cache, dw1, dw3, dw2):
    x, h1, h3, gate, a = cache
    da = linear_backward(dy, a, w2, dw2)
    dh3 = da * (h1 * gate)
    dh1 = da * h3 * gate * (1.0 + h1 * (1.0 - gate))  # d silu(h)/dh
    return linear_backward(dh1, x, w1, dw1) + linear_backward(dh3, x, w3, dw3)


def _attention_impl(impl, dtype):
    """An explicit choice wins; otherwise the native kernel for float32 (its only dtype)
    and the numpy reference for anything else (float64 gradient checks)."""
    if impl is not None:
        return impl
    return None if dtype == np.float32 else "numpy"


def attention_block_forward(x, wq, wk, wv, wo, cfg, cos, sin, impl):
    """x is [B*T, d_model] (rows are positions); cos/sin fix T."""
    T = cos.shape[0]
    B = x.shape[0] // T
    H, Hkv, D = cfg.n_head, cfg.n_kv_head, cfg.head_dim

    def heads(w, n):  # [B*T, n*D] -> [B, n, T, D]
        return (x @ w.T).reshape(B, T, n, D).transpose(0, 2, 1, 3)

    q = rope_forward(heads(wq, H), cos, sin)
    k = rope_forward(heads(wk, Hkv), cos, sin)
    v = heads(wv, Hkv)
    impl = _attention_impl(impl, x.dtype)
    out, lse = attention.forward(q, k, v, impl)
    merged = out.transpose(0, 2, 1, 3).reshape(B * T, H * D)
    return merged @ wo.T, (x, q, k, v, out, lse, merged)


def attention_block_backward(dy, wq, wk, wv, wo, cfg, cos, sin, cache, grads, impl):
    dwq, dwk, dwv, dwo = grads
    x, q, k, v, out, lse, merged = cache
    B, H, T, D = q.shape
    dmerged = linear_backward(dy, merged, wo, dwo)
    dout = dmerged.reshape(B, T, H, D).transpose(0, 2, 1, 3)
    dq, dk, dv = attention.backward(q, k, v, out, lse, dout, _attention_impl(impl, x.dtype))

    def unheads(dh):  # [B, n, T, D] -> [B*T, n*D]
        return dh.transpose(0, 2, 1, 3).reshape(B * T, -1)

    dq = unheads(rope_backward(dq, cos, sin))
    dk = unheads(rope_backward(dk, cos, sin))
    dv = unheads(dv)
    return (linear_backward(dq, x, wq, dwq) + linear_backward(dk, x, wk, dwk)
            + linear_backward(dv, x, wv, dwv))


def cross_entropy_forward(logits, targets):
    """Mean negative log-likelihood in nats; logits [N, V], targets [N]."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    logp = shifted - log_z
    loss = -logp[np.arange(len(targets)), targets].mean()
    return loss, logp


def cross_entropy_backward(logp, targets):
    dlogits = np.exp(logp)
    dlogits[np.arange(len(targets)), targets] -= 1.0
    return dlogits / len(targets)


# ---------------------------------------------------------------- the model


def forward(params, cfg: ModelConfig, ids, targets=None, impl=None):
    """Runs the model on token ids [B, T].

    Without targets, returns the logits [B, T, V]. With targets [B, T], returns
    (loss, tape): the mean cross-entropy in nats and what `backward` needs.
    """
    B, T = ids.shape
    if T > cfg.context:
        raise ValueError(f"sequence length {T} exceeds the model's context {cfg.context}")
    E = params[EMBED]
    cos, sin = rope_tables(T, cfg.head_dim, cfg.rope_theta, E.dtype)
    x = embedding_forward(E, ids.reshape(-1))  # [B*T, d_model]: one row per position
    layers = []
    for i in range(cfg.n_layer):
        p = lambda name: params[layer_param(i, name)]  # noqa: E731
        h, norm1 = rmsnorm_forward(x, p("input_layernorm.weight"), cfg.norm_eps)
        a, attn = attention_block_forward(
            h, p("self_attn.q_proj.weight"), p("self_attn.k_proj.weight"),
            p("self_attn.v_proj.weight"), p("self_attn.o_proj.weight"), cfg, cos, sin, impl)
        x = x + a
        h, norm2 = rmsnorm_forward(x, p("post_attention_layernorm.weight"), cfg.norm_eps)
        m, mlp = swiglu_forward(h, p("mlp.gate_proj.weight"), p("mlp.up_proj.weight"),
                                p("mlp.down_proj.weight"))
        x = x + m
        layers.append((norm1, attn, norm2, mlp))
    h, final_norm = rmsnorm_forward(x, params[FINAL_NORM], cfg.norm_eps)
    logits = h @ E.T
    if targets is None:
        return logits.reshape(B, T, -1)
    loss, logp = cross_entropy_forward(logits, targets.reshape(-1))
    tape = dict(ids=ids, targets=targets, layers=layers, h=h, final_norm=final_norm,
                logp=logp, cos=cos, sin=sin, impl=impl)
    return loss, tape


def backward(params, cfg: ModelConfig, tape) -> dict:
    """Gradients of the mean loss with respect to every parameter."""
    grads = {name: np.zeros_like(w) for name, w in params.items()}
    E, dE = params[EMBED], grads[EMBED]
    cos, sin = tape["cos"], tape["sin"]
    dlogits = cross_entropy_backward(tape["logp"], tape["targets"].reshape(-1))
    dE += dlogits.T @ tape["h"]  # the tied head
    dx = rmsnorm_backward(dlogits @ E, params[FINAL_NORM], tape["final_norm"], grads[FINAL_NORM])
    for i in reversed(range(cfg.n_layer)):
        norm1, attn, norm2, mlp = tape["layers"][i]
        p = lambda name: params[layer_param(i, name)]  # noqa: E731
        g = lambda name: grads[layer_param(i, name)]  # noqa: E731
        dh = swiglu_backward(dx, p("mlp.gate_proj.weight"), p("mlp.up_proj.weight"),
                             p("mlp.down_proj.weight"), mlp, g("mlp.gate_proj.weight"),
                             g("mlp.up_proj.weight"), g("mlp.down_proj.weight"))
        dx = dx + rmsnorm_backward(dh, p("post_attention_layernorm.weight"), norm2,
                                   g("post_attention_layernorm.weight"))
        names = ("self_attn.q_proj.weight", "self_attn.k_proj.weight",
                 "self_attn.v_proj.weight", "self_attn.o_proj.weight")
        dh = attention_block_backward(dx, *(p(n) for n in names), cfg, cos, sin, attn,
                                      [g(n) for n in names], tape["impl"])
        dx = dx + rmsnorm_backward(dh, p("input_layernorm.weight"), norm1,
                                   g("input_layernorm.weight"))
    embedding_backward(dx, tape["ids"], dE)
    return grads


def loss_and_grads(params, cfg, ids, targets, impl=None):
    loss, tape = forward(params, cfg, ids, targets, impl)
    return float(loss), backward(params, cfg, tape)
