"""The four modes of the pipeline: pretrain, lottery-jackpot search, fine-tune (Eq. 9), eval.

Each ``run_<mode>(config, workdir)`` builds its inputs, its `core.SearchState` and its step
(`jackpot_jax.core`), runs `loop.train_loop`, writes its exports (`jackpot_jax.pipeline.export`)
and returns the run's summary (also in summary.json).
"""

from __future__ import annotations

import os
import time

from jackpot_jax import core, utils
from jackpot_jax import method as jm
from jackpot_jax.errors import ConfigError, MissingInputError
from jackpot_jax.pipeline import checkpoint as ckpt_lib
from jackpot_jax.pipeline import export, loop
from jackpot_jax.pipeline.evaluate import evaluate
from jackpot_jax.pipeline.pruning import (
    budget_for,
    criterion_inputs,
    criterion_mask,
    pattern_of,
    pattern_report,
    prune_filter,
)
from jackpot_jax.pipeline.sources import init_model, load_data
from jackpot_jax.pipeline.summaries import (
    base_summary,
    mask_summary,
    print_table,
    same_on_every_process,
)


def dense_source(config, workdir: str, ds, mesh):
    """(module, variables, options, checkpoint dir) of the pre-trained model: the configured
    checkpoint, or a cached `pretrain` run in workdir/pretrain (run now if missing)."""
    path = config.pretrained
    if not path:
        path = os.path.join(workdir, "pretrain", "model")
        # summary.json is written last: without it the cached run is unfinished (resumed).
        if not os.path.isfile(os.path.join(workdir, "pretrain", "summary.json")):
            utils.log(
                f"no --config.pretrained given: pretraining first into {os.path.dirname(path)}"
            )
            run_pretrain(config, os.path.dirname(path), ds=ds, mesh=mesh)
    if not os.path.isdir(path):
        raise MissingInputError(
            f"pretrained={path!r} is not a checkpoint directory (expected a "
            "directory written by `pretrain` or "
            "tools/convert_torch_weights.py)"
        )
    info = ckpt_lib.load_model_info(path)
    if info["arch"] != config.model:
        raise ConfigError(
            f"pretrained checkpoint {path} is a {info['arch']!r}, but config.model={config.model!r}"
        )
    module, variables = ckpt_lib.load_model(path, ds.image_shape)
    return module, variables, info["options"], os.path.abspath(path)


def weights_for_masking(config, workdir, ds, mesh, weights: str, seed: int):
    if weights == "pretrained":
        return dense_source(config, workdir, ds, mesh)
    if weights == "random":
        module, variables, opts = init_model(config, ds, seed + 104729)
        return module, variables, opts, None
    raise ConfigError(f"weights={weights!r}; expected 'pretrained' or 'random'")


def _start(workdir, config, ds, mesh):
    """(start time, dataset, mesh) of a mode; a study passes its own data and mesh."""
    if utils.is_primary():
        os.makedirs(workdir, exist_ok=True)
    utils.sync("mode:workdir")
    return time.time(), ds or load_data(config), mesh or core.make_mesh(config.num_devices)


def _evaluate_test(config, module, variables, ds, mesh) -> dict:
    """Accuracy on the test split; {} when ``config.evaluate_test`` is False (a selection run
    reads only the validation split: its summary then has no test accuracies)."""
    if not config.get("evaluate_test", True):
        return {}
    return evaluate(
        module,
        variables,
        ds,
        "test",
        config.eval_batch_size,
        mesh,
        options=core.compute_options(config),
    )


def run_pretrain(config, workdir: str, *, ds=None, mesh=None) -> dict:
    """Dense SGD training; leaves workdir/model (loadable with `checkpoint.load_model`)."""
    t0, ds, mesh = _start(workdir, config, ds, mesh)
    module, variables, opts = init_model(config, ds, config.seed)
    cfg = config.pretrain
    _, spe = loop.steps_per_epoch(config, ds, mesh, cfg)
    tx, schedule = core.make_optimizer(cfg, cfg.epochs, spe)
    state = core.SearchState.create(
        apply_fn=module.apply,
        params=variables["params"],
        tx=tx,
        seed=config.seed,
        batch_stats=utils.batch_stats_of(variables),
    )
    step = core.make_train_step(
        module.apply,
        tx,
        label_smoothing=config.label_smoothing,
        options=core.compute_options(config),
    )
    state, log = loop.train_loop(
        config=config,
        workdir=workdir,
        module=module,
        ds=ds,
        mesh=mesh,
        state=state,
        step=step,
        schedule=schedule,
        opt_cfg=cfg,
        epochs=cfg.epochs,
        seed=config.seed,
        label="pretrain",
        eval_variables=lambda s: utils.variables_of(s.params, s.batch_stats),
    )
    final = utils.as_numpy(utils.variables_of(state.params, state.batch_stats))
    model_dir = ckpt_lib.save_variables(
        os.path.join(workdir, "model"), final, arch=config.model, model_options=opts, overwrite=True
    )
    test = _evaluate_test(config, module, final, ds, mesh)
    summary = base_summary(config, "pretrain", ds, log, t0)
    summary.update(
        {
            "pretrained_checkpoint": model_dir,
            "test_accuracy": test.get("accuracy"),
            "dense_test_accuracy": test.get("accuracy"),
            "test_top5": test.get("top5"),
            "epochs": config.pretrain.epochs,
        }
    )
    utils.write_json(os.path.join(workdir, "summary.json"), summary)
    print_table(summary)
    return summary


