"""Per-layer massive-activation statistics, computed in forward hooks as the forward pass runs.

The measurement of Sun et al. (2024), used by arXiv 2508.03616: on the output of every decoder
layer (the hidden state after the residual additions), per sequence, the three largest |h| over
all tokens × dims and the median |h|; a layer's ratio is mean(top1) / mean(median) over sequences.

Each hook reduces its layer's output to a few numbers per sequence (and, when asked, a fixed set of
sampled vectors) and lets it go, so at most one layer's activations are alive at a time beyond what
the model itself keeps. Layer ``-1`` is the embedding output; layer ``L-1`` is the last block's raw
output, before the final LayerNorm (transformers' ``hidden_states[-1]`` is after it).

The forward pass runs the transformer trunk only (no LM head): the logits, the largest tensor
of a forward pass at Pythia's vocabulary, are never computed.

Median: exact, the lower median of the n = tokens × dims values (``torch.median``: the ⌈n/2⌉-th
smallest), as in the reference code.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from massive_activations.capture.panel import PanelRecorder
from massive_activations.errors import BadInputError
from massive_activations.sources.model_parts import ModelParts, block_output, find_parts, input_device

CODE_MODULES = ("massive_activations.capture.capture", "massive_activations.capture.panel",
                "massive_activations.sources.model_parts")
EMBEDDING_LAYER = -1
FLOAT16_MAX = float(torch.finfo(torch.float16).max)


@dataclass(frozen=True)
class CaptureSettings:
    batch_size: int = 10
    massive_abs: float = 100.0  # |h| above this counts as massive (absolute criterion)
    massive_rel: float = 1000.0  # … and above this multiple of the median (relative criterion)
    include_embedding: bool = True
    samples_per_layer: int = 0  # activation vectors kept per layer (0: none)
    sample_dtype: str = "float32"
    sample_seed: int = 0
    panel: bool = True  # attention sinks, super-weight candidates and kurtosis in the same pass (panel.py)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise BadInputError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.samples_per_layer < 0:
            raise BadInputError(f"samples_per_layer must be >= 0, got {self.samples_per_layer}")
        if self.sample_dtype not in ("float16", "float32"):
            raise BadInputError(f"sample_dtype must be float16 or float32, got {self.sample_dtype!r}")
        if self.massive_abs <= 0 or self.massive_rel <= 0:
            raise BadInputError("massive_abs and massive_rel must be positive")


@dataclass
class CaptureResult:
    stats: pa.Table  # one row per (layer, seq)
    samples: dict[int, pa.Table]  # layer -> sampled activation vectors with labels
    panel: pa.Table | None = None  # one row per layer (panel.py), when asked for


def sample_positions(n_sequences: int, length: int, m: int, seed: int) -> np.ndarray:
    """``m`` distinct (seq, pos) pairs, seeded: the same for every checkpoint of a model."""
    m = min(m, n_sequences * length)
    flat = np.random.default_rng(seed).choice(n_sequences * length, size=m, replace=False)
    flat.sort()
    return np.stack([flat // length, flat % length], axis=1)


def row_median_(x: torch.Tensor) -> torch.Tensor:
    """Exact lower median of each row of a 2-D tensor the caller owns: on CPU it is partitioned in
    place by numpy's introselect (about 4× faster than torch.median there, and no copy)."""
    if x.device.type != "cpu":
        return x.median(dim=1).values
    arr = x.numpy()
    k = (arr.shape[1] - 1) // 2
    arr.partition(k, axis=1)
    return torch.from_numpy(arr[:, k].copy())


