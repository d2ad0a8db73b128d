"""Correlations of evaluation metrics with the ratio across checkpoints, against known answers."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from scipy.stats import spearmanr

from massive_activations.evals.eval_report import correlations


def joined(values: list[float], ratios: list[float], metric: str = "explained_variance") -> pa.Table:
    steps = [48 * i for i in range(len(values))]
    return pa.Table.from_pylist([{"model": "m", "step": s, "layer": 1, "kind": "sae", "variant": "topk-unmasked",
                                  "metric": metric, "value": v, "ratio": r}
                                 for s, v, r in zip(steps, values, ratios, strict=True)])


def test_spearman_rho_on_six_checkpoints_matches_the_rank_formula():
    """No ties: ρ = 1 − 6·Σd² / (n(n² − 1)). Ranks of the metric 1..6 against ratio ranks 2,1,4,3,6,5:
    Σd² = 6, so ρ = 1 − 36/210 = 0.828571…"""
    ratio = [5.0, 7.0, 9.0, 11.0, 13.0, 15.0]
    metric = [0.92, 0.90, 0.95, 0.93, 0.99, 0.96]  # ranks 2,1,4,3,6,5
    row = correlations(joined(metric, ratio)).to_pylist()[0]
    assert row["spearman_rho"] == pytest.approx(1 - 6 * 6 / (6 * 35))
    # both series rise with the step, so they are not 6 independent pairs: the p-value is above
    # scipy's iid one (0.04) and the partial ρ abstains below the floor, saying why
    assert row["n_checkpoints"] == 6 and spearmanr(metric, ratio).pvalue < 0.05 < row["p_value"] < 1
    assert math.isnan(row["partial_rho"]) and row["reason"].startswith("fewer than 20 checkpoints")


def _layered(n_layers: int, n: int, planted: dict[int, float], models: str = "m") -> pa.Table:
    """Per layer, a metric and a ratio sharing a saturating trend over n log-spaced checkpoints; the
    metric follows the ratio's own noise in the layers of ``planted`` (with that weight)."""
    rng, rows = np.random.default_rng(0), []
    steps = np.round(np.geomspace(16, 143_000, n)).astype(int)
    trend = 1 / (1 + np.exp(-(np.log(steps) - 6) / 0.8))
    for model in models:
        for layer in range(n_layers):
            own = rng.normal(size=n)
            w = planted.get(layer, 0.0)
            metric = -3 * trend + w * own + np.sqrt(1 - w * w) * rng.normal(size=n)
            rows += [{"model": model, "step": int(s), "layer": layer, "kind": "quant", "variant": "int8-tensor",
                      "metric": "sqnr_db", "value": float(v), "ratio": float(r)}
                     for s, v, r in zip(steps, metric, 4 * trend + own, strict=True)]
    return pa.Table.from_pylist(rows)


def test_layers_get_fdr_q_values_and_one_pooled_test_per_metric():
    from massive_activations.evals.eval_report import pooled_correlations

    corr = correlations(_layered(6, 30, {1: 0.95, 4: 0.95}))
    rows = corr.to_pylist()
    p = [r["partial_rho_p"] for r in rows]
    order = np.argsort(p)  # BH by hand: q_(i) = min over j >= i of m·p_(j)/j
    by_hand = np.minimum.accumulate([6 * p[k] / (i + 1) for i, k in enumerate(order)][::-1])[::-1]
    assert [rows[k]["partial_rho_q"] for k in order] == pytest.approx(list(by_hand))
    pooled = pooled_correlations(corr).to_pylist()
    assert len(pooled) == 1 and pooled[0]["layers_tested"] == 6 and pooled[0]["n_models"] == 1
    assert pooled[0]["pooled_p"] == pytest.approx(min(by_hand)) and pooled[0]["pooled_p"] < 1e-3
    assert pooled[0]["discoveries_positive"] == 2 and pooled[0]["discoveries_negative"] == 0
    null = pooled_correlations(correlations(_layered(6, 30, {}, models="ab"))).to_pylist()[0]
    assert null["n_models"] == 2 and null["layers"] == 12 and null["pooled_p"] > 0.05
    assert null["discoveries_positive"] == null["discoveries_negative"] == 0


