"""Checkpoint-major execution, shared by the capture and evaluate flows.

Each (model, step) is one ``process_checkpoint`` task: fetched once, loaded once, and every piece of
work on it (capture, each evaluation kind) done while it is in memory. At most ``slots`` checkpoints
are processed at once (the task runner's width). Checkpoints a remote source must download are
fetched ahead by one download lane in the flow's process, at most ``prefetch`` beyond the one being
started, so downloads overlap compute; on disk there are then at most ``slots + prefetch`` pinned
checkpoints of this run. A checkpoint whose every piece the store already holds gets no task at all
(``stored_outcome``): it is neither fetched nor loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from flows.runner import compute_threads, runner_width
from massive_activations.sources.checkpoints import make_source
from massive_activations.store import Store
from tasks.checkpoint import fetch_checkpoint, process_checkpoint, stored_outcome
from tasks.policy import on_store
from tasks.progress import Progress


@dataclass(frozen=True)
class Job:
    model: str
    step: int
    source: dict
    capture: dict | None = None  # {prompt_set, settings, force}
    evaluations: dict | None = None  # {kinds, prompt_set, eval_tokens, settings, force}


def run_pass(store: Store, jobs: list[Job], device: str, dtype: str, prefetch: int,
             progress: Progress) -> list[dict]:
    """Every job's result, in order (see ``process_checkpoint``)."""
    slots = runner_width()
    task = on_store(process_checkpoint, store)
    done = [stored_outcome(store, job.source, job.model, job.step, dtype, job.capture, job.evaluations)
            for job in jobs]
    todo = [i for i, result in enumerate(done) if result is None]
    ahead = [i for i in todo if prefetch and make_source(**jobs[i].source).remote]
    fetches: dict[int, Any] = {}
    futures: dict[int, Any] = {}
    in_flight: list[Any] = []

    def report() -> None:
        progress.update(len(jobs) - len(todo) + sum(f.state.is_final() for f in futures.values()))

    report()
    with compute_threads(min(slots, max(1, len(todo)))), ThreadPoolTaskRunner(max_workers=1) as lane:
        for i in todo:
            job = jobs[i]
            while len(in_flight) >= slots:
                # whichever ends first frees its slot: a checkpoint that is only captured (seconds) must
                # not wait behind an older one being evaluated (a minute), or a core sits idle meanwhile
                in_flight.remove(next(as_completed(in_flight)))
                report()
            started = sum(1 for a in ahead if a <= i)
            for a in ahead[:started + prefetch]:
                if a not in fetches:
                    fetches[a] = lane.submit(fetch_checkpoint, {"source": jobs[a].source, "model": jobs[a].model,
                                                                "step": jobs[a].step})
            lease = fetches[i].result()["lease"] if i in fetches else None
            futures[i] = task.submit(store.url, job.source, job.model, job.step, device, dtype, job.capture,
                                     job.evaluations, lease)
            in_flight.append(futures[i])
        for future in in_flight:
            future.wait()
            report()
    return [done[i] if done[i] is not None else _result(job, futures[i]) for i, job in enumerate(jobs)]


def _result(job: Job, future: Any) -> dict:
    if future.state.is_completed():
        return future.result()
    failed = {"status": "failed", "message": str(future.state.message)}
    return {"model": job.model, "step": job.step, **({"capture": failed} if job.capture else {}),
            "evaluations": {kind: failed for kind in (job.evaluations or {}).get("kinds", ())}}


def tally(results: list[dict], piece: str, outcomes: tuple[str, ...]) -> dict[str, Any]:
    """Counts of one piece's outcomes (``capture`` or an evaluation kind), with the failures' messages."""
    counts: dict[str, Any] = dict.fromkeys(outcomes, 0)
    counts["failed"] = []
    for result in results:
        outcome = result.get("capture") if piece == "capture" else result["evaluations"].get(piece)
        if outcome is None:
            continue
        if outcome["status"] == "failed":
            counts["failed"].append(f"{result['model']} step {result['step']}: {outcome['message']}")
        else:
            counts[outcome["status"]] += 1
    return counts
