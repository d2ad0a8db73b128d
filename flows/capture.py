"""Capture flow: per-layer statistics for models × checkpoints onto the store."""

from __future__ import annotations

import sys

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.futures import wait

from flows import cli
from flows.artifacts import figures_markdown
from flows.params import DEFAULT_STORE, CaptureParams, PromptParams, SourceParams
from massive_activations.catalog import select_steps
from massive_activations.checkpoints import make_source
from massive_activations.corpus import stdlib_docstrings
from massive_activations.offline_suite import SUITES, split_documents, suite_prefix
from massive_activations.prompts import build_prompt_set, save_prompt_set, texts_from_file, texts_from_hub_dataset
from massive_activations.store import Store
from tasks.capture import capture_checkpoint, plot_ratios
from tasks.policy import on_store, tally
from tasks.progress import Progress


def resolve_source(source: SourceParams, store: Store, suite: str) -> dict:
    values = source.model_dump()
    if source.kind == "folder" and not source.root:
        values["root"] = store.url_for(suite_prefix(suite))
    return values


def prompt_texts(prompts: PromptParams, suite: str, source_kind: str) -> list[str]:
    if prompts.text_file:
        return texts_from_file(prompts.text_file)
    if prompts.hub_dataset:
        if not prompts.hub_file:
            raise ValueError("hub_dataset needs hub_file: the dataset file to read texts from")
        return texts_from_hub_dataset(prompts.hub_dataset, prompts.hub_file)
    if source_kind == "folder" and suite in SUITES:
        spec = SUITES[suite]  # held-out documents of the suite's own corpus
        return split_documents(stdlib_docstrings(spec.corpus_chars), spec.heldout_fraction, spec.seed)[1]
    return list(stdlib_docstrings().documents)


def prepare_prompts(store: Store, source, model: str, first_step: int, prompts: PromptParams,
                    texts: list[str]) -> str:
    """The model's prompt set, built with its tokenizer and stored under its content hash."""
    from transformers import AutoConfig, AutoTokenizer

    path = source.fetch(model, first_step)
    context = AutoConfig.from_pretrained(path).max_position_embeddings
    length = prompts.length or min(context, 2048)
    if length > context:
        raise ValueError(f"prompt length {length} exceeds {model}'s context of {context} tokens")
    built = build_prompt_set(f"{model}-n{prompts.n_sequences}-len{length}", texts,
                             AutoTokenizer.from_pretrained(path), prompts.n_sequences, length, prompts.seed)
    return save_prompt_set(store, built)


@flow(name="capture", log_prints=True)
def capture(models: list[str] | None = None, steps: str = "all", store: str = DEFAULT_STORE,
            suite: str = "default", source: SourceParams = SourceParams(),
            prompts: PromptParams = PromptParams(), settings: CaptureParams = CaptureParams(),
            device: str = "auto", dtype: str = "float32", refresh: bool = False) -> dict:
    """Capture every (model, step); skip what the store already holds with the same inputs.

    Args:
        models: Models to capture, e.g. pythia-70m (default: every model of the folder source).
        steps: Checkpoints: all, log, start:stop:stride, every=N or step numbers, comma-separated.
        store: Store URL: a path, file://… or s3://bucket/prefix.
        suite: Offline suite whose folder is the default source.
        source: Where checkpoints come from.
        prompts: The prompt set.
        settings: What to measure and sample.
        device: auto, cpu, cuda or cuda:N.
        dtype: float32, float16 or bfloat16.
        refresh: Recapture and rewrite every selected checkpoint, whatever the store holds.
    """
    logger = get_run_logger()
    target = Store(store)
    target.check_reachable()
    source_values = resolve_source(source, target, suite)
    src = make_source(**source_values)
    if models is None:
        if source.kind != "folder":
            raise ValueError("name the models to capture (e.g. ['pythia-70m']) when reading from the Hub")
        models = src.models()
    if not models:
        raise ValueError(f"no models to capture under {source_values.get('root')}")
    plan = {m: select_steps(steps, src.steps(m)) for m in models}  # validates before any heavy work
    texts = prompt_texts(prompts, suite, source.kind)
    task = on_store(capture_checkpoint, target)
    futures, total, done = [], sum(map(len, plan.values())), 0
    progress = Progress(total, "checkpoints captured", "capture-progress", logger)
    for model, model_steps in plan.items():
        prompt_set = prepare_prompts(target, src, model, model_steps[0], prompts, texts)
        logger.info("%s: %d checkpoints with prompt set %s", model, len(model_steps), prompt_set)
        for step in model_steps:
            futures.append(task.submit(target.url, source_values, model, step, prompt_set,
                                       settings.model_dump(), device, dtype, force=refresh))
        for future in futures[done:]:
            future.wait()  # one model in memory at a time: finish this model before loading the next
            done += 1
            progress.update(done)
    wait(futures)
    counts, failed, _ = tally(futures, ("captured", "skipped"))
    summary = {**counts, "failed": failed}
    if summary["captured"] + summary["skipped"]:
        summary["figure"] = plot_ratios(target.url, list(plan))
    counted = {k: v if not isinstance(v, list) else len(v) for k, v in summary.items() if k != "figure"}
    figure = (figures_markdown([("ratio vs step", target.read_bytes(summary["figure"]),
                                 target.url_for(summary["figure"]))]) if "figure" in summary else "")
    create_markdown_artifact("# Capture summary\n\n| outcome | checkpoints |\n|---|---|\n"
                             + "\n".join(f"| {k} | {v} |" for k, v in counted.items())
                             + f"\n\nStore: `{target.url}`\n\n{figure}", key="capture-summary")
    logger.info("capture summary: %s", ", ".join(f"{k} {v}" for k, v in counted.items()))
    if summary["failed"]:
        raise RuntimeError(f"{len(summary['failed'])} of {total} checkpoints failed: {summary['failed'][:3]}")
    return summary


def summary(result: dict, params: dict) -> str:
    store = Store(params["store"])
    lines = [f"captured {result['captured']}, skipped (already on the store) {result['skipped']}, "
             f"failed {len(result['failed'])}", f"data: {store.url_for('ratios')}"]
    if "figure" in result:
        lines.append(f"figure: {store.url_for(result['figure'])}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(cli.run(capture, summary))
