"""The Hub download cache, shared safely by threads, processes and Dask workers on one machine.

A revision in use is *pinned*: one file per user under ``<cache>/.pins/`` while it downloads, loads
or waits for the next piece of work. Eviction (least recently used first, among unpinned revisions)
holds an exclusive ``flock`` on ``<cache>/.lock``; pinning and every file download hold it shared,
and an eviction that finds a download in progress leaves the work to that download's own eviction.
So a pin is either seen by an eviction or made after it (the revision is then downloaded again),
and no eviction runs while a file is being linked into a snapshot: revisions share blobs (the same
config or tokenizer at every step), and a blob an unpinned revision is evicted with could otherwise
be linked by a download in that moment and left dangling. No revision is deleted under a reader.
A pin left by a dead process on this host is ignored and removed; a pin from another host
(a cache on a shared file system) is always respected.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from massive_activations.errors import BadInputError

log = logging.getLogger(__name__)
_HOST = socket.gethostname().replace(".", "_")


class CacheTooSmallError(BadInputError):
    """The cache cap cannot hold even the checkpoint being fetched."""


def _slug(repo: str, revision: str) -> str:
    return f"{repo.replace('/', '--')}@{revision}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class HubCache:
    """Pins, last use and least-recently-used eviction over a huggingface_hub cache folder."""

    def __init__(self, cache_dir: str | os.PathLike[str], max_bytes: int):
        self.dir = Path(cache_dir)
        self.max_bytes = max_bytes
        self._pins = self.dir / ".pins"
        self._used = self.dir / ".used"

    @contextmanager
    def _locked(self, exclusive: bool = True, wait: bool = True) -> Iterator[bool]:
        """Hold the cache lock; yields False (holding nothing) when ``wait`` is off and it is taken."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "a") as fh:
            try:
                fcntl.flock(fh, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def lease(self, repo: str, revision: str) -> str:
        """Pin ``repo@revision`` until :meth:`release` (or this process ends): for a checkpoint fetched
        ahead of its use, possibly released by another thread or process on this host. The token is
        the pin file's path."""
        owner = f"{_HOST}.{os.getpid()}.{threading.get_ident()}.{uuid.uuid4().hex[:8]}"
        pin = self._pins / _slug(repo, revision) / owner
        with self._locked(exclusive=False):
            pin.parent.mkdir(parents=True, exist_ok=True)
            pin.touch()
        return str(pin)

    def release(self, token: str) -> None:
        pin = Path(token)
        if pin.parent.parent != self._pins:
            raise ValueError(f"{token!r} is not a pin of the cache {self.dir}")
        self._mark(pin.parent.name)
        pin.unlink(missing_ok=True)

    @contextmanager
    def pinned(self, repo: str, revision: str) -> Iterator[None]:
        """Keep ``repo@revision`` from eviction for the duration (download, load, pending work)."""
        token = self.lease(repo, revision)
        try:
            yield
        finally:
            self.release(token)

    def downloading(self) -> AbstractContextManager[bool]:
        """Hold while a file downloads and is linked into its snapshot: no eviction runs meanwhile."""
        return self._locked(exclusive=False)

    def _mark(self, slug: str) -> None:
        """Record a use of the revision: eviction goes by this, least recent first."""
        self._used.mkdir(parents=True, exist_ok=True)
        (self._used / slug).touch()

    def pinned_revisions(self) -> set[str]:
        """Slugs (``repo@revision``) with a live pin; stale pins of dead local processes are removed."""
        live = set()
        for folder in self._pins.glob("*") if self._pins.exists() else ():
            for pin in folder.iterdir():
                host, pid = pin.name.split(".")[:2]
                if host == _HOST and not _alive(int(pid)):
                    pin.unlink(missing_ok=True)
                    continue
                live.add(folder.name)
        return live

    def last_used(self, slug: str) -> float:
        mark = self._used / slug
        return mark.stat().st_mtime if mark.exists() else 0.0

    def evict(self) -> list[str]:
        """Delete least recently used unpinned revisions until the cache is within its cap; the evicted slugs.

        Skipped (nothing evicted) while any file is downloading: waiting would stall the caller until
        another checkpoint's download ends (a prefetch, say); every download ends with an eviction of
        its own, so the last one to finish brings the cache back within its cap."""
        from huggingface_hub import scan_cache_dir

        with self._locked(wait=False) as held:
            if not held:
                log.debug("hub cache: a download is in progress; eviction left to it")
                return []
            info = scan_cache_dir(self.dir)
            if info.size_on_disk <= self.max_bytes:
                return []
            pinned = self.pinned_revisions()
            candidates = []
            for repo in info.repos:
                for rev in repo.revisions:
                    slugs = {_slug(repo.repo_id, ref) for ref in rev.refs} or {_slug(repo.repo_id, rev.commit_hash)}
                    if not slugs & pinned:
                        candidates.append((max(self.last_used(s) for s in slugs), rev, slugs))
            candidates.sort(key=lambda c: c[0])
            excess, doomed, names = info.size_on_disk - self.max_bytes, [], []
            for _, rev, slugs in candidates:
                if excess <= 0:
                    break
                doomed.append(rev.commit_hash)
                names += sorted(slugs)
                excess -= rev.size_on_disk
            if doomed:
                log.info("hub cache over %.2f GiB: evicting %s", self.max_bytes / 2**30, ", ".join(names))
                info.delete_revisions(*doomed).execute()
                for slug in names:
                    (self._used / slug).unlink(missing_ok=True)
            return names

    def check_fits(self, repo: str, revision: str, size: int) -> None:
        """Refuse a cap smaller than one checkpoint, naming both sizes."""
        if size > self.max_bytes:
            raise CacheTooSmallError(
                f"the Hub cache cap ({self.max_bytes / 2**30:.3g} GiB) is smaller than one checkpoint of {repo} "
                f"({size / 2**30:.3g} GiB at {revision}); raise cache_gb to at least {size / 2**30 * 2:.3g} "
                "(two checkpoints: the one in use and the next)")

