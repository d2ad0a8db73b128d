"""Regress flow: architecture → emergence parameters, under the paper's protocol and leave-one-model-out."""

from __future__ import annotations

import sys

import numpy as np
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows import cli
from flows.artifacts import figures_markdown
from flows.params import DEFAULT_STORE
from massive_activations.errors import BadInputError
from massive_activations.regress.regress_run import PAPER_TABLE3
from massive_activations.regress.regression import CONFIGS, N_SPLITS, RAW_TARGETS, REGRESSORS, TARGETS
from massive_activations.store import Store
from tasks.policy import on_store
from tasks.regress import train_regressors


def _table3(scores: list[dict], config: str, protocol: str, targets: tuple[str, ...]) -> str:
    """R² per target and regressor; under the 80/20 protocol, the paper's Table 3 in brackets."""
    names = list(dict.fromkeys(r["regressor"] for r in scores if (r["config"], r["protocol"]) == (config, protocol)))
    lines = ["| target | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for target in targets:
        cells = []
        for name in names:
            row = next(r for r in scores if (r["config"], r["protocol"], r["target"], r["regressor"])
                       == (config, protocol, target, name))
            paper = PAPER_TABLE3.get(target, {}).get(name)
            flag = "†" if row["note"] else ""
            cells.append(f"{row['r2']:.3f}{flag}" + (f" ({paper:.3f})" if paper is not None and
                                                   protocol == "random_80_20" else ""))
        lines.append(f"| {target} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _repeated(scores: list[dict]) -> str:
    """Mean ± sd over the repeated splits of R² on the raw and the learning scale; the nested choice first."""
    rows = [r for r in scores if r["protocol"] == "repeated_80_20"]
    names = list(dict.fromkeys(["nested choice", *(r["regressor"] for r in rows)]))
    lines = ["| target | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for target in dict.fromkeys(r["target"] for r in rows):
        cells = []
        for name in names:
            r = next((r for r in rows if (r["target"], r["regressor"]) == (target, name)), None)
            cells.append("" if r is None or not np.isfinite(r["r2"]) else
                         f"{r['r2']:.2f} ± {r['r2_sd']:.2f} \\| {r['r2_learning']:.2f} ± {r['r2_learning_sd']:.2f}")
        lines.append(f"| {target} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def nested_r2(scores: list[dict]) -> dict[str, float]:
    """Per target, the mean raw-scale R² of the nested choice over the repeated splits (NaN: not scored)."""
    return {r["target"]: r["r2"] for r in scores
            if (r["protocol"], r["regressor"]) == ("repeated_80_20", "nested choice")}


def best_lomo_r2(scores: list[dict]) -> dict[str, float]:
    """Per target of the project configuration, the best leave-one-model-out R² (NaN: not trained)."""
    best = {}
    for target in TARGETS:
        r2 = [r["r2"] for r in scores if (r["config"], r["protocol"], r["target"])
              == ("project", "leave_one_model_out", target) and np.isfinite(r["r2"])]
        best[target] = max(r2) if r2 else float("nan")
    return best


@flow(name="regress", log_prints=True)
def regress(store: str = DEFAULT_STORE, series: str = "ratio", seed: int = 0,
            regressors: tuple[str, ...] = tuple(REGRESSORS), n_splits: int = N_SPLITS,
            identified_only: bool = False, refresh: bool = False) -> dict:
    """Train architecture → emergence regressors on every fitted model and score them three ways.

    Scored on the paper's 80/20 split, leaving one model out, and over repeated 80/20 splits with a nested
    choice of regressor. Re-trains only when the fits, series, seed or settings change.

    Args:
        store: Store URL holding the fits: a path, file://… or s3://bucket/prefix.
        series: The fitted series to learn (ratio, top1, median, ratio_excl0, or a panel series: sink_share,
            alpha0_max, super_in, kurtosis).
        seed: Seed of the 80/20 split and of the regressors.
        regressors: Regressors to train and compare.
        n_splits: Seeds of the repeated 80/20 split (mean ± sd of each score, and the nested choice).
        identified_only: Learn only from layers whose fit is identified.
        refresh: Re-train and rewrite, whatever the store holds.
    """
    target = Store(store)
    models = sorted({p["model"] for p in target.partitions("fits")})
    if not models:
        raise BadInputError(f"nothing fitted on {target.url}: run `python -m flows.fit --store {target.url}` after a "
                            "capture (or the pipeline, which does both)")
    result = on_store(train_regressors, target)(target.url, series, seed, list(regressors), force=refresh,
                                                n_splits=n_splits, identified_only=identified_only)
    if result["left_out"]:
        get_run_logger().info("left out (no known architecture, e.g. monitored runs): %s", result["left_out"])
    if result["status"] == "not trained":
        get_run_logger().info("regress: nothing trained: %s", result["reason"])
        return {"status": result["status"], "reason": result["reason"], "chosen": {}, "best_lomo_r2": {},
                "nested_r2": {},
                "skipped_parts": [], "model_key": None, "left_out": result["left_out"],
                "mean_best_lomo_r2": float("nan")}
    scores = result["scores"]
    skipped = skipped_parts(scores)
    for line in skipped:
        get_run_logger().info("regress: %s", line)
    create_table_artifact(scores, key="regression-scores", description="R², MAE, RMSE per protocol, target, model")
    classes = "\n".join(f"- {c['protocol']}: accuracy {c['accuracy']:.2f} on {c['n_test']} rows (majority class "
                        f"{c['majority_share']:.2f}), confusion "
                        f"(rows true {c['labels']}, columns predicted) {c['confusion']} {c['note']}"
                        for c in result["classes"])
    figures = figures_markdown([(t, target.read_bytes(k), target.url_for(k)) for t, k in result["figures"].items()])
    learnt = len(models) - len(result["left_out"])
    create_markdown_artifact(
        f"# Architecture → emergence ({series}, {result['n_rows']} layers of {learnt} models)\n\n"
        "## Paper configuration, paper protocol (random 80/20; test R², the paper's Table 3 in brackets)\n\n"
        + _table3(scores, "paper", "random_80_20", CONFIGS["paper"].targets)
        + "\n\n## Paper configuration, leave one model out\n\n"
        + _table3(scores, "paper", "leave_one_model_out", CONFIGS["paper"].targets)
        + "\n\n## Project configuration, paper protocol\n\n"
        + _table3(scores, "project", "random_80_20", TARGETS)
        + "\n\n## Project configuration, leave one model out (chooses the saved models)\n\n"
        + _table3(scores, "project", "leave_one_model_out", TARGETS)
        + f"\n\n## Project configuration, {n_splits} repeated 80/20 splits\n\nR² mean ± sd over the splits, "
        "raw scale | learning scale (the transformed target the regressor fits). *nested choice*: in each split "
        "the regressor with the best inner-CV score on the training rows, scored on the test rows: the score "
        "to quote, never a best-of-six picked on test.\n\n" + _repeated(scores)
        + "\n\n† see the note column: not meaningful (too few test rows or a constant target), not trained "
        "(too few rows have the descriptor), or a substituted transform.\n\n"
        f"Chosen per target (best leave-one-model-out R²): {result['chosen']}\n\n"
        f"## Peak class\n\n{classes}\n\n## Partial dependence\n\n{figures}",
        key="regression-summary")
    best_lomo = best_lomo_r2(scores)
    get_run_logger().info("best leave-one-model-out R² per target: %s",
                          {t: round(v, 3) for t, v in best_lomo.items()})
    return {"status": result["status"], "chosen": result["chosen"], "best_lomo_r2": best_lomo,
            "nested_r2": nested_r2(scores),
            "model_key": result["model_key"], "left_out": result["left_out"], "skipped_parts": skipped,
            "mean_best_lomo_r2": float(np.mean(raw)) if (raw := [best_lomo[t] for t in RAW_TARGETS
                                                                   if np.isfinite(best_lomo[t])]) else float("nan")}


def skipped_parts(scores: list[dict]) -> list[str]:
    """What was not scored, and why: one line per (configuration, protocol, reason), naming the targets."""
    parts: dict[tuple[str, str, str], list[str]] = {}
    for r in scores:
        if not np.isfinite(r["r2"]):
            targets = parts.setdefault((r["config"], r["protocol"], r["note"] or "no score"), [])
            if r["target"] not in targets:
                targets.append(r["target"])
    return [f"{config} configuration, {protocol}: {', '.join(targets)} skipped ({note})"
            for (config, protocol, note), targets in parts.items()]


def summary(result: dict, params: dict) -> str:
    lines = []
    if result["status"] == "not trained":
        lines.append(f"no regressors trained: {result['reason']}")
    else:
        rows = [{"target": t, "nested R² (repeated 80/20)": result["nested_r2"].get(t, float("nan")),
                 "best LOMO R² (picked on held-out models)": r2, "chosen": result["chosen"].get(t)}
                for t, r2 in result["best_lomo_r2"].items()]
        lines += [cli.table(rows), *result["skipped_parts"],
                  f"regressors: {Store(params['store']).url_for(result['model_key'])}"]
    if result["left_out"]:
        lines.append(f"left out (no known architecture): {', '.join(result['left_out'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """The command line: ``python -m flows.regress`` or ``massive-activations regress``."""
    return cli.run(regress, summary, argv, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
