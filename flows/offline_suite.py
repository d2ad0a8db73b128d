"""Offline suite flow: train the small GPT-NeoX family once; later runs reuse it from the store."""

from __future__ import annotations

import sys
from typing import Literal

from prefect import flow, get_run_logger

from flows import cli
from flows.params import DEFAULT_STORE
from massive_activations.sources.offline_suite import get_suite, suite_prefix
from massive_activations.store import Store
from tasks.policy import on_store
from tasks.suite import build_offline_suite


@flow(name="offline-suite", log_prints=True)
def offline_suite(suite: Literal["default", "micro"] = "default", store: str = DEFAULT_STORE, workers: int = 2,
                  refresh: bool = False) -> dict:
    """Train the offline suite's models (each checkpoint in the Hugging Face layout) or reuse them from the store.

    Returns the folder-source root it wrote and {model: {steps, spec_hash, train_seconds}}.

    Args:
        suite: The suite: default (6 models, what make run trains) or micro (2 tiny models, for tests).
        store: Store URL to write the suite under: a path, file://… or s3://bucket/prefix.
        workers: Processes training models at once.
        refresh: Retrain and rewrite, whatever the store holds.
    """
    get_suite(suite)  # unknown names fail here, before anything runs
    target = Store(store)
    target.check_reachable()
    models = on_store(build_offline_suite, target)(suite, target.url, workers, force=refresh)
    root = target.url_for(suite_prefix(suite))
    get_run_logger().info("offline suite %r: %d models under %s", suite, len(models), root)
    return {"root": root, "models": models}


def summary(result: dict, params: dict) -> str:
    rows = [{"model": m, "checkpoints": len(v["steps"]), "train seconds": v.get("train_seconds")}
            for m, v in sorted(result["models"].items())]
    return cli.table(rows) + f"\ncheckpoints: {result['root']}"


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """The command line: ``python -m flows.offline_suite`` or ``massive-activations offline-suite``."""
    return cli.run(offline_suite, summary, argv, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
