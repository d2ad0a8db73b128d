"""Regress flow: architecture → emergence parameters, under the paper's protocol and leave-one-model-out."""

from __future__ import annotations

import base64

import numpy as np
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows.params import DEFAULT_STORE
from massive_activations.regress_run import PAPER_TABLE3, fits_hash
from massive_activations.regression import REGRESSORS, TARGETS
from massive_activations.store import Store
from tasks.policy import on_store
from tasks.regress import train_regressors


def _table3(scores: list[dict], protocol: str, regressors: list[str]) -> str:
    head = "| param | " + " | ".join(regressors) + " |\n|---|" + "---|" * len(regressors)
    lines = [head]
    for target in TARGETS:
        cells = []
        for name in regressors:
            row = next(r for r in scores if r["protocol"] == protocol and r["target"] == target
                       and r["regressor"] == name)
            paper = PAPER_TABLE3[target].get(name)
            flag = "†" if row["note"] else ""
            cells.append(f"{row['r2']:.3f}{flag}" + (f" (paper {paper:.3f})" if paper is not None and
                                                   protocol == "random_80_20" else ""))
        lines.append(f"| {target} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@flow(name="regress", log_prints=True)
def regress(store: str = DEFAULT_STORE, series: str = "ratio", seed: int = 0,
            regressors: tuple[str, ...] = tuple(REGRESSORS), refresh: bool = False) -> dict:
    """Train and evaluate; re-train only when the fits, series, seed or regressors change."""
    target = Store(store)
    models = sorted({p["model"] for p in target.partitions("fits")})
    if len(models) < 2:
        raise ValueError(f"need fits of at least 2 models on {target.url}, found {models}")
    result = on_store(train_regressors, target, refresh)(target.url, series, seed, list(regressors),
                                                          fits_hash(target, models))
    scores = result["scores"]
    create_table_artifact(scores, key="regression-scores", description="R², MAE, RMSE per protocol, target, model")
    classes = "\n".join(f"- {c['protocol']}: accuracy {c['accuracy']:.2f} on {c['n_test']} rows, confusion "
                        f"(rows true {c['labels']}, columns predicted) {c['confusion']} {c['note']}"
                        for c in result["classes"])
    figures = "\n\n".join(
        f"![{t}](data:image/png;base64,{base64.b64encode(target.read_bytes(k)).decode()})"
        for t, k in result["figures"].items())
    create_markdown_artifact(
        f"# Architecture → emergence parameters ({series}, {result['n_rows']} layers of {len(models)} models)\n\n"
        "## Paper protocol (random 80/20; test R², paper's Table 3 in brackets)\n\n"
        + _table3(scores, "random_80_20", list(regressors))
        + "\n\n## Leave one model out (R², pooled over held-out models)\n\n"
        + _table3(scores, "leave_one_model_out", list(regressors))
        + "\n\n† not meaningful (too few test rows or a constant target).\n\n"
        f"Chosen per parameter (best leave-one-model-out R²): {result['chosen']}\n\n"
        f"## Early peak vs log increase\n\n{classes}\n\n## Partial dependence\n\n{figures}",
        key="regression-summary")
    best_lomo = {t: max(r["r2"] for r in scores if r["protocol"] == "leave_one_model_out" and r["target"] == t)
                 for t in TARGETS}
    get_run_logger().info("best leave-one-model-out R² per parameter: %s",
                          {t: round(v, 3) for t, v in best_lomo.items()})
    return {"chosen": result["chosen"], "best_lomo_r2": best_lomo, "model_key": result["model_key"],
            "mean_best_lomo_r2": float(np.mean(list(best_lomo.values())))}
