"""The pipeline: configs to results.

`config` (defaults and checks), `engine` (optimiser, mesh and sharding, the jitted steps, the
epoch loop), `modes` (pretrain, search, fine-tune, eval), `pruning` (what a config asks to
prune: filter, budget, criterion masks), `resume` (workdirs, metrics, orbax checkpoints),
`checkpoint` (model directories), `export` (``jackpot.npz``), `train` (``run(config,
workdir)``, what ``python -m jackpot_jax.main`` calls).
"""
