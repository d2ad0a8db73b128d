"""The released flow against a loopback Hub serving a dataset in the released layout, written here from
known emergence curves: the curves come back, bad files are skipped and named, a dead endpoint fails fast."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest

from massive_activations.capture.capture import layer_ratios
from massive_activations.errors import BadInputError
from massive_activations.sources.checkpoints import HubSource, TransientSourceError
from massive_activations.sources.released import (
    REPO,
    REVISION,
    BadFileError,
    check_stats,
    discover,
    parse_stats,
    published_fits,
    stats_table,
)
from massive_activations.store import Store
from tests.hub_server import FakeHub, black_hole

STEPS = [0, 1, 4, 16, 64, 256, 512, 1000, 3000, 8000, 16000, 33000, 64000, 100000, 143000]
N_SEQ = 10


def curve(t: np.ndarray, A: float, lam: float, gamma: float, t0: float, K: float) -> np.ndarray:  # noqa: N803
    """f(t) = A·exp(−λx)·log(x) + K, x = γt + t0, written out here rather than taken from the code under test."""
    x = gamma * np.asarray(t, dtype=float) + t0
    return A * np.exp(-lam * x) * np.log(x) + K


def layer_params(layer: int) -> tuple[float, float, float, float, float]:
    """An early peak per layer, at a step and height that move with depth."""
    return (300.0 + 40 * layer, 0.5, 4e-5 * (1 + layer / 4), 1.05, 6.0)


def stats_array(step: int, n_layers: int, seed: int) -> np.ndarray:
    """(sequences, 4, layers) whose ratio mean(top1)/mean(median) is exactly the layer's curve at ``step``."""
    rng = np.random.default_rng(seed)
    out = np.empty((N_SEQ, 4, n_layers))
    for layer in range(n_layers):
        median = rng.uniform(0.8, 1.2, N_SEQ)
        weights = rng.uniform(0.9, 1.1, N_SEQ)
        top1 = curve(np.array([step]), *layer_params(layer))[0] * median.mean() * weights / weights.mean()
        out[:, 0, layer], out[:, 1, layer], out[:, 2, layer], out[:, 3, layer] = top1, 0.9 * top1, 0.8 * top1, median
    return out


def as_literal(values: np.ndarray) -> bytes:
    return json.dumps(values.tolist()).encode()


def as_numpy_print(values: np.ndarray) -> bytes:
    return np.array2string(values, threshold=10**6, precision=10, max_line_width=90).encode()


def as_npy(values: np.ndarray) -> bytes:
    sink = io.BytesIO()
    np.save(sink, values)
    return sink.getvalue()


def published(n_layers: int) -> bytes:
    fits = []
    for layer in range(n_layers):
        params = layer_params(layer)
        fits.append({"original": {"param_names": ["A", "λ", "γ", "t0", "K"], "popt": list(params),
                                  "pcov": (np.diag(np.square(np.array(params) * 0.01))).tolist(),
                                  "r2": 0.99 - layer / 100, "aic": -50.0 + layer, "residuals": [0.0] * len(STEPS)}})
    return json.dumps(fits).encode()


FORMATS = (as_literal, as_numpy_print, as_npy)
BAD_70M = {  # step: (bytes, what the reason says)
    16: (as_literal(stats_array(16, 6, 1)[:, :3, :]), "shape"),
    64: (as_literal(stats_array(64, 5, 1)), "layers where the model has 6"),
    256: (as_literal(stats_array(256, 6, 1)[:, ::-1, :]), "out of order"),
    512: (b"[[[1.0, 2.0,", "not a Python/JSON literal"),
}


def stats_path(size: str, step: int) -> str:
    """Its name: the three forms take turns, with no extension, .txt or .npy (the name does not say which)."""
    return f"pythia_{size}/stats/exp2_pythia_{size}_step{step}" + ("", ".txt", ".npy")[STEPS.index(step) % 3]


def dataset(bad_70m: bool = True) -> dict[str, bytes]:
    files = {}
    for size, seed in (("14m", 0), ("70m", 1)):
        for i, step in enumerate(STEPS):
            files[stats_path(size, step)] = FORMATS[i % 3](stats_array(step, 6, seed))
        files[f"pythia_{size}/params/layer_fit_params_ratio.json"] = published(6)
    if bad_70m:
        for step, (data, _) in BAD_70M.items():
            files[stats_path("70m", step)] = data
    for step in STEPS[:8]:  # a model none of whose files can be read
        files[f"pythia_160m/stats/exp2_pythia_160m_step{step}"] = b"not numbers"
    files["pythia_14m/metrics/ratio.png"] = b"\x89PNG"
    return files


@pytest.fixture()
def hub(fake_hub: FakeHub) -> FakeHub:
    """The loopback Hub, online (the tests run with HF_HUB_OFFLINE=1 otherwise), serving the dataset."""
    fake_hub.add(REPO, REVISION, dataset(), repo_type="dataset")
    fake_hub.tree_page = 7  # the listing comes in pages
    return fake_hub


