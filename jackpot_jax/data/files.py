"""The official files of the small datasets: reading them, finding them, downloading them.

* Fashion-MNIST: four IDX files (gzipped or not), searched in `--config.data_dir`, env
  JACKPOT_DATA_DIR, Debian's `dataset-fashion-mnist` and the cache, else downloaded.
* CIFAR-10/100: the official python-version archive (or its extracted folder), searched in
  the same places, else downloaded into the cache. Its batches are python pickles, read with
  `restricted_loads`, which builds only what those files contain (dicts, lists, bytes, str,
  int and numpy arrays) and refuses any other object, so a tampered file cannot run code.

Every download streams into a temporary file, is checked against the published MD5 and only
then renamed into place; a mismatch raises `ChecksumError` naming the file and both sums.
Functions return numpy arrays; `jackpot_jax.data.datasets` makes datasets of them.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import pickle
import shutil
import subprocess
import tarfile
import tempfile
import urllib.error
import urllib.request

import numpy as np

from jackpot_jax.cache import cache_root  # noqa: F401  (re-exported)

# Official location and checksums of the four gzipped files (zalandoresearch/fashion-mnist
# README). Debian's `dataset-fashion-mnist` recompresses them, so its .gz bytes have other
# MD5s; checksums are only applied to files this module downloads.
FASHION_MNIST_URL = 'http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/'
FASHION_MNIST_FILES = {
    'train_images': 'train-images-idx3-ubyte',
    'train_labels': 'train-labels-idx1-ubyte',
    'test_images': 't10k-images-idx3-ubyte',
    'test_labels': 't10k-labels-idx1-ubyte',
}
FASHION_MNIST_MD5 = {
    'train-images-idx3-ubyte.gz': '8d4fb7e6c68d591d4c3dfef9ec88bf0d',
    'train-labels-idx1-ubyte.gz': '25c81989df183df01b3e8a0aad5dffbe',
    't10k-images-idx3-ubyte.gz': 'bef4ecab320f06d8554ea6380940ec79',
    't10k-labels-idx1-ubyte.gz': 'bb300cfdad3c16e7a12a480ee83cd310',
}
FASHION_MNIST_SYSTEM_DIR = '/usr/share/datasets/fashion-mnist'
DATA_DIR_ENV = 'JACKPOT_DATA_DIR'


class ChecksumError(ValueError):
    """A downloaded file does not have the published MD5."""


# --------------------------------------------------------------------------------------
# IDX files (Fashion-MNIST)

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype('>i2'),
    0x0C: np.dtype('>i4'),
    0x0D: np.dtype('>f4'),
    0x0E: np.dtype('>f8'),
}


def parse_idx(data: bytes) -> np.ndarray:
    """Parses the bytes of an IDX file (gzipped or not) into an array of native byte order."""
    if data[:2] == b'\x1f\x8b':
        data = gzip.decompress(data)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(
            f'not an IDX file: magic number {data[:4].hex()!r} should start with two zero bytes'
        )
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f'IDX file has unknown data type code 0x{code:02x}')
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f'IDX file truncated in its header ({len(data)} bytes, {ndim} dimensions)')
    shape = tuple(int(d) for d in np.frombuffer(data, dtype='>u4', count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(
            f'IDX file of shape {shape} and type {dtype} should hold '
            f'{expected} data bytes, has {len(data) - header}'
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder('='), copy=True)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file, gzipped or not (detected from its first bytes, not its name)."""
    with open(path, 'rb') as f:
        return parse_idx(f.read())


