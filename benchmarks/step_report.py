"""What bench_step.py checks and prints of its results: the JSON row fields, the step-0 loss
check of each PyTorch variant against ours, and the table."""

from __future__ import annotations

import common

LOSS_RTOL = 1e-3  # relative agreement demanded of the two sides' float32 step-0 losses
# JSON row key (after "jax_" / "torch_") -> key of a `common.time_sides` result
RESULT_KEYS = {
    "ms": "ms",
    "ms_min": "min",
    "ms_q1": "q1",
    "ms_q3": "q3",
    "steps": "n",
    "first_step_s": "first_s",
    "loss0": "loss0",
}


def check_variant(row: dict, r: dict, ours: dict, torch_dtype: str) -> str | None:
    """Fills ``row`` with PyTorch variant ``row['torch_variant']``'s result ``r`` (a
    `common.time_sides` result; ``torch_dtype``: what the variant computes in) and checks its
    step-0 loss against ours, both in float32; returns what failed, or None."""
    v = row["torch_variant"]
    if "error" in r:
        row["torch_error"] = r["error"]
        return None
    loss = r.get("check_loss0", r["loss0"])
    ref = ours.get("loss0_float32", ours["loss0"])
    rel = abs(loss - ref) / max(abs(ref), 1e-12)
    ok = bool(rel <= LOSS_RTOL)
    row.update({f"torch_{key}": r[src] for key, src in RESULT_KEYS.items()})
    row.update(torch_dtype=torch_dtype, loss_rel_diff=rel)
    row["loss_check"] = "ok" if ok else "FAILED"
    where = "" if loss == r["loss0"] else f" (float32: {loss:.6f})"
    theirs = "" if ref == ours["loss0"] else f" (float32: {ref:.6f})"
    print(
        f"    {v}: median {common.fmt_ms(r)} ms, min {r['min']:.1f} ms; step-0 loss "
        f"{r['loss0']:.6f}{where} vs ours {ours['loss0']:.6f}{theirs}: relative difference "
        f"{rel:.1e} (tolerance {LOSS_RTOL:.0e}) "
        + ("ok" if ok else "!!! LOSS MISMATCH: NOT THE SAME NETWORK !!!"),
        flush=True,
    )
    return None if ok else f"step-0 losses differ by {rel:.1e} relative (tolerance {LOSS_RTOL:.0e})"


def print_table(rows, variants):
    """Per model, batch and mode: ours, each variant (median [IQR] ms), and torch / ours for
    the authors' eager code and for the fastest variant that ran, passed its loss check and
    computes in ours' precision (a bfloat16 autocast variant is not the best of a float32
    row; its own column shows it)."""
    print()
    head = ["model", "batch", "mode", "dtype", "ours ms"] + [f"torch {v} ms" for v in variants]
    if variants:
        head += ["eager / ours", "best torch / ours (variant)"]
    head += ["mask ms", "mask share"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" if i < 4 and i != 1 else "---:" for i in range(len(head))) + "|")
    cells = {}
    for r in rows:
        cells.setdefault((r["model"], r["batch"], r["mode"], r["dtype"]), []).append(r)
    for (model, batch, mode, dtype), group in cells.items():
        r0 = group[0]
        ours = {"ms": r0["jax_ms"], "q1": r0["jax_ms_q1"], "q3": r0["jax_ms_q3"]}
        line = [model, str(batch), mode, dtype, common.fmt_ms(ours)]
        by_variant = {r["torch_variant"]: r for r in group}
        good = {}
        for v in variants:
            r = by_variant.get(v, {})
            if r.get("torch_error"):
                line.append("failed")
            elif r.get("torch_ms") is None:
                line.append("")
            else:
                t = {"ms": r["torch_ms"], "q1": r["torch_ms_q1"], "q3": r["torch_ms_q3"]}
                flag = "" if r["loss_check"] == "ok" else " (LOSS MISMATCH)"
                line.append(common.fmt_ms(t) + flag)
                if r["loss_check"] == "ok" and r["torch_dtype"] == dtype:
                    good[v] = r["torch_ms"]
        if variants:
            eager = good.get("eager")
            line.append("" if eager is None else f"{eager / r0['jax_ms']:.2f}x")
            best = min(good, key=good.get) if good else None
            line.append(f"{good[best] / r0['jax_ms']:.2f}x ({best})" if best else "")
        mask = share = ""
        if r0["mask_ms"] is not None:
            mask, share = f"{r0['mask_ms']:.2f}", f"{r0['mask_ms'] / r0['jax_ms']:.1%}"
        print("| " + " | ".join(line + [mask, share]) + " |")
    print()
    print("failed variants:" if any(r.get("torch_error") for r in rows) else "", end="")
    for r in rows:
        if r.get("torch_error"):
            print(f"\n  {r['model']} {r['mode']} {r['torch_variant']}: {r['torch_error']}", end="")
    print()
