"""Tests of the grain input pipeline, the augmentations (against torchvision) and the
ImageNet JPEG folder: determinism over worker counts, per-process shards, pixel parity,
ImageFolder order, errors and skipped files."""

import io
import json
import logging
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jackpot_jax.data import augment as aug
from jackpot_jax.data import datasets as d
from jackpot_jax.data import input_pipeline as ip
from jackpot_jax.data import reading

# --------------------------------------------------------------------------------------
# helpers


def photo(h, w, seed):
    """A photo-like RGB image: smooth colour fields, an edge, mild noise (uint8)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    channels = [
        128 + 70 * np.sin(x / (7 + 5 * c + seed % 5) + c) * np.cos(y / (9 + 3 * c))
        for c in range(3)
    ]
    image = np.stack(channels, -1) + 40 * (x > w * 0.6)[..., None]
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def jpeg_bytes(image, quality=90):
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, 'JPEG', quality=quality)
    return buf.getvalue()


def write_tree(root, layout, seed=0, size=(40, 52)):
    """layout: {split: {class: [file names]}}; files get photo-like content by extension."""
    k = seed
    for split, classes in layout.items():
        for cls, names in classes.items():
            folder = root / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for name in names:
                k += 1
                image = photo(size[0] + k % 7, size[1] + k % 5, k)
                fmt = {'.png': 'PNG', '.bmp': 'BMP'}.get(os.path.splitext(name)[1].lower(), 'JPEG')
                buf = io.BytesIO()
                Image.fromarray(image).save(buf, fmt, **({'quality': 90} if fmt == 'JPEG' else {}))
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                (folder / name).write_bytes(buf.getvalue())
    return root


TREE = {
    'train': {
        'n02': ['b.JPEG', 'a.jpeg', 'c.PNG', 'notes.txt'],
        'n01': ['z.jpg', 'y.JPEG'],
        'n03': ['sub/k.JPEG', 'j.bmp', 'i.JPEG'],
    },
    'val': {'n01': ['v2.JPEG', 'v1.JPEG'], 'n02': ['v3.JPEG'], 'n03': ['v5.JPEG', 'v4.png']},
}


@pytest.fixture
def tree(tmp_path):
    root = write_tree(tmp_path / 'imagenet', TREE)
    (root / 'train' / 'n02' / 'notes.txt').write_text('not an image')
    return root


def index_dataset(n, batch, augment='none'):
    """In-memory data whose image i is filled with i (so a batch tells which examples it holds)."""
    images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 1), np.uint8)
    split = d.Split(images, np.arange(n, dtype=np.int32))
    return d.Dataset('index', n, (4, 4, 1), split, split, split, (0.0,), (1 / 255,), augment)


def example_ids(batch):
    """Example ids of a batch of index_dataset (normalised with mean 0, std 1/255)."""
    return np.rint(batch['image'][:, 0, 0, 0]).astype(int)[batch['weight'] > 0]


# --------------------------------------------------------------------------------------
# keys and determinism


def test_epoch_orders_are_not_seed_plus_epoch():
    # grain's own reshuffle seeds epoch e with seed + e; ours must not alias (s, e+1) and (s+1, e).
    ds = index_dataset(64, 8)
    order = {}
    for seed, epoch in [(0, 1), (1, 0), (0, 0), (1, 1)]:
        batches = ip.split_batches(ds, 'train', 8, train=True, seed=seed, epoch=epoch)
        order[seed, epoch] = np.concatenate([example_ids(b) for b in batches])
        # The documented order: numpy's permutation seeded with [seed, epoch].
        np.testing.assert_array_equal(
            order[seed, epoch], np.random.default_rng([seed, epoch]).permutation(64)
        )
    assert len({tuple(v) for v in order.values()}) == 4


def test_train_order_is_a_seeded_permutation_and_resumable():
    ds = d.synthetic_dataset(image_shape=(8, 8, 3), n_train=40, augment='crop_flip')
    a = list(ip.iterate_batches(ds, 'train', 8, train=True, seed=1, epoch=2))
    b = list(ip.iterate_batches(ds, 'train', 8, train=True, seed=1, epoch=2))
    assert len(a) == 5
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    resumed = list(ip.iterate_batches(ds, 'train', 8, train=True, seed=1, epoch=2, start_batch=3))
    assert len(resumed) == 2
    for (xa, ya), (xr, yr) in zip(a[3:], resumed):
        np.testing.assert_array_equal(xa, xr)
        np.testing.assert_array_equal(ya, yr)
    other = list(ip.iterate_batches(ds, 'train', 8, train=True, seed=1, epoch=3))
    assert not np.array_equal(
        np.concatenate([x for x, _ in a]), np.concatenate([x for x, _ in other])
    )
    with pytest.raises(ValueError, match='start_batch=6'):
        next(ip.iterate_batches(ds, 'train', 8, train=True, start_batch=6))


def test_train_batches_over_epochs_equal_each_epoch_alone():
    # The engine iterates all remaining epochs with one loader; resuming at epoch 1 gives
    # epoch 1 the batches an uninterrupted run gave it.
    ds = index_dataset(30, 8)
    run = [example_ids(b) for b in ip.train_batches(ds, 8, seed=5, epochs=range(0, 3))]
    resumed = [example_ids(b) for b in ip.train_batches(ds, 8, seed=5, epochs=range(1, 3))]
    assert len(run) == 9 and len(resumed) == 6  # 30 // 8 = 3 batches per epoch
    for r, e in zip(resumed, run[3:]):
        np.testing.assert_array_equal(r, e)
    single = [example_ids(b) for b in ip.split_batches(ds, 'train', 8, train=True, seed=5, epoch=2)]
    for s, e in zip(single, run[6:]):
        np.testing.assert_array_equal(s, e)


def test_crop_flip_is_shifted_or_flipped_copy_with_zero_fill():
    h, w = 6, 5
    image = (np.arange(h * w * 2).reshape(h, w, 2) + 1).astype(np.uint8)  # no zeros inside
    batch = np.repeat(image[None], 400, axis=0)
    out = aug.crop_flip(batch, reading.example_bits(123, np.arange(400)))
    assert out.shape == batch.shape and out.dtype == np.uint8
    padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
    counts = {}
    for o in out:
        matches = [
            (oy, ox, flip)
            for oy in range(9)
            for ox in range(9)
            for flip in (0, 1)
            if np.array_equal(
                o,
                (
                    padded[oy : oy + h, ox : ox + w][:, ::-1]
                    if flip
                    else padded[oy : oy + h, ox : ox + w]
                ),
            )
        ]
        assert matches, 'output is not a padded crop (optionally flipped) of the input'
        counts[matches[0]] = counts.get(matches[0], 0) + 1
    flips = sum(v for k, v in counts.items() if k[2])
    assert 150 < flips < 250  # about half flipped
    oy = np.bincount([k[0] for k, v in counts.items() for _ in range(v)], minlength=9)
    assert oy.min() > 15  # every vertical offset 0..8 occurs, roughly uniformly (~44 each)


# --------------------------------------------------------------------------------------
# workers and processes


def test_same_batches_with_0_1_2_workers(tree):
    ds = d.load_dataset('imagenet_folder', data_dir=str(tree), val_examples=2)
    ds = d.dataclasses.replace(ds, image_shape=(24, 24, 3))  # small crops: fast
    runs = {}
    for workers in (0, 1, 2):
        runs[workers] = list(ip.train_batches(ds, 3, seed=7, epochs=range(2), workers=workers))
    assert len(runs[0]) == 2 * (len(ds.train) // 3)
    for workers in (1, 2):
        for a, b in zip(runs[0], runs[workers], strict=True):
            np.testing.assert_array_equal(a['image'], b['image'])
            np.testing.assert_array_equal(a['label'], b['label'])
    # The two epochs differ (another order and other random crops).
    assert not np.array_equal(runs[0][0]['image'], runs[0][2]['image'])


@pytest.mark.parametrize('train', [True, False])
def test_two_processes_read_disjoint_shards_that_make_the_one_process_batches(train):
    ds = index_dataset(37, 8)
    kwargs = dict(train=train, seed=3, epoch=4, pad=not train)
    one = list(ip.split_batches(ds, 'train', 8, **kwargs))
    shards = [
        list(ip.split_batches(ds, 'train', 8, process_index=p, process_count=2, **kwargs))
        for p in (0, 1)
    ]
    seen = [np.concatenate([example_ids(b) for b in shard]) for shard in shards]
    assert len(np.intersect1d(seen[0], seen[1])) == 0
    covered = np.sort(np.concatenate(seen))
    if train:  # drop_remainder: 4 full batches of the shuffled 37
        assert len(covered) == 32 and len(np.unique(covered)) == 32
    else:  # evaluation: every example exactly once, padding weighted 0
        np.testing.assert_array_equal(covered, np.arange(37))
    for b, b0, b1 in zip(one, *shards, strict=True):
        assert b0['image'].shape[0] == b1['image'].shape[0] == 4
        for key in ('image', 'label', 'weight'):
            np.testing.assert_array_equal(b[key], np.concatenate([b0[key], b1[key]]))


def test_resolve_workers():
    mem = d.synthetic_dataset()
    assert ip.resolve_workers(-1, mem.train) == 0
    assert ip.resolve_workers(3, mem.train) == 3
    assert ip.resolve_workers(-1, d.Split([b'x'], np.zeros(1, np.int32))) == ip.default_workers()
    with pytest.raises(ValueError, match='data_workers=-2'):
        ip.resolve_workers(-2, mem.train)


# --------------------------------------------------------------------------------------
# parity with torchvision


@pytest.mark.parametrize(
    'shape, box, size',
    [
        ((375, 500), (0, 0, 375, 500), (112, 112)),  # whole image to 112: DCT scale 1/2
        ((375, 500), (40, 100, 300, 260), (64, 64)),  # a box 4x the output: DCT scale 1/4
        ((375, 500), (100, 37, 150, 213), (224, 224)),  # upsampling: full-size decode
        ((333, 251), (5, 9, 270, 200), (96, 80)),  # odd sizes, non-square output
    ],
)
def test_resized_crop_matches_torchvision(shape, box, size):
    torchvision = pytest.importorskip('torchvision')
    F = torchvision.transforms.functional
    image = photo(*shape, seed=sum(box))
    data = jpeg_bytes(image)
    top, left, h, w = box
    want = np.asarray(
        F.resized_crop(
            Image.open(io.BytesIO(data)).convert('RGB'),
            top,
            left,
            h,
            w,
            list(size),
            F.InterpolationMode.BILINEAR,
            antialias=True,
        )
    )
    got = aug.resized_crop(data, box, size)
    assert got.shape == want.shape == (*size, 3)
    mad = np.abs(got.astype(float) - want).mean()
    assert mad <= 2.0, f'mean absolute difference {mad:.3f} > 2/255'
    # The same box of the decoded array (no DCT scaling) is torchvision's resampling exactly.
    np.testing.assert_array_equal(aug.resized_crop(aug.decode_rgb(data), box, size), want)


def test_reduced_dct_decoding_is_used_when_the_crop_allows():
    data = jpeg_bytes(photo(375, 500, 1))
    assert aug.decode_rgb(data, (112, 112)).shape[:2] == (141, 188)  # 3/8 of 375x500
    assert aug.decode_rgb(data, (188, 250)).shape[:2] == (188, 250)  # 1/2
    assert aug.decode_rgb(data).shape[:2] == (375, 500)
    assert aug.dct_scale((375, 500), (112, 112)) == 0.5
    assert aug.dct_scale((300, 260), (64, 64)) == 0.25
    assert aug.dct_scale((1000, 1000), (64, 64)) == 0.125
    assert aug.dct_scale((150, 213), (224, 224)) == 1.0


@pytest.mark.parametrize('shape', [(375, 500), (500, 333), (300, 300), (120, 90)])
def test_center_crop_matches_torchvision_resize_256_center_crop_224(shape):
    T = pytest.importorskip('torchvision.transforms')
    data = jpeg_bytes(photo(*shape, seed=shape[0]))
    pil = Image.open(io.BytesIO(data)).convert('RGB')
    want = np.asarray(T.Compose([T.Resize(256), T.CenterCrop(224)])(pil))
    got = aug.center_crop(data, (224, 224))
    assert got.shape == want.shape == (224, 224, 3)
    assert np.abs(got.astype(float) - want).mean() <= 2.0
    # Without DCT scaling the box resampling is the resize + crop (to float rounding).
    full = aug.center_crop(aug.decode_rgb(data), (224, 224))
    assert np.abs(full.astype(int) - want).max() <= 1


def test_random_resized_crop_box_bounds_and_fallback():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = aug.random_resized_crop_box(300, 400, rng)
        assert 0 <= top and top + h <= 300 and 0 <= left and left + w <= 400
        assert 0.08 * 0.9 <= h * w / (300 * 400) <= 1.0
        assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
    # Too wide for any sampled crop: the centred crop of the widest allowed ratio.
    assert aug.random_resized_crop_box(10, 1000, rng) == (0, 493, 10, 13)


# --------------------------------------------------------------------------------------
# imagenet_folder


def test_imagenet_folder_order_labels_and_eval_pixels(tree):
    torchvision = pytest.importorskip('torchvision')
    T = torchvision.transforms
    ds = d.load_dataset('imagenet_folder', data_dir=str(tree), val_examples=0)
    ref_train = torchvision.datasets.ImageFolder(str(tree / 'train'))
    ref_val = torchvision.datasets.ImageFolder(str(tree / 'val'))
    assert ds.classes == tuple(ref_train.classes) == ('n01', 'n02', 'n03')
    assert ds.num_classes == 3 and ds.image_shape == (224, 224, 3) and ds.augment == 'inception'
    # ImageFolder's order: sorted classes, sorted files (subfolders too), any image extension.
    assert [ds.train.images.path(i) for i in ds.train.indices] == [p for p, _ in ref_train.samples]
    np.testing.assert_array_equal(ds.train.labels, [t for _, t in ref_train.samples])
    assert len(ds.train) == 8 and 'notes.txt' not in str(ref_train.samples)
    # The test split is val/, in that order, Resize(256) + CenterCrop(224) + mean/std, NHWC.
    batches = list(ip.iterate_batches(ds, 'test', 2, train=False))
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    np.testing.assert_array_equal(y, [t for _, t in ref_val.samples])
    mean, std = np.asarray(d.IMAGENET_MEAN), np.asarray(d.IMAGENET_STD)
    for i, (path, _) in enumerate(ref_val.samples):
        want = (
            np.asarray(
                T.Compose([T.Resize(256), T.CenterCrop(224)])(Image.open(path).convert('RGB'))
            )
            / 255.0
        )
        got = x[i] * std + mean
        assert np.abs(got - want).mean() <= 2 / 255, path
    assert x.shape == (5, 224, 224, 3) and x.dtype == np.float32


def test_imagenet_folder_val_held_out_of_train(tree):
    ds = d.load_dataset('imagenet_folder', data_dir=str(tree), val_examples=3, split_seed=1)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (5, 3, 5)
    assert len(np.intersect1d(ds.train.indices, ds.val.indices)) == 0
    all_labels = np.asarray([0, 0, 1, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(ds.val.labels, all_labels[ds.val.indices])


def test_imagenet_folder_errors_name_the_path(tmp_path):
    with pytest.raises(ValueError, match='--config.data_dir'):
        d.load_dataset('imagenet_folder', data_dir=None)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / 'none')):
        d.load_dataset('imagenet_folder', data_dir=str(tmp_path / 'none'))
    write_tree(tmp_path / 'a', {'train': {'n01': ['x.JPEG']}})
    with pytest.raises(FileNotFoundError, match=str(tmp_path / 'a' / 'val')):
        d.load_dataset('imagenet_folder', data_dir=str(tmp_path / 'a'))
    root = write_tree(tmp_path / 'b', {'train': {'n01': ['x.JPEG']}, 'val': {'n01': ['y.JPEG']}})
    (root / 'train' / 'n02').mkdir()
    (root / 'train' / 'n02' / 'readme.txt').write_text('no images here')
    with pytest.raises(
        FileNotFoundError, match=f"class folder {root / 'train' / 'n02'} has no image"
    ):
        d.load_dataset('imagenet_folder', data_dir=str(root), val_examples=0)
    root = write_tree(
        tmp_path / 'c',
        {'train': {'n01': ['x.JPEG']}, 'val': {'n01': ['y.JPEG'], 'n09': ['z.JPEG']}},
    )
    with pytest.raises(ValueError, match='n09'):
        d.load_dataset('imagenet_folder', data_dir=str(root), val_examples=0)


def test_imagenet_folder_skips_a_corrupt_file_with_one_warning(tree, caplog):
    bad = tree / 'val' / 'n01' / 'v1.JPEG'  # first in order
    bad.write_bytes(b'\xff\xd8\xff\xe0 this is not really a JPEG')
    truncated = tree / 'train' / 'n02' / 'b.JPEG'
    truncated.write_bytes(truncated.read_bytes()[:300])
    reading._warned.clear()
    ds = d.load_dataset('imagenet_folder', data_dir=str(tree), val_examples=0)
    with caplog.at_level(logging.WARNING, logger='jackpot_jax.data.input_pipeline'):
        test = list(ip.iterate_batches(ds, 'test', 2, train=False))
        again = list(ip.iterate_batches(ds, 'test', 2, train=False))
    # val/ order: n01/v1 (corrupt), n01/v2, n02/v3, n03/v4.png, n03/v5: the first is left out.
    np.testing.assert_array_equal(np.concatenate([y for _, y in test]), [0, 1, 2, 2])
    assert sum(len(y) for _, y in again) == 4
    lines = [r.getMessage() for r in caplog.records if str(bad) in r.getMessage()]
    assert len(lines) == 1 and 'skipping unreadable image' in lines[0]
    # Training keeps full batches: the truncated file's row holds another image of its batch.
    ds = d.dataclasses.replace(ds, image_shape=(16, 16, 3))
    batches = list(ip.train_batches(ds, 4, seed=0, epochs=[0]))
    assert [len(b['label']) for b in batches] == [4, 4]
    assert all(b['weight'].all() for b in batches)
    assert any(str(truncated) in r.getMessage() for r in caplog.records)
    # Evaluation with padding gives the corrupt file weight 0.
    weights = np.concatenate([b['weight'] for b in ip.eval_batches(ds, 'test', 4)])
    np.testing.assert_array_equal(weights, [0, 1, 1, 1, 1, 0, 0, 0])


def test_engine_normalises_uint8_batches_on_the_mesh_as_the_host_does():
    from jackpot_jax import core

    ds = d.synthetic_dataset(image_shape=(6, 6, 3), n_train=8, augment='crop_flip')
    ds = d.dataclasses.replace(ds, mean=d.CIFAR_MEAN, std=d.CIFAR_STD)
    raw = next(iter(ip.split_batches(ds, 'train', 8, train=True, normalize=False)))
    host = next(iter(ip.split_batches(ds, 'train', 8, train=True)))
    assert raw['image'].dtype == np.uint8
    images, labels = core.batch_to_mesh(core.make_mesh(), ds)(raw)
    np.testing.assert_allclose(np.asarray(images), host['image'], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(labels), host['label'])
    np.testing.assert_allclose(host['image'], reading.normalize(ds, raw['image']), atol=1e-6)
    # The reference formula, by hand: (x / 255 - mean) / std.
    by_hand = (raw['image'] / 255.0 - np.asarray(d.CIFAR_MEAN)) / np.asarray(d.CIFAR_STD)
    np.testing.assert_allclose(host['image'], by_hand, rtol=1e-5, atol=1e-5)


TWO_PROCESSES = r'''
import json, sys
import jax
jax.distributed.initialize(coordinator_address=sys.argv[1], num_processes=2,
                           process_id=int(sys.argv[2]))
import numpy as np
from jax.experimental import multihost_utils
from jackpot_jax.data import datasets as d
from jackpot_jax import core
from jackpot_jax.data import input_pipeline as ip
from jackpot_jax import models
from jackpot_jax.pipeline.evaluate import evaluate

ds = d.load_dataset('synthetic:cifar10', train_subset=20, val_examples=16, test_subset=10)
mesh = core.make_mesh()
assert mesh.devices.size == 2 and jax.process_count() == 2
put = core.batch_to_mesh(mesh, ds)
gathered = []
for b in ip.train_batches(ds, 8, seed=3, epochs=[0, 1], normalize=False,
                          process_index=jax.process_index(), process_count=2):
    assert b['image'].shape[0] == 4  # this process's rows only
    images, labels = put(b)
    gathered.append(multihost_utils.process_allgather((images, labels), tiled=True))
single = list(ip.train_batches(ds, 8, seed=3, epochs=[0, 1]))
assert len(gathered) == len(single) == 4
for (x, y), s in zip(gathered, single):
    np.testing.assert_allclose(np.asarray(x), s['image'], atol=1e-6)
    np.testing.assert_array_equal(np.asarray(y), s['label'])
module = models.get_model('lenet300_100', num_classes=10)
variables = models.init_variables(module, jax.random.key(0), (1, 32, 32, 3))
res = evaluate(module, variables, ds, 'test', 4, mesh)  # 10 examples: a padded last batch
print('RESULT', json.dumps(res))
'''


def test_two_jax_processes_feed_their_rows_and_evaluate_as_one():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
    env['PYTHONPATH'] = root + os.pathsep + env.get('PYTHONPATH', '')
    procs = [
        subprocess.Popen(
            [sys.executable, '-c', TWO_PROCESSES, f'127.0.0.1:{port}', str(i)],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in (0, 1)
    ]
    try:
        outs = [p.communicate(timeout=240) for p in procs]
    finally:  # a hang (or any failure) leaves no process behind
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    results = [json.loads(out.split('RESULT ', 1)[1]) for out, _ in outs]
    assert results[0] == results[1]
    # One process on one device gives the same evaluation.
    import jax

    from jackpot_jax import core, models
    from jackpot_jax.pipeline.evaluate import evaluate

    ds = d.load_dataset('synthetic:cifar10', train_subset=20, val_examples=16, test_subset=10)
    module = models.get_model('lenet300_100', num_classes=10)
    variables = models.init_variables(module, jax.random.key(0), (1, 32, 32, 3))
    one = evaluate(module, variables, ds, 'test', 4, core.make_mesh(1))
    assert one['examples'] == results[0]['examples'] == 10
    for key in ('accuracy', 'loss'):
        assert abs(one[key] - results[0][key]) < 1e-5
