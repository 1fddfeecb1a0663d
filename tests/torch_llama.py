"""An independent PyTorch version of tinylm's model, for tests and benchmarks only.

Written from Hugging Face Llama's conventions (rotate-half RoPE, RMSNorm, SwiGLU, tied
head), not from tinylm's code, so that agreement checks both the arithmetic and the
conventions. Parameters use the same names as tinylm's.
"""
import torch

F = torch.nn.functional


def rope_cos_sin(T, head_dim, theta, dtype):
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    freqs = torch.outer(torch.arange(T, dtype=torch.float64), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def llama_loss(p, cfg, ids, targets):
    """Mean cross-entropy of the model with parameters p (dict name -> tensor)."""
    B, T = ids.shape
    H, Hkv, D = cfg.n_head, cfg.n_kv_head, cfg.head_dim
    E = p["model.embed_tokens.weight"]
    cos, sin = rope_cos_sin(T, D, cfg.rope_theta, E.dtype)

    def rmsnorm(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + cfg.norm_eps) * w

    x = E[ids]
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
    logits = rmsnorm(x, p["model.norm.weight"]) @ E.T
    return F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(-1))
