"""Capture, splicing, W8A8 and outlier dims on architectures other than GPT-NeoX, through one discovery."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from massive_activations.capture.capture import CaptureSettings, capture, layer_ratios
from massive_activations.evals.quantization import outlier_dims, w8a8
from massive_activations.evals.splice import clean_pass, lm_loss, loss_with_layer, token_losses, token_losses_with_layer
from massive_activations.sources.model_parts import UnsupportedArchitectureError, check_config, find_parts
from tests.tiny_models import KINDS, VOCAB, byte_tokenizer, tiny_config, tiny_model

LAYER, POS, DIM = 1, 5, 11


def prompts(n: int = 4, length: int = 16) -> np.ndarray:
    tokens = np.random.default_rng(0).integers(1, VOCAB, size=(n, length))
    tokens[:, 0] = 0
    return tokens


def plant(model, value: float = 500.0):
    """Block LAYER's MLP adds ``value`` at (POS, DIM) of every sequence."""
    mlp = find_parts(model).blocks[LAYER].mlp

    def hook(_module, _inputs, output):
        output = output.clone()
        output[:, POS, DIM] += value
        return output
    return mlp.register_forward_hook(hook)


@pytest.mark.parametrize("kind", KINDS)
def test_planted_value_is_found_at_its_layer_position_and_dim(kind):
    model, tokens = tiny_model(kind), prompts()
    handle = plant(model)
    try:
        stats = capture(model, tokens, CaptureSettings(samples_per_layer=0)).stats
        with torch.no_grad():
            hidden = model(torch.as_tensor(tokens), output_hidden_states=True).hidden_states
    finally:
        handle.remove()
    rows = stats.filter(np.asarray(stats.column("layer")) == LAYER)
    assert np.asarray(rows.column("top1_pos")).tolist() == [POS] * len(tokens)
    assert np.asarray(rows.column("top1_dim")).tolist() == [DIM] * len(tokens)
    # hidden_states[l + 1] is block l's output (the last one is after the final norm: not compared)
    ratios = dict(zip(*[np.asarray(c) for c in layer_ratios(stats).select(["layer", "ratio"]).columns], strict=True))
    for layer in range(model.config.num_hidden_layers - 1):
        h = hidden[layer + 1].abs().float().reshape(len(tokens), -1)
        expected = float(h.max(dim=1).values.mean() / h.median(dim=1).values.mean())
        assert ratios[layer] == pytest.approx(expected, rel=1e-5), (kind, layer)
    assert ratios[LAYER] > 10 * ratios[0]


@pytest.mark.parametrize("kind", KINDS)
def test_a_splice_started_from_the_clean_pass_gives_the_losses_of_running_every_block(kind):
    """Blocks before the spliced layer replay the clean pass's outputs, batch by batch: the losses are
    those of running the whole model, to the last bit, at every layer; the clean losses too."""
    model, tokens = tiny_model(kind), prompts(n=5)
    losses, recorded = clean_pass(model, tokens, batch_size=2)  # three batches, the last one short
    assert recorded is not None and [len(r) for r in recorded] == [model.config.num_hidden_layers] * 3
    assert np.array_equal(losses, token_losses(model, tokens, 2))
    noisy = lambda h, _ids: h + 0.1 * h.std() * torch.sin(torch.arange(h.numel()).reshape(h.shape))  # noqa: E731
    for layer in range(model.config.num_hidden_layers):
        for replace in (noisy, lambda h, _ids: h * 0):
            assert np.array_equal(token_losses_with_layer(model, tokens, layer, replace, 2, recorded),
                                  token_losses_with_layer(model, tokens, layer, replace, 2)), (kind, layer)
    assert all("forward" not in block.__dict__ for block in find_parts(model).blocks)  # each block runs again


