"""Architectures (Pythia's built in), the checkpoint schedule, and the step selectors users type.

Figures from the EleutherAI/pythia README (docs/science.md, "Pythia"): d_ff = 4·d, rotary on 25% of
head dims, parallel residual, vocabulary padded to 50,304, untied embeddings.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from massive_activations.errors import BadInputError

PYTHIA_VOCAB = 50304
PYTHIA_CONTEXT = 2048
TOKENS_PER_STEP = 2_097_152
# step0, 1, 2, 4, …, 512, then every 1000 up to 143000: 154 checkpoints.
PYTHIA_STEPS: tuple[int, ...] = (0, *(2**i for i in range(10)), *range(1000, 143001, 1000))


class CatalogError(BadInputError):
    """An unknown model or a step selection that does not fit the schedule."""


@dataclass(frozen=True)
class Architecture:
    """What the regressors and the capture need to know about a model (defaults: Pythia's GPT-NeoX)."""

    name: str
    n_layers: int
    d_model: int
    n_heads: int
    d_ff: int
    rotary_pct: float = 0.25  # share of each head's dims that is rotated; 0 without rotary positions
    vocab_size: int = PYTHIA_VOCAB
    context: int = PYTHIA_CONTEXT
    parallel_residual: bool = True
    n_kv_heads: int | None = None  # grouped-query attention; None: one KV head per head
    tied_embeddings: bool = False
    norm: str = "layernorm"  # or "rmsnorm"
    positions: str = "rotary"  # or "learned", "alibi"
    gated_mlp: bool = False  # SwiGLU-style MLPs: three matrices
    bias: bool = True  # Linear layers with biases
    model_type: str = "gpt_neox"
    params: int | None = None  # the exact count, when read from a model; None: ``n_params``' formula

    def __post_init__(self) -> None:
        for field in ("n_layers", "d_model", "n_heads", "d_ff", "vocab_size", "context"):
            value = getattr(self, field)
            if not isinstance(value, int) or value <= 0:
                raise CatalogError(f"{self.name}: {field} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads:
            raise CatalogError(f"{self.name}: n_heads={self.n_heads} does not divide d_model={self.d_model}")
        if self.n_kv_heads is not None and (self.n_kv_heads <= 0 or self.n_heads % self.n_kv_heads):
            raise CatalogError(f"{self.name}: n_kv_heads={self.n_kv_heads} must divide n_heads={self.n_heads}")
        if not 0.0 <= self.rotary_pct <= 1.0 or (self.positions == "rotary") != (self.rotary_pct > 0):
            raise CatalogError(f"{self.name}: rotary_pct must be in (0, 1] with rotary positions and 0 without, "
                               f"got {self.rotary_pct} with {self.positions!r} positions")
        if self.norm not in NORMS or self.positions not in POSITIONS:
            raise CatalogError(f"{self.name}: norm must be one of {NORMS} and positions one of {POSITIONS}, got "
                               f"{self.norm!r}, {self.positions!r}")

    @property
    def n_params(self) -> int:
        """The exact count when known; else from the shapes: embeddings (once when tied, plus learned
        positions), attention with its KV heads, a plain or gated MLP, two norms per layer and a final
        one (exact for GPT-NeoX, Llama and GPT-2 layouts; biases on only some Linears, or extra norms,
        as in Qwen2 or OLMo-2, are not counted)."""
        if self.params is not None:
            return self.params
        d, kv = self.d_model, (self.n_kv_heads or self.n_heads) * (self.d_model // self.n_heads)
        norm = 2 * d if self.norm == "layernorm" else d
        attention = 2 * d * d + 2 * d * kv + (2 * d + 2 * kv if self.bias else 0)
        mlp = (3 if self.gated_mlp else 2) * d * self.d_ff + (self.d_ff + d if self.bias else 0)
        embeddings = (1 if self.tied_embeddings else 2) * self.vocab_size * d
        embeddings += self.context * d if self.positions == "learned" else 0
        return embeddings + self.n_layers * (attention + mlp + 2 * norm) + norm

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"n_params": self.n_params}

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> Architecture:
        """Back from ``as_dict`` (a stored manifest; older ones lack the newer fields, which default)."""
        return cls(**{k: v for k, v in fields.items() if k != "n_params"})

    @classmethod
    def from_config(cls, name: str, config: Any, model: Any = None) -> Architecture:
        """From any transformers causal-LM config (attribute maps give GPT-2's n_embd as hidden_size,
        and so on). What a config does not say (gated MLP, biases, the exact parameter count) is read
        from ``model``, built on the meta device when not given. GPT-NeoX's rotary share lives in
        ``rotary_pct`` (transformers 4.x) or ``rope_parameters["partial_rotary_factor"]`` (5.x)."""
        from massive_activations.sources.model_parts import check_config, find_parts, is_linear

        parts = find_parts(model) if model is not None else check_config(config)
        built = model if model is not None else parts.trunk
        block = dict(parts.blocks[0].named_modules())
        rope = getattr(config, "rope_parameters", None) or {}
        rotary = bool(rope) or hasattr(config, "rotary_pct") or hasattr(config, "rope_theta")
        positions = "rotary" if rotary else "alibi" if getattr(config, "alibi", False) else "learned"
        share = rope.get("partial_rotary_factor", getattr(config, "rotary_pct", 1.0)) if rotary else 0.0
        counted = {id(p): p.numel() for p in built.parameters()}
        if model is None and not getattr(config, "tie_word_embeddings", False):  # the trunk lacks the LM head
            counted[-1] = config.vocab_size * config.hidden_size
        d_ff = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * config.hidden_size
        return cls(name=name, n_layers=config.num_hidden_layers, d_model=config.hidden_size,
                   n_heads=config.num_attention_heads, d_ff=d_ff, rotary_pct=float(share),
                   vocab_size=config.vocab_size, context=config.max_position_embeddings,
                   parallel_residual=bool(getattr(config, "use_parallel_residual", False)),
                   n_kv_heads=getattr(config, "num_key_value_heads", None) or config.num_attention_heads,
                   tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
                   norm="rmsnorm" if hasattr(config, "rms_norm_eps") else "layernorm", positions=positions,
                   gated_mlp=any(key.rsplit(".", 1)[-1].startswith("gate") for key in block),
                   bias=any(getattr(m, "bias", None) is not None for m in block.values() if is_linear(m)),
                   model_type=config.model_type, params=sum(counted.values()))


def architecture_key(model: str) -> str:
    """Where a captured model's architecture is kept on the store (written by its capture)."""
    return f"architectures/{model}.json"


NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("rotary", "learned", "alibi")


_SIZES = {  # size: (layers, d_model, heads)
    "14m": (6, 128, 4), "31m": (6, 256, 8), "70m": (6, 512, 8), "160m": (12, 768, 12),
    "410m": (24, 1024, 16), "1b": (16, 2048, 8), "1.4b": (24, 2048, 16), "2.8b": (32, 2560, 32),
    "6.9b": (32, 4096, 32), "12b": (36, 5120, 40),
}
_NO_DEDUPED = {"14m", "31m"}
# The two largest models pad the vocabulary further (their config.json; matches published counts).
_VOCAB = {"6.9b": 50432, "12b": 50688}


def _pythia(name: str, layers: int, d: int, heads: int, vocab: int) -> Architecture:
    return Architecture(name=name, n_layers=layers, d_model=d, n_heads=heads, d_ff=4 * d, vocab_size=vocab)


PYTHIA: dict[str, Architecture] = {}
for _size, (_l, _d, _h) in _SIZES.items():
    _v = _VOCAB.get(_size, PYTHIA_VOCAB)
    PYTHIA[f"pythia-{_size}"] = _pythia(f"pythia-{_size}", _l, _d, _h, _v)
    if _size not in _NO_DEDUPED:
        PYTHIA[f"pythia-{_size}-deduped"] = _pythia(f"pythia-{_size}-deduped", _l, _d, _h, _v)


def pythia_model(name: str) -> Architecture:
    """Look up a Pythia model by 'pythia-70m', '70m', 'pythia-70m-deduped' or 'EleutherAI/pythia-70m'."""
    key = name.strip().removeprefix("EleutherAI/")
    if not key.startswith("pythia-"):
        key = f"pythia-{key}"
    if key not in PYTHIA and key.removesuffix("-deduped") in PYTHIA:
        raise CatalogError(f"{key.removesuffix('-deduped')} has no deduped variant (none for 14m and 31m)")
    if key not in PYTHIA:
        raise CatalogError(f"unknown Pythia model {name!r}; valid: {', '.join(PYTHIA)}")
    return PYTHIA[key]


def hub_repo(name: str) -> str:
    return f"EleutherAI/{pythia_model(name).name}"


def _log_prefix(schedule: Sequence[int]) -> list[int]:
    out = []
    for step in schedule:
        if step == 0 or (step & (step - 1)) == 0:
            out.append(step)
        else:
            break
    return out


def _describe(schedule: Sequence[int]) -> str:
    log = _log_prefix(schedule)
    rest = list(schedule[len(log):])
    text = ", ".join(map(str, log))
    if len(rest) > 2:
        text += f", {rest[0]}, {rest[1]}, …, {rest[-1]}"
    elif rest:
        text += ", " + ", ".join(map(str, rest))
    return f"{len(schedule)} steps: {text}"


def _log_spaced(valid: list[int], n: int) -> list[int]:
    """n scheduled steps spread evenly in log(1 + step): the first and the last, then again and again the
    step farthest from those taken (ties: the earlier step), which spreads them as evenly as the
    schedule allows."""
    if n >= len(valid):
        return list(valid)
    where = np.log1p(np.asarray(valid, dtype=float))
    taken = [0, len(valid) - 1]
    gap = np.minimum(np.abs(where - where[0]), np.abs(where - where[-1]))
    while len(taken) < n:
        best = int(np.argmax(gap))  # argmax takes the first of equal gaps
        taken.append(best)
        gap = np.minimum(gap, np.abs(where - where[best]))
    return sorted(valid[i] for i in taken)


def select_steps(selector: str | int | Iterable[int], schedule: Sequence[int] = PYTHIA_STEPS) -> list[int]:
    """Resolve a step selector against a checkpoint schedule.

    A selector is a comma-separated union of: ``all``; ``log`` (the leading 0, 1, 2, 4, … part);
    ``start:stop:stride`` (inclusive of stop; stride defaults to every scheduled step in between);
    ``every=N`` (every N-th scheduled checkpoint, always keeping the first and the last);
    ``spaced=N`` (N checkpoints spread evenly in log(1 + step), so early emergence is covered; the whole
    schedule when it has N or fewer); or a step. Steps off the schedule are an error, not silently dropped.
    """
    valid = sorted(set(schedule))
    if not valid:
        raise CatalogError("the checkpoint schedule is empty")
    valid_set = set(valid)
    if isinstance(selector, int):
        tokens: list[str] = [str(selector)]
    elif isinstance(selector, str):
        tokens = [t.strip() for t in selector.split(",") if t.strip()]
    else:
        tokens = [str(int(s)) for s in selector]
    if not tokens:
        raise CatalogError(f"empty step selection {selector!r}; the schedule has {_describe(valid)}")
    chosen: set[int] = set()
    for token in tokens:
        if token == "all":
            chosen.update(valid)
        elif token == "log":
            chosen.update(_log_prefix(valid))
        elif m := re.fullmatch(r"every=(\d+)", token):
            n = int(m.group(1))
            if n < 1:
                raise CatalogError(f"every=N needs N >= 1, got {token!r}")
            chosen.update(valid[::n])
            chosen.add(valid[-1])
        elif m := re.fullmatch(r"spaced=(\d+)", token):
            n = int(m.group(1))
            if n < 2:
                raise CatalogError(f"spaced=N needs N >= 2, got {token!r}")
            chosen.update(_log_spaced(valid, n))
        elif m := re.fullmatch(r"(\d+):(\d+)(?::(\d+))?", token):
            start, stop = int(m.group(1)), int(m.group(2))
            stride = int(m.group(3)) if m.group(3) else None
            if stride == 0 or stop < start:
                raise CatalogError(f"bad range {token!r}: need start <= stop and stride >= 1")
            wanted = range(start, stop + 1, stride) if stride else [s for s in valid if start <= s <= stop]
            off = [s for s in wanted if s not in valid_set]
            if off:
                raise CatalogError(f"range {token!r} includes steps not on the schedule: {off[:5]}"
                                   f"{' …' if len(off) > 5 else ''}; the schedule has {_describe(valid)}")
            chosen.update(wanted)
        elif re.fullmatch(r"\d+", token):
            if int(token) not in valid_set:
                raise CatalogError(f"step {token} is not on the schedule; it has {_describe(valid)}")
            chosen.add(int(token))
        else:
            raise CatalogError(f"cannot read step selector {token!r}; use all, log, start:stop:stride, "
                               "every=N, spaced=N or step numbers, separated by commas")
    if not chosen:
        raise CatalogError(f"step selection {selector!r} selects no checkpoint")
    return sorted(chosen)
