"""The outlier panel against known answers: eager attention weights, a head forced onto key 0, a
planted super weight, and scipy's kurtosis of the same tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import kurtosis

from massive_activations.capture.capture import CaptureSettings, capture, hooked_modules
from massive_activations.capture.panel import SINK_EPSILON, Moments
from massive_activations.sources.model_parts import block_output, find_parts
from tests.tiny_models import KINDS, tiny_model

TOKENS = np.random.default_rng(0).integers(1, 257, (5, 16))


def _panel(model, tokens=TOKENS):
    result = capture(model, tokens, CaptureSettings(batch_size=2))  # batches of 2, 2 and 1 sequences
    return {row["layer"]: row for row in result.panel.to_pylist()}


@pytest.mark.parametrize("kind", KINDS)
def test_alpha0_is_the_eager_attention_weight_on_key_0_and_the_output_is_unchanged(kind):
    """Any architecture, under its default (SDPA) attention: α₀ per head equals the mean over sequences
    and queries of eager attention's weight on key 0 (transformers' own output_attentions), within
    float32 rounding; the hidden states are bit-for-bit those of the model without the panel."""
    model = tiny_model(kind)
    ids = torch.as_tensor(TOKENS)
    with torch.inference_mode():
        plain = find_parts(model).trunk(input_ids=ids).last_hidden_state
    rows = _panel(model)
    with torch.inference_mode():
        assert torch.equal(find_parts(model).trunk(input_ids=ids).last_hidden_state, plain)  # unhooked after
        model.set_attn_implementation("eager")
        weights = model(ids, output_attentions=True).attentions
    assert model.config._attn_implementation == "eager"
    for layer, w in enumerate(weights):
        expected = w[:, :, :, 0].mean(dim=(0, 2)).double().numpy()
        np.testing.assert_allclose(rows[layer]["alpha0"], expected, atol=1e-6)
        assert rows[layer]["alpha0_max"] == pytest.approx(expected.max(), abs=1e-6)
        assert rows[layer]["sink_share"] == np.mean(expected > SINK_EPSILON)
    assert rows[-1]["alpha0"] is None and rows[-1]["down_in_max"] is None  # the embedding: kurtosis only


def test_a_head_forced_onto_key_0_is_a_sink_and_the_others_are_not():
    """GPT-2 layer 0, head 1: position 0's embedding alone carries a large value in dim 5, the head's
    keys read only that dim and its queries are a large constant, so every query attends to key 0."""
    model = tiny_model("gpt2", layers=2, d=32, heads=4)
    head_dim, d, e = 8, 32, 5
    with torch.no_grad():
        model.transformer.wte.weight[:, e] = 0.0
        model.transformer.wpe.weight[:, e] = 0.0
        model.transformer.wpe.weight[0, e] = 30.0
        attn = model.transformer.h[0].attn.c_attn  # Conv1D: (d, 3d), columns q | k | v
        cols = slice(1 * head_dim, 2 * head_dim)
        attn.weight[:, cols] = 0.0
        attn.bias[cols] = 0.0
        attn.bias[1 * head_dim] = 100.0
        attn.weight[:, d + 1 * head_dim:d + 2 * head_dim] = 0.0
        attn.bias[d + 1 * head_dim:d + 2 * head_dim] = 0.0
        attn.weight[e, d + 1 * head_dim] = 1.0
    rows = _panel(model)
    alpha = rows[0]["alpha0"]
    assert alpha[1] > 0.99
    assert max(alpha[0], alpha[2], alpha[3]) < 0.5
    assert rows[0]["sink_share"] == 0.25 and rows[0]["alpha0_max"] == alpha[1]
    assert rows[1]["alpha0_max"] < 0.5  # layer 1 untouched


def test_a_planted_super_weight_is_found_at_its_layer_row_and_column():
    """Tiny Llama, layer 1: MLP channel 37 amplified 40× in both gate and up (a down-projection input
    spike of ~1600×) and the down-projection weight at (row 11, column 37) set to 8 (an output spike)."""
    model = tiny_model("llama", layers=3, d=32, heads=4)
    layer, row, col = 1, 11, 37
    with torch.no_grad():
        mlp = model.model.layers[layer].mlp
        mlp.gate_proj.weight[col] *= 40.0
        mlp.up_proj.weight[col] *= 40.0
        mlp.down_proj.weight[row, col] = 8.0
    seen = {}
    handle = mlp.down_proj.register_forward_hook(lambda _m, inputs, out: seen.update(x=inputs[0], y=out))
    with torch.inference_mode():
        find_parts(model).trunk(input_ids=torch.as_tensor(TOKENS))
    handle.remove()
    rows = _panel(model)
    found = rows[layer]
    for side, tensor in (("in", seen["x"]), ("out", seen["y"])):  # spike = top channel's max over the median's
        maxima = tensor.abs().reshape(-1, tensor.shape[-1]).amax(dim=0).double().numpy()
        assert found[f"down_{side}_max"] == pytest.approx(maxima.max(), rel=1e-6)
        assert found[f"down_{side}_ratio"] == pytest.approx(maxima.max() / np.sort(maxima)[(len(maxima) - 1) // 2],
                                                            rel=1e-6)
    assert (found["down_in_channel"], found["down_out_channel"]) == (col, row)
    assert found["super_weight"] == pytest.approx(8.0)
    assert found["down_in_outlier"] and found["down_out_outlier"]
    assert not rows[0]["down_in_outlier"] and not rows[0]["down_out_outlier"]  # before the plant: none


def test_kurtosis_is_scipys_of_the_same_hidden_states():
    """Over all tokens × dims of each layer's output, and of its per-channel RMS over tokens, across
    batches of unequal size: scipy.stats.kurtosis (Fisher, biased) of the tensors the model gives."""
    model = tiny_model("gpt_neox", scale=3.0)
    parts = find_parts(model)
    seen: dict[int, torch.Tensor] = {}
    handles = [m.register_forward_hook(lambda _m, _i, out, layer=layer: seen.__setitem__(layer, block_output(out)))
               for layer, m in hooked_modules(parts, include_embedding=True)]
    with torch.inference_mode():
        parts.trunk(input_ids=torch.as_tensor(TOKENS))
    for handle in handles:
        handle.remove()
    rows = _panel(model)
    for layer, h in seen.items():
        values = h.double().numpy()
        assert rows[layer]["kurtosis"] == pytest.approx(kurtosis(values.ravel()), rel=1e-9)
        rms = np.sqrt((values ** 2).mean(axis=(0, 1)))
        assert rows[layer]["rms_kurtosis"] == pytest.approx(kurtosis(rms), rel=1e-9)


def test_moments_merge_exactly_whatever_the_batches():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.standard_t(3, 1000) + 50.0, rng.normal(size=7) * 1e3])  # heavy tails, an offset
    m = Moments()
    for piece in np.split(x, [1, 2, 300, 1001]):
        m.add(torch.as_tensor(piece))
    assert m.excess_kurtosis() == pytest.approx(kurtosis(x), rel=1e-9)
    assert m.mean == pytest.approx(x.mean(), rel=1e-12)
    assert np.isnan(Moments().excess_kurtosis())
    constant = Moments()
    constant.add(torch.ones(10))
    assert np.isnan(constant.excess_kurtosis())


def test_position_0_is_recorded():
    tokens = TOKENS.copy()
    tokens[:, 0] = [9, 9, 9, 4, 9]
    rows = _panel(tiny_model("qwen2"), tokens)
    assert {r["position0_id"] for r in rows.values()} == {9}
    assert {r["position0_distinct"] for r in rows.values()} == {2}


def test_alpha0_equals_the_whole_softmax_for_every_kind_of_mask():
    """GQA keys; no mask (causal), a boolean, an additive and a 2-d padding mask: the same α as softmax
    over the full score matrix."""
    from massive_activations.capture.panel import alpha0

    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 4, 16, 8, generator=g), torch.randn(2, 2, 16, 8, generator=g)
    full = (q @ k.repeat_interleave(2, dim=1).transpose(-1, -2)) * 0.3
    causal = torch.ones(16, 16, dtype=torch.bool).tril()
    expected = torch.softmax(full.masked_fill(~causal, float("-inf")), dim=-1)[..., 0]
    for mask in (None, causal[None, None].expand(2, 1, 16, 16),
                 torch.zeros(2, 1, 16, 16).masked_fill(~causal, float("-inf")), torch.ones(2, 16)):
        torch.testing.assert_close(alpha0(q, k, mask, 0.3), expected)


def test_a_block_the_panel_cannot_read_fails_before_the_pass_naming_the_part_and_the_way_out():
    """A block whose MLP down-projection has an unknown name: the panel's lookup fails with the names it
    tried and --no-panel, no hook is left on the model, and the capture without the panel still runs."""
    from massive_activations.sources.model_parts import UnsupportedArchitectureError

    model, tokens = tiny_model("llama"), np.random.default_rng(0).integers(1, 100, size=(2, 8))
    mlp = find_parts(model).blocks[1].mlp
    mlp.out_proj = mlp.down_proj
    del mlp.down_proj
    mlp.forward = lambda x: mlp.out_proj(mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x))
    with pytest.raises(UnsupportedArchitectureError, match=r"no MLP down-projection.*down_proj.*--no-panel"):
        capture(model, tokens)
    assert not any(m._forward_hooks for m in model.modules())
    assert capture(model, tokens, CaptureSettings(panel=False)).panel is None
    attention = find_parts(model).blocks[0]
    attention.attention_block = attention.self_attn
    del attention.self_attn
    with pytest.raises(UnsupportedArchitectureError, match=r"no attention module.*self_attn"):
        find_parts(model).attention(0)
