"""Capture flow: per-layer statistics for models × checkpoints onto the store."""

from __future__ import annotations

import sys

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from flows import cli
from flows.artifacts import figures_markdown
from flows.checkpoint_pass import Job, run_pass, tally
from flows.params import DEFAULT_STORE, CaptureParams, EvalParams, Kind, PromptParams, SourceParams
from flows.tokens import prepare_tokens, prompt_texts
from massive_activations.capture.prompts import EVAL_BUDGETS
from massive_activations.errors import BadInputError
from massive_activations.sources.catalog import select_steps
from massive_activations.sources.checkpoints import make_source, resolve_device, resolve_dtype
from massive_activations.sources.families import model_key
from massive_activations.sources.offline_suite import SUITES, built_models, get_suite, suite_prefix
from massive_activations.store import Store
from tasks.capture import plot_ratios
from tasks.progress import Progress


def resolve_source(source: SourceParams, store: Store, suite: str) -> dict:
    """The source's values; the default folder is the offline suite on the store, which must be built."""
    values = source.checkout()
    if source.kind == "folder" and not source.root:
        if not built_models(get_suite(suite), store):
            raise BadInputError(f"offline suite {suite!r} is not built on {store.url}: build it with `python -m "
                                f"flows.offline_suite --suite {suite} --store {store.url}` (the pipeline builds it "
                                f"too); suites: {', '.join(SUITES)}")
        values["root"] = store.url_for(suite_prefix(suite))
    return values


