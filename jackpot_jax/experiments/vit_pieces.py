"""The ViT study's pieces (`vit_study`): recipe runs at a sparsity or an N:M pattern (over the
pre-trained ViT, or over a randomly initialised one: the random-init control), the dense model
trained more epochs (the dense + N epochs control), and a mask-evaluation piece (every
criterion's mask, overlaps, pruned fraction per ViT kernel and over all prunable weights); a
kernel path's module type and depth. Final seeds may share a dense model (`dense_of`)."""

from __future__ import annotations

import json
import os
import re

import numpy as np

from jackpot_jax import method as jm
from jackpot_jax import utils
from jackpot_jax.errors import ConfigError
from jackpot_jax.experiments.common import parse_optimizer, recipe_overrides, recipe_run
from jackpot_jax.experiments.study_pieces import Study, level_name, pattern_overrides
from jackpot_jax.pipeline import export, pruning

# A prunable kernel's module type and depth, from its '/'-joined path in `models.vit`.
MODULE_TYPES = ("patch_embed", "query", "key", "value", "attn_out", "mlp_fc1", "mlp_fc2")
_BLOCK = re.compile(r"blocks_(\d+)/(attn/(query|key|value|out)|mlp/(fc1|fc2))/kernel$")


def module_of(path: str) -> tuple[str, int] | None:
    """(module type, depth) of a ViT kernel path: the patch embedding is depth 0, block i is
    depth i + 1; None for anything else."""
    if path.endswith("patch_embed/kernel"):
        return "patch_embed", 0
    m = _BLOCK.search(path)
    if m is None:
        return None
    kind = m.group(3) or m.group(4)
    kind = {"out": "attn_out", "fc1": "mlp_fc1", "fc2": "mlp_fc2"}.get(kind, kind)
    return kind, int(m.group(1)) + 1


def recipe_tag(kind: str, recipe: dict) -> str:
    """A recipe's part of a piece name: optimiser, lr, pruned score (jackpot), weight decay and
    batch (when the recipe sets them) and budget."""
    opt, lr = parse_optimizer(recipe["optimizer"])
    tag = f"{opt}_lr{lr:g}"
    if kind == "jackpot":
        tag += f"_s{recipe['score_pruned']:g}"
    if "weight_decay" in recipe:
        tag += f"_wd{recipe['weight_decay']:g}"
    if "batch_size" in recipe:
        tag += f"_b{recipe['batch_size']}"
    return f"{tag}_{recipe['distribution']}"


def split_recipe(kind: str, recipe: dict) -> tuple[dict, dict]:
    """(the recipe `common.recipe_overrides` reads, the overrides it does not know): a
    ``weight_decay`` factor goes to the mode's section (``search`` or ``finetune``)."""
    recipe, extra = dict(recipe), {}
    if "weight_decay" in recipe:
        section = "search" if kind == "jackpot" else "finetune"
        extra[f"{section}.weight_decay"] = float(recipe.pop("weight_decay"))
    return recipe, extra


def dense_map(config) -> dict[int, int]:
    """{final seed: the seed whose dense model it uses} from ``config.dense_of`` (pairs
    (seed, dense seed)); a seed not named uses its own. Raises ConfigError for a pair that is
    not two seeds or that points at the selection seed (whose dense model never sees the test
    split)."""
    out = {}
    for pair in config.get("dense_of", ()) or ():
        if len(pair) != 2 or not all(isinstance(x, int) for x in pair):
            raise ConfigError(f"dense_of entry {pair!r}; expected a pair (seed, dense seed)")
        if pair[1] == config.select_seed:
            raise ConfigError(
                f"dense_of entry {tuple(pair)}: the selection seed {config.select_seed}'s dense "
                "model never evaluates the test split; share a final seed's model instead"
            )
        out[pair[0]] = pair[1]
    return out


