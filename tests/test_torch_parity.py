"""The whole model's loss and gradients against PyTorch autograd on the same weights.

The PyTorch model below is written independently from tinylm's, following Hugging Face's
Llama (rotate-half RoPE, RMSNorm, SwiGLU, tied head), so agreement checks both the
arithmetic and the conventions. Skipped when torch is not installed (CI installs it).
"""
import numpy as np
import pytest

from tinylm import model
from tinylm.config import ModelConfig

torch = pytest.importorskip("torch", reason="torch not installed: pip install torch==2.13.0")
F = torch.nn.functional


def torch_loss(p, cfg, ids, targets):
    B, T = ids.shape
    H, Hkv, D = cfg.n_head, cfg.n_kv_head, cfg.head_dim

    def rmsnorm(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * w

    def rotate_half(x):
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)

    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
    freqs = torch.outer(torch.arange(T, dtype=torch.float64), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()

    x = p["model.embed_tokens.weight"][ids]
    for i in range(cfg.n_layer):
        w = lambda n: p[f"model.layers.{i}.{n}"]  # noqa: E731
        h = rmsnorm(x, w("input_layernorm.weight"))
        q = (h @ w("self_attn.q_proj.weight").T).view(B, T, H, D).transpose(1, 2)
        k = (h @ w("self_attn.k_proj.weight").T).view(B, T, Hkv, D).transpose(1, 2)
        v = (h @ w("self_attn.v_proj.weight").T).view(B, T, Hkv, D).transpose(1, 2)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        k = k.repeat_interleave(H // Hkv, dim=1)
        v = v.repeat_interleave(H // Hkv, dim=1)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + a.transpose(1, 2).reshape(B, T, H * D) @ w("self_attn.o_proj.weight").T
        h = rmsnorm(x, w("post_attention_layernorm.weight"))
        gate = F.silu(h @ w("mlp.gate_proj.weight").T) * (h @ w("mlp.up_proj.weight").T)
        x = x + gate @ w("mlp.down_proj.weight").T
    logits = rmsnorm(x, p["model.norm.weight"]) @ p["model.embed_tokens.weight"].T
    return F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(-1))


@pytest.mark.parametrize("n_kv_head", [4, 2])
def test_loss_and_gradients_match_torch(n_kv_head):
    cfg = ModelConfig(vocab_size=40, d_model=32, n_layer=2, n_head=4, n_kv_head=n_kv_head,
                      d_ff=24, context=16)
    rng = np.random.default_rng(7)
    params = model.init_params(cfg, seed=1, dtype=np.float64)
    for name in params:
        params[name] += rng.standard_normal(params[name].shape) * 0.05
    ids, targets = rng.integers(0, 40, (3, 16)), rng.integers(0, 40, (3, 16))

    loss, grads = model.loss_and_grads(params, cfg, ids, targets, impl="numpy")

    tp = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    tloss = torch_loss(tp, cfg, torch.tensor(ids), torch.tensor(targets))
    tloss.backward()
    assert loss == pytest.approx(tloss.item(), rel=1e-12)
    for name in params:
        np.testing.assert_allclose(grads[name], tp[name].grad.numpy(), rtol=1e-7, atol=1e-12,
                                   err_msg=name)
