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

Metrics follow SAEBench (docs/science.md, "Evaluations"): L0 = active latents per token; explained
variance = 1 − E‖x − x̂‖² / E‖x − E[x]‖²; FVU = 1 − explained variance; MSE per element; mean
cosine similarity of x and x̂; dead fraction = latents that never fire over the evaluation tokens.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from massive_activations.errors import BadInputError
from massive_activations.evals.sae import input_scale

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

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=0, keepdim=True).clamp_min(1e-12)


def lr_factor(step: int, total: int) -> float:
    """Linear warmup over the first 5% of steps, then a cosine decay to 10% at the last step."""
    warmup = max(1, round(0.05 * total))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def auxk_loss(pre: torch.Tensor, dead: torch.Tensor, residual: torch.Tensor, w_dec: torch.Tensor,
              aux_k: int) -> torch.Tensor:
    """How badly the ``aux_k`` largest pre-activations of the dead latents reconstruct the main
    reconstruction's residual, relative to the residual's energy: its gradient raises a dead latent
    whose decoder direction would explain what the live ones miss."""
    top = pre.masked_fill(~dead, float("-inf")).topk(min(aux_k, int(dead.sum())), dim=-1)
    z_aux = torch.zeros_like(pre).scatter_(-1, top.indices, torch.relu(top.values))
    error = ((residual - z_aux @ w_dec.T) ** 2).sum(dim=1).mean()
    return error / (residual ** 2).sum(dim=1).mean().clamp_min(1e-12)


def train_sae(x: torch.Tensor, settings: SAESettings, device: str | torch.device = "cpu") -> SparseAutoencoder:
    """Train on rows of ``x`` (tokens × d_model), seeded (module docstring). ``x`` stays where it is;
    the SAE and each minibatch go to ``device`` (the model's GPU), and the SAE comes back on the CPU."""
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"SAE training needs a (tokens >= 2, d_model) matrix, got shape {tuple(x.shape)}")
    # Since the pin: trained on inputs scaled to E‖x − E[x]‖² = d_model and folded back after (issue 25's
    # scale-invariant objective), as today's path does, so that the two train the same SAEs.
    factor = input_scale(x.float())
    x = x.float() * factor
    torch.manual_seed(settings.seed)
    sae = SparseAutoencoder(x.shape[1], settings, mean=x.mean(dim=0)).to(device)
    opt = torch.optim.Adam(sae.parameters(), lr=settings.lr)
    gen = torch.Generator().manual_seed(settings.seed)
    batch_size = min(settings.batch_size, len(x))
    per_epoch = math.ceil(len(x) / batch_size)
    total = settings.steps or settings.epochs * per_epoch
    aux_k = settings.aux_latents(sae.n_latents)
    since_fired = torch.zeros(sae.n_latents, dtype=torch.long, device=device)  # tokens since each last fired
    scale = ((x - x.mean(dim=0)) ** 2).sum(dim=1).mean().clamp_min(1e-12).to(device)  # in units of the variance
    order = torch.randperm(len(x), generator=gen)
    for step in range(total):
        if step % per_epoch == 0 and step:
            order = torch.randperm(len(x), generator=gen)
        batch = x[order[(step % per_epoch) * batch_size:(step % per_epoch + 1) * batch_size]].to(device)
        for group in opt.param_groups:
            group["lr"] = settings.lr * lr_factor(step, total)
        pre = sae.pre_activations(batch)
        z = sae.encode(batch)
        x_hat = sae.decode(z)
        loss = ((batch - x_hat) ** 2).sum(dim=1).mean() / scale
        if settings.kind == "relu":
            loss = loss + settings.l1 * (z * sae.W_dec.norm(dim=0)).sum(dim=1).mean()
        since_fired += len(batch)
        since_fired[(z > 0).any(dim=0)] = 0
        sae.tokens_seen += len(batch)
        dead = since_fired >= settings.dead_tokens  # none before a whole window has passed (AuxK would
        if aux_k and dead.any():                    # otherwise push down latents that have yet to fire)
            loss = loss + AUXK_WEIGHT * auxk_loss(pre, dead, (batch - x_hat).detach(), sae.W_dec, aux_k)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sae.normalise_decoder()
    sae.dead_fraction = float((since_fired >= min(settings.dead_tokens, sae.tokens_seen)).double().mean())
    with torch.no_grad():
        sae.b_enc.div_(factor)
        sae.b_dec.div_(factor)
    return sae.cpu().eval()


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
