"""Tests for tinylm.checkpoint: safetensors I/O and atomic writes."""

import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinylm import checkpoint
from tinylm.checkpoint import (
    CheckpointError,
    atomic_write_bytes,
    atomic_write_text,
    load_safetensors,
    save_safetensors,
)

DTYPES = ["<f8", "<f4", "<f2", "<i8", "<i4", "<i2", "i1", "u1", "?"]


def sample(dtype, shape, seed=0):
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "b":
        return rng.integers(0, 2, size=shape).astype(bool)
    if dt.kind == "f":
        return (rng.standard_normal(shape) * 100).astype(dt)
    info = np.iinfo(dt)
    return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dt)


def write_raw(path, header_obj, data=b"", pad=True):
    """Write a hand-made safetensors file (header as a dict or raw bytes)."""
    raw = header_obj if isinstance(header_obj, bytes) else json.dumps(header_obj).encode()
    if pad:
        raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw + data)
    return path


def tmp_files(directory):
    return [n for n in os.listdir(directory) if n.endswith(".tmp")]


# ---------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (1,), (5,), (2, 3, 4)])
def test_round_trip_every_dtype_and_shape(tmp_path, dtype, shape):
    arr = sample(dtype, shape)
    path = tmp_path / "m.safetensors"
    save_safetensors(path, {"x": arr, "pad": np.arange(3, dtype=np.uint8)})
    tensors, meta = load_safetensors(path)
    out = tensors["x"]
    assert out.dtype == np.dtype(dtype) and out.shape == shape
    np.testing.assert_array_equal(out, arr)
    assert meta == {"format": "pt"}


def test_loads_are_read_only_memmaps(tmp_path):
    path = tmp_path / "m.safetensors"
    save_safetensors(path, {"a": sample("<f4", (4, 5)), "b": sample("i1", (7,)), "c": np.float64(2.5)})
    tensors, _ = load_safetensors(path)
    for name, arr in tensors.items():
        assert isinstance(arr, np.memmap), name
        assert not arr.flags.writeable, name
        with pytest.raises(ValueError):
            arr[...] = 0
    # One mapping of the whole file, sliced per tensor (zero copy): every tensor is a
    # view of the same file-sized base, and disjoint tensors do not overlap.
    base = tensors["a"].base
    assert base is not None and base.nbytes == os.path.getsize(path)
    assert all(np.shares_memory(arr, base) for arr in tensors.values())
    assert not np.shares_memory(tensors["a"], tensors["b"])
    assert float(tensors["c"]) == 2.5


def test_non_native_and_non_contiguous_inputs(tmp_path):
    big_endian = np.arange(12, dtype=">i4").reshape(3, 4)
    strided = np.arange(40, dtype=np.float32).reshape(5, 8)[:, ::3]
    fortran = np.asfortranarray(sample("<f8", (3, 4)))
    path = tmp_path / "m.safetensors"
    save_safetensors(path, {"be": big_endian, "st": strided, "fo": fortran})
    t, _ = load_safetensors(path)
    np.testing.assert_array_equal(t["be"], big_endian)
    np.testing.assert_array_equal(t["st"], strided)
    np.testing.assert_array_equal(t["fo"], fortran)
    assert t["be"].dtype == np.dtype("<i4")


def test_layout_header_aligned_and_tensors_aligned(tmp_path):
    path = tmp_path / "m.safetensors"
    tensors = {"a_u8": np.arange(3, dtype=np.uint8), "b_f64": np.ones(3), "c_f16": np.ones(1, np.float16),
               "d_f32": np.ones(5, np.float32),
               # whole cache lines: each must start on one, whatever the others' sizes
               "e_i8": np.ones((3, 64), np.int8), "f_f32": np.ones(48, np.float32),
               "g_u8": np.ones(64, np.uint8)}
    save_safetensors(path, tensors)
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert (8 + n) % 64 == 0
    header = json.loads(raw[8 : 8 + n])
    for name, info in header.items():
        if name != "__metadata__":
            b, e = info["data_offsets"]
            assert b % np.dtype(tensors[name].dtype).itemsize == 0, name
            if tensors[name].nbytes % 64 == 0:
                assert b % 64 == 0, name
    loaded, _ = load_safetensors(path)
    assert all(a.flags.aligned for a in loaded.values())


def test_metadata_preserved_and_format_forced(tmp_path):
    path = tmp_path / "m.safetensors"
    meta = {"config": json.dumps({"d": 3}), "unicode": "héllo ✓", "empty": ""}
    save_safetensors(path, {"x": np.zeros(2, np.float32)}, meta)
    _, got = load_safetensors(path)
    assert got == {**meta, "format": "pt"}


