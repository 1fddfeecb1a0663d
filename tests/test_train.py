"""Training end to end through the command line: learning, reproducibility, exact resume
after SIGKILL, fine-tuning, recipes, and the one-line errors for bad input."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tinylm.checkpoint import load_safetensors

# A model small enough that a step takes milliseconds.
SHAPE = ["--d-model", "32", "--n-layer", "1", "--n-head", "2", "--d-ff", "48", "--context", "16"]


def tinylm(*args, check=True, cache):
    """Runs the installed command line (from outside the source tree, so that the
    installed package is what runs) with its own token cache."""
    env = dict(os.environ, TINYLM_CACHE=cache, OPENBLAS_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "tinylm", *map(str, args)], env=env,
                          cwd=os.path.dirname(cache), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"tinylm {' '.join(map(str, args))} failed:\n{proc.stderr}")
    return proc


@pytest.fixture
def corpus(tmp_path):
    """A small corpus with learnable structure: repeated lines of a few words."""
    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "é", "€uro", "\t", "naïve"]
    lines = [" ".join(rng.choice(words, 6)) for _ in range(1500)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@pytest.fixture
def cache(tmp_path):
    return str(tmp_path / "cache")


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights(run_dir):
    tensors, _ = load_safetensors(run_dir / "model.safetensors")
    return {k: np.array(v) for k, v in tensors.items()}


def train(corpus, out, cache, *extra):
    return tinylm("train", "--data", corpus, "--out", out, *SHAPE, "--batch-size", 4,
                  "--eval-interval", 20, "--eval-tokens", 512, "--seed", 3, *extra, cache=cache)


@pytest.mark.slow
def test_training_lowers_validation_loss_and_writes_a_model(corpus, tmp_path, cache):
    out = tmp_path / "run"
    proc = train(corpus, out, cache, "--steps", 60, "--lr", 1e-2)
    vals = [m["val_loss"] for m in metrics(out) if "val_loss" in m]
    assert vals[-1] < vals[0] - 1.0, vals
    assert "parameters" in proc.stdout and "bits/byte" in proc.stdout
    assert "model:" in proc.stdout and "parameters" in proc.stdout.splitlines()[0]
    assert (out / "model.safetensors").exists()
    ev = tinylm("eval", out / "model.safetensors", "--data", corpus, cache=cache)
    assert "nats/token" in ev.stdout and "bits/byte" in ev.stdout


def test_same_seed_gives_the_same_loss_curve(corpus, tmp_path, cache):
    a, b = tmp_path / "a", tmp_path / "b"
    train(corpus, a, cache, "--steps", 15)
    train(corpus, b, cache, "--steps", 15)
    la = [m["loss"] for m in metrics(a) if "loss" in m]
    lb = [m["loss"] for m in metrics(b) if "loss" in m]
    assert len(la) == 15 and la == lb


@pytest.mark.slow
def test_resume_after_sigkill_gives_the_same_weights(corpus, tmp_path, cache):
    steps = ["--steps", 400, "--checkpoint-interval", 50]
    full = tmp_path / "full"
    train(corpus, full, cache, *steps)

    killed = tmp_path / "killed"
    env = dict(os.environ, TINYLM_CACHE=cache, OPENBLAS_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinylm", "train", "--data", str(corpus), "--out", str(killed),
         *SHAPE, "--batch-size", "4", "--eval-interval", "20", "--eval-tokens", "512",
         "--seed", "3", *map(str, steps)], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill between the first and the last checkpoint
        done = [m["step"] for m in metrics(killed)] if (killed / "metrics.jsonl").exists() else []
        if (killed / "checkpoint.safetensors").exists() and done and max(done) > 70:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert max(m["step"] for m in metrics(killed)) < 400

    tinylm("train", "--resume", killed, cache=cache)
    w_full, w_resumed = weights(full), weights(killed)
    assert w_full.keys() == w_resumed.keys()
    for name in w_full:
        np.testing.assert_array_equal(w_full[name], w_resumed[name], err_msg=name)
    steps_logged = [m["step"] for m in metrics(killed) if "loss" in m]
    assert steps_logged == list(range(1, 401))  # each step once, none lost


@pytest.mark.slow
def test_finetune_from_a_model(corpus, tmp_path, cache):
    base = tmp_path / "base"
    train(corpus, base, cache, "--steps", 5)
    other = tmp_path / "domain.txt"
    other.write_text("zeta eta theta\n" * 400)
    tuned = tmp_path / "tuned"
    tinylm("train", "--init", base / "model.safetensors", "--data", other, "--out", tuned,
           "--steps", 5, "--batch-size", 4, "--eval-tokens", 512, cache=cache)
    # it starts from the base model: its first evaluation is the base model's on the new data
    first = next(m["val_loss"] for m in metrics(tuned) if "val_loss" in m)
    ev = tinylm("eval", base / "model.safetensors", "--data", other, "--eval-tokens", 512,
                cache=cache)
    assert f"validation loss {first:.4f}" in ev.stdout
    w_base, w_tuned = weights(base), weights(tuned)
    assert w_base.keys() == w_tuned.keys()
    assert any(not np.array_equal(w_base[k], w_tuned[k]) for k in w_base)  # and it trained
    refused = tinylm("train", "--init", base / "model.safetensors", "--data", other,
                     "--n-layer", 3, "--out", tmp_path / "x", check=False, cache=cache)
    assert refused.returncode == 2 and "--n-layer cannot be combined with --init" in refused.stderr


@pytest.mark.slow
def test_recipe_is_read_and_flags_override_it(corpus, tmp_path, cache):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f'data = "{corpus}"\nsteps = 7\nd-model = 32\nn_layer = 1\nn_head = 2\n'
                      'd_ff = 48\ncontext = 16\nbatch_size = 4\neval_interval = 100\n')
    out = tmp_path / "r"
    proc = tinylm("train", "--config", recipe, "--steps", 4, "--out", out, cache=cache)
    assert max(m["step"] for m in metrics(out)) == 4  # the flag overrode the recipe's 7
    assert "d_model 32" in proc.stdout and "context 16" in proc.stdout
    assert "64 tokens per step" in proc.stdout  # batch_size 4 x context 16, from the recipe


NEEDS_MEMINFO = pytest.mark.skipif(not os.path.exists("/proc/meminfo"),
                                   reason="the memory check needs Linux's /proc/meminfo")


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--data", "{tmp}/missing.txt"], "does not exist"),
    (["--data", "{tmp}/empty.txt"], "is empty"),
    (["--data", "{tmp}/short.txt"], "corpus is too short"),
    (["--data", "{tmp}/short.txt", "--d-model", "30", "--n-head", "4"], "divisible by n_head"),
    (["--resume", "{tmp}"], "no run to resume"),
    (["--config", "{tmp}/bad.toml"], "unknown option"),
    (["--data", "/dev/null"], "neither a file nor a folder"),
    (["--data", "{tmp}/short.txt", "--out", "{tmp}/has_model"], "already holds a model.safetensors"),
    (["--data", "{tmp}/short.txt", "--lr", "inf"], "a finite lr > 0, got lr=inf"),
    (["--data", "{tmp}/short.txt", "--weight-decay", "inf"], "weight-decay must be finite"),
    (["--data", "{tmp}/short.txt", "--seed", "-1"], "seed must be a non-negative integer, got -1"),
    # refused before the model is built (the first ran until the kernel killed it)
    pytest.param(["--data", "{tmp}/short.txt", "--batch-size", "100000000"], "could fit; --grad-accum keeps",
                 marks=NEEDS_MEMINFO),
    pytest.param(["--data", "{tmp}/short.txt", "--d-model", "65536", "--n-layer", "512", "--n-head", "1"],
                 "choose a smaller model", marks=NEEDS_MEMINFO),
])
def test_bad_input_gets_a_one_line_error(tmp_path, cache, args, message):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "short.txt").write_bytes(b"abc" * 20)
    (tmp_path / "bad.toml").write_text("stepz = 3\n")
    (tmp_path / "has_model").mkdir()
    (tmp_path / "has_model" / "model.safetensors").write_bytes(b"a model of the user's")
    proc = tinylm("train", *[a.format(tmp=tmp_path) for a in args], "--steps", "2",
                  check=False, cache=cache) if "--resume" not in args else tinylm(
        "train", *[a.format(tmp=tmp_path) for a in args], check=False, cache=cache)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_truncated_checkpoint_is_refused_clearly(corpus, tmp_path, cache):
    out = tmp_path / "run"
    train(corpus, out, cache, "--steps", 2)
    ckpt = out / "checkpoint.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    proc = tinylm("train", "--resume", out, check=False, cache=cache)
    assert proc.returncode == 2 and "cannot resume" in proc.stderr and "Traceback" not in proc.stderr
    model = out / "model.safetensors"
    model.write_bytes(model.read_bytes()[:-10])
    proc = tinylm("eval", model, "--data", corpus, check=False, cache=cache)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_a_checkpoint_whose_vocabularies_disagree_is_refused_on_resume(corpus, tmp_path, cache):
    """--resume read the config and the tokenizer itself, past the model files' check."""
    out = tmp_path / "run"
    train(corpus, out, cache, "--steps", 2)
    ckpt = out / "checkpoint.safetensors"
    raw = ckpt.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = raw[8:8 + n].replace(b'\\"vocab_size\\": 257', b'\\"vocab_size\\": 300')
    assert len(header) == n and header != raw[8:8 + n]  # same length: the data stays put
    ckpt.write_bytes(raw[:8] + header + raw[8 + n:])
    proc = tinylm("train", "--resume", out, check=False, cache=cache)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "vocab_size is 300 but its tokenizer has 257 tokens" in proc.stderr


