"""Build the offline suite: train whichever of its models the store does not already hold."""

from __future__ import annotations

from prefect import get_run_logger, task

from massive_activations.sources.offline_suite import build_suite, built_models, get_suite
from massive_activations.store import Store
from tasks.policy import task_options
from tasks.progress import Progress


@task(name="build-offline-suite", **task_options(retries=1))
def build_offline_suite(suite: str, store: str, workers: int = 2, force: bool = False) -> dict:
    """Returns {model: manifest summary}; models already complete on the store (their manifest's spec
    hash matching) are not retrained unless ``force``."""
    logger = get_run_logger()
    spec, target = get_suite(suite), Store(store)
    before = set() if force else set(built_models(spec, target))
    logger.info("suite %s: %d of %d models already built; training the rest with %d workers",
                suite, len(before), len(spec.models), workers)
    todo = [m.name for m in spec.models if m.name not in before]
    on_progress = None
    if todo:  # a progress bar and log lines only when there is training to follow
        progress = Progress(spec.total_steps * len(todo), "training steps", "suite-progress", logger, every=0)
        latest: dict[str, int] = {}

        def on_progress(info: dict) -> None:
            """Every ~10% of a model's steps: a log line (a first `make run` is never silent for long)."""
            latest[info["model"]] = info["step"]
            progress.update(sum(latest.values()), f"{info['model']} step {info['step']} of {info['total_steps']}, "
                            f"loss {info['loss']:.2f}, largest ratio {info['ratio']:.1f}, "
                            f"ETA {info['eta_s'] / 60:.1f} min for this model")

    manifests = build_suite(spec, target, workers=workers, force=force, on_progress=on_progress)
    for name, manifest in manifests.items():
        logger.info("%s: %s (%d checkpoints, %.0f s)", name, "reused" if name in before else "trained",
                    len(manifest["steps"]), manifest["train_seconds"])
    return {name: {"steps": m["steps"], "spec_hash": m["spec_hash"], "train_seconds": m["train_seconds"]}
            for name, m in manifests.items()}
