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
    assert [b"".join(doc) for doc in data.documents(str(root))] == [b"first", b"\xff\xfenot utf-8"]


def test_runs_models_and_the_cache_in_a_corpus_folder_are_not_corpus(tmp_path, monkeypatch):
    """`tinylm train --data .` puts its runs in ./runs, and the README's quantize writes a
    model beside them: none of that is text to learn, nor is a token cache kept inside."""
    from tinylm import trainer
    assert data.RUN_CHECKPOINT == trainer.CHECKPOINT
    root = tmp_path / "notes"
    monkeypatch.setenv("TINYLM_CACHE", str(root / "cache"))
    for name in ("runs/tiny-1/checkpoint.safetensors", "runs/tiny-1/metrics.jsonl",
                 "runs/tiny-1/stdin-corpus", "runs/readme.txt", "tiny-int8.safetensors",
                 "work/metrics.jsonl", "work/monday.md", "cache/tokens-0.uint16", "a.txt"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"x")
    want = ["a.txt", "runs/readme.txt", "work/metrics.jsonl", "work/monday.md"]
    for form in (str(root), str(root) + "/", str(root / ".")):
        assert [p.relative_to(root).as_posix() for p in data.corpus_files(form)] == want
    run = root / "runs" / "tiny-1"  # a run's folder named as the corpus is taken as it is
    assert [p.name for p in data.corpus_files(str(run))] == ["metrics.jsonl", "stdin-corpus"]
    only_runs = tmp_path / "only-runs"
    (only_runs / "r1").mkdir(parents=True)
    (only_runs / "r1" / "checkpoint.safetensors").write_bytes(b"x")
    with pytest.raises(TinylmError, match="holds no files .model files and training runs"):
        data.corpus_files(str(only_runs))


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
        data.load_tokens(str(tmp_path / "empty"), ByteTokenizer())
    (tmp_path / "e.txt").write_bytes(b"")
    with pytest.raises(TinylmError, match="is empty"):
        data.load_tokens(str(tmp_path / "e.txt"), ByteTokenizer())


@pytest.fixture(scope="module")
def sp_tokenizer():
    from tinylm.tokenizer import SentencePieceTokenizer
    text = "the cat sat on the mat. naïve café, €uro\n" * 200
    return SentencePieceTokenizer.train(text.encode(), vocab_size=300)


def test_a_character_is_never_cut():
    euro = "€".encode()  # three bytes
    assert data._whole_characters(b"ab" + euro) == 5
    assert data._whole_characters(b"ab" + euro[:2]) == 2
    assert data._whole_characters(b"ab" + euro[:1]) == 2
    assert data._whole_characters(b"a" + "😀".encode()[:3]) == 1
    assert data._whole_characters(b"\xff\xfe") == 2  # not UTF-8: anywhere will do


@pytest.mark.parametrize("kind", ["bytes", "sentencepiece"])
def test_tokens_made_in_pieces_are_the_whole_documents_tokens(tmp_path, monkeypatch, kind,
                                                              sp_tokenizer):
    """Files read a few bytes at a time encode as each whole document does: cut after a
    newline (a token of its own, so that sentencepiece encodes lines shorter than a read
    exactly as in the whole) or, in a read without one, after a whole character (for the
    bytes tokenizer, lines longer than a read, text that is not UTF-8)."""
    lines = ["the cat sat on the mat\n" * 30, "naïve café\n€uro\n" * 20,
             "\xff\xfe\x00 not utf-8 \xe2\x82\n" * 10, "x€y\n" * 50]
    docs = [line.encode("utf-8", "surrogateescape") if kind == "bytes" else line.encode()
            for line in lines]
    if kind == "bytes":
        docs.append(b"\xff\xfe\x00 long lines, not utf-8 \xe2\x82" * 10 + "café €".encode() * 20)
        docs[2] = b"\xff\xfe\x00 not utf-8 \xe2\x82\n" * 10
    tok = ByteTokenizer() if kind == "bytes" else sp_tokenizer
    root = tmp_path / "corpus"
    root.mkdir()
    for i, doc in enumerate(docs):
        (root / f"{i}.txt").write_bytes(doc)
    monkeypatch.setattr(data, "READ_BYTES", 7 if kind == "bytes" else 40)
    want = np.concatenate([np.append(tok.encode_bytes(d), tok.eot_id) for d in docs])
    pieces = [list(p) for p in data.documents(str(root))]
    assert min(len(p) for p in pieces) > 3  # really in pieces
    assert [b"".join(p) for p in pieces] == docs
    np.testing.assert_array_equal(data.load_tokens(str(root), tok), want)
    cached = data.load_tokens(str(root), tok)
    assert isinstance(cached, np.memmap)
    np.testing.assert_array_equal(cached, want)


