"""Progress of long flows: one progress artifact, and a log line at most every few percent."""

from __future__ import annotations

import logging

from prefect.artifacts import create_progress_artifact, update_progress_artifact


class Progress:
    """``update(done)`` moves the artifact and logs "progress: done of total …", but only when at
    least ``every`` percent has passed since the last line (and at the end)."""

    def __init__(self, total: int, what: str, key: str, logger: logging.Logger | logging.LoggerAdapter,
                 every: float = 5.0):
        self.total, self.what, self.logger, self.every = max(total, 1), what, logger, every
        self.artifact = create_progress_artifact(0.0, key=key, description=what)
        self.shown = 0.0

    def update(self, done: float, note: str = "") -> None:
        percent = 100.0 * done / self.total
        if percent - self.shown >= self.every or (done >= self.total and self.shown < 100.0):
            update_progress_artifact(self.artifact, percent)
            self.logger.info("progress: %s of %d %s (%.0f%%)%s", f"{done:g}", self.total, self.what, percent,
                             f"; {note}" if note else "")
            self.shown = percent
