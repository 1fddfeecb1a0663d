"""The whole model's loss and gradients against PyTorch autograd on the same weights and
batch (float64). Skipped when torch is not installed; CI installs it."""
import numpy as np
import pytest

from tinylm import model
from tinylm.config import ModelConfig

torch = pytest.importorskip("torch", reason="torch not installed: pip install torch==2.13.0")
from torch_llama import llama_loss  # noqa: E402


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
    tloss = llama_loss(tp, cfg, torch.tensor(ids), torch.tensor(targets))
    tloss.backward()
    assert loss == pytest.approx(tloss.item(), rel=1e-12)
    for name in params:
        np.testing.assert_allclose(grads[name], tp[name].grad.numpy(), rtol=1e-7, atol=1e-12,
                                   err_msg=name)
