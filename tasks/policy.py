"""The one skip, retry and persistence policy every task uses.

Skip or compute: the store decides. Every stage's library function asks ``Store.current`` whether
its partition was computed from the same inputs (content hashes of the data it reads, settings) by
the same code version, and returns "skipped" if so; ``force`` (a flow's ``refresh``) recomputes and
rewrites anyway. Prefect's task cache takes no part in that decision (no cache policy; a result is
stored under its task run's own id): one cache, the store's provenance, which travels with the data
to any process, machine or orchestrator.

Prefect owns retries (transient errors only; bad input and missing or corrupt data fail fast), except
for Hub downloads: those are retried in one layer, the source (``HubSource``, with a documented worst
case), so a download the source gave up on is not retried here again. Prefect
persists each task's small JSON result next to the data (``<store>/cache/prefect/``), so the UI
shows it and nothing is ever unpickled from shared storage.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from prefect import Task
from prefect.cache_policies import NO_CACHE
from prefect.filesystems import RemoteFileSystem, WritableFileSystem
from prefect.tasks import exponential_backoff

from massive_activations.provenance import stable_hash
from massive_activations.sources.catalog import CatalogError
from massive_activations.sources.checkpoints import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    HubUnreachableError,
    TransientSourceError,
)
from massive_activations.store import Store, StoreError

RESULTS_KEY = "cache/prefect"
# Errors that say the request itself is wrong (retrying cannot help), and downloads the source has
# already retried: these fail fast.
NEVER_RETRY = (ValueError, TypeError, KeyError, CatalogError, CheckpointNotFoundError,
               CorruptCheckpointError, HubUnreachableError, TransientSourceError, StoreError, MemoryError)
RETRIES = 3
RETRY_DELAYS = exponential_backoff(backoff_factor=2)  # 2 s, 4 s, 8 s …
RETRY_JITTER = 0.5


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
    """The store's cache folder; for object storage, a block saved under a name derived from its URL
    (once per process and store: every checkpoint's nested tasks ask for it)."""
    if store.scheme == "file":
        return Path(store.path(RESULTS_KEY))
    return _remote_block(store.url, store.url_for(RESULTS_KEY),
                         json.dumps(store.storage_options, sort_keys=True, default=str))


@functools.lru_cache(maxsize=32)
def _remote_block(url: str, basepath: str, settings: str) -> WritableFileSystem:
    block = RemoteFileSystem(basepath=basepath, settings=json.loads(settings))
    block.save(f"ma-results-{stable_hash(url)}", overwrite=True)
    return block


def on_store(task: Task, store: Store) -> Task:
    """The task with its results persisted (as JSON) on this store."""
    return task.with_options(result_storage=result_storage(store), result_serializer="json", persist_result=True)


def task_options(retries: int = RETRIES, persist: bool = True) -> dict:
    """Keyword arguments for ``@task``: the project's retry policy, and no Prefect cache (the store
    decides): a persisted result is stored under its own task run's id, which no other run looks up."""
    storage = {"cache_policy": None, "result_storage_key": "{task_run.task_name}-{task_run.id}.json",
               "persist_result": True, "result_serializer": "json"} if persist else \
        {"cache_policy": NO_CACHE, "persist_result": False}
    return {**storage, "retries": retries, "retry_delay_seconds": RETRY_DELAYS(retries) if retries else 0,
            "retry_jitter_factor": RETRY_JITTER if retries else None, "retry_condition_fn": retry_transient}
