"""What every lesson's figures share: the colours, a figure, its PNG, and how a readout reads.

No widgets here (``kto_course.demos`` wires controls to the figures). A helper that two lessons
use lives here; one that a single lesson uses lives in that lesson's module.
"""

from __future__ import annotations

import io

import numpy as np
from matplotlib.figure import Figure

__all__ = [
    "COLOR_D",
    "COLOR_U",
    "COLOR_POLICY",
    "COLOR_REF",
    "LABELS",
    "new_figure",
    "png_bytes",
    "readout_html",
    "fmt",
    "beta_shades",
    "mark_z0",
]

# Colours used for the two labels everywhere in the course.
COLOR_D = "#1b7837"  # desirable: green
COLOR_U = "#b2182b"  # undesirable: red
# The policy and the reference, wherever both appear (lessons 01 and 02).
COLOR_POLICY = "#2166ac"
COLOR_REF = "#999999"

# Each label with its colour and name, desirable first.
LABELS = ((True, COLOR_D, "desirable"), (False, COLOR_U, "undesirable"))


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


def readout_html(*lines: str) -> str:
    """A demo's readout: its lines, one under the other, as HTML.

    Keep each number as "name = number" so that the learner (and the browser tests, which
    parse readouts) can read it off.
    """
    return "<br>".join(lines)


def fmt(x: float) -> str:
    """A number for a readout: 3 significant digits; whole above 1000, scientific below 1e-3."""
    if abs(x) >= 1000:
        return f"{x:.0f}"
    return f"{x:.3g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


def beta_shades(betas):
    """``(beta, alpha)`` for a family of curves, one per beta: the largest beta darkest."""
    return zip(betas, np.linspace(0.35, 1.0, len(betas)), strict=True)


def mark_z0(ax, at: float, xlabel: str) -> None:
    """The dashed line at the reference point (``at``: z0 on an r axis, 0 on a delta axis)."""
    ax.axvline(at, color="0.4", ls="--", lw=1)
    ax.set_xlabel(xlabel)
