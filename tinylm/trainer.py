"""The training loop: batches, AdamW, evaluation, progress, checkpoints and exact resume.

A run directory holds:
    checkpoint.safetensors  weights, AdamW moments, and (in the metadata) the config, the
                            tokenizer, the step and the random generator's state: all a
                            resume needs, in one file replaced atomically
    model.safetensors       the model alone, for `tinylm generate` / `eval` / `quantize`
    metrics.jsonl           one JSON object per step (and per evaluation)
    stdin-corpus            the corpus, when it was read from standard input (--data -)
A run killed at any moment resumes from its last checkpoint and, because the data order
and every update are deterministic, ends with the same weights as an uninterrupted run.
"""
import contextlib
import ctypes
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from . import data as data_mod
from .checkpoint import CheckpointError, load_safetensors, save_safetensors
from .config import ModelConfig, format_count
from .errors import TinylmError
from .model import check_params, forward, init_params, loss_and_grads, param_shapes
from .modelfile import CONFIG_KEY, check_vocab, model_tensors_and_metadata, save_model
from .optim import AdamW, clip_grad_norm, lr_at
from .progress import Progress, format_bytes, format_duration
from .tokenizer import tokenizer_from_metadata

CHECKPOINT = "checkpoint.safetensors"
MODEL = "model.safetensors"
METRICS = "metrics.jsonl"
STDIN_CORPUS = "stdin-corpus"
STATE_KEY = "tinylm.train_state"


@dataclass
class TrainConfig:
    data: str | None = data_mod.DEFAULT_SOURCE  # a path, "-" for stdin, None: the stdlib
    steps: int = 2000
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 3e-3
    min_lr: float | None = None  # None: lr / 10
    warmup: int = 50
    weight_decay: float = 0.1
    decay_embeddings: bool = False
    grad_clip: float = 1.0
    eval_interval: int = 250
    eval_tokens: int = 16384
    checkpoint_interval: int = 250
    val_fraction: float = 0.05
    seed: int = 1337

    def __post_init__(self):
        if self.min_lr is None:
            self.min_lr = self.lr / 10
        if self.data not in (None, "-"):
            self.data = os.path.abspath(self.data)  # so that a resume finds it from anywhere

    def validate(self):
        for name in ("steps", "batch_size", "grad_accum", "eval_interval", "eval_tokens",
                     "checkpoint_interval"):
            if getattr(self, name) < 1:
                raise TinylmError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not (math.isfinite(self.lr) and self.lr > 0 and 0 <= self.min_lr <= self.lr):  # and NaN
            raise TinylmError(f"need 0 <= min-lr <= lr and a finite lr > 0, got lr={self.lr}, "
                              f"min-lr={self.min_lr}")
        if not 0 < self.val_fraction < 1:
            raise TinylmError(f"val-fraction must be between 0 and 1, got {self.val_fraction}")
        if not (self.warmup >= 0 and self.weight_decay >= 0 and self.grad_clip >= 0):  # and NaN
            raise TinylmError(f"warmup, weight-decay and grad-clip must be numbers >= 0, got "
                              f"{self.warmup}, {self.weight_decay}, {self.grad_clip}")
        if not math.isfinite(self.weight_decay):
            raise TinylmError(f"weight-decay must be finite, got {self.weight_decay}")
        if self.seed < 0:
            raise TinylmError(f"seed must be a non-negative integer, got {self.seed}")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def training_memory(cfg: ModelConfig, batch_size: int, grad_accum: int = 1) -> tuple[int, int]:
    """A lower bound of a training step's memory, in bytes: (the float32 parameters, their
    gradients and AdamW's two moments, and with gradient accumulation a second set of
    gradients; what model.forward keeps for the backward pass of one micro-batch). The
    second counts the tape's arrays a token: per layer the two norms' outputs and scales,
    the attention block's input, q, k, v, output, log-sum-exps and merged heads, the MLP's
    input and four d_ff-wide arrays; then the final norm and the log-probabilities. (The
    step's peak is higher: temporaries come and go.)"""
    d, ff, H = cfg.d_model, cfg.d_ff, cfg.n_head
    kv = cfg.n_kv_head * cfg.head_dim
    per_token = cfg.n_layer * (7 * d + 2 * kv + 4 * ff + H + 2) + 2 * d + 1 + cfg.vocab_size
    copies = 5 if grad_accum > 1 else 4
    return 4 * copies * cfg.num_params(), 4 * per_token * batch_size * cfg.context


