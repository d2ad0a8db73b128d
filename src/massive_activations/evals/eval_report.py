"""The evaluations joined with the massive-activation ratio, and how each metric tracks it.

The joined view is long: one row per (model, step, layer, kind, variant, metric) with the metric's
value and that checkpoint-layer's ratio (from ``ratios/``). Checkpoint-level metrics (W8A8, outlier
dims) get the checkpoint's largest layer ratio and layer = -2. Across checkpoints, per (model,
layer, kind, variant, metric): Spearman's ρ of the metric with the ratio, with the step, and the
partial ρ with the ratio beyond a smooth trend in the step, with calibrated intervals, p-values and
false-discovery-rate q-values over layers (rank_stats), and one pooled test per metric
(``pooled_correlations``); within each checkpoint, ρ across layers; and across models at matched
steps (``model_correlations``), ρ over every model's layers.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa
from scipy.stats import spearmanr

from massive_activations.errors import BadInputError
from massive_activations.evals.eval_run import CODE_MODULES as EVAL_MODULES
from massive_activations.evals.eval_run import EVALS, ITDA_SIMILARITY, QUANT_MODEL
from massive_activations.evals.rank_stats import STATS, correlations_with_ci, fdr, pooled_p
from massive_activations.provenance import stable_hash
from massive_activations.report.plots import plot_eval_metrics
from massive_activations.store import Store, StoreError

CODE_MODULES = EVAL_MODULES + ("massive_activations.evals.eval_report", "massive_activations.report.plots",
                               "massive_activations.evals.rank_stats")
# The figure of each evaluation: (kind, variant, metric) panels
PANELS = {
    "sae": [("sae", "topk-unmasked", "explained_variance"), ("sae", "topk-masked", "explained_variance"),
            ("sae", "topk-unmasked", "ce_loss_score"), ("sae", "relu-unmasked", "explained_variance"),
            ("sae", "relu-unmasked", "l0"), ("sae", "topk-unmasked", "dead_fraction")],
    "itda": [("itda", "itda", "explained_variance"), ("itda", "itda", "ce_loss_score"),
             ("itda_similarity", "itda_similarity", "jaccard_final")],
    "quant": [("quant", "int8-tensor", "sqnr_db"), ("quant", "int8-token", "sqnr_db"),
              ("quant", "int8-channel", "sqnr_db"), ("quant", "int4-tensor", "sqnr_db"),
              ("quant", "int8-tensor", "topk_error_share"), ("quant_model", "w8a8", "ce_delta_tensor")],
}

CHECKPOINT_LAYER = -2
# dataset -> metrics joined with the ratio
METRICS = {
    f"{EVALS}/sae": ("explained_variance", "fvu", "mse", "cosine", "l0", "dead_fraction", "dead_fraction_train",
                     "ce_loss_score", "explained_variance_massive", "explained_variance_other", "l0_massive",
                     "l0_other", "ce_loss_score_massive", "ce_loss_score_other"),
    f"{EVALS}/itda": ("size", "l0", "explained_variance", "ce_loss_score", "build_seconds",
                      "explained_variance_massive", "explained_variance_other", "ce_loss_score_massive",
                      "ce_loss_score_other"),
    ITDA_SIMILARITY: ("jaccard_final", "layer_matching_final"),
    f"{EVALS}/quant": ("sqnr_db", "sqnr_db_predicted", "sqnr_db_excess", "topk_error_share", "sqnr_db_massive",
                       "sqnr_db_other"),
    QUANT_MODEL: ("ce_delta_token", "ce_delta_tensor", "ppl_delta_token", "ppl_delta_tensor", "n_outlier_dims"),
}


def joined_view(store: Store, models: list[str]) -> pa.Table:
    ratios = store.read_dataset("ratios", where={"model": models}).select(["model", "step", "layer", "ratio"])
    ratio = {(r["model"], r["step"], r["layer"]): r["ratio"] for r in ratios.to_pylist()}
    peak: dict[tuple[str, int], float] = {}
    for (model, step, layer), value in ratio.items():
        if layer >= 0:
            peak[(model, step)] = max(peak.get((model, step), 0.0), value)
    rows = []
    for dataset, metrics in METRICS.items():
        try:
            table = store.read_dataset(dataset, where={"model": models})
        except StoreError:
            continue  # that evaluation was not run
        kind = dataset.split("/", 1)[1]
        for rec in table.to_pylist():
            layer = rec.get("layer", CHECKPOINT_LAYER)
            against = (peak.get((rec["model"], rec["step"])) if layer == CHECKPOINT_LAYER
                       else ratio.get((rec["model"], rec["step"], layer)))
            for metric in metrics:
                if metric in rec and rec[metric] is not None and math.isfinite(rec[metric]):
                    rows.append({"model": rec["model"], "step": rec["step"], "layer": layer, "kind": kind,
                                 "variant": rec.get("variant", kind), "metric": metric,
                                 "value": float(rec[metric]), "ratio": against})
    if not rows:
        raise BadInputError(f"no evaluations on {store.url} for {models}")
    return pa.Table.from_pylist(rows)


def correlations(joined: pa.Table, min_points: int = 4, n_boot: int = 1000, seed: int = 0) -> pa.Table:
    """Per (model, layer, kind, variant, metric), across checkpoints: Spearman ρ of the metric with the
    ratio and with the step, the partial ρ beyond a smooth trend in log step and the first-difference
    ρ, each with a 95% interval, a p-value and its effective n (rank_stats); the partial ρ's
    Benjamini–Hochberg q-value over the layers of its (model, kind, variant, metric). ρ with the ratio
    needs ``min_points`` checkpoints; the partial ρ abstains (NaN, with ``reason``) below rank_stats'
    floor."""
    groups: dict[tuple, list[tuple[float, float, float]]] = {}
    for r in joined.to_pylist():
        if r["ratio"] is not None and np.isfinite(r["value"]):
            groups.setdefault((r["model"], r["layer"], r["kind"], r["variant"], r["metric"]), []).append(
                (r["value"], r["ratio"], r["step"]))
    nan = float("nan")
    columns = [f"{s}{e}" for s in STATS for e in ("", "_low", "_high", "_p", "_n_eff")]
    rows = []
    for (model, layer, kind, variant, metric), pts in sorted(groups.items()):
        values, ratio, step = np.array(pts).T
        if len(pts) < min_points or np.ptp(values) == 0 or np.ptp(ratio) == 0:
            stats: dict[str, Any] = {**dict.fromkeys(columns, nan),
                                     "reason": f"fewer than {min_points} checkpoints or a constant series"}
        else:
            stats = correlations_with_ci(values, ratio, step, n_boot=n_boot, seed=seed)
        rows.append({"model": model, "layer": layer, "kind": kind, "variant": variant, "metric": metric,
                     "spearman_rho": stats.pop("rho_ratio"), "p_value": stats.pop("rho_ratio_p"),
                     **{k.replace("rho_ratio", "spearman_rho"): v for k, v in stats.items()},
                     "n_checkpoints": len(pts)})
    families: dict[tuple, list[int]] = {}
    for i, r in enumerate(rows):
        families.setdefault((r["model"], r["kind"], r["variant"], r["metric"]), []).append(i)
    for members in families.values():
        for i, q in zip(members, fdr([rows[i]["partial_rho_p"] for i in members]), strict=True):
            rows[i]["partial_rho_q"] = float(q)
    return pa.Table.from_pylist(rows)


def pooled_correlations(corr: pa.Table, alpha: float = 0.05) -> pa.Table:
    """Per (kind, variant, metric), over the layers of every model in ``corr``: one test of "the metric
    tracks the ratio beyond the step in some layer" (Simes, ``pooled_p``), the median partial ρ, and
    how many layers have a Benjamini–Hochberg q-value below ``alpha`` on each side — q computed over
    all these models' layers, so the counts are discoveries at a controlled false-discovery rate."""
    families: dict[tuple, list[dict]] = {}
    for r in corr.to_pylist():
        if r["layer"] >= 0:
            families.setdefault((r["kind"], r["variant"], r["metric"]), []).append(r)
    rows = []
    for (kind, variant, metric), members in sorted(families.items()):
        p = np.array([r["partial_rho_p"] for r in members], dtype=float)
        rho = np.array([r["partial_rho"] for r in members], dtype=float)
        q, tested = fdr(p), np.isfinite(p)
        rows.append({"kind": kind, "variant": variant, "metric": metric,
                     "n_models": len({r["model"] for r in members}), "layers": len(members),
                     "layers_tested": int(tested.sum()),
                     "median_partial_rho": float(np.median(rho[tested])) if tested.any() else float("nan"),
                     "pooled_p": pooled_p(p), "discoveries_negative": int(((q < alpha) & (rho < 0)).sum()),
                     "discoveries_positive": int(((q < alpha) & (rho > 0)).sum()), "alpha": alpha})
    return pa.Table.from_pylist(rows)