def test_no_tensors(tmp_path):
    path = tmp_path / "m.safetensors"
    save_safetensors(path, {}, {"k": "v"})
    assert load_safetensors(path) == ({}, {"k": "v", "format": "pt"})


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=12).filter(lambda s: s != "__metadata__"),
        st.tuples(st.sampled_from(DTYPES), st.lists(st.integers(0, 4), max_size=3), st.integers(0, 99)),
        max_size=5,
    ),
    st.dictionaries(st.text(max_size=8).filter(lambda s: s != "format"), st.text(max_size=20), max_size=3),
)
def test_round_trip_hypothesis(tmp_path, spec, meta):
    tensors = {name: sample(dt, tuple(shape), seed) for name, (dt, shape, seed) in spec.items()}
    path = tmp_path / "h.safetensors"
    save_safetensors(path, tensors, meta)
    got, got_meta = load_safetensors(path)
    assert got_meta == {**meta, "format": "pt"}
    assert set(got) == set(tensors)
    for name, arr in tensors.items():
        assert got[name].dtype == arr.dtype and got[name].shape == arr.shape
        np.testing.assert_array_equal(got[name], arr)
        # the layout: aligned for its items, and on a cache line if it is whole lines
        # (an empty tensor has no bytes in the file to place)
        assert got[name].ctypes.data % arr.dtype.itemsize == 0, name
        if arr.nbytes and arr.nbytes % 64 == 0:
            assert got[name].ctypes.data % 64 == 0, name


def test_a_header_over_the_limit_is_refused_when_written(tmp_path, monkeypatch):
    # padding to a cache line could take a header just under the limit over it, where
    # no reader would open the file
    import tinylm.checkpoint as ck
    monkeypatch.setattr(ck, "MAX_HEADER_BYTES", 100)
    with pytest.raises(CheckpointError, match="over the format's limit of 100"):
        save_safetensors(tmp_path / "m.safetensors", {"a": np.zeros(1, np.float32)}, {"k": "v" * 60})
    assert not (tmp_path / "m.safetensors").exists()


# ---------------------------------------------------------------------------- interop

try:
    import safetensors.numpy as safetensors_numpy
except ImportError:  # CI installs it; skip only the interop tests without it
    safetensors_numpy = None
needs_safetensors = pytest.mark.skipif(safetensors_numpy is None, reason="safetensors package not installed")



@needs_safetensors
def test_files_we_write_open_with_safetensors(tmp_path):
    from safetensors import safe_open

    tensors = {f"t_{dt}": sample(dt, (2, 3), i) for i, dt in enumerate(DTYPES)}
    tensors["scalar"] = np.float32(1.5)
    tensors["empty"] = np.zeros((0, 3), np.float32)
    path = tmp_path / "ours.safetensors"
    save_safetensors(path, tensors, {"config": "{}"})
    theirs = safetensors_numpy.load_file(str(path))
    assert set(theirs) == set(tensors)
    for name, arr in tensors.items():
        assert theirs[name].dtype == np.asarray(arr).dtype and theirs[name].shape == np.shape(arr)
        np.testing.assert_array_equal(theirs[name], arr)
    with safe_open(str(path), "np") as f:
        assert f.metadata() == {"config": "{}", "format": "pt"}


@needs_safetensors
def test_files_safetensors_writes_open_with_ours(tmp_path):
    tensors = {f"t_{dt}": sample(dt, (3, 2), i) for i, dt in enumerate(DTYPES)}
    tensors["scalar"] = np.array(7, dtype=np.int8)
    tensors["empty"] = np.zeros((0,), np.float64)
    path = tmp_path / "theirs.safetensors"
    safetensors_numpy.save_file(tensors, str(path), metadata={"format": "pt", "k": "v"})
    ours, meta = load_safetensors(path)
    assert meta == {"format": "pt", "k": "v"}
    for name, arr in tensors.items():
        assert ours[name].dtype == arr.dtype and ours[name].shape == arr.shape
        np.testing.assert_array_equal(ours[name], arr)


# ---------------------------------------------------------------------------- refusals


def _valid_file(tmp_path):
    path = tmp_path / "v.safetensors"
    save_safetensors(path, {"w": sample("<f4", (3, 5)), "b": sample("i1", (4,)), "s": np.float64(1.0)}, {"m": "x"})
    return path


GOOD = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}


