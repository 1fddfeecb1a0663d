"""The `tinylm` command: train, eval, info (and the commands other modules add).

Heavy imports (numpy, the extension) happen inside the commands, after --threads has
been applied to the BLAS library's environment, which numpy reads when it is imported.
"""
import argparse
import contextlib
import os
import re
import sys
import time
from pathlib import Path

from .errors import TinylmError  # light: no numpy

TRAIN_DEFAULT_PRESET = "tiny"
TRAIN_DEFAULT_STEPS = 2000  # as TrainConfig's default, which numpy-free code cannot import
SHAPE_FLAGS = ("preset", "d_model", "n_layer", "n_head", "n_kv_head", "d_ff", "context",
               "tokenizer", "vocab_size")


def set_threads(n):
    """Applies --threads to numpy's BLAS (before numpy is imported) and our kernels."""
    if n is None:
        return
    if n < 1:
        raise TinylmError(f"--threads must be at least 1, got {n}")
    from . import _C  # light: numpy is not imported yet, so the variables below still count
    if n > _C.MAX_THREADS:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        raise TinylmError(f"--threads must be at most {_C.MAX_THREADS}, got {n} "
                          f"(this machine has {cores} cores)")
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                "VECLIB_MAXIMUM_THREADS"):
        os.environ[var] = str(n)
    try:
        _C.set_num_threads(n)
    except RuntimeError as e:  # the system would not start that many threads
        raise TinylmError(f"--threads {n}: {e}") from None


class DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" to an option's help, unless the help already says what the
    default is, or there is nothing to show (None, a flag's False, an empty list)."""

    def _get_help_string(self, action):
        default = action.default
        if default is None or default is False or default == [] or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


# ---------------------------------------------------------------- train


def add_train_parser(sub):
    p = sub.add_parser(
        "train", help="train a model on a corpus",
        description="Train a model. With no arguments: the 'tiny' preset for "
        f"{TRAIN_DEFAULT_STEPS} steps on the Python standard library's own source code, "
        "written to runs/<preset>-<time>/. Flags override a --config recipe.",
        argument_default=None)
    io = p.add_argument_group("run")
    io.add_argument("--config", metavar="FILE", help="TOML recipe; flags given here override it")
    io.add_argument("--data", metavar="PATH", help="corpus: a file, a folder (recursive), or - for "
                    "stdin, which the run keeps a copy of (default: the Python standard "
                    "library's .py files)")
    io.add_argument("--out", metavar="DIR", help="run directory (default: runs/<preset>-<time>)")
    io.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    io.add_argument("--init", metavar="MODEL", help="fine-tune: start from this model's weights "
                    "and tokenizer (shape flags are then not allowed)")
    io.add_argument("--threads", type=int, metavar="N", help="threads for numpy and the kernels "
                    "(default: one per core this process may run on)")
    shape = p.add_argument_group("model shape")
    shape.add_argument("--preset", help="tiny, baby, small or medium (default: tiny)")
    shape.add_argument("--d-model", type=int)
    shape.add_argument("--n-layer", type=int)
    shape.add_argument("--n-head", type=int)
    shape.add_argument("--n-kv-head", type=int, help="key/value heads (default: n-head)")
    shape.add_argument("--d-ff", type=int, help="SwiGLU hidden width")
    shape.add_argument("--context", type=int, help="sequence length")
    shape.add_argument("--tokenizer", choices=["bytes", "sentencepiece"], help="default: bytes")
    shape.add_argument("--vocab-size", type=int, help="sentencepiece vocabulary size (default 1024)")
    opt = p.add_argument_group("optimization")
    opt.add_argument("--steps", type=int, help=f"optimizer steps (default {TRAIN_DEFAULT_STEPS})")
    opt.add_argument("--batch-size", type=int, help="sequences per micro-batch (default 16)")
    opt.add_argument("--grad-accum", type=int, help="micro-batches per step (default 1)")
    opt.add_argument("--lr", type=float, help="peak learning rate (default 3e-3)")
    opt.add_argument("--min-lr", type=float, help="final learning rate (default lr/10)")
    opt.add_argument("--warmup", type=int, help="warm-up steps (default 50)")
    opt.add_argument("--weight-decay", type=float, help="AdamW decay (default 0.1)")
    opt.add_argument("--decay-embeddings", action="store_true",
                     help="also decay the embedding (default: only the matrices)")
    opt.add_argument("--grad-clip", type=float, help="clip the global gradient norm (default 1.0; 0 = off)")
    opt.add_argument("--seed", type=int, help="seed for initial weights and data order (default 1337)")
    ev = p.add_argument_group("evaluation and checkpoints")
    ev.add_argument("--eval-interval", type=int, help="steps between evaluations (default 250)")
    ev.add_argument("--eval-tokens", type=int, help="validation tokens per evaluation (default 16384)")
    ev.add_argument("--checkpoint-interval", type=int, help="steps between checkpoints (default 250)")
    ev.add_argument("--val-fraction", type=float, help="share of the corpus held out (default 0.05)")
    p.set_defaults(func=cmd_train)


def read_recipe(path, parser):
    """A TOML recipe's options, checked as strictly as the flags they stand for."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            recipe = tomllib.load(f)
    except OSError as e:
        raise TinylmError(f"cannot read recipe '{path}': {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise TinylmError(f"recipe '{path}' is not valid TOML: {e}") from None
    except UnicodeDecodeError:  # a model file, say, for the recipe
        raise TinylmError(f"recipe '{path}' is not text (a model file?); --config takes a "
                          "TOML recipe such as train/baby.toml") from None
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    options = {}
    for key, value in recipe.items():
        name = key.replace("-", "_")
        if name not in actions:
            raise TinylmError(f"recipe '{path}': unknown option '{key}'; see `tinylm train "
                              "--help` for the names")
        options[name] = _checked_recipe_value(path, key, value, actions[name])
    return options


def _checked_recipe_value(path, key, value, action):
    if action.nargs == 0:  # a switch such as --decay-embeddings
        expected, ok = "true or false", isinstance(value, bool)
    elif action.type is int:
        expected, ok = "an integer", isinstance(value, int) and not isinstance(value, bool)
    elif action.type is float:
        expected, ok = "a number", isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        expected, ok = "a string", isinstance(value, str)
    if not ok:
        raise TinylmError(f"recipe '{path}': {key} must be {expected}, got {value!r}")
    if action.choices and value not in action.choices:
        raise TinylmError(f"recipe '{path}': {key} must be one of {', '.join(action.choices)}, "
                          f"got {value!r}")
    return float(value) if action.type is float else value


def train_options(args):
    """Defaults < recipe (--config) < flags: one dict of the train flags' names, and the
    set of names given as flags on the command line."""
    flags = {k: v for k, v in vars(args).items()
             if v is not None and k not in ("func", "command") and not k.startswith("_")}
    if not flags.get("decay_embeddings"):
        flags.pop("decay_embeddings", None)
    options = read_recipe(flags.pop("config"), args._parser) if "config" in flags else {}
    options.update(flags)
    return options, set(flags)


def build_model_config(opts, tokenizer):
    from .config import preset
    cfg = preset(opts.get("preset", TRAIN_DEFAULT_PRESET))
    changes = {k: opts[k] for k in ("d_model", "n_layer", "n_head", "n_kv_head", "d_ff", "context")
               if k in opts}
    if "n_head" in changes and "n_kv_head" not in changes:
        changes["n_kv_head"] = changes["n_head"]
    changes["vocab_size"] = tokenizer.vocab_size
    return cfg.with_(**changes)


def make_tokenizer(opts, corpus):
    """The run's tokenizer: bytes, or a sentencepiece one trained on the corpus (reading
    it takes most of that: ~30 MB a second here, so a progress bar shows it)."""
    from . import data
    from .progress import LateProgress, format_bytes, format_duration
    from .tokenizer import ByteTokenizer, SentencePieceTokenizer
    if opts.get("tokenizer", "bytes") == "bytes":
        if "vocab_size" in opts:
            raise TinylmError("--vocab-size applies only to --tokenizer sentencepiece")
        return ByteTokenizer()
    vocab = opts.get("vocab_size", 1024)
    print(f"training a sentencepiece tokenizer (vocab {vocab}) ...", file=sys.stderr)
    started = time.perf_counter()
    with LateProgress(lambda n, total: f"reading {format_bytes(n)} of {format_bytes(total)}") as bar:

        def text():
            yield from data.text_pieces(corpus, bar)
            bar.close()  # read: what is left is learning the pieces from the lines sampled

        try:
            tokenizer = SentencePieceTokenizer.train(text(), vocab_size=vocab)
        except TinylmError:  # the corpus's own (a ValueError too): not the tokenizer's
            raise
        except ValueError as e:
            raise TinylmError(f"--tokenizer sentencepiece: {e}") from None
    print(f"trained the tokenizer in {format_duration(time.perf_counter() - started)}",
          file=sys.stderr)
    return tokenizer


def prepare_run(opts, on_command_line):
    """The run to train, and its corpus split: resumed, fine-tuned from --init, or new (a
    tokenizer trained on the corpus first, for sentencepiece). Standard input's corpus is
    copied into the run's folder once the settings have been checked."""
    from . import data
    from .trainer import STDIN_CORPUS, Run, TrainConfig
    train_keys = set(TrainConfig.__dataclass_fields__)
    if "resume" in opts:
        # a recipe may name a shape and a directory; on the command line they are a mistake
        for bad in ("init", "out") + SHAPE_FLAGS:
            if bad in on_command_line:
                raise TinylmError(f"--{bad.replace('_', '-')} cannot be combined with --resume: "
                                  "a resumed run keeps its model and directory")
        data.recover_stdin_copy(Path(opts["resume"]) / STDIN_CORPUS)  # a killed try's
        run = Run.resume(opts["resume"], {k: v for k, v in opts.items()
                                          if k in train_keys and k in on_command_line})
        if run.tcfg.data == "-" and "data" in on_command_line:  # piped again: a new copy
            with data.stdin_copy(run.dir / STDIN_CORPUS):  # the old one back if it fails
                return run, split_corpus(run)
        return run, split_corpus(run)
    tcfg = TrainConfig(**{k: v for k, v in opts.items() if k in train_keys})
    tcfg.validate()
    out = Path(opts.get("out") or os.path.join(
        "runs", f"{opts.get('preset', TRAIN_DEFAULT_PRESET)}-{time.strftime('%Y%m%d-%H%M%S')}"))
    Run.check_out(out)
    copy = data.stdin_copy(out / STDIN_CORPUS) if tcfg.data == "-" else contextlib.nullcontext()
    with copy:  # removed again if the run cannot start
        if "init" in opts:
            given = [f"--{k.replace('_', '-')}" for k in SHAPE_FLAGS if k in opts]
            if given:
                raise TinylmError(f"{', '.join(given)} cannot be combined with --init: a "
                                  "fine-tuned model keeps the shape and tokenizer of its base")
            from .modelfile import load_model
            cfg, params, tokenizer = load_model(opts["init"])
        else:
            corpus = str(out / STDIN_CORPUS) if tcfg.data == "-" else tcfg.data
            tokenizer = make_tokenizer(opts, corpus)
            cfg, params = build_model_config(opts, tokenizer), None
        run = Run.create(out, cfg, tcfg, tokenizer, params=params)
        return run, split_corpus(run)


