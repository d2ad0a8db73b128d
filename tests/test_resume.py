"""A pipeline run killed (SIGKILL) in the middle of capture resumes without redoing finished work."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from flows.capture import capture
from flows.params import SourceParams
from massive_activations.store import Store
from tests.conftest import content_hashes

ROOT = Path(__file__).resolve().parents[1]
STEPS = "0,8,16,24,32,40,48"
N_CHECKPOINTS = 14  # 2 micro-suite models × 7 steps


def _pipeline(store: Path) -> list[str]:
    return [sys.executable, "-m", "flows.pipeline", "--suite", "micro", "--store", str(store), "--until", "fit",
            "--steps", STEPS,
            "--device", "cpu"]


def _stats_mtimes(store: Store) -> dict[str, float]:
    return {k: os.path.getmtime(store.path(k)) for k in store.list("stats")}


def test_killed_pipeline_resumes_from_cache(prefect_server, micro_suite, tmp_path):
    from prefect.settings import PREFECT_API_URL

    shutil.copytree(Path(micro_suite.root) / "suites", tmp_path / "store" / "suites")
    store = Store(tmp_path / "store")
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(ROOT),
           "HF_HUB_OFFLINE": "1", "PREFECT_LOGGING_LEVEL": "WARNING"}
    proc = subprocess.Popen(_pipeline(store.root), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while len(store.list("stats")) < 3:
        assert proc.poll() is None, "the pipeline ended before it could be killed"
        assert time.monotonic() < deadline, "capture did not start within 300 s"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _stats_mtimes(store)
    assert 3 <= len(before) < N_CHECKPOINTS, f"killed too late: {len(before)} checkpoints done"

    rerun = subprocess.run(_pipeline(store.root), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    line = next(x for x in rerun.stdout.splitlines() if x.startswith("Checkpoints captured"))
    done = len(before)
    assert f"captured {N_CHECKPOINTS - done}," in line, line  # only what had not finished
    skipped = int(line.split("skipped (already on the store) ")[1].split(",")[0])
    assert skipped == done and "failed 0" in line
    after = _stats_mtimes(store)
    assert {k: after[k] for k in before} == before  # finished checkpoints were not rewritten
    assert len(after) == N_CHECKPOINTS and len(store.partitions("fits")) == 2

    # The resumed data equals an uninterrupted capture with the same parameters.
    clean = Store(tmp_path / "clean")
    capture(store=clean.url, suite="micro", device="cpu", steps=STEPS,
            source=SourceParams(kind="folder", root=store.url_for("suites/micro")))
    assert content_hashes(store) == content_hashes(clean)
