"""ITDA vs a TopK SAE on the same evaluation tokens: wall time and held-out explained variance.

Activations: every token of the model's evaluation token set (the evaluations' own: 2^16 training
and 2^13 held-out tokens, sharing no document with the prompts) at one layer of one checkpoint
(default: nx-l4-d96-h6, step 1440, layer 2, from ./data; the micro suite, at smaller budgets, is
built in a temporary folder when ./data holds no suite). Side by side: the SAE at the settings
`make run` uses and at the library's (10 epochs); ITDA at `make run`'s (64 atoms from 2^14 tokens)
and at the SAE's width from every training token.

Run: .venv/bin/python bench/itda_vs_sae.py [store] [model] [step] [layer]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from massive_activations.capture.activations import LayerActivations  # noqa: E402
from massive_activations.capture.prompts import build_eval_tokens, build_prompt_set  # noqa: E402
from massive_activations.evals.itda import ITDASettings, build_dictionary, itda, matching_pursuit  # noqa: E402
from massive_activations.evals.sae import SAESettings, reconstruction_metrics, train_sae  # noqa: E402
from massive_activations.sources.checkpoints import FolderSource, load_checkpoint  # noqa: E402
from massive_activations.sources.corpus import stdlib_docstrings  # noqa: E402
from massive_activations.sources.offline_suite import build_suite, get_suite, split_documents  # noqa: E402
from massive_activations.store import Store  # noqa: E402


def activations(root: Path, suite: str, model: str, step: int, layer: int, budgets: tuple[int, int]):
    spec = get_suite(suite)
    ckpt = load_checkpoint(FolderSource(str(root)), model, step, device="cpu")
    texts = split_documents(stdlib_docstrings(spec.corpus_chars), spec.heldout_fraction, spec.seed)[1]
    prompts = build_prompt_set(f"{model}-n10-len{spec.seq_len}", texts, ckpt.tokenizer, 10, spec.seq_len)
    tokens = build_eval_tokens(prompts, texts, ckpt.tokenizer, *budgets)
    n_train = tokens.source["n_train"]
    layer_samples = LayerActivations(ckpt.model, tokens.tokens, [layer])[layer]
    train = layer_samples.seq < n_train
    labels = list(zip(layer_samples.seq[train].tolist(), layer_samples.pos[train].tolist(), strict=True))
    return layer_samples.vectors[train], layer_samples.vectors[~train], labels


def held_out_ev(x: torch.Tensor, atoms: torch.Tensor, k: int) -> float:
    coef = matching_pursuit(x, atoms, k)
    return reconstruction_metrics(x, (coef @ atoms).float(), coef)["explained_variance"]


def main(argv: list[str]) -> None:
    store = Store(argv[0] if argv else "data")
    model, step, layer = (argv[1], int(argv[2]), int(argv[3])) if len(argv) > 3 else ("nx-l4-d96-h6", 1440, 2)
    suite, tmp, budgets, itda_tokens = "default", None, (2**16, 2**13), 2**14
    if not store.exists(f"suites/default/{model}/step{step}/config.json"):
        tmp = tempfile.TemporaryDirectory()
        store, suite, model, step, layer = Store(tmp.name), "micro", "nx-l3-d32-h4", 48, 1
        budgets, itda_tokens = (2**12, 2**10), 2**10
        build_suite(get_suite("micro"), store)
    xtr, xte, labels = activations(Path(store.path(f"suites/{suite}")), suite, model, step, layer, budgets)
    print(f"{model} step {step} layer {layer}: {len(xtr)} train / {len(xte)} held-out tokens, d = {xtr.shape[1]}")

    k, rows = 8, []
    for name, settings in (("TopK SAE, make run's 200 steps", SAESettings(kind="topk", k=k, steps=200)),
                           ("TopK SAE, the library's 10 epochs", SAESettings(kind="topk", k=k))):
        torch.manual_seed(0)
        started = time.perf_counter()
        sae = train_sae(xtr, settings)
        seconds = time.perf_counter() - started
        with torch.no_grad():
            codes = sae.encode(xte)
            ev = reconstruction_metrics(xte, sae.decode(codes), codes)["explained_variance"]
        rows.append((f"{name} ({sae.n_latents} latents, k = {k}, batch 1024)", seconds, ev))
    width = sae.n_latents
    for name, settings in ((f"ITDA, make run's ({itda_tokens} tokens, 64 atoms)",
                            ITDASettings(k=k, target_size=64, train_tokens=itda_tokens)),
                           (f"ITDA at the SAE's width (all {len(xtr)} tokens, {width} atoms)",
                            ITDASettings(k=k, target_size=width, train_tokens=None))):
        started = time.perf_counter()
        dictionary = itda(xtr, labels, settings)
        seconds = time.perf_counter() - started
        rows.append((f"{name}, τ calibrated: {len(dictionary)} atoms", seconds, held_out_ev(xte, dictionary.atoms, k)))
    started = time.perf_counter()
    build_dictionary(xtr, labels, k, dictionary.tau)
    rows.append(("  the same ITDA built once at that τ", time.perf_counter() - started, rows[-1][2]))
    for name, seconds, ev in rows:
        print(f"{name}: {seconds:.2f} s, held-out EV {ev:.3f}")
    sae_s, sae_ev = rows[1][1], rows[1][2]
    print(f"ratio ITDA at the SAE's width / SAE (10 epochs): wall time {rows[3][1] / sae_s:.2f} with calibration, "
          f"{rows[4][1] / sae_s:.2f} without; explained variance {rows[3][2] / sae_ev:.3f}")
    print(f"ratio make run's ITDA / make run's SAE: wall time {rows[2][1] / rows[0][1]:.2f}; "
          f"explained variance {rows[2][2] / rows[0][2]:.3f}")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main(sys.argv[1:])
