"""Lesson 03, value and loss: one labelled example's loss and gradient; the imbalance rule."""

from __future__ import annotations

import ipywidgets as widgets

from kto_course import figures
from kto_course.demos.base import make_demo, slider

__all__ = ["value_loss_explorer", "imbalance_explorer"]

_LABELS = [("desirable", True), ("undesirable", False)]


def value_loss_explorer() -> widgets.VBox:
    """Lesson 03's live concept demo: one labelled example; loss and dL/dr as r, z0, beta move."""
    controls = {
        "desirable": widgets.ToggleButtons(options=_LABELS, value=True, description="label"),
        "r": slider("r", 5.0, -40.0, 40.0, 0.5),
        "z0": slider("z0", 2.0, 0.0, 10.0, 0.25),
        "beta": slider("beta", 0.1, 0.02, 1.0, 0.01),
        "lambda_D": slider("lambda_D", 1.0, 0.1, 3.0, 0.05),
        "lambda_U": slider("lambda_U", 1.0, 0.1, 3.0, 0.05),
    }
    return make_demo("One labelled example: value, loss and gradient", controls,
                     figures.value_loss_figure)


def imbalance_explorer() -> widgets.VBox:
    """Lesson 03's imbalance demo: counts and weights against the [1, 4/3] rule."""
    controls = {
        # The counts keep ipywidgets' fixed label width, as they always have.
        "n_D": slider("n_D", 1000, 100, 10000, 100, label_width=""),
        "n_U": slider("n_U", 4000, 100, 10000, 100, label_width=""),
        "lambda_D": slider("lambda_D", 1.0, 0.1, 10.0, 0.05),
        "lambda_U": slider("lambda_U", 1.0, 0.1, 10.0, 0.05),
    }
    return make_demo("Class imbalance: lambda_D n_D / (lambda_U n_U)", controls,
                     figures.imbalance_figure)
