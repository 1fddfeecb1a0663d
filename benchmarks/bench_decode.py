"""Generation speed and memory: prefill and decode tokens/s, time to first token, peak
RSS, fp32 and int8, against the memory-read roofline.

Every decode step reads all of the weights once, so the floor on a step's time is one
streaming read of that many bytes. The script measures that read in the same run, on
the weights themselves (warm, as they are when decoding, with the same thread count, in
the CPU's widest vector loads: `int8_read_checksum`),
and reports each decode step as a multiple of it. (A step also reads the KV cache, which
this floor leaves out: at the `small` preset's average position here, 2.6 MB of it in
float32, 11% of the fp32 weights; the int8 models' cache, int8 keys and float16 values,
1.0 MB, 17% of their weights.) It also reports the share of a token's time spent in Python:
everything outside native code (the generation loop, streaming the text, crossing into
C++), from the native engine's own clock in the same run. And it reports what a user
sees of a whole generation, its tokens over its time: the prompt's prefill, the decode
steps, and the batched re-prefill each time the context slides (every `context / 2`
tokens; `baby`'s context is 64).

Every figure is the best of three runs after a warm-up run, and every configuration is
measured again in a second round after all the others (the machines are shared and noisy:
a disturbance of a few seconds then spoils one round). Each configuration runs in its own
process, so the peak RSS is that configuration's
alone (import + load + generation). Models have random weights, written to a temporary
directory and deleted. Speed depends on what the weights say only through the sampler
and the text: random weights give a nearly flat next-token distribution, top-p's worst
case (it keeps nearly every token), and bytes that are mostly not ASCII.

    python benchmarks/bench_decode.py                   # baby, small, medium; 1 and 2 threads
    python benchmarks/bench_decode.py --quick           # baby only, a few seconds
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def worker(path, threads, tokens, prompt_len):
    """Runs in a fresh process: measures one (model file, thread count)."""
    t_start = time.perf_counter()
    os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # as `tinylm generate` (cli.py)
    import numpy as np

    import tinylm
    from tinylm import _C
    from tinylm.engine import peak_rss_mb
    _C.set_num_threads(threads)

    model = tinylm.load(path)
    # ASCII, so with the byte tokenizer the prompt is prompt_len tokens with the leading
    # end-of-text token
    prompt = ("The quick brown fox jumps over the lazy dog. " * 64)[:prompt_len - 1]
    first = next(iter(model.generate(prompt, max_tokens=1, temperature=0)), "")
    startup = time.perf_counter() - t_start  # import + load + first token

    # prefill: the prompt in one batched pass (best of 3)
    ids = np.concatenate([[model.tokenizer.eot_id], model.tokenizer.encode(prompt)])
    prefill = []
    for _ in range(3):
        model.engine.reset()
        t0 = time.perf_counter()
        model.engine.prefill(ids)
        prefill.append(time.perf_counter() - t0)
    prefill_s = min(prefill)

    # The roofline: one streaming read over the weights themselves. The whole model file
    # is mapped again and read as 64-bit words: the same page-cache pages as the weights
    # (so the read is as warm as they are and evicts nothing), plus a few KB of header.
    words = np.memmap(path, dtype=np.uint64, mode="r", shape=(os.path.getsize(path) // 8,))
    weight_bytes = sum(getattr(w, "nbytes", 0) for w in model.params.values())

    def read_time():
        t0 = time.perf_counter()
        _C.int8_read_checksum(words)
        return time.perf_counter() - t0

    # Decode as a user runs it: seconds per one-token step of a real generation of
    # exactly `tokens` tokens (going on past the end-of-text token; the batched
    # re-prefills when the context slides are not counted). The native engine clocks its
    # own calls (Stats.native_seconds), so the rest of a step's time, in the same run, is
    # Python's: the generation loop, streaming the text, crossing into C++. Best of 3
    # runs after a warm-up run, each paired with reads of the weights taken around it, as
    # the machine was at that moment (best of those reads too).
    runs = []
    peak_rss = None
    for run in range(4):
        if run == 1:
            # The roofline's second mapping of the file counts its pages in RSS a second
            # time (RSS is per mapping): take the peak before the first read.
            peak_rss = peak_rss_mb()
        reads = [read_time() for _ in range(3)] if run else []
        text = "".join(model.generate(prompt, max_tokens=tokens, temperature=0.8, top_p=0.95,
                                      seed=1, stop_at_eot=False))
        st = model.stats
        if run:
            reads += [read_time() for _ in range(3)]
            runs.append((st.decode_seconds / st.decode_steps, st.native_seconds / st.decode_steps,
                         min(reads), st.first_token_seconds, st.decode_steps, st.slides,
                         st.generated_tokens / st.total_seconds))
    per_token, in_native, read_s, ttft, steps, slides, _ = min(runs)
    # the whole generation as a user sees it: the prompt's prefill, every decode step and
    # every re-prefill when the context slid (best run)
    generation_tok_s = max(run[6] for run in runs)
    paired = [run[0] / run[2] for run in runs]  # each run against the reads around it

    print(json.dumps(dict(
        weights=model.weights, threads=threads, file_mb=os.path.getsize(path) / 1e6,
        weight_mb=weight_bytes / 1e6, prompt_tokens=int(len(ids)),
        prefill_tok_s=len(ids) / prefill_s, ttft_ms=ttft * 1e3, startup_ms=startup * 1e3,
        decode_tok_s=1 / per_token, generation_tok_s=generation_tok_s,
        ms_per_token=per_token * 1e3, decode_steps=steps, slides=slides,
        native_ms_per_token=in_native * 1e3, read_ms=read_s * 1e3,
        x_roofline=per_token / read_s, x_roofline_paired=paired,
        python_share=1 - in_native / per_token, peak_rss_mb=peak_rss,
        isa=_C.active_isa(), gemv=_C.engine_gemv_path(), int8_kernel=_C.engine_gemv_int8_path(),
        first_piece=first, sample=text[:40])))


def make_models(presets, directory):
    from tinylm.config import preset
    from tinylm.model import init_params
    from tinylm.modelfile import save_model
    from tinylm.quant import quantize_file
    from tinylm.tokenizer import ByteTokenizer
    files = {}
    for name in presets:
        cfg = preset(name)
        fp32, int8 = os.path.join(directory, f"{name}.safetensors"), os.path.join(directory, f"{name}-int8.safetensors")
        save_model(fp32, cfg, init_params(cfg, seed=0), ByteTokenizer())
        quantize_file(fp32, int8)
        files[name] = {"fp32": fp32, "int8": int8}
    return files


def best_of_rounds(rows):
    """One configuration measured in several rounds (the whole set of configurations
    again, so that a disturbance of a few seconds hits one round): the round with the
    fastest decode, against the fastest weight read of any round (the strictest
    roofline); also the median over all runs of each run against the reads taken around
    it (the machine as it was at that moment: fast and slow spells of a few seconds
    cancel); the best prefill and first token, the largest peak RSS."""
    best = dict(min(rows, key=lambda r: r["ms_per_token"]))
    best["read_ms"] = min(r["read_ms"] for r in rows)
    best["x_roofline"] = best["ms_per_token"] / best["read_ms"]
    best["prefill_tok_s"] = max(r["prefill_tok_s"] for r in rows)
    best["generation_tok_s"] = max(r["generation_tok_s"] for r in rows)
    best["ttft_ms"] = min(r["ttft_ms"] for r in rows)
    best["startup_ms"] = min(r["startup_ms"] for r in rows)
    best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in rows)
    best["x_roofline_paired"] = statistics.median(x for r in rows for x in r["x_roofline_paired"])
    best["rounds"] = len(rows)
    return best


def run_worker(path, threads, tokens, prompt_len):
    # the worker imports tinylm as this process does (the installed package, or PYTHONPATH)
    out = subprocess.run([sys.executable, __file__, "--worker", path, str(threads), str(tokens),
                          str(prompt_len)], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"worker failed for {path} ({threads} threads):\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        path, threads, tokens, prompt_len = sys.argv[2], *map(int, sys.argv[3:6])
        return worker(path, threads, tokens, prompt_len)
    import _common as common
    p = common.parser("bench_decode", __doc__.split("\n")[0])
    p.add_argument("--presets", default="baby,small,medium")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    p.add_argument("--tokens", type=int, default=256, help="tokens to generate")
    p.add_argument("--prompt", type=int, default=128, help="prompt tokens (at most the context)")
    p.add_argument("--rounds", type=int, default=2, help="times every configuration is measured")
    args = p.parse_args()
    if args.quick:
        args.presets, args.threads, args.tokens, args.rounds = "baby", "1", 32, 1
    presets = args.presets.split(",")
    thread_counts = [int(t) for t in args.threads.split(",")]

    from tinylm.config import preset
    measured = {}  # (preset, threads, weights) -> one row per round
    with tempfile.TemporaryDirectory() as tmp:
        files = make_models(presets, tmp)
        for round_ in range(args.rounds):
            for name in presets:
                prompt_len = min(args.prompt, preset(name).context)
                for threads in thread_counts:
                    for weights in ("fp32", "int8"):
                        r = run_worker(files[name][weights], threads, args.tokens, prompt_len)
                        r["preset"] = name
                        measured.setdefault((name, threads, weights), []).append(r)
                        print(f"  round {round_ + 1}: {name} {weights} {threads}t: "
                              f"{r['decode_tok_s']:.0f} tok/s, {r['x_roofline']:.2f}x roofline",
                              file=sys.stderr)
    rows = [best_of_rounds(rs) for rs in measured.values()]

    speedups = []
    for name in presets:
        for threads in thread_counts:
            by = {r["weights"]: r for r in rows if r["preset"] == name and r["threads"] == threads}
            speedups.append(dict(preset=name, threads=threads,
                                 int8_over_fp32=by["fp32"]["ms_per_token"] / by["int8"]["ms_per_token"]))
    header = ["preset", "weights", "threads", "file MB", "prefill tok/s", "decode tok/s",
              "generation tok/s",
              "ms/token", "weight read ms", "x roofline", "x roofline (paired median)", "TTFT ms", "startup ms", "Python %",
              "peak RSS MB", "RSS - file MB"]
    table = [[r["preset"], r["weights"], r["threads"], f"{r['file_mb']:.1f}",
              f"{r['prefill_tok_s']:.0f}", f"{r['decode_tok_s']:.0f}", f"{r['generation_tok_s']:.0f}",
              f"{r['ms_per_token']:.3f}",
              f"{r['read_ms']:.3f}", f"{r['x_roofline']:.2f}", f"{r['x_roofline_paired']:.2f}",
              f"{r['ttft_ms']:.1f}",
              f"{r['startup_ms']:.0f}", f"{100 * r['python_share']:.1f}", f"{r['peak_rss_mb']:.1f}",
              f"{r['peak_rss_mb'] - r['file_mb']:.1f}"] for r in rows]
    md = common.markdown(header, table)
    md += "\n\n" + common.markdown(
        ["preset", "threads", "int8 decode / fp32 decode"],
        [[s["preset"], s["threads"], f"{s['int8_over_fp32']:.2f}x"] for s in speedups])
    md += (f"\n\n{args.tokens} tokens generated (temperature 0.8, top-p 0.95) after a "
           f"{args.prompt}-token prompt (capped at the context); generation tok/s: all "
           f"of it, prefills when the context slid included; each configuration measured "
           f"in {args.rounds} round{'s' * (args.rounds != 1)} of 3 runs, decode figures the best run, the weight read the "
           f"best of the warm reads taken around the runs (18 a round), with the same threads; "
           f"paired: the median of each run's step over the best of the 6 reads around it; "
           f"ISA {rows[0]['isa']}, fp32 GEMV {rows[0]['gemv']}, int8 GEMV {rows[0]['int8_kernel']}.")
    common.write(args.out, {"tokens": args.tokens, "rounds": args.rounds, "rows": rows,
                            "speedups": speedups}, md)


if __name__ == "__main__":
    main()
