"""Seconds per (checkpoint, layer) of the default evaluations, the old path against today's, side by side.

Both evaluate the same checkpoints of one model with every kind (SAE, ITDA, quantization) at the
flows' default settings (``EvalParams()``) on the same evaluation token set, each kind as
``process_checkpoint`` runs it: one loaded checkpoint shared by the kinds. The old path is the
pinned copy in bench/baseline/ (commit 03d89e5). Per checkpoint the two alternate (old first on
even ones), each into its own temporary store; then every stored metric of the two is compared.

Reported per kind and in all: seconds per (checkpoint, layer), new / old, the CPU time over wall
time (the cores kept busy) and voluntary context switches per second (threads waiting on each other).

Default: nx-l6-d64-h4 at steps 480 and 1440 of the default suite in ./data (`make run` builds it;
or `.venv/bin/python -m flows.offline_suite --suite default --store data`); without it the micro
suite is built in a temporary folder.

Run: .venv/bin/python bench/eval_throughput.py [--store data] [--model M] [--steps 480,1440] [--record]
(--record appends the table to bench/RESULTS.md)
"""

from __future__ import annotations

import argparse
import datetime
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import baseline.eval_run as old  # noqa: E402

from flows.params import EvalParams  # noqa: E402
from massive_activations.capture.prompts import build_eval_tokens, build_prompt_set  # noqa: E402
from massive_activations.evals import eval_run as new  # noqa: E402
from massive_activations.provenance import thread_settings  # noqa: E402
from massive_activations.sources.checkpoints import CheckpointHandle, FolderSource  # noqa: E402
from massive_activations.sources.corpus import stdlib_docstrings  # noqa: E402
from massive_activations.sources.model_parts import find_parts  # noqa: E402
from massive_activations.sources.offline_suite import build_suite, get_suite, split_documents  # noqa: E402
from massive_activations.store import Store  # noqa: E402

KINDS = ("sae", "itda", "quant")
COMPARED = {"sae": ("explained_variance", "l0", "ce_loss_score", "cosine"),
            "itda": ("explained_variance", "size", "tau", "ce_loss_score"),
            "quant": ("sqnr_db", "topk_error_share")}


def usage() -> tuple[float, float, int]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), r.ru_utime + r.ru_stime, r.ru_nvcsw


def evaluate(module, store: Store, source: FolderSource, model: str, step: int, tokens, settings) -> dict:
    """Wall, CPU and context switches per kind, the kinds in the flows' order on one loaded checkpoint."""
    handle = CheckpointHandle(source, model, step, device="cpu")
    out = {}
    try:
        handle.get()
        for kind in KINDS:
            wall0, cpu0, csw0 = usage()
            module.evaluate_to_store(store, source, model, step, kind, "bench", tokens,
                                     module.EvalSettings.from_dict(settings), force=True, checkpoint=handle)
            wall1, cpu1, csw1 = usage()
            out[kind] = (wall1 - wall0, cpu1 - cpu0, csw1 - csw0)
    finally:
        handle.release()
    return out


def differences(old_store: Store, new_store: Store) -> dict[str, float]:
    """Largest |new − old| of each compared metric over all rows, matched by (model, step, layer, variant)."""
    worst: dict[str, float] = {}
    for kind, columns in COMPARED.items():
        rows = {}
        for name, store in (("old", old_store), ("new", new_store)):
            for row in store.read_dataset(f"evals/{kind}").to_pylist():
                rows.setdefault((row["step"], row["layer"], row["variant"]), {})[name] = row
        for pair in rows.values():
            for column in columns:
                a, b = pair["old"][column], pair["new"][column]
                if isinstance(a, float) and math.isnan(a) and math.isnan(b):
                    continue
                worst[f"{kind}.{column}"] = max(worst.get(f"{kind}.{column}", 0.0), abs(b - a))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="data")
    parser.add_argument("--model", default="nx-l6-d64-h4")
    parser.add_argument("--steps", default="480,1440")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    store, suite, model, steps = Store(args.store), "default", args.model, [int(s) for s in args.steps.split(",")]
    tmp = tempfile.TemporaryDirectory()
    if not store.exists(f"suites/default/{model}/step{steps[-1]}/config.json"):
        store, suite, model, steps = Store(tmp.name), "micro", "nx-l3-d32-h4", [24, 48]
        build_suite(get_suite("micro"), store)
        print(f"no default suite in {args.store}: the micro suite's {model} instead", flush=True)
    spec = get_suite(suite)
    source = FolderSource(Store(f"{store.url}/suites/{suite}"))
    probe = CheckpointHandle(source, model, steps[-1], device="cpu")
    loaded = probe.get()
    n_layers = len(find_parts(loaded.model).blocks)
    texts = split_documents(stdlib_docstrings(spec.corpus_chars), spec.heldout_fraction, spec.seed)[1]
    prompts = build_prompt_set(f"{model}-n10-len{spec.seq_len}", texts, loaded.tokenizer, 10, spec.seq_len)
    tokens = build_eval_tokens(prompts, texts, loaded.tokenizer, None, None)
    probe.release()
    settings = EvalParams().to_settings()
    stores = {"old": Store(f"{tmp.name}/old"), "new": Store(f"{tmp.name}/new")}
    totals = {way: {kind: [0.0, 0.0, 0] for kind in KINDS} for way in stores}
    for i, step in enumerate(steps):
        for way in (("old", "new") if i % 2 == 0 else ("new", "old")):
            took = evaluate(old if way == "old" else new, stores[way], source, model, step, tokens, settings)
            for kind, values in took.items():
                totals[way][kind] = [a + b for a, b in zip(totals[way][kind], values, strict=True)]
            print(f"{way} step {step}: " + ", ".join(f"{k} {v[0]:.1f} s" for k, v in took.items()), flush=True)
    units = len(steps) * n_layers
    lines = [f"{model}, steps {', '.join(map(str, steps))} ({n_layers} layers; {units} (checkpoint, layer) units; "
             f"{tokens.source['budget']}); threads {thread_settings()}", "",
             "| evaluation | old s/unit | new s/unit | new / old | old CPU/wall | new CPU/wall | "
             "old csw/s | new csw/s |", "|---|---|---|---|---|---|---|---|"]
    for kind in (*KINDS, "all"):
        per = {}
        for way in stores:
            picked = [totals[way][k] for k in (KINDS if kind == "all" else (kind,))]
            wall, cpu, csw = (sum(v[j] for v in picked) for j in range(3))
            per[way] = (wall / units, cpu / wall, csw / wall)
        lines.append(f"| {kind} | {per['old'][0]:.3f} | {per['new'][0]:.3f} | {per['new'][0] / per['old'][0]:.2f} | "
                     f"{per['old'][1]:.2f} | {per['new'][1]:.2f} | {per['old'][2]:.0f} | {per['new'][2]:.0f} |")
    worst = differences(stores["old"], stores["new"])
    lines += ["", "Largest |new − old| over all rows: " + ", ".join(f"{k} {v:.2g}" for k, v in sorted(worst.items()))]
    text = "\n".join(lines)
    print(text)
    if args.record:
        results = Path(__file__).resolve().parent / "RESULTS.md"
        results.write_text(results.read_text().rstrip() + f"\n\n## Evaluation throughput — {datetime.date.today()}\n\n"
                           f"`.venv/bin/python bench/eval_throughput.py`: {text}\n")


if __name__ == "__main__":
    main()