class VitStudy(Study):
    """The ViT study's pieces: recipe runs, the dense + N epochs control and a mask-evaluation
    piece that also handles N:M. A seed's dense model is ``dense_map(config)``'s."""

    def pretrained(self, network, seed, **over) -> dict:
        """The dense checkpoint seed `seed` starts from: its own, or the one `dense_of` names."""
        return super().pretrained(network, dense_map(self.c).get(seed, seed), **over)

    def recipe_run(
        self, kind, seed, recipe, level, selection=False, weights="pretrained"
    ) -> dict | None:
        """One jackpot search or weight-tuning run of `recipe` at `level` (a sparsity or an N:M
        pattern); None while only planned. ``weights='random'``: the search over a randomly
        initialised ViT of the same architecture (the random-init control; jackpot only). A
        selection run and its seed's dense checkpoint never evaluate the test split."""
        c, net = self.c, self.c.network
        if weights not in ("pretrained", "random") or (weights == "random" and kind != "jackpot"):
            raise ConfigError(
                f"weights={weights!r} for a {kind} run; expected 'pretrained', or 'random' for "
                "a jackpot search"
            )
        sparsity, pattern = level_of(level)
        epochs = c.search_epochs if kind == "jackpot" else c.tune_epochs
        known, extra = split_recipe(kind, recipe)
        mode, over = recipe_overrides(kind, known, epochs)
        over.update(extra)
        prefix = kind
        if weights == "random":
            over["search.weights"] = "random"
            prefix = f"{kind}_randominit"
        name = f"{prefix}_{recipe_tag(kind, recipe)}_{level_name(sparsity, pattern)}_e{epochs}"
        over.update(pattern_overrides(pattern))
        return recipe_run(self, net, seed, name, mode, over, sparsity, selection)

    def dense_more(self, seed) -> dict | None:
        """The seed's dense model trained ``config.dense_more_epochs`` more epochs with the
        pretraining recipe (its optimiser, lr, weight decay and schedule restarted): the
        dense + N epochs control. A fine-tuning run with a mask that keeps every weight
        (sparsity 0). None while only planned."""
        c, pre = self.c, self.c.base.pretrain
        epochs = c.dense_more_epochs
        over = {
            "finetune.epochs": epochs,
            "finetune.mask": "magnitude",
            "finetune.optimizer": pre.optimizer,
            "finetune.lr": pre.lr,
            "finetune.weight_decay": pre.weight_decay,
            "finetune.schedule": pre.schedule,
            "search.distribution": "uniform",  # sparsity 0: every weight kept
        }
        return recipe_run(self, c.network, seed, f"dense_more_e{epochs}", "finetune", over, 0.0)

    def masks_report(self, seed, level, jackpot_dir, distribution) -> dict | None:
        """Test accuracy of every criterion's mask (no tuning) at `level` under the budget
        `distribution`, its overlap with the jackpot in `jackpot_dir`, and the jackpot's and
        the magnitude mask's pruned fraction per prunable kernel. None while only planned."""
        net = self.c.network
        sparsity, pattern = level_of(level)
        tag = os.path.basename(jackpot_dir)
        path = self.folder(net, seed, f"masks_{tag}.json")
        if os.path.exists(path):
            with open(path) as f:
                return json.load(f)
        dense = self.pretrained(net, seed)
        needs = [os.path.join(d, "summary.json") for d in (dense["dir"], jackpot_dir)]
        call = ("masks_report", (seed, level, jackpot_dir, distribution), {})
        if self.planned(path, needs, 1, call):
            return None
        _, jackpot_masks, jackpot_params, _ = export.load_jackpot(jackpot_dir)
        c = self.cfg(
            net,
            seed,
            sparsity=sparsity,
            pretrained=os.path.join(dense["dir"], "model"),
            **{"search.distribution": distribution},
            **pattern_overrides(pattern),
        )
        out = {"criteria": {}, "layers": {}}
        for name, masks, acc, overlap in self.criterion_masks(c, seed, jackpot_masks):
            out["criteria"][name] = {"test_accuracy": acc, "overlap_with_jackpot": overlap}
            if name == "magnitude":
                out["layers"]["magnitude"] = pruned_fractions(masks)
        out["layers"]["jackpot"] = pruned_fractions(jackpot_masks)
        filter_fn = pruning.prune_filter(c)
        out["sparsity_all"] = {
            "jackpot": sparsity_over_prunable(jackpot_params, jackpot_masks, filter_fn)
        }
        utils.write_json(path, out)
        return out


def level_of(level) -> tuple[float, str]:
    """(sparsity, pattern) of a level: a float sparsity, or an N:M pattern string."""
    if isinstance(level, str):
        pattern = jm.parse_pattern(level)
        return pattern.sparsity, str(pattern)
    return float(level), ""


def pruned_fractions(masks) -> dict[str, float]:
    """The pruned fraction (1 - mean of the mask) of every masked parameter, by its path."""
    flat = utils.flatten_dict(masks)
    return {k: float(1.0 - np.mean(np.asarray(m))) for k, m in flat.items() if m is not None}


def sparsity_over_prunable(params, masks, filter_fn) -> float:
    """The pruned fraction over EVERY prunable weight of `params` (those `filter_fn` selects):
    a prunable kernel with no mask (a kernel an N:M pattern does not fit, such as the ViT's
    patch embedding at 2:4) counts as kept, so this is what the model's weights really are."""
    flat_p = utils.flatten_dict(params)
    flat_m = utils.flatten_dict(masks)
    total = pruned = 0
    for path, leaf in flat_p.items():
        if not filter_fn(path, leaf):
            continue
        total += int(np.size(leaf))
        m = flat_m.get(path)
        if m is not None:
            pruned += int(np.size(m) - np.count_nonzero(np.asarray(m)))
    if not total:
        raise ValueError("the filter selects no prunable weight")
    return pruned / total
