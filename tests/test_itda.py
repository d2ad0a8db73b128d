"""ITDA: matching pursuit, dictionary building, τ calibration and similarity, with known answers."""

from __future__ import annotations

import pytest
import torch

from massive_activations.itda import (
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
    from massive_activations import itda as module

    x = torch.randn(4000, 16)
    labels = [(i // 100, i % 100) for i in range(4000)]
    sizes: list[int] = []
    real = module.build_dictionary

    def counted(*args, **kwargs):
        built = real(*args, **kwargs)
        sizes.append(len(built))
        return built

    monkeypatch.setattr(module, "build_dictionary", counted)
    built = itda(x, labels, ITDASettings(k=4, target_size=48, train_tokens=None))
    assert abs(len(built) - 48) <= 4 and max(sizes) <= 4 * 48 + 1  # no trial grew past 4 × the target
    early = itda(x, labels, ITDASettings(k=4, target_size=48, train_tokens=500))
    assert early.labels and max(labels.index(lab) for lab in early.labels) < 500  # atoms from the first 500 only


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
