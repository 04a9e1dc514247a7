"""Sequential one-shot pruning of a causal LM, as Wanda and SparseGPT do it.

`calibrate_lm` prunes the Linear kernels of a language model's blocks with one of the
method's per-layer baselines (`jm.magnitude_mask`, `jm.wanda_from_stats`,
`jm.sparsegpt_from_stats`) on calibration sequences from the training split (the papers use
128 windows of 2048 tokens; `data.text.calibration_windows` picks them):

1. ``embed(tokens)`` gives the first block's inputs;
2. block by block: the block runs on its inputs once (chunk by chunk, ``batch_size`` windows
   at a time), and the inputs of every prunable Linear in it are captured
   (`flax.linen.intercept_methods` on ``nn.Dense.__call__``) and reduced at once to
   `jm.InputStats` (Wanda: per-input sums of squares; SparseGPT: ``X^T X`` as well), so that
   memory is the statistics, not the activations;
3. every prunable layer of the block gets its mask from those statistics, all at once (the
   order of both authors' code: locuslab/wanda ``prune_wanda`` and ``prune_sparsegpt``, and
   IST-DASLab/sparsegpt's ``llama_sequential``, whose ``sequential`` is one group of every
   layer of the block: a layer's inputs come from the block before any of its layers is
   pruned);
4. the mask is applied (SparseGPT with ``update=True``: its updated kernel instead) and the
   block's outputs are computed again *with the pruned block*: they are the next block's
   inputs.

Magnitude reads no data: its masks are computed directly. Every block of a model has the same
structure, so one jitted block program serves them all: block ``i``'s params are put in the
slot of block 0 and block 0 runs (one compilation instead of one per block).

Prunable: the leaves `filter_fn` accepts among the block's Dense kernels (the default filter:
every kernel except a ``classifier``; q, k, v, o, gate, up and down in a Llama block).
Embeddings, norms and the head are never pruned.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jackpot_jax import method as jm
from jackpot_jax import utils
from jackpot_jax.errors import ConfigError, InputError

METHODS = ("magnitude", "wanda", "sparsegpt")


@dataclasses.dataclass
class Calibration:
    """What `calibrate_lm` returns.

    ``masks``: a tree mirroring ``params`` with 0/1 float32 masks on the pruned kernels and
    None elsewhere; ``params``: the pruned params (the pre-trained values times the masks, or
    SparseGPT's updated kernels with ``update=True``; every other leaf unchanged); ``layers``:
    the pruned kernels' paths in the order they were pruned; ``tokens``: calibration tokens
    per layer."""

    masks: dict
    params: dict
    layers: list[str]
    tokens: int
    method: str
    update: bool


def _block_prefix(module, params) -> tuple[str, int]:
    """(the name prefix of block parameters, e.g. 'layers_' or 'h_', the block count)."""
    count = getattr(module, "num_hidden_layers", None)
    for prefix in ("layers_", "h_"):
        if f"{prefix}0" in params:
            n = sum(1 for k in params if k.startswith(prefix) and k[len(prefix) :].isdigit())
            if count is not None and n != count:
                raise InputError(f"params hold {n} blocks, the model {count}")
            return prefix, n
    raise ConfigError(
        f"{type(module).__name__} has no block-by-block parameters ('layers_<i>' or 'h_<i>'); "
        "sequential calibration needs a causal LM of jackpot_jax.models (llama, qwen2, "
        "mistral, gpt2)"
    )


def capture_inputs(module, params, hidden, index: int) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``(outputs, inputs)`` of block ``index`` on ``hidden`` (batch, time, D): its outputs,
    and the input of every Dense layer in it, keyed by the layer's '/'-joined path (e.g.
    ``'layers_1/self_attn/q_proj'``). Not jitted: the reference form of what `calibrate_lm`
    gathers."""
    seen: dict[str, jax.Array] = {}

    def interceptor(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
            seen["/".join(context.module.path)] = args[0]
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        out = module.apply({"params": params}, hidden, index, method="block")
    return out, seen


def _block_program(module, slot: str, gram: bool | None):
    """One jitted ``(block params, hidden) -> (outputs, {layer name in the block: stats})``:
    block 0 run with the given block's params (``gram`` None: no statistics)."""

    @jax.jit
    def run(block_params, hidden):
        seen: dict[str, jax.Array] = {}

        def interceptor(next_fun, args, kwargs, context):
            if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
                seen["/".join(context.module.path[1:])] = args[0]
            return next_fun(*args, **kwargs)

        with nn.intercept_methods(interceptor):
            out = module.apply({"params": {slot: block_params}}, hidden, 0, method="block")
        if gram is None:
            return out, {}
        return out, {k: jm.input_stats(x, gram=gram) for k, x in seen.items()}

    return run


def _layer_mask(method, kernel, stats, *, sparsity, pattern, update, blocksize, percdamp):
    """(mask, new kernel) of one layer."""
    if method == "magnitude":
        mask = jm.magnitude_mask(kernel, sparsity=sparsity, pattern=pattern)
        return mask, kernel * mask
    if method == "wanda":
        mask = jm.wanda_from_stats(kernel, stats, sparsity=sparsity, pattern=pattern)
        return mask, kernel * mask
    mask, new = jm.sparsegpt_from_stats(
        kernel,
        stats,
        sparsity=sparsity,
        pattern=pattern,
        blocksize=blocksize,
        percdamp=percdamp,
        update=update,
    )
    return mask, (new if update else kernel * mask)


def calibrate_lm(
    module,
    params,
    tokens,
    *,
    method: str,
    sparsity: float | None = None,
    pattern: str | jm.NMPattern | None = None,
    update: bool = False,
    batch_size: int = 8,
    blocksize: int = 128,
    percdamp: float = 0.01,
    filter_fn: jm.FilterFn | None = None,
    on_block: Callable[[int, int], None] | None = None,
) -> Calibration:
    """Prunes every prunable block kernel of the causal LM ``module`` (with ``params``) by
    ``method`` ('magnitude', 'wanda' or 'sparsegpt'), block by block (see the module
    docstring), on calibration ``tokens`` (n, T) int token ids.

    The budget: ``sparsity`` (unstructured: each output keeps ``in - int(in * sparsity)`` of
    its inputs, Wanda's count per output row) or an N:M ``pattern`` such as "2:4" along each
    kernel's input axis (a kernel whose input size is not a multiple of M is a
    `ConfigError`). SparseGPT: ``update`` applies its weight update (the returned params then
    differ from the pre-trained ones where kept), ``blocksize`` and ``percdamp`` as
    `jm.sparsegpt`. ``batch_size`` windows run at a time (statistics are summed over chunks).
    ``on_block(index, count)`` is called after each block (progress). ``filter_fn``: which
    kernels are pruned (default: every kernel except a ``classifier``).
    """
    if method not in METHODS:
        raise ConfigError(f"one-shot method {method!r}; expected one of {METHODS}")
    if isinstance(pattern, str):
        try:
            pattern = jm.parse_pattern(pattern)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    filter_fn = filter_fn or jm.make_filter(exclude=list(jm.DEFAULT_EXCLUDE))
    params = utils.as_numpy(params)
    prefix, count = _block_prefix(module, params)
    prunable = set(jm.prunable_paths(params, filter_fn))
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or len(tokens) == 0:
        raise InputError(f"calibration tokens of shape {tokens.shape}; expected (n >= 1, T)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"calibration batch_size={batch_size!r} must be a positive integer")
    flat = jm.flatten_paths(params)
    new_flat = dict(flat)
    mask_flat: dict[str, np.ndarray] = {}
    order: list[str] = []

    def block_layers(i):
        return [
            p
            for p in flat
            if p.startswith(f"{prefix}{i}/") and p in prunable and p.endswith("/kernel")
        ]

    if method == "magnitude":  # no data: every layer at once
        for i in range(count):
            for path in block_layers(i):
                mask, new = _layer_mask(
                    method,
                    jnp.asarray(flat[path]),
                    None,
                    sparsity=sparsity,
                    pattern=pattern,
                    update=False,
                    blocksize=blocksize,
                    percdamp=percdamp,
                )
                mask_flat[path], new_flat[path] = np.asarray(mask), np.asarray(new)
                order.append(path)
            if on_block is not None:
                on_block(i, count)
    else:
        gram = method == "sparsegpt"
        slot = f"{prefix}0"
        stats_pass = _block_program(module, slot, gram)
        plain_pass = _block_program(module, slot, None)
        embed = jax.jit(lambda p, t: module.apply({"params": p}, t, method="embed"))
        chunks = [
            embed(params, jnp.asarray(tokens[s : s + batch_size], jnp.int32))
            for s in range(0, len(tokens), batch_size)
        ]
        for i in range(count):
            name = f"{prefix}{i}"
            stats: dict[str, jm.InputStats] = {}
            for h in chunks:
                _, got = stats_pass(params[name], h)
                for k, s in got.items():
                    stats[k] = s if k not in stats else jm.add_stats(stats[k], s)
            block = utils.as_numpy(params[name])
            block_flat = jm.flatten_paths(block)
            for path in block_layers(i):
                inner = path[len(name) + 1 :]
                layer = inner.rsplit("/", 1)[0]
                if layer not in stats:
                    raise InputError(
                        f"{path}: no input was captured for it in block {i} (not an nn.Dense "
                        "called by the block?); exclude it from pruning with prune.exclude"
                    )
                mask, new = _layer_mask(
                    method,
                    jnp.asarray(flat[path]),
                    stats[layer],
                    sparsity=sparsity,
                    pattern=pattern,
                    update=update,
                    blocksize=blocksize,
                    percdamp=percdamp,
                )
                mask_flat[path], new_flat[path] = np.asarray(mask), np.asarray(new)
                block_flat[inner] = new_flat[path]
                order.append(path)
            pruned_block = jm.tree_from_paths(block, block_flat)
            # The next block's inputs: this block's outputs, computed with the pruned block.
            chunks = [plain_pass(pruned_block, h)[0] for h in chunks]
            if on_block is not None:
                on_block(i, count)
    masks = jm.tree_from_paths(params, {p: mask_flat.get(p) for p in flat})
    new_params = jm.tree_from_paths(params, new_flat)
    return Calibration(
        masks=masks,
        params=new_params,
        layers=order,
        tokens=int(tokens.size),
        method=method,
        update=bool(update and method == "sparsegpt"),
    )