def count_above(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Per row, how many values exceed that row's threshold."""
    if x.device.type != "cpu":
        return (x > threshold[:, None]).sum(dim=1)
    return torch.from_numpy(np.count_nonzero(x.numpy() > threshold.numpy()[:, None], axis=1))


def sequence_stats(h: torch.Tensor, settings: CaptureSettings) -> dict[str, torch.Tensor]:
    """Reduce one layer's output (batch, tokens, dims) to per-sequence statistics.

    ``a`` is this function's own |h| copy, so the medians partition it in place, last.
    """
    b, t, d = h.shape
    a = h.detach().abs().float().reshape(b, t * d)  # abs() always allocates: ``a`` is ours
    top = a.topk(3, dim=1)
    token_max = a.view(b, t, d).amax(dim=2)
    nan = torch.full((b,), float("nan"), device=a.device)
    out = {
        "top1": top.values[:, 0], "top2": top.values[:, 1], "top3": top.values[:, 2],
        "top1_pos": top.indices[:, 0] // d, "top1_dim": top.indices[:, 0] % d,
        "mean_abs": a.mean(dim=1),
        "top1_excl0": token_max[:, 1:].amax(dim=1) if t > 1 else nan,
        "n_above_abs": count_above(a, torch.full((b,), settings.massive_abs, device=a.device)),
        "median_excl0": row_median_(a.view(b, t, d)[:, 1:, :].reshape(b, -1)) if t > 1 else nan,
    }
    out["median"] = row_median_(a)
    out["n_above_rel"] = count_above(a, settings.massive_rel * out["median"].to(a.device))
    return {k: v.cpu() for k, v in out.items()}


def hooked_modules(parts: ModelParts, include_embedding: bool) -> list[tuple[int, torch.nn.Module]]:
    """(layer index, module) pairs whose outputs are measured."""
    modules = [(EMBEDDING_LAYER, parts.embedding)] if include_embedding else []
    return modules + list(enumerate(parts.blocks))


class _Recorder:
    def __init__(self, settings: CaptureSettings, fixed: np.ndarray):
        self.settings = settings
        self.fixed = fixed
        self.batch_ids: torch.Tensor | None = None
        self.batch_start = 0
        self.stats: dict[int, list[dict[str, torch.Tensor]]] = {}
        self.samples: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray, torch.Tensor]]] = {}

    def hook(self, layer: int):
        def fn(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
            h = block_output(output)
            stats = sequence_stats(h, self.settings)
            self.stats.setdefault(layer, []).append(stats)
            if self.settings.samples_per_layer:
                self._sample(layer, h, stats)
        return fn

    def _sample(self, layer: int, h: torch.Tensor, stats: dict[str, torch.Tensor]) -> None:
        b = h.shape[0]
        lo, hi = self.batch_start, self.batch_start + b
        rows = self.fixed[(self.fixed[:, 0] >= lo) & (self.fixed[:, 0] < hi)]
        top = np.stack([np.arange(lo, hi), stats["top1_pos"].numpy()], axis=1)
        fixed_set = {tuple(r) for r in rows.tolist()}
        top_set = {tuple(r) for r in top.tolist()}
        extra = np.array([r for r in top.tolist() if tuple(r) not in fixed_set], dtype=np.int64).reshape(-1, 2)
        allrows = np.concatenate([rows, extra]) if len(extra) else rows
        is_top1 = np.array([tuple(r) in top_set for r in allrows.tolist()], dtype=bool)
        seq_local = torch.as_tensor(allrows[:, 0] - lo)
        pos = torch.as_tensor(allrows[:, 1])
        vectors = h.detach()[seq_local, pos].float().cpu()
        self.samples.setdefault(layer, []).append((allrows[:, 0], allrows[:, 1], is_top1, vectors))


def capture(model: Any, tokens: np.ndarray, settings: CaptureSettings = CaptureSettings()) -> CaptureResult:
    """Run the prompts through the model once, measuring every hooked layer's output."""
    tokens = np.asarray(tokens, dtype=np.int64)
    if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise ValueError(f"tokens must be a non-empty (sequences, length) array, got shape {tokens.shape}")
    context = getattr(model.config, "max_position_embeddings", None)
    if context is not None and tokens.shape[1] > context:
        raise BadInputError(f"prompt length {tokens.shape[1]} exceeds the model's context of {context} tokens")
    vocab = model.config.vocab_size
    if tokens.min() < 0 or tokens.max() >= vocab:
        raise ValueError(f"token ids must lie in [0, {vocab}), got [{tokens.min()}, {tokens.max()}]")
    n, length = tokens.shape
    fixed = sample_positions(n, length, settings.samples_per_layer, settings.sample_seed)
    recorder = _Recorder(settings, fixed)
    device = input_device(model)
    parts = find_parts(model)  # the trunk is the transformer without its LM head: logits are not needed here
    modules = hooked_modules(parts, settings.include_embedding)
    panel = PanelRecorder(model, parts, modules) if settings.panel else None  # before any hook is attached
    handles = [m.register_forward_hook(recorder.hook(layer)) for layer, m in modules]
    try:
        with torch.inference_mode(), panel.attached() if panel else nullcontext():
            for start in range(0, n, settings.batch_size):
                batch = torch.as_tensor(tokens[start:start + settings.batch_size], device=device)
                recorder.batch_start = start
                parts.trunk(input_ids=batch, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return CaptureResult(stats=_stats_table(recorder, tokens, model.config.hidden_size),
                         samples=_sample_tables(recorder, tokens, settings),
                         panel=panel.table(tokens) if panel else None)


def _stats_table(recorder: _Recorder, tokens: np.ndarray, width: int) -> pa.Table:
    n, length = tokens.shape
    columns: dict[str, list[np.ndarray]] = {}
    for layer in sorted(recorder.stats):
        merged = {k: torch.cat([s[k] for s in recorder.stats[layer]]).numpy()
                  for k in recorder.stats[layer][0]}
        merged["layer"] = np.full(n, layer)
        merged["seq"] = np.arange(n)
        merged["top1_token"] = tokens[np.arange(n), merged["top1_pos"]]
        for k, v in merged.items():
            columns.setdefault(k, []).append(v)
    cat = {k: np.concatenate(v) for k, v in columns.items()}
    types = {"layer": pa.int32(), "seq": pa.int32(), "top1_pos": pa.int32(), "top1_dim": pa.int32(),
             "top1_token": pa.int64(), "n_above_abs": pa.int64(), "n_above_rel": pa.int64()}
    order = ["layer", "seq", "top1", "top2", "top3", "top1_pos", "top1_dim", "top1_token", "median",
             "mean_abs", "top1_excl0", "median_excl0", "n_above_abs", "n_above_rel"]
    table = pa.table({k: pa.array(cat[k], types.get(k, pa.float64())) for k in order})
    return table.append_column("n_values", pa.array(np.full(table.num_rows, length * width), pa.int64()))


def _sample_tables(recorder: _Recorder, tokens: np.ndarray, settings: CaptureSettings) -> dict[int, pa.Table]:
    out = {}
    for layer, parts in recorder.samples.items():
        seq = np.concatenate([p[0] for p in parts])
        pos = np.concatenate([p[1] for p in parts])
        is_top1 = np.concatenate([p[2] for p in parts])
        vectors = torch.cat([p[3] for p in parts]).numpy()
        dtype = settings.sample_dtype
        if dtype == "float16" and np.abs(vectors).max() > FLOAT16_MAX:
            dtype = "float32"  # a float16 sample would overflow to inf; keep the values exact instead
        values = pa.array(vectors.astype(dtype).reshape(-1), pa.float16() if dtype == "float16" else pa.float32())
        out[layer] = pa.table({
            "seq": pa.array(seq, pa.int32()), "pos": pa.array(pos, pa.int32()),
            "token_id": pa.array(tokens[seq, pos], pa.int64()), "is_top1": pa.array(is_top1),
            "vector": pa.FixedSizeListArray.from_arrays(values, vectors.shape[1]),
        })
    return out


def layer_ratios(stats: pa.Table, settings: CaptureSettings = CaptureSettings()) -> pa.Table:
    """Per layer: the paper's ratio mean(top1)/mean(median) over sequences, its spread, and the massive flag.

    The spread is that of the per-sequence ratios top1/median (std, min, max; their mean is
    ``ratio_seq_mean``). A sequence is massive at a layer when its top1 meets the criterion of Sun et
    al.: |h| > ``massive_abs`` and > ``massive_rel`` × that sequence's median (a value meets both
    exactly when top1 does); a layer is ``massive`` when at least half of its sequences are.
    """
    layers = np.asarray(stats.column("layer"))
    top1 = np.asarray(stats.column("top1"))
    median = np.asarray(stats.column("median"))
    top1_x = np.asarray(stats.column("top1_excl0"))
    median_x = np.asarray(stats.column("median_excl0"))
    massive_seq = (top1 > settings.massive_abs) & (top1 > settings.massive_rel * median)
    rows: dict[str, list[Any]] = {k: [] for k in (
        "layer", "ratio", "ratio_seq_mean", "ratio_std", "ratio_min", "ratio_max", "ratio_excl0", "top1",
        "top1_std", "median", "median_std", "n_sequences", "n_massive_sequences", "massive")}
    for layer in np.unique(layers):
        sel = layers == layer
        per_seq = top1[sel] / median[sel]
        n_massive = int(massive_seq[sel].sum())
        rows["layer"].append(int(layer))
        rows["ratio"].append(top1[sel].mean() / median[sel].mean())
        rows["ratio_seq_mean"].append(per_seq.mean())
        rows["ratio_std"].append(per_seq.std(ddof=1) if sel.sum() > 1 else 0.0)
        rows["ratio_min"].append(per_seq.min())
        rows["ratio_max"].append(per_seq.max())
        rows["ratio_excl0"].append(top1_x[sel].mean() / median_x[sel].mean())
        rows["top1"].append(top1[sel].mean())
        rows["top1_std"].append(top1[sel].std(ddof=1) if sel.sum() > 1 else 0.0)
        rows["median"].append(median[sel].mean())
        rows["median_std"].append(median[sel].std(ddof=1) if sel.sum() > 1 else 0.0)
        rows["n_sequences"].append(int(sel.sum()))
        rows["n_massive_sequences"].append(n_massive)
        rows["massive"].append(2 * n_massive >= sel.sum())
    types = {"layer": pa.int32(), "n_sequences": pa.int32(), "n_massive_sequences": pa.int32(),
             "massive": pa.bool_()}
    return pa.table({k: pa.array(v, types.get(k, pa.float64())) for k, v in rows.items()})
