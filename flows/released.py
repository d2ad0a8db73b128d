"""Released flow: the paper's own Pythia measurements from the Hub → stats/ratios → fit → regress → compared
with the published fits (Table 1) and regressions (Table 3)."""

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
from flows.regress import _table3, regress
from massive_activations.errors import BadInputError
from massive_activations.fit.emergence import MIN_POINTS, FitSettings
from massive_activations.fit.fit_run import FITS
from massive_activations.regress.regression import CONFIGS, REGRESSORS
from massive_activations.sources.released import (
    CODE_MODULES,
    COMPARISON,
    PAPER_TABLE1,
    RELEASED_FITS,
    REPO,
    REVISION,
    SERIES,
    SIZES,
    compare,
    discover,
)
from massive_activations.store import Store
from tasks.fit import fit_model_task
from tasks.policy import on_store
from tasks.released import import_released_model, list_released

# Its own store by default: regress learns from every fitted model on a store, and the offline suite's
# tiny models are not Pythia.
RELEASED_STORE = f"{DEFAULT_STORE.rstrip('/')}-released"


def check_models(models: list[str] | None) -> list[str] | None:
    """The models asked for, each one the dataset may hold (None: all it has)."""
    known = [f"pythia-{size}" for size in SIZES]
    if models is None:
        return None
    unknown = [m for m in models if m not in known]
    if unknown or not models:
        raise BadInputError(f"--models: {unknown or 'none given'}: the released dataset holds {', '.join(known)}")
    return models


def _table1(comparison: pa.Table, models: list[str]) -> list[dict]:
    rows = []
    for model in models:
        sub = comparison.filter(pc.and_(pc.equal(comparison.column("model"), model),
                                        pc.equal(comparison.column("series"), "ratio")))
        if sub.num_rows:
            rows.append({"model": model, "layers": sub.num_rows,
                         "mean R² ours": float(np.mean(sub.column("r2_ours").to_numpy())),
                         "mean R² published": float(np.nanmean(sub.column("r2_published").to_numpy())),
                         "paper Table 1": PAPER_TABLE1.get(model, float("nan")),
                         "same class": int(np.sum(np.asarray(sub.column("class_ours").to_pylist())
                                                  == np.asarray(sub.column("class_published").to_pylist())))})
    return rows


