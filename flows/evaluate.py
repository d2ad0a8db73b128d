"""Evaluate flow: SAEs, ITDA and quantization across checkpoints, joined with the massive-activation ratio."""

from __future__ import annotations

import math
import sys

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from flows import cli
from flows.artifacts import figures_markdown
from flows.checkpoint_pass import Job, run_pass, tally
from flows.params import DEFAULT_STORE, EvalParams, Kind, PromptParams, SourceParams
from flows.tokens import prepare_tokens, prompt_texts
from massive_activations.capture.capture_run import STATS
from massive_activations.capture.prompts import DATASET as PROMPTS
from massive_activations.errors import BadInputError
from massive_activations.sources.catalog import select_steps
from massive_activations.sources.checkpoints import make_source, resolve_device, resolve_dtype
from massive_activations.sources.families import model_key
from massive_activations.store import Store
from tasks.evaluate import cross_model_report, evaluation_report, itda_similarity
from tasks.policy import on_store
from tasks.progress import Progress


def plan_evaluations(target: Store, models: list[str] | None, steps: str) -> dict[str, list[int]]:
    """The captured (model, steps) to evaluate; validated before any work."""
    captured: dict[str, list[int]] = {}
    for p in target.partitions(STATS):
        captured.setdefault(p["model"], []).append(p["step"])
    models = [model_key(m) if "/" in m else m for m in models or sorted(captured)]  # org/name: as stored
    missing = [m for m in models if m not in captured]
    if missing or not models:
        raise BadInputError(f"nothing captured on {target.url} for {missing or models}; captured: {sorted(captured)}")
    return {m: select_steps(steps, sorted(captured[m])) for m in models}


def captured_prompts(store: Store, prompt_set: str) -> PromptParams:
    """The settings a stored prompt set was built with (its texts are not recorded: the default ones)."""
    built = (store.partition_metadata(PROMPTS, {"set": prompt_set}) or {}).get("inputs", {}).get("source", {})
    return PromptParams(n_sequences=built.get("n_sequences", 10), length=built.get("length"),
                        seed=built.get("seed", 0), first_token=built.get("position0", "auto"))


@flow(name="evaluate", log_prints=True)
def evaluate(models: list[str] | None = None, steps: str = "spaced=20", store: str = DEFAULT_STORE,
             kinds: tuple[Kind, ...] = ("sae", "itda", "quant"), settings: EvalParams = EvalParams(),
             device: str = "auto", dtype: str = "float32", source: SourceParams = SourceParams(),
             suite: str = "default", prompts: PromptParams | None = None, refresh: bool = False) -> dict:
    """Evaluate every captured (model, step) in the selection, every kind while the checkpoint is
    loaded once; skip what the store holds with the same inputs; then report across checkpoints.

    Args:
        models: Captured models to evaluate (default: all).
        steps: Checkpoints to evaluate, a step selector over the captured ones (20 spread in log step: the
            correlations across training need 20 or more).
        store: Store URL: a path, file://… or s3://bucket/prefix.
        kinds: Evaluations: sae, itda, quant.
        settings: SAE, ITDA and quantization settings.
        device: auto, cpu, cuda, cuda:N, or map[:0=20GiB,cpu=64GiB] to spread a model over GPUs, CPU
            and disk.
        dtype: float32, float16 or bfloat16: the dtype the checkpoint is evaluated in.
        source: Download settings (cache location and cap, retries, prefetch); where each checkpoint
            comes from is what its capture recorded.
        suite: The offline suite the capture read (its held-out documents are the default texts).
        prompts: The capture's prompt settings: the evaluation tokens continue its texts after the
            prompts' documents, and a prompt set other than the captured one is refused. Empty: the
            captured set's own sequences, length, seed and first token, over the default texts.
        refresh: Re-evaluate and rewrite every selected checkpoint, whatever the store holds.
    """
    logger = get_run_logger()
    kinds = tuple(dict.fromkeys(kinds))
    if not kinds:
        raise BadInputError("choose at least one evaluation: sae, itda, quant")
    resolve_device(device)  # before any download or load
    resolve_dtype(dtype)
    values = settings.to_settings()
    target = Store(store)
    target.check_reachable()
    plan = plan_evaluations(target, models, steps)
    jobs = []
    for model, model_steps in plan.items():
        captured = {step: (target.partition_metadata(STATS, {"model": model, "step": step}) or {})["inputs"]
                    for step in model_steps}
        first = captured[model_steps[0]]
        mixed = sorted({c["prompt_set"] for c in captured.values()})
        if len(mixed) > 1:
            raise BadInputError(f"{model}: the selected checkpoints were captured with different prompt sets {mixed}; "
                             "recapture them with one")
        checkout = {**first["source"], **source.downloads()}
        kind = first["source"]["kind"]
        used = prompts or captured_prompts(target, mixed[0])
        prompt_set, eval_tokens, _ = prepare_tokens(target, make_source(**checkout), model, model_steps[0], used,
                                                 prompt_texts(used, suite, kind), folder_source=kind == "folder",
                                                 evals=settings)
        if prompt_set != mixed[0]:
            raise BadInputError(f"{model} was captured with prompt set {mixed[0]}; these prompt settings give "
                             f"{prompt_set}: pass the capture's prompts (and suite) so the evaluation tokens share "
                             "no document with its prompts")
        for step in model_steps:
            jobs.append(Job(model, step, {**captured[step]["source"], **source.downloads()}, None,
                            {"kinds": list(kinds), "prompt_set": prompt_set, "eval_tokens": eval_tokens,
                             "settings": values, "force": refresh}))
    progress = Progress(len(jobs), "checkpoints evaluated", "evaluate-progress", logger)
    results = run_pass(target, jobs, device, dtype, source.prefetch, progress)
    summary = {kind: tally(results, kind, ("evaluated", "skipped")) for kind in kinds}
    hashes: dict[tuple[str, str], list[str]] = {}
    for result in results:
        for kind, outcome in result["evaluations"].items():
            if outcome["status"] != "failed":
                hashes.setdefault((result["model"], kind), []).append(outcome["hash"])
    reports = {}
    for model in plan:
        if ("itda" in kinds) and hashes.get((model, "itda")):
            on_store(itda_similarity, target)(target.url, model, hashes[(model, "itda")], force=refresh)
        done_kinds = [k for k in kinds if hashes.get((model, k))]
        if done_kinds:
            all_hashes = [h for k in done_kinds for h in hashes[(model, k)]]
            reports[model] = on_store(evaluation_report, target)(target.url, model, done_kinds, all_hashes,
                                                                 force=refresh)
    if len(reports) >= 2:  # the same step across models: does a higher ratio go with a worse metric?
        on_store(cross_model_report, target)(target.url, sorted(reports),
                                             [h for m in reports for k in kinds for h in hashes.get((m, k), [])],
                                             force=refresh)
    _artifacts(target, summary, reports)
    failed = [m for s in summary.values() for m in s["failed"]]
    logger.info("evaluate summary: %s", {k: {o: v if not isinstance(v, list) else len(v) for o, v in s.items()}
                                          for k, s in summary.items()})
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(jobs) * len(kinds)} evaluations failed: {failed[:3]}")
    return {"summary": summary, "figures": {m: r["figures"] for m, r in reports.items()},
            "where": target.url_for("evals")}


