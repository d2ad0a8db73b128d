"""All the work on one checkpoint while it is loaded once: capture, then each evaluation kind.

``process_checkpoint`` loads the checkpoint lazily (not at all when every piece it runs is skipped)
and runs each piece as its own nested task (``capture-…``, ``sae-…``, …) with its own store
partition, skip decision and retries, so one failed evaluation redoes neither the capture nor the
others. ``stored_outcome`` says, before scheduling, whether the store already holds every piece (then
the checkpoint needs no task). ``fetch_checkpoint`` downloads a checkpoint ahead of its use and keeps
it pinned in the download cache until the checkpoint's ``process_checkpoint`` is done with it.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from massive_activations.capture.capture import CaptureSettings
from massive_activations.capture.capture_run import stored_capture
from massive_activations.evals.eval_run import EvalSettings, stored_evaluation
from massive_activations.sources.checkpoints import CheckpointHandle, make_source
from massive_activations.store import Store
from tasks.capture import capture_checkpoint
from tasks.evaluate import evaluate_checkpoint
from tasks.policy import on_store, task_options


@task(name="fetch-checkpoint", task_run_name="fetch-{model}-step{step}", **task_options(retries=0, persist=False))
def fetch_checkpoint(source: dict, model: str, step: int) -> dict:
    """Download ahead of use. Never fails the run: the source has retried already, and the checkpoint's
    own work downloads it again (and reports the error) if this did not succeed."""
    try:
        lease = make_source(**source).prefetch(model, step)
    except Exception as err:  # noqa: BLE001 - reported, then left to the checkpoint's own download
        get_run_logger().warning("prefetch of %s step %d failed (%s: %s); it is downloaded when used",
                                 model, step, type(err).__name__, err)
        return {"status": "failed", "lease": None, "message": f"{type(err).__name__}: {err}"}
    return {"status": "fetched", "lease": lease}


def stored_outcome(store: Store, source: dict, model: str, step: int, dtype: str, capture: dict | None,
                   evaluations: dict | None) -> dict | None:
    """What ``process_checkpoint`` would return when every piece is on the store already (the store's
    own skip decision, nothing forced), or None: then the checkpoint needs its task."""
    checkout = make_source(**source)
    out: dict[str, Any] = {"model": model, "step": step, "evaluations": {}}
    if capture is not None:
        if capture["force"] or not (found := stored_capture(store, checkout, model, step, capture["prompt_set"],
                                                            CaptureSettings(**capture["settings"]))):
            return None
        out["capture"] = found
    if evaluations and evaluations["kinds"]:
        settings = EvalSettings.from_dict(evaluations["settings"])
        for kind in evaluations["kinds"]:
            if evaluations["force"] or not (found := stored_evaluation(
                    store, checkout, model, step, kind, evaluations["prompt_set"], evaluations["eval_tokens"],
                    settings, dtype)):
                return None
            out["evaluations"][kind] = found
    return out


def _outcome(state: Any) -> dict:
    if state.is_completed():
        return state.result()
    return {"status": "failed", "message": str(state.message)}


@task(name="process-checkpoint", task_run_name="checkpoint-{model}-step{step}", **task_options(retries=0))
def process_checkpoint(store: str, source: dict, model: str, step: int, device: str = "auto",
                       dtype: str = "float32", capture: dict | None = None, evaluations: dict | None = None,
                       lease: str | None = None) -> dict:
    """``capture``: {prompt_set, settings, force}; ``evaluations``: {kinds, prompt_set, eval_tokens, settings,
    force}.
    ``lease``: the prefetch's pin in the download cache, released when the work is done.

    Returns each piece's result (``status`` failed with the message for a piece that failed)."""
    target = Store(store)
    checkout = make_source(**source)
    handle = CheckpointHandle(checkout, model, step, device=device, dtype=dtype)
    out: dict[str, Any] = {"model": model, "step": step, "evaluations": {}}
    try:
        if capture is not None:
            out["capture"] = _outcome(on_store(capture_checkpoint, target)(
                store, source, model, step, capture["prompt_set"], capture["settings"], device, dtype,
                force=capture["force"], checkpoint=handle, return_state=True))
        for kind in (evaluations or {}).get("kinds", ()):
            if out.get("capture", {}).get("status") == "failed":
                out["evaluations"][kind] = {"status": "failed", "message": "its capture failed"}
                continue
            out["evaluations"][kind] = _outcome(on_store(evaluate_checkpoint, target)(
                store, source, model, step, kind, evaluations["prompt_set"], evaluations["eval_tokens"],
                evaluations["settings"], device, dtype, force=evaluations["force"], checkpoint=handle,
                return_state=True))
    finally:
        handle.release()
        checkout.release(lease)
    return out
