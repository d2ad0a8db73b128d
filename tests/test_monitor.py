"""The monitor flow on a training run that keeps writing step<N>/ folders."""

from __future__ import annotations

import dataclasses
import math
import shutil

import pytest

from flows.monitor import monitor, split_run_url
from flows.params import PromptParams
from massive_activations.regress import regression as R
from massive_activations.store import Store
from tests.test_regression import synthetic

MODEL = "nx-l2-d32-h2"


def write_regressors(store: Store) -> None:
    """Real regressors (Ridge on the synthetic known-function fits) on the store, as regress would save them."""
    data = synthetic()
    config = dataclasses.replace(R.CONFIGS["project"], regressors=("ridge",), targets=R.RAW_TARGETS)
    lomo, _ = R.leave_one_model_out(data, config)
    store.write_bytes("regressors/series=ratio/model.skops",
                      R.dump_bundle(R.fit_final(data, R.choose_best(lomo), lomo, config=config)))
    store.write_json("regressors/series=ratio/metadata.json", {"max_step": 48, "inputs": {"synthetic": True}})


def test_monitor_captures_only_new_checkpoints_and_keeps_each_forecast(prefect_server, micro_root, tmp_path):
    run = tmp_path / "runs" / "my-run"
    run.mkdir(parents=True)
    steps = sorted(int(p.name[4:]) for p in (micro_root / MODEL).glob("step*"))
    store = Store(tmp_path / "store")
    prompts = PromptParams(n_sequences=4, length=32)

    def arrive(upto: int) -> None:
        for step in steps[:upto]:
            if not (run / f"step{step}").exists():
                shutil.copytree(micro_root / MODEL / f"step{step}", run / f"step{step}")

    arrive(4)
    first = monitor(checkpoints=str(run), store=store.url, prompts=prompts, device="cpu")
    assert first["status"] == "waiting" and first["capture"]["captured"] == 4
    arrive(8)
    second = monitor(checkpoints=str(run), store=store.url, prompts=prompts, device="cpu")
    assert second["status"] == "forecast" and second["capture"]["captured"] == 4  # only the new ones
    assert second["capture"]["skipped"] == 4
    assert all(math.isnan(r["predicted_K"]) for r in second["forecast"])  # no regressors yet: the fit alone
    write_regressors(store)
    arrive(len(steps))
    third = monitor(checkpoints=str(run), store=store.url, prompts=prompts, device="cpu")
    assert third["capture"]["captured"] == len(steps) - 8 and third["latest_step"] == steps[-1]
    forecasts = store.read_dataset("forecasts", where={"model": "my-run"})
    assert sorted(set(forecasts.column("step").to_pylist())) == [steps[7], steps[-1]]
    assert set(forecasts.column("layer").to_pylist()) == {0, 1}
    assert all(math.isfinite(r["K"]) and r["n_checkpoints"] in (8, len(steps)) for r in forecasts.to_pylist())
    # with regressors on the store, the architecture prior stands beside each layer's fit
    assert all(math.isfinite(r["predicted_K"]) for r in third["forecast"])
    assert store.exists("plots/forecasts/my-run.png")


def test_monitor_refuses_a_folder_without_checkpoints(prefect_server, tmp_path):
    (tmp_path / "empty-run").mkdir()
    with pytest.raises(Exception, match="no checkpoints of 'empty-run'"):
        monitor(checkpoints=str(tmp_path / "empty-run"), store=str(tmp_path / "store"))
    with pytest.raises(ValueError, match="must be a folder path"):
        split_run_url("run")
