"""The input pipeline: one grain chain from a dataset split to batches, and device prefetch.

    range(batches x processes), this process's share  -> the positions of its rows of each
    global batch, in the (seed, epoch) order          (`BatchPositions`; shuffle for training)
             -> read, decode, augment, normalise       (`ReadBatch`, one grain map per batch)
             -> worker processes                       (`workers`; 0 = the main process)
             -> host buffer -> placed on the mesh -> device buffer     (`device_prefetch`)

Determinism: batch b of epoch e is a function of (seed, e, b) alone. The order of epoch e is
`np.random.default_rng([seed, e]).permutation(n)` (grain's own reshuffle seeds epoch e with
seed + e, which would give seed s, epoch 1 the order of seed s + 1, epoch 0), and each
example's random crop and flip come from 64 bits hashed from (`augment_key(seed, e)`, example
index). Worker processes receive whole batches round-robin and grain returns
them in order, so the batches do not depend on the worker count; they do not depend on the
process count either: process p of P reads rows [p*B/P, (p+1)*B/P) of every global batch of
size B, so the processes' shards are disjoint and together are exactly the one-process batch.

Batches are dicts of numpy arrays: 'image' float32 NHWC, normalised with the dataset's
mean/std (in [0, 1] units) (or uint8 with normalize=False: the training loop normalises on the
device, which moves a quarter of the bytes and saves the host about a quarter of its work
per ImageNet image), 'label' int32, 'weight' float32 (1 for an example, 0 for the
padding of a last partial batch and for a file that could not be decoded). A file that cannot
be read or decoded is skipped with one warning line naming it: in training its row is filled
by another image of the same batch (shapes stay fixed), in evaluation it gets weight 0 and
`iterate_batches` leaves it out.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence

import grain
import numpy as np

from jackpot_jax.data.reading import ReadBatch, augment_key, epoch_order

AUTO_WORKERS = -1


def default_workers() -> int:
    """The number of cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover (not Linux)
        return os.cpu_count() or 1


def resolve_workers(requested: int, split) -> int:
    """Worker processes for `config.data_workers` on this split.

    N >= 0 is used as given (0 = the main process). AUTO_WORKERS (-1, the default) means one
    per core for files that must be decoded (image folders, tfds records) and the main process
    for in-memory arrays, whose batch is a few vectorised numpy operations: there, worker
    processes cost their start-up (seconds: each imports JAX) and a copy of the arrays, and
    move every batch through shared memory, for no gain (benchmarks/README.md).
    """
    if requested == AUTO_WORKERS:
        return 0 if split.in_memory else default_workers()
    if requested < 0:
        raise ValueError(
            f'data_workers={requested}: use a count >= 0 (0 = the main process) '
            f'or {AUTO_WORKERS} (one per core for decoded files)'
        )
    return requested


# --------------------------------------------------------------------------------------
# Keys


def num_batches(split, batch_size: int, *, drop_remainder: bool) -> int:
    """Number of batches a pass over this split yields."""
    if batch_size <= 0:
        raise ValueError(f'batch_size={batch_size} must be positive')
    n = len(split)
    return n // batch_size if drop_remainder else -(-n // batch_size)


@dataclasses.dataclass(frozen=True)
class BatchPositions:
    """Element k = b * P + p of a pass -> the split positions of process p's rows of global
    batch b (-1: padding), in the (seed, epoch) order when shuffled."""

    n: int
    batch_size: int
    process_count: int
    pad: bool
    shuffle: tuple[int, int] | None  # (seed, epoch), or None for the split's order

    def __call__(self, k: int) -> np.ndarray:
        b, p = divmod(int(k), self.process_count)
        rows = self.batch_size // self.process_count
        start = b * self.batch_size + p * rows
        at = np.arange(start, start + rows)
        at = at[at < self.n] if not self.pad else at
        positions = np.full(len(at), -1, np.int64)
        real = at < self.n
        order = epoch_order(self.n, *self.shuffle) if self.shuffle else None
        positions[real] = order[at[real]] if order is not None else at[real]
        return positions


def split_batches(
    ds,
    split: str,
    batch_size: int,
    *,
    train: bool,
    seed: int = 0,
    epoch: int = 0,
    drop_remainder: bool | None = None,
    pad: bool = False,
    process_index: int = 0,
    process_count: int = 1,
    normalize: bool = True,
) -> grain.MapDataset:
    """The batches of one pass over a split, as a grain MapDataset (random access by batch).

    train=True: the (seed, epoch) order and augmentation, drop_remainder by default.
    train=False: the split's order, eval transforms, the last partial batch kept, and with
    `pad` filled up to `batch_size` with weight-0 rows (needed when `process_count` > 1).
    Element b holds rows [p*B/P, (p+1)*B/P) of global batch b for p = `process_index`.
    normalize=False: uint8 images (normalise them where they are used).
    """
    part = ds.split(split)
    drop = train if drop_remainder is None else drop_remainder
    total = num_batches(part, batch_size, drop_remainder=drop)
    if total == 0 and len(part) > 0:
        raise ValueError(
            f'{split} split has {len(part)} examples: fewer than '
            f'batch_size={batch_size} with drop_remainder=True gives no batches'
        )
    if batch_size % process_count:
        raise ValueError(f'batch_size={batch_size} does not split across {process_count} processes')
    if not 0 <= process_index < process_count:
        raise ValueError(f'process_index={process_index} not in [0, {process_count})')
    if process_count > 1 and not pad and total * batch_size > len(part):
        raise ValueError('a last partial batch split across processes needs pad=True')
    # One element per (global batch, process); the shuffle is one vectorised permutation per
    # epoch: grain's per-example MapDataset.shuffle + batch cost as much as CIFAR's augmentation.
    positions = BatchPositions(
        len(part), batch_size, process_count, pad, (seed, epoch) if train else None
    )
    reader = ReadBatch(
        part,
        ds.augment,
        train,
        tuple(ds.image_shape),
        ds.mean,
        ds.std,
        augment_key(seed, epoch),
        normalize,
    )
    return (
        grain.MapDataset.range(total * process_count)[process_index::process_count]
        .map(positions)
        .map(reader)
    )


