"""How flows show figures in Prefect artifacts: small thumbnails, each with a link to the full figure on the store.

Prefect refuses to publish an event above 1.5 MB, and a markdown artifact with full-size PNGs inline
passes that with a few figures. Thumbnails are inlined up to a budget; figures beyond it are links.
"""

from __future__ import annotations

import base64
import io

from PIL import Image

THUMBNAIL_WIDTH = 360  # px
BUDGET = 1_000_000  # bytes of inlined images per artifact, under Prefect's 1.5 MB event limit


def thumbnail(png: bytes, width: int = THUMBNAIL_WIDTH) -> bytes:
    """The figure scaled to ``width`` pixels, as a 64-colour PNG (figures are mostly flat colour)."""
    image = Image.open(io.BytesIO(png)).convert("RGB")
    if image.width > width:
        image = image.resize((width, round(image.height * width / image.width)), Image.LANCZOS)
    out = io.BytesIO()
    image.quantize(colors=64).save(out, format="PNG", optimize=True)
    return out.getvalue()


def figures_markdown(figures: list[tuple[str, bytes, str]], budget: int = BUDGET) -> str:
    """Markdown for (title, PNG, URL of the full figure): a thumbnail and a link each while the inlined
    bytes stay within ``budget``, the link alone after that.

    The thumbnail is not itself wrapped in the link: Prefect's UI renders an image inside a link as text.
    """
    parts, used = [], 0
    for title, png, url in figures:
        inline = base64.b64encode(thumbnail(png)).decode()
        if used + len(inline) <= budget:
            parts.append(f"### {title}\n![{title}](data:image/png;base64,{inline})\n\n[{title} (full figure)]({url})")
            used += len(inline)
        else:
            parts.append(f"### {title}\n[{title} (full figure)]({url})")
    return "\n\n".join(parts)
