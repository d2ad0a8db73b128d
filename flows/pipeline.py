"""The main job: offline suite (or Hub models) → capture → fit → regress → predict → evaluate, through Prefect.

``python -m flows.pipeline`` (what ``make run`` runs) uses the embedded defaults: the local store
under ./data, the Prefect ephemeral API with SQLite, and the offline suite.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Literal

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows import cli
from flows.capture import capture, eval_token_lines
from flows.evaluate import evaluate
from flows.fit import fit
from flows.offline_suite import offline_suite
from flows.params import DEFAULT_STORE, CaptureParams, EvalParams, FitParams, Kind, PromptParams, SourceParams
from flows.predict import ArchitectureParams, predict
from flows.regress import regress
from flows.runner import RunnerParams, task_runner
from massive_activations.fit.emergence import PEAK_CLASSES
from massive_activations.fit.fit_run import SHAPES
from massive_activations.store import Store

Stage = Literal["suite", "capture", "fit", "regress", "evaluate"]
STAGES: tuple[str, ...] = Stage.__args__
UNSEEN = ArchitectureParams(n_layers=5, d_model=80, n_heads=5, name="unseen-l5-d80-h5")
OUTPUTS = ("suites", "stats", "ratios", "activations", "panel", "fits", "fit_comparison", "onsets", "regression_scores",
           "regression_importance", "regressors", "predictions", "evals", "plots")


@flow(name="pipeline", log_prints=True)
def pipeline(suite: Literal["default", "micro"] = "default", models: list[str] | None = None,
             source: SourceParams = SourceParams(), store: str = DEFAULT_STORE, steps: str = "all",
             prompts: PromptParams = PromptParams(), settings: CaptureParams = CaptureParams(),
             fit_settings: FitParams = FitParams(), evaluations: tuple[Kind, ...] = ("sae", "itda", "quant"),
             eval_steps: str = "spaced=20", eval_settings: EvalParams = EvalParams(),
             unseen: ArchitectureParams = UNSEEN, workers: int = 2, device: str = "auto",
             runner: RunnerParams = RunnerParams(), refresh: list[Stage] | None = None,
             until: Stage = "evaluate") -> dict:
    """Run every stage; each reuses what the store already holds for the same inputs.

    Args:
        suite: Offline suite to build and read when the source is the default folder.
        models: A subset of the suite's models, or the Hub models to read (source kind hub), e.g. pythia-70m
            or allenai/OLMo-2-0425-1B.
        source: Where checkpoints come from (default: the offline suite on the store).
        store: Store URL for data, plots and the task cache: a path, file://… or s3://bucket/prefix.
        steps: Checkpoints to capture: all, log, start:stop:stride, every=N, spaced=N or step numbers.
        prompts: The prompt set (sequences, length, your own texts).
        settings: Capture settings.
        fit_settings: Emergence-fit settings.
        evaluations: Downstream evaluations to run; empty skips the evaluate stage.
        eval_steps: Checkpoints to evaluate (a step selector over the captured ones; 20 spread in log step,
            as the correlations across training need 20 or more).
        eval_settings: SAE, ITDA and quantization settings.
        unseen: An architecture to predict emergence for from its shape alone.
        workers: Processes that train the offline suite.
        device: auto, cpu, cuda, cuda:N, or map[:0=20GiB,cpu=64GiB] to spread a model over GPUs, CPU
            and disk.
        runner: Where per-checkpoint tasks run: threads here, or a Dask cluster.
        refresh: Stages to recompute and rewrite, whatever the store holds.
        until: The last stage to run (e.g. capture, to collect data now and analyse later).
    """
    again = set(refresh or ())
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def timed(stage: str, result: dict) -> dict:
        timings[stage] = time.perf_counter() - started - sum(timings.values())
        return result

    out: dict = {}
    if source.kind == "folder" and not source.root:
        out["suite"] = timed("suite", offline_suite(suite=suite, store=store, workers=workers,
                                                    refresh="suite" in again))
        source = SourceParams(kind="folder", root=out["suite"]["root"], prefetch=source.prefetch,
                              **source.downloads())
        models = models or sorted(out["suite"]["models"])
    last = STAGES.index(until)
    evaluating = bool(evaluations) and last >= STAGES.index("evaluate")
    # One pass per checkpoint: captured, and evaluated where eval_steps selects it, while loaded once.
    out["capture"] = timed("capture", capture.with_options(task_runner=task_runner(runner))(
        models=models, steps=steps, store=store, suite=suite, source=source, prompts=prompts, settings=settings,
        device=device, refresh="capture" in again, evaluations=evaluations if evaluating else (),
        eval_steps=eval_steps, eval_settings=eval_settings, eval_refresh="evaluate" in again))
    captured = models or None
    if last >= STAGES.index("fit"):
        out["fit"] = timed("fit", fit(models=captured, store=store, settings=fit_settings, refresh="fit" in again))
    if last >= STAGES.index("regress"):
        out["regress"] = timed("regress", regress(store=store, refresh="regress" in again))
        if out["regress"]["status"] != "not trained":
            out["predict"] = timed("predict", predict(architecture=unseen, store=store))
    if evaluating:  # the evaluations are on the store now: this reports them across checkpoints
        out["evaluate"] = timed("evaluate", evaluate.with_options(task_runner=task_runner(runner))(
            models=captured, steps=eval_steps, store=store, kinds=evaluations, settings=eval_settings,
            device=device, source=source, suite=suite, prompts=prompts))
    target = Store(store)
    out["where"] = {name: target.url_for(name) for name in OUTPUTS if target.exists(name)}  # what this store holds
    out["timings"] = timings
    create_markdown_artifact(_report(out, target), key="pipeline-report")
    return out


def _report(out: dict, target: Store) -> str:
    lines = ["# Pipeline run", "", "| stage | seconds | outcome |", "|---|---|---|"]
    outcome = {
        "suite": lambda r: f"{len(r['models'])} models under `{r['root']}`",
        "capture": lambda r: f"captured {r['captured']}, skipped {r['skipped']}, failed {len(r['failed'])}" + "".join(
            f"; {k} evaluated {s['evaluated']}, skipped {s['skipped']}" for k, s in r.get("evaluations", {}).items()),
        "fit": lambda r: f"mean R² {r['mean_r2']:.3f}; " + ", ".join(
            f"{m} {x['status']}" for m, x in r["results"].items()),
        "regress": lambda r: r.get("reason") or "nested R² (repeated 80/20) " + (", ".join(
            f"{k} {v:.2f}" for k, v in r["nested_r2"].items() if math.isfinite(v)) or "not scored: too few rows")
        + "; best LOMO R² " + ", ".join(f"{k} {v:.2f}" for k, v in r["best_lomo_r2"].items() if math.isfinite(v)),
        "predict": lambda r: f"figure `{target.url_for(r['figure'])}`",
        "evaluate": lambda r: f"reports of {len(r['figures'])} models",
    }
    for stage, seconds in out["timings"].items():
        lines.append(f"| {stage} | {seconds:.1f} | {outcome[stage](out[stage])} |")
    lines += ["", "Outputs:", *[f"- {k}: `{v}`" for k, v in out["where"].items()]]
    return "\n".join(lines)


def _fit_lines(store: Store) -> list[str]:
    """Peak classes, identification and the shapes' AICc wins over every fitted layer of the ratio."""
    fits = [r for r in store.read_dataset("fits").to_pylist() if r["series"] == "ratio"]
    classes = ", ".join(f"{c} {sum(r['peak_class'] == c for r in fits)}" for c in PEAK_CLASSES)
    wins = {shape: sum(r["best_by_aicc"] == shape for r in fits) for shape in SHAPES}
    return [f"Peak classes (ratio, {len(fits)} layers): {classes}; raw parameters identified in "
            f"{sum(r['identified'] for r in fits)}",
            "Best shape by AICc (layers won): " + ", ".join(f"{k} {v}" for k, v in
                                                            sorted(wins.items(), key=lambda kv: -kv[1]))]