@pytest.mark.parametrize("kind", KINDS)
def test_splice_w8a8_and_outlier_dims_run_through_the_same_discovery(kind):
    model, tokens = tiny_model(kind), prompts()
    base = lm_loss(model, tokens)
    assert loss_with_layer(model, tokens, LAYER, lambda h, _ids: h) == pytest.approx(base, rel=1e-5)
    assert loss_with_layer(model, tokens, LAYER, lambda h, _ids: h * 0) != pytest.approx(base, rel=1e-3)
    before = [p.clone() for p in model.parameters()]
    with w8a8(model):
        quantized = lm_loss(model, tokens)
        for m in find_parts(model).linears():  # int8 per output channel: a row, or a column of GPT-2's Conv1D
            w = m.weight.T if type(m).__name__ == "Conv1D" else m.weight
            q = w / (w.abs().amax(dim=1, keepdim=True) / 127)
            assert torch.allclose(q, q.round(), atol=1e-3)  # every channel: integer multiples of its scale
    assert quantized != base and abs(quantized - base) < 0.05 * base  # int8 moves the loss, a little
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))  # restored
    handle = plant(model, 1e4)  # after a norm, one dim that dominates is ~sqrt(d) = 5.7 and the rest ~0
    try:
        assert DIM in outlier_dims(model, tokens, threshold=4.0, layer_share=0.3, position_share=0.05)
    finally:
        handle.remove()


def test_unsupported_architectures_fail_before_any_weights_naming_what_is_missing():
    from transformers import BertConfig, T5Config

    bert = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=64, is_decoder=True)
    with pytest.raises(UnsupportedArchitectureError, match="list of 2 decoder blocks"):
        check_config(bert)  # its blocks sit under bert.encoder.layer, not in the trunk
    with pytest.raises(UnsupportedArchitectureError, match="'t5'.*no causal LM"):
        check_config(T5Config(vocab_size=VOCAB, d_model=32, num_layers=2, num_heads=4))
    for kind in KINDS:
        assert len(check_config(tiny_config(kind)).blocks) == 3


def test_a_model_spread_over_cpu_and_disk_gives_the_same_statistics_and_panel(tmp_path, monkeypatch):
    """max_memory forces most blocks to disk; the weights are stored in float16 and loaded in float32,
    so the offloaded blocks read a converted copy, which must live as long as the model does."""
    from massive_activations.sources.checkpoints import CheckpointHandle, FolderSource
    from massive_activations.store import Store

    folder = tmp_path / "root" / "tiny-llama" / "step0"
    model = tiny_model("llama", layers=4, d=64)
    model.to(torch.float16).save_pretrained(folder, safe_serialization=True)
    byte_tokenizer().save_pretrained(folder)
    source, tokens = FolderSource(Store(tmp_path / "root"), cache_dir=tmp_path / "cache"), prompts()
    from massive_activations.sources import checkpoints

    monkeypatch.setattr(checkpoints, "DEFAULT_CACHE", tmp_path / "cache")  # this test's alone
    whole = CheckpointHandle(source, "tiny-llama", 0, device="cpu", dtype="float32")
    spread = CheckpointHandle(source, "tiny-llama", 0, device="map:cpu=400KB", dtype="float32")
    try:
        placed = set(spread.get().model.hf_device_map.values())
        assert placed == {"cpu", "disk"}, spread.get().model.hf_device_map
        expected, got = capture(whole.get().model, tokens), capture(spread.get().model, tokens)
        assert got.stats.equals(expected.stats)
        assert got.panel.equals(expected.panel)  # the super weight read from the offload store too
        assert lm_loss(spread.get().model, tokens) == pytest.approx(lm_loss(whole.get().model, tokens), rel=1e-6)
    finally:
        whole.release()
        spread.release()
    left = [p for sub in ("converted", "offload") for p in (tmp_path / "cache" / sub).glob("*")]
    assert left == []  # the converted copy and the offload folder went with the model


@pytest.mark.parametrize("device, message", [
    ("map:cpu=lots", "size 'lots' of 'cpu' is not a size"),
    ("map:gpu=2GiB", "each cap is <gpu index>=<size> or cpu=<size>"),
    ("map:7=20GiB", "GPU 7 asked for"),
])
def test_bad_device_maps_fail_before_any_load(device, message):
    from massive_activations.sources.checkpoints import resolve_device

    with pytest.raises(ValueError, match=message):
        resolve_device(device)
