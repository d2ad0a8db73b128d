"""The micro suite end to end: trained here, laid out for the folder source, loadable."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from massive_activations.sources.checkpoints import FolderSource, load_checkpoint
from massive_activations.sources.offline_suite import (
    SUITES,
    SuiteModel,
    SuiteSpec,
    build_suite,
    built_models,
    get_suite,
    lr_at,
)
from massive_activations.store import Store


def test_schedule_is_pythia_shaped():
    assert SUITES["micro"].steps == [0, 1, 2, 4, 8, 16, 24, 32, 40, 48]
    default = SUITES["default"]
    assert default.steps[:8] == [0, 1, 2, 4, 8, 16, 32, default.save_interval]
    assert default.steps[-1] == default.total_steps
    assert len(default.steps) >= 27  # the fit needs at least 27 points per series


def test_lr_warms_up_then_decays_to_a_tenth():
    spec = SUITES["default"]
    assert lr_at(0, spec) == pytest.approx(spec.lr / spec.warmup_steps)
    assert lr_at(spec.warmup_steps, spec) == pytest.approx(spec.lr)
    assert lr_at(spec.total_steps, spec) == pytest.approx(spec.lr * spec.min_lr_ratio)


def test_bad_suite_specs_are_rejected():
    with pytest.raises(ValueError, match="multiple of save_interval"):
        SuiteSpec(name="x", models=(SuiteModel(2, 32, 2),), total_steps=50, save_interval=8)
    with pytest.raises(ValueError, match="rotary dims"):
        SuiteSpec(name="x", models=(SuiteModel(2, 48, 4),), total_steps=16, save_interval=8)
    with pytest.raises(ValueError, match="unknown offline suite 'huge'"):
        get_suite("huge")


def test_micro_suite_checkpoints_load_through_the_folder_source(micro_suite, micro_root):
    spec = get_suite("micro")
    manifests = built_models(spec, micro_suite)
    assert set(manifests) == {m.name for m in spec.models}
    source = FolderSource(str(micro_root))
    assert source.models() == sorted(manifests)
    for name, manifest in manifests.items():
        assert source.steps(name) == spec.steps
        assert manifest["provenance"]["libraries"]["torch"] == torch.__version__
        losses = [loss for _, loss in manifest["loss_curve"]]
        assert losses[-1] < losses[0] - 0.5  # it learned something
        first = load_checkpoint(source, name, 0, device="cpu")
        last = load_checkpoint(source, name, spec.total_steps, device="cpu")
        cfg = first.model.config
        assert cfg.use_parallel_residual and cfg.rope_parameters["partial_rotary_factor"] == 0.25
        assert first.architecture.d_ff == 4 * first.architecture.d_model
        w0 = first.model.gpt_neox.layers[0].mlp.dense_h_to_4h.weight
        w1 = last.model.gpt_neox.layers[0].mlp.dense_h_to_4h.weight
        assert not torch.equal(w0, w1)


def test_suite_training_is_deterministic(micro_suite, tmp_path):
    """Same spec and seed, same weights: rebuilding one model reproduces the stored checkpoint."""
    from dataclasses import replace

    from massive_activations.sources.offline_suite import train_model
    from massive_activations.store import Store

    spec = replace(get_suite("micro"), models=(get_suite("micro").models[0],))
    again = Store(tmp_path / "again")
    train_model(spec, spec.models[0].name, again)
    a = load_checkpoint(FolderSource(micro_suite.url_for("suites/micro")), spec.models[0].name, 48, device="cpu")
    b = load_checkpoint(FolderSource(again.url_for("suites/micro")), spec.models[0].name, 48, device="cpu")
    for (ka, va), (kb, vb) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert ka == kb and torch.allclose(va, vb, atol=1e-6), ka


def test_every_sequence_starts_with_the_fixed_first_token():
    from massive_activations.sources.offline_suite import sample_batch

    spec = SUITES["micro"]
    batch = sample_batch(np.arange(1, 1000), spec, np.random.default_rng(0))
    assert batch.shape == (spec.batch_size, spec.seq_len) and (batch[:, 0] == 0).all()


def test_training_reports_progress_every_tenth_of_its_steps(tmp_path):
    """In this process (workers=1) and from training processes through the store (workers=2)."""
    spec = get_suite("micro")  # 48 steps: a report every 4
    seen: list[dict] = []
    build_suite(replace(spec, models=spec.models[:1]), Store(tmp_path / "one"), workers=1, on_progress=seen.append)
    assert [r["step"] for r in seen] == list(range(4, 49, 4))
    assert all(np.isfinite(r["loss"]) and r["ratio"] >= 1 for r in seen)
    assert seen[-1]["eta_s"] == 0 and seen[0]["eta_s"] > 0
    pooled: list[dict] = []
    build_suite(spec, Store(tmp_path / "two"), workers=2, on_progress=pooled.append, poll_s=0.2)
    assert {r["model"] for r in pooled} == {m.name for m in spec.models}
    assert set({r["model"]: r["step"] for r in pooled}.values()) == {48}  # each seen to the end


def test_a_progress_line_at_most_every_five_percent(prefect_server, caplog):
    import logging

    from tasks.progress import Progress

    logger = logging.getLogger("progress-test")
    with caplog.at_level(logging.INFO, logger="progress-test"):
        progress = Progress(222, "checkpoints captured", "test-progress", logger)
        for done in range(1, 223):
            progress.update(done)
    lines = [r.getMessage() for r in caplog.records if r.name == "progress-test"]
    assert 18 <= len(lines) <= 21 and lines[-1] == "progress: 222 of 222 checkpoints captured (100%)"