def _table3_line(store: Store) -> str:
    """The paper configuration's 80/20 test R² for XGBoost, beside the paper's Table 3."""
    rows = [r for r in store.read_dataset("regression_scores").to_pylist()
            if (r["config"], r["protocol"], r["regressor"]) == ("paper", "random_80_20", "xgboost")]
    return ("Paper configuration, XGBoost test R² (paper's Table 3): "
            + ", ".join(f"{r['target']} {r['r2']:.2f} ({r['paper_r2']:.3f})" for r in rows))


def summary(result: dict, params: dict) -> str:
    store = Store(params["store"])
    lines = [f"Done in {sum(result['timings'].values()):.0f} s "
             f"({', '.join(f'{k} {v:.0f} s' for k, v in result['timings'].items())}). Results on the store:"]
    lines += [f"  {name:22s} {url}" for name, url in result["where"].items()]
    cap = result["capture"]
    lines.append(f"Checkpoints captured {cap['captured']}, skipped (already on the store) {cap['skipped']}, "
                 f"failed {len(cap['failed'])}")
    lines += [line[0].upper() + line[1:] for line in eval_token_lines(cap)]
    if "fit" in result:
        lines.append(f"Mean R² of the emergence fit (ratio, all layers): {result['fit']['mean_r2']:.3f} (paper: 0.984)")
        lines += _fit_lines(store)
    if result.get("regress", {}).get("status") == "not trained":
        lines.append(f"No regressors trained: {result['regress']['reason']}")
    elif "regress" in result:
        lines.append(_table3_line(store))
        lomo = ", ".join(f"{k} {v:.2f}" for k, v in result["regress"]["best_lomo_r2"].items() if math.isfinite(v))
        lines.append(f"Architecture → emergence, best leave-one-model-out R² per target (untrained ones left out): "
                     f"{lomo}")
        lines += [f"Regress: {line}" for line in result["regress"]["skipped_parts"]]
        lines.append(f"Prediction for an unseen architecture: {store.url_for(result['predict']['figure'])}")
    if "evaluate" in result:
        lines.append(f"Evaluation figures (metric vs step, ratio dashed): {store.url_for('plots/evals')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """The command line: ``python -m flows.pipeline`` or ``massive-activations pipeline``."""
    return cli.run(pipeline, summary, argv, description=__doc__.splitlines()[0], prog=prog)


if __name__ == "__main__":
    sys.exit(main())
