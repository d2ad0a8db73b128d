"""Forecasts for a training run in progress: where each layer's ratio settles (K) and when it peaks.

Each time new checkpoints arrive, the emergence fit on the checkpoints so far gives K and t_peak
per layer; the architecture-only regressors, when trained, give the prior prediction. Every
forecast is kept under ``forecasts/model=<run>/step=<latest step>/`` so their history shows how the
estimate tightens as training goes on.
"""

from __future__ import annotations

import math
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from massive_activations.fit.fit_run import FITS
from massive_activations.regress.architecture import resolve_architecture
from massive_activations.regress.regress_run import has_regressors, predict
from massive_activations.report.plots import plot_forecast_history
from massive_activations.store import Store

FORECASTS = "forecasts"
CODE_MODULES = ("massive_activations.fit.forecast",)


def forecast_rows(fits: pa.Table, predicted: list[dict[str, Any]] | None, series: str = "ratio") -> list[dict]:
    """Per layer: the fitted K ± SE, t_peak (NaN unless an early peak), class and whether the fit is
    identified, with the architecture-only prediction beside them."""
    prior = {r["layer"]: r for r in predicted or []}
    rows = []
    for fit in sorted(fits.filter(pc.equal(fits.column("series"), series)).to_pylist(), key=lambda r: r["layer"]):
        p = prior.get(fit["layer"], {})
        rows.append({"layer": fit["layer"], "K": fit["K"], "se_K": fit["se_K"], "t_peak": fit["t_peak"],
                     "peak_class": fit["peak_class"], "identified": fit["identified"], "r2": fit["r2"],
                     "n_checkpoints": fit["n_points"], "last_ratio": fit["values"][-1],
                     # NaN, not None, without a prior: forecasts with and without one share a schema
                     "predicted_K": p.get("K", math.nan), "predicted_t_peak": p.get("t_peak", math.nan)})
    return rows


def record_forecast(store: Store, model: str, latest_step: int, rows: list[dict], inputs: dict[str, Any]) -> str:
    written = store.write_partition(FORECASTS, {"model": model, "step": latest_step}, pa.Table.from_pylist(rows),
                                    inputs=inputs, code_modules=CODE_MODULES, overwrite=True)
    return written.key


def forecast_to_store(store: Store, model: str, latest_step: int, config_path: str,
                      series: str = "ratio") -> dict[str, Any]:
    """This forecast (with the architecture prior when regressors exist on the store), recorded under
    ``forecasts/``, and the history figure of all forecasts of the run."""
    predicted = (predict(store, resolve_architecture(config_path), None, series)["rows"]
                 if has_regressors(store, series) else None)
    rows = forecast_rows(store.read_partition(FITS, {"model": model}), predicted, series)
    key = record_forecast(store, model, latest_step, rows, {"model": model, "latest_step": latest_step,
                                                            "with_prior": predicted is not None})
    figure = f"plots/forecasts/{model}.png"
    store.write_bytes(figure, plot_forecast_history(store.read_dataset(FORECASTS, where={"model": model}), model))
    return {"rows": rows, "key": key, "figure": figure, "with_prior": predicted is not None}
