"""int8 quantization: weights, activations, the int8 linear layer and int8 model files.

The scheme
----------
Weights are symmetric int8 with **one float32 scale per output row**::

    scale[n] = max_k |W[n, k]| / 127        Wq[n, k] = rint(W[n, k] * 127 / max_k |W[n, k]|)

Activations are quantized the same way per row (token) when a layer runs, products
accumulate exactly in int32, and the result is rescaled::

    y[m, n] = float(sum_k xq[m, k] * Wq[n, k]) * (x_scale[m] * scale[n])

All int8 values stay in [-127, 127] (rint never reaches -128): the AVX2 kernel's
u8 x s8 pair sums (vpmaddubsw) and the ARMv8.0 kernel's int16 pair sums (smull+smlal)
can only overflow on -128. Rounding is round-half-to-even (numpy.rint), identical in
the numpy reference below and in the C++ kernels, so the two agree bit for bit.

Why per row and not per group of 32 along K (GGUF Q8_0)? Both were measured (AMD EPYC
Zen 4, AVX-512 VNNI, 2026-11-23):

- Accuracy: on the trained `baby` model (default corpus, 65,536 validation tokens) the
  full int8 model (per-row weights, per-token activations, int8 embedding/head) loses
  +0.015% in validation loss against fp32 (1.3094 -> 1.3096 nats/token). Weight-only
  quantization costs +0.003% per row and +0.004% per group of 32 (noise level): the
  activation quantization, shared by both schemes, dominates, so group scales buy
  nothing measurable.
- Speed: a group-32 AVX-512 VNNI GEMM tile (int32 -> float conversion and a scaled float
  add after every vpdpbusd) ran at 161 GOP/s against 311 GOP/s for the per-row kernel
  (M=64, N=K=1024, one thread, same blocking); for the memory-bound GEMV, float32 group
  scales add 1/8 to the bytes read (1/16 as float16).
- Simplicity: one scale per row is also one scale per embedding row, so the tied
  embedding/head needs nothing special (see below), and a kernel's raw int32 result is
  the whole dot product, which the tests compare exactly with the scalar reference.
A GGUF Q8_0 export would re-quantize (one pass; error of one extra rounding).

Model files (`tinylm quantize IN OUT`)
--------------------------------------
Every matrix becomes `<name>` (int8 panels, below) plus `<name>_scale` (float32 [N]); the norms
stay float32 (they are tiny, and they multiply, so their error would not average out).
The tied embedding/head is int8 as well: a token's embedding is row `ids` of Wq times
its row scale, and the head is one more int8 GEMV with the same per-row scales. In byte
vocabularies it is small, in SentencePiece vocabularies it is often the largest matrix,
and keeping it fp32 measured no better (baby: +0.052% vs +0.049% in one run). The metadata says
`tinylm.weights = int8`.

The file stores an int8 matrix in panels of 16 rows, [ceil(N / 16), ceil(K / 4), 16, 4]:
within a panel, each group of four bytes of K holds those four bytes of its 16 rows side
by side, rows past N and bytes past K zero (`to_panels`). That is the decode step's
layout (csrc/engine/gemv_panels.h): one 64-byte group feeds 16 rows' sums at once (one
AVX-512 VNNI instruction), where rows stored one after another each ended in a
horizontal sum; and generation maps the file's weights without copying them, so the
layout it reads is the one on disk. Files of the row-by-row layout (before panels) are
refused with a message to quantize again.
"""
import os

import numpy as np

from .errors import TinylmError

SCHEME = ("int8 symmetric, per-row float32 scales; activations per-token int8; int32 "
          "accumulation; matrices in panels of 16 rows x 4 bytes")
WEIGHTS_KEY = "tinylm.weights"
SCALE_SUFFIX = "_scale"
MAX_K = 65536  # 127 * 127 * K must fit in int32
MIN_AMAX = np.float32(1e-30)  # as kMinAmax in csrc/int8/int8.h


# ---------------------------------------------------------------- numpy reference


