"""int8 kernels and quantization: every instruction-set path this CPU runs returns
exactly the numpy int32 reference; quantization error stays within its bound; bad
arguments raise ValueError naming the argument; int8 model files round-trip and a
tampered one is refused."""

import os

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tinylm import _C, quant
from tinylm.errors import TinylmError
from kernel_paths import isa, threads

ISAS = _C.available_isas()


def int8_values(shape, kind, rng):
    if kind == "random":
        return rng.integers(-127, 128, size=shape, dtype=np.int8)
    if kind == "max":
        return np.full(shape, 127, np.int8)
    if kind == "min":
        return np.full(shape, -127, np.int8)
    if kind == "alternating":
        return np.where(np.indices(shape).sum(axis=0) % 2, 127, -127).astype(np.int8)
    assert kind == "zero_rows"
    a = rng.integers(-127, 128, size=shape, dtype=np.int8)
    a[::2] = 0
    return a


KINDS = ["random", "max", "min", "alternating", "zero_rows"]
# K around the vector widths (16 NEON, 32 AVX2, 64 AVX-512) and the Q8_0 block
DIMS = st.one_of(st.integers(1, 9), st.sampled_from([15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 129, 200]))


# ---------------------------------------------------------------- exact int32 paths


@pytest.mark.parametrize("path", ISAS)
@given(M=DIMS, N=DIMS, K=DIMS, ka=st.sampled_from(KINDS), kb=st.sampled_from(KINDS),
       seed=st.integers(0, 2**32 - 1))
def test_every_path_matches_int32_reference(path, M, N, K, ka, kb, seed):
    rng = np.random.default_rng(seed)
    a, b = int8_values((M, K), ka, rng), int8_values((N, K), kb, rng)
    with isa(path):
        got = _C.int8_gemm_i32(a, b)
    assert got.dtype == np.int32 and got.shape == (M, N)
    np.testing.assert_array_equal(got, quant.matmul_i32_reference(a, b))


@pytest.mark.parametrize("path", ISAS)
@given(M=st.integers(8, 40), N=st.integers(1, 100), K=DIMS, ka=st.sampled_from(KINDS),
       kb=st.sampled_from(KINDS), seed=st.integers(0, 2**32 - 1))
def test_packed_weight_form_matches_int32_reference(path, M, N, K, ka, kb, seed):
    # from 8 rows of x the VNNI and dotprod kernels repack w into panels (csrc/int8/panels.h)
    rng = np.random.default_rng(seed)
    a, b = int8_values((M, K), ka, rng), int8_values((N, K), kb, rng)
    with isa(path):
        got = _C.int8_gemm_i32(a, b)
    np.testing.assert_array_equal(got, quant.matmul_i32_reference(a, b))


@pytest.mark.parametrize("path", ISAS)
def test_paths_at_the_largest_k(path):
    # 127*127*65536 fits int32; the VNNI kernels' biased raw sums wrap and must still be exact
    a = np.full((9, 65536), 127, np.int8)  # 9 rows: the packed form too
    a[1] = -127
    b = np.full((3, 65536), 127, np.int8)
    with isa(path):
        got = _C.int8_gemm_i32(a, b)
    np.testing.assert_array_equal(got, quant.matmul_i32_reference(a, b))
    assert got[0, 0] == 127 * 127 * 65536


def test_dispatch_follows_set_isa():
    kernels = _C.int8_kernels()
    assert kernels[-1] == "scalar"
    chosen = {}
    for path in ISAS:
        with isa(path):
            chosen[path] = _C.int8_path()
        assert chosen[path] in kernels
    assert chosen["scalar"] == "scalar"
    if "avx2" in ISAS:
        assert chosen["avx2"] == "avx2"
    if "avx512vnni" in ISAS:
        assert chosen["avx512vnni"] == "avx512vnni"
    if "neon" in ISAS:
        assert chosen["neon"] == "neon"


