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


def _pursuit(x: np.ndarray, atoms: np.ndarray, k: int, gram: np.ndarray | None = None) -> np.ndarray:
    """Coefficients (tokens × atoms) of ``k`` steps of matching pursuit, in float64 numpy (a build
    runs this on hundreds of 32-token batches, where numpy's per-operation cost is a fraction of
    torch's). The correlations are updated through the atoms' Gram matrix, ⟨r − c·aⱼ, A⟩ = ⟨r, A⟩ −
    c·G[j], rather than recomputed from the residual: tokens × atoms work a step instead of tokens ×
    atoms × d (the same picks, to float64 rounding)."""
    coef = np.zeros((len(x), len(atoms)))
    if len(atoms) == 0:
        return coef
    if gram is None:
        gram = atoms @ atoms.T
    corr = x @ atoms.T
    rows = np.arange(len(x))
    for _ in range(k):
        best = np.abs(corr).argmax(axis=1)
        c = corr[rows, best]
        coef[rows, best] += c
        corr -= c[:, None] * gram[best]
    return coef


def matching_pursuit(x: torch.Tensor, atoms: torch.Tensor, k: int) -> torch.Tensor:
    """Coefficients (tokens × atoms) of ``k`` steps of matching pursuit; x ≈ coef @ atoms."""
    if k < 1:
        raise ValueError(f"matching pursuit needs k >= 1, got {k}")
    return torch.from_numpy(_pursuit(_float64(x), _float64(atoms), k))


def _float64(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return (x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64))


def _normalised_loss(x: np.ndarray, x_hat: np.ndarray) -> np.ndarray:
    """mean_d (x/‖x‖ − x̂/‖x̂‖)² per row; rows with x̂ = 0 get the maximum, 4/d."""
    xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    norm_hat = np.linalg.norm(x_hat, axis=1, keepdims=True)
    loss = ((xn - x_hat / np.maximum(norm_hat, 1e-12)) ** 2).mean(axis=1)
    return np.where(norm_hat[:, 0] > 0, loss, 4.0 / x.shape[1])


@dataclass
class _Trace:
    """One build, batch by batch: each batch's losses (of the tokens that can be added) and the
    dictionary's size before it. A build at another τ takes the same decisions, hence the same
    dictionary, up to the first batch where some loss lies between the two τs; it resumes there."""

    tau: float
    atoms: np.ndarray
    chosen: list[int]
    losses: list[np.ndarray]
    sizes: list[int]

    def agrees_until(self, tau: float) -> int:
        """The first batch whose decisions differ at ``tau`` (len(losses) when none does)."""
        lo, hi = min(tau, self.tau), max(tau, self.tau)
        for b, losses in enumerate(self.losses):
            if ((losses > lo) & (losses <= hi)).any():
                return b
        return len(self.losses)


def _build(x: np.ndarray, k: int, tau: float, batch_size: int, max_atoms: int | None,
           resume: _Trace | None = None) -> _Trace:
    start_batch = resume.agrees_until(tau) if resume is not None else 0
    if resume is not None and start_batch:
        size = resume.sizes[start_batch] if start_batch < len(resume.sizes) else len(resume.chosen)
        trace = _Trace(tau, resume.atoms[:size], resume.chosen[:size], resume.losses[:start_batch],
                       resume.sizes[:start_batch])
    else:
        trace = _Trace(tau, np.zeros((0, x.shape[1])), [], [], [])
        start_batch = 0
    atoms, chosen = trace.atoms, list(trace.chosen)
    gram = atoms @ atoms.T
    norms = np.linalg.norm(x, axis=1)
    for start in range(start_batch * batch_size, len(x), batch_size):
        if max_atoms is not None and len(chosen) >= max_atoms:
            break
        batch = x[start:start + batch_size]
        loss = _normalised_loss(batch, _pursuit(batch, atoms, k, gram) @ atoms)
        loss = np.where(norms[start:start + batch_size] > 0, loss, -np.inf)  # a zero vector has no direction
        trace.losses.append(loss)
        trace.sizes.append(len(chosen))
        add = np.nonzero(loss > tau)[0]
        if max_atoms is not None:
            add = add[:max_atoms - len(chosen)]
        if len(add):
            new = batch[add] / norms[start + add][:, None]
            cross = new @ atoms.T
            gram = np.block([[gram, cross.T], [cross, new @ new.T]])
            atoms = np.concatenate([atoms, new])
            chosen.extend(start + int(i) for i in add)
    trace.atoms, trace.chosen = atoms, chosen
    return trace


def _dictionary(trace: _Trace, labels: list[tuple[int, int]]) -> ITDADictionary:
    return ITDADictionary(atoms=torch.from_numpy(trace.atoms), labels=[labels[i] for i in trace.chosen], tau=trace.tau)


def build_dictionary(x: torch.Tensor, labels: list[tuple[int, int]], k: int, tau: float, batch_size: int = 32,
                     max_atoms: int | None = None) -> ITDADictionary:
    if not tau > 0:
        raise ValueError(f"ITDA tau must be > 0, got {tau}")
    if len(labels) != len(x):
        raise ValueError(f"{len(labels)} labels for {len(x)} activations")
    return _dictionary(_build(_float64(x), k, tau, batch_size, max_atoms), labels)


def calibrate_tau(x: torch.Tensor, labels: list[tuple[int, int]], k: int, target_size: int,
                  batch_size: int = 32, iterations: int = 14) -> ITDADictionary:
    """Bisect log τ so that the dictionary has about ``target_size`` atoms; the closest one built.

    A trial build stops once it passes 4 × ``target_size`` atoms (τ is then too low whatever follows):
    a low τ would otherwise grow a dictionary of thousands, each token matched against all of them.
    Each trial resumes the earlier build that agrees with it longest (``_Trace``): the same
    dictionaries as building each from scratch, for a fraction of the work once the bracket narrows."""
    d = x.shape[1]
    data = _float64(x)
    lo, hi = 1e-6 / d, 4.0 / d  # τ ≥ 4/d never adds (the loss cannot exceed it)
    cap = 4 * target_size + 1
    best: _Trace | None = None
    traces: list[_Trace] = []
    for _ in range(iterations):
        tau = float(np.sqrt(lo * hi))
        resume = max(traces, key=lambda t: t.agrees_until(tau), default=None)
        built = _build(data, k, tau, batch_size, cap, resume)
        traces.append(built)
        size = len(built.chosen)
        if size < cap and (best is None or abs(size - target_size) < abs(len(best.chosen) - target_size)):
            best = built
        if size == target_size:
            break
        lo, hi = (tau, hi) if size > target_size else (lo, tau)
    return _dictionary(best if best is not None else _build(data, k, hi, batch_size, None), labels)


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
