"""Import the paper's released measurements and published fits (the store decides what is current).

Downloads go through the Hub source's one retry layer; a download it gave up on is not retried here."""

from __future__ import annotations

from prefect import get_run_logger, task

from massive_activations.sources.checkpoints import HubSource
from massive_activations.sources.released import import_model, import_published
from massive_activations.store import Store
from tasks.policy import task_options


def _source(hub: dict) -> HubSource:
    return HubSource(cache_dir=hub.get("cache_dir"), endpoint=hub.get("endpoint"),
                     retries=hub.get("retries", 5), timeout_s=hub.get("timeout_s", 30.0))


@task(name="released-import", task_run_name="released-{model}", **task_options(retries=0))
def import_released_model(store: str, hub: dict, repo: str, revision: str, model: str, files: dict[int, str],
                          params: dict[str, str], force: bool = False) -> dict:
    """A model's stats files and published fits; what could not be read is listed, not raised."""
    source = _source(hub)
    result = import_model(Store(store), source, repo, revision, model, {int(k): v for k, v in files.items()}, force)
    published = import_published(Store(store), source, repo, revision, model, params)
    result["published_series"], result["bad"] = published["series"], result["bad"] + published["bad"]
    get_run_logger().info("%s: %d imported, %d already on the store, %d bad files", model, len(result["imported"]),
                          len(result["skipped"]), len(result["bad"]))
    return result


@task(name="released-list", **task_options(retries=0, persist=False))
def list_released(hub: dict, repo: str, revision: str) -> list[str]:
    return _source(hub).dataset_files(repo, revision)
