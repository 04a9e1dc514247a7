"""Do jackpots exist in vision transformers? A small ViT pretrained here on Fashion-MNIST, with
its controls (issue 29, items 4 and 5).

Run (resumable in pieces: rerun the same command to continue; about 4 hours of 2 CPU cores):
  python -m jackpot_jax.study --config configs/study_fashion_mnist_vit.py --workdir runs/study_vit_rerun
Smoke variant (tiny: a few hundred images, 1-2 epochs, one final seed; a few minutes):
  python -m jackpot_jax.study --config configs/study_fashion_mnist_vit.py --workdir runs/study_vit_quick \\
      --config.quick=True

Sized for 2 shared CPU cores, measured under the load of the day (load average ~10 on 2 cores,
so this process got about half a core): `vit_fmnist` with 7x7-pixel patches (a 4x4 grid: 16
tokens and the class token; 64 wide, 4 blocks of 4 heads, MLP 256) pretrained one epoch of the
full training set (55,000 images) at 311 images/s (214 s wall, 118 CPU-s) and searched one at
236 images/s (276 s wall, 132 CPU-s). At the ~1.5 free cores the study assumes that is about
80 s per dense epoch and 90 s per search or tuning epoch. So: the full training set (5,000
validation images held out; the 10,000-image test set), 20 dense epochs (AdamW, the recipe of
configs/fashion_mnist_vit.py; no augmentation: the pipeline has none for Fashion-MNIST) and
2-epoch searches and weight tuning (2 x 429 steps of batch 128, about the steps of the
previous study's 10 epochs of 10,000 images). Pieces: 3 dense models (seed 0 for the
selection, seeds 1 and 2; seed 3 shares seed 1's: `dense_of`), 8 + 8 selection runs, and per
final seed 4 levels x (jackpot, weight tuning, random-init jackpot), the dense + 2 epochs
control and 4 mask reports: about 22,000 CPU-s, 4 hours at 1.5 cores.
"""

import os
import runpy

import ml_collections

from jackpot_jax.pipeline.config import base_config


def _main_config():
    # configs/fashion_mnist_vit.py: the main-CLI config, with the recipe the study selected.
    here = os.path.dirname(os.path.abspath(__file__))
    return runpy.run_path(os.path.join(here, "fashion_mnist_vit.py"))


