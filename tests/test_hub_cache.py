"""The Hub cache under concurrency, its cap, and the one retry layer's worst case, against the loopback Hub."""

from __future__ import annotations

import hashlib
import multiprocessing
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prefect.task_runners import ThreadPoolTaskRunner

from flows.capture import capture
from flows.evaluate import evaluate
from flows.params import CaptureParams, EvalParams, SourceParams
from massive_activations.sources.checkpoints import HubSource, TransientSourceError
from massive_activations.sources.hub_cache import CacheTooSmallError, HubCache
from massive_activations.store import Store
from tests.conftest import serve_micro_as_pythia
from tests.hub_server import black_hole

MODEL = "nx-l2-d32-h2"
STEPS = (0, 1, 2, 4, 8, 16, 32)  # the micro suite's steps that are on Pythia's schedule


def _checkpoint_bytes(micro_root: Path) -> int:
    return sum(f.stat().st_size for f in (micro_root / MODEL / "step0").iterdir() if f.is_file())


def _hub(url: str, cache: Path, gib: float, **kw) -> HubSource:
    return HubSource(cache_dir=cache, endpoint=url, max_cache_gb=gib, backoff_s=0.01, seed=0, **kw)


def test_a_cap_below_one_checkpoint_is_refused_before_the_weights_download(fake_hub, micro_root, tmp_path):
    serve_micro_as_pythia(fake_hub, micro_root, tmp_path, steps=(0,))
    hub = _hub(fake_hub.url, tmp_path / "hub", _checkpoint_bytes(micro_root) / 2 / 2**30)
    with pytest.raises(CacheTooSmallError, match=r"cache cap \(.* GiB\) is smaller than one checkpoint of "
                                                 r"EleutherAI/pythia-14m \(.* GiB at step0\); raise cache_gb"):
        hub.fetch("pythia-14m", 0)
    assert not [p for cmd, p, _ in fake_hub.log if cmd == "GET" and p.endswith("model.safetensors")]


def test_eviction_is_least_recently_used_and_never_takes_a_pinned_revision(fake_hub, micro_root, tmp_path):
    serve_micro_as_pythia(fake_hub, micro_root, tmp_path, steps=STEPS)
    hub = _hub(fake_hub.url, tmp_path / "hub", 2.5 * _checkpoint_bytes(micro_root) / 2**30)
    def cached() -> set[str]:
        return {ref.name for ref in (tmp_path / "hub").glob("models--*/refs/*")
                if (ref.parent.parent / "snapshots" / ref.read_text().strip() / "config.json").exists()}

    hub.fetch("pythia-14m", 0)
    hub.fetch("pythia-14m", 1)
    with hub.checkout("pythia-14m", 0):  # used again: now step1 is the least recently used
        pass
    hub.fetch("pythia-14m", 2)
    assert cached() == {"step0", "step2"}
    with hub.checkout("pythia-14m", 0) as held:  # pinned while four more revisions pass through
        for step in (4, 8, 16, 32):
            hub.fetch("pythia-14m", step)
            assert (held / "model.safetensors").exists() and (held / "config.json").exists()
    assert "step0" in cached() and len(cached()) <= 2


def test_no_eviction_runs_while_a_file_is_downloading(fake_hub, micro_root, tmp_path):
    """A download holds the cache lock shared: an eviction that starts meanwhile (another process's,
    with a cap of nothing) finds it taken and deletes nothing, not even an unpinned revision whose
    blobs the download could be linking (revisions share them); once the download ends it evicts."""
    serve_micro_as_pythia(fake_hub, micro_root, tmp_path, steps=(0, 1))
    hub = _hub(fake_hub.url, tmp_path / "hub", 1.0)
    hub.fetch("pythia-14m", 0)  # cached and unpinned
    weights = micro_root / MODEL / "step1" / "model.safetensors"
    fake_hub.bandwidth = weights.stat().st_size / 1.5  # step1's weights take 1.5 s
    with ThreadPoolExecutor(1) as pool:
        fetching = pool.submit(hub.fetch, "pythia-14m", 1)
        deadline = time.monotonic() + 30
        while not any(cmd == "GET" and p.endswith("step1/model.safetensors") for cmd, p, _ in fake_hub.log):
            assert time.monotonic() < deadline and not fetching.done(), "step1's weights were never requested"
            time.sleep(0.01)
        time.sleep(0.2)
        assert HubCache(tmp_path / "hub", 0).evict() == []  # mid-download
        fetching.result()
    fake_hub.bandwidth = None
    assert (hub.fetch("pythia-14m", 0) / "model.safetensors").exists()
    assert not any(cmd == "GET" and p.endswith("step0/model.safetensors") for cmd, p, _ in fake_hub.log[-20:])
    assert sorted(HubCache(tmp_path / "hub", 0).evict()) == ["EleutherAI--pythia-14m@step0",
                                                             "EleutherAI--pythia-14m@step1"]


