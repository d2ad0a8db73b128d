"""Sparse autoencoders on activation samples: TopK (the current default) and ReLU + L1 (the baseline).

TopK (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"):
    z = TopK(W_enc (x − b_dec) + b_enc),  x̂ = W_dec z + b_dec,
with unit-norm decoder columns (renormalised after every step) and b_dec initialised to the data
mean. Optional AuxK: the residual x − x̂ is reconstructed from the k_aux largest pre-activations
of the dead latents (no firing for ``dead_after`` steps), normalised by the residual's energy and
added to the loss with weight 1/32.

ReLU + L1 (Bricken et al. 2023): z = ReLU(W_enc (x − b_dec) + b_enc), loss = ‖x − x̂‖² + l1·Σᵢ zᵢ‖W_dec,ᵢ‖.

Metrics follow SAEBench (docs/science.md, "Evaluations"): L0 = active latents per token; explained
variance = 1 − E‖x − x̂‖² / E‖x − E[x]‖²; FVU = 1 − explained variance; MSE per element; mean
cosine similarity of x and x̂; dead fraction = latents that never fire over the evaluation tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

AUXK_WEIGHT = 1 / 32


@dataclass(frozen=True)
class SAESettings:
    kind: str = "topk"  # topk | relu
    expansion: int = 4  # latents = expansion × d_model
    k: int = 8  # TopK: active latents per token
    l1: float = 1e-3  # ReLU: sparsity penalty
    aux_k: int = 0  # AuxK latents (0: no AuxK)
    dead_after: int = 50  # steps without firing before a latent counts as dead for AuxK
    steps: int = 200
    batch_size: int = 256  # the stored samples are few: full-batch by default
    lr: float = 3e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("topk", "relu"):
            raise ValueError(f"SAE kind must be 'topk' or 'relu', got {self.kind!r}")
        for name in ("expansion", "k", "steps", "batch_size", "dead_after"):
            if getattr(self, name) < 1:
                raise ValueError(f"SAE {name} must be >= 1, got {getattr(self, name)}")
        if self.aux_k < 0:
            raise ValueError(f"SAE aux_k must be >= 0, got {self.aux_k}")
        if self.lr <= 0 or self.l1 < 0:
            raise ValueError(f"SAE lr must be > 0 and l1 >= 0, got lr={self.lr}, l1={self.l1}")


class SparseAutoencoder(nn.Module):
    def __init__(self, d_model: int, settings: SAESettings, mean: torch.Tensor | None = None):
        super().__init__()
        n = settings.expansion * d_model
        if settings.kind == "topk" and settings.k > n:
            raise ValueError(f"SAE k={settings.k} exceeds the {n} latents (expansion {settings.expansion} × {d_model})")
        self.settings = settings
        gen = torch.Generator().manual_seed(settings.seed)
        w_dec = torch.randn(d_model, n, generator=gen)
        w_dec /= w_dec.norm(dim=0, keepdim=True)
        self.W_dec = nn.Parameter(w_dec)
        self.W_enc = nn.Parameter(w_dec.T.clone())
        self.b_enc = nn.Parameter(torch.zeros(n))
        self.b_dec = nn.Parameter(mean.clone().float() if mean is not None else torch.zeros(d_model))

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

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=0, keepdim=True).clamp_min(1e-12)


def train_sae(x: torch.Tensor, settings: SAESettings) -> SparseAutoencoder:
    """Train on rows of ``x`` (tokens × d_model), seeded; minibatches drawn with replacement."""
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"SAE training needs a (tokens >= 2, d_model) matrix, got shape {tuple(x.shape)}")
    x = x.float()
    torch.manual_seed(settings.seed)
    sae = SparseAutoencoder(x.shape[1], settings, mean=x.mean(dim=0))
    opt = torch.optim.Adam(sae.parameters(), lr=settings.lr)
    gen = torch.Generator().manual_seed(settings.seed)
    last_fired = torch.zeros(sae.n_latents, dtype=torch.long)
    scale = ((x - x.mean(dim=0)) ** 2).sum(dim=1).mean().clamp_min(1e-12)  # loss in units of the data variance
    for step in range(settings.steps):
        batch = x[torch.randint(len(x), (min(settings.batch_size, len(x)),), generator=gen)]
        pre = sae.pre_activations(batch)
        z = sae.encode(batch)
        x_hat = sae.decode(z)
        loss = ((batch - x_hat) ** 2).sum(dim=1).mean() / scale
        if settings.kind == "relu":
            loss = loss + settings.l1 * (z * sae.W_dec.norm(dim=0)).sum(dim=1).mean()
        fired = (z > 0).any(dim=0)
        last_fired[fired] = step
        dead = (step - last_fired) >= settings.dead_after
        if settings.aux_k and dead.any():
            aux_pre = pre.masked_fill(~dead, float("-inf"))
            top = aux_pre.topk(min(settings.aux_k, int(dead.sum())), dim=-1)
            z_aux = torch.zeros_like(pre).scatter_(-1, top.indices, torch.relu(top.values))
            residual = (batch - x_hat).detach()
            aux = ((residual - z_aux @ sae.W_dec.T) ** 2).sum(dim=1).mean()
            loss = loss + AUXK_WEIGHT * aux / (residual ** 2).sum(dim=1).mean().clamp_min(1e-12)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sae.normalise_decoder()
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


def massive_threshold(vectors: np.ndarray, factor: float) -> float:
    """|h| above ``factor`` × the median |h| of these vectors: the ratio's relative criterion."""
    if not factor > 0:
        raise ValueError(f"massive_factor must be > 0, got {factor}")
    return float(factor * np.median(np.abs(vectors)))


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
