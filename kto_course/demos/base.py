"""What every lesson's demo is built from: ``make_demo`` and the course's one slider.

A demo is a VBox whose ``controls`` (name -> widget), ``readout`` (an HTML widget with the
numbers) and ``plot`` (an Image widget with PNG bytes) can be driven from Python (set
``.value``, read the readout) as well as in the browser.
"""

from __future__ import annotations

from collections.abc import Callable

import ipywidgets as widgets

from kto_course import figures

__all__ = ["make_demo", "slider"]

SLIDER_WIDTH = "460px"  # label, track and readout together; two fit side by side


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
        [
            widgets.HTML(f"<b>{title}</b>"),
            # Wrap onto several rows rather than squeezing six sliders into one.
            widgets.HBox(list(controls.values()), layout=widgets.Layout(flex_flow="row wrap")),
            readout,
            plot,
        ]
    )
    box.add_class("kto-demo")
    box.controls, box.readout, box.plot, box.update = controls, readout, plot, update
    return box


def slider(
    description: str,
    value: float,
    lo: float,
    hi: float,
    step: float | None = None,
    *,
    label_width: str = "initial",
) -> widgets.FloatSlider | widgets.IntSlider:
    """A slider with the course's defaults: it renders on release, not during a drag.

    An int ``value`` gives an IntSlider (a count, a batch size, a seed: step 1 unless given);
    a float one a FloatSlider that shows 3 significant digits. ``label_width="initial"`` sizes
    the label to its text; ``""`` keeps ipywidgets' fixed label width.
    """
    options = {
        "value": value,
        "min": lo,
        "max": hi,
        "description": description,
        "continuous_update": False,
        "style": {"description_width": label_width},
        # ipywidgets' default (300 px with the label and readout) left a 103 px track for
        # -30..30: too short to set a value by dragging.
        "layout": widgets.Layout(width=SLIDER_WIDTH),
    }
    if step is not None:
        options["step"] = step
    if isinstance(value, int) and not isinstance(value, bool):
        return widgets.IntSlider(**options)
    return widgets.FloatSlider(readout_format=".3g", **options)
