"""Evaluate one checkpoint with one kind (SAE, ITDA, quantization), and report across checkpoints.

The store decides whether each piece is current; these wrappers own retries and logging."""

from __future__ import annotations

from prefect import get_run_logger, task

from massive_activations.capture.prompts import load_prompt_set
from massive_activations.evals.eval_report import cross_model_report_to_store, report_to_store
from massive_activations.evals.eval_run import EvalSettings, evaluate_to_store, similarity_to_store
from massive_activations.sources.checkpoints import CheckpointHandle, make_source
from massive_activations.store import Store
from tasks.policy import task_options


@task(name="evaluate-checkpoint", task_run_name="{kind}-{model}-step{step}", **task_options())
def evaluate_checkpoint(store: str, source: dict, model: str, step: int, kind: str, prompt_set: str,
                        eval_tokens: str, settings: dict, device: str = "auto", dtype: str = "float32",
                        force: bool = False, checkpoint: CheckpointHandle | None = None) -> dict:
    """``eval_tokens``: the stored evaluation token set's id; ``checkpoint``: the loaded checkpoint
    shared with the other work on it (see tasks.checkpoint)."""
    target = Store(store)
    result = evaluate_to_store(target, make_source(**source), model, step, kind, prompt_set,
                               load_prompt_set(target, eval_tokens), EvalSettings.from_dict(settings),
                               device=device, dtype=dtype, force=force, checkpoint=checkpoint)
    get_run_logger().info("%s %s step %d: %s", kind, model, step, result["status"])
    return result


@task(name="itda-similarity", task_run_name="itda-similarity-{model}", **task_options(retries=2))
def itda_similarity(store: str, model: str, itda_hashes: list[str], force: bool = False) -> dict:
    """Each checkpoint's ITDA dictionaries against the final checkpoint's: evals/itda_similarity/model=…"""
    return similarity_to_store(Store(store), model, itda_hashes, force)


@task(name="evaluation-report", task_run_name="evaluation-report-{model}", **task_options(retries=2))
def evaluation_report(store: str, model: str, kinds: list[str], eval_hashes: list[str], force: bool = False) -> dict:
    """Joined view and Spearman correlations on the store (evals/joined, evals/correlations), and figures."""
    return report_to_store(Store(store), model, kinds, eval_hashes, force)


@task(name="cross-model-report", **task_options(retries=2))
def cross_model_report(store: str, models: list[str], eval_hashes: list[str], force: bool = False) -> dict:
    """Across models at matched steps: evals/model_correlations (ρ of each metric with the ratio over all
    the models' layers at one step)."""
    return cross_model_report_to_store(Store(store), models, eval_hashes, force)
