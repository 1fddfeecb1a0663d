"""Tokenizers: raw bytes (the default) and SentencePiece, behind one small interface.

Every tokenizer maps text to int32 ids and back, exactly:

    encode(text) -> int32 ids          decode(ids) -> str (invalid UTF-8 -> U+FFFD)
    encode_bytes(data) -> int32 ids    decode_bytes(ids) -> bytes (exact)
    vocab_size, eot_id, name           to_metadata() -> (strings, tensors) for the model file

``eot_id`` is the end-of-text token that separates documents; decoding drops it (and any
other control token), so it never appears as text. ``decode_bytes`` gives the exact bytes,
which a streaming printer needs in order to hold back an incomplete UTF-8 sequence.

A tokenizer is stored in the model file: ``to_metadata()`` returns strings for the
safetensors ``__metadata__`` and arrays to store beside the weights (a SentencePiece
model becomes the uint8 tensor ``tokenizer.model``); ``tokenizer_from_metadata`` rebuilds
it from what ``checkpoint.load_safetensors`` returns.
"""

from __future__ import annotations

import io
import math
import os
import random
import re
from typing import Iterable, Iterator, Mapping

import numpy as np

__all__ = [
    "Tokenizer",
    "ByteTokenizer",
    "SentencePieceTokenizer",
    "tokenizer_from_metadata",
    "EOT_PIECE",
    "MODEL_TENSOR",
]

EOT_PIECE = "<|endoftext|>"
MODEL_TENSOR = "tokenizer.model"  # tensor name of a stored SentencePiece model


def _as_ids(ids, vocab_size: int) -> np.ndarray:
    """Check token ids (any int sequence or array) and return them as a 1-d int64 array."""
    arr = np.asarray(ids)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"ids must be integers, got dtype {arr.dtype}")
    if arr.ndim > 1:
        raise ValueError(f"ids must be a 1-d sequence, got shape {arr.shape}; decode each row separately")
    arr = arr.reshape(-1).astype(np.int64, copy=False)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise ValueError(f"token id {bad} is out of range for a vocabulary of {vocab_size}")
    return arr


def _utf8(text: str) -> bytes:
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}; use encode_bytes for bytes")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(
            f"text is not valid Unicode (lone surrogate at index {e.start}); use encode_bytes for raw bytes"
        ) from None


def _as_bytes(data) -> bytes:
    """Accept bytes-like data, including a 1-d uint8 array (e.g. a memory-mapped corpus)."""
    if isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 1:
        return data.tobytes()
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ValueError(f"data must be bytes or a 1-d uint8 array, got {type(data).__name__}; use encode for str")
    return bytes(data)