def test_making_the_tokens_holds_a_piece_in_memory_not_the_corpus(tmp_path, monkeypatch):
    """The corpus's tokens go to the cache a piece at a time: a corpus need not fit in
    memory (a 300 MB file peaked at 2.1 GB of RSS when it was read whole)."""
    import tracemalloc
    corpus = tmp_path / "big.txt"
    corpus.write_bytes(b"a line of text\n" * 300_000)  # 4.5 MB
    monkeypatch.setattr(data, "READ_BYTES", 64 << 10)
    tracemalloc.start()
    tokens = data.load_tokens(str(corpus), ByteTokenizer())
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(tokens) == 4_500_001 and isinstance(tokens, np.memmap)
    assert peak < 1 << 20, f"peak {peak} bytes"


def test_without_a_writable_cache_the_tokens_are_made_in_memory(tmp_path, monkeypatch):
    (tmp_path / "not a folder").write_bytes(b"")
    monkeypatch.setenv("TINYLM_CACHE", str(tmp_path / "not a folder"))
    (tmp_path / "c.txt").write_bytes(b"abc")
    warnings = []
    tokens = data.load_tokens(str(tmp_path / "c.txt"), ByteTokenizer(), warn=warnings.append)
    assert tokens.tolist() == [97, 98, 99, 256]
    [warning] = warnings
    assert "cannot write the token cache in" in warning and "not a folder" in warning


def test_a_damaged_cache_entry_is_made_again(tmp_path):
    (tmp_path / "c.txt").write_bytes(b"abc")
    tok = ByteTokenizer()
    data.load_tokens(str(tmp_path / "c.txt"), tok)
    [entry] = (tmp_path / "cache").iterdir()
    entry.write_bytes(b"\x00\x01\x02")  # not a whole number of tokens
    assert data.load_tokens(str(tmp_path / "c.txt"), tok).tolist() == [97, 98, 99, 256]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [entry.name]  # no temporaries


def pipe(monkeypatch, data_bytes):
    import io
    import sys
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data_bytes)))


def test_standard_input_is_kept_in_a_file(tmp_path, monkeypatch):
    copy = tmp_path / "run" / "stdin-corpus"
    text = "piped ünïcode\n".encode() * 1000
    pipe(monkeypatch, text)
    monkeypatch.setattr(data, "READ_BYTES", 100)
    data.spool_stdin(copy)
    assert copy.read_bytes() == text
    pipe(monkeypatch, b"again")
    data.spool_stdin(copy)  # piped again: replaced
    assert copy.read_bytes() == b"again"
    pipe(monkeypatch, b"")
    with pytest.raises(TinylmError, match="standard input is empty"):
        data.spool_stdin(copy)
    assert copy.read_bytes() == b"again"  # a failed copy leaves the last one whole
    assert [p.name for p in copy.parent.iterdir()] == ["stdin-corpus"]
    monkeypatch.setattr("sys.stdin", None)  # started with <&-
    with pytest.raises(TinylmError, match="standard input, which is closed"):
        data.spool_stdin(copy)


def fake_disk(monkeypatch, free_bytes):
    """A disk with `free_bytes` free (a list, for the test to change)."""
    import shutil
    free = [free_bytes]
    monkeypatch.setattr(data.shutil, "disk_usage",
                        lambda folder: shutil._ntuple_diskusage(10**12, 10**12 - free[0], free[0]))
    return free


def test_an_endless_standard_input_is_refused_before_the_disk_fills(tmp_path, monkeypatch):
    import io
    import sys
    free = fake_disk(monkeypatch, 10_000_000)

    class Endless(io.RawIOBase):
        def readable(self):
            return True

        def readinto(self, b):
            b[:] = b"y\n" * (len(b) // 2)
            free[0] -= len(b)  # as it is written
            return len(b)

    copy = tmp_path / "run" / "stdin-corpus"
    copy.parent.mkdir()
    copy.write_bytes(b"an earlier copy")
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(Endless())))
    monkeypatch.setattr(data, "READ_BYTES", 1_000_000)
    monkeypatch.setattr(data, "SPOOL_MARGIN", 5_000_000)
    with pytest.raises(TinylmError, match=r"standard input's corpus passed \d MB and had not "
                       r"ended, with \d MB left on the disk of '.*run'"):
        data.spool_stdin(copy)
    assert copy.read_bytes() == b"an earlier copy"  # and what was copied is deleted
    assert [p.name for p in copy.parent.iterdir()] == ["stdin-corpus"]


