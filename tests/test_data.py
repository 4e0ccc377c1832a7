"""Tests of rllc.data: sources, tokeniser, caches, datasets, mixtures and synthetic pattern labels."""

from __future__ import annotations

import gzip
import itertools
import json
import math
import os
import pickle
import sys

import numpy as np
import pytest
import torch
from tokenizers import pre_tokenizers
from torch.utils.data import DataLoader

from rllc._errors import RllcError
from rllc.data import (
    DEFAULT_PRETRAIN,
    FAMILIES,
    MixtureDataset,
    Pattern,
    SyntheticConfig,
    SyntheticDataset,
    WindowDataset,
    bracket_ids,
    build_dataset,
    cache_metadata,
    corpus_texts_for_tokenizer,
    eos_id,
    generate,
    is_val_doc,
    iter_documents,
    load_tokenizer,
    ngram_successors,
    parse_data_spec,
    pattern_tables,
    prose_path,
    save_tokenizer,
    stdlib_python_files,
    tokenize_to_cache,
    tokenizer_id,
    train_tokenizer,
)
from rllc.data import corpora
from rllc.data.dataset import cache_paths

VOCAB = 300
N_CTX = 64
UNICODE = "naïve café — 日本語テキスト 🎉🐍 Ελληνικά\r\n\ttabs\x00nul  double  spaces \u200b zwsp\n"


# ------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def prose_docs() -> list[str]:
    """About 200 KB of the bundled prose corpus (every 8th document: Britannica, poems and plays)."""
    docs, size = [], 0
    for doc in itertools.islice(iter_documents("prose"), 0, None, 8):
        docs.append(doc)
        size += len(doc)
        if size > 200_000:
            break
    return docs