@flow(name="released", log_prints=True)
def released(repo: str = REPO, revision: str = REVISION, models: list[str] | None = None,
             store: str = RELEASED_STORE, endpoint: str | None = None, cache_dir: str | None = None,
             download_retries: int = 5, download_timeout_s: float = 30.0, fit_settings: FitParams = FitParams(),
             train_regressors: bool = True, regressors: tuple[str, ...] = tuple(REGRESSORS),
             refresh: bool = False) -> dict:
    """Import the paper's released Pythia measurements, fit them, and compare with the published fits.

    Args:
        repo: The Hub dataset holding the paper's measurements.
        revision: Its revision (the pinned commit by default; a branch or tag is resolved and recorded).
        models: Released models to import (pythia-14m … pythia-12b); default: every one the dataset has.
        store: Store URL for the imported data, fits and comparison (its own by default: regress learns
            from every model on a store).
        endpoint: Hub endpoint (default: HF_ENDPOINT or huggingface.co).
        cache_dir: Local cache for downloads (default: ~/.cache/massive_activations/hub).
        download_retries: Attempts after the first, per request, with backoff (the one retry layer).
        download_timeout_s: Seconds each request may wait for an answer.
        fit_settings: Settings of the emergence fits.
        train_regressors: Also train the regressors (the paper's Table 3 on the real data).
        regressors: The project configuration's regressors (the paper configuration keeps its own five).
        refresh: Re-import and refit, whatever the store holds.
    """
    logger = get_run_logger()
    models = check_models(models)
    target = Store(store)
    hub = {"endpoint": endpoint, "cache_dir": cache_dir, "retries": download_retries, "timeout_s": download_timeout_s}
    files = discover(list_released(hub, repo, revision), models)
    absent = sorted(set(models or []) - set(files.stats))
    if not files.stats:
        raise BadInputError(f"no stats files of {models or 'any Pythia model'} in {repo}@{revision} "
                            "(pythia_<size>/stats/exp2_pythia_<size>_step<N>)")
    importing = on_store(import_released_model, target)
    imports = {m: importing(target.url, hub, repo, revision, m, steps, files.params.get(m, {}), force=refresh)
               for m, steps in sorted(files.stats.items())}
    unreadable = [m for m, r in imports.items() if not r["imported"] and not r["skipped"]]
    for model in unreadable:
        logger.warning("%s: no file could be imported; going on with the others", model)
    fitted = [m for m, r in imports.items() if len(r["imported"]) + len(r["skipped"]) >= MIN_POINTS]
    too_few = sorted(set(imports) - set(fitted) - set(unreadable))
    fitting = on_store(fit_model_task, target)
    fits = {m: fitting(target.url, m, list(SERIES), asdict(FitSettings(**fit_settings.model_dump())), force=refresh)
            for m in fitted}
    comparison_rows = []
    if fitted:
        ours = target.read_dataset(FITS, where={"model": fitted}).to_pylist()
        published_models = [p["model"] for p in target.partitions(RELEASED_FITS) if p["model"] in fitted]
        published = target.read_dataset(RELEASED_FITS, where={"model": published_models}).to_pylist() \
            if published_models else []
        data = {(r["model"], r["series"], r["layer"]): (np.asarray(r["steps"]), np.asarray(r["values"]))
                for r in ours}
        comparison_rows = compare(ours, published, data)
        for model in fitted:
            rows = [{k: v for k, v in r.items() if k != "model"} for r in comparison_rows if r["model"] == model]
            if rows:
                target.write_partition(COMPARISON, {"model": model}, pa.Table.from_pylist(rows),
                                       inputs={"model": model, "fits": fits[model].get("fits_hash"),
                                               "published": target.partitions_hash(RELEASED_FITS, {"model": model})},
                                       code_modules=CODE_MODULES, overwrite=True)
    comparison = pa.Table.from_pylist(comparison_rows) if comparison_rows else None
    table1 = _table1(comparison, fitted) if comparison is not None else []
    table3 = ""
    regress_result: dict = {"status": "not run"}
    if train_regressors and len(fitted) >= 2:
        regress_result = regress(store=target.url, series="ratio", regressors=regressors, refresh=refresh)
        if regress_result["status"] != "not trained":
            scores = target.read_dataset("regression_scores", where={"series": "ratio"}).to_pylist()
            table3 = _table3(scores, "paper", "random_80_20", CONFIGS["paper"].targets)
    bad = [{"model": m, **b} for m, r in imports.items() for b in r["bad"]]
    if bad:
        create_table_artifact(bad, key="released-bad-files", description="Released files skipped, and why")
    create_table_artifact(table1, key="released-table1", description="Mean R² per model: ours, published, paper")
    figures = figures_markdown([(m, target.read_bytes(r["figures"]["ratio-layers"]),
                                 target.url_for(r["figures"]["ratio-layers"])) for m, r in fits.items()])
    create_markdown_artifact(
        f"# The paper's released data ({repo}@{revision})\n\n## Table 1: mean R² of the ratio per model\n\n"
        + _markdown(table1)
        + "\n\n## Table 3: paper configuration, random 80/20 on the released data (paper's R² in brackets)\n\n"
        + (table3 or "not trained (train_regressors off, or fewer than 2 models fitted)")
        + (f"\n\n## Skipped files\n\n{_markdown(bad)}" if bad else "")
        + f"\n\n## Released ratios with our fits\n\n{figures}", key="released-summary")
    logger.info("released: %d models imported, %d fitted, %d bad files", len(imports), len(fitted), len(bad))
    return {"repo": repo, "revision": revision, "imports": imports, "unreadable": unreadable, "absent": absent,
            "too_few_steps": too_few, "fitted": fitted, "bad_files": bad, "table1": table1,
            "regress": regress_result.get("status"), "table3": table3}


def _markdown(rows: list[dict]) -> str:
    if not rows:
        return "(none)"
    cell = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    return "\n".join(["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
                     + ["| " + " | ".join(cell(v) for v in r.values()) + " |" for r in rows])


def summary(result: dict, params: dict) -> str:
    store = Store(params["store"])
    rows = [{"model": m, "imported": len(r["imported"]), "already stored": len(r["skipped"]),
             "bad files": len(r["bad"]), "layers": r["n_layers"]} for m, r in result["imports"].items()]
    lines = [cli.table(rows)]
    lines += [f"skipped {b['path']}: {b['reason']}" for b in result["bad_files"]]
    lines += [f"{m}: no file could be imported" for m in result["unreadable"]]
    lines += [f"{m}: fewer than {MIN_POINTS} checkpoints, not fitted" for m in result["too_few_steps"]]
    lines += [f"{m}: not in the dataset" for m in result["absent"]]
    if result["table1"]:
        lines += ["Table 1 (mean R² of the ratio per model):", cli.table(result["table1"])]
    if result["table3"]:
        lines += ["Table 3 (paper configuration, random 80/20; paper's R² in brackets):", result["table3"]]
    lines.append(f"comparison: {store.url_for(COMPARISON)}")
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """The command line: ``python -m flows.released`` or ``massive-activations released``."""
    return cli.run(released, summary, argv, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