def available_memory() -> int | None:
    """Bytes this process can still allocate without swapping, or None where the system
    does not say: Linux's MemAvailable, lowered by a cgroup's memory limit (a container),
    an address-space limit (ulimit -v) and, for a 32-bit process, its ~3 GB of address
    space."""
    try:
        with open("/proc/meminfo") as f:
            free = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    try:  # cgroup v2
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            free = min(free, int(limit) - used)
    except (OSError, ValueError):
        pass
    try:
        import resource
        mapped = int(Path("/proc/self/statm").read_text().split()[0]) * resource.getpagesize()
        space = resource.getrlimit(resource.RLIMIT_AS)[0]
        if sys.maxsize < 2**32:
            space = 3 << 30 if space == resource.RLIM_INFINITY else min(space, 3 << 30)
        # (under qemu-user, /proc/self/statm is the emulator's, which can map more than a
        # 32-bit process could: then it says nothing about this one)
        if space != resource.RLIM_INFINITY and mapped < space:
            free = min(free, space - mapped)
    except (ImportError, OSError, ValueError, IndexError):
        pass
    return max(free, 0)


def check_memory(cfg: ModelConfig, tcfg: "TrainConfig", available: int | None):
    """Refuses a run that cannot fit in memory before it builds the model (a typo in
    --batch-size used to run until the kernel killed the process, having taken every
    byte the machine had), saying what would fit."""
    model, batch = training_memory(cfg, tcfg.batch_size, tcfg.grad_accum)
    if available is None or model + batch <= available:
        return
    sequence = batch // tcfg.batch_size  # one sequence's activations
    fits = (available - model) // sequence if available > model else 0
    if fits >= 1:
        fix = (f"lower --batch-size (at most {fits} could fit; --grad-accum keeps the tokens "
               "per step)")
    elif available > model:
        fix = (f"lower --context (a sequence of {cfg.context} tokens needs "
               f"{format_bytes(sequence)})")
    else:
        fix = "choose a smaller model"
    raise TinylmError(
        f"training this needs at least {format_bytes(model + batch)} of memory "
        f"({format_bytes(model)} for the parameters, their gradients and AdamW's moments, "
        f"{format_bytes(batch)} for the activations of a micro-batch of {tcfg.batch_size} x "
        f"{cfg.context} tokens), but {format_bytes(available)} is available; {fix}")


