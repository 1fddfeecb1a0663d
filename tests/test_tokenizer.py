"""Tests for tinylm.tokenizer: exact round trips, SentencePiece training, model-file storage."""

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinylm import tokenizer as tokmod
from tinylm.checkpoint import load_safetensors, save_safetensors
from tinylm.tokenizer import (
    EOT_PIECE,
    MODEL_TENSOR,
    ByteTokenizer,
    SentencePieceTokenizer,
    tokenizer_from_metadata,
)

# Any unicode except surrogates (which are not valid in UTF-8 text), with the characters
# that tokenizers like to mangle (whitespace, SentencePiece's U+2581 marker, NUL) boosted.
TEXT = st.text(
    alphabet=st.one_of(st.characters(blacklist_categories=("Cs",)), st.sampled_from(" \n\r\t\u2581\x00")),
    max_size=200,
)
EDGE_CASES = [
    "",
    "\n",
    "\r\n",
    "\n\n\n",
    "\t\ttabs\t",
    " leading",
    "trailing ",
    "   multiple   spaces   ",
    "emoji 😀👍🏽 family 👨‍👩‍👧",
    "NUL \x00 inside",
    "whitespace marker \u2581 and \u2581\u2581 alone",
    "<|endoftext|> literally",
    "<unk> <0x41> <s> </s>",
    "\ufeffBOM and \u200b zero width",
    "combining e\u0301 vs \u00e9, ﬁ ligature, Ｆｕｌｌ width",
    "日本語のテキスト",
    "\x7f\x1b[31m escapes",
]


def synthetic_corpus(n_lines=1500, seed=0):
    """A small Python-ish corpus with a varied enough vocabulary for unigram at 360."""
    rng = random.Random(seed)
    syllables = ["ka", "to", "re", "mi", "su", "la", "po", "ne", "di", "gu", "vo", "shi", "tra", "elt", "qua"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(400)]
    words += ["def", "return", "class", "import", "self", "None", "for", "in", "if", "else:", "(", ")", "=", "1234"]
    lines = []
    for _ in range(n_lines):
        indent = "    " * rng.randint(0, 3)
        lines.append(indent + " ".join(rng.choice(words) for _ in range(rng.randint(0, 12))))
    return "\n".join(lines) + "\n"


CORPUS = synthetic_corpus()


@pytest.fixture(scope="module", params=["bpe", "unigram"])
def sp_tok(request):
    return SentencePieceTokenizer.train(CORPUS.encode(), vocab_size=360, model_type=request.param)


@pytest.fixture(scope="module")
def bpe_tok():
    return SentencePieceTokenizer.train(CORPUS.encode(), vocab_size=360, model_type="bpe")


# ---------------------------------------------------------------------------- bytes


def test_byte_tokenizer_basics():
    tok = ByteTokenizer()
    assert (tok.name, tok.vocab_size, tok.eot_id) == ("bytes", 257, 256)
    ids = tok.encode("hé\n")
    assert ids.dtype == np.int32 and ids.tolist() == [104, 0xC3, 0xA9, 10]
    assert tok.decode([104, 256, 105, 256]) == "hi"  # end-of-text decodes to nothing
    assert tok.decode(np.array([0xC3], dtype=np.uint8)) == "\ufffd"  # cut character
    assert tok.decode_bytes([0xC3]) == b"\xc3"
    assert tok.decode([]) == "" and tok.encode("").shape == (0,)
    assert tok.encode_bytes(np.frombuffer(b"ab", np.uint8)).tolist() == [97, 98]


@settings(max_examples=300, deadline=None)
@given(TEXT)
def test_byte_round_trip_text(s):
    tok = ByteTokenizer()
    ids = tok.encode(s)
    assert ids.dtype == np.int32 and len(ids) == len(s.encode())
    assert tok.decode(ids) == s


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_byte_round_trip_bytes(b):
    tok = ByteTokenizer()
    ids = tok.encode_bytes(b)
    assert ids.tolist() == list(b)
    assert tok.decode_bytes(ids) == b
    assert tok.decode(ids) == b.decode("utf-8", errors="replace")


