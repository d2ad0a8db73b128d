"""The per-checkpoint map on a local Dask cluster of 2 workers gives the same data as the thread runner."""

from __future__ import annotations

from pathlib import Path

from flows.capture import capture
from flows.evaluate import evaluate
from flows.params import CaptureParams, PromptParams, SourceParams
from flows.runner import RunnerParams, task_runner
from massive_activations.store import Store
from tests.conftest import content_hashes

MODEL = "nx-l2-d32-h2"


def test_dask_runner_matches_the_thread_runner(prefect_server, micro_root, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))  # the workers import tasks/
    stores = {}
    for kind in ("threads", "dask"):
        store = Store(tmp_path / kind)
        runner = task_runner(RunnerParams(kind=kind, max_workers=2))
        result = capture.with_options(task_runner=runner)(
            models=[MODEL], steps="0,24,48", store=store.url, suite="micro",
            source=SourceParams(kind="folder", root=str(micro_root)), prompts=PromptParams(n_sequences=3, length=16),
            settings=CaptureParams(samples_per_layer=16), device="cpu")
        assert result["captured"] == 3 and not result["failed"]
        evaluated = evaluate.with_options(task_runner=task_runner(RunnerParams(kind=kind, max_workers=2)))(
            models=[MODEL], steps="24,48", store=store.url, kinds=("quant",),
            device="cpu")
        assert all(s["evaluated"] == 2 for s in evaluated["summary"].values())
        stores[kind] = store
    for dataset in ("stats", "ratios", "activations", "evals/quant", "evals/quant_model"):
        threads, dask = content_hashes(stores["threads"], (dataset,)), content_hashes(stores["dask"], (dataset,))
        assert threads and threads == dask, dataset