@pytest.mark.slow
def test_binary_corpus_and_stdin(tmp_path, cache):
    data = bytes(np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8))
    out = tmp_path / "bin"
    proc = subprocess.run([sys.executable, "-m", "tinylm", "train", "--data", "-", "--out", str(out),
                           *SHAPE, "--steps", "3", "--batch-size", "2"], input=data,
                          capture_output=True, cwd=tmp_path, env=dict(os.environ, TINYLM_CACHE=cache))
    assert proc.returncode == 0, proc.stderr.decode()
    assert (out / "model.safetensors").exists()


@pytest.mark.slow
def test_a_run_on_standard_input_keeps_its_corpus_and_resumes_from_it(corpus, tmp_path, cache):
    """Standard input can be read once: the run keeps a copy, which --resume reads. The
    piped run, resumed, ends where the same run on the file does."""
    piped, from_file = tmp_path / "piped", tmp_path / "file"
    proc = piped_train("--out", piped, *SHAPE, "--batch-size", 4, "--eval-interval", 20,
                       "--eval-tokens", 512, "--seed", 3, "--steps", 5, text=corpus.read_bytes(),
                       cache=cache)
    assert proc.returncode == 0, proc.stderr.decode()
    assert (piped / "stdin-corpus").read_bytes() == corpus.read_bytes()
    train(corpus, from_file, cache, "--steps", 5)
    for run in (piped, from_file):
        tinylm("train", "--resume", run, "--steps", 10, cache=cache)
    w_piped, w_file = weights(piped), weights(from_file)
    for name in w_file:
        np.testing.assert_array_equal(w_piped[name], w_file[name], err_msg=name)

    (piped / "stdin-corpus").unlink()
    gone = tinylm("train", "--resume", piped, "--steps", 15, check=False, cache=cache)
    assert gone.returncode == 2 and "Traceback" not in gone.stderr
    assert "stdin-corpus, the copy a run keeps of it, is not there" in gone.stderr
    again = piped_train("--resume", piped, "--steps", 15, text=corpus.read_bytes(), cache=cache)
    assert again.returncode == 0, again.stderr.decode()
    assert sorted(p.name for p in piped.iterdir()) == [
        "checkpoint.safetensors", "metrics.jsonl", "model.safetensors", "stdin-corpus"]

    empty = piped_train("--out", tmp_path / "empty", *SHAPE, text=b"", cache=cache)
    assert empty.returncode == 2 and b"standard input is empty" in empty.stderr
    too_short = piped_train("--out", tmp_path / "short", *SHAPE, text=b"0123456789", cache=cache)
    assert too_short.returncode == 2 and b"corpus is too short" in too_short.stderr
    assert not (tmp_path / "empty").exists() and not (tmp_path / "short").exists()


