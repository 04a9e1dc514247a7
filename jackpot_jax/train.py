"""The pipeline: pretrain, lottery-jackpot search, fine-tune (Eq. 9) and evaluate.

`run(config, workdir)` is the entry point (`jackpot_jax.main` is a thin absl wrapper).
Every mode trains with one jitted, data-parallel step over a `Mesh` ('data' axis: batch
sharded, state replicated, BatchNorm statistics over the global batch), checkpoints with
orbax each epoch and resumes from the newest complete checkpoint.

What a run leaves in its workdir:
  metrics.jsonl   one line per epoch
  summary.json    the run's result (see `_summary`)
  jackpot.npz     (search, finetune) masks/<path>, params/<path>, batch_stats/<path>, meta
  model/          a checkpoint directory `checkpoint.load_model` reads (dense or masked weights)
  checkpoints/    orbax steps, one per epoch, for resume
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jackpot_jax import checkpoint as ckpt_lib
from jackpot_jax import data as data_lib
from jackpot_jax import models
from jackpot_jax import sparsity as sp

MODES = ("pretrain", "search", "finetune", "eval")
WARMUPS = ("magnitude", "snip", "grasp", "random", "kaiming")


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------


def _log(msg: str) -> None:
    if jax.process_index() == 0:
        print(msg, flush=True)


def _write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=_json_default)
    os.replace(tmp, path)


def _json_default(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, (np.ndarray, jax.Array)):
        return np.asarray(x).tolist()
    raise TypeError(f"not JSON serialisable: {type(x)}")


def _as_numpy(tree):
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)


def prune_filter(config) -> sp.FilterFn:
    include = list(config.prune.include) or None
    exclude = list(config.prune.exclude)
    return sp.make_filter(include=include, exclude=exclude)


def cosine_per_epoch(lr: float, epochs: int, steps_per_epoch: int) -> optax.Schedule:
    """Cosine from ``lr`` to 0 stepped once per epoch, no warm-up (the official schedule)."""
    def schedule(step):
        epoch = jnp.minimum(step // steps_per_epoch, epochs)
        return 0.5 * lr * (1.0 + jnp.cos(jnp.pi * epoch / max(epochs, 1)))
    return schedule


def make_optimizer(opt_cfg, epochs: int, steps_per_epoch: int):
    """(optimizer, schedule): torch-style SGD: weight decay added to the gradient, then momentum (no Nesterov)."""
    schedule = cosine_per_epoch(opt_cfg.lr, epochs, steps_per_epoch)
    return optax.chain(
        optax.add_decayed_weights(opt_cfg.weight_decay),
        optax.sgd(schedule, momentum=opt_cfg.momentum or None, nesterov=opt_cfg.nesterov),
    ), schedule


def cross_entropy(logits, labels, label_smoothing: float = 0.0):
    num_classes = logits.shape[-1]
    onehot = jax.nn.one_hot(labels, num_classes)
    if label_smoothing:
        onehot = optax.smooth_labels(onehot, label_smoothing)
    return optax.softmax_cross_entropy(logits, onehot).mean()


# ---------------------------------------------------------------------------------------------
# Devices
# ---------------------------------------------------------------------------------------------


def make_mesh(num_devices: int | None = None) -> Mesh:
    devices = jax.devices()
    if num_devices:
        if num_devices > len(devices):
            raise ValueError(f"num_devices={num_devices} but only {len(devices)} devices exist")
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices), ("data",))


def check_batch(batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
    n = mesh.devices.size
    if batch_size % n:
        raise ValueError(f"{what}={batch_size} does not split across the {n} devices; use a "
                         f"multiple of {n} (e.g. {max(n, batch_size // n * n)})")


def shard_batch(mesh: Mesh, batch):
    """Global numpy batch -> arrays sharded along 'data' (this process supplies its slice)."""
    sharding = NamedSharding(mesh, P("data"))
    nproc, pid = jax.process_count(), jax.process_index()

    def put(x):
        per = x.shape[0] // nproc
        local = x[pid * per:(pid + 1) * per]
        return jax.make_array_from_process_local_data(sharding, local, x.shape)

    return jax.tree.map(put, batch)


def replicate(mesh: Mesh, tree):
    return jax.device_put(tree, NamedSharding(mesh, P()))


# ---------------------------------------------------------------------------------------------
# Training state and steps
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TrainState:
    """What must survive a crash. ``trainable`` is the params (pretrain/finetune) or the
    scores (search); ``frozen`` inputs are not part of the state."""
    step: jax.Array
    trainable: Any
    opt_state: Any
    batch_stats: Any
    rng: jax.Array


jax.tree_util.register_dataclass(
    TrainState, data_fields=["step", "trainable", "opt_state", "batch_stats", "rng"],
    meta_fields=[])


def make_train_step(module, kind: str, tx, budget=None, use_abs: bool = True,
                    label_smoothing: float = 0.0):
    """One jitted SGD step. ``kind``: 'dense' (trainable = params), 'search' (trainable =
    scores, frozen = pre-trained params) or 'masked' (trainable = params, frozen = masks)."""

    def effective_params(trainable, frozen):
        if kind == "dense":
            return trainable
        if kind == "search":
            return sp.masked_params(frozen, trainable, budget, use_abs=use_abs)
        return sp.apply_masks(trainable, frozen)

    def step(state: TrainState, frozen, images, labels):
        dropout_rng = jax.random.fold_in(state.rng, state.step)

        def loss_fn(trainable):
            variables = {"params": effective_params(trainable, frozen)}
            if state.batch_stats is not None:
                variables["batch_stats"] = state.batch_stats
            logits, updates = module.apply(variables, images, train=True,
                                           mutable=["batch_stats"],
                                           rngs={"dropout": dropout_rng})
            loss = cross_entropy(logits, labels, label_smoothing)
            return loss, (logits, updates.get("batch_stats", state.batch_stats))

        (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.trainable)
        updates, opt_state = tx.update(grads, state.opt_state, state.trainable)
        trainable = optax.apply_updates(state.trainable, updates)
        acc = jnp.mean(jnp.argmax(logits, -1) == labels)
        new = TrainState(state.step + 1, trainable, opt_state, batch_stats, state.rng)
        return new, {"loss": loss, "accuracy": acc}

    return jax.jit(step, donate_argnums=(0,))


@functools.lru_cache(maxsize=16)
def make_eval_step(module):
    """Jitted eval step, one per module (cached: evaluation runs every epoch)."""
    @jax.jit
    def step(variables, images, labels, weights):
        logits = module.apply(variables, images, train=False)
        logp = jax.nn.log_softmax(logits)
        nll = -jnp.take_along_axis(logp, labels[:, None], axis=1)[:, 0]
        top1 = jnp.argmax(logits, -1) == labels
        k = min(5, logits.shape[-1])
        topk = jnp.any(jax.lax.top_k(logits, k)[1] == labels[:, None], axis=-1)
        return {"loss": jnp.sum(nll * weights), "top1": jnp.sum(top1 * weights),
                "top5": jnp.sum(topk * weights), "count": jnp.sum(weights)}
    return step


def evaluate(module, variables, ds, split: str, batch_size: int, mesh: Mesh) -> dict:
    """Top-1 (and top-5 where classes > 5) accuracy and mean loss over a whole split."""
    check_batch(batch_size, mesh, "eval_batch_size")
    step = make_eval_step(module)
    variables = replicate(mesh, variables)
    totals = None
    for images, labels in data_lib.iterate_batches(ds, split, batch_size, train=False):
        n = len(labels)
        weights = np.zeros(batch_size, np.float32)
        weights[:n] = 1.0
        if n < batch_size:  # pad to one shape: one compilation
            images = np.concatenate([images, np.zeros((batch_size - n,) + images.shape[1:],
                                                      images.dtype)])
            labels = np.concatenate([labels, np.zeros(batch_size - n, labels.dtype)])
        out = step(variables, *shard_batch(mesh, (images, labels, weights)))
        out = jax.device_get(out)
        totals = out if totals is None else {k: totals[k] + out[k] for k in out}
    if totals is None:
        raise ValueError(f"the {split} split is empty")
    count = float(totals["count"])
    res = {"accuracy": float(totals["top1"]) / count, "loss": float(totals["loss"]) / count,
           "examples": int(count)}
    if ds.num_classes > 5:
        res["top5"] = float(totals["top5"]) / count
    return res


# ---------------------------------------------------------------------------------------------
# Checkpoints (orbax) with resume
# ---------------------------------------------------------------------------------------------


class Checkpointer:
    """Orbax `CheckpointManager` over the flat leaves of a `TrainState`.

    Leaves are saved by index (score trees hold ``None`` leaves, which a flat list does not
    need); the structure comes back from a template state built the same way.
    """

    def __init__(self, directory: str, max_to_keep: int = 2):
        self.mgr = ocp.CheckpointManager(
            os.path.abspath(directory),
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

    def save(self, epoch: int, state: TrainState) -> None:
        leaves = jax.tree.leaves(_as_numpy(state))
        self.mgr.save(epoch, args=ocp.args.StandardSave({str(i): x for i, x in enumerate(leaves)}))

    def restore_latest(self, template: TrainState) -> tuple[int, TrainState] | None:
        """(epoch, state) of the newest readable step, trying older ones if the newest is
        damaged (a kill while orbax deletes an old step can leave one half-deleted)."""
        leaves, treedef = jax.tree.flatten(_as_numpy(template))
        target = {str(i): x for i, x in enumerate(leaves)}
        for step in sorted(self.mgr.all_steps(), reverse=True):
            try:
                got = self.mgr.restore(step, args=ocp.args.StandardRestore(target))
            except Exception as e:  # noqa: BLE001 - any unreadable step: fall back to an older one
                _log(f"checkpoint step {step} unreadable ({type(e).__name__}: {e}); trying older")
                continue
            return step, jax.tree.unflatten(treedef, [got[str(i)] for i in range(len(leaves))])
        return None

    def close(self) -> None:
        self.mgr.wait_until_finished()
        self.mgr.close()


# ---------------------------------------------------------------------------------------------
# Building blocks shared by the modes
# ---------------------------------------------------------------------------------------------


def load_data(config) -> data_lib.Dataset:
    ds = data_lib.load_dataset(
        config.dataset, data_dir=config.data_dir or None, val_examples=config.val_examples,
        split_seed=config.split_seed, train_subset=config.train_subset or None,
        test_subset=config.test_subset or None)
    if config.image_size:
        if ds.augment != "inception":
            raise ValueError(f"image_size={config.image_size} applies only to ImageNet-style "
                             f"data (resized crops); {config.dataset!r} has fixed-size images")
        # Crop size of RandomResizedCrop / centre crop (eval resizes to 256/224 of it).
        ds = dataclasses.replace(ds, image_shape=(config.image_size, config.image_size,
                                                  ds.image_shape[2]))
    return ds


def model_options(config, ds) -> dict:
    opts = dict(config.model_options)
    opts["num_classes"] = ds.num_classes
    return opts


def init_model(config, ds, seed: int):
    opts = model_options(config, ds)
    module = models.get_model(config.model, **opts)
    # Jitted: an eager init of ResNet-50 compiles hundreds of small programs.
    variables = jax.jit(models.init_variables, static_argnums=(0, 2))(
        module, jax.random.key(seed), (1, *ds.image_shape))
    return module, variables, opts


def _batch_stats(variables):
    return variables.get("batch_stats") or None


def _variables(params, batch_stats):
    v = {"params": params}
    if batch_stats is not None:
        v["batch_stats"] = batch_stats
    return v


class MetricsLog:
    """metrics.jsonl, one line per epoch; lines past a resumed epoch are dropped."""

    def __init__(self, path: str, resume_epoch: int):
        self.path = path
        lines = []
        if os.path.exists(path):
            with open(path) as f:
                lines = [ln for ln in f if ln.strip() and json.loads(ln)["epoch"] <= resume_epoch]
        with open(path, "w") as f:
            f.writelines(lines)
        self.records = [json.loads(ln) for ln in lines]

    def append(self, record: dict) -> None:
        self.records.append(record)
        if jax.process_index() == 0:
            with open(self.path, "a") as f:
                f.write(json.dumps(record, default=_json_default) + "\n")


def train_loop(*, config, workdir: str, module, ds, mesh: Mesh, kind: str, trainable, frozen,
               batch_stats, opt_cfg, epochs: int, seed: int, budget=None,
               epoch_hook: Callable[[int, TrainState], dict] | None = None,
               eval_params: Callable[[TrainState], Any]) -> tuple[TrainState, MetricsLog]:
    """Epoch loop shared by every mode: train, validate, checkpoint, log, resume."""
    batch_size = config.batch_size
    check_batch(batch_size, mesh)
    spe = data_lib.num_batches(ds.train, batch_size, drop_remainder=True)
    if spe == 0:
        raise ValueError(f"train split has {len(ds.train)} examples, fewer than "
                         f"batch_size={batch_size}")
    tx, schedule = make_optimizer(opt_cfg, epochs, spe)
    state = TrainState(step=jnp.zeros((), jnp.int32), trainable=trainable,
                       opt_state=tx.init(trainable), batch_stats=batch_stats,
                       rng=jax.random.key_data(jax.random.key(seed)))
    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    start = 0
    restored = ckpt.restore_latest(state)
    if restored is not None:
        start, state = restored
        _log(f"resuming {workdir} from epoch {start}")
    log = MetricsLog(os.path.join(workdir, "metrics.jsonl"), start)
    step_fn = make_train_step(module, kind, tx, budget=budget,
                              use_abs=config.search.use_abs,
                              label_smoothing=config.label_smoothing)
    # Host copies first: the step donates the state, which must not free the caller's arrays.
    state = replicate(mesh, _as_numpy(state))
    frozen = replicate(mesh, frozen)
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None
    for epoch in range(start, epochs):
        t0 = time.time()
        lr = float(schedule(epoch * spe))
        sums = {"loss": 0.0, "accuracy": 0.0}
        batches = data_lib.iterate_batches(ds, "train", batch_size, train=True, seed=seed,
                                           epoch=epoch)
        bar = tqdm(total=spe, desc=f"{kind} epoch {epoch + 1}/{epochs}", leave=False,
                   disable=None) if tqdm else None
        for i, (images, labels) in enumerate(batches):
            state, m = step_fn(state, frozen, *shard_batch(mesh, (images, labels)))
            if bar is not None and (i % 10 == 0 or i == spe - 1):
                m = jax.device_get(m)
                bar.set_postfix(loss=f"{float(m['loss']):.3f}",
                                img_s=f"{(i + 1) * batch_size / (time.time() - t0):.0f}")
            if bar is not None:
                bar.update(1)
            sums = jax.tree.map(lambda a, b: a + b, sums, m)
        if bar is not None:
            bar.close()
        sums = jax.device_get(sums)
        train_seconds = time.time() - t0
        loss = float(sums["loss"]) / spe
        if not math.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {loss} in epoch {epoch + 1}; "
                                     f"lower the learning rate ({opt_cfg.lr})")
        val = evaluate(module, eval_params(state), ds, "val", config.eval_batch_size, mesh) \
            if len(ds.val) else {}
        record = {"epoch": epoch + 1, "loss": loss, "train_accuracy": float(sums["accuracy"]) / spe,
                  "val_accuracy": val.get("accuracy"), "val_loss": val.get("loss"),
                  "learning_rate": lr, "seconds": time.time() - t0,
                  "train_images_per_second": spe * batch_size / train_seconds}
        if epoch_hook is not None:
            record.update(epoch_hook(epoch + 1, state))
        ckpt.save(epoch + 1, state)
        log.append(record)
        _log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in record.items() if v is not None))
    ckpt.close()
    return state, log


# ---------------------------------------------------------------------------------------------
# Masks: budgets, criteria and warm-up
# ---------------------------------------------------------------------------------------------


def criterion_importance(name: str, config, module, variables, ds, seed: int, filter_fn):
    """Importance scores (larger = keep) of one criterion on the given weights."""
    params, batch_stats = variables["params"], _batch_stats(variables)
    if name == "magnitude":
        return sp.magnitude_scores(params, filter_fn)
    if name == "random":
        return sp.random_scores(jax.random.key(seed + 7919), params, filter_fn)

    def logits_fn(p, x):
        # Train mode (batch statistics), as SNIP/GraSP compute on a mini-batch; stats discarded.
        out, _ = module.apply(_variables(p, batch_stats), x, train=True,
                              mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})
        return out

    if name == "snip":
        batches = []
        it = data_lib.iterate_batches(ds, "train", config.batch_size, train=True, seed=seed,
                                      epoch=10_000)
        for _ in range(config.criteria.snip_batches):
            batches.append(next(it))
        return sp.snip_scores(sp.temperature_loss(logits_fn, 1.0), params, batches, filter_fn)
    if name == "grasp":
        x, y = data_lib.balanced_batch(ds, "train", config.criteria.grasp_per_class, seed)
        half = len(y) // 2  # the GraSP code splits its balanced sample in two halves
        order = np.random.default_rng(seed).permutation(len(y))
        x, y = x[order], y[order]
        batches = [(x[:half], y[:half]), (x[half:], y[half:])]
        loss = sp.temperature_loss(logits_fn, config.criteria.grasp_temperature)
        return sp.grasp_scores(loss, params, batches, filter_fn)
    raise ValueError(f"criterion={name!r}; expected one of {sp.CRITERIA}")


def budget_for(config, params, filter_fn):
    return sp.keep_counts(params, config.sparsity, config.search.distribution,
                          filter_fn=filter_fn)


def criterion_mask(name: str, config, module, variables, ds, seed, filter_fn, budget):
    importance = criterion_importance(name, config, module, variables, ds, seed, filter_fn)
    return sp.criterion_mask(importance, budget)


# ---------------------------------------------------------------------------------------------
# Modes
# ---------------------------------------------------------------------------------------------


def _dense_source(config, workdir: str, ds, mesh):
    """(module, variables, options, checkpoint dir) of the pre-trained model: the configured
    checkpoint, or a cached `pretrain` run in workdir/pretrain (run now if missing)."""
    path = config.pretrained
    if not path:
        path = os.path.join(workdir, "pretrain", "model")
        if not os.path.isdir(path):
            _log(f"no --config.pretrained given: pretraining first into {os.path.dirname(path)}")
            run_pretrain(config, os.path.dirname(path), ds=ds, mesh=mesh)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"pretrained={path!r} is not a checkpoint directory (expected a "
                                "directory written by `pretrain` or tools/convert_torch_weights.py)")
    module, variables = ckpt_lib.load_model(path)
    info = ckpt_lib.load_model_info(path)
    if info["arch"] != config.model:
        raise ValueError(f"pretrained checkpoint {path} is a {info['arch']!r}, but "
                         f"config.model={config.model!r}")
    return module, variables, info["options"], os.path.abspath(path)


def _weights_for_masking(config, workdir, ds, mesh, weights: str, seed: int):
    if weights == "pretrained":
        return _dense_source(config, workdir, ds, mesh)
    if weights == "random":
        module, variables, opts = init_model(config, ds, seed + 104729)
        return module, variables, opts, None
    raise ValueError(f"weights={weights!r}; expected 'pretrained' or 'random'")


def _start(workdir, config, ds, mesh):
    """(start time, dataset, mesh) of a mode; a study passes its own data and mesh."""
    os.makedirs(workdir, exist_ok=True)
    return time.time(), ds or load_data(config), mesh or make_mesh(config.num_devices)


def run_pretrain(config, workdir: str, *, ds=None, mesh=None) -> dict:
    """Dense SGD training; leaves workdir/model (loadable with `checkpoint.load_model`)."""
    t0, ds, mesh = _start(workdir, config, ds, mesh)
    module, variables, opts = init_model(config, ds, config.seed)
    state, log = train_loop(
        config=config, workdir=workdir, module=module, ds=ds, mesh=mesh, kind="dense",
        trainable=variables["params"], frozen=None, batch_stats=_batch_stats(variables),
        opt_cfg=config.pretrain, epochs=config.pretrain.epochs, seed=config.seed,
        eval_params=lambda s: _variables(s.trainable, s.batch_stats))
    final = _as_numpy(_variables(state.trainable, state.batch_stats))
    model_dir = ckpt_lib.save_variables(os.path.join(workdir, "model"), final,
                                        arch=config.model, model_options=opts)
    test = evaluate(module, final, ds, "test", config.eval_batch_size, mesh)
    summary = _base_summary(config, "pretrain", ds, log, t0)
    summary.update({"pretrained_checkpoint": model_dir, "test_accuracy": test["accuracy"],
                    "dense_test_accuracy": test["accuracy"], "test_top5": test.get("top5"),
                    "epochs": config.pretrain.epochs})
    _write_json(os.path.join(workdir, "summary.json"), summary)
    _print_table(summary)
    return summary


def run_search(config, workdir: str, *, ds=None, mesh=None) -> dict:
    """The lottery-jackpot search: frozen weights, scores trained by SGD (Eq. 8)."""
    t0, ds, mesh = _start(workdir, config, ds, mesh)
    cfg = config.search
    module, variables, opts, source = _weights_for_masking(config, workdir, ds, mesh,
                                                           cfg.weights, config.seed)
    filter_fn = prune_filter(config)
    params, batch_stats = variables["params"], _batch_stats(variables)
    budget = budget_for(config, params, filter_fn)
    if cfg.init == "kaiming":  # edge-popup's random scores, no warm-up mask
        scores = sp.kaiming_uniform_scores(jax.random.key(config.seed), params, filter_fn)
    else:
        init_mask = criterion_mask(cfg.init, config, module, variables, ds, config.seed,
                                   filter_fn, budget)
        scores = sp.init_scores_from_mask(init_mask, cfg.score_kept, cfg.score_pruned)
    hard_masks = jax.jit(lambda s: sp.masks_from_scores(s, budget, use_abs=cfg.use_abs))
    init_mask = hard_masks(scores)
    dense_acc = evaluate(module, variables, ds, "test", config.eval_batch_size, mesh)
    init_vars = _variables(sp.apply_masks(params, init_mask), batch_stats)
    init_acc = evaluate(module, init_vars, ds, "test", config.eval_batch_size, mesh)
    init_val = evaluate(module, init_vars, ds, "val", config.eval_batch_size, mesh) \
        if len(ds.val) else {}
    prev = {"mask": init_mask}

    # Host copies: arrays committed to the mesh would compile the mask function again.
    def hook(epoch, state):
        m = hard_masks(_as_numpy(state.trainable))
        out = {"overlap_with_init": float(sp.overlap(m, init_mask)),
               "mask_flips": int(sp.mask_flips(m, prev["mask"]))}
        prev["mask"] = m
        return out

    def eval_params(state):
        m = hard_masks(_as_numpy(state.trainable))
        return _variables(sp.apply_masks(params, m), state.batch_stats)

    state, log = train_loop(
        config=config, workdir=workdir, module=module, ds=ds, mesh=mesh, kind="search",
        trainable=scores, frozen=params, batch_stats=batch_stats, opt_cfg=cfg,
        epochs=cfg.epochs, seed=config.seed, budget=budget, epoch_hook=hook,
        eval_params=eval_params)
    scores = _as_numpy(state.trainable)
    masks = _as_numpy(hard_masks(scores))
    final_bs = _as_numpy(state.batch_stats)
    final_vars = _variables(_as_numpy(sp.apply_masks(params, masks)), final_bs)
    test = evaluate(module, final_vars, ds, "test", config.eval_batch_size, mesh)
    _save_jackpot(workdir, config, opts, masks, final_vars, source)
    ckpt_lib.save_variables(os.path.join(workdir, "model"), _variables(_as_numpy(params), final_bs),
                            arch=config.model, model_options=opts,
                            scores=sp.flatten_paths(scores))
    summary = _base_summary(config, "search", ds, log, t0)
    summary.update(_mask_summary(masks, config))
    summary.update({
        "pretrained_checkpoint": source, "weights": cfg.weights, "init": cfg.init,
        "distribution": cfg.distribution,
        "dense_test_accuracy": dense_acc["accuracy"],
        "init_mask_test_accuracy": init_acc["accuracy"],
        "init_mask_val_accuracy": init_val.get("accuracy"),
        "test_accuracy": test["accuracy"], "test_top5": test.get("top5"),
        "overlap_with_init": float(sp.overlap(masks, init_mask)),
        "epochs": cfg.epochs,
    })
    _write_json(os.path.join(workdir, "summary.json"), summary)
    _print_table(summary)
    return summary


def run_finetune(config, workdir: str, *, ds=None, mesh=None) -> dict:
    """Eq. 9: the weights (and BatchNorm) trained with a fixed mask: the jackpot's, or a
    criterion's (``finetune.mask='magnitude'`` etc.: the weight-tuning baselines)."""
    t0, ds, mesh = _start(workdir, config, ds, mesh)
    cfg = config.finetune
    filter_fn = prune_filter(config)
    if cfg.mask == "jackpot":
        jackpot_path = cfg.jackpot or os.path.join(workdir, "search")
        if not cfg.jackpot and not os.path.exists(os.path.join(jackpot_path, "jackpot.npz")):
            _log(f"no --config.finetune.jackpot given: searching first into {jackpot_path}")
            run_search(config, jackpot_path, ds=ds, mesh=mesh)
        module, variables, opts, masks, source = _load_jackpot_for_training(jackpot_path, config)
    else:
        module, variables, opts, source = _weights_for_masking(config, workdir, ds, mesh,
                                                               cfg.weights, config.seed)
        budget = budget_for(config, variables["params"], filter_fn)
        masks = criterion_mask(cfg.mask, config, module, variables, ds, config.seed,
                               filter_fn, budget)
    masks = _as_numpy(masks)
    params = variables["params"]
    init_vars = _variables(sp.apply_masks(params, masks), _batch_stats(variables))
    init_acc = evaluate(module, init_vars, ds, "test", config.eval_batch_size, mesh)
    state, log = train_loop(
        config=config, workdir=workdir, module=module, ds=ds, mesh=mesh, kind="masked",
        trainable=params, frozen=masks, batch_stats=_batch_stats(variables), opt_cfg=cfg,
        epochs=cfg.epochs, seed=config.seed,
        eval_params=lambda s: _variables(sp.apply_masks(s.trainable, masks), s.batch_stats))
    final_vars = _as_numpy(_variables(sp.apply_masks(state.trainable, masks), state.batch_stats))
    test = evaluate(module, final_vars, ds, "test", config.eval_batch_size, mesh)
    _save_jackpot(workdir, config, opts, masks, final_vars, source)
    ckpt_lib.save_variables(os.path.join(workdir, "model"), final_vars, arch=config.model,
                            model_options=opts)
    summary = _base_summary(config, "finetune", ds, log, t0)
    summary.update(_mask_summary(masks, config))
    summary.update({"pretrained_checkpoint": source, "mask": cfg.mask, "weights": cfg.weights,
                    "init_mask_test_accuracy": init_acc["accuracy"],
                    "test_accuracy": test["accuracy"], "test_top5": test.get("top5"),
                    "epochs": cfg.epochs})
    _write_json(os.path.join(workdir, "summary.json"), summary)
    _print_table(summary)
    return summary


