"""The whole life of a model through the installed command line, on whatever CPU this runs
on (tests/arm/run.sh runs it on emulated Raspberry Pi CPUs): train a few steps, quantize
to int8, describe both files, and generate greedily from each with the native and the
numpy engines. Tiny shapes, so that it stays quick under emulation."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

SHAPE = ["--d-model", "32", "--n-layer", "2", "--n-head", "4", "--n-kv-head", "2",
         "--d-ff", "64", "--context", "32"]
STEPS = 40


def tinylm(*args, cwd):
    """`python -m tinylm ARGS` from `cwd` (outside the source tree, so the installed package
    runs); fails the test with tinylm's stderr when it exits non-zero."""
    env = dict(os.environ, TINYLM_CACHE=str(cwd / "cache"), OPENBLAS_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "tinylm", *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True)
    assert proc.returncode == 0, f"tinylm {' '.join(map(str, args))} failed:\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run directory trained for a few steps on a corpus with obvious structure."""
    work = tmp_path_factory.mktemp("roundtrip")
    corpus = work / "corpus.txt"
    rng = np.random.default_rng(7)
    words = ["the cat sat", "on the mat", "a dog ran", "to the sea"]
    corpus.write_text("\n".join(" ".join(rng.choice(words, 3)) for _ in range(400)), encoding="utf-8")
    out = work / "run"
    tinylm("train", "--data", corpus, "--out", out, *SHAPE, "--steps", STEPS, "--batch-size", 4,
           "--lr", "1e-2", "--warmup", 5, "--eval-interval", STEPS // 2, "--eval-tokens", 256,
           "--seed", 11, cwd=work)
    return work, out


def test_training_learns(trained):
    _, out = trained
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in logged if "loss" in m]
    assert len(losses) == STEPS
    # bytes start near ln(257) = 5.55 nats; a few steps on this corpus must get well below
    assert np.mean(losses[-5:]) < losses[0] - 1.0, losses


def test_quantize_then_generate_from_both_formats(trained, capsys):
    from tinylm.cli import main
    from tinylm.engine import load
    work, out = trained
    fp32 = out / "model.safetensors"
    int8 = work / "model-int8.safetensors"
    said = tinylm("quantize", fp32, int8, cwd=work)
    assert str(int8) in said and int8.exists()
    assert int8.stat().st_size < fp32.stat().st_size
    assert main(["info", str(int8)]) in (0, None)
    info8 = capsys.readouterr().out
    assert "int8" in info8 and "2 layers, d_model 32" in info8
    assert "kv cache    int8 keys, float16 values" in info8

    # The command line (a subprocess: what a user runs) against the numpy reference engine
    # in this process, greedy so that the text is determined by the logits.
    for model in (fp32, int8):
        text = tinylm("generate", model, "--prompt", "the ", "--temperature", 0,
                      "--max-tokens", 24, cwd=work)[:-1]  # generate ends with a newline
        reference = "".join(load(str(model), engine="numpy").generate(
            "the ", max_tokens=24, temperature=0))
        assert text == reference, model.name
        assert 1 <= len(text.encode()) <= 24
        # the model has learnt the corpus's alphabet: greedy text is made of its characters
        assert set(text) <= set("the cat sat on mat a dog ran to sea\n"), repr(text)
