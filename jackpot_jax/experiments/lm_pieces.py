"""The LM study's pieces (`lm_study`): the model converted once, the dense and magnitude
perplexities (no data: measured once), each seed's one-shot baselines with the priors' masks,
and the jackpot searches and weight-tuning runs from a prior; the learning-rate line search
that selects their recipes; a kernel path's module type and depth and the per-kernel overlap
of two masks.

Every piece is one `pipeline.lm.run_lm` run in DIR/<network>/seed<k>/<name>/ (its
summary.json says it is done), so rerunning the study resumes it; a killed search resumes
from its last checkpoint. The pieces run in one process, in the order the study asks for
them (one SmolLM2 run already keeps every core busy).
"""

from __future__ import annotations

import copy
import json
import math
import os
import re
import time

import ml_collections
import numpy as np

from jackpot_jax import utils
from jackpot_jax.errors import ConfigError, NonFiniteError
from jackpot_jax.experiments.runner import Pieces
from jackpot_jax.pipeline import lm

# A prunable kernel's module type and depth, from its '/'-joined path in `models.llama`.
MODULE_TYPES = ("q", "k", "v", "o", "gate", "up", "down")
_KERNEL = re.compile(r"layers_(\d+)/(self_attn|mlp)/(q|k|v|o|gate|up|down)_proj/kernel$")
KINDS = ("jackpot", "tune")  # a search over scores from the prior; the prior's weights tuned


def module_of(path: str) -> tuple[str, int] | None:
    """(module type, block index) of a Llama kernel path, e.g.
    'layers_3/self_attn/q_proj/kernel' -> ('q', 3); None for anything else."""
    m = _KERNEL.search(path)
    return None if m is None else (m.group(3), int(m.group(1)))


def level_name(level) -> str:
    """A level's part of a piece name: '2:4' -> '2of4', 0.5 -> 'p0.5'."""
    return level.replace(":", "of") if isinstance(level, str) else f"p{float(level):g}"


def level_label(level) -> str:
    """A level as the tables write it: '2:4', '50% unstructured'."""
    return level if isinstance(level, str) else f"{float(level):.0%} unstructured"


def level_overrides(level) -> dict:
    """The pipeline overrides of a level: an N:M pattern, or a sparsity per output row."""
    if isinstance(level, str):
        return {"search.pattern": level, "sparsity": 0.5}
    return {"search.pattern": "", "sparsity": float(level)}


def read_masks(path: str) -> dict[str, np.ndarray]:
    """{kernel path: 0/1 uint8 mask} of a bit-packed mask file (`pipeline.lm`'s format)."""
    with np.load(path) as z:
        out = {}
        for key in z.files:
            if key.startswith("bits/"):
                p = key[5:]
                shape = tuple(int(x) for x in z[f"shape/{p}"])
                out[p] = np.unpackbits(z[key], count=int(np.prod(shape))).reshape(shape)
    return out


def layer_overlaps(masks: dict, prior: dict) -> dict[str, float]:
    """Per kernel: Eq. 7's overlap ``1 - ||m - m'||_1 / k`` of one kernel (k its size), the
    share of its entries on which the two masks agree."""
    if sorted(masks) != sorted(prior):
        raise ValueError("the two mask files hold different kernels")
    return {
        p: 1.0 - float(np.abs(masks[p].astype(np.int8) - prior[p].astype(np.int8)).mean())
        for p in masks
    }


def line_search(evaluate, grid, runs: int, ratio: float):
    """Selects a learning rate by validation perplexity (lower is better) in exactly ``runs``
    evaluations: every level of ``grid``, then, while runs are left, one level beyond the best
    when it sits at an edge of what was tried (``best / ratio`` or ``best * ratio``: a grid
    point beyond the best on each side), else the geometric midpoint between the best and
    its better neighbour. ``evaluate(lr) -> float | None`` (None: not known yet).

    Returns (best lr or None, [(lr, value)] in the order evaluated, finished, best at an
    edge). A search that stops on a missing value is not finished."""
    grid = sorted(float(x) for x in grid)
    if len(grid) > runs:
        raise ValueError(f"a grid of {len(grid)} levels needs at least as many runs, not {runs}")
    seen: dict[float, float] = {}

    def value(lr):
        lr = float(f"{lr:.3g}")  # the names stay readable, the levels reproducible
        if lr not in seen:
            v = evaluate(lr)
            if v is None:
                return lr, None
            seen[lr] = v
        return lr, seen[lr]

    for lr in grid:
        if value(lr)[1] is None:
            return None, list(seen.items()), False, None
    while len(seen) < runs:
        tried = sorted(seen)
        best = min(tried, key=lambda x: seen[x])
        i = tried.index(best)
        if i == 0:
            nxt = best / ratio
        elif i == len(tried) - 1:
            nxt = best * ratio
        else:
            lo, hi = tried[i - 1], tried[i + 1]
            nxt = math.sqrt(best * (lo if seen[lo] < seen[hi] else hi))
        lr, v = value(nxt)
        if v is None:
            return None, list(seen.items()), False, None
        if len(seen) < runs and lr in tried:  # rounding met a level tried: nothing new left
            break
    tried = sorted(seen)
    best = min(tried, key=lambda x: seen[x])
    return best, list(seen.items()), True, best in (tried[0], tried[-1])


