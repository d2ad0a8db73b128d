"""One pass per checkpoint against the loopback Hub: each revision downloaded once and loaded once for
its capture and every evaluation; the same data as capturing and evaluating in two stages; a run
killed in the middle of a checkpoint's evaluations resumes without redoing finished work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from prefect.task_runners import ThreadPoolTaskRunner

from flows.capture import capture
from flows.evaluate import evaluate
from flows.params import CaptureParams, EvalParams, SourceParams
from massive_activations.sources import checkpoints
from massive_activations.store import Store
from tests.conftest import content_hashes, serve_micro_as_pythia

ROOT = Path(__file__).resolve().parents[1]
MODEL = "nx-l2-d32-h2"
STEPS = (0, 1, 2, 4, 8, 16, 32)
EVAL_STEPS = (0, 4, 32)
KINDS = ("sae", "itda", "quant")
EVAL = EvalParams(sae_steps=20, train_tokens=512, heldout_tokens=128)


def _checkpoint_gib(micro_root: Path) -> float:
    return sum(f.stat().st_size for f in (micro_root / MODEL / "step0").iterdir() if f.is_file()) / 2**30


def _weight_gets(hub, step: int | None = None) -> Counter:
    return Counter(p.split("/")[3] for cmd, p, status in hub.log
                   if cmd == "GET" and status == 200 and p.endswith("model.safetensors")
                   and (step is None or p.split("/")[3] == f"step{step}"))


def _eval_rows(store: Store, kind: str) -> list[dict]:
    rows = store.read_dataset(f"evals/{kind}").to_pylist()
    return sorted(rows, key=lambda r: (r["step"], r.get("layer", 0), r["variant"]))


def _same_rows(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b, strict=True):
        for key, value in x.items():
            if key.endswith("seconds"):
                continue
            if isinstance(value, float):
                assert np.isclose(value, y[key], rtol=1e-4, atol=1e-6, equal_nan=True), (key, x, y)
            else:
                assert value == y[key], (key, x, y)


def test_one_pass_downloads_and_loads_each_checkpoint_once_and_matches_two_stages(
        prefect_server, fake_hub, micro_root, tmp_path, monkeypatch):
    prompts = serve_micro_as_pythia(fake_hub, micro_root, tmp_path, steps=STEPS)
    loads: Counter = Counter()
    real_load = checkpoints.load_from_dir

    def counting_load(path, model_name, step, **kw):
        loads[step] += 1
        return real_load(path, model_name, step, **kw)

    monkeypatch.setattr(checkpoints, "load_from_dir", counting_load)
    cap = 2 * _checkpoint_gib(micro_root)
    runner = ThreadPoolTaskRunner(max_workers=2)
    common = {"models": ["pythia-14m"], "steps": ",".join(map(str, STEPS)), "prompts": prompts,
              "settings": CaptureParams(samples_per_layer=64), "device": "cpu"}

    one = Store(tmp_path / "one-pass")
    summary = capture.with_options(task_runner=runner)(
        **common, store=one.url, source=SourceParams(kind="hub", endpoint=fake_hub.url, cache_gb=cap,
                                                     cache_dir=str(tmp_path / "hub-one")),
        evaluations=KINDS, eval_steps=",".join(map(str, EVAL_STEPS)), eval_settings=EVAL)
    assert summary["captured"] == len(STEPS) and not summary["failed"]
    assert all(s["evaluated"] == len(EVAL_STEPS) and not s["failed"] for s in summary["evaluations"].values())
    assert _weight_gets(fake_hub) == Counter({f"step{s}": 1 for s in STEPS})  # each revision's weights once
    assert loads == Counter(dict.fromkeys(STEPS, 1))  # capture and three evaluations share one load

    fake_hub.log.clear()
    loads.clear()
    two = Store(tmp_path / "two-stage")
    source = SourceParams(kind="hub", endpoint=fake_hub.url, cache_gb=cap, cache_dir=str(tmp_path / "hub-two"),
                          prefetch=0)
    capture.with_options(task_runner=runner)(**common, store=two.url, source=source)
    evaluate.with_options(task_runner=runner)(models=["pythia-14m"], steps=",".join(map(str, EVAL_STEPS)),
                                              store=two.url, kinds=KINDS, settings=EVAL, device="cpu", source=source,
                                              prompts=prompts)
    assert loads == Counter({s: 1 + (s in EVAL_STEPS) for s in STEPS})  # the old order loads evaluated steps twice
    assert content_hashes(one) == content_hashes(two)  # identical stats, ratios and samples
    for kind in KINDS:
        _same_rows(_eval_rows(one, kind), _eval_rows(two, kind))

    loads.clear()
    fake_hub.log.clear()
    again = evaluate.with_options(task_runner=runner)(  # all on the store: nothing downloaded, nothing loaded
        models=["pythia-14m"], steps=",".join(map(str, EVAL_STEPS)), store=one.url, kinds=KINDS, settings=EVAL,
        device="cpu", source=SourceParams(kind="hub", endpoint=fake_hub.url, cache_gb=cap,
                                          cache_dir=str(tmp_path / "hub-one")), prompts=prompts)
    assert all(s["skipped"] == len(EVAL_STEPS) for s in again["summary"].values())
    assert not loads and not _weight_gets(fake_hub)


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_a_run_killed_during_a_checkpoints_evaluations_resumes_without_redoing_finished_work(
        prefect_server, fake_hub, micro_root, tmp_path):
    from prefect.settings import PREFECT_API_URL

    serve_micro_as_pythia(fake_hub, micro_root, tmp_path, steps=(0, 1))
    store = Store(tmp_path / "store")
    command = [sys.executable, "-m", "flows.capture", "--store", store.url, "--models", "pythia-14m",
               "--steps", "0,1", "--source-kind", "hub", "--endpoint", fake_hub.url, "--cache-dir",
               str(tmp_path / "hub"), "--text-file", str(tmp_path / "texts.txt"), "--n-sequences", "2",
               "--length", "16", "--samples-per-layer", "64", "--evaluations", "sae,itda,quant",
               "--eval-steps", "all", "--sae-steps", "400", "--train-tokens", "512", "--heldout-tokens", "128",
               "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "0", "PREFECT_API_URL": PREFECT_API_URL.value(),
           "PREFECT_LOGGING_LEVEL": "WARNING"}
    part = {"model": "pythia-14m", "step": 0}
    run = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while store.partition_metadata("evals/sae", part) is None:  # step 0 captured, its SAEs done; ITDA next
        assert run.poll() is None and time.monotonic() < deadline, run.stderr.read().decode()[-3000:]
        time.sleep(0.02)
    os.kill(run.pid, signal.SIGKILL)
    run.wait()
    done = [k for k in KINDS if store.partition_metadata(f"evals/{k}", part) is not None]
    assert "quant" not in done, "the run ended step 0's evaluations before it was killed; nothing to resume"
    kept = {path: mtime for path, mtime in _files(Path(store.root)).items()
            if "step=0" in path and (path.startswith(("stats", "ratios", "activations"))
                                     or any(path.startswith(f"evals/{k}/") for k in done))}
    assert any(p.startswith("stats") for p in kept) and any(p.startswith("evals/sae") for p in kept)
    fake_hub.log.clear()

    rerun = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    after = _files(Path(store.root))
    assert {p: after[p] for p in kept} == kept  # the capture and finished evaluations were not rewritten
    assert all(store.partition_metadata(f"evals/{k}", part) is not None for k in KINDS)
    assert _weight_gets(fake_hub, 0).get("step0", 0) <= 1  # downloaded again at most once
    assert "sae: evaluated 0, skipped 2" in rerun.stdout or "sae: evaluated 1, skipped 1" in rerun.stdout


def test_a_dead_endpoint_fails_the_capture_run_within_the_documented_bound(prefect_server, tmp_path):
    import huggingface_hub.constants as constants

    from tests.hub_server import black_hole

    constants_offline = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = False
    server, url = black_hole()
    try:
        source = SourceParams(kind="hub", endpoint=url, cache_dir=str(tmp_path / "hub"), download_retries=1,
                              download_timeout_s=0.5)
        bound = checkpoints.HubSource(endpoint=url, retries=1, timeout_s=0.5).worst_case_s()  # what the form asks
        assert bound == 2 * 0.5 + 1.5 * 1.0
        texts = tmp_path / "texts.txt"
        texts.write_text("some text\n\nmore text")
        started = time.monotonic()
        state = capture(models=["pythia-14m"], steps="0,1,2", store=str(tmp_path / "store"), source=source,
                        prompts={"text_file": str(texts)}, device="cpu", return_state=True)
        took = time.monotonic() - started
    finally:
        constants.HF_HUB_OFFLINE = constants_offline
        server.close()
    assert state.is_failed() and "still failing after 2 attempts" in str(state.result(raise_on_failure=False))
    assert took <= bound + 15, (took, bound)  # one file's worst case, plus the flow's own start and end


def test_each_checkpoint_at_once_gets_its_share_of_the_cores_and_the_counts_are_recorded(monkeypatch):
    """Two slots on two cores: one torch, BLAS and OpenMP thread each inside the pass, recorded in
    provenance; the process's own counts come back after it."""
    import torch
    from threadpoolctl import threadpool_info

    from flows.runner import compute_threads
    from massive_activations.provenance import thread_settings

    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: {0, 1})
    torch.set_num_threads(2)
    before = {(p["user_api"], p["internal_api"]): p["num_threads"] for p in threadpool_info()}
    with compute_threads(2) as each:
        assert each == 1 and torch.get_num_threads() == 1
        assert all(p["num_threads"] == 1 for p in threadpool_info())
        recorded = thread_settings()
        assert recorded["torch_intra_op"] == 1 and recorded["blas:openblas"] == 1
    assert torch.get_num_threads() == 2
    assert {(p["user_api"], p["internal_api"]): p["num_threads"] for p in threadpool_info()} == before
    with compute_threads(1) as each:
        assert each == 2 and torch.get_num_threads() == 2  # one checkpoint at a time: both cores


