"""A tiny language-model run (mode='lm') for the test suite: seconds on two CPU cores.

It needs a converted checkpoint with its tokenizer.json (``--config.pretrained=DIR``) and a
text corpus (``--config.lm.path``: a folder of .txt files or one file); the tests write a
2-block random Llama and a small tokenizer. Budget: 2:4, Wanda's mask as the prior, 4 search
steps of 2 windows of 16 tokens, validation perplexity every 2 steps.
"""

from jackpot_jax.pipeline.config import base_config


def get_config():
    c = base_config()
    c.mode = "lm"
    c.model = "llama"
    c.pretrained = ""  # the test's converted checkpoint
    c.sparsity = 0.5
    c.batch_size = 2
    c.search.optimizer = "adamw"
    c.search.lr = 0.01
    c.search.weight_decay = 0.0
    c.search.schedule = "cosine_step"
    c.search.pattern = "2:4"
    c.search.score_pruned = 0.999  # masks move within a few steps
    c.lm.dataset = "text"
    c.lm.path = ""  # the test's corpus
    c.lm.seq_len = 16
    c.lm.eval_batch_size = 4
    c.lm.calibration_samples = 4
    c.lm.calibration_batch = 2
    c.lm.blocksize = 16
    c.lm.steps = 4
    c.lm.eval_every = 2
    return c