def keep_freed_memory_in_the_heap():
    """Makes numpy's temporaries cheap on Linux.

    Every numpy expression allocates a fresh array. glibc serves blocks above its mmap
    threshold (128 KB to start with) straight from the kernel and unmaps them on free, so
    each temporary of a training step page-faults its memory in again: measured here, that
    made an elementwise product of a 1024x344 float32 array 10x slower than the arithmetic.
    Raising the mmap threshold to its maximum (32 MB) and the trim threshold keeps freed
    blocks in the heap for the next step. Called by the training loop; process-wide.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None)
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)
        libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to tune
        pass


def evaluate(params, cfg: ModelConfig, val_tokens, val_bytes: int, max_tokens: int,
             batch_size: int = 16):
    """Validation loss in nats per token, and in bits per byte (comparable across
    tokenizers: the bits needed to encode each byte of the validation text), and the
    number of tokens scored."""
    x, y = data_mod.eval_windows(val_tokens, cfg.context, max_tokens)
    total = 0.0
    for i in range(0, len(x), batch_size):
        loss, _ = forward(params, cfg, x[i:i + batch_size], y[i:i + batch_size])
        total += float(loss) * len(x[i:i + batch_size])
    nats = total / len(x)
    bits_per_byte = nats * len(val_tokens) / max(1, val_bytes) / math.log(2)
    return nats, bits_per_byte, x.size


class Run:
    """One training run in a directory: create it, or resume it, then `train()`."""

    def __init__(self, out_dir, model_cfg: ModelConfig, train_cfg: TrainConfig, tokenizer,
                 log=print):
        train_cfg.validate()
        check_memory(model_cfg, train_cfg, available_memory())
        self.dir = Path(out_dir)
        self.cfg, self.tcfg, self.tokenizer = model_cfg, train_cfg, tokenizer
        self.log = log
        self.params = None  # set by create() or resume()
        self.opt = AdamW(weight_decay=train_cfg.weight_decay,
                         decay_embeddings=train_cfg.decay_embeddings)
        self.rng = np.random.default_rng(train_cfg.seed)
        self.step = 0
        self.elapsed = 0.0  # training seconds in earlier sessions of this run

    # ------------------------------------------------------------ creating and resuming

    @staticmethod
    def check_out(out: Path):
        """Refuses a directory that a new run would spoil."""
        if out.exists() and not out.is_dir():
            raise TinylmError(f"'{out}' is a file; --out takes the folder a run is written to")
        if (out / CHECKPOINT).exists():
            raise TinylmError(f"'{out}' already holds a run; continue it with "
                              f"`tinylm train --resume {out}` or choose another --out")
        if (out / MODEL).exists():  # a finished run's, its checkpoint deleted, or the user's
            raise TinylmError(f"'{out}' already holds a {MODEL}, which this run would replace; "
                              "choose another --out")

    @classmethod
    def create(cls, out_dir, model_cfg, train_cfg, tokenizer, params=None, log=print):
        out = Path(out_dir)
        cls.check_out(out)
        run = cls(out, model_cfg, train_cfg, tokenizer, log=log)
        if params is None:
            params = init_params(model_cfg, seed=train_cfg.seed)
        run.params = {k: np.array(v, dtype=np.float32) for k, v in params.items()}
        return run

    @classmethod
    def resume(cls, out_dir, overrides: dict | None = None, log=print):
        out = Path(out_dir)
        path = out / CHECKPOINT
        if out.is_file():
            raise TinylmError(f"'{out}' is a file; --resume takes a run's folder (the one "
                              f"holding its {CHECKPOINT})")
        if not path.exists():
            raise TinylmError(f"no run to resume in '{out}' (no {CHECKPOINT}); start one with "
                              f"`tinylm train --out {out}`")
        with _checkpoint_errors(path):
            tensors, meta = load_safetensors(path)
            if STATE_KEY not in meta:
                raise ValueError("it is not a training checkpoint (no training state)")
            state = json.loads(meta[STATE_KEY])
            model_cfg = ModelConfig.from_dict(json.loads(meta[CONFIG_KEY]))
            tokenizer = tokenizer_from_metadata(meta, tensors)
            check_vocab(model_cfg, tokenizer)
            check_params(model_cfg, tensors)
            saved = dict(state["train"])
            if (saved["data"] == "-" and "data" not in (overrides or {})
                    and not (out / STDIN_CORPUS).exists()):
                raise ValueError(f"the run read its corpus from standard input, and "
                                 f"{out / STDIN_CORPUS}, the copy a run keeps of it, is not "
                                 "there; resume with --data FILE holding the same text, or "
                                 "pipe it in again with --data -")
            tcfg = TrainConfig.from_dict({**saved, **(overrides or {})})
        run = cls(out, model_cfg, tcfg, tokenizer, log=log)  # its errors are the settings'
        with _checkpoint_errors(path):
            run.params = {k: np.array(tensors[k]) for k in param_shapes(model_cfg)}
            run.opt.load_state({k: v for k, v in tensors.items() if k.startswith("adam.")},
                               state["adam_t"])
            run.rng.bit_generator.state = state["rng"]
            run.step, run.elapsed = state["step"], state["elapsed"]
        if run.step >= tcfg.steps:
            run._finish_model()
            raise TinylmError(f"the run in '{out}' finished at step {run.step}; to train "
                              f"further, pass --steps with more than {run.step}")
        return run

    def _finish_model(self):
        """Writes a finished run's model if it is not the checkpoint's (a run stopped
        between writing the two files)."""
        try:
            written = load_safetensors(self.dir / MODEL)[1].get("tinylm.step")
        except (OSError, CheckpointError):
            written = None
        if written != str(self.step):
            save_model(self.dir / MODEL, self.cfg, self.params, self.tokenizer,
                       {"tinylm.step": str(self.step)})
            self.log(f"wrote {self.dir / MODEL}, which the run had not")

    @property
    def corpus(self) -> str | None:
        """Where the corpus is read: --data, or for standard input the run's copy of it."""
        return str(self.dir / STDIN_CORPUS) if self.tcfg.data == "-" else self.tcfg.data

    def save(self):
        """Writes the checkpoint, then the model; each file is replaced atomically, and the
        checkpoint alone decides where a resume starts. In that order a run that fails
        between the two (a full disk) can be resumed, which a model file alone forbade."""
        self.dir.mkdir(parents=True, exist_ok=True)
        state = dict(step=self.step, elapsed=self.elapsed, adam_t=self.opt.t,
                     rng=self.rng.bit_generator.state, train=asdict(self.tcfg))
        tensors, meta = model_tensors_and_metadata(self.cfg, self.params, self.tokenizer,
                                                   {STATE_KEY: json.dumps(state)})
        tensors.update(self.opt.state_tensors())
        save_safetensors(self.dir / CHECKPOINT, tensors, meta)
        save_model(self.dir / MODEL, self.cfg, self.params, self.tokenizer,
                   {"tinylm.step": str(self.step)})

    # ------------------------------------------------------------ training

    def _metrics_file(self):
        """metrics.jsonl, truncated to the checkpoint's step: a resumed run rewrites the
        steps it lost, so each step appears once."""
        path = self.dir / METRICS
        kept = []
        if path.exists():  # (bytes not UTF-8, from a damaged file, end it as a cut line does)
            for line in path.read_bytes().decode("utf-8", "replace").splitlines():
                try:
                    if json.loads(line).get("step", 0) <= self.step:
                        kept.append(line)
                except json.JSONDecodeError:
                    break  # a line cut short by a kill: drop it and what follows
        path.write_text("".join(line + "\n" for line in kept))
        return path.open("a")

    def train(self, split: data_mod.Split):
        cfg, t = self.cfg, self.tcfg
        keep_freed_memory_in_the_heap()
        self.dir.mkdir(parents=True, exist_ok=True)
        metrics = self._metrics_file()
        tokens_per_step = t.batch_size * t.grad_accum * cfg.context
        self.log(f"model: {format_count(cfg.num_params())} parameters ({cfg.num_params():,}), "
                 f"{cfg.n_layer} layers, d_model {cfg.d_model}, {cfg.n_head} heads, context {cfg.context}")
        self.log(f"data: {format_count(len(split.train))} training tokens, "
                 f"{format_count(len(split.val))} validation tokens; "
                 f"{format_count(tokens_per_step)} tokens per step")
        if self.step > 0:
            self.log(f"resuming at step {self.step}/{t.steps}")
        stop = _StopFlag()
        progress = Progress(t.steps, start=self.step)
        val = None
        if self.step == 0:
            val = self._evaluate(split, metrics, progress)
        started, rate = time.perf_counter(), None
        try:
            while self.step < t.steps and not stop.requested:
                t0 = time.perf_counter()
                # no numpy overflow warnings: a loss gone non-finite is told below, in a line
                with np.errstate(over="ignore", invalid="ignore"):
                    loss, lr, norm = self.train_step(lambda: data_mod.sample_batch(
                        split.train, t.batch_size, cfg.context, self.rng))
                dt = time.perf_counter() - t0
                rate = tokens_per_step / dt if rate is None else 0.9 * rate + 0.1 * tokens_per_step / dt
                _write(metrics, dict(step=self.step, loss=loss, lr=lr, grad_norm=norm,
                                     tokens_per_s=round(tokens_per_step / dt, 1)))
                if not math.isfinite(loss):
                    raise TinylmError(f"loss became {loss} at step {self.step}; "
                                      "lower --lr or raise --warmup")
                progress.update(self.step, loss=f"{loss:.4f}", lr=f"{lr:.2e}",
                                **{"tok/s": format_count(int(rate))})
                if self.step % t.eval_interval == 0 or self.step == t.steps:
                    val = self._evaluate(split, metrics, progress)
                if self.step % t.checkpoint_interval == 0 or self.step == t.steps:
                    self.elapsed += time.perf_counter() - started
                    started = time.perf_counter()
                    self.save()
        finally:
            stop.restore()
            progress.close()
            metrics.close()
        self.elapsed += time.perf_counter() - started
        if stop.requested and self.step < t.steps:
            self.save()  # also when stopped before the first step ended
            self.log(f"interrupted at step {self.step}; checkpoint saved. "
                     f"Continue with: tinylm train --resume {self.dir}")
            raise Interrupted(stop.signum)
        return val

    def train_step(self, next_batch):
        """One optimizer step over `grad_accum` batches from next_batch() -> (x, y);
        returns (mean loss, learning rate, gradient norm before clipping)."""
        t = self.tcfg
        grads, loss = None, 0.0
        for _ in range(t.grad_accum):
            x, y = next_batch()
            micro_loss, micro_grads = loss_and_grads(self.params, self.cfg, x, y)
            loss += micro_loss / t.grad_accum
            if grads is None:
                grads = micro_grads
            else:
                for k, g in micro_grads.items():
                    grads[k] += g
        if t.grad_accum > 1:
            for g in grads.values():
                g /= t.grad_accum
        norm = clip_grad_norm(grads, t.grad_clip)
        lr = lr_at(self.step, t.lr, t.min_lr, t.warmup, t.steps)
        self.opt.step(self.params, grads, lr)
        self.step += 1
        return loss, lr, norm

    def _evaluate(self, split, metrics, progress):
        # no larger a batch than training's, which check_memory sized
        nats, bpb, _ = evaluate(self.params, self.cfg, split.val, split.val_bytes,
                                self.tcfg.eval_tokens, batch_size=min(16, self.tcfg.batch_size))
        _write(metrics, dict(step=self.step, val_loss=nats, val_bits_per_byte=bpb))
        progress.message(f"step {self.step}: validation loss {nats:.4f} nats/token, {bpb:.4f} bits/byte")
        return nats, bpb