def piped_train(*args, text, cache):
    """tinylm train --data -, `text` piped in."""
    return subprocess.run([sys.executable, "-m", "tinylm", "train", "--data", "-", *map(str, args)],
                          input=text, capture_output=True, cwd=os.path.dirname(cache),
                          env=dict(os.environ, TINYLM_CACHE=cache, OPENBLAS_NUM_THREADS="1"))


@pytest.mark.slow
def test_sentencepiece_tokenizer_is_trained_and_stored_in_the_model(corpus, tmp_path, cache):
    out = tmp_path / "sp"
    train(corpus, out, cache, "--steps", 3, "--tokenizer", "sentencepiece", "--vocab-size", 300)
    from tinylm.modelfile import load_model
    cfg, _, tokenizer = load_model(out / "model.safetensors")
    assert tokenizer.name == "sentencepiece" and cfg.vocab_size == tokenizer.vocab_size == 300
    text = corpus.read_text(encoding="utf-8")[:500]
    assert tokenizer.decode(tokenizer.encode(text)) == text
    assert len(tokenizer.encode(text)) < len(text.encode())  # it learned some merges
    ev = tinylm("eval", out / "model.safetensors", "--data", corpus, cache=cache)
    assert "bits/byte" in ev.stdout
    bad = tinylm("train", "--data", corpus, "--out", tmp_path / "x", "--tokenizer",
                 "sentencepiece", "--vocab-size", 100, check=False, cache=cache)
    assert bad.returncode == 2 and "too small" in bad.stderr


