"""Training speed and loss curve: tinylm against the same model in PyTorch.

Both start from the same initial weights and see the same batches with the same AdamW
settings, schedule and clipping, on the same thread count; the script reports both loss
curves, their final gap, and tokens per second.

    python benchmarks/bench_train.py                 # baby preset, 200 steps
    python benchmarks/bench_train.py --quick
"""
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import _common as common  # noqa: E402


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
    from tinylm.optim import lr_at
    from tinylm.tokenizer import ByteTokenizer
    from tinylm.trainer import Run, TrainConfig, keep_freed_memory_in_the_heap

    _C.set_num_threads(args.threads)
    keep_freed_memory_in_the_heap()  # as `tinylm train` does
    cfg = preset(args.preset)
    tcfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, warmup=min(50, args.steps // 4))
    tokenizer = ByteTokenizer()
    tokens = data.load_tokens(data.DEFAULT_SOURCE, tokenizer)
    split = data.split_tokens(tokens, tokenizer, cfg.context, tcfg.val_fraction)
    rng = np.random.default_rng(tcfg.seed)
    batches = [data.sample_batch(split.train, tcfg.batch_size, cfg.context, rng)
               for _ in range(args.steps)]
    params0 = init_params(cfg, seed=tcfg.seed)

    # tinylm: the trainer's own step, fed the fixed batches
    run = Run("unused", cfg, tcfg, tokenizer)
    run.params = {k: v.copy() for k, v in params0.items()}
    feed = iter(batches)
    ours, t0 = [], time.perf_counter()
    for step in range(args.steps):
        loss, _, _ = run.train_step(lambda: next(feed))
        ours.append(loss)
        if step == 1:
            t0 = time.perf_counter()  # the first steps warm caches and the pool
    ours_time = time.perf_counter() - t0

    result = {"preset": args.preset, "steps": args.steps, "batch_size": tcfg.batch_size,
              "context": cfg.context, "threads": args.threads, "tinylm_loss": ours}
    tokens_per_step = tcfg.batch_size * cfg.context
    timed_steps = args.steps - 2
    result["tinylm_tokens_per_s"] = tokens_per_step * timed_steps / ours_time
    rows = [["tinylm", f"{result['tinylm_tokens_per_s']:,.0f}", f"{ours[-1]:.4f}", ""]]

    try:
        import torch
    except ImportError:
        print("torch is not installed: measuring tinylm only (pip install torch==2.13.0)")
        torch = None
    if torch is not None:
        from torch_llama import llama_loss
        torch.set_num_threads(args.threads)
        tp = {k: torch.tensor(v, requires_grad=True) for k, v in params0.items()}
        decay = [t for k, t in tp.items() if run.opt.decays(k)]
        no_decay = [t for k, t in tp.items() if not run.opt.decays(k)]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": tcfg.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=tcfg.lr, betas=(run.opt.beta1, run.opt.beta2), eps=run.opt.eps)
        theirs, t0 = [], time.perf_counter()
        for step, (x, y) in enumerate(batches):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, tcfg.lr, tcfg.min_lr, tcfg.warmup, tcfg.steps)
            opt.zero_grad()
            loss = llama_loss(tp, cfg, torch.from_numpy(x), torch.from_numpy(y))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(tp.values()), tcfg.grad_clip)
            opt.step()
            theirs.append(loss.item())
            if step == 1:
                t0 = time.perf_counter()
        torch_time = time.perf_counter() - t0
        result["torch_loss"] = theirs
        result["torch_tokens_per_s"] = tokens_per_step * timed_steps / torch_time
        result["final_loss_gap"] = abs(ours[-1] - theirs[-1])
        result["speed_ratio"] = result["tinylm_tokens_per_s"] / result["torch_tokens_per_s"]
        rows.append(["PyTorch " + torch.__version__, f"{result['torch_tokens_per_s']:,.0f}",
                     f"{theirs[-1]:.4f}", ""])
        rows[0][3] = f"{result['speed_ratio']:.2f}× PyTorch; final loss gap {result['final_loss_gap']:.4f} nats"

    table = common.markdown(
        [f"{args.preset}, {args.steps} steps, batch {tcfg.batch_size}×{cfg.context}, "
         f"{args.threads} threads", "tokens/s", "final loss", "note"], rows)
    common.write(args.out, result, table)


if __name__ == "__main__":
    main()
