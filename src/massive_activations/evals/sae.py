"""Sparse autoencoders on activation samples: TopK (the current default) and ReLU + L1 (the baseline).

TopK (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"):
    z = TopK(W_enc (x − b_dec) + b_enc),  x̂ = W_dec z + b_dec,
with unit-norm decoder columns (renormalised after every step) and b_dec initialised to the data
mean. AuxK, on by default for TopK: the residual x − x̂ is reconstructed from the k_aux largest
pre-activations of the dead latents (none fired over the last ``dead_tokens`` training tokens),
normalised by the residual's energy and added to the loss with weight 1/32.

Training (``train_sae``): Adam on seeded minibatches drawn without replacement, ``epochs`` passes
over the training tokens (or ``steps`` optimizer steps when given), the learning rate warmed up
linearly over the first 5% of steps and then decayed by a cosine to 10%. The loss is in units of
the data's variance, so one learning rate suits activations of any scale. A latent is dead when it
did not fire over the last ``dead_tokens`` (≥ 10⁴ by default) training tokens, or over all of them
when training saw fewer; ``SparseAutoencoder.dead_fraction`` keeps that share.

Saved in the SAELens layout (``save_sae_lens``): ``sae_weights.safetensors`` with W_enc [d_in,
d_sae], W_dec [d_sae, d_in], b_enc, b_dec, and ``cfg.json`` (architecture ``topk`` or ``standard``,
d_in, d_sae, k, hook_name, model_name, dtype, device, apply_b_dec_to_input, normalize_activations),
which ``sae_lens.SAE.load_from_disk`` reads.

ReLU + L1 (Bricken et al. 2023): z = ReLU(W_enc (x − b_dec) + b_enc), loss = ‖x − x̂‖² + l1·Σᵢ zᵢ‖W_dec,ᵢ‖.

Both kinds train on inputs scaled to E‖x − E[x]‖² = d_model (``input_scale``), the factor then folded into
the biases, so an SAE reads raw activations and its codes, L0 and explained variance do not depend on
the activations' scale (×100 changes neither by more than float rounding; tests/test_sae.py).

Metrics follow SAEBench (docs/science.md, "Evaluations"): L0 = active latents per token; explained
variance = 1 − E‖x − x̂‖² / E‖x − E[x]‖²; FVU = 1 − explained variance; MSE per element; mean
cosine similarity of x and x̂; dead fraction = latents that never fire over the evaluation tokens.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from massive_activations.errors import BadInputError

AUXK_WEIGHT = 1 / 32


@dataclass(frozen=True)
class SAESettings:
    kind: str = "topk"  # topk | relu
    expansion: int = 4  # latents = expansion × d_model
    k: int = 8  # TopK: active latents per token
    l1: float = 1e-3  # ReLU: sparsity penalty
    aux_k: int | None = None  # AuxK latents; None: 4k (at most half the latents) for TopK, off for ReLU; 0: off
    dead_tokens: int = 10_000  # a latent that fired on none of the last this many training tokens is dead
    epochs: int = 10  # passes over the training tokens
    steps: int | None = None  # optimizer steps instead of epochs
    batch_size: int = 1024
    lr: float = 3e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("topk", "relu"):
            raise BadInputError(f"SAE kind must be 'topk' or 'relu', got {self.kind!r}")
        for name in ("expansion", "k", "epochs", "batch_size", "dead_tokens"):
            if getattr(self, name) < 1:
                raise BadInputError(f"SAE {name} must be >= 1, got {getattr(self, name)}")
        if self.steps is not None and self.steps < 1:
            raise BadInputError(f"SAE steps must be >= 1 (or None: epochs), got {self.steps}")
        if self.aux_k is not None and self.aux_k < 0:
            raise BadInputError(f"SAE aux_k must be >= 0 (or None: the default), got {self.aux_k}")
        if self.lr <= 0 or self.l1 < 0:
            raise BadInputError(f"SAE lr must be > 0 and l1 >= 0, got lr={self.lr}, l1={self.l1}")

    def aux_latents(self, n_latents: int) -> int:
        if self.aux_k is not None:
            return self.aux_k
        return min(4 * self.k, n_latents // 2) if self.kind == "topk" else 0


class SparseAutoencoder(nn.Module):
    def __init__(self, d_model: int, settings: SAESettings, mean: torch.Tensor | None = None):
        super().__init__()
        n = settings.expansion * d_model
        if settings.kind == "topk" and settings.k > n:
            raise BadInputError(f"SAE k={settings.k} exceeds the {n} latents "
                                f"(expansion {settings.expansion} × {d_model})")
        self.settings = settings
        gen = torch.Generator().manual_seed(settings.seed)
        w_dec = torch.randn(d_model, n, generator=gen)
        w_dec /= w_dec.norm(dim=0, keepdim=True)
        self.W_dec = nn.Parameter(w_dec)
        self.W_enc = nn.Parameter(w_dec.T.clone())
        self.b_enc = nn.Parameter(torch.zeros(n))
        self.b_dec = nn.Parameter(mean.clone().float() if mean is not None else torch.zeros(d_model))
        self.dead_fraction = float("nan")  # set by training
        self.tokens_seen = 0

    @property
    def n_latents(self) -> int:
        return self.W_dec.shape[1]

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.b_dec) @ self.W_enc.T + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.pre_activations(x)
        if self.settings.kind == "relu":
            return torch.relu(pre)
        top = pre.topk(self.settings.k, dim=-1)
        return torch.zeros_like(pre).scatter_(-1, top.indices, torch.relu(top.values))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.W_dec.T + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


def lr_factor(step: int, total: int) -> float:
    """Linear warmup over the first 5% of steps, then a cosine decay to 10% at the last step."""
    warmup = max(1, round(0.05 * total))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def auxk_loss(pre: torch.Tensor, dead: torch.Tensor, residual: torch.Tensor, w_dec: torch.Tensor,
              aux_k: int, valid: torch.Tensor | None = None) -> torch.Tensor:
    """How badly the ``aux_k`` largest pre-activations of the dead latents reconstruct the main
    reconstruction's residual, relative to the residual's energy: its gradient raises a dead latent
    whose decoder direction would explain what the live ones miss.

    One SAE: pre (tokens, n), dead (n,), residual (tokens, d), w_dec (d, n); or a stack of them with
    a leading axis on each, giving one loss per SAE, and ``valid`` (SAEs, tokens) marking the rows
    of each minibatch that count (a short batch padded to the others' size)."""
    if pre.ndim == 2:
        return auxk_loss(pre[None], dead[None], residual[None], w_dec[None], aux_k)[0]
    values, indices = _dead_top(pre, dead, aux_k)
    return _auxk_error(torch.relu(values), indices, residual, w_dec, valid)


def _dead_top(pre: torch.Tensor, dead: torch.Tensor, aux_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, indices) of the ``aux_k`` largest pre-activations among each SAE's dead latents (a
    −inf pick adds 0). The top-k runs over the dead latents' columns only (padded to the SAE with
    the most), not over all latents: few are dead, and this runs on most steps."""
    width = max(int(dead.sum(dim=1).max()), aux_k)
    columns = torch.argsort((~dead).to(torch.int8), dim=1, stable=True)[:, :width]  # (V, width): dead first
    candidates = pre.gather(2, columns[:, None, :].expand(-1, pre.shape[1], -1))
    candidates = candidates.masked_fill(~dead.gather(1, columns)[:, None, :], float("-inf"))
    top = candidates.topk(aux_k, dim=-1)
    return top.values, columns[:, None, :].expand(-1, pre.shape[1], -1).gather(2, top.indices)


def _auxk_error(codes: torch.Tensor, indices: torch.Tensor, residual: torch.Tensor, w_dec: torch.Tensor,
                valid: torch.Tensor | None) -> torch.Tensor:
    fit = decode_sparse(codes, indices, w_dec)
    if valid is not None:
        residual, fit = residual * valid[:, :, None], fit * valid[:, :, None]
    error = ((residual - fit) ** 2).sum(dim=2).sum(dim=1)
    return error / (residual ** 2).sum(dim=2).sum(dim=1).clamp_min(1e-12)


def decode_sparse(codes: torch.Tensor, indices: torch.Tensor, w_dec: torch.Tensor) -> torch.Tensor:
    """Σᵢ codes[..., i] · W_dec[:, indices[..., i]] for stacked SAEs: codes and indices (V, B, k),
    w_dec (V, d, n), out (V, B, d). The same sum as the dense ``z @ W_decᵀ`` with z zero elsewhere,
    in k terms instead of n (a bag sum over the decoder columns, differentiable in both)."""
    n_sae, d, n = w_dec.shape
    k = indices.shape[-1]
    table = w_dec.transpose(1, 2).reshape(n_sae * n, d)
    flat = (indices + n * torch.arange(n_sae, device=indices.device).view(-1, 1, 1)).reshape(-1, k)
    out = torch.nn.functional.embedding_bag(flat, table, per_sample_weights=codes.reshape(-1, k), mode="sum")
    return out.view(n_sae, -1, d)


class _Picked(torch.autograd.Function):
    """Chosen entries (``indices``, distinct per token) of the stacked pre-activations
    (x − b_dec) W_encᵀ + b_enc, already computed without a graph: backward sends their gradient to
    W_enc, b_enc and b_dec, the gradient of every other entry being zero. No graph is kept of the
    dense product, the top-k or the (tokens × latents) codes."""

    @staticmethod
    def forward(ctx: Any, values: torch.Tensor, indices: torch.Tensor, batch: torch.Tensor, w_enc: torch.Tensor,
                b_enc: torch.Tensor, b_dec: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(indices, batch, w_enc, b_dec)
        return values.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple:
        indices, batch, w_enc, b_dec = ctx.saved_tensors
        n_sae, n, d = w_enc.shape
        # dense (V, B, n): at d = 64 one batched product beats k·d scattered rows per token
        full = torch.zeros(n_sae, batch.shape[1], n, dtype=grad.dtype, device=grad.device).scatter_(2, indices, grad)
        grad_b_enc = full.sum(dim=1)
        grad_w_enc = torch.bmm(full.transpose(1, 2), batch - b_dec[:, None, :])
        grad_b_dec = -torch.bmm(grad_b_enc[:, None, :], w_enc)[:, 0, :]
        return None, None, None, grad_w_enc, grad_b_enc, grad_b_dec


def train_sae(x: torch.Tensor, settings: SAESettings, device: str | torch.device = "cpu") -> SparseAutoencoder:
    """Train on rows of ``x`` (tokens × d_model), seeded (module docstring). ``x`` stays where it is;
    the SAE and each minibatch go to ``device`` (the model's GPU), and the SAE comes back on the CPU."""
    return train_saes([x], [settings], device)[0]


def _same_but_kind(settings: list[SAESettings]) -> None:
    first = {**asdict(settings[0]), "kind": None}
    for other in settings[1:]:
        if {**asdict(other), "kind": None} != first:
            raise ValueError(f"SAEs trained together may differ in kind only: {settings[0]} vs {other}")


def _schedule(n: int, batch_size: int, total: int, seed: int) -> torch.Tensor:
    """Row indices (total, batch_size) of each step's minibatch of ``n`` rows, −1 where a step's batch
    (the last of an epoch) is short: epochs of one seeded permutation each, as one SAE alone draws them."""
    gen = torch.Generator().manual_seed(seed)
    per_epoch = math.ceil(n / batch_size)
    out = torch.full((total, batch_size), -1, dtype=torch.long)
    order = torch.randperm(n, generator=gen)
    for step in range(total):
        if step % per_epoch == 0 and step:
            order = torch.randperm(n, generator=gen)
        rows = order[(step % per_epoch) * batch_size:(step % per_epoch + 1) * batch_size]
        out[step, :len(rows)] = rows
    return out


class _Adam:
    """torch.optim.Adam's update (betas 0.9/0.999, eps 1e-8) on stacked parameters, with a learning
    rate per SAE (its own warmup and decay) and only the SAEs still training stepping."""

    def __init__(self, params: list[torch.Tensor]):
        self.params = params
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    @torch.no_grad()
    def step(self, lr: torch.Tensor, t: int, active: torch.Tensor | None) -> None:
        """``active``: which SAEs step (None: all)."""
        b1, b2 = 0.9, 0.999
        for p, m, v in zip(self.params, self.m, self.v, strict=True):
            shape = (-1,) + (1,) * (p.ndim - 1)
            if active is None:
                m.lerp_(p.grad, 1 - b1)
                v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
                p.sub_((lr / (1 - b1 ** t)).view(shape) * m / (v.sqrt() / math.sqrt(1 - b2 ** t)).add_(1e-8))
                continue
            keep = active.view(shape)
            m.copy_(torch.where(keep, m.lerp(p.grad, 1 - b1), m))
            v.copy_(torch.where(keep, (v * b2).addcmul_(p.grad, p.grad, value=1 - b2), v))
            denom = (v.sqrt() / math.sqrt(1 - b2 ** t)).add_(1e-8)
            p.sub_((lr / (1 - b1 ** t)).view(shape) * m / denom * keep)


def train_saes(xs: list[torch.Tensor], settings: list[SAESettings],
               device: str | torch.device = "cpu") -> list[SparseAutoencoder]:
    """Train one SAE per (rows, settings) pair, those of one kind at once as stacked tensors with one
    update for all: the same SAEs as training each alone (the same initialisation, minibatches,
    learning-rate schedule, AuxK and Adam update; equal within float32 rounding, tests/test_sae.py).
    Stacked, the many small SAEs of a checkpoint (kinds × masking × layers) make a few large
    operations instead of many small ones. A TopK stack keeps no graph of its dense codes: only the k
    chosen pre-activations of a token carry a gradient (``_Picked``) and the decoder sums k columns
    (``decode_sparse``), 1.3× faster a step at d = 64 (bench/RESULTS.md). The settings may differ in
    ``kind`` only."""
    if len(xs) != len(settings) or not xs:
        raise ValueError(f"train_saes needs one settings per data matrix, got {len(xs)} and {len(settings)}")
    _same_but_kind(settings)
    d = xs[0].shape[1] if xs[0].ndim == 2 else -1
    for x in xs:
        if x.ndim != 2 or len(x) < 2 or x.shape[1] != d:
            raise ValueError(f"SAE training needs (tokens >= 2, d_model) matrices of one width, got shape "
                             f"{tuple(x.shape)}")
    torch.manual_seed(settings[0].seed)
    factors = [input_scale(x.float()) for x in xs]
    out: list[SparseAutoencoder | None] = [None] * len(xs)
    for kind in ("topk", "relu"):
        chosen = [i for i, s in enumerate(settings) if s.kind == kind]
        if chosen:
            trained = _train_stacked([xs[i].float() * factors[i] for i in chosen], settings[chosen[0]], device)
            for i, sae in zip(chosen, trained, strict=True):
                out[i] = _fold_scale(sae, factors[i])
    return out  # type: ignore[return-value]


def input_scale(x: torch.Tensor) -> float:
    """The factor that brings training data to E‖x − E[x]‖² = d_model before training: the same SAE,
    in units of the data, whatever the activations' scale (the L1 penalty and Adam's steps on the
    biases are not scale-free), so checkpoints whose activations differ 100× are comparable."""
    energy = float(((x - x.mean(dim=0)) ** 2).sum(dim=1).mean())
    return math.sqrt(x.shape[1] / energy) if energy > 0 else 1.0


def _fold_scale(sae: SparseAutoencoder, factor: float) -> SparseAutoencoder:
    """An SAE trained on ``factor``·x as one that reads and writes x itself: both biases divided by the
    factor, so the codes come out in the data's own units (divided by it too), the same latents fire
    and the decoder keeps unit-norm columns."""
    with torch.no_grad():
        sae.b_enc.div_(factor)
        sae.b_dec.div_(factor)
    return sae


def _train_stacked(xs: list[torch.Tensor], settings: SAESettings,
                   device: str | torch.device) -> list[SparseAutoencoder]:
    """``train_saes`` for SAEs of one kind: parameters stacked on a leading axis, minibatches padded
    to one size (a short last batch of an epoch weighs only its own rows)."""
    d = xs[0].shape[1]
    saes = [SparseAutoencoder(d, settings, mean=x.mean(dim=0)) for x in xs]
    n_sae, n = len(saes), saes[0].n_latents
    w_dec = torch.stack([s.W_dec.detach() for s in saes]).to(device).requires_grad_()  # (V, d, n)
    w_enc = torch.stack([s.W_enc.detach() for s in saes]).to(device).requires_grad_()  # (V, n, d)
    b_enc = torch.stack([s.b_enc.detach() for s in saes]).to(device).requires_grad_()  # (V, n)
    b_dec = torch.stack([s.b_dec.detach() for s in saes]).to(device).requires_grad_()  # (V, d)
    sizes = [len(x) for x in xs]
    batch_size = min(settings.batch_size, max(sizes))
    totals = [settings.steps or settings.epochs * math.ceil(size / min(settings.batch_size, size)) for size in sizes]
    rows = torch.full((max(totals), n_sae, batch_size), -1, dtype=torch.long)
    for i, size in enumerate(sizes):
        own = _schedule(size, min(settings.batch_size, size), totals[i], settings.seed)
        rows[:totals[i], i, :own.shape[1]] = own
    short = (rows < 0).any(dim=2).any(dim=1)  # steps where some SAE's batch is short or it is done
    offsets = torch.tensor([0, *np.cumsum(sizes)[:-1].tolist()]).view(1, -1, 1)
    rows = torch.where(rows >= 0, rows + offsets, -1)
    data = torch.cat(xs)
    scale = torch.stack([((x - x.mean(dim=0)) ** 2).sum(dim=1).mean().clamp_min(1e-12) for x in xs]).to(device)
    aux_k = settings.aux_latents(n)
    topk = settings.kind == "topk"
    since_fired = torch.zeros(n_sae, n, dtype=torch.long, device=device)
    seen = torch.zeros(n_sae, dtype=torch.long)
    adam = _Adam([w_dec, w_enc, b_enc, b_dec])
    for step in range(max(totals)):
        active = torch.tensor([step < total for total in totals])
        index = rows[step]
        padded = bool(short[step])
        valid = (index >= 0).to(device)  # (V, B)
        count = valid.sum(dim=1)
        batch = data[index.clamp_min(0)].to(device)  # (V, B, d)
        if topk:  # only k latents a token: their pre-activations carry the gradient (_Picked), sparse decode
            with torch.no_grad():
                pre = torch.baddbmm(b_enc[:, None, :], batch - b_dec[:, None, :], w_enc.transpose(1, 2))
                top = pre.topk(settings.k, dim=-1)
            codes = torch.relu(_Picked.apply(top.values, top.indices, batch, w_enc, b_enc, b_dec))
            x_hat = decode_sparse(codes, top.indices, w_dec) + b_dec[:, None, :]
        else:
            pre = torch.baddbmm(b_enc[:, None, :], batch - b_dec[:, None, :], w_enc.transpose(1, 2))
            z = torch.relu(pre)
            x_hat = torch.baddbmm(b_dec[:, None, :], z, w_dec.transpose(1, 2))
        residual = batch - x_hat
        err = (residual ** 2).sum(dim=2)  # (V, B)
        if padded:
            err = err * valid
        loss = err.sum(dim=1) / count.clamp_min(1) / scale
        if not topk and settings.l1:
            penalty = (z * w_dec.norm(dim=1)[:, None, :]).sum(dim=2)
            loss = loss + settings.l1 * (penalty * valid if padded else penalty).sum(dim=1) / count.clamp_min(1)
        with torch.no_grad():
            if topk:
                fires = (codes > 0) & valid[:, :, None] if padded else codes > 0
                fired = torch.zeros(n_sae, n, device=device).scatter_add_(
                    1, top.indices.reshape(n_sae, -1), fires.reshape(n_sae, -1).float()) > 0  # (V, n)
            else:
                fired_rows = z > 0
                if padded:
                    fired_rows &= valid[:, :, None]
                fired = fired_rows.any(dim=1)  # (V, n)
            advance = torch.where(active, count.cpu(), 0)
            since_fired += advance.to(device)[:, None]
            since_fired.masked_fill_(fired, 0)
            seen += advance
            dead = since_fired >= settings.dead_tokens
            has_dead = dead.any(dim=1)
        if aux_k and bool(has_dead.any()):
            if topk:
                with torch.no_grad():
                    values, indices = _dead_top(pre, dead, aux_k)
                aux_codes = torch.relu(_Picked.apply(values, indices, batch, w_enc, b_enc, b_dec))
                aux = _auxk_error(aux_codes, indices, residual.detach(), w_dec, valid if padded else None)
            else:
                aux = auxk_loss(pre, dead, residual.detach(), w_dec, aux_k, valid if padded else None)
            loss = loss + AUXK_WEIGHT * torch.where(has_dead, aux, 0.0)
        for p in adam.params:
            p.grad = None
        (loss * active.to(device)).sum().backward() if padded else loss.sum().backward()
        lr = torch.tensor([settings.lr * lr_factor(step, total) for total in totals], device=device)
        adam.step(lr, step + 1, active.to(device) if padded else None)
        with torch.no_grad():
            w_dec /= w_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
    with torch.no_grad():
        for i, sae in enumerate(saes):
            sae.W_dec.copy_(w_dec[i].cpu())
            sae.W_enc.copy_(w_enc[i].cpu())
            sae.b_enc.copy_(b_enc[i].cpu())
            sae.b_dec.copy_(b_dec[i].cpu())
            sae.tokens_seen = int(seen[i])
            window = min(settings.dead_tokens, sae.tokens_seen)
            sae.dead_fraction = float((since_fired[i] >= window).double().mean())
    return [sae.eval() for sae in saes]


def save_sae_lens(sae: SparseAutoencoder, folder: str | Path, hook_name: str, model_name: str,
                  metadata: dict | None = None) -> Path:
    """The SAE in SAELens' layout (module docstring); ``metadata`` (training facts) goes into cfg.json too."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        tensors = {"W_enc": sae.W_enc.T.contiguous(), "W_dec": sae.W_dec.T.contiguous(),
                   "b_enc": sae.b_enc.clone(), "b_dec": sae.b_dec.clone()}
    save_file({k: v.float().cpu() for k, v in tensors.items()}, str(folder / "sae_weights.safetensors"))
    cfg = {"architecture": "topk" if sae.settings.kind == "topk" else "standard",
           "d_in": sae.W_dec.shape[0], "d_sae": sae.n_latents, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": True, "normalize_activations": "none", "reshape_activations": "none",
           "hook_name": hook_name, "model_name": model_name,
           **({"k": sae.settings.k} if sae.settings.kind == "topk" else {}),
           "metadata": {"settings": asdict(sae.settings), "dead_fraction": sae.dead_fraction,
                        "tokens_seen": sae.tokens_seen, **(metadata or {})}}
    (folder / "cfg.json").write_text(json.dumps(cfg, indent=1, sort_keys=True))
    return folder


def load_sae_lens(folder: str | Path) -> SparseAutoencoder:
    """An SAE saved by :func:`save_sae_lens` (or a SAELens topk/standard SAE without normalisation)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg = json.loads((folder / "cfg.json").read_text())
    if cfg.get("architecture") not in ("topk", "standard") or cfg.get("normalize_activations", "none") != "none":
        raise BadInputError(f"{folder}: architecture {cfg.get('architecture')!r} with normalisation "
                         f"{cfg.get('normalize_activations')!r} is not one this project reads (topk or standard, none)")
    weights = load_file(str(folder / "sae_weights.safetensors"))
    d_in, d_sae = cfg["d_in"], cfg["d_sae"]
    if d_sae % d_in:
        raise BadInputError(f"{folder}: d_sae={d_sae} is not a multiple of d_in={d_in}")
    known = cfg.get("metadata", {}).get("settings", {})
    settings = SAESettings(**{**known, "kind": "topk" if cfg["architecture"] == "topk" else "relu",
                              "expansion": d_sae // d_in, "k": cfg.get("k", known.get("k", 8))})
    sae = SparseAutoencoder(d_in, settings)
    with torch.no_grad():
        sae.W_enc.copy_(weights["W_enc"].T)
        sae.W_dec.copy_(weights["W_dec"].T)
        sae.b_enc.copy_(weights["b_enc"])
        sae.b_dec.copy_(weights["b_dec"])
    sae.dead_fraction = float(cfg.get("metadata", {}).get("dead_fraction", float("nan")))
    sae.tokens_seen = int(cfg.get("metadata", {}).get("tokens_seen", 0))
    return sae.eval()


def reconstruction_metrics(x: torch.Tensor, x_hat: torch.Tensor, codes: torch.Tensor | None = None) -> dict:
    """SAEBench reconstruction metrics of ``x_hat`` against ``x`` (tokens × d_model), and sparsity of ``codes``."""
    x, x_hat = x.double(), x_hat.double()
    err = ((x - x_hat) ** 2).sum(dim=1).mean()
    var = ((x - x.mean(dim=0)) ** 2).sum(dim=1).mean()
    ev = float(1 - err / var) if var > 0 else float("nan")
    cos = torch.nn.functional.cosine_similarity(x, x_hat, dim=1, eps=1e-12)
    out = {"explained_variance": ev, "fvu": 1 - ev, "mse": float(((x - x_hat) ** 2).mean()),
           "cosine": float(cos.mean()), "n_tokens": len(x)}
    if codes is not None:
        active = codes != 0
        out["l0"] = float(active.sum(dim=1).double().mean())
        out["dead_fraction"] = float((~active.any(dim=0)).double().mean())
    return out


MEDIAN_SAMPLE = 2**24  # values the median |h| is estimated from, drawn with a fixed seed, when there are more


def massive_bar(vectors: np.ndarray | torch.Tensor, massive_abs: float | None,
                massive_rel: float | None) -> float | None:
    """The |h| a token's largest value must exceed to be massive: above ``massive_abs`` and above
    ``massive_rel`` × the median |h| of these vectors (the capture's criterion); None: no token is."""
    if massive_abs is None and massive_rel is None:
        return None
    for name, value in (("massive_abs", massive_abs), ("massive_rel", massive_rel)):
        if value is not None and not value > 0:
            raise BadInputError(f"{name} must be > 0 or None, got {value}")
    values = np.abs(np.asarray(vectors, dtype=np.float32)).ravel()
    if values.size > MEDIAN_SAMPLE:
        values = values[np.random.default_rng(0).integers(0, values.size, MEDIAN_SAMPLE)]
    return max(massive_abs or 0.0, (massive_rel or 0.0) * float(np.median(values)))


def massive_tokens(vectors: torch.Tensor, bar: float | None) -> torch.Tensor:
    """Rows (tokens) whose largest |h| is above ``bar`` (:func:`massive_bar`); none when there is no bar."""
    largest = vectors.abs().amax(dim=1)
    return largest > bar if bar is not None else torch.zeros_like(largest, dtype=torch.bool)


def token_mask(token_ids: torch.Tensor, positions: torch.Tensor, max_abs: torch.Tensor, *, bos_id: int | None = 0,
               position0: bool = True, massive_above: float | None = None) -> torch.Tensor:
    """True for tokens to leave out: the BOS/EOS id, position 0, and massive tokens (largest |h| above the bar)."""
    masked = torch.zeros(token_ids.shape, dtype=torch.bool, device=token_ids.device)
    if bos_id is not None:
        masked |= token_ids == bos_id
    if position0:
        masked |= positions == 0
    if massive_above is not None:
        masked |= max_abs > massive_above
    return masked
