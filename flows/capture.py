"""Capture flow: per-layer statistics for models × checkpoints onto the store."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.futures import wait

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
    lines = [f"| {k} | {v if not isinstance(v, list) else len(v)} |" for k, v in summary.items() if k != "figure"]
    create_markdown_artifact("# Capture summary\n\n| outcome | checkpoints |\n|---|---|\n" + "\n".join(lines)
                             + f"\n\nStore: `{target.url}`", key="capture-summary")
    logger.info("capture summary: %s",
                {k: v if not isinstance(v, list) else len(v) for k, v in summary.items() if k != "figure"})
    if summary["failed"]:
        raise RuntimeError(f"{len(summary['failed'])} of {total} checkpoints failed: {summary['failed'][:3]}")
    return summary


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Capture per-layer massive-activation statistics.")
    parser.add_argument("--models", default=None, help="comma-separated, e.g. pythia-70m,pythia-160m "
                                                       "(default: every model of the folder source)")
    parser.add_argument("--steps", default="all", help="all, log, a:b:c, every=N, or 0,1000,…")
    parser.add_argument("--store", default=DEFAULT_STORE, help="a path, file://… or s3://bucket/prefix")
    parser.add_argument("--suite", default="default", help="offline suite whose folder is the default source")
    parser.add_argument("--source", choices=["folder", "hub"], default="folder")
    parser.add_argument("--root", default=None, help="folder source root (default: <store>/suites/<suite>)")
    parser.add_argument("--endpoint", default=None, help="Hub endpoint (default: HF_ENDPOINT or huggingface.co)")
    parser.add_argument("--cache-dir", default=None, help="where downloaded checkpoints are kept")
    parser.add_argument("--n-sequences", type=int, default=10)
    parser.add_argument("--length", type=int, default=None, help="tokens per sequence (default: context, ≤2048)")
    parser.add_argument("--text-file", default=None, help="your own texts (.txt, .jsonl, .parquet)")
    parser.add_argument("--hub-dataset", default=None, help="e.g. togethercomputer/RedPajama-Data-1T-Sample")
    parser.add_argument("--hub-file", default=None, help="the file of that dataset to read")
    parser.add_argument("--samples", type=int, default=256, help="activation vectors kept per layer (0: none)")
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--refresh", action="store_true")
    args = parser.parse_args(argv)
    summary = capture(
        models=args.models.split(",") if args.models else None, steps=args.steps, store=args.store,
        suite=args.suite,
        source=SourceParams(kind=args.source, root=args.root, endpoint=args.endpoint, cache_dir=args.cache_dir),
        prompts=PromptParams(n_sequences=args.n_sequences, length=args.length, text_file=args.text_file,
                             hub_dataset=args.hub_dataset, hub_file=args.hub_file),
        settings=CaptureParams(samples_per_layer=args.samples, batch_size=args.batch_size),
        device=args.device, dtype=args.dtype, refresh=args.refresh)
    print(f"captured {summary['captured']}, skipped {summary['skipped']}, "
          f"failed {len(summary['failed'])}; data under {Store(args.store).url}")


if __name__ == "__main__":
    main()
