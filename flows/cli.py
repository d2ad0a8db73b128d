"""One command line for every flow, generated from its parameter schema: the one the Prefect UI renders.

Conventions (docs/operations.md, "Command line"; every option in docs/cli.md): each parameter is
``--name``; each field of a settings group is ``--group-field``, and also ``--field`` where no other
option has that name; a parameter without a default is positional. Lists are comma-separated; an empty
value clears an optional setting. Results are printed for a person, or as JSON with ``--json``. Exit
codes: 0 done, 1 the run failed, 2 bad input (``BadInputError``, wherever it is raised); either is one
line, with no traceback unless ``--debug``. The console shows the project's own log lines only;
Prefect's (engine states, server start-up, links) stay in the run's logs on the API unless
``--verbose``.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import logging
import math
import sys
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydantic
from prefect import Flow

from flows.prechecks import precheck
from massive_activations.errors import BadInputError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
Summary = Callable[[dict, dict], str]


@dataclass(frozen=True)
class Option:
    """One command-line option: where its value goes in the flow's parameters, and how to read it."""

    path: tuple[str, ...]
    kind: str  # string, integer, number, boolean or array
    nullable: bool
    choices: tuple[str, ...] | None
    help: str
    positional: bool = False

    @property
    def flag(self) -> str:
        return "--" + "-".join(self.path).replace("_", "-")

    @property
    def dest(self) -> str:
        return "__".join(self.path)

    def parse(self, text: str) -> Any:
        if text == "" and self.nullable:
            return None
        if self.kind == "array":
            return [v.strip() for v in text.split(",") if v.strip()]
        return text  # pydantic converts numbers while validating, with its own messages


def _leaf(name: tuple[str, ...], schema: dict, definitions: dict, required: bool,
          default: Any = None) -> Iterator[Option]:
    """``default``: the flow's own default for this value (a group's default can differ from its model's)."""
    members = schema.get("anyOf", [schema])
    nullable = any(m.get("type") == "null" for m in members)
    for member in (m for m in members if m.get("type") != "null"):
        if "$ref" in member:
            group = definitions[member["$ref"].rsplit("/", 1)[1]]
            values = schema.get("default") if isinstance(schema.get("default"), dict) else {}
            for field, sub in group["properties"].items():
                yield from _leaf((*name, field), sub, definitions, False, values.get(field, sub.get("default")))
            continue
        kind = member.get("type", "string")
        enum = member.get("enum") or member.get("items", {}).get("enum")
        text = schema.get("description", "")
        if enum and kind == "array":
            text += f" (comma-separated from: {', '.join(map(str, enum))})"
        elif kind == "array":
            text += " (comma-separated)"
        shown = default if len(name) > 1 else schema.get("default")
        if shown is not None and not required:
            text += f" [default: {','.join(map(str, shown)) if isinstance(shown, list) else shown}]"
        yield Option(name, kind, nullable, tuple(map(str, enum)) if enum and kind != "array" else None,
                     text.replace("%", "%%"), positional=required)


def options(flow: Flow) -> list[Option]:
    """Every option of a flow, in the form's order: the flattened parameter schema."""
    return _options(flow.parameters.model_dump())


def _options(schema: dict) -> list[Option]:
    definitions = schema.get("definitions", {})
    required = set(schema.get("required", ()))
    props = sorted(schema["properties"].items(), key=lambda kv: kv[1].get("position", 0))
    return [o for name, prop in props for o in _leaf((name,), prop, definitions, name in required)]


class _Parser(argparse.ArgumentParser):
    """A malformed command is one line (the usage of a flow with many settings runs to a screen)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(EXIT_BAD_INPUT, f"error: {message} (see {self.prog} --help)\n")


def build_parser(flow: Flow, description: str, opts: list[Option], prog: str | None = None) -> argparse.ArgumentParser:
    """``prog``: how the command is called in messages (default ``python -m flows.<module>``)."""
    module = Path(sys.modules[flow.fn.__module__].__file__ or flow.name).stem
    parser = _Parser(prog=prog or f"python -m flows.{module}", allow_abbrev=False, description=description)
    field_names = [o.path[-1] for o in opts if len(o.path) > 1]
    top = {o.path[0] for o in opts}
    for opt in opts:
        if opt.positional:
            parser.add_argument(opt.dest, metavar=opt.path[0].upper(), help=opt.help)
            continue
        flags = [opt.flag]
        alias = opt.path[-1]
        if len(opt.path) > 1 and field_names.count(alias) == 1 and alias not in top:
            flags.append("--" + alias.replace("_", "-"))
        kwargs: dict[str, Any] = {"dest": opt.dest, "default": argparse.SUPPRESS, "help": opt.help}
        if opt.kind == "boolean":
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["metavar"] = "|".join(opt.choices) if opt.choices else opt.path[-1].upper()
            if opt.choices:
                kwargs["choices"] = list(opt.choices) + ([""] if opt.nullable else [])
        parser.add_argument(*flags, **kwargs)
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of a summary")
    parser.add_argument("--verbose", action="store_true", help="also show Prefect's own log lines (run states, "
                        "server start-up) on the console")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and every log line")
    return parser


def parameters(defaults: dict, opts: list[Option], args: argparse.Namespace) -> dict:
    """The flow's parameters from parsed arguments; ``defaults``: the schema's properties, so that a group
    starts from the flow's own default for it."""
    params: dict[str, Any] = {}
    given = [opt for opt in opts if hasattr(args, opt.dest)]
    whole = {o.path[0] for o in given if len(o.path) == 1}
    if clash := sorted((o.path[0], o.flag) for o in given if len(o.path) > 1 and o.path[0] in whole):
        raise BadInputError(f"give either --{clash[0][0].replace('_', '-')} or its fields "
                         f"{', '.join(flag for _, flag in clash)}, not both")
    for opt in given:
        raw = getattr(args, opt.dest)
        value = raw if isinstance(raw, bool) else opt.parse(raw)
        head, *rest = opt.path
        if not rest:
            params[head] = value
            continue
        group = params.get(head)
        if not isinstance(group, dict):
            base = defaults[head].get("default")
            group = params[head] = dict(base) if isinstance(base, dict) else {}
        group[rest[0]] = value
    return params


