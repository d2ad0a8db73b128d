"""Model families with public training checkpoints, as data: repo names and revision names.

Each family says how its Hub repositories are named and how a revision (a branch holding one
training checkpoint) is named: a regular expression with a named group ``step`` and, where the name
carries them, ``tokens`` (with a unit: K, M, B or T), ``stage`` and ``ingredient``. Revisions order by
(stage, ingredient, step): OLMo-2's second stage comes after its first, whatever its step numbers.
A user adds a family with :meth:`Family.from_dict` (a regex in a parameter or a small config).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

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

    def __post_init__(self) -> None:
        try:
            pattern = re.compile(self.revision)
        except re.error as err:
            raise ValueError(f"family {self.name!r}: revision pattern {self.revision!r} is not a regex "
                             f"({err})") from err
        if "step" not in pattern.groupindex:
            raise ValueError(f"family {self.name!r}: revision pattern {self.revision!r} needs a named group "
                             "(?P<step>…)")
        if "{model}" not in self.repo:
            raise ValueError(f"family {self.name!r}: repo {self.repo!r} needs {{model}}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Family:
        unknown = set(values) - {"name", "repo", "revision", "examples", "models"}
        if unknown:
            raise ValueError(f"unknown family fields {sorted(unknown)}; use name, repo, revision, examples, models")
        return cls(**{**values, "examples": tuple(values.get("examples", ())),
                      "models": tuple(values.get("models", ()))})

    def repo_id(self, model: str) -> str:
        return self.repo.format(model=model)

    def parse(self, name: str) -> Revision:
        """The revision's place in training; a name that does not fit is an error naming the pattern."""
        found = re.fullmatch(self.revision, name)
        if found is None:
            raise ValueError(f"revision {name!r} does not fit family {self.name!r} (pattern {self.revision}); "
                             f"its revisions look like {', '.join(self.examples)}")
        groups = {k: v for k, v in found.groupdict().items() if v is not None}
        tokens = None
        if "tokens" in groups:
            number = re.fullmatch(r"(\d+(?:\.\d+)?)([KMBT])", groups["tokens"])
            if number is None:
                raise ValueError(f"revision {name!r}: tokens {groups['tokens']!r} is not a number with K, M, B or T")
            tokens = float(number.group(1)) * _UNITS[number.group(2)]
        return Revision(stage=int(groups.get("stage", 0)), ingredient=int(groups.get("ingredient", 0)),
                        step=int(groups["step"]), tokens=tokens, name=name)

    def checkpoints(self, names: list[str]) -> list[Revision]:
        """The checkpoints among a repository's branches (as the Hub lists them), in training order;
        branches that are not checkpoints (``main``, and any name outside the pattern) are left out."""
        return sorted(self.parse(n) for n in names if re.fullmatch(self.revision, n))


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("pythia", "EleutherAI/{model}", r"step(?P<step>\d+)", ("step0", "step512", "step143000"),
           ("pythia-70m", "pythia-160m", "pythia-1b", "pythia-12b", "pythia-410m-deduped")),
    Family("olmo", "allenai/{model}", r"step(?P<step>\d+)-tokens(?P<tokens>\d+(?:\.\d+)?[KMBT])",
           ("step1000-tokens4B", "step738020-tokens3095B"), ("OLMo-1B-hf", "OLMo-7B-0424-hf")),
    Family("olmo2", "allenai/{model}",
           r"stage(?P<stage>\d+)-(?:ingredient(?P<ingredient>\d+)-)?step(?P<step>\d+)-tokens(?P<tokens>\d+[KMBT])",
           ("stage1-step150-tokens1B", "stage1-step1907359-tokens4001B",
            "stage2-ingredient1-step1000-tokens5B"), ("OLMo-2-0425-1B", "OLMo-2-1124-7B", "OLMo-2-1124-13B")),
    Family("amber", "LLM360/{model}", r"ckpt_(?P<step>\d+)", ("ckpt_000", "ckpt_100", "ckpt_358"), ("Amber",)),
    Family("fineweb-ablation", "HuggingFaceFW/{model}",
           r"step-(?P<step>\d+)-(?P<tokens>\d+(?:\.\d+)?[KMBT])T", ("step-001000-2BT", "step-024000-50BT"),
           ("ablation-model-fineweb-edu", "ablation-model-fineweb-v1")),
)}


def hub_checkpoints(fam: Family, model: str, endpoint: str | None = None) -> list[Revision]:
    """The model's checkpoints on the Hub (its branches, through the Hub's refs API), in training order."""
    from huggingface_hub import HfApi

    refs = HfApi(endpoint=endpoint).list_repo_refs(fam.repo_id(model))
    found = fam.checkpoints([b.name for b in refs.branches])
    if not found:
        raise ValueError(f"{fam.repo_id(model)} has no branch that fits family {fam.name!r} "
                         f"({', '.join(fam.examples)}); its branches: {sorted(b.name for b in refs.branches)[:10]}")
    return found


def family(name: str) -> Family:
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}; built in: {', '.join(FAMILIES)} (or give your own: name, "
                         "repo, revision pattern, examples)")
    return FAMILIES[name]
