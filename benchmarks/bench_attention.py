"""Causal attention speed: the native kernels vs the numpy reference vs torch's
scaled_dot_product_attention (when torch is installed), side by side in one run.

Measures forward and forward+backward for (batch, heads, T, head_dim) in the issue's
shapes at 1 and 2 threads, and decode-attention time per token (one query per head
against a KV cache: float32; float16; int8 keys with float16 values, as int8 models keep
it) for cache lengths 256..4096. Prints a markdown table and writes JSON.

    python benchmarks/bench_attention.py                 # full run (a few minutes)
    python benchmarks/bench_attention.py --quick         # seconds: small shapes, 1 thread
    python benchmarks/bench_attention.py --decode-only   # the decode rows alone (own JSON)

Thread counts are set with tinylm._C.set_num_threads and torch.set_num_threads; numpy's
BLAS reads its thread count only when it loads, so the numpy reference is timed in a
child process per thread count (OPENBLAS_NUM_THREADS etc.), which also keeps idle BLAS
threads from spinning beside the native timings.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np

from tinylm import _C
from tinylm import attention as attn
from tinylm import kvcache

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = None

SHAPES = [(12, 4, 64, 32), (8, 6, 256, 48), (4, 8, 1024, 64), (1, 8, 4096, 64)]
QUICK_SHAPES = [(12, 4, 64, 32), (8, 6, 256, 48)]
DECODE_LENGTHS = [256, 512, 1024, 2048, 4096]
DECODE_HEADS, DECODE_KV_HEADS, DECODE_DIM = 8, 8, 64


def timed(fn, min_time=0.0):
    """Seconds per call of fn, averaged over calls lasting at least min_time (one call
    at least)."""
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_time:
            return elapsed / calls


def best_times(fns, repeat, min_time=0.0):
    """{name: best seconds per call} for several functions, timed in turn within each of
    `repeat` rounds, so that a burst of load from elsewhere on a shared machine hits all
    of them rather than one."""
    for fn in fns.values():  # warm-up
        fn()
    best = {name: float("inf") for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            best[name] = min(best[name], timed(fn, min_time))
    return best


def best_time(fn, repeat, min_time=0.0):
    return best_times({"fn": fn}, repeat, min_time)["fn"]


def training_inputs(shape, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape, dtype=np.float32) for _ in range(4)]  # q, k, v, dout


def native_fns(q, k, v, dout):
    def fwd():
        return attn.forward(q, k, v, impl="native")

    def fwd_bwd():
        out, lse = attn.forward(q, k, v, impl="native")
        return attn.backward(q, k, v, out, lse, dout, impl="native")

    return fwd, fwd_bwd


def numpy_fns(q, k, v, dout):
    def fwd():
        return attn.forward(q, k, v, impl="numpy")

    def fwd_bwd():
        out, lse = attn.forward(q, k, v, impl="numpy")
        return attn.backward(q, k, v, out, lse, dout, impl="numpy")

    return fwd, fwd_bwd


def torch_fns(q, k, v, dout):
    tq, tk, tv = (torch.from_numpy(x).requires_grad_() for x in (q, k, v))
    tdout = torch.from_numpy(dout)

    def fwd():
        with torch.no_grad():
            return F.scaled_dot_product_attention(tq, tk, tv, is_causal=True)

    def fwd_bwd():
        out = F.scaled_dot_product_attention(tq, tk, tv, is_causal=True)
        out.backward(tdout)
        tq.grad = tk.grad = tv.grad = None

    return fwd, fwd_bwd


def set_threads(n):
    _C.set_num_threads(n)
    if torch is not None:
        torch.set_num_threads(n)


def numpy_training_times(shapes, repeat):
    """{str(shape): {"fwd": s, "fwd_bwd": s}} for the numpy reference in this process."""
    times = {}
    for shape in shapes:
        fwd, fwd_bwd = numpy_fns(*training_inputs(shape))
        r = min(repeat, 3) if shape[2] >= 1024 else repeat  # seconds per call at long T
        times[str(list(shape))] = {"fwd": best_time(fwd, r), "fwd_bwd": best_time(fwd_bwd, r)}
    return times


def numpy_training_times_with_threads(shapes, threads, repeat):
    """numpy_training_times in a child process whose BLAS uses `threads` threads."""
    env = dict(os.environ)
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(threads)
    command = [sys.executable, __file__, "--numpy-worker", json.dumps(shapes), "--repeat", str(repeat)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def bench_training(shapes, thread_counts, repeat):
    rows = []
    numpy_times = {n: numpy_training_times_with_threads(shapes, n, repeat) for n in thread_counts}
    for shape in shapes:
        q, k, v, dout = training_inputs(shape)
        T = shape[2]
        for threads in thread_counts:
            set_threads(threads)
            row = {"shape": list(shape), "threads": threads, "numpy": numpy_times[threads][str(list(shape))]}
            fns = {"native": native_fns(q, k, v, dout)}
            if torch is not None:
                fns["torch"] = torch_fns(q, k, v, dout)
            min_time = 0.05 if T < 1024 else 0.0
            flat = {(name, part): f
                    for name, pair in fns.items() for part, f in zip(("fwd", "fwd_bwd"), pair)}
            best = best_times(flat, repeat, min_time)
            for name in fns:
                row[name] = {"fwd": best[(name, "fwd")], "fwd_bwd": best[(name, "fwd_bwd")]}
            rows.append(row)
            print_training_row(row, file=sys.stderr)
    return rows


def bench_decode(lengths, thread_counts, repeat):
    rows = []
    H, Hkv, D = DECODE_HEADS, DECODE_KV_HEADS, DECODE_DIM
    capacity = max(lengths)
    rng = np.random.default_rng(1)
    q = rng.standard_normal((H, D), dtype=np.float32)
    k_cache = rng.standard_normal((Hkv, capacity, D), dtype=np.float32)
    v_cache = rng.standard_normal((Hkv, capacity, D), dtype=np.float32)
    k_half, v_half = k_cache.astype(np.float16), v_cache.astype(np.float16)
    # the int8 models' cache: int8 keys, float16 values
    shape = types.SimpleNamespace(n_layer=1, n_kv_head=Hkv, context=capacity, head_dim=D)
    keys = kvcache.Int8Keys(shape)
    keys.store(0, 0, k_cache)
    k_int8 = (keys.codes[0], keys.scales[0])
    for threads in thread_counts:
        set_threads(threads)
        for length in lengths:
            row = {"length": length, "threads": threads, "heads": H, "kv_heads": Hkv, "head_dim": D}
            fns = {
                "native": lambda: attn.decode(q, k_cache, v_cache, length),
                "native_f16": lambda: attn.decode(q, k_half, v_half, length),
                "native_i8k": lambda: attn.decode(q, k_int8, v_half, length),
                "numpy": lambda: attn.decode(q, k_cache, v_cache, length, impl="numpy"),
            }
            if torch is not None:
                tq = torch.from_numpy(q)[None, :, None]  # [1, H, 1, D]
                tk = torch.from_numpy(k_cache)[None, :, :length]
                tv = torch.from_numpy(v_cache)[None, :, :length]

                def torch_decode(tq=tq, tk=tk, tv=tv):
                    with torch.no_grad():
                        return F.scaled_dot_product_attention(tq, tk, tv)

                fns["torch"] = torch_decode
            row.update(best_times(fns, repeat, 0.02))
            rows.append(row)
    return rows


def ratio(a, b):
    return f"{a / b:.2f}x" if a and b else "-"


def ms(seconds):
    return f"{seconds * 1e3:.2f}" if seconds is not None else "-"


def print_training_row(row, file=sys.stdout):
    n, t, p = row["native"], row.get("torch"), row["numpy"]
    print(f"| {tuple(row['shape'])} | {row['threads']} | {ms(n['fwd'])} | "
          f"{ms(t['fwd']) if t else '-'} | {ms(p['fwd'])} | {ms(n['fwd_bwd'])} | "
          f"{ms(t['fwd_bwd']) if t else '-'} | {ms(p['fwd_bwd'])} | "
          f"{ratio(t and t['fwd_bwd'], n['fwd_bwd'])} | {ratio(p['fwd_bwd'], n['fwd_bwd'])} |",
          file=file)


def print_tables(result):
    print(f"\nattention, isa {result['isa']}, {result['machine']}"
          f"{', torch ' + result['torch'] if result['torch'] else ', torch not installed'}\n")
    print("| (B, H, T, D) | threads | fwd native ms | fwd torch ms | fwd numpy ms | "
          "fwd+bwd native ms | fwd+bwd torch ms | fwd+bwd numpy ms | "
          "torch/native (fwd+bwd) | numpy/native (fwd+bwd) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in result["training"]:
        print_training_row(row)
    print(f"\ndecode, one token: {DECODE_HEADS} heads, {DECODE_KV_HEADS} kv heads, "
          f"head_dim {DECODE_DIM}\n")
    print("| cache length | threads | native us | native float16 cache us | native int8 keys us | "
          "torch us | numpy us | native/float16 | float16/int8 keys | torch/native | numpy/native |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in result["decode"]:
        t = row.get("torch")
        print(f"| {row['length']} | {row['threads']} | {row['native'] * 1e6:.1f} | "
              f"{row['native_f16'] * 1e6:.1f} | {row['native_i8k'] * 1e6:.1f} | "
              f"{t * 1e6 if t else float('nan'):.1f} | {row['numpy'] * 1e6:.1f} | "
              f"{ratio(row['native'], row['native_f16'])} | "
              f"{ratio(row['native_f16'], row['native_i8k'])} | "
              f"{ratio(t, row['native'])} | {ratio(row['numpy'], row['native'])} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, 1 thread, seconds")
    parser.add_argument("--out", default=None, help="JSON output path")
    parser.add_argument("--repeat", type=int, default=None, help="timings per case (best kept)")
    parser.add_argument("--threads", default=None, help="comma-separated thread counts")
    parser.add_argument("--decode-only", action="store_true", help="only the decode rows")
    parser.add_argument("--numpy-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.numpy_worker:  # child process: time the numpy reference, print JSON
        shapes = [tuple(s) for s in json.loads(args.numpy_worker)]
        print(json.dumps(numpy_training_times(shapes, args.repeat or 1)))
        return

    shapes = QUICK_SHAPES if args.quick else SHAPES
    lengths = [256, 1024] if args.quick else DECODE_LENGTHS
    threads = [int(t) for t in (args.threads or ("1" if args.quick else "1,2")).split(",")]
    repeat = args.repeat or (1 if args.quick else 5)

    result = {
        "benchmark": "attention",
        "machine": f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores".strip(),
        "cpu_features": _C.cpu_features(),
        "isa": _C.active_isa(),
        "attention_path": _C.attention_path(),
        "torch": torch.__version__ if torch is not None else None,
        "numpy": np.__version__,
        "quick": args.quick,
        "times_in": "seconds (best of repeats)",
    }
    result["training"] = [] if args.decode_only else bench_training(shapes, threads, repeat)
    result["decode"] = bench_decode(lengths, threads, repeat)

    name = "bench_attention_decode.json" if args.decode_only else "bench_attention.json"
    out = Path(args.out or Path(__file__).resolve().parent / "results" / name)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print_tables(result)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
