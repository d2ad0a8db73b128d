"""The evaluation token set: drawn from text, disjoint from the prompts, every token used, none oversampled."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from massive_activations.capture.activations import LayerActivations
from massive_activations.capture.prompts import (
    build_eval_tokens,
    build_prompt_set,
    eval_budget,
    load_prompt_set,
    save_prompt_set,
)
from massive_activations.errors import BadInputError
from massive_activations.evals.eval_run import EvalSettings, MaskSettings, evaluate_to_store
from massive_activations.sources.checkpoints import FolderSource
from massive_activations.store import Store
from tests.tiny_models import byte_tokenizer, tiny_model

MARK = re.compile(r"<(\d{3})>")


def _texts(n: int, seed: int = 0, planted: str = "", p: float = 0.0) -> list[str]:
    """Documents that name themselves (<017>) and hold ``planted`` at each character with probability p."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghij klmnop qrstuvwxyz "))
    docs = []
    for i in range(n):
        chars = rng.choice(letters, 400)
        if planted:
            chars[rng.random(400) < p] = planted
        docs.append(f"<{i:03d}> " + "".join(chars))
    return docs


def _documents(tokenizer, tokens: np.ndarray) -> set[str]:
    return set(MARK.findall(tokenizer.decode(tokens.reshape(-1).tolist())))


def test_evaluation_tokens_share_no_document_with_the_prompts():
    tok, texts = byte_tokenizer(), _texts(60)
    prompts = build_prompt_set("m-n4-len32", texts, tok, n_sequences=4, length=32, seed=3)
    evals = build_eval_tokens(prompts, texts, tok, train_tokens=2000, heldout_tokens=500)
    assert evals.tokens.shape == (63 + 16, 32) and evals.source["n_train"] == 63  # whole sequences, rounded up
    assert evals.source["prompt_set"] == prompts.set_id and evals.name == "m-n4-len32-eval-t63-h16"
    taken = _documents(tok, prompts.tokens)
    assert taken and not taken & _documents(tok, evals.tokens)
    # texts of their own lose the prompts' documents (here: the same list, in another order)
    other = build_eval_tokens(prompts, texts, tok, 2000, 500, texts=list(reversed(texts)))
    assert not taken & _documents(tok, other.tokens)
    with pytest.raises(ValueError, match=r"2000000 training and 500 held-out tokens do not fit in the texts left"):
        build_eval_tokens(prompts, texts, tok, 2_000_000, 500)
    with pytest.raises(ValueError, match="must each hold one 32-token sequence"):
        build_eval_tokens(prompts, texts, tok, 2000, 8)


@pytest.mark.parametrize(("given", "capacity", "expected"), [
    ((None, None), 10_000, (2048, 256)),  # 65536 / 32 and 8192 / 32: the defaults fit
    ((None, None), 246, (219, 27)),  # cut to the text, 8:1 kept: 246 · 256 // 2304 = 27 held out
    ((None, 320), 246, (236, 10)),  # a held-out budget given stays; training takes what is left
    ((3200, None), 246, (100, 146)),  # and the other way round
    ((3200, 320), 5, (100, 10)),  # both given: as asked (building them says they do not fit)
])
def test_evaluation_budgets_default_to_what_the_text_holds(given, capacity, expected):
    assert eval_budget(*given, 32, capacity) == expected


def test_a_text_too_small_for_any_budget_is_bad_input():
    with pytest.raises(BadInputError, match="the texts hold 1 sequences of 32 tokens"):
        eval_budget(None, None, 32, 1)


def test_default_budgets_take_every_sequence_a_small_text_holds():
    """The micro suite's case: the default 2^16 + 2^13 tokens do not fit, so the set is every whole
    sequence the documents after the prompts' hold, split 8:1, and it says so."""
    tok, texts = byte_tokenizer(), _texts(60)
    prompts = build_prompt_set("m-n4-len32", texts, tok, n_sequences=4, length=32, seed=3)
    order = np.random.default_rng(3).permutation(len(texts))  # the seeded document order
    rest = [texts[i] for i in order[prompts.source["documents"]:]]
    tokens = sum(len(tok(doc, add_special_tokens=False)["input_ids"]) + 1 for doc in rest) - 1  # one EOT each
    capacity = tokens // 31  # 31 body tokens after each sequence's leading EOT
    evals = build_eval_tokens(prompts, texts, tok, None, None)
    held = capacity * 256 // 2304
    assert evals.tokens.shape == (capacity, 32) and evals.source["n_train"] == capacity - held
    assert evals.source["budget"] == {"train_tokens": (capacity - held) * 32, "heldout_tokens": held * 32,
                                      "asked": [None, None]}