def test_a_metric_falling_as_the_ratio_grows_has_rho_minus_one():
    ratio = list(np.geomspace(5, 500, 7))
    row = correlations(joined([1 / r for r in ratio], ratio)).to_pylist()[0]
    assert row["spearman_rho"] == pytest.approx(-1.0) and row["p_value"] < 1e-3


def test_too_few_checkpoints_or_a_constant_metric_give_no_rho():
    """Fewer than 4 checkpoints, or nothing varying, is reported as NaN rather than a number."""
    assert math.isnan(correlations(joined([0.1, 0.2, 0.3], [1.0, 2.0, 3.0])).to_pylist()[0]["spearman_rho"])
    assert math.isnan(correlations(joined([0.5] * 5, [1.0, 2.0, 3.0, 4.0, 5.0])).to_pylist()[0]["spearman_rho"])


def test_the_partial_rho_reaches_the_table_and_the_figure_title():
    """A metric that falls with the step, while the ratio wobbles around its own trend: ρ with the step
    is −1, so nothing of the metric is left beyond the step and the partial ρ is undefined (NaN)."""
    from massive_activations.evals.eval_report import layer_correlations
    from massive_activations.report.plots import _correlation_line

    ratio = [5.0, 9.0, 7.0, 13.0, 11.0, 15.0]
    table = joined([0.99, 0.97, 0.95, 0.93, 0.91, 0.89], ratio)
    row = correlations(table).to_pylist()[0]
    assert row["rho_step"] == pytest.approx(-1.0) and math.isnan(row["partial_rho"])
    assert row["spearman_rho"] == pytest.approx(-1 + 6 * 4 / (6 * 35))  # ranks 1,3,2,5,4,6 against 6..1
    assert row["spearman_rho_low"] <= row["spearman_rho_high"]
    key = ("sae", "topk-unmasked", "explained_variance")
    across = layer_correlations(table).to_pylist()  # one layer: no ρ across layers
    assert all(math.isnan(r["rho_across_layers"]) and r["n_layers"] == 1 for r in across)
    line = _correlation_line(key, [row], across)
    assert f"ρ ratio {row['spearman_rho']:+.2f} · step -1.00 · partial n/a · across layers n/a" in line


def test_across_models_at_matched_steps():
    """Three models, two layers each, at step 10: the metric falls exactly as the ratio rises across all
    six model-layers (ρ = −1); step 20 has one model only (no row); step 30 has too few points (NaN)."""
    from massive_activations.evals.eval_report import model_correlations

    rows = [{"model": m, "step": 10, "layer": layer, "kind": "quant", "variant": "int8-tensor", "metric": "sqnr_db",
             "value": 50.0 - ratio, "ratio": ratio}
            for (m, layer), ratio in zip([(m, layer) for m in "abc" for layer in (0, 1)], [3, 9, 4, 20, 7, 12],
                                         strict=True)]
    rows += [{"model": "a", "step": 20, "layer": 0, "kind": "quant", "variant": "int8-tensor", "metric": "sqnr_db",
              "value": 1.0, "ratio": 2.0}]
    rows += [{"model": m, "step": 30, "layer": 0, "kind": "quant", "variant": "int8-tensor", "metric": "sqnr_db",
              "value": v, "ratio": r} for m, v, r in (("a", 1.0, 2.0), ("b", 2.0, 1.0))]
    rows += [{"model": "a", "step": 10, "layer": -2, "kind": "quant_model", "variant": "w8a8", "metric": "x",
              "value": 1.0, "ratio": 3.0}]  # checkpoint-level rows are not layers
    out = {r["step"]: r for r in model_correlations(pa.Table.from_pylist(rows)).to_pylist()}
    assert sorted(out) == [10, 30]
    assert out[10]["rho_across_models"] == pytest.approx(-1.0) and (out[10]["n_models"], out[10]["n_points"]) == (3, 6)
    assert math.isnan(out[30]["rho_across_models"]) and out[30]["n_points"] == 2
