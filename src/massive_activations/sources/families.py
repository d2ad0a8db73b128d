"""Model families with public training checkpoints, as data: repo names and revision names.

Each family says how its Hub repositories are named and how a revision (a branch holding one
training checkpoint) is named: a regular expression with a named group ``step`` and, where the name
carries them, ``tokens`` (with a unit: K, M, B or T), ``stage`` and ``ingredient``. Revisions order by
(stage, ingredient, step): OLMo-2's second stage comes after its first, whatever its step numbers.
A user adds a family with :meth:`Family.from_dict` (a regex in a parameter or a small config).

A family may also restrict which revisions make one training run (``trajectory``: OLMo-2's default
is its pretraining stage 1; its stage-2 ingredients are separate runs whose step numbers start
again), and may carry its checkpoint schedule (``steps``, Pythia's), in which case nothing is listed.

Models on the store are named by :func:`model_key`: a catalogued Pythia name as it is
(``pythia-160m``), any other repository as ``org--name`` (``allenai--OLMo-2-0425-1B``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from massive_activations.errors import BadInputError
from massive_activations.sources.catalog import PYTHIA, PYTHIA_STEPS, CatalogError, pythia_model

_UNITS = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}


@dataclass(frozen=True, order=True)
class Revision:
    """One checkpoint of a family: its place in training and its revision name."""

    stage: int
    ingredient: int
    step: int
    tokens: float | None = field(compare=False)
    name: str = field(compare=False)


@dataclass(frozen=True)
class Family:
    name: str
    repo: str  # the repository of a model, with {model}: "EleutherAI/{model}"
    revision: str  # a regex matching the whole revision name
    examples: tuple[str, ...]  # real revision names, shown when a name does not parse
    models: tuple[str, ...] = ()  # known models (examples for users, not a limit)
    match: str = ".*"  # a regex on model names: which repositories of the organisation are this family's
    trajectory: str = ""  # a regex on revision names: the one training run taken (empty: every checkpoint)
    steps: tuple[int, ...] = ()  # a known schedule, named by ``step_name``; empty: listed from the Hub
    step_name: str = ""  # a known schedule's revision names, e.g. "step{step}"

    def __post_init__(self) -> None:
        try:
            pattern = re.compile(self.revision)
        except re.error as err:
            raise BadInputError(f"family {self.name!r}: revision pattern {self.revision!r} is not a regex "
                             f"({err})") from err
        if "step" not in pattern.groupindex:
            raise BadInputError(f"family {self.name!r}: revision pattern {self.revision!r} needs a named group "
                             "(?P<step>…)")
        if "{model}" not in self.repo or "/" not in self.repo:
            raise BadInputError(f"family {self.name!r}: repo {self.repo!r} needs an organisation and {{model}}, "
                             "as in 'me/{model}'")
        for what, value in (("match", self.match), ("trajectory", self.trajectory)):
            try:
                re.compile(value)
            except re.error as err:
                raise BadInputError(f"family {self.name!r}: {what} {value!r} is not a regex ({err})") from err
        if bool(self.steps) != bool(self.step_name):
            raise BadInputError(f"family {self.name!r}: a known schedule needs both steps and step_name")

    @property
    def organisation(self) -> str:
        return self.repo.split("/", 1)[0]

    def owns(self, repo: str) -> bool:
        org, _, name = repo.partition("/")
        return org == self.organisation and re.fullmatch(self.match, name) is not None

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Family:
        known = ("name", "repo", "revision", "examples", "models", "match", "trajectory", "steps", "step_name")
        unknown = set(values) - set(known)
        if unknown:
            raise BadInputError(f"unknown family fields {sorted(unknown)}; use {', '.join(known)}")
        return cls(**{**values, **{k: tuple(values.get(k, ())) for k in ("examples", "models", "steps")}})

    def repo_id(self, model: str) -> str:
        return self.repo.format(model=model)

    def parse(self, name: str) -> Revision:
        """The revision's place in training; a name that does not fit is an error naming the pattern."""
        found = re.fullmatch(self.revision, name)
        if found is None:
            raise BadInputError(f"revision {name!r} does not fit family {self.name!r} (pattern {self.revision}); "
                             f"its revisions look like {', '.join(self.examples)}")
        groups = {k: v for k, v in found.groupdict().items() if v is not None}
        tokens = None
        if "tokens" in groups:
            number = re.fullmatch(r"(\d+(?:\.\d+)?)([KMBT])", groups["tokens"])
            if number is None:
                raise BadInputError(f"revision {name!r}: tokens {groups['tokens']!r} is not a number with K, M, B or T")
            tokens = float(number.group(1)) * _UNITS[number.group(2)]
        return Revision(stage=int(groups.get("stage", 0)), ingredient=int(groups.get("ingredient", 0)),
                        step=int(groups["step"]), tokens=tokens, name=name)

    def checkpoints(self, names: list[str]) -> list[Revision]:
        """The checkpoints among a repository's branches (as the Hub lists them), in training order;
        branches that are not checkpoints (``main``, and any name outside the pattern) are left out."""
        return sorted(self.parse(n) for n in names if re.fullmatch(self.revision, n))

    def schedule(self, names: list[str]) -> dict[int, str]:
        """Step -> revision name of the family's training run among these branches (its ``trajectory``);
        two revisions with one step are an error that says how to choose."""
        run = [r for r in self.checkpoints(names) if re.fullmatch(self.trajectory or ".*", r.name)]
        out: dict[int, str] = {}
        for r in run:
            if r.step in out:
                raise BadInputError(f"family {self.name!r}: revisions {out[r.step]!r} and {r.name!r} both hold step "
                                 f"{r.step}; restrict the family to one training run with a trajectory regex")
            out[r.step] = r.name
        return out


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("pythia", "EleutherAI/{model}", r"step(?P<step>\d+)", ("step0", "step512", "step143000"),
           ("pythia-70m", "pythia-160m", "pythia-1b", "pythia-12b", "pythia-410m-deduped"), match=r"pythia-.*",
           steps=PYTHIA_STEPS, step_name="step{step}"),
    Family("olmo", "allenai/{model}", r"step(?P<step>\d+)-tokens(?P<tokens>\d+(?:\.\d+)?[KMBT])",
           ("step1000-tokens4B", "step738020-tokens3095B"), ("OLMo-1B-hf", "OLMo-7B-0424-hf"),
           match=r"OLMo-(?!2-).*"),
    Family("olmo2", "allenai/{model}",
           r"stage(?P<stage>\d+)-(?:ingredient(?P<ingredient>\d+)-)?step(?P<step>\d+)-tokens(?P<tokens>\d+[KMBT])",
           ("stage1-step150-tokens1B", "stage1-step1907359-tokens4001B",
            "stage2-ingredient1-step1000-tokens5B"), ("OLMo-2-0425-1B", "OLMo-2-1124-7B", "OLMo-2-1124-13B"),
           match=r"OLMo-2-.*", trajectory=r"stage1-.*"),
    Family("amber", "LLM360/{model}", r"ckpt_(?P<step>\d+)", ("ckpt_000", "ckpt_100", "ckpt_358"), ("Amber",),
           match=r"Amber.*"),
    Family("fineweb-ablation", "HuggingFaceFW/{model}",
           r"step-(?P<step>\d+)-(?P<tokens>\d+(?:\.\d+)?[KMBT])T", ("step-001000-2BT", "step-024000-50BT"),
           ("ablation-model-fineweb-edu", "ablation-model-fineweb-v1"), match=r"ablation-model-.*"),
)}


