"""What a mode reports: summary.json fields, the mask summary, the closing table, and the
check that every process ended with the same masks."""

from __future__ import annotations

import time

import jax
import numpy as np

from jackpot_jax import method as jm
from jackpot_jax import utils
from jackpot_jax.pipeline.loop import mode_batch_size
from jackpot_jax.pipeline.pruning import pattern_report
from jackpot_jax.pipeline.resume import MetricsLog


def same_on_every_process(masks, what: str) -> None:
    """Every process of a multi-process run must end with the same masks; each says so."""
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    digest = utils.masks_digest(jm.flatten_paths(masks))
    print(
        f"process {jax.process_index()}/{jax.process_count()}: {what} sha256 {digest}", flush=True
    )
    multihost_utils.assert_equal(
        np.frombuffer(bytes.fromhex(digest), np.uint8), f"the processes ended with different {what}"
    )


def base_summary(config, mode, ds, log: MetricsLog, t0) -> dict:
    best = max(log.records, key=lambda r: r.get("val_accuracy") or -1) if log.records else None
    return {
        "mode": mode,
        "model": config.model,
        "dataset": config.dataset,
        "seed": config.seed,
        "batch_size": mode_batch_size(config, config.get(mode)),
        "num_devices": jax.device_count() if not config.num_devices else config.num_devices,
        "final_val_accuracy": log.records[-1].get("val_accuracy") if log.records else None,
        "best_val_epoch": best["epoch"] if best else None,
        "train_examples": len(ds.train),
        "val_examples": len(ds.val),
        "test_examples": len(ds.test),
        "wall_seconds": time.time() - t0,
    }


def mask_summary(masks, config, target: bool = True) -> dict:
    per_layer = jm.sparsity_summary(masks)
    total = per_layer.pop("_total_sparsity")
    out = {"sparsity_achieved": total, "per_layer_sparsity": per_layer}
    if target:
        out["sparsity_target"] = config.sparsity
    out.update(pattern_report(masks, config, target))  # N:M runs: over patterned kernels
    return out


def print_table(summary: dict) -> None:
    if jax.process_index() != 0:
        return
    rows = [
        (k, summary[k])
        for k in (
            "mode",
            "model",
            "dataset",
            "pattern",
            "sparsity_target",
            "sparsity_achieved",
            "dense_test_accuracy",
            "init_mask_test_accuracy",
            "test_accuracy",
            "test_top5",
            "overlap_with_init",
            "epochs",
            "seed",
            "wall_seconds",
        )
        if summary.get(k) is not None
    ]
    width = max(len(k) for k, _ in rows)
    print("\n" + "-" * (width + 16))
    for k, v in rows:
        print(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    if summary.get("per_layer_sparsity"):
        print("per-layer sparsity:")
        for k, v in summary["per_layer_sparsity"].items():
            print(f"  {k:<{width}}  {v:.4f}")
    print("-" * (width + 16), flush=True)