@contextlib.contextmanager
def _checkpoint_errors(path):
    """A damaged or foreign checkpoint's errors, as one line naming it."""
    try:
        yield
    except (CheckpointError, KeyError, TypeError, ValueError) as e:
        raise TinylmError(f"cannot resume from '{path}': {e}") from None


def _write(f, record: dict):
    f.write(json.dumps(record) + "\n")
    f.flush()


class Interrupted(KeyboardInterrupt):
    """Training stopped by a signal, its checkpoint saved: the command ends with status
    128 + signum, as a process the signal had killed would (a script's `&&` stops)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class _StopFlag:
    """Turns Ctrl-C (SIGINT) and SIGTERM into a request to stop after the current step,
    so the checkpoint written on the way out is consistent."""

    def __init__(self):
        self.requested, self.signum = False, None
        self._old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass

    def _handle(self, signum, frame):
        if self.requested:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.requested, self.signum = True, signum

    def restore(self):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


def summary(run: Run, val, wall: float) -> str:
    nats, bpb = val if val else (float("nan"), float("nan"))
    return "\n".join([
        f"done: {run.step} steps in {format_duration(wall)} "
        f"({format_duration(run.elapsed)} of training across sessions)",
        f"  parameters      {run.cfg.num_params():,}",
        f"  validation loss {nats:.4f} nats/token, {bpb:.4f} bits/byte",
        f"  model           {run.dir / MODEL}",
    ])
