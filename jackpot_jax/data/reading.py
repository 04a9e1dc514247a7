"""Reading one batch: the (seed, epoch) order, per-example augmentation bits, decoding,
augmentation and normalisation of the rows of a batch (`ReadBatch`, the map each grain worker
runs), and the warning for a file that cannot be read."""

from __future__ import annotations

import dataclasses
import functools
import logging

import numpy as np

from jackpot_jax.data import augment as aug

log = logging.getLogger('jackpot_jax.data.input_pipeline')
_warned: set[str] = set()  # files already reported by this process


@functools.lru_cache(maxsize=4)  # per process: the epochs in flight, computed once each
def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The training order of epoch `epoch`: `np.random.default_rng([seed, epoch]).permutation(n)`."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    order.setflags(write=False)
    return order


def augment_key(seed: int, epoch: int) -> int:
    """The 64-bit key of an epoch's random crops and flips (another stream than the order)."""
    s = np.random.SeedSequence([seed, epoch, 1]).generate_state(2)
    return (int(s[0]) << 32) | int(s[1])


def example_bits(key: int, index: np.ndarray) -> np.ndarray:
    """64 random bits per example: SplitMix64 of key + index * golden gamma (uint64)."""
    with np.errstate(over='ignore'):
        z = np.uint64(key) + np.asarray(index, np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


# --------------------------------------------------------------------------------------
# One batch: read, decode, augment, normalise


def normalize(ds, images: np.ndarray) -> np.ndarray:
    """uint8 NHWC -> float32 (x / 255 - mean) / std per channel."""
    return _normalizer(ds.mean, ds.std)(images)


def _normalizer(mean, std):
    scale = (1.0 / (255.0 * np.asarray(std, np.float64))).astype(np.float32)
    bias = (-np.asarray(mean, np.float64) / np.asarray(std, np.float64)).astype(np.float32)

    def apply(images):
        out = images.astype(np.float32)
        out *= scale
        out += bias
        return out

    return apply


def _warn_unreadable(what: str, error: Exception) -> None:
    if what not in _warned:
        _warned.add(what)
        log.warning('skipping unreadable image %s (%s: %s)', what, type(error).__name__, error)


@dataclasses.dataclass(frozen=True)
class ReadBatch:
    """The grain map of a batch: split positions (-1 = padding) -> a batch dict.

    `augment` is the dataset's ('none' | 'crop_flip' | 'inception'); with `train=False`,
    'inception' data get Resize + CenterCrop and the others nothing. normalize=False leaves
    the images uint8 (the training loop normalises on the device: a quarter of the bytes to move).
    """

    split: object  # data.Split
    augment: str
    train: bool
    image_shape: tuple[int, int, int]  # of the model input
    mean: tuple[float, ...]
    std: tuple[float, ...]
    key: int = 0
    normalize: bool = True

    def _read(self, positions: np.ndarray):
        """(in-memory uint8 array, or a list of records' images / None for files to read,
        labels, names for messages)."""
        split = self.split
        if split.in_memory:
            return split.images[positions], split.labels[positions], None
        keys = positions if split.indices is None else split.indices[positions]
        keys = [int(k) for k in keys]
        source = split.images
        if hasattr(source, 'path'):  # image_folder.FolderSource: files, labels known
            return [None] * len(keys), split.labels[positions], [source.path(k) for k in keys]
        # tfds data sources read a batch of records in one call; plain sequences one by one.
        records = (
            source.__getitems__(keys)
            if hasattr(source, '__getitems__')
            else [source[k] for k in keys]
        )
        labels = (
            split.labels[positions]
            if split.labels is not None
            else np.asarray([int(r['label']) for r in records], np.int32)
        )
        return [r['image'] for r in records], labels, [f'record {k}' for k in keys]

    def _transform(self, image, bits):
        if self.augment != 'inception':
            return image
        size = self.image_shape[:2]
        if self.train:
            return aug.random_resized_crop(image, np.random.default_rng(int(bits)), size)
        return aug.center_crop(image, size)

    def _images(self, positions: np.ndarray):
        """(uint8 NHWC, int32 labels, readable mask) of the examples at `positions`."""
        images, labels, names = self._read(positions)
        bits = example_bits(self.key, positions)
        if isinstance(images, np.ndarray):  # in memory: whole-batch operations
            if self.train and self.augment == 'crop_flip':
                images = aug.crop_flip(images, bits)
            elif self.augment == 'inception':
                images = np.stack([self._transform(im, b) for im, b in zip(images, bits)])
            return images, labels, np.ones(len(images), bool)
        out = np.zeros((len(images), *self.image_shape), np.uint8)
        ok = np.zeros(len(images), bool)
        for i, (image, b) in enumerate(zip(images, bits)):
            try:
                if image is None:  # a file: read here, in the worker
                    with open(names[i], 'rb') as f:
                        image = f.read()
                image = self._transform(image if isinstance(image, bytes) else np.asarray(image), b)
            except aug.DECODE_ERRORS as e:
                _warn_unreadable(names[i], e)
                continue
            out[i] = image  # outside the try: a wrong image_shape is an error, not a bad file
            ok[i] = True
        if self.train and len(ok) and not ok.any():
            raise OSError(f'no image of a training batch could be read or decoded: {names[:3]} ...')
        return out, labels, ok

    def __call__(self, positions: np.ndarray) -> dict[str, np.ndarray]:
        positions = np.asarray(positions, np.int64).reshape(-1)
        real = positions >= 0
        images, labels, ok = self._images(positions[real])
        if self.normalize:
            images = _normalizer(self.mean, self.std)(images)
        weight = ok.astype(np.float32)
        if not real.all():  # padding rows: zeros, weight 0
            rows = np.flatnonzero(real)
            padded = np.zeros((len(positions), *images.shape[1:]), images.dtype)
            padded[rows] = images
            images, labels, weight = (
                padded,
                _scatter(labels, rows, len(positions)),
                _scatter(weight, rows, len(positions)),
            )
        if self.train and not ok.all():
            # Training keeps the batch full: an unreadable row takes the next readable one.
            good = np.flatnonzero(weight > 0)
            for row in np.flatnonzero(real)[~ok]:
                src = good[np.searchsorted(good, row) % len(good)]
                images[row], labels[row], weight[row] = images[src], labels[src], 1.0
        return {'image': images, 'label': np.asarray(labels, np.int32), 'weight': weight}


def _scatter(values: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n, values.dtype)
    out[rows] = values
    return out


# --------------------------------------------------------------------------------------
# The chain
