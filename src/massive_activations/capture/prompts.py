"""Prompt sets: N token sequences of length S, stored on the store with their content hash.

A seeded random choice of documents, cut into fixed-length sequences. What position 0 holds
(``FIRST_TOKENS``, recorded in the set's name and metadata) is one of:

- ``eos``: documents joined with the end-of-text token, and every sequence starting with it: how
  the offline suite trains (each of its training windows starts with <|endoftext|>), so its default;
- ``bos``: the reference measurement for a tokenizer that adds a BOS token itself (Llama, OLMo-2):
  documents joined with blank lines, tokenized without special tokens, each sequence the BOS token
  and then text;
- ``text``: the reference measurement for a tokenizer that adds nothing (Pythia, GPT-2, OLMo): the
  same stream, every position text.

``auto`` (:func:`first_token_for`) picks ``eos`` for a folder source (the offline suite's layout)
and otherwise follows the tokenizer. The same prompt set serves every checkpoint of a model, so its
series are comparable.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from massive_activations.errors import BadInputError
from massive_activations.store import PartitionExistsError, Store, table_hash

DATASET = "prompts"
FIRST_TOKENS = ("eos", "bos", "text")
EVAL_BUDGETS = (2**16, 2**13)  # the evaluation set's default training and held-out tokens


@dataclass(frozen=True)
class PromptSet:
    name: str
    tokens: np.ndarray  # (n_sequences, length) int64
    source: dict[str, Any]

    @property
    def content_hash(self) -> str:
        return table_hash(self.to_table())

    @property
    def set_id(self) -> str:
        return f"{self.name}-{self.content_hash}"

    def to_table(self) -> pa.Table:
        return pa.table({"seq": pa.array(np.arange(len(self.tokens)), pa.int32()),
                         "tokens": pa.array(self.tokens.tolist(), pa.list_(pa.int64()))})


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts a BOS token in front of text by itself (Llama's does, Pythia's does not)."""
    bos = tokenizer.bos_token_id
    ids = tokenizer("a")["input_ids"]
    return bos is not None and len(ids) > 0 and ids[0] == bos


def first_token_for(requested: str, tokenizer: Any, folder_source: bool) -> str:
    """What position 0 holds: as requested, or for ``auto`` the offline suite's way (eos) for a folder
    source, else the tokenizer's way."""
    if requested == "auto":
        return "eos" if folder_source else "bos" if adds_bos(tokenizer) else "text"
    if requested not in FIRST_TOKENS:
        raise BadInputError(f"first token must be auto or one of {FIRST_TOKENS}, got {requested!r}")
    return requested


def _lead(name: str, tokenizer: Any, first: str) -> int | None:
    """The id position 0 holds (None: text)."""
    if first not in FIRST_TOKENS:
        raise BadInputError(f"prompt set {name!r}: first token must be one of {FIRST_TOKENS}, got {first!r}")
    lead = {"eos": tokenizer.eos_token_id, "bos": tokenizer.bos_token_id, "text": None}[first]
    if first != "text" and lead is None:
        raise BadInputError(f"prompt set {name!r}: the tokenizer has no {first} token")
    return lead


def _stream(texts: Sequence[str], tokenizer: Any, seed: int, first: str, lead: int | None, skip_documents: int,
            need: int | None) -> tuple[list[int], int]:
    """The seeded documents' tokens (from the first sequence's first body token) until ``need`` of them
    (None: all), and how many documents that took (with the skip)."""
    order = np.random.default_rng(seed).permutation(len(texts))
    stream: list[int] = []
    taken = skip_documents
    for i in order[skip_documents:]:
        ids = tokenizer(texts[i] if first == "eos" else texts[i] + "\n\n", add_special_tokens=False)["input_ids"]
        stream.extend([lead, *ids] if first == "eos" else ids)
        taken += 1
        if need is not None and len(stream) >= need + (first == "eos"):
            break
    start = 1 if first == "eos" else 0  # the first document's own leading end-of-text is the first sequence's
    return stream[start:], taken


