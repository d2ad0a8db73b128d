"""The outlier panel: attention sinks, super-weight candidates and kurtosis, measured in the capture's pass.

Three phenomena linked to massive activations (docs/science.md, "The outlier panel"), recorded per
layer beside the ratio so a run can ask which emerges first:

- **Attention sinks** (Gu et al., arXiv 2410.10781). α₀ of a head is the mean attention weight its
  queries put on key position 0: every query comes after position 0, so this is also the paper's α
  of the first token, the average attention a token receives from the queries after it. A head is a
  sink when α₀ > ``SINK_EPSILON`` (ε = 0.3); ``sink_share`` is the share of a layer's heads that are,
  and the model's Sink₁^ε is its mean over layers.
- **Super weights** (Yu et al., arXiv 2411.07191), found data-free from spikes: per layer, the
  largest |input| and |output| of the MLP's down-projection over all tokens, with their channels.
  The candidate is the down-projection weight at (output channel, input channel) of those maxima. A
  spike is an *outlier* when the top channel's maximum is at least ``SPIKE_RATIO`` times the median
  channel's maximum.
- **Kurtosis**: the excess kurtosis of the hidden state over all tokens × dims (the metric of
  Outlier-Safe Pre-Training, arXiv 2506.19697), and of the per-channel RMS over tokens (He et al.,
  arXiv 2405.19279). Both are exact: per-batch central moments merged by Pébay's formulas in float64.

**How α₀ is exact without slow attention for the whole model.** The attention output still comes
from the model's own implementation (SDPA, flash, eager), unchanged. Each attention module gets a
view of its config naming a registered attention function that calls that implementation and,
beside it, runs scaled-dot-product attention once more on the same (rotated) queries and keys, the
same scaling and the same mask, with a value that is 1 at key 0 and 0 elsewhere: its output for
query i is Σ_j A_ij·[j = 0] = A_i0, the attention weight itself, in float32. The fused kernel never
keeps the score matrix, so the cost is about one more attention per layer and the memory that of
one layer's attention.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from massive_activations.sources.model_parts import ModelParts, UnsupportedArchitectureError, block_output

SINK_EPSILON = 0.3
SPIKE_RATIO = 20.0
_FUNCTION = "massive_activations_alpha0"


@dataclass
class Moments:
    """Count, mean and central moment sums M2..M4 of a stream of values, merged exactly (Pébay 2008)."""

    n: float = 0.0
    mean: float = 0.0
    m2: float = 0.0
    m3: float = 0.0
    m4: float = 0.0

    def add(self, values: torch.Tensor) -> tuple[torch.Tensor, float]:
        """Merge a batch in; returns its values minus their mean (a float64 copy, flat) and that mean,
        for a caller's own sums."""
        d = values.detach().to(torch.float64, copy=True).reshape(-1)
        nb = float(d.numel())
        if not nb:
            return d, 0.0
        mb = float(d.mean())
        d.sub_(mb)
        d2 = d * d
        b2, b3, b4 = float(d2.sum()), float(torch.dot(d2, d)), float(torch.dot(d2, d2))
        na, n = self.n, self.n + nb
        delta = mb - self.mean
        m4 = (self.m4 + b4 + delta ** 4 * na * nb * (na * na - na * nb + nb * nb) / n ** 3
              + 6 * delta ** 2 * (na * na * b2 + nb * nb * self.m2) / n ** 2
              + 4 * delta * (na * b3 - nb * self.m3) / n)
        m3 = self.m3 + b3 + delta ** 3 * na * nb * (na - nb) / n ** 2 + 3 * delta * (na * b2 - nb * self.m2) / n
        self.m2, self.m3, self.m4 = self.m2 + b2 + delta ** 2 * na * nb / n, m3, m4
        self.mean, self.n = self.mean + delta * nb / n, n
        return d, mb

    def excess_kurtosis(self) -> float:
        """n·M4 / M2² − 3 (Fisher, biased: scipy.stats.kurtosis' default); NaN for a constant stream."""
        return self.n * self.m4 / self.m2 ** 2 - 3.0 if self.m2 > 0 else float("nan")


@dataclass
class _Layer:
    moments: Moments = field(default_factory=Moments)
    channel_sq: torch.Tensor | None = None  # Σ h² per channel
    tokens: int = 0
    alpha0: torch.Tensor | None = None  # Σ over queries of α_{i,0}, per head
    queries: int = 0
    down_in: torch.Tensor | None = None  # max |input| per input channel of the down-projection
    down_out: torch.Tensor | None = None


