"""The corpus: finding it, tokenizing it (cached), splitting it, and drawing batches.

A corpus is a file, a folder (read recursively; see corpus_files), `-` for standard
input, or, by default, the Python standard library's own .py files — a corpus that is on
every machine with Python. Files are documents, joined with the tokenizer's end-of-text
token. Any bytes are accepted, not only UTF-8. The token stream is made a piece at a
time into a cache on disk and memory-mapped from there, so a corpus need not fit in memory
and a second run on the same corpus starts at once; the cache keeps one entry for each
corpus and tokenizer, made again when the corpus's files change.
"""
import contextlib
import hashlib
import itertools
import json
import os
import re
import shutil
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import TinylmError
from .progress import format_bytes

DEFAULT_SOURCE = None  # the Python standard library's .py files
READ_BYTES = 16 << 20  # how much of a corpus file is read and tokenized at a time
SPOOL_MARGIN = 1 << 30  # the free disk space that keeping standard input's corpus leaves
RUN_CHECKPOINT = "checkpoint.safetensors"  # marks a training run's folder (trainer.CHECKPOINT)


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
    """The files of a corpus, in a fixed order: for a folder, every file below it but
    hidden ones, model files (.safetensors), training runs' folders (one holding a
    checkpoint.safetensors: `tinylm train --data .` puts its runs in ./runs) and the token
    cache, if it lies inside."""
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
    left_out = {p.parent.resolve() for p in files if p.name == RUN_CHECKPOINT and p.parent != path}
    left_out.add(cache_dir().resolve())
    files = [p for p in files
             if p.suffix != ".safetensors" and left_out.isdisjoint(p.resolve().parents)]
    if not files:
        raise TinylmError(f"corpus folder '{source}' holds no files (model files and training "
                          "runs' folders left out)")
    return files


def text_pieces(source, progress=None):
    """The corpus's pieces, document after document (see documents): a tokenizer's
    training text, read as it is used."""
    return itertools.chain.from_iterable(documents(source, progress=progress))


def documents(source, files=None, progress=None):
    """Each document of the corpus (a file, or standard input), as an iterator over its
    pieces (see _pieces), to be read before the next document is asked for. `files`: the
    corpus's files, if they have been listed. For a corpus of files, progress(bytes done,
    bytes the files held when listed) is told as the pieces are read."""
    if source == "-":
        yield _pieces(_stdin(), "standard input")
        return
    files = corpus_files(source) if files is None else files
    total = sum(st.st_size for st in map(_stat, files) if st)
    done = 0

    def counted(pieces):
        nonlocal done
        for piece in pieces:
            yield piece
            done += len(piece)
            if progress and total:
                progress(done, total)

    for path in files:
        try:
            f = path.open("rb")
        except OSError as e:
            raise TinylmError(f"cannot read corpus {describe(source)}: {e}") from None
        with f:
            yield counted(_pieces(f, f"corpus {describe(source)}"))


def _pieces(f, name):
    """A document read READ_BYTES at a time, in pieces cut just after a newline (a token of
    its own in both tokenizers, so the pieces encode as the whole would) or, in a piece
    with none, after a whole UTF-8 character."""
    rest = b""
    while True:
        try:
            block = f.read(READ_BYTES)
        except OSError as e:
            raise TinylmError(f"cannot read {name}: {e}") from None
        if not block:
            break
        block = rest + block
        cut = block.rfind(b"\n") + 1 or _whole_characters(block)
        if cut:
            yield block[:cut]
        rest = block[cut:]
    if rest:
        yield rest


def _whole_characters(block: bytes) -> int:
    """The length of `block` up to the end of its last whole UTF-8 character (all of it
    where it does not end inside one, UTF-8 or not)."""
    for back in range(1, min(4, len(block)) + 1):
        byte = block[-back]
        if byte < 0x80 or byte >= 0xF8:  # ASCII, or no UTF-8 byte
            return len(block)
        if byte >= 0xC0:  # the lead byte of a sequence of `length` bytes
            length = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return len(block) if length <= back else len(block) - back
    return len(block)


def _stdin():
    """Standard input's bytes, when it is a stream that can give a corpus."""
    if sys.stdin is None or sys.stdin.isatty():
        raise TinylmError("--data - reads the corpus from standard input, which is "
                          f"{'closed' if sys.stdin is None else 'a terminal'}; pipe a file "
                          "in (--data - < corpus.txt), or pass --data FILE")
    return sys.stdin.buffer