def get_config():
    vit = _main_config()
    main = vit["get_config"]()
    c = ml_collections.ConfigDict()
    c.study = "vit"  # the study `python -m jackpot_jax.study` runs: `experiments.vit_study`
    c.network = main.model
    b = c.base = base_config()
    b.model = c.network
    b.model_options.patch_size = main.model_options.patch_size
    b.dataset = main.dataset
    b.train_subset = 0  # the full training set
    b.val_examples = 5000
    b.batch_size = main.batch_size
    # Dense pretraining (not selected: a standard ViT recipe, the main config's).
    for key in ("optimizer", "lr", "weight_decay", "schedule"):
        b.pretrain[key] = main.pretrain[key]
    # The search's fixed settings; optimiser, lr, pruned score and budget are selected.
    b.search.schedule = "cosine_step"
    b.search.weight_decay = main.search.weight_decay  # SGD: added to the gradient; AdamW: x lr
    # Weight tuning of the magnitude mask (the baseline); optimiser and lr, weight decay and
    # batch are selected.
    b.finetune.schedule = "cosine_step"
    b.finetune.weight_decay = 0.0  # the starting level of the selected weight decay
    c.pretrain_epochs = main.pretrain.epochs
    c.search_epochs = 2  # 2 x 429 steps: the previous study's 10 epochs of 10,000 images
    c.tune_epochs = 2  # equal epochs: the baseline tunes as long as the jackpot searches
    c.dense_more_epochs = 2  # the dense + N epochs control: as many more epochs as the search

    c.select_seed = 0
    c.select_sparsity = 0.9
    c.max_rounds = 1  # one coordinate-descent round: 4 + 3 + 1 = 8 runs per method
    # An optimiser level names the optimiser and its lr together: '<sgd|adamw>/<lr>'.
    # The jackpot starts from the recipe the previous study selected (the main config's).
    start = f"{vit['SEARCH_OPTIMIZER']}/{vit['SEARCH_LR']:g}"
    c.jackpot_start = ml_collections.ConfigDict(
        dict(
            optimizer=start,
            distribution=vit["SEARCH_DISTRIBUTION"],
            score_pruned=vit["SEARCH_SCORE_PRUNED"],
        )
    )
    # Factors in the order coordinate descent visits them. Budgets: global_magnitude (per-layer
    # counts fixed by one magnitude threshold: the official code), global (scores ranked across
    # layers), uniform (every layer at the sparsity), erk (Erdos-Renyi-Kernel counts).
    # Both methods: a grid of 4 x 4 x 2 levels, 8 runs in one round; every numeric grid has a
    # point on each side of the previous study's choice (jackpot AdamW 0.01; weight tuning
    # AdamW 0.001 with weight decay 0, at the edge of its old grid).
    c.jackpot_factors = ("optimizer", "distribution", "score_pruned")
    c.jackpot_levels = ml_collections.ConfigDict(
        dict(
            optimizer=("sgd/0.4", "adamw/0.003", "adamw/0.01", "adamw/0.03"),
            distribution=("uniform", "global_magnitude", "global", "erk"),
            score_pruned=(0.95, 0.99),
        )
    )
    # The weight-tuning baseline's magnitude mask takes the selected jackpot's budget. Weight
    # decay: SGD's L2 on the gradient, AdamW's decoupled (x lr).
    c.wt_factors = ("optimizer", "weight_decay", "batch_size")
    c.wt_start = ml_collections.ConfigDict(
        dict(optimizer="adamw/0.001", weight_decay=0.0, batch_size=128)
    )
    c.wt_levels = ml_collections.ConfigDict(
        dict(
            optimizer=("sgd/0.03", "adamw/0.0003", "adamw/0.001", "adamw/0.003"),
            weight_decay=(0.0, 0.01, 0.05, 0.2),
            batch_size=(128, 64),
        )
    )

    c.final_seeds = (1, 2, 3)  # fresh: the selection used seed 0
    # Seeds that share another seed's dense model, (seed, dense seed): 4 dense models do not
    # fit the 4 hours; the report says which seeds share one.
    c.dense_of = ((3, 1),)
    c.sparsities = (0.5, 0.7, 0.9)
    c.patterns = ("2:4",)
    # The random-init control (the same search over a randomly initialised ViT) at these levels.
    c.random_init_levels = (0.5, 0.7, 0.9, "2:4")
    # Unless the `global` budget was selected: the selected recipe under it at this sparsity
    # too, to see where the jackpot prunes when it may move counts between layers (0: no; off
    # for the time budget).
    c.global_budget_level = 0.0
    c.workers = 2  # two processes keep both cores busy (one uses ~1.5 on this small model)

    c.quick = False  # --config.quick=True applies `quick_settings`
    c.quick_settings = ml_collections.ConfigDict(
        dict(
            pretrain_epochs=2,
            search_epochs=1,
            tune_epochs=1,
            dense_more_epochs=1,
            final_seeds=(1,),
            dense_of=(),
            sparsities=(0.9,),
            random_init_levels=(0.9,),
            train_subset=512,
            jackpot_levels=dict(
                optimizer=("adamw/0.01", "sgd/0.4"),
                distribution=("uniform", "global_magnitude"),
                score_pruned=(0.95,),
            ),
            wt_levels=dict(
                optimizer=("adamw/0.001", "adamw/0.003"),
                weight_decay=(0.0, 0.05),
                batch_size=(128,),
            ),
            workers=1,
        )
    )
    return c
