"""Tests of the datasets and their files (jackpot_jax.data.datasets, jackpot_jax.data.files): IDX,
Fashion-MNIST and CIFAR found or downloaded, checksums, the restricted unpickler, splits."""

import codecs
import collections
import functools
import gzip
import hashlib
import http.server
import os
import pickle
import socket
import sys
import tarfile
import threading
import types

import numpy as np
import pytest

from jackpot_jax import errors
from jackpot_jax.data import augment as aug
from jackpot_jax.data import cifar, files, reading
from jackpot_jax.data import datasets as d
from jackpot_jax.data import input_pipeline as ip

# --------------------------------------------------------------------------------------
# helpers


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file for a uint8 array, written byte by byte as the format defines it."""
    assert array.dtype == np.uint8
    header = bytes([0, 0, 0x08, array.ndim])
    for dim in array.shape:
        header += int(dim).to_bytes(4, 'big')
    return header + array.tobytes()


def write_fashion_files(directory, n_train=6, n_test=3, gz=True, seed=0):
    """Tiny Fashion-MNIST look-alike files; returns (train_x, train_y, test_x, test_y)."""
    rng = np.random.default_rng(seed)
    os.makedirs(directory, exist_ok=True)
    arrays = {
        'train-images-idx3-ubyte': rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        'train-labels-idx1-ubyte': (np.arange(n_train) % 10).astype(np.uint8),
        't10k-images-idx3-ubyte': rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        't10k-labels-idx1-ubyte': (np.arange(n_test)[::-1] % 10).astype(np.uint8),
    }
    for stem, array in arrays.items():
        raw = idx_bytes(array)
        if gz:
            with open(os.path.join(directory, stem + '.gz'), 'wb') as f:
                f.write(gzip.compress(raw))
        else:
            with open(os.path.join(directory, stem), 'wb') as f:
                f.write(raw)
    return tuple(arrays.values())


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No system copy, no env var, and a private cache dir: only what a test provides."""
    monkeypatch.setattr(files, 'FASHION_MNIST_SYSTEM_DIR', str(tmp_path / 'no_system_copy'))
    monkeypatch.setattr(files, '_dpkg_dirs', lambda package: [])
    monkeypatch.delenv(files.DATA_DIR_ENV, raising=False)
    monkeypatch.delenv(files.OLD_DATA_DIR_ENV, raising=False)
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'cache'))
    return tmp_path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def http_dir(tmp_path):
    """Serves tmp_path/'www' on 127.0.0.1; yields (directory, base_url)."""
    root = tmp_path / 'www'
    root.mkdir()
    server = http.server.ThreadingHTTPServer(
        ('127.0.0.1', 0), functools.partial(_QuietHandler, directory=str(root))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f'http://127.0.0.1:{server.server_address[1]}/'
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------------------
# IDX parser


def test_read_idx_hand_written_bytes_plain_and_gz(tmp_path):
    raw = (
        b'\x00\x00\x08\x03'
        + b'\x00\x00\x00\x02'
        + b'\x00\x00\x00\x02'
        + b'\x00\x00\x00\x03'
        + bytes(range(12))
    )
    (tmp_path / 'a').write_bytes(raw)
    (tmp_path / 'a.gz').write_bytes(gzip.compress(raw))
    expected = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    for name in ('a', 'a.gz'):
        got = files.read_idx(tmp_path / name)
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, expected)


def test_parse_idx_big_endian_int32():
    raw = b'\x00\x00\x0c\x01' + b'\x00\x00\x00\x02' + b'\x00\x00\x01\x00' + b'\xff\xff\xff\xfe'
    got = files.parse_idx(raw)
    assert got.dtype == np.int32 and got.dtype.isnative
    np.testing.assert_array_equal(got, [256, -2])


@pytest.mark.parametrize(
    'raw, message',
    [
        (b'\x01\x00\x08\x01\x00\x00\x00\x01\x07', 'magic'),
        (b'\x00\x00\x07\x01\x00\x00\x00\x01\x07', 'type code'),
        (b'\x00\x00\x08\x01\x00\x00\x00\x03\x07', 'should hold 3 data bytes, has 1'),
        (b'\x00\x00\x08\x02\x00\x00', 'truncated'),
    ],
)
def test_parse_idx_rejects_bad_files(raw, message):
    with pytest.raises(ValueError, match=message):
        files.parse_idx(raw)


