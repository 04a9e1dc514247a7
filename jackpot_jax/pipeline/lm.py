"""The LM mode of the command line (``mode='lm'``): one-shot baselines and the jackpot search
on a pre-trained causal language model, with perplexities.

`run_lm(config, workdir)`:

1. the model: ``config.pretrained``, a checkpoint directory written by the converter
   (``tools/convert_torch_weights.py``; its ``tokenizer.json`` beside it), or
   ``config.lm.source`` (``'smollm2'``, a ``.gguf`` file, a Hugging Face directory; also a
   ``pretrained`` that is one of these) converted once into ``<workdir>/source_model`` by the
   function ``config.lm.converter`` names (``'module:function'``, by default
   ``jackpot_jax.interop.lm_source:convert_lm_source``: the pipeline imports nothing of
   ``interop``, which imports the pipeline);
2. the text: ``lm.dataset`` ('shakespeare', or 'text' with ``lm.path``) in windows of
   ``lm.seq_len`` tokens (`data.text.load_text_dataset`), which must fit the model's context;
3. perplexities (`pipeline.perplexity.perplexity`, validation and test) of the dense model
   and of each baseline of ``lm.baselines``: 'magnitude', 'wanda', 'sparsegpt' (its mask on
   the pre-trained weights) and 'sparsegpt_update' (its mask *and weight update*: it changes
   the kept weights, which a jackpot never does), each by sequential calibration
   (`pipeline.calibrate.calibrate_lm`) on ``lm.calibration_samples`` training windows;
4. the jackpot search through the core (`core.init_search`, `core.make_search_step`,
   `core.run_epoch`) from the ``lm.prior`` baseline's mask as two score levels (MaskLLM's
   prior), with the next-token cross-entropy, the ``search`` section's optimiser (AdamW for
   LMs), ``lm.steps`` steps (or ``lm.tokens`` tokens) of ``search.batch_size`` windows,
   validation perplexity every ``lm.eval_every`` steps (an "epoch" of the core is one such
   interval), a checkpoint after each interval (the frozen weights are not saved) and a
   progress bar. A killed run resumes: the baselines' results and the prior's mask are kept
   in the workdir, the search from its newest checkpoint.

The budget: ``search.pattern`` (e.g. '2:4' along each Linear's input axis), else
``sparsity`` per output row (``lm.unstructured='row'``: Wanda's count, expressed for the
search as the N:M pattern ``n:in`` with ``n = in - int(in * sparsity)`` along the input
axis, which keeps exactly ``n`` of each output's ``in`` inputs) or per layer
(``lm.unstructured='layer'``: uniform keep counts).

Switches a study sets (with these defaults when a config lacks them):

- ``lm.train``: 'scores' (the jackpot search above), 'weights' (the baseline of weight
  tuning: the prior's mask fixed and the kept weights of the pruned kernels trained with the
  same tokens, loss and batches, by the ``finetune`` section's optimiser; embeddings, norms
  and the head stay as they are) or 'none' (dense and one-shot perplexities only);
- ``lm.evaluate_test`` (True): False evaluates no test perplexity at all (a selection run);
- ``lm.dense`` (True): False skips the dense perplexities;
- ``lm.prior_masks`` (''): a folder where another run saved ``masks_<prior>.npz``: the prior
  is read from it instead of being calibrated again;
- ``lm.save_masks`` (()): baselines whose masks are saved as ``masks_<name>.npz``;
- ``lm.export`` (True): False writes no ``jackpot.npz`` (its masked params are the size of
  the model), only ``final_mask.npz``; ``lm.keep_checkpoints`` (True): False deletes the
  checkpoints once the summary is written.

The seed (``config.seed``) picks the calibration sample and the order of the training
batches. At the end the run prints a summary block (between two rules: ``model``, ``seed``
and every perplexity to 6 decimals) that `tools/check_results.py` reads back from raw logs.

Writes ``summary.json`` (every perplexity, tokens seen, steps, seq_len, the pattern;
``perplexity``: the run's own result, the searched or tuned model's, or with
``lm.train='none'`` its one baseline's or the dense model's),
``metrics.jsonl`` (one line per interval), ``oneshot.json`` (the baselines),
``prior_mask.npz``, ``final_mask.npz`` (the masks, bit-packed) and ``jackpot.npz`` (masks
and masked params, `pipeline.export`; the converter's ``--to-torch`` path writes it as a
Hugging Face directory).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import shutil
import time

import jax
import ml_collections
import numpy as np
import optax

from jackpot_jax import core, models, utils
from jackpot_jax import method as jm
from jackpot_jax.data import text
from jackpot_jax.errors import ConfigError, InputError, MissingInputError
from jackpot_jax.pipeline import checkpoint as ckpt_lib
from jackpot_jax.pipeline import export
from jackpot_jax.pipeline.calibrate import calibrate_lm
from jackpot_jax.pipeline.perplexity import check_context, perplexity
from jackpot_jax.pipeline.resume import Checkpointer, MetricsLog

BASELINES = ("magnitude", "wanda", "sparsegpt", "sparsegpt_update")
TRAIN = ("scores", "weights", "none")
# The study's switches and their defaults (a config without them runs as before).
SWITCHES = {
    "train": "scores",
    "evaluate_test": True,
    "dense": True,
    "prior_masks": "",
    "save_masks": (),
    "export": True,
    "keep_checkpoints": True,
}
PRIORS = ("magnitude", "wanda", "sparsegpt")
SOURCE_DIR = "source_model"
TOKENIZER = "tokenizer.json"


def next_token_loss(logits, labels):
    """Mean next-token cross-entropy: ``logits`` (B, T, V) against ``labels`` (B, T) (the
    batches are already shifted: inputs ``w[:-1]``, labels ``w[1:]``)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(np.float32), labels).mean()


