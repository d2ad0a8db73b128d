"""Capture against known answers: a planted outlier, transformers' own hidden states, memory."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from massive_activations.capture.capture import CaptureSettings, capture, layer_ratios, sample_positions


def tiny_model(layers: int = 3, d: int = 32, heads: int = 4, seed: int = 0) -> GPTNeoXForCausalLM:
    torch.manual_seed(seed)
    config = GPTNeoXConfig(vocab_size=64, hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
                           intermediate_size=4 * d, max_position_embeddings=64, use_parallel_residual=True,
                           rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                            "partial_rotary_factor": 0.25})
    return GPTNeoXForCausalLM(config).eval()


def prompts(n: int = 6, length: int = 16, seed: int = 0) -> np.ndarray:
    tokens = np.random.default_rng(seed).integers(1, 64, size=(n, length))
    tokens[:, 0] = 0  # token id 0 only ever at position 0
    return tokens


def column(table, name, layer):
    return np.asarray(table.filter(np.asarray(table.column("layer")) == layer).column(name))


def plant_outlier(model: GPTNeoXForCausalLM, tokens: np.ndarray, layer: int, dim: int, multiple: float,
                  feature: int = 5) -> None:
    """Make ``layer``'s MLP write ``multiple`` × the unplanted median into ``dim`` of the first token only."""
    with torch.no_grad():
        emb = model.gpt_neox.embed_in.weight
        emb[:, feature] = 0.0
        emb[0].zero_()
        emb[0, feature] = 0.25  # token 0: one feature that LayerNorm turns into ~sqrt(d)
        median = column(capture(model, tokens).stats, "median", layer).mean()
        mlp = model.gpt_neox.layers[layer].mlp
        mlp.dense_h_to_4h.weight[0].zero_()
        mlp.dense_h_to_4h.weight[0, feature] = 20.0
        mlp.dense_h_to_4h.bias[0] = -60.0  # fires only where LayerNorm(x)[feature] > 3: token 0
        mlp.dense_4h_to_h.weight[:, 0] = 0.0
        mlp.dense_4h_to_h.weight[dim, 0] = 1.0
        x = model.gpt_neox.layers[layer].post_attention_layernorm
        # what the neuron will output for token 0, through the layers before
        hidden = model(torch.as_tensor(tokens[:1]), output_hidden_states=True).hidden_states[layer]
        pre = x(hidden)[0, 0, feature] * 20.0 - 60.0
        gelu = torch.nn.functional.gelu(pre).item()
        mlp.dense_4h_to_h.weight[dim, 0] = multiple * median / gelu


def test_planted_outlier_is_found_at_its_layer_position_and_dim():
    """Layer 1's MLP writes a value ~1000× the median into dim 7 of the first token only."""
    model, layer, dim = tiny_model(), 1, 7
    tokens = prompts()
    plant_outlier(model, tokens, layer, dim, 1000.0)
    stats = capture(model, tokens, CaptureSettings(massive_rel=500)).stats
    ratios = layer_ratios(stats)
    ratio = dict(zip(ratios.column("layer").to_pylist(), ratios.column("ratio").to_pylist(), strict=True))
    assert (column(stats, "top1_pos", layer) == 0).all()
    assert (column(stats, "top1_dim", layer) == dim).all()
    assert (column(stats, "top1_token", layer) == 0).all()
    assert 700 < ratio[layer] < 1400  # planted at ~1000× the (unplanted) median
    assert ratio[layer - 1] < 30 and ratio[-1] < 30  # absent before the planting layer
    top1 = column(stats, "top1", layer)
    assert np.allclose(top1, top1[0], rtol=1e-4)  # same token, same value in every sequence
    # excluding position 0 removes it
    assert column(stats, "top1_excl0", layer).max() < top1.min() / 50
    assert (column(stats, "n_above_rel", layer) == 1).all()  # exactly the planted value, per sequence
    assert column(stats, "n_above_rel", layer - 1).sum() == 0


def test_massive_flag_marks_exactly_the_planted_layer():
    """A value 2000× the median in the last layer makes that layer, and only it, massive.

    The last layer, because the residual stream carries a planted value into every later layer. This
    model's median |h| is ~0.02, so the absolute threshold is lowered from 100 to 20 (a setting)."""
    model, tokens = tiny_model(), prompts()
    plant_outlier(model, tokens, layer=2, dim=3, multiple=2000.0)
    settings = CaptureSettings(massive_abs=20.0)
    stats = capture(model, tokens, settings).stats
    assert column(stats, "top1", 2).min() > 20
    ratios = layer_ratios(stats, settings).to_pylist()
    assert {r["layer"]: r["massive"] for r in ratios} == {-1: False, 0: False, 1: False, 2: True}
    assert {r["layer"]: r["n_massive_sequences"] for r in ratios} == {-1: 0, 0: 0, 1: 0, 2: len(tokens)}
    # the absolute threshold is part of the criterion: above every value, nothing is massive
    strict = layer_ratios(stats, CaptureSettings(massive_abs=1e9)).to_pylist()
    assert not any(r["massive"] for r in strict)