def test_threads_do_not_change_results(rng):
    a = rng.integers(-127, 128, (64, 517), dtype=np.int8)  # big enough to split
    b = rng.integers(-127, 128, (301, 517), dtype=np.int8)
    with threads(1):
        one = _C.int8_gemm_i32(a, b)
    with threads(2):
        two = _C.int8_gemm_i32(a, b)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(one, quant.matmul_i32_reference(a, b))


def test_minus_128_is_rejected():
    a = np.zeros((2, 8), np.int8)
    a[1, 3] = -128
    with pytest.raises(ValueError, match="'a'.*-128"):
        _C.int8_gemm_i32(a, np.zeros((1, 8), np.int8))
    with pytest.raises(ValueError, match="'b'.*-128"):
        _C.int8_gemm_i32(np.zeros((1, 8), np.int8), a)
    with pytest.raises(ValueError, match="-128"):
        quant.Int8Weight(a, np.ones(2, np.float32))


# ---------------------------------------------------------------- quantization


finite = st.floats(-1e4, 1e4, allow_nan=False, width=32)


@pytest.mark.parametrize("path", ISAS)
@given(x=hnp.arrays(np.float32, st.tuples(st.integers(1, 5), st.integers(1, 70)), elements=finite))
def test_native_quantize_rows_matches_reference_and_bound(path, x):
    with isa(path):
        q, s = _C.int8_quantize_rows(x)
    q_ref, s_ref = quant.quantize_rows(x)
    np.testing.assert_array_equal(q, q_ref)
    np.testing.assert_array_equal(s, s_ref)
    assert q.min() >= -127
    err = np.abs(q.astype(np.float32) * s[:, None] - x)
    amax = np.abs(x).max(axis=1)
    normal = amax >= quant.MIN_AMAX
    assert (err[normal] <= 0.5 * s[normal, None] * (1 + 1e-5)).all()
    assert (err[~normal] <= quant.MIN_AMAX).all()  # such tiny rows count as zero
    assert (np.abs(q).max(axis=1)[normal] == 127).all()  # the full range is used
    assert (q[~normal] == 0).all()


@pytest.mark.parametrize("path", ISAS)
@pytest.mark.parametrize("K", [3, 8, 37])
def test_quantize_rows_non_finite_does_not_crash(path, K):
    x = np.zeros((3, K), np.float32)
    x[:, :3] = [[np.inf, 1.0, 2.0], [1.0, np.nan, 3.0], [1.0, 2.0, 3.0]]
    x[0, :3], x[0, -1] = [-1.0, 1.0, 2.0], -np.inf  # inf at the end
    x = np.ascontiguousarray(x[[0, 1, 2]])
    with isa(path):
        q, s = _C.int8_quantize_rows(x)
    assert np.isnan(s[:2]).all() and (q[:2] == 0).all()  # non-finite rows: NaN outputs
    np.testing.assert_array_equal(q[2, :3], [42, 85, 127])
    q_ref, s_ref = quant.quantize_rows(x)
    np.testing.assert_array_equal(q, q_ref)
    np.testing.assert_array_equal(s, s_ref)
    with isa(path):
        y = quant.linear(x, quant.quantize_weight(np.eye(K, dtype=np.float32)))
    assert np.isnan(y[:2]).all() and np.isfinite(y[2]).all()


def test_quantize_weight_round_trip(rng):
    w = rng.standard_normal((40, 77)).astype(np.float32)
    w[3] = 0.0
    qw = quant.quantize_weight(w)
    assert qw.values.dtype == np.int8 and qw.scale.shape == (40,)
    assert qw.scale[3] == 0 and not qw.values[3].any()
    err = np.abs(qw.dequantize() - w)
    assert (err <= 0.5 * qw.scale[:, None] * (1 + 1e-5)).all()
    np.testing.assert_allclose(qw[np.array([1, 2])], qw.dequantize()[[1, 2]])
    with pytest.raises(ValueError, match="NaN"):
        quant.quantize_weight(np.array([[1.0, np.nan]], np.float32))


