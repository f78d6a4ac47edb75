"""What every lesson's figures share: the colours, a figure, its PNG, and how a readout reads.

No widgets here (``kto_course.demos`` wires controls to the figures). A helper that two lessons
use lives here; one that a single lesson uses lives in that lesson's module.
"""

from __future__ import annotations

import contextlib
import contextvars
import io

import numpy as np
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.ticker import AutoLocator, NullLocator, ScalarFormatter

__all__ = [
    "COLOR_D",
    "COLOR_U",
    "COLOR_POLICY",
    "COLOR_REF",
    "LABELS",
    "new_figure",
    "bars",
    "drawing_on",
    "frame_artists",
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


# The figure a live demo draws on (``drawing_on``); None: every call gets a new figure.
_target: contextvars.ContextVar[Figure | None] = contextvars.ContextVar("target", default=None)


def new_figure(ncols: int = 1, width: float = 4.2, height: float = 3.2):
    """A figure that is NOT registered with pyplot, so demos never leak open figures.

    Inside ``drawing_on(fig)`` it returns ``fig`` itself with its axes emptied: a live demo
    redraws the same axes, laid out once, instead of building a figure per frame.
    """
    fig = _target.get()
    if fig is None:
        fig = Figure(figsize=(width * ncols, height), layout="constrained")
        return fig, fig.subplots(1, ncols)
    if len(fig.axes) != ncols:  # the first frame (or a frame of another shape): lay it out
        fig.clear()
        fig.set_size_inches(width * ncols, height)
        fig.set_layout_engine("constrained")
        fig.subplots(1, ncols)
    for ax in fig.axes:
        _empty(ax)
    return fig, fig.axes[0] if ncols == 1 else np.array(fig.axes)


def _empty(ax) -> None:
    """Take a frame's contents off ``ax`` but keep its ticks (``ax.cla()`` would make the next
    draw build every tick again: a third of a frame), and undo what a frame may have set."""
    for container in list(ax.containers):  # bars (and their legend entry) with their patches
        container.remove()
    for artist in frame_artists(ax):
        artist.remove()
    for loc in ("left", "center", "right"):
        ax.set_title("", loc=loc)
    ax.set_xlabel("")
    ax.set_ylabel("")
    ax.set_axis_on()
    if ax.get_xscale() != "linear":
        ax.set_xscale("linear")
    if ax.get_yscale() != "linear":
        ax.set_yscale("linear")
    for axis in (ax.xaxis, ax.yaxis):
        axis.set_inverted(False)
        axis.set_major_locator(AutoLocator())
        axis.set_major_formatter(ScalarFormatter())
        axis.set_minor_locator(NullLocator())
    ax.relim()  # no data yet: the next frame's artists set the limits
    ax.set_autoscale_on(True)
    ax.set_prop_cycle(None)


def bars(ax, x, height, width=0.8, *, bottom=0.0, align="center", color=COLOR_POLICY,
         edgecolor="none", linewidth=0.0, alpha=None, label=None) -> PolyCollection:
    """``ax.bar`` as ONE artist (a PolyCollection) instead of a Rectangle per bar.

    A live demo's frame builds and draws it several times faster (lessons 01, 04, 05 and 06
    redraw 20-40 bars per frame). ``color``, ``edgecolor`` and ``linewidth`` take one value or
    one per bar, as ``ax.bar`` does.
    """
    x, height, width, bottom = np.broadcast_arrays(
        *(np.asarray(v, dtype=float) for v in (x, height, width, bottom))
    )
    left = x - width / 2 if align == "center" else x
    right, top = left + width, bottom + height
    corners = [(left, bottom), (left, top), (right, top), (right, bottom)]
    verts = np.stack([np.stack(corner, axis=-1) for corner in corners], axis=1)
    collection = PolyCollection(verts, facecolors=color, edgecolors=edgecolor,
                                linewidths=linewidth, alpha=alpha, label=label)  # fmt: skip
    # Like ax.bar: the bars' feet stick to the axis (no margin below a bar chart's 0).
    collection.sticky_edges.y.extend(np.unique(bottom).tolist())
    ax.add_collection(collection)
    ax.autoscale_view()  # matplotlib < 3.11 (pyproject allows 3.8) does not rescale the view here
    return collection


def frame_artists(ax) -> list:
    """What a frame drew on ``ax`` (its data, texts and legend), in drawing order; not the
    axes' own title, labels, ticks and spines."""
    legend = [ax.get_legend()] if ax.get_legend() is not None else []
    found = [*ax.patches, *ax.collections, *ax.lines, *ax.images, *ax.tables, *ax.texts, *legend]
    return sorted(found, key=lambda artist: artist.get_zorder())


@contextlib.contextmanager
def drawing_on(fig: Figure):
    """Make ``new_figure`` hand out ``fig`` (a live demo's canvas) while the block runs."""
    token = _target.set(fig)
    try:
        yield fig
    finally:
        _target.reset(token)


def png_bytes(fig) -> bytes:
    """Render a figure to PNG bytes (a static figure in a notebook; a demo's frame in tests)."""
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
