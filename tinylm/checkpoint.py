"""Safetensors model files, read and written from scratch, plus atomic file writes.

The safetensors layout is three parts:

    [8 bytes]  N, the header length, unsigned little-endian
    [N bytes]  a UTF-8 JSON object:
                 {"<tensor name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [b, e]},
                  ...,
                  "__metadata__": {"<key>": "<string value>", ...}}
    [rest]     the data buffer; offsets [b, e) are relative to its start

The reader maps the file once with ``numpy.memmap`` and hands out read-only slices of it,
so loading copies nothing and a file larger than RAM still opens. Because the header
comes from a file we do not trust, every field is checked before it is used, and any
problem raises ``CheckpointError`` naming the file and what is wrong. Nothing in a file
is ever executed (there is no pickle anywhere).

The writer is atomic: it writes a temporary file next to the target, fsyncs it, renames
it over the target and fsyncs the directory, so a crash leaves either the old file or the
new one at ``path``, never a half-written one. ``atomic_write_bytes`` and
``atomic_write_text`` expose the same method for small state files.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
from typing import BinaryIO, Iterator, Mapping

import numpy as np

__all__ = [
    "CheckpointError",
    "save_safetensors",
    "load_safetensors",
    "atomic_write_bytes",
    "atomic_write_text",
]

# safetensors dtype name -> little-endian numpy dtype. Only types numpy holds natively;
# BF16 and the FP8 types would need a conversion step, so they are refused clearly.
_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
# (kind, itemsize) of a numpy dtype -> safetensors name, for the writer.
_NAMES = {(dt.kind, dt.itemsize): name for name, dt in _DTYPES.items()}
_SUPPORTED = " ".join(_DTYPES)

# The reference implementation refuses headers above 100 MB; a real header is a few KB
# per hundred tensors, so anything larger is a corrupt length field, not a model.
MAX_HEADER_BYTES = 100_000_000
_MAX_NDIM = 64  # numpy's own limit on dimensions
_ENTRY_KEYS = ("dtype", "shape", "data_offsets")


class CheckpointError(ValueError):
    """A model or state file that cannot be read or written; the message names the file."""


# ----------------------------------------------------------------------------------------
# Atomic writes
# ----------------------------------------------------------------------------------------


def _fsync_directory(directory: str) -> None:
    """Make a rename durable. POSIX only: Windows cannot open a directory for fsync."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _create_temp(path: str) -> tuple[str, int]:
    """Create a new, unique temporary file in the same directory as ``path``.

    os.open with mode 0o666 lets the process umask decide the permissions, so the final
    file gets the same permissions a plain open() would have given it (mkstemp's 0o600
    would make every checkpoint private)."""
    directory, base = os.path.split(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = os.path.join(directory, f".{base}.{secrets.token_hex(6)}.tmp")
        try:
            return tmp, os.open(tmp, flags, 0o666)
        except FileExistsError:  # astronomically unlikely; just pick another name
            continue


@contextlib.contextmanager
def _atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Yield a binary file whose contents replace ``path`` only if the block succeeds.

    On any failure (including KeyboardInterrupt) the temporary file is removed and the
    previous contents of ``path``, if any, are untouched. OS errors become
    CheckpointError so that callers (the CLI) can print a one-line message."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: is a directory; give a file name to write")
    if not os.path.isdir(directory):
        raise CheckpointError(f"{path}: directory {directory} does not exist; create it first")
    try:
        tmp, fd = _create_temp(path)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot create a temporary file: {e.strerror}") from e
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise CheckpointError(f"{path}: write failed: {e.strerror or e}") from e
        raise
    try:
        _fsync_directory(directory)
    except OSError as e:  # the file is in place; only its durability is in doubt
        raise CheckpointError(f"{path}: written, but fsync of {directory} failed: {e.strerror}") from e


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename, fsync directory)."""
    with _atomic_writer(path) as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically; no newline translation is applied."""
    atomic_write_bytes(path, text.encode(encoding))


# ----------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------


def _prepare_tensor(path: str, name, arr) -> tuple[str, np.ndarray]:
    """Check one tensor and return (safetensors dtype, C-contiguous little-endian array)."""
    if not isinstance(name, str):
        raise CheckpointError(f"{path}: tensor names must be str, got {type(name).__name__} {name!r}")
    if name == "__metadata__":
        raise CheckpointError(f"{path}: '__metadata__' is reserved and cannot name a tensor")
    if not isinstance(arr, (np.ndarray, np.generic)):
        raise CheckpointError(
            f"{path}: tensor {name!r} is a {type(arr).__name__}, expected a numpy array; "
            "convert it with np.asarray"
        )
    arr = np.asarray(arr)
    key = (arr.dtype.kind, arr.dtype.itemsize)
    if key not in _NAMES or arr.dtype.fields is not None:
        raise CheckpointError(
            f"{path}: tensor {name!r} has dtype {arr.dtype}, which safetensors files here "
            f"cannot hold (supported: {_SUPPORTED}); convert it with .astype()"
        )
    dtname = _NAMES[key]
    arr = np.asarray(arr, dtype=_DTYPES[dtname], order="C")  # byte-swaps/copies only if needed
    return dtname, arr