# --------------------------------------------------------------------------------------
# real Fashion-MNIST (Debian package dataset-fashion-mnist)


@pytest.fixture(scope='module')
def fashion():
    try:
        return d.load_dataset('fashion_mnist', download=False)
    except FileNotFoundError as e:
        pytest.skip(f'real Fashion-MNIST not installed: {e}')


def test_real_fashion_mnist_shapes_and_known_facts(fashion):
    assert (len(fashion.train), len(fashion.val), len(fashion.test)) == (55000, 5000, 10000)
    assert fashion.train.images.shape == (55000, 28, 28, 1)
    assert fashion.train.images.dtype == np.uint8 and fashion.train.labels.dtype == np.int32
    assert fashion.image_shape == (28, 28, 1) and fashion.num_classes == 10
    assert fashion.augment == 'none'
    for split in (fashion.train, fashion.val, fashion.test):
        assert split.labels.min() == 0 and split.labels.max() == 9
    # The official test set starts Ankle boot, Pullover, Trouser, Trouser, Shirt.
    np.testing.assert_array_equal(fashion.test.labels[:5], [9, 2, 1, 1, 6])
    np.testing.assert_array_equal(np.bincount(fashion.test.labels), [1000] * 10)
    # The training set is 6000 per class; its first label is 9 (Ankle boot) too.
    all_train = np.concatenate([fashion.train.labels, fashion.val.labels])
    np.testing.assert_array_equal(np.bincount(all_train), [6000] * 10)
    train_idx, val_idx = d.train_val_indices(60000, 5000, 0)
    first = fashion.train.labels[0] if train_idx[0] == 0 else fashion.val.labels[0]
    assert first == 9
    # The published mean/std constants are those of the training pixels.
    pixels = np.concatenate([fashion.train.images, fashion.val.images]) / 255.0
    assert abs(pixels.mean() - d.FASHION_MNIST_MEAN[0]) < 1e-4
    assert abs(pixels.std() - d.FASHION_MNIST_STD[0]) < 1e-4


def test_real_fashion_mnist_val_is_disjoint_held_out_subset(fashion):
    train_idx, val_idx = d.train_val_indices(60000, 5000, 0)
    assert len(np.intersect1d(train_idx, val_idx)) == 0
    assert len(train_idx) + len(val_idx) == 60000
    full = files.read_idx(
        os.path.join(files.FASHION_MNIST_SYSTEM_DIR, 'train-images-idx3-ubyte.gz')
    )
    np.testing.assert_array_equal(fashion.val.images[..., 0], full[val_idx])
    np.testing.assert_array_equal(fashion.train.images[..., 0], full[train_idx])


def test_real_fashion_mnist_subsets(fashion):
    small = d.load_dataset(
        'fashion_mnist', download=False, val_examples=100, train_subset=200, test_subset=50
    )
    assert (len(small.train), len(small.val), len(small.test)) == (200, 100, 50)
    np.testing.assert_array_equal(small.test.labels, fashion.test.labels[:50])


# --------------------------------------------------------------------------------------
# validation split


def test_train_val_indices_disjoint_deterministic_seeded():
    train, val = d.train_val_indices(100, 30, split_seed=3)
    assert len(val) == 30 and len(train) == 70
    assert len(np.intersect1d(train, val)) == 0
    np.testing.assert_array_equal(np.union1d(train, val), np.arange(100))
    again_train, again_val = d.train_val_indices(100, 30, split_seed=3)
    np.testing.assert_array_equal(val, again_val)
    _, other_val = d.train_val_indices(100, 30, split_seed=4)
    assert not np.array_equal(val, other_val)


@pytest.mark.parametrize(
    'kwargs, message',
    [
        (dict(val_examples=6), 'val_examples=6'),
        (dict(val_examples=-1), 'val_examples=-1'),
        (dict(val_examples=2, train_subset=5), 'train_subset=5'),
        (dict(val_examples=2, test_subset=4), 'test_subset=4'),
    ],
)
def test_bad_split_sizes_name_the_value(isolated, kwargs, message):
    write_fashion_files(isolated / 'data', n_train=6, n_test=3)
    with pytest.raises(ValueError, match=message):
        d.load_dataset('fashion_mnist', data_dir=str(isolated / 'data'), download=False, **kwargs)