def split_corpus(run):
    from . import data
    with tokenizing_progress() as bar:
        tokens = data.load_tokens(run.corpus, run.tokenizer, bar, bar.message)
    return data.split_tokens(tokens, run.tokenizer, run.cfg.context, run.tcfg.val_fraction)


def tokenizing_progress(quiet_seconds=1.0):
    """A progress bar for tokenizing a corpus (data.load_tokens' progress and warn), shown
    once it has taken `quiet_seconds` (sentencepiece encodes ~5.5 MB a second: a large
    corpus takes minutes)."""
    from .progress import LateProgress, format_bytes
    return LateProgress(lambda n, total: f"tokenizing {format_bytes(n)} of {format_bytes(total)}",
                        quiet_seconds)


def cmd_train(args):
    opts, on_command_line = train_options(args)
    set_threads(opts.pop("threads", None))
    from .trainer import summary
    started = time.perf_counter()
    run, split = prepare_run(opts, on_command_line)
    val = run.train(split)
    try:
        print(summary(run, val, time.perf_counter() - started), flush=True)
    except BrokenPipeError:  # the reader left, but the run is whole: say where it is
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print(f"tinylm: note: standard output closed (its reader left); the run finished: "
              f"{run.dir}", file=sys.stderr)


# ---------------------------------------------------------------- eval