def quantize_rows(x):
    """Symmetric per-row int8 quantization (the reference the C++ kernel matches exactly).

    x [M, K] float32 -> (q int8 [M, K], scale float32 [M]) with x ~= q * scale[:, None].
    An all-zero row (or one whose largest |x| is below MIN_AMAX = 1e-30) gets scale 0 and
    q = 0; a row with NaN or inf gets scale NaN and q = 0.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"quantize_rows: x must be 2-D [rows, K], got shape {x.shape}")
    amax = np.abs(x).max(axis=1)
    normal = amax >= MIN_AMAX  # below it a row counts as zero (keeps 127 / amax finite)
    scale = np.where(normal, amax / np.float32(127), np.float32(0)).astype(np.float32)
    with np.errstate(divide="ignore", over="ignore"):
        inv = np.where(normal, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    finite = np.isfinite(x).all(axis=1)  # a row with NaN/inf: scale NaN, q = 0
    scale[~finite] = np.nan
    inv[~finite] = 0
    q = np.clip(np.rint(np.where(finite[:, None], x, 0) * inv[:, None]), -127, 127).astype(np.int8)
    return q, scale


def matmul_i32_reference(a, b):
    """Exact int32 a @ b.T for int8 a [M, K], b [N, K]."""
    return np.asarray(a, np.int32) @ np.asarray(b, np.int32).T


def linear_reference(x, weight):
    """The int8 linear layer in numpy: the same arithmetic as the native kernel."""
    x2 = np.asarray(x, np.float32).reshape(-1, weight.shape[1])
    q, xs = quantize_rows(x2)
    acc = matmul_i32_reference(q, weight.values).astype(np.float32)
    y = acc * (xs[:, None] * weight.scale[None, :])
    return y.reshape(*np.shape(x)[:-1], weight.shape[0])


def quantize_groups_reference(w, group=32):
    """Per-group (GGUF Q8_0-style) quantization, for the scheme comparison only: returns
    the dequantized float32 weight."""
    w = np.asarray(w, np.float32)
    N, K = w.shape
    pad = (-K) % group
    wp = np.pad(w, ((0, 0), (0, pad))).reshape(N, -1, group)
    amax = np.abs(wp).max(axis=2, keepdims=True)
    scale = amax / np.float32(127)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(amax > 0, np.rint(wp * (np.float32(127) / amax)), 0)
    return (q * scale).reshape(N, -1)[:, :K].astype(np.float32)


# ---------------------------------------------------------------- the int8 weight


PANEL_ROWS = 16  # rows a panel; and 4 bytes of K a group


def panels_shape(N, K):
    """The panels of an int8 matrix [N, K]: (ceil(N / 16), ceil(K / 4), 16, 4)."""
    return (-(-N // PANEL_ROWS), -(-K // 4), PANEL_ROWS, 4)


def to_panels(values):
    """int8 [N, K] -> its panels (the model file's layout; see the module's docstring)."""
    N, K = values.shape
    P, G = panels_shape(N, K)[:2]
    padded = np.zeros((P * PANEL_ROWS, G * 4), np.int8)
    padded[:N, :K] = values
    return np.ascontiguousarray(padded.reshape(P, PANEL_ROWS, G, 4).transpose(0, 2, 1, 3))


def from_panels(panels, N, K):
    """Panels -> the int8 matrix [N, K] they hold (a copy)."""
    P, G = panels.shape[:2]
    return np.ascontiguousarray(panels.transpose(0, 2, 1, 3).reshape(P * PANEL_ROWS, G * 4)[:N, :K])


class Int8Weight:
    """An int8 matrix [N, K] with one float32 scale per row: W ~= values * scale[:, None].

    It stands in for the float matrix in the two ways tinylm's model uses a weight,
    `x @ W.T` (runs the native int8 kernel) and `E[ids]` (dequantizes those rows), so
    `tinylm.model.forward` runs an int8 model unchanged. It holds the rows (`values`,
    from quantizing) or the panels (`panels`, from a model file) and makes the other on
    first use: the native engine reads the file's panels in place, the numpy reference
    the rows.
    """

    __array_ufunc__ = None  # make numpy defer `x @ w.T` to us instead of converting us
    dtype = np.dtype(np.float32)  # the dtype of what it computes

    def __init__(self, values, scale, name="weight"):
        if not isinstance(values, np.ndarray) or values.dtype != np.int8 or values.ndim != 2:
            raise ValueError(f"{name}: values must be a 2-D int8 array, got "
                             f"{getattr(values, 'dtype', type(values).__name__)} "
                             f"{getattr(values, 'shape', '')}")
        self._init(values.shape, scale, name)
        self._values, self._panels = np.ascontiguousarray(values), None
        self._refuse_minus_128(values, name)

    @classmethod
    def from_panels(cls, panels, scale, shape, name="weight"):
        """The matrix of `shape` (N, K) stored as `panels` (see to_panels), kept as given."""
        self = cls.__new__(cls)
        self._init(shape, scale, name)
        want = panels_shape(*shape)
        if not isinstance(panels, np.ndarray) or panels.dtype != np.int8 or panels.shape != want:
            raise ValueError(f"{name}: panels must be int8 of shape {want} (the panels of "
                             f"{tuple(shape)}), got {getattr(panels, 'dtype', type(panels).__name__)} "
                             f"{getattr(panels, 'shape', '')}")
        self._values, self._panels = None, panels
        self._refuse_minus_128(panels, name)
        return self

    def _init(self, shape, scale, name):
        if not isinstance(scale, np.ndarray) or scale.dtype != np.float32 or scale.shape != shape[:1]:
            raise ValueError(f"{name}: scale must be float32 of shape ({shape[0]},) "
                             f"(one per row), got {getattr(scale, 'dtype', type(scale).__name__)} "
                             f"{getattr(scale, 'shape', '')}")
        if 0 in shape:
            raise ValueError(f"{name}: empty weight {tuple(shape)}")
        if shape[1] > MAX_K:
            raise ValueError(f"{name}: K = {shape[1]} exceeds {MAX_K} (int32 accumulation)")
        if not np.isfinite(scale).all() or (scale < 0).any():
            raise ValueError(f"{name}: scale must be finite and non-negative")
        self.shape = tuple(shape)
        self.scale = np.ascontiguousarray(scale)

    @staticmethod
    def _refuse_minus_128(data, name):
        if (data == -128).any():
            raise ValueError(f"{name}: values contain -128; symmetric int8 uses [-127, 127]")

    @property
    def values(self):
        """The rows, int8 [N, K]."""
        if self._values is None:
            self._values = from_panels(self._panels, *self.shape)
        return self._values

    @property
    def panels(self):
        """The panels, int8 [ceil(N / 16), ceil(K / 4), 16, 4] (the model file's layout)."""
        if self._panels is None:
            self._panels = to_panels(self._values)
        return self._panels

    ndim = 2
    nbytes = property(lambda self: self.panels.nbytes + self.scale.nbytes)  # as stored

    def dequantize(self):
        return self.values.astype(np.float32) * self.scale[:, None]

    def __getitem__(self, rows):  # embedding lookup: E[ids], from whichever layout is held
        if self._values is not None:
            q = self._values[rows]
        else:
            rows = np.asarray(rows)
            q = self._panels[rows // PANEL_ROWS, :, rows % PANEL_ROWS, :]
            q = q.reshape(*rows.shape, -1)[..., :self.shape[1]]
        return q.astype(np.float32) * self.scale[rows][..., None]

    @property
    def T(self):
        return _Transposed(self)

    def __repr__(self):
        return f"Int8Weight(shape={self.shape})"


class _Transposed:
    """`W.T` of an Int8Weight: only `x @ W.T` is defined."""

    __array_ufunc__ = None

    def __init__(self, weight):
        self.weight = weight

    def __rmatmul__(self, x):
        return linear(x, self.weight)


def quantize_weight(w, name="weight"):
    """float32 w [N, K] -> Int8Weight (per-row symmetric int8)."""
    w = np.asarray(w)
    if w.ndim != 2 or w.size == 0:
        raise ValueError(f"{name}: expected a non-empty 2-D matrix [N, K], got shape {w.shape}")
    if not np.isfinite(w).all():
        raise ValueError(f"{name}: contains NaN or infinity; cannot quantize")
    q, scale = quantize_rows(w.astype(np.float32, copy=False))
    return Int8Weight(q, scale, name)


def linear(x, weight, out=None):
    """y = x @ W.T with the native int8 kernel: x [..., K] float32, weight an Int8Weight
    [N, K]; x is quantized per row at call time. Returns float32 [..., N]."""
    from . import _C
    x = np.asarray(x)
    if x.ndim == 0 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"x: last dimension must be K = {weight.shape[1]}, got shape {x.shape}")
    x2 = np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=np.float32)
    y = _C.int8_linear(x2, weight.values, weight.scale, out)
    return y.reshape(*x.shape[:-1], weight.shape[0])


