"""Five architectures under five revision namings, served by the loopback Hub: capture (with every
evaluation in the same pass) -> fit -> evaluate -> regress, through the flows and a real Prefect server."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from prefect.task_runners import ThreadPoolTaskRunner
from transformers import AutoModelForCausalLM

from flows.capture import capture
from flows.evaluate import evaluate
from flows.fit import fit
from flows.params import CaptureParams, EvalParams, PromptParams, SourceParams
from flows.predict import predict
from flows.regress import regress
from massive_activations.capture.prompts import load_prompt_set
from massive_activations.regress.architecture import resolve_architecture
from massive_activations.sources import checkpoints
from massive_activations.sources.families import model_key, repo_of
from massive_activations.sources.model_parts import find_parts
from massive_activations.store import Store
from tests.tiny_models import byte_tokenizer, save_tiny, tiny_model

STEPS = (0, 100, 200, 400, 800, 1600)
MINE = {"name": "mine", "repo": "me/{model}", "revision": r"iter_(?P<step>\d+)", "examples": ["iter_0000100"]}
# (architecture, repository, its revision names by step)
MODELS = [
    ("gpt_neox", "allenai/OLMo-tiny-neox", lambda s: f"step{s}-tokens{s * 4}B"),
    ("llama", "HuggingFaceFW/ablation-model-tiny-llama", lambda s: f"step-{s:06d}-{s * 2}BT"),
    ("olmo2", "allenai/OLMo-2-tiny", lambda s: f"stage1-step{s}-tokens{s * 4}B"),
    ("qwen2", "LLM360/Amber-tiny-qwen2", lambda s: f"ckpt_{STEPS.index(s):03d}"),
    ("gpt2", "me/tiny-gpt2", lambda s: f"iter_{s:07d}"),
]


@pytest.fixture(scope="module")
def tokenizer():
    return byte_tokenizer()


def serve(hub, tokenizer, tmp_path) -> None:
    for kind, repo, name in MODELS:
        for i, step in enumerate(STEPS):  # weights that grow with the step: a trajectory to fit
            hub.add_folder(repo, name(step), save_tiny(kind, tmp_path / "models" / repo / str(step), tokenizer,
                                                       seed=i, scale=1.0 + step / 400))
    # OLMo-2's annealing runs restart their step count: not part of the stage-1 trajectory
    hub.add_folder("allenai/OLMo-2-tiny", "stage2-ingredient1-step100-tokens1B", tmp_path / "models" /
                   "allenai/OLMo-2-tiny" / "100")


PLANTED = ("HuggingFaceFW--ablation-model-tiny-llama", 1, 5, 11)  # model, layer, position, dim


def plant(model, layer: int, pos: int, dim: int):
    """Block ``layer``'s MLP adds 500 at (pos, dim) of every sequence."""
    def hook(_module, _inputs, output):
        output = output.clone()
        output[:, pos, dim] += 500.0
        return output
    return find_parts(model).blocks[layer].mlp.register_forward_hook(hook)