class LmPieces(Pieces):
    """The LM study's pieces. ``config.base`` is every run's pipeline config (mode 'lm');
    ``config.network`` the model's architecture name (the folder and the logs' 'model')."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        if config.get("workers", 1) != 1:
            raise ConfigError(
                f"workers={config.workers}: the LM study runs in one process (one SmolLM2 "
                "run already uses every core); set workers=1"
            )
        self.c = config
        self.workdir = os.path.abspath(workdir)
        os.makedirs(self.workdir, exist_ok=True)
        self.plan = None  # no planning: the pieces run in the order the study asks for them
        self.ds = self.mesh = None  # every run loads its own text and mesh
        self.ran = 0

    # -- the model, converted once
    def source(self) -> str:
        """The converted model's directory (``config.source`` converted into
        DIR/source_model on first use); ``base.pretrained`` when the config has no source."""
        b = self.c.base
        if not self.c.get("source"):
            return os.path.abspath(b.pretrained)
        cfg = copy.deepcopy(b)
        cfg.unlock()
        cfg.lm.source, cfg.pretrained = self.c.source, ""
        return lm.model_dir(cfg, self.workdir)

    # -- one run
    def run(self, seed: int, name: str, **over) -> dict:
        """Runs (or reads back) one `run_lm` piece with dotted ``over``rides; returns its
        summary with ``metrics`` and ``dir``. A run whose loss or trainables became
        non-finite is a finished piece with ``diverged`` (a selection's high learning rate
        must not stop the study)."""
        path = self.folder(self.c.network, seed, name)
        summary_file = os.path.join(path, "summary.json")
        if not os.path.exists(summary_file):
            t0 = time.time()
            print(f"[pieces] {self.c.network} seed{seed} {name} ...", flush=True)
            cfg = self.cfg(self.c.network, seed, pretrained=self.source(), **over)
            try:
                lm.run_lm(cfg, path)
            except NonFiniteError as e:
                os.makedirs(path, exist_ok=True)
                utils.write_json(
                    summary_file,
                    {"diverged": str(e), "seed": seed, "final_perplexity": None, "steps": 0},
                )
                print(f"[pieces] {name}: diverged ({e})", flush=True)
            self.ran += 1
            print(
                f"[pieces] {self.c.network} seed{seed} {name} done in {time.time() - t0:.0f}s",
                flush=True,
            )
        with open(summary_file) as f:
            summary = json.load(f)
        metrics = os.path.join(path, "metrics.jsonl")
        summary["metrics"] = (
            [json.loads(x) for x in open(metrics)] if os.path.exists(metrics) else []
        )
        summary["dir"] = path
        return summary

    def cfg(self, network, seed, **over) -> ml_collections.ConfigDict:
        c = copy.deepcopy(self.c.base)
        c.unlock()
        c.model, c.seed = network, seed
        c.lm.source = ""
        c.update_from_flattened_dict(over)
        return c

    # -- the pieces of the study: one result each (the summary's ``perplexity``)
    def dense(self) -> dict:
        """The dense perplexities (no data, no seed: one piece, at the first final seed)."""
        return self.run(
            self.c.final_seeds[0],
            "dense",
            **{"lm.train": "none", "lm.dense": True, "lm.baselines": (), "lm.evaluate_test": True},
        )

    def oneshot(self, seed: int, level, method: str, selection: bool = False) -> dict:
        """One one-shot baseline at ``level`` from the seed's calibration sample ('magnitude'
        reads no data: one piece for every seed, at the first final seed); a prior's masks
        are saved for the runs that start from it. A selection seed's: validation only."""
        c = self.c
        if method == "magnitude":
            seed, selection = c.final_seeds[0], False
        return self.run(
            seed,
            piece_name(method, level, selection),
            **level_overrides(level),
            **{
                "lm.train": "none",
                "lm.dense": False,
                "lm.baselines": (method,),
                "lm.save_masks": (method,) if method in c.priors else (),
                "lm.evaluate_test": not selection,
            },
        )

    def train_run(self, kind: str, seed: int, level, lr: float, prior: str, selection=False):
        """A jackpot search (``kind='jackpot'``) or weight tuning (``'tune'``) of ``steps``
        steps from the ``prior``'s mask of the seed's one-shot piece at ``level``, learning
        rate ``lr``. Selection runs evaluate no test perplexity."""
        c = self.c
        one = self.oneshot(seed, level, prior, selection)  # the prior's masks first
        lr_key = "search.lr" if kind == "jackpot" else "finetune.lr"
        return self.run(
            seed,
            f"{kind}_{prior}_lr{lr:g}_{level_name(level)}_s{c.steps}",
            **level_overrides(level),
            **{
                "lm.train": "scores" if kind == "jackpot" else "weights",
                "lm.prior": prior,
                "lm.prior_masks": one["dir"],
                "lm.dense": False,
                "lm.baselines": (),
                "lm.save_masks": (),
                "lm.evaluate_test": not selection,
                "lm.steps": c.steps,
                "lm.eval_every": c.eval_every,
                lr_key: lr,
            },
        )


def piece_name(method: str, level, selection: bool = False) -> str:
    """A one-shot piece's name: 'wanda_2of4', a selection seed's 'wanda_val_2of4'."""
    return f"{method}{'_val' if selection else ''}_{level_name(level)}"