def test_a_small_corpus_is_copied_to_a_nearly_full_disk(tmp_path, monkeypatch):
    fake_disk(monkeypatch, 800_000_000)  # under SPOOL_MARGIN free
    pipe(monkeypatch, b"a small corpus\n" * 100)
    data.spool_stdin(tmp_path / "stdin-corpus")
    assert (tmp_path / "stdin-corpus").read_bytes() == b"a small corpus\n" * 100


def test_a_new_runs_copy_of_standard_input_goes_if_the_run_cannot_start(tmp_path, monkeypatch):
    pipe(monkeypatch, b"text")
    out = tmp_path / "new-run"
    with pytest.raises(TinylmError, match="settings"):
        with data.stdin_copy(out / "stdin-corpus"):
            assert (out / "stdin-corpus").read_bytes() == b"text"
            raise TinylmError("bad settings")
    assert not out.exists()
    (tmp_path / "existing").mkdir()
    (tmp_path / "existing" / "notes.txt").write_text("mine")
    pipe(monkeypatch, b"text")
    with pytest.raises(KeyboardInterrupt):
        with data.stdin_copy(tmp_path / "existing" / "stdin-corpus"):
            raise KeyboardInterrupt
    assert [p.name for p in (tmp_path / "existing").iterdir()] == ["notes.txt"]


def test_a_resumed_runs_copy_of_standard_input_is_kept_until_the_new_one_starts(tmp_path,
                                                                                 monkeypatch):
    """`tinylm train --resume RUN --data -` piped a corpus too short to train on: its
    copy had already replaced the run's only copy of the corpus it was trained on."""
    run = tmp_path / "run"
    run.mkdir()
    copy = run / "stdin-corpus"
    copy.write_bytes(b"the corpus the run was trained on\n")
    pipe(monkeypatch, b"hi\n")
    with pytest.raises(TinylmError, match="too short"):
        with data.stdin_copy(copy):
            assert copy.read_bytes() == b"hi\n"
            raise TinylmError("corpus is too short")
    assert copy.read_bytes() == b"the corpus the run was trained on\n"
    pipe(monkeypatch, b"")  # an empty pipe, refused before any run
    with pytest.raises(TinylmError, match="empty"):
        with data.stdin_copy(copy):
            pass
    assert copy.read_bytes() == b"the corpus the run was trained on\n"
    assert [p.name for p in run.iterdir()] == ["stdin-corpus"]  # no copy left beside it
    (run / "stdin-corpus.previous").write_bytes(copy.read_bytes())  # a try killed midway
    copy.write_bytes(b"a copy that never started a run\n")
    data.recover_stdin_copy(copy)
    assert copy.read_bytes() == b"the corpus the run was trained on\n"
    assert [p.name for p in run.iterdir()] == ["stdin-corpus"]
    pipe(monkeypatch, b"a longer corpus\n")
    with data.stdin_copy(copy):
        pass
    assert copy.read_bytes() == b"a longer corpus\n"
    assert [p.name for p in run.iterdir()] == ["stdin-corpus"]


def test_a_cache_entry_cut_short_is_made_again(tmp_path):
    (tmp_path / "c.txt").write_bytes(b"abcdef")
    tok = ByteTokenizer()
    data.load_tokens(str(tmp_path / "c.txt"), tok)
    [entry] = (tmp_path / "cache").iterdir()
    entry.write_bytes(entry.read_bytes()[:-4])  # whole tokens, but not all of them
    tokens = data.load_tokens(str(tmp_path / "c.txt"), tok)
    assert tokens.tolist() == [97, 98, 99, 100, 101, 102, 256]


def test_a_cache_entry_with_ids_past_the_vocabulary_is_made_again(tmp_path):
    """A damaged entry's ids reached the model: a traceback from the embedding lookup."""
    (tmp_path / "c.txt").write_bytes(b"abc")
    tok = ByteTokenizer()
    data.load_tokens(str(tmp_path / "c.txt"), tok)
    [entry] = (tmp_path / "cache").iterdir()
    entry.write_bytes(np.array([97, 60000, 99, 256], np.uint16).tobytes())
    assert data.load_tokens(str(tmp_path / "c.txt"), tok).tolist() == [97, 98, 99, 256]


