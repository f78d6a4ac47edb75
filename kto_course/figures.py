"""Pure functions that compute and draw what the demos show, from plain parameters.

No widgets here: each function takes numbers, returns a matplotlib Figure and/or plain values,
and can be tested without a browser. ``demos.py`` wires controls to them. Sections follow the
lessons.
"""

from __future__ import annotations

import io

import numpy as np  # noqa: F401  (used by the lesson sections below)
from matplotlib.figure import Figure

from kto_course import core  # noqa: F401

# Colours used for the two labels everywhere in the course.
COLOR_D = "#1b7837"  # desirable: green
COLOR_U = "#b2182b"  # undesirable: red


def new_figure(ncols: int = 1, width: float = 4.2, height: float = 3.2):
    """A figure that is NOT registered with pyplot, so demos never leak open figures."""
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    axes = fig.subplots(1, ncols)
    return fig, axes


def png_bytes(fig) -> bytes:
    """Render a figure to PNG bytes (what a demo's Image widget shows)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    return buffer.getvalue()


# =============================================================================================
# Lesson 01 (owned by the lessons 01-02 author)
# =============================================================================================

# =============================================================================================
# Lesson 02 (owned by the lessons 01-02 author)
# =============================================================================================

# =============================================================================================
# Lesson 03 (owned by the lessons 03-04 author)
# =============================================================================================

# =============================================================================================
# Lesson 04 (owned by the lessons 03-04 author)
# =============================================================================================

# =============================================================================================
# Lesson 05 (owned by the lesson 05 author)
# =============================================================================================

# =============================================================================================
# Lesson 06 (owned by the lesson 06 author)
# =============================================================================================
