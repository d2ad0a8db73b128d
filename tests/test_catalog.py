from __future__ import annotations

import numpy as np
import pytest

from massive_activations.sources.catalog import (
    PYTHIA,
    PYTHIA_STEPS,
    Architecture,
    CatalogError,
    hub_repo,
    pythia_model,
    select_steps,
)


def test_schedule_has_154_pythia_checkpoints():
    assert len(PYTHIA_STEPS) == 154
    assert PYTHIA_STEPS[:12] == (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000)
    assert PYTHIA_STEPS[-1] == 143000


def test_catalogue_sizes_and_parameter_counts():
    assert len(PYTHIA) == 18  # 10 sizes + 8 deduped (none for 14m and 31m)
    m = pythia_model("70m")
    assert (m.n_layers, m.d_model, m.n_heads, m.d_ff, m.rotary_pct) == (6, 512, 8, 2048, 0.25)
    # Published total parameter counts (EleutherAI/pythia README).
    assert pythia_model("pythia-70m").n_params == 70_426_624
    assert pythia_model("160m").n_params == 162_322_944
    assert pythia_model("1.4b").n_params == 1_414_647_808
    assert pythia_model("6.9b").n_params == 6_857_302_016
    assert pythia_model("12b").n_params == 11_846_072_320
    assert pythia_model("EleutherAI/pythia-1b-deduped").name == "pythia-1b-deduped"
    assert hub_repo("410m") == "EleutherAI/pythia-410m"


def test_unknown_models_list_the_valid_ones():
    with pytest.raises(CatalogError, match=r"unknown Pythia model 'pythia-13m'.*pythia-14m"):
        pythia_model("pythia-13m")
    with pytest.raises(CatalogError, match="pythia-14m has no deduped variant"):
        pythia_model("14m-deduped")


@pytest.mark.parametrize("selector, expected", [
    ("log", [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512]),
    ("1000:5000:1000", [1000, 2000, 3000, 4000, 5000]),
    ("140000:143000", [140000, 141000, 142000, 143000]),
    ("0,512, 143000", [0, 512, 143000]),
    ("log,142000:143000", [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 142000, 143000]),
    (8, [8]),
    ([16, 1], [1, 16]),
])
def test_step_selectors(selector, expected):
    assert select_steps(selector) == expected


def test_all_and_every():
    assert select_steps("all") == list(PYTHIA_STEPS)
    every = select_steps("every=4")
    assert every[0] == 0 and every[-1] == 143000 and len(every) == 40
    assert select_steps("every=2", [0, 1, 2, 4, 10]) == [0, 2, 10]


def test_spaced_spreads_checkpoints_evenly_in_log_step():
    """log(1 + s) of 0, 1, 3, 7, 15, 31, 63 is 0, 1, …, 6 times log 2: three points evenly spread are
    the ends and 7 (the middle); 2^k − 1 up to 1023 with six points: the ends, then the farthest each time."""
    assert select_steps("spaced=3", [0, 1, 3, 7, 15, 31, 63]) == [0, 7, 63]
    assert select_steps("spaced=3", [0, 1, 2, 4, 10]) == [0, 2, 10]  # log1p 1.10 is nearest ln(11)/2 = 1.20
    assert select_steps("spaced=20", [0, 8, 16]) == [0, 8, 16]  # the whole schedule when it is short
    pythia = select_steps("spaced=20")
    assert len(pythia) == 20 and pythia[0] == 0 and pythia[-1] == 143000
    logs = np.diff(np.log1p(pythia))
    assert logs.max() < 3 * np.log1p(143000) / 19  # no gap far beyond the even spacing


@pytest.mark.parametrize("selector, message", [
    ("999", r"step 999 is not on the schedule; it has 154 steps: 0, 1, 2, 4, .*143000"),
    ("1000:2500:500", r"includes steps not on the schedule: \[1500, 2500\]"),
    ("", "empty step selection"),
    ("5000:1000", "need start <= stop"),
    ("every=0", "N >= 1"),
    ("spaced=1", "N >= 2"),
    ("latest", "cannot read step selector 'latest'"),
    ("600:900", "selects no checkpoint"),
])
def test_bad_selectors_are_explained(selector, message):
    with pytest.raises(CatalogError, match=message):
        select_steps(selector)


def test_architecture_validation():
    with pytest.raises(CatalogError, match="n_heads=3 does not divide d_model=64"):
        Architecture(name="x", n_layers=2, d_model=64, n_heads=3, d_ff=256)
    with pytest.raises(CatalogError, match="n_layers must be a positive integer, got 0"):
        Architecture(name="x", n_layers=0, d_model=64, n_heads=4, d_ff=256)