# --------------------------------------------------------------------------------------
# search, download, errors


def test_loads_plain_idx_from_data_dir_subfolder(isolated):
    tx, ty, sx, sy = write_fashion_files(isolated / 'data' / 'fashion_mnist', gz=False)
    ds = d.load_dataset(
        'fashion_mnist', data_dir=str(isolated / 'data'), val_examples=2, download=False
    )
    np.testing.assert_array_equal(ds.test.images[..., 0], sx)
    np.testing.assert_array_equal(ds.test.labels, sy)
    train_idx, val_idx = d.train_val_indices(6, 2, 0)
    np.testing.assert_array_equal(ds.train.images[..., 0], tx[train_idx])
    np.testing.assert_array_equal(ds.val.labels, ty[val_idx])


def test_loads_from_env_var(isolated, monkeypatch, recwarn):
    _, _, sx, _ = write_fashion_files(isolated / 'env')
    monkeypatch.setenv('JACKPOT_JAX_DATA_DIR', str(isolated / 'env'))
    ds = d.load_dataset('fashion_mnist', val_examples=2, download=False)
    np.testing.assert_array_equal(ds.test.images[..., 0], sx)
    assert not [w for w in recwarn if issubclass(w.category, FutureWarning)]


def test_old_env_var_is_read_with_a_deprecation_warning(isolated, monkeypatch):
    _, _, old_x, _ = write_fashion_files(isolated / 'old', seed=1)
    _, _, new_x, _ = write_fashion_files(isolated / 'new', seed=2)
    assert not np.array_equal(old_x, new_x)
    monkeypatch.setenv('JACKPOT_DATA_DIR', str(isolated / 'old'))
    with pytest.warns(FutureWarning, match='JACKPOT_DATA_DIR is deprecated.*JACKPOT_JAX_DATA_DIR'):
        ds = d.load_dataset('fashion_mnist', val_examples=2, download=False)
    np.testing.assert_array_equal(ds.test.images[..., 0], old_x)
    # Both set: the new name wins, and the warning says the old one is ignored.
    monkeypatch.setenv('JACKPOT_JAX_DATA_DIR', str(isolated / 'new'))
    with pytest.warns(FutureWarning, match='ignored: JACKPOT_JAX_DATA_DIR is set'):
        ds = d.load_dataset('fashion_mnist', val_examples=2, download=False)
    np.testing.assert_array_equal(ds.test.images[..., 0], new_x)


def test_missing_dataset_error_lists_every_place(isolated):
    with pytest.raises(FileNotFoundError) as info:
        d.load_dataset('fashion_mnist', data_dir=str(isolated / 'mine'), download=False)
    message = str(info.value)
    for place in (
        isolated / 'mine',
        isolated / 'mine' / 'fashion_mnist',
        isolated / 'no_system_copy',
        isolated / 'cache' / 'jackpot_jax' / 'fashion_mnist',
    ):
        assert str(place) in message
    assert 'apt-get install dataset-fashion-mnist' in message
    assert '--config.data_dir' in message and 'download' in message


def test_failed_download_is_reported(isolated):
    with socket.socket() as s:  # a port with nothing listening
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    with pytest.raises(FileNotFoundError, match=f'download from http://127.0.0.1:{port}/ failed'):
        d.load_dataset('fashion_mnist', download_url=f'http://127.0.0.1:{port}/')


def _serve_fake_fashion(root, monkeypatch):
    arrays = write_fashion_files(root, n_train=6, n_test=3)
    md5s = {
        name: hashlib.md5((root / name).read_bytes()).hexdigest()
        for name in files.FASHION_MNIST_MD5
    }
    monkeypatch.setattr(files, 'FASHION_MNIST_MD5', md5s)
    return arrays


