"""A real stand-in for Pythia on a machine without network.

A family of small GPT-NeoX models with Pythia's architecture (rotary on 25% of head dims, parallel
residual, untied embeddings, d_ff = 4·d) trained here on stdlib docstrings with a byte-level BPE
tokenizer, saving checkpoints in the folder-source layout ``<root>/<model>/step<N>/`` at a
Pythia-shaped schedule: 0, 1, 2, 4, … (powers of two below the save interval), then every interval.

What makes massive activations emerge at this scale (measured, see README): a high peak learning
rate, no weight decay, and a fixed first token (every sequence starts with ``<|endoftext|>``, id 0,
as Pythia's documents do) that the model can turn into an attention sink.
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from massive_activations.capture.capture import CaptureSettings, capture, layer_ratios
from massive_activations.errors import BadInputError
from massive_activations.provenance import provenance, stable_hash
from massive_activations.sources.catalog import Architecture
from massive_activations.sources.corpus import Corpus, stdlib_docstrings
from massive_activations.store import Store

log = logging.getLogger(__name__)

EOT = "<|endoftext|>"
CODE_MODULES = ("massive_activations.sources.offline_suite", "massive_activations.sources.corpus")


@dataclass(frozen=True)
class SuiteModel:
    n_layers: int
    d_model: int
    n_heads: int

    @property
    def name(self) -> str:
        return f"nx-l{self.n_layers}-d{self.d_model}-h{self.n_heads}"


@dataclass(frozen=True)
class SuiteSpec:
    """Everything that determines a suite's checkpoints; its hash names what is on the store."""

    name: str
    models: tuple[SuiteModel, ...]
    total_steps: int
    save_interval: int
    seq_len: int = 64
    batch_size: int = 32
    lr: float = 1e-2
    min_lr_ratio: float = 0.1
    warmup_steps: int = 30
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    vocab_size: int = 257
    corpus_chars: int = 4_000_000
    heldout_fraction: float = 0.05
    seed: int = 1234

    def __post_init__(self) -> None:
        if not self.models:
            raise BadInputError(f"suite {self.name!r} has no models")
        if self.total_steps < 1 or self.save_interval < 1 or self.total_steps % self.save_interval:
            raise BadInputError(f"suite {self.name!r}: total_steps={self.total_steps} must be a positive "
                             f"multiple of save_interval={self.save_interval}")
        for m in self.models:
            Architecture(name=m.name, n_layers=m.n_layers, d_model=m.d_model, n_heads=m.n_heads,
                         d_ff=4 * m.d_model, vocab_size=self.vocab_size, context=self.seq_len)
            rotary = (m.d_model // m.n_heads) // 4
            if rotary < 2 or rotary % 2:
                raise BadInputError(f"{m.name}: head dim {m.d_model // m.n_heads} gives {rotary} rotary dims; "
                                 "25% of the head dim must be an even number >= 2")

    @property
    def steps(self) -> list[int]:
        log_part = [0] + [2**i for i in range(64) if 2**i < self.save_interval]
        return log_part + list(range(self.save_interval, self.total_steps + 1, self.save_interval))

    def model(self, name: str) -> SuiteModel:
        for m in self.models:
            if m.name == name:
                return m
        raise BadInputError(f"suite {self.name!r} has no model {name!r}; it has {[m.name for m in self.models]}")

    def model_hash(self, model: SuiteModel) -> str:
        """What determines one model's checkpoints (its siblings do not)."""
        shared = {k: v for k, v in asdict(self).items() if k not in {"name", "models"}}
        return stable_hash({"model": asdict(model), **shared})


SUITES: dict[str, SuiteSpec] = {
    # Six architectures varying depth (2/4/6 layers), width (32/64/96) and heads per dim.
    # 256-token sequences × 8 (2,048 tokens a step): longer sequences drive the emergence far more
    # than a higher learning rate does at this scale (README, "What drives emergence here").
    # 37 checkpoints per model, as many as the paper fitted per Pythia model.
    "default": SuiteSpec(
        name="default",
        models=(SuiteModel(2, 64, 4), SuiteModel(4, 64, 4), SuiteModel(6, 64, 4),
                SuiteModel(4, 32, 2), SuiteModel(4, 96, 6), SuiteModel(4, 64, 2)),
        total_steps=1440, save_interval=48, seq_len=256, batch_size=8, lr=1e-2, warmup_steps=30,
    ),
    # For tests: two tiny models, built in seconds.
    "micro": SuiteSpec(
        name="micro", models=(SuiteModel(2, 32, 2), SuiteModel(3, 32, 4)),
        total_steps=48, save_interval=8, seq_len=32, batch_size=8, warmup_steps=4,
        corpus_chars=200_000,
    ),
}


def get_suite(name: str) -> SuiteSpec:
    if name not in SUITES:
        raise BadInputError(f"unknown offline suite {name!r}; valid: {', '.join(SUITES)}")
    return SUITES[name]


def suite_prefix(suite: str) -> str:
    return f"suites/{suite}"


def build_tokenizer(corpus: Corpus, vocab_size: int):
    """Byte-level BPE trained on the corpus; vocab 257 means plain bytes plus <|endoftext|> (id 0)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus.documents, trainer)
    if tok.token_to_id(EOT) != 0:
        raise RuntimeError(f"{EOT} must have id 0 as in Pythia, got {tok.token_to_id(EOT)}")
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, unk_token=EOT,
                                   pad_token=EOT, model_max_length=1_000_000)


def split_documents(corpus: Corpus, heldout_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Seeded split into training and held-out documents (prompts and evaluations use held-out)."""
    order = np.random.default_rng(seed).permutation(len(corpus.documents))
    n_held = max(1, int(round(heldout_fraction * len(order))))
    held = [corpus.documents[i] for i in sorted(order[:n_held])]
    train = [corpus.documents[i] for i in sorted(order[n_held:])]
    return train, held


def token_stream(documents: list[str], tokenizer) -> np.ndarray:
    """Documents joined as Pythia joins them: each preceded by <|endoftext|>."""
    ids = tokenizer(documents, add_special_tokens=False)["input_ids"]
    return np.concatenate([np.concatenate([[0], d]) for d in ids]).astype(np.int64)


def gpt_neox_config(arch: SuiteModel, spec: SuiteSpec):
    from transformers import GPTNeoXConfig

    return GPTNeoXConfig(
        vocab_size=spec.vocab_size, hidden_size=arch.d_model, num_hidden_layers=arch.n_layers,
        num_attention_heads=arch.n_heads, intermediate_size=4 * arch.d_model,
        max_position_embeddings=spec.seq_len, use_parallel_residual=True, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
        hidden_dropout=0.0, attention_dropout=0.0, bos_token_id=0, eos_token_id=0,
    )


def lr_at(step: int, spec: SuiteSpec) -> float:
    """Linear warmup then cosine decay to min_lr_ratio·lr, as Pythia."""
    if step < spec.warmup_steps:
        return spec.lr * (step + 1) / spec.warmup_steps
    progress = (step - spec.warmup_steps) / max(1, spec.total_steps - spec.warmup_steps)
    return spec.lr * (spec.min_lr_ratio + (1 - spec.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def sample_batch(stream: np.ndarray, spec: SuiteSpec, rng: np.random.Generator) -> torch.Tensor:
    """Random windows of the stream, each starting with the fixed first token <|endoftext|>."""
    starts = rng.integers(0, len(stream) - spec.seq_len, size=spec.batch_size)
    body = np.stack([stream[s:s + spec.seq_len - 1] for s in starts])
    return torch.from_numpy(np.concatenate([np.zeros((spec.batch_size, 1), np.int64), body], axis=1))


def train_model(spec: SuiteSpec, model_name: str, store: Store,
                report: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train one suite model from scratch and write its checkpoints and manifest to the store.

    The manifest is written last, so its presence (with a matching spec hash) means the model
    is complete; an interrupted build is simply redone. ``report`` gets the progress every ~10% of
    the steps: loss, the largest layer ratio on two training sequences, elapsed time and ETA.
    """
    from transformers import GPTNeoXForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    arch = spec.model(model_name)
    started = time.perf_counter()
    corpus = stdlib_docstrings(spec.corpus_chars)
    train_docs, _ = split_documents(corpus, spec.heldout_fraction, spec.seed)
    tokenizer = build_tokenizer(corpus, spec.vocab_size)
    stream = token_stream(train_docs, tokenizer)

    torch.manual_seed(spec.seed)
    rng = np.random.default_rng(spec.seed)
    model = GPTNeoXForCausalLM(gpt_neox_config(arch, spec))
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.95), eps=1e-8,
                                  weight_decay=spec.weight_decay)
    prefix = f"{suite_prefix(spec.name)}/{model_name}"
    save_steps = set(spec.steps)
    report_every = max(1, spec.total_steps // 10)
    losses: list[tuple[int, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = Path(tmp) / "tokenizer"
        tokenizer.save_pretrained(tok_dir)
        for step in range(spec.total_steps + 1):
            if step in save_steps:
                model.eval()
                ckpt = Path(tmp) / f"step{step}"
                model.save_pretrained(ckpt, safe_serialization=True)
                for f in tok_dir.iterdir():
                    (ckpt / f.name).write_bytes(f.read_bytes())
                for f in sorted(ckpt.iterdir()):
                    store.put_file(f, f"{prefix}/step{step}/{f.name}")
                model.train()
            if step == spec.total_steps:
                break
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, spec)
            batch = sample_batch(stream, spec, rng)
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if step % 10 == 0 or step == spec.total_steps - 1:
                losses.append((step + 1, float(loss.detach())))
            if report and ((step + 1) % report_every == 0 or step + 1 == spec.total_steps):
                report(_progress(model, model_name, batch, float(loss.detach()), step + 1, spec.total_steps,
                                 time.perf_counter() - started))
    cfg = gpt_neox_config(arch, spec)
    manifest = {
        "suite": spec.name, "model": model_name, "spec_hash": spec.model_hash(arch),
        "steps": spec.steps, "architecture": Architecture.from_config(model_name, cfg).as_dict(),
        "train_seconds": round(time.perf_counter() - started, 1), "corpus_hash": corpus.content_hash,
        "loss_curve": losses,
        "provenance": provenance({"spec": asdict(replace(spec, models=(arch,)))}, CODE_MODULES),
    }
    store.write_json(f"{prefix}/manifest.json", manifest)
    return manifest


def _progress(model: Any, name: str, batch: torch.Tensor, loss: float, done: int, total: int,
              elapsed: float) -> dict[str, Any]:
    model.eval()
    stats = capture(model, batch[:2].numpy(), CaptureSettings(include_embedding=False)).stats
    model.train()
    return {"model": name, "step": done, "total_steps": total, "loss": loss,
            "ratio": float(max(layer_ratios(stats).column("ratio").to_pylist())),
            "elapsed_s": elapsed, "eta_s": elapsed / done * (total - done)}


def progress_key(suite: str, model: str) -> str:
    return f"{suite_prefix(suite)}/{model}/progress.json"


def write_progress(store: Store, suite: str, info: dict[str, Any]) -> None:
    """How a training process tells the one that started it how far it is (the store is shared)."""
    store.write_json(progress_key(suite, info["model"]), info)


def built_models(spec: SuiteSpec, store: Store) -> dict[str, dict[str, Any]]:
    """Suite models already complete on the store, by name (manifest present, spec hash matching)."""
    done = {}
    for arch in spec.models:
        key = f"{suite_prefix(spec.name)}/{arch.name}/manifest.json"
        if store.exists(key):
            manifest = store.read_json(key)
            if manifest.get("spec_hash") == spec.model_hash(arch):
                done[arch.name] = manifest
    return done


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def build_suite(spec: SuiteSpec, store: Store, workers: int = 1, force: bool = False,
                on_progress: Callable[[dict[str, Any]], None] | None = None,
                poll_s: float = 15.0) -> dict[str, dict[str, Any]]:
    """Train every model of the suite not already complete on the store (``force``: every model);
    return all manifests. ``on_progress`` gets each model's progress every ~10% of its steps.

    With ``workers > 1`` models train in separate processes (one torch thread each), which uses
    small CPUs far better than threads: these models are too small for intra-op parallelism. They
    write their progress to the store, which this process reads every ``poll_s`` seconds.
    """
    done = {} if force else built_models(spec, store)
    todo = [m.name for m in spec.models if m.name not in done]
    if workers <= 1 or len(todo) <= 1:
        for name in todo:
            done[name] = train_model(spec, name, store, on_progress)
        return done
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, wait

    report = partial(write_progress, store, spec.name) if on_progress else None
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker, initargs=(1,)) as pool:
        futures = {name: pool.submit(train_model, spec, name, store, report) for name in todo}
        seen: dict[str, dict[str, Any]] = {}
        while True:
            _, pending = wait(futures.values(), timeout=poll_s)
            for name in todo if on_progress else ():
                key = progress_key(spec.name, name)
                info = store.read_json(key) if store.exists(key) else None
                if info and info != seen.get(name):
                    seen[name] = info
                    on_progress(info)
            if not pending:
                break
        for name, future in futures.items():
            done[name] = future.result()
    return done