def _check_metadata(path: str, metadata: Mapping[str, str] | None) -> dict[str, str]:
    meta = dict(metadata or {})
    for k, v in meta.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise CheckpointError(
                f"{path}: metadata must map str to str, got {k!r}: {type(v).__name__}; "
                "serialize values (e.g. json.dumps) first"
            )
    if meta.setdefault("format", "pt") != "pt":
        raise CheckpointError(
            f"{path}: metadata 'format' must be 'pt' (Hugging Face loaders require it), "
            f"got {meta['format']!r}"
        )
    return meta


CACHE_LINE = 64  # bytes


def _layout_order(name: str, arr: np.ndarray):
    """Where a tensor goes in the data, which starts on a cache line: by the largest power
    of two (up to a cache line) that divides its size, then the largest first. Each tensor
    then starts on a multiple of that power, which its item size divides (so memory-mapped
    arrays are aligned); one of whole cache lines starts on a cache line (a kernel's 64-byte
    loads of a matrix that did not were split across two lines: `small` int8's GEMV ~4%
    slower); and so does the first tensor after those."""
    alignment = min(CACHE_LINE, arr.nbytes & -arr.nbytes) if arr.nbytes else CACHE_LINE
    return -alignment, -arr.nbytes, name


def _build_header(path: str, entries: list[tuple[str, str, np.ndarray]],
                  meta: dict[str, str]) -> bytes:
    header: dict[str, object] = {"__metadata__": meta}
    offset = 0
    for name, dtname, arr in entries:
        header[name] = {"dtype": dtname, "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    raw = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    # Pad with spaces so that the data buffer (at 8 + len) starts on a cache line.
    raw += b" " * (-(8 + len(raw)) % CACHE_LINE)
    if len(raw) > MAX_HEADER_BYTES:  # no reader would open the file
        raise CheckpointError(f"{path}: the header would be {len(raw):,} bytes, over the format's "
                              f"limit of {MAX_HEADER_BYTES:,}: store large metadata as a tensor")
    return raw


def save_safetensors(
    path: str | os.PathLike,
    tensors: Mapping[str, np.ndarray],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write ``tensors`` and string ``metadata`` to a safetensors file, atomically.

    Metadata always includes ``"format": "pt"``. Tensors are stored C-contiguous and
    little-endian. The format forbids gaps between tensors, so alignment comes from the
    header's padding (the data starts on a cache line) and their order (`_layout_order`).
    """
    spath = os.fspath(path)
    if not isinstance(tensors, Mapping):
        raise CheckpointError(f"{spath}: tensors must be a dict of name -> numpy array")
    meta = _check_metadata(spath, metadata)
    entries = [(name, *_prepare_tensor(spath, name, arr)) for name, arr in tensors.items()]
    entries.sort(key=lambda e: _layout_order(e[0], e[2]))
    header = _build_header(spath, entries, meta)
    with _atomic_writer(spath) as f:
        f.write(len(header).to_bytes(8, "little"))
        f.write(header)
        for _, _, arr in entries:
            if arr.size:
                # A 1-d byte view of the contiguous array: written without a copy.
                f.write(memoryview(arr.reshape(-1).view(np.uint8)))


# ----------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(f"duplicate key {k!r} in header")
        out[k] = v
    return out


def _reject_constant(name: str):
    raise ValueError(f"non-standard JSON constant {name}")


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _read_header(path: str, f: BinaryIO, file_size: int) -> tuple[dict, int]:
    """Return (parsed header object, header length N) after checking the framing."""
    if file_size < 8:
        raise CheckpointError(
            f"{path}: file is {file_size} bytes, shorter than the 8-byte safetensors header "
            "length; it is truncated or not a safetensors file"
        )
    n = int.from_bytes(f.read(8), "little")
    if n < 2 or n > MAX_HEADER_BYTES:
        raise CheckpointError(
            f"{path}: header length {n} is not plausible (expected 2..{MAX_HEADER_BYTES}); "
            "not a safetensors file or corrupt"
        )
    if n > file_size - 8:
        raise CheckpointError(
            f"{path}: header length {n} runs past the end of the {file_size}-byte file; "
            "the file is truncated"
        )
    raw = f.read(n)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: header is not valid UTF-8 (byte {e.start}); file is corrupt") from e
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except _DuplicateKey as e:
        raise CheckpointError(f"{path}: {e}; file is corrupt") from e
    except (ValueError, RecursionError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: header is not valid JSON ({msg}); file is corrupt") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: header is a JSON {type(header).__name__}, expected an object")
    return header, n


def _check_metadata_entry(path: str, meta) -> dict[str, str]:
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: __metadata__ must be an object of strings, got {type(meta).__name__}")
    for k, v in meta.items():
        if not isinstance(v, str):
            raise CheckpointError(f"{path}: __metadata__ value for {k!r} is {type(v).__name__}, expected a string")
    return meta


def _check_entry(path: str, name: str, info, buffer_size: int) -> tuple[np.dtype, tuple[int, ...], int, int]:
    """Validate one tensor entry; return (dtype, shape, begin, end)."""
    where = f"{path}: tensor {name!r}"
    if not isinstance(info, dict):
        raise CheckpointError(f"{where}: entry is a {type(info).__name__}, expected an object")
    missing = [k for k in _ENTRY_KEYS if k not in info]
    if missing:
        raise CheckpointError(f"{where}: entry lacks {', '.join(missing)}")
    dtname, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtname, str) or dtname not in _DTYPES:
        raise CheckpointError(f"{where}: unsupported dtype {dtname!r} (supported: {_SUPPORTED})")
    if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
        raise CheckpointError(f"{where}: shape {shape!r} is not a list of integers")
    if any(d < 0 for d in shape) or len(shape) > _MAX_NDIM:
        raise CheckpointError(f"{where}: shape {shape!r} has a negative size or more than {_MAX_NDIM} dims")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
        raise CheckpointError(f"{where}: data_offsets {offsets!r} is not a list of two integers")
    begin, end = offsets
    if not 0 <= begin <= end <= buffer_size:
        raise CheckpointError(
            f"{where}: data_offsets {offsets} are outside the {buffer_size}-byte data buffer "
            "(file truncated or corrupt)"
        )
    dtype = _DTYPES[dtname]
    nbytes = math.prod(shape) * dtype.itemsize  # Python ints: no overflow on absurd shapes
    if nbytes != end - begin:
        raise CheckpointError(
            f"{where}: shape {shape} of {dtname} needs {nbytes} bytes but data_offsets span {end - begin}"
        )
    return dtype, tuple(shape), begin, end


def _check_layout(path: str, spans: list[tuple[int, int, str]], buffer_size: int) -> None:
    """The tensors must tile the data buffer exactly: no overlaps, no holes, no tail."""
    pos = 0
    for begin, end, name in sorted(spans):
        if begin < pos:
            raise CheckpointError(f"{path}: tensor {name!r} at bytes [{begin}, {end}) overlaps the previous tensor")
        if begin > pos:
            raise CheckpointError(f"{path}: data buffer has a hole at bytes [{pos}, {begin}) before tensor {name!r}")
        pos = end
    if pos != buffer_size:
        raise CheckpointError(
            f"{path}: data buffer has {buffer_size - pos} bytes after the last tensor that no "
            "tensor covers (file corrupt or has trailing data)"
        )


def load_safetensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Open a safetensors file; return (tensors, metadata).

    Tensors are read-only views of one ``numpy.memmap`` of the file (zero copy); they stay
    valid after this returns, and the mapping is released when the last view is dropped.
    Zero-size tensors are plain empty read-only arrays (there are no bytes to map).
    Raises CheckpointError for a missing, unreadable or malformed file.
    """
    spath = os.fspath(path)
    try:
        with open(spath, "rb") as f:
            file_size = os.fstat(f.fileno()).st_size
            header, n = _read_header(spath, f, file_size)
            metadata = _check_metadata_entry(spath, header.pop("__metadata__", None))
            buffer_start = 8 + n
            buffer_size = file_size - buffer_start
            entries = {name: _check_entry(spath, name, info, buffer_size) for name, info in header.items()}
            _check_layout(spath, [(b, e, name) for name, (_, _, b, e) in entries.items()], buffer_size)
            # Map the file from the same open handle we validated, so a concurrent
            # replacement of `path` cannot swap in a different file underneath us.
            mm = np.memmap(f, dtype=np.uint8, mode="r", shape=(file_size,)) if buffer_size else None
    except OSError as e:
        raise CheckpointError(f"{spath}: cannot read: {e.strerror or e}") from e
    tensors = {}
    for name, (dtype, shape, begin, end) in entries.items():
        if begin == end:
            arr = np.zeros(shape, dtype=dtype)
        else:
            arr = mm[buffer_start + begin : buffer_start + end].view(dtype).reshape(shape)
        arr.flags.writeable = False
        tensors[name] = arr
    return tensors, dict(metadata)