def run_eval(config, workdir: str, *, ds=None, mesh=None) -> dict:
    """Accuracy of a dense checkpoint dir, a run's workdir or a jackpot.npz on val and test."""
    t0, ds, mesh = _start(workdir, config, ds, mesh)
    path = config.checkpoint or config.pretrained
    if not path:
        raise ValueError("eval needs --config.checkpoint=PATH (a checkpoint directory, a run's "
                         "workdir or a jackpot.npz)")
    module, variables, masks, kind = load_for_eval(path)
    if masks is not None:
        variables = _variables(sp.apply_masks(variables["params"], masks),
                               _batch_stats(variables))
    res = {s: evaluate(module, variables, ds, s, config.eval_batch_size, mesh)
           for s in ("val", "test") if len(ds.split(s))}
    summary = {"mode": "eval", "checkpoint": os.path.abspath(path), "checkpoint_kind": kind,
               "model": config.model, "dataset": config.dataset,
               "test_accuracy": res["test"]["accuracy"], "test_top5": res["test"].get("top5"),
               "val_accuracy": res.get("val", {}).get("accuracy"),
               "wall_seconds": time.time() - t0}
    if masks is not None:
        summary.update(_mask_summary(masks, config, target=False))
    _write_json(os.path.join(workdir, "summary.json"), summary)
    _print_table(summary)
    return summary


