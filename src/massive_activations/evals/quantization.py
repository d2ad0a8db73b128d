"""Fake quantization of activations and weights, W8A8 on a whole model, and LLM.int8() outlier dims.

Absmax symmetric int-b (docs/science.md, "Evaluations"): q = round(x / s),
s = max|x| / (2^(b−1) − 1), with the max taken per tensor, per token (row) or per channel
(column); Q(x) = s·q. SQNR = 10·log10(‖x‖² / ‖x − Q(x)‖²).

W8A8 à la SmoothQuant (Xiao et al. 2023): every Linear (GPT-2: Conv1D) of the decoder layers gets int8 weights
per output channel, and int8 inputs per token or per tensor. The LM head and embeddings stay in
full precision, as in SmoothQuant's evaluation.

Outliers à la LLM.int8() (Dettmers et al. 2022): a hidden dim is an outlier dim when |x| ≥ 6 in
at least 6% of the positions of at least 25% of the layers, measured on the hidden states that
feed the layers' Linear projections (the inputs of the attention's and the MLP's first projection,
post-LayerNorm in pre-norm models; ``model_parts.INPUT_PROJECTIONS``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from massive_activations.errors import BadInputError
from massive_activations.sources.model_parts import find_parts, input_device

GRANULARITIES = ("tensor", "token", "channel")


def fake_quantize(x: torch.Tensor, bits: int, granularity: str) -> torch.Tensor:
    """Q(x) for a 2-D (tokens × channels) tensor; all-zero groups stay zero."""
    if bits < 2:
        raise BadInputError(f"bits must be >= 2, got {bits}")
    if granularity not in GRANULARITIES:
        raise BadInputError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if x.ndim != 2:
        raise ValueError(f"fake_quantize expects a 2-D tensor, got shape {tuple(x.shape)}")
    qmax = 2 ** (bits - 1) - 1
    a = x.abs()
    top = {"tensor": a.max(), "token": a.amax(dim=1, keepdim=True), "channel": a.amax(dim=0, keepdim=True)}[granularity]
    scale = torch.where(top > 0, top / qmax, torch.ones_like(top))
    return torch.clamp(torch.round(x / scale), -qmax, qmax) * scale


def sqnr_db(x: torch.Tensor, xq: torch.Tensor) -> float:
    noise = float(((x.double() - xq.double()) ** 2).sum())
    signal = float((x.double() ** 2).sum())
    return float("inf") if noise == 0 else 10 * np.log10(signal / noise)


def predicted_sqnr_db(x: torch.Tensor, bits: int, granularity: str) -> float:
    """The SQNR absmax quantization gives by construction: each group's step Δ = max|x|/qmax, rounding
    error uniform on ±Δ/2 (power Δ²/12 per value), so SQNR ≈ 10·log10(Σx² / Σ_g n_g·Δ_g²/12). Per tensor
    that is 10·log10(12·qmax²·mean(x²)/max|x|²): a function of max/RMS alone, which the massive-activation
    ratio largely is. ``sqnr_db`` minus this is what quantization does beyond that identity."""
    qmax = 2 ** (bits - 1) - 1
    a = x.double().abs()
    dim = {"tensor": None, "token": 1, "channel": 0}[granularity]
    top = a.max() if dim is None else a.amax(dim=dim)
    per_group = x.numel() if dim is None else x.shape[dim]
    noise = float(((top / qmax) ** 2 / 12).sum()) * per_group
    signal = float((x.double() ** 2).sum())
    return float("inf") if noise == 0 else 10 * np.log10(signal / noise)


def topk_error_share(x: torch.Tensor, xq: torch.Tensor, k: int) -> float:
    """Share of the squared quantization error sitting on the ``k`` largest |x| entries."""
    err = ((x.double() - xq.double()) ** 2).flatten()
    total = float(err.sum())
    if total == 0:
        return 0.0
    idx = x.abs().flatten().topk(min(k, x.numel())).indices
    return float(err[idx].sum()) / total


def activation_quantization(x: torch.Tensor, bits: tuple[int, ...] = (8, 4), top_k: int = 16,
                            groups: dict[str, torch.Tensor] | None = None) -> list[dict]:
    """SQNR and top-k error share at every bit width and granularity, for one layer's activations.

    ``groups``: named boolean masks over the rows (tokens), e.g. massive and other tokens: all rows
    are quantized together, as a deployment would, and each group's SQNR (``sqnr_db_<name>``, NaN for
    an empty group) says where the error lands."""
    rows = []
    for b in bits:
        for granularity in GRANULARITIES:
            xq = fake_quantize(x, b, granularity)
            row = {"bits": b, "granularity": granularity, "sqnr_db": sqnr_db(x, xq),
                   "sqnr_db_predicted": predicted_sqnr_db(x, b, granularity),
                   "topk_error_share": topk_error_share(x, xq, top_k)}
            row["sqnr_db_excess"] = row["sqnr_db"] - row["sqnr_db_predicted"]
            for name, rows_of in (groups or {}).items():
                row[f"sqnr_db_{name}"] = sqnr_db(x[rows_of], xq[rows_of]) if rows_of.any() else float("nan")
                row[f"n_{name}"] = int(rows_of.sum())
            rows.append(row)
    return rows


@contextmanager
def w8a8(model: Any, activations: str = "token") -> Iterator[None]:
    """Within the block, the decoder's Linears compute with int8 weights (per channel) and int8 inputs."""
    if activations not in ("token", "tensor"):
        raise BadInputError(f"W8A8 activations must be quantized per 'token' or per 'tensor', got {activations!r}")
    linears = find_parts(model).linears()
    saved = [m.weight.data.clone() for m in linears]

    def quantize_input(_module: torch.nn.Module, inputs: tuple) -> tuple:
        x = inputs[0]
        flat = x.reshape(-1, x.shape[-1]).float()
        return (fake_quantize(flat, 8, activations).reshape(x.shape).to(x.dtype), *inputs[1:])

    handles = []
    try:
        with torch.no_grad():
            for m in linears:
                # a Linear's weight is (out, in): per output channel = per row ("token" granularity of
                # the matrix); GPT-2's Conv1D keeps it as (in, out): per column
                per_output = "channel" if type(m).__name__ == "Conv1D" else "token"
                m.weight.data = fake_quantize(m.weight.data.float(), 8, per_output).to(m.weight.dtype)
                handles.append(m.register_forward_pre_hook(quantize_input))
        yield
    finally:
        for h in handles:
            h.remove()
        with torch.no_grad():
            for m, w in zip(linears, saved, strict=True):
                m.weight.data = w


