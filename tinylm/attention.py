"""Causal self-attention with grouped-query heads: the numpy reference.

Shapes: q is [B, H, T, D]; k and v are [B, H_kv, T, D] where H_kv divides H, so each
key/value head serves H // H_kv consecutive query heads (grouped-query attention; plain
multi-head attention when H_kv == H). Scores are scaled by 1/sqrt(D) and masked so that
position t attends to positions 0..t.

The forward pass returns, besides the output, the per-row log-sum-exp of the scores:
that is all the backward pass needs to rebuild the attention probabilities, so neither
pass has to keep a T x T matrix between them. The native kernels in tinylm._C use the
same contract (computed tile by tile, without ever materialising the scores); this
module is the readable version the tests hold them to.

`forward`, `backward` and `decode` at the end choose between the two: impl="native" (the
default; float32 only) or impl="numpy" (any float dtype, e.g. float64 gradient checks).
"""
import math

import numpy as np


def _expand_kv(x, n_head):
    """Repeat each key/value head for the query heads that share it."""
    return np.repeat(x, n_head // x.shape[1], axis=1)


def _fold_kv(dx, n_kv_head):
    """Sum the gradients of the query heads that share a key/value head."""
    B, H, T, D = dx.shape
    return dx.reshape(B, n_kv_head, H // n_kv_head, T, D).sum(axis=2)


def _causal_scores(q, k):
    T, D = q.shape[2], q.shape[3]
    # dividing by a Python float keeps float32 inputs float32
    scores = (q @ k.swapaxes(-1, -2)) / math.sqrt(D)
    future = np.triu(np.ones((T, T), dtype=bool), k=1)
    scores[..., future] = -np.inf
    return scores


def attention_forward(q, k, v):
    """Returns (out [B, H, T, D], lse [B, H, T])."""
    H = q.shape[1]
    scores = _causal_scores(q, _expand_kv(k, H))
    row_max = scores.max(axis=-1, keepdims=True)  # subtract it so exp cannot overflow
    p = np.exp(scores - row_max)
    row_sum = p.sum(axis=-1, keepdims=True)
    out = (p / row_sum) @ _expand_kv(v, H)
    lse = (row_max + np.log(row_sum))[..., 0]
    return out, lse


def attention_backward(q, k, v, out, lse, dout):
    """Gradients (dq, dk, dv) of the loss given dout = dL/d(out)."""
    H, n_kv_head, D = q.shape[1], k.shape[1], q.shape[3]
    k_all, v_all = _expand_kv(k, H), _expand_kv(v, H)
    p = np.exp(_causal_scores(q, k_all) - lse[..., None])  # the forward's probabilities
    dv = p.swapaxes(-1, -2) @ dout
    dp = dout @ v_all.swapaxes(-1, -2)
    # softmax backward: ds = p * (dp - sum_j p_j dp_j), and sum_j p_j dp_j = dout . out
    ds = p * (dp - (dout * out).sum(axis=-1, keepdims=True))
    ds /= math.sqrt(D)
    dq = ds @ k_all
    dk = ds.swapaxes(-1, -2) @ q
    return dq, _fold_kv(dk, n_kv_head), _fold_kv(dv, n_kv_head)


def attention_decode(q, k_cache, v_cache, length):
    """One query per head against cache positions [0, length): out [H, D].

    q is [H, D]; k_cache and v_cache are [H_kv, capacity, D] (each head's positions
    contiguous, which is what lets the native kernel stream through them).
    """
    H, D = q.shape
    k = _expand_kv(k_cache[None, :, :length], H)[0]  # [H, length, D]
    v = _expand_kv(v_cache[None, :, :length], H)[0]
    scores = np.einsum("hd,htd->ht", q, k) / math.sqrt(D)
    p = np.exp(scores - scores.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return np.einsum("ht,htd->hd", p, v)


# ---------------------------------------------------------------------------------------
# Dispatch between the native kernels (tinylm._C: float32; decode also takes float16
# caches) and the numpy reference.

IMPLS = ("native", "numpy")
_default_impl = "native"


def set_default_impl(name):
    """Choose the implementation used when a call passes impl=None."""
    global _default_impl
    _default_impl = _check_impl(name)


def default_impl():
    return _default_impl


def _check_impl(name):
    if name not in IMPLS:
        raise ValueError(f"unknown attention impl {name!r}; choose one of {IMPLS}")
    return name


def _native_module():
    try:
        from tinylm import _C
    except ImportError as e:  # the extension was not built
        raise ImportError(
            "tinylm._C is not built; build it (pip install -e . or, with setuptools>=77, "
            "python setup.py build_ext --inplace) or use impl='numpy'"
        ) from e
    return _C


def _native_args(**arrays):
    """float32, C-contiguous copies or views, as the native kernels need."""
    out = []
    for name, x in arrays.items():
        x = np.asarray(x)
        if x.dtype != np.float32:
            raise ValueError(
                f"argument '{name}': impl='native' needs float32, got {x.dtype} "
                "(use impl='numpy' for float64, e.g. gradient checks)"
            )
        out.append(np.ascontiguousarray(x))
    return out


def forward(q, k, v, impl=None):
    """Causal attention: (out [B,H,T,D], lse [B,H,T]) from q [B,H,T,D], k, v [B,Hkv,T,D]."""
    if _check_impl(impl or _default_impl) == "numpy":
        return attention_forward(q, k, v)
    return _native_module().attention_forward(*_native_args(q=q, k=k, v=v))


def backward(q, k, v, out, lse, dout, impl=None):
    """(dq, dk, dv) given the forward's out and lse and dout = dL/d(out)."""
    if _check_impl(impl or _default_impl) == "numpy":
        return attention_backward(q, k, v, out, lse, dout)
    args = _native_args(q=q, k=k, v=v, out=out, lse=lse, dout=dout)
    return _native_module().attention_backward(*args)


def decode(q, k_cache, v_cache, length, impl=None):
    """out [H, D] for q [H, D] against k_cache, v_cache [Hkv, capacity, D], positions < length.
    The caches are float32, or both float16; or k_cache is int8 keys, a pair (codes,
    scales) in tinylm/kvcache.py's layout for one layer, and v_cache float16 (the int8
    models' cache; q is rounded to int8 as those keys are)."""
    length = int(length)
    int8_keys = isinstance(k_cache, tuple)
    if _check_impl(impl or _default_impl) == "numpy":
        capacity = np.shape(v_cache)[1]
        if not 1 <= length <= capacity:
            raise ValueError(f"argument 'length': {length} is outside [1, {capacity}] (the cache capacity)")
        if int8_keys:
            from . import kvcache
            q = kvcache.round_queries(np.asarray(q, np.float32))
            k_cache = kvcache.int8_keys_as_floats(*k_cache, q.shape[1])
        return attention_decode(q, k_cache, v_cache, length)
    if int8_keys:  # read as they are
        caches = [tuple(np.ascontiguousarray(c) for c in k_cache), np.ascontiguousarray(v_cache)]
    elif np.asarray(k_cache).dtype == np.float16:  # read as they are
        caches = [np.ascontiguousarray(c) for c in (k_cache, v_cache)]
    else:
        caches = _native_args(k_cache=k_cache, v_cache=v_cache)
    return _native_module().attention_decode(*_native_args(q=q), *caches, length)
