"""Where the per-checkpoint tasks run: the default thread pool, or a Dask cluster (local or remote)."""

from __future__ import annotations

from typing import Literal

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from pydantic import BaseModel, ConfigDict, Field


class RunnerParams(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: Literal["threads", "dask"] = Field("threads", description="threads: this process; dask: a Dask cluster")
    max_workers: int = Field(2, ge=1, le=256, description="Threads, or workers of a local Dask cluster")
    dask_address: str | None = Field(None, description="Scheduler of a running Dask cluster, e.g. tcp://10.0.0.5:8786; "
                                                       "empty: start a local cluster")


def task_runner(params: RunnerParams) -> TaskRunner:
    if params.kind == "threads":
        return ThreadPoolTaskRunner(max_workers=params.max_workers)
    from prefect_dask import DaskTaskRunner

    if params.dask_address:
        return DaskTaskRunner(address=params.dask_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": params.max_workers, "threads_per_worker": 1,
                                         "processes": True, "dashboard_address": None})
