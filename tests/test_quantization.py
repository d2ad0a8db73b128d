"""Fake quantization, W8A8 and LLM.int8() outlier dims, with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from massive_activations.evals.quantization import (
    activation_quantization,
    fake_quantize,
    outlier_dims,
    predicted_sqnr_db,
    sqnr_db,
    topk_error_share,
    w8a8,
)
from massive_activations.evals.splice import lm_loss
from massive_activations.sources.checkpoints import FolderSource, load_checkpoint


@pytest.mark.parametrize("granularity", ["tensor", "token", "channel"])
def test_values_on_the_grid_are_lossless(granularity):
    q = torch.randint(-127, 128, (16, 8)).double()
    q[:, 0], q[0, :] = 127, 127  # every row and column has its absmax on the grid's end
    x = q * 0.03
    assert torch.equal(fake_quantize(x, 8, granularity), x)
    assert sqnr_db(x, fake_quantize(x, 8, granularity)) == float("inf")


def test_a_planted_outlier_lowers_per_tensor_sqnr_but_not_per_channel():
    x = torch.randn(256, 32, generator=torch.Generator().manual_seed(0))
    clean = {r["granularity"]: r["sqnr_db"] for r in activation_quantization(x, bits=(8,))}
    planted = x.clone()
    planted[5, 7] = 2000.0  # one massive activation in channel 7
    hit = {r["granularity"]: r for r in activation_quantization(planted, bits=(8,), top_k=1)}
    # measured: per tensor 40.6 → 26.9 dB (every other value rounds to 0 or ±1 step of 15.7)
    assert hit["tensor"]["sqnr_db"] < clean["tensor"] - 10
    assert hit["channel"]["sqnr_db"] > 40  # the other 31 channels keep their own scale
    assert hit["tensor"]["sqnr_db"] < hit["channel"]["sqnr_db"] - 10
    assert hit["tensor"]["topk_error_share"] < 0.01  # the outlier itself is on the grid; the rest carries the error


def test_the_error_of_a_shared_per_tensor_scale_lands_on_the_other_tokens():
    """One massive token sets the per-tensor scale for all: its own row stays nearly exact, every other
    token loses most of its precision; per token, each row keeps its own scale and nothing moves."""
    x = torch.randn(256, 32, generator=torch.Generator().manual_seed(0))
    x[5, 7] = 2000.0
    massive = torch.zeros(256, dtype=torch.bool)
    massive[5] = True
    rows = {r["granularity"]: r for r in activation_quantization(x, bits=(8,), groups={"massive": massive,
                                                                                         "other": ~massive})}
    tensor = rows["tensor"]
    assert (tensor["n_massive"], tensor["n_other"]) == (1, 255)
    xq = fake_quantize(x, 8, "tensor")
    assert tensor["sqnr_db_other"] == pytest.approx(sqnr_db(x[~massive], xq[~massive]))  # quantized together
    # measured: massive 52.5 dB, other 0.0 dB (every other value rounds to 0: the step is 15.7)
    assert tensor["sqnr_db_massive"] > 40 and abs(tensor["sqnr_db_other"]) < 1
    assert rows["token"]["sqnr_db_other"] > 40  # each token its own scale: 45.4 dB
    empty = activation_quantization(x, bits=(8,), groups={"none": torch.zeros(256, dtype=torch.bool)})[0]
    assert np.isnan(empty["sqnr_db_none"]) and empty["n_none"] == 0


@pytest.mark.parametrize("granularity", ["tensor", "token", "channel"])
def test_the_predicted_sqnr_is_the_absmax_identity_computed_by_hand(granularity):
    """10·log10(Σx² / Σ_g n_g·(max_g/qmax)²/12), written out here with numpy, for each granularity and width."""
    x = np.random.default_rng(0).standard_t(3, size=(64, 48))
    x[5, 7] = 80.0  # a massive value
    for bits in (8, 4):
        qmax = 2 ** (bits - 1) - 1
        groups = {"tensor": [np.abs(x).max()] * x.size, "token": np.repeat(np.abs(x).max(axis=1), x.shape[1]),
                  "channel": np.repeat(np.abs(x).max(axis=0), x.shape[0])}[granularity]
        hand = 10 * np.log10(np.sum(x**2) / np.sum((np.asarray(groups) / qmax) ** 2 / 12))
        assert predicted_sqnr_db(torch.tensor(x), bits, granularity) == pytest.approx(hand, abs=1e-9)


def test_per_tensor_int8_sqnr_is_the_identity_within_a_tenth_of_a_db_and_the_excess_says_so():
    """The high-resolution closed form: with a step far below the values' spread, rounding error is uniform
    on ±Δ/2, so measured and predicted per-tensor int8 SQNR agree closely; int4 at a massive value does
    not (most values round to zero), which the excess shows."""
    rng = np.random.default_rng(1)
    x = torch.tensor(rng.standard_normal((4096, 64)))
    (row,) = [r for r in activation_quantization(x, bits=(8,)) if r["granularity"] == "tensor"]
    assert row["sqnr_db"] == pytest.approx(row["sqnr_db_predicted"], abs=0.1)
    assert row["sqnr_db_excess"] == pytest.approx(row["sqnr_db"] - row["sqnr_db_predicted"], abs=1e-12)
    heavy = x.clone()
    heavy[0, 0] = 2000.0
    (row4,) = [r for r in activation_quantization(heavy, bits=(4,)) if r["granularity"] == "tensor"]
    assert row4["sqnr_db_excess"] > 1.0


def test_topk_error_share_counts_the_largest_values():
    x = torch.tensor([[10.0, 1.0, 1.0]])
    xq = torch.tensor([[9.0, 1.0, 0.0]])
    assert topk_error_share(x, xq, 1) == pytest.approx(0.5)


@pytest.mark.parametrize("bad", [dict(bits=1), dict(granularity="row")])
def test_bad_quantization_settings_are_refused(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        fake_quantize(torch.ones(2, 2), **{"bits": 8, "granularity": "tensor", **bad})


def test_w8a8_is_close_to_full_precision_and_restores_the_weights(micro_root):
    ckpt = load_checkpoint(FolderSource(str(micro_root)), "nx-l3-d32-h4", 48, device="cpu")
    tokens = np.random.default_rng(1).integers(1, 200, size=(4, 32))
    before = {n: p.clone() for n, p in ckpt.model.named_parameters()}
    full = lm_loss(ckpt.model, tokens)
    with w8a8(ckpt.model, "token"):
        per_token = lm_loss(ckpt.model, tokens)
        changed = [n for n, p in ckpt.model.named_parameters() if not torch.equal(p, before[n])]
    assert changed and all(".layers." in n and n.endswith("weight") for n in changed)  # decoder Linears only
    assert per_token != full and abs(per_token - full) < 0.05
    assert all(torch.equal(p, before[n]) for n, p in ckpt.model.named_parameters())
    assert lm_loss(ckpt.model, tokens) == pytest.approx(full)
    with pytest.raises(ValueError, match="per 'token' or per 'tensor'"):
        with w8a8(ckpt.model, "channel"):
            pass


def test_outlier_dims_finds_a_planted_dimension(micro_root):
    ckpt = load_checkpoint(FolderSource(str(micro_root)), "nx-l3-d32-h4", 48, device="cpu")
    tokens = np.random.default_rng(2).integers(1, 200, size=(2, 32))
    assert 11 not in outlier_dims(ckpt.model, tokens)
    with torch.no_grad():  # make the first LayerNorms write |x| >= 6 into dim 11 at every position
        for layer in ckpt.model.gpt_neox.layers[:2]:
            layer.input_layernorm.bias[11] = 50.0
    assert 11 in outlier_dims(ckpt.model, tokens)  # 2 of 3 layers >= 25%, all positions >= 6%
