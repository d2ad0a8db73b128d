"""Every token's hidden state at chosen layers of a loaded model: what the evaluations train and measure on.

The evaluation token set runs through the model in batches; each hooked layer's output (the
capture's layers: -1 the embedding, i ≥ 0 block i) is kept for every position of every sequence,
as float32 on the CPU. Layers are computed in groups that fit ``max_bytes`` (all in one pass for
small models, one layer a pass when a layer alone is large) and a group is dropped when the next
is computed, so memory stays at one group.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from massive_activations.capture.capture import hooked_modules
from massive_activations.sources.model_parts import block_output, find_parts, input_device


@dataclass
class LayerSamples:
    vectors: torch.Tensor  # (tokens, d_model) float32, ordered by (seq, pos)
    seq: torch.Tensor
    pos: torch.Tensor
    token_id: torch.Tensor

    def select(self, keep: torch.Tensor) -> LayerSamples:
        return LayerSamples(self.vectors[keep], self.seq[keep], self.pos[keep], self.token_id[keep])


class LayerActivations(Mapping[int, LayerSamples]):
    """layer → every token's hidden state there, computed on first access (see the module docstring)."""

    def __init__(self, model: Any, tokens: np.ndarray, layers: list[int], batch_size: int = 8,
                 max_bytes: int = 2**31):
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.ndim != 2 or tokens.size == 0:
            raise ValueError(f"tokens must be a non-empty (sequences, length) array, got shape {tokens.shape}")
        modules = dict(hooked_modules(find_parts(model), include_embedding=True))
        unknown = [layer for layer in layers if layer not in modules]
        if unknown:
            raise ValueError(f"layers {unknown} are not hooked layers of this model (-1 … {len(modules) - 2})")
        self.model, self.tokens, self.layers, self.batch_size = model, tokens, list(layers), batch_size
        self._modules = modules
        per_layer = tokens.size * model.config.hidden_size * 4
        self._group = max(1, max_bytes // per_layer)
        n, length = tokens.shape
        self._seq = torch.arange(n).repeat_interleave(length)
        self._pos = torch.arange(length).repeat(n)
        self._ids = torch.from_numpy(tokens.reshape(-1))
        self._cache: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[int]:
        return iter(self.layers)

    def __getitem__(self, layer: int) -> LayerSamples:
        if layer not in self.layers:
            raise KeyError(layer)
        if layer not in self._cache:
            start = self.layers.index(layer)
            self._cache = {}  # the previous group goes before the next is computed
            self._cache = self._run(self.layers[start:start + self._group])
        return LayerSamples(self._cache[layer], self._seq, self._pos, self._ids)

    def groups(self, layers: list[int] | None = None) -> list[list[int]]:
        """``layers`` (default: all) in the groups one pass computes together: what fits in memory at once."""
        chosen = [layer for layer in self.layers if layers is None or layer in layers]
        groups = ([layer for layer in self.layers[i:i + self._group] if layer in chosen]
                  for i in range(0, len(self.layers), self._group))
        return [group for group in groups if group]

    def subset(self, layers: list[int]) -> Mapping[int, LayerSamples]:
        """A view of some of the layers, sharing this one's passes."""
        return _Subset(self, [layer for layer in self.layers if layer in layers])

    def _run(self, layers: list[int]) -> dict[int, torch.Tensor]:
        n, length = self.tokens.shape
        d = self.model.config.hidden_size
        out = {layer: torch.empty(n * length, d, dtype=torch.float32) for layer in layers}
        rows = [0]

        def hook(layer: int):
            def fn(_module: torch.nn.Module, _inputs: Any, output: Any) -> None:
                h = block_output(output).detach()
                out[layer][rows[0]:rows[0] + h.shape[0] * h.shape[1]] = h.reshape(-1, d).float().cpu()
            return fn

        handles = [self._modules[layer].register_forward_hook(hook(layer)) for layer in layers]
        trunk, device = find_parts(self.model).trunk, input_device(self.model)
        try:
            with torch.inference_mode():
                for start in range(0, n, self.batch_size):
                    batch = torch.as_tensor(self.tokens[start:start + self.batch_size], device=device)
                    rows[0] = start * length
                    trunk(input_ids=batch, use_cache=False)
        finally:
            for handle in handles:
                handle.remove()
        return out


class _Subset(Mapping[int, LayerSamples]):
    def __init__(self, parent: LayerActivations, layers: list[int]):
        self.parent, self.layers = parent, layers

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[int]:
        return iter(self.layers)

    def __getitem__(self, layer: int) -> LayerSamples:
        if layer not in self.layers:
            raise KeyError(layer)
        return self.parent[layer]

    def groups(self) -> list[list[int]]:
        return self.parent.groups(self.layers)
