"""The one caching and retry policy every task uses.

Cache keys are built from a task's declared inputs (URLs, names, settings and content hashes,
never tensors) plus a hash of the library source the task runs, so changing the fit code re-runs
fits and nothing else. Results are small JSON documents persisted next to the data on the store
(``<store>/cache/prefect/``), so the cache survives a new process or machine using the same store,
and nothing is ever unpickled from shared storage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import Task
from prefect.cache_policies import CachePolicy
from prefect.filesystems import RemoteFileSystem, WritableFileSystem
from prefect.tasks import exponential_backoff
from pydantic import BaseModel

from massive_activations.catalog import CatalogError
from massive_activations.checkpoints import CheckpointNotFoundError, CorruptCheckpointError
from massive_activations.provenance import module_version, stable_hash
from massive_activations.store import Store, StoreError

RESULTS_KEY = "cache/prefect"
# Errors that say the request itself is wrong: retrying cannot help, so these fail fast.
NEVER_RETRY = (ValueError, TypeError, KeyError, CatalogError, CheckpointNotFoundError,
               CorruptCheckpointError, StoreError, MemoryError)
RETRIES = 3
RETRY_DELAYS = exponential_backoff(backoff_factor=2)  # 2 s, 4 s, 8 s …
RETRY_JITTER = 0.5


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Store):
        return value.url
    return value


class StoreInputs(CachePolicy):
    """Key = task name + chosen inputs + version of the library modules the task runs."""

    def __init__(self, inputs: tuple[str, ...], code_modules: tuple[str, ...]):
        self.inputs = inputs
        self.code_modules = code_modules

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any],
                    **kwargs: Any) -> str:
        chosen = {name: _plain(inputs.get(name)) for name in self.inputs}
        code = module_version(*self.code_modules)
        return f"{task_ctx.task.task_key}-{stable_hash({'inputs': chosen, 'code': code})}"


def retry_transient(task: Task, task_run: Any, state: Any) -> bool:
    """Retry anything but errors that say the input is bad or the data is missing or corrupt."""
    try:
        state.result()
    except NEVER_RETRY:
        return False
    except Exception:  # noqa: BLE001 - transient by default: connections, timeouts, 5xx
        return True
    return False


def result_storage(store: Store) -> Path | WritableFileSystem:
    """The store's cache folder; for object storage, a block saved under a name derived from its URL."""
    if store.scheme == "file":
        return Path(store.path(RESULTS_KEY))
    block = RemoteFileSystem(basepath=store.url_for(RESULTS_KEY), settings=store.storage_options)
    block.save(f"ma-results-{stable_hash(store.url)}", overwrite=True)
    return block


def on_store(task: Task, store: Store, refresh: bool = False) -> Task:
    """The task with its results persisted (as JSON) and looked up on this store."""
    return task.with_options(result_storage=result_storage(store), result_serializer="json",
                             persist_result=True, refresh_cache=refresh)


def task_options(inputs: tuple[str, ...], code_modules: tuple[str, ...], retries: int = RETRIES) -> dict:
    """Keyword arguments for ``@task``: the project's cache key and retry policy."""
    return {"cache_policy": StoreInputs(inputs, code_modules), "retries": retries,
            "retry_delay_seconds": RETRY_DELAYS(retries) if retries else 0,
            "retry_jitter_factor": RETRY_JITTER if retries else None, "retry_condition_fn": retry_transient,
            "persist_result": True, "result_serializer": "json"}