def test_a_slot_goes_to_the_next_checkpoint_as_soon_as_either_finishes(prefect_server, tmp_path, monkeypatch):
    """Two slots, a long checkpoint first (one being evaluated), then short ones (only captured): the
    short ones run one after another beside the long one, not after it (a core would sit idle)."""
    import logging
    import threading

    from prefect import flow, task

    from flows import checkpoint_pass
    from tasks.progress import Progress

    times: dict[int, tuple[float, float]] = {}
    lock = threading.Lock()

    @task(persist_result=False)
    def fake_checkpoint(_store_url, _source, _model, step, *_rest):
        start = time.monotonic()
        time.sleep(4.0 if step == 0 else 0.2)
        with lock:
            times[step] = (start, time.monotonic())
        return {"model": "m", "step": step}

    monkeypatch.setattr(checkpoint_pass, "process_checkpoint", fake_checkpoint)
    monkeypatch.setattr(checkpoint_pass, "stored_outcome", lambda *_args: None)
    jobs = [checkpoint_pass.Job("m", step, {"kind": "folder"}) for step in range(5)]

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
    def one_pass() -> list[dict]:
        progress = Progress(len(jobs), "checkpoints", "pass-test", logging.getLogger("test"))
        return checkpoint_pass.run_pass(Store(tmp_path / "store"), jobs, "cpu", "float32", 0, progress)

    assert [r["step"] for r in one_pass()] == [0, 1, 2, 3, 4]
    long_end = times[0][1]
    assert all(times[step][1] < long_end for step in range(1, 5)), times  # every short one ran beside the long one