# ---------------------------------------------------------------- whole models


def quantize_params(params: dict) -> dict:
    """A model's parameter dict -> {name: Int8Weight for matrices, float32 for norms}."""
    out = {}
    for name, w in params.items():
        w = np.asarray(w)
        out[name] = quantize_weight(w, name) if w.ndim == 2 else np.asarray(w, np.float32)
    return out


def to_tensors(qparams: dict) -> dict:
    """Int8 parameters -> the flat tensors stored in a model file."""
    tensors = {}
    for name, w in qparams.items():
        if isinstance(w, Int8Weight):
            tensors[name] = w.panels
            tensors[name + SCALE_SUFFIX] = w.scale
        else:
            tensors[name] = w
    return tensors


def quantize_file(in_path, out_path):
    """Reads an fp32 model file, writes the int8 model file; returns (fp32 bytes, int8 bytes)
    of the parameters. Refuses to write over its input (the fp32 weights would be gone)."""
    from .modelfile import load_model, read_model, save_model
    if read_model(in_path)[3].get(WEIGHTS_KEY) == "int8":
        raise TinylmError(f"'{in_path}' is already an int8 model; quantize reads an fp32 model")
    cfg, params, tokenizer = load_model(in_path)
    target = _output_file(in_path, out_path)
    try:
        qparams = quantize_params(params)
    except ValueError as e:  # NaN or infinity: a run that diverged, or a damaged file
        raise TinylmError(f"'{in_path}': {e}") from None
    save_model(target, cfg, to_tensors(qparams), tokenizer,
               extra_metadata={WEIGHTS_KEY: "int8", "tinylm.int8_scheme": SCHEME})
    return (sum(np.asarray(p).nbytes for p in params.values()),
            sum(p.nbytes for p in qparams.values()))