def test_five_families_run_through_capture_fit_evaluate_and_regress(prefect_server, fake_hub, tokenizer, tmp_path,
                                                                    monkeypatch):
    serve(fake_hub, tokenizer, tmp_path)
    load = checkpoints.load_from_dir

    def planting_load(path, model_name, step, **kw):  # the planted value rides along every load of one model
        loaded = load(path, model_name, step, **kw)
        if model_name == PLANTED[0]:
            plant(loaded.model, *PLANTED[1:])
        return loaded
    monkeypatch.setattr(checkpoints, "load_from_dir", planting_load)
    store = Store(tmp_path / "store")
    texts = tmp_path / "texts.txt"
    texts.write_text("\n\n".join(f"text {i} " + "the quick brown fox jumps " * 8 for i in range(20)))
    prompts = PromptParams(n_sequences=4, length=32, text_file=str(texts))
    evals = EvalParams(sae_steps=20, itda_target_size=16, train_tokens=1024, heldout_tokens=256)
    keys = [model_key(repo) for _, repo, _ in MODELS]
    for (_kind, repo, _name), key in zip(MODELS, keys, strict=True):
        family = json.dumps(MINE) if repo.startswith("me/") else None
        source = SourceParams(kind="hub", endpoint=fake_hub.url, cache_dir=str(tmp_path / "hub"), family=family)
        summary = capture.with_options(task_runner=ThreadPoolTaskRunner(max_workers=2))(
            models=[repo], steps="all", store=store.url, source=source, prompts=prompts,
            settings=CaptureParams(samples_per_layer=64), device="cpu", evaluations=("sae", "itda", "quant"),
            eval_steps="all", eval_settings=evals)
        assert summary["captured"] == len(STEPS) and not summary["failed"], (repo, summary)
        ratios = store.read_dataset("ratios", where={"model": key})
        expected = list(range(len(STEPS))) if "Amber" in repo else list(STEPS)  # Amber's step: the ckpt number
        assert sorted(set(ratios.column("step").to_pylist())) == expected  # OLMo-2's stage 2 left out
        assert set(ratios.column("layer").to_pylist()) == {-1, 0, 1, 2}
    assert keys[0] == "allenai--OLMo-tiny-neox"
    recorded = store.read_json("architectures/me--tiny-gpt2.json")  # what the regressors learn from
    assert (recorded["model_type"], recorded["positions"], recorded["n_layers"]) == ("gpt2", "learned", 3)

    # the planted value is found at its layer, position and dim, with the ratio transformers' hidden states give
    key, layer, pos, dim = PLANTED
    stats = store.read_dataset("stats", where={"model": key, "step": 1600, "layer": layer})
    assert set(stats.column("top1_pos").to_pylist()) == {pos} and set(stats.column("top1_dim").to_pylist()) == {dim}
    meta = store.partition_metadata("stats", {"model": key, "step": 1600})
    tokens = torch.as_tensor(load_prompt_set(store, meta["inputs"]["prompt_set"]).tokens)
    assert "-len32-text-" in meta["inputs"]["prompt_set"]  # a tokenizer that adds no BOS: position 0 is text
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "models" / repo_of(key) / "1600")
    handle = plant(model, layer, pos, dim)
    with torch.no_grad():
        h = model(tokens, output_hidden_states=True).hidden_states[layer + 1].abs().reshape(len(tokens), -1)
    handle.remove()
    ratio = store.read_dataset("ratios", where={"model": key, "step": 1600, "layer": layer}).column("ratio")[0].as_py()
    assert ratio == pytest.approx(float(h.max(dim=1).values.mean() / h.median(dim=1).values.mean()), rel=1e-5)

    fitted = fit(store=store.url, series=("ratio",))
    fits = store.read_dataset("fits").to_pylist()
    assert {r["model"] for r in fits} == set(keys) and fitted

    report = evaluate(store=store.url, steps="all", device="cpu", settings=evals, prompts=prompts)
    done = {kind: (s["evaluated"], s["skipped"], len(s["failed"])) for kind, s in report["summary"].items()}
    assert done == {kind: (0, len(keys) * len(STEPS), 0) for kind in ("sae", "itda", "quant")}  # all in the pass
    corr = store.read_dataset("evals/correlations").to_pylist()
    assert {r["model"] for r in corr} == set(keys)
    for r in corr:  # a few checkpoints per model: the partial ρ abstains, saying why, and ρ is still given
        assert np.isnan(r["partial_rho"]) and r["reason"], r
        if np.isfinite(r["spearman_rho_low"]):  # NaN where the effective n leaves no degrees of freedom
            assert -1 <= r["spearman_rho_low"] <= r["spearman_rho"] <= r["spearman_rho_high"] <= 1
    assert sum(np.isfinite(r["spearman_rho"]) for r in corr) > len(corr) / 4
    pooled = store.read_dataset("evals/pooled_across_models").to_pylist()
    assert max(r["n_models"] for r in pooled) == len(keys) and all(r["layers_tested"] == 0 for r in pooled)
    table = subprocess.run([sys.executable, "docs/findings.py", store.url], capture_output=True, text=True,
                           check=True).stdout  # the findings table of the docs, from this store
    assert table.startswith(f"{len(keys)} models, steps ")
    assert "| int8 SQNR per tensor | " in table and "| nan | 0 / 0 (of 0) |" in table
    across = store.read_dataset("evals/model_correlations").to_pylist()  # models at matched steps
    at_zero = [r for r in across if r["step"] == 0 and r["metric"] == "sqnr_db"]
    assert at_zero and all(r["n_models"] == len(keys) and r["n_points"] == 3 * len(keys) for r in at_zero)

    result = regress(store=store.url, regressors=("ridge", "random_forest"), n_splits=2)  # repeated: a few suffice
    scores = store.read_dataset("regression_scores").to_pylist()
    assert {r["protocol"] for r in scores} == {"random_80_20", "leave_one_model_out", "repeated_80_20"}
    assert result["chosen"] and {r["n_splits"] for r in scores if r["protocol"] == "repeated_80_20"} <= {0, 1, 2}
    arch = resolve_architecture(str(tmp_path / "models" / "me/tiny-gpt2" / "0" / "config.json"))
    assert arch.positions == "learned" and arch.tied_embeddings
    # and predicts for any config.json: a Qwen2 with 4 layers, none of which it has seen
    unseen = tmp_path / "unseen"
    tiny_model("qwen2", layers=4, d=64).config.save_pretrained(unseen)
    predicted = predict(str(unseen / "config.json"), store=store.url)
    assert [r["layer"] for r in predicted["rows"]] == [0, 1, 2, 3]
    assert all(np.isfinite(r["y_last"]) for r in predicted["rows"])
