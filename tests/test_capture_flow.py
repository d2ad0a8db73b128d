"""The capture flow on the micro suite, on a local and an S3 store, through a real Prefect server."""

from __future__ import annotations

import pytest

from flows.capture import capture
from flows.params import CaptureParams, EvalParams, PromptParams, SourceParams
from massive_activations.store import Store
from tests.conftest import new_bucket, serve_micro_as_pythia

MODEL = "nx-l2-d32-h2"
STEPS = [0, 8, 48]


def _run(store_url: str, micro_root, **overrides):
    params = dict(models=[MODEL], steps=",".join(map(str, STEPS)), store=store_url, suite="micro",
                  source=SourceParams(kind="folder", root=str(micro_root)),
                  prompts=PromptParams(n_sequences=3, length=16), settings=CaptureParams(samples_per_layer=8),
                  device="cpu")
    return capture(**(params | overrides))


def _mtimes(store: Store) -> dict[str, float]:
    return {k: store.fs.info(store.path(k)).get("LastModified", store.fs.info(store.path(k)).get("mtime"))
            for k in store.list("stats")}


def _check_capture(store: Store, micro_root):
    first = _run(store.url, micro_root)
    assert first["captured"] == 3 and not first["failed"]
    stats = store.read_dataset("stats", where={"model": MODEL})
    keys = set(zip(stats.column("step").to_pylist(), stats.column("layer").to_pylist(),
                   stats.column("seq").to_pylist(), strict=True))
    assert keys == {(s, layer, q) for s in STEPS for layer in (-1, 0, 1) for q in range(3)}
    ratios = store.read_dataset("ratios", where={"model": MODEL})
    assert ratios.num_rows == 3 * 3
    for row in ratios.to_pylist():
        sel = [r for r in stats.to_pylist() if r["step"] == row["step"] and r["layer"] == row["layer"]]
        expected = sum(r["top1"] for r in sel) / sum(r["median"] for r in sel)
        assert row["ratio"] == pytest.approx(expected)
    assert store.partitions("activations") and len(store.partitions("activations")) == 3 * 3
    meta = store.partition_metadata("stats", {"model": MODEL, "step": 8})
    assert meta["inputs"]["prompt_set"].startswith(f"{MODEL}-n3-len16-")
    before = _mtimes(store)

    second = _run(store.url, micro_root)
    assert second["captured"] == 0 and second["skipped"] == 3  # the store said so, not Prefect's cache
    assert _mtimes(store) == before  # nothing rewritten

    refreshed = _run(store.url, micro_root, refresh=True)
    assert refreshed["captured"] == 3  # refresh recomputes whatever the store holds …
    after = _mtimes(store)
    assert all(after[k] != before[k] for k in before if "/stats/" in f"/{k}")  # … and rewrites
    before = after

    changed = _run(store.url, micro_root, settings=CaptureParams(samples_per_layer=8, massive_abs=50.0))
    assert changed["captured"] == 3  # different inputs: recaptured, not served stale


def test_capture_flow_on_a_local_store(prefect_server, micro_root, tmp_path):
    _check_capture(Store(tmp_path / "store"), micro_root)


def test_capture_flow_on_s3(prefect_server, micro_root, s3_env):
    _check_capture(Store(f"s3://{new_bucket(s3_env)}/runs"), micro_root)


def test_capture_flow_rejects_bad_input_before_work(prefect_server, micro_root, tmp_path):
    with pytest.raises(Exception, match="not on the schedule"):
        _run(str(tmp_path / "s"), micro_root, steps="7")
    with pytest.raises(Exception, match="exceeds nx-l2-d32-h2's context of 32 tokens"):
        _run(str(tmp_path / "s"), micro_root, prompts=PromptParams(n_sequences=2, length=33))
    with pytest.raises(Exception, match="no checkpoints of 'nx-missing'"):
        _run(str(tmp_path / "s"), micro_root, models=["nx-missing"])
    with pytest.raises(Exception, match="unknown device 'gpu'"):
        _run(str(tmp_path / "s"), micro_root, device="gpu")
    with pytest.raises(Exception, match="unknown dtype 'float8'"):
        _run(str(tmp_path / "s"), micro_root, dtype="float8")
    with pytest.raises(Exception, match="65536 training and 8192 held-out tokens do not fit in the texts left"):
        _run(str(tmp_path / "s"), micro_root, evaluations=("sae",),  # budgets given: used as is, and too big
             eval_settings=EvalParams(train_tokens=2**16, heldout_tokens=2**13))
    assert not Store(tmp_path / "s").list("stats") and not Store(tmp_path / "s").list("prompts")


def test_capture_flow_from_the_hub_source(prefect_server, fake_hub, micro_root, tmp_path):
    """Switching to the Hub is one parameter: the real client fetches checkpoints from the loopback Hub."""
    # position 0 as the folder source has it (auto gives text on the Hub, whose Pythia tokenizer adds no BOS)
    prompts = serve_micro_as_pythia(fake_hub, micro_root, tmp_path).model_copy(update={"first_token": "eos"})
    store = Store(tmp_path / "store")
    summary = capture(models=["pythia-14m"], steps="0:2", store=store.url,
                      source=SourceParams(kind="hub", endpoint=fake_hub.url, cache_dir=str(tmp_path / "hub")),
                      prompts=prompts, settings=CaptureParams(samples_per_layer=0), device="cpu")
    assert summary["captured"] == 3
    assert sorted(p["step"] for p in store.partitions("stats")) == [0, 1, 2]
    hub_ratios = store.read_dataset("ratios", where={"step": 2}).sort_by("layer").column("ratio").to_pylist()
    folder = Store(tmp_path / "folder")
    _run(folder.url, micro_root, steps="2", prompts=prompts, settings=CaptureParams(samples_per_layer=0))
    folder_ratios = folder.read_dataset("ratios").sort_by("layer").column("ratio").to_pylist()
    assert hub_ratios == pytest.approx(folder_ratios)  # same weights, same prompts, same numbers