def _artifacts(target: Store, summary: dict, reports: dict) -> None:
    strongest = []
    for model, report in reports.items():
        for row in report["correlations"]:
            if not math.isnan(row["spearman_rho"]):
                strongest.append({"model": model, **{k: row[k] for k in (
                    "layer", "kind", "variant", "metric", "spearman_rho", "rho_step", "partial_rho",
                    "partial_rho_low", "partial_rho_high", "partial_rho_p", "partial_rho_q", "n_checkpoints",
                    "reason")}})
    strongest.sort(key=lambda r: -abs(r["partial_rho"]) if not math.isnan(r["partial_rho"]) else 0.0)
    create_table_artifact(strongest, key="evaluate-correlations",
                          description="Across checkpoints: Spearman ρ of each metric with the massive-activation "
                                      "ratio, with the step, and the partial ρ beyond a smooth trend in log step "
                                      "(95% interval, p-value and FDR q-value over layers; NaN with a reason below "
                                      "20 checkpoints); strongest partial ρ first")
    lines = ["| evaluation | evaluated | skipped | failed |", "|---|---|---|---|"]
    lines += [f"| {k} | {s['evaluated']} | {s['skipped']} | {len(s['failed'])} |"
              for k, s in summary.items()]
    images = figures_markdown([(f"{model} — {kind}", target.read_bytes(key), target.url_for(key))
                               for model, report in reports.items() for kind, key in report["figures"].items()])
    create_markdown_artifact("# Evaluations across training\n\n" + "\n".join(lines)
                             + f"\n\nData: `{target.url_for('evals')}`\n\n" + images,
                             key="evaluate-summary")


def summary(result: dict, params: dict) -> str:
    rows = [{"evaluation": kind, "computed": s["evaluated"], "skipped": s["skipped"], "failed": len(s["failed"])}
            for kind, s in result["summary"].items()]
    store = Store(params["store"])
    return "\n".join([cli.table(rows), f"data: {result['where']}", f"figures: {store.url_for('plots/evals')}"])


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """The command line: ``python -m flows.evaluate`` or ``massive-activations evaluate``."""
    return cli.run(evaluate, summary, argv, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
