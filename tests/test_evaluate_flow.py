"""The evaluate flow on the captured micro suite, through a real Prefect server."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from flows.evaluate import evaluate
from flows.params import EvalParams, PromptParams
from massive_activations.capture.prompts import load_prompt_set
from massive_activations.evals.eval_run import EvalSettings, eval_split, sae_key
from massive_activations.evals.sae import load_sae_lens
from massive_activations.store import Store

MODEL = "nx-l2-d32-h2"
STEPS = [0, 8, 24, 40, 48]
FAST = EvalParams(sae_steps=40, itda_target_size=16, train_tokens=4096, heldout_tokens=1024)


@pytest.fixture
def eval_store(captured_micro, tmp_path) -> Store:
    shutil.copytree(captured_micro.root, tmp_path / "store")
    return Store(tmp_path / "store")


def test_evaluate_writes_every_kind_and_reuses_it(prefect_server, eval_store):
    run = dict(models=[MODEL], steps=",".join(map(str, STEPS)), store=eval_store.url, settings=FAST, device="cpu",
               suite="micro")  # the prompt settings: the captured set's own
    first = evaluate(**run)
    assert {k: s["evaluated"] for k, s in first["summary"].items()} == {"sae": 5, "itda": 5, "quant": 5}
    sae = eval_store.read_dataset("evals/sae", where={"model": MODEL})
    variants = {"topk-unmasked", "topk-masked", "relu-unmasked", "relu-masked"}
    assert set(zip(sae.column("step").to_pylist(), sae.column("layer").to_pylist(),
                   sae.column("variant").to_pylist(), strict=True)) == {
        (s, layer, v) for s in STEPS for layer in (0, 1) for v in variants}
    for row in sae.to_pylist():
        assert -1 < row["explained_variance"] <= 1
        assert row["n_massive"] + row["n_other"] >= row["n_tokens"]  # the unmasked held-out tokens, in two groups
        assert 0 <= row["dead_fraction_train"] <= 1 and row["dead_window_tokens"] > 0
        assert row["ce_zero"] > row["ce_original"] or row["step"] == 0  # at init, deleting a layer costs nothing
        assert row["l0"] <= 8 or row["sae_kind"] == "relu"
    # every trained SAE is on the store in the SAELens layout, and reloads to the stored metrics
    row = next(r for r in sae.to_pylist() if r["variant"] == "topk-unmasked" and r["step"] == 48)
    folder = eval_store.path(sae_key(MODEL, 48, row["layer"], "topk-unmasked"))
    reloaded = load_sae_lens(folder)
    assert reloaded.n_latents == row["n_latents"] and reloaded.dead_fraction == row["dead_fraction_train"]
    assert len(eval_store.list("saes")) == 2 * len(STEPS) * 2 * 4  # two files × steps × layers × variants
    itda = eval_store.read_dataset("evals/itda", where={"model": MODEL})
    assert itda.num_rows == 10 and all(len(r["atom_seq"]) == r["size"] for r in itda.to_pylist())
    quant = eval_store.read_dataset("evals/quant", where={"model": MODEL})
    assert quant.num_rows == 5 * 3 * 2 * 3  # steps × layers (incl. embedding) × bits × granularities
    assert all(r["n_massive"] + r["n_other"] == r["n_tokens"] == 1024 for r in quant.to_pylist())  # held-out tokens
    w8a8 = eval_store.read_dataset("evals/quant_model", where={"model": MODEL}).to_pylist()
    assert len(w8a8) == 5 and all(abs(r["ce_delta_token"]) < 0.1 for r in w8a8)
    # Jaccard with the final dictionary, recomputed here from the stored atom labels
    labels = {(r["step"], r["layer"]): set(zip(r["atom_seq"], r["atom_pos"], strict=True)) for r in itda.to_pylist()}
    similarity = eval_store.read_dataset("evals/itda_similarity", where={"model": MODEL}).to_pylist()
    assert {(r["step"], r["layer"]) for r in similarity} == {k for k in labels if k[0] != 48}  # final: 1 by design
    for r in similarity:
        mine, final = labels[(r["step"], r["layer"])], labels[(48, r["layer"])]
        assert r["jaccard_final"] == pytest.approx(len(mine & final) / len(mine | final))
    joined = eval_store.read_dataset("evals/joined", where={"model": MODEL})
    assert joined.num_rows > 0 and None not in joined.column("ratio").to_pylist()
    corr = eval_store.read_dataset("evals/correlations", where={"model": MODEL})
    assert corr.num_rows > 0 and set(corr.column("n_checkpoints").to_pylist()) <= {4, 5}
    varying = [r for r in corr.to_pylist() if r["metric"] in ("explained_variance", "sqnr_db", "mse")]
    # the interval is NaN where 5 trending checkpoints leave an effective n of 3 or less
    assert varying and all(np.isfinite(r[s]) and not r[f"{s}_low"] > r[f"{s}_high"]
                           for r in varying for s in ("spearman_rho", "rho_step"))
    for r in varying:  # 5 checkpoints: below the floor where the partial ρ holds its error rate, so it abstains
        assert np.isnan(r["partial_rho"]) and np.isnan(r["partial_rho_low"]) and np.isnan(r["partial_rho_q"]), r
        assert r["reason"].startswith("fewer than 20 checkpoints"), r
    pooled = eval_store.read_dataset("evals/pooled", where={"model": MODEL}).to_pylist()
    assert pooled and all(r["layers_tested"] == 0 and np.isnan(r["pooled_p"]) for r in pooled)
    layers = eval_store.read_dataset("evals/layer_correlations", where={"model": MODEL}).to_pylist()
    assert {r["step"] for r in layers} == set(STEPS) and all(r["n_layers"] == 2 for r in layers if r["kind"] == "sae")
    assert eval_store.exists(f"plots/evals/{MODEL}-sae.png")

    mtimes = {k: eval_store.fs.info(eval_store.path(k))["mtime"] for k in eval_store.list("evals/sae")}
    again = evaluate(**run)
    assert {k: s["skipped"] for k, s in again["summary"].items()} == {"sae": 5, "itda": 5, "quant": 5}
    assert mtimes == {k: eval_store.fs.info(eval_store.path(k))["mtime"] for k in eval_store.list("evals/sae")}
    quant_before = {k: eval_store.fs.info(eval_store.path(k))["mtime"] for k in eval_store.list("evals/quant")}
    refreshed = evaluate(**{**run, "kinds": ("quant",), "refresh": True})
    assert refreshed["summary"]["quant"]["evaluated"] == 5  # refresh recomputes and rewrites
    assert all(eval_store.fs.info(eval_store.path(k))["mtime"] != t for k, t in quant_before.items())


def test_evaluate_refuses_bad_input_before_work(prefect_server, eval_store):
    with pytest.raises(ValueError, match=r"nothing captured .*\['nx-nope'\]"):
        evaluate(models=["nx-nope"], store=eval_store.url, settings=FAST)
    with pytest.raises(ValueError, match="step 5 is not on the schedule"):
        evaluate(models=[MODEL], steps="5", store=eval_store.url, settings=FAST)
    with pytest.raises(ValueError, match=r"\d+ training and 1024 held-out tokens do not fit in the texts left"):
        evaluate(models=[MODEL], steps="0,48", store=eval_store.url, suite="micro",
                 settings=FAST.model_copy(update={"train_tokens": 2**20}))
    with pytest.raises(ValueError, match=f"{MODEL} was captured with prompt set .*pass the capture's prompts"):
        evaluate(models=[MODEL], steps="0,48", store=eval_store.url, settings=FAST,
                 prompts=PromptParams(n_sequences=5))
    assert not eval_store.list("evals")


@pytest.mark.parametrize("bad, match", [
    (dict(sae_k=0), "greater than or equal to 1"), (dict(sae_expansion=0), "greater than or equal to 1"),
    (dict(itda_tau=0.0), "greater than 0"), (dict(itda_tau=-2.0), "greater than 0"),
    (dict(train_tokens=1), "greater than or equal to 2")])
def test_absurd_evaluation_settings_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        EvalParams(**bad)


def test_library_settings_validate_too():
    with pytest.raises(ValueError, match="train_tokens and heldout_tokens must be >= 2"):
        EvalSettings(heldout_tokens=0)
    with pytest.raises(ValueError, match="SAE k must"):
        EvalSettings.from_dict({"sae": {"k": 0}})


def test_evaluations_refuse_a_token_set_that_is_not_one(captured_micro):
    set_id = captured_micro.partitions("prompts")[0]["set"]  # a capture's prompt set
    with pytest.raises(ValueError, match=f"token set {set_id} is not an evaluation token set"):
        eval_split(load_prompt_set(captured_micro, set_id))


def test_list_columns_read_back_across_partitions_when_some_are_empty(tmp_path):
    from massive_activations.evals.eval_run import QUANT_MODEL, rows_table

    store = Store(tmp_path)
    for step, dims in ((0, []), (8, [3, 5])):
        store.write_partition(QUANT_MODEL, {"model": "m", "step": step}, rows_table([{"outlier_dims": dims}]),
                              inputs={})
    rows = store.read_dataset(QUANT_MODEL).sort_by("step").to_pylist()
    assert [r["outlier_dims"] for r in rows] == [[], [3, 5]]
