"""The key/value cache of the inference engines (tinylm/engine.py).

A float32 model keeps its keys and values in float32, `[n_layer, n_kv_head, context,
head_dim]`, so that its logits match the training forward pass. An int8 model, which
already trades exactness for speed, keeps its values in float16 and its keys in int8:

- each key (one position of one kv head) is quantized on its own, symmetrically, with a
  float32 scale (tinylm/quant.py's `quantize_rows`), and stored biased by 128 as a byte;
- a layer's head keeps its keys in blocks of 16 positions, each block `[head_dim / 4, 16,
  4]` bytes: 4 dimensions of 16 positions side by side, so that one vector instruction
  (x86's vpdpbusd, ARM's dot products) adds 4 dimensions' products into 16 positions'
  scores at once (csrc/attention/int8_keys_*.cpp; the C++ side, attention.h's Int8Keys);
- decode attention quantizes each head's query the same way, so that a score is an exact
  integer dot product, rescaled by the two scales.

Against float16 keys this nearly halves the keys' bytes (a 48-dimension key: 52 bytes
with its scale, against 96) and makes their scores cheap: decode attention 1.15–1.36×
as fast (`python benchmarks/bench_attention.py --decode-only`), the weighted sum of the
float16 values now most of it (benchmarks/NOTES.md, the sixteenth session). What the
rounding costs a trained model is measured by benchmarks/decode_loss.py: nothing
visible in the README's `baby` model; 0.0001 nats a token over windows of 256 positions
(a third of what the int8 weights cost there). The engines see the rounding of both
operands: `round_queries` is what the numpy reference does to a query before attention,
and the stored keys are read back as `code * scale`.
"""
import math

import numpy as np

from .quant import quantize_rows

KEY_BLOCK = 16  # positions a block of int8 keys holds


def zeroed(shape, dtype):
    """A zeroed array whose memory becomes resident only where it is written.

    Each cache head keeps its positions contiguous, so a short generation writes a few
    pages of every head. With transparent huge pages each such write would make a whole
    2 MB page resident, i.e. the full cache at once; an anonymous map marked "no huge
    pages" keeps the footprint at what is used."""
    import mmap
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize  # (np.prod wraps at 2^31 on 32-bit)
    advice = getattr(mmap, "MADV_NOHUGEPAGE", None)
    if advice is None or nbytes < (1 << 21):
        return np.zeros(shape, dtype)
    buf = mmap.mmap(-1, nbytes)
    buf.madvise(advice)
    return np.frombuffer(buf, dtype).reshape(shape)


def nbytes(cfg, int8):
    """The cache's bytes at the full context: keys and values."""
    shape = (cfg.n_layer, cfg.n_kv_head, cfg.context, cfg.head_dim)
    if not int8:
        return 2 * math.prod(shape) * 4
    positions, row = _round_up(cfg.context, KEY_BLOCK), _round_up(cfg.head_dim, 4)
    keys = cfg.n_layer * cfg.n_kv_head * positions * (row + 4)  # codes and a scale
    return keys + math.prod(shape) * 2


def _round_up(n, m):
    return (n + m - 1) // m * m


class FloatKeys:
    """float32 keys [n_layer, n_kv_head, context, head_dim]."""

    def __init__(self, cfg):
        self.array = zeroed((cfg.n_layer, cfg.n_kv_head, cfg.context, cfg.head_dim), np.float32)

    def store(self, layer, start, k):
        """Positions [start, start + T) of every kv head: k [n_kv_head, T, head_dim]."""
        self.array[layer, :, start:start + k.shape[1]] = k

    def load(self, layer, end):
        """Positions [0, end) of every kv head as float32 [n_kv_head, end, head_dim]."""
        return self.array[layer, :, :end]

    def native(self):
        """What the C++ engine takes (tinylm._C.Engine's k_cache)."""
        return self.array


class Int8Keys:
    """int8 keys in blocks of 16 positions: codes + 128 as bytes [n_layer, n_kv_head,
    context / 16, head_dim / 4, 16, 4] (both rounded up; padding dimensions 128) and a
    scale a key [n_layer, n_kv_head, context rounded up to 16]."""

    def __init__(self, cfg):
        self.head_dim = cfg.head_dim
        blocks = _round_up(cfg.context, KEY_BLOCK) // KEY_BLOCK
        groups = _round_up(cfg.head_dim, 4) // 4
        self.codes = zeroed((cfg.n_layer, cfg.n_kv_head, blocks, groups, KEY_BLOCK, 4), np.uint8)
        self.scales = zeroed((cfg.n_layer, cfg.n_kv_head, blocks * KEY_BLOCK), np.float32)

    def store(self, layer, start, k):
        Hkv, T, D = k.shape
        groups = self.codes.shape[3]
        codes, scales = quantize_rows(k.reshape(Hkv * T, D))
        row = np.full((Hkv * T, groups * 4), 128, np.uint8)  # padding: code 0
        row[:, :D] = codes.astype(np.int16) + 128
        positions = np.arange(start, start + T)
        # [T, Hkv, head_dim / 4, 4] into block p // 16, lane p % 16 of each position p
        self.codes[layer, :, positions // KEY_BLOCK, :, positions % KEY_BLOCK] = (
            row.reshape(Hkv, T, groups, 4).transpose(1, 0, 2, 3))
        self.scales[layer, :, start:start + T] = scales.reshape(Hkv, T)

    def load(self, layer, end):
        blocks = _round_up(end, KEY_BLOCK) // KEY_BLOCK  # only those holding positions < end
        keys = int8_keys_as_floats(self.codes[layer, :, :blocks],
                                   self.scales[layer, :, :blocks * KEY_BLOCK], self.head_dim)
        return keys[:, :end]

    def rows(self, layer):
        """A layer's stored bytes by position: [n_kv_head, positions, head_dim rounded up
        to 4] (a copy)."""
        return _rows(self.codes[layer])

    def native(self):
        return (self.codes, self.scales)


def _rows(codes):
    """One layer's codes [n_kv_head, blocks, groups, 16, 4] by position: [n_kv_head,
    blocks * 16, groups * 4]."""
    Hkv, blocks, groups = codes.shape[:3]
    return codes.transpose(0, 1, 3, 2, 4).reshape(Hkv, blocks * KEY_BLOCK, groups * 4)


def int8_keys_as_floats(codes, scales, head_dim):
    """One layer's int8 keys as float32 [n_kv_head, positions, head_dim]: code * scale."""
    values = _rows(codes)[:, :, :head_dim].astype(np.int16) - 128
    return values.astype(np.float32) * scales[:, :, None]


def round_queries(q):
    """Queries [..., head_dim] as int8 attention sees them: each vector quantized on its
    own, back as code * scale (float32)."""
    codes, scales = quantize_rows(q.reshape(-1, q.shape[-1]))
    return (codes.astype(np.float32) * scales[:, None]).reshape(q.shape)
