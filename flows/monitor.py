"""Monitor flow: watch a training run's checkpoint folder, capture new checkpoints, refit, re-forecast.

Point ``checkpoints`` at the folder (local or s3://) where a run writes ``step<N>/`` folders in the
Hugging Face layout (config.json, weights, tokenizer). Scheduled hourly by the ``monitor`` deployment.
"""

from __future__ import annotations

import sys

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows import cli
from flows.artifacts import figures_markdown
from flows.capture import capture
from flows.fit import fit
from flows.params import DEFAULT_STORE, CaptureParams, PromptParams, SourceParams
from massive_activations.errors import BadInputError
from massive_activations.fit.emergence import MIN_POINTS
from massive_activations.sources.checkpoints import make_source
from massive_activations.store import Store
from tasks.monitor import forecast_task


def split_run_url(checkpoints: str) -> tuple[str, str]:
    """(folder-source root, run name) of the folder that holds the ``step<N>/`` folders."""
    trimmed = checkpoints.rstrip("/")
    parent, _, name = trimmed.rpartition("/")
    if not name or not parent:
        raise BadInputError(f"checkpoints {checkpoints!r} must be a folder path like /runs/my-run or s3://bucket/my-run")
    return parent, name


@flow(name="monitor", log_prints=True)
def monitor(checkpoints: str, store: str = DEFAULT_STORE, prompts: PromptParams = PromptParams(),
            settings: CaptureParams = CaptureParams(samples_per_layer=0), device: str = "auto") -> dict:
    """Capture only checkpoints not yet on the store, refit the run, record this forecast.

    Args:
        checkpoints: The folder your run writes step{N}/ checkpoints into (a path or s3://bucket/prefix/run).
        store: Store URL: a path, file://… or s3://bucket/prefix.
        prompts: The prompt set.
        settings: Capture settings (no activation samples by default).
        device: auto, cpu, cuda, cuda:N, or map[:0=20GiB,cpu=64GiB] to spread a model over GPUs, CPU
            and disk.
    """
    logger = get_run_logger()
    root, model = split_run_url(checkpoints)
    source = make_source("folder", root=root)
    steps = source.steps(model)  # a folder with no step<N>/ checkpoints fails here
    captured = capture(models=[model], steps="all", store=store, suite=model,
                       source=SourceParams(kind="folder", root=root), prompts=prompts, settings=settings,
                       device=device)
    logger.info("%s: %d checkpoints, %d new", model, len(steps), captured["captured"])
    if len(steps) < MIN_POINTS:
        logger.info("%s: waiting for %d checkpoints before fitting (have %d)", model, MIN_POINTS, len(steps))
        return {"model": model, "status": "waiting", "checkpoints": len(steps), "capture": captured}
    fit(models=[model], series=("ratio",), store=store)
    config = source.fetch(model, steps[-1]) / "config.json"
    result = forecast_task(Store(store).url, model, steps[-1], str(config))
    create_table_artifact(result["rows"], key="monitor-forecast",
                          description=f"{model} after step {steps[-1]}: fitted K, t_peak and the architecture prior")
    target = Store(store)
    create_markdown_artifact(f"# {model}: forecast after step {steps[-1]} ({len(steps)} checkpoints)\n\n"
                             + figures_markdown([("history", target.read_bytes(result["figure"]),
                                                  target.url_for(result["figure"]))]),
                             key="monitor-summary")
    return {"model": model, "status": "forecast", "checkpoints": len(steps), "latest_step": steps[-1],
            "capture": captured, "forecast": result["rows"], "figure": result["figure"]}


def summary(result: dict, params: dict) -> str:
    head = (f"{result['model']}: {result['checkpoints']} checkpoints, {result['capture']['captured']} new "
            f"(skipped {result['capture']['skipped']})")
    if result["status"] == "waiting":
        return head + f"; waiting for {MIN_POINTS} checkpoints before the first forecast"
    columns = ["layer", "last_ratio", "K", "se_K", "t_peak", "peak_class", "identified", "predicted_K"]
    lines = [head + f"; forecast after step {result['latest_step']}:", cli.table(result["forecast"], columns)]
    unidentified = [r["layer"] for r in result["forecast"] if not r["identified"]]
    if unidentified:
        lines.append(f"warning: the fit does not identify K and t_peak in layers {unidentified} (the run has not "
                     "shown enough of the curve yet); read them as extrapolations, not estimates")
    lines.append(f"figure: {Store(params['store']).url_for(result['figure'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """The command line: ``python -m flows.monitor`` or ``massive-activations monitor``."""
    return cli.run(monitor, summary, argv, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
