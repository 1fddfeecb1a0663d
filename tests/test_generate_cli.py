"""`tinylm generate` end to end: prompts from flag, file and stdin, reproducible seeds,
stop strings, --stats, and one-line errors with exit status 2."""
import io
import subprocess
import sys

import pytest

from tinylm.cli import main
from tinylm.config import ModelConfig
from tinylm.model import init_params
from tinylm.modelfile import save_model
from tinylm.quant import quantize_file
from tinylm.tokenizer import ByteTokenizer

CFG = ModelConfig(vocab_size=257, d_model=64, n_layer=2, n_head=4, n_kv_head=2, d_ff=96, context=32)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("cli") / "m.safetensors")
    params = {k: (v * 4 if v.ndim == 2 else v) for k, v in init_params(CFG, seed=5).items()}
    save_model(path, CFG, params, ByteTokenizer())
    return path


def run(capsys, *argv):
    code = main(["generate", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_greedy_is_deterministic_and_budgeted(model_path, capsys):
    code, a, _ = run(capsys, model_path, "--prompt", "Hi", "--temperature", "0", "--max-tokens", "20")
    assert code == 0 and a.endswith("\n")
    assert 1 <= len(a[:-1]) <= 20  # byte tokens: at most one character each
    assert run(capsys, model_path, "--prompt", "Hi", "--temperature", "0", "--max-tokens", "20")[1] == a
    # a different prompt leads elsewhere
    assert run(capsys, model_path, "--prompt", "Yo", "--temperature", "0", "--max-tokens", "20")[1] != a


def test_seed_reproduces(model_path, capsys):
    args = [model_path, "--prompt", "x", "--max-tokens", "40", "--temperature", "1.0", "--top-k", "30"]
    _, a, _ = run(capsys, *args, "--seed", "3")
    assert run(capsys, *args, "--seed", "3")[1] == a
    assert run(capsys, *args, "--seed", "4")[1] != a


def test_prompt_file_and_stdin(model_path, capsys, tmp_path, monkeypatch):
    args = [model_path, "--temperature", "0", "--max-tokens", "10"]
    _, from_flag, _ = run(capsys, *args, "--prompt", "héllo")
    f = tmp_path / "p.txt"
    f.write_text("héllo", encoding="utf-8")
    assert run(capsys, *args, "--prompt-file", str(f))[1] == from_flag
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("héllo".encode())))
    assert run(capsys, *args)[1] == from_flag


def test_a_prompt_argument_that_is_not_utf8_is_taken_as_bytes(model_path, tmp_path):
    """`--prompt "$(printf '\\xff')"`: Python escapes argv's invalid bytes as lone
    surrogates, which the tokenizer refused with a traceback; the bytes are the prompt."""
    def generate(prompt):
        return subprocess.run([sys.executable, "-m", "tinylm", "generate", model_path, "--prompt",
                               prompt, "--temperature", "0", "--max-tokens", "12"],
                              capture_output=True, cwd=tmp_path, timeout=60)
    raw = generate(b"\xff\xfea")
    assert raw.returncode == 0 and raw.stderr == b"", raw.stderr
    other = generate(b"\xfd\xfea")  # another first byte leads elsewhere: the bytes were read
    assert other.returncode == 0 and other.stdout != raw.stdout


def test_a_prompt_past_the_size_limit_is_refused(model_path, capsys, tmp_path, monkeypatch):
    # (--prompt-file /dev/zero read until memory ran out)
    import tinylm.cli
    monkeypatch.setattr(tinylm.cli, "MAX_PROMPT_BYTES", 1000)
    f = tmp_path / "p.txt"
    f.write_bytes(b"a" * 1000)
    args = [model_path, "--temperature", "0", "--max-tokens", "3"]
    assert run(capsys, *args, "--prompt-file", str(f))[0] == 0  # at the limit: read
    f.write_bytes(b"a" * 1001)
    code, _, err = run(capsys, *args, "--prompt-file", str(f))
    assert code == 2 and f"--prompt-file '{f}' is over 1,000 bytes" in err
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"b" * 1001)))
    code, _, err = run(capsys, *args)
    assert code == 2 and "the prompt from standard input is over" in err and err.count("\n") == 1