def test_tokenizing_reports_its_progress(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "READ_BYTES", 1000)
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "a.txt").write_bytes(b"line\n" * 900)
    (root / "b.txt").write_bytes(b"")
    (root / "c.txt").write_bytes(b"x" * 2500)
    calls = []
    tokens = data.load_tokens(str(root), ByteTokenizer(), lambda *report: calls.append(report))
    assert len(tokens) == 4500 + 2500 + 2
    assert calls == [(1000, 7000), (2000, 7000), (3000, 7000), (4000, 7000), (4500, 7000),
                     (5500, 7000), (6500, 7000), (7000, 7000)]
    calls.clear()
    data.load_tokens(str(root), ByteTokenizer(), lambda *report: calls.append(report))
    assert calls == []  # from the cache: nothing to report


def test_a_file_gone_since_the_corpus_was_listed_is_named(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_bytes(b"a")
    listed = [tmp_path / "a.txt", tmp_path / "gone.txt"]
    monkeypatch.setattr(data, "corpus_files", lambda source: listed)  # listed, then deleted
    with pytest.raises(TinylmError, match="cannot read corpus .*No such file.*gone.txt"):
        data.load_tokens(str(tmp_path), ByteTokenizer())


def test_the_cache_keeps_one_entry_for_each_corpus_and_tokenizer(tmp_path, sp_tokenizer):
    """Editing a corpus and training again replaces its entry (a 2 GB corpus is 4 GB of
    tokens: one left behind at each edit would fill a disk); another corpus, or the same
    one under another tokenizer, keeps its own."""
    corpus, other = tmp_path / "c.txt", tmp_path / "other.txt"
    corpus.write_bytes(b"first")
    other.write_bytes(b"other")
    first = data.load_tokens(str(corpus), ByteTokenizer())
    data.load_tokens(str(other), ByteTokenizer())
    data.load_tokens(str(corpus), sp_tokenizer)
    assert len(list((tmp_path / "cache").iterdir())) == 3
    corpus.write_bytes(b"second!")
    assert data.load_tokens(str(corpus), ByteTokenizer()).tolist() == list(b"second!") + [256]
    assert len(list((tmp_path / "cache").iterdir())) == 3
    assert first.tolist() == list(b"first") + [256]  # a run reading the old entry keeps it
    corpus.write_bytes(b"first")  # the same bytes again, but a new mtime: made again
    assert data.load_tokens(str(corpus), ByteTokenizer()).tolist() == list(b"first") + [256]
    assert len(list((tmp_path / "cache").iterdir())) == 3


def test_writing_an_entry_removes_old_versions_entries_and_abandoned_temporaries(tmp_path):
    import os
    import time
    cache = tmp_path / "cache"
    cache.mkdir()
    old_npy = cache / ("tokens-" + "0" * 24 + ".npy")  # before the raw token files
    keyless = cache / ("tokens-" + "1" * 24 + ".uint16")  # before entries had a key
    abandoned = cache / ("tokens-" + "2" * 12 + "-" + "3" * 24 + ".uint16.k1x_9ab.tmp")
    writing = cache / ("tokens-" + "4" * 12 + "-" + "5" * 24 + ".uint16.zz8_q1c.tmp")
    other_entry = cache / ("tokens-" + "6" * 12 + "-" + "7" * 24 + ".uint16")
    users = [cache / "notes.txt", cache / "tokens-list.tmp"]  # not the cache's: kept
    for p in [old_npy, keyless, abandoned, writing, other_entry] + users:
        p.write_bytes(b"x")
    an_hour_ago = time.time() - data.ABANDONED_SECONDS - 60
    for p in [abandoned] + users:
        os.utime(p, (an_hour_ago, an_hour_ago))
    (tmp_path / "c.txt").write_bytes(b"abc")
    data.load_tokens(str(tmp_path / "c.txt"), ByteTokenizer())
    [entry] = set(cache.iterdir()) - {writing, other_entry, *users}
    assert data._CACHE_ENTRY.fullmatch(entry.name)
    assert all(p.exists() for p in (writing, other_entry, *users))
    assert not any(p.exists() for p in (old_npy, keyless, abandoned))