def test_capture_matches_output_hidden_states():
    model = tiny_model(layers=4)
    tokens = prompts(n=5, length=24)
    stats = capture(model, tokens, CaptureSettings(batch_size=2)).stats
    model.gpt_neox.final_layer_norm = torch.nn.Identity()  # hidden_states[-1] is after it; ours before
    with torch.no_grad():
        hidden = model(torch.as_tensor(tokens), output_hidden_states=True).hidden_states
    for layer in range(-1, 4):
        a = hidden[layer + 1].abs().reshape(5, -1).double()
        top = a.topk(3, dim=1).values.numpy()
        np.testing.assert_allclose(column(stats, "top1", layer), top[:, 0], rtol=1e-5)
        np.testing.assert_allclose(column(stats, "top3", layer), top[:, 2], rtol=1e-5)
        np.testing.assert_allclose(column(stats, "median", layer), a.median(dim=1).values.numpy(), rtol=1e-5)
        np.testing.assert_allclose(column(stats, "mean_abs", layer), a.mean(dim=1).numpy(), rtol=1e-5)
        flat = a.argmax(dim=1).numpy()
        np.testing.assert_array_equal(column(stats, "top1_pos", layer), flat // 32)
        np.testing.assert_array_equal(column(stats, "top1_dim", layer), flat % 32)
    assert stats.num_rows == 5 * 5 and set(np.asarray(stats.column("seq"))) == set(range(5))


def test_ratio_is_mean_top1_over_mean_median():
    stats = capture(tiny_model(), prompts()).stats
    ratios = layer_ratios(stats)
    for row in ratios.to_pylist():
        top1, median = column(stats, "top1", row["layer"]), column(stats, "median", row["layer"])
        assert row["ratio"] == pytest.approx(top1.mean() / median.mean())
        per_seq = top1 / median
        assert row["ratio_min"] == pytest.approx(per_seq.min())
        assert row["ratio_std"] == pytest.approx(per_seq.std(ddof=1))
        assert row["ratio_seq_mean"] == pytest.approx(per_seq.mean())


def test_samples_are_reproducible_and_include_each_top1():
    model, tokens = tiny_model(), prompts(n=4, length=16)
    settings = CaptureSettings(samples_per_layer=20, sample_seed=3, batch_size=3)
    a = capture(model, tokens, settings).samples
    b = capture(tiny_model(seed=1), tokens, settings).samples  # another "checkpoint"
    assert set(a) == {-1, 0, 1, 2}
    fixed = {tuple(p) for p in sample_positions(4, 16, 20, 3).tolist()}
    for layer, table in a.items():
        rows = set(zip(table.column("seq").to_pylist(), table.column("pos").to_pylist(), strict=True))
        assert fixed <= rows
        assert sum(table.column("is_top1").to_pylist()) >= 1
        fixed_b = {r for r in zip(b[layer].column("seq").to_pylist(), b[layer].column("pos").to_pylist(),
                                  strict=True)}
        assert fixed <= fixed_b  # same fixed positions for every checkpoint
        vectors = np.asarray(table.column("vector").to_pylist())
        assert vectors.shape[1] == 32 and np.isfinite(vectors).all()


def test_bad_prompts_fail_before_the_forward_pass():
    model = tiny_model()
    with pytest.raises(ValueError, match="exceeds the model's context of 64"):
        capture(model, np.zeros((2, 65), dtype=np.int64))
    with pytest.raises(ValueError, match="non-empty"):
        capture(model, np.zeros((0, 8), dtype=np.int64))
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 64\)"):
        capture(model, np.full((1, 8), 99))
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        CaptureSettings(batch_size=0)


def _big_tensors(threshold: int) -> int:
    return sum(1 for o in gc.get_objects()
               if torch.is_tensor(o) and not isinstance(o, torch.nn.Parameter) and o.numel() >= threshold)


def _live_counts(layers: int) -> list[int]:
    model = tiny_model(layers=layers)
    threshold = 4 * 32 * 32  # one layer's output for 4 sequences × 32 tokens × 32 dims
    counts: list[int] = []
    handles = [layer.register_forward_hook(lambda *_: counts.append(_big_tensors(threshold)))
               for layer in model.gpt_neox.layers]
    capture(model, prompts(n=4, length=32), CaptureSettings(batch_size=4))
    for h in handles:
        h.remove()
    return counts


def test_memory_does_not_grow_with_depth():
    """Live layer-sized tensors, counted after each layer, stay flat and equal for 2 and 8 layers.

    If the capture kept each layer's output (as output_hidden_states does) the count would grow by
    one per layer; it stays flat because every hook reduces its layer to a few numbers per sequence.
    """
    shallow, deep = _live_counts(2), _live_counts(8)
    assert max(deep) - min(deep) <= 1, deep
    assert max(deep) <= max(shallow) + 1, (shallow, deep)
