"""Lesson 04, gradients and saturation: where a batch's updates go, and how beta moves them."""

from __future__ import annotations

import ipywidgets as widgets

from kto_course import figures
from kto_course.demos.base import make_demo, slider

__all__ = ["gradient_batch_explorer"]


def gradient_batch_explorer() -> widgets.VBox:
    """Lesson 04's demo: per-example |dL/dr| across a batch, and how beta concentrates it."""
    controls = {
        "beta": slider("beta", 0.1, 0.02, 1.0, 0.01),
        "z0": slider("z0", 2.0, 0.0, 10.0, 0.25),
        "r_hard": slider("hard example r", -30.0, -60.0, 10.0, 1.0),
    }
    return make_demo("Where a batch's updates go", controls, figures.gradient_batch_figure)