def _dpkg_dirs(package: str) -> list[str]:
    """Directories that `dpkg -L package` lists, if dpkg exists (best effort)."""
    if shutil.which('dpkg') is None:
        return []
    try:
        out = subprocess.run(
            ['dpkg', '-L', package], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted(
        {os.path.dirname(line.strip()) for line in out.splitlines() if 'idx3-ubyte' in line}
    )


def _system_fashion_mnist_dirs() -> list[str]:
    return [FASHION_MNIST_SYSTEM_DIR] + _dpkg_dirs('dataset-fashion-mnist')


def _fashion_mnist_search_dirs(data_dir: str | None) -> list[str]:
    dirs = []
    if data_dir:
        dirs += [os.path.join(data_dir, 'fashion_mnist'), data_dir]
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        dirs += [os.path.join(env, 'fashion_mnist'), env]
    dirs += _system_fashion_mnist_dirs()
    dirs.append(os.path.join(cache_root(), 'fashion_mnist'))
    return list(dict.fromkeys(os.path.abspath(d) for d in dirs))  # dedupe, keep order


def _find_idx_files(directory: str) -> dict[str, str] | None:
    """Paths of the four Fashion-MNIST files in `directory` (.gz preferred), or None."""
    found = {}
    for key, stem in FASHION_MNIST_FILES.items():
        for candidate in (stem + '.gz', stem):
            path = os.path.join(directory, candidate)
            if os.path.isfile(path):
                found[key] = path
                break
        else:
            return None
    return found


def _md5(path: str) -> str:
    h = hashlib.md5()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return h.hexdigest()


def download_file(url: str, dest: str, md5: str, *, timeout: float = 60.0) -> str:
    """Downloads `url` to the file `dest` unless it is there with MD5 `md5`; returns `dest`.

    The bytes stream into a temporary file beside `dest`, renamed into place only when their
    MD5 matches; a mismatch raises `ChecksumError` (naming the file and both sums) and leaves
    nothing behind.
    """
    if os.path.isfile(dest) and _md5(dest) == md5:
        return dest
    directory, name = os.path.split(os.path.abspath(dest))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=name + '.', suffix='.tmp', dir=directory)
    try:
        h = hashlib.md5()
        with os.fdopen(fd, 'wb') as out, urllib.request.urlopen(url, timeout=timeout) as r:
            for chunk in iter(lambda: r.read(1 << 20), b''):
                h.update(chunk)
                out.write(chunk)
        if h.hexdigest() != md5:
            raise ChecksumError(
                f'{name} downloaded from {url}: MD5 {h.hexdigest()} does not '
                f'match the published {md5}; refusing the file (corrupt or '
                'tampered download)'
            )
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dest


def download_fashion_mnist(
    dest_dir: str,
    base_url: str = FASHION_MNIST_URL,
    *,
    md5s: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> None:
    """Downloads the four gzipped Fashion-MNIST files into `dest_dir`, verifying MD5s.

    Files already present with the right checksum are not fetched again.
    """
    md5s = FASHION_MNIST_MD5 if md5s is None else md5s
    base_url = base_url if base_url.endswith('/') else base_url + '/'
    for stem in FASHION_MNIST_FILES.values():
        name = stem + '.gz'
        download_file(base_url + name, os.path.join(dest_dir, name), md5s[name], timeout=timeout)


def load_fashion_mnist(
    data_dir: str | None, download: bool = True, download_url: str | None = None
):
    """(train_x, train_y, test_x, test_y) of Fashion-MNIST (uint8 NHW1, int32), found or downloaded."""
    searched = _fashion_mnist_search_dirs(data_dir)
    files = None
    for directory in searched:
        files = _find_idx_files(directory)
        if files:
            break
    download_error = None
    if files is None and download:
        cache = os.path.join(cache_root(), 'fashion_mnist')
        url = download_url or FASHION_MNIST_URL
        try:
            download_fashion_mnist(cache, url)
            files = _find_idx_files(cache)
        except (urllib.error.URLError, OSError) as e:  # ChecksumError is not caught here
            download_error = f'download from {url} failed: {e}'
    if files is None:
        lines = [f'  {d}' for d in searched]
        raise FileNotFoundError(
            'Fashion-MNIST not found. Looked for '
            + ', '.join(s + '(.gz)' for s in FASHION_MNIST_FILES.values())
            + ' in:\n'
            + '\n'.join(lines)
            + '\n'
            + (
                download_error + '\n'
                if download_error
                else ''
                if download
                else 'download=False, so nothing was downloaded.\n'
            )
            + 'Provide the data by one of: `apt-get install dataset-fashion-mnist`; '
            '`--config.data_dir=DIR` (or env JACKPOT_DATA_DIR) with the four IDX files in DIR '
            'or DIR/fashion_mnist; or download=True (optionally with download_url=BASE_URL).'
        )
    arrays = {k: read_idx(p) for k, p in files.items()}
    for part in ('train', 'test'):
        images, labels = arrays[part + '_images'], arrays[part + '_labels']
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f'Fashion-MNIST {part} files have inconsistent shapes '
                f'{images.shape} and {labels.shape}'
            )
    return (
        arrays['train_images'][..., None],
        arrays['train_labels'].astype(np.int32),
        arrays['test_images'][..., None],
        arrays['test_labels'].astype(np.int32),
    )


