"""Datasets: what each split holds (numpy arrays or random-access sources), by name.

No TensorFlow. Fashion-MNIST and CIFAR are read from their official files into memory
(`jackpot_jax.data.files`: found on disk or downloaded, MD5-checked); ImageNet from a folder of
JPEGs per class (`jackpot_jax.data.image_folder`, as torchvision's ImageFolder) or through
`tfds.data_source` (ArrayRecord; imported lazily, only on that path). Batches are made by
`jackpot_jax.data.input_pipeline`.

Every dataset has three splits: `train` (the official training set less the validation
examples), `val` (held out of the training set: `np.random.default_rng(split_seed)
.permutation(n)[:val_examples]`, sorted) and `test` (the official test set; for ImageNet the
official validation set). Model selection uses `val` only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from jackpot_jax.data import cifar
from jackpot_jax.data import files as data_files
from jackpot_jax.data.image_folder import load_image_folder

AUGMENTATIONS = ('none', 'crop_flip', 'inception')
DATASET_NAMES = (
    'fashion_mnist',
    'cifar10',
    'cifar100',
    'imagenet_folder',
    'imagenet2012',
    'synthetic',
)

FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # the official code uses these for CIFAR-100 too
CIFAR_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------
# Containers


@dataclasses.dataclass(frozen=True)
class Split:
    """One split: uint8 NHWC images + int32 labels, or a random-access source of records.

    In memory, `images[i]` and `labels[i]` are example i. A random-access source holds
    records {'image': HxWxC uint8 array or encoded bytes, 'label': int} (`tfds.data_source`)
    or encoded files (`image_folder.FolderSource`, labels given); `indices` selects this
    split's records from the source (None: all), and `labels`, when known without reading
    records, are those of the split's examples in order (None: read from the records).
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
    classes: tuple[str, ...] | None = None  # class names where the data has them

    def split(self, name: str) -> Split:
        if name not in ('train', 'val', 'test'):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {name!r}")
        return getattr(self, name)


# --------------------------------------------------------------------------------------
# Splitting


