"""Forecasts for a training run in progress: where each layer's ratio settles (K) and when it peaks.

Each time new checkpoints arrive, the emergence fit on the checkpoints so far gives K and t_peak
per layer; the architecture-only regressors, when trained, give the prior prediction. Every
forecast is kept under ``forecasts/model=<run>/step=<latest step>/`` so their history shows how the
estimate tightens as training goes on.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from massive_activations.store import Store

FORECASTS = "forecasts"
CODE_MODULES = ("massive_activations.forecast",)


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
                     "predicted_K": p.get("K"), "predicted_t_peak": p.get("t_peak")})
    return rows


def record_forecast(store: Store, model: str, latest_step: int, rows: list[dict], inputs: dict[str, Any]) -> str:
    written = store.write_partition(FORECASTS, {"model": model, "step": latest_step}, pa.Table.from_pylist(rows),
                                    inputs=inputs, code_modules=CODE_MODULES, overwrite=True)
    return written.key
