"""Training speed and loss curve: tinylm against the same model in PyTorch.

All runs start from the same initial weights and see the same batches with the same
AdamW settings, schedule and clipping, on the same thread count. tinylm runs twice, with
the native attention kernel (the default) and with the numpy reference attention, to show
what the kernel buys; the script reports the loss curves, their final gap, and tokens/s.

    python benchmarks/bench_train.py                 # baby preset, 200 steps
    python benchmarks/bench_train.py --preset tiny --threads 1
    python benchmarks/bench_train.py --quick
"""
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import _common as common  # noqa: E402

WARMUP_STEPS = 2  # not timed: they warm caches, the thread pool and the allocator


def train_tinylm(cfg, tcfg, tokenizer, params0, batches, attention_impl):
    from tinylm import attention
    from tinylm.trainer import Run
    attention.set_default_impl(attention_impl)
    run = Run("unused", cfg, tcfg, tokenizer)
    run.params = {k: v.copy() for k, v in params0.items()}
    feed = iter(batches)
    losses = []
    for step in range(len(batches)):
        if step == WARMUP_STEPS:
            t0 = time.perf_counter()
        losses.append(run.train_step(lambda: next(feed))[0])
    attention.set_default_impl("native")
    return losses, time.perf_counter() - t0


def train_torch(torch, cfg, tcfg, params0, batches):
    from tinylm.optim import AdamW, lr_at
    from torch_llama import llama_loss
    decays = AdamW().decays
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in params0.items()}
    opt = torch.optim.AdamW(
        [{"params": [t for k, t in tp.items() if decays(k)], "weight_decay": tcfg.weight_decay},
         {"params": [t for k, t in tp.items() if not decays(k)], "weight_decay": 0.0}],
        lr=tcfg.lr, betas=(0.9, 0.95), eps=1e-8)
    losses = []
    for step, (x, y) in enumerate(batches):
        if step == WARMUP_STEPS:
            t0 = time.perf_counter()
        for group in opt.param_groups:
            group["lr"] = lr_at(step, tcfg.lr, tcfg.min_lr, tcfg.warmup, tcfg.steps)
        opt.zero_grad()
        loss = llama_loss(tp, cfg, torch.from_numpy(x), torch.from_numpy(y))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(tp.values()), tcfg.grad_clip)
        opt.step()
        losses.append(loss.item())
    return losses, time.perf_counter() - t0


def main():
    p = common.parser("bench_train", __doc__.split("\n")[0])
    p.add_argument("--preset", default="baby")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    args = p.parse_args()
    if args.quick:
        args.steps = 8
    os.environ["OPENBLAS_NUM_THREADS"] = str(args.threads)  # before numpy loads BLAS
    import numpy as np

    from tinylm import _C, data
    from tinylm.config import preset
    from tinylm.model import init_params
    from tinylm.tokenizer import ByteTokenizer
    from tinylm.trainer import TrainConfig, keep_freed_memory_in_the_heap

    _C.set_num_threads(args.threads)
    keep_freed_memory_in_the_heap()  # as `tinylm train` does
    cfg = preset(args.preset)
    tcfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, warmup=min(50, args.steps // 4))
    tokenizer = ByteTokenizer()
    split = data.split_tokens(data.load_tokens(data.DEFAULT_SOURCE, tokenizer), tokenizer,
                              cfg.context, tcfg.val_fraction)
    rng = np.random.default_rng(tcfg.seed)
    batches = [data.sample_batch(split.train, tcfg.batch_size, cfg.context, rng)
               for _ in range(args.steps)]
    params0 = init_params(cfg, seed=tcfg.seed)
    tokens = tcfg.batch_size * cfg.context * (args.steps - WARMUP_STEPS)

    curves = {}
    for name, impl in [("tinylm", "native"), ("tinylm, numpy attention", "numpy")]:
        curves[name] = train_tinylm(cfg, tcfg, tokenizer, params0, batches, impl)
    try:
        import torch
        torch.set_num_threads(args.threads)
        curves[f"PyTorch {torch.__version__}"] = train_torch(torch, cfg, tcfg, params0, batches)
    except ImportError:
        print("torch is not installed: measuring tinylm only (pip install torch==2.13.0)")

    ours_loss, ours_time = curves["tinylm"]
    result = {"preset": args.preset, "steps": args.steps, "batch_size": tcfg.batch_size,
              "context": cfg.context, "threads": args.threads, "runs": {}}
    rows = []
    for name, (losses, seconds) in curves.items():
        result["runs"][name] = {"loss": losses, "tokens_per_s": tokens / seconds}
        note = "" if name == "tinylm" else (
            f"tinylm is {seconds / ours_time:.2f}× as fast; final loss gap "
            f"{abs(losses[-1] - ours_loss[-1]):.4f} nats")
        rows.append([name, f"{tokens / seconds:,.0f}", f"{losses[-1]:.4f}", note])
    table = common.markdown(
        [f"{args.preset}, {args.steps} steps, batch {tcfg.batch_size}×{cfg.context}, "
         f"{args.threads} threads", "tokens/s", "final loss", "compared with tinylm"], rows)
    common.write(args.out, result, table)


if __name__ == "__main__":
    main()
