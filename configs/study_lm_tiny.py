"""The LM study on a tiny model for the test suite (tests/test_lm_study.py): seconds a run.

The test writes a 2-block random Llama with its tokenizer (``base.pretrained``) and a small
corpus (``base.lm.path``). Both levels, both priors, a 2-level learning-rate grid and 2
selection runs per method (+1: the other prior / one more weight-tuning rate), 2 final seeds,
4 steps of 2 windows of 16 tokens per run.
"""

import ml_collections

from jackpot_jax.pipeline import lm
from jackpot_jax.pipeline.config import base_config


def get_config():
    b = base_config()
    b.mode = "lm"
    b.model = "llama"
    b.pretrained = ""  # the test's converted checkpoint
    b.sparsity = 0.5
    b.batch_size = 2
    b.search.optimizer = "adamw"
    b.search.lr = 0.01
    b.search.weight_decay = 0.0
    b.search.schedule = "cosine_step"
    b.search.pattern = "2:4"
    b.search.score_pruned = 0.999
    b.finetune.optimizer = "adamw"
    b.finetune.lr = 1e-3
    b.finetune.weight_decay = 0.0
    b.finetune.schedule = "cosine_step"
    b.lm.dataset = "text"
    b.lm.path = ""  # the test's corpus
    b.lm.seq_len = 16
    b.lm.eval_batch_size = 4
    b.lm.calibration_samples = 4
    b.lm.calibration_batch = 2
    b.lm.blocksize = 16
    for key, value in lm.SWITCHES.items():
        b.lm[key] = value

    c = ml_collections.ConfigDict()
    c.study = "lm"
    c.base = b
    c.network = "llama"
    c.source = ""  # base.pretrained is already a converted checkpoint
    c.levels = ("2:4", 0.5)
    c.priors = ("wanda", "sparsegpt")
    c.select_level = "2:4"
    c.select_seed = 0
    c.final_seeds = (1, 2)
    c.steps = 4
    c.eval_every = 2
    c.jackpot_lrs = (0.003, 0.03)
    c.tune_lrs = (0.001, 0.01)
    c.lr_ratio = 3.0
    c.selection_runs = 2
    c.depth_groups = 2
    c.workers = 1
    return c