class Tokenizer:
    """The shared interface. Subclasses set name, vocab_size, eot_id and implement
    encode, encode_bytes, decode_bytes and to_metadata."""

    name: str
    vocab_size: int
    eot_id: int

    def encode(self, text: str) -> np.ndarray:
        raise NotImplementedError

    def encode_bytes(self, data: bytes) -> np.ndarray:
        raise NotImplementedError

    def decode_bytes(self, ids) -> bytes:
        raise NotImplementedError

    def decode(self, ids) -> str:
        """Text for ``ids``; bytes that are not valid UTF-8 (a model's bad guess, a cut
        multi-byte character) become U+FFFD rather than an error."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def to_metadata(self) -> tuple[dict[str, str], dict[str, np.ndarray]]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, eot_id={self.eot_id})"


# ----------------------------------------------------------------------------------------
# Bytes
# ----------------------------------------------------------------------------------------


class ByteTokenizer(Tokenizer):
    """Ids 0-255 are raw bytes (UTF-8 for text); 256 is end-of-text. Needs no training."""

    name = "bytes"
    vocab_size = 257
    eot_id = 256

    def encode(self, text: str) -> np.ndarray:
        return self.encode_bytes(_utf8(text))

    def encode_bytes(self, data: bytes) -> np.ndarray:
        return np.frombuffer(_as_bytes(data), dtype=np.uint8).astype(np.int32)

    def decode_bytes(self, ids) -> bytes:
        arr = _as_ids(ids, self.vocab_size)
        return arr[arr < 256].astype(np.uint8).tobytes()

    def to_metadata(self) -> tuple[dict[str, str], dict[str, np.ndarray]]:
        meta = {"tokenizer": self.name, "tokenizer.vocab_size": str(self.vocab_size), "tokenizer.eot_id": str(self.eot_id)}
        return meta, {}


# ----------------------------------------------------------------------------------------
# SentencePiece
# ----------------------------------------------------------------------------------------

# Text that must not reach SentencePiece: U+2581 is its own whitespace marker (it would
# decode as a space) and U+DC80-U+DCFF are bytes that were not valid UTF-8 (see
# encode_bytes). Both are sent as byte-fallback ids instead, which decode exactly.
_RAW_RUN = re.compile("[\u2581\udc80-\udcff]+")
_SURROGATE = re.compile("[\ud800-\udfff]")
_CHUNK_CHARS = 1 << 16  # encode in ~64K-character pieces, cut after a newline
_TRAIN_LINE_CHARS = 4096  # longer training lines are cut (SentencePiece skips long ones)


def _sp():
    import sentencepiece  # a dependency of tinylm; imported lazily so `bytes` users never pay for it

    return sentencepiece


def _chunks(text: str, size: int | None = None) -> Iterator[str]:
    """Cut text into pieces of about ``size`` characters, each ending just after a
    newline when there is one. "\\n" is its own token, so no token spans such a cut and
    chunked encoding equals whole-text encoding; a longer newline-free run is cut at
    ``size`` characters (still exact round trip, just possibly different ids there)."""
    size = size or _CHUNK_CHARS
    start, n = 0, len(text)
    while start < n:
        end = min(start + size, n)
        if end < n:
            nl = text.rfind("\n", start, end)
            if nl >= 0:
                end = nl + 1
        yield text[start:end]
        start = end


def _training_lines(data, max_chars: int) -> Iterator[list[str]]:
    """The non-empty lines of the corpus, each at most ``max_chars`` characters, in one
    list for each text (a corpus has millions of lines: handled a list at a time, not a
    line at a time, reading and sampling keep up with the disk)."""
    if isinstance(data, (bytes, bytearray, memoryview, np.ndarray)):
        texts: Iterable = [_as_bytes(data).decode("utf-8", errors="replace")]
    elif isinstance(data, str):
        texts = [data]
    else:
        texts = data
    for text in texts:
        if isinstance(text, (bytes, bytearray)):
            text = bytes(text).decode("utf-8", errors="replace")
        elif not isinstance(text, str):
            raise ValueError(f"training texts must be str or bytes, got {type(text).__name__}")
        text = _SURROGATE.sub("\ufffd", text).replace("\u2581", " ")
        lines = [line for line in text.split("\n") if line]
        if lines and max(map(len, lines)) > max_chars:
            lines = [line[i : i + max_chars] for line in lines for i in range(0, len(line), max_chars)]
        yield lines


def _sample(texts_lines: Iterable[list[str]], k: int, seed: int) -> list[str]:
    """A uniform sample of k lines (all of them, if there are no more) from lists of
    lines, the same for the same seed in every process. Reservoir sampling with geometric
    skips (Li's "Algorithm L"): random numbers are drawn for the lines kept, and the lines
    passed over are skipped a list at a time."""
    rng = random.Random(seed)

    def uniform():  # in (0, 1): logarithms need it above 0
        return (rng.getrandbits(53) + 0.5) / (1 << 53)

    def skip(w):  # lines passed over before the next is kept
        return int(math.log(uniform()) / math.log1p(-w)) if w < 1 else 0

    sample, w, passing = [], 1.0, 0
    for lines in texts_lines:
        i = 0
        if len(sample) < k:  # the first k lines fill the sample
            i = k - len(sample)
            sample.extend(lines[:i])
            if len(sample) < k:
                continue
            w = math.exp(math.log(uniform()) / k)
            passing = skip(w)
        while i + passing < len(lines):  # the next line kept is in this list
            i += passing
            sample[rng.randrange(k)] = lines[i]
            i += 1
            w *= math.exp(math.log(uniform()) / k)
            passing = skip(w)
        passing -= len(lines) - i
    return sample


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece BPE or unigram model with byte fallback.

    Layout of a model trained here: 0 <unk>, 1 <|endoftext|> (control), 2 "\\n"
    (user-defined, so newlines are always their own token), 3-258 the 256 byte pieces
    <0x00>..<0xFF>, then the learned pieces. No normalization is applied (identity rule,
    no dummy prefix, whitespace kept), so encode/decode round-trips any text exactly.
    """

    name = "sentencepiece"

    def __init__(self, model_proto: bytes):
        spm = _sp()
        proto = bytes(model_proto)
        self._proc = spm.SentencePieceProcessor()
        try:
            self._proc.LoadFromSerializedProto(proto)
        except (RuntimeError, OSError) as e:
            raise ValueError(f"not a valid SentencePiece model ({e})") from None
        self._proto = proto
        self.vocab_size = self._proc.get_piece_size()
        self.eot_id = self._proc.piece_to_id(EOT_PIECE)
        if self.eot_id == self._proc.unk_id() or not self._proc.is_control(self.eot_id):
            raise ValueError(f"SentencePiece model has no control piece {EOT_PIECE}; train it with tinylm")
        self._byte_ids = np.array([self._proc.piece_to_id(f"<0x{b:02X}>") for b in range(256)], dtype=np.int32)
        if not all(self._proc.is_byte(int(i)) for i in self._byte_ids):
            raise ValueError("SentencePiece model lacks byte-fallback pieces; train it with byte_fallback=True")
        self._pieces = [self._piece_bytes(i) for i in range(self.vocab_size)]

    def _piece_bytes(self, i: int) -> bytes:
        """The exact bytes piece ``i`` stands for; control pieces stand for nothing."""
        p = self._proc
        if p.is_byte(i):
            return bytes([int(p.id_to_piece(i)[3:5], 16)])
        if p.is_control(i):
            return b""
        if p.is_unknown(i):  # never produced with byte fallback; kept for foreign models
            return "\ufffd".encode()
        return p.id_to_piece(i).replace("\u2581", " ").encode("utf-8")

    # -- training ---------------------------------------------------------------------

    @classmethod
    def train(
        cls,
        data,
        vocab_size: int,
        model_type: str = "bpe",
        *,
        max_sentences: int = 300_000,
        character_coverage: float = 0.9995,
        seed: int = 0,
        num_threads: int | None = None,
    ) -> "SentencePieceTokenizer":
        """Train on ``data``: bytes or a uint8 array (one corpus), a str, or an iterable of
        str/bytes texts.

        Bytes that are not valid UTF-8 are decoded with errors="replace" for training only
        (encoding stays exact: such bytes become byte-fallback ids). Training reads lines;
        at most ``max_sentences`` lines, sampled with ``seed``, are used. On the 31.5 MB
        stdlib corpus at vocab 4096, 300K of its lines train unigram in 106 s instead of
        191 s for all of them, at the same 2.98 bytes/token; BPE takes ~8 s. Nothing is
        written to disk.
        """
        if not isinstance(vocab_size, (int, np.integer)) or isinstance(vocab_size, bool):
            raise ValueError(f"vocab_size must be an int, got {vocab_size!r}")
        minimum = 256 + 3 + 1  # bytes + <unk>, <|endoftext|>, "\n" + at least one learned piece
        if vocab_size < minimum:
            raise ValueError(
                f"vocab_size {vocab_size} is too small for SentencePiece: it must exceed 256 byte "
                f"pieces + 3 special pieces (use at least {minimum}; or use the bytes tokenizer)"
            )
        if model_type not in ("bpe", "unigram"):
            raise ValueError(f"model_type must be 'bpe' or 'unigram', got {model_type!r}")
        if isinstance(max_sentences, bool) or not isinstance(max_sentences, int) or max_sentences < 1:
            raise ValueError(f"max_sentences must be a positive int, got {max_sentences!r}")
        # sampled here: SentencePiece's own sampling differs from one process to the next
        sample = _sample(_training_lines(data, _TRAIN_LINE_CHARS), max_sentences, seed)
        if not sample:
            raise ValueError("training corpus is empty (no non-empty lines); give a corpus with text")

        spm = _sp()
        writer = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(sample),
                model_writer=writer,
                vocab_size=int(vocab_size),
                model_type=model_type,
                byte_fallback=True,
                normalization_rule_name="identity",
                add_dummy_prefix=False,
                remove_extra_whitespaces=False,
                allow_whitespace_only_pieces=True,  # indentation runs become single pieces
                split_digits=True,  # numbers as digits: fewer rare pieces for a tiny model
                character_coverage=character_coverage,
                unk_id=0,
                bos_id=-1,
                eos_id=-1,
                pad_id=-1,
                control_symbols=[EOT_PIECE],  # never matched by text, so "<|endoftext|>" text round-trips
                user_defined_symbols=["\n"],
                max_sentence_length=4 * _TRAIN_LINE_CHARS,  # bytes; lines are cut to fit
                num_threads=num_threads or os.cpu_count() or 1,
                minloglevel=2,
            )
        except RuntimeError as e:
            # SentencePiece's messages start with its source location; keep the advice.
            raise ValueError(f"SentencePiece training failed: {str(e).split('] ')[-1]}") from None
        return cls(writer.getvalue())

    # -- encoding ---------------------------------------------------------------------

    def encode(self, text: str) -> np.ndarray:
        _utf8(text)  # refuse lone surrogates with a clear message
        return self._encode(text)

    def encode_bytes(self, data: bytes) -> np.ndarray:
        # surrogateescape turns each invalid byte into U+DC80+byte; _encode sends those
        # to the byte-fallback ids, so arbitrary bytes round-trip exactly.
        return self._encode(_as_bytes(data).decode("utf-8", errors="surrogateescape"))

    def _encode(self, text: str) -> np.ndarray:
        """Encode text, which may hold escaped bytes, in batches of chunks."""
        out: list[np.ndarray] = []
        batch: list[str] = []
        for chunk in _chunks(text):
            pos = 0
            for m in _RAW_RUN.finditer(chunk):
                batch.append(chunk[pos : m.start()])
                out.extend(self._flush(batch))
                raw = m.group().encode("utf-8", errors="surrogateescape")
                out.append(self._byte_ids[np.frombuffer(raw, dtype=np.uint8)])
                pos = m.end()
            batch.append(chunk[pos:])
            if len(batch) >= 64:
                out.extend(self._flush(batch))
        out.extend(self._flush(batch))
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int32)

    def _flush(self, batch: list[str]) -> list[np.ndarray]:
        """Encode the pending plain-text segments in one multi-threaded call; empties batch."""
        texts = [t for t in batch if t]
        batch.clear()
        if not texts:
            return []
        return [np.array(ids, dtype=np.int32) for ids in self._proc.encode(texts, out_type=int)]

    # -- decoding ---------------------------------------------------------------------

    def decode_bytes(self, ids) -> bytes:
        pieces = self._pieces
        return b"".join([pieces[i] for i in _as_ids(ids, self.vocab_size).tolist()])

    def to_metadata(self) -> tuple[dict[str, str], dict[str, np.ndarray]]:
        meta = {
            "tokenizer": self.name,
            "tokenizer.vocab_size": str(self.vocab_size),
            "tokenizer.eot_id": str(self.eot_id),
        }
        return meta, {MODEL_TENSOR: np.frombuffer(self._proto, dtype=np.uint8).copy()}


