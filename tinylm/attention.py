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
"""
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
    scores = (q @ k.swapaxes(-1, -2)) * (1.0 / np.sqrt(D))
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
    ds *= 1.0 / np.sqrt(D)
    dq = ds @ k_all
    dk = ds.swapaxes(-1, -2) @ q
    return dq, _fold_kv(dk, n_kv_head), _fold_kv(dv, n_kv_head)