def model_key(name: str) -> str:
    """The store's name of a model: a catalogued Pythia name (given bare or as EleutherAI/…) as it is,
    any other repository ``org/name`` as ``org--name``; a bare name outside the catalogue is an error."""
    name = name.strip()
    if "/" not in name:
        if "--" in name:
            return name
        try:
            return pythia_model(name).name
        except CatalogError as err:
            raise CatalogError(f"{err}; any other model: its Hub repository as org/name, e.g. "
                               "allenai/OLMo-2-0425-1B") from err
    if name.count("/") != 1 or not all(name.split("/")):
        raise CatalogError(f"model {name!r}: name a Hub repository as org/name, e.g. allenai/OLMo-2-0425-1B")
    org, repo_name = name.split("/")
    return repo_name if org == "EleutherAI" and repo_name in PYTHIA else f"{org}--{repo_name}"


def repo_of(key: str) -> str:
    """The Hub repository of a model named by :func:`model_key`."""
    key = model_key(key)
    return key.replace("--", "/", 1) if "--" in key else f"EleutherAI/{key}"


def family_of(repo: str, families: dict[str, Family] = FAMILIES) -> Family:
    """The one family whose organisation and model-name pattern fit ``repo``."""
    found = [f for f in families.values() if f.owns(repo)]
    if len(found) != 1:
        raise BadInputError(f"{repo}: {'several' if found else 'no'} model families fit "
                         f"({', '.join(f.name for f in found) or 'built in: ' + ', '.join(families)}); name one "
                         "(source family: a built-in name, or your own as JSON with name, repo, revision, examples)")
    return found[0]


def resolve_family(spec: str | dict[str, Any] | None, repo: str) -> Family:
    """A family named (built in), given as fields or JSON text, or found from the repository."""
    if not spec:
        return family_of(repo)
    if isinstance(spec, str) and spec.lstrip().startswith("{"):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as err:
            raise BadInputError(f"family {spec!r} is neither a built-in name nor valid JSON ({err})") from err
    fam = Family.from_dict(spec) if isinstance(spec, dict) else family(spec)
    if repo.partition("/")[0] != fam.organisation:
        raise BadInputError(f"{repo} is not in family {fam.name!r}'s organisation ({fam.repo})")
    return fam


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise BadInputError(f"unknown model family {name!r}; built in: {', '.join(FAMILIES)} (or give your own: name, "
                         "repo, revision pattern, examples)")
    return FAMILIES[name]
