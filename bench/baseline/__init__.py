"""The evaluation path as it was before the throughput work (commit 03d89e5), pinned verbatim for
bench/eval_throughput.py's side-by-side run: ``sae.py``, ``itda.py`` and ``eval_run.py`` (its
imports of the first two pointed here). Not used by the project."""
