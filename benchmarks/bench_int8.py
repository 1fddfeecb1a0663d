"""int8 GEMV/GEMM against numpy float32 matmul and torch's dynamic-quantized Linear.

For each shape y = x @ W.T (W [N, K]) of the `baby` and `small` presets' layers and
head, and for a 4096 x 4096 weight read from memory (several copies in rotation, more
bytes than the last-level cache, so every call streams from DRAM), at 1 and 2 threads:

- GEMV (M = 1, decode) and GEMM (M = 64 and 256, prefill/evaluation);
- tinylm int8 (`_C.int8_linear`: quantizes x, int8 x int8 -> int32, rescales), numpy
  float32 `matmul`, and torch.ao.quantization.quantize_dynamic on nn.Linear (if torch is
  installed);
- the streaming read bandwidth of this machine, measured in the same run between the
  GEMV timings, and the GEMV's effective bandwidth (weight + scale bytes / time) as a
  fraction of it.

Each thread count runs in its own process so OpenBLAS's thread count can be set before
numpy loads. Timings are the best of several rounds (machines are noisy).

    python benchmarks/bench_int8.py [--quick] [--threads 1,2] [--out FILE]
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

PRESET_SHAPES = {  # (N, K) of every distinct matrix: q/k/v/o, gate/up, down, head
    "baby": [(128, 128), (344, 128), (128, 344), (257, 128)],
    "small": [(288, 288), (768, 288), (288, 768), (257, 288)],
}
BIG = (4096, 4096)


def llc_bytes() -> int:
    try:
        text = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()
        return int(text[:-1]) * 1024 if text.endswith("K") else int(text)
    except (OSError, ValueError):
        return 32 << 20


def best(fn, rounds, min_time):
    # First let the worker threads of whatever ran before go idle: OpenBLAS's spin for
    # about 0.1 s after a call, and on 2 cores they would take the cores from the next
    # contender's threads (measured: int8 at 2 threads 1.8x slower right after numpy).
    time.sleep(0.2)
    return _common.best_time(fn, repeat=rounds, min_time=min_time)


class Rotation:
    """Several copies of one operand used in turn, so that no call finds its data in
    the cache when the copies together exceed the last-level cache."""

    def __init__(self, items):
        self.items, self.i = items, 0

    def next(self):
        self.i = (self.i + 1) % len(self.items)
        return self.items[self.i]


def copies_for(nbytes, cold_bytes):
    """Copies enough to hold cold_bytes together (0: one copy, left warm in the caches)."""
    return max(1, -(-cold_bytes // nbytes))


def torch_linear(w):
    import torch
    lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w))
    return torch.ao.quantization.quantize_dynamic(lin, {torch.nn.Linear}, dtype=torch.qint8)


def measure_shape(N, K, M, cold_bytes, rounds, min_time, rng, have_torch):
    from tinylm import _C, quant
    w = (rng.standard_normal((N, K)) * 0.05).astype(np.float32)
    x = rng.standard_normal((M, K)).astype(np.float32)
    q = quant.quantize_weight(w)
    int8_bytes = q.values.nbytes + q.scale.nbytes
    qs = Rotation([(q.values.copy(), q.scale.copy()) for _ in range(copies_for(int8_bytes, cold_bytes))])
    fs = Rotation([np.ascontiguousarray(w.T) if i == 0 else np.ascontiguousarray(w.T).copy()
                   for i in range(copies_for(w.nbytes, cold_bytes))])
    y = np.empty((M, N), np.float32)

    def run_int8():
        v, s = qs.next()
        _C.int8_linear(x, v, s, y)

    def run_numpy():
        np.matmul(x, fs.next(), out=y)

    r = {"N": N, "K": K, "M": M, "cold": cold_bytes > 0, "int8_s": best(run_int8, rounds, min_time),
         "numpy_s": best(run_numpy, rounds, min_time), "int8_weight_bytes": int8_bytes}
    if cold_bytes and M == 1:
        # The bandwidth yardstick: a plain streaming read of the same rotating weight
        # copies, alternated call by call with the GEMV so both see the same machine state.
        words = [v.view(np.uint64).reshape(-1) for v, _ in qs.items]
        t_gemv = t_read = float("inf")
        for i in range(rounds * 30):
            t0 = time.perf_counter()
            run_int8()
            t1 = time.perf_counter()
            # the copy least recently touched (the one just multiplied may still be in L3)
            _C.int8_read_checksum(words[(qs.i + len(words) // 2) % len(words)])
            t2 = time.perf_counter()
            t_gemv, t_read = min(t_gemv, t1 - t0), min(t_read, t2 - t1)
        r["int8_s"] = min(r["int8_s"], t_gemv)
        r["read_same_bytes_s"] = t_read
    if have_torch:
        import torch
        mods = Rotation([torch_linear(w) for _ in range(copies_for(int8_bytes, cold_bytes))])
        xt = torch.from_numpy(x)
        with torch.inference_mode():
            r["torch_s"] = best(lambda: mods.next()(xt), rounds, min_time)
    return r


def read_bandwidth(buf, rounds):
    from tinylm import _C
    t = best(lambda: _C.int8_read_checksum(buf), rounds, 0.0)
    return buf.nbytes / t


def child(threads, quick):
    """Runs every measurement at one thread count; prints JSON."""
    from tinylm import _C
    _C.set_num_threads(threads)
    try:
        import torch
        torch.set_num_threads(threads)
        have_torch = True
    except ImportError:
        have_torch = False
    rng = np.random.default_rng(0)
    rounds, min_time = (2, 0.01) if quick else (7, 0.05)
    # More bytes than the last-level cache holds, so that reads stream from DRAM. --quick
    # only checks that the script runs: 4x a 300 MB L3 took 90 s to fill with copies.
    cold_bytes = 64 << 20 if quick else 4 * llc_bytes()
    buf = np.ones(cold_bytes // 8, np.uint64)
    results, bandwidths = [], []
    Ms = [1, 64] if quick else [1, 64, 256]
    for preset, shapes in PRESET_SHAPES.items():
        for M in Ms:
            for N, K in shapes:
                r = measure_shape(N, K, M, 0, rounds, min_time, rng, have_torch)
                results.append({"preset": preset, **r})
    for M in ([1, 64] if quick else [1, 1, 64, 256]):  # GEMV twice, interleaved with bandwidth
        bandwidths.append(read_bandwidth(buf, rounds))
        r = measure_shape(*BIG, M, cold_bytes, rounds, min_time, rng, have_torch)
        results.append({"preset": "4096x4096 (64 MB of copies, --quick)" if quick else "4096x4096 (from DRAM)", **r})
    bandwidths.append(read_bandwidth(buf, rounds))
    print(json.dumps({"threads": threads, "int8_kernel": _C.int8_path(), "have_torch": have_torch,
                      "read_bandwidth_Bps": max(bandwidths), "results": results}))


def summarize(runs):
    rows, checks = [], []
    for run in runs:
        th, bw = run["threads"], run["read_bandwidth_Bps"]
        groups = {}
        for r in run["results"]:
            key = (r["preset"], r["M"])
            g = groups.setdefault(key, {"int8": 0.0, "numpy": 0.0, "torch": 0.0, "bytes": 0, "macs": 0})
            if r["preset"].startswith("4096") and g["int8"]:
                g["int8"] = min(g["int8"], r["int8_s"])  # the repeated GEMV: keep the best
                if "read_same_bytes_s" in r:
                    g["read_bw"] = max(g["read_bw"], r["int8_weight_bytes"] / r["read_same_bytes_s"])
                g["numpy"] = min(g["numpy"], r["numpy_s"])
                g["torch"] = min(g["torch"], r.get("torch_s", 0.0))
                continue
            if "read_same_bytes_s" in r:
                g["read_bw"] = max(g.get("read_bw", 0.0), r["int8_weight_bytes"] / r["read_same_bytes_s"])
            g["int8"] += r["int8_s"]
            g["numpy"] += r["numpy_s"]
            g["torch"] += r.get("torch_s", 0.0)
            g["bytes"] += r["int8_weight_bytes"]
            g["macs"] += r["M"] * r["N"] * r["K"]
        for (preset, M), g in groups.items():
            bw = run["read_bandwidth_Bps"]
            if "read_bw" in g:  # the DRAM GEMV: compare with reading the same bytes
                bw = g["read_bw"]
            frac = g["bytes"] / g["int8"] / bw
            vs_torch = g["torch"] / g["int8"] if g["torch"] else None
            rows.append([preset, M, th, f"{g['int8'] * 1e6:.1f}", f"{g['numpy'] * 1e6:.1f}",
                         f"{g['torch'] * 1e6:.1f}" if g["torch"] else "-",
                         f"{g['numpy'] / g['int8']:.2f}x", f"{vs_torch:.2f}x" if vs_torch else "-",
                         f"{2 * g['macs'] / g['int8'] / 1e9:.0f}",
                         f"{g['bytes'] / g['int8'] / 1e9:.1f} ({frac:.0%})" if M == 1 else "-"])
            if preset.startswith("4096") and M == 1:
                checks.append(f"{th} thread(s): GEMV from DRAM {frac:.0%} of the streaming read "
                              f"of the same bytes ({bw / 1e9:.1f} GB/s; target >= 70%), "
                              f"{g['numpy'] / g['int8']:.1f}x numpy fp32 (target >= 3x); "
                              f"{g['bytes'] / g['int8'] / run['read_bandwidth_Bps']:.0%} of the "
                              f"large-buffer read ({run['read_bandwidth_Bps'] / 1e9:.1f} GB/s)")
            if M >= 64:
                checks.append(f"{th} thread(s): GEMM {preset} M={M}: {g['numpy'] / g['int8']:.2f}x numpy "
                              "(target >= 1)" + (f", {vs_torch:.2f}x torch dynamic int8 (target >= 1.2)"
                                                 if vs_torch else ""))
    header = ["shape", "M", "threads", "int8 us", "numpy fp32 us", "torch dyn-int8 us",
              "int8 vs numpy", "int8 vs torch", "int8 GOP/s", "GEMV GB/s (of read bw)"]
    table = _common.markdown(header, rows)
    bws = ", ".join(f"{r['threads']} thread(s) {r['read_bandwidth_Bps'] / 1e9:.1f} GB/s" for r in runs)
    kernel = runs[0]["int8_kernel"]
    text = (f"int8 kernel: {kernel}; streaming read bandwidth ({4 * llc_bytes() >> 20} MB buffer): {bws}\n"
            "(GEMV GB/s column: weight bytes / time, as a fraction of the large-buffer read; for "
            "the DRAM rows, of a read of the same weight copies alternated with the GEMV)\n"
            "(preset rows sum the times of all of the preset's distinct matrices: q/k/v/o, "
            "gate/up, down, head)\n\n" + table + "\n\n" + "\n".join("- " + c for c in checks))
    return text


def main():
    p = _common.parser("bench_int8", __doc__.split("\n")[0])
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    p.add_argument("--child", type=int, default=None, help=argparse_hidden())
    args = p.parse_args()
    if args.child is not None:
        return child(args.child, args.quick)
    runs = []
    for th in [int(t) for t in args.threads.split(",")]:
        env = dict(os.environ, OPENBLAS_NUM_THREADS=str(th), OMP_NUM_THREADS=str(th),
                   MKL_NUM_THREADS=str(th))
        cmd = [sys.executable, __file__, "--child", str(th)] + (["--quick"] if args.quick else [])
        t0 = time.perf_counter()
        out = subprocess.run(cmd, env=env, check=True, stdout=subprocess.PIPE, text=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
        print(f"[{th} thread(s) measured in {time.perf_counter() - t0:.0f} s]", file=sys.stderr)
    text = summarize(runs)
    _common.write(args.out, {"benchmark": "int8", "quick": args.quick, "runs": runs}, text)


def argparse_hidden():
    import argparse
    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
