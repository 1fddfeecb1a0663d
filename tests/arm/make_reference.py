#!/usr/bin/env python3
"""Writes the x86 reference that tests/test_cross_machine.py checks an emulated ARM run
against (tests/arm/run.sh calls this on the host, then passes the folder to the emulated
pytest as TINYLM_ARM_REFERENCE).

  python tests/arm/make_reference.py OUTDIR

OUTDIR gets:
  model.safetensors       a tiny model trained for a few seeded steps on a built-in corpus
  model-int8.safetensors  its `tinylm quantize` copy
  reference.npz           the fixed token sequence `ids` and, for each format, the logits
                          at every position from the batched prefill (`<fmt>_prefill`) and
                          from one native decode step per token (`<fmt>_decode`)
  reference.json          the fixed prompt, each format's greedy text and token ids, the
                          smallest top-1/top-2 logit gap along each greedy path (a small gap
                          is a near-tie that rounding could flip), and where it was made
Runs the tinylm importable from the current environment; run it from outside the source
tree to use an installed package.
"""
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

PROMPT = "the cat "
GREEDY_TOKENS = 48
SHAPE = ["--d-model", "64", "--n-layer", "2", "--n-head", "4", "--n-kv-head", "2",
         "--d-ff", "96", "--context", "64"]
# A sequence that mixes ASCII, multi-byte UTF-8 and a repeat, one token short of the context.
TEXT = "the cat sat on the mat; naïve €uro — the cat sat on the "


def tinylm(*args, cwd):
    proc = subprocess.run([sys.executable, "-m", "tinylm", *map(str, args)], cwd=cwd,
                          env=dict(os.environ, TINYLM_CACHE=str(Path(cwd) / "cache")),
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"tinylm {' '.join(map(str, args))} failed:\n{proc.stderr}")
    return proc.stdout


def train(out: Path):
    """A model trained for 60 seeded steps: real, structured weights, made in seconds."""
    with tempfile.TemporaryDirectory() as work:
        corpus = Path(work) / "corpus.txt"
        rng = np.random.default_rng(3)
        phrases = ["the cat sat", "on the mat", "a dog ran", "to the sea", "naïve €uro"]
        corpus.write_text("\n".join(" ".join(rng.choice(phrases, 3)) for _ in range(600)),
                          encoding="utf-8")
        tinylm("train", "--data", corpus, "--out", Path(work) / "run", *SHAPE, "--steps", 60,
               "--batch-size", 8, "--lr", "1e-2", "--warmup", 5, "--eval-interval", 60,
               "--eval-tokens", 512, "--seed", 5, cwd=work)
        os.replace(Path(work) / "run" / "model.safetensors", out / "model.safetensors")
    tinylm("quantize", out / "model.safetensors", out / "model-int8.safetensors", cwd=out)


def decode_logits(model, ids):
    """Logits at every position from the native engine, one decode step per token."""
    eng = model.engine
    eng.reset()
    rows = [eng.prefill(ids[:1])]
    rows += [np.array(eng.step(int(t))) for t in ids[1:]]
    return np.stack(rows).astype(np.float32)


def greedy(model, prompt, n):
    """Greedy token ids after `prompt` and the smallest top-1/top-2 gap along the way."""
    tok = model.tokenizer
    history = [tok.eot_id, *tok.encode(prompt).tolist()]
    eng = model.engine
    eng.reset()
    logits = eng.prefill(history)
    out, gap = [], np.inf
    for _ in range(n):
        top2 = np.sort(logits)[-2:]
        gap = min(gap, float(top2[1] - top2[0]))
        token = int(np.argmax(logits))
        out.append(token)
        if token == tok.eot_id:
            break
        logits = eng.step(token)
    return out, gap


def main(argv):
    if len(argv) != 1:
        sys.exit(__doc__)
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    train(out)
    import tinylm
    from tinylm import _C
    from tinylm.engine import load

    arrays, info = {}, {"prompt": PROMPT, "greedy_tokens": GREEDY_TOKENS, "text": TEXT,
                        "made_on": f"{platform.machine()} {_C.active_isa()}",
                        "tinylm": tinylm.__version__}
    for fmt, name in (("fp32", "model.safetensors"), ("int8", "model-int8.safetensors")):
        model = load(str(out / name))
        ids = np.concatenate([[model.tokenizer.eot_id], model.tokenizer.encode(TEXT)]).astype(np.int64)
        arrays["ids"] = ids
        arrays[f"{fmt}_prefill"] = model.logits(ids)
        arrays[f"{fmt}_decode"] = decode_logits(model, ids)
        text = "".join(model.generate(PROMPT, max_tokens=GREEDY_TOKENS, temperature=0))
        ids_greedy, gap = greedy(model, PROMPT, GREEDY_TOKENS)
        info[fmt] = {"greedy_text": text, "greedy_ids": ids_greedy, "min_top2_gap": gap}
    np.savez(out / "reference.npz", **arrays)
    (out / "reference.json").write_text(json.dumps(info, indent=1, ensure_ascii=False))
    print(f"reference in {out}: {len(arrays['ids'])} positions, made on {info['made_on']}; "
          f"greedy fp32 {info['fp32']['greedy_text']!r} (min gap {info['fp32']['min_top2_gap']:.3g}), "
          f"int8 {info['int8']['greedy_text']!r} (min gap {info['int8']['min_top2_gap']:.3g})")


if __name__ == "__main__":
    main(sys.argv[1:])