def test_layer_activations_are_every_tokens_hidden_state_in_any_grouping():
    model = tiny_model("gpt_neox", layers=3, d=32)
    tokens = np.random.default_rng(0).integers(1, 257, size=(5, 16))
    with torch.no_grad():
        hidden = model(input_ids=torch.as_tensor(tokens), output_hidden_states=True).hidden_states
    one_pass = LayerActivations(model, tokens, [-1, 0, 1], batch_size=2)
    per_layer = LayerActivations(model, tokens, [-1, 0, 1], batch_size=3, max_bytes=1)  # one layer a pass
    for layer in (-1, 0, 1):  # hidden_states[0] is the embedding, [i + 1] block i's output
        expected = hidden[layer + 1].reshape(-1, 32)
        for got in (one_pass[layer], per_layer[layer]):
            torch.testing.assert_close(got.vectors, expected, rtol=1e-5, atol=1e-5)
            assert got.seq.tolist() == np.repeat(np.arange(5), 16).tolist()
            assert got.pos.tolist() == np.tile(np.arange(16), 5).tolist()
            assert got.token_id.tolist() == tokens.reshape(-1).tolist()
    with pytest.raises(ValueError, match=r"layers \[3\] are not hooked layers"):
        LayerActivations(model, tokens, [0, 3])
    assert one_pass.groups() == [[-1, 0, 1]] and per_layer.groups() == [[-1], [0], [1]]
    blocks = per_layer.subset([0, 1])
    assert list(blocks) == [0, 1] and blocks.groups() == [[0], [1]] and blocks[1] is not None
    with pytest.raises(KeyError):
        blocks[-1]


def test_saes_train_in_stacks_that_fit_the_memory_budget(monkeypatch):
    from massive_activations.evals import eval_run

    one = 4 * (100 * 8 + 4 * 2 * 8 * 4 * 8)  # 100 rows of d = 8, 32 latents: data, weights, grads, moments
    monkeypatch.setattr(eval_run, "STACK_BYTES", 2 * one)
    assert eval_run._stacks([100] * 5, d=8, expansion=4) == [[0, 1], [2, 3], [4]]
    assert eval_run._stacks([1000, 100], d=8, expansion=4) == [[0], [1]]  # too big alone still trains
    monkeypatch.setattr(eval_run, "STACK_BYTES", 2**31)
    assert eval_run._stacks([65536] * 24, d=64, expansion=4) == [list(range(24))]  # the suite's: all at once


def test_every_kind_on_one_loaded_checkpoint_shares_one_pass_over_the_token_set(tmp_path, monkeypatch):
    """SAE, ITDA and quantization on a shared handle: the hidden states of the token set are computed
    once for the three (and again after the handle is released)."""
    from massive_activations.capture import activations
    from massive_activations.evals.itda import ITDASettings
    from massive_activations.evals.sae import SAESettings
    from massive_activations.sources.checkpoints import CheckpointHandle

    tok = byte_tokenizer()
    tiny_model("gpt_neox", layers=2, d=32).save_pretrained(tmp_path / "suite" / "m" / "step0")
    tok.save_pretrained(tmp_path / "suite" / "m" / "step0")
    texts = _texts(60, seed=2)
    store = Store(tmp_path / "store")
    prompts = build_prompt_set("m-n4-len32", texts, tok, n_sequences=4, length=32)
    evals = load_prompt_set(store, save_prompt_set(store, build_eval_tokens(prompts, texts, tok, 1024, 256)))
    settings = EvalSettings(train_tokens=1024, heldout_tokens=256, sae=SAESettings(steps=3, batch_size=64),
                            itda=ITDASettings(k=2, target_size=4), mask=MaskSettings(massive_abs=None))
    passes = []
    real = activations.LayerActivations._run
    monkeypatch.setattr(activations.LayerActivations, "_run", lambda self, layers: passes.append(layers) or
                        real(self, layers))
    source = FolderSource(str(tmp_path / "suite"))
    handle = CheckpointHandle(source, "m", 0, device="cpu")
    for kind in ("quant", "sae", "itda"):
        result = evaluate_to_store(store, source, "m", 0, kind, "p", evals, settings, checkpoint=handle)
        assert result["status"] == "evaluated"
    assert passes == [[-1, 0, 1]]
    handle.release()
    evaluate_to_store(store, source, "m", 0, "sae", "p", evals, settings, force=True, checkpoint=handle)
    assert passes == [[-1, 0, 1], [0, 1]]  # SAEs alone need no embedding output
    handle.release()