def _reader(url: str, cache: str, gib: float, steps: list[int], digests: dict[int, str], rounds: int) -> list[str]:
    """Check out revisions again and again (threads of one process); every file must stay whole while pinned."""
    import huggingface_hub.constants as constants

    constants.HF_HUB_OFFLINE = False  # this process talks to the loopback Hub only
    hub = _hub(url, Path(cache), gib)
    errors: list[str] = []

    def work(offset: int) -> None:
        for i in range(rounds):
            step = steps[(i + offset) % len(steps)]
            try:
                with hub.checkout("pythia-14m", step) as path:
                    first = hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
                    time.sleep(0.02)  # others download and evict meanwhile
                    again = hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
                    if not first == again == digests[step]:
                        errors.append(f"step{step}: weights changed while pinned")
            except Exception as err:  # noqa: BLE001 - every failure is reported to the test
                errors.append(f"step{step}: {type(err).__name__}: {err}")

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(work, range(2)))
    return errors


@pytest.mark.parametrize("processes", [1, 2])
def test_processes_and_threads_sharing_a_small_cache_never_lose_a_revision_in_use(fake_hub, micro_root, tmp_path,
                                                                                 processes):
    """2 and 4 concurrent readers (processes × 2 threads) over 7 revisions with room for 2.5."""
    serve_micro_as_pythia(fake_hub, micro_root, tmp_path, steps=STEPS)
    digests = {s: hashlib.sha256((micro_root / MODEL / f"step{s}" / "model.safetensors").read_bytes()).hexdigest()
               for s in STEPS}
    gib = 2.5 * _checkpoint_bytes(micro_root) / 2**30
    args = (fake_hub.url, str(tmp_path / "hub"), gib, list(STEPS), digests, 10)
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        errors = [e for result in pool.starmap(_reader, [args] * processes) for e in result]
    assert errors == []
    evictions = sum(1 for cmd, p, _ in fake_hub.log if cmd == "GET" and p.endswith("model.safetensors"))
    assert evictions > len(STEPS)  # the cap was tight: revisions were evicted and fetched again


def test_capture_and_evaluate_with_4_workers_on_a_tight_cache_all_succeed(prefect_server, fake_hub, micro_root,
                                                                        tmp_path):
    prompts = serve_micro_as_pythia(fake_hub, micro_root, tmp_path, steps=STEPS)
    store = Store(tmp_path / "store")
    source = SourceParams(kind="hub", endpoint=fake_hub.url, cache_dir=str(tmp_path / "hub"),
                          cache_gb=2.5 * _checkpoint_bytes(micro_root) / 2**30)
    runner = ThreadPoolTaskRunner(max_workers=4)
    summary = capture.with_options(task_runner=runner)(
        models=["pythia-14m"], steps=",".join(map(str, STEPS)), store=store.url, source=source,
        prompts=prompts, settings=CaptureParams(samples_per_layer=64), device="cpu")
    assert summary["captured"] == len(STEPS) and not summary["failed"]
    result = evaluate.with_options(task_runner=runner)(
        models=["pythia-14m"], steps="all", store=store.url, kinds=("sae", "itda", "quant"),
        settings=EvalParams(sae_steps=20, train_tokens=512, heldout_tokens=128), device="cpu", source=source,
        prompts=prompts)
    assert all(s["evaluated"] == len(STEPS) and not s["failed"] for s in result["summary"].values())


def test_a_dead_endpoint_fails_within_the_documented_worst_case_and_then_at_once(tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    server, url = black_hole()
    hub = HubSource(cache_dir=tmp_path / "hub", endpoint=url, retries=2, timeout_s=0.5, backoff_s=0.2, seed=0)
    bound = hub.worst_case_s()
    assert bound == pytest.approx(3 * 0.5 + 1.5 * (0.2 + 0.4))
    started = time.monotonic()
    with pytest.raises(TransientSourceError, match="still failing after 3 attempts"):
        hub.fetch("pythia-14m", 0)
    took = time.monotonic() - started
    assert 3 * 0.5 <= took <= bound + 1.0, took  # every attempt waited its timeout; no other layer retried
    started = time.monotonic()
    with pytest.raises(TransientSourceError, match="not tried again for now"):
        HubSource(cache_dir=tmp_path / "hub", endpoint=url).fetch("pythia-14m", 1)
    assert time.monotonic() - started < 0.5
    server.close()