@pytest.mark.parametrize("path", ISAS)
@given(M=st.integers(1, 6), N=DIMS, K=DIMS, seed=st.integers(0, 2**32 - 1))
def test_linear_matches_reference_and_fp32(path, M, N, K, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((M, K)) * rng.uniform(0.01, 100)).astype(np.float32)
    w = rng.standard_normal((N, K)).astype(np.float32)
    qw = quant.quantize_weight(w)
    with isa(path):
        y = quant.linear(x, qw)
    # the same arithmetic as the numpy int8 reference (exact int32, same rescale)
    np.testing.assert_allclose(y, quant.linear_reference(x, qw), rtol=1e-6, atol=0)
    # and within the quantization error of the fp32 product:
    # |x.w - xq.wq| <= sum_k |x| dw + |w| dx + dx dw, with dx <= sx/2, dw <= sw/2
    _, sx = quant.quantize_rows(x)
    bound = (0.5 * np.abs(x).sum(1)[:, None] * qw.scale[None, :]
             + 0.5 * sx[:, None] * np.abs(w).sum(1)[None, :]
             + 0.25 * K * sx[:, None] * qw.scale[None, :])
    y32 = x.astype(np.float64) @ w.T.astype(np.float64)
    assert (np.abs(y - y32) <= bound * 1.001 + 1e-4 * np.abs(y32) + 1e-6).all()


def test_linear_error_is_small_in_practice(rng):
    x = rng.standard_normal((16, 256)).astype(np.float32)
    w = (rng.standard_normal((64, 256)) * 0.05).astype(np.float32)
    y = quant.linear(x, quant.quantize_weight(w))
    ref = x @ w.T
    assert np.linalg.norm(y - ref) / np.linalg.norm(ref) < 0.02


def test_linear_batches_leading_dims_and_matmul_syntax(rng):
    x = rng.standard_normal((2, 3, 40)).astype(np.float32)
    qw = quant.quantize_weight(rng.standard_normal((7, 40)).astype(np.float32))
    y = quant.linear(x, qw)
    assert y.shape == (2, 3, 7)
    np.testing.assert_array_equal(x @ qw.T, y)  # what model.forward writes
    np.testing.assert_array_equal(y[1, 2], quant.linear(x[1, 2], qw))


def test_linear_out_argument(rng):
    x = rng.standard_normal((3, 20)).astype(np.float32)
    qw = quant.quantize_weight(rng.standard_normal((5, 20)).astype(np.float32))
    out = np.empty((3, 5), np.float32)
    r = _C.int8_linear(x, qw.values, qw.scale, out)
    assert r is out or np.shares_memory(r, out)
    np.testing.assert_array_equal(out, quant.linear(x, qw))


# ---------------------------------------------------------------- bad arguments


