"""The corpus pipeline: sources, tokenization cache, split, batches."""
import numpy as np
import pytest

from tinylm import data
from tinylm.errors import TinylmError
from tinylm.tokenizer import ByteTokenizer


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYLM_CACHE", str(tmp_path / "cache"))


def test_folder_is_read_recursively_in_order_without_hidden_files(tmp_path):
    root = tmp_path / "corpus"
    (root / "b" / "c").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "a.txt").write_bytes(b"first")
    (root / "b" / "c" / "d.txt").write_bytes(b"\xff\xfenot utf-8")
    (root / ".git" / "config").write_bytes(b"hidden")
    (root / ".hidden.txt").write_bytes(b"hidden")
    assert data.read_documents(str(root)) == [b"first", b"\xff\xfenot utf-8"]


def test_default_corpus_is_the_standard_library():
    files = data.corpus_files(data.DEFAULT_SOURCE)
    names = {f.name for f in files}
    assert {"os.py", "__init__.py"} <= names
    assert all(f.suffix == ".py" and "site-packages" not in f.parts for f in files)


def test_tokens_are_documents_joined_by_end_of_text_and_cached(tmp_path):
    root = tmp_path / "c"
    root.mkdir()
    (root / "1.txt").write_bytes(b"ab")
    (root / "2.txt").write_bytes(b"c")
    tok = ByteTokenizer()
    tokens = data.load_tokens(str(root), tok)
    assert tokens.tolist() == [97, 98, 256, 99, 256]
    cached = data.load_tokens(str(root), tok)
    assert isinstance(cached, np.memmap) and cached.tolist() == tokens.tolist()
    (root / "2.txt").write_bytes(b"cd")  # a changed file is a new corpus
    assert data.load_tokens(str(root), tok).tolist() == [97, 98, 256, 99, 100, 256]


def test_split_and_batches():
    tokens = np.arange(1000, dtype=np.uint16) % 256
    split = data.split_tokens(tokens, ByteTokenizer(), context=16, val_fraction=0.1)
    assert len(split.val) == 100 and len(split.train) == 900 and split.val_bytes == 100
    x, y = data.sample_batch(split.train, 8, 16, np.random.default_rng(0))
    assert x.shape == y.shape == (8, 16)
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])  # targets are the next tokens
    ex, ey = data.eval_windows(split.val, 16, max_tokens=64)
    assert ex.shape == (4, 16)
    again, _ = data.eval_windows(split.val, 16, max_tokens=64)
    np.testing.assert_array_equal(ex, again)


def test_too_short_and_empty_corpora_are_refused(tmp_path):
    with pytest.raises(TinylmError, match="corpus is too short"):
        data.split_tokens(np.zeros(40, dtype=np.uint16), ByteTokenizer(), 32, 0.1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(TinylmError, match="holds no files"):
        data.read_documents(str(tmp_path / "empty"))
    (tmp_path / "e.txt").write_bytes(b"")
    with pytest.raises(TinylmError, match="is empty"):
        data.read_documents(str(tmp_path / "e.txt"))
