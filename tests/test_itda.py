"""ITDA: matching pursuit, dictionary building, τ calibration and similarity, with known answers."""

from __future__ import annotations

import pytest
import torch

from massive_activations.evals.itda import (
    ITDASettings,
    build_dictionary,
    calibrate_tau,
    itda,
    jaccard,
    layer_matching_score,
    matching_pursuit,
)


def test_matching_pursuit_is_exact_on_an_orthonormal_dictionary():
    atoms = torch.linalg.qr(torch.randn(12, 12, dtype=torch.float64))[0]  # rows orthonormal
    coef = torch.zeros(5, 12, dtype=torch.float64)
    coef[:, [1, 4, 9]] = torch.randn(5, 3, dtype=torch.float64)  # support of 3
    x = coef @ atoms
    for k in (3, 5):
        assert torch.allclose(matching_pursuit(x, atoms, k) @ atoms, x, atol=1e-10)
    short = matching_pursuit(x, atoms, 2) @ atoms
    assert not torch.allclose(short, x, atol=1e-3)  # k below the support cannot be exact
    assert (matching_pursuit(x, atoms, 3) != 0).sum(dim=1).max() <= 3


def test_a_repeated_activation_adds_no_atom_an_orthogonal_one_does():
    e = torch.eye(8, dtype=torch.float64)
    first = build_dictionary(e[[0]] * 3.0, [(0, 0)], k=4, tau=1e-3)
    assert first.labels == [(0, 0)]
    x = torch.stack([e[0] * 3.0, e[0] * 7.0, e[1]])  # a repeat (any scale), then an orthogonal direction
    built = build_dictionary(x, [(0, 0), (0, 1), (0, 2)], k=4, tau=1e-3, batch_size=1)
    assert built.labels == [(0, 0), (0, 2)]
    assert torch.allclose(built.atoms.norm(dim=1), torch.ones(2, dtype=torch.float64))


def test_tau_calibrates_to_the_target_size_and_crop_caps_it():
    x = torch.randn(400, 16)
    labels = [(i // 20, i % 20) for i in range(400)]
    built = calibrate_tau(x, labels, k=4, target_size=40)
    assert abs(len(built) - 40) <= 4
    cropped = itda(x, labels, ITDASettings(k=4, tau=built.tau, max_atoms=10))
    assert len(cropped) == 10 and cropped.labels == built.labels[:10]


def test_calibration_stops_runaway_trial_builds_and_itda_reads_its_token_budget(monkeypatch):
    from massive_activations.evals import itda as module

    x = torch.randn(4000, 16)
    labels = [(i // 100, i % 100) for i in range(4000)]
    sizes: list[int] = []
    real = module._build

    def counted(*args, **kwargs):
        built = real(*args, **kwargs)
        sizes.append(len(built.chosen))
        return built

    monkeypatch.setattr(module, "_build", counted)
    built = itda(x, labels, ITDASettings(k=4, target_size=48, train_tokens=None))
    assert abs(len(built) - 48) <= 4 and max(sizes) <= 4 * 48 + 1  # no trial grew past 4 × the target
    early = itda(x, labels, ITDASettings(k=4, target_size=48, train_tokens=500))
    assert early.labels and max(labels.index(lab) for lab in early.labels) < 500  # atoms from the first 500 only


def reference_build(x: torch.Tensor, k: int, tau: float, batch_size: int = 32,
                    max_atoms: int | None = None) -> list[int]:
    """The rows a build adds, written plainly from the paper's description (module docstring): torch,
    the residual recomputed every pursuit step, every build from scratch."""
    x = x.double()
    atoms = torch.zeros(0, x.shape[1], dtype=torch.float64)
    chosen: list[int] = []
    for start in range(0, len(x), batch_size):
        if max_atoms is not None and len(chosen) >= max_atoms:
            break
        batch = x[start:start + batch_size]
        residual = batch.clone()
        for _ in range(k if len(atoms) else 0):
            corr = residual @ atoms.T
            best = corr.abs().argmax(dim=1)
            residual -= corr[torch.arange(len(batch)), best][:, None] * atoms[best]
        x_hat = batch - residual if len(atoms) else torch.zeros_like(batch)
        xn = batch / batch.norm(dim=1, keepdim=True)
        norm_hat = x_hat.norm(dim=1, keepdim=True)
        loss = torch.where(norm_hat[:, 0] > 0, ((xn - x_hat / norm_hat.clamp_min(1e-300)) ** 2).mean(dim=1),
                           torch.full((len(batch),), 4.0 / x.shape[1], dtype=torch.float64))
        add = [int(i) for i in torch.nonzero(loss > tau).flatten()][:None if max_atoms is None
                                                                      else max_atoms - len(chosen)]
        if add:
            atoms = torch.cat([atoms, batch[add] / batch[add].norm(dim=1, keepdim=True)])
            chosen += [start + i for i in add]
    return chosen


def reference_calibration(x: torch.Tensor, k: int, target: int) -> tuple[float, list[int]]:
    """Today's bisection of log τ, every trial built from scratch by :func:`reference_build`."""
    d = x.shape[1]
    lo, hi, cap, best = 1e-6 / d, 4.0 / d, 4 * target + 1, None
    for _ in range(14):
        tau = float((lo * hi) ** 0.5)
        built = reference_build(x, k, tau, max_atoms=cap)
        if len(built) < cap and (best is None or abs(len(built) - target) < abs(len(best[1]) - target)):
            best = (tau, built)
        if len(built) == target:
            break
        lo, hi = (tau, hi) if len(built) > target else (lo, tau)
    return best


def clustered(n: int, d: int, seed: int) -> torch.Tensor:
    """Activations like a layer's: a few heavy directions, mixed at random scales, plus noise."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(24, d, generator=gen)
    pick = torch.randint(0, 24, (n, 2), generator=gen)
    return (centres[pick[:, 0]] * torch.rand(n, 1, generator=gen) * 4 + centres[pick[:, 1]]
            + 0.3 * torch.randn(n, d, generator=gen))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_calibration_chooses_the_reference_tau_and_builds_the_reference_dictionary(seed):
    """The fast path (numpy, Gram-updated correlations, trials resumed from earlier ones) picks the
    same τ as the plain bisection, and its dictionary, like any build at any τ, is the one the
    plain build adds, atom for atom."""
    x = clustered(3000, 24, seed)
    labels = [(i, 0) for i in range(len(x))]
    tau, rows = reference_calibration(x, k=4, target=40)
    built = calibrate_tau(x, labels, k=4, target_size=40)
    assert built.tau == tau and [i for i, _ in built.labels] == rows
    assert torch.allclose(built.atoms, torch.nn.functional.normalize(x[rows].double(), dim=1), atol=1e-12)
    for factor in (0.5, 2.0):
        again = build_dictionary(x, labels, k=4, tau=tau * factor, max_atoms=100)
        assert [i for i, _ in again.labels] == reference_build(x, 4, tau * factor, max_atoms=100)


def test_jaccard_and_layer_matching():
    a = {0: [(0, 1), (0, 2)], 1: [(1, 1), (1, 2)]}
    assert jaccard(a[0], [(0, 1), (0, 3)]) == pytest.approx(1 / 3)
    assert layer_matching_score(a, a) == 1.0
    swapped = {0: a[1], 1: a[0]}
    assert layer_matching_score(a, swapped) == 0.0


@pytest.mark.parametrize("bad, match", [(dict(k=0), "k must"), (dict(tau=0.0), "tau must"),
                                        (dict(tau=-1.0), "tau must"), (dict(target_size=0), "target_size")])
def test_bad_itda_settings_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        ITDASettings(**bad)
