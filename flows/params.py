"""Typed flow parameters: the Prefect UI renders these as forms (choices, bounds, help text)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STORE = os.environ.get("MA_STORE", str(PROJECT_ROOT / "data"))


class SourceParams(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: Literal["folder", "hub"] = Field(
        "folder", description="folder: <root>/<model>/step<N>/ (default: the offline suite on the store); "
                              "hub: EleutherAI/pythia-* on the Hugging Face Hub")
    root: str | None = Field(None, description="Folder root URL (local path or s3://…); "
                                               "default: <store>/suites/<suite>")
    endpoint: str | None = Field(None, description="Hub endpoint (default: HF_ENDPOINT or huggingface.co)")
    cache_dir: str | None = Field(None, description="Local cache for downloads")


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


class FitParams(BaseModel):
    model_config = ConfigDict(frozen=True)

    n_random_starts: int = Field(2, ge=0, le=100, description="Seeded random starts (after the grid starts)")
    n_grid_starts: int = Field(3, ge=1, le=50, description="Best grid points of each form to refine")
    seed: int = 0
    max_nfev: int = Field(60, ge=10, le=100_000, description="Evaluations per refinement")
