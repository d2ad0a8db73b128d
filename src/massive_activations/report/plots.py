"""Figures, rendered to PNG bytes so that callers can put them on the store or in artifacts."""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402


def _png(fig: plt.Figure, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _rows(fits: pa.Table, series: str) -> list[dict]:
    return sorted(fits.filter(pc.equal(fits.column("series"), series)).to_pylist(), key=lambda r: r["layer"])


def _mark_stationary(ax: plt.Axes, row: dict) -> None:
    """A maximum inside the run (early peak) as a red ▼; a minimum inside it (dip) as a blue ▲."""
    t, steps = row["t_stationary"], row["steps"]
    if not (math.isfinite(t) and min(steps) <= t <= max(steps)):
        return
    y = np.interp(t, row["curve_t"], row["curve_y"])
    if row["peak_class"] == "early peak":
        ax.plot([t], [y], marker="v", color="C3", ms=8, ls="none", label="peak (maximum)")
    elif row["peak_class"] == "dip":
        ax.plot([t], [y], marker="^", color="C0", ms=8, ls="none", label="dip (minimum)")


def plot_layer_fits(fits: pa.Table, model: str, series: str = "ratio") -> bytes:
    """A grid of layers: data with its spread over sequences, the fitted curve, the peak, R²."""
    rows = _rows(fits, series)
    cols = min(4, len(rows))
    nrows = math.ceil(len(rows) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.4 * cols, 2.6 * nrows + 0.6), squeeze=False,
                             layout="constrained")
    for ax, row in zip(axes.flat, rows, strict=False):
        ax.errorbar(row["steps"], row["values"], yerr=row["spread"], fmt="o", ms=3, lw=0.8, color="0.3",
                    ecolor="0.7", label="data (±1 sd over sequences)")
        ax.plot(row["curve_t"], row["curve_y"], color="C1", lw=1.6, label="fit")
        _mark_stationary(ax, row)
        ax.set_xscale("symlog", linthresh=1)
        ax.set_title(f"layer {row['layer']}: R²={row['r2']:.3f}, {row['peak_class']}", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(rows):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=6, loc="best")
    fig.suptitle(f"{model}: {series} vs training step", fontsize=11)
    fig.supxlabel("step (symlog)", fontsize=9)
    return _png(fig)


def plot_depth_curves(fits: pa.Table, model: str, series: str = "ratio") -> bytes:
    """Every layer's fitted curve, coloured by relative depth."""
    rows = _rows(fits, series)
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    cmap = plt.get_cmap("viridis")
    for row in rows:
        ax.plot(row["curve_t"], row["curve_y"], color=cmap(row["rel_depth"]), lw=1.5, label=f"layer {row['layer']}")
        ax.plot(row["steps"], row["values"], "o", ms=2, color=cmap(row["rel_depth"]), alpha=0.5)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("step (symlog)")
    ax.set_ylabel(series)
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, 1))
    fig.colorbar(sm, ax=ax, label="relative depth (layer+1)/L")
    ax.set_title(f"{model}: fitted {series} by depth")
    return _png(fig)


def plot_ratio_curves(ratios: pa.Table) -> bytes:
    """One panel per model: every layer's measured ratio vs step, with its spread over sequences."""
    models = sorted(set(ratios.column("model").to_pylist()))
    cols = min(3, len(models))
    nrows = math.ceil(len(models) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.0 * nrows + 0.5), squeeze=False,
                             layout="constrained")
    cmap = plt.get_cmap("viridis")
    for ax, model in zip(axes.flat, models, strict=False):
        rows = ratios.filter(pc.equal(ratios.column("model"), model)).to_pylist()
        layers = sorted({r["layer"] for r in rows})
        depth = max(layers) + 1
        for layer in layers:
            pts = sorted((r["step"], r["ratio"], r["ratio_std"]) for r in rows if r["layer"] == layer)
            steps, ratio, spread = (np.array(x) for x in zip(*pts, strict=True))
            color = "0.6" if layer < 0 else cmap((layer + 1) / depth)
            ax.plot(steps, ratio, "-o", ms=2, lw=1.2, color=color, label="embedding" if layer < 0 else f"layer {layer}")
            ax.fill_between(steps, ratio - spread, ratio + spread, color=color, alpha=0.15, lw=0)
        ax.set_xscale("symlog", linthresh=1)
        ax.set_title(model, fontsize=10)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, ncol=2, loc="upper left")
    for ax in axes.flat[len(models):]:
        ax.axis("off")
    fig.supxlabel("training step (symlog)")
    fig.supylabel("ratio = mean top1 / mean median")
    return _png(fig)


