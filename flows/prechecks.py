"""Checks that need only the values: the command line runs them before any server or flow run starts.

They read the parameters every flow names the same way (``store``, ``suite``, ``source``, ``models``,
``steps``, ``eval_steps``, ``device``, ``dtype``), so one function serves every flow. The flows check
the same things again when they run (a deployment or a UI run reaches them without this command
line); what needs the store's contents or the network (a missing bucket, a suite not built yet) is
the flow's alone.
"""

from __future__ import annotations

from typing import Any

from massive_activations.errors import BadInputError
from massive_activations.sources.catalog import PYTHIA_STEPS, select_steps
from massive_activations.sources.checkpoints import resolve_device, resolve_dtype
from massive_activations.sources.families import model_key, repo_of, resolve_family
from massive_activations.sources.offline_suite import get_suite
from massive_activations.store import Store


def _schedule(params: dict[str, Any]) -> list[int] | None:
    """The checkpoint schedule the values alone determine (offline suite, Pythia), else None; also
    judges the model names against the suite or the Hub naming rules."""
    source = params.get("source") or {}
    models = params.get("models") or []
    if source.get("kind", "folder") == "folder":
        if source.get("root") or "suite" not in params:
            return None  # a folder of the user's: its models and steps are only known by listing it
        spec = get_suite(params["suite"])
        names = [m.name for m in spec.models]
        if unknown := [m for m in models if m not in names]:
            raise BadInputError(f"unknown model{'s' * (len(unknown) > 1)} {', '.join(map(repr, unknown))} of "
                                f"offline suite {spec.name!r}; it has {', '.join(names)}")
        return spec.steps
    schedules = []
    for model in models:
        key = model_key(model)  # a bare name outside the Pythia catalogue is refused here
        if "--" not in key:
            schedules.append(PYTHIA_STEPS)
            continue
        family = resolve_family(source.get("family"), repo_of(key))
        schedules.append(family.steps or None)
    return schedules[0] if schedules and all(s == schedules[0] for s in schedules) else None


def precheck(params: dict[str, Any]) -> None:
    """Raise BadInputError naming the first bad value; ``params``: the flow's resolved parameters."""
    if isinstance(params.get("store"), str):
        Store(params["store"])  # scheme and bucket name
    if isinstance(params.get("device"), str):
        resolve_device(params["device"])  # e.g. cuda on a machine without it
    if isinstance(params.get("dtype"), str):
        resolve_dtype(params["dtype"])
    schedule = _schedule(params)
    if schedule is not None:
        for name in ("steps", "eval_steps"):
            if isinstance(params.get(name), str):
                select_steps(params[name], schedule)
