"""Thin ipywidgets wrappers around ``figures``: controls in, a plot and a readout out.

Every demo is built by ``make_demo``: it returns a VBox whose ``controls`` (name -> widget),
``readout`` (an HTML widget with the numbers) and ``plot`` (an Image widget with PNG bytes)
can be driven from Python (set ``.value``, read the readout) as well as in the browser.
"""

from __future__ import annotations

from collections.abc import Callable

import ipywidgets as widgets

from kto_course import figures


def make_demo(title: str, controls: dict, render: Callable[..., tuple]) -> widgets.VBox:
    """Wire ``controls`` to ``render(**values) -> (fig, readout_html)``; re-render on change.

    Sliders should use ``continuous_update=False`` so a drag renders once, on release.
    """
    readout = widgets.HTML()
    plot = widgets.Image(format="png")

    def update(change=None):
        fig, text = render(**{name: control.value for name, control in controls.items()})
        plot.value = figures.png_bytes(fig)
        readout.value = text

    for control in controls.values():
        control.observe(update, names="value")
    update()
    box = widgets.VBox(
        [widgets.HTML(f"<b>{title}</b>"), widgets.HBox(list(controls.values())), readout, plot]
    )
    box.add_class("kto-demo")
    box.controls, box.readout, box.plot, box.update = controls, readout, plot, update
    return box


def slider(
    description: str, value: float, lo: float, hi: float, step: float
) -> widgets.FloatSlider:
    """A float slider with the course's defaults (render on release, 3 decimals)."""
    return widgets.FloatSlider(
        value=value,
        min=lo,
        max=hi,
        step=step,
        description=description,
        continuous_update=False,
        readout_format=".3g",
        style={"description_width": "initial"},
    )


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
