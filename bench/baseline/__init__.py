"""The evaluation path as it was before the throughput work (commit 03d89e5), pinned verbatim for
bench/eval_throughput.py's side-by-side run: ``sae.py``, ``itda.py`` and ``eval_run.py`` (its
imports of the first two pointed here). Not used by the project. One change since the pin, so that
the two paths train the same SAEs: ``train_sae`` trains on inputs scaled to E‖x − E[x]‖² = d_model
and folds the factor back into the biases (issue 25's scale-invariant objective, as today's
``train_saes``)."""