def run_search(config, workdir: str, *, ds=None, mesh=None) -> dict:
    """The lottery-jackpot search: frozen weights, scores trained by SGD (Eq. 8)."""
    t0, ds, mesh = _start(workdir, config, ds, mesh)
    cfg = config.search
    module, variables, opts, source = weights_for_masking(
        config, workdir, ds, mesh, cfg.weights, config.seed
    )
    filter_fn = prune_filter(config)
    params, batch_stats = variables["params"], utils.batch_stats_of(variables)
    _, spe = loop.steps_per_epoch(config, ds, mesh, cfg)
    tx, schedule = core.make_optimizer(cfg, cfg.epochs, spe)
    init = core.init_search(
        params,
        apply_fn=module.apply,
        tx=tx,
        batch_stats=batch_stats,
        sparsity=config.sparsity,
        pattern=pattern_of(config),
        distribution=cfg.distribution,
        filter_fn=filter_fn,
        init=cfg.init,
        score_kept=cfg.score_kept,
        score_pruned=cfg.score_pruned,
        mask_update=cfg.mask_update,
        use_abs=cfg.use_abs,
        seed=config.seed,
        inputs=criterion_inputs(config, module, variables, ds, config.seed, filter_fn),
    )
    budget, init_mask = init.budget, init.masks
    swap_rate = None
    if cfg.mask_update == "swap":
        swap_rate = core.swap_rate_schedule(
            cfg.epochs, spe, cfg.swap_schedule, cfg.swap_rate, cfg.swap_power
        )
    step = core.make_search_step(
        module.apply,
        tx,
        budget,
        mask_update=cfg.mask_update,
        use_abs=cfg.use_abs,
        swap_rate=swap_rate,
        label_smoothing=config.label_smoothing,
        options=core.compute_options(config),
    )

    def current_masks(state):
        """The search's mask now: the persistent one (swap) or the top-k of the scores."""
        return core.current_masks(state, budget, mask_update=cfg.mask_update, use_abs=cfg.use_abs)

    dense_acc = _evaluate_test(config, module, variables, ds, mesh)
    init_vars = utils.variables_of(jm.apply_masks(params, init_mask), batch_stats)
    init_acc = _evaluate_test(config, module, init_vars, ds, mesh)
    init_val = (
        evaluate(
            module,
            init_vars,
            ds,
            "val",
            config.eval_batch_size,
            mesh,
            options=core.compute_options(config),
        )
        if len(ds.val)
        else {}
    )

    def eval_variables(state):
        m = current_masks(state)
        return utils.variables_of(jm.apply_masks(params, m), state.batch_stats)

    state, log = loop.train_loop(
        config=config,
        workdir=workdir,
        module=module,
        ds=ds,
        mesh=mesh,
        state=init.state,
        step=step,
        schedule=schedule,
        opt_cfg=cfg,
        epochs=cfg.epochs,
        seed=config.seed,
        label="search",
        eval_variables=eval_variables,
        tracker=core.MaskTracker(current_masks, init_mask),
    )
    scores = utils.as_numpy(state.params)
    masks = utils.as_numpy(current_masks(state))
    same_on_every_process(masks, "final masks")
    final_bs = utils.as_numpy(state.batch_stats)
    final_vars = utils.variables_of(utils.as_numpy(jm.apply_masks(params, masks)), final_bs)
    test = _evaluate_test(config, module, final_vars, ds, mesh)
    export.write_jackpot(workdir, config, opts, masks, final_vars, source)
    ckpt_lib.save_variables(
        os.path.join(workdir, "model"),
        utils.variables_of(utils.as_numpy(params), final_bs),
        arch=config.model,
        model_options=opts,
        scores=jm.flatten_paths(scores),
        overwrite=True,
    )
    summary = base_summary(config, "search", ds, log, t0)
    summary.update(mask_summary(masks, config))
    summary.update(
        {
            "pretrained_checkpoint": source,
            "weights": cfg.weights,
            "init": cfg.init,
            "distribution": cfg.distribution,
            "mask_update": cfg.mask_update,
            "schedule": cfg.schedule,
            "dense_test_accuracy": dense_acc.get("accuracy"),
            "init_mask_test_accuracy": init_acc.get("accuracy"),
            "init_mask_val_accuracy": init_val.get("accuracy"),
            "test_accuracy": test.get("accuracy"),
            "test_top5": test.get("top5"),
            "overlap_with_init": float(jm.overlap(masks, init_mask)),
            # N:M runs: the starting mask's own check (the magnitude row of a study reads it)
            "init_mask_pattern_satisfied": pattern_report(init_mask, config).get(
                "pattern_satisfied"
            ),
            "epochs": cfg.epochs,
        }
    )
    utils.write_json(os.path.join(workdir, "summary.json"), summary)
    print_table(summary)
    return summary