def add_eval_parser(sub):
    p = sub.add_parser("eval", help="validation loss and bits per byte of a model",
                       description="Evaluate a model (fp32 or int8) on the validation split "
                       "of a corpus.")
    p.add_argument("model", help="model file (.safetensors), fp32 or int8")
    p.add_argument("--data", default=None, help="corpus (default: the Python standard library)")
    p.add_argument("--val-fraction", type=float, default=0.05, help="share held out (as in training)")
    p.add_argument("--eval-tokens", type=int, default=65536, help="validation tokens to score")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=cmd_eval)


def cmd_eval(args):
    set_threads(args.threads)
    from . import data
    from .quant import load_any_model
    from .trainer import evaluate
    if not 0 < args.val_fraction < 1:
        raise TinylmError(f"--val-fraction must be between 0 and 1, got {args.val_fraction}")
    if args.eval_tokens < 1:
        raise TinylmError(f"--eval-tokens must be at least 1, got {args.eval_tokens}")
    cfg, params, tokenizer = load_any_model(args.model)
    with tokenizing_progress() as bar:
        tokens = data.load_tokens(args.data, tokenizer, bar, bar.message)
    split = data.split_tokens(tokens, tokenizer, cfg.context, args.val_fraction)
    nats, bpb, scored = evaluate(params, cfg, split.val, split.val_bytes, args.eval_tokens)
    print(f"{args.model}: validation loss {nats:.4f} nats/token, {bpb:.4f} bits/byte "
          f"({scored:,} tokens of {data.describe(args.data)})")


# ---------------------------------------------------------------- quantize


def add_quantize_parser(sub):
    p = sub.add_parser("quantize", help="write an int8 copy of a model",
                       description="Quantize a model's matrices to int8 with per-row scales "
                       "(norms stay float32) and write one .safetensors file.")
    p.add_argument("input", help="fp32 model file (.safetensors)")
    p.add_argument("output", help="int8 model file to write")
    p.set_defaults(func=cmd_quantize)


def cmd_quantize(args):
    from .quant import quantize_file
    fp32, int8 = quantize_file(args.input, args.output)
    print(f"{args.output}: int8 weights, {int8 / 1e6:.2f} MB of parameters "
          f"(fp32 {fp32 / 1e6:.2f} MB, {fp32 / int8:.1f}x smaller)")


# ---------------------------------------------------------------- generate


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def unescape(text: str) -> str:
    """A --stop string's escapes (a shell passes "\\n" as backslash and n): \\n, \\t,
    \\r and \\\\; any other backslash stays as it is."""
    return re.sub(r"\\(.)", lambda m: _ESCAPES.get(m[1], m[0]), text, flags=re.S)


def add_generate_parser(sub):
    p = sub.add_parser(
        "generate", help="sample text from a model, streaming it to the terminal",
        description="Generate text from a model file (fp32 or int8). The prompt comes from "
        "--prompt, --prompt-file, or standard input when it is not a terminal (else the "
        "prompt is empty). When the context fills, the oldest half of it is dropped and "
        "the rest re-read, so generation continues.",
        formatter_class=DefaultsHelp)
    p.add_argument("model", help="model file (.safetensors)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", help="text to continue")
    src.add_argument("--prompt-file", metavar="FILE", help="read the prompt from FILE (- for stdin)")
    p.add_argument("--max-tokens", type=int, default=256, help="tokens to generate at most")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0, help="sample from the k likeliest tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (1 = off)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="1 = off")
    p.add_argument("--seed", type=int, default=None, help="makes the output reproducible (default: random)")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT", type=unescape,
                   help="stop before this text (repeat for several); \\n, \\t, \\r and "
                   "\\\\ in it are a newline, a tab, a carriage return and a backslash, so "
                   "--stop '\\n\\n' stops at a blank line")
    p.add_argument("--threads", type=int, default=None,
                   help="threads for the kernels (default: one per core this process may run on)")
    p.add_argument("--engine", choices=["native", "numpy"], default="native",
                   help="numpy runs the reference engine (slow; for checking)")
    p.add_argument("--stats", action="store_true",
                   help="after the text, print time to first token, decode tokens/s and peak memory "
                        "to stderr (and, when the context slid, the whole generation's tokens/s)")
    p.set_defaults(func=cmd_generate)


