"""ITDA vs a TopK SAE on the same activations: wall time and held-out explained variance.

Activations: every token of the offline suite's prompt set at one layer of one checkpoint
(default: nx-l4-d96-h6, step 1440, layer 2, from ./data; the micro suite is built in a temporary
folder when ./data holds no suite). 80% of the sequences train, 20% are held out.

Run: .venv/bin/python bench/itda_vs_sae.py [store] [model] [step] [layer]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from massive_activations.capture import CaptureSettings, capture  # noqa: E402
from massive_activations.checkpoints import FolderSource, load_checkpoint  # noqa: E402
from massive_activations.corpus import stdlib_docstrings  # noqa: E402
from massive_activations.eval_run import split_sequences  # noqa: E402
from massive_activations.itda import ITDASettings, build_dictionary, itda, matching_pursuit  # noqa: E402
from massive_activations.offline_suite import build_suite, get_suite, split_documents  # noqa: E402
from massive_activations.prompts import build_prompt_set  # noqa: E402
from massive_activations.sae import SAESettings, reconstruction_metrics, train_sae  # noqa: E402
from massive_activations.store import Store  # noqa: E402


def activations(root: Path, suite: str, model: str, step: int, layer: int, n_sequences: int = 40):
    spec = get_suite(suite)
    ckpt = load_checkpoint(FolderSource(str(root)), model, step, device="cpu")
    texts = split_documents(stdlib_docstrings(spec.corpus_chars), spec.heldout_fraction, spec.seed)[1]
    tokens = build_prompt_set("bench", texts, ckpt.tokenizer, n_sequences, spec.seq_len).tokens
    result = capture(ckpt.model, tokens, CaptureSettings(samples_per_layer=tokens.size, include_embedding=False))
    table = result.samples[layer].sort_by([("seq", "ascending"), ("pos", "ascending")])
    col = table.column("vector").combine_chunks()
    x = torch.from_numpy(col.flatten().to_numpy(zero_copy_only=False).reshape(table.num_rows, -1).copy())
    return x, np.asarray(table.column("seq")), np.asarray(table.column("pos")), len(tokens)


def main(argv: list[str]) -> None:
    store = Store(argv[0] if argv else "data")
    model, step, layer = (argv[1], int(argv[2]), int(argv[3])) if len(argv) > 3 else ("nx-l4-d96-h6", 1440, 2)
    suite, tmp = "default", None
    if not store.exists(f"suites/default/{model}/step{step}/config.json"):
        tmp = tempfile.TemporaryDirectory()
        store, suite, model, step, layer = Store(tmp.name), "micro", "nx-l3-d32-h4", 48, 1
        build_suite(get_suite("micro"), store)
    x, seq, pos, n = activations(Path(store.path(f"suites/{suite}")), suite, model, step, layer)
    train_seqs, _ = split_sequences(n, 0.2, 0)
    is_train = np.isin(seq, train_seqs)
    xtr, xte = x[torch.from_numpy(is_train)], x[torch.from_numpy(~is_train)]
    labels = list(zip(seq[is_train].tolist(), pos[is_train].tolist(), strict=True))
    print(f"{model} step {step} layer {layer}: {len(xtr)} train / {len(xte)} held-out tokens, d = {x.shape[1]}")

    k = 8
    started = time.perf_counter()
    sae = train_sae(xtr, SAESettings(kind="topk", expansion=4, k=k, steps=2000, batch_size=256, lr=3e-3))
    t_sae = time.perf_counter() - started
    with torch.no_grad():
        codes = sae.encode(xte)
        ev_sae = reconstruction_metrics(xte, sae.decode(codes), codes)["explained_variance"]

    started = time.perf_counter()
    dictionary = itda(xtr, labels, ITDASettings(k=k, target_size=sae.n_latents))
    t_itda = time.perf_counter() - started
    started = time.perf_counter()
    build_dictionary(xtr, labels, k, dictionary.tau)
    t_once = time.perf_counter() - started
    coef = matching_pursuit(xte, dictionary.atoms, k)
    ev_itda = reconstruction_metrics(xte, (coef @ dictionary.atoms).float(), coef)["explained_variance"]
    print(f"TopK SAE ({sae.n_latents} latents, k={k}, 2000 steps): {t_sae:.2f} s, held-out EV {ev_sae:.3f}")
    print(f"ITDA ({len(dictionary)} atoms, k={k}, τ calibrated): {t_itda:.2f} s, held-out EV {ev_itda:.3f}")
    print(f"ITDA built once at that τ (what a user pays once τ is known): {t_once:.2f} s")
    print(f"ratio ITDA/SAE: wall time {t_itda / t_sae:.2f} with calibration, {t_once / t_sae:.2f} without; "
          f"explained variance {ev_itda / ev_sae:.3f}")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main(sys.argv[1:])
