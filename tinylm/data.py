"""The corpus: finding it, tokenizing it (cached), splitting it, and drawing batches.

A corpus is a file, a folder (read recursively, hidden files skipped), `-` for standard
input, or, by default, the Python standard library's own .py files — a corpus that is on
every machine with Python. Files are documents, joined with the tokenizer's end-of-text
token. Any bytes are accepted, not only UTF-8. The token stream is cached on disk as a
.npy file and memory-mapped, so a second run on the same corpus starts at once.
"""
import hashlib
import json
import os
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import TinylmError

DEFAULT_SOURCE = None  # the Python standard library's .py files


def describe(source) -> str:
    return "the Python standard library" if source is DEFAULT_SOURCE else f"'{source}'"


def cache_dir() -> Path:
    base = os.environ.get("TINYLM_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "tinylm")
    return Path(base)


def stdlib_files() -> list:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and p.is_file())


def corpus_files(source: str) -> list:
    """The files of a corpus, in a fixed order."""
    if source is DEFAULT_SOURCE:
        return stdlib_files()
    path = Path(source)
    if not path.exists():
        raise TinylmError(f"corpus '{source}' does not exist; pass a file, a folder, or - for stdin")
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise TinylmError(f"corpus '{source}' is neither a file nor a folder (a device or a "
                          "pipe?); for a stream, pass - and pipe it to stdin")
    files = sorted(p for p in path.rglob("*") if p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not files:
        raise TinylmError(f"corpus folder '{source}' holds no files")
    return files


def read_documents(source) -> list:
    """The corpus as a list of byte strings, one per document."""
    if source == "-":
        if sys.stdin.isatty():
            raise TinylmError("--data - reads the corpus from standard input, which is a "
                              "terminal; pipe a file in: tinylm train --data - < corpus.txt")
        docs = [sys.stdin.buffer.read()]
    else:
        try:
            docs = [p.read_bytes() for p in corpus_files(source)]
        except OSError as e:
            raise TinylmError(f"cannot read corpus {describe(source)}: {e}") from None
    docs = [d for d in docs if d]
    if not docs:
        raise TinylmError(f"corpus {describe(source)} is empty; give it some text")
    return docs


def _fingerprint(source: str, tokenizer) -> str:
    """Identifies a tokenized corpus: the tokenizer, and the files with size and mtime
    (or, for stdin, nothing: stdin is never cached)."""
    h = hashlib.sha256()
    meta, tensors = tokenizer.to_metadata()
    h.update(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(np.ascontiguousarray(tensors[name]).tobytes())
    for p in corpus_files(source):
        st = p.stat()
        h.update(f"{p.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()[:24]


def tokenize(docs: list, tokenizer) -> np.ndarray:
    """All documents as one token stream, each followed by end-of-text."""
    dtype = np.uint16 if tokenizer.vocab_size <= 65536 else np.int32
    eot = np.array([tokenizer.eot_id], dtype=dtype)
    parts = []
    for doc in docs:
        parts += [tokenizer.encode_bytes(doc).astype(dtype), eot]
    return np.concatenate(parts)


def load_tokens(source: str, tokenizer, docs=None) -> np.ndarray:
    """The corpus's token stream, from the cache when it is there (memory-mapped)."""
    if source == "-":
        return tokenize(docs if docs is not None else read_documents(source), tokenizer)
    path = cache_dir() / f"tokens-{_fingerprint(source, tokenizer)}.npy"
    if path.exists():
        try:
            return np.load(path, mmap_mode="r")
        except (OSError, ValueError):
            pass  # a damaged cache entry is rebuilt below
    tokens = tokenize(docs if docs is not None else read_documents(source), tokenizer)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            np.save(f, tokens)
        os.replace(tmp, path)
    except OSError:
        pass  # no writable cache: still train, only slower to start next time
    return tokens


@dataclass
class Split:
    """A corpus split into training and validation token streams."""

    train: np.ndarray
    val: np.ndarray
    val_bytes: int  # bytes of text the validation tokens stand for, for bits per byte


def split_tokens(tokens: np.ndarray, tokenizer, context: int, val_fraction: float) -> Split:
    """The last `val_fraction` of the stream is validation (at least one context window)."""
    need = context + 1
    n_val = max(need, int(len(tokens) * val_fraction))
    if len(tokens) < need + n_val:
        raise TinylmError(
            f"corpus is too short: {len(tokens)} tokens, but a context of {context} needs at "
            f"least {need + n_val} (a context window each for training and validation); use "
            "a larger corpus, or train with a smaller --context")
    val = tokens[len(tokens) - n_val:]
    return Split(tokens[: len(tokens) - n_val], val, len(tokenizer.decode_bytes(val)))


def sample_batch(tokens: np.ndarray, batch_size: int, context: int, rng: np.random.Generator):
    """`batch_size` random windows: inputs [B, T] and next-token targets [B, T]."""
    starts = rng.integers(0, len(tokens) - context, size=batch_size)
    window = np.asarray(tokens[starts[:, None] + np.arange(context + 1)], dtype=np.intp)
    return window[:, :-1], window[:, 1:]


def eval_windows(tokens: np.ndarray, context: int, max_tokens: int):
    """Evenly spaced, non-overlapping windows over the validation stream (the same ones
    every time, so validation losses are comparable across steps and runs)."""
    n_fit = (len(tokens) - 1) // context
    n = max(1, min(n_fit, max_tokens // context))
    starts = (np.arange(n) * (n_fit // n)) * context
    window = np.asarray(tokens[starts[:, None] + np.arange(context + 1)], dtype=np.intp)
    return window[:, :-1], window[:, 1:]
