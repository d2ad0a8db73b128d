"""Prompt sets: built from texts, files and a Hub dataset; stored content-addressed."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from massive_activations.capture.prompts import (
    build_prompt_set,
    first_token_for,
    load_prompt_set,
    save_prompt_set,
    texts_from_file,
    texts_from_hub_dataset,
)
from massive_activations.store import Store

TEXTS = [f"Document number {i}: " + "lorem ipsum dolor sit amet " * (5 + i % 7) for i in range(40)]


@pytest.fixture(scope="module")
def tokenizer(micro_root):
    return AutoTokenizer.from_pretrained(micro_root / "nx-l2-d32-h2" / "step0")


def test_prompt_set_shape_seed_and_first_token(tokenizer):
    a = build_prompt_set("t", TEXTS, tokenizer, n_sequences=4, length=32, seed=1)
    b = build_prompt_set("t", TEXTS, tokenizer, n_sequences=4, length=32, seed=1)
    c = build_prompt_set("t", TEXTS, tokenizer, n_sequences=4, length=32, seed=2)
    assert a.tokens.shape == (4, 32) and (a.tokens[:, 0] == tokenizer.eos_token_id).all()
    assert a.content_hash == b.content_hash != c.content_hash
    assert np.array_equal(a.tokens, b.tokens)


def with_bos(tokenizer):
    """The same tokenizer made to add its BOS token (id 0) in front of text, as Llama's does."""
    import copy

    from tokenizers.processors import TemplateProcessing

    llama_like = copy.deepcopy(tokenizer)
    bos = tokenizer.convert_ids_to_tokens(0)
    llama_like.backend_tokenizer.post_processor = TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, 0)])
    return llama_like


def test_position_zero_follows_the_tokenizer_and_is_recorded(tokenizer):
    llama_like = with_bos(tokenizer)
    assert first_token_for("auto", llama_like, folder_source=False) == "bos"
    assert first_token_for("auto", tokenizer, folder_source=False) == "text"  # adds nothing, as Pythia's
    assert first_token_for("auto", llama_like, folder_source=True) == "eos"  # the suite's own choice
    stream = tokenizer("\n\n".join(TEXTS[i] for i in np.random.default_rng(0).permutation(len(TEXTS))) + "\n\n",
                       add_special_tokens=False)["input_ids"]
    text = build_prompt_set("t", TEXTS, tokenizer, n_sequences=3, length=16, first="text")
    assert text.source["position0"] == "text" and text.tokens.shape == (3, 16)
    # the reference measurement: documents joined with blank lines, no special tokens, fixed-length chunks
    assert text.tokens.flatten().tolist() == stream[:48]
    assert (text.tokens != tokenizer.eos_token_id).all()
    bos = build_prompt_set("t", TEXTS, llama_like, n_sequences=3, length=16, first="bos")
    assert (bos.tokens[:, 0] == 0).all() and bos.tokens[:, 1:].flatten().tolist() == stream[:45]
    assert bos.source["position0"] == "bos"
    with pytest.raises(ValueError, match="first token must be auto or one of"):
        first_token_for("cls", tokenizer, folder_source=False)


def test_prompt_set_round_trip_and_tamper_check(tokenizer, any_store: Store):
    prompts = build_prompt_set("t", TEXTS, tokenizer, n_sequences=3, length=16)
    set_id = save_prompt_set(any_store, prompts)
    assert save_prompt_set(any_store, prompts) == set_id  # idempotent
    assert np.array_equal(load_prompt_set(any_store, set_id).tokens, prompts.tokens)
    other = build_prompt_set("t", TEXTS, tokenizer, n_sequences=3, length=16, seed=9)
    any_store.write_partition("prompts", {"set": set_id}, other.to_table(), inputs={}, overwrite=True)
    with pytest.raises(ValueError, match="does not match its content hash"):
        load_prompt_set(any_store, set_id)


def test_runs_saving_one_prompt_set_at_once_all_get_its_id(tokenizer, tmp_path):
    """Two runs on one store build the same content-addressed set: whichever writes second finds it
    there (after its own check said it was not), and that is success, not PartitionExistsError."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    store = Store(tmp_path / "store")
    for seed in range(6):
        prompts = build_prompt_set("t", TEXTS, tokenizer, n_sequences=3, length=16, seed=seed)
        start = threading.Barrier(8)

        def save(_: int, prompts=prompts, start=start) -> str:
            start.wait()
            return save_prompt_set(store, prompts)

        with ThreadPoolExecutor(8) as pool:
            ids = list(pool.map(save, range(8)))
        assert ids == [prompts.set_id] * 8
        assert np.array_equal(load_prompt_set(store, prompts.set_id).tokens, prompts.tokens)


def test_bad_prompt_requests(tokenizer):
    with pytest.raises(ValueError, match="at least one sequence"):
        build_prompt_set("t", TEXTS, tokenizer, n_sequences=0, length=16)
    with pytest.raises(ValueError, match="fewer than the"):
        build_prompt_set("t", TEXTS[:1], tokenizer, n_sequences=50, length=512)
    with pytest.raises(ValueError, match="no texts"):
        build_prompt_set("t", [], tokenizer)


def test_texts_from_user_files(tmp_path):
    (tmp_path / "a.txt").write_text("first doc\nstill first\n\nsecond doc\n\n\nthird")
    assert texts_from_file(tmp_path / "a.txt") == ["first doc\nstill first", "second doc", "third"]
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in ["x y", "z"]))
    assert texts_from_file(tmp_path / "b.jsonl") == ["x y", "z"]
    pq.write_table(pa.table({"text": ["p", "q"]}), tmp_path / "c.parquet")
    assert texts_from_file(tmp_path / "c.parquet") == ["p", "q"]
    with pytest.raises(ValueError, match="no column 'body'"):
        texts_from_file(tmp_path / "c.parquet", column="body")


def test_texts_from_a_hub_dataset(fake_hub, tokenizer, tmp_path):
    """The RedPajama route, through the real huggingface_hub client and the loopback Hub."""
    lines = "\n".join(json.dumps({"text": t, "meta": {}}) for t in TEXTS).encode()
    fake_hub.add("togethercomputer/RedPajama-Data-1T-Sample", "main", {"arxiv_sample.jsonl": lines},
                 repo_type="dataset")
    texts = texts_from_hub_dataset("togethercomputer/RedPajama-Data-1T-Sample", "arxiv_sample.jsonl",
                                   endpoint=fake_hub.url, cache_dir=str(tmp_path / "hf"))
    assert texts == TEXTS
    prompts = build_prompt_set("redpajama", texts, tokenizer, n_sequences=4, length=32)
    assert prompts.tokens.shape == (4, 32)