def _ensure_absl_flags_parsed():
    # grain's worker start reads an absl flag; library callers (tests, notebooks) never parse.
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def loader(
    batches: grain.MapDataset | Sequence[grain.MapDataset], workers: int = 0
) -> grain.IterDataset:
    """Iterates the batches (several passes: concatenated) in `workers` processes (0: here).

    The workers start once for all the passes given, so one loader per training run keeps
    them across epochs.
    """
    if not isinstance(batches, grain.MapDataset):
        batches = grain.MapDataset.concatenate(list(batches))
    it = batches.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    if workers > 0:
        _ensure_absl_flags_parsed()
        it = it.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=1)
        )
    return it


def train_batches(
    ds,
    batch_size: int,
    *,
    seed: int,
    epochs: Sequence[int],
    workers: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    normalize: bool = True,
) -> grain.IterDataset:
    """The training batches of `epochs` (e.g. range(start, total)) one after the other."""
    return loader(
        [
            split_batches(
                ds,
                'train',
                batch_size,
                train=True,
                seed=seed,
                epoch=e,
                process_index=process_index,
                process_count=process_count,
                normalize=normalize,
            )
            for e in epochs
        ],
        workers,
    )


def eval_batches(
    ds,
    split: str,
    batch_size: int,
    *,
    workers: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    normalize: bool = True,
) -> grain.IterDataset:
    """One pass over a split in order, every batch `batch_size` rows (padding: weight 0)."""
    return loader(
        split_batches(
            ds,
            split,
            batch_size,
            train=False,
            pad=True,
            process_index=process_index,
            process_count=process_count,
            normalize=normalize,
        ),
        workers,
    )


def device_prefetch(batches: grain.IterDataset, put: Callable, size: int = 2) -> grain.IterDataset:
    """`put` (e.g. placing a batch on the mesh) applied ahead in a thread, `size` batches deep.

    Two buffers: `size` batches ready on the host (in the main process this is where they are
    made) and `size` already placed, so a step never waits unless the host is slower than the
    device. size=0: no thread, `put` runs when the loop asks for the batch.
    """
    if size <= 0:
        return batches.map(put)
    ready = grain.experimental.ThreadPrefetchIterDataset(batches, prefetch_buffer_size=size)
    return grain.experimental.ThreadPrefetchIterDataset(ready.map(put), prefetch_buffer_size=size)


# --------------------------------------------------------------------------------------
# Convenience: numpy batches


def iterate_batches(
    ds,
    split: str,
    batch_size: int,
    *,
    train: bool,
    seed: int = 0,
    epoch: int = 0,
    drop_remainder: bool | None = None,
    start_batch: int = 0,
    workers: int = 0,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yields (float32 NHWC normalised images, int32 labels) of one pass over a split.

    train=True: the (seed, epoch) order and augmentation, drop_remainder by default.
    train=False: the split's order, no augmentation (ImageNet-style data get Resize +
    CenterCrop), the last partial batch included by default, unreadable files left out.
    `start_batch` skips the first batches of the same sequence.
    """
    d = split_batches(
        ds, split, batch_size, train=train, seed=seed, epoch=epoch, drop_remainder=drop_remainder
    )
    if not 0 <= start_batch <= len(d):
        raise ValueError(f'start_batch={start_batch} must be in [0, {len(d)}]')
    for b in loader(d[start_batch:], workers):
        keep = b['weight'] > 0
        # Copies: from workers the arrays live in shared memory that grain frees with them.
        yield np.array(b['image'][keep]), np.array(b['label'][keep])


def balanced_batch(ds, split: str, per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
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
                raise ValueError(
                    f'{split} split has {len(where)} examples of class {c}, '
                    f'fewer than per_class={per_class}'
                )
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
            raise ValueError(
                f'{split} split has fewer than per_class={per_class} examples '
                f'of classes {short[:10]}'
            )
        idx = np.concatenate([np.sort(picked[c]) for c in range(ds.num_classes)]).astype(int)
    batch = ReadBatch(part, ds.augment, False, tuple(ds.image_shape), ds.mean, ds.std)(idx)
    return batch['image'], batch['label']