RUNNERS = {"pretrain": run_pretrain, "search": run_search, "finetune": run_finetune,
           "eval": run_eval}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs ``config.mode`` in ``workdir``; rerunning the same command resumes it."""
    if config.mode not in RUNNERS:
        raise ValueError(f"mode={config.mode!r}; expected one of {MODES}")
    if not 0.0 <= config.sparsity < 1.0:
        raise ValueError(f"sparsity={config.sparsity!r} must be in [0, 1)")
    if config.search.init not in WARMUPS:
        raise ValueError(f"search.init={config.search.init!r}; expected one of {WARMUPS}")
    if config.distributed:
        jax.distributed.initialize()
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    _write_json(os.path.join(workdir, "config.json"), config.to_dict())
    return RUNNERS[config.mode](config, workdir)


# ---------------------------------------------------------------------------------------------
# Exports and summaries
# ---------------------------------------------------------------------------------------------


def _save_jackpot(workdir, config, opts, masks, variables, source) -> str:
    """jackpot.npz: masks/<path> (prunable leaves), params/<path> (masked weights, every
    param leaf), batch_stats/<path>, and meta (JSON: arch, options, sparsity, source)."""
    arrays = {f"masks/{p}": np.asarray(m, np.uint8) for p, m in sp.flatten_paths(masks).items()}
    arrays.update({f"params/{p}": np.asarray(v)
                   for p, v in sp.flatten_paths(variables["params"]).items()})
    if variables.get("batch_stats"):
        arrays.update({f"batch_stats/{p}": np.asarray(v)
                       for p, v in sp.flatten_paths(variables["batch_stats"]).items()})
    meta = {"arch": config.model, "options": opts, "sparsity_target": config.sparsity,
            "pretrained_checkpoint": source}
    arrays["meta"] = np.asarray(json.dumps(meta))
    path = os.path.join(workdir, "jackpot.npz")
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return path


def load_jackpot(path: str) -> tuple[dict, dict, dict, dict]:
    """(meta, masks tree, params tree, batch_stats tree or {}) from a jackpot.npz."""
    jackpot = ckpt_lib.read_jackpot(path)
    params = ckpt_lib._nest(jackpot["params"])
    masks = sp.tree_from_paths(params, {k: v.astype(np.float32)
                                        for k, v in jackpot["masks"].items()})
    return jackpot["meta"], masks, params, ckpt_lib._nest(jackpot["batch_stats"])


def _load_jackpot_for_training(path, config):
    """The search's pre-trained (unmasked) weights, its batch stats and its masks."""
    meta, masks, _, batch_stats = load_jackpot(path)
    source = meta.get("pretrained_checkpoint")
    if source and os.path.isdir(source):
        module, variables = ckpt_lib.load_model(source)
    else:  # random-weight search: weights live only in the run's model/ dir
        module, variables = ckpt_lib.load_model(os.path.join(
            path if os.path.isdir(path) else os.path.dirname(path), "model"))
    variables = _variables(variables["params"], batch_stats or _batch_stats(variables))
    return module, variables, meta["options"], masks, source