@pytest.mark.parametrize(
    "header, data, fragment",
    [
        ([1, 2], b"", "expected an object"),
        ({"a": 3}, b"", "expected an object"),
        ({"a": {"dtype": "F32", "shape": [2]}}, b"\0" * 8, "lacks data_offsets"),
        ({"a": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4, "unsupported dtype"),
        ({"a": {"dtype": 5, "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4, "unsupported dtype"),
        ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 0]}}, b"", "negative"),
        ({"a": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}}, b"\0" * 8, "not a list of integers"),
        ({"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, b"\0" * 4, "not a list of integers"),
        ({"a": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}}, b"\0" * 8, "not a list of integers"),
        ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, "needs 12 bytes"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 9]}}, b"\0" * 9, "two integers"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 8, "outside"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\0" * 8, "outside"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]}}, b"\0" * 8, "outside"),
        ({"a": {"dtype": "F32", "shape": [2 ** 62, 2 ** 62], "data_offsets": [0, 8]}}, b"\0" * 8, "needs"),
        ({**GOOD, "b": {"dtype": "U8", "shape": [4], "data_offsets": [4, 8]}}, b"\0" * 8, "overlaps"),
        ({**GOOD, "b": {"dtype": "U8", "shape": [4], "data_offsets": [12, 16]}}, b"\0" * 16, "hole"),
        (GOOD, b"\0" * 12, "after the last tensor"),
        ({**GOOD, "__metadata__": {"k": 1}}, b"\0" * 8, "expected a string"),
        ({**GOOD, "__metadata__": ["k"]}, b"\0" * 8, "__metadata__ must be an object"),
    ],
)
def test_malformed_headers_refused(tmp_path, header, data, fragment):
    path = write_raw(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(CheckpointError, match=fragment) as exc:
        load_safetensors(path)
    msg = str(exc.value)
    assert str(path) in msg and "\n" not in msg


@pytest.mark.parametrize(
    "raw, fragment",
    [
        (b'{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, "a": {}}', "duplicate key"),
        (b'{"__metadata__": {"k": "1", "k": "2"}}', "duplicate key"),
        (b"\xff\xfe{}", "not valid UTF-8"),
        (b"{not json}", "not valid JSON"),
        (b'{"a": NaN}', "not valid JSON"),
        (b"[" * 100000, "not valid JSON"),  # deep nesting must not escape as RecursionError
    ],
)
def test_bad_header_bytes_refused(tmp_path, raw, fragment):
    path = write_raw(tmp_path / "bad.safetensors", raw, b"\0")
    with pytest.raises(CheckpointError, match=fragment):
        load_safetensors(path)


def test_framing_refused(tmp_path):
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"\x01\x02\x03")
    with pytest.raises(CheckpointError, match="shorter than the 8-byte"):
        load_safetensors(short)
    absurd = tmp_path / "absurd.safetensors"
    absurd.write_bytes((2 ** 63).to_bytes(8, "little") + b"{}")
    with pytest.raises(CheckpointError, match="not plausible"):
        load_safetensors(absurd)
    past = tmp_path / "past.safetensors"
    past.write_bytes((1000).to_bytes(8, "little") + b"{}      ")
    with pytest.raises(CheckpointError, match="past the end"):
        load_safetensors(past)
    with pytest.raises(CheckpointError, match="cannot read"):
        load_safetensors(tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_safetensors(tmp_path)


def test_every_truncation_refused(tmp_path):
    path = _valid_file(tmp_path)
    raw = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    for n in range(len(raw)):
        cut.write_bytes(raw[:n])
        with pytest.raises(CheckpointError):
            load_safetensors(cut)
    cut.write_bytes(raw + b"\0")  # one extra byte is also a malformed buffer
    with pytest.raises(CheckpointError, match="after the last tensor"):
        load_safetensors(cut)


def _check_consistent(tensors, meta, file_size):
    assert isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())
    total = 0
    for arr in tensors.values():
        assert isinstance(arr, np.ndarray) and not arr.flags.writeable
        total += arr.nbytes
        arr.sum()  # touching every byte must not crash
    assert total <= file_size


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_header_corruption_refused_or_consistent(tmp_path, data):
    path = _valid_file(tmp_path)
    raw = bytearray(path.read_bytes())
    n = int.from_bytes(raw[:8], "little")
    flips = data.draw(st.lists(st.tuples(st.integers(0, 8 + n - 1), st.integers(0, 255)), min_size=1, max_size=4))
    for pos, byte in flips:
        raw[pos] = byte
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(bytes(raw))
    try:
        tensors, meta = load_safetensors(bad)
    except CheckpointError as e:
        assert "\n" not in str(e)
    else:
        _check_consistent(tensors, meta, len(raw))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=64))