def test_download_verifies_and_installs_into_cache(isolated, http_dir, monkeypatch):
    root, url = http_dir
    _, _, sx, sy = _serve_fake_fashion(root, monkeypatch)
    ds = d.load_dataset('fashion_mnist', val_examples=2, download_url=url)
    np.testing.assert_array_equal(ds.test.images[..., 0], sx)
    np.testing.assert_array_equal(ds.test.labels, sy)
    cache = isolated / 'cache' / 'jackpot_jax' / 'fashion_mnist'
    assert sorted(os.listdir(cache)) == sorted(files.FASHION_MNIST_MD5)  # no temp files left
    # The cache is found afterwards without downloading.
    again = d.load_dataset('fashion_mnist', val_examples=2, download=False)
    np.testing.assert_array_equal(again.test.labels, sy)


def test_download_refuses_checksum_mismatch(isolated, http_dir, monkeypatch):
    root, url = http_dir
    _serve_fake_fashion(root, monkeypatch)
    bad = root / 't10k-labels-idx1-ubyte.gz'
    raw = bytearray(bad.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # corrupted in transit
    bad.write_bytes(bytes(raw))
    with pytest.raises(errors.ChecksumError, match='t10k-labels-idx1-ubyte.gz.*does not match'):
        d.load_dataset('fashion_mnist', val_examples=2, download_url=url)
    cache = isolated / 'cache' / 'jackpot_jax' / 'fashion_mnist'
    assert 't10k-labels-idx1-ubyte.gz' not in os.listdir(cache)
    assert not [f for f in os.listdir(cache) if f.endswith('.tmp')]


def test_official_checksums_and_url():
    assert files.FASHION_MNIST_URL == 'http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/'
    assert (
        files.FASHION_MNIST_MD5['train-images-idx3-ubyte.gz'] == '8d4fb7e6c68d591d4c3dfef9ec88bf0d'
    )
    assert (
        files.FASHION_MNIST_MD5['t10k-labels-idx1-ubyte.gz'] == 'bb300cfdad3c16e7a12a480ee83cd310'
    )


# --------------------------------------------------------------------------------------
# CIFAR from fake archives in the official pickle format


def _cifar_batch(n, label_key, num_classes, rng):
    data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, num_classes, n)]  # python ints, as the official files
    batch = {
        b'batch_label': b'fake batch',
        label_key: labels,
        b'data': data,
        b'filenames': [b'img%d.png' % i for i in range(n)],
    }
    if label_key == b'fine_labels':
        batch[b'coarse_labels'] = [0] * n
    return batch


def _write_cifar(root, name, as_archive):
    spec = cifar._CIFAR[name]
    rng = np.random.default_rng(1)
    folder = root / spec['folder']
    folder.mkdir(parents=True)
    batches = {}
    for f in spec['train'] + spec['test']:
        batches[f] = _cifar_batch(4, spec['label_key'], spec['num_classes'], rng)
        with open(folder / f, 'wb') as fh:
            pickle.dump(batches[f], fh, protocol=2)
    if as_archive:
        with tarfile.open(root / spec['archive'], 'w:gz') as tar:
            tar.add(folder, arcname=spec['folder'])
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
    return batches


@pytest.mark.parametrize('name', ['cifar10', 'cifar100'])
@pytest.mark.parametrize('as_archive', [False, True])
def test_cifar_loader_official_format(isolated, name, as_archive):
    batches = _write_cifar(isolated / 'data', name, as_archive)
    spec = cifar._CIFAR[name]
    ds = d.load_dataset(name, data_dir=str(isolated / 'data'), val_examples=3)
    n_train = 4 * len(spec['train'])
    assert (len(ds.train), len(ds.val), len(ds.test)) == (n_train - 3, 3, 4)
    assert ds.num_classes == spec['num_classes'] and ds.image_shape == (32, 32, 3)
    assert ds.augment == 'crop_flip' and ds.mean == d.CIFAR_MEAN and ds.std == d.CIFAR_STD
    # NHWC pixel (n, y, x, c) is row n, byte c*1024 + y*32 + x of the official layout.
    test = batches[spec['test'][0]]
    n, y, x, c = 2, 5, 17, 1
    assert ds.test.images[n, y, x, c] == test[b'data'][n, c * 1024 + y * 32 + x]
    np.testing.assert_array_equal(ds.test.labels, test[spec['label_key']])
    assert ds.test.labels.dtype == np.int32
    all_x = np.concatenate([batches[f][b'data'] for f in spec['train']])
    train_idx, _ = d.train_val_indices(n_train, 3, 0)
    np.testing.assert_array_equal(
        ds.train.images, all_x[train_idx].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    )


