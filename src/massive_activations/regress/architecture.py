"""Architecture features, shared by training the regressors and by predicting for a new design.

The paper's engineered set (arXiv 2508.03616, ``PAPER_FEATURES``): relative depth r = ℓ/L with its
square, cube and square root; heads per hidden dim H/d; MLP ratio d_ff/d; d/L; H/L; log d; ℓ·L — plus
the raw architecture (L, d, H, d_ff, log parameter count, rotary fraction) and what differs between
model families (KV heads per head, tied embeddings, RMSNorm, gated MLP, parallel residual, learned
positions), so the regressors train on the union of families and predict for any config.json. ℓ counts layers from 1
(ℓ = layer + 1) in both r and ℓ·L, so the last layer has r = 1, as ``rel_depth`` in ``fits/``.
"""

from __future__ import annotations

import json
import math
from dataclasses import fields as fields_of
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from massive_activations.errors import BadInputError
from massive_activations.provenance import stable_hash
from massive_activations.sources.catalog import PYTHIA, Architecture, CatalogError, pythia_model

FEATURES = ("rel_depth", "rel_depth2", "rel_depth3", "rel_depth_sqrt", "heads_per_dim", "mlp_ratio",
            "d_per_layer", "heads_per_layer", "log_d", "layer_x_layers",
            "n_layers", "d_model", "n_heads", "d_ff", "log_params", "rotary_pct",
            "kv_heads_ratio", "tied_embeddings", "rms_norm", "gated_mlp", "parallel_residual", "learned_positions")
PAPER_FEATURES = FEATURES[:10]


def layer_features(arch: Architecture, layer: int) -> dict[str, float]:
    if not 0 <= layer < arch.n_layers:
        raise BadInputError(f"{arch.name}: layer {layer} outside 0..{arch.n_layers - 1}")
    r = (layer + 1) / arch.n_layers
    return {
        "rel_depth": r, "rel_depth2": r**2, "rel_depth3": r**3, "rel_depth_sqrt": math.sqrt(r),
        "heads_per_dim": arch.n_heads / arch.d_model, "mlp_ratio": arch.d_ff / arch.d_model,
        "d_per_layer": arch.d_model / arch.n_layers, "heads_per_layer": arch.n_heads / arch.n_layers,
        "log_d": math.log(arch.d_model), "layer_x_layers": float((layer + 1) * arch.n_layers),
        "n_layers": float(arch.n_layers), "d_model": float(arch.d_model), "n_heads": float(arch.n_heads),
        "d_ff": float(arch.d_ff), "log_params": math.log(arch.n_params), "rotary_pct": arch.rotary_pct,
        "kv_heads_ratio": (arch.n_kv_heads or arch.n_heads) / arch.n_heads,
        "tied_embeddings": float(arch.tied_embeddings), "rms_norm": float(arch.norm == "rmsnorm"),
        "gated_mlp": float(arch.gated_mlp), "parallel_residual": float(arch.parallel_residual),
        "learned_positions": float(arch.positions == "learned"),
    }


def feature_matrix(arch: Architecture, layers: list[int] | None = None) -> np.ndarray:
    """Rows of FEATURES for the given layers (default: every layer)."""
    layers = list(range(arch.n_layers)) if layers is None else layers
    return np.array([[layer_features(arch, layer)[f] for f in FEATURES] for layer in layers])


def resolve_architecture(spec: str | dict[str, Any] | Architecture) -> Architecture:
    """An architecture from a Pythia name, any Hugging Face causal-LM config.json path, or explicit fields.

    Explicit fields: n_layers, d_model, n_heads, and optionally d_ff (default 4·d_model), the other
    fields of :class:`Architecture` (rotary_pct, n_kv_heads, norm, …; Pythia's by default) and name.
    Validation (heads dividing d_model, positive sizes, a readable architecture) happens here,
    before any model is loaded.
    """
    if isinstance(spec, Architecture):
        return spec
    if isinstance(spec, dict):
        fields = dict(spec)
        missing = [k for k in ("n_layers", "d_model", "n_heads") if k not in fields]
        if missing:
            raise CatalogError(f"architecture needs {missing}; got {sorted(fields)}")
        fields.setdefault("name", f"custom-l{fields['n_layers']}-d{fields['d_model']}-h{fields['n_heads']}")
        fields.setdefault("d_ff", 4 * fields["d_model"] if isinstance(fields["d_model"], int) else 0)
        allowed = {f.name for f in fields_of(Architecture)} - {"params"}
        extra = sorted(set(fields) - allowed)
        if extra:
            raise CatalogError(f"unknown architecture fields {extra}; allowed: {sorted(allowed)}")
        return Architecture(**fields)
    if spec.endswith(".json") or Path(spec).is_dir():
        path = Path(spec) / "config.json" if Path(spec).is_dir() else Path(spec)
        if not path.exists():
            raise CatalogError(f"no config.json at {path}")
        from transformers import AutoConfig

        values = json.loads(path.read_text())
        if "model_type" not in values:
            raise CatalogError(f"{path}: no model_type, so not a transformers config.json")
        try:
            config = AutoConfig.for_model(**values)
        except ValueError as err:
            raise CatalogError(f"{path}: model_type {values['model_type']!r} unknown to transformers ({err})") from err
        arch = Architecture.from_config("config", config)
        # named from what it is, never from its folder (checkpoints of different models share "step<N>")
        fields = {k: v for k, v in arch.as_dict().items() if k != "name"}
        return replace(arch, name=f"config-l{arch.n_layers}-d{arch.d_model}-h{arch.n_heads}-{stable_hash(fields)[:6]}")
    if spec.removeprefix("EleutherAI/").removeprefix("pythia-") in {k.removeprefix("pythia-") for k in PYTHIA}:
        return pythia_model(spec)
    raise CatalogError(f"cannot read architecture {spec!r}: give a Pythia name (e.g. pythia-410m), a path to a "
                       "config.json, or fields n_layers, d_model, n_heads")
