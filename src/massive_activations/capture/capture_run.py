"""Capture one checkpoint onto the store: load it, measure it, write its partitions.

Writes the model's architecture (``architectures/<model>.json``, once), ``activations/`` (when
sampling), ``panel/`` (the outlier panel, panel.py), then ``ratios/``, then ``stats/`` last: the stats
partition, with matching inputs in its metadata, is what marks a checkpoint as captured, so an
interrupted capture is redone and a finished one is never redone.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

import numpy as np

from massive_activations.capture.capture import CODE_MODULES, CaptureSettings, capture, layer_ratios
from massive_activations.sources.catalog import architecture_key
from massive_activations.sources.checkpoints import CheckpointHandle, CheckpointSource
from massive_activations.store import Store

log = logging.getLogger(__name__)

STATS, RATIOS, ACTIVATIONS, PANEL = "stats", "ratios", "activations", "panel"


def capture_inputs(model: str, step: int, source: CheckpointSource, prompt_set: str,
                   settings: CaptureSettings) -> dict[str, Any]:
    return {"model": model, "step": step, "source": source.describe(), "prompt_set": prompt_set,
            "settings": asdict(settings)}


def stored_capture(store: Store, source: CheckpointSource, model: str, step: int, prompt_set: str,
                   settings: CaptureSettings) -> dict[str, Any] | None:
    """The result ``capture_to_store`` would return as "skipped", or None when it would capture."""
    inputs = capture_inputs(model, step, source, prompt_set, settings)
    meta = store.current(STATS, {"model": model, "step": step}, inputs, CODE_MODULES)
    return {"model": model, "step": step, "status": "skipped", "stats_hash": meta.get("content_hash")} if meta else None


def capture_to_store(store: Store, source: CheckpointSource, model: str, step: int, prompt_set: str,
                     tokens: np.ndarray, settings: CaptureSettings, device: str = "auto",
                     dtype: str = "float32", force: bool = False,
                     checkpoint: CheckpointHandle | None = None) -> dict[str, Any]:
    """Capture (model, step) unless already on the store with the same inputs (``force``: anyway);
    say which happened. ``checkpoint``: a handle shared with other work on the same checkpoint
    (its device and dtype win); without one, the checkpoint is loaded here and released after."""
    inputs = capture_inputs(model, step, source, prompt_set, settings)
    part = {"model": model, "step": step}
    if not force and (stored := stored_capture(store, source, model, step, prompt_set, settings)):
        return stored
    handle = checkpoint or CheckpointHandle(source, model, step, device=device, dtype=dtype)
    try:
        loaded = handle.get()
        result = capture(loaded.model, tokens, settings)
        if not store.exists(architecture_key(model)):  # what the regressors learn from, for any model
            store.write_json(architecture_key(model), loaded.architecture.as_dict())
    finally:
        if checkpoint is None:
            handle.release()
    for layer, table in result.samples.items():
        store.write_partition(ACTIVATIONS, {**part, "layer": layer}, table, inputs=inputs,
                              code_modules=CODE_MODULES, overwrite=True)
    if result.panel is not None:
        store.write_partition(PANEL, part, result.panel, inputs=inputs, code_modules=CODE_MODULES, overwrite=True)
    ratios = store.write_partition(RATIOS, part, layer_ratios(result.stats, settings), inputs=inputs,
                                   code_modules=CODE_MODULES, overwrite=True)
    stats = store.write_partition(STATS, part, result.stats, inputs=inputs, code_modules=CODE_MODULES,
                                  overwrite=True)
    return {"model": model, "step": step, "status": "captured", "stats_hash": stats.content_hash,
            "ratios_hash": ratios.content_hash, "rows": stats.rows}
