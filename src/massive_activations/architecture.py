"""Architecture features, shared by training the regressors and by predicting for a new design.

The paper's engineered set (arXiv 2508.03616, ``PAPER_FEATURES``): relative depth r = ℓ/L with its
square, cube and square root; heads per hidden dim H/d; MLP ratio d_ff/d; d/L; H/L; log d; ℓ·L — plus
the raw architecture (L, d, H, d_ff, log parameter count, rotary fraction). ℓ counts layers from 1
(ℓ = layer + 1) in both r and ℓ·L, so the last layer has r = 1, as ``rel_depth`` in ``fits/``.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from massive_activations.catalog import PYTHIA, Architecture, CatalogError, pythia_model
from massive_activations.provenance import stable_hash

FEATURES = ("rel_depth", "rel_depth2", "rel_depth3", "rel_depth_sqrt", "heads_per_dim", "mlp_ratio",
            "d_per_layer", "heads_per_layer", "log_d", "layer_x_layers",
            "n_layers", "d_model", "n_heads", "d_ff", "log_params", "rotary_pct")
PAPER_FEATURES = FEATURES[:10]


def layer_features(arch: Architecture, layer: int) -> dict[str, float]:
    if not 0 <= layer < arch.n_layers:
        raise ValueError(f"{arch.name}: layer {layer} outside 0..{arch.n_layers - 1}")
    r = (layer + 1) / arch.n_layers
    return {
        "rel_depth": r, "rel_depth2": r**2, "rel_depth3": r**3, "rel_depth_sqrt": math.sqrt(r),
        "heads_per_dim": arch.n_heads / arch.d_model, "mlp_ratio": arch.d_ff / arch.d_model,
        "d_per_layer": arch.d_model / arch.n_layers, "heads_per_layer": arch.n_heads / arch.n_layers,
        "log_d": math.log(arch.d_model), "layer_x_layers": float((layer + 1) * arch.n_layers),
        "n_layers": float(arch.n_layers), "d_model": float(arch.d_model), "n_heads": float(arch.n_heads),
        "d_ff": float(arch.d_ff), "log_params": math.log(arch.n_params), "rotary_pct": arch.rotary_pct,
    }


def feature_matrix(arch: Architecture, layers: list[int] | None = None) -> np.ndarray:
    """Rows of FEATURES for the given layers (default: every layer)."""
    layers = list(range(arch.n_layers)) if layers is None else layers
    return np.array([[layer_features(arch, layer)[f] for f in FEATURES] for layer in layers])


def resolve_architecture(spec: str | dict[str, Any] | Architecture) -> Architecture:
    """An architecture from a Pythia name, a Hugging Face config.json path, or explicit fields.

    Explicit fields: n_layers, d_model, n_heads, and optionally d_ff (default 4·d_model), rotary_pct,
    vocab_size, context, name. Validation (heads dividing d_model, positive sizes) happens here,
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
        allowed = {"name", "n_layers", "d_model", "n_heads", "d_ff", "rotary_pct", "vocab_size", "context"}
        extra = sorted(set(fields) - allowed)
        if extra:
            raise CatalogError(f"unknown architecture fields {extra}; allowed: {sorted(allowed)}")
        return Architecture(**fields)
    if spec.endswith(".json") or Path(spec).is_dir():
        path = Path(spec) / "config.json" if Path(spec).is_dir() else Path(spec)
        if not path.exists():
            raise CatalogError(f"no config.json at {path}")
        from transformers import GPTNeoXConfig

        arch = Architecture.from_config("config", GPTNeoXConfig(**json.loads(path.read_text())))
        # named from what it is, never from its folder (checkpoints of different models share "step<N>")
        fields = {k: v for k, v in arch.as_dict().items() if k != "name"}
        return replace(arch, name=f"config-l{arch.n_layers}-d{arch.d_model}-h{arch.n_heads}-{stable_hash(fields)[:6]}")
    if spec.removeprefix("EleutherAI/").removeprefix("pythia-") in {k.removeprefix("pythia-") for k in PYTHIA}:
        return pythia_model(spec)
    raise CatalogError(f"cannot read architecture {spec!r}: give a Pythia name (e.g. pythia-410m), a path to a "
                       "config.json, or fields n_layers, d_model, n_heads")
