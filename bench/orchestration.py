"""Orchestration overhead: what Prefect adds on top of the science.

1. The same capture of K micro-suite checkpoints as plain library calls vs through the capture flow
   (tasks, retries, results on the store, the local API). Ratio = flow / plain. Then the same flow
   again, every checkpoint skipped by the store's provenance check: what a resumed run costs.
2. Per-task overhead at 1,540 tasks (10 models × 154 checkpoints, the real Pythia sweep) with a
   source that returns instantly: the project's task policy (retries, JSON result on the store)
   around a function that does nothing, vs calling that function directly.

Run: .venv/bin/python bench/orchestration.py [K]   (uses the Prefect API in PREFECT_API_URL, or an
ephemeral one; start `prefect server start` first to measure against a real server).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefect import flow, task  # noqa: E402
from prefect.futures import wait  # noqa: E402

from flows.capture import capture  # noqa: E402
from flows.params import CaptureParams, PromptParams, SourceParams  # noqa: E402
from massive_activations.capture.capture import CaptureSettings  # noqa: E402
from massive_activations.capture.capture_run import capture_to_store  # noqa: E402
from massive_activations.capture.prompts import load_prompt_set  # noqa: E402
from massive_activations.sources.catalog import PYTHIA_STEPS  # noqa: E402
from massive_activations.sources.checkpoints import FolderSource  # noqa: E402
from massive_activations.sources.offline_suite import build_suite, get_suite  # noqa: E402
from massive_activations.store import Store  # noqa: E402
from tasks.policy import on_store, task_options  # noqa: E402

MODELS = 10


def instant_checkpoint(store: str, model: str, step: int) -> dict:
    """A capture whose source and measurement take no time: only orchestration is left to measure."""
    return {"model": model, "step": step, "status": "captured"}


instant_task = task(name="instant-checkpoint", **task_options())(instant_checkpoint)


@flow(name="bench-instant")
def instant_flow(store: str, n_models: int) -> int:
    t = on_store(instant_task, Store(store))
    futures = [t.submit(store, f"model-{m}", s) for m in range(n_models) for s in PYTHIA_STEPS]
    wait(futures)
    return sum(f.state.is_completed() for f in futures)


def main(k: int = 10) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        suite = Store(Path(tmp) / "suite")
        build_suite(get_suite("micro"), suite)
        root = suite.path("suites/micro")
        source = FolderSource(root)
        model = source.models()[0]
        steps = source.steps(model)[:k]
        prompts, settings = PromptParams(n_sequences=4, length=32), CaptureParams(samples_per_layer=32)

        flow_store = Store(Path(tmp) / "flow")
        started = time.perf_counter()
        capture(models=[model], steps=",".join(map(str, steps)), store=flow_store.url, suite="micro",
                source=SourceParams(kind="folder", root=root), prompts=prompts, settings=settings, device="cpu")
        t_flow = time.perf_counter() - started
        started = time.perf_counter()
        again = capture(models=[model], steps=",".join(map(str, steps)), store=flow_store.url, suite="micro",
                        source=SourceParams(kind="folder", root=root), prompts=prompts, settings=settings,
                        device="cpu")
        t_again = time.perf_counter() - started

        plain = Store(Path(tmp) / "plain")
        set_id = flow_store.partitions("prompts")[0]["set"]
        tokens = load_prompt_set(flow_store, set_id).tokens
        started = time.perf_counter()
        for step in steps:
            capture_to_store(plain, source, model, step, set_id, tokens, CaptureSettings(**settings.model_dump()),
                             device="cpu")
        t_plain = time.perf_counter() - started
        print(f"capture of {len(steps)} checkpoints: plain {t_plain:.1f} s, flow {t_flow:.1f} s, "
              f"ratio {t_flow / t_plain:.2f} (flow includes prompt-set preparation and the flow run itself)")
        print(f"the same flow again, {again['skipped']} of {len(steps)} skipped by the store: {t_again:.1f} s, "
              f"ratio {t_again / t_flow:.2f} of the first run")

        n = MODELS * len(PYTHIA_STEPS)
        store = Store(Path(tmp) / "instant").url
        started = time.perf_counter()
        for m in range(MODELS):
            for s in PYTHIA_STEPS:
                instant_checkpoint(store, f"model-{m}", s)
        t_direct = time.perf_counter() - started
        started = time.perf_counter()
        done = instant_flow(store, MODELS)
        t_tasks = time.perf_counter() - started
        print(f"{n} instant tasks: direct {t_direct * 1e3:.1f} ms; flow {t_tasks:.1f} s = "
              f"{t_tasks / n * 1e3:.1f} ms per task ({done} completed)")
        per_checkpoint = t_plain / len(steps)
        print(f"per-task overhead / one micro checkpoint's capture: {t_tasks / n / per_checkpoint:.2f} "
              "(a real Pythia checkpoint takes seconds to minutes)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10)
