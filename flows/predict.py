"""Predict flow and CLI: emergence parameters and curves for an architecture, before training it."""

from __future__ import annotations

import argparse
import math

from prefect import flow
from prefect.artifacts import create_table_artifact
from pydantic import BaseModel, ConfigDict, Field

from flows.params import DEFAULT_STORE
from massive_activations.architecture import resolve_architecture
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
    """``architecture``: the form's fields, or a Pythia name, or a path to a config.json.

    ``total_steps`` defaults to the training horizon of the fits the regressors learned from.
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Predict massive-activation emergence for an architecture.")
    parser.add_argument("architecture", nargs="?", default=None,
                        help="a Pythia name (pythia-410m) or a path to a config.json; or use the flags below")
    parser.add_argument("--layers", type=int)
    parser.add_argument("--d-model", type=int)
    parser.add_argument("--heads", type=int)
    parser.add_argument("--d-ff", type=int)
    parser.add_argument("--store", default=DEFAULT_STORE)
    parser.add_argument("--series", default="ratio")
    parser.add_argument("--total-steps", type=int, default=None,
                        help="horizon of the predicted curve (default: that of the training fits)")
    args = parser.parse_args(argv)
    if args.architecture:
        spec: ArchitectureParams | str = args.architecture
    else:
        if None in (args.layers, args.d_model, args.heads):
            parser.error("give an architecture name/config, or all of --layers, --d-model and --heads")
        spec = ArchitectureParams(n_layers=args.layers, d_model=args.d_model, n_heads=args.heads, d_ff=args.d_ff)
    result = predict(spec, store=args.store, series=args.series, total_steps=args.total_steps)
    print(f"{'layer':>5s} {'A':>10s} {'lambda':>8s} {'gamma':>10s} {'t0':>7s} {'K':>8s} | {'y_first':>8s} "
          f"{'y_last':>8s} {'rise':>8s} {'t_half':>8s} {'t_peak':>8s}  class")
    for r in result["rows"]:
        print(f"{r['layer']:5d} {r['A']:10.3g} {r['lam']:8.3g} {r['gamma']:10.3g} {r['t0']:7.3g} {r['K']:8.3g} | "
              + " ".join(f"{r[k]:8.4g}" if math.isfinite(r[k]) else f"{'—':>8s}"
                         for k in ("y_first", "y_last", "rise", "t_half", "t_peak"))
              + f"  {r['peak_class']}")
    print(f"figure: {Store(args.store).url_for(result['figure'])}")


if __name__ == "__main__":
    main()
