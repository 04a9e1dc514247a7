"""Experiments built on the pipeline: the paper's findings (`study`, ``python -m
jackpot_jax.study``) and the search-efficiency sweep (`sweep`, ``python -m jackpot_jax.sweep``).

Modules by role: `runner` (pieces: one pipeline run per folder, read back when done, planned
for worker processes), `provenance` (what each invocation records about itself), `stats`
(sample stds, paired differences with 95% t-intervals), `study_pieces`, `study`, `claims` and
`study_report` (the paper's experiments), `sweep` and `sweep_report` (the recipe sweep).
`tools/check_results.py` recomputes a results.json from its per-seed values.
"""
