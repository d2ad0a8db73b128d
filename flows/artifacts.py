"""How flows show figures in Prefect artifacts."""

from __future__ import annotations

import base64


def figure_markdown(title: str, png: bytes) -> str:
    """A PNG inline in a markdown artifact (the artifact then holds the figure itself, not a link)."""
    return f"![{title}](data:image/png;base64,{base64.b64encode(png).decode()})"