def layer_correlations(joined: pa.Table, min_layers: int = 3) -> pa.Table:
    """The within-checkpoint view: at each step, Spearman ρ of a metric with the ratio across the
    model's decoder layers (does a layer with a higher ratio have a worse metric at the same time?)."""
    groups: dict[tuple, list[tuple[float, float]]] = {}
    for r in joined.to_pylist():
        if r["layer"] >= 0 and r["ratio"] is not None and np.isfinite(r["value"]):
            groups.setdefault((r["model"], r["step"], r["kind"], r["variant"], r["metric"]), []).append(
                (r["value"], r["ratio"]))
    rows = []
    for (model, step, kind, variant, metric), pts in sorted(groups.items()):
        values, ratio = np.array(pts).T
        defined = len(pts) >= min_layers and np.ptp(values) > 0 and np.ptp(ratio) > 0
        rows.append({"model": model, "step": step, "kind": kind, "variant": variant, "metric": metric,
                     "rho_across_layers": float(spearmanr(values, ratio).statistic) if defined else float("nan"),
                     "n_layers": len(pts)})
    return pa.Table.from_pylist(rows)


def model_correlations(joined: pa.Table, min_models: int = 2, min_points: int = 4) -> pa.Table:
    """Across models at matched steps: at each step several models share, Spearman ρ of a metric with
    the ratio over all their decoder layers (at the same point in training, does a model-layer with a
    higher ratio do worse?). Steps match by number, so this compares models on one schedule (a suite,
    or one family); NaN below ``min_points`` points or for a constant series."""
    groups: dict[tuple, list[tuple[str, float, float]]] = {}
    for r in joined.to_pylist():
        if r["layer"] >= 0 and r["ratio"] is not None and np.isfinite(r["value"]):
            groups.setdefault((r["step"], r["kind"], r["variant"], r["metric"]), []).append(
                (r["model"], r["value"], r["ratio"]))
    rows = []
    for (step, kind, variant, metric), pts in sorted(groups.items()):
        models = {m for m, _, _ in pts}
        if len(models) < min_models:
            continue
        values, ratio = np.array([p[1] for p in pts]), np.array([p[2] for p in pts])
        defined = len(pts) >= min_points and np.ptp(values) > 0 and np.ptp(ratio) > 0
        rows.append({"step": step, "kind": kind, "variant": variant, "metric": metric,
                     "rho_across_models": float(spearmanr(values, ratio).statistic) if defined else float("nan"),
                     "n_models": len(models), "n_points": len(pts)})
    return pa.Table.from_pylist(rows)


