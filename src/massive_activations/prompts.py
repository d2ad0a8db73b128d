"""Prompt sets: N token sequences of length S, stored on the store with their content hash.

Built the way the paper samples its inputs: a seeded random choice of documents, joined with
<|endoftext|> and cut into sequences. Every sequence starts with the end-of-text token (as every
Pythia document does, and as the offline suite trains), so that position 0 is comparable across
sequences. The same prompt set serves every checkpoint of a model, so its series are comparable.
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

from massive_activations.store import Store, table_hash

DATASET = "prompts"


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


def build_prompt_set(name: str, texts: Sequence[str], tokenizer: Any, n_sequences: int = 10,
                     length: int = 2048, seed: int = 0, source: dict[str, Any] | None = None) -> PromptSet:
    """Seeded choice of documents, joined with <|endoftext|>, cut into sequences that start with it."""
    if n_sequences < 1:
        raise ValueError(f"a prompt set needs at least one sequence, got n_sequences={n_sequences}")
    if length < 2:
        raise ValueError(f"prompt length must be at least 2 tokens, got {length}")
    if not texts:
        raise ValueError(f"prompt set {name!r}: no texts to build from")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(f"prompt set {name!r}: the tokenizer has no end-of-text token")
    body = length - 1
    need = n_sequences * body
    order = np.random.default_rng(seed).permutation(len(texts))
    stream: list[int] = []
    for i in order:
        stream.extend([eos, *tokenizer(texts[i], add_special_tokens=False)["input_ids"]])
        if len(stream) >= need + 1:
            break
    if len(stream) < need + 1:
        raise ValueError(f"prompt set {name!r}: texts give {len(stream)} tokens, fewer than the "
                         f"{need + 1} needed for {n_sequences} × {length}")
    chunks = np.asarray(stream[1:need + 1], dtype=np.int64).reshape(n_sequences, body)
    tokens = np.concatenate([np.full((n_sequences, 1), eos, np.int64), chunks], axis=1)
    info = {"n_texts": len(texts), "n_sequences": n_sequences, "length": length, "seed": seed,
            "tokenizer": getattr(tokenizer, "name_or_path", type(tokenizer).__name__)}
    return PromptSet(name=name, tokens=tokens, source=info | (source or {}))


def texts_from_file(path: str | Path, column: str = "text") -> list[str]:
    """A user's own texts: a .txt file (documents separated by blank lines), .jsonl or Parquet."""
    path = Path(path)
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        if column not in table.column_names:
            raise ValueError(f"{path}: no column {column!r}; it has {table.column_names}")
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
    """Store a prompt set under its content-addressed id (idempotent) and return that id."""
    partition = {"set": prompts.set_id}
    if store.partition_metadata(DATASET, partition) is None:
        store.write_partition(DATASET, partition, prompts.to_table(),
                              inputs={"name": prompts.name, "source": prompts.source},
                              code_modules=("massive_activations.prompts",))
    return prompts.set_id


def load_prompt_set(store: Store, set_id: str) -> PromptSet:
    table = store.read_partition(DATASET, {"set": set_id})
    meta = store.partition_metadata(DATASET, {"set": set_id}) or {}
    tokens = np.asarray(table.column("tokens").to_pylist(), dtype=np.int64)
    loaded = PromptSet(name=set_id.rsplit("-", 1)[0], tokens=tokens, source=meta.get("inputs", {}))
    if loaded.set_id != set_id:
        raise ValueError(f"prompt set {set_id} on {store.url} does not match its content hash "
                         f"({loaded.content_hash}); it was altered after it was stored")
    return loaded