@pytest.mark.parametrize("tok_factory", [ByteTokenizer, "bpe"])
def test_bad_arguments(tok_factory, bpe_tok):
    tok = ByteTokenizer() if tok_factory is ByteTokenizer else bpe_tok
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([tok.vocab_size])
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([-1])
    with pytest.raises(ValueError, match="integers"):
        tok.decode([1.5])
    with pytest.raises(ValueError, match="1-d"):
        tok.decode([[1, 2]])
    with pytest.raises(ValueError, match="lone surrogate"):
        tok.encode("bad \udc80 text")
    with pytest.raises(ValueError, match="encode_bytes"):
        tok.encode(b"bytes")
    with pytest.raises(ValueError, match="use encode"):
        tok.encode_bytes("text")


# ---------------------------------------------------------------------------- sentencepiece


def test_sp_vocab_layout(sp_tok):
    assert sp_tok.name == "sentencepiece"
    assert sp_tok.vocab_size == 360
    assert sp_tok.eot_id == 1
    assert sp_tok.decode([sp_tok.eot_id]) == ""
    assert sp_tok.eot_id not in sp_tok.encode(EOT_PIECE).tolist()  # the text is not the token
    # Newlines survive as their own token, whatever surrounds them.
    nl = sp_tok.encode("\n").tolist()
    assert len(nl) == 1
    assert nl[0] in sp_tok.encode("    return self\n    def").tolist()


def test_sp_compresses(sp_tok):
    ids = sp_tok.encode(CORPUS)
    assert ids.dtype == np.int32
    assert len(ids) < 0.6 * len(CORPUS.encode())
    assert sp_tok.decode(ids) == CORPUS


@pytest.mark.parametrize("s", EDGE_CASES)
def test_sp_edge_cases(sp_tok, s):
    assert sp_tok.decode(sp_tok.encode(s)) == s


@settings(max_examples=150, deadline=None)
@given(TEXT)
def test_sp_round_trip_text(sp_tok, s):
    ids = sp_tok.encode(s)
    assert ids.dtype == np.int32
    assert sp_tok.decode(ids) == s
    assert sp_tok.decode_bytes(ids) == s.encode()


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=200))
def test_sp_round_trip_arbitrary_bytes(sp_tok, b):
    ids = sp_tok.encode_bytes(b)
    assert sp_tok.decode_bytes(ids) == b
    assert sp_tok.decode(ids) == b.decode("utf-8", errors="replace")


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(alphabet="ab kx\t▁é😀", max_size=30), max_size=20))
def test_sp_chunked_encoding_matches_whole(bpe_tok, lines):
    """Chunks are cut after newlines, which are their own token: cutting changes nothing."""
    text = "\n".join(lines)
    whole = bpe_tok.encode(text)
    original = tokmod._CHUNK_CHARS
    try:
        tokmod._CHUNK_CHARS = 40  # every line (<= 31 chars) fits in one chunk
        chunked = bpe_tok.encode(text)
    finally:
        tokmod._CHUNK_CHARS = original
    assert chunked.tolist() == whole.tolist()


def test_sp_long_line_without_newline_round_trips(bpe_tok):
    text = "kato remi " * 20000  # 200K chars, one line: cut at the chunk size
    assert bpe_tok.decode(bpe_tok.encode(text)) == text


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_sp_training_is_deterministic(model_type):
    kw = dict(vocab_size=300, model_type=model_type, max_sentences=800, seed=3)  # sampled lines
    a = SentencePieceTokenizer.train(CORPUS.encode(), **kw)
    b = SentencePieceTokenizer.train(CORPUS.encode(), **kw)
    assert np.array_equal(a.to_metadata()[1][MODEL_TENSOR], b.to_metadata()[1][MODEL_TENSOR])
    assert np.array_equal(a.encode(CORPUS), b.encode(CORPUS))