# --------------------------------------------------------------------------------------
# CIFAR (official python-version pickles)

# Official archives (the dataset's page, "CIFAR-10 python version") and their published MD5s.
CIFAR_URL = 'https://www.cs.toronto.edu/~kriz/'
_CIFAR = {
    'cifar10': dict(
        archive='cifar-10-python.tar.gz',
        md5='c58f30108f718f92721af3b95e74349a',
        folder='cifar-10-batches-py',
        train=[f'data_batch_{i}' for i in range(1, 6)],
        test=['test_batch'],
        label_key=b'labels',
        num_classes=10,
    ),
    'cifar100': dict(
        archive='cifar-100-python.tar.gz',
        md5='eb9058c3a382ffc7106e4002c42a8d85',
        folder='cifar-100-python',
        train=['train'],
        test=['test'],
        label_key=b'fine_labels',
        num_classes=100,
    ),
}
CIFAR_NUM_CLASSES = {name: spec['num_classes'] for name, spec in _CIFAR.items()}

try:  # numpy >= 2 moved numpy.core to numpy._core; the official files name numpy.core
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # pragma: no cover (numpy 1.x)
    from numpy.core.multiarray import _reconstruct as _np_reconstruct


def _latin1_bytes(text: str, encoding: str = 'latin1') -> bytes:
    # Python 3 writes bytes in protocol 2 as _codecs.encode(text, 'latin1'); nothing else.
    if not isinstance(text, str) or encoding not in ('latin1', 'latin-1'):
        raise pickle.UnpicklingError(
            f'_codecs.encode({type(text).__name__}, {encoding!r}) is not a bytes literal'
        )
    return text.encode('latin1')