def test_bad_arguments_raise_value_error_naming_them():
    x = np.ones((2, 8), np.float32)
    w = np.ones((3, 8), np.int8)
    s = np.ones(3, np.float32)
    cases = [
        (lambda: _C.int8_linear(x.astype(np.float64), w, s), "'x'.*dtype"),
        (lambda: _C.int8_linear(x, w.astype(np.int16), s), "'weight'.*dtype"),
        (lambda: _C.int8_linear(x, w, s.astype(np.float64)), "'scale'.*dtype"),
        (lambda: _C.int8_linear(x, np.ones((3, 9), np.int8), s), "'weight'.*dimension 1"),
        (lambda: _C.int8_linear(x, w, np.ones(4, np.float32)), "'scale'.*dimension 0"),
        (lambda: _C.int8_linear(np.ones((2, 16), np.float32)[:, ::2], w, s), "'x'.*contiguous"),
        (lambda: _C.int8_linear(np.ones((0, 8), np.float32), w, s), "'x'.*empty"),
        (lambda: _C.int8_linear(np.ones(8, np.float32), w, s), "'x'.*dimensions"),
        (lambda: _C.int8_linear(x, w, s, np.ones((2, 4), np.float32)), "'out'"),
        (lambda: _C.int8_linear(x, w, s, np.ones((2, 3), np.float64)), "'out'.*dtype"),
        (lambda: _C.int8_linear([[1.0]], w, s), "'x'.*numpy array"),
        (lambda: _C.int8_gemm_i32(w, np.ones((3, 7), np.int8)), "'b'"),
        (lambda: _C.int8_gemm_i32(np.ones((1, 65537), np.int8), np.ones((1, 65537), np.int8)), "'a'.*65536"),
        (lambda: _C.int8_quantize_rows(np.ones((2, 3), np.int8)), "'x'.*dtype"),
        (lambda: _C.int8_read_checksum(np.ones(4, np.uint32)), "'data'.*dtype"),
    ]
    for call, pattern in cases:
        with pytest.raises(ValueError, match=pattern):
            call()
    ro = np.ones((2, 3), np.float32)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="'out'.*read-only"):
        _C.int8_linear(x, w, s, ro)
    with pytest.raises(ValueError, match="last dimension"):
        quant.linear(np.ones((2, 5), np.float32), quant.Int8Weight(w, s))
    with pytest.raises(ValueError, match="scale"):
        quant.Int8Weight(w, np.ones(2, np.float32))


def test_read_checksum_uses_the_widest_loads_of_each_level():
    # the roofline's read in 16-byte loads measured the load ports, not the memory
    widest = {"avx2": "avx2", "avxvnni": "avx2", "avx512": "avx512", "avx512vnni": "avx512"}
    for path in ISAS:
        with isa(path):
            assert _C.int8_read_path() == widest.get(path, "portable"), path


@pytest.mark.parametrize("path", ISAS)
def test_read_checksum(path, rng):
    # every level's read (16-, 32- and 64-byte loads), over lengths that leave every
    # size of tail, from an offset that is not a whole vector, and one larger than a
    # thread's chunk
    a = rng.integers(0, 2**64, 100001, dtype=np.uint64)
    with isa(path), threads(2):
        for n in list(range(1, 70)) + [100000]:
            assert _C.int8_read_checksum(a[1:1 + n]) == int(a[1:1 + n].sum(dtype=np.uint64)), n


# ---------------------------------------------------------------- model files


@pytest.fixture
def tiny_model(tmp_path):
    from tinylm.config import preset
    from tinylm.model import init_params
    from tinylm.modelfile import save_model
    from tinylm.tokenizer import ByteTokenizer
    cfg = preset("tiny")
    params = init_params(cfg, seed=1)
    path = tmp_path / "fp32.safetensors"
    save_model(path, cfg, params, ByteTokenizer())
    return cfg, params, path


def test_quantize_refuses_to_write_over_its_input(tiny_model, tmp_path):
    """`tinylm quantize m.safetensors m.safetensors` replaced the fp32 model with its int8
    copy; the same file by another name (a hard link) too."""
    _, _, path = tiny_model
    before = path.read_bytes()
    link = tmp_path / "link.safetensors"
    os.link(path, link)
    for out in (path, link):
        with pytest.raises(TinylmError, match="is the input model"):
            quant.quantize_file(path, out)
    assert path.read_bytes() == before


