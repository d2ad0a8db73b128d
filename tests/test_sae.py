"""Sparse autoencoders and the CE-loss score, with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from massive_activations.checkpoints import FolderSource, load_checkpoint
from massive_activations.sae import SAESettings, reconstruction_metrics, token_mask, train_sae
from massive_activations.splice import ce_loss_score, lm_loss, loss_with_layer, zero_ablation


def sparse_data(n: int = 4000, d: int = 16, n_features: int = 32, active: int = 2, seed: int = 0) -> torch.Tensor:
    """Tokens that are sums of ``active`` of ``n_features`` unit directions with positive weights."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n_features, d))
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    codes = np.zeros((n, n_features))
    for row in codes:
        row[rng.choice(n_features, active, replace=False)] = rng.uniform(1, 3, active)
    return torch.tensor(codes @ features, dtype=torch.float32)


def test_topk_sae_recovers_a_known_sparse_dictionary():
    x = sparse_data()
    train, test = x[:3200], x[3200:]
    sae = train_sae(train, SAESettings(kind="topk", expansion=4, k=4, steps=1500, batch_size=256, lr=3e-3))
    with torch.no_grad():
        codes = sae.encode(test)
        metrics = reconstruction_metrics(test, sae.decode(codes), codes)
    assert metrics["explained_variance"] > 0.95  # stated: a 2-sparse signal, k=4, is reconstructed to EV > 0.95
    assert metrics["l0"] <= 4 and metrics["cosine"] > 0.97
    assert abs(metrics["fvu"] - (1 - metrics["explained_variance"])) < 1e-12
    assert torch.allclose(sae.W_dec.norm(dim=0), torch.ones(sae.n_latents), atol=1e-5)  # unit-norm decoder


def test_relu_sae_with_l1_is_sparser_than_without():
    x = sparse_data(n=1500)
    dense = train_sae(x, SAESettings(kind="relu", l1=0.0, steps=400))
    sparse = train_sae(x, SAESettings(kind="relu", l1=0.3, steps=400))
    with torch.no_grad():
        l0 = [reconstruction_metrics(x, m(x), m.encode(x))["l0"] for m in (dense, sparse)]
    assert l0[1] < 0.5 * l0[0]


def test_decoder_bias_starts_at_the_data_mean_and_training_is_seeded():
    x = sparse_data(n=500) + 5.0
    a = train_sae(x, SAESettings(steps=5, seed=3))
    b = train_sae(x, SAESettings(steps=5, seed=3))
    assert torch.equal(a.W_dec, b.W_dec)
    untrained = train_sae(x, SAESettings(steps=1, lr=1e-12))
    assert torch.allclose(untrained.b_dec, x.mean(dim=0), atol=1e-4)


def test_auxk_revives_dead_latents():
    x = sparse_data(n=4000, d=32, n_features=256, active=4)
    settings = dict(kind="topk", expansion=16, k=4, steps=800, dead_after=50, lr=1e-2)
    plain = train_sae(x, SAESettings(**settings))
    aux = train_sae(x, SAESettings(**settings, aux_k=32))
    with torch.no_grad():
        dead = [reconstruction_metrics(x, m(x), m.encode(x))["dead_fraction"] for m in (plain, aux)]
    assert dead[0] > 0.02 and dead[1] < 0.5 * dead[0]  # measured: 3.7% dead without AuxK, 0.8% with


@pytest.mark.parametrize("bad", [dict(k=0), dict(expansion=0), dict(kind="gated"), dict(lr=0.0), dict(aux_k=-1)])
def test_bad_sae_settings_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        SAESettings(**bad)


def test_k_larger_than_the_latents_is_refused():
    with pytest.raises(ValueError, match="k=100 exceeds"):
        train_sae(torch.randn(10, 4), SAESettings(k=100, expansion=2))


def test_token_mask_covers_bos_position0_and_massive_tokens():
    ids = torch.tensor([0, 5, 6, 7])
    pos = torch.tensor([3, 0, 1, 2])
    max_abs = torch.tensor([1.0, 1.0, 1.0, 500.0])
    assert token_mask(ids, pos, max_abs, massive_above=100.0).tolist() == [True, True, False, True]
    assert token_mask(ids, pos, max_abs, bos_id=None, position0=False, massive_above=None).tolist() == [False] * 4


def test_ce_loss_score_is_one_for_identity_and_zero_for_ablation(micro_root):
    ckpt = load_checkpoint(FolderSource(str(micro_root)), "nx-l2-d32-h2", 48, device="cpu")
    tokens = np.random.default_rng(0).integers(1, 200, size=(3, 24))
    original = lm_loss(ckpt.model, tokens)
    zero = loss_with_layer(ckpt.model, tokens, 0, zero_ablation)
    identity = loss_with_layer(ckpt.model, tokens, 0, lambda h, _ids: h)
    noisy = loss_with_layer(ckpt.model, tokens, 0, lambda h, _ids: h + 0.05 * h.std() * torch.randn_like(h))
    assert zero > original + 0.1
    assert ce_loss_score(original, identity, zero) == pytest.approx(1.0, abs=1e-6)
    assert ce_loss_score(original, zero, zero) == pytest.approx(0.0, abs=1e-12)
    assert 0.8 < ce_loss_score(original, noisy, zero) < 1.05
    assert lm_loss(ckpt.model, tokens) == pytest.approx(original)  # the hook is gone afterwards
    with pytest.raises(ValueError, match="layer 7"):
        loss_with_layer(ckpt.model, tokens, 7, zero_ablation)
