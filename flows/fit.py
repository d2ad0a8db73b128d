"""Fit flow: the emergence function per model, layer and series, from the ratios on the store."""

from __future__ import annotations

import sys
from dataclasses import asdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows import cli
from flows.artifacts import figures_markdown
from flows.params import DEFAULT_STORE, FitParams
from massive_activations.errors import BadInputError
from massive_activations.fit.emergence import PEAK_CLASSES, FitSettings
from massive_activations.fit.fit_run import COMPARISON, FITS, ONSETS, PANEL_SERIES, check_series_names
from massive_activations.sources.families import model_key
from massive_activations.store import Store
from tasks.fit import fit_model_task
from tasks.policy import on_store

# Paper Table 1: mean R² per Pythia model (arXiv 2508.03616); 0.984 over all 188 layers.
PAPER_MEAN_R2 = 0.984


def _summary(fits: pa.Table) -> str:
    lines = ["| model | series | layers | mean R² | min R² | " + " | ".join(PEAK_CLASSES)
             + " | identified | best by AIC |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for model in sorted(set(fits.column("model").to_pylist())):
        for series in sorted(set(fits.column("series").to_pylist())):
            rows = fits.filter(pc.and_(pc.equal(fits.column("model"), model),
                                       pc.equal(fits.column("series"), series))).to_pylist()
            if not rows:
                continue
            r2 = [r["r2"] for r in rows]
            classes = [r["peak_class"] for r in rows]
            wins = {}
            for r in rows:
                wins[r["best_by_aicc"]] = wins.get(r["best_by_aicc"], 0) + 1
            lines.append(f"| {model} | {series} | {len(rows)} | {np.mean(r2):.3f} | {min(r2):.3f} | "
                         + "".join(f"{classes.count(c)} | " for c in PEAK_CLASSES)
                         + f"{sum(r['identified'] for r in rows)} | "
                         + ", ".join(f"{k} {v}" for k, v in sorted(wins.items())) + " |")
    return "\n".join(lines)


def _step(value: float) -> str:
    return f"{value:,.0f}" if np.isfinite(value) else "–"


def onset_summary(onsets: pa.Table) -> str:
    """Per model and series: the median onset over layers, and the layers whose onset comes before
    or after the ratio's with the 95% interval of the difference excluding 0."""
    lines = ["| model | series | layers fitted | median onset | identified | before the ratio | after the ratio |",
             "|---|---|---|---|---|---|---|"]
    for model in sorted(set(onsets.column("model").to_pylist())):
        rows = [r for r in onsets.to_pylist() if r["model"] == model]
        for name in sorted({r["series"] for r in rows}, key=lambda s: (s != "ratio", s)):
            sub = [r for r in rows if r["series"] == name]
            finite = [r["onset"] for r in sub if np.isfinite(r["onset"])]
            before = [r["layer"] for r in sub if r["minus_ratio_high"] < 0]
            after = [r["layer"] for r in sub if r["minus_ratio_low"] > 0]
            lines.append(f"| {model} | {name} | {len(sub)} | {_step(float(np.median(finite)) if finite else np.nan)} "
                         f"| {sum(r['identified'] for r in sub)} | "
                         f"{', '.join(map(str, before)) or '–' if name != 'ratio' else ''} | "
                         f"{', '.join(map(str, after)) or '–' if name != 'ratio' else ''} |")
    return "\n".join(lines)


@flow(name="fit", log_prints=True)
def fit(models: list[str] | None = None, series: tuple[str, ...] = ("ratio", "top1", "median", "ratio_excl0",
                                                                   *PANEL_SERIES),
        store: str = DEFAULT_STORE, settings: FitParams = FitParams(), refresh: bool = False) -> dict:
    """Fit every layer of every model; re-fit only models whose ratios, series or settings changed."""
    logger = get_run_logger()
    series = check_series_names(list(series))
    fit_settings = FitSettings(**settings.model_dump())
    target = Store(store)
    present = sorted({p["model"] for p in target.partitions("ratios")})
    if not present:
        raise BadInputError(f"nothing captured on {target.url}: run `python -m flows.capture --store {target.url}` "
                            "first (or the pipeline, which captures and fits)")
    models = [model_key(m) if "/" in m else m for m in models or present]  # org/name: as stored
    missing = [m for m in models if m not in present]
    if missing:
        raise BadInputError(f"no ratios on {target.url} for {missing}; captured models: {present}")
    fit_task = on_store(fit_model_task, target)
    results = {model: fit_task(target.url, model, series, asdict(fit_settings), force=refresh) for model in models}
    figures = {model: result["figures"] for model, result in results.items()}
    fits = target.read_dataset(FITS, where={"model": models})
    comparison = target.read_dataset(COMPARISON, where={"model": models})
    table = [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()
              if k in ("model", "layer", "series", "A", "lam", "gamma", "t0", "K", "r2", "t_peak", "peak_class",
                       "identified", "y_last", "rise", "t_half", "best_by_aicc")}
             for row in fits.filter(pc.equal(fits.column("series"), "ratio")).to_pylist()]
    create_table_artifact(table, key="fit-parameters", description="Emergence parameters per layer (ratio)")
    create_table_artifact(comparison.to_pylist(), key="fit-alternatives",
                          description="Emergence vs alternative shapes: mean R², AIC, AICc, wins, Akaike weights "
                                      "(paper Table 5)")
    images = figures_markdown([(model, target.read_bytes(keys["ratio-layers"]), target.url_for(keys["ratio-layers"]))
                               for model, keys in figures.items() if "ratio-layers" in keys])
    overall = float(np.mean(fits.filter(pc.equal(fits.column("series"), "ratio")).column("r2").to_numpy()))
    create_markdown_artifact(
        f"# Fit quality\n\nMean R² of the ratio over all layers: **{overall:.3f}** (paper: {PAPER_MEAN_R2})\n\n"
        + _summary(fits) + f"\n\nFigures on the store under `{target.url_for('plots/fits')}`\n\n" + images,
        key="fit-summary")
    onsets = target.read_dataset(ONSETS, where={"model": models})
    onset_images = figures_markdown([(model, target.read_bytes(keys["onsets"]), target.url_for(keys["onsets"]))
                                     for model, keys in figures.items() if "onsets" in keys])
    create_markdown_artifact("# Which emerges first\n\nOnset = the step where the fitted curve has moved half "
                             "its rise (95% interval from the fit's uncertainty; docs/science.md)\n\n"
                             + onset_summary(onsets) + "\n\n" + onset_images, key="fit-onsets")
    logger.info("fit: %s; mean R² (ratio) %.3f", {m: r["status"] for m, r in results.items()}, overall)
    return {"results": results, "figures": figures, "mean_r2": overall}


def summary(result: dict, params: dict) -> str:
    rows = [{"model": m, "status": r["status"]} for m, r in result["results"].items()]
    return "\n".join([cli.table(rows), f"mean R² (ratio, all layers): {result['mean_r2']:.3f} (paper: {PAPER_MEAN_R2})",
                      f"fits: {Store(params['store']).url_for(FITS)}"])


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """The command line: ``python -m flows.fit`` or ``massive-activations fit``."""
    return cli.run(fit, summary, argv, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
