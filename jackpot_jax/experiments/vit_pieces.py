"""The ViT study's pieces (`vit_study`): recipe runs at a sparsity or an N:M pattern, and a
mask-evaluation piece (every criterion's mask, overlaps, pruned fraction per ViT kernel); a
kernel path's module type and depth."""

from __future__ import annotations

import json
import os
import re

import numpy as np

from jackpot_jax import method as jm
from jackpot_jax import utils
from jackpot_jax.experiments.common import parse_optimizer, recipe_overrides, recipe_run
from jackpot_jax.experiments.study_pieces import Study, level_name, pattern_overrides
from jackpot_jax.pipeline import export

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
    """A recipe's part of a piece name: optimiser, lr, pruned score (jackpot) and budget."""
    opt, lr = parse_optimizer(recipe["optimizer"])
    if kind == "jackpot":
        return f"{opt}_lr{lr:g}_s{recipe['score_pruned']:g}_{recipe['distribution']}"
    return f"{opt}_lr{lr:g}_{recipe['distribution']}"


class VitStudy(Study):
    """The ViT study's pieces: recipe runs and a mask-evaluation piece that also handles N:M."""

    def recipe_run(self, kind, seed, recipe, level, selection=False) -> dict | None:
        """One jackpot search or weight-tuning run of `recipe` at `level` (a sparsity or an N:M
        pattern); None while only planned. A selection run and its seed's dense checkpoint
        never evaluate the test split."""
        c, net = self.c, self.c.network
        sparsity, pattern = level_of(level)
        epochs = c.search_epochs if kind == "jackpot" else c.tune_epochs
        mode, over = recipe_overrides(kind, recipe, epochs)
        name = f"{kind}_{recipe_tag(kind, recipe)}_{level_name(sparsity, pattern)}_e{epochs}"
        over.update(pattern_overrides(pattern))
        return recipe_run(self, net, seed, name, mode, over, sparsity, selection)

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
        _, jackpot_masks, _, _ = export.load_jackpot(jackpot_dir)
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
