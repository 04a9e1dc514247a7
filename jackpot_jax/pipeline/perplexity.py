"""Perplexity of a causal LM over non-overlapping token windows, as Wanda and SparseGPT count it.

Both papers' evaluation (locuslab/wanda ``lib/eval.py`` ``eval_ppl_wikitext``; IST-DASLab
sparsegpt's ``*_eval``) cuts the tokenised test text into ``numel // seqlen`` windows, runs the
model on each, and takes the cross-entropy of ``logits[:, :-1]`` against ``tokens[:, 1:]``:
the first token of a window is never predicted, so a window gives ``seqlen - 1`` predictions.
Each batch's loss is that mean, scaled by ``seqlen * windows``; the perplexity is
``exp(sum / (nsamples * seqlen))``, i.e. the mean over windows of each window's mean NLL. Every
window has the same ``seqlen - 1`` predictions, so that equals the mean NLL over all predicted
tokens, which is what `perplexity` computes: ``exp(sum of token NLLs / ((seq_len - 1) * n))``,
with the log-softmax in float32 (the papers' loss runs in the model's dtype, then ``.float()``)
and the sum accumulated in float64 on the host.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jackpot_jax.errors import ConfigError, InputError


def check_context(seq_len: int, max_position_embeddings: int | None) -> None:
    """Raise `ConfigError` when windows of `seq_len` tokens do not fit the model's context
    (`max_position_embeddings`; None: the model sets no limit)."""
    if max_position_embeddings is not None and seq_len > max_position_embeddings:
        raise ConfigError(
            f'seq_len={seq_len} exceeds the model context max_position_embeddings='
            f'{max_position_embeddings}: use seq_len <= {max_position_embeddings}'
        )


@jax.jit
def _window_nll_sums(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """Per window: the sum of -log p(tokens[t + 1] | logits[t]) over t < T - 1, float32."""
    # logsumexp minus the picked logit: the same log-softmax without a second (B, T, V) array.
    z = logits[:, :-1].astype(jnp.float32)
    picked = jnp.take_along_axis(z, tokens[:, 1:, None], axis=-1)[..., 0]
    return (jax.nn.logsumexp(z, axis=-1) - picked).sum(axis=1)


def perplexity(
    logits_fn: Callable[[jax.Array], jax.Array], windows: np.ndarray, batch_size: int
) -> dict:
    """exp(mean token NLL) of `logits_fn` over `windows` (n, T) int32 token windows.

    `logits_fn(tokens (B, T) int32) -> logits (B, T, V)` is called on batches of exactly
    `batch_size` windows: a last partial batch is padded with copies of its first window (one
    shape, one compilation) and the padded rows are left out of every sum. Returns
    ``{'perplexity', 'nll' (mean per predicted token), 'tokens' ((T - 1) * n predictions),
    'windows' (n)}``.
    """
    windows = np.asarray(windows)
    if windows.ndim != 2 or windows.shape[0] < 1 or windows.shape[1] < 2:
        raise InputError(
            f'windows must be (n >= 1, T >= 2) token ids, got shape {windows.shape}: '
            'a window of T tokens predicts T - 1 of them'
        )
    if not np.issubdtype(windows.dtype, np.integer):
        raise InputError(f'windows must hold integer token ids, got dtype {windows.dtype}')
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f'batch_size={batch_size!r} must be a positive integer')
    n, length = windows.shape
    total = 0.0
    for start in range(0, n, batch_size):
        rows = windows[start : start + batch_size].astype(np.int32)
        real = len(rows)
        if real < batch_size:
            rows = np.concatenate([rows, np.repeat(rows[:1], batch_size - real, axis=0)])
        tokens = jnp.asarray(rows)
        logits = logits_fn(tokens)
        if logits.ndim != 3 or logits.shape[:2] != (batch_size, length):
            raise InputError(
                f'logits_fn returned shape {tuple(logits.shape)} for tokens '
                f'{(batch_size, length)}: expected (batch, time, vocab)'
            )
        sums = np.asarray(jax.device_get(_window_nll_sums(logits, tokens)), np.float64)
        total += float(sums[:real].sum())  # padded rows counted nowhere
    count = n * (length - 1)
    nll = total / count
    ppl = math.exp(nll) if nll < 709.0 else math.inf  # exp overflows float64 beyond ~709.78
    return {'perplexity': ppl, 'nll': nll, 'tokens': count, 'windows': n}