def test_quantize_writes_over_model_files_only(tiny_model, tmp_path):
    """The int8 copy was renamed over whatever had the output's name: a user's file, a
    run's metrics or checkpoint, another fp32 model, a device (as root, /dev/full became
    a regular file), a link (replaced, its target left stale). Now an earlier int8 copy
    is replaced, a link written through, and anything else refused, untouched."""
    _, _, path = tiny_model
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    other_fp32 = tmp_path / "other.safetensors"  # another model's fp32 weights (or a
    other_fp32.write_bytes(path.read_bytes())   # run's checkpoint, an fp32 file too)
    for out in (notes, tmp_path, "/dev/null", other_fp32):
        with pytest.raises(TinylmError, match="is not an int8 model file"):
            quant.quantize_file(path, out)
    assert notes.read_text() == "mine" and os.path.exists("/dev/null")
    assert other_fp32.read_bytes() == path.read_bytes()
    assert not os.path.isfile("/dev/null")
    old = tmp_path / "old-int8.safetensors"
    quant.quantize_file(path, old)
    quant.quantize_file(path, old)  # an earlier int8 copy: replaced
    store = tmp_path / "store"
    store.mkdir()
    (store / "m.safetensors").write_bytes(old.read_bytes())
    link = tmp_path / "link.safetensors"
    link.symlink_to(store / "m.safetensors")
    quant.quantize_file(path, link)
    assert link.is_symlink() and quant.load_int8_model(link)[0] == tiny_model[0]
    assert [p.name for p in store.iterdir()] == ["m.safetensors"]  # no temporaries left


def test_a_model_path_that_is_not_a_file_is_refused_not_waited_on(tmp_path):
    from tinylm.modelfile import read_model
    fifo = tmp_path / "fifo.safetensors"
    os.mkfifo(fifo)  # opening it would wait for a writer forever
    with pytest.raises(TinylmError, match="not a regular file"):
        read_model(fifo)


def test_quantize_file_round_trip(tiny_model, tmp_path):
    from tinylm.model import forward
    cfg, params, path = tiny_model
    out = tmp_path / "int8.safetensors"
    fp32_bytes, int8_bytes = quant.quantize_file(path, out)
    assert int8_bytes < fp32_bytes / 3
    cfg2, qparams, tok = quant.load_int8_model(out)
    assert cfg2 == cfg
    assert isinstance(qparams["model.embed_tokens.weight"], quant.Int8Weight)
    assert qparams["model.norm.weight"].dtype == np.float32
    ids = np.arange(20).reshape(2, 10) % cfg.vocab_size
    ref = forward(params, cfg, ids)
    got = forward(qparams, cfg, ids)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max() + 1e-3
    assert quant.load_any_model(path)[1]["model.norm.weight"].dtype == np.float32
    with pytest.raises(TinylmError, match="not an int8 model"):
        quant.load_int8_model(path)


@pytest.mark.parametrize("tamper, message", [
    (lambda t: t.update({"model.norm.weight_x": t.pop("model.layers.0.mlp.up_proj.weight_scale")}),
     "scale tensor .* is missing"),
    (lambda t: t.update({"model.layers.0.mlp.up_proj.weight_scale": np.ones(3, np.float32)}),
     "scale must be float32 of shape"),
    (lambda t: t.update({"model.layers.0.mlp.up_proj.weight_scale":
                         t["model.layers.0.mlp.up_proj.weight_scale"].astype(np.float64)}),
     "scale must be float32"),
    (lambda t: t.update({"model.layers.1.self_attn.q_proj.weight":
                         t["model.layers.1.self_attn.q_proj.weight"].astype(np.int16)}),
     "is int16, expected int8"),
    (lambda t: t.update({"model.norm.weight": t["model.norm.weight"].astype(np.int8)}),
     "expected float32"),
    (lambda t: t["model.embed_tokens.weight"].__setitem__((0, 0), -128), "-128"),
    (lambda t: t["model.embed_tokens.weight"].__setitem__((-1, -1, -1, -1), -128), "-128"),
    (lambda t: t.update({"model.layers.0.mlp.down_proj.weight":
                         t["model.layers.0.mlp.down_proj.weight"][:, :-1]}),
     r"has shape .*expected .*\(the panels of"),
])
def test_tampered_int8_file_is_refused(tiny_model, tmp_path, tamper, message):
    from tinylm.checkpoint import load_safetensors, save_safetensors
    _, _, path = tiny_model
    good = tmp_path / "int8.safetensors"
    quant.quantize_file(path, good)
    tensors, meta = load_safetensors(good)
    tensors = {k: np.array(v) for k, v in tensors.items()}
    tamper(tensors)
    bad = tmp_path / "bad.safetensors"
    save_safetensors(bad, tensors, meta)
    with pytest.raises(TinylmError, match=message):
        quant.load_int8_model(bad)


