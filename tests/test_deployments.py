"""prefect.yaml (through deploy.py) and serve.py build the same deployments and schedules from the same settings."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from prefect.client.schemas.actions import DeploymentScheduleCreate
from prefect.client.schemas.schedules import CronSchedule
from prefect.utilities.templating import apply_values

from deployments.serve import deployments
from deployments.settings import monitor_environment

ROOT = Path(__file__).resolve().parents[1]


def from_yaml(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, dict]:
    """The deployments as `prefect deploy` resolves them ({{ $NAME }} from the environment deploy.py sets)."""
    for name, value in monitor_environment(env).items():
        monkeypatch.setenv(name, value)
    config = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    resolved = apply_values(config, {}, remove_notset=False)
    return {d["name"]: d for d in resolved["deployments"]}


@pytest.mark.parametrize("env", [{}, {"MA_MONITOR_CHECKPOINTS": "s3://runs/my-run"},
                                 {"MA_MONITOR_CHECKPOINTS": "/runs/a", "MA_MONITOR_CRON": "*/15 * * * *"}])
def test_prefect_yaml_and_serve_schedule_the_monitor_alike(env, monkeypatch):
    yaml_deployments = from_yaml(env, monkeypatch)
    served = {d.name: d for d in deployments(env)}
    assert set(yaml_deployments) == set(served) == {"pipeline", "capture", "fit", "evaluate", "predict",
                                                                   "released", "monitor"}
    for name in set(served) - {"monitor"}:  # on demand in both
        assert not yaml_deployments[name].get("schedules") and not served[name].schedules
    (yaml_schedule,) = yaml_deployments["monitor"]["schedules"]
    (served_schedule,) = served["monitor"].schedules
    watching = bool(env.get("MA_MONITOR_CHECKPOINTS"))
    cron = env.get("MA_MONITOR_CRON", "0 * * * *")
    assert (yaml_schedule["cron"], yaml_schedule["active"]) == (cron, "true" if watching else "false")
    # what the API makes of the YAML's string, as `prefect deploy` sends it
    created = DeploymentScheduleCreate(schedule=CronSchedule(cron=yaml_schedule["cron"]),
                                       active=yaml_schedule["active"])
    assert created.active is watching
    assert (served_schedule.schedule.cron, served_schedule.active) == (cron, watching)  # no folder: nothing runs
    folder = env.get("MA_MONITOR_CHECKPOINTS", "")
    assert yaml_deployments["monitor"]["parameters"] == served["monitor"].parameters == {"checkpoints": folder}