def build_prompt_set(name: str, texts: Sequence[str], tokenizer: Any, n_sequences: int = 10,
                     length: int = 2048, seed: int = 0, source: dict[str, Any] | None = None,
                     first: str = "eos", skip_documents: int = 0) -> PromptSet:
    """Seeded choice of documents, cut into sequences whose position 0 is ``first`` (module docstring).

    ``skip_documents``: leave out the first documents of the seeded order (those another set took).
    How many documents the set takes, whole or cut, is recorded as ``documents`` (with the skip)."""
    if n_sequences < 1:
        raise BadInputError(f"a prompt set needs at least one sequence, got n_sequences={n_sequences}")
    if length < 2:
        raise BadInputError(f"prompt length must be at least 2 tokens, got {length}")
    if not texts:
        raise BadInputError(f"prompt set {name!r}: no texts to build from")
    lead = _lead(name, tokenizer, first)
    body = length - (lead is not None)
    need = n_sequences * body
    if not 0 <= skip_documents < len(texts):
        raise BadInputError(f"prompt set {name!r}: skip_documents={skip_documents} leaves none of {len(texts)} texts")
    stream, taken = _stream(texts, tokenizer, seed, first, lead, skip_documents, need)
    if len(stream) < need:
        raise BadInputError(f"prompt set {name!r}: texts give {len(stream)} tokens, fewer than the "
                            f"{need} needed for {n_sequences} × {length}")
    tokens = np.asarray(stream[:need], dtype=np.int64).reshape(n_sequences, body)
    if lead is not None:
        tokens = np.concatenate([np.full((n_sequences, 1), lead, np.int64), tokens], axis=1)
    info = {"n_texts": len(texts), "n_sequences": n_sequences, "length": length, "seed": seed,
            "tokenizer": getattr(tokenizer, "name_or_path", type(tokenizer).__name__), "position0": first,
            "skip_documents": skip_documents, "documents": taken}
    return PromptSet(name=name, tokens=tokens, source=info | (source or {}))


