"""The official files of the small datasets: reading them, finding them, downloading them.

* Fashion-MNIST: four IDX files (gzipped or not), searched in `--config.data_dir`, env
  JACKPOT_JAX_DATA_DIR (`env_data_dir`), Debian's `dataset-fashion-mnist` and the cache, else
  downloaded.
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
import math
import os
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
import warnings

import numpy as np

from jackpot_jax.cache import cache_root
from jackpot_jax.errors import ChecksumError

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
DATA_DIR_ENV = 'JACKPOT_JAX_DATA_DIR'
# The old name: still read, with a FutureWarning, for one release.
OLD_DATA_DIR_ENV = 'JACKPOT_DATA_DIR'


def env_data_dir() -> str | None:
    """The data directory the environment names (read at each call), or None.

    `DATA_DIR_ENV` (JACKPOT_JAX_DATA_DIR) is the name. The old `OLD_DATA_DIR_ENV`
    (JACKPOT_DATA_DIR) is still read, with a FutureWarning naming the new one, when the new one
    is unset; when both are set the new one wins and the warning says the old one is ignored.
    """
    new, old = os.environ.get(DATA_DIR_ENV), os.environ.get(OLD_DATA_DIR_ENV)
    if old:
        what = 'ignored: JACKPOT_JAX_DATA_DIR is set' if new else 'read for now'
        warnings.warn(
            f'{OLD_DATA_DIR_ENV} is deprecated ({what}); set {DATA_DIR_ENV} instead (the old '
            'name stops working in the next release)',
            FutureWarning,
            stacklevel=2,
        )
    return new or old or None


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
    env = env_data_dir()
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
            '`--config.data_dir=DIR` (or env JACKPOT_JAX_DATA_DIR) with the four IDX files in '
            'DIR or DIR/fashion_mnist; or download=True (optionally with download_url=BASE_URL).'
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
