"""The pipeline: configs to results, on the search core (`jackpot_jax.core`).

`config` (defaults), `train` (``run(config, workdir)``, what ``python -m jackpot_jax.main``
calls, and the config checks), `modes` (pretrain, search, fine-tune, eval), `loop` (the epoch
loop: the core's epochs with validation, checkpoints and the metrics log), `evaluate`
(accuracy over a split), `sources` (dataset, fresh model), `pruning` (what a config asks to
prune: filter, budget, criterion masks), `summaries`, `resume` (workdirs, metrics, orbax
checkpoints), `checkpoint` (model directories), `export` (``jackpot.npz``), `search`
(`find_jackpot`, the library's search on any Flax model).
"""
