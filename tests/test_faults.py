"""Faults injected on purpose: the pipeline keeps working where it can, says clearly where it cannot,
and never loses or corrupts stored data. RELIABILITY.md summarises these runs."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import massive_activations.store as store_module
from flows.capture import capture
from flows.params import CaptureParams, PromptParams, SourceParams
from massive_activations.store import Store, StoreError
from tests.conftest import content_hashes, flow_runs_since, free_port, s3_options, serve_micro_as_pythia, task_runs_of

ROOT = Path(__file__).resolve().parents[1]
MODEL = "nx-l2-d32-h2"
PROMPTS = PromptParams(n_sequences=3, length=16)
SETTINGS = CaptureParams(samples_per_layer=8)


def _capture(store: str, root: Path | str, steps: str = "0,8,16,24", **kw):
    return capture(models=[MODEL], steps=steps, store=store, suite="micro",
                   source=SourceParams(kind="folder", root=str(root)), prompts=PROMPTS, settings=SETTINGS,
                   device="cpu", **kw)


def _all_readable(store: Store, datasets=("stats", "ratios", "activations")) -> int:
    """Every Parquet file of the datasets opens and has its provenance; returns how many."""
    keys = [k for d in datasets for k in store.list(d) if k.endswith(".parquet")]
    for key in keys:
        with store.fs.open(store.path(key), "rb") as fh:
            assert pq.read_schema(fh).metadata[store_module.METADATA_KEY]
    return len(keys)


def test_flaky_hub_with_a_truncated_body_gives_the_clean_runs_data(prefect_server, fake_hub, micro_root, tmp_path):
    prompts = serve_micro_as_pythia(fake_hub, micro_root, tmp_path)

    def run(store: Store, cache: str) -> dict:
        return capture(models=["pythia-14m"], steps="0:2", store=store.url, prompts=prompts,
                       source=SourceParams(kind="hub", endpoint=fake_hub.url, cache_dir=str(tmp_path / cache)),
                       settings=CaptureParams(samples_per_layer=0), device="cpu")

    clean = Store(tmp_path / "clean")
    assert run(clean, "hub-clean")["captured"] == 3
    fake_hub.log.clear()
    fake_hub.fail_share, fake_hub.truncate_next = 0.3, 1
    flaky = Store(tmp_path / "flaky")
    assert run(flaky, "hub-flaky")["captured"] == 3
    failures = [s for _, _, s in fake_hub.log if s >= 500]
    assert len(failures) >= 3 and {503, 504} <= set(failures) and fake_hub.truncate_next == 0
    assert content_hashes(flaky, ("stats", "ratios")) == content_hashes(clean, ("stats", "ratios"))


def test_offline_mode_fails_the_capture_once_without_retries(prefect_server, fake_hub, micro_root, tmp_path,
                                                             monkeypatch):
    """HF_HUB_OFFLINE with an empty cache is final: nothing retried (Prefect's backoff alone would take
    14 s, the source's own loop more), the reason in the error."""
    import huggingface_hub.constants

    prompts = serve_micro_as_pythia(fake_hub, micro_root, tmp_path)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    started = time.monotonic()
    state = capture(models=["pythia-14m"], steps="0", store=str(tmp_path / "s"), prompts=prompts,
                    source=SourceParams(kind="hub", endpoint=fake_hub.url, cache_dir=str(tmp_path / "cache")),
                    settings=CaptureParams(samples_per_layer=0), device="cpu", return_state=True)
    assert state.is_failed() and "offline mode is on" in str(state.message)
    assert time.monotonic() - started < 10 and not fake_hub.log
    assert all(r.run_count <= 1 for r in task_runs_of(state.state_details.flow_run_id))


def test_s3_server_stopped_mid_run_then_restarted(prefect_server, micro_root, tmp_path, monkeypatch):
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    s3fs.S3FileSystem(**s3_options(endpoint)).mkdir("outage")
    store = Store("s3://outage/run")
    outage: dict[str, float] = {}

    def cut_power() -> None:
        while not store.list("stats"):
            time.sleep(0.05)
        server.stop()
        outage["down"] = time.monotonic()
        time.sleep(3)
        server.start()  # moto keeps its buckets in this process, like a real server keeps its disk
        outage["up"] = time.monotonic()

    class Retries(logging.Handler):
        """Counts the S3 client's retry messages (s3fs and botocore log each retry at DEBUG)."""

        def __init__(self) -> None:
            super().__init__(logging.DEBUG)
            self.count = 0

        def emit(self, record: logging.LogRecord) -> None:
            self.count += "retr" in record.getMessage().lower()

    retries = Retries()
    loggers = [logging.getLogger(name) for name in ("s3fs", "botocore", "aiobotocore")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(retries)
        lg.setLevel(logging.DEBUG)
    watcher = threading.Thread(target=cut_power, daemon=True)
    watcher.start()
    try:
        started = time.monotonic()
        first = _capture(store.url, micro_root, steps="0,8,16,24,32,40,48", return_state=True)
        ended = time.monotonic()
        watcher.join(timeout=60)
        assert started < outage["down"] < outage["up"] < ended  # the whole outage fell inside the run
        task_retries = sum(r.run_count - 1 for r in task_runs_of(first.state_details.flow_run_id))
        # retried by the S3 client within a task, or by Prefect (a task that failed through it)
        assert retries.count + task_retries >= 1, "nothing was retried through the outage"
        rerun = _capture(store.url, micro_root, steps="0,8,16,24,32,40,48")  # completes whatever did not
        assert rerun["captured"] + rerun["skipped"] == 7 and not rerun["failed"]
        assert sorted(p["step"] for p in store.partitions("stats")) == [0, 8, 16, 24, 32, 40, 48]
        assert _all_readable(store) == 7 * (1 + 1 + 3)  # stats, ratios, activations × 3 layers: no partial object
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(retries)
            lg.setLevel(level)
        server.stop()
        s3fs.S3FileSystem.clear_instance_cache()


WRITER = """
import sys, numpy as np, pyarrow as pa
from massive_activations.store import Store
store = Store(sys.argv[1])
table = pa.table({"x": np.arange(3_000_000, dtype=np.float64) * float(sys.argv[2])})
print("writing", flush=True)
while True:
    store.write_partition("big", {"step": 0}, table, inputs={"v": sys.argv[2]}, overwrite=True)
"""


def test_sigkill_during_a_parquet_write_leaves_no_half_file(tmp_path):
    store = Store(tmp_path / "store")
    good = pa.table({"x": [1.0, 2.0, 3.0]})
    store.write_partition("big", {"step": 0}, good, inputs={"v": "old"})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for attempt in range(3):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, store.url, str(attempt + 2)], env=env,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "writing"
        time.sleep(0.3 + 0.2 * attempt)  # somewhere inside a write of ~24 MB
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        table = store.read_partition("big", {"step": 0})  # always a whole file: the old one or a complete new one
        assert table.num_rows in (3, 3_000_000)
        assert store.partitions("big") == [{"step": 0}]
    # A killed writer can leave its hidden temp file behind; it is invisible to readers and listings.
    assert all(not Path(k).name.startswith(".") for k in store.list("big"))
    store.write_partition("big", {"step": 0}, good, inputs={"v": "rerun"}, overwrite=True)
    assert store.read_partition("big", {"step": 0}).equals(good)
    assert store.partition_metadata("big", {"step": 0})["inputs"] == {"v": "rerun"}


def test_a_corrupted_checkpoint_fails_alone_and_is_listed(prefect_server, micro_root, tmp_path):
    root = tmp_path / "suite"
    shutil.copytree(micro_root / MODEL, root / MODEL)
    weights = root / MODEL / "step16" / "model.safetensors"
    weights.write_bytes(b"\xff" * 8 + weights.read_bytes()[8:])  # a header length that cannot be
    store = Store(tmp_path / "store")
    with pytest.raises(RuntimeError, match=r"1 of 4 checkpoints failed: .*step16.*model.safetensors"):
        _capture(store.url, root)
    assert sorted(p["step"] for p in store.partitions("stats")) == [0, 8, 24]
    assert _all_readable(store) == 3 * (1 + 1 + 3)


def test_a_full_disk_is_a_clear_error_and_leaves_the_old_data(tmp_path, monkeypatch):
    store = Store(tmp_path / "store")
    old = pa.table({"x": [1.0, 2.0]})
    store.write_partition("d", {"step": 0}, old, inputs={})

    class FullDisk:
        def __init__(self, path, mode):
            self.fh = open(path, mode)  # noqa: SIM115

        def write(self, data):
            self.fh.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    monkeypatch.setattr(store_module, "open", FullDisk, raising=False)
    with pytest.raises(StoreError, match=r"no space left .* d/step=0/part-0.parquet"):
        store.write_partition("d", {"step": 0}, pa.table({"x": [9.0] * 1000}), inputs={}, overwrite=True)
    monkeypatch.undo()
    assert store.read_partition("d", {"step": 0}).equals(old)
    assert os.listdir(Path(store.root) / "d" / "step=0") == ["part-0.parquet"]  # no temp file left


def test_a_bucket_that_refuses_writes_is_a_clear_error(s3_store, monkeypatch):
    old = pa.table({"x": [1.0]})
    s3_store.write_partition("d", {"step": 0}, old, inputs={})

    def refuse(*args, **kwargs):
        raise OSError(errno.EDQUOT, "QuotaExceeded: the bucket's quota is used up")

    monkeypatch.setattr(s3_store.fs, "pipe_file", refuse)
    with pytest.raises(StoreError, match="quota"):
        s3_store.write_partition("d", {"step": 0}, pa.table({"x": [2.0]}), inputs={}, overwrite=True)
    monkeypatch.undo()
    assert s3_store.read_partition("d", {"step": 0}).equals(old)


def test_two_runs_at_once_on_one_store(prefect_server, micro_root, tmp_path):
    """Idempotent, atomic writes (no locks): both runs finish, each partition is one whole file,
    and the data equals a single run's."""
    store = Store(tmp_path / "shared")
    from prefect.settings import PREFECT_API_URL

    cmd = [sys.executable, "-m", "flows.capture", "--models", MODEL, "--steps", "0,8,16,24,32", "--store",
           store.url, "--suite", "micro", "--root", str(micro_root), "--n-sequences", "3", "--length", "16",
           "--samples-per-layer", "8", "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_LOGGING_LEVEL": "WARNING",
           "PREFECT_API_URL": PREFECT_API_URL.value()}
    since = datetime.now(timezone.utc)
    runs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outputs = [r.communicate(timeout=600) for r in runs]
    assert [r.returncode for r in runs] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    a, b = flow_runs_since("capture", since)  # the two runs, as the API recorded them …
    assert a.start_time < b.end_time and b.start_time < a.end_time  # … were running at the same time
    assert sorted(p["step"] for p in store.partitions("stats")) == [0, 8, 16, 24, 32]
    files = [k for d in ("stats", "ratios", "activations") for k in store.list(d)]
    assert len(files) == len(set(files)) == 5 * (1 + 1 + 3)
    assert all(Path(k).name == "part-0.parquet" for k in files)
    single = Store(tmp_path / "single")
    _capture(single.url, micro_root, steps="0,8,16,24,32")
    assert content_hashes(store) == content_hashes(single)
