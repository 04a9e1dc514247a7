"""The study's piece kinds: jackpot searches, fine-tuning runs and criteria evaluations, each
under DIR/<network>/seed<k>/ and each starting from the seed's one dense checkpoint."""

from __future__ import annotations

import json
import os

from jackpot_jax import core, utils
from jackpot_jax import method as jm
from jackpot_jax.experiments.runner import Pieces
from jackpot_jax.pipeline import export, modes, pruning
from jackpot_jax.pipeline.evaluate import evaluate

CRITERIA = tuple(jm.CRITERIA)  # the registry, in its order: magnitude, snip, grasp, random


def level_name(sparsity, pattern: str) -> str:
    """A piece name's sparsity part: 'p0.9', or 'nm2of4' for an N:M pattern."""
    return f"nm{pattern.replace(':', 'of')}" if pattern else f"p{sparsity}"


def pattern_overrides(pattern: str) -> dict:
    # Only N:M pieces name the key: the other pieces' configs stay as they were.
    return {"search.pattern": str(jm.parse_pattern(pattern))} if pattern else {}


class Study(Pieces):
    """The paper's pieces (`Pieces` runs and reads them back)."""

    def search(
        self, network, seed, sparsity, epochs, init="magnitude", weights="pretrained", pattern=""
    ):
        """A search piece; with an N:M ``pattern`` ("2:4") the pattern replaces ``sparsity``."""
        name = f"search_{weights}_{init}_{level_name(sparsity, pattern)}_e{epochs}"
        dense = self.pretrained(network, seed)
        return self.piece(
            network,
            seed,
            name,
            "search",
            needs=[dense["dir"]],
            sparsity=sparsity,
            pretrained=os.path.join(dense["dir"], "model"),
            **{
                "search.epochs": epochs,
                "search.init": init,
                "search.weights": weights,
                **pattern_overrides(pattern),
            },
        )

    def finetune(
        self, network, seed, sparsity, epochs, mask, weights="pretrained", jackpot="", pattern=""
    ):
        name = f"finetune_{weights}_{mask}_{level_name(sparsity, pattern)}_e{epochs}"
        dense = self.pretrained(network, seed)
        over = {
            "finetune.epochs": epochs,
            "finetune.mask": mask,
            "finetune.weights": weights,
            "finetune.jackpot": jackpot,
            **pattern_overrides(pattern),
        }
        if weights == "random":  # training from initialisation: the pretraining recipe
            over.update(
                {
                    "finetune.lr": self.c.base.pretrain.lr,
                    "finetune.weight_decay": self.c.base.pretrain.weight_decay,
                }
            )
        needs = [dense["dir"]] + ([jackpot] if jackpot else [])
        return self.piece(
            network,
            seed,
            name,
            "finetune",
            needs=needs,
            sparsity=sparsity,
            pretrained=os.path.join(dense["dir"], "model"),
            **over,
        )

    def criteria(self, network, seed, sparsity) -> dict:
        """Test accuracy of each criterion's mask with no tuning, and its overlap with the
        short-budget jackpot at the same sparsity (Fig. 3 and 4 analogues)."""
        path = self.folder(network, seed, f"criteria_p{sparsity}.json")
        if os.path.exists(path):
            return json.load(open(path))
        dense = self.pretrained(network, seed)
        jackpot = self.search(network, seed, sparsity, self.c.short_epochs)
        needs = [os.path.join(d["dir"], "summary.json") for d in (dense, jackpot)]
        if self.planned(path, needs, 1, ("criteria", (network, seed, sparsity), {})):
            return {
                k: {"test_accuracy": 0.0, "overlap_with_jackpot": 0.0}
                for k in (*CRITERIA, "jackpot")
            }
        _, jackpot_masks, _, _ = export.load_jackpot(jackpot["dir"])
        c = self.cfg(
            network, seed, sparsity=sparsity, pretrained=os.path.join(dense["dir"], "model")
        )
        out = {
            name: {"test_accuracy": acc, "overlap_with_jackpot": overlap}
            for name, _, acc, overlap in self.criterion_masks(c, seed, jackpot_masks)
        }
        out["jackpot"] = {"test_accuracy": jackpot["test_accuracy"], "overlap_with_jackpot": 1.0}
        utils.write_json(path, out)
        return out

    def criterion_masks(self, c, seed, jackpot_masks):
        """(name, masks, test accuracy with no tuning, overlap with `jackpot_masks`) of every
        criterion's mask under the budget of pipeline config `c` (sparsity or N:M pattern),
        computed on `c.pretrained`'s dense network."""
        module, variables, _, _ = modes.dense_source(c, self.workdir, self.ds, self.mesh)
        filter_fn = pruning.prune_filter(c)
        budget = pruning.budget_for(c, variables["params"], filter_fn)
        for name in CRITERIA:
            masks = pruning.criterion_mask(
                name, c, module, variables, self.ds, seed, filter_fn, budget
            )
            masked = utils.variables_of(
                jm.apply_masks(variables["params"], masks), utils.batch_stats_of(variables)
            )
            acc = evaluate(
                module,
                masked,
                self.ds,
                "test",
                c.eval_batch_size,
                self.mesh,
                options=core.compute_options(c),
            )
            yield name, masks, acc["accuracy"], float(jm.overlap(masks, jackpot_masks))
