"""Text every machine has without downloads: docstrings of the Python standard library.

The corpus is deterministic for a given Python build; its content hash is recorded with every
artefact made from it, so a different interpreter (and so different text) is visible, not silent.
"""

from __future__ import annotations

import ast
import hashlib
import sysconfig
from dataclasses import dataclass
from functools import cache
from pathlib import Path

SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Corpus:
    documents: tuple[str, ...]
    content_hash: str


def _docstrings(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and len(doc) >= 40 and doc.isascii():
                found.append(doc)
    return found


@cache
def stdlib_docstrings(max_chars: int = 4_000_000) -> Corpus:
    """ASCII docstrings of the stdlib (tests excluded), in sorted file order, up to ``max_chars``."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs: list[str] = []
    total = 0
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if any(p in {"test", "tests", "idlelib", "site-packages", "lib2to3"} for p in rel):
            continue
        for doc in _docstrings(path):
            docs.append(doc)
            total += len(doc)
            if total >= max_chars:
                break
        if total >= max_chars:
            break
    if not docs:
        raise RuntimeError(f"found no docstrings under {root}; is the standard library source installed?")
    digest = hashlib.sha256(SEPARATOR.join(docs).encode()).hexdigest()[:16]
    return Corpus(documents=tuple(docs), content_hash=digest)
