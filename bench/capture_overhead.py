"""Capture time / bare forward time on the same batches (target ≤ 1.10), and the outlier panel's cost
(capture with the panel / capture without it: target ≤ 1.3).

Same model, same prompts, measured side by side in one run, alternating so drift hits all four:
``capture()`` without the panel (hooks on every layer) and with it (sinks, super weights, kurtosis:
capture/panel.py), against two baselines under inference_mode: the bare transformer trunk
``model.gpt_neox(input_ids)`` (the same computation without the hooks, the strict baseline) and the
bare full ``model(input_ids)`` with its LM head (what a user would otherwise run).

    .venv/bin/python bench/capture_overhead.py [--device cpu] [--length 512] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

from massive_activations.capture.capture import CaptureSettings, capture
from massive_activations.sources.checkpoints import resolve_device

MODELS = {  # name: (layers, d_model, heads); 70m is Pythia-70m's shape with random weights
    "tiny (2×64)": (2, 64, 4),
    "pythia-70m-sized": (6, 512, 8),
}


def build(layers: int, d: int, heads: int, context: int) -> GPTNeoXForCausalLM:
    torch.manual_seed(0)
    cfg = GPTNeoXConfig(vocab_size=50304, hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=4 * d, max_position_embeddings=context, use_parallel_residual=True,
                        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25})
    return GPTNeoXForCausalLM(cfg).eval()


def measure(model: GPTNeoXForCausalLM, tokens: np.ndarray, device: torch.device, repeats: int) -> dict[str, float]:
    """Median seconds of each way of running the same batch, interleaved."""
    batch = torch.as_tensor(tokens, device=device)
    settings = CaptureSettings(batch_size=len(tokens), panel=False)
    with_panel = CaptureSettings(batch_size=len(tokens))

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def trunk() -> None:
        with torch.inference_mode():
            model.gpt_neox(input_ids=batch, use_cache=False)
        sync()

    def full() -> None:
        with torch.inference_mode():
            model(input_ids=batch, use_cache=False)
        sync()

    def hooked() -> None:
        capture(model, tokens, settings)
        sync()

    def panel() -> None:
        capture(model, tokens, with_panel)
        sync()

    runs = {"trunk": trunk, "full": full, "capture": hooked, "panel": panel}
    for fn in runs.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {key: [] for key in runs}
    for _ in range(repeats):
        for key, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    return {key: statistics.median(values) for key, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sequences", type=int, default=10)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = resolve_device(args.device)
    tokens = np.random.default_rng(0).integers(1, 50000, size=(args.sequences, args.length))
    tokens[:, 0] = 0
    print(f"device={device} threads={torch.get_num_threads()} prompts={args.sequences}×{args.length}")
    print(f"{'model':20s} {'trunk s':>8s} {'full s':>8s} {'capture s':>10s} {'+panel s':>9s} {'cap/trunk':>10s} "
          f"{'cap/full':>9s} {'panel/cap':>10s}")
    for name, shape in MODELS.items():
        t = measure(build(*shape, context=args.length).to(device), tokens, device, args.repeats)
        print(f"{name:20s} {t['trunk']:8.3f} {t['full']:8.3f} {t['capture']:10.3f} {t['panel']:9.3f} "
              f"{t['capture'] / t['trunk']:10.3f} {t['capture'] / t['full']:9.3f} {t['panel'] / t['capture']:10.3f}")


if __name__ == "__main__":
    main()
