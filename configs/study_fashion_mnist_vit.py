"""Do jackpots exist in vision transformers? A small ViT pretrained here on Fashion-MNIST.

Run (resumable: rerun the same command to continue; about an hour on 2 CPU cores):
  python -m jackpot_jax.study --config configs/study_fashion_mnist_vit.py --workdir runs/study_vit
Smoke variant (tiny: a few hundred images, 1-2 epochs, one final seed; a minute or two):
  python -m jackpot_jax.study --config configs/study_fashion_mnist_vit.py --workdir runs/study_vit_quick \\
      --config.quick=True

Sized for 2 CPU cores: `vit_fmnist` with 7x7-pixel patches (a 4x4 grid: 16 tokens and the class
token; 64 wide, 4 blocks of 4 heads, MLP 256) trains at ~1,100 images/s there (the default
4x4-pixel patches: ~400 images/s, 50 tokens), so the study uses 10,000 training images (2,000
validation images held out of the training set; the full 10,000-image test set), 12
pretraining epochs (AdamW) and 10-epoch searches and weight tuning: about 430 epochs of 10,000
images in all, shared by two worker processes.
"""

import ml_collections

from jackpot_jax.pipeline.config import base_config


def get_config():
    c = ml_collections.ConfigDict()
    c.study = "vit"  # the study `python -m jackpot_jax.study` runs: `experiments.vit_study`
    c.network = "vit_fmnist"
    b = c.base = base_config()
    b.model = c.network
    b.model_options.patch_size = 7
    b.dataset = "fashion_mnist"
    b.train_subset = 10000
    b.val_examples = 2000
    b.batch_size = 128
    # Dense pretraining (not selected: a standard ViT recipe).
    b.pretrain.optimizer = "adamw"
    b.pretrain.lr = 1e-3
    b.pretrain.weight_decay = 0.05
    b.pretrain.schedule = "cosine_step"
    # The search's fixed settings; optimiser, lr, pruned score and budget are selected.
    b.search.schedule = "cosine_step"
    b.search.weight_decay = 5e-4  # SGD: added to the gradient; AdamW: decoupled (x lr)
    # Weight tuning of the magnitude mask (the baseline); optimiser and lr are selected.
    b.finetune.schedule = "cosine_step"
    b.finetune.weight_decay = 0.0  # as the CNN study's fine-tuning
    c.pretrain_epochs = 12
    c.search_epochs = 10
    c.tune_epochs = 10  # equal epochs: the baseline tunes as long as the jackpot searches

    c.select_seed = 0
    c.select_sparsity = 0.9
    c.max_rounds = 1  # one coordinate-descent round (CPU time)
    # An optimiser level names the optimiser and its lr together: '<sgd|adamw>/<lr>'.
    c.jackpot_start = ml_collections.ConfigDict(
        dict(optimizer="sgd/0.1", score_pruned=0.95, distribution="global_magnitude")
    )
    # Factors in the order coordinate descent visits them. Budgets: global_magnitude (per-layer
    # counts fixed by one magnitude threshold: the official code), global (scores ranked across
    # layers), uniform (every layer at the sparsity), erk (Erdos-Renyi-Kernel counts).
    c.jackpot_factors = ("optimizer", "distribution", "score_pruned")
    c.jackpot_levels = ml_collections.ConfigDict(
        dict(
            optimizer=("sgd/0.1", "sgd/0.4", "adamw/0.001", "adamw/0.01"),
            distribution=("global_magnitude", "global", "uniform", "erk"),
            score_pruned=(0.95, 0.99),
        )
    )
    # The weight-tuning baseline's magnitude mask takes the selected jackpot's budget.
    c.wt_factors = ("optimizer",)
    c.wt_start = ml_collections.ConfigDict(dict(optimizer="adamw/0.0001"))
    c.wt_levels = ml_collections.ConfigDict(
        dict(optimizer=("adamw/0.0001", "adamw/0.001", "sgd/0.01"))
    )

    c.final_seeds = (1, 2, 3)  # fresh: the selection used seed 0
    c.sparsities = (0.5, 0.7, 0.9)
    c.patterns = ("2:4",)
    # Unless the `global` budget was selected: the selected recipe under it at this sparsity
    # too, to see where the jackpot prunes when it may move counts between layers (0: no).
    c.global_budget_level = 0.9
    c.workers = 2  # two processes keep both cores busy (one uses ~1.5 on this small model)

    c.quick = False  # --config.quick=True applies `quick_settings`
    c.quick_settings = ml_collections.ConfigDict(
        dict(
            pretrain_epochs=2,
            search_epochs=1,
            tune_epochs=1,
            final_seeds=(1,),
            sparsities=(0.9,),
            train_subset=512,
            jackpot_levels=dict(
                optimizer=("sgd/0.1", "adamw/0.01"),
                distribution=("global_magnitude", "uniform"),
                score_pruned=(0.95,),
            ),
            wt_levels=dict(optimizer=("adamw/0.0001",)),
            workers=1,
        )
    )
    return c
