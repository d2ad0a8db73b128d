"""The per-checkpoint map on a local Dask cluster of 2 workers gives the same data as the thread runner."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from flows.capture import capture
from flows.evaluate import evaluate
from flows.params import CaptureParams, EvalParams, PromptParams, SourceParams
from flows.runner import RunnerParams, task_runner
from massive_activations.store import Store
from tests.conftest import content_hashes, flow_run_logs

MODEL = "nx-l2-d32-h2"


def captured_lines(lines: list[str]) -> int:
    return sum(bool(re.search(r"step \d+: captured$", line)) for line in lines)  # the tasks' lines


def test_dask_runner_matches_the_thread_runner(prefect_server, micro_root, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))  # the workers import tasks/
    stores = {}
    for kind in ("threads", "dask"):
        store = Store(tmp_path / kind)
        runner = task_runner(RunnerParams(kind=kind, max_workers=2))
        state = capture.with_options(task_runner=runner)(
            models=[MODEL], steps="0,24,48", store=store.url, suite="micro",
            source=SourceParams(kind="folder", root=str(micro_root)), prompts=PromptParams(n_sequences=3, length=16),
            settings=CaptureParams(samples_per_layer=16), device="cpu", return_state=True)
        result = state.result()
        assert result["captured"] == 3 and not result["failed"]
        # the tasks' own log lines, written on the workers, are in the flow run's API, as with threads
        lines = flow_run_logs(state.state_details.flow_run_id, until=lambda ls: captured_lines(ls) == 3)
        assert captured_lines(lines) == 3, kind
        evaluated = evaluate.with_options(task_runner=task_runner(RunnerParams(kind=kind, max_workers=2)))(
            models=[MODEL], steps="24,48", store=store.url, kinds=("quant",), suite="micro",
            settings=EvalParams(train_tokens=1024, heldout_tokens=256), device="cpu")
        assert all(s["evaluated"] == 2 for s in evaluated["summary"].values())
        stores[kind] = store
    for dataset in ("stats", "ratios", "activations", "evals/quant", "evals/quant_model"):
        threads, dask = content_hashes(stores["threads"], (dataset,)), content_hashes(stores["dask"], (dataset,))
        assert threads and threads == dask, dataset



def test_a_remote_cluster_is_refused_when_the_api_is_only_on_loopback(prefect_server):
    """Workers elsewhere could not report to 127.0.0.1: said before any cluster is contacted."""
    with pytest.raises(ValueError, match="cannot reach this machine's Prefect API"):
        task_runner(RunnerParams(kind="dask", dask_address="tcp://10.0.0.5:8786"))


EPHEMERAL = r"""
import re
import sys
from prefect import flow
from flows.capture import capture
from flows.params import CaptureParams, PromptParams, SourceParams
from flows.runner import RunnerParams, task_runner
from tests.conftest import flow_run_logs

@flow
def parent(root, store):  # as the pipeline does: the runner is made inside the running flow
    return capture.with_options(task_runner=task_runner(RunnerParams(kind="dask", max_workers=2)))(
        models=["nx-l2-d32-h2"], steps="0,24,48", store=store, suite="micro",
        source=SourceParams(kind="folder", root=root), prompts=PromptParams(n_sequences=3, length=16),
        settings=CaptureParams(samples_per_layer=0), device="cpu", return_state=True)

if __name__ == "__main__":
    state = parent(sys.argv[1], sys.argv[2])
    lines = flow_run_logs(state.state_details.flow_run_id,
                          until=lambda ls: sum(bool(re.search(r"step \d+: captured$", x)) for x in ls) >= 3)
    print("WORKER LOG LINES", sum(bool(re.search(r"step \d+: captured$", x)) for x in lines))
"""


def test_on_the_ephemeral_api_dask_workers_report_to_the_flows_server(micro_root, tmp_path):
    """`make run`'s setting (no PREFECT_API_URL): one temporary server, and the workers' task logs in it."""
    script = tmp_path / "ephemeral_dask.py"
    script.write_text(EPHEMERAL)
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env |= {"PYTHONPATH": str(root), "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_LOGGING_LEVEL": "INFO"}
    run = subprocess.run([sys.executable, str(script), str(micro_root), str(tmp_path / "store")], cwd=root,
                         env=env, capture_output=True, text=True, timeout=300)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-3000:]
    assert output.count("Starting temporary server") == 1  # not one more per worker
    assert "WORKER LOG LINES 3" in output