def run_finetune(config, workdir: str, *, ds=None, mesh=None) -> dict:
    """Eq. 9: the weights (and BatchNorm) trained with a fixed mask: the jackpot's, or a
    criterion's (``finetune.mask='magnitude'`` etc.: the weight-tuning baselines)."""
    t0, ds, mesh = _start(workdir, config, ds, mesh)
    cfg = config.finetune
    filter_fn = prune_filter(config)
    if cfg.mask == "jackpot":
        jackpot_path = cfg.jackpot or os.path.join(workdir, "search")
        # summary.json is written last: without it the search is unfinished (resumed).
        if not cfg.jackpot and not os.path.exists(os.path.join(jackpot_path, "summary.json")):
            utils.log(f"no --config.finetune.jackpot given: searching first into {jackpot_path}")
            run_search(config, jackpot_path, ds=ds, mesh=mesh)
        module, variables, opts, masks, source = export.load_jackpot_for_training(
            jackpot_path, config, ds.image_shape
        )
    else:
        module, variables, opts, source = weights_for_masking(
            config, workdir, ds, mesh, cfg.weights, config.seed
        )
        budget = budget_for(config, variables["params"], filter_fn)
        masks = criterion_mask(
            cfg.mask, config, module, variables, ds, config.seed, filter_fn, budget
        )
    masks = utils.as_numpy(masks)
    params = variables["params"]
    init_vars = utils.variables_of(jm.apply_masks(params, masks), utils.batch_stats_of(variables))
    init_acc = _evaluate_test(config, module, init_vars, ds, mesh)
    _, spe = loop.steps_per_epoch(config, ds, mesh, cfg)
    tx, schedule = core.make_optimizer(cfg, cfg.epochs, spe)
    state = core.SearchState.create(
        apply_fn=module.apply,
        params=params,
        tx=tx,
        seed=config.seed,
        frozen=masks,
        batch_stats=utils.batch_stats_of(variables),
    )
    step = core.make_train_step(
        module.apply,
        tx,
        params_fn=core.masked_weights,
        label_smoothing=config.label_smoothing,
        options=core.compute_options(config),
    )
    state, log = loop.train_loop(
        config=config,
        workdir=workdir,
        module=module,
        ds=ds,
        mesh=mesh,
        state=state,
        step=step,
        schedule=schedule,
        opt_cfg=cfg,
        epochs=cfg.epochs,
        seed=config.seed,
        label="finetune",
        eval_variables=lambda s: utils.variables_of(jm.apply_masks(s.params, masks), s.batch_stats),
    )
    final_vars = utils.as_numpy(
        utils.variables_of(jm.apply_masks(state.params, masks), state.batch_stats)
    )
    test = _evaluate_test(config, module, final_vars, ds, mesh)
    export.write_jackpot(workdir, config, opts, masks, final_vars, source)
    ckpt_lib.save_variables(
        os.path.join(workdir, "model"),
        final_vars,
        arch=config.model,
        model_options=opts,
        overwrite=True,
    )
    summary = base_summary(config, "finetune", ds, log, t0)
    summary.update(mask_summary(masks, config))
    summary.update(
        {
            "pretrained_checkpoint": source,
            "mask": cfg.mask,
            "weights": cfg.weights,
            "init_mask_test_accuracy": init_acc.get("accuracy"),
            "test_accuracy": test.get("accuracy"),
            "test_top5": test.get("top5"),
            "epochs": cfg.epochs,
        }
    )
    utils.write_json(os.path.join(workdir, "summary.json"), summary)
    print_table(summary)
    return summary


def run_eval(config, workdir: str, *, ds=None, mesh=None) -> dict:
    """Accuracy of a dense checkpoint dir, a run's workdir or a jackpot.npz on val and test."""
    t0, ds, mesh = _start(workdir, config, ds, mesh)
    path = config.checkpoint or config.pretrained
    if not path:
        raise ConfigError(
            "eval needs --config.checkpoint=PATH (a checkpoint directory, a run's "
            "workdir or a jackpot.npz)"
        )
    module, variables, masks, kind = export.load_for_eval(path, ds.image_shape)
    if masks is not None:
        variables = utils.variables_of(
            jm.apply_masks(variables["params"], masks), utils.batch_stats_of(variables)
        )
    res = {
        s: evaluate(
            module,
            variables,
            ds,
            s,
            config.eval_batch_size,
            mesh,
            options=core.compute_options(config),
        )
        for s in ("val", "test")
        if len(ds.split(s))
    }
    summary = {
        "mode": "eval",
        "checkpoint": os.path.abspath(path),
        "checkpoint_kind": kind,
        "model": config.model,
        "dataset": config.dataset,
        "test_accuracy": res["test"]["accuracy"],
        "test_top5": res["test"].get("top5"),
        "val_accuracy": res.get("val", {}).get("accuracy"),
        "wall_seconds": time.time() - t0,
    }
    if masks is not None:
        summary.update(mask_summary(masks, config, target=False))
    utils.write_json(os.path.join(workdir, "summary.json"), summary)
    print_table(summary)
    return summary