def test_each_released_form_parses_to_the_same_array():
    values = stats_array(1000, 6, 0)
    for form in FORMATS:
        np.testing.assert_allclose(parse_stats(form(values)), values, rtol=1e-9)
    for data, message in [(b"[1, 2", "not a Python/JSON literal"), (b"\x93NUMPY broken", ".npy"),
                          (np.array2string(np.zeros((10, 4, 36))).encode(), "summarised"),
                          (b"[[1, 2], [3]]", "ragged")]:
        with pytest.raises(BadFileError, match=message):
            parse_stats(data)


def test_the_ratio_is_the_captures_on_the_same_values_for_any_sequence_count():
    """mean over sequences of top1 / mean over sequences of median, as layer_ratios computes it from stats/."""
    for n_seq in (1, 3, 10):
        values = stats_array(1000, 6, n_seq)[:n_seq]
        ratios = layer_ratios(stats_table(values)).to_pylist()
        assert [r["layer"] for r in ratios] == list(range(6)) and {r["n_sequences"] for r in ratios} == {n_seq}
        for r in ratios:
            assert r["ratio"] == pytest.approx(values[:, 0, r["layer"]].mean() / values[:, 3, r["layer"]].mean(),
                                               rel=1e-15)


def test_the_checks_name_what_is_wrong():
    good = stats_array(1000, 6, 0)
    assert check_stats(good, 6) == ""
    assert "shape" in check_stats(good[:, :3], 6)
    assert "5 layers" in check_stats(good[..., :5], 6)
    assert "out of order" in check_stats(good[:, [1, 0, 2, 3]], 6)  # top2 above top1
    broken = good.copy()
    broken[0, 3, 0] = -1.0
    assert "out of order" in check_stats(broken, 6)
    broken[0, 3, 0] = np.nan
    assert "not finite" in check_stats(broken, 6)


def test_discovery_keeps_stats_and_published_fits_of_known_sizes_only():
    found = discover([*dataset(), "pythia_99m/stats/exp2_pythia_99m_step1", "pythia_14m/stats/notes.md"])
    assert sorted(found.stats) == ["pythia-14m", "pythia-160m", "pythia-70m"]
    assert sorted(found.stats["pythia-14m"]) == STEPS and found.params["pythia-14m"] == {
        "ratio": "pythia_14m/params/layer_fit_params_ratio.json"}
    assert sorted(discover(dataset(), ["pythia-70m"]).stats) == ["pythia-70m"]


def test_published_fits_carry_their_parameters_and_errors():
    rows = published_fits(published(6), "pythia-14m", "ratio")
    assert [r["layer"] for r in rows] == list(range(6))
    assert (rows[2]["A"], rows[2]["gamma"], rows[2]["r2"]) == pytest.approx((380.0, 6e-5, 0.97), rel=1e-12)
    assert rows[2]["se_A"] == pytest.approx(3.8)
    with pytest.raises(BadFileError, match="layer 0"):
        published_fits(b'[{"fit": {}}]', "pythia-14m", "ratio")


