"""The deployments' settings, read from the environment in one place for prefect.yaml and serve.py.

  MA_MONITOR_CHECKPOINTS   the folder the monitor watches (local or s3://); unset: its schedule is inactive
  MA_MONITOR_CRON          the monitor's schedule (default "0 * * * *", hourly)
"""

from __future__ import annotations

import os
from collections.abc import Mapping

MONITOR_CRON = "0 * * * *"


def monitor_environment(env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """What prefect.yaml's monitor deployment reads as ``{{ $NAME }}`` and serve.py uses: the folder to
    watch, the cron, and whether the schedule is active (only with a folder to watch)."""
    watched = env.get("MA_MONITOR_CHECKPOINTS", "")
    return {"MA_MONITOR_CHECKPOINTS": watched, "MA_MONITOR_CRON": env.get("MA_MONITOR_CRON") or MONITOR_CRON,
            "MA_MONITOR_ACTIVE": "true" if watched else "false"}