# A prompt longer than the context is read from its end (README, "Generating"), but it is
# read whole first: past this, a file (or /dev/zero, or an endless pipe) is refused rather
# than filling memory.
MAX_PROMPT_BYTES = 64 << 20


def read_prompt(args):
    if args.prompt is not None:
        try:
            args.prompt.encode("utf-8")
        except UnicodeEncodeError:  # bytes of no UTF-8 in argv, which Python escaped:
            return os.fsencode(args.prompt)  # their own bytes back (the tokenizers take bytes)
        return args.prompt
    if args.prompt_file is not None:
        if args.prompt_file == "-":
            if sys.stdin is None:  # started with standard input closed
                raise TinylmError("--prompt-file -: standard input is closed; pipe the "
                                  "prompt in, or pass --prompt TEXT")
            return read_limited(sys.stdin.buffer, "standard input")
        try:
            with open(args.prompt_file, "rb") as f:
                return read_limited(f, f"--prompt-file '{args.prompt_file}'")
        except OSError as e:
            raise TinylmError(f"cannot read --prompt-file '{args.prompt_file}': {e.strerror}") from None
    if sys.stdin is not None and not sys.stdin.isatty():
        return read_limited(sys.stdin.buffer, "standard input")
    return ""


def read_limited(f, what):
    data = f.read(MAX_PROMPT_BYTES + 1)
    if len(data) > MAX_PROMPT_BYTES:
        raise TinylmError(f"the prompt from {what} is over {MAX_PROMPT_BYTES:,} bytes; pass "
                          "its end (the model reads at most its context of it), e.g. "
                          "`tail -c 100000 FILE | tinylm generate MODEL`")
    return data


def write_utf8(text):
    """Writes and flushes at once (streaming), as UTF-8 whatever the locale says."""
    buf = getattr(sys.stdout, "buffer", None)
    if buf is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    buf.write(text.encode("utf-8"))
    buf.flush()


def cmd_generate(args):
    # OpenBLAS (numpy's, used by the batched prefill) keeps its threads spinning for
    # ~0.1 s after a call, on the cores our decode threads then need: a 2-thread decode
    # of the small preset ran 1.6x slower. Let them sleep at once (before numpy loads).
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
    set_threads(args.threads)
    if args.max_tokens < 0:
        raise TinylmError(f"--max-tokens must be at least 0, got {args.max_tokens}")
    if args.seed is not None and not 0 <= args.seed < 2**64:  # before the model loads
        raise TinylmError(f"--seed must be in [0, 2**64), got {args.seed}")
    from .engine import load
    from .sampling import check_sampling
    check_sampling(args.temperature, args.top_k, args.top_p, args.repetition_penalty,
                   as_flags=True)
    prompt = read_prompt(args)
    model = load(args.model, engine=args.engine)
    tok, ctx = model.tokenizer, model.cfg.context
    ids = tok.encode_bytes(prompt) if isinstance(prompt, bytes) else tok.encode(prompt)
    if len(ids) > ctx:
        print(f"tinylm: note: the prompt is {len(ids)} tokens; the model reads its last {ctx} "
              "(its context)", file=sys.stderr)
    pieces = model.generate(ids, max_tokens=args.max_tokens, temperature=args.temperature,
                            top_k=args.top_k, top_p=args.top_p,
                            repetition_penalty=args.repetition_penalty, seed=args.seed,
                            stop=args.stop)
    del ids  # a long prompt's ids are not needed while it generates
    for piece in pieces:  # a reader that leaves early (| head) is handled in main()
        write_utf8(piece)
    write_utf8("\n")
    if args.stats:
        print(model.stats.summary(), file=sys.stderr)


# ---------------------------------------------------------------- info


def add_info_parser(sub):
    p = sub.add_parser("info", help="CPU features, kernel paths, versions; or a model file's contents",
                       description="Without MODEL: what the CPU supports and which kernel paths "
                       "tinylm uses. With MODEL: its format, shape, size and parameter count.")
    p.add_argument("model", nargs="?", help="a model file to describe")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=cmd_info)


