"""Revision names of each built-in family parse to the right place in training; bad names say why."""

from __future__ import annotations

import json

import pytest

from massive_activations.sources.catalog import select_steps
from massive_activations.sources.families import FAMILIES, Family, family


@pytest.mark.parametrize(("name", "shuffled", "order", "tokens"), [
    ("pythia", ["step143000", "main", "step0", "step512", "step1"], [0, 1, 512, 143000], None),
    ("olmo", ["step738020-tokens3095B", "main", "step1000-tokens4B", "step20000-tokens84B"],
     [1000, 20000, 738020], [4e9, 84e9, 3095e9]),
    # stage 2 (annealing) after stage 1 whatever its step; ingredients in order within it; irregular steps
    ("olmo2", ["stage2-ingredient2-step1000-tokens5B", "stage1-step1907359-tokens4001B", "stage1-step150-tokens1B",
               "stage2-ingredient1-step2000-tokens9B", "stage2-ingredient1-step1000-tokens5B", "main",
               "stage1-step10000-tokens21B"],
     [150, 10000, 1907359, 1000, 2000, 1000], [1e9, 21e9, 4001e9, 5e9, 9e9, 5e9]),
    ("amber", ["ckpt_358", "ckpt_000", "ckpt_100", "main"], [0, 100, 358], None),
    ("fineweb-ablation", ["step-024000-50BT", "step-001000-2BT", "main"], [1000, 24000], [2e9, 50e9]),
])
def test_each_family_orders_its_real_revision_names(name, shuffled, order, tokens):
    revisions = family(name).checkpoints(shuffled)
    assert [r.step for r in revisions] == order
    assert [r.tokens for r in revisions] == (tokens or [None] * len(order))
    assert "main" not in [r.name for r in revisions]
    assert select_steps("every=2", [r.step for r in revisions if r.stage <= 1])  # selectors work on any step list


def test_olmo2_keeps_stage_and_ingredient():
    [first, second] = family("olmo2").checkpoints(["stage2-ingredient3-step1000-tokens5B", "stage1-step150-tokens1B"])
    assert (first.stage, first.ingredient, second.stage, second.ingredient) == (1, 0, 2, 3)


def test_an_unparseable_name_is_an_error_listing_examples():
    with pytest.raises(ValueError, match=r"revision 'step-1000' does not fit family 'pythia' .* look like "
                                         r"step0, step512, step143000"):
        FAMILIES["pythia"].parse("step-1000")


def test_a_user_family_is_data():
    mine = Family.from_dict({"name": "mine", "repo": "me/{model}", "revision": r"iter_(?P<step>\d+)",
                             "examples": ["iter_0000100"]})
    assert [r.step for r in mine.checkpoints(["iter_0000200", "iter_0000100"])] == [100, 200]
    assert mine.repo_id("run-a") == "me/run-a"
    with pytest.raises(ValueError, match=r"needs a named group \(\?P<step>"):
        Family.from_dict({"name": "x", "repo": "me/{model}", "revision": r"iter_\d+", "examples": []})
    with pytest.raises(ValueError, match="is not a regex"):
        Family.from_dict({"name": "x", "repo": "me/{model}", "revision": r"iter_(?P<step>\d+", "examples": []})
    with pytest.raises(ValueError, match=r"unknown family fields \['regex'\]"):
        Family.from_dict({"name": "x", "repo": "me/{model}", "regex": "x"})
    with pytest.raises(ValueError, match="unknown model family 'gpt5'; built in: pythia, olmo"):
        family("gpt5")


def test_the_loopback_hub_lists_a_familys_checkpoints_through_the_refs_api(fake_hub, tmp_path):
    from massive_activations.sources.checkpoints import CheckpointNotFoundError, HubSource

    names = ["stage2-ingredient1-step1000-tokens5B", "stage1-step150-tokens1B", "stage1-step10000-tokens21B"]
    for name in names:
        fake_hub.add("allenai/OLMo-2-0425-1B", name, {"config.json": b"{}"})
    source = HubSource(cache_dir=tmp_path / "hub", endpoint=fake_hub.url)
    assert source.schedule("allenai/OLMo-2-0425-1B") == {150: names[1], 10000: names[2]}  # stage 1; main left out
    assert ("GET", "api/models/allenai/OLMo-2-0425-1B/refs", 200) in fake_hub.log
    amber_naming = {"name": "amber-like", "repo": "allenai/{model}", "revision": r"ckpt_(?P<step>\d+)",
                    "examples": ["ckpt_000"]}
    no_match = r"has no revision of family 'amber-like' .*ckpt_000.*branches: .*'main'"  # what is there, said
    with pytest.raises(CheckpointNotFoundError, match=no_match):
        HubSource(cache_dir=tmp_path / "hub", endpoint=fake_hub.url, family=amber_naming).steps(
            "allenai/OLMo-2-0425-1B")


