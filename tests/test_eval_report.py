"""Correlations of evaluation metrics with the ratio across checkpoints, against known answers."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

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
    assert row["n_checkpoints"] == 6 and 0 < row["p_value"] < 0.05


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
