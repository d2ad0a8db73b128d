"""Where the per-checkpoint tasks run: the default thread pool, or a Dask cluster (local or remote)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal
from urllib.parse import urlparse

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from pydantic import BaseModel, ConfigDict, Field

from massive_activations.errors import BadInputError


class RunnerParams(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: Literal["threads", "dask"] = Field("threads", description="threads: this process; dask: a Dask cluster")
    max_workers: int = Field(2, ge=1, le=256, description="Threads, or workers of a local Dask cluster")
    dask_address: str | None = Field(None, description="Scheduler of a running Dask cluster, e.g. tcp://10.0.0.5:8786; "
                                                       "empty: start a local cluster")


def reporting_api() -> str | None:
    """The API this process reports to: PREFECT_API_URL, or the ephemeral server of the running flow."""
    from prefect.context import FlowRunContext
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return PREFECT_API_URL.value()
    context = FlowRunContext.get()
    return str(context.client.api_url) if context and context.client else None


def task_runner(params: RunnerParams) -> TaskRunner:
    """The runner; Dask workers report to the same API as the flow (without that, each local worker
    starts a throwaway server of its own and its task logs are lost with it)."""
    if params.kind == "threads":
        return ThreadPoolTaskRunner(max_workers=params.max_workers)
    from prefect_dask import DaskTaskRunner

    api = reporting_api()
    if params.dask_address:
        if not api or urlparse(api).hostname in ("127.0.0.1", "localhost", "::1"):
            raise BadInputError(f"a Dask cluster at {params.dask_address} cannot reach this machine's Prefect API "
                                f"({api or 'an ephemeral one'}): give the workers a server they can reach safely "
                                "(keep it on 127.0.0.1 behind a reverse proxy with TLS and authentication, or an SSH "
                                "tunnel: docs/operations.md, \"Exposing the server\") and set PREFECT_API_URL to it "
                                "here and on the workers")
        return DaskTaskRunner(address=params.dask_address)
    if not api:
        raise BadInputError("runner=dask needs a Prefect API its workers can reach: call it from a running flow "
                         "(the pipeline does), or set PREFECT_API_URL")
    return DaskTaskRunner(cluster_kwargs={"n_workers": params.max_workers, "threads_per_worker": 1,
                                         "processes": True, "dashboard_address": None,
                                         "env": {"PREFECT_API_URL": api}})


def runner_width(default: int = 2) -> int:
    """How many tasks the running flow's task runner runs at once: its threads, or its local Dask
    workers; ``default`` for an unbounded thread pool, and no limit of ours on a remote cluster."""
    from prefect.context import FlowRunContext

    runner = FlowRunContext.get().task_runner
    if getattr(runner, "address", None):
        return 1024  # the cluster's scheduler decides
    width = getattr(runner, "_max_workers", None) or (getattr(runner, "cluster_kwargs", None) or {}).get("n_workers")
    return width if width and width < 1024 else default


@contextmanager
def compute_threads(slots: int) -> Iterator[int]:
    """Within the block, each of the ``slots`` checkpoints computed at once in this process gets
    cores // slots threads in torch and in the BLAS and OpenMP pools (numpy's, scikit-learn's):
    left at their defaults, two checkpoints each ran two torch threads and two BLAS threads on two
    cores, and evaluating four checkpoints two at a time took 110.6 s with 16,600 voluntary and 2,900
    involuntary context switches a second, against 91.7 s, 8,300 and 45 with one thread each
    (bench/RESULTS.md). The counts are recorded with every result (``provenance.thread_settings``)."""
    import torch
    from threadpoolctl import threadpool_limits

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    each = max(1, cores // max(1, slots))
    before = torch.get_num_threads()
    torch.set_num_threads(each)
    try:
        with threadpool_limits(limits=each):
            yield each
    finally:
        torch.set_num_threads(before)
