"""Downloads overlapping compute: the checkpoint pass with prefetch vs the sequential order.

The loopback Hub (tests/hub_server.py) serves N micro-suite checkpoints under Pythia revision names,
throttled to one link whose bandwidth is set so that downloading all of them takes about as long as
computing on all of them (capture plus SAE, ITDA and quantization evaluations of every checkpoint,
through the capture flow, one checkpoint at a time). Side by side in one run:

- downloads: every checkpoint fetched one after another into an empty cache (sum of downloads);
- compute: the flow on a warm cache (nothing to download: sum of compute, with Prefect's overhead);
- sequential: empty cache, ``prefetch=0``: each checkpoint downloaded when its turn comes (the old order);
- overlapped: empty cache, ``prefetch=1``: the next checkpoint downloads while this one is computed.

The bound is max(downloads, compute); the goal is overlapped / bound <= 1.15. Compute and the
overlapped order are measured REPEATS times, interleaved (compute, overlapped, compute, ...), and the
ratio is taken of their medians: a single pair of runs differs by a few per cent from one pair to the
next on this machine, as much as the margin between the goal and the floor of 1 + 1/N (the first
download overlaps nothing). Every repeat's own ratio is printed too.

Run: .venv/bin/python bench/overlap.py [N [PREFETCH [REPEATS]]]
(HF_HUB_OFFLINE is turned off for the loopback Hub only)
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import huggingface_hub.constants as hf_constants  # noqa: E402
from prefect.task_runners import ThreadPoolTaskRunner  # noqa: E402

from flows.capture import capture  # noqa: E402
from flows.params import CaptureParams, EvalParams, PromptParams, SourceParams  # noqa: E402
from massive_activations.sources.catalog import PYTHIA_STEPS  # noqa: E402
from massive_activations.sources.checkpoints import HubSource  # noqa: E402
from massive_activations.sources.offline_suite import build_suite, get_suite  # noqa: E402
from massive_activations.store import Store  # noqa: E402
from tests.hub_server import FakeHub  # noqa: E402

MODEL = "nx-l3-d32-h4"


def run_flow(hub: Hub, steps: list[int], cache: Path, store: Path, prompts: PromptParams, prefetch: int) -> float:
    source = SourceParams(kind="hub", endpoint=hub.url, cache_dir=str(cache), prefetch=prefetch)
    started = time.perf_counter()
    summary = capture.with_options(task_runner=ThreadPoolTaskRunner(max_workers=1))(
        models=["pythia-14m"], steps=",".join(map(str, steps)), store=str(store), source=source, prompts=prompts,
        settings=CaptureParams(samples_per_layer=128), device="cpu", evaluations=("sae", "itda", "quant"),
        eval_steps="all", eval_settings=EvalParams(sae_steps=100, train_tokens=4096, heldout_tokens=1024))
    assert summary["captured"] == len(steps) and not summary["failed"], summary
    return time.perf_counter() - started


def serve(revisions: dict[str, str], bandwidth: float | None, conn) -> None:
    """The loopback Hub in a process of its own, as a real server would be (not sharing our GIL)."""
    hub = FakeHub()
    for revision, folder in revisions.items():
        hub.add_folder("EleutherAI/pythia-14m", revision, Path(folder))
    hub.bandwidth = bandwidth
    conn.send(hub.start())
    conn.recv()
    hub.stop()


class Hub:
    def __init__(self, revisions: dict[str, str], bandwidth: float | None = None):
        here, there = multiprocessing.Pipe()
        self.process = multiprocessing.get_context("spawn").Process(target=serve, args=(revisions, bandwidth, there))
        self.process.start()
        self.conn, self.url = here, here.recv()

    def stop(self) -> None:
        self.conn.send("stop")
        self.process.join()


def main(n: int = 10, prefetch: int = 1, repeats: int = 3) -> None:
    hf_constants.HF_HUB_OFFLINE = False
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        suite = Store(work / "suite")
        build_suite(get_suite("micro"), suite)
        folder = Path(suite.path("suites/micro")) / MODEL
        local = sorted(int(p.name[4:]) for p in folder.glob("step*"))
        steps = list(PYTHIA_STEPS[:n])
        # the suite's checkpoints, in order, under Pythia's first revisions
        revisions = {f"step{step}": str(folder / f"step{local[i % len(local)]}") for i, step in enumerate(steps)}
        total = sum(f.stat().st_size for d in revisions.values() for f in Path(d).iterdir() if f.is_file())
        texts = work / "texts.txt"
        texts.write_text("\n\n".join(f"document {i}: " + "the quick brown fox jumps over the lazy dog " * 20
                                     for i in range(40)))
        prompts = PromptParams(n_sequences=16, length=32, text_file=str(texts))

        hub = Hub(revisions)
        run_flow(hub, steps, work / "warm", work / "store-warmup", prompts, 0)  # imports, compiled paths, a warm cache
        computes = [run_flow(hub, steps, work / "warm", work / "store-compute0", prompts, 0)]
        hub.stop()
        bandwidth = total / computes[0]  # all downloads take about as long as all compute
        hub = Hub(revisions, bandwidth)  # a warm cache downloads no body: compute runs are not throttled
        started = time.perf_counter()
        source = HubSource(cache_dir=work / "timed", endpoint=hub.url)
        for step in steps:
            source.fetch("pythia-14m", step)
        downloads = time.perf_counter() - started
        sequential = run_flow(hub, steps, work / "cache-seq", work / "store-seq", prompts, 0)
        overlaps = []
        for r in range(repeats):
            if r:
                computes.append(run_flow(hub, steps, work / "warm", work / f"store-compute{r}", prompts, 0))
            overlaps.append(run_flow(hub, steps, work / f"cache-pre{r}", work / f"store-pre{r}", prompts, prefetch))
        hub.stop()

    compute, overlapped = statistics.median(computes), statistics.median(overlaps)
    bound = max(downloads, compute)
    print(f"{n} checkpoints of {total / n / 1e6:.2f} MB at {bandwidth / 1e6:.3f} MB/s")
    print("| order | seconds | / bound |")
    print("|---|---|---|")
    for name, seconds in (("sum of downloads", downloads), ("sum of compute (warm cache, median)", compute),
                          ("sequential (prefetch 0)", sequential),
                          (f"overlapped (prefetch {prefetch}, median)", overlapped)):
        print(f"| {name} | {seconds:.1f} | {seconds / bound:.2f} |")
    print(f"repeats: compute {', '.join(f'{c:.1f}' for c in computes)} s; overlapped "
          f"{', '.join(f'{o:.1f}' for o in overlaps)} s; each repeat's overlapped / max(downloads, its compute): "
          f"{', '.join(f'{o / max(downloads, c):.3f}' for c, o in zip(computes, overlaps, strict=True))}")
    print(f"overlapped / bound = {overlapped / bound:.3f} (medians of {repeats}; goal <= 1.15); "
          f"sequential / overlapped = {sequential / overlapped:.2f}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:4]))