def spool_stdin(path: Path):
    """Copies standard input to `path` (through a temporary file beside it, so that a
    copy already there stays whole until the new one is): a corpus that can be read only
    once, kept so that it can be read again. Refuses an empty one, and stops before the
    copy would take more than half of the disk's free space and leave less than
    SPOOL_MARGIN of it, so that an endless stream (`yes |`) is refused, not left to fill
    the disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    stdin, size = _stdin(), 0
    keep_free = min(SPOOL_MARGIN, shutil.disk_usage(path.parent).free // 2)
    try:
        with open(tmp, "wb") as f:
            while block := stdin.read(READ_BYTES):
                free = shutil.disk_usage(path.parent).free
                if free - len(block) < keep_free:
                    raise TinylmError(
                        f"standard input's corpus passed {format_bytes(size)} and had not "
                        f"ended, with {format_bytes(free)} left on the disk of "
                        f"'{path.parent}'; if it is meant to be that long, save it to a "
                        "file and pass --data FILE")
                f.write(block)
                size += len(block)
        if size == 0:
            raise TinylmError("standard input is empty: pipe the corpus in, as in "
                              "tinylm train --data - < corpus.txt")
        os.replace(tmp, path)
    except OSError as e:
        raise TinylmError(f"cannot keep standard input's corpus in '{path}': {e}") from None
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def stdin_copy(path: Path):
    """spool_stdin(path) for a run about to start: if the block raises, the new copy is
    removed and a copy that was there before is put back (or the folder it made, if left
    empty, removed), so that a run that could not start loses nothing and leaves nothing."""
    made = not path.parent.exists()
    previous = _previous_copy(path)
    recover_stdin_copy(path)
    if path.exists():  # a resumed run's copy: kept until the new one has started a run
        try:
            os.link(path, previous)
        except OSError:  # a file system without hard links
            shutil.copyfile(path, previous)
    try:
        spool_stdin(path)
        yield
    except BaseException:
        if previous.exists():
            recover_stdin_copy(path)
        else:
            path.unlink(missing_ok=True)
            if made and path.parent.is_dir() and not any(path.parent.iterdir()):
                path.parent.rmdir()
        raise
    previous.unlink(missing_ok=True)


def _previous_copy(path: Path) -> Path:
    return path.with_name(path.name + ".previous")


def recover_stdin_copy(path: Path):
    """Puts back the copy stdin_copy kept while a new one was tried, if a run was killed
    before it could (the one there may never have started a run)."""
    previous = _previous_copy(path)
    if not previous.exists():
        return
    if path.exists() and os.path.samefile(previous, path):  # one file: rename does nothing
        previous.unlink()
    else:
        os.replace(previous, path)


def _digest(tokenizer):
    """A hash begun with the tokenizer: its settings and its tables."""
    h = hashlib.sha256()
    meta, tensors = tokenizer.to_metadata()
    h.update(json.dumps(meta, sort_keys=True).encode())
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(np.ascontiguousarray(tensors[name]).tobytes())
    return h


def _cache_entry(source, files, tokenizer) -> Path:
    """The cache file of a corpus's tokens: named by the corpus and tokenizer (which keep
    one entry between them) and by the files' sizes and times (which make it current)."""
    h = _digest(tokenizer)
    h.update(str(Path(sysconfig.get_paths()["stdlib"]) if source is DEFAULT_SOURCE
                 else Path(source).resolve()).encode())
    key = h.hexdigest()[:12]
    for p in files:
        st = _stat(p)
        h.update(f"{p.resolve()}\0{st and st.st_size}\0{st and st.st_mtime_ns}\0".encode())
    return cache_dir() / f"tokens-{key}-{h.hexdigest()[:24]}.{token_dtype(tokenizer).name}"


# What the cache holds: entries (written by earlier versions without the key, or older
# still as .npy files) and an entry's temporary, while it is written
_CACHE_ENTRY = re.compile(r"tokens-(?:([0-9a-f]{12})-)?[0-9a-f]{24}\.(?:npy|uint16|int32)")
_CACHE_TEMPORARY = re.compile(r"tokens-[0-9a-f-]+\.(?:uint16|int32)\.\w+\.tmp")
ABANDONED_SECONDS = 3600  # a temporary not written to for this long was left by a killed run