def validate(flow: Flow, params: dict) -> None:
    """Check the values against the flow's signature (as Prefect will) without starting anything; each bad
    value is named by its option."""
    hints = typing.get_type_hints(flow.fn)
    fields = {name: (hints.get(name, Any), ... if p.default is inspect.Parameter.empty else p.default)
              for name, p in inspect.signature(flow.fn).parameters.items()}
    model = pydantic.create_model(f"{flow.name}-cli", __config__=pydantic.ConfigDict(arbitrary_types_allowed=True),
                                  **fields)
    try:
        model.model_validate(params)
    except pydantic.ValidationError as err:
        def flag(loc: tuple) -> str:
            parts = [str(x) for x in loc if isinstance(x, str) and x.islower() and "[" not in x]
            return "--" + "-".join(parts).replace("_", "-")
        errors = err.errors()
        # fields given for a group that may also be a name (predict's architecture): the name's complaint
        # about the fields ("should be a valid string") is noise beside the field's own
        errors = [e for e in errors if not (e["type"] == "string_type" and isinstance(e["input"], dict))] or errors
        raise BadInputError("; ".join(f"{flag(e['loc'])}: {e['msg']} (got {e['input']!r})" for e in errors)) from None


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


class _Console(logging.Formatter):
    """The console's format: Prefect's own (``--verbose``) or the bare message; never a traceback
    (tracebacks stay in the API's logs; ``--debug`` shows them)."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return self.inner.format(record) if self.inner else record.getMessage()
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


_OURS = tuple(str(Path(importlib.util.find_spec(package).origin).parent) + "/"  # checked out or installed
              for package in ("flows", "tasks", "massive_activations", "deployments"))


def _ours(record: logging.LogRecord) -> bool:
    """Logged by the project's code (progress, results), not by Prefect or another library."""
    return record.pathname.startswith(_OURS)


def _console(verbose: bool, debug: bool = False) -> None:
    """Set what the console shows from here to the process's end (the ephemeral server's stop notice
    comes at exit): the project's own lines, plainly; with ``verbose``, Prefect's too, in its format;
    with ``debug``, also tracebacks. What the API's log handler receives is unchanged."""
    loggers = [logging.getLogger(), *(v for v in logging.Logger.manager.loggerDict.values()
                                      if isinstance(v, logging.Logger))]
    consoles = {id(h): h for lg in loggers for h in lg.handlers  # Prefect's console and debug handlers
                if isinstance(h, logging.StreamHandler) and type(h).__module__.startswith("prefect")}
    for h in consoles.values():
        prefect_format = h.formatter.inner if isinstance(h.formatter, _Console) else h.formatter
        h.setFormatter(prefect_format if debug else _Console(prefect_format if verbose else None))
        if verbose or debug:
            h.removeFilter(_ours)
        else:
            h.addFilter(_ours)


def run(flow: Flow, summary: Summary, argv: list[str] | None = None, description: str | None = None,
        prog: str | None = None) -> int:
    """Parse, check, run, print; the exit code (argparse itself exits with 2 on a malformed command)."""
    schema = flow.parameters.model_dump()
    opts = _options(schema)
    parser = build_parser(flow, description or (flow.fn.__doc__ or flow.name).strip().splitlines()[0], opts, prog)
    args = parser.parse_args(argv)
    try:
        params = parameters(schema["properties"], opts, args)
        validate(flow, params)
        resolved = {name: prop["default"] for name, prop in schema["properties"].items()
                    if "default" in prop} | params
        precheck(resolved)  # what the values alone show is bad fails here, before any server or work starts
        _console(args.verbose, args.debug)
        result = flow(**params)
    except BadInputError as err:
        if args.debug:
            raise
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as err:  # the run failed: its logs (with tracebacks) are on the API
        if args.debug:
            raise
        print(f"error: the run failed: {_one_line(err)}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(_finite(result), indent=2, default=str) if args.json else summary(result, resolved))
    return EXIT_OK


def _finite(value: Any) -> Any:
    """NaN and ±inf as null: what JSON readers accept (Python's json would write bare NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def table(rows: list[dict], columns: list[str] | None = None) -> str:
    """Rows as aligned text columns; floats to 4 significant digits."""
    if not rows:
        return "(none)"
    columns = columns or list(rows[0])
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else ("—" if v is None else str(v))  # noqa: E731
    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    fmt = lambda values: "  ".join(v.rjust(w) for v, w in zip(values, widths, strict=True))  # noqa: E731
    return "\n".join([fmt(columns), *map(fmt, cells)])
