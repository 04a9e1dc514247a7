"""CIFAR-10 and CIFAR-100: the official python-version archives, found, downloaded (MD5-checked)
and read with a restricted unpickler that builds only plain containers and numpy arrays."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import urllib.error
import urllib.request

import numpy as np

from jackpot_jax.cache import cache_root
from jackpot_jax.data import files

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
    env = files.env_data_dir()
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
    JACKPOT_JAX_DATA_DIR) and the cache; if none is there and `download`, downloads the archive
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
            files.download_file(url, archive, spec['md5'])
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
        'folder in DIR and pass `--config.data_dir=DIR` (or set env JACKPOT_JAX_DATA_DIR), or '
        'let it download (download=True, optionally download_url=BASE_URL).'
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