def test_sp_training_is_the_same_in_every_process():
    """A run repeated is the same run: its tokenizer too (SentencePiece's own sampling of
    lines, seeded, still differed from one process to the next), and so the token cache
    made under it serves the next run instead of another copy of the corpus's tokens."""
    import os
    import subprocess
    import sys
    code = ("import hashlib, sys; from tinylm.tokenizer import SentencePieceTokenizer as S; "
            "t = S.train(sys.stdin.read(), vocab_size=300, max_sentences=500, seed=3); "
            "print(hashlib.sha256(t.to_metadata()[1]['tokenizer.model'].tobytes()).hexdigest())")
    digests = {subprocess.run([sys.executable, "-c", code], input=CORPUS, capture_output=True,
                              text=True, check=True, timeout=120,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}).stdout
               for _ in range(3)}
    assert len(digests) == 1


def test_lines_are_sampled_uniformly_and_by_the_seed():
    from tinylm.tokenizer import _sample
    lines = [str(i) for i in range(100)]

    def in_lists(cuts):  # the lines, as texts cut at `cuts` give them
        return [lines[a:b] for a, b in zip([0, *cuts], [*cuts, len(lines)])]

    assert _sample([lines], 10, seed=1) == _sample([lines], 10, seed=1)
    assert _sample([lines], 10, seed=1) != _sample([lines], 10, seed=2)
    for cuts in ([3, 4, 4, 50], [10], [9, 11, 99], list(range(1, 100))):
        assert _sample(in_lists(cuts), 10, seed=5) == _sample([lines], 10, seed=5)
    assert sorted(_sample(in_lists([3]), 200, seed=1)) == sorted(lines)  # all, if few
    counts = np.zeros(100, int)
    for seed in range(2000):
        sample = _sample(in_lists([seed % 97 + 1]), 10, seed)
        assert len(set(sample)) == 10
        counts[[int(line) for line in sample]] += 1
    # each line is kept 200 times in expectation (sd ~13): none far from it, early or late
    assert counts.min() > 140 and counts.max() < 260, counts
    assert abs(counts[:50].sum() - counts[50:].sum()) < 300


def test_sp_train_from_texts_and_invalid_utf8():
    texts = [CORPUS[:20000], CORPUS[20000:].encode()]  # str and bytes items both accepted
    tok = SentencePieceTokenizer.train(texts, vocab_size=300)
    assert tok.vocab_size == 300
    from_array = SentencePieceTokenizer.train(np.frombuffer(CORPUS.encode(), np.uint8), vocab_size=300)
    assert from_array.vocab_size == 300
    dirty = CORPUS[:5000].encode() + b"\xff\xfe\xc3 broken \x80"
    tok2 = SentencePieceTokenizer.train(dirty, vocab_size=300)
    assert tok2.decode_bytes(tok2.encode_bytes(dirty)) == dirty


def test_sp_trains_from_texts_as_they_are_read():
    """A generator's texts train the model a list of them does (the corpus is read as it
    is sampled, never held whole); the generator's own error is raised as itself, not as
    SentencePiece's."""
    texts = [CORPUS[i:i + 5000].encode() for i in range(0, len(CORPUS), 5000)]
    from_list = SentencePieceTokenizer.train(texts, vocab_size=300)
    from_generator = SentencePieceTokenizer.train((t for t in texts), vocab_size=300)
    assert from_generator.to_metadata()[0] == from_list.to_metadata()[0]
    assert np.array_equal(from_generator.to_metadata()[1][MODEL_TENSOR],
                          from_list.to_metadata()[1][MODEL_TENSOR])

    def failing(error):
        yield from texts[:3]
        raise error

    with pytest.raises(OSError, match="the disk went away"):
        SentencePieceTokenizer.train(failing(OSError("the disk went away")), vocab_size=300)
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C while the corpus is read
        SentencePieceTokenizer.train(failing(KeyboardInterrupt()), vocab_size=300)

    import tracemalloc
    piece = CORPUS[:10000].encode()
    tracemalloc.start()  # 2 MB of text (the lines of it, as a list, peaked at 4.6 MB)
    SentencePieceTokenizer.train((piece for _ in range(200)), vocab_size=300, max_sentences=500)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20, f"peak {peak} bytes"


