"""Evaluate one checkpoint with one kind (SAE, ITDA, quantization), and report across checkpoints."""

from __future__ import annotations

from prefect import get_run_logger, task

from massive_activations.checkpoints import make_source
from massive_activations.eval_report import correlations, joined_view
from massive_activations.eval_run import CODE_MODULES, EVALS, ITDA_SIMILARITY, EvalSettings, evaluate_to_store
from massive_activations.eval_run import itda_similarity as similarity_table
from massive_activations.plots import plot_eval_metrics
from massive_activations.prompts import load_prompt_set
from massive_activations.store import Store
from tasks.policy import task_options

CACHE_INPUTS = ("store", "source", "model", "step", "kind", "prompt_set", "activations_hash", "settings")
REPORT_MODULES = CODE_MODULES + ("massive_activations.eval_report", "massive_activations.plots")
# The figure of each evaluation: (kind, variant, metric) panels
PANELS = {
    "sae": [("sae", "topk-unmasked", "explained_variance"), ("sae", "topk-masked", "explained_variance"),
            ("sae", "topk-unmasked", "ce_loss_score"), ("sae", "relu-unmasked", "explained_variance"),
            ("sae", "relu-unmasked", "l0"), ("sae", "topk-unmasked", "dead_fraction")],
    "itda": [("itda", "itda", "explained_variance"), ("itda", "itda", "ce_loss_score"),
             ("itda_similarity", "itda_similarity", "jaccard_final")],
    "quant": [("quant", "int8-tensor", "sqnr_db"), ("quant", "int8-token", "sqnr_db"),
              ("quant", "int8-channel", "sqnr_db"), ("quant", "int4-tensor", "sqnr_db"),
              ("quant", "int8-tensor", "topk_error_share"), ("quant_model", "w8a8", "ce_delta_tensor")],
}


@task(name="evaluate-checkpoint", task_run_name="{kind}-{model}-step{step}",
      **task_options(CACHE_INPUTS, CODE_MODULES))
def evaluate_checkpoint(store: str, source: dict, model: str, step: int, kind: str, prompt_set: str,
                        activations_hash: str, settings: dict, device: str = "auto") -> dict:
    """``activations_hash`` is here for the cache key: new samples on the store mean a new evaluation."""
    target = Store(store)
    result = evaluate_to_store(target, make_source(**source), model, step, kind, prompt_set,
                               load_prompt_set(target, prompt_set).tokens, EvalSettings.from_dict(settings),
                               device=device)
    get_run_logger().info("%s %s step %d: %s", kind, model, step, result["status"])
    return result


@task(name="itda-similarity", task_run_name="itda-similarity-{model}",
      **task_options(("store", "model", "itda_hashes"), CODE_MODULES, retries=2))
def itda_similarity(store: str, model: str, itda_hashes: list[str]) -> dict:
    """Each checkpoint's ITDA dictionaries against the final checkpoint's: evals/itda_similarity/model=…"""
    target = Store(store)
    written = target.write_partition(ITDA_SIMILARITY, {"model": model}, similarity_table(target, model),
                                     inputs={"model": model, "itda_hashes": itda_hashes},
                                     code_modules=CODE_MODULES, overwrite=True)
    return {"model": model, "hash": written.content_hash, "rows": written.rows}


@task(name="evaluation-report", task_run_name="evaluation-report-{model}",
      **task_options(("store", "model", "kinds", "eval_hashes"), REPORT_MODULES, retries=2))
def evaluation_report(store: str, model: str, kinds: list[str], eval_hashes: list[str]) -> dict:
    """Joined view and Spearman correlations on the store (evals/joined, evals/correlations), and figures."""
    target = Store(store)
    joined = joined_view(target, [model])
    corr = correlations(joined)
    inputs = {"model": model, "eval_hashes": eval_hashes}
    for name, table in (("joined", joined), ("correlations", corr)):
        target.write_partition(f"{EVALS}/{name}", {"model": model}, table.drop_columns(["model"]), inputs=inputs,
                               code_modules=REPORT_MODULES, overwrite=True)
    figures = {}
    for kind in kinds:
        key = f"plots/evals/{model}-{kind}.png"
        target.write_bytes(key, plot_eval_metrics(joined, model, PANELS[kind]))
        figures[kind] = key
    return {"model": model, "figures": figures, "correlations": corr.to_pylist()}