def test_cifar_missing_lists_places(isolated):
    with pytest.raises(FileNotFoundError) as info:
        d.load_dataset('cifar10', data_dir=str(isolated / 'nowhere'), download=False)
    message = str(info.value)
    assert str(isolated / 'nowhere' / 'cifar-10-python.tar.gz') in message
    assert 'cifar-10-batches-py' in message and '--config.data_dir' in message


def _tiny_cifar_archive(directory, name='cifar10', n=4):
    """An archive in the official layout (protocol-2 pickles) with n images per batch file."""
    work = directory / 'build'
    batches = _write_cifar(work, name, as_archive=True)
    archive = work / cifar._CIFAR[name]['archive']
    target = directory / archive.name
    archive.rename(target)
    return target, batches


def test_cifar_download_from_local_server(isolated, http_dir, monkeypatch):
    root, url = http_dir
    archive, batches = _tiny_cifar_archive(root)
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    monkeypatch.setitem(cifar._CIFAR['cifar10'], 'md5', md5)
    ds = d.load_dataset('cifar10', val_examples=2, download_url=url)
    np.testing.assert_array_equal(ds.test.labels, batches['test_batch'][b'labels'])
    cache = isolated / 'cache' / 'jackpot_jax' / 'cifar10'
    assert os.listdir(cache) == ['cifar-10-python.tar.gz']  # no temporary file left
    # Found in the cache afterwards: no second download.
    again = d.load_dataset('cifar10', val_examples=2, download=False)
    np.testing.assert_array_equal(again.test.labels, ds.test.labels)


def test_cifar_download_md5_mismatch_names_both_sums_and_the_file(isolated, http_dir):
    root, url = http_dir
    archive, _ = _tiny_cifar_archive(root)
    served = hashlib.md5(archive.read_bytes()).hexdigest()
    official = cifar._CIFAR['cifar10']['md5']
    assert official == 'c58f30108f718f92721af3b95e74349a'  # the published sum
    with pytest.raises(errors.ChecksumError) as info:
        d.load_dataset('cifar10', download_url=url)
    message = str(info.value)
    assert served in message and official in message and 'cifar-10-python.tar.gz' in message
    cache = isolated / 'cache' / 'jackpot_jax' / 'cifar10'
    assert os.listdir(cache) == []
    assert cifar._CIFAR['cifar100']['md5'] == 'eb9058c3a382ffc7106e4002c42a8d85'