def load_for_eval(path: str):
    """(module, variables, masks or None, kind) for a checkpoint dir, workdir or jackpot.npz."""
    if path.endswith(".npz") or os.path.isfile(os.path.join(path, "jackpot.npz")):
        meta, masks, params, batch_stats = load_jackpot(path)
        module = models.get_model(meta["arch"], **meta["options"])
        return module, _variables(params, batch_stats or None), masks, "jackpot"
    model_dir = path if os.path.isdir(os.path.join(path, ckpt_lib.VARIABLES_DIR)) else \
        os.path.join(path, "model")
    module, variables = ckpt_lib.load_model(model_dir)
    return module, variables, None, "dense"


def _base_summary(config, mode, ds, log: MetricsLog, t0) -> dict:
    best = max(log.records, key=lambda r: r.get("val_accuracy") or -1) if log.records else None
    return {"mode": mode, "model": config.model, "dataset": config.dataset,
            "seed": config.seed, "batch_size": config.batch_size,
            "num_devices": jax.device_count() if not config.num_devices else config.num_devices,
            "final_val_accuracy": log.records[-1].get("val_accuracy") if log.records else None,
            "best_val_epoch": best["epoch"] if best else None,
            "train_examples": len(ds.train), "val_examples": len(ds.val),
            "test_examples": len(ds.test), "wall_seconds": time.time() - t0}


def _mask_summary(masks, config, target: bool = True) -> dict:
    per_layer = sp.sparsity_summary(masks)
    total = per_layer.pop("_total_sparsity")
    out = {"sparsity_achieved": total, "per_layer_sparsity": per_layer}
    if target:
        out["sparsity_target"] = config.sparsity
    return out


def _print_table(summary: dict) -> None:
    if jax.process_index() != 0:
        return
    rows = [(k, summary[k]) for k in (
        "mode", "model", "dataset", "sparsity_target", "sparsity_achieved",
        "dense_test_accuracy", "init_mask_test_accuracy", "test_accuracy", "test_top5",
        "overlap_with_init", "epochs", "seed", "wall_seconds") if summary.get(k) is not None]
    width = max(len(k) for k, _ in rows)
    print("\n" + "-" * (width + 16))
    for k, v in rows:
        print(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    if summary.get("per_layer_sparsity"):
        print("per-layer sparsity:")
        for k, v in summary["per_layer_sparsity"].items():
            print(f"  {k:<{width}}  {v:.4f}")
    print("-" * (width + 16), flush=True)
