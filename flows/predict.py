"""Predict flow and CLI: emergence parameters and curves for an architecture, before training it."""

from __future__ import annotations

import math
import sys

from prefect import flow
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel, ConfigDict, Field

from flows import cli
from flows.params import DEFAULT_STORE
from massive_activations.regress.architecture import resolve_architecture
from massive_activations.store import Store
from tasks.regress import predict_architecture


class ArchitectureParams(BaseModel):
    model_config = ConfigDict(frozen=True)

    n_layers: int = Field(6, ge=1, le=512, description="Decoder layers L")
    d_model: int = Field(512, ge=8, le=65_536, description="Hidden size d (divisible by n_heads)")
    n_heads: int = Field(8, ge=1, le=1024, description="Attention heads H")
    d_ff: int | None = Field(None, ge=8, description="MLP width (default 4·d)")
    name: str | None = Field(None, description="Label for the outputs")


@flow(name="predict", log_prints=True)
def predict(architecture: ArchitectureParams | str = ArchitectureParams(), store: str = DEFAULT_STORE,
            series: str = "ratio", total_steps: int | None = None) -> dict:
    """Predict the emergence parameters and curve of every layer of an architecture, before training it.

    Args:
        architecture: The form's fields, or a Pythia name (pythia-410m), or a path to a config.json.
        store: Store URL holding the trained regressors: a path, file://… or s3://bucket/prefix.
        series: The fitted series the regressors learned (ratio).
        total_steps: Horizon of the predicted curve (default: that of the fits the regressors learned from).
    """
    if isinstance(architecture, ArchitectureParams):
        spec = {k: v for k, v in architecture.model_dump().items() if v is not None}
    else:
        spec = architecture
    arch = resolve_architecture(spec)  # a bad architecture fails here, before anything runs
    result = predict_architecture(Store(store).url, spec, total_steps, series)
    create_table_artifact([{k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()}
                           for r in result["rows"]], key="prediction",
                          description=f"Predicted emergence parameters for {arch.name}")
    return result


def summary(result: dict, params: dict) -> str:
    columns = ["layer", "A", "lam", "gamma", "t0", "K", "y_first", "y_last", "rise", "t_half", "t_peak", "peak_class"]
    rows = [{c: (None if isinstance(r[c], float) and not math.isfinite(r[c]) else r[c]) for c in columns}
            for r in result["rows"]]
    return cli.table(rows, columns) + f"\nfigure: {Store(params['store']).url_for(result['figure'])}"


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """The command line: ``python -m flows.predict`` or ``massive-activations predict``."""
    return cli.run(predict, summary, argv, prog=prog)


if __name__ == "__main__":
    sys.exit(main())