def test_a_planted_massive_token_is_in_the_pool_at_its_frequency_in_text(tmp_path):
    """The old pool added every sequence's top-1 token; now the share of massive tokens is the text's."""
    p, tok = 0.03, byte_tokenizer()
    (planted,) = tok("@", add_special_tokens=False)["input_ids"]
    model = tiny_model("gpt_neox", layers=2, d=32)
    with torch.no_grad():
        model.get_input_embeddings().weight[planted] *= 1000.0  # '@' alone is massive, from the embedding on
    model.save_pretrained(tmp_path / "suite" / "m" / "step0")
    tok.save_pretrained(tmp_path / "suite" / "m" / "step0")
    texts = _texts(200, seed=1, planted="@", p=p)
    store = Store(tmp_path / "store")
    prompts = build_prompt_set("m-n4-len32", texts, tok, n_sequences=4, length=32)
    evals = build_eval_tokens(prompts, texts, tok, train_tokens=2**14, heldout_tokens=2**13)
    settings = EvalSettings(train_tokens=2**14, heldout_tokens=2**13,
                            mask=MaskSettings(massive_abs=None, massive_rel=100.0))
    evaluate_to_store(store, FolderSource(str(tmp_path / "suite")), "m", 0, "quant", save_prompt_set(store, prompts),
                      load_prompt_set(store, save_prompt_set(store, evals)), settings, device="cpu")
    held = evals.tokens[evals.source["n_train"]:]
    in_text = int((held == planted).sum())
    rows = [r for r in store.read_partition("evals/quant", {"model": "m", "step": 0}).to_pylist()
            if r["variant"] == "int8-tensor"]
    assert {r["layer"] for r in rows} == {-1, 0, 1}
    n = held.size
    for r in rows:
        assert r["n_tokens"] == n and r["n_massive"] == in_text  # every held-out token, each counted once
    assert abs(in_text / n - p) < 4 * np.sqrt(p * (1 - p) / n)  # the text's own frequency


def test_l0_and_ce_loss_score_are_split_by_token_group(tmp_path):
    from massive_activations.evals.eval_run import Splicer, by_token_group
    from massive_activations.evals.sae import massive_tokens

    x = torch.ones(6, 4)
    x[[1, 4]] *= 500.0  # two massive tokens
    codes = torch.zeros(6, 10)
    codes[:, 0] = 1.0
    codes[[1, 4], 1:3] = 2.0
    groups = by_token_group(x, x, bar=100.0, codes=codes)
    assert (groups["l0_massive"], groups["l0_other"], groups["n_massive"]) == (3.0, 1.0, 2)

    tok = byte_tokenizer()
    (planted,) = tok("@", add_special_tokens=False)["input_ids"]
    model = tiny_model("gpt_neox", layers=2, d=32)
    with torch.no_grad():
        model.get_input_embeddings().weight[planted] *= 1000.0
    tokens = np.asarray(tok("".join(_texts(1, planted="@", p=0.1)), add_special_tokens=False)["input_ids"][:96])
    tokens = tokens.reshape(3, 32)
    splicer = Splicer(model, tokens, batch_size=2)
    h = LayerActivations(model, tokens, [0])[0].vectors
    massive = massive_tokens(h, 100.0 * float(h.abs().median()))
    assert massive.sum() == (tokens == planted).sum() > 0
    exact = splicer.score(0, lambda rows: rows, None, massive)
    assert exact["ce_loss_score_massive"] == pytest.approx(1.0) and exact["ce_loss_score_other"] == pytest.approx(1.0)
    ablated = splicer.score(0, torch.zeros_like, None, massive)
    assert ablated["ce_loss_score_massive"] == pytest.approx(0.0)
    assert ablated["ce_loss_score_other"] == pytest.approx(0.0)
    # the massive group is the positions holding '@' (each predicting the next token)
    from massive_activations.evals.splice import ce_loss_score, token_losses_with_layer

    flags = (tokens == planted)[:, :-1]
    half = splicer.score(0, lambda rows: rows * 0.5, None, massive)
    ce = token_losses_with_layer(model, tokens, 0, lambda h, _ids: h * 0.5, 2)
    for name, rows in (("massive", flags), ("other", ~flags)):
        expected = ce_loss_score(splicer.original[rows].mean(), ce[rows].mean(), splicer.zero(0)[rows].mean())
        assert half[f"ce_loss_score_{name}"] == pytest.approx(expected)
    assert half["ce_loss_score_massive"] != pytest.approx(half["ce_loss_score_other"], abs=1e-3)
    none = splicer.score(0, lambda rows: rows * 0.5, None, torch.zeros_like(massive))
    assert np.isnan(none["ce_loss_score_massive"]) and none["ce_loss_score_other"] == pytest.approx(
        none["ce_loss_score"])
