"""The paper's five claims checked on Fashion-MNIST with LeNet-5 and LeNet-300-100.

Full study (3 seeds; resumable: rerun the same command to continue):
  python -m jackpot_jax.study --config configs/study_fashion_mnist.py --workdir runs/study_fmnist
Quick variant (one seed, fewer levels and epochs, ~10 min on 2 CPU cores):
  python -m jackpot_jax.study --config configs/study_fashion_mnist.py --workdir runs/study_quick \\
      --config.quick=True
Only the 2:4 rows (dense, magnitude 2:4, 2:4 jackpot, magnitude 2:4 + fine-tuning, unstructured
50% for comparison; ~2.5 h for 3 seeds on 2 CPU cores, most of it LeNet-5):
  python -m jackpot_jax.study --config configs/study_fashion_mnist.py --workdir runs/study_nm \\
      --config.experiments=nm
"""

import ml_collections

from jackpot_jax.pipeline.config import base_config


def get_config():
    c = ml_collections.ConfigDict()
    c.study = "paper"  # the study `python -m jackpot_jax.study` runs: `experiments.study`
    c.base = base_config()  # the pipeline config every piece starts from
    c.base.dataset = "fashion_mnist"
    c.base.batch_size = 256
    c.base.pretrain.lr = 0.05
    c.networks = ("lenet5", "lenet300_100")
    c.seeds = (0, 1, 2)
    c.pretrain_epochs = 10
    c.short_epochs = 10  # the paper's two search budgets: 10 and 30 epochs
    c.long_epochs = 30
    c.finetune_epochs = 10  # Eq. 9 after the short search
    c.table_sparsities = (0.9, 0.95)
    c.curve_sparsities = (0.5, 0.7, 0.8, 0.9, 0.95)
    c.warmup_sparsity = 0.9  # Fig. 5 and Table 4
    c.table4_epochs = (0, 1, 3, 10, 30)
    c.curves_all_seeds = True  # False: figures (and the overlap table) on the first seed only
    c.workers = 1  # >1: that many processes share the pieces (GPU, many cores)
    c.experiments = ("paper", "nm")  # the paper's five claims; the N:M rows (issue 12)
    c.nm_pattern = "2:4"  # N:M rows: short_epochs of search / fine-tuning
    c.nm_unstructured_baseline = True  # also the unstructured rows at sparsity 1 - n/m

    c.quick = False  # --config.quick=True applies `quick_settings`
    c.quick_settings = ml_collections.ConfigDict(
        dict(
            seeds=(0,),
            pretrain_epochs=3,
            short_epochs=2,
            long_epochs=4,
            finetune_epochs=2,
            table_sparsities=(0.9,),
            curve_sparsities=(0.5, 0.9),
            table4_epochs=(0, 1, 2, 4),
            train_subset=8000,
        )
    )
    return c
