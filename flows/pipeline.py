"""The main job: offline suite → capture (→ fit, regress, evaluate as they land), all through Prefect.

``python -m flows.pipeline`` (what ``make run`` runs) uses the embedded defaults: the local store
under ./data, the Prefect ephemeral API with SQLite, and the offline suite.
"""

from __future__ import annotations

import argparse
import time

from prefect import flow, get_run_logger

from flows.capture import capture
from flows.fit import fit
from flows.offline_suite import offline_suite
from flows.params import DEFAULT_STORE, CaptureParams, FitParams, PromptParams, SourceParams
from flows.predict import ArchitectureParams, predict
from flows.regress import regress
from massive_activations.store import Store


@flow(name="pipeline", log_prints=True)
def pipeline(suite: str = "default", store: str = DEFAULT_STORE, steps: str = "all", workers: int = 2,
             prompts: PromptParams = PromptParams(), settings: CaptureParams = CaptureParams(),
             fit_settings: FitParams = FitParams(),
             unseen: ArchitectureParams = ArchitectureParams(n_layers=5, d_model=80, n_heads=5,
                                                             name="unseen-l5-d80-h5"),
             device: str = "auto", refresh: bool = False) -> dict:
    logger = get_run_logger()
    built = offline_suite(suite=suite, store=store, workers=workers, refresh=refresh)
    captured = capture(models=sorted(built["models"]), steps=steps, store=store, suite=suite,
                       source=SourceParams(kind="folder", root=built["root"]), prompts=prompts,
                       settings=settings, device=device, refresh=refresh)
    fitted = fit(models=sorted(built["models"]), store=store, settings=fit_settings, refresh=refresh)
    regressed = regress(store=store, refresh=refresh)
    predicted = predict(architecture=unseen, store=store)
    target = Store(store)
    where = {name: target.url_for(name) for name in (
        "suites", "stats", "ratios", "activations", "fits", "fit_comparison", "regression_scores",
        "regression_importance", "regressors", "predictions", "plots")}
    logger.info("results: %s", where)
    return {"suite": built, "capture": captured, "fit": fitted, "regress": regressed, "predict": predicted,
            "where": where}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="default", help="offline suite: default or micro")
    parser.add_argument("--store", default=DEFAULT_STORE, help="store URL: a path, file://… or s3://bucket/prefix")
    parser.add_argument("--steps", default="all", help="step selector: all, log, a:b:c, every=N, 0,8,…")
    parser.add_argument("--workers", type=int, default=2, help="processes training the suite")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--refresh", action="store_true", help="recompute even what is cached")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    result = pipeline(suite=args.suite, store=args.store, steps=args.steps, workers=args.workers,
                      device=args.device, refresh=args.refresh)
    print(f"\nDone in {time.perf_counter() - started:.0f} s. Results on the store:")
    for name, url in result["where"].items():
        print(f"  {name:12s} {url}")
    cap = result["capture"]
    print(f"Checkpoints captured {cap['captured']}, skipped (already on the store) {cap['skipped']}, "
          f"cached {cap['cached']}, failed {len(cap['failed'])}")
    print(f"Mean R² of the emergence fit (ratio, all layers): {result['fit']['mean_r2']:.3f} (paper: 0.984)")
    lomo = {k: round(v, 2) for k, v in result["regress"]["best_lomo_r2"].items()}
    print(f"Architecture → parameters, best leave-one-model-out R² per parameter: {lomo}")
    print(f"Prediction for an unseen architecture: {result['predict']['figure']}")


if __name__ == "__main__":
    main()