@pytest.mark.slow
def test_the_flow_imports_fits_and_compares_and_skips_bad_files(hub, prefect_server, tmp_path):
    from flows.released import released, summary

    store, cache = tmp_path / "store", tmp_path / "cache"
    params = {"endpoint": hub.url, "store": str(store), "cache_dir": str(cache), "download_retries": 1,
              "download_timeout_s": 10.0, "regressors": ("ridge",)}
    result = released(**params)
    data = Store(store)

    # every good file imported, the ratio exactly the known curve, as mean(top1)/mean(median) by hand
    assert sorted(result["imports"]["pythia-14m"]["imported"]) == STEPS
    ratios = data.read_dataset("ratios", where={"model": "pythia-14m"}).to_pylist()
    for row in ratios:
        values = stats_array(row["step"], 6, 0)[:, :, row["layer"]]
        # (numpy's printed form keeps 10 significant digits)
        assert row["ratio"] == pytest.approx(values[:, 0].mean() / values[:, 3].mean(), rel=1e-9)
        assert row["ratio"] == pytest.approx(curve(np.array([row["step"]]), *layer_params(row["layer"]))[0],
                                             rel=1e-9)
    assert len(ratios) == 6 * len(STEPS) and {r["n_sequences"] for r in ratios} == {N_SEQ}
    meta = data.partition_metadata("stats", {"model": "pythia-14m", "step": 1000})["inputs"]["source"]
    path = "pythia_14m/stats/exp2_pythia_14m_step1000"
    assert meta == {"repo": REPO, "revision": REVISION, "commit": REVISION, "path": path + ".txt",
                    "sha256": hashlib.sha256(dataset()[path + ".txt"]).hexdigest()}
    assert sum(1 for method, p, status in hub.log if "/tree/" in p and status == 200) >= 3  # paged listing

    # the bad files: skipped, named, with why; the unreadable model said and passed over
    bad = {b["path"]: b["reason"] for b in result["bad_files"]}
    for step, (_, reason) in BAD_70M.items():
        assert reason in bad[stats_path("70m", step)]
    assert sorted(result["imports"]["pythia-70m"]["imported"]) == sorted(set(STEPS) - set(BAD_70M))
    assert result["unreadable"] == ["pythia-160m"] and len([p for p in bad if "160m" in p]) == 8
    text = summary(result, params)
    assert f"skipped {stats_path('70m', 16)}: shape" in text and "pythia-160m: no file" in text

    # our fits recover the curves; the published ones sit beside them
    fits = data.read_dataset("fits", where={"model": "pythia-14m"}).to_pylist()
    for row in (r for r in fits if r["series"] == "ratio"):
        truth = curve(np.array(STEPS), *layer_params(row["layer"]))
        fitted = curve(np.array(STEPS), row["A"], row["lam"], row["gamma"], row["t0"], row["K"])
        assert 1 - np.sum((fitted - truth) ** 2) / np.sum((truth - truth.mean()) ** 2) >= 0.99
    published_rows = data.read_dataset("released_fits", where={"model": "pythia-14m"}).to_pylist()
    assert [(r["layer"], r["A"], r["r2"]) for r in published_rows] == [(i, 300.0 + 40 * i, 0.99 - i / 100)
                                                                       for i in range(6)]
    comparison = data.read_dataset("released/comparison", where={"model": "pythia-14m"}).to_pylist()
    assert len([r for r in comparison if r["series"] == "ratio"]) == 6
    for row in (r for r in comparison if r["series"] == "ratio"):
        assert row["r2_published_on_data"] == pytest.approx(1.0, abs=1e-9)  # their curve made the data
        assert row["r2_published"] == pytest.approx(0.99 - row["layer"] / 100)
        assert row["class_published"] == "early peak"
    (table1,) = [r for r in result["table1"] if r["model"] == "pythia-14m"]
    assert table1["paper Table 1"] == 0.931 and table1["mean R² ours"] >= 0.99
    assert result["regress"] != "not run" and "| A |" in result["table3"]

    # a second run finds it all on the store; a file gone bad since leaves its stored step alone
    before = data.partition_metadata("stats", {"model": "pythia-14m", "step": 64})["content_hash"]
    hub.repos[("dataset", REPO)][REVISION]["pythia_14m/stats/exp2_pythia_14m_step64.txt"] = b"[[[0.0]]]"
    again = released(**{**params, "cache_dir": str(tmp_path / "cache2"), "train_regressors": False})
    assert again["imports"]["pythia-14m"]["imported"] == []
    assert "pythia_14m/stats/exp2_pythia_14m_step64.txt" in {b["path"] for b in again["bad_files"]}
    assert data.partition_metadata("stats", {"model": "pythia-14m", "step": 64})["content_hash"] == before


def test_offline_the_listing_and_files_come_from_the_cache(hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    source = HubSource(cache_dir=tmp_path / "cache", endpoint=hub.url, retries=0, timeout_s=10.0)
    online = source.dataset_files(REPO, REVISION)
    assert len(online) == len(dataset())
    for path in online:
        source.dataset_file(REPO, REVISION, path)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub.stop()
    assert source.dataset_files(REPO, REVISION) == online
    path, commit = source.dataset_file(REPO, REVISION, "pythia_14m/params/layer_fit_params_ratio.json")
    assert commit == REVISION and path.read_bytes() == published(6)


def test_a_dead_endpoint_fails_within_the_worst_case(fake_hub, tmp_path):
    server, url = black_hole()
    try:
        source = HubSource(cache_dir=tmp_path / "cache", endpoint=url, retries=1, timeout_s=1.0, backoff_s=0.1)
        with pytest.raises(TransientSourceError, match="listing its files: still failing after 2 attempts"):
            source.dataset_files(REPO, REVISION)
    finally:
        server.close()


def test_models_outside_the_dataset_are_refused_before_any_download():
    from flows.released import check_models

    with pytest.raises(BadInputError, match="pythia-31m"):
        check_models(["pythia-14m", "pythia-31m"])


def test_the_command_line_says_in_one_line_when_the_endpoint_is_dead(fake_hub, prefect_server, tmp_path, capsys):
    from flows.released import main

    server, url = black_hole()
    try:
        code = main(["--endpoint", url, "--store", str(tmp_path / "store"), "--cache-dir", str(tmp_path / "cache"),
                     "--download-retries", "0", "--download-timeout-s", "1"])
    finally:
        server.close()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith("error: the run failed: ")
    assert "listing its files: still failing after 1 attempts" in err[0]
    assert not (tmp_path / "store" / "stats").exists()
