"""Benchmark: host input pipeline throughput, and the training loop against its bare step.

Run from the repository root::

    python benchmarks/bench_input.py --json results/bench_input.json      # CPU table, < 5 min
    python benchmarks/bench_input.py --only resnet32 --json FILE          # the GPU check

Parts (`--only`, repeatable; default cifar, imagenet, lenet):

* cifar: CIFAR RandomCrop(32, pad 4) + flip on 32x32x3 uint8 arrays in memory (the train
  path), batch 256, for 0 (main process), 1, 2 and all worker processes.
* imagenet: a temporary `imagenet_folder` of synthetic photo-like JPEGs (about 500x375 and
  near it, quality 90, ~100 KB like ImageNet's), read + decode + RandomResizedCrop(224) +
  flip (train path) and decode + Resize(256) + CenterCrop(224) (eval path), batch 64, for
  0, 1, 2 and all workers.

Both host paths stop at uint8 batches, as the training loop uses them: the loop normalises
on the device (`core.batch_to_mesh`).
* lenet: the real training loop (`pipeline.loop.train_loop`, Caffe LeNet-5, dense SGD, batch
  256, on in-memory 28x28 data, 3 epochs) with device prefetch (2) and without (0), against
  the bare jitted step (the loop's own) called on one batch already on the device, timed
  before and after the loops: the median img/s of epochs 2-3 (the first compiles) over the
  mean of the two bare runs.
* resnet32: the same for ResNet-32x2 on synthetic CIFAR (`--resnet32-train` images, batch
  128): on a GPU this is the check that an epoch takes within 10% of its bare steps.

img/s is counted from the first batch on (worker start-up excluded: it is printed apart).
Each row: {"dataset", "path", "workers", "batch", "img_per_s"} (+ details); the JSON file also
records the command, commit, device, CPU count and load average.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import platform
import resource
import sys
import tempfile
import time

import common  # puts the repository on sys.path
import numpy as np
import psutil

from jackpot_jax.data import datasets as data_lib
from jackpot_jax.data import input_pipeline as ip

TARGETS = {
    'imagenet_train_per_worker': 300.0,  # img/s of one worker
    'imagenet_2_workers_speedup': 1.7,  # 2 workers / 1 worker
    'cifar_img_per_s': 40000.0,
    'loop_vs_bare': 0.90,  # loop img/s / bare-step img/s
}


def cpu_seconds() -> float:
    """CPU time of this process and its children (grain's workers) so far: live ones and, from
    the kernel's per-process accounting, those that have exited and been waited for (a worker
    that ends inside a timed span would otherwise take its CPU time with it)."""
    me = psutil.Process()
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = sum(me.cpu_times()[:2]) + reaped.ru_utime + reaped.ru_stime
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return total


def measure(batches, min_seconds: float, min_batches: int = 5):
    """Timed from the first batch on: dict(img/s wall, img per CPU-second, start-up s, batches).

    img per CPU-second counts the CPU time of this process and the workers: on a shared
    machine it is the throughput of one free core, whatever the load.
    """
    it = iter(batches)
    t0 = time.perf_counter()
    first = next(it)
    t1, c1 = time.perf_counter(), cpu_seconds()
    n_img, n = 0, 0
    for b in it:
        n_img += len(b['label'])
        n += 1
        if time.perf_counter() - t1 >= min_seconds and n >= min_batches:
            break
    t2, c2 = time.perf_counter(), cpu_seconds()
    if hasattr(it, 'close'):
        it.close()
    del first
    return dict(
        img_per_s=n_img / (t2 - t1),
        img_per_cpu_s=n_img / max(c2 - c1, 1e-9),
        startup_s=t1 - t0,
        batches=n,
    )


def _rounded(m):
    return dict(
        img_per_s=round(m['img_per_s'], 1),
        img_per_cpu_s=round(m['img_per_cpu_s'], 1),
        startup_s=round(m['startup_s'], 2),
        batches=m['batches'],
    )


def _print_row(name, path, workers, batch, m):
    print(
        f"{name:9s} {path:5s}  workers={workers}  batch={batch:3d}  {m['img_per_s']:9.1f} "
        f"img/s  {m['img_per_cpu_s']:9.1f} img/CPU-s  (first batch after "
        f"{m['startup_s']:.1f} s, {m['batches']} batches)",
        flush=True,
    )


def worker_counts():
    return sorted({0, 1, 2, ip.default_workers()})


# --------------------------------------------------------------------------------------
# CIFAR


def bench_cifar(args, rows):
    rng = np.random.default_rng(0)
    n = args.cifar_examples
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    split = data_lib.Split(images, (np.arange(n) % 10).astype(np.int32))
    ds = data_lib.Dataset(
        'cifar10',
        10,
        (32, 32, 3),
        split,
        split,
        split,
        data_lib.CIFAR_MEAN,
        data_lib.CIFAR_STD,
        'crop_flip',
    )
    for workers in worker_counts():
        batches = ip.train_batches(
            ds, 256, seed=0, epochs=range(100), workers=workers, normalize=False
        )
        m = measure(batches, args.seconds)
        rows.append(
            dict(dataset='cifar10', path='train', workers=workers, batch=256, **_rounded(m))
        )
        _print_row('cifar10', 'train', workers, 256, m)


# --------------------------------------------------------------------------------------
# ImageNet from a folder of JPEGs


def synthetic_photo(h, w, rng):
    """Smooth colour fields, edges and texture: JPEG sizes like ImageNet's (~110 KB)."""
    from PIL import Image

    small = rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8)
    image = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), np.float32)
    image += rng.normal(0, 16, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_jpeg_folder(root, n_train, n_val, classes=10, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    sizes = []
    for split, n in (('train', n_train), ('val', n_val)):
        for i in range(n):
            h, w = (
                (375, 500)
                if rng.random() < 0.6
                else (int(rng.integers(300, 501)), int(rng.integers(300, 501)))
            )
            if rng.random() < 0.3:
                h, w = w, h  # portrait
            folder = os.path.join(root, split, f'n{i % classes:08d}')
            os.makedirs(folder, exist_ok=True)
            buf = io.BytesIO()
            Image.fromarray(synthetic_photo(h, w, rng)).save(buf, 'JPEG', quality=90)
            with open(os.path.join(folder, f'{i:06d}.JPEG'), 'wb') as f:
                f.write(buf.getvalue())
            sizes.append(len(buf.getvalue()))
    return float(np.mean(sizes))


def bench_imagenet(args, rows):
    with tempfile.TemporaryDirectory() as root:
        t0 = time.time()
        mean_bytes = write_jpeg_folder(root, args.imagenet_files, args.imagenet_files // 2)
        print(
            f'wrote {args.imagenet_files + args.imagenet_files // 2} JPEGs (mean '
            f'{mean_bytes / 1e3:.0f} KB) in {time.time() - t0:.1f} s',
            flush=True,
        )
        ds = data_lib.load_dataset('imagenet_folder', data_dir=root, val_examples=0)
        batch = 64
        for path in ('train', 'eval'):
            for workers in worker_counts():
                if path == 'train':
                    batches = ip.train_batches(
                        ds, batch, seed=0, epochs=range(50), workers=workers, normalize=False
                    )
                else:
                    batches = ip.loader(
                        [
                            ip.split_batches(
                                ds, 'test', batch, train=False, pad=True, normalize=False
                            )
                        ]
                        * 50,
                        workers,
                    )
                m = measure(batches, args.seconds)
                rows.append(
                    dict(
                        dataset='imagenet_folder',
                        path=path,
                        workers=workers,
                        batch=batch,
                        **_rounded(m),
                        mean_jpeg_kb=round(mean_bytes / 1e3, 1),
                    )
                )
                _print_row('imagenet', path, workers, batch, m)


# --------------------------------------------------------------------------------------
# Training loop against the bare step


def bench_loop(args, rows, *, name, model, dataset, n_train, batch, epochs=3):
    import jax

    from jackpot_jax import core, utils
    from jackpot_jax.pipeline import config as config_lib
    from jackpot_jax.pipeline import loop, sources

    ds = data_lib.load_dataset(
        f'synthetic:{dataset}', train_subset=n_train, val_examples=16, test_subset=16
    )
    config = config_lib.base_config()
    config.model, config.dataset, config.batch_size = model, f'synthetic:{dataset}', batch
    config.eval_batch_size = 16
    config.data_workers = 0
    config.pretrain.epochs = epochs
    config.pretrain.lr = 0.01  # random labels: 0.1 diverges; the speed does not depend on it
    mesh = core.make_mesh()
    module, variables, _ = sources.init_model(config, ds, 0)
    variables = utils.as_numpy(variables)  # host copies: the steps donate their inputs
    spe = n_train // batch

    # One step for both: the loop's, and the bare one on one batch already on the mesh.
    tx, schedule = core.make_optimizer(config.pretrain, epochs, spe)
    step = core.make_train_step(
        module.apply,
        tx,
        label_smoothing=config.label_smoothing,
        options=core.compute_options(config),
    )
    x, y = next(ip.iterate_batches(ds, 'train', batch, train=True))
    x, y = core.shard_batch(mesh, (x, y))

    def fresh_state():
        return core.SearchState.create(
            apply_fn=module.apply,
            params=variables['params'],
            tx=tx,
            batch_stats=utils.batch_stats_of(variables),
        )

    def bare_rate():
        state = core.replicate(mesh, utils.as_numpy(fresh_state()))
        state, m = step(state, x, y)  # compiled on the first call
        jax.block_until_ready(m)
        t0 = time.perf_counter()
        for _ in range(spe):
            state, m = step(state, x, y)
        jax.block_until_ready((state, m))
        return spe * batch / (time.perf_counter() - t0)

    def loop_rates(prefetch):
        config.data_prefetch = prefetch
        with tempfile.TemporaryDirectory() as workdir:
            loop.train_loop(
                config=config,
                workdir=workdir,
                module=module,
                ds=ds,
                mesh=mesh,
                state=fresh_state(),
                step=step,
                schedule=schedule,
                opt_cfg=config.pretrain,
                epochs=epochs,
                seed=0,
                label='pretrain',
                eval_variables=lambda s: utils.variables_of(s.params, s.batch_stats),
            )
            with open(os.path.join(workdir, 'metrics.jsonl')) as f:
                records = [json.loads(line) for line in f]
        return [r['train_images_per_second'] for r in records[1:]]  # the first compiles

    # Interleaved (bare, loops, bare) so that a change of the machine's load hits both.
    bare = [bare_rate()]
    loops = {prefetch: loop_rates(prefetch) for prefetch in (2, 0)}
    bare.append(bare_rate())
    bare_mean = float(np.mean(bare))
    rows.append(
        dict(
            dataset=dataset,
            path=f'{name} bare step',
            workers=0,
            batch=batch,
            img_per_s=round(bare_mean, 1),
            runs=[round(b, 1) for b in bare],
            steps=spe,
        )
    )
    print(
        f'{name:9s} bare step                    batch={batch}  {bare_mean:10.1f} img/s  '
        f'(runs before/after the loops: {bare[0]:.1f}, {bare[1]:.1f})',
        flush=True,
    )
    for prefetch, rates in loops.items():
        rate = float(np.median(rates))
        rows.append(
            dict(
                dataset=dataset,
                path=f'{name} loop, prefetch {prefetch}',
                workers=0,
                batch=batch,
                img_per_s=round(rate, 1),
                epochs=[round(r, 1) for r in rates],
                vs_bare=round(rate / bare_mean, 3),
            )
        )
        print(
            f'{name:9s} loop, prefetch {prefetch}             batch={batch}  {rate:10.1f} '
            f'img/s  ({rate / bare_mean:.3f} of the bare step; epochs 2-{epochs}: '
            f'{", ".join(f"{r:.1f}" for r in rates)})',
            flush=True,
        )


# --------------------------------------------------------------------------------------


def provenance(argv):
    """The JSON file's record of the run (the header's facts, from `common.provenance`)."""
    import jax

    commit, dirty = common.provenance.git_state()
    return {
        'command': 'python ' + ' '.join(argv),
        'commit': commit,
        'dirty': dirty,
        'date': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'device': str(jax.devices()[0].device_kind),
        'backend': jax.default_backend(),
        'cpu_count': ip.default_workers(),
        'python': platform.python_version(),
        'jax': jax.__version__,
        'load_average_at_start': common.provenance.load_average(),
    }


def summary(rows):
    def get(dataset, path, workers, key='img_per_s'):
        for r in rows:
            if r['dataset'] == dataset and r['path'] == path and r['workers'] == workers:
                return r[key]
        return None

    def verdict(value, target):
        return 'met' if value >= target else 'NOT met'

    lines = []
    one, two = get('imagenet_folder', 'train', 1), get('imagenet_folder', 'train', 2)
    one_cpu = get('imagenet_folder', 'train', 1, 'img_per_cpu_s')
    target = TARGETS['imagenet_train_per_worker']
    if one:
        lines.append(
            f'imagenet train, 1 worker: {one:.0f} img/s wall, {one_cpu:.0f} img per '
            f'CPU-second (target >= {target:.0f}: wall {verdict(one, target)}, per '
            f'CPU-second {verdict(one_cpu, target)})'
        )
    if one and two:
        target = TARGETS['imagenet_2_workers_speedup']
        lines.append(
            f'imagenet train, 2 workers / 1 worker (wall): {two / one:.2f}x (target >= '
            f'{target}: {verdict(two / one, target)})'
        )
    cifar = [r for r in rows if r['dataset'] == 'cifar10' and r['path'] == 'train']
    if cifar:
        best = max(cifar, key=lambda r: r['img_per_s'])
        target = TARGETS['cifar_img_per_s']
        lines.append(
            f"cifar10 train, best: {best['img_per_s']:.0f} img/s wall with "
            f"{best['workers']} workers (target >= {target:.0f}: "
            f"{verdict(best['img_per_s'], target)})"
        )
    for r in rows:
        if 'vs_bare' in r and 'prefetch 2' in r['path']:
            target = TARGETS['loop_vs_bare']
            lines.append(
                f"{r['path']}: {r['vs_bare']:.3f} of the bare step (target >= "
                f"{target}: {verdict(r['vs_bare'], target)})"
            )
    return lines


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--json', help='write the rows and provenance here')
    p.add_argument(
        '--only',
        action='append',
        choices=('cifar', 'imagenet', 'lenet', 'resnet32'),
        help='parts to run (repeatable; default: cifar, imagenet, lenet)',
    )
    p.add_argument('--seconds', type=float, default=10.0, help='timed seconds per cell')
    p.add_argument('--cifar-examples', type=int, default=20000)
    p.add_argument(
        '--imagenet-files',
        type=int,
        default=256,
        help='training JPEGs written (plus half as many for val/)',
    )
    p.add_argument('--lenet-train', type=int, default=4096)
    p.add_argument('--resnet32-train', type=int, default=45056)
    p.add_argument('--resnet32-batch', type=int, default=128)
    args = p.parse_args(argv)
    parts = args.only or ['cifar', 'imagenet', 'lenet']
    info = provenance([sys.argv[0], *argv])
    print(json.dumps(info), flush=True)
    rows = []
    t0 = time.time()
    if 'cifar' in parts:
        bench_cifar(args, rows)
    if 'imagenet' in parts:
        bench_imagenet(args, rows)
    if 'lenet' in parts:
        bench_loop(
            args,
            rows,
            name='lenet5',
            model='lenet5',
            dataset='fashion_mnist',
            n_train=args.lenet_train,
            batch=256,
        )
    if 'resnet32' in parts:
        bench_loop(
            args,
            rows,
            name='resnet32',
            model='resnet32',
            dataset='cifar10',
            n_train=args.resnet32_train,
            batch=args.resnet32_batch,
        )
    info['seconds'] = round(time.time() - t0, 1)
    info['load_average_at_end'] = common.provenance.load_average()
    lines = summary(rows)
    print('\n'.join(lines))
    print(f"total {info['seconds']} s", flush=True)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, 'w') as f:
            json.dump({'provenance': info, 'rows': rows, 'summary': lines}, f, indent=1)


if __name__ == '__main__':
    common.start('bench_input', xla_flags=False)
    main()
