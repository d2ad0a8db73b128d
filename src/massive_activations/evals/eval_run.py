"""Evaluate one checkpoint onto the store: SAEs, ITDA or quantization, one ``evals/<kind>/`` partition.

Every evaluation runs on the model's evaluation token set (``prompts.build_eval_tokens``: text
sharing no document with the capture's prompts, the same for every checkpoint): the checkpoint's
hidden states at every token of its training sequences train the SAEs and ITDA dictionaries, and
every token of its held-out sequences measures them (``activations.LayerActivations``). CE losses
are measured on the held-out sequences themselves, by running the checkpoint with a layer's output
replaced. Each trained SAE is kept on the store in the SAELens layout (``saes/``, ``sae_key``).

A partition with identical inputs (including the token set's content hash) and code version is
not recomputed.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from massive_activations.capture.activations import LayerActivations, LayerSamples
from massive_activations.capture.prompts import PromptSet
from massive_activations.errors import BadInputError
from massive_activations.evals.itda import (
    ITDADictionary,
    ITDASettings,
    itda,
    jaccard,
    layer_matching_score,
    matching_pursuit,
)
from massive_activations.evals.quantization import activation_quantization, outlier_dims, w8a8
from massive_activations.evals.sae import (
    SAESettings,
    SparseAutoencoder,
    massive_bar,
    massive_tokens,
    reconstruction_metrics,
    save_sae_lens,
    token_mask,
    train_saes,
)
from massive_activations.evals.splice import ce_loss_score, clean_pass, lm_loss, token_losses_with_layer, zero_ablation
from massive_activations.provenance import library_versions, module_version
from massive_activations.sources.checkpoints import CheckpointHandle, CheckpointSource
from massive_activations.sources.model_parts import find_parts, input_device
from massive_activations.store import Store

EVALS = "evals"
KINDS = ("sae", "itda", "quant")
QUANT_MODEL, ITDA_SIMILARITY = f"{EVALS}/quant_model", f"{EVALS}/itda_similarity"
CODE_MODULES = ("massive_activations.evals.eval_run", "massive_activations.capture.activations",
                "massive_activations.evals.sae", "massive_activations.evals.itda",
                "massive_activations.evals.quantization", "massive_activations.evals.splice",
                "massive_activations.sources.model_parts")


@dataclass(frozen=True)
class MaskSettings:
    """Which tokens are massive, for the masked variants and for the metrics split by token group.

    A token is massive when its largest |h| exceeds ``massive_abs`` and ``massive_rel`` × the median
    |h| of the layer's training tokens: the capture's criterion (100 and 1000) by default. Small
    models never reach |h| > 100; for them leave ``massive_abs`` out and use a lower relative
    threshold (the offline suite's evaluations use 10 ×), recorded with the results."""

    bos_id: int | None = 0  # Pythia's BOS/EOS id (and the offline suite's EOT)
    position0: bool = True
    massive_abs: float | None = 100.0
    massive_rel: float | None = 1000.0

    def __post_init__(self) -> None:
        for name in ("massive_abs", "massive_rel"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise BadInputError(f"{name} must be > 0 or None, got {value}")


@dataclass(frozen=True)
class EvalSettings:
    """``train_tokens``/``heldout_tokens``: the evaluation token set's budgets (whole sequences of the
    prompt length, rounded up), which the flows build it with; None: the default, cut to what the
    texts hold (``prompts.eval_budget``)."""

    train_tokens: int | None = None
    heldout_tokens: int | None = None
    seed: int = 0
    sae_kinds: tuple[str, ...] = ("topk", "relu")
    sae: SAESettings = field(default_factory=SAESettings)
    mask: MaskSettings = field(default_factory=MaskSettings)
    itda: ITDASettings = field(default_factory=ITDASettings)
    quant_bits: tuple[int, ...] = (8, 4)
    quant_top_k: int = 16
    batch_size: int = 8

    def __post_init__(self) -> None:
        if any(n is not None and n < 2 for n in (self.train_tokens, self.heldout_tokens)):
            raise BadInputError(f"train_tokens and heldout_tokens must be >= 2 or None, got {self.train_tokens}, "
                             f"{self.heldout_tokens}")
        for kind in self.sae_kinds:
            SAESettings(**{**asdict(self.sae), "kind": kind})  # validates each kind
        if not self.quant_bits or min(self.quant_bits) < 2:
            raise BadInputError(f"quant_bits must be bit widths >= 2, got {self.quant_bits}")
        if self.quant_top_k < 1 or self.batch_size < 1:
            raise BadInputError(f"quant_top_k and batch_size must be >= 1, got {self.quant_top_k}, {self.batch_size}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EvalSettings:
        v = dict(values)
        nested = {"sae": SAESettings, "mask": MaskSettings, "itda": ITDASettings}
        for name, kind in nested.items():
            if isinstance(v.get(name), dict):
                v[name] = kind(**v[name])
        for name in ("sae_kinds", "quant_bits"):
            if name in v:
                v[name] = tuple(v[name])
        return cls(**v)


def eval_inputs(model: str, step: int, kind: str, source: CheckpointSource, prompt_set: str, eval_tokens: str,
                settings: EvalSettings, dtype: str = "float32") -> dict[str, Any]:
    if kind not in KINDS:
        raise BadInputError(f"unknown evaluation {kind!r}; choose from {', '.join(KINDS)}")
    return {"model": model, "step": step, "kind": kind, "source": source.describe(), "prompt_set": prompt_set,
            "eval_tokens": eval_tokens, "settings": asdict(settings), "dtype": dtype}


def stored_evaluation(store: Store, source: CheckpointSource, model: str, step: int, kind: str,
                      prompt_set: str, eval_tokens: str, settings: EvalSettings,
                      dtype: str = "float32") -> dict[str, Any] | None:
    """The result ``evaluate_to_store`` would return as "skipped", or None when it would evaluate."""
    inputs = eval_inputs(model, step, kind, source, prompt_set, eval_tokens, settings, dtype)
    meta = store.current(f"{EVALS}/{kind}", {"model": model, "step": step}, inputs, CODE_MODULES)
    return ({"model": model, "step": step, "kind": kind, "status": "skipped", "hash": meta.get("content_hash")}
            if meta else None)


class Splicer:
    """CE losses of one checkpoint on the held-out sequences, with a decoder layer's output replaced."""

    def __init__(self, lm: Any, tokens: np.ndarray, batch_size: int):
        self.lm, self.tokens, self.batch_size = lm, tokens, batch_size
        self.original, self._recorded = clean_pass(lm, tokens, batch_size)  # splices start after their layer
        self._zero: dict[int, np.ndarray] = {}

    def zero(self, layer: int) -> np.ndarray:
        if layer not in self._zero:
            self._zero[layer] = self._with_layer(layer, zero_ablation)
        return self._zero[layer]

    def _with_layer(self, layer: int, replace) -> np.ndarray:
        return token_losses_with_layer(self.lm, self.tokens, layer, replace, self.batch_size, self._recorded)

    def score(self, layer: int, reconstruct, masked_bar: dict | None,
              massive: torch.Tensor | None = None) -> dict[str, float]:
        """CE with ``reconstruct`` (rows → rows) spliced in; masked tokens, when given, pass through
        unchanged. ``massive`` (one flag per held-out token, ordered by sequence and position): the
        CE-loss score is also given over the positions whose token is massive at this layer, and
        over the others (a position's loss is that of predicting the next token)."""
        def replace(h: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
            flat = h.reshape(-1, h.shape[-1]).float()
            out = reconstruct(flat).to(flat.dtype)
            if masked_bar is not None:
                positions = torch.arange(h.shape[1], device=h.device).expand(h.shape[0], -1).reshape(-1)
                passed = token_mask(ids.reshape(-1), positions, flat.abs().amax(dim=1), **masked_bar)
                out[passed] = flat[passed]
            return out.reshape(h.shape)

        ce = self._with_layer(layer, replace)
        original, zero = self.original, self.zero(layer)
        out = {"ce_original": float(original.mean()), "ce_zero": float(zero.mean()),
               "ce_reconstructed": float(ce.mean()),
               "ce_loss_score": ce_loss_score(float(original.mean()), float(ce.mean()), float(zero.mean()))}
        if massive is not None:
            flags = massive.numpy().reshape(self.tokens.shape)[:, :-1]  # the last position predicts nothing
            for name, rows in (("massive", flags), ("other", ~flags)):
                out[f"ce_loss_score_{name}"] = (ce_loss_score(float(original[rows].mean()), float(ce[rows].mean()),
                                                              float(zero[rows].mean())) if rows.any() else float("nan"))
        return out


def _mask_options(settings: MaskSettings, train: LayerSamples) -> dict[str, Any]:
    bar = massive_bar(train.vectors, settings.massive_abs, settings.massive_rel)
    return {"bos_id": settings.bos_id, "position0": settings.position0, "massive_above": bar}


def by_token_group(x: torch.Tensor, x_hat: torch.Tensor, bar: float | None,
                   codes: torch.Tensor | None = None) -> dict[str, float]:
    """Reconstruction on the held-out tokens that are massive (largest |h| above ``bar``) and on the
    others: explained variance against the variance of all held-out tokens (so the groups compare),
    MSE per element, cosine, L0 (with ``codes``), and how many tokens each group has (NaN metrics for
    an empty group)."""
    x, x_hat = x.double(), x_hat.double()
    massive = massive_tokens(x, bar)
    var = ((x - x.mean(dim=0)) ** 2).sum(dim=1).mean()
    out: dict[str, float] = {}
    for name, rows in (("massive", massive), ("other", ~massive)):
        n = int(rows.sum())
        err = ((x[rows] - x_hat[rows]) ** 2).sum(dim=1).mean() if n else torch.tensor(float("nan"))
        cos = torch.nn.functional.cosine_similarity(x[rows], x_hat[rows], dim=1, eps=1e-12).mean() if n else err
        out.update({f"explained_variance_{name}": float(1 - err / var) if var > 0 else float("nan"),
                    f"mse_{name}": float(err / x.shape[1]), f"cosine_{name}": float(cos), f"n_{name}": n})
        if codes is not None:
            out[f"l0_{name}"] = float((codes[rows] != 0).sum(dim=1).double().mean()) if n else float("nan")
    return out


def _split(samples: LayerSamples, n_train: int) -> tuple[LayerSamples, LayerSamples]:
    """The training sequences' tokens (the first ``n_train``) and the held-out ones'."""
    is_train = samples.seq < n_train
    return samples.select(is_train), samples.select(~is_train)


def _layer_chunks(samples: Mapping[int, LayerSamples]) -> list[list[int]]:
    """Layers whose SAEs train together: the groups the hidden states are computed in (all of them
    for a small model), so a chunk's training data are in memory at once anyway."""
    groups = getattr(samples, "groups", None)
    return groups() if callable(groups) else [list(samples)]


STACK_BYTES = 2**31  # SAEs trained together hold about this much: their data, weights, gradients, Adam's moments


def _stacks(rows: list[int], d: int, expansion: int) -> list[list[int]]:
    """Consecutive runs of SAE jobs (given their training rows) to train together within STACK_BYTES
    (at least one a run): a large model's SAEs then train a few at a time, a small model's all at once."""
    runs: list[list[int]] = [[]]
    used = 0
    for i, n in enumerate(rows):
        size = 4 * (n * d + 4 * 2 * d * expansion * d)
        if runs[-1] and used + size > STACK_BYTES:
            runs.append([])
            used = 0
        runs[-1].append(i)
        used += size
    return runs


def sae_rows(samples: Mapping[int, LayerSamples], splicer: Splicer, n_train: int,
             settings: EvalSettings, saved: Callable[[SparseAutoencoder, int, str], None] | None = None) -> list[dict]:
    """``saved``: called with each trained SAE, its layer and variant (to keep it on the store).

    The SAEs of a chunk of layers (each kind, masked and not) train together (``sae.train_saes``),
    as many at once as STACK_BYTES holds; ``train_seconds`` is each one's share of that training."""
    rows = []
    for chunk in _layer_chunks(samples):
        jobs = []  # (layer, masked, kind, train rows, held-out rows, the layer's held-out, mask options)
        for layer in chunk:
            train, held = _split(samples[layer], n_train)
            options = _mask_options(settings.mask, train)
            for masked in (False, True):
                if masked:
                    tr = train.select(~token_mask(train.token_id, train.pos, train.vectors.abs().amax(1), **options))
                    ho = held.select(~token_mask(held.token_id, held.pos, held.vectors.abs().amax(1), **options))
                else:
                    tr, ho = train, held
                if len(tr.vectors) < 2 or len(ho.vectors) == 0:
                    raise ValueError(f"layer {layer}: too few samples to train and test an SAE "
                                     f"({len(tr.vectors)} train, {len(ho.vectors)} held-out); capture more samples")
                jobs += [(layer, masked, kind, tr, ho, held, options) for kind in settings.sae_kinds]
        each = [SAESettings(**{**asdict(settings.sae), "kind": kind}) for _, _, kind, *_ in jobs]
        saes: list[SparseAutoencoder] = []
        started = time.perf_counter()
        for stack in _stacks([len(tr.vectors) for _, _, _, tr, *_ in jobs], samples[chunk[0]].vectors.shape[1],
                             settings.sae.expansion):
            saes += train_saes([jobs[i][3].vectors for i in stack], [each[i] for i in stack],
                               device=input_device(splicer.lm))
        seconds = (time.perf_counter() - started) / len(jobs)
        for (layer, masked, kind, tr, ho, held, options), sae, sae_settings in zip(jobs, saes, each, strict=True):
            with torch.no_grad():
                codes = sae.encode(ho.vectors)
                metrics = reconstruction_metrics(ho.vectors, sae.decode(codes), codes)
                held_codes = sae.encode(held.vectors) if masked else codes  # unmasked: ho is held
                groups = by_token_group(held.vectors, sae.decode(held_codes), options["massive_above"], held_codes)
                ce = splicer.score(layer, lambda x, sae=sae: sae(x.cpu()).to(x.device),
                                   options if masked else None,
                                   massive_tokens(held.vectors, options["massive_above"]))
            variant = f"{kind}-{'masked' if masked else 'unmasked'}"
            if saved is not None:
                saved(sae, layer, variant)
            rows.append({"layer": layer, "variant": variant, "sae_kind": kind, "masked": masked,
                         "n_latents": sae.n_latents, "n_train": len(tr.vectors), **metrics, **groups,
                         "dead_fraction_train": sae.dead_fraction, "dead_window_tokens":
                         min(sae_settings.dead_tokens, sae.tokens_seen), **ce, "train_seconds": seconds})
    return rows


def itda_rows(samples: Mapping[int, LayerSamples], splicer: Splicer, n_train: int,
              settings: EvalSettings) -> list[dict]:
    rows = []
    k = settings.itda.k
    for layer, all_samples in samples.items():
        train, held = _split(all_samples, n_train)
        labels = list(zip(train.seq.tolist(), train.pos.tolist(), strict=True))
        started = time.perf_counter()
        dictionary: ITDADictionary = itda(train.vectors, labels, settings.itda)
        seconds = time.perf_counter() - started
        atoms = dictionary.atoms

        def reconstruct(x: torch.Tensor, atoms: torch.Tensor = atoms) -> torch.Tensor:
            return (matching_pursuit(x.cpu(), atoms, k) @ atoms).float().to(x.device)

        coef = matching_pursuit(held.vectors, atoms, k)
        metrics = reconstruction_metrics(held.vectors, (coef @ atoms).float(), coef)
        metrics.pop("dead_fraction")
        bar = _mask_options(settings.mask, train)["massive_above"]
        metrics |= by_token_group(held.vectors, (coef @ atoms).float(), bar, coef)
        ce = splicer.score(layer, reconstruct, None, massive_tokens(held.vectors, bar))
        rows.append({"layer": layer, "variant": "itda", "size": len(dictionary), "tau": dictionary.tau,
                     "n_train": min(len(train.vectors), settings.itda.train_tokens or len(train.vectors)),
                     **metrics, **ce, "build_seconds": seconds,
                     "atom_seq": [s for s, _ in dictionary.labels], "atom_pos": [p for _, p in dictionary.labels]})
    return rows


def quant_rows(samples: Mapping[int, LayerSamples], lm: Any, held_tokens: np.ndarray, n_train: int,
               settings: EvalSettings) -> tuple[list[dict], dict]:
    """Per-layer activation quantization rows on the held-out tokens (the massive bar from the training
    tokens, as for the SAEs), and the checkpoint's W8A8 and outlier row."""
    rows = []
    for layer, all_samples in samples.items():
        train, held = _split(all_samples, n_train)
        massive = massive_tokens(held.vectors, _mask_options(settings.mask, train)["massive_above"])
        rows += [{"layer": layer, "variant": f"int{r['bits']}-{r['granularity']}", **r,
                  "n_tokens": len(held.vectors)}
                 for r in activation_quantization(held.vectors, settings.quant_bits, settings.quant_top_k,
                                                  {"massive": massive, "other": ~massive})]
    ce_fp = lm_loss(lm, held_tokens, settings.batch_size)
    model_row: dict[str, Any] = {"variant": "w8a8", "ce_fp": ce_fp, "ppl_fp": math.exp(ce_fp)}
    for activations in ("token", "tensor"):
        with w8a8(lm, activations):
            ce = lm_loss(lm, held_tokens, settings.batch_size)
        model_row[f"ce_w8a8_{activations}"] = ce
        model_row[f"ce_delta_{activations}"] = ce - ce_fp
        model_row[f"ppl_delta_{activations}"] = math.exp(ce) - math.exp(ce_fp)
    dims = outlier_dims(lm, held_tokens, batch_size=settings.batch_size)
    model_row.update({"n_outlier_dims": len(dims), "outlier_dims": dims})
    return rows, model_row


SAES = "saes"


def sae_key(model: str, step: int, layer: int, variant: str) -> str:
    """Where a trained SAE is kept, in the SAELens layout (sae_weights.safetensors, cfg.json)."""
    return f"{SAES}/model={model}/step={step}/layer={layer}/variant={variant}"


def keep_sae(store: Store, sae: SparseAutoencoder, model: str, step: int, layer: int, variant: str,
             inputs: dict[str, Any]) -> str:
    """Write one SAE to the store (weights, then cfg.json, each atomically); SAELens reads the folder."""
    key = sae_key(model, step, layer, variant)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_sae_lens(sae, tmp, hook_name=f"blocks.{layer}.hook_resid_post", model_name=model,
                               metadata={"step": step, "layer": layer, "variant": variant, "inputs": inputs,
                                         "code_version": module_version(*CODE_MODULES),
                                         "libraries": library_versions()})
        store.put_file(folder / "sae_weights.safetensors", f"{key}/sae_weights.safetensors")
        store.put_file(folder / "cfg.json", f"{key}/cfg.json")
    return key


def rows_table(rows: list[dict]) -> pa.Table:
    """Rows as a table whose list columns keep one type in every partition (an empty list alone would be null)."""
    table = pa.Table.from_pylist(rows)
    for name in ("outlier_dims", "atom_seq", "atom_pos"):
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name,
                                     table.column(name).cast(pa.list_(pa.int64())))
    return table


def eval_split(eval_tokens: PromptSet) -> int:
    """How many of the token set's sequences (the first) are for training; the rest are held out."""
    n_train = eval_tokens.source.get("n_train")
    if not isinstance(n_train, int) or not 0 < n_train < len(eval_tokens.tokens):
        raise ValueError(f"token set {eval_tokens.set_id} is not an evaluation token set (n_train={n_train!r} "
                         f"for {len(eval_tokens.tokens)} sequences); build it with prompts.build_eval_tokens")
    return n_train


def evaluate_to_store(store: Store, source: CheckpointSource, model: str, step: int, kind: str, prompt_set: str,
                      eval_tokens: PromptSet, settings: EvalSettings, device: str = "auto", dtype: str = "float32",
                      force: bool = False, checkpoint: CheckpointHandle | None = None) -> dict[str, Any]:
    """Evaluate (model, step) with one kind on ``eval_tokens`` unless the store holds it with the same
    inputs (``force``: anyway); say which happened. ``checkpoint``: a handle shared with other work on
    the same checkpoint, of this ``dtype``; without one, the checkpoint is loaded here and released after."""
    if checkpoint is not None and checkpoint.dtype != dtype:
        raise ValueError(f"the shared checkpoint is loaded in {checkpoint.dtype}, the evaluation asks for {dtype}")
    n_train = eval_split(eval_tokens)
    inputs = eval_inputs(model, step, kind, source, prompt_set, eval_tokens.set_id, settings, dtype)
    dataset, part = f"{EVALS}/{kind}", {"model": model, "step": step}
    if not force and (stored := stored_evaluation(store, source, model, step, kind, prompt_set, eval_tokens.set_id,
                                                  settings, dtype)):
        return stored
    handle = checkpoint or CheckpointHandle(source, model, step, device=device, dtype=dtype)
    torch.manual_seed(settings.seed)
    try:
        lm = handle.get().model
        n_layers = len(find_parts(lm).blocks)
        key = (eval_tokens.set_id, settings.batch_size)
        # one pass over the token set for every kind: the embedding output (-1) and every block's
        samples = handle.shared(("activations", *key), lambda: LayerActivations(
            lm, eval_tokens.tokens, list(range(-1, n_layers)), settings.batch_size))
        held_tokens = eval_tokens.tokens[n_train:]
        if kind == "quant":
            rows, model_row = quant_rows(samples, lm, held_tokens, n_train, settings)
            store.write_partition(QUANT_MODEL, part, rows_table([model_row]), inputs=inputs,
                                  code_modules=CODE_MODULES, overwrite=True)
        else:
            blocks = samples.subset(list(range(n_layers)))
            splicer = handle.shared(("splicer", *key), lambda: Splicer(lm, held_tokens, settings.batch_size))
            if kind == "sae":
                rows = sae_rows(blocks, splicer, n_train, settings, saved=lambda sae, layer, variant: keep_sae(
                    store, sae, model, step, layer, variant, inputs))
            else:
                rows = itda_rows(blocks, splicer, n_train, settings)
    finally:
        if checkpoint is None:
            handle.release()
    written = store.write_partition(dataset, part, rows_table(rows), inputs=inputs,
                                    code_modules=CODE_MODULES, overwrite=True)
    return {"model": model, "step": step, "kind": kind, "status": "evaluated", "hash": written.content_hash,
            "rows": written.rows}


def itda_similarity(store: Store, model: str) -> pa.Table:
    """Per (step, layer): Jaccard of the dictionary's labels with the final checkpoint's; per step, layer matching."""
    table = store.read_dataset(f"{EVALS}/itda", where={"model": model})
    if table.num_rows == 0:
        raise BadInputError(f"no ITDA evaluations for {model} on {store.url}")
    by_step: dict[int, dict[int, list[tuple[int, int]]]] = {}
    for row in table.select(["step", "layer", "atom_seq", "atom_pos"]).to_pylist():
        by_step.setdefault(row["step"], {})[row["layer"]] = list(zip(row["atom_seq"], row["atom_pos"], strict=True))
    final = max(by_step)
    rows = []
    for step, layers in sorted(by_step.items()):
        if step == final:
            continue  # 1.0 by construction: it would inflate every trend towards the final checkpoint
        matching = layer_matching_score(layers, by_step[final])
        for layer, labels in sorted(layers.items()):
            rows.append({"step": step, "layer": layer, "final_step": final,
                         "jaccard_final": jaccard(labels, by_step[final].get(layer, [])),
                         "layer_matching_final": matching})
    return pa.Table.from_pylist(rows)


def similarity_to_store(store: Store, model: str, itda_hashes: list[str], force: bool = False) -> dict[str, Any]:
    """``evals/itda_similarity/model=…`` from the model's ITDA evaluations (given by their hashes)."""
    inputs, part = {"model": model, "itda_hashes": itda_hashes}, {"model": model}
    if not force and (meta := store.current(ITDA_SIMILARITY, part, inputs, CODE_MODULES)):
        return {"model": model, "status": "skipped", "hash": meta.get("content_hash")}
    written = store.write_partition(ITDA_SIMILARITY, part, itda_similarity(store, model), inputs=inputs,
                                    code_modules=CODE_MODULES, overwrite=True)
    return {"model": model, "status": "computed", "hash": written.content_hash, "rows": written.rows}