def eval_budget(train_tokens: int | None, heldout_tokens: int | None, length: int,
                capacity: int) -> tuple[int, int]:
    """Training and held-out sequences of ``length`` tokens for the evaluation set, of the ``capacity``
    sequences the texts hold.

    A budget given is used as is (and must fit). One left as None is the default
    (``EVAL_BUDGETS``), cut to what the texts hold, the two defaults keeping their 8:1 ratio: so a
    small suite's few held-out documents still evaluate, and a large one gets the full budget."""
    for tokens in (train_tokens, heldout_tokens):
        if tokens is not None and tokens < length:
            raise BadInputError(f"evaluation budgets of {train_tokens} training and {heldout_tokens} held-out "
                                f"tokens must each hold one {length}-token sequence")
    given = [None if t is None else -(-t // length) for t in (train_tokens, heldout_tokens)]
    wanted = [g if g is not None else -(-d // length) for g, d in zip(given, EVAL_BUDGETS, strict=True)]
    if sum(wanted) <= capacity or None not in given:
        return wanted[0], wanted[1]
    if given == [None, None]:
        held = max(1, capacity * wanted[1] // sum(wanted))
        train = capacity - held
    elif given[0] is None:
        held, train = given[1], capacity - given[1]
    else:
        train, held = given[0], capacity - given[0]
    if train < 1 or held < 1:
        raise BadInputError(f"the texts hold {capacity} sequences of {length} tokens: too few for "
                            f"{train_tokens or 'the default'} training and {heldout_tokens or 'the default'} "
                            "held-out tokens; give more text or smaller budgets")
    return train, held


def build_eval_tokens(prompts: PromptSet, prompt_texts: Sequence[str], tokenizer: Any, train_tokens: int | None,
                      heldout_tokens: int | None, texts: Sequence[str] | None = None) -> PromptSet:
    """The evaluation token set: sequences of the prompt set's length, the first ``n_train`` (recorded
    in its source) for training, the rest held out; budgets left as None by :func:`eval_budget`.

    From ``prompt_texts`` (the default), it continues the prompts' seeded document order after the
    documents they took; from other ``texts``, it leaves out any document the prompts took. Either
    way it shares no document with the prompts, and every token of every sequence is used: nothing
    is oversampled."""
    info = prompts.source
    if "documents" not in info:
        raise ValueError(f"prompt set {prompts.set_id} does not record the documents it took; rebuild it "
                         "with build_prompt_set")
    length = prompts.tokens.shape[1]
    seed = info["seed"]
    if texts is None:
        texts, skip = prompt_texts, info["documents"]
    else:
        order = np.random.default_rng(seed).permutation(len(prompt_texts))
        taken = {prompt_texts[i] for i in order[info.get("skip_documents", 0):info["documents"]]}
        texts, skip = [t for t in texts if t not in taken], 0
    first = info["position0"]
    capacity = 0
    if (train_tokens is None or heldout_tokens is None) and 0 <= skip < len(texts):
        lead = _lead(prompts.name, tokenizer, first)
        capacity = len(_stream(texts, tokenizer, seed, first, lead, skip, None)[0]) // (length - (lead is not None))
    n_train, n_held = eval_budget(train_tokens, heldout_tokens, length, capacity)
    name = f"{prompts.name}-eval-t{n_train}-h{n_held}"
    try:
        built = build_prompt_set(name, texts, tokenizer, n_train + n_held, length, seed, first=first,
                                 skip_documents=skip)
    except ValueError as err:
        raise BadInputError(f"evaluation tokens for {prompts.set_id}: {train_tokens or n_train * length} training "
                            f"and {heldout_tokens or n_held * length} held-out tokens do not fit in the texts left "
                            f"after the prompts' documents ({err}); lower the budgets or give more text") from None
    budget = {"train_tokens": n_train * length, "heldout_tokens": n_held * length,
              "asked": [train_tokens, heldout_tokens]}
    return PromptSet(name=built.name, tokens=built.tokens,
                     source=built.source | {"n_train": n_train, "prompt_set": prompts.set_id, "budget": budget})


def texts_from_file(path: str | Path, column: str = "text") -> list[str]:
    """A user's own texts: a .txt file (documents separated by blank lines), .jsonl or Parquet."""
    path = Path(path)
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        if column not in table.column_names:
            raise BadInputError(f"{path}: no column {column!r}; it has {table.column_names}")
        return [t for t in table.column(column).to_pylist() if t]
    if path.suffix in {".jsonl", ".json"}:
        return [json.loads(line)[column] for line in path.read_text().splitlines() if line.strip()]
    return [doc.strip() for doc in path.read_text().split("\n\n") if doc.strip()]


def texts_from_hub_dataset(repo: str, filename: str, column: str = "text", revision: str = "main",
                           endpoint: str | None = None, cache_dir: str | None = None) -> list[str]:
    """Texts from one file of a Hub dataset (e.g. togethercomputer/RedPajama-Data-1T-Sample)."""
    from huggingface_hub import hf_hub_download

    local = hf_hub_download(repo, filename, repo_type="dataset", revision=revision, endpoint=endpoint,
                            cache_dir=cache_dir)
    return texts_from_file(local, column)


def save_prompt_set(store: Store, prompts: PromptSet) -> str:
    """Store a prompt set under its content-addressed id (idempotent) and return that id. Another run
    may store the same set between the check and the write: the id names the content, so what it
    stored is this set, and its write stands."""
    partition = {"set": prompts.set_id}
    if store.partition_metadata(DATASET, partition) is None:
        try:
            store.write_partition(DATASET, partition, prompts.to_table(),
                                  inputs={"name": prompts.name, "source": prompts.source},
                                  code_modules=("massive_activations.capture.prompts",))
        except PartitionExistsError:
            pass
    return prompts.set_id


def load_prompt_set(store: Store, set_id: str) -> PromptSet:
    table = store.read_partition(DATASET, {"set": set_id})
    meta = store.partition_metadata(DATASET, {"set": set_id}) or {}
    tokens = np.asarray(table.column("tokens").to_pylist(), dtype=np.int64)
    loaded = PromptSet(name=set_id.rsplit("-", 1)[0], tokens=tokens, source=meta.get("inputs", {}).get("source", {}))
    if loaded.set_id != set_id:
        raise ValueError(f"prompt set {set_id} on {store.url} does not match its content hash "
                         f"({loaded.content_hash}); it was altered after it was stored")
    return loaded
