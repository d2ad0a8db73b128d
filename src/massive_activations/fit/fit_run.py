"""Fit every (layer, series) of a model from the ratios and the outlier panel on the store; write
``fits/``, ``onsets/`` and their figures.

Series come from ``ratios/`` (the ratio, top1, median) and from ``panel/`` (sink share, max α₀, the
down-projection's input spike, kurtosis: capture/panel.py), joined by (step, layer); a panel series
is fitted where the model has a panel, and a layer whose series never moves (no sink at any step,
say) has nothing to fit and is left out, as its onset is. A model's fits are redone only when its
inputs change: the content hashes of its ``ratios/`` and ``panel/`` partitions, the series, the fit
settings or the fit (or figure) code.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from massive_activations.capture.capture_run import PANEL
from massive_activations.errors import BadInputError
from massive_activations.fit.emergence import MIN_POINTS, FitSettings, SeriesError, curve_grid, fit_emergence
from massive_activations.fit.onset import onset_rows
from massive_activations.report.plots import plot_depth_curves, plot_layer_fits, plot_onsets
from massive_activations.store import Store

FITS, COMPARISON, ONSETS = "fits", "fit_comparison", "onsets"
CODE_MODULES = ("massive_activations.fit.emergence", "massive_activations.fit.fit_run",
                "massive_activations.fit.onset", "massive_activations.report.plots")
# series name -> (column of ratios/ or panel/, column of its spread over sequences)
SERIES = {"ratio": ("ratio", "ratio_std"), "top1": ("top1", "top1_std"),
          "median": ("median", "median_std"), "ratio_excl0": ("ratio_excl0", None),
          "sink_share": ("sink_share", None), "alpha0_max": ("alpha0_max", None),
          "super_in": ("down_in_max", None), "kurtosis": ("kurtosis", None)}
PANEL_SERIES = ("sink_share", "alpha0_max", "super_in", "kurtosis")
SHAPES = ("emergence", "log", "step", "step2", "logistic")


def check_series_names(series: list[str]) -> list[str]:
    unknown = [s for s in series if s not in SERIES]
    if unknown or not series:
        raise BadInputError(f"unknown series {unknown or series}; choose from {', '.join(SERIES)}")
    return series


def ratios_hash(store: Store, model: str) -> str:
    """One hash over the content hashes of all of a model's ratios partitions."""
    found = store.partitions_hash("ratios", {"model": model})
    if found is None:
        raise BadInputError(f"no ratios for model {model!r} on {store.url}; run the capture first")
    return found


def fit_inputs(store: Store, model: str, series: list[str], settings: FitSettings) -> dict[str, Any]:
    return {"model": model, "ratios_hash": ratios_hash(store, model),
            "panel_hash": store.partitions_hash(PANEL, {"model": model}), "series": sorted(series),
            "settings": asdict(settings)}


def series_table(store: Store, model: str, with_panel: bool) -> pa.Table:
    """The model's ratios (blocks only), with its panel's columns when it has one, by (step, layer)."""
    ratios = store.read_dataset("ratios", where={"model": model})
    ratios = ratios.filter(pc.greater_equal(ratios.column("layer"), 0))
    if not with_panel:
        return ratios
    panel = store.read_dataset(PANEL, where={"model": model}).select(
        ["step", "layer", *(SERIES[name][0] for name in PANEL_SERIES)])
    return ratios.join(panel, ["step", "layer"], join_type="left outer").sort_by([("layer", "ascending"),
                                                                                 ("step", "ascending")])


def fit_table(ratios: pa.Table, series: list[str], settings: FitSettings) -> pa.Table:
    """One row per (layer, series): parameters, errors, scores, peak, class, alternatives, curve."""
    layers = np.asarray(ratios.column("layer"))
    steps = np.asarray(ratios.column("step"), dtype=float)
    n_layers = int(layers.max()) + 1
    rows = []
    for layer in np.unique(layers):
        sel = layers == layer
        for name in series:
            value_col, spread_col = SERIES[name]
            if value_col not in ratios.column_names:
                continue  # a panel series of a model captured without the panel
            y = np.asarray(ratios.column(value_col).to_numpy(zero_copy_only=False), dtype=float)[sel]
            t = steps[sel][np.isfinite(y)]
            y = y[np.isfinite(y)]
            if name in PANEL_SERIES and (t.size < MIN_POINTS or np.ptp(y) == 0):
                continue  # never moves (or too few steps with a panel): nothing to fit
            try:
                fit = fit_emergence(t, y, settings)
            except SeriesError as err:
                raise SeriesError(f"layer {layer}, series {name}: {err}") from err
            grid = curve_grid(t, settings.curve_points)
            order = np.argsort(t)
            spread = np.asarray(ratios.column(spread_col))[sel][order] if spread_col else np.zeros(t.size)
            rows.append({"layer": int(layer), "series": name, "rel_depth": (int(layer) + 1) / n_layers,
                         **fit.as_row(), "steps": t[order].tolist(), "values": y[order].tolist(),
                         "spread": spread.tolist(), "curve_t": grid.tolist(),
                         "curve_y": fit.predict(grid).tolist()})
    return pa.Table.from_pylist(rows)