def outlier_dims(model: Any, tokens: np.ndarray, threshold: float = 6.0, layer_share: float = 0.25,
                 position_share: float = 0.06, batch_size: int = 8) -> list[int]:
    """The hidden dims that are LLM.int8() outliers on these prompts."""
    parts = find_parts(model)
    layers = parts.blocks
    counts = torch.zeros(len(layers), 2, model.config.hidden_size, dtype=torch.float64)  # (layer, input, dim)

    def counter(i: int, j: int):
        def fn(_module: torch.nn.Module, inputs: tuple) -> None:
            x = inputs[0].detach().reshape(-1, inputs[0].shape[-1])
            counts[i, j] += (x.abs() >= threshold).double().sum(dim=0).cpu()
        return fn

    handles = [m.register_forward_pre_hook(counter(i, j)) for i in range(len(layers))
               for j, m in enumerate(parts.input_projections(i))]
    device = input_device(model)
    tokens = np.asarray(tokens, dtype=np.int64)
    try:
        with torch.inference_mode():
            for start in range(0, len(tokens), batch_size):
                parts.trunk(input_ids=torch.as_tensor(tokens[start:start + batch_size], device=device),
                            use_cache=False)
    finally:
        for h in handles:
            h.remove()
    in_layer = (counts / tokens.size >= position_share).any(dim=1)  # (layer, dim)
    return [int(d) for d in torch.nonzero(in_layer.double().mean(dim=0) >= layer_share).flatten()]
