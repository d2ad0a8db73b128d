"""Figures in artifacts stay under Prefect's 1.5 MB event limit, however many there are."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
from PIL import Image

from flows.artifacts import BUDGET, THUMBNAIL_WIDTH, figures_markdown, thumbnail
from massive_activations.report.plots import _png  # how the project renders every figure

EVENT_LIMIT = 1_500_000  # bytes: Prefect refuses to publish a larger event


def a_figure(seed: int) -> bytes:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(12, 6))
    rng = np.random.default_rng(seed)
    for ax in axes.flat:
        ax.plot(np.cumsum(rng.standard_normal(500)))
        ax.scatter(rng.random(200), rng.random(200), s=3)
    return _png(fig)


def test_a_thumbnail_is_small_and_still_a_figure():
    png = a_figure(0)
    small = thumbnail(png)
    image = Image.open(io.BytesIO(small))
    assert image.width == THUMBNAIL_WIDTH and len(small) < len(png) / 4


def test_many_figures_stay_within_the_budget_and_the_rest_are_links():
    figures = [(f"model-{i}", a_figure(i), f"s3://bucket/plots/model-{i}.png") for i in range(60)]
    markdown = figures_markdown(figures)
    assert len(markdown.encode()) < EVENT_LIMIT
    inlined = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", markdown)
    assert 0 < len(inlined) < 60 and sum(map(len, inlined)) <= BUDGET
    assert Image.open(io.BytesIO(base64.b64decode(inlined[0]))).width == THUMBNAIL_WIDTH
    for _, _, url in figures:  # every figure reachable: a linked thumbnail or a plain link
        assert f"]({url})" in markdown
    assert "[model-59 (full figure)](s3://bucket/plots/model-59.png)" in markdown