def cmd_info(args):
    set_threads(args.threads)
    if args.model == "":
        raise TinylmError("the model path is empty; give a model file, or nothing for the "
                          "CPU report")
    if args.model is not None:
        return describe_model(args.model)
    import platform

    import numpy as np

    from . import __version__, _C
    print(f"tinylm {__version__}  (python {platform.python_version()}, numpy {np.__version__}, "
          f"{platform.machine()} {platform.system()})")
    print(f"cpu features:    {', '.join(_C.cpu_features()) or 'none beyond the baseline'}")
    print(f"available paths: {', '.join(_C.available_isas())}")
    forced = os.environ.get("TINYLM_ISA")
    print(f"active path:     {_C.active_isa()}" + (f"  (forced by TINYLM_ISA={forced})" if forced else ""))
    for label, getter in (("attention path:", _C.attention_path), ("int8 path:", _C.int8_path),
                          ("decode fp32:", _C.engine_gemv_path),
                          ("decode int8:", _C.engine_gemv_int8_path)):
        print(f"{label:<17}{getter()}")
    print(f"threads:         {_C.num_threads()}")


def describe_model(path):
    from . import kvcache
    from .config import format_count
    from .modelfile import read_model
    cfg, tensors, tokenizer, meta = read_model(path)
    size = os.path.getsize(path)
    dtypes = sorted({str(t.dtype) for name, t in tensors.items() if name.startswith("model.")})
    print(f"{path}")
    print(f"  format      {meta.get('tinylm.weights', 'fp32')} ({', '.join(dtypes)} tensors)")
    print(f"  size        {size / 1e6:.2f} MB")
    print(f"  parameters  {format_count(cfg.num_params())} ({cfg.num_params():,})")
    print(f"  shape       {cfg.n_layer} layers, d_model {cfg.d_model}, {cfg.n_head} heads "
          f"({cfg.n_kv_head} kv), d_ff {cfg.d_ff}, context {cfg.context}")
    print(f"  tokenizer   {tokenizer.name}, vocab {tokenizer.vocab_size}")
    int8 = meta.get("tinylm.weights") == "int8"
    kinds = "int8 keys, float16 values" if int8 else "float32"
    print(f"  kv cache    {kinds}, {kvcache.nbytes(cfg, int8) / 1e6:.2f} MB at the full context")
    if "tinylm.step" in meta:
        print(f"  trained     {meta['tinylm.step']} steps")


# ---------------------------------------------------------------- main


def build_parser():
    parser = argparse.ArgumentParser(
        prog="tinylm", description="A from-scratch super tiny language model: train it on a "
        "laptop, run it on a Raspberry Pi.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    add_train_parser(sub)
    add_eval_parser(sub)
    add_quantize_parser(sub)
    add_generate_parser(sub)
    add_info_parser(sub)
    for name, p in sub.choices.items():
        p.set_defaults(_parser=p)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if sys.stdout is None:  # started with it closed (`>&-`): nowhere to write results
        print("tinylm: error: standard output is closed; send it to a file or /dev/null",
              file=sys.stderr)
        return 2
    try:
        args.func(args)
    except (TinylmError, ImportError) as e:  # ImportError: e.g. TINYLM_ISA names no path
        print(f"tinylm: error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        if type(e).__name__ != "CheckpointError":  # a model file's own one-line message
            raise
        print(f"tinylm: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader left early (`tinylm ... | head`)
        # (before OSError, its base class, which had taken it: "tinylm: error: : Broken pipe")
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        if args.func is cmd_train:  # before training ended (cmd_train takes it after)
            print("tinylm: error: standard output closed (its reader left), so the run "
                  "stopped; send its output to a file instead (a run that saved a "
                  "checkpoint continues with --resume)", file=sys.stderr)
            return 2
    except OSError as e:  # e.g. --out on a read-only disk, or a full disk
        where = f"{e.filename}: " if e.filename else ""
        print(f"tinylm: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", None)  # training's: it has said where it stopped
        if signum is None:
            print("tinylm: interrupted", file=sys.stderr)
        return 128 + (signum or 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
