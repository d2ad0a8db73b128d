"""The Hub cache's pins, lock and eviction rule on a cache folder laid out by hand, in the layout
huggingface_hub writes (blobs, snapshots linking to them, refs), so each rule is checked alone and fast."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from massive_activations.sources import hub_cache
from massive_activations.sources.hub_cache import CacheTooSmallError, HubCache

REPO = "EleutherAI/pythia-14m"
SIZE = 1000  # bytes of each revision's one file


def _revision(cache: Path, ref: str, content: bytes, repo: str = REPO, refs: tuple[str, ...] = ()) -> str:
    """One revision of ``repo`` holding one file, as hf_hub_download leaves it; its commit hash."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    commit = hashlib.sha1(f"{repo}@{ref}".encode()).hexdigest()
    blob = folder / "blobs" / hashlib.sha256(content).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(content)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    (snapshot / "model.safetensors").symlink_to(os.path.relpath(blob, snapshot))
    for name in (ref, *refs):
        (folder / "refs" / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / "refs" / name).write_text(commit)
    return commit


def _cached(cache: Path) -> set[str]:
    return {p.name for p in (cache / f"models--{REPO.replace('/', '--')}" / "refs").iterdir()
            if (p.parent.parent / "snapshots" / p.read_text() / "model.safetensors").exists()}


def _used(cache: HubCache, ref: str, when: float) -> None:
    cache._mark(f"{REPO.replace('/', '--')}@{ref}")
    os.utime(cache.dir / ".used" / f"{REPO.replace('/', '--')}@{ref}", (when, when))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def three(tmp_path) -> HubCache:
    """Three revisions of SIZE bytes, used in the order step1 (longest ago), step2, step0."""
    for i, ref in enumerate(("step0", "step1", "step2")):
        _revision(tmp_path, ref, bytes([i]) * SIZE)
    cache = HubCache(tmp_path, 3 * SIZE)
    for ref, when in (("step1", 1000.0), ("step2", 2000.0), ("step0", 3000.0)):
        _used(cache, ref, when)
    return cache


def test_eviction_takes_the_least_recently_used_until_the_cache_is_within_its_cap(three):
    assert three.evict() == []  # exactly at the cap: within it
    three.max_bytes = 3 * SIZE - 1
    assert three.evict() == ["EleutherAI--pythia-14m@step1"]  # one byte over: the oldest goes, and only it
    assert _cached(three.dir) == {"step0", "step2"}
    assert three.last_used("EleutherAI--pythia-14m@step1") == 0.0  # its use mark goes with it
    three.max_bytes = SIZE
    assert three.evict() == ["EleutherAI--pythia-14m@step2"]
    assert _cached(three.dir) == {"step0"}


def test_a_revision_never_used_goes_first_and_a_pinned_one_never(three):
    _revision(three.dir, "step3", b"\x03" * SIZE)  # downloaded by a process that kept no use mark
    assert three.evict() == ["EleutherAI--pythia-14m@step3"]  # before step1, used longest ago
    three.max_bytes = 0
    with three.pinned(REPO, "step1"):
        assert three.evict() == ["EleutherAI--pythia-14m@step2", "EleutherAI--pythia-14m@step0"]
    assert _cached(three.dir) == {"step1"}


def test_a_revision_under_two_refs_is_one_candidate_dated_by_its_latest_use(tmp_path):
    _revision(tmp_path, "step0", b"\x00" * SIZE, refs=("main",))
    _revision(tmp_path, "step1", b"\x01" * SIZE)
    cache = HubCache(tmp_path, SIZE)
    for ref, when in (("step0", 1000.0), ("main", 5000.0), ("step1", 3000.0)):
        _used(cache, ref, when)
    assert cache.evict() == ["EleutherAI--pythia-14m@step1"]  # main's use dates step0
    with cache.pinned(REPO, "main"):  # a pin under either name keeps it
        cache.max_bytes = 0
        assert cache.evict() == []


