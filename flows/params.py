"""Typed flow parameters: the Prefect UI renders these as forms (choices, bounds, help text)."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from massive_activations.evals.eval_run import EvalSettings


def _home() -> Path:
    """Where ``data/`` goes by default: the checkout's root (where make run puts it), or, for an installed
    package, the directory the command runs in."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() else Path.cwd()


DEFAULT_STORE = os.environ.get("MA_STORE", str(_home() / "data"))


Kind = Literal["sae", "itda", "quant"]


class SourceParams(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: Literal["folder", "hub"] = Field(
        "folder", description="folder: {root}/{model}/step{N}/ (default: the offline suite on the store); "
                              "hub: training checkpoints on the Hugging Face Hub (Pythia names or org/name)")
    root: str | None = Field(None, description="Folder root URL (local path or s3://…); "
                                               "default: {store}/suites/{suite}")
    endpoint: str | None = Field(None, description="Hub endpoint (default: HF_ENDPOINT or huggingface.co)")
    cache_dir: str | None = Field(None, description="Local cache for downloads (default: "
                                                    "~/.cache/massive_activations, or MA_CACHE_DIR)")
    cache_gb: float = Field(200.0, gt=0, description="Hub cache cap in GiB: above it, the least recently used "
                                                     "revisions not in use are evicted; at least two checkpoints")
    download_retries: int = Field(5, ge=0, le=20, description="Hub: further attempts per file (the only retry layer "
                                                              "for downloads)")
    download_timeout_s: float = Field(30.0, gt=0, le=600, description="Hub: seconds one request may wait")
    family: str | None = Field(None, description="Hub: the model family (pythia, olmo, olmo2, amber, "
                                                 "fineweb-ablation), or your own as JSON: name, repo, revision "
                                                 "regex with (?P<step>…), examples; default: found from the repo")
    prefetch: int = Field(1, ge=0, le=16, description="Checkpoints downloaded ahead of the one being processed "
                                                       "(0: download each when its turn comes)")

    def downloads(self) -> dict:
        """The download settings alone (cache location and cap, retries), for a source named elsewhere."""
        return self.model_dump(include={"cache_dir", "cache_gb", "download_retries", "download_timeout_s"})

    def checkout(self) -> dict:
        """The values ``make_source`` takes (all but the scheduling setting ``prefetch``)."""
        return self.model_dump(exclude={"prefetch"})


class PromptParams(BaseModel):
    model_config = ConfigDict(frozen=True)

    n_sequences: int = Field(10, ge=1, le=10_000, description="Sequences (the paper uses 10)")
    length: int | None = Field(None, ge=2, le=32_768,
                               description="Tokens per sequence; default: the model's context, at most "
                                           "2048 (the paper's length for Pythia)")
    seed: int = Field(0, description="Seed of the document choice")
    text_file: str | None = Field(None, description="Your own texts: .txt (blank-line separated), .jsonl "
                                                    "or .parquet with a 'text' column")
    hub_dataset: str | None = Field(None, description="A Hub dataset repo, e.g. "
                                                      "togethercomputer/RedPajama-Data-1T-Sample")
    hub_file: str | None = Field(None, description="The file of that dataset to read texts from")
    first_token: Literal["auto", "eos", "bos", "text"] = Field(
        "auto", description="What position 0 holds: eos (documents joined with end-of-text, every sequence "
                            "starting with it), bos (the BOS token, then text), text; auto: eos for a folder "
                            "source (the offline suite's way), on the Hub bos when the model's tokenizer adds "
                            "one, text when not (Pythia)")


class CaptureParams(BaseModel):
    model_config = ConfigDict(frozen=True)

    batch_size: int = Field(10, ge=1, le=1024, description="Sequences per forward pass")
    massive_abs: float = Field(100.0, gt=0, description="|h| above this counts as massive")
    massive_rel: float = Field(1000.0, gt=0, description="…and above this multiple of the median")
    include_embedding: bool = Field(True, description="Also measure the embedding output (layer -1)")
    samples_per_layer: int = Field(256, ge=0, le=1_000_000,
                                   description="Activation vectors kept per layer (0: none)")
    sample_dtype: Literal["float32", "float16"] = "float32"
    sample_seed: int = 0
    panel: bool = Field(True, description="Also measure attention sinks, super-weight candidates and kurtosis "
                                          "in the same pass (panel/)")


class FitParams(BaseModel):
    model_config = ConfigDict(frozen=True)

    n_random_starts: int = Field(2, ge=0, le=100, description="Seeded random starts (after the grid starts)")
    n_grid_starts: int = Field(3, ge=1, le=50, description="Best grid points of each form to refine")
    seed: int = 0
    max_nfev: int = Field(60, ge=10, le=100_000, description="Evaluations per refinement")


class EvalParams(BaseModel):
    """Settings of the downstream evaluations (defaults sized for the offline suite's small models)."""

    model_config = ConfigDict(frozen=True)

    train_tokens: int | None = Field(None, ge=2, le=2**32,
                                     description="Evaluation tokens to train SAEs and ITDA on (whole sequences of the "
                                                 "prompt length); empty: 65536, or fewer when the texts hold fewer "
                                                 "(a small suite's held-out text), keeping 8:1 to the held-out ones")
    heldout_tokens: int | None = Field(None, ge=2, le=2**32,
                                       description="Evaluation tokens held out to measure on; empty: 8192, or fewer "
                                                   "as above")
    eval_text_file: str | None = Field(None, description="Evaluation texts (.txt, .jsonl, .parquet); empty: the "
                                                         "prompt texts after the documents the prompts took")
    eval_hub_dataset: str | None = Field(None, description="Or a Hub dataset repo for the evaluation texts")
    eval_hub_file: str | None = Field(None, description="The file of that dataset to read them from")
    seed: int = 0
    sae_kinds: tuple[Literal["topk", "relu"], ...] = Field(("topk", "relu"), description="SAE architectures")
    sae_expansion: int = Field(4, ge=1, le=256, description="Latents per model dimension")
    sae_k: int = Field(8, ge=1, le=4096, description="TopK: active latents per token")
    sae_l1: float = Field(1e-3, ge=0, description="ReLU SAE: L1 coefficient")
    sae_aux_k: int | None = Field(None, ge=0, le=4096, description="AuxK latents for dead latents; empty: 4k "
                                                                   "for TopK (at most half the latents); 0: off")
    sae_steps: int | None = Field(200, ge=1, le=1_000_000, description="Optimizer steps; empty: sae_epochs passes "
                                                                       "over the training tokens")
    sae_epochs: int = Field(10, ge=1, le=1000, description="Passes over the training tokens (when sae_steps is "
                                                            "empty)")
    sae_batch_size: int = Field(1024, ge=1, le=1_000_000, description="Tokens per minibatch")
    sae_dead_tokens: int = Field(10_000, ge=1, description="A latent silent over this many training tokens is dead")
    sae_lr: float = Field(3e-3, gt=0, le=1.0, description="Peak learning rate (5% warmup, cosine decay to 10%)")
    mask_bos_id: int | None = Field(0, description="Token id masked as BOS/EOS (Pythia: 0); empty: none")
    mask_position0: bool = Field(True, description="Mask position 0 in the masked runs")
    mask_massive_abs: float | None = Field(None, gt=0, description="A token is massive when its max|h| exceeds "
                                                                   "this (the capture's criterion: 100) and…; empty: "
                                                                   "no absolute bar (small models never reach 100)")
    mask_massive_rel: float | None = Field(10.0, gt=0, description="…this × the layer's median |h| (capture: 1000; "
                                                                   "the offline suite: 10); empty: none")
    itda_k: int = Field(8, ge=1, le=4096, description="Matching-pursuit steps")
    itda_tau: float | None = Field(None, gt=0, description="Add threshold; empty: calibrate to itda_target_size")
    itda_target_size: int = Field(64, ge=1, le=1_000_000, description="Dictionary size τ is calibrated to")
    itda_max_atoms: int | None = Field(None, ge=1, description="Crop the dictionary at this size")
    itda_train_tokens: int | None = Field(2**14, ge=1, description="ITDA builds from the first this many "
                                                                   "training tokens (empty: all)")
    quant_bits: tuple[int, ...] = Field((8, 4), description="Bit widths of the activation fake-quantization")
    quant_top_k: int = Field(16, ge=1, description="Top-|x| values whose share of the error is reported")

    def to_settings(self) -> dict:
        """The library's EvalSettings as plain values (what the tasks and their cache keys carry)."""
        settings = EvalSettings.from_dict({
            "train_tokens": self.train_tokens, "heldout_tokens": self.heldout_tokens, "seed": self.seed,
            "sae_kinds": self.sae_kinds,
            "sae": {"expansion": self.sae_expansion, "k": self.sae_k, "l1": self.sae_l1, "aux_k": self.sae_aux_k,
                    "steps": self.sae_steps, "epochs": self.sae_epochs, "batch_size": self.sae_batch_size,
                    "dead_tokens": self.sae_dead_tokens, "lr": self.sae_lr, "seed": self.seed},
            "mask": {"bos_id": self.mask_bos_id, "position0": self.mask_position0,
                     "massive_abs": self.mask_massive_abs, "massive_rel": self.mask_massive_rel},
            "itda": {"k": self.itda_k, "tau": self.itda_tau, "target_size": self.itda_target_size,
                     "max_atoms": self.itda_max_atoms, "train_tokens": self.itda_train_tokens},
            "quant_bits": self.quant_bits, "quant_top_k": self.quant_top_k})
        return asdict(settings)
