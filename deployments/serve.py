"""Serve every deployment from this process: ``python deployments/serve.py`` (needs a Prefect API).

The same deployments as ``prefect.yaml`` — pipeline, capture, fit, evaluate and predict on demand,
monitor hourly — without a work pool or worker. Environment:
  MA_STORE                 store URL the flows default to (./data)
  MA_MONITOR_CHECKPOINTS   folder the monitor watches (local or s3://); unset: monitor has no schedule
  MA_MONITOR_CRON          its schedule (default "0 * * * *", hourly)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # flows/ and tasks/ live at the project root

from prefect import serve  # noqa: E402

from flows.capture import capture  # noqa: E402
from flows.evaluate import evaluate  # noqa: E402
from flows.fit import fit  # noqa: E402
from flows.monitor import monitor  # noqa: E402
from flows.pipeline import pipeline  # noqa: E402
from flows.predict import predict  # noqa: E402

TAGS = ["massive-activations"]


def deployments() -> list:
    watched = os.environ.get("MA_MONITOR_CHECKPOINTS")
    on_demand = [flow.to_deployment(name=flow.name, tags=TAGS, description=(flow.fn.__doc__ or "").split("\n")[0])
                 for flow in (pipeline, capture, fit, evaluate, predict)]
    scheduled = monitor.to_deployment(
        name="monitor", tags=TAGS, description="Capture new checkpoints of a run, refit, record the forecast",
        cron=os.environ.get("MA_MONITOR_CRON", "0 * * * *") if watched else None,
        parameters={"checkpoints": watched} if watched else None)
    return [*on_demand, scheduled]


if __name__ == "__main__":
    serve(*deployments())