def _running_max(old: torch.Tensor | None, new: torch.Tensor) -> torch.Tensor:
    return new if old is None else torch.maximum(old, new)


def _abs_max(x: torch.Tensor) -> torch.Tensor:
    """max |x| per channel (last dim) over everything else, without an |x| copy."""
    flat = x.reshape(-1, x.shape[-1])
    return torch.maximum(flat.amax(dim=0), -flat.amin(dim=0)).float().cpu()


def weight_at(projection: torch.nn.Module, out_channel: int, in_channel: int) -> float:
    """A weight by (output, input) channel: Linear stores (out, in), GPT-2's Conv1D (in, out). A weight
    offloaded by a device map is on the meta device outside its forward: read from its offload store."""
    w = projection.weight.detach()
    if w.device.type == "meta":
        w = projection._hf_hook.weights_map["weight"]
    return float(w[in_channel, out_channel] if type(projection).__name__ == "Conv1D" else w[out_channel, in_channel])


class _ConfigView:
    """The model's config as one attention module sees it, with the panel's attention function named."""

    def __init__(self, config: Any):
        self.__dict__["_config"] = config
        self.__dict__["_attn_implementation"] = _registered()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["_config"], name)


def _model_attention(module: torch.nn.Module, implementation: str):
    """The attention function the model itself would call (its own eager one when it names none)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    return ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager)


def _alpha0_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, **kwargs: Any):
    recorder, layer, implementation = module._ma_panel
    out = _model_attention(module, implementation)(module, query, key, value, attention_mask, **kwargs)
    recorder.attention(layer, query, key, attention_mask, kwargs.get("scaling"))
    return out


@lru_cache(maxsize=1)
def _registered() -> str:
    """The panel's attention function, registered with transformers on first use rather than at import:
    importing transformers' modeling code takes seconds that a command failing on a bad flag should not
    spend."""
    from transformers import AttentionInterface

    AttentionInterface.register(_FUNCTION, _alpha0_attention)
    return _FUNCTION


def alpha0(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, scaling: float | None) -> torch.Tensor:
    """α_{i,0} per (sequence, head, query): the softmax weight of key 0, as the attention output for a
    value that is 1 at key 0 and 0 elsewhere (SDPA's fused kernel: no score matrix is kept). GQA keys
    are repeated; no mask means causal; a 2-d padding mask (flash attention's) is made causal."""
    q, k = query.float(), key.float()
    if k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    lq, lk = q.shape[2], k.shape[2]
    if mask is not None and mask.ndim == 2:
        causal = torch.ones(lq, lk, dtype=torch.bool, device=q.device).tril(lk - lq)
        mask = causal[None, None] & mask.bool()[:, None, None, :]
    one = torch.zeros(q.shape[0], q.shape[1], lk, q.shape[3], dtype=q.dtype, device=q.device)  # the kernel's
    one[:, :, 0, 0] = 1.0  # fast path wants the value as wide as the query
    out = torch.nn.functional.scaled_dot_product_attention(
        q, k, one, attn_mask=None if mask is None else mask.to(q.device) if mask.dtype == torch.bool else mask.float(),
        is_causal=mask is None and lq > 1, scale=scaling)
    return out[..., 0]


class PanelRecorder:
    """Hooks a model for one capture pass and collects the panel (module docstring)."""

    def __init__(self, model: Any, parts: ModelParts, modules: list[tuple[int, torch.nn.Module]]):
        self.model, self.modules = model, modules
        # found before the pass: an architecture without them fails here, naming what is missing
        try:
            self.hooked = {layer: (parts.attention(layer), parts.down_projection(layer)) for layer, _ in modules
                           if layer >= 0}
        except UnsupportedArchitectureError as err:
            raise UnsupportedArchitectureError(f"{err} (capture without the outlier panel: --no-panel)") from err
        self.layers: dict[int, _Layer] = {layer: _Layer() for layer, _ in modules}
        self.position0: list[np.ndarray] = []

    def attention(self, layer: int, query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None,
                  scaling: float | None) -> None:
        a = alpha0(query, key, mask, scaling)
        state = self.layers[layer]
        total = a.sum(dim=(0, 2)).double().cpu()
        state.alpha0 = total if state.alpha0 is None else state.alpha0 + total
        state.queries += a.shape[0] * a.shape[2]

    def _hidden(self, layer: int):
        def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
            h = block_output(output).detach()
            state = self.layers[layer]
            centred, m = state.moments.add(h)
            centred = centred.view(-1, h.shape[-1])  # h − m, m this batch's mean
            # Σ h² per channel = Σ (h − m)² + 2m·Σ (h − m) + tokens·m², all in float64
            sq = ((centred * centred).sum(dim=0) + 2 * m * centred.sum(dim=0) + len(centred) * m * m).cpu()
            state.channel_sq = sq if state.channel_sq is None else state.channel_sq + sq
            state.tokens += len(centred)
        return hook

    def _down(self, layer: int):
        def hook(_module: torch.nn.Module, inputs: Any, output: Any) -> None:
            state = self.layers[layer]
            x, y = inputs[0].detach(), block_output(output).detach()
            state.down_in = _running_max(state.down_in, _abs_max(x))
            state.down_out = _running_max(state.down_out, _abs_max(y))
        return hook

    @contextmanager
    def attached(self) -> Iterator[PanelRecorder]:
        implementation = self.model.config._attn_implementation or "eager"
        handles, views = [], []
        try:
            for layer, module in self.modules:
                handles.append(module.register_forward_hook(self._hidden(layer)))
                if layer < 0:
                    continue
                attention, down = self.hooked[layer]
                handles.append(down.register_forward_hook(self._down(layer)))
                attention._ma_panel = (self, layer, implementation)
                views.append((attention, attention.config))
                attention.config = _ConfigView(attention.config)
            yield self
        finally:
            for handle in handles:
                handle.remove()
            for attention, config in views:
                attention.config = config
                del attention._ma_panel

    def table(self, tokens: np.ndarray) -> pa.Table:
        """One row per layer (module docstring); the embedding's row has kurtosis only."""
        ids, counts = np.unique(tokens[:, 0], return_counts=True)
        rows: dict[str, list[Any]] = {k: [] for k in (
            "layer", "kurtosis", "rms_kurtosis", "alpha0", "alpha0_max", "alpha0_mean", "sink_share",
            "down_in_max", "down_in_channel", "down_in_ratio", "down_in_outlier", "down_out_max",
            "down_out_channel", "down_out_ratio", "down_out_outlier", "super_weight")}
        for layer in sorted(self.layers):
            state = self.layers[layer]
            rms = Moments()
            rms.add(torch.sqrt(state.channel_sq / state.tokens))
            rows["layer"].append(layer)
            rows["kurtosis"].append(state.moments.excess_kurtosis())
            rows["rms_kurtosis"].append(rms.excess_kurtosis())
            if layer < 0 or state.alpha0 is None or state.down_in is None:
                for key in list(rows)[3:]:
                    rows[key].append(None)
                continue
            heads = (state.alpha0 / state.queries).tolist()
            rows["alpha0"].append(heads)
            rows["alpha0_max"].append(max(heads))
            rows["alpha0_mean"].append(float(np.mean(heads)))
            rows["sink_share"].append(float(np.mean([a > SINK_EPSILON for a in heads])))
            channels = {}
            for side, maxima in (("in", state.down_in), ("out", state.down_out)):
                channel = int(maxima.argmax())
                median = float(maxima.median())
                ratio = float(maxima[channel]) / median if median > 0 else float("inf")
                rows[f"down_{side}_max"].append(float(maxima[channel]))
                rows[f"down_{side}_channel"].append(channel)
                rows[f"down_{side}_ratio"].append(ratio)
                rows[f"down_{side}_outlier"].append(ratio >= SPIKE_RATIO)
                channels[side] = channel
            rows["super_weight"].append(weight_at(self.hooked[layer][1], channels["out"],
                                                  channels["in"]))
        types = {"layer": pa.int32(), "alpha0": pa.list_(pa.float64()), "down_in_channel": pa.int32(),
                 "down_out_channel": pa.int32(), "down_in_outlier": pa.bool_(), "down_out_outlier": pa.bool_()}
        table = pa.table({k: pa.array(v, types.get(k, pa.float64())) for k, v in rows.items()})
        table = table.append_column("position0_id", pa.array(np.full(table.num_rows, ids[counts.argmax()]), pa.int64()))
        return table.append_column("position0_distinct", pa.array(np.full(table.num_rows, len(ids)), pa.int32()))