# The only globals a CIFAR batch pickle refers to: how numpy pickles an array (and how
# Python 3 spells bytes in protocol 2, for files re-written by Python 3).
_PICKLE_GLOBALS = {
    ('_codecs', 'encode'): _latin1_bytes,
    ('numpy.core.multiarray', '_reconstruct'): _np_reconstruct,
    ('numpy._core.multiarray', '_reconstruct'): _np_reconstruct,
    ('numpy', 'ndarray'): np.ndarray,
    ('numpy', 'dtype'): np.dtype,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds dicts, lists, tuples, bytes, str, numbers and numpy arrays; nothing else."""

    def __init__(self, file, what: str):
        super().__init__(file, encoding='bytes')  # python 2 pickles: str stays bytes
        self.what = what

    def find_class(self, module, name):
        try:
            return _PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f'{self.what}: refusing to unpickle {module}.{name}; a CIFAR batch holds only '
                'dicts, lists, bytes, str, int and numpy arrays (corrupt or tampered file?)'
            ) from None


def restricted_loads(raw: bytes, what: str):
    """`pickle.loads` that admits only what the official CIFAR batches contain.

    Any other global (a class, a function such as os.system) raises `pickle.UnpicklingError`
    naming `what` before it could be called.
    """
    return _RestrictedUnpickler(io.BytesIO(raw), what).load()


def _decode_cifar_batch(raw: bytes, label_key: bytes, what: str) -> tuple[np.ndarray, np.ndarray]:
    batch = restricted_loads(raw, what)
    if not isinstance(batch, dict) or b'data' not in batch or label_key not in batch:
        raise ValueError(
            f'{what}: not a CIFAR batch (expected a dict with keys b"data" and {label_key!r})'
        )
    data = batch[b'data']
    if (
        not isinstance(data, np.ndarray)
        or data.dtype != np.uint8
        or data.ndim != 2
        or data.shape[1] != 3072
    ):
        raise ValueError(
            f'{what}: data should be a uint8 array of shape (n, 3072), got '
            f'{getattr(data, "dtype", type(data))} {getattr(data, "shape", "")}'
        )
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # NCHW rows -> NHWC
    labels = np.asarray(batch[label_key], dtype=np.int32)
    if len(images) != len(labels):
        raise ValueError(f'{what}: {len(images)} images but {len(labels)} labels')
    return np.ascontiguousarray(images), labels


def _cifar_roots(name, data_dir) -> list[str]:
    roots = []
    if data_dir:
        roots += [os.path.join(data_dir, name), data_dir]
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        roots += [os.path.join(env, name), env]
    roots.append(os.path.join(cache_root(), name))
    return list(dict.fromkeys(os.path.abspath(r) for r in roots))


def _read_cifar_archive(spec, archive):
    with tarfile.open(archive, 'r:*') as tar:

        def read(f):
            member = f"{spec['folder']}/{f}"
            try:
                fh = tar.extractfile(member)
            except KeyError:
                fh = None
            if fh is None:
                raise ValueError(f'{archive}: {member} is missing or not a file')
            return fh.read(), f'{archive}:{member}'

        return _read_cifar_parts(spec, read)


def load_cifar(
    name: str, data_dir: str | None, download: bool = True, download_url: str | None = None
):
    """(train_x, train_y, test_x, test_y) of 'cifar10' / 'cifar100' (uint8 NHWC, int32).

    Looks for the extracted folder or the archive in DIR/<name>, DIR (for `data_dir` and env
    JACKPOT_DATA_DIR) and the cache; if none is there and `download`, downloads the archive
    (from `download_url`, a base URL, or the official one) into the cache, MD5-checked.
    """
    spec = _CIFAR[name]
    roots = _cifar_roots(name, data_dir)
    searched = []
    for root in roots:
        # The extracted folder, the root itself being that folder, or the archive.
        for folder in (os.path.join(root, spec['folder']), root):
            searched.append(folder + '/')
            if all(os.path.isfile(os.path.join(folder, f)) for f in spec['train'] + spec['test']):

                def read(f, folder=folder):
                    path = os.path.join(folder, f)
                    with open(path, 'rb') as fh:
                        return fh.read(), path

                return _read_cifar_parts(spec, read)
        archive = os.path.join(root, spec['archive'])
        searched.append(archive)
        if os.path.isfile(archive):
            return _read_cifar_archive(spec, archive)
    download_error = None
    if download:
        base = download_url or CIFAR_URL
        url = (base if base.endswith('/') else base + '/') + spec['archive']
        archive = os.path.join(cache_root(), name, spec['archive'])
        try:
            download_file(url, archive, spec['md5'])
        except (urllib.error.URLError, OSError) as e:  # ChecksumError is not caught here
            download_error = f'download from {url} failed: {e}'
        else:
            return _read_cifar_archive(spec, archive)
    raise FileNotFoundError(
        f'{name} not found. Looked for {spec["folder"]}/ with '
        f"{', '.join(spec['train'] + spec['test'])}, or {spec['archive']}, at:\n"
        + '\n'.join(f'  {s}' for s in searched)
        + '\n'
        + (
            download_error + '\n'
            if download_error
            else ''
            if download
            else 'download=False, so nothing was downloaded.\n'
        )
        + f"Put the official python-version archive ({spec['archive']}) or its extracted "
        'folder in DIR and pass `--config.data_dir=DIR` (or set env JACKPOT_DATA_DIR), or let it '
        'download (download=True, optionally download_url=BASE_URL).'
    )


def _read_cifar_parts(spec, read):
    """read(file name) -> (raw bytes, where) for each batch file."""
    out = []
    for part in ('train', 'test'):
        batches = []
        for f in spec[part]:
            raw, what = read(f)
            batches.append(_decode_cifar_batch(raw, spec['label_key'], what))
        out += [np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])]
    return tuple(out)
