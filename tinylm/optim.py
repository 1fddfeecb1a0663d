"""AdamW with decoupled weight decay, the learning-rate schedule, and gradient clipping."""
import math
from dataclasses import dataclass

import numpy as np


def lr_at(step: int, max_lr: float, min_lr: float, warmup: int, total: int) -> float:
    """Linear warm-up to max_lr over `warmup` steps, then cosine decay to min_lr at `total`."""
    if warmup > 0 and step < warmup:
        return max_lr * (step + 1) / warmup
    if step >= total:
        return min_lr
    progress = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (max_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def clip_grad_norm(grads: dict, max_norm: float) -> float:
    """Scales all gradients in place so their global L2 norm is at most max_norm;
    returns the norm before clipping (0 or less disables clipping)."""
    norm = math.sqrt(sum(float(np.vdot(g, g)) for g in grads.values()))
    if max_norm > 0 and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for g in grads.values():
            g *= scale
    return norm


@dataclass
class AdamW:
    """Adam with weight decay applied to the weights directly (Loshchilov & Hutter), not
    through the gradient. `decays(name)` says which parameters decay: by default the
    matrices, not the norms and not the embedding."""

    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    decay_embeddings: bool = False

    def __post_init__(self):
        self.m, self.v = {}, {}
        self.t = 0

    def decays(self, name: str) -> bool:
        if name.endswith("norm.weight"):
            return False
        if "embed_tokens" in name:
            return self.decay_embeddings
        return True

    def step(self, params: dict, grads: dict, lr: float):
        self.t += 1
        bias1 = 1.0 - self.beta1 ** self.t
        bias2 = 1.0 - self.beta2 ** self.t
        for name, w in params.items():
            g = grads[name]
            m = self.m.setdefault(name, np.zeros_like(w))
            v = self.v.setdefault(name, np.zeros_like(w))
            m *= self.beta1
            m += (1.0 - self.beta1) * g
            v *= self.beta2
            v += (1.0 - self.beta2) * (g * g)
            if self.decays(name):
                w *= 1.0 - lr * self.weight_decay
            w -= (lr / bias1) * m / (np.sqrt(v / bias2) + self.eps)

    def state_tensors(self) -> dict:
        """The moments as named arrays, for the checkpoint."""
        out = {f"adam.m.{k}": m for k, m in self.m.items()}
        out.update({f"adam.v.{k}": v for k, v in self.v.items()})
        return out

    def load_state(self, tensors: dict, t: int):
        self.t = t
        self.m = {k[len("adam.m."):]: np.array(v) for k, v in tensors.items() if k.startswith("adam.m.")}
        self.v = {k[len("adam.v."):]: np.array(v) for k, v in tensors.items() if k.startswith("adam.v.")}
