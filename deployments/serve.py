"""Serve every deployment from this process: ``python deployments/serve.py`` or ``massive-activations serve``
(needs a Prefect API).

The same deployments as ``prefect.yaml`` — pipeline, capture, fit, evaluate, predict and released on demand,
monitor on a schedule — without a work pool or worker. MA_STORE sets the store URL the flows default
to (./data); the monitor's settings (MA_MONITOR_CHECKPOINTS, MA_MONITOR_CRON) are read by
settings.py, as for prefect.yaml. Entry points are module paths (``flows.pipeline.pipeline``), so runs
start from a checkout or an installed package alike, whatever the working directory.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # flows/ and tasks/ live at the project root

from prefect import serve  # noqa: E402
from prefect.deployments.runner import EntrypointType  # noqa: E402
from prefect.schedules import Cron  # noqa: E402

from deployments.settings import monitor_environment  # noqa: E402
from flows.capture import capture  # noqa: E402
from flows.evaluate import evaluate  # noqa: E402
from flows.fit import fit  # noqa: E402
from flows.monitor import monitor  # noqa: E402
from flows.pipeline import pipeline  # noqa: E402
from flows.predict import predict  # noqa: E402
from flows.released import released  # noqa: E402

TAGS = ["massive-activations"]


def deployments(env: Mapping[str, str] = os.environ) -> list:
    settings = monitor_environment(env)
    on_demand = [flow.to_deployment(name=flow.name, tags=TAGS, description=(flow.fn.__doc__ or "").split("\n")[0],
                                    entrypoint_type=EntrypointType.MODULE_PATH)
                 for flow in (pipeline, capture, fit, evaluate, predict, released)]
    scheduled = monitor.to_deployment(
        name="monitor", tags=TAGS, entrypoint_type=EntrypointType.MODULE_PATH,
        description="Capture new checkpoints of a training run, refit, record the forecast",
        schedule=Cron(settings["MA_MONITOR_CRON"], active=settings["MA_MONITOR_ACTIVE"] == "true"),
        parameters={"checkpoints": settings["MA_MONITOR_CHECKPOINTS"]})
    return [*on_demand, scheduled]


def main(argv: list[str] | None = None) -> int:
    """Serve until stopped (Ctrl-C); ``argv`` takes no options."""
    if argv:
        print(f"error: serve takes no options (got {' '.join(argv)})", file=sys.stderr)
        return 2
    serve(*deployments())
    return 0


if __name__ == "__main__":
    sys.exit(main())
