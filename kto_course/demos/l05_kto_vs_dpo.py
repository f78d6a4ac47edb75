"""Lesson 05, KTO against DPO: one pair both ways; which labels share a microbatch."""

from __future__ import annotations

import ipywidgets as widgets

from kto_course import figures
from kto_course.demos.base import make_demo, slider

__all__ = ["pair_margins", "batch_order"]


def pair_margins() -> widgets.VBox:
    """Lesson 05: one preference pair, DPO's pairwise margin against KTO's pointwise deltas."""
    controls = {
        "margin": slider("margin r_w - r_l", 2.0, -10.0, 10.0, 0.5),
        "shift": slider("shift both r", 0.0, -15.0, 15.0, 0.5),
        "z0": slider("z0", 1.0, 0.0, 5.0, 0.25),
        "beta": slider("beta", 0.5, 0.05, 1.0, 0.05),
    }
    return make_demo("One pair, two losses: DPO against KTO", controls, figures.pair_margins)


def batch_order() -> widgets.VBox:
    """Lesson 05: the label mix of sequential microbatches, chosen-first against shuffled."""
    controls = {
        "order": widgets.ToggleButtons(
            options=list(figures.BATCH_ORDERS), value=figures.BATCH_ORDERS[0], description="order"
        ),
        "batch_size": widgets.Dropdown(
            options=[2, 4, 8, 16, 32], value=8, description="microbatch"
        ),
        "seed": slider("shuffle seed", 0, 0, 20),
    }
    return make_demo("Which labels share a microbatch?", controls, figures.batch_order)
