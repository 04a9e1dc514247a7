"""Input pipeline: datasets as numpy arrays (or random-access sources) and batch iterators.

No TensorFlow: Fashion-MNIST is parsed from its IDX files, CIFAR from the official python
pickles, and ImageNet-scale data is read through `tfds.data_source` (ArrayRecord; imported
lazily, only on that path). Every random choice is keyed on explicit integers so that any
batch of any epoch can be regenerated after a restart:

* the shuffle of epoch `e` is `np.random.default_rng([seed, e]).permutation(n)`;
* the augmentation of batch `b` uses `np.random.default_rng([seed, e, b])`;
* the validation hold-out is `np.random.default_rng(split_seed).permutation(n)[:val_examples]`.

Images travel as uint8 NHWC until the last step, where `iterate_batches` turns them into
float32 normalised with the dataset's per-channel mean/std (in [0, 1] units).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import math
import os
import pickle
import shutil
import subprocess
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

AUGMENTATIONS = ('none', 'crop_flip', 'inception')
DATASET_NAMES = ('fashion_mnist', 'cifar10', 'cifar100', 'imagenet2012', 'synthetic')

FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # the official code uses these for CIFAR-100 too
CIFAR_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

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
# Containers


@dataclasses.dataclass(frozen=True)
class Split:
    """One split: uint8 NHWC images + int32 labels, or a random-access source of records.

    For a random-access source (`tfds.data_source`, or any sequence of dicts with 'image'
    and 'label'), `labels` may be None (read per record) and `indices` selects the records
    of this split from the source (None: all of them).
    """

    images: Any
    labels: np.ndarray | None
    indices: np.ndarray | None = None

    def __len__(self) -> int:
        if self.indices is not None:
            return len(self.indices)
        return len(self.images)

    @property
    def in_memory(self) -> bool:
        return isinstance(self.images, np.ndarray)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A dataset with train (validation removed), val (held out of train) and test splits."""

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]  # (H, W, C) of the model input
    train: Split
    val: Split
    test: Split
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: str  # 'none' | 'crop_flip' | 'inception'

    def split(self, name: str) -> Split:
        if name not in ('train', 'val', 'test'):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {name!r}")
        return getattr(self, name)


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
        raise ValueError(f'not an IDX file: magic number {data[:4].hex()!r} '
                         'should start with two zero bytes')
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f'IDX file has unknown data type code 0x{code:02x}')
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f'IDX file truncated in its header ({len(data)} bytes, '
                         f'{ndim} dimensions)')
    shape = tuple(int(d) for d in np.frombuffer(data, dtype='>u4', count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(f'IDX file of shape {shape} and type {dtype} should hold '
                         f'{expected} data bytes, has {len(data) - header}')
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    return array.astype(dtype.newbyteorder('='), copy=True)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file, gzipped or not (detected from its first bytes, not its name)."""
    with open(path, 'rb') as f:
        return parse_idx(f.read())


def _cache_root() -> str:
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return os.path.join(base, 'jackpot_jax')


def _dpkg_dirs(package: str) -> list[str]:
    """Directories that `dpkg -L package` lists, if dpkg exists (best effort)."""
    if shutil.which('dpkg') is None:
        return []
    try:
        out = subprocess.run(['dpkg', '-L', package], capture_output=True, text=True,
                             timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return sorted({os.path.dirname(line.strip()) for line in out.splitlines()
                   if 'idx3-ubyte' in line})


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
    dirs.append(os.path.join(_cache_root(), 'fashion_mnist'))
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


def download_fashion_mnist(dest_dir: str, base_url: str = FASHION_MNIST_URL, *,
                           md5s: dict[str, str] | None = None, timeout: float = 60.0) -> None:
    """Downloads the four gzipped Fashion-MNIST files into `dest_dir`, verifying MD5s.

    Each file is streamed into a temporary file in `dest_dir` and renamed into place only
    when its checksum matches; a mismatch raises `ChecksumError` and leaves nothing behind.
    Files already present with the right checksum are not fetched again.
    """
    md5s = FASHION_MNIST_MD5 if md5s is None else md5s
    os.makedirs(dest_dir, exist_ok=True)
    base_url = base_url if base_url.endswith('/') else base_url + '/'
    for stem in FASHION_MNIST_FILES.values():
        name = stem + '.gz'
        final = os.path.join(dest_dir, name)
        if os.path.isfile(final) and _md5(final) == md5s[name]:
            continue
        url = base_url + name
        fd, tmp = tempfile.mkstemp(prefix=name + '.', suffix='.tmp', dir=dest_dir)
        try:
            h = hashlib.md5()
            with os.fdopen(fd, 'wb') as out, urllib.request.urlopen(url, timeout=timeout) as r:
                for chunk in iter(lambda: r.read(1 << 20), b''):
                    h.update(chunk)
                    out.write(chunk)
            if h.hexdigest() != md5s[name]:
                raise ChecksumError(f'{url}: MD5 {h.hexdigest()} does not match the published '
                                    f'{md5s[name]}; refusing the file (corrupt or tampered '
                                    'download)')
            os.replace(tmp, final)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


def _load_fashion_mnist(data_dir, download, download_url):
    searched = _fashion_mnist_search_dirs(data_dir)
    files = None
    for directory in searched:
        files = _find_idx_files(directory)
        if files:
            break
    download_error = None
    if files is None and download:
        cache = os.path.join(_cache_root(), 'fashion_mnist')
        url = download_url or FASHION_MNIST_URL
        try:
            download_fashion_mnist(cache, url)
            files = _find_idx_files(cache)
        except (urllib.error.URLError, OSError) as e:  # ChecksumError is not caught here
            download_error = f'download from {url} failed: {e}'
    if files is None:
        lines = [f'  {d}' for d in searched]
        raise FileNotFoundError(
            'Fashion-MNIST not found. Looked for ' + ', '.join(
                s + '(.gz)' for s in FASHION_MNIST_FILES.values())
            + ' in:\n' + '\n'.join(lines) + '\n'
            + (download_error + '\n' if download_error else
               '' if download else 'download=False, so nothing was downloaded.\n')
            + 'Provide the data by one of: `apt-get install dataset-fashion-mnist`; '
            '`--config.data_dir=DIR` (or env JACKPOT_DATA_DIR) with the four IDX files in DIR '
            'or DIR/fashion_mnist; or download=True (optionally with download_url=BASE_URL).')
    arrays = {k: read_idx(p) for k, p in files.items()}
    for part in ('train', 'test'):
        images, labels = arrays[part + '_images'], arrays[part + '_labels']
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f'Fashion-MNIST {part} files have inconsistent shapes '
                             f'{images.shape} and {labels.shape}')
    return (arrays['train_images'][..., None], arrays['train_labels'].astype(np.int32),
            arrays['test_images'][..., None], arrays['test_labels'].astype(np.int32))


# --------------------------------------------------------------------------------------
# CIFAR (official python-version pickles)

_CIFAR = {
    'cifar10': dict(archive='cifar-10-python.tar.gz', folder='cifar-10-batches-py',
                    train=[f'data_batch_{i}' for i in range(1, 6)], test=['test_batch'],
                    label_key=b'labels', num_classes=10),
    'cifar100': dict(archive='cifar-100-python.tar.gz', folder='cifar-100-python',
                     train=['train'], test=['test'], label_key=b'fine_labels',
                     num_classes=100),
}


def _decode_cifar_batch(raw: bytes, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    # The official files are python pickles: only load archives from a trusted source.
    batch = pickle.loads(raw, encoding='bytes')
    data = np.asarray(batch[b'data'], dtype=np.uint8)
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # NCHW rows -> NHWC
    labels = np.asarray(batch[label_key], dtype=np.int32)
    if len(images) != len(labels):
        raise ValueError(f'CIFAR batch has {len(images)} images but {len(labels)} labels')
    return np.ascontiguousarray(images), labels


def _load_cifar(name, data_dir):
    spec = _CIFAR[name]
    roots = []
    if data_dir:
        roots += [os.path.join(data_dir, name), data_dir]
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        roots += [os.path.join(env, name), env]
    roots.append(os.path.join(_cache_root(), name))
    searched = []
    for root in dict.fromkeys(os.path.abspath(r) for r in roots):
        # The extracted folder, the root itself being that folder, or the archive.
        for folder in (os.path.join(root, spec['folder']), root):
            searched.append(folder + '/')
            if all(os.path.isfile(os.path.join(folder, f)) for f in spec['train'] + spec['test']):
                def read(f, folder=folder):
                    with open(os.path.join(folder, f), 'rb') as fh:
                        return fh.read()
                return _read_cifar_parts(spec, read)
        archive = os.path.join(root, spec['archive'])
        searched.append(archive)
        if os.path.isfile(archive):
            with tarfile.open(archive, 'r:*') as tar:
                def read(f, tar=tar):
                    member = tar.extractfile(f"{spec['folder']}/{f}")
                    if member is None:
                        raise ValueError(f'{archive}: {spec["folder"]}/{f} is not a file')
                    return member.read()
                return _read_cifar_parts(spec, read)
    raise FileNotFoundError(
        f'{name} not found (this module does not download CIFAR). Looked for '
        f"{spec['folder']}/ with {', '.join(spec['train'] + spec['test'])}, or "
        f"{spec['archive']}, at:\n" + '\n'.join(f'  {s}' for s in searched) + '\n'
        f"Put the official python-version archive ({spec['archive']}) or its extracted "
        'folder in DIR and pass `--config.data_dir=DIR` (or set env JACKPOT_DATA_DIR).')


def _read_cifar_parts(spec, read):
    out = []
    for part in ('train', 'test'):
        batches = [_decode_cifar_batch(read(f), spec['label_key']) for f in spec[part]]
        out += [np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])]
    return tuple(out)


# --------------------------------------------------------------------------------------
# Splitting


def train_val_indices(n: int, val_examples: int, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted, disjoint (train, val) index arrays: `val_examples` chosen with `split_seed`."""
    if not 0 <= val_examples < n:
        raise ValueError(f'val_examples={val_examples} must be in [0, {n}) for a training '
                         f'set of {n} examples')
    perm = np.random.default_rng(split_seed).permutation(n)
    val, train = np.sort(perm[:val_examples]), np.sort(perm[val_examples:])
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == n
    return train, val


def _check_subset(what: str, subset: int | None, available: int) -> int:
    if subset is None:
        return available
    if not 0 < subset <= available:
        raise ValueError(f'{what}={subset} must be in [1, {available}] (examples available '
                         'after the validation split)')
    return subset


def _array_splits(name, train_x, train_y, test_x, test_y, *, val_examples, split_seed,
                  train_subset, test_subset):
    train_idx, val_idx = train_val_indices(len(train_x), val_examples, split_seed)
    train_idx = train_idx[:_check_subset('train_subset', train_subset, len(train_idx))]
    n_test = _check_subset('test_subset', test_subset, len(test_x))
    return (Split(train_x[train_idx], train_y[train_idx]),
            Split(train_x[val_idx], train_y[val_idx]),
            Split(test_x[:n_test], test_y[:n_test]))


# --------------------------------------------------------------------------------------
# Random-access sources (tfds.data_source and look-alikes)


def dataset_from_sources(name: str, train_source: Sequence[Any], test_source: Sequence[Any], *,
                         num_classes: int, image_shape: tuple[int, int, int] = (224, 224, 3),
                         mean: tuple[float, ...] = IMAGENET_MEAN,
                         std: tuple[float, ...] = IMAGENET_STD, augment: str = 'inception',
                         val_examples: int = 5000, split_seed: int = 0,
                         train_subset: int | None = None,
                         test_subset: int | None = None) -> Dataset:
    """A Dataset over random-access sources of records {'image': HxWxC uint8, 'label': int}.

    The validation split holds out `val_examples` records of `train_source` by index; the
    test split is `test_source` (for ImageNet: the official 'validation' split).
    """
    train_idx, val_idx = train_val_indices(len(train_source), val_examples, split_seed)
    train_idx = train_idx[:_check_subset('train_subset', train_subset, len(train_idx))]
    n_test = _check_subset('test_subset', test_subset, len(test_source))
    return _make_dataset(
        name, num_classes, image_shape,
        Split(train_source, None, train_idx), Split(train_source, None, val_idx),
        Split(test_source, None, np.arange(n_test)), mean, std, augment)


def _load_tfds(name, tfds_name, data_dir, download, **split_kwargs):
    try:
        import tensorflow_datasets as tfds  # lazy: only this path needs it
    except ImportError as e:
        raise ImportError(f'dataset {name!r} needs tensorflow-datasets (`pip install '
                          'jackpot_jax[tfds]`) and the data prepared in ArrayRecord format') from e
    try:
        train = tfds.data_source(tfds_name, split='train', data_dir=data_dir, download=download)
        test = tfds.data_source(tfds_name, split='validation' if tfds_name == 'imagenet2012'
                                else 'test', data_dir=data_dir, download=download)
    except Exception as e:  # tfds raises several types for "not prepared"
        raise FileNotFoundError(
            f'tfds.data_source({tfds_name!r}, data_dir={data_dir!r}) failed: {e}\n'
            f'Prepare it once in ArrayRecord format, e.g. `tfds build {tfds_name} '
            '--file_format=array_record --data_dir=DIR` (ImageNet also needs '
            '--manual_dir with the downloaded tars), then pass `--config.data_dir=DIR`.') from e
    info = getattr(train, 'dataset_info', None)
    num_classes, image_shape = 1000, (224, 224, 3)
    mean, std, augment = IMAGENET_MEAN, IMAGENET_STD, 'inception'
    if info is not None:
        num_classes = int(info.features['label'].num_classes)
        shape = tuple(info.features['image'].shape)
        if tfds_name != 'imagenet2012' and None not in shape:
            # A fixed-size dataset: feed it at its own size, no augmentation.
            image_shape, augment = shape, 'none'
            mean, std = (0.5,) * shape[-1], (0.5,) * shape[-1]
    return dataset_from_sources(name, train, test, num_classes=num_classes,
                                image_shape=image_shape, mean=mean, std=std, augment=augment,
                                **split_kwargs)


# --------------------------------------------------------------------------------------
# Public constructors


def _make_dataset(name, num_classes, image_shape, train, val, test, mean, std, augment):
    if augment not in AUGMENTATIONS:
        raise ValueError(f'augment must be one of {AUGMENTATIONS}, got {augment!r}')
    if len(mean) != image_shape[-1] or len(std) != image_shape[-1]:
        raise ValueError(f'mean/std need {image_shape[-1]} channels, got {mean}, {std}')
    return Dataset(name=name, num_classes=num_classes, image_shape=tuple(image_shape),
                   train=train, val=val, test=test, mean=tuple(mean), std=tuple(std),
                   augment=augment)


_SYNTHETIC_LIKE = {  # name -> (num_classes, image_shape, augment)
    'fashion_mnist': (10, (28, 28, 1), 'none'),
    'cifar10': (10, (32, 32, 3), 'crop_flip'),
    'cifar100': (100, (32, 32, 3), 'crop_flip'),
    'imagenet2012': (1000, (224, 224, 3), 'inception'),
}


def synthetic_dataset(num_classes: int = 10, image_shape: tuple[int, int, int] = (28, 28, 1),
                      n_train: int = 64, n_val: int = 16, n_test: int = 16, seed: int = 0,
                      augment: str = 'none') -> Dataset:
    """Random uint8 images with labels cycling over all classes (then shuffled)."""
    rng = np.random.default_rng(seed)

    def split(n):
        images = rng.integers(0, 256, size=(n, *image_shape), dtype=np.uint8)
        labels = rng.permutation(np.arange(n) % num_classes).astype(np.int32)
        return Split(images, labels)

    c = image_shape[-1]
    return _make_dataset('synthetic', num_classes, image_shape, split(n_train), split(n_val),
                         split(n_test), (0.5,) * c, (0.289,) * c, augment)  # uniform: std 1/sqrt(12)


def load_dataset(name: str, *, data_dir: str | None = None, val_examples: int = 5000,
                 split_seed: int = 0, train_subset: int | None = None,
                 test_subset: int | None = None, download: bool = True,
                 download_url: str | None = None) -> Dataset:
    """Loads a dataset by name.

    Names: 'fashion_mnist', 'cifar10', 'cifar100', 'imagenet2012' (tfds.data_source),
    'tfds:<name>' (any tfds dataset prepared as ArrayRecord), 'synthetic' and
    'synthetic:<name>' (random data shaped like <name>; tiny: n_train = train_subset or 64,
    n_val = min(val_examples, 16), n_test = test_subset or 16).

    `val` holds `val_examples` examples of the original training set chosen with
    `split_seed`; `train` is the rest (disjoint); `test` is the official test set.
    `train_subset` / `test_subset` keep the first N examples after the split.
    """
    split_kwargs = dict(val_examples=val_examples, split_seed=split_seed,
                        train_subset=train_subset, test_subset=test_subset)
    if name == 'synthetic' or name.startswith('synthetic:'):
        like = name.partition(':')[2] or 'fashion_mnist'
        if like not in _SYNTHETIC_LIKE:
            raise ValueError(f'unknown synthetic:{like}; choose from {sorted(_SYNTHETIC_LIKE)}')
        num_classes, shape, augment = _SYNTHETIC_LIKE[like]
        if val_examples < 0:
            raise ValueError(f'val_examples={val_examples} must be >= 0')
        ds = synthetic_dataset(num_classes, shape, n_train=train_subset or 64,
                               n_val=min(val_examples, 16), n_test=test_subset or 16,
                               seed=split_seed, augment=augment)
        return dataclasses.replace(ds, name=name)
    if name == 'fashion_mnist':
        arrays = _load_fashion_mnist(data_dir, download, download_url)
        train, val, test = _array_splits(name, *arrays, **split_kwargs)
        return _make_dataset(name, 10, (28, 28, 1), train, val, test,
                             FASHION_MNIST_MEAN, FASHION_MNIST_STD, 'none')
    if name in _CIFAR:
        arrays = _load_cifar(name, data_dir)
        train, val, test = _array_splits(name, *arrays, **split_kwargs)
        return _make_dataset(name, _CIFAR[name]['num_classes'], (32, 32, 3), train, val, test,
                             CIFAR_MEAN, CIFAR_STD, 'crop_flip')
    if name == 'imagenet2012' or name.startswith('tfds:'):
        tfds_name = name.partition(':')[2] if name.startswith('tfds:') else name
        return _load_tfds(name, tfds_name, data_dir, download, **split_kwargs)
    raise ValueError(f'unknown dataset {name!r}; choose from {DATASET_NAMES} or tfds:<name>')


# --------------------------------------------------------------------------------------
# Augmentation (numpy, uint8 in and out)


def crop_flip(images: np.ndarray, rng: np.random.Generator, padding: int = 4) -> np.ndarray:
    """torch RandomCrop(size, padding, fill 0) + RandomHorizontalFlip, vectorised per batch.

    One gather does both: output pixel (y, x) of image i is padded[i, oy+y, ox+x] or, when
    flipped, padded[i, oy+y, ox+W-1-x].
    """
    n, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    oy = rng.integers(0, 2 * padding + 1, size=n)
    ox = rng.integers(0, 2 * padding + 1, size=n)
    flip = rng.random(n) < 0.5
    rows = oy[:, None] + np.arange(h)
    cols = ox[:, None] + np.where(flip[:, None], np.arange(w)[::-1], np.arange(w))
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def random_resized_crop_box(height: int, width: int, rng: np.random.Generator,
                            scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(top, left, h, w) as torchvision's RandomResizedCrop.get_params samples it."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    # Fallback: the whole image, clamped to the ratio range, centred.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def _resize_box(image: np.ndarray, box: tuple[int, int, int, int], size: tuple[int, int]):
    """Crops box=(top, left, h, w) of an HxWxC uint8 image and resizes it bilinearly to size."""
    from PIL import Image  # Pillow, imported only where images need resizing

    top, left, h, w = box
    squeeze = image.ndim == 3 and image.shape[-1] == 1
    pil = Image.fromarray(image[..., 0] if squeeze else image)
    out = np.asarray(pil.resize((size[1], size[0]), Image.BILINEAR,
                                box=(left, top, left + w, top + h)))
    return out[..., None] if squeeze else out


def inception_train(image: np.ndarray, rng: np.random.Generator, size: tuple[int, int]):
    """RandomResizedCrop(size, scale (0.08, 1), ratio (3/4, 4/3)) + horizontal flip."""
    box = random_resized_crop_box(image.shape[0], image.shape[1], rng)
    out = _resize_box(image, box, size)
    return out[:, ::-1] if rng.random() < 0.5 else out


def inception_eval(image: np.ndarray, size: tuple[int, int]):
    """Resize the shorter side to size*256/224 (256 for 224), then centre-crop size."""
    h, w = image.shape[:2]
    short = int(round(min(size) * 256 / 224))
    if h <= w:
        new_h, new_w = short, int(short * w / h)
    else:
        new_h, new_w = int(short * h / w), short
    resized = _resize_box(image, (0, 0, h, w), (new_h, new_w))
    top = int(round((new_h - size[0]) / 2))
    left = int(round((new_w - size[1]) / 2))
    return resized[top:top + size[0], left:left + size[1]]


# --------------------------------------------------------------------------------------
# Batches


def num_batches(split: Split, batch_size: int, *, drop_remainder: bool) -> int:
    """Number of batches `iterate_batches` yields for this split."""
    if batch_size <= 0:
        raise ValueError(f'batch_size={batch_size} must be positive')
    n = len(split)
    return n // batch_size if drop_remainder else -(-n // batch_size)


def _gather(ds: Dataset, split: Split, idx: np.ndarray, rng: np.random.Generator | None):
    """uint8 NHWC images (model input size) and int32 labels of the examples `idx` of split."""
    if split.in_memory:
        images, labels = split.images[idx], split.labels[idx]
    else:
        keys = [int(i) for i in (split.indices[idx] if split.indices is not None else idx)]
        source = split.images
        # tfds data sources read a batch of records in one call; plain sequences one by one.
        records = (source.__getitems__(keys) if hasattr(source, '__getitems__')
                   else [source[k] for k in keys])
        images = [np.asarray(r['image']) for r in records]
        labels = np.asarray([int(r['label']) for r in records], dtype=np.int32)
    if ds.augment == 'crop_flip' and rng is not None:
        images = crop_flip(np.asarray(images), rng)
    elif ds.augment == 'inception':
        size = ds.image_shape[:2]
        images = [inception_train(im, rng, size) if rng is not None else inception_eval(im, size)
                  for im in images]
    images = np.stack(images) if isinstance(images, list) else images
    return images, np.asarray(labels, dtype=np.int32)


def normalize(ds: Dataset, images: np.ndarray) -> np.ndarray:
    """uint8 NHWC -> float32 (x / 255 - mean) / std per channel."""
    mean = np.asarray(ds.mean, np.float32)
    std = np.asarray(ds.std, np.float32)
    return (images.astype(np.float32) * (1.0 / 255.0) - mean) / std


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The training order of epoch `epoch`: a function of (seed, epoch) only."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def iterate_batches(ds: Dataset, split: str, batch_size: int, *, train: bool, seed: int = 0,
                    epoch: int = 0, drop_remainder: bool | None = None,
                    start_batch: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields (float32 NHWC normalised images, int32 labels) batches.

    train=True: order `epoch_permutation(n, seed, epoch)`, augmentation of batch b keyed on
    (seed, epoch, b), drop_remainder defaults to True. train=False: the split's order, no
    augmentation (ImageNet-style data get the eval resize + centre crop), the last partial
    batch included by default. `start_batch` skips the first batches of the same sequence,
    so batch b is identical whether reached from 0 or resumed at b.
    """
    part = ds.split(split)
    if drop_remainder is None:
        drop_remainder = train
    total = num_batches(part, batch_size, drop_remainder=drop_remainder)
    if total == 0 and len(part) > 0:
        raise ValueError(f'{split} split has {len(part)} examples: fewer than '
                         f'batch_size={batch_size} with drop_remainder=True gives no batches')
    if not 0 <= start_batch <= total:
        raise ValueError(f'start_batch={start_batch} must be in [0, {total}]')
    order = epoch_permutation(len(part), seed, epoch) if train else np.arange(len(part))
    for b in range(start_batch, total):
        idx = order[b * batch_size:(b + 1) * batch_size]
        rng = np.random.default_rng([seed, epoch, b]) if train else None
        images, labels = _gather(ds, part, idx, rng)
        yield normalize(ds, images), labels


def balanced_batch(ds: Dataset, split: str, per_class: int,
                   seed: int) -> tuple[np.ndarray, np.ndarray]:
    """`per_class` examples of every class (class-major order), normalised, no augmentation.

    Examples are drawn without replacement with `np.random.default_rng(seed)` (for GraSP).
    """
    part = ds.split(split)
    if per_class <= 0:
        raise ValueError(f'per_class={per_class} must be positive')
    rng = np.random.default_rng(seed)
    if part.labels is not None:
        chosen = []
        for c in range(ds.num_classes):
            where = np.flatnonzero(part.labels == c)
            if len(where) < per_class:
                raise ValueError(f'{split} split has {len(where)} examples of class {c}, '
                                 f'fewer than per_class={per_class}')
            chosen.append(np.sort(rng.choice(where, per_class, replace=False)))
        idx = np.concatenate(chosen)
    else:  # labels live in the records: scan a random order until every class is full
        picked = {c: [] for c in range(ds.num_classes)}
        missing = ds.num_classes
        for i in rng.permutation(len(part)):
            record = part.images[int(part.indices[i] if part.indices is not None else i)]
            bucket = picked[int(record['label'])]
            if len(bucket) < per_class:
                bucket.append(i)
                missing -= len(bucket) == per_class
                if missing == 0:
                    break
        short = [c for c, v in picked.items() if len(v) < per_class]
        if short:
            raise ValueError(f'{split} split has fewer than per_class={per_class} examples '
                             f'of classes {short[:10]}')
        idx = np.concatenate([np.sort(picked[c]) for c in range(ds.num_classes)]).astype(int)
    images, labels = _gather(ds, part, idx, None)
    return normalize(ds, images), labels
