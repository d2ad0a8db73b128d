"""Language-model loss with one layer's output replaced: the CE-loss score of SAEs and ITDA.

CE-loss score (SAEBench, docs/science.md): (CE_zero − CE_reconstructed) / (CE_zero − CE_original),
where the layer's output (the residual stream after decoder block ``layer``) is replaced by its
reconstruction, or by zeros for the zero-ablation baseline. 1 = as good as the model, 0 = no
better than deleting the layer's output.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import numpy as np
import torch

from massive_activations.sources.model_parts import block_output, find_parts, input_device

Replace = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (hidden, token ids) -> new hidden
Recorded = list[list[Any]]  # per batch, each decoder block's output
RECORD_BYTES = 1 << 30  # the most a clean pass keeps of its blocks' outputs


@contextmanager
def replaced_layer(model: Any, layer: int, replace: Replace, tokens: list[torch.Tensor]) -> Iterator[None]:
    """Within the block, decoder layer ``layer`` outputs ``replace(h, ids)``; ``tokens[0]`` holds the batch's ids."""
    blocks = find_parts(model).blocks
    n_layers = len(blocks)
    if not 0 <= layer < n_layers:
        raise ValueError(f"layer {layer} is not a decoder layer of this model (0 … {n_layers - 1})")

    def hook(_module: torch.nn.Module, _inputs: Any, output: Any) -> Any:
        new = replace(block_output(output), tokens[0]).to(block_output(output).dtype)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    handle = blocks[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def lm_loss(model: Any, tokens: np.ndarray, batch_size: int = 8) -> float:
    """Mean next-token cross-entropy over all predicted positions of the (sequences, length) prompts."""
    return float(token_losses(model, tokens, batch_size).mean())


def token_losses(model: Any, tokens: np.ndarray, batch_size: int = 8,
                 on_batch: Callable[[int, torch.Tensor], None] | None = None) -> np.ndarray:
    """Next-token cross-entropy at every predicted position: (sequences, length − 1); position t
    predicts token t + 1, so a loss can be averaged over the positions of a token group.
    ``on_batch(index, ids)`` hears of each batch before its forward pass."""
    tokens = np.asarray(tokens, dtype=np.int64)
    if tokens.ndim != 2 or tokens.shape[1] < 2 or len(tokens) == 0:
        raise ValueError(f"lm_loss needs (sequences >= 1, length >= 2) tokens, got shape {tokens.shape}")
    device = input_device(model)
    out = np.empty((len(tokens), tokens.shape[1] - 1))
    with torch.inference_mode():
        for index, start in enumerate(range(0, len(tokens), batch_size)):
            ids = torch.as_tensor(tokens[start:start + batch_size], device=device)
            if on_batch is not None:
                on_batch(index, ids)
            logits = model(input_ids=ids, use_cache=False).logits.float()
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                     ids[:, 1:].reshape(-1), reduction="none")
            out[start:start + len(ids)] = loss.reshape(len(ids), -1).double().cpu().numpy()
    return out


def loss_with_layer(model: Any, tokens: np.ndarray, layer: int, replace: Replace, batch_size: int = 8) -> float:
    return float(token_losses_with_layer(model, tokens, layer, replace, batch_size).mean())


def token_losses_with_layer(model: Any, tokens: np.ndarray, layer: int, replace: Replace,
                            batch_size: int = 8, recorded: Recorded | None = None) -> np.ndarray:
    """:func:`token_losses` with decoder layer ``layer``'s output replaced. With ``recorded`` (the
    same tokens' clean pass, :func:`clean_pass`), blocks 0…``layer`` are not run: each returns what it
    returned there for the same batch, which is what running it would give."""
    current: list[torch.Tensor] = [torch.empty(0)]
    batch = [0]

    def on_batch(index: int, ids: torch.Tensor) -> None:
        batch[0], current[0] = index, ids

    with replaced_layer(model, layer, replace, current), \
            (replayed_blocks(model, layer, recorded, batch) if recorded is not None else nullcontext()):
        return token_losses(model, tokens, batch_size, on_batch)


def clean_pass(model: Any, tokens: np.ndarray, batch_size: int = 8) -> tuple[np.ndarray, Recorded | None]:
    """:func:`token_losses`, and each decoder block's output per batch, for splices to start from.

    Kept only for a model on the CPU whose outputs fit in ``RECORD_BYTES`` (None otherwise): a
    splice at layer L then runs the blocks after L alone, and on a GPU the passes are cheap anyway
    while its memory is not."""
    blocks = find_parts(model).blocks
    width = getattr(getattr(model, "config", None), "hidden_size", None)
    size = len(blocks) * np.asarray(tokens).size * (width or 0) * next(model.parameters()).element_size()
    if not width or size > RECORD_BYTES or any(p.device.type != "cpu" for p in model.parameters()):
        return token_losses(model, tokens, batch_size), None
    recorded: Recorded = []
    handles = [block.register_forward_hook(lambda _m, _i, output: recorded[-1].append(output)) for block in blocks]
    try:
        return token_losses(model, tokens, batch_size, lambda _index, _ids: recorded.append([])), recorded
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def replayed_blocks(model: Any, upto: int, recorded: Recorded, batch: list[int]) -> Iterator[None]:
    """Within: decoder blocks 0…``upto`` return their recorded output for batch ``batch[0]``, unrun."""
    blocks = list(find_parts(model).blocks)[:upto + 1]
    own = [block.__dict__.get("forward") for block in blocks]  # a wrapper accelerate may have set
    for i, block in enumerate(blocks):
        block.forward = lambda *_args, _i=i, **_kwargs: recorded[batch[0]][_i]
    try:
        yield
    finally:
        for block, forward in zip(blocks, own, strict=True):
            if forward is None:
                del block.forward
            else:
                block.forward = forward


def zero_ablation(h: torch.Tensor, _ids: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(h)


def ce_loss_score(ce_original: float, ce_reconstructed: float, ce_zero: float) -> float:
    gap = ce_zero - ce_original
    return float("nan") if abs(gap) < 1e-12 else (ce_zero - ce_reconstructed) / gap