def check_lm_config(config) -> None:
    """`ConfigError` for an LM-mode value that cannot work, before anything runs."""
    cfg = config.lm
    for key, allowed in (
        ("dataset", text.TEXT_DATASETS),
        ("prior", PRIORS),
        ("unstructured", ("row", "layer")),
    ):
        if cfg[key] not in allowed:
            raise ConfigError(f"lm.{key}={cfg[key]!r}; expected one of {tuple(allowed)}")
    if switch(config, "train") not in TRAIN:
        raise ConfigError(f"lm.train={switch(config, 'train')!r}; expected one of {TRAIN}")
    bad = [b for b in (*cfg.baselines, *switch(config, "save_masks")) if b not in BASELINES]
    if bad:
        raise ConfigError(
            f"lm.baselines / lm.save_masks have {bad}; each must be one of {BASELINES}"
        )
    if cfg.steps < 0 or cfg.tokens < 0 or cfg.eval_every < 0:
        raise ConfigError("lm.steps, lm.tokens and lm.eval_every must be >= 0")
    if switch(config, "train") != "none" and not (cfg.steps or cfg.tokens):
        raise ConfigError(
            "the LM search needs a budget: set lm.steps (search steps) or lm.tokens "
            "(training tokens)"
        )
    if not (cfg.source or config.pretrained):
        raise ConfigError(
            "mode='lm' needs a model: config.pretrained=DIR (a checkpoint written by "
            "tools/convert_torch_weights.py) or config.lm.source ('smollm2', a .gguf file or "
            "a Hugging Face model directory)"
        )
    if config.search.mask_update == "swap" and (config.search.pattern or cfg.unstructured == "row"):
        raise ConfigError(
            "search.mask_update='swap' needs per-layer counts: use lm.unstructured='layer' "
            "without a pattern, or mask_update='topk'"
        )


def switch(config, key: str):
    """``config.lm.<key>`` of the study's switches (`SWITCHES`), its default when absent."""
    return config.lm.get(key, SWITCHES[key])


# ------------------------------------------------------------------------------ the model


def _converter(spec: str):
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(
            f"lm.converter={spec!r} names no function ({e}); expected 'module:function', e.g. "
            "'jackpot_jax.interop.lm_source:convert_lm_source'"
        ) from None


def _is_checkpoint(path: str) -> bool:
    return os.path.isfile(os.path.join(path, ckpt_lib.MODEL_JSON))