def test_listing_revisions_is_retried_in_the_downloads_layer_and_bounded_like_them(fake_hub, tmp_path):
    import time

    from massive_activations.sources.checkpoints import HubSource, TransientSourceError
    from tests.hub_server import black_hole

    fake_hub.add("allenai/OLMo-2-0425-1B", "stage1-step150-tokens1B", {"config.json": b"{}"})
    fake_hub.fail_next = 2  # two 503s, then the listing answers
    source = HubSource(cache_dir=tmp_path / "hub", endpoint=fake_hub.url, retries=2, backoff_s=0.05, seed=0)
    assert source.steps("allenai/OLMo-2-0425-1B") == [150]
    assert [status for _, path, status in fake_hub.log if path.endswith("/refs")] == [503, 503, 200]

    silent, url = black_hole()
    dead = HubSource(cache_dir=tmp_path / "hub", endpoint=url, retries=1, timeout_s=0.5, backoff_s=0.2, seed=0)
    started = time.monotonic()
    with pytest.raises(TransientSourceError, match="listing its revisions: still failing after 2 attempts"):
        dead.steps("allenai/OLMo-2-0425-1B")
    assert 2 * 0.5 <= time.monotonic() - started <= dead.worst_case_s() + 1.0
    silent.close()


def test_model_names_repositories_and_families():
    from massive_activations.sources.catalog import CatalogError
    from massive_activations.sources.families import family_of, model_key, repo_of, resolve_family

    assert model_key("pythia-160m") == model_key("EleutherAI/pythia-160m") == "pythia-160m"
    assert model_key("allenai/OLMo-2-0425-1B") == "allenai--OLMo-2-0425-1B"
    assert model_key("EleutherAI/pythia-160m-seed1") == "EleutherAI--pythia-160m-seed1"  # not catalogued
    assert repo_of("allenai--OLMo-2-0425-1B") == "allenai/OLMo-2-0425-1B"
    assert repo_of("pythia-70m") == "EleutherAI/pythia-70m"
    with pytest.raises(CatalogError, match="unknown Pythia model 'gpt2'.*org/name"):
        model_key("gpt2")
    with pytest.raises(CatalogError, match="org/name"):
        model_key("a/b/c")
    assert [family_of(r).name for r in ("allenai/OLMo-2-1124-7B", "allenai/OLMo-1B-hf", "LLM360/Amber",
                                        "HuggingFaceFW/ablation-model-fineweb-edu", "EleutherAI/pythia-1b")] == [
        "olmo2", "olmo", "amber", "fineweb-ablation", "pythia"]
    with pytest.raises(ValueError, match="no model families fit.*name one"):
        family_of("me/run-a")
    mine = resolve_family('{"name": "mine", "repo": "me/{model}", "revision": "iter_(?P<step>\\\\d+)"}', "me/run-a")
    assert mine.schedule(["iter_0000200", "iter_0000100", "main"]) == {100: "iter_0000100", 200: "iter_0000200"}
    with pytest.raises(ValueError, match="not in family 'mine'"):
        resolve_family(json.dumps({"name": "mine", "repo": "me/{model}", "revision": "x(?P<step>1)"}), "you/run")
    with pytest.raises(ValueError, match="neither a built-in name nor valid JSON"):
        resolve_family("{name: mine}", "me/run-a")


def test_a_step_held_by_two_runs_is_an_error_that_says_how_to_choose():
    everything = Family("olmo2-all", "allenai/{model}", FAMILIES["olmo2"].revision, ("stage1-step150-tokens1B",))
    names = ["stage1-step1000-tokens5B", "stage2-ingredient1-step1000-tokens5B"]
    with pytest.raises(ValueError, match="both hold step 1000; restrict .* trajectory"):
        everything.schedule(names)
    assert family("olmo2").schedule(names) == {1000: "stage1-step1000-tokens5B"}  # stage 1 by default


def test_offline_the_schedule_is_what_the_download_cache_holds(fake_hub, tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    from massive_activations.sources.checkpoints import HubSource

    for name in ("step-002000-4BT", "step-001000-2BT", "main"):
        fake_hub.add("HuggingFaceFW/ablation-model-x", name, {"config.json": b'{"model_type": "llama"}'})
    online = HubSource(cache_dir=tmp_path / "hub", endpoint=fake_hub.url)
    assert online.steps("HuggingFaceFW/ablation-model-x") == [1000, 2000]
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    refs = tmp_path / "hub" / "models--HuggingFaceFW--ablation-model-x" / "refs"
    refs.mkdir(parents=True)
    (refs / "step-001000-2BT").write_text("0" * 40)
    offline = HubSource(cache_dir=tmp_path / "hub", endpoint="http://127.0.0.1:9")  # another endpoint: not memoised
    assert offline.steps("HuggingFaceFW--ablation-model-x") == [1000]
