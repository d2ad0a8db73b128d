"""A stage whose input is not on the store says what to run first; regress on too little data says why
it trained nothing, and finishes."""

from __future__ import annotations

import shutil

import pytest

from flows.capture import capture
from flows.fit import fit
from flows.regress import regress
from massive_activations.errors import BadInputError
from massive_activations.store import Store


def test_a_suite_not_built_names_the_command_that_builds_it(prefect_server, tmp_path):
    store = Store(tmp_path / "store")
    with pytest.raises(BadInputError, match=(r"offline suite 'micro' is not built on file://.*: build it with "
                                             r"`python -m flows.offline_suite --suite micro --store file://.*`.*"
                                             r"suites: default, micro")):
        capture(store=store.url, suite="micro", device="cpu")


def test_an_empty_store_says_what_to_run_first(prefect_server, tmp_path):
    store = Store(tmp_path / "store")
    with pytest.raises(BadInputError, match=r"nothing captured on file://.*: run `python -m flows.capture --store"):
        fit(store=store.url)
    with pytest.raises(BadInputError, match=r"nothing fitted on file://.*: run `python -m flows.fit --store"):
        regress(store=store.url)


def test_regress_with_one_fitted_model_trains_nothing_and_says_why(prefect_server, captured_micro, tmp_path):
    shutil.copytree(captured_micro.root, tmp_path / "store")  # both models captured
    store = Store(tmp_path / "store")
    fit(models=["nx-l2-d32-h2"], series=("ratio",), store=store.url)
    result = regress(store=store.url)
    assert result["status"] == "not trained" and result["model_key"] is None
    assert result["reason"] == ("learning across architectures needs fits of at least 2 models with a known "
                                f"architecture; {store.url} has ['nx-l2-d32-h2']")
    assert not store.exists("regressors")
