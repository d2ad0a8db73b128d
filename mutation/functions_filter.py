"""Skip every mutant outside the functions a session config names, so a session can test part of a module.

A cosmic-ray session mutates a whole file; ``[cosmic-ray.filters.functions-filter] functions`` lists the
functions (``name``) or methods (``Class.name``) whose mutants count, found by name in the module's
syntax tree, so the list keeps up with the code as it moves. Without that section nothing is skipped.

Run: python mutation/functions_filter.py <session.sqlite> <config.toml>
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from cosmic_ray.config import load_config
from cosmic_ray.work_db import use_db
from cosmic_ray.work_item import WorkerOutcome, WorkResult


def function_lines(source: str, names: list[str]) -> list[tuple[int, int]]:
    """(first, last) line of each named function or ``Class.method``; an unknown name is an error."""
    found: dict[str, tuple[int, int]] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found[prefix + child.name] = (child.lineno, child.end_lineno or child.lineno)
            if isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")

    visit(ast.parse(source), "")
    missing = [name for name in names if name not in found]
    if missing:
        raise SystemExit(f"functions-filter: {missing} not found; the module defines {sorted(found)}")
    return [found[name] for name in names]


def main(session: str, config_file: str) -> None:
    config = load_config(config_file)
    names = list(config.sub("filters", "functions-filter").get("functions", []))
    if not names:
        return
    module = Path(config["module-path"])
    ranges = function_lines(module.read_text(), names)
    with use_db(session) as db:
        outside = [item.job_id for item in db.pending_work_items
                   if not any(lo <= m.start_pos[0] <= hi for m in item.mutations for lo, hi in ranges)]
        if outside:
            db.set_multiple_results(outside, WorkResult(output="outside the functions tested",
                                                        worker_outcome=WorkerOutcome.SKIPPED))
    print(f"functions-filter: {len(outside)} mutants outside {', '.join(names)} skipped")


if __name__ == "__main__":
    main(*sys.argv[1:])