def _output_file(in_path, out_path) -> str:
    """Where the int8 copy goes: out_path, or through it if it is a link. Only an earlier
    int8 copy is written over (not the input, another fp32 model, a run's checkpoint, a
    folder, a device or a user's file)."""
    from .modelfile import read_model
    target = os.path.realpath(out_path)
    if not os.path.exists(target):
        return target
    if os.path.samefile(in_path, target):
        raise TinylmError(f"'{out_path}' is the input model: writing the int8 copy there would "
                          "replace its fp32 weights; choose another output file")
    try:
        int8 = read_model(target)[3].get(WEIGHTS_KEY) == "int8"
    except TinylmError:
        int8 = False
    if not int8:
        raise TinylmError(f"'{out_path}' exists and is not an int8 model file: quantize writes "
                          "over earlier int8 copies only; choose another output file, or "
                          "delete it first")
    return target


def load_int8_model(path):
    """(config, params, tokenizer) of an int8 model file: matrices as Int8Weight (over
    the file's memory maps), norms float32. A tampered file (missing or misshapen
    scales, wrong dtypes, -128) is refused with a TinylmError saying what is wrong."""
    from .model import param_shapes
    from .modelfile import read_model
    cfg, tensors, tokenizer, meta = read_model(path)
    if meta.get(WEIGHTS_KEY) != "int8":
        raise TinylmError(f"'{path}' is not an int8 model (metadata {WEIGHTS_KEY} = "
                          f"{meta.get(WEIGHTS_KEY)!r}); quantize it with `tinylm quantize`")
    if meta.get("tinylm.int8_scheme") != SCHEME:
        raise TinylmError(f"'{path}' is an int8 model of an earlier layout (its matrices "
                          "row by row, not in panels); quantize the fp32 model again with "
                          "`tinylm quantize`")
    params = {}
    for name, shape in param_shapes(cfg).items():
        if name not in tensors:
            raise TinylmError(f"'{path}': tensor '{name}' is missing")
        t = tensors[name]
        stored = shape if len(shape) == 1 else panels_shape(*shape)
        if tuple(t.shape) != tuple(stored):
            raise TinylmError(f"'{path}': tensor '{name}' has shape {tuple(t.shape)}, "
                              f"expected {tuple(stored)}"
                              + ("" if len(shape) == 1 else f" (the panels of {tuple(shape)})"))
        if len(shape) == 1:
            if t.dtype != np.float32:
                raise TinylmError(f"'{path}': norm '{name}' is {t.dtype}, expected float32")
            params[name] = t
            continue
        scale = tensors.get(name + SCALE_SUFFIX)
        if scale is None:
            raise TinylmError(f"'{path}': scale tensor '{name}{SCALE_SUFFIX}' is missing")
        if t.dtype != np.int8:
            raise TinylmError(f"'{path}': tensor '{name}' is {t.dtype}, expected int8")
        try:
            params[name] = Int8Weight.from_panels(t, scale, shape, name)
        except ValueError as e:
            raise TinylmError(f"'{path}': {e}") from None
    return cfg, params, tokenizer


def load_any_model(path):
    """(config, params, tokenizer) of an fp32 or int8 model file."""
    from .modelfile import load_model, read_model
    _, _, _, meta = read_model(path)
    return load_int8_model(path) if meta.get(WEIGHTS_KEY) == "int8" else load_model(path)