def train_val_indices(n: int, val_examples: int, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted, disjoint (train, val) index arrays: `val_examples` chosen with `split_seed`."""
    if not 0 <= val_examples < n:
        raise ValueError(
            f'val_examples={val_examples} must be in [0, {n}) for a training set of {n} examples'
        )
    perm = np.random.default_rng(split_seed).permutation(n)
    val, train = np.sort(perm[:val_examples]), np.sort(perm[val_examples:])
    assert len(np.intersect1d(train, val)) == 0 and len(train) + len(val) == n
    return train, val


def _check_subset(what: str, subset: int | None, available: int) -> int:
    if subset is None:
        return available
    if not 0 < subset <= available:
        raise ValueError(
            f'{what}={subset} must be in [1, {available}] (examples available '
            'after the validation split)'
        )
    return subset


def _array_splits(
    name, train_x, train_y, test_x, test_y, *, val_examples, split_seed, train_subset, test_subset
):
    train_idx, val_idx = train_val_indices(len(train_x), val_examples, split_seed)
    train_idx = train_idx[: _check_subset('train_subset', train_subset, len(train_idx))]
    n_test = _check_subset('test_subset', test_subset, len(test_x))
    return (
        Split(train_x[train_idx], train_y[train_idx]),
        Split(train_x[val_idx], train_y[val_idx]),
        Split(test_x[:n_test], test_y[:n_test]),
    )


# --------------------------------------------------------------------------------------
# Random-access sources (tfds.data_source and look-alikes)


def dataset_from_sources(
    name: str,
    train_source: Sequence[Any],
    test_source: Sequence[Any],
    *,
    num_classes: int,
    image_shape: tuple[int, int, int] = (224, 224, 3),
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    augment: str = 'inception',
    val_examples: int = 5000,
    split_seed: int = 0,
    train_subset: int | None = None,
    test_subset: int | None = None,
    train_labels: np.ndarray | None = None,
    test_labels: np.ndarray | None = None,
    classes: Sequence[str] | None = None,
) -> Dataset:
    """A Dataset over random-access sources (records {'image', 'label'}, or encoded files
    with `train_labels` / `test_labels` giving every file's label).

    The validation split holds out `val_examples` records of `train_source` by index; the
    test split is `test_source` (for ImageNet: the official 'validation' split).
    """
    train_idx, val_idx = train_val_indices(len(train_source), val_examples, split_seed)
    train_idx = train_idx[: _check_subset('train_subset', train_subset, len(train_idx))]
    test_idx = np.arange(_check_subset('test_subset', test_subset, len(test_source)))

    def labels_of(labels, idx):
        return None if labels is None else np.asarray(labels, np.int32)[idx]

    return _make_dataset(
        name,
        num_classes,
        image_shape,
        Split(train_source, labels_of(train_labels, train_idx), train_idx),
        Split(train_source, labels_of(train_labels, val_idx), val_idx),
        Split(test_source, labels_of(test_labels, test_idx), test_idx),
        mean,
        std,
        augment,
        classes=tuple(classes) if classes is not None else None,
    )


def _load_tfds(name, tfds_name, data_dir, download, **split_kwargs):
    try:
        import tensorflow_datasets as tfds  # lazy: only this path needs it
    except ImportError as e:
        raise ImportError(
            f'dataset {name!r} needs tensorflow-datasets (`pip install '
            'jackpot_jax[tfds]`) and the data prepared in ArrayRecord format'
        ) from e
    try:
        train = tfds.data_source(tfds_name, split='train', data_dir=data_dir, download=download)
        test = tfds.data_source(
            tfds_name,
            split='validation' if tfds_name == 'imagenet2012' else 'test',
            data_dir=data_dir,
            download=download,
        )
    except Exception as e:  # tfds raises several types for "not prepared"
        raise FileNotFoundError(
            f'tfds.data_source({tfds_name!r}, data_dir={data_dir!r}) failed: {e}\n'
            f'Prepare it once in ArrayRecord format, e.g. `tfds build {tfds_name} '
            '--file_format=array_record --data_dir=DIR` (ImageNet also needs '
            '--manual_dir with the downloaded tars), then pass `--config.data_dir=DIR`.'
        ) from e
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
    return dataset_from_sources(
        name,
        train,
        test,
        num_classes=num_classes,
        image_shape=image_shape,
        mean=mean,
        std=std,
        augment=augment,
        **split_kwargs,
    )


# --------------------------------------------------------------------------------------
# Public constructors


def _make_dataset(
    name, num_classes, image_shape, train, val, test, mean, std, augment, classes=None
):
    if augment not in AUGMENTATIONS:
        raise ValueError(f'augment must be one of {AUGMENTATIONS}, got {augment!r}')
    if len(mean) != image_shape[-1] or len(std) != image_shape[-1]:
        raise ValueError(f'mean/std need {image_shape[-1]} channels, got {mean}, {std}')
    return Dataset(
        name=name,
        num_classes=num_classes,
        image_shape=tuple(image_shape),
        train=train,
        val=val,
        test=test,
        mean=tuple(mean),
        std=tuple(std),
        augment=augment,
        classes=classes,
    )


_SYNTHETIC_LIKE = {  # name -> (num_classes, image_shape, augment)
    'fashion_mnist': (10, (28, 28, 1), 'none'),
    'cifar10': (10, (32, 32, 3), 'crop_flip'),
    'cifar100': (100, (32, 32, 3), 'crop_flip'),
    'imagenet2012': (1000, (224, 224, 3), 'inception'),
    'imagenet_folder': (1000, (224, 224, 3), 'inception'),
}


def synthetic_dataset(
    num_classes: int = 10,
    image_shape: tuple[int, int, int] = (28, 28, 1),
    n_train: int = 64,
    n_val: int = 16,
    n_test: int = 16,
    seed: int = 0,
    augment: str = 'none',
) -> Dataset:
    """Random uint8 images with labels cycling over all classes (then shuffled)."""
    rng = np.random.default_rng(seed)

    def split(n):
        images = rng.integers(0, 256, size=(n, *image_shape), dtype=np.uint8)
        labels = rng.permutation(np.arange(n) % num_classes).astype(np.int32)
        return Split(images, labels)

    c = image_shape[-1]
    return _make_dataset(
        'synthetic',
        num_classes,
        image_shape,
        split(n_train),
        split(n_val),
        split(n_test),
        (0.5,) * c,
        (0.289,) * c,
        augment,
    )  # uniform: std 1/sqrt(12)


def load_dataset(
    name: str,
    *,
    data_dir: str | None = None,
    val_examples: int = 5000,
    split_seed: int = 0,
    train_subset: int | None = None,
    test_subset: int | None = None,
    download: bool = True,
    download_url: str | None = None,
) -> Dataset:
    """Loads a dataset by name.

    Names: 'fashion_mnist' and 'cifar10' / 'cifar100' (official files found on disk, else
    downloaded when `download`, from `download_url` or the official location),
    'imagenet_folder' (`data_dir`/train/<class>/* and `data_dir`/val/<class>/*, read as
    torchvision's ImageFolder; val/ is the test split), 'imagenet2012' (tfds.data_source),
    'tfds:<name>' (any tfds dataset prepared as ArrayRecord), 'synthetic' and
    'synthetic:<name>' (random data shaped like <name>; tiny: n_train = train_subset or 64,
    n_val = min(val_examples, 16), n_test = test_subset or 16).

    `val` holds `val_examples` examples of the original training set chosen with
    `split_seed`; `train` is the rest (disjoint); `test` is the official test set.
    `train_subset` / `test_subset` keep the first N examples after the split.
    """
    split_kwargs = dict(
        val_examples=val_examples,
        split_seed=split_seed,
        train_subset=train_subset,
        test_subset=test_subset,
    )
    if name == 'synthetic' or name.startswith('synthetic:'):
        like = name.partition(':')[2] or 'fashion_mnist'
        if like not in _SYNTHETIC_LIKE:
            raise ValueError(f'unknown synthetic:{like}; choose from {sorted(_SYNTHETIC_LIKE)}')
        num_classes, shape, augment = _SYNTHETIC_LIKE[like]
        if val_examples < 0:
            raise ValueError(f'val_examples={val_examples} must be >= 0')
        ds = synthetic_dataset(
            num_classes,
            shape,
            n_train=train_subset or 64,
            n_val=min(val_examples, 16),
            n_test=test_subset or 16,
            seed=split_seed,
            augment=augment,
        )
        return dataclasses.replace(ds, name=name)
    if name == 'fashion_mnist':
        arrays = data_files.load_fashion_mnist(data_dir, download, download_url)
        train, val, test = _array_splits(name, *arrays, **split_kwargs)
        return _make_dataset(
            name, 10, (28, 28, 1), train, val, test, FASHION_MNIST_MEAN, FASHION_MNIST_STD, 'none'
        )
    if name in cifar.CIFAR_NUM_CLASSES:
        arrays = cifar.load_cifar(name, data_dir, download, download_url)
        train, val, test = _array_splits(name, *arrays, **split_kwargs)
        return _make_dataset(
            name,
            cifar.CIFAR_NUM_CLASSES[name],
            (32, 32, 3),
            train,
            val,
            test,
            CIFAR_MEAN,
            CIFAR_STD,
            'crop_flip',
        )
    if name == 'imagenet_folder':
        classes, train_src, train_labels, test_src, test_labels = load_image_folder(data_dir)
        return dataset_from_sources(
            name,
            train_src,
            test_src,
            num_classes=len(classes),
            train_labels=train_labels,
            test_labels=test_labels,
            classes=classes,
            **split_kwargs,
        )
    if name == 'imagenet2012' or name.startswith('tfds:'):
        tfds_name = name.partition(':')[2] if name.startswith('tfds:') else name
        return _load_tfds(name, tfds_name, data_dir, download, **split_kwargs)
    raise ValueError(f'unknown dataset {name!r}; choose from {DATASET_NAMES} or tfds:<name>')
