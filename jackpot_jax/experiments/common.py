"""What the studies share: recipes as config overrides and as pieces, the coordinate search that
selects them, and the command line that runs a study chosen by name.

A *recipe* is a dict of factor -> level (``{"lr": 0.1, "score_pruned": 0.95}``) of one of two
kinds: ``"jackpot"`` (a search) or ``"weight_tuning"`` (a magnitude mask with its weights
fine-tuned). `recipe_overrides` turns it into a pipeline mode and dotted config overrides,
`recipe_run` into a piece; `select` runs the coordinate search over recipes and records every
point it evaluated. `cli` is the command line of ``python -m jackpot_jax.study`` and ``sweep``:
it runs the study that the config's ``study`` field names, from the registry it is given
(`jackpot_jax.experiments.registry.STUDIES`). This module imports no study.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from typing import NamedTuple

import ml_collections

from jackpot_jax.errors import ConfigError, JackpotError

# ---------------------------------------------------------------------------------------------
# Recipes
# ---------------------------------------------------------------------------------------------

# kind -> (pipeline mode, the factors a recipe of that kind may set)
RECIPE_KINDS = {
    "jackpot": (
        "search",
        (
            "batch_size",
            "lr",
            "optimizer",
            "score_pruned",
            "schedule",
            "mask_update",
            "distribution",
        ),
    ),
    "weight_tuning": ("finetune", ("batch_size", "lr", "optimizer", "schedule", "distribution")),
}


def plain(cfg) -> dict:
    """A ConfigDict (or any mapping) as a plain dict."""
    return cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else dict(cfg)


def parse_optimizer(level: str) -> tuple[str, float]:
    """'adamw/0.003' -> ('adamw', 0.003): an optimiser level names the optimiser and its lr
    together (their scales differ by orders of magnitude)."""
    name, _, lr = level.partition("/")
    try:
        return name, float(lr)
    except ValueError:
        raise ConfigError(f"optimizer level {level!r}; expected '<sgd|adamw>/<lr>'") from None


def recipe_overrides(kind: str, recipe: dict, epochs: int) -> tuple[str, dict]:
    """(mode, dotted config overrides) of a ``kind`` recipe run for ``epochs`` epochs.

    ``batch_size`` is the run's batch; ``lr``, ``schedule``, ``score_pruned`` and
    ``mask_update`` go to the mode's section; ``optimizer`` ('adamw/0.003') sets the mode's
    optimiser and lr; ``distribution`` is the search's budget, which a weight-tuning run's
    magnitude mask takes too. The 2023 ``mask_update='swap'`` ranks raw scores
    (``search.use_abs=False``), as the authors' code does. A weight-tuning run tunes the
    magnitude mask. Raises ConfigError for an unknown kind or factor."""
    if kind not in RECIPE_KINDS:
        raise ConfigError(f"kind={kind!r}; expected 'jackpot' or 'weight_tuning'")
    mode, factors = RECIPE_KINDS[kind]
    unknown = sorted(set(recipe) - set(factors))
    if unknown:
        raise ConfigError(
            f"{kind} recipe {recipe!r}: unknown factors {unknown}; expected some of {factors}"
        )
    over = {f"{mode}.epochs": epochs}
    for factor, level in recipe.items():
        if factor == "batch_size":
            over["batch_size"] = level
        elif factor == "optimizer":
            over[f"{mode}.optimizer"], over[f"{mode}.lr"] = parse_optimizer(level)
        elif factor == "distribution":
            over["search.distribution"] = level
        else:
            over[f"{mode}.{factor}"] = level
    if recipe.get("mask_update") == "swap":
        over["search.use_abs"] = False  # the 2023 code ranks raw scores
    if kind == "weight_tuning":
        over["finetune.mask"] = "magnitude"
    return mode, over


def recipe_run(
    st,
    network: str,
    seed: int,
    name: str,
    mode: str,
    overrides: dict,
    sparsity: float,
    selection: bool = False,
) -> dict | None:
    """The summary of one recipe's piece ``name`` (run now, or read back) on ``network``'s dense
    checkpoint of ``seed``, or None while it is only planned (``st`` a `runner.Pieces` with
    ``plan=True``). A ``selection`` run and its seed's dense checkpoint never evaluate the
    test split."""
    test = {"evaluate_test": False} if selection else {}
    dense = st.pretrained(network, seed, **test)
    r = st.piece(
        network,
        seed,
        name,
        mode,
        needs=[dense["dir"]],
        sparsity=sparsity,
        pretrained=os.path.join(dense["dir"], "model"),
        **overrides,
        **test,
    )
    return r if os.path.exists(os.path.join(r["dir"], "summary.json")) else None


# ---------------------------------------------------------------------------------------------
# Selection
# ---------------------------------------------------------------------------------------------


def coordinate_search(evaluate, start: dict, levels: dict, factors, max_rounds: int):
    """Coordinate descent: for each factor in turn, every level with the other factors at the
    best point so far; the highest value wins (a tie keeps the current level). Rounds repeat
    until one changes nothing or `max_rounds` are done.

    `evaluate(point) -> float | None` (None: not known yet). Returns (best point, {point key:
    value} of every evaluated point, finished): `finished` is False when a value was missing,
    and the search stopped there."""
    for f in factors:
        if f not in levels or start.get(f) not in levels[f]:
            raise ConfigError(
                f"factor {f!r}: the starting level {start.get(f)!r} is not "
                f"among its levels {levels.get(f)}"
            )
    best, seen = dict(start), {}

    def value(point):
        key = tuple(sorted(point.items()))
        if key not in seen:
            seen[key] = evaluate(point)
        return seen[key]

    for _ in range(max_rounds):
        changed = False
        for f in factors:
            points = [dict(best, **{f: v}) for v in levels[f]]
            values = [value(p) for p in points]
            if any(v is None for v in values):
                return best, seen, False
            top = max(values)
            if value(best) < top:
                best = points[values.index(top)]
                changed = True
        if not changed:
            break
    return best, seen, True


def select(
    evaluate, start: dict, levels: dict, factors, max_rounds: int, fields: dict, fixed=None
) -> tuple[dict, list[dict], bool]:
    """`coordinate_search` of `evaluate` (on the point with ``fixed`` factors added), as
    results.json records it. Returns (the best point with ``fixed``, one record per evaluated
    point in the order evaluated: ``fields`` then order, recipe, val_accuracy, selected, and
    whether the search finished; only a finished search marks a record selected)."""
    fixed = dict(fixed or {})
    best, seen, done = coordinate_search(
        lambda point: evaluate(dict(point, **fixed)), start, levels, tuple(factors), max_rounds
    )
    records = [
        {
            **fields,
            "order": order,
            "recipe": dict(dict(key), **fixed),
            "val_accuracy": val,
            "selected": dict(key) == best and done,
        }
        for order, (key, val) in enumerate(seen.items())
    ]
    return dict(best, **fixed), records, done


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------


class StudyRunner(NamedTuple):
    """A study of the registry: ``run(config, workdir) -> results`` runs (or resumes) it and
    writes DIR/report.md; ``lines(results)`` are what the command prints when it is done."""

    run: Callable[[ml_collections.ConfigDict, str], dict]
    lines: Callable[[dict], list[str]]


def study_of(config: ml_collections.ConfigDict, studies: Mapping[str, StudyRunner], default: str):
    """(name, runner) of the study that ``config.study`` names (``default`` without one).
    Raises ConfigError for a name the registry lacks."""
    name = config.get("study", default)
    if name not in studies:
        raise ConfigError(f"study={name!r} is not a study; expected one of {sorted(studies)}")
    return name, studies[name]


def cli(studies: Mapping[str, StudyRunner], default: str) -> None:
    """The command line ``--config FILE --workdir DIR`` (ml_collections overrides after the
    config): runs the study of ``studies`` that the config's ``study`` field names (``default``
    when the config has none) and prints its lines and the report's path. An error the user
    can fix (`JackpotError`) is printed as one ``error:`` line and exits with status 1."""
    from absl import app, flags, logging
    from ml_collections import config_flags

    from jackpot_jax import utils, xla_flags

    config_flags.DEFINE_config_file(
        "config",
        None,
        "Path to a study config (configs/study_*.py, sweep_*.py).",
        lock_config=False,
    )
    flags.DEFINE_string("workdir", None, "Where the pieces, report.md and results.json go.")
    flags.mark_flags_as_required(["config", "workdir"])

    def main(argv):
        logging.set_verbosity(logging.WARNING)
        utils.log(xla_flags.apply_recommended())  # before JAX starts its backend
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
        try:
            _, study = study_of(config, studies, default)
            res = study.run(config, workdir)
        except JackpotError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(1)
        for line in study.lines(res):
            print(line)
        print(f"report: {os.path.join(os.path.abspath(workdir), 'report.md')}")

    app.run(main)
