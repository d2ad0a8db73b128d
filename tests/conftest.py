"""Shared fixtures: a real S3 server on loopback (moto server mode), the loopback Hub, the micro suite."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

from massive_activations.store import Store  # noqa: E402
from tests.hub_server import FakeHub  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


def s3_options(endpoint: str) -> dict:
    return {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": endpoint},
            "use_listings_cache": False}


@pytest.fixture
def s3_store(s3_endpoint) -> Store:
    import s3fs

    bucket = f"test-{uuid.uuid4().hex[:10]}"
    s3fs.S3FileSystem(**s3_options(s3_endpoint)).mkdir(bucket)
    return Store(f"s3://{bucket}/data", storage_options=s3_options(s3_endpoint))


@pytest.fixture(params=["file", "s3"])
def any_store(request, tmp_path) -> Store:
    if request.param == "file":
        return Store(f"file://{tmp_path}/store")
    return request.getfixturevalue("s3_store")


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub.constants as constants

    from massive_activations.sources import checkpoints

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(checkpoints, "_failed_endpoints", {})  # no endpoint remembered as dead from another test
    hub = FakeHub()
    hub.start()
    yield hub
    hub.stop()


@pytest.fixture(scope="session")
def micro_suite(tmp_path_factory) -> Store:
    """The micro offline suite, built once per test session into a local store."""
    from massive_activations.sources.offline_suite import build_suite, get_suite

    store = Store(tmp_path_factory.mktemp("micro") / "store")
    build_suite(get_suite("micro"), store)
    return store


@pytest.fixture(scope="session")
def micro_root(micro_suite) -> Path:
    return Path(micro_suite.root) / "suites" / "micro"


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """One Prefect server for the whole session (it takes 15–25 s to start)."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: tmp_path_factory.mktemp("prefect-results")}):
        with prefect_test_harness(server_startup_timeout=180):
            yield


@pytest.fixture
def s3_env(s3_endpoint, monkeypatch):
    """S3 settings the way users give them: the standard AWS environment variables."""
    import s3fs

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    s3fs.S3FileSystem.clear_instance_cache()
    yield s3_endpoint
    s3fs.S3FileSystem.clear_instance_cache()


def new_bucket(endpoint: str) -> str:
    import s3fs

    bucket = f"test-{uuid.uuid4().hex[:10]}"
    s3fs.S3FileSystem(**s3_options(endpoint)).mkdir(bucket)
    return bucket


@pytest.fixture(scope="session")
def captured_micro(micro_suite, micro_root, tmp_path_factory) -> Store:
    """A store holding the capture of every micro-suite checkpoint (library calls, no Prefect)."""
    from massive_activations.capture.capture import CaptureSettings
    from massive_activations.capture.capture_run import capture_to_store
    from massive_activations.capture.prompts import build_prompt_set, save_prompt_set
    from massive_activations.sources.checkpoints import FolderSource
    from massive_activations.sources.corpus import stdlib_docstrings
    from massive_activations.sources.offline_suite import get_suite, split_documents

    spec = get_suite("micro")
    store = Store(tmp_path_factory.mktemp("captured") / "store")
    source = FolderSource(str(micro_root))
    texts = split_documents(stdlib_docstrings(spec.corpus_chars), spec.heldout_fraction, spec.seed)[1]
    for model in source.models():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(source.fetch(model, 0))
        prompts = build_prompt_set(f"{model}-n4-len32", texts, tokenizer, n_sequences=4, length=32)  # the flows' name
        set_id = save_prompt_set(store, prompts)
        for step in source.steps(model):
            capture_to_store(store, source, model, step, set_id, prompts.tokens,
                             CaptureSettings(samples_per_layer=64), device="cpu")
    return store


def serve_micro_as_pythia(hub, micro_root: Path, tmp_path: Path, steps=(0, 1, 2)):
    """The micro model nx-l2-d32-h2 served as EleutherAI/pythia-14m by the loopback Hub, and prompts
    from a small text file (the Hub source has no suite corpus)."""
    from flows.params import PromptParams

    for step in steps:
        hub.add_folder("EleutherAI/pythia-14m", f"step{step}", micro_root / "nx-l2-d32-h2" / f"step{step}")
    texts = tmp_path / "texts.txt"
    texts.write_text("\n\n".join(f"text {i} " + "the quick brown fox " * 6 for i in range(20)))
    return PromptParams(n_sequences=2, length=16, text_file=str(texts))


def content_hashes(store: Store, datasets: tuple[str, ...] = ("stats", "ratios", "activations")) -> dict:
    """{(dataset, partition): content hash} for every partition of the datasets: two stores hold the
    same data exactly when these are equal."""
    return {(d, tuple(sorted(p.items()))): store.partition_metadata(d, p)["content_hash"]
            for d in datasets for p in store.partitions(d)}


def task_runs_of(flow_run_id) -> list:
    """The task runs the Prefect API recorded for one flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


def flow_runs_since(name: str, started_after) -> list:
    """Runs of the flow called ``name`` that started after a time (a datetime with its zone)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterStartTime

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[name])),
                                     flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(
                                         after_=started_after)))


def flow_run_logs(flow_run_id, until=lambda lines: True, timeout_s: float = 30.0) -> list[str]:
    """The log messages the Prefect API recorded for one flow run (its tasks' included). Logs travel in
    batches: this sends what is queued here, then reads until ``until(lines)`` holds or time is up."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            lines = [log.message for log in client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))]
            if until(lines) or time.monotonic() > deadline:
                return lines
            time.sleep(0.5)