def plot_partial_dependence(model, X: np.ndarray, features: list[int], names: list[str], title: str) -> bytes:
    """Partial dependence of a fitted regressor on its most important features."""
    from sklearn.inspection import partial_dependence

    fig, axes = plt.subplots(1, max(1, len(features)), figsize=(4 * max(1, len(features)), 3), layout="constrained",
                             squeeze=False)
    for ax, feature in zip(axes[0], features, strict=False):
        dependence = partial_dependence(model, X, [feature], grid_resolution=50)
        ax.plot(dependence["grid_values"][0], dependence["average"][0])  # a flat line stays flat, unscaled
        ax.set_xlabel(names[feature])
    axes[0][0].set_ylabel("partial dependence")
    fig.suptitle(f"partial dependence: {title}")
    return _png(fig)


def plot_predicted_curves(rows: list[dict], arch: str, series: str) -> bytes:
    """Predicted emergence curves per layer of an architecture, coloured by relative depth."""
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    cmap = plt.get_cmap("viridis")
    for row in rows:
        ax.plot(row["curve_t"], row["curve_y"], color=cmap(row["rel_depth"]), lw=1.5, label=f"layer {row['layer']}")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("step (symlog)")
    ax.set_ylabel(f"predicted {series}")
    ax.set_title(f"{arch}: predicted from architecture alone")
    ax.legend(fontsize=6, ncol=2)
    return _png(fig)


def _median(values: list[float]) -> float:
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.median(finite)) if finite else float("nan")


def _correlation_line(key: tuple[str, str, str], corr: list[dict], across: list[dict]) -> str:
    """Medians over layers of ρ with the ratio, ρ with the step and the partial ρ, and over checkpoints
    of ρ across layers: what the panel's curves say, in numbers that separate the ratio from time."""
    mine = [r for r in corr if (r["kind"], r["variant"], r["metric"]) == key]
    if not mine:
        return ""
    layers = [r["rho_across_layers"] for r in across if (r["kind"], r["variant"], r["metric"]) == key]
    def show(values: list[float]) -> str:
        value = _median(values)
        return f"{value:+.2f}" if math.isfinite(value) else "n/a"

    return (f"\nρ ratio {show([r['spearman_rho'] for r in mine])} · step {show([r['rho_step'] for r in mine])}"
            f" · partial {show([r['partial_rho'] for r in mine])} · across layers {show(layers)}")


def plot_eval_metrics(joined: pa.Table, model: str, panels: list[tuple[str, str, str]],
                      corr: pa.Table | None = None, across: pa.Table | None = None) -> bytes:
    """One panel per (kind, variant, metric): the metric per layer vs step, the layer's ratio dashed on a
    second axis; with ``corr`` and ``across`` (the report's correlation tables), their medians in the title."""
    rows = joined.filter(pc.equal(joined.column("model"), model)).to_pylist()
    corr_rows = corr.to_pylist() if corr is not None else []
    across_rows = across.to_pylist() if across is not None else []
    cols = min(3, len(panels))
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.4 * cols, 3.1 * nrows + 0.5), squeeze=False,
                             layout="constrained")
    cmap = plt.get_cmap("viridis")
    for ax, (kind, variant, metric) in zip(axes.flat, panels, strict=False):
        sel = [r for r in rows if (r["kind"], r["variant"], r["metric"]) == (kind, variant, metric)]
        layers = sorted({r["layer"] for r in sel})
        top = max(layers, default=0) + 1
        twin = ax.twinx()
        for layer in layers:
            pts = sorted((r["step"], r["value"], r["ratio"]) for r in sel if r["layer"] == layer)
            steps, values, ratio = (np.array(x, dtype=float) for x in zip(*pts, strict=True))
            color = "0.5" if layer < 0 else cmap((layer + 1) / top)
            label = "checkpoint" if layer == -2 else "embedding" if layer == -1 else f"layer {layer}"
            ax.plot(steps, values, "-o", ms=2, lw=1.2, color=color, label=label)
            twin.plot(steps, ratio, "--", lw=0.8, color=color, alpha=0.6)
        ax.set_xscale("symlog", linthresh=1)
        ax.set_title(f"{kind} {variant}: {metric}"
                     + _correlation_line((kind, variant, metric), corr_rows, across_rows), fontsize=8)
        ax.tick_params(labelsize=7)
        twin.tick_params(labelsize=7)
        twin.set_ylabel("ratio (dashed)", fontsize=7)
        if sel:
            ax.legend(fontsize=6, ncol=2, loc="best")
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    fig.supxlabel("training step (symlog)")
    fig.suptitle(model)
    return _png(fig)