def _shape_column(shape: str, stat: str) -> str:
    """The fits/ column of a shape's statistic (r2, aic, aicc or its Akaike weight)."""
    if shape == "emergence":
        return "akaike_weight" if stat == "weight" else stat
    return f"alt_{shape}_{stat}"


def comparison_table(fits: pa.Table) -> pa.Table:
    """Per series: mean R², AIC and AICc of each shape, how often each wins on AIC and on AICc (paper
    Table 5), and its mean Akaike weight over the layers."""
    rows = []
    for name in sorted(set(fits.column("series").to_pylist())):
        sub = fits.filter(pc.equal(fits.column("series"), name))
        winners, winners_c = sub.column("best_by_aic").to_pylist(), sub.column("best_by_aicc").to_pylist()
        for shape in SHAPES:
            mean = {stat: float(np.mean(sub.column(_shape_column(shape, stat)).to_numpy()))
                    for stat in ("r2", "aic", "aicc", "weight")}
            rows.append({"series": name, "shape": shape, "mean_r2": mean["r2"], "mean_aic": mean["aic"],
                         "mean_aicc": mean["aicc"], "wins": winners.count(shape), "wins_aicc": winners_c.count(shape),
                         "mean_weight": mean["weight"], "n_layers": len(winners)})
    return pa.Table.from_pylist(rows)


def figure_keys(model: str, series: list[str]) -> dict[str, str]:
    return {f"{name}-{kind}": f"plots/fits/{model}-{name}-{kind}.png"
            for name in series for kind in ("layers", "depth")} | {"onsets": f"plots/onsets/{model}.png"}


def fit_model(store: Store, model: str, series: list[str], settings: FitSettings = FitSettings(),
              force: bool = False) -> dict[str, Any]:
    """Fit a model and render its figures, unless its fits on the store already match (``force``:
    anyway); say which happened."""
    check_series_names(series)
    inputs = fit_inputs(store, model, series, settings)
    if not force and (meta := store.current(FITS, {"model": model}, inputs, CODE_MODULES)):
        return {"model": model, "status": "skipped", "fits_hash": meta.get("content_hash"),
                "figures": {k: v for k, v in figure_keys(model, series).items() if store.exists(v)}}
    fits = fit_table(series_table(store, model, inputs["panel_hash"] is not None), series, settings)
    comparison = store.write_partition(COMPARISON, {"model": model}, comparison_table(fits), inputs=inputs,
                                       code_modules=CODE_MODULES, overwrite=True)
    onsets = pa.Table.from_pylist(onset_rows(fits.to_pylist()))
    store.write_partition(ONSETS, {"model": model}, onsets, inputs=inputs, code_modules=CODE_MODULES,
                          overwrite=True)
    figures = figure_keys(model, series)
    fitted = set(fits.column("series").to_pylist())
    for name in series:  # before the fits: a fit on the store always has its figures
        if name not in fitted:
            continue
        store.write_bytes(figures[f"{name}-layers"], plot_layer_fits(fits, model, name))
        store.write_bytes(figures[f"{name}-depth"], plot_depth_curves(fits, model, name))
    store.write_bytes(figures["onsets"], plot_onsets(onsets, model))
    figures = {k: v for k, v in figures.items() if k == "onsets" or k.split("-")[0] in fitted}
    written = store.write_partition(FITS, {"model": model}, fits, inputs=inputs, code_modules=CODE_MODULES,
                                    overwrite=True)
    return {"model": model, "status": "fitted", "fits_hash": written.content_hash,
            "comparison_hash": comparison.content_hash, "rows": written.rows, "figures": figures}