@given(st.integers(1, 40), st.integers(1, 70), st.integers(0, 2**32 - 1))
def test_panels_hold_each_byte_where_the_layout_says(N, K, seed):
    """Byte k of row n sits in panel n // 16, group k // 4, lane n % 16, byte k % 4; rows
    past N and bytes past K are zero; and the panels give back the rows, and the same
    embedding rows, as the matrix they came from."""
    values = np.random.default_rng(seed).integers(-127, 128, (N, K)).astype(np.int8)
    panels = quant.to_panels(values)
    assert panels.shape == quant.panels_shape(N, K) == (-(-N // 16), -(-K // 4), 16, 4)
    n, k = np.meshgrid(np.arange(N), np.arange(K), indexing="ij")
    np.testing.assert_array_equal(panels[n // 16, k // 4, n % 16, k % 4], values)
    assert int(np.abs(panels.astype(np.int64)).sum()) == int(np.abs(values.astype(np.int64)).sum())
    np.testing.assert_array_equal(quant.from_panels(panels, N, K), values)
    scale = np.linspace(0.5, 1, N, dtype=np.float32)
    rows = quant.Int8Weight(values, scale)
    stored = quant.Int8Weight.from_panels(panels, scale, (N, K))
    ids = np.array([[0, N - 1], [N // 2, 0]])
    np.testing.assert_array_equal(stored[ids], rows[ids])
    np.testing.assert_array_equal(stored.values, values)


def test_int8_file_of_the_row_layout_is_refused(tiny_model, tmp_path):
    """A file quantized before the panels (matrices row by row) gets a message to quantize
    again, not a shape error about each tensor."""
    from tinylm.checkpoint import load_safetensors, save_safetensors
    _, _, path = tiny_model
    good = tmp_path / "int8.safetensors"
    quant.quantize_file(path, good)
    tensors, meta = load_safetensors(good)
    cfg, params, _ = quant.load_int8_model(good)
    old = {k: (params[k].values if k in params and hasattr(params[k], "panels") else np.array(v))
           for k, v in tensors.items()}
    meta = dict(meta, **{"tinylm.int8_scheme": "int8 symmetric, per-row float32 scales; "
                         "activations per-token int8; int32 accumulation"})
    save_safetensors(tmp_path / "old.safetensors", old, meta)
    with pytest.raises(TinylmError, match="earlier layout.*quantize the fp32 model again"):
        quant.load_int8_model(tmp_path / "old.safetensors")


@pytest.mark.parametrize("path", ISAS)
def test_quantize_rounds_half_to_even_on_every_path(path):
    halves = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, -126.5], np.float32)
    x = np.tile(np.concatenate([[127.0], halves]).astype(np.float32), 5)[None, :]  # K = 45
    with isa(path):
        q, s = _C.int8_quantize_rows(x)
    assert s[0] == np.float32(1.0)
    np.testing.assert_array_equal(q[0, 1:9], [0, 2, 2, 0, -2, -2, 126, -126])
    np.testing.assert_array_equal(q, quant.quantize_rows(x)[0])


@pytest.mark.parametrize("path", ISAS)
def test_quantize_tiny_rows(path):
    x = np.zeros((4, 40), np.float32)
    x[:, 0] = [1e-30, 9e-31, np.finfo(np.float32).tiny, 1e-45]
    x[:, 39] = x[:, 0] / 2
    with isa(path):
        q, s = _C.int8_quantize_rows(x)
    q_ref, s_ref = quant.quantize_rows(x)
    np.testing.assert_array_equal(q, q_ref)
    np.testing.assert_array_equal(s, s_ref)
    assert q[0, 0] == 127 and q[0, 39] == 64 and s[0] > 0  # 1e-30 is still quantized
    assert (q[1:] == 0).all() and (s[1:] == 0).all()  # below it: a zero row