def plot_forecast_history(forecasts: pa.Table, model: str) -> bytes:
    """Forecast K (± SE) and t_peak per layer against the latest checkpoint seen when it was made."""
    rows = forecasts.filter(pc.equal(forecasts.column("model"), model)).to_pylist()
    layers = sorted({r["layer"] for r in rows})
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    cmap = plt.get_cmap("viridis")
    for layer in layers:
        pts = sorted((r["step"], r["K"], r["se_K"] or 0.0, r["t_peak"]) for r in rows if r["layer"] == layer)
        steps, k, se, peak = (np.array(x, dtype=float) for x in zip(*pts, strict=True))
        color = cmap((layer + 1) / (max(layers) + 1))
        left.errorbar(steps, k, yerr=se, fmt="-o", ms=3, color=color, label=f"layer {layer}")
        right.plot(steps, peak, "-o", ms=3, color=color)
    left.set_title("forecast steady-state ratio K (± SE)", fontsize=9)
    right.set_title("forecast t_peak", fontsize=9)
    for ax in (left, right):
        ax.set_xlabel("latest checkpoint seen")
    left.legend(fontsize=6)
    fig.suptitle(f"{model}: forecasts as training goes on")
    return _png(fig)


def plot_onsets(onsets: pa.Table, model: str) -> bytes:
    """Per layer, each series' onset step with its 95% interval (hollow: the fit is not identified)."""
    rows = onsets.to_pylist()
    names = sorted({r["series"] for r in rows}, key=lambda s: (s != "ratio", s))
    fig, ax = plt.subplots(figsize=(7, 3.6), layout="constrained")
    for i, name in enumerate(names):
        pts = sorted((r for r in rows if r["series"] == name and math.isfinite(r["onset"])), key=lambda r: r["layer"])
        if not pts:
            continue
        x = np.array([r["layer"] for r in pts]) + (i - (len(names) - 1) / 2) * 0.12
        y = np.array([r["onset"] for r in pts])
        low = np.array([r["onset_low"] for r in pts])
        high = np.array([r["onset_high"] for r in pts])
        err = np.vstack([np.where(np.isfinite(low), np.clip(y - low, 0, None), 0),
                         np.where(np.isfinite(high), np.clip(high - y, 0, None), 0)])
        ax.errorbar(x, y, yerr=err, fmt="none", color=f"C{i}", lw=1, alpha=0.7)
        for xi, yi, r in zip(x, y, pts, strict=True):
            ax.plot([xi], [yi], "o", ms=5, color=f"C{i}", mfc=f"C{i}" if r["identified"] else "white")
        ax.plot([], [], "o", color=f"C{i}", label=name)
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xticks(sorted({r["layer"] for r in rows}))
    ax.set_xlabel("layer")
    ax.set_ylabel("onset step (half the rise)")
    ax.legend(fontsize=7, ncol=min(5, len(names)))
    ax.set_title(f"{model}: which emerges first (95% intervals; hollow: fit not identified)", fontsize=9)
    return _png(fig)