def _prune_cache(entry: Path):
    """Removes what `entry` has replaced: the same corpus and tokenizer's older entries,
    entries named as earlier versions named them (never read again), and temporaries that
    killed runs left. A run still reading a removed entry keeps its mapping."""
    key = entry.name.split("-")[1]
    for p in entry.parent.iterdir():
        m = _CACHE_ENTRY.fullmatch(p.name)
        try:
            if (p != entry and m and m.group(1) in (None, key)
                    or _CACHE_TEMPORARY.fullmatch(p.name)
                    and time.time() - p.stat().st_mtime > ABANDONED_SECONDS):
                p.unlink()
        except OSError:
            pass  # gone already, or not ours to remove: the cache still works


def _stat(path: Path):
    """os.stat, or None for a file gone since it was listed (its read will name it)."""
    try:
        return path.stat()
    except OSError:
        return None


def token_dtype(tokenizer) -> np.dtype:
    return np.dtype(np.uint16 if tokenizer.vocab_size <= 65536 else np.int32)


def _token_parts(source, files, tokenizer, progress=None):
    """The corpus's tokens in parts, each document followed by end-of-text (empty
    documents left out); refuses a corpus with no text. progress: see documents."""
    dtype = token_dtype(tokenizer)
    eot = np.array([tokenizer.eot_id], dtype=dtype)
    empty = True
    for pieces in documents(source, files, progress):
        text = False
        for piece in pieces:
            yield tokenizer.encode_bytes(piece).astype(dtype)
            text = True
        if text:
            empty = False
            yield eot
    if empty:
        raise TinylmError(f"corpus {describe(source)} is empty; give it some text")


def load_tokens(source: str, tokenizer, progress=None, warn=None) -> np.ndarray:
    """The corpus's token stream, memory-mapped from the cache: made there a piece at a
    time, so that a corpus larger than memory can be trained on (progress(done, total) is
    told the bytes tokenized). Without a cache it can write (warn(text) is told why, or
    else standard error), or from standard input itself (`tinylm eval --data -`), the
    stream is made in memory."""
    files = None if source == "-" else corpus_files(source)  # listed once: all agree
    if files is not None:
        path = _cache_entry(source, files, tokenizer)
        tokens = _mapped(path, tokenizer)
        if tokens is None and _write_tokens(source, files, tokenizer, path, progress, warn):
            _prune_cache(path)
            tokens = _mapped(path, tokenizer)
        if tokens is not None:
            return tokens
    return np.concatenate(list(_token_parts(source, files, tokenizer, progress)))


def _mapped(path: Path, tokenizer):
    """The cached tokens at `path`, or None if there are none, or they are damaged (a
    stream ends with end-of-text: a file cut short does not; and no id is past the
    vocabulary, which reads the whole entry: 6 ms for 80 MB in the page cache, more from
    disk, where training would read it anyway)."""
    dtype = token_dtype(tokenizer)
    try:
        size = path.stat().st_size
        if size == 0 or size % dtype.itemsize:
            return None
        tokens = np.memmap(path, dtype=dtype, mode="r")
        whole = tokens[-1] == tokenizer.eot_id and int(tokens.max()) < tokenizer.vocab_size
        return tokens if whole else None
    except (OSError, ValueError):
        return None


def _write_tokens(source, files, tokenizer, path: Path, progress, warn) -> bool:
    """Tokenizes the corpus into the cache file `path` (whole or not at all); False, with
    a warning, if the cache cannot be written (the corpus's own errors are raised)."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            for part in _token_parts(source, files, tokenizer, progress):
                f.write(part.tobytes())
            f.flush()
            os.fsync(f.fileno())  # whole on disk before it takes the cache entry's name
        os.replace(tmp, path)
        return True
    except OSError as e:  # a full disk, say
        (warn or _to_stderr)(f"tinylm: warning: cannot write the token cache in "
                             f"'{path.parent}' ({e}); tokenizing {describe(source)} in memory")
        return False
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def _to_stderr(text: str):
    print(text, file=sys.stderr)


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
    part = 1 << 20  # tokens decoded at a time
    val_bytes = sum(len(tokenizer.decode_bytes(val[i:i + part])) for i in range(0, len(val), part))
    return Split(tokens[: len(tokens) - n_val], val, val_bytes)


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