def test_stop_and_stats(model_path, capsys):
    args = [model_path, "--prompt", "a", "--temperature", "0", "--max-tokens", "30"]
    _, full, _ = run(capsys, *args)
    stop = full[4:6]
    code, cut, err = run(capsys, *args, "--stop", stop, "--stats")
    assert code == 0 and cut == full[:full.index(stop)] + "\n"
    assert "first token" in err and "tokens/s" in err and "peak memory" in err


def test_stop_strings_take_escapes_as_the_readme_shows_them():
    """The README's `--stop "\\n\\n"` reaches tinylm as backslash, n, backslash, n (a shell
    does not read escapes in double quotes), so it never stopped anything."""
    from tinylm.cli import build_parser
    parse = build_parser().parse_args
    got = parse(["generate", "m", "--stop", "\\n\\n", "--stop", "a\\tb\\\\n\\q"]).stop
    assert got == ["\n\n", "a\tb\\n\\q"]


def test_long_prompt_is_noted_and_works(model_path, capsys):
    code, out, err = run(capsys, model_path, "--prompt", "z" * 100, "--temperature", "0",
                         "--max-tokens", "50")
    assert code == 0 and "reads its last 32" in err and len(out) > 1


def test_int8_model(model_path, capsys, tmp_path):
    path = str(tmp_path / "m8.safetensors")
    quantize_file(model_path, path)
    code, out, _ = run(capsys, path, "--prompt", "Hi", "--temperature", "0", "--max-tokens", "10")
    assert code == 0 and len(out) > 1


@pytest.mark.parametrize("argv, message", [
    (["--prompt", "x", "--temperature", "-1"], "--temperature must be 0 (greedy) or in [1e-06, 100]"),
    (["--prompt", "x", "--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--prompt", "x", "--top-k", "-2"], "--top-k must be a non-negative integer"),
    (["--prompt", "x", "--repetition-penalty", "0.1"], "--repetition-penalty must be in [1, 10]"),
    (["--prompt", "x", "--max-tokens", "-5"], "--max-tokens must be at least 0"),
    (["--prompt-file", "/nonexistent/prompt.txt"], "prompt-file"),
    (["--prompt", "x", "--threads", "0"], "--threads must be at least 1, got 0"),
    # 100,000 used to hang creating the threads
    (["--prompt", "x", "--threads", "100000"], "--threads must be at most 1024, got 100000"),
])
def test_bad_values_exit_2_with_one_line(model_path, capsys, argv, message):
    code, out, err = run(capsys, model_path, *argv)
    assert code == 2 and message in err and err.count("\n") == 1 and err.startswith("tinylm: error:")


def test_bad_model_files_exit_2(tmp_path, capsys):
    code, _, err = run(capsys, str(tmp_path / "missing.safetensors"), "--prompt", "x")
    assert code == 2 and "does not exist" in err
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    code, _, err = run(capsys, str(junk), "--prompt", "x")
    assert code == 2 and err.count("\n") == 1


def test_a_context_no_machine_can_hold_exits_2(tmp_path, capsys):
    """A damaged config's context of 10^15 tokens: the key/value cache cannot be mapped
    (it is larger than a 64-bit address space, or than a 32-bit size); that is said in one
    line, not as "tinylm: error: : Cannot allocate memory"."""
    big = ModelConfig(**{**CFG.__dict__, "context": 10**15})
    path = str(tmp_path / "huge.safetensors")
    save_model(path, big, init_params(CFG, seed=5), ByteTokenizer())
    code, _, err = run(capsys, path, "--prompt", "x", "--max-tokens", "2")
    assert code == 2 and "context of 1,000,000,000,000,000 tokens needs a" in err
    assert "key/value cache, which this machine cannot map" in err and err.count("\n") == 1


