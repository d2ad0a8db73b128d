"""Offline suite flow: train the small GPT-NeoX family once; later runs reuse it from the store."""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.params import DEFAULT_STORE
from massive_activations.offline_suite import get_suite, suite_prefix
from massive_activations.store import Store
from tasks.policy import on_store
from tasks.suite import build_offline_suite


@flow(name="offline-suite", log_prints=True)
def offline_suite(suite: str = "default", store: str = DEFAULT_STORE, workers: int = 2,
                  refresh: bool = False) -> dict:
    """Returns {model: {steps, spec_hash, train_seconds}} and the folder-source root it wrote."""
    get_suite(suite)  # unknown names fail here, before anything runs
    target = Store(store)
    target.check_reachable()
    models = on_store(build_offline_suite, target)(suite, target.url, workers, force=refresh)
    root = target.url_for(suite_prefix(suite))
    get_run_logger().info("offline suite %r: %d models under %s", suite, len(models), root)
    return {"root": root, "models": models}