def test_random_files_never_crash(tmp_path, blob):
    bad = tmp_path / "random.safetensors"
    bad.write_bytes(blob)
    try:
        tensors, meta = load_safetensors(bad)
    except CheckpointError:
        return
    _check_consistent(tensors, meta, len(blob))


# ---------------------------------------------------------------------------- writer refusals


@pytest.mark.parametrize(
    "tensors, meta, fragment",
    [
        ({"x": np.zeros(2, np.complex64)}, None, "supported: F64"),
        ({"x": np.zeros(2, np.uint16)}, None, "cannot hold"),
        ({"x": np.array(["a"])}, None, "cannot hold"),
        ({"x": np.array([object()])}, None, "cannot hold"),
        ({"x": [1.0, 2.0]}, None, "np.asarray"),
        ({1: np.zeros(2)}, None, "names must be str"),
        ({"__metadata__": np.zeros(2)}, None, "reserved"),
        ({"x": np.zeros(2)}, {"k": 1}, "str to str"),
        ({"x": np.zeros(2)}, {"format": "np"}, "'format' must be 'pt'"),
    ],
)
def test_save_refuses_bad_input(tmp_path, tensors, meta, fragment):
    path = tmp_path / "out.safetensors"
    with pytest.raises(CheckpointError, match=fragment):
        save_safetensors(path, tensors, meta)
    assert not path.exists() and tmp_files(tmp_path) == []


def test_save_refuses_bad_paths(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        save_safetensors(tmp_path / "no" / "dir.safetensors", {})
    with pytest.raises(CheckpointError, match="is a directory"):
        save_safetensors(tmp_path, {})


# ---------------------------------------------------------------------------- atomicity


def test_atomic_helpers(tmp_path):
    p = tmp_path / "state.json"
    atomic_write_text(p, "héllo\r\nworld")
    assert p.read_bytes() == "héllo\r\nworld".encode()
    atomic_write_bytes(p, b"\x00\xff")
    assert p.read_bytes() == b"\x00\xff"
    assert tmp_files(tmp_path) == []
    # Permissions follow the umask like a plain open(), not mkstemp's private 0o600.
    if os.name == "posix":
        umask = os.umask(0)
        os.umask(umask)
        assert os.stat(p).st_mode & 0o777 == 0o666 & ~umask


def test_failed_replace_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    save_safetensors(path, {"x": np.arange(4, dtype=np.float32)}, {"v": "old"})
    before = path.read_bytes()

    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.os, "replace", boom)
    with pytest.raises(CheckpointError, match="No space left"):
        save_safetensors(path, {"x": np.arange(9, dtype=np.float32)}, {"v": "new"})
    with pytest.raises(CheckpointError):
        atomic_write_text(path, "new")
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert tmp_files(tmp_path) == []
    assert load_safetensors(path)[1]["v"] == "old"


def test_crash_mid_write_keeps_old_file(tmp_path, monkeypatch):
    """A failure while the data is being written (disk full, Ctrl-C) leaves the old file."""
    path = tmp_path / "m.safetensors"
    save_safetensors(path, {"x": np.arange(4, dtype=np.float32)})
    before = path.read_bytes()
    real_fsync = os.fsync

    for exc in (OSError(5, "Input/output error"), KeyboardInterrupt()):
        def failing_fsync(fd, exc=exc):
            raise exc

        monkeypatch.setattr(checkpoint.os, "fsync", failing_fsync)
        with pytest.raises((CheckpointError, KeyboardInterrupt)):
            save_safetensors(path, {"x": np.arange(1000, dtype=np.float32)})
        monkeypatch.setattr(checkpoint.os, "fsync", real_fsync)
        assert path.read_bytes() == before
        assert tmp_files(tmp_path) == []


def test_crash_during_tensor_write_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    atomic_write_bytes(path, b"old")
    original = checkpoint._atomic_writer

    class Exploding:
        def __init__(self, f):
            self.f, self.calls = f, 0

        def write(self, b):
            self.calls += 1
            if self.calls == 3:  # header length and header went through; die in the data
                raise OSError(28, "No space left on device")
            return self.f.write(b)

    import contextlib

    @contextlib.contextmanager
    def wrapped(p):
        with original(p) as f:
            yield Exploding(f)

    monkeypatch.setattr(checkpoint, "_atomic_writer", wrapped)
    with pytest.raises(CheckpointError, match="No space left"):
        save_safetensors(path, {"x": np.ones(100, np.float32), "y": np.ones(3, np.float32)})
    assert path.read_bytes() == b"old"
    assert tmp_files(tmp_path) == []