def test_a_run_directory_for_a_model_file_names_the_file(model_path, tmp_path, capsys):
    """`tinylm train` writes RUN/model.safetensors; given RUN, the error points there."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    code, _, err = run(capsys, str(run_dir), "--prompt", "x")
    assert code == 2 and err.count("\n") == 1 and "is a directory, not a model file" in err
    assert "did you mean" not in err  # nothing to point at yet
    (run_dir / "model.safetensors").write_bytes(open(model_path, "rb").read())
    code, _, err = run(capsys, str(run_dir), "--prompt", "x")
    assert code == 2 and f"did you mean '{run_dir / 'model.safetensors'}'?" in err


def test_model_with_nan_weights_exits_2_with_one_line(tmp_path, capsys):
    """A NaN in the weights (a corrupt file, a diverged run) makes every logit NaN: a
    one-line error from both weight formats, greedy or sampling (the native top-p sampler
    used to crash on them)."""
    params = init_params(CFG, seed=5)
    params["model.norm.weight"][3] = float("nan")
    fp32, int8 = str(tmp_path / "nan.safetensors"), str(tmp_path / "nan8.safetensors")
    save_model(fp32, CFG, params, ByteTokenizer())
    quantize_file(fp32, int8)
    for path in (fp32, int8):
        for temperature in ("0", "0.8"):
            code, _, err = run(capsys, path, "--prompt", "x", "--temperature", temperature)
            assert code == 2 and "logits are NaN or infinite" in err and err.count("\n") == 1


def test_quantize_refuses_nan_weights_and_int8_input_in_one_line(model_path, tmp_path, capsys):
    """Quantizing a model with NaN or infinite weights exited with status 1 and the
    bare ValueError; an int8 input was told it "needs the int8 engine"."""
    out = str(tmp_path / "out.safetensors")
    for value in ("nan", "inf"):
        params = init_params(CFG, seed=5)
        params["model.layers.1.mlp.up_proj.weight"][1, 2] = float(value)
        bad = str(tmp_path / f"{value}.safetensors")
        save_model(bad, CFG, params, ByteTokenizer())
        assert main(["quantize", bad, out]) == 2
        err = capsys.readouterr().err
        assert "up_proj.weight: contains NaN or infinity" in err and err.count("\n") == 1
    int8 = str(tmp_path / "m8.safetensors")
    quantize_file(model_path, int8)
    assert main(["quantize", int8, out]) == 2
    err = capsys.readouterr().err
    assert "is already an int8 model; quantize reads an fp32 model" in err and err.count("\n") == 1


def test_info_refuses_an_empty_model_path(capsys):
    """`tinylm info ''` printed the CPU report, as if no model had been named."""
    assert main(["info", ""]) == 2
    err = capsys.readouterr().err
    assert "the model path is empty" in err and err.count("\n") == 1


@pytest.mark.slow
def test_console_streams_through_a_pipe(model_path, tmp_path):
    """Run as a user would: a subprocess whose output is a pipe; stdin gives the prompt.
    It runs outside the source tree, so that the installed package is what runs."""
    r = subprocess.run([sys.executable, "-m", "tinylm", "generate", model_path, "--temperature",
                        "0", "--max-tokens", "8", "--stats"], input=b"hello", capture_output=True,
                       cwd=tmp_path, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.endswith(b"\n") and b"tokens/s" in r.stderr


def test_a_reader_that_leaves_early_is_not_an_error(model_path, tmp_path):
    """`tinylm generate ... | head -c 1`: the pipe closes under the stream, and the
    command ends quietly with status 0 (it said "tinylm: error: : Broken pipe"). Greedy,
    this model writes all 100,000 tokens (no end-of-text), far more than a pipe holds, so
    the write after the close must fail."""
    proc = subprocess.Popen([sys.executable, "-m", "tinylm", "generate", model_path, "--prompt",
                             "x", "--max-tokens", "100000", "--temperature", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    proc.stdout.read(1)
    proc.stdout.close()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and err == b"", err


def test_help_shows_each_default_once(capsys):
    """Defaults that mean something are shown, once: not again after a help that states
    its own (--seed, --threads: their None then showed too), and no empty one at all."""
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere
    assert exit_.value.code == 0
    for shown in ("tokens to generate at most (default: 256)", "0 = greedy (default: 0.8)",
                  "(0 = off) (default: 0)", "(default: native)",
                  "(default: one per core this process may run on)"):
        assert shown in out
    for empty in ("(default: None)", "(default: [])", "(default: False)"):
        assert empty not in out