@flow(name="capture", log_prints=True)
def capture(models: list[str] | None = None, steps: str = "all", store: str = DEFAULT_STORE,
            suite: str = "default", source: SourceParams = SourceParams(),
            prompts: PromptParams = PromptParams(), settings: CaptureParams = CaptureParams(),
            device: str = "auto", dtype: str = "float32", refresh: bool = False,
            evaluations: tuple[Kind, ...] = (), eval_steps: str = "spaced=20",
            eval_settings: EvalParams = EvalParams(), eval_refresh: bool = False) -> dict:
    """Capture every (model, step), and evaluate some while each is loaded; skip what the store
    already holds with the same inputs.

    Args:
        models: Models to capture: a Pythia name (pythia-70m) or a Hub repository (allenai/OLMo-2-0425-1B,
            stored as allenai--OLMo-2-0425-1B); default: every model of the folder source.
        steps: Checkpoints: all, log, start:stop:stride, every=N, spaced=N or step numbers, comma-separated.
        store: Store URL: a path, file://… or s3://bucket/prefix.
        suite: Offline suite whose folder is the default source.
        source: Where checkpoints come from, the download cache and how far to download ahead.
        prompts: The prompt set.
        settings: What to measure and sample.
        device: auto, cpu, cuda, cuda:N, or map[:0=20GiB,cpu=64GiB] to spread a model over GPUs, CPU
            and disk.
        dtype: float32, float16 or bfloat16 (evaluations done in the same pass use it too).
        refresh: Recapture and rewrite every selected checkpoint, whatever the store holds.
        evaluations: Evaluations to run on the checkpoint while it is loaded for capture (sae, itda,
            quant); their report across checkpoints is the evaluate flow's.
        eval_steps: Checkpoints to evaluate, a step selector over the captured ones (20 spread in log step:
            the correlations across training need 20 or more).
        eval_settings: SAE, ITDA and quantization settings.
        eval_refresh: Re-evaluate and rewrite, whatever the store holds.
    """
    logger = get_run_logger()
    target = Store(store)
    target.check_reachable()
    resolve_device(device)  # before any download or load
    resolve_dtype(dtype)
    kinds = tuple(dict.fromkeys(evaluations))
    eval_values = eval_settings.to_settings() if kinds else None
    source_values = resolve_source(source, target, suite)
    src = make_source(**source_values)
    if models is None:
        if source.kind != "folder":
            raise BadInputError("name the models to capture (e.g. ['pythia-70m']) when reading from the Hub")
        models = src.models()
    if not models:
        raise BadInputError(f"no models to capture under {source_values.get('root')}")
    if source.kind == "hub":  # org/name -> org--name, the store's model name (catalogued Pythia names stay)
        models = list(dict.fromkeys(model_key(m) for m in models))
    plan = {m: select_steps(steps, src.steps(m)) for m in models}  # validates before any heavy work
    evaluated = {m: set(select_steps(eval_steps, s)) if kinds else set() for m, s in plan.items()}
    texts = prompt_texts(prompts, suite, source.kind)
    jobs, budgets = [], {}
    for model, model_steps in plan.items():
        prompt_set, eval_tokens, budget = prepare_tokens(target, src, model, model_steps[0], prompts, texts,
                                                         folder_source=source.kind == "folder",
                                                         evals=eval_settings if kinds else None)
        logger.info("%s: %d checkpoints with prompt set %s%s", model, len(model_steps), prompt_set,
                    f"; {len(evaluated[model])} also evaluated ({', '.join(kinds)})" if kinds else "")
        if budget:
            budgets[model] = {k: budget[k] for k in ("train_tokens", "heldout_tokens")}
            logger.info("%s: evaluation tokens %d training, %d held-out%s", model, budget["train_tokens"],
                        budget["heldout_tokens"], " (the default, cut to what the texts hold)"
                        if None in budget["asked"] and budget["train_tokens"] < EVAL_BUDGETS[0] else "")
        for step in model_steps:
            job_kinds = kinds if step in evaluated[model] else ()
            jobs.append(Job(model, step, source_values,
                            {"prompt_set": prompt_set, "settings": settings.model_dump(), "force": refresh},
                            {"kinds": list(job_kinds), "prompt_set": prompt_set, "eval_tokens": eval_tokens,
                             "settings": eval_values, "force": eval_refresh} if job_kinds else None))
    progress = Progress(len(jobs), "checkpoints done", "capture-progress", logger)
    results = run_pass(target, jobs, device, dtype, source.prefetch, progress)
    summary: dict = tally(results, "capture", ("captured", "skipped"))
    if kinds:
        summary["evaluations"] = {kind: tally(results, kind, ("evaluated", "skipped")) for kind in kinds}
        summary["eval_tokens"] = budgets
    if summary["captured"] + summary["skipped"]:
        summary["figure"] = plot_ratios(target.url, list(plan))
    counted = {k: v if not isinstance(v, list) else len(v) for k, v in summary.items()
               if k not in ("figure", "evaluations", "eval_tokens")}
    figure = (figures_markdown([("Ratio of top-1 |h| to median |h| per layer vs step",
                                 target.read_bytes(summary["figure"]), target.url_for(summary["figure"]))])
              if "figure" in summary else "")
    evals = "".join(f"\n| {kind} evaluations | {s['evaluated']} done, {s['skipped']} skipped, "
                    f"{len(s['failed'])} failed |" for kind, s in summary.get("evaluations", {}).items())
    create_markdown_artifact("# Capture summary\n\n| outcome | checkpoints |\n|---|---|\n"
                             + "\n".join(f"| {k} | {v} |" for k, v in counted.items()) + evals
                             + f"\n\nStore: `{target.url}`\n\n{figure}", key="capture-summary")
    logger.info("capture summary: %s", ", ".join(f"{k} {v}" for k, v in counted.items()))
    problems = []
    if summary["failed"]:
        problems.append(f"{len(summary['failed'])} of {len(jobs)} checkpoints failed: {summary['failed'][:3]}")
    failed_evals = [m for s in summary.get("evaluations", {}).values() for m in s["failed"]]
    if failed_evals:
        problems.append(f"{len(failed_evals)} evaluations failed: {failed_evals[:3]}")
    if problems:
        raise RuntimeError("; ".join(problems))
    return summary


def eval_token_lines(capture_result: dict) -> list[str]:
    """The evaluation budgets each model got, for a summary."""
    return [f"evaluation tokens of {model}: {b['train_tokens']} training, {b['heldout_tokens']} held-out"
            for model, b in capture_result.get("eval_tokens", {}).items()]


def summary(result: dict, params: dict) -> str:
    store = Store(params["store"])
    lines = [f"captured {result['captured']}, skipped (already on the store) {result['skipped']}, "
             f"failed {len(result['failed'])}", f"data: {store.url_for('ratios')}"]
    for kind, s in result.get("evaluations", {}).items():
        lines.append(f"{kind}: evaluated {s['evaluated']}, skipped {s['skipped']}, failed {len(s['failed'])}")
    lines += eval_token_lines(result)
    if "figure" in result:
        lines.append(f"figure: {store.url_for(result['figure'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """The command line: ``python -m flows.capture`` or ``massive-activations capture``."""
    return cli.run(capture, summary, argv, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
