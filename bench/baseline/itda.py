"""Inference-time decomposition of activations (ITDA; Leask et al., ICML 2025, arXiv 2505.17769).

The dictionary's atoms are real activations normalised to unit norm, each labelled with the
(prompt index, token index) it came from. Encoding is plain matching pursuit for ``k`` steps:
pick the atom with the largest |⟨r, a⟩| against the residual r, add that correlation to the
atom's coefficient, subtract it; atoms may be re-picked, so L0 ≤ k.

Building: tokens are processed in batches, in order; each is reconstructed with the current
dictionary and its raw activation is appended as a new atom when the normalised loss
mean_d (x/‖x‖ − x̂/‖x̂‖)² = (2 − 2·cos(x, x̂)) / d exceeds τ. An empty reconstruction counts
as maximal loss. Atoms added from one batch join the dictionary together (as in the paper's code).

Similarity: Jaccard |D₀ ∩ D₁| / |D₀ ∪ D₁| of two dictionaries' labels, meaningful only when both
saw the same prompts in the same order. Layer matching: the share of layers of one checkpoint
whose most similar layer (by Jaccard) in the other checkpoint is the same layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from massive_activations.errors import BadInputError


@dataclass(frozen=True)
class ITDASettings:
    k: int = 8  # matching-pursuit steps (the paper's default is 40, for d_model ≥ 512)
    tau: float | None = None  # add threshold; None: calibrate to target_size
    target_size: int = 64  # atoms wanted when calibrating τ
    train_tokens: int | None = 2**14  # built from the first this many training tokens; None: all of them
    max_atoms: int | None = None  # crop: stop adding atoms once the dictionary has this many
    batch_size: int = 32

    def __post_init__(self) -> None:
        if self.k < 1:
            raise BadInputError(f"ITDA k must be >= 1, got {self.k}")
        if self.tau is not None and not self.tau > 0:
            raise BadInputError(f"ITDA tau must be > 0, got {self.tau}")
        if self.target_size < 1 or self.batch_size < 1:
            raise BadInputError(f"ITDA target_size and batch_size must be >= 1, got {self.target_size}, "
                             f"{self.batch_size}")
        if self.train_tokens is not None and self.train_tokens < 1:
            raise BadInputError(f"ITDA train_tokens must be >= 1 or None, got {self.train_tokens}")
        if self.max_atoms is not None and self.max_atoms < 1:
            raise BadInputError(f"ITDA max_atoms must be >= 1 or None, got {self.max_atoms}")


@dataclass
class ITDADictionary:
    atoms: torch.Tensor  # (n_atoms, d_model), unit norm
    labels: list[tuple[int, int]] = field(default_factory=list)  # (prompt index, token index) per atom
    tau: float = 0.0

    def __len__(self) -> int:
        return len(self.labels)


def matching_pursuit(x: torch.Tensor, atoms: torch.Tensor, k: int) -> torch.Tensor:
    """Coefficients (tokens × atoms) of ``k`` steps of matching pursuit; x ≈ coef @ atoms."""
    if k < 1:
        raise ValueError(f"matching pursuit needs k >= 1, got {k}")
    x = x.double()
    atoms = atoms.double()
    coef = torch.zeros(len(x), len(atoms), dtype=torch.float64)
    if len(atoms) == 0:
        return coef
    residual = x.clone()
    rows = torch.arange(len(x))
    for _ in range(k):
        corr = residual @ atoms.T
        best = corr.abs().argmax(dim=1)
        c = corr[rows, best]
        coef[rows, best] += c
        residual -= c[:, None] * atoms[best]
    return coef


def normalised_loss(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """mean_d (x/‖x‖ − x̂/‖x̂‖)² per row; rows with x̂ = 0 get the maximum, 4/d."""
    x, x_hat = x.double(), x_hat.double()
    xn = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    norm_hat = x_hat.norm(dim=1, keepdim=True)
    loss = ((xn - x_hat / norm_hat.clamp_min(1e-12)) ** 2).mean(dim=1)
    return torch.where(norm_hat[:, 0] > 0, loss, torch.full_like(loss, 4.0 / x.shape[1]))


def build_dictionary(x: torch.Tensor, labels: list[tuple[int, int]], k: int, tau: float, batch_size: int = 32,
                     max_atoms: int | None = None) -> ITDADictionary:
    if not tau > 0:
        raise ValueError(f"ITDA tau must be > 0, got {tau}")
    if len(labels) != len(x):
        raise ValueError(f"{len(labels)} labels for {len(x)} activations")
    x = x.double()
    atoms = torch.zeros(0, x.shape[1], dtype=torch.float64)
    chosen: list[tuple[int, int]] = []
    for start in range(0, len(x), batch_size):
        if max_atoms is not None and len(chosen) >= max_atoms:
            break
        batch = x[start:start + batch_size]
        x_hat = matching_pursuit(batch, atoms, k) @ atoms
        add = torch.nonzero(normalised_loss(batch, x_hat) > tau).flatten()
        add = add[batch[add].norm(dim=1) > 0]  # a zero vector has no direction to add
        if max_atoms is not None:
            add = add[:max_atoms - len(chosen)]
        if len(add):
            new = batch[add]
            atoms = torch.cat([atoms, new / new.norm(dim=1, keepdim=True)])
            chosen.extend(labels[start + int(i)] for i in add)
    return ITDADictionary(atoms=atoms, labels=chosen, tau=tau)


def calibrate_tau(x: torch.Tensor, labels: list[tuple[int, int]], k: int, target_size: int,
                  batch_size: int = 32, iterations: int = 14) -> ITDADictionary:
    """Bisect log τ so that the dictionary has about ``target_size`` atoms; the closest one built.

    A trial build stops once it passes 4 × ``target_size`` atoms (τ is then too low whatever follows):
    a low τ would otherwise grow a dictionary of thousands, each token matched against all of them."""
    d = x.shape[1]
    lo, hi = 1e-6 / d, 4.0 / d  # τ ≥ 4/d never adds (the loss cannot exceed it)
    cap = 4 * target_size + 1
    best: ITDADictionary | None = None
    for _ in range(iterations):
        tau = float(np.sqrt(lo * hi))
        built = build_dictionary(x, labels, k, tau, batch_size, max_atoms=cap)
        if len(built) < cap and (best is None or abs(len(built) - target_size) < abs(len(best) - target_size)):
            best = built
        if len(built) == target_size:
            break
        lo, hi = (tau, hi) if len(built) > target_size else (lo, tau)
    return best if best is not None else build_dictionary(x, labels, k, hi, batch_size)


def itda(x: torch.Tensor, labels: list[tuple[int, int]], settings: ITDASettings) -> ITDADictionary:
    """A dictionary from the first ``settings.train_tokens`` of ``x``: building is sequential, and τ's
    calibration rebuilds it about 14 times, so on a CPU ITDA gets a share of the SAEs' tokens."""
    if settings.train_tokens is not None:
        x, labels = x[:settings.train_tokens], labels[:settings.train_tokens]
    if settings.tau is not None:
        return build_dictionary(x, labels, settings.k, settings.tau, settings.batch_size, settings.max_atoms)
    built = calibrate_tau(x, labels, settings.k, settings.target_size, settings.batch_size)
    if settings.max_atoms is not None and len(built) > settings.max_atoms:
        built = build_dictionary(x, labels, settings.k, built.tau, settings.batch_size, settings.max_atoms)
    return built


def jaccard(a: list[tuple[int, int]] | set, b: list[tuple[int, int]] | set) -> float:
    sa, sb = set(map(tuple, a)), set(map(tuple, b))
    union = sa | sb
    return len(sa & sb) / len(union) if union else float("nan")


def layer_matching_score(a: dict[int, list[tuple[int, int]]], b: dict[int, list[tuple[int, int]]]) -> float:
    """Share of layers of ``a`` more similar (by label Jaccard) to the same layer of ``b`` than to any other."""
    layers = sorted(set(a) & set(b))
    if not layers:
        raise ValueError("no layers in common to match")
    hits = 0
    for layer in layers:
        own = jaccard(a[layer], b[layer])
        hits += all(own > jaccard(a[layer], b[other]) for other in b if other != layer)
    return hits / len(layers)