def model_dir(config, workdir: str, convert=None) -> str:
    """The converted checkpoint directory of the run's model (converting it once into
    ``<workdir>/source_model`` when the config names a GGUF, an HF directory or 'smollm2')."""
    source = config.lm.source
    if not source:
        path = config.pretrained
        if _is_checkpoint(path):
            return os.path.abspath(path)
        if not os.path.exists(path):
            raise MissingInputError(
                f"pretrained={path!r} does not exist; give a checkpoint directory written by "
                "tools/convert_torch_weights.py, or lm.source"
            )
        source = path  # a GGUF file or a Hugging Face directory: converted below
    out = os.path.join(workdir, SOURCE_DIR)
    marker = os.path.join(out, "source.json")
    if _is_checkpoint(out) and os.path.isfile(marker):
        with open(marker) as f:
            if json.load(f).get("source") == source:
                return out
    convert = convert or _converter(config.lm.converter)
    utils.log(f"converting the model {source} into {out}")
    path = convert(source, out)
    with open(os.path.join(path, "source.json"), "w") as f:
        json.dump({"source": source}, f)
    return os.path.abspath(path)


def load_lm(path: str, remat: bool = False):
    """(arch, options, module, variables, tokenizer file) of a converted LM checkpoint."""
    info = ckpt_lib.load_model_info(path)
    arch = info["arch"]
    if arch not in models.LM_NAMES:
        raise ConfigError(
            f"{path} holds a {arch!r}, not a language model; mode='lm' takes "
            f"{', '.join(models.LM_NAMES)}"
        )
    tokenizer = os.path.join(path, TOKENIZER)
    if not os.path.isfile(tokenizer):
        raise MissingInputError(
            f"{path} has no {TOKENIZER}: convert the model again with "
            "tools/convert_torch_weights.py (it writes the tokenizer beside the weights), or "
            f"copy the model's {TOKENIZER} there"
        )
    options = dict(info["options"])
    if remat:
        options["remat"] = True
    module, variables = ckpt_lib.load_model(path)
    if remat:
        module = models.get_model(arch, **options)
    return arch, info["options"], module, variables, tokenizer


# ------------------------------------------------------------------------------ budgets


def check_pattern_fits(params, filter_fn, pattern: jm.NMPattern | None) -> None:
    """`ConfigError` naming the prunable kernels whose input size is not a multiple of M."""
    if pattern is None:
        return
    bad = {
        p: np.shape(w)
        for p, w in jm.flatten_paths(params).items()
        if filter_fn(p, w) and not pattern.fits(np.shape(w))
    }
    if bad:
        first = next(iter(bad))
        raise ConfigError(
            f"the {pattern} pattern needs each pruned kernel's input size (axis 0) to be a "
            f"multiple of {pattern.m}; {len(bad)} kernel(s) are not, e.g. {first} of shape "
            f"{bad[first]}: choose another pattern, or keep them dense with "
            "--config.prune.exclude"
        )


def search_budget(params, filter_fn, config):
    """The search's budget tree (see the module docstring)."""
    pattern = jm.parse_pattern(config.search.pattern)
    if pattern is not None:
        return jm.nm_budget(params, pattern, filter_fn)
    if config.lm.unstructured == "layer":
        return jm.keep_counts(params, config.sparsity, "uniform", filter_fn=filter_fn)

    def row(_, w):
        n_in = np.shape(w)[0]
        return jm.NMPattern(n_in - int(n_in * config.sparsity), n_in)

    return jm.map_prunable(row, params, filter_fn)


# ------------------------------------------------------------------------------ the run


def _save_masks(path: str, masks) -> None:
    flat = {p: np.asarray(m) for p, m in jm.flatten_paths(masks).items()}
    arrays = {f"bits/{p}": np.packbits(m.astype(bool).ravel()) for p, m in flat.items()}
    arrays.update({f"shape/{p}": np.asarray(m.shape, np.int64) for p, m in flat.items()})
    tmp = path + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _load_masks(path: str, params):
    with np.load(path) as z:
        flat = {}
        for key in z.files:
            if key.startswith("bits/"):
                p = key[5:]
                shape = tuple(z[f"shape/{p}"])
                bits = np.unpackbits(z[key], count=int(np.prod(shape)))
                flat[p] = bits.reshape(shape).astype(np.float32)
    return jm.tree_from_paths(params, flat)


