"""The findings table of docs/findings.md ("Evaluations across training"), computed from a store after `make run`.

Per (kind, variant, metric): the mean over decoder layers at the first and the last evaluated step;
medians over layers of ρ with the ratio, ρ with the step and the partial ρ beyond a smooth trend in
the step; the pooled test over every model's layers (Simes) and the layers that are discoveries at a
5% false-discovery rate (Benjamini–Hochberg over all models' layers), below / above 0, of those tested
(the partial ρ abstains below 20 checkpoints per model); and the median over
checkpoints of ρ across one model's layers (with how many of those are negative); and the median over
matched steps of ρ across every model's layers (``evals/model_correlations``).

Run: .venv/bin/python docs/findings.py [STORE]   (default: data)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from massive_activations.evals.eval_report import pooled_correlations  # noqa: E402
from massive_activations.store import Store  # noqa: E402

ROWS = [  # (label, kind, variant, metric, show the first → last means)
    ("TopK SAE explained variance, unmasked", "sae", "topk-unmasked", "explained_variance", True),
    ("TopK SAE explained variance, massive tokens masked", "sae", "topk-masked", "explained_variance", True),
    ("TopK SAE explained variance on massive / other held-out tokens", "sae", "topk-unmasked",
     "explained_variance_other", True),
    ("ReLU SAE explained variance, unmasked", "sae", "relu-unmasked", "explained_variance", True),
    ("TopK SAE CE-loss score", "sae", "topk-unmasked", "ce_loss_score", False),
    ("TopK SAE dead latents (training window)", "sae", "topk-unmasked", "dead_fraction_train", True),
    ("ReLU SAE L0", "sae", "relu-unmasked", "l0", False),
    ("ITDA explained variance", "itda", "itda", "explained_variance", True),
    ("ITDA Jaccard with the final dictionary (final excluded)", "itda_similarity", "itda_similarity",
     "jaccard_final", False),
    ("int8 SQNR per tensor", "quant", "int8-tensor", "sqnr_db", True),
    ("int8 SQNR per tensor beyond the max/RMS identity (excess)", "quant", "int8-tensor", "sqnr_db_excess", True),
    ("int8 SQNR per channel", "quant", "int8-channel", "sqnr_db", True),
    ("int4 SQNR per tensor", "quant", "int4-tensor", "sqnr_db", True),
    ("int8 SQNR per tensor, massive tokens (all quantized together)", "quant", "int8-tensor", "sqnr_db_massive",
     True),
    ("int8 SQNR per tensor, other tokens (all quantized together)", "quant", "int8-tensor", "sqnr_db_other", True),
]


def median(values: list[float]) -> float:
    finite = [v for v in values if np.isfinite(v)]
    return float(np.median(finite)) if finite else float("nan")


def main(store_url: str = "data") -> None:
    store = Store(store_url)
    joined = [r for r in store.read_dataset("evals/joined").to_pylist() if r["layer"] >= 0]
    corr = [r for r in store.read_dataset("evals/correlations").to_pylist() if r["layer"] >= 0]
    pooled = {(r["kind"], r["variant"], r["metric"]): r for r in pooled_correlations(pa.Table.from_pylist(corr))
              .to_pylist()}
    across = store.read_dataset("evals/layer_correlations").to_pylist()
    key = "evals/model_correlations"
    models = store.read_dataset(key).to_pylist() if store.list(key) else []
    steps = sorted({r["step"] for r in joined})
    print(f"{len({r['model'] for r in joined})} models, steps {steps}")
    print("| metric | first → last step (mean over layers) | ρ ratio | ρ step | partial ρ | pooled p | "
          "FDR 5% discoveries < 0 / > 0 (of tested) | across layers: median ρ (negative) | "
          "across models at one step: median ρ (negative) |")
    print("|---|---|---|---|---|---|---|---|---|")
    def at(kind: str, variant: str, metric: str, step: int) -> list[float]:
        return [r["value"] for r in joined if (r["kind"], r["variant"], r["metric"], r["step"]) ==
                (kind, variant, metric, step)]

    for label, kind, variant, metric, trend in ROWS:
        key = (kind, variant, metric)
        values = {s: at(kind, variant, metric, s) for s in (steps[0], steps[-1])}
        if metric == "explained_variance_other":  # this row shows both groups
            massive = at(kind, variant, "explained_variance_massive", steps[-1])
            text = (f"last step: massive {np.mean(massive):.3f} (n layers {len(massive)}) / other "
                    f"{np.mean(values[steps[-1]]):.3f}" if massive else "no massive held-out token")
        else:
            text = (f"{np.mean(values[steps[0]]):.3g} → {np.mean(values[steps[-1]]):.3g}"
                    if trend and all(values.values()) else "")
        rows = [r for r in corr if (r["kind"], r["variant"], r["metric"]) == key]
        test = pooled.get(key, {"pooled_p": float("nan"), "discoveries_negative": 0, "discoveries_positive": 0,
                                "layers_tested": 0})
        layer_rho = [r["rho_across_layers"] for r in across if (r["kind"], r["variant"], r["metric"]) == key
                     and np.isfinite(r["rho_across_layers"])]
        model_rho = [r["rho_across_models"] for r in models if (r["kind"], r["variant"], r["metric"]) == key
                     and np.isfinite(r["rho_across_models"])]
        print(f"| {label} | {text} | {median([r['spearman_rho'] for r in rows]):+.2f} | "
              f"{median([r['rho_step'] for r in rows]):+.2f} | {median([r['partial_rho'] for r in rows]):+.2f} | "
              f"{test['pooled_p']:.2g} | {test['discoveries_negative']} / {test['discoveries_positive']} "
              f"(of {test['layers_tested']}) | "
              f"{median(layer_rho):+.2f} ({sum(v < 0 for v in layer_rho)} of {len(layer_rho)}) | "
              f"{median(model_rho):+.2f} ({sum(v < 0 for v in model_rho)} of {len(model_rho)}) |")


if __name__ == "__main__":
    main(*sys.argv[1:2])