def test_the_memory_estimate_counts_the_tape_forward_keeps():
    """training_memory's activations are exactly the float arrays of forward's tape (less
    the RoPE tables, which do not grow with the batch), owners counted once."""
    from tinylm.config import ModelConfig
    from tinylm.model import forward, init_params
    from tinylm.trainer import training_memory
    cfg = ModelConfig(d_model=64, n_layer=2, n_head=4, n_kv_head=2, d_ff=96, context=32)
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (8, cfg.context))
    _, tape = forward(init_params(cfg, seed=0), cfg, ids, ids)
    owners = {}

    def walk(x):
        if isinstance(x, np.ndarray) and x.dtype.kind == "f":
            while isinstance(x.base, np.ndarray):
                x = x.base
            owners[id(x)] = x
        elif isinstance(x, (list, tuple)):
            for y in x:
                walk(y)

    walk([v for k, v in tape.items() if k not in ("cos", "sin")])
    assert training_memory(cfg, batch_size=8)[1] == sum(a.nbytes for a in owners.values())
    assert training_memory(cfg, 8)[0] == 16 * cfg.num_params()  # weights, grads, two moments
    assert training_memory(cfg, 8, grad_accum=2)[0] == 20 * cfg.num_params()  # and a sum


def test_a_run_that_cannot_fit_is_refused_with_what_would_fit():
    from tinylm.config import preset
    from tinylm.errors import TinylmError
    from tinylm.trainer import TrainConfig, available_memory, check_memory, training_memory
    cfg, tcfg = preset("small"), TrainConfig(batch_size=16)
    model, batch = training_memory(cfg, 16)
    sequence = batch // 16
    check_memory(cfg, tcfg, available=model + batch)  # just fits
    check_memory(cfg, TrainConfig(batch_size=10**9), available=None)  # not known: no check
    if os.path.exists("/proc/meminfo"):  # a machine that runs this suite has room for tiny
        assert available_memory() > training_memory(preset("tiny"), 16)[1]
    with pytest.raises(TinylmError, match="lower --batch-size .at most 15 could fit; --grad-accum"):
        check_memory(cfg, tcfg, available=model + batch - 1)
    with pytest.raises(TinylmError, match="lower --context .a sequence of 256 tokens needs"):
        check_memory(cfg, tcfg, available=model + sequence - 1)
    with pytest.raises(TinylmError, match="choose a smaller model"):
        check_memory(cfg, tcfg, available=model // 2)


def test_tokenizing_a_large_corpus_shows_its_progress(capsys):
    from tinylm.cli import tokenizing_progress

    def bar_lines():
        return [line.split(" █")[0].split(" ░")[0] for line in capsys.readouterr().err.splitlines()]

    with tokenizing_progress(quiet_seconds=0) as report:
        for done in (10**7, 3 * 10**7, 4 * 10**7, 5 * 10**7):  # the last: a file grew
            report(done, 4 * 10**7)
    assert bar_lines() == ["tokenizing 10 MB of 40 MB", "tokenizing 30 MB of 40 MB",
                           "tokenizing 40 MB of 40 MB"]
    with tokenizing_progress(quiet_seconds=0) as report:  # the cache failed: again in memory
        report(3 * 10**7, 4 * 10**7)
        report(10**7, 4 * 10**7)
    assert bar_lines() == ["tokenizing 30 MB of 40 MB", "tokenizing 10 MB of 40 MB"]
    with tokenizing_progress(quiet_seconds=60) as report:  # tokenized in a moment: no bar
        report(10**7, 10**7)
    assert capsys.readouterr().err == ""


def test_a_progress_bar_on_a_terminal_ends_its_line_however_it_ends(monkeypatch):
    import io

    from tinylm.cli import tokenizing_progress
    from tinylm.progress import Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    out = Terminal()
    bar = Progress(100, stream=out)
    bar.update(30)
    bar.close()
    bar.close()
    assert out.getvalue().startswith("\rstep  30/100") and out.getvalue().count("\n") == 1
    monkeypatch.setattr(sys, "stderr", Terminal())
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C while tokenizing
        with tokenizing_progress(quiet_seconds=0) as report:
            report(10**6, 4 * 10**6)
            raise KeyboardInterrupt
    assert sys.stderr.getvalue().startswith("\rtokenizing 1 MB of 4 MB")
    assert sys.stderr.getvalue().endswith("\n")
    monkeypatch.setattr(sys, "stderr", Terminal())
    with tokenizing_progress(quiet_seconds=0) as bar:  # a warning while the bar is shown
        bar(10**6, 4 * 10**6)
        bar.message("tinylm: warning: cannot write the token cache")
    first, rest = sys.stderr.getvalue().split("\n", 1)  # the bar rubbed out, not added to
    assert first.startswith("\rtokenizing 1 MB of 4 MB") and rest == ""
    assert first.split("\r")[-1] == "tinylm: warning: cannot write the token cache"


def test_a_run_that_fails_writing_its_model_can_be_resumed(corpus, tmp_path, monkeypatch, cache):
    """The model was written before the checkpoint: a run whose first checkpoint failed (a
    full disk) left a model file alone, which neither --resume (no checkpoint) nor a new
    run in the folder (a model it would replace) would take. And a finished run resumed
    writes its model, in case it was killed between the two files."""
    import errno

    from tinylm import data, trainer
    from tinylm.config import ModelConfig
    from tinylm.errors import TinylmError
    from tinylm.tokenizer import ByteTokenizer
    monkeypatch.setenv("TINYLM_CACHE", cache)
    cfg = ModelConfig(d_model=32, n_layer=1, n_head=2, n_kv_head=2, d_ff=48, context=16)
    tcfg = trainer.TrainConfig(data=str(corpus), steps=4, batch_size=2, checkpoint_interval=2,
                               eval_interval=2, eval_tokens=64)
    tok = ByteTokenizer()
    split = data.split_tokens(data.load_tokens(str(corpus), tok), tok, cfg.context, 0.05)
    out = tmp_path / "run"

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(trainer, "save_model", disk_full)
        with pytest.raises(OSError):
            trainer.Run.create(out, cfg, tcfg, tok, log=lambda *a: None).train(split)
    assert not (out / "model.safetensors").exists()
    trainer.Run.resume(out, log=lambda *a: None).train(split)
    finished = weights(out)
    (out / "model.safetensors").unlink()
    with pytest.raises(TinylmError, match="finished at step 4"):
        trainer.Run.resume(out, log=lambda *a: None)
    assert weights(out).keys() == finished.keys()
    for name, w in finished.items():
        np.testing.assert_array_equal(weights(out)[name], w)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_run_stopped_by_a_signal_ends_with_its_status(corpus, tmp_path, cache, sig):
    """Ctrl-C or SIGTERM stops training after its step with a checkpoint saved, and the
    command ends with 128 + the signal (it ended with 0, printing "done" and the first
    evaluation's loss as the run's): `tinylm train ... && tinylm quantize ...` stops."""
    out = tmp_path / "run"
    env = dict(os.environ, TINYLM_CACHE=cache, OPENBLAS_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinylm", "train", "--data", str(corpus), "--out", str(out),
         *SHAPE, "--batch-size", "4", "--steps", "100000", "--eval-tokens", "512"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (
            (out / "metrics.jsonl").exists() and any("loss" in m for m in metrics(out))):
        time.sleep(0.05)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, stderr
    assert "interrupted at step" in stdout and "done:" not in stdout
    assert (out / "checkpoint.safetensors").exists()


def test_a_run_whose_output_closes_does_not_end_as_a_success(corpus, tmp_path, cache,
                                                             monkeypatch):
    """`tinylm train | head -1` ended with status 0 whatever had become of the run: now
    an error if the run stopped (here the reader is gone before its first line), and a
    note naming the run if it finished (its summary is what could not be written)."""
    env = dict(os.environ, TINYLM_CACHE=cache, OPENBLAS_NUM_THREADS="1")
    args = [sys.executable, "-m", "tinylm", "train", "--data", str(corpus), *SHAPE,
            "--batch-size", "4", "--steps", "3", "--eval-tokens", "512"]
    reader, writer = os.pipe()
    os.close(reader)  # gone before the run writes anything
    proc = subprocess.run([*args, "--out", str(tmp_path / "a")], env=env, cwd=tmp_path,
                          stdout=writer, stderr=subprocess.PIPE, text=True, timeout=120)
    os.close(writer)
    assert proc.returncode == 2 and "standard output closed" in proc.stderr, proc.stderr
    assert "so the run stopped" in proc.stderr and "Traceback" not in proc.stderr

    import contextlib
    import io

    from tinylm import cli

    class ReaderLeavesBeforeTheSummary(io.StringIO):
        def write(self, text):
            if text.startswith("done:"):
                raise BrokenPipeError
            return super().write(text)

        def fileno(self):  # what main() points at /dev/null, as it does for a real pipe
            return 1

    err, saved = io.StringIO(), os.dup(1)
    monkeypatch.setenv("TINYLM_CACHE", cache)
    try:
        with contextlib.redirect_stdout(ReaderLeavesBeforeTheSummary()), \
                contextlib.redirect_stderr(err):
            code = cli.main(["train", "--data", str(corpus), *SHAPE, "--batch-size", "4",
                             "--steps", "3", "--eval-tokens", "512", "--out", str(tmp_path / "b")])
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    assert code == 0 and "the run finished" in err.getvalue()
    assert (tmp_path / "b" / "model.safetensors").exists()


def read_all(leader):
    """Everything written to a pseudo-terminal whose other side is closed: one read may
    return only the first part (it did under emulated ARM), and a drained leader raises
    EIO."""
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 1 << 16)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def test_a_progress_bar_fits_its_terminal():
    """A training bar was 93 characters whatever the terminal: on an 80-column one each
    redraw wrapped, and \r went back to the second line only, filling the screen. The
    width is the bar's own terminal's (stderr's: stdout may be a file)."""
    import fcntl
    import pty
    import struct
    import termios

    from tinylm.progress import Progress
    for columns in (80, 60, 30, 200):
        leader, follower = pty.openpty()
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
        with open(follower, "w", encoding="utf-8", closefd=True) as terminal:
            bar = Progress(2000, stream=terminal)
            for step in (1, 1000, 2000):
                bar.update(step, loss="1.2345", lr="3.00e-04", **{"tok/s": "12.3K"})
        shown = read_all(leader).decode("utf-8")
        os.close(leader)
        lines = shown.replace("\r\n", "\n").split("\r")[1:]
        assert lines and all(len(line.rstrip()) < columns for line in lines), (columns, lines)
        if columns >= 80:
            assert "loss 1.2345" in lines[-1]
        if columns == 200:
            assert "█" * 24 in lines[-1]  # the full bar where there is room


def test_odd_inputs_get_one_line_errors_not_tracebacks(corpus, tmp_path, cache):
    """A model file given as the recipe; a prompt from a closed standard input; standard
    output closed; a run's metrics.jsonl with bytes not UTF-8 (each a traceback before)."""
    model = tmp_path / "run" / "model.safetensors"
    train(corpus, tmp_path / "run", cache, "--steps", 2)
    bad = tinylm("train", "--config", model, check=False, cache=cache)
    assert bad.returncode == 2 and "is not text (a model file?)" in bad.stderr
    env = dict(os.environ, TINYLM_CACHE=cache)
    for closed, args in ((0, ["--prompt-file", "-"]), (1, ["--prompt", "a"])):
        proc = subprocess.run(  # closed before Python starts, as a shell's <&- or >&-
            [sys.executable, "-m", "tinylm", "generate", str(model), "--max-tokens", "3", *args],
            stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path, timeout=120,
            preexec_fn=lambda: os.close(closed))
        assert proc.returncode == 2 and "is closed" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    metrics_file = tmp_path / "run" / "metrics.jsonl"
    metrics_file.write_bytes(metrics_file.read_bytes() + b'{"step": \xff\xfe 9}\n')
    resumed = tinylm("train", "--resume", tmp_path / "run", "--steps", 3, cache=cache)
    assert max(m["step"] for m in metrics(tmp_path / "run")) == 3, resumed.stderr


def test_a_file_where_a_run_folder_belongs_is_named_as_such(tmp_path):
    """--out FILE said "FILE: File exists"; --resume FILE suggested `--out FILE`."""
    from tinylm.errors import TinylmError
    from tinylm.trainer import Run
    model = tmp_path / "model.safetensors"
    model.write_bytes(b"not a run")
    with pytest.raises(TinylmError, match="is a file; --out takes the folder"):
        Run.check_out(model)
    with pytest.raises(TinylmError, match="is a file; --resume takes a run's folder"):
        Run.resume(model)