def _bar(total: int, initial: int, desc: str):
    """A tqdm bar on a terminal, None elsewhere (no bar, no host syncs)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return None
    bar = tqdm(total=total, initial=initial, desc=desc, leave=False, disable=None)
    if bar.disable:
        return None
    return bar


def _fmt(ppl: dict) -> str:
    return ", ".join(f"{s} {ppl[s]:.3f}" for s in ("val", "test") if s in ppl)


def print_summary_block(summary: dict) -> None:
    """The closing block `tools/check_results.py` reads from a raw log: ``key value`` lines
    between two rules (model, seed, steps, tokens and every perplexity to 6 decimals; the
    run's own result, ``summary['perplexity']``, as ``val_ppl`` and ``test_ppl``)."""
    rows = [("model", summary["model"]), ("seed", summary["seed"])]
    for split, v in (summary.get("perplexity") or {}).items():
        rows.append((f"{split}_ppl", f"{v:.6f}"))
    rows += [(k, summary[k]) for k in ("train", "prior", "steps", "tokens_seen")]
    for split, v in (summary.get("dense_perplexity") or {}).items():
        rows.append((f"dense_{split}_perplexity", f"{v:.6f}"))
    for name, r in (summary.get("baselines") or {}).items():
        rows += [(f"{name}_{s}_perplexity", f"{r[s]:.6f}") for s in ("val", "test") if s in r]
    for split, v in (summary.get("final_perplexity") or {}).items():
        rows.append((f"{split}_perplexity", f"{v:.6f}"))
    if summary.get("overlap_with_prior") is not None:
        rows.append(("overlap_with_prior", f"{summary['overlap_with_prior']:.6f}"))
    rows.append(("wall_seconds", f"{summary['wall_seconds']:.1f}"))
    width = max(len(k) for k, _ in rows)
    print("\n" + "-" * (width + 16))
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print("-" * (width + 16), flush=True)


def _weight_labels(params, filter_fn):
    """'train' on the prunable kernels, 'freeze' elsewhere: weight tuning trains only the
    kept weights of the pruned kernels, what a jackpot search may change the masks of."""
    flat = jm.flatten_paths(params)
    labels = {p: "train" if filter_fn(p, w) else "freeze" for p, w in flat.items()}
    return jm.tree_from_paths(params, labels)


def run_lm(config, workdir: str, *, convert=None) -> dict:
    """Runs the LM mode in ``workdir`` (see the module docstring) and returns the summary
    (also in ``summary.json``). ``convert(source, output_dir) -> dir`` replaces the converter
    ``config.lm.converter`` names."""
    t0 = time.time()
    cfg = config.lm
    check_lm_config(config)
    train = switch(config, "train")
    splits = ("val", "test") if switch(config, "evaluate_test") else ("val",)
    os.makedirs(workdir, exist_ok=True)
    path = model_dir(config, workdir, convert)
    arch, opts, module, variables, tokenizer = load_lm(path, cfg.remat)
    if config.model != arch:
        raise ConfigError(
            f"the model at {path} is a {arch!r} but config.model={config.model!r}: set "
            f"--config.model={arch}"
        )
    params = utils.as_numpy(variables["params"])
    check_context(cfg.seq_len, getattr(module, "max_position_embeddings", None))
    ds = text.load_text_dataset(
        cfg.dataset,
        path=cfg.path or None,
        tokenizer=tokenizer,
        seq_len=cfg.seq_len,
        max_train_tokens=cfg.max_train_tokens or None,
        max_eval_tokens=cfg.max_eval_tokens or None,
        split_seed=config.split_seed,
    )
    if ds.vocab_size is not None and ds.vocab_size > module.vocab_size:
        raise InputError(
            f"the tokenizer at {tokenizer} has {ds.vocab_size} tokens, the model "
            f"{module.vocab_size}: they do not belong together"
        )
    filter_fn = core.search_filter(config.prune.include, config.prune.exclude)
    try:
        jm.prunable_paths(params, filter_fn)
    except ValueError as e:
        raise ConfigError(f"no prunable parameter: {e}") from None
    pattern = jm.parse_pattern(config.search.pattern)
    check_pattern_fits(params, filter_fn, pattern)
    sparsity = None if pattern is not None else config.sparsity
    utils.log(
        f"lm: {arch} from {path}; {cfg.dataset} windows of {cfg.seq_len} tokens: "
        f"{len(ds.train)} train, {len(ds.val)} val, {len(ds.test)} test; budget "
        f"{pattern or f'{config.sparsity:.0%} per {cfg.unstructured}'}; train {train}"
        + ("" if "test" in splits else "; no test perplexity (selection)")
    )

    logits_fn = jax.jit(lambda p, t: module.apply({"params": p}, t))

    def ppl(p) -> dict:
        return {
            s: perplexity(lambda t: logits_fn(p, t), ds.split(s), cfg.eval_batch_size)["perplexity"]
            for s in splits
        }

    # -- dense and one-shot baselines (kept in oneshot.json: a resumed run skips them)
    results_file = os.path.join(workdir, "oneshot.json")
    results = {}
    if os.path.isfile(results_file):
        with open(results_file) as f:
            results = json.load(f)
    if switch(config, "dense"):
        if "dense" not in results:
            results["dense"] = {**ppl(params), "changes_weights": False}
            utils.write_json(results_file, results)
        utils.log(f"dense perplexity: {_fmt(results['dense'])}")
    calib = text.calibration_windows(
        ds, min(cfg.calibration_samples, len(ds.train)), seed=config.seed
    )
    prior_file = os.path.join(workdir, "prior_mask.npz")
    given = switch(config, "prior_masks")
    if given and train != "none" and not os.path.isfile(prior_file):
        src = os.path.join(given, f"masks_{cfg.prior}.npz")
        if not os.path.isfile(src):
            raise MissingInputError(
                f"lm.prior_masks={given!r} has no masks_{cfg.prior}.npz; run the one-shot "
                f"piece with lm.save_masks=('{cfg.prior}',) there first"
            )
        shutil.copyfile(src, prior_file)
    saved = tuple(switch(config, "save_masks"))
    todo = list(dict.fromkeys([*cfg.baselines, *saved]))
    if train != "none" and not os.path.isfile(prior_file) and cfg.prior not in todo:
        todo.append(cfg.prior)

    def done(name):
        have_prior = name != cfg.prior or train == "none" or os.path.isfile(prior_file)
        have_saved = name not in saved or os.path.isfile(os.path.join(workdir, f"masks_{name}.npz"))
        return (name in results or name not in cfg.baselines) and have_prior and have_saved

    for name in todo:
        if done(name):
            if name in results:
                utils.log(f"{name}: {_fmt(results[name])} (from {results_file})")
            continue
        t = time.time()
        method = "sparsegpt" if name == "sparsegpt_update" else name
        bar = _bar(len([k for k in params if k.startswith(("layers_", "h_"))]), 0, name)
        cal = calibrate_lm(
            module,
            params,
            calib,
            method=method,
            sparsity=sparsity,
            pattern=pattern,
            update=name == "sparsegpt_update",
            batch_size=cfg.calibration_batch,
            blocksize=cfg.blocksize,
            percdamp=cfg.percdamp,
            filter_fn=filter_fn,
            on_block=(lambda i, n: bar.update(1)) if bar is not None else None,
        )
        if bar is not None:
            bar.close()
        if name == cfg.prior and train != "none":
            _save_masks(prior_file, cal.masks)
        if name in saved:
            _save_masks(os.path.join(workdir, f"masks_{name}.npz"), cal.masks)
        if name in cfg.baselines:
            results[name] = {
                **ppl(cal.params),
                "changes_weights": cal.update,
                "calibration_tokens": cal.tokens if method != "magnitude" else 0,
                "seconds": time.time() - t,
            }
            utils.write_json(results_file, results)
            note = " (changes the kept weights)" if cal.update else ""
            utils.log(f"{name}{note}: {_fmt(results[name])} in {time.time() - t:.0f} s")

    summary = {
        "mode": "lm",
        "train": train,
        "model": arch,
        "seed": config.seed,
        "pretrained_checkpoint": path,
        "dataset": cfg.dataset,
        "seq_len": cfg.seq_len,
        "pattern": str(pattern) if pattern else None,
        "sparsity": pattern.sparsity if pattern else config.sparsity,
        "unstructured": None if pattern else cfg.unstructured,
        "prior": cfg.prior if train != "none" else None,
        "evaluate_test": "test" in splits,
        "val_tokens": int(np.size(ds.val[:, 1:])) if len(ds.val) else 0,
        "test_tokens": int(np.size(ds.test[:, 1:])) if "test" in splits else 0,
        "calibration_windows": int(len(calib)),
        "baselines": {b: results[b] for b in cfg.baselines},
    }
    if "dense" in results:
        summary["dense_perplexity"] = {s: results["dense"][s] for s in splits}
    if train == "none":
        # The run's own result: its one baseline, or the dense model when it has none.
        only = list(cfg.baselines) or (["dense"] if "dense" in results else [])
        if len(only) == 1:
            summary["perplexity"] = {s: results[only[0]][s] for s in splits}
        summary.update(steps=0, tokens_seen=0, wall_seconds=time.time() - t0)
        return _close(summary, workdir, results)
    summary.update(
        _train(config, workdir, module, params, ds, filter_fn, pattern, ppl, path, logits_fn)
    )
    summary["wall_seconds"] = time.time() - t0
    return _close(summary, workdir, results)


def _close(summary: dict, workdir: str, results: dict) -> dict:
    utils.write_json(os.path.join(workdir, "summary.json"), summary)
    rows = [(k, results[k]) for k in ("dense", *summary["baselines"]) if k in results]
    if "final_perplexity" in summary:
        rows.append(
            ("jackpot" if summary["train"] == "scores" else "tuned", summary["final_perplexity"])
        )
    utils.log(f"{'':18s} {'val ppl':>10s} {'test ppl':>10s}")
    for name, r in rows:
        utils.log(f"{name:18s} {r['val']:10.3f} {r.get('test', math.nan):10.3f}")
    print_summary_block(summary)
    return summary


def _train(config, workdir, module, params, ds, filter_fn, pattern, ppl, path, logits_fn):
    """The jackpot search (``lm.train='scores'``) or weight tuning (``'weights'``) from the
    prior's mask; returns the summary's fields of that part. ``logits_fn(params, tokens)`` is
    the run's jitted model (one compilation for every perplexity of the run)."""
    cfg = config.lm
    train = switch(config, "train")
    prior = _load_masks(os.path.join(workdir, "prior_mask.npz"), params)
    batch = int(config.search.get("batch_size") or config.batch_size)
    per_step = batch * cfg.seq_len
    steps = cfg.steps or math.ceil(cfg.tokens / per_step)
    interval = min(cfg.eval_every or steps, steps)
    intervals = math.ceil(steps / interval)
    opt_cfg = config.search if train == "scores" else config.finetune
    tx, schedule = core.make_optimizer(opt_cfg, 1, steps)
    mesh = core.make_mesh(config.num_devices)
    core.check_batch(batch, mesh, "search.batch_size")
    if text.num_batches(ds, batch) == 0:
        raise InputError(
            f"the training split has {len(ds.train)} windows, fewer than the search's batch of "
            f"{batch}: lower search.batch_size or lm.seq_len"
        )
    options = core.compute_options(config)
    if train == "scores":
        budget = search_budget(params, filter_fn, config)
        init = core.init_search(
            params,
            apply_fn=module.apply,
            tx=tx,
            sparsity=config.sparsity,
            pattern=pattern,
            distribution="uniform",
            filter_fn=filter_fn,
            init="magnitude",
            score_kept=config.search.score_kept,
            score_pruned=config.search.score_pruned,
            mask_update=config.search.mask_update,
            use_abs=config.search.use_abs,
            seed=config.seed,
        )
        # MaskLLM's prior: the one-shot mask as the two score levels (instead of magnitude's).
        scores = jm.init_scores_from_mask(
            prior, config.search.score_kept, config.search.score_pruned
        )
        state = init.state.replace(
            params=scores,
            opt_state=tx.init(scores),
            rule_state=prior if config.search.mask_update == "swap" else None,
        )
        step = core.make_search_step(
            module.apply,
            tx,
            budget,
            mask_update=config.search.mask_update,
            use_abs=config.search.use_abs,
            loss_fn=next_token_loss,
            options=options,
        )
        frozen = params

        def current_masks(state):
            return utils.as_numpy(
                core.current_masks(
                    state,
                    budget,
                    mask_update=config.search.mask_update,
                    use_abs=config.search.use_abs,
                )
            )

        def current_params(state):
            return jm.apply_masks(params, current_masks(state))

        tracker = core.MaskTracker(current_masks, prior)
    else:
        # Weight tuning: the prior's mask fixed (state.frozen), the kept weights of the pruned
        # kernels trained; every other leaf gets a zero update.
        tx = optax.multi_transform(
            {"train": tx, "freeze": optax.set_to_zero()}, _weight_labels(params, filter_fn)
        )
        state = core.SearchState.create(
            apply_fn=module.apply, params=params, tx=tx, seed=config.seed, frozen=prior
        )
        step = core.make_train_step(
            module.apply,
            tx,
            params_fn=core.masked_weights,
            loss_fn=next_token_loss,
            options=options,
        )
        frozen = prior

        def current_masks(state):
            return prior

        def current_params(state):
            return jm.apply_masks(state.params, prior)

        tracker = None

    ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
    start = 0
    label = "lm search" if train == "scores" else "lm weight tuning"
    try:
        restored = ckpt.restore_latest(state.checkpoint_view())
        if restored is not None:
            start, saved = restored
            state = saved.replace(frozen=frozen)
            utils.log(f"resuming {workdir} from interval {start} (step {int(saved.step)})")
        log = MetricsLog(os.path.join(workdir, "metrics.jsonl"), start)
        state = core.replicate(mesh, utils.as_numpy(state))
        done = int(jax.device_get(state.step))
        if tracker is not None and start:
            tracker.previous = current_masks(state)
        batches = _batches(ds, batch, config.seed, done, mesh)
        bar = _bar(steps, done, label)
        for k in range(start, intervals):
            n = min(interval, steps - k * interval)
            t = time.time()
            state, record = core.run_epoch(
                step,
                state,
                batches,
                steps=n,
                epoch=k,
                tracker=tracker,
                on_step=(lambda i, m: bar.update(1)) if bar is not None else None,
                label=label,
                what="scores" if train == "scores" else "weights",
                lr=opt_cfg.lr,
            )
            done = k * interval + n
            val = perplexity(
                lambda x: logits_fn(current_params(state), x), ds.val, cfg.eval_batch_size
            )["perplexity"]
            line = {
                "epoch": k + 1,
                "step": done,
                "tokens": done * per_step,
                "loss": record["loss"],
                "val_perplexity": val,
                "learning_rate": float(schedule(done - 1)),
                "overlap_with_prior": record.get("overlap_with_init"),
                "mask_flips": record.get("mask_flips"),
                "seconds": time.time() - t,
            }
            log.append(line)
            ckpt.save(k + 1, state.checkpoint_view())
            moved = (
                f", overlap with the prior {line['overlap_with_prior']:.4f}"
                if line["overlap_with_prior"] is not None
                else ""
            )
            utils.log(
                f"{label} step {done}/{steps} ({done * per_step} tokens): loss "
                f"{record['loss']:.4f}, val perplexity {val:.3f}{moved}"
            )
        if bar is not None:
            bar.close()
    finally:
        ckpt.close()
    masks = current_masks(state)
    masked = utils.as_numpy(current_params(state))
    final = ppl(masked)
    utils.log(f"{'jackpot' if train == 'scores' else 'tuned'} perplexity: {_fmt(final)}")
    _save_masks(os.path.join(workdir, "final_mask.npz"), masks)
    jackpot = None
    if switch(config, "export"):
        meta_config = ml_collections.ConfigDict(
            {
                "model": config.model,
                "sparsity": config.sparsity,
                "search": {"pattern": config.search.pattern},
            }
        )
        opts = ckpt_lib.load_model_info(path)["options"]
        jackpot = export.write_jackpot(workdir, meta_config, opts, masks, {"params": masked}, path)
    if not switch(config, "keep_checkpoints"):
        shutil.rmtree(os.path.join(workdir, "checkpoints"), ignore_errors=True)
    n_steps = int(jax.device_get(state.step))
    out = {
        "perplexity": final,
        "final_perplexity": final,
        "steps": n_steps,
        "tokens_seen": n_steps * per_step,
        "batch_size": batch,
        "learning_rate": opt_cfg.lr,
        "overlap_with_prior": float(jm.overlap(masks, prior)),
        "pattern_satisfied": (
            jm.pattern_summary(masks, pattern)["pattern_satisfied"] if pattern else None
        ),
        "jackpot": jackpot,
    }
    if train == "scores":
        out["jackpot_perplexity"] = final  # the name the LM mode has always written
    return out


def _batches(ds, batch: int, seed: int, start: int, mesh):
    """Training batches from global step ``start`` on, epoch after epoch, on the mesh."""
    per_epoch = text.num_batches(ds, batch)
    s = start
    while True:
        epoch, b = divmod(s, per_epoch)
        for x, y in text.train_batches(ds, batch, seed=seed, epoch=epoch, start=b):
            yield core.shard_batch(mesh, (x, y))
        s = (epoch + 1) * per_epoch