@pytest.fixture(scope="session")
def code_text() -> str:
    path = next(p for p in stdlib_python_files() if p.name == "textwrap.py")
    return path.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def tok(prose_docs, code_text):
    return train_tokenizer(prose_docs + [code_text, UNICODE], vocab_size=VOCAB)


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory, prose_docs):
    """A directory of ~45 small .txt/.md files (the prose documents)."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "sub").mkdir()
    for i, doc in enumerate(prose_docs[:60]):
        where = root / "sub" if i % 3 == 0 else root
        (where / f"doc{i:03d}.{'md' if i % 5 == 0 else 'txt'}").write_text(doc, encoding="utf-8")
    (root / "ignored.bin").write_bytes(b"\xff\xfe not text")
    return root


def _split_docs(stream: np.ndarray, eos: int) -> list[list[int]]:
    docs, cur = [], []
    for t in stream.tolist():
        if t == eos:
            docs.append(cur)
            cur = []
        else:
            cur.append(t)
    assert not cur, "stream must end with EOS"
    return docs


# ------------------------------------------------------------------------------------------------- sources


def test_prose_corpus_is_bundled_and_clean(prose_docs):
    path = prose_path()
    assert path.stat().st_size < 1_600_000
    assert (path.parent / "PROVENANCE.md").is_file()
    with gzip.open(path, "rt", encoding="utf-8") as f:
        text = f.read()
    docs = text.split("\f")
    assert len(docs) > 800 and all(d.strip() for d in docs)
    assert "PROJECT GUTENBERG" not in text.upper()
    assert "### START" not in text
    assert "Stratford" in docs[0]  # Britannica article comes first
    assert list(iter_documents("prose"))[:3] == docs[:3]


def test_code_source_is_stdlib_sorted():
    files = stdlib_python_files()
    assert files == sorted(files)
    assert not any("site-packages" in p.parts for p in files)
    assert not any("test" in p.parts for p in files)
    first = list(itertools.islice(iter_documents("code"), 3))
    assert first == list(itertools.islice(iter_documents("code"), 3))
    assert all(isinstance(d, str) and d.strip() for d in first)


def test_user_sources(corpus_dir, tmp_path):
    n = len(list(corpus_dir.rglob("*.txt")) + list(corpus_dir.rglob("*.md")))
    docs = list(iter_documents(str(corpus_dir)))
    assert len(docs) == n > 30
    assert len(list(iter_documents(str(corpus_dir / "*.md")))) == sum(1 for i in range(n) if i % 5 == 0 and i % 3)
    single = corpus_dir / "doc001.txt"
    assert list(iter_documents(str(single))) == [single.read_text()]
    jl = tmp_path / "d.jsonl"
    jl.write_text("\n".join(json.dumps({"text": f"doc {i}", "body": f"body {i}"}) for i in range(5)) + "\n\n")
    assert list(iter_documents(str(jl))) == [f"doc {i}" for i in range(5)]
    assert list(iter_documents(f"{jl}:body")) == [f"body {i}" for i in range(5)]
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "good.txt").write_text("fine text")
    (mixed / "bad.txt").write_bytes(b"\xff\xfe\x00latin-1 \xe9")
    with pytest.warns(UserWarning, match="bad.txt"):
        assert list(iter_documents(str(mixed))) == ["fine text"]
    with pytest.raises(RllcError, match="bad.txt.*UTF-8"):
        list(iter_documents(str(mixed / "bad.txt")))


def test_large_file_is_streamed_in_pieces(tmp_path, monkeypatch):
    monkeypatch.setattr(corpora, "MAX_DOC_CHARS", 1000)
    monkeypatch.setattr(corpora, "_CHUNK_CHARS", 300)
    text = "".join(f"line {i} of paragraph {i // 5}\n" + ("\n" if i % 5 == 4 else "") for i in range(400))
    path = tmp_path / "big.txt"
    path.write_text(text)
    pieces = list(iter_documents(str(path)))
    assert len(pieces) > 5 and "".join(pieces) == text


# ------------------------------------------------------------------------------------------------- tokenizer


def test_tokenizer_round_trip(tok, prose_docs, code_text):
    assert tok.get_vocab_size() == VOCAB
    assert eos_id(tok) == 0
    for text in (prose_docs[0], prose_docs[-1], code_text, UNICODE, "", " leading space", "Ünïcödé‽"):
        assert tok.decode(tok.encode(text).ids) == text
    # Every byte has its own token, so even text never seen in training round-trips.
    assert set(pre_tokenizers.ByteLevel.alphabet()) <= set(tok.get_vocab())
    assert len({tuple(tok.encode(chr(b)).ids) for b in range(128)}) == 128
    assert len(tok.encode(prose_docs[0]).ids) < len(prose_docs[0].encode()) * 0.8  # merges learnt


def test_tokenizer_save_load_id(tok, tmp_path):
    path = save_tokenizer(tok, tmp_path / "sub" / "tok.json")
    loaded = load_tokenizer(path)
    assert tokenizer_id(loaded) == tokenizer_id(tok) and len(tokenizer_id(tok)) == 16
    assert loaded.encode(UNICODE).ids == tok.encode(UNICODE).ids
    with pytest.raises(RllcError, match="nope.json"):
        load_tokenizer(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(RllcError, match="bad.json"):
        load_tokenizer(bad)
    with pytest.raises(RllcError, match="vocab_size=100"):
        train_tokenizer(["abc"], vocab_size=100)


# ------------------------------------------------------------------------------------------------- caches


def test_cache_created_once_and_reused(tok, corpus_dir, tmp_path):
    cache = tmp_path / "cache"
    train = tokenize_to_cache(str(corpus_dir), tok, cache)
    bin_path, meta_path = cache_paths(str(corpus_dir), tok, cache)
    assert bin_path.parent == cache and "corpus" in bin_path.name
    assert tokenizer_id(tok) in bin_path.name and bin_path.suffix == ".bin" and meta_path.suffix == ".json"
    assert bin_path.is_file() and meta_path.is_file()
    assert not [p for p in cache.iterdir() if p.name.startswith(".tmp-")]
    mtimes = (bin_path.stat().st_mtime_ns, meta_path.stat().st_mtime_ns)
    meta = json.loads(meta_path.read_text())
    assert meta["n_docs"] == len(list(iter_documents(str(corpus_dir)))) and meta["tokenizer_id"] == tokenizer_id(tok)
    assert meta["n_tokens"] == meta["train"]["n_tokens"] + meta["val"]["n_tokens"] == bin_path.stat().st_size // 2
    assert train.dtype == np.uint16 and len(train) == meta["train"]["n_tokens"]
    assert int(train.max()) < VOCAB and train[-1] == eos_id(tok)

    again = tokenize_to_cache(str(corpus_dir), tok, cache)
    assert (bin_path.stat().st_mtime_ns, meta_path.stat().st_mtime_ns) == mtimes
    assert np.array_equal(again, train)

    # A half-written .bin (size disagreeing with the sidecar) is never trusted: it is rebuilt. (Copy first:
    # truncating a file under a live memmap would fault on the next read.)
    train = np.array(train)
    del again
    with open(bin_path, "r+b") as f:
        f.truncate(100)
    rebuilt = tokenize_to_cache(str(corpus_dir), tok, cache)
    assert np.array_equal(rebuilt, train)


def test_split_disjoint_and_deterministic(tok, corpus_dir, tmp_path):
    docs = list(iter_documents(str(corpus_dir)))
    eos = eos_id(tok)
    train = _split_docs(np.asarray(tokenize_to_cache(str(corpus_dir), tok, tmp_path / "a")), eos)
    val = _split_docs(np.asarray(tokenize_to_cache(str(corpus_dir), tok, tmp_path / "a", split="val")), eos)
    val_idx = [i for i in range(len(docs)) if is_val_doc(i)]
    assert val_idx, "this many documents should hit the 5% validation draw"
    assert [tok.decode(d) for d in val] == [docs[i] for i in val_idx]
    assert [tok.decode(d) for d in train] == [docs[i] for i in range(len(docs)) if i not in val_idx]
    # Same bytes from a fresh build elsewhere: the split does not depend on anything but document order.
    other = tokenize_to_cache(str(corpus_dir), tok, tmp_path / "b", split="val")
    assert np.array_equal(np.asarray(other), np.concatenate([np.asarray(d + [eos]) for d in val]))
    assert [is_val_doc(i) for i in range(1000)] == [is_val_doc(i) for i in range(1000)]
    assert 20 < sum(is_val_doc(i) for i in range(1000)) < 80


def test_tiny_corpus_still_has_validation(tok, tmp_path):
    (tmp_path / "c").mkdir()
    for i in range(3):
        (tmp_path / "c" / f"{i}.txt").write_text(f"document number {i}\n")
    meta = cache_metadata(str(tmp_path / "c"), tok, tmp_path / "cache")
    assert meta["val"]["n_docs"] >= 1 and meta["train"]["n_docs"] >= 1 and meta["n_docs"] == 3
    train = tokenize_to_cache(str(tmp_path / "c"), tok, tmp_path / "cache", split="train")
    val = tokenize_to_cache(str(tmp_path / "c"), tok, tmp_path / "cache", split="val")
    # too few documents to split by document: the stream's last tokens are validation, the rest training
    whole = tok.decode(np.concatenate([train, val]).tolist(), skip_special_tokens=False)
    assert sorted(whole.split("<|endoftext|>")[:-1]) == [f"document number {i}\n" for i in range(3)]
    assert meta["split_by"] == "tokens" and 0 < len(val) < len(train)


def test_one_small_file_splits_inside_the_document(tok, prose_docs, tmp_path):
    # A 40 KB single-file corpus used to hash its only document into validation: 0 training tokens.
    text = "\n\n".join(prose_docs)[:40_000]
    (tmp_path / "s.txt").write_text(text)
    train = tokenize_to_cache(str(tmp_path / "s.txt"), tok, tmp_path / "cache", split="train")
    val = tokenize_to_cache(str(tmp_path / "s.txt"), tok, tmp_path / "cache", split="val")
    n = len(train) + len(val)
    assert len(val) == max(math.ceil(0.05 * n), min(n // 4, 1024)) and len(train) == n - len(val)
    assert tok.decode(np.concatenate([train, val])[:-1].tolist()) == text  # one document, cut in two
    # an old cache of a tiny corpus (split by document) is rebuilt, not trusted
    meta_path = next((tmp_path / "cache").glob("*.json"))
    meta = json.loads(meta_path.read_text())
    meta.pop("split_by")
    meta_path.write_text(json.dumps(meta))
    assert len(tokenize_to_cache(str(tmp_path / "s.txt"), tok, tmp_path / "cache", split="val")) == len(val)
    assert json.loads(meta_path.read_text())["split_by"] == "tokens"


def test_orphan_temp_files_are_removed(tok, corpus_dir, tmp_path):
    import subprocess
    import sys

    cache = tmp_path / "cache"
    cache.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    orphan = cache / f".tmp-{int(dead.stdout)}-abc.train"  # a tokenisation killed mid-write
    orphan.write_bytes(b"x" * 1000)
    alive = cache / f".tmp-{os.getpid()}-abc.train"  # a tokenisation still running (this process)
    alive.write_bytes(b"x")
    tokenize_to_cache(str(corpus_dir), tok, cache)
    assert not orphan.exists() and alive.exists()


def test_vocab_too_large_for_uint16(tmp_path, corpus_dir):
    class Huge:
        def get_vocab_size(self) -> int:
            return 70_000

    with pytest.raises(RllcError, match="70000"):
        tokenize_to_cache(str(corpus_dir), Huge(), tmp_path)


# ------------------------------------------------------------------------------------------------- datasets


def test_window_dataset(tok, corpus_dir, tmp_path):
    tokens = tokenize_to_cache(str(corpus_dir), tok, tmp_path)
    ds = WindowDataset(tokens, N_CTX)
    assert len(ds) == len(tokens) // N_CTX
    item = ds[3]
    assert item.shape == (N_CTX,) and item.dtype == torch.int64
    assert np.array_equal(item.numpy(), tokens[3 * N_CTX:4 * N_CTX])
    with pytest.raises(IndexError):
        ds[len(ds)]
    batch = ds.sample_batch(5, torch.Generator().manual_seed(0))
    assert batch.shape == (5, N_CTX) and batch.dtype == torch.int64
    assert torch.equal(batch, ds.sample_batch(5, torch.Generator().manual_seed(0)))
    stream = np.asarray(tokens)
    for row in batch.numpy():
        starts = [s for s in range(0, len(ds) * N_CTX, N_CTX) if np.array_equal(stream[s:s + N_CTX], row)]
        assert starts
    loaded = next(iter(DataLoader(ds, batch_size=4, shuffle=True)))
    assert loaded.shape == (4, N_CTX)
    clone = pickle.loads(pickle.dumps(ds))  # what spawned DataLoader workers receive
    assert len(pickle.dumps(ds)) < 2000 and torch.equal(clone[7], ds[7])
    with pytest.raises(RllcError, match="fewer than n_ctx"):
        WindowDataset(tokens[:10], N_CTX)


def test_build_dataset_single_sources(tok, corpus_dir, tmp_path):
    ds = build_dataset(str(corpus_dir), tok, n_ctx=N_CTX, cache_dir=tmp_path)
    val = build_dataset(str(corpus_dir), tok, n_ctx=N_CTX, cache_dir=tmp_path, split="val")
    assert isinstance(ds, WindowDataset) and isinstance(val, WindowDataset) and len(val) < len(ds)
    syn = build_dataset("synthetic.dyck", tok, n_ctx=N_CTX, cache_dir=tmp_path, synthetic_length=50)
    assert isinstance(syn, SyntheticDataset) and len(syn) == 50
    assert syn.config.bracket_ids == bracket_ids(tok) and syn.config.vocab_size == VOCAB and syn.config.low == 1
    syn_val = build_dataset("synthetic.dyck", tok, n_ctx=N_CTX, cache_dir=tmp_path, split="val")
    assert not torch.equal(syn[0], syn_val[0])
    with pytest.raises(RllcError, match="fewer than n_ctx"):
        build_dataset(str(corpus_dir), tok, n_ctx=10**7, cache_dir=tmp_path)


def test_mixture_proportions(tok, corpus_dir, tmp_path):
    ds = build_dataset(f"{corpus_dir}*1,synthetic.repeat*1", tok, n_ctx=N_CTX, cache_dir=tmp_path)
    assert isinstance(ds, MixtureDataset) and ds.weights == [0.5, 0.5]
    gen = torch.Generator().manual_seed(1)
    for batch_size in (2, 8, 16):
        batch = ds.sample_batch(batch_size, gen)
        assert batch.shape == (batch_size, N_CTX) and batch.dtype == torch.int64
        half = batch_size // 2
        text_rows, syn_rows = batch[:half], batch[half:]
        windows = {tuple(w.tolist()) for w in ds.components[0]}
        assert all(tuple(r.tolist()) in windows for r in text_rows)
        for row in syn_rows:  # repeat sequences are periodic with a period in [8, 32]
            r = row.numpy()
            assert any(np.array_equal(r[p:], r[:-p]) for p in range(8, 33))
    counts = MixtureDataset(ds.components * 2, [0.35, 0.15, 0.25, 0.25]).batch_counts(20)
    assert counts == [7, 3, 5, 5]
    # Indexing follows the weights too, so DataLoader shuffling keeps the proportions.
    comp = [int(ds._slot_comp[j]) for j in range(100)]
    assert comp.count(0) == comp.count(1) == 50
    assert len(ds) >= 2 * max(len(c) for c in ds.components)
    assert ds[0].shape == (N_CTX,)


def test_parse_data_spec():
    spec = parse_data_spec("pretrain")
    assert [(p.source, p.weight) for p in spec.parts] == [
        (p.split("*")[0], pytest.approx(float(p.split("*")[1]))) for p in DEFAULT_PRETRAIN.split(",")
    ]
    spec = parse_data_spec("prose*3, data/*.txt ,synthetic")
    assert [p.source for p in spec.parts] == ["prose", "data/*.txt", "synthetic"]
    assert [p.weight for p in spec.parts] == pytest.approx([0.6, 0.2, 0.2])
    assert [p.source for p in parse_data_spec("data/*.txt*2,hf:roneneldan/TinyStories").parts] == [
        "data/*.txt", "hf:roneneldan/TinyStories"]
    assert corpora.parse_hf_spec("hf:wikitext:wikitext-2-raw-v1/validation") == (
        "wikitext", "wikitext-2-raw-v1", "validation")
    assert corpora.parse_hf_spec("hf:owner/name/test") == ("owner/name", None, "test")


def test_corpus_texts_for_tokenizer(corpus_dir):
    texts = list(corpus_texts_for_tokenizer(f"{corpus_dir}*1,synthetic*5", max_chars=10_000))
    assert texts and sum(len(t) for t in texts) <= 10_000
    assert texts[0] == next(iter_documents(str(corpus_dir)))[:10_000]
    with pytest.raises(RllcError, match="no text sources"):
        list(corpus_texts_for_tokenizer("synthetic.repeat"))


# ------------------------------------------------------------------------------------------------- synthetic


def _config(tok, family: str) -> SyntheticConfig:
    return SyntheticConfig(families=(family,), vocab_size=VOCAB, low=1, bracket_ids=bracket_ids(tok), seed=3)


def _family_batch(tok, family, n=48, n_ctx=96):
    config = _config(tok, family)
    batch = generate(config, n, n_ctx, seed=11)
    assert batch.tokens.shape == batch.labels.shape == (n, n_ctx)
    assert batch.tokens.dtype == torch.int64 and batch.labels.dtype == torch.int32
    assert (batch.family == FAMILIES.index(family)).all()
    assert (batch.labels[:, -1] == 0).all()
    assert int(batch.tokens.min()) >= 1 and int(batch.tokens.max()) < VOCAB
    return config, batch.tokens.numpy(), batch.labels.numpy()


def test_synthetic_ngram_labels(tok):
    config, toks, labels = _family_batch(tok, "ngram")
    tables = pattern_tables(config)
    n_checked = 0
    for seq, lab in zip(toks, labels):
        for t in np.flatnonzero(lab & Pattern.NGRAM):
            prev = int(seq[t - 1]) if t > 0 else None
            assert seq[t + 1] in ngram_successors(tables, prev, int(seq[t]), VOCAB)
            n_checked += 1
    assert n_checked > 0.7 * toks.size


def test_synthetic_skipgram_labels(tok):
    config, toks, labels = _family_batch(tok, "skipgram")
    t = pattern_tables(config)
    rules = {(int(a), int(b)): int(c) for a, b, c in zip(t.skip_a, t.skip_b, t.skip_c)}
    n_checked = 0
    for seq, lab in zip(toks, labels):
        for pos in np.flatnonzero(lab):
            assert lab[pos] == Pattern.SKIPGRAM
            b = int(seq[pos])
            # The most recent earlier A that has a rule with this B decides C.
            a = next(int(x) for x in seq[:pos][::-1] if (int(x), b) in rules)
            assert rules[(a, b)] == seq[pos + 1]
            n_checked += 1
    assert n_checked >= len(toks) * 3


def _has_earlier_copy(seq, t) -> bool:
    return any(seq[j] == seq[t] and seq[j + 1] == seq[t + 1] for j in range(t))


def test_synthetic_induction_labels(tok):
    _, toks, labels = _family_batch(tok, "induction")
    n_checked = 0
    for seq, lab in zip(toks, labels):
        for t in np.flatnonzero(lab):
            assert lab[t] == Pattern.INDUCTION and _has_earlier_copy(seq, t)
            n_checked += 1
    assert n_checked > 0.05 * toks.size


def test_synthetic_repeat_labels(tok):
    _, toks, labels = _family_batch(tok, "repeat")
    periods = set()
    n_ctx = toks.shape[1]
    for seq, lab in zip(toks, labels):
        period = int(np.flatnonzero(lab)[0])
        periods.add(period)
        assert 8 <= period <= 32
        assert (lab[period:n_ctx - 1] == (Pattern.INDUCTION | Pattern.REPEAT)).all() and not lab[:period].any()
        assert np.array_equal(seq[period:], seq[:-period])
        assert len(set(seq[:period].tolist())) == period
        assert all(_has_earlier_copy(seq, t) for t in range(period, n_ctx - 1))
    assert len(periods) > 5


def test_synthetic_dyck_labels(tok):
    config, toks, labels = _family_batch(tok, "dyck", n=64)
    closer_of = {o: c for o, c in config.brackets}
    closers = set(closer_of.values())
    max_depths = []
    for seq, lab in zip(toks, labels):
        stack, depth = [], 0
        for t, x in enumerate(seq.tolist()):
            if x in closer_of:
                stack.append(x)
                depth = max(depth, len(stack))
            elif x in closers:
                assert stack and closer_of[stack[-1]] == x, "brackets must be well nested"
                assert lab[t - 1] & Pattern.DYCK
                assert bool(lab[t - 1] & Pattern.NESTED) == (len(stack) >= 2)
                stack.pop()
            else:
                assert t == 0 or not lab[t - 1] & Pattern.DYCK
        max_depths.append(depth)
    assert max(max_depths) >= 2, "some samples nest brackets"
    assert sum(d == 1 for d in max_depths) >= 10, "some samples are sequential (unnested)"


def test_synthetic_determinism_and_indexing(tok):
    config = SyntheticConfig(vocab_size=VOCAB, bracket_ids=bracket_ids(tok))
    a = generate(config, 12, 40, seed=5)
    b = generate(config, 12, 40, seed=5)
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.tokens, generate(config, 12, 40, seed=6).tokens)
    tail = generate(config, 4, 40, seed=5, start=8)
    assert torch.equal(tail.tokens, a.tokens[8:]) and torch.equal(tail.labels, a.labels[8:])
    assert len(set(a.family.tolist())) >= 3
    ds = SyntheticDataset(config, 40, length=100, seed=5)
    assert torch.equal(ds[9], a.tokens[9]) and torch.equal(ds.labels(9), a.labels[9])
    gen = torch.Generator().manual_seed(0)
    assert ds.sample_batch(6, gen).shape == (6, 40)
    # A different world seed changes the n-gram tables, not just the samples.
    other = SyntheticConfig(vocab_size=VOCAB, seed=1)
    assert not np.array_equal(pattern_tables(config).bigram, pattern_tables(other).bigram)


# ------------------------------------------------------------------------------------------------- errors


def test_errors_name_the_culprit(tmp_path, tok, monkeypatch):
    missing = tmp_path / "missing_corpus.txt"
    with pytest.raises(RllcError, match="missing_corpus.txt"):
        iter_documents(str(missing))
    with pytest.raises(RllcError, match="missing_dir"):
        iter_documents(str(tmp_path / "missing_dir" / ""))
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(RllcError, match="empty_dir"):
        iter_documents(str(empty))
    blank = tmp_path / "blank.txt"
    blank.write_text("  \n")
    with pytest.raises(RllcError, match="blank.txt"):
        list(iter_documents(str(blank)))
    with pytest.raises(RllcError, match=r"nomatch_\*"):
        iter_documents(str(tmp_path / "nomatch_*.txt"))
    with pytest.raises(RllcError, match=r"'bogus'.*prose.*synthetic\.repeat"):
        parse_data_spec("prose,bogus")
    with pytest.raises(RllcError, match="synthetic.nope"):
        parse_data_spec("synthetic.nope")
    with pytest.raises(RllcError, match="-1"):
        parse_data_spec("prose*-1")
    with pytest.raises(RllcError, match="empty part"):
        parse_data_spec("prose,,code")
    jl = tmp_path / "records.jsonl"
    jl.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(RllcError, match=r"records.jsonl:1.*'text'"):
        list(iter_documents(str(jl)))
    with pytest.raises(RllcError, match="records.jsonl:1.*'content'"):
        list(iter_documents(f"{jl}:content"))
    jl.write_text("{broken\n")
    with pytest.raises(RllcError, match="records.jsonl:1"):
        list(iter_documents(str(jl)))
    with pytest.raises(RllcError, match="absent.jsonl"):
        iter_documents(str(tmp_path / "absent.jsonl"))
    monkeypatch.setitem(sys.modules, "datasets", None)  # simulates the optional extra not being installed
    with pytest.raises(RllcError, match=r'pip install "rllc\[hf\]".*HF_DATASETS_OFFLINE'):
        iter_documents("hf:roneneldan/TinyStories")
    with pytest.raises(RllcError, match="ngrams"):
        SyntheticConfig(families=("ngrams",))
    assert SyntheticConfig(families="repeat").families == ("repeat",)
    with pytest.raises(RllcError, match="split 'test'"):
        build_dataset("synthetic", tok, n_ctx=8, cache_dir=tmp_path, split="test")
    assert not os.listdir(empty)