# ----------------------------------------------------------------------------------------
# Model files
# ----------------------------------------------------------------------------------------

_KNOWN = ("bytes", "sentencepiece")


def tokenizer_from_metadata(metadata: Mapping[str, str], tensors: Mapping[str, np.ndarray]) -> Tokenizer:
    """Rebuild the tokenizer stored in a model file's metadata and tensors."""
    name = metadata.get("tokenizer")
    if name is None:
        raise ValueError(
            "model file has no 'tokenizer' entry in its metadata; it was not written by tinylm "
            f"(known tokenizers: {', '.join(_KNOWN)})"
        )
    if name == "bytes":
        tok: Tokenizer = ByteTokenizer()
    elif name == "sentencepiece":
        arr = tensors.get(MODEL_TENSOR)
        if arr is None:
            raise ValueError(f"model file uses a sentencepiece tokenizer but has no '{MODEL_TENSOR}' tensor")
        arr = np.asarray(arr)
        if arr.dtype != np.uint8 or arr.ndim != 1:
            raise ValueError(f"'{MODEL_TENSOR}' must be a 1-d uint8 tensor, got {arr.dtype} {arr.shape}")
        tok = SentencePieceTokenizer(arr.tobytes())
    else:
        raise ValueError(f"unknown tokenizer {name!r} in model file (known: {', '.join(_KNOWN)})")
    for key, value in (("tokenizer.vocab_size", tok.vocab_size), ("tokenizer.eot_id", tok.eot_id)):
        if key in metadata and metadata[key] != str(value):
            raise ValueError(f"model file metadata says {key}={metadata[key]} but its tokenizer has {value}")
    return tok
