"""Lesson 02, the KL reference point: how the microbatch z0 scatters; which pairs estimate it."""

from __future__ import annotations

import ipywidgets as widgets

from kto_course import figures
from kto_course.demos.base import make_demo, slider

__all__ = ["z0_spread", "mismatched_pairs"]


def z0_spread() -> widgets.VBox:
    """Lesson 02: the spread of the microbatch z0 estimate against the batch size; the clamp."""
    controls = {
        "batch_size": slider("batch size", 8, 2, 128),
        "true_mean": slider("true mean of r'", 0.3, *figures.TRUE_MEAN_RANGE, 0.05),
        "spread": slider("spread of r'", 1.0, 0.2, 4.0, 0.1),
        "clamp": widgets.ToggleButtons(options=list(figures.Z0_CLAMP), value=figures.Z0_CLAMP[0]),
    }
    return make_demo("How much does z0 scatter from microbatch to microbatch?", controls,
                     figures.z0_spread)


def mismatched_pairs() -> widgets.VBox:
    """Lesson 02: which completion each prompt gets: cyclic shifts against reversal."""
    controls = {
        "batch_size": slider("batch size", 5, 1, 9),
        "method": widgets.ToggleButtons(options=list(figures.PAIRINGS), value=figures.PAIRINGS[0]),
    }
    return make_demo("Mismatched pairs in a microbatch", controls, figures.mismatched_pairs)