def test_pins_are_per_user_and_a_release_marks_a_use(tmp_path):
    cache = HubCache(tmp_path, SIZE)
    first, second = cache.lease(REPO, "step0"), cache.lease(REPO, "step0")
    assert first != second and Path(first).parent == tmp_path / ".pins" / "EleutherAI--pythia-14m@step0"
    before = time.time()
    cache.release(first)
    assert cache.pinned_revisions() == {"EleutherAI--pythia-14m@step0"}  # the other user still holds it
    assert cache.last_used("EleutherAI--pythia-14m@step0") >= before - 1
    cache.release(second)
    assert cache.pinned_revisions() == set()
    cache.release(second)  # a second release of the same pin is harmless (an error path may repeat it)
    for foreign in (tmp_path / "elsewhere" / "x" / "y", tmp_path / ".a" / "x" / "y"):  # sorting after and before
        with pytest.raises(ValueError, match="is not a pin of the cache"):
            cache.release(str(foreign))


def test_stale_local_pins_are_removed_and_other_hosts_pins_respected(tmp_path, monkeypatch):
    cache = HubCache(tmp_path, SIZE)
    pins = tmp_path / ".pins"
    gone = _dead_pid()
    dead = pins / "r@dead" / f"{hub_cache._HOST}.{gone}.1.aa"
    alive = pins / "r@alive" / f"{hub_cache._HOST}.{os.getpid()}.1.bb"
    remote = [pins / f"r@remote{i}" / f"{host}.{gone}.1.cc" for i, host in enumerate(("0host", "~host"))]
    mixed = [pins / "r@mixed" / f"{hub_cache._HOST}.{gone}.{i}.dd" for i in range(5)]  # dead, beside a live one
    for pin in (dead, alive, *remote, *mixed, pins / "r@mixed" / f"{hub_cache._HOST}.{os.getpid()}.9.ee"):
        pin.parent.mkdir(parents=True, exist_ok=True)
        pin.touch()
    assert cache.pinned_revisions() == {"r@alive", "r@remote0", "r@remote1", "r@mixed"}
    assert not dead.exists() and alive.exists() and all(p.exists() for p in remote)  # hosts sorting either side
    assert not any(p.exists() for p in mixed)  # every stale pin goes in one pass

    def forbidden(pid: int, sig: int) -> None:
        raise PermissionError(pid)

    monkeypatch.setattr(os, "kill", forbidden)  # a live process of another user: kill(pid, 0) is refused
    dead.touch()
    assert "r@dead" in cache.pinned_revisions() and dead.exists()


def test_an_eviction_says_what_it_evicted_and_the_cap_in_gib(tmp_path, caplog):
    """Two revisions of 1.5 GiB (sparse files: nothing is written) under a 2 GiB cap."""
    for i, ref in enumerate(("step0", "step1")):
        _revision(tmp_path, ref, bytes([i]))
        blob = next(p for p in (tmp_path / "models--EleutherAI--pythia-14m" / "blobs").iterdir()
                    if p.read_bytes() == bytes([i]))
        os.truncate(blob, 3 * 2**29)
    cache = HubCache(tmp_path, 2 * 2**30)
    _used(cache, "step0", 2000.0)
    _used(cache, "step1", 1000.0)
    with caplog.at_level("INFO", logger=hub_cache.__name__):
        assert cache.evict() == ["EleutherAI--pythia-14m@step1"]
    assert "hub cache over 2.00 GiB: evicting EleutherAI--pythia-14m@step1" in caplog.text


def test_while_a_file_downloads_no_eviction_runs(three):
    three.max_bytes = 0
    with three.downloading():
        assert three.evict() == []
        with three._locked(exclusive=False) as shared:  # other downloads go on meanwhile
            assert shared
    assert len(three.evict()) == 3


def test_a_cap_below_one_checkpoint_is_refused_naming_both_sizes(tmp_path):
    cache = HubCache(tmp_path, 2**30)
    cache.check_fits(REPO, "step0", 2**30)  # exactly the cap fits
    with pytest.raises(CacheTooSmallError, match=r"cap \(1 GiB\) is smaller than one checkpoint of "
                                                 r"EleutherAI/pythia-14m \(1.5 GiB at step0\); raise cache_gb "
                                                 r"to at least 3 \(two checkpoints"):
        cache.check_fits(REPO, "step0", 3 * 2**29)
