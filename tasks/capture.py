"""Capture one checkpoint (the store decides whether it is already there): retried on transient
source errors, never on bad input."""

from __future__ import annotations

from prefect import get_run_logger, task

from massive_activations.capture.capture import CaptureSettings
from massive_activations.capture.capture_run import capture_to_store
from massive_activations.capture.prompts import load_prompt_set
from massive_activations.report.plots import plot_ratio_curves
from massive_activations.sources.checkpoints import CheckpointHandle, make_source
from massive_activations.store import Store
from tasks.policy import task_options


@task(name="capture-checkpoint", task_run_name="capture-{model}-step{step}", **task_options())
def capture_checkpoint(store: str, source: dict, model: str, step: int, prompt_set: str, settings: dict,
                       device: str = "auto", dtype: str = "float32", force: bool = False,
                       checkpoint: CheckpointHandle | None = None) -> dict:
    """``checkpoint``: the loaded checkpoint shared with the other work on it (see tasks.checkpoint)."""
    target = Store(store)
    result = capture_to_store(target, make_source(**source), model, step, prompt_set,
                              load_prompt_set(target, prompt_set).tokens, CaptureSettings(**settings),
                              device=device, dtype=dtype, force=force, checkpoint=checkpoint)
    get_run_logger().info("%s step %d: %s", model, step, result["status"])
    return result


@task(name="plot-ratios", **task_options(retries=2, persist=False))
def plot_ratios(store: str, models: list[str]) -> str:
    """Every captured layer's ratio vs step, one panel per model: plots/ratios.png."""
    target = Store(store)
    key = "plots/ratios.png"
    target.write_bytes(key, plot_ratio_curves(target.read_dataset("ratios", where={"model": models})))
    return key