def cross_model_report_to_store(store: Store, models: list[str], eval_hashes: list[str],
                                force: bool = False) -> dict[str, Any]:
    """``evals/model_correlations/models=<hash of the model list>/`` for these models' evaluations
    (given by their hashes), and ``evals/pooled_across_models`` (each metric's pooled test and
    FDR-controlled layer counts over all these models' layers); skipped when the store holds them for
    the same evaluations."""
    models = sorted(models)
    inputs, part = {"models": models, "eval_hashes": sorted(eval_hashes)}, {"models": stable_hash(models)[:12]}
    dataset = f"{EVALS}/model_correlations"
    if not force and (meta := store.current(dataset, part, inputs, CODE_MODULES)):
        return {"status": "skipped", "hash": meta.get("content_hash"), "partition": part}
    corr = store.read_dataset(f"{EVALS}/correlations", where={"model": models})
    store.write_partition(f"{EVALS}/pooled_across_models", part, pooled_correlations(corr), inputs=inputs,
                          code_modules=CODE_MODULES, overwrite=True)
    table = model_correlations(joined_view(store, models))
    if table.num_rows == 0:
        return {"status": "no matched steps", "partition": part}
    written = store.write_partition(dataset, part, table, inputs=inputs, code_modules=CODE_MODULES, overwrite=True)
    return {"status": "computed", "hash": written.content_hash, "rows": written.rows, "partition": part}


def report_to_store(store: Store, model: str, kinds: list[str], eval_hashes: list[str],
                    force: bool = False) -> dict[str, Any]:
    """Joined view and correlations (``evals/joined``, ``evals/correlations``) and one figure per kind,
    unless the store holds them for these evaluations (given by their hashes)."""
    inputs, part = {"model": model, "kinds": sorted(kinds), "eval_hashes": eval_hashes}, {"model": model}
    figures = {kind: f"plots/evals/{model}-{kind}.png" for kind in kinds}
    if not force and store.current(f"{EVALS}/correlations", part, inputs, CODE_MODULES):
        corr = store.read_partition(f"{EVALS}/correlations", part)
        return {"model": model, "status": "skipped", "figures": figures,
                "correlations": [{"model": model, **r} for r in corr.to_pylist()]}
    joined = joined_view(store, [model])
    corr, across = correlations(joined), layer_correlations(joined)
    pooled = pooled_correlations(corr)
    for kind, key in figures.items():
        store.write_bytes(key, plot_eval_metrics(joined, model, PANELS[kind], corr, across))
    # correlations last: it marks the report done
    for name, table in (("joined", joined), ("layer_correlations", across), ("pooled", pooled),
                        ("correlations", corr)):
        table = table.drop_columns(["model"]) if "model" in table.column_names else table
        store.write_partition(f"{EVALS}/{name}", part, table, inputs=inputs,
                              code_modules=CODE_MODULES, overwrite=True)
    return {"model": model, "status": "computed", "figures": figures, "correlations": corr.to_pylist()}