class _RunsCode:
    """Unpickling this calls os.mkdir(path): a stand-in for arbitrary code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


def test_cifar_pickle_that_would_run_code_is_refused_and_not_run(isolated):
    _write_cifar(isolated / 'data', 'cifar10', as_archive=False)
    folder = isolated / 'data' / 'cifar-10-batches-py'
    batch = pickle.loads((folder / 'data_batch_2').read_bytes(), encoding='bytes')
    batch[b'labels'] = _RunsCode(str(isolated / 'ran'))
    (folder / 'data_batch_2').write_bytes(pickle.dumps(batch, protocol=2))
    # The file is live: an ordinary unpickler runs it.
    pickle.loads((folder / 'data_batch_2').read_bytes(), encoding='bytes')
    assert (isolated / 'ran').is_dir()
    os.rmdir(isolated / 'ran')
    with pytest.raises(pickle.UnpicklingError) as info:
        d.load_dataset('cifar10', data_dir=str(isolated / 'data'), download=False)
    assert str(folder / 'data_batch_2') in str(info.value) and 'mkdir' in str(info.value)
    assert not (isolated / 'ran').exists()


def test_restricted_unpickler_admits_the_official_contents():
    array = np.arange(12, dtype=np.uint8).reshape(2, 6)
    obj = {b'a': [1, 2], b'b': b'bytes', 'c': 'str', b'data': array, b't': (1.5, None)}
    for protocol in (2, pickle.DEFAULT_PROTOCOL):
        back = cifar.restricted_loads(pickle.dumps(obj, protocol=protocol), 'x')
        np.testing.assert_array_equal(back[b'data'], array)
        assert back[b'a'] == [1, 2] and back['c'] == 'str'
    with pytest.raises(pickle.UnpicklingError, match='where.*collections.OrderedDict'):
        cifar.restricted_loads(pickle.dumps(collections.OrderedDict(a=1), protocol=2), 'where')

    class Rot13:
        def __reduce__(self):
            return (codecs.encode, ('text', 'rot13'))

    with pytest.raises(pickle.UnpicklingError, match='not a bytes literal'):
        cifar.restricted_loads(pickle.dumps(Rot13(), protocol=2), 'where')


# --------------------------------------------------------------------------------------
# batches


def _collect(ds, split, batch_size, **kwargs):
    return list(ip.iterate_batches(ds, split, batch_size, **kwargs))


def test_iterate_batches_train_drops_eval_keeps_remainder():
    ds = d.synthetic_dataset(n_train=20, n_test=10)
    train = _collect(ds, 'train', 8, train=True)
    assert [len(y) for _, y in train] == [8, 8]
    assert ip.num_batches(ds.train, 8, drop_remainder=True) == 2
    test = _collect(ds, 'test', 4, train=False)
    assert [len(y) for _, y in test] == [4, 4, 2]
    assert ip.num_batches(ds.test, 4, drop_remainder=False) == 3
    np.testing.assert_array_equal(np.concatenate([y for _, y in test]), ds.test.labels)
    x = np.concatenate([x for x, _ in test])
    expected = (ds.test.images / 255.0 - 0.5) / 0.289
    np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-5)
    assert x.dtype == np.float32 and test[0][1].dtype == np.int32
    with pytest.raises(ValueError, match='batch_size=32'):
        next(ip.iterate_batches(ds, 'train', 32, train=True))


def test_balanced_batch():
    ds = d.synthetic_dataset(num_classes=4, n_train=40)
    x, y = ip.balanced_batch(ds, 'train', per_class=3, seed=0)
    assert x.shape == (12, 28, 28, 1) and x.dtype == np.float32
    np.testing.assert_array_equal(y, np.repeat(np.arange(4), 3))
    x2, _ = ip.balanced_batch(ds, 'train', per_class=3, seed=0)
    np.testing.assert_array_equal(x, x2)
    with pytest.raises(ValueError, match='per_class=11'):
        ip.balanced_batch(ds, 'train', per_class=11, seed=0)


def test_synthetic_names():
    ds = d.load_dataset('synthetic:cifar100', train_subset=10, val_examples=3)
    assert ds.num_classes == 100 and ds.image_shape == (32, 32, 3) and ds.augment == 'crop_flip'
    assert (len(ds.train), len(ds.val), len(ds.test)) == (10, 3, 16)
    x, y = next(ip.iterate_batches(ds, 'train', 4, train=True))
    assert x.shape == (4, 32, 32, 3)
    assert d.load_dataset('synthetic').image_shape == (28, 28, 1)


# --------------------------------------------------------------------------------------
# ImageNet-style random-access sources


def _fake_source(sizes, num_classes, seed):
    rng = np.random.default_rng(seed)
    return [
        {
            'image': rng.integers(0, 256, (hh, ww, 3), dtype=np.uint8),
            'label': np.int64(i % num_classes),
        }
        for i, (hh, ww) in enumerate(sizes)
    ]


def test_center_crop_of_an_array_by_hand():
    image = np.broadcast_to(
        np.linspace(0, 255, 400).astype(np.uint8)[None, :, None], (300, 400, 3)
    ).copy()
    out = aug.center_crop(image, (224, 224))
    assert out.shape == (224, 224, 3)
    # 300x400 -> 256x341, centre crop columns 58..281 of 341: the middle column is the
    # middle of the image.
    assert abs(int(out[100, 112, 0]) - 128) <= 2
    assert abs(int(out[0, 0, 0]) - round(58 / 341 * 255)) <= 3


def test_tfds_path_with_fake_random_access_source(monkeypatch):
    train_src = _fake_source([(40, 60), (50, 30), (64, 64), (33, 47)] * 3, 3, seed=0)
    test_src = _fake_source([(70, 50), (45, 45), (30, 90)], 3, seed=1)
    calls = []

    def data_source(name, *, split, data_dir=None, download=True):
        calls.append((name, split, data_dir))
        return {'train': train_src, 'validation': test_src}[split]

    fake = types.ModuleType('tensorflow_datasets')
    fake.data_source = data_source
    monkeypatch.setitem(sys.modules, 'tensorflow_datasets', fake)
    ds = d.load_dataset('imagenet2012', data_dir='/prepared', val_examples=2, test_subset=2)
    assert ('imagenet2012', 'validation', '/prepared') in calls
    assert ds.image_shape == (224, 224, 3) and ds.augment == 'inception'
    assert (len(ds.train), len(ds.val), len(ds.test)) == (10, 2, 2)
    assert len(np.intersect1d(ds.train.indices, ds.val.indices)) == 0

    x, y = next(ip.iterate_batches(ds, 'train', 3, train=True, seed=0, epoch=1))
    assert x.shape == (3, 224, 224, 3) and x.dtype == np.float32 and y.dtype == np.int32
    epoch = _collect(ds, 'train', 3, train=True, seed=0, epoch=1)
    train_labels = sorted(int(train_src[i]['label']) for i in ds.train.indices)
    seen = sorted(int(v) for _, yy in epoch for v in yy)  # 9 of the 10, each at most once
    assert len(seen) == 9 and all(seen.count(v) <= train_labels.count(v) for v in set(seen))
    x_again, _ = next(ip.iterate_batches(ds, 'train', 3, train=True, seed=0, epoch=1))
    np.testing.assert_array_equal(x, x_again)
    test = _collect(ds, 'test', 4, train=False)
    assert len(test) == 1 and test[0][0].shape == (2, 224, 224, 3)
    expected = reading.normalize(ds, aug.center_crop(test_src[0]['image'], (224, 224))[None])
    np.testing.assert_array_equal(test[0][0][:1], expected)


class _BatchedSource:
    """Mimics tfds data sources, which also offer `__getitems__` for batched reads."""

    def __init__(self, records):
        self.records, self.batched_reads = records, 0

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        return self.records[i]

    def __getitems__(self, keys):
        self.batched_reads += 1
        return [self.records[k] for k in keys]


def test_source_batched_reads():
    src = _BatchedSource(_fake_source([(20, 24), (24, 20)] * 4, 2, seed=3))
    ds = d.dataset_from_sources(
        'fake', src, src, num_classes=2, image_shape=(16, 16, 3), val_examples=2
    )
    batches = _collect(ds, 'val', 4, train=False)
    assert src.batched_reads == 1
    np.testing.assert_array_equal(batches[0][1], [src.records[i]['label'] for i in ds.val.indices])


def test_source_balanced_batch_reads_labels_from_records():
    src = _fake_source([(20, 24)] * 12, 3, seed=2)
    ds = d.dataset_from_sources(
        'fake', src, src[:3], num_classes=3, image_shape=(16, 16, 3), val_examples=0
    )
    x, y = ip.balanced_batch(ds, 'train', per_class=2, seed=0)
    assert x.shape == (6, 16, 16, 3)
    np.testing.assert_array_equal(y, [0, 0, 1, 1, 2, 2])


def test_tfds_missing_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, 'tensorflow_datasets', None)  # import fails
    with pytest.raises(ImportError, match='tensorflow-datasets'):
        d.load_dataset('imagenet2012')


def test_tfds_not_prepared_is_a_clear_error(monkeypatch):
    def data_source(name, **kwargs):
        raise AssertionError('Dataset imagenet2012: could not find data')

    fake = types.ModuleType('tensorflow_datasets')
    fake.data_source = data_source
    monkeypatch.setitem(sys.modules, 'tensorflow_datasets', fake)
    with pytest.raises(FileNotFoundError, match='tfds build imagenet2012'):
        d.load_dataset('imagenet2012', data_dir='/x', download=False)
