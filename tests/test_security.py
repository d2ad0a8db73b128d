"""Untrusted storage and secrets: nothing is unpickled, credentials never leave the environment,
user input cannot escape the store, and servers bind to loopback by default."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from flows.capture import capture
from flows.params import CaptureParams, PromptParams, SourceParams
from massive_activations.store import Store, StoreError
from tests.conftest import new_bucket

ROOT = Path(__file__).resolve().parents[1]
FAKE_KEY_ID = "AKIAPLANTEDFAKE12345"
FAKE_SECRET = "planted/FAKE+secret/do-not-leak-0123456789"


def _sources() -> list[Path]:
    return [p for d in ("src", "tasks", "flows", "deployments") for p in (ROOT / d).rglob("*.py")]


def test_nothing_unpickles_and_torch_load_is_weights_only():
    for path in _sources():
        text = path.read_text()
        assert not re.search(r"\b(pickle|cloudpickle|dill|joblib)\.loads?\(", text), path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, f"{path}: {call}"
    policy = (ROOT / "tasks" / "policy.py").read_text()
    assert 'result_serializer="json"' in policy and "pickle" not in policy.replace("unpickled", "")


def test_secrets_stay_out_of_logs_results_and_metadata(prefect_server, s3_endpoint, micro_root, monkeypatch,
                                                        capfd):
    import s3fs
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    s3fs.S3FileSystem.clear_instance_cache()
    store = Store(f"s3://{new_bucket(s3_endpoint)}/secret-test")
    state = capture(models=["nx-l2-d32-h2"], steps="0,48", store=store.url, suite="micro",
                    source=SourceParams(kind="folder", root=str(micro_root)),
                    prompts=PromptParams(n_sequences=2, length=16), settings=CaptureParams(samples_per_layer=4),
                    device="cpu", return_state=True)
    assert state.is_completed()
    s3fs.S3FileSystem.clear_instance_cache()
    out, err = capfd.readouterr()
    haystacks = [out, err]
    with get_client(sync_client=True) as client:
        run_id = state.state_details.flow_run_id
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
        haystacks += [log.message for log in logs]
        haystacks += [json.dumps(b.model_dump(mode="json"), default=str) for b in client.read_block_documents()]
        haystacks.append(json.dumps(client.read_flow_run(run_id).parameters))
    for dataset in ("stats", "ratios", "activations", "prompts"):
        haystacks += [json.dumps(store.partition_metadata(dataset, p)) for p in store.partitions(dataset)]
    cached = [k for k in store.list("cache/prefect")]
    assert cached, "task results should be on the store"
    for key in cached:
        text = store.read_bytes(key).decode()
        json.loads(text)  # results are JSON documents, never pickles
        haystacks.append(text)
    assert len(haystacks) > 10
    for text in haystacks:
        assert FAKE_SECRET not in text and FAKE_KEY_ID not in text


@pytest.mark.parametrize("dataset, partition", [
    ("../outside", {"step": 0}), ("/etc", {"step": 0}), ("evals/../../x", {"step": 0}),
    ("stats", {"model": "../../etc"}), ("stats", {"model": "/abs"}), ("stats", {"../k": 1})])
def test_user_input_cannot_escape_the_store(tmp_path, dataset, partition):
    import pyarrow as pa

    store = Store(tmp_path / "store")
    with pytest.raises(StoreError, match="invalid"):
        store.write_partition(dataset, partition, pa.table({"x": [1]}), inputs={})
    assert not any(p for p in tmp_path.rglob("*") if p.is_file())


def test_a_model_name_with_a_path_is_refused_before_work(prefect_server, micro_root, tmp_path):
    with pytest.raises(Exception, match="no checkpoints of '../nx-l2-d32-h2'|invalid"):
        capture(models=["../nx-l2-d32-h2"], steps="0", store=str(tmp_path / "s"), suite="micro",
                source=SourceParams(kind="folder", root=str(micro_root)), device="cpu")
    assert not (tmp_path / "s" / "stats").exists()


def test_nothing_the_project_runs_or_tells_you_to_run_exposes_the_server():
    """The server commands of the README and the operations page (before its section on exposing the
    server on purpose) and the project's own entry points leave the API on loopback: no --host, no
    PREFECT_SERVER_API_HOST (``massive-activations server`` passes --host 127.0.0.1 itself)."""
    pages = (ROOT / "README.md").read_text() + (ROOT / "docs" / "operations.md").read_text().split("## Exposing")[0]
    starts = [line for line in pages.splitlines() if "prefect server start" in line or "activations server" in line]
    assert len(starts) >= 2 and not [line for line in starts if "--host" in line or "API_HOST" in line]
    for path in ("Makefile", ".ci/run", "deployments/serve.py", "deployments/prefect.yaml", "flows/command.py"):
        assert "PREFECT_SERVER_API_HOST" not in (ROOT / path).read_text(), path


def test_the_flows_turn_server_analytics_off_unless_told_otherwise():
    code = ("import flows.capture; from prefect.settings import PREFECT_SERVER_ANALYTICS_ENABLED as s; "
            "print(s.value())")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_SERVER_ANALYTICS_ENABLED"}
    run = lambda extra: subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, **extra},  # noqa: E731
                                       capture_output=True, text=True, timeout=120).stdout.strip()
    assert run({}) == "False"
    assert run({"PREFECT_SERVER_ANALYTICS_ENABLED": "true"}) == "True"  # an explicit choice is kept