@pytest.mark.parametrize(
    "data, kwargs, fragment",
    [
        (CORPUS, {"vocab_size": 259}, "too small"),
        (CORPUS, {"vocab_size": 10}, "too small"),
        (CORPUS, {"vocab_size": True}, "must be an int"),
        (CORPUS, {"vocab_size": "300"}, "must be an int"),
        (CORPUS, {"vocab_size": 300, "model_type": "char"}, "model_type"),
        (b"", {"vocab_size": 300}, "empty"),
        ([], {"vocab_size": 300}, "empty"),
        (["", "\n\n"], {"vocab_size": 300}, "empty"),
        ([1, 2], {"vocab_size": 300}, "str or bytes"),
        ("tiny corpus", {"vocab_size": 5000}, "too high"),
        (CORPUS, {"vocab_size": 300, "max_sentences": 0}, "max_sentences must be a positive"),
        ("tiny corpus", {"vocab_size": 5000, "model_type": "unigram"}, "too high"),
    ],
)
def test_sp_train_refuses_bad_arguments(data, kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        SentencePieceTokenizer.train(data, **kwargs)


def test_sp_refuses_foreign_models():
    with pytest.raises(ValueError, match="not a valid SentencePiece model"):
        SentencePieceTokenizer(b"definitely not a protobuf")
    import io

    import sentencepiece as spm

    w = io.BytesIO()  # a plain model: no byte fallback, no end-of-text piece
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS.splitlines()), model_writer=w, vocab_size=300, minloglevel=2
    )
    with pytest.raises(ValueError, match="endoftext"):
        SentencePieceTokenizer(w.getvalue())


# ---------------------------------------------------------------------------- model files


@pytest.mark.parametrize("kind", ["bytes", "bpe", "unigram"])
def test_metadata_round_trip_through_model_file(tmp_path, kind):
    if kind == "bytes":
        tok = ByteTokenizer()
    else:
        tok = SentencePieceTokenizer.train(CORPUS.encode(), vocab_size=340, model_type=kind)
    meta, tensors = tok.to_metadata()
    assert all(isinstance(v, str) for v in meta.values()) and meta["tokenizer"] == tok.name
    path = tmp_path / "model.safetensors"
    save_safetensors(path, {"model.norm.weight": np.ones(4, np.float32), **tensors}, meta)
    loaded_tensors, loaded_meta = load_safetensors(path)
    rebuilt = tokenizer_from_metadata(loaded_meta, loaded_tensors)
    assert type(rebuilt) is type(tok)
    assert (rebuilt.vocab_size, rebuilt.eot_id, rebuilt.name) == (tok.vocab_size, tok.eot_id, tok.name)
    sample = CORPUS[:3000] + "".join(EDGE_CASES)
    assert np.array_equal(rebuilt.encode(sample), tok.encode(sample))
    ids = np.arange(tok.vocab_size)
    assert rebuilt.decode_bytes(ids) == tok.decode_bytes(ids)


def test_from_metadata_refuses_bad_input(bpe_tok):
    meta, tensors = bpe_tok.to_metadata()
    with pytest.raises(ValueError, match="no 'tokenizer' entry"):
        tokenizer_from_metadata({"format": "pt"}, {})
    with pytest.raises(ValueError, match="unknown tokenizer 'tiktoken'"):
        tokenizer_from_metadata({"tokenizer": "tiktoken"}, {})
    with pytest.raises(ValueError, match=f"no '{MODEL_TENSOR}' tensor"):
        tokenizer_from_metadata(meta, {})
    with pytest.raises(ValueError, match="1-d uint8"):
        tokenizer_from_metadata(meta, {MODEL_TENSOR: tensors[MODEL_TENSOR].astype(np.int32)})
    with pytest.raises(ValueError, match="not a valid SentencePiece model"):
        tokenizer_from_metadata(meta, {MODEL_TENSOR: np.frombuffer(b"garbage!", np.uint8)})
    with pytest.raises(ValueError, match="vocab_size"):
        tokenizer_from_metadata({**meta, "tokenizer.vocab_size": "999"}, tensors)
    with pytest.raises(ValueError, match="vocab_size"):
        tokenizer_from_metadata({"tokenizer": "bytes", "tokenizer.vocab_size": "300"}, {})
