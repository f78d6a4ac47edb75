"""What every lesson's demo is built from: ``make_demo``, its live canvas and the course's slider.

A demo is a VBox whose ``controls`` (name -> widget), ``readout`` (an HTML widget with the
numbers) and ``plot`` (an ipympl canvas showing ``figure``) can be driven from Python (set
``.value``, read the readout, ``figures.png_bytes(box.figure)``) as well as in the browser.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import ipywidgets as widgets
import numpy as np
from ipympl.backend_nbagg import Canvas, FigureManager
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg
from matplotlib.figure import Figure
from matplotlib.layout_engine import ConstrainedLayoutEngine
from matplotlib.legend import Legend
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from kto_course import figures, system

__all__ = ["make_demo", "slider", "live_canvas"]

SLIDER_WIDTH = "460px"  # label, track and readout together; two fit side by side
DPI = 80  # the course's figures are sized in inches for this (as figures.png_bytes renders them)


class DemoCanvas(Canvas):
    """An ipympl canvas that draws a demo's latest state once per frame the browser asks for.

    A lone move draws at once. Moves that follow a frame closely only mark the demo stale
    (``request``): the browser asks for one frame at a time (ipympl waits for each image before
    asking again), and each frame first brings the figure and readout up to date with the
    controls' values at that moment. So a fast drag or five quick key presses never queue
    redraws of values already left behind. A frame whose axes look as before (limits, ticks,
    titles) redraws only the demo's artists over a saved image of those axes (matplotlib's
    blitting); axes and legends that look as in an earlier frame come from that frame's
    saved pixels. ``fixed_layout=False`` draws every frame whole and lays it out.
    """

    RETRY_MS = 50  # the browser ignores a frame request while an earlier frame is on its way
    IDLE_S = 0.25  # no frame for this long: the last one has surely reached the browser
    RETRIES = 40  # then ask again, for about 2 s (a closed tab never answers)

    def __init__(self, figure, update: Callable[[], None] | None = None, fixed_layout=True):
        super().__init__(figure)
        self.fixed_layout = fixed_layout
        self.header_visible = self.footer_visible = self.resizable = False
        self.toolbar_visible = False  # pan and zoom would fight the controls
        FigureManager(self, 0)  # ipympl draws through a manager; not registered with pyplot
        self.update, self.stale_state, self._retries, self._drawn_at = update, False, 0, 0.0
        self._laid_out_for, self._background, self._background_state = (), None, ()
        self._backgrounds = {}  # the axes' look (``_background_state``) -> their saved image
        self._legends = {}  # a legend's look -> its pixels (``_draw_legend``)
        self._layouts = {}  # tick label widths -> the axes' places constrained layout gave them
        self._retry = self.new_timer(interval=self.RETRY_MS)
        self._retry.single_shot = True
        self._retry.add_callback(self._ask_again)

    def request(self) -> None:
        """The controls moved: redraw now if the browser has had the last frame a while,
        else at its next frame request; without a browser, only update the figure."""
        if self.syncing_data_url:  # no browser has attached (nbclient, Python): update now
            self.update()
            return
        if not self.stale_state and time.monotonic() - self._drawn_at > self.IDLE_S:
            self.update()  # a lone move: skip the round trip of asking the browser first
            self.draw()
            return
        self.stale_state, self._retries = True, self.RETRIES
        self.draw_idle()
        self._retry.start()

    def _ask_again(self) -> None:
        if self.stale_state and self._retries > 0:
            self._retries -= 1
            self.draw_idle()
            self._retry.start()

    def handle_draw(self, event):
        if self.stale_state:
            self.stale_state = False
            self.update()
        self.draw()

    def draw(self):
        # Every frame whole: the browser drops a frame that arrives while the one before is
        # still decoding, and a frame of differences would then leave traces of the old one.
        self._force_full = True
        if self.fixed_layout:
            self._draw_frame()
        else:
            super().draw()
        self._drawn_at = time.monotonic()

    def _draw_frame(self, relayout: bool = True):
        """Redraw only what a frame changes when the axes look as before (their limits, ticks,
        titles and labels): over a saved image of the rest, which is most of a frame's cost.
        Otherwise draw the axes, save them, and draw the frame's artists over them (after at
        most one new layout: ``relayout``)."""
        fig = self.figure
        state = _background_state(fig)
        if state != self._background_state:
            state = self._seen_before(fig) or state
        if self._background is None or state != self._background_state:
            contents = [a for ax in fig.axes for a in figures.frame_artists(ax)]
            for artist in contents:
                artist.set_animated(True)  # a full draw leaves them out
            try:
                FigureCanvasAgg.draw(self)
            finally:
                for artist in contents:
                    artist.set_animated(False)
            # Laid out once per width of the tick labels (0.25 -> 0.0025 would be clipped at
            # the edge), then the axes stay put: constrained layout doubles a frame's cost.
            widths = _tick_label_widths(fig)
            if isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine):
                fig.set_layout_engine("none")
                self._layouts[widths] = [ax.get_position() for ax in fig.axes]
            elif relayout and widths != self._laid_out_for:
                if widths in self._layouts:  # seen before: the same places as then
                    _place(fig, self._layouts[widths])
                else:
                    fig.set_layout_engine("constrained")
                self._laid_out_for, self._background = widths, None
                self._draw_frame(relayout=False)  # new places can change the ticks: keep them
                return
            self._laid_out_for = widths
            self._background = self.copy_from_bbox(fig.bbox)
            self._background_state = _background_state(fig)
            if len(self._backgrounds) >= 8:  # a demo whose axes keep changing
                self._backgrounds.clear()
            self._backgrounds[self._background_state] = self._background
        else:
            self.restore_region(self._background)
        renderer = self.get_renderer()
        for ax in fig.axes:
            for artist in figures.frame_artists(ax):
                if isinstance(artist, Legend):
                    self._draw_legend(artist, renderer)
                else:
                    artist.draw(renderer)
            for spine in ax.spines.values():  # the axes' frame stays on top, as in a full draw
                spine.draw(renderer)
        self.blit()  # ipympl: send the new frame

    def _seen_before(self, fig) -> tuple | None:
        """The axes look as in an earlier frame, in one of the layouts seen (lesson 01's
        completion toggled back): put them where they were then, make that frame's saved image
        the background and return its state. Else leave the axes where they are: None."""
        if isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine):
            return None  # the first frame: nothing seen yet
        here = [ax.get_position() for ax in fig.axes]
        for widths, positions in self._layouts.items():
            if len(positions) != len(here):
                continue
            _place(fig, positions)
            # The ticks depend on the axes' size: only a layout made for them counts.
            state = _background_state(fig) if _tick_label_widths(fig) == widths else None
            if state in self._backgrounds:
                self._laid_out_for, self._background = widths, self._backgrounds[state]
                self._background_state = state
                return state
        _place(fig, here)
        return None

    def _draw_legend(self, legend, renderer) -> None:
        """Draw ``legend`` from its pixels of an earlier frame when it looks the same (its
        place, texts and handles): a demo's legend rarely changes, and its text is much of a
        frame's cost (lesson 05's pair_margins: 31 -> 20 ms a frame). Composited over this
        frame's data, as a full draw draws it."""
        look = _legend_look(legend, renderer)
        if look is None:  # a handle this cache does not know how to compare
            legend.draw(renderer)
            return
        if look not in self._legends:
            alone = RendererAgg(int(renderer.width), int(renderer.height), renderer.dpi)
            legend.draw(alone)
            x0, y0, x1, y1 = look[0]
            # The buffer's rows count from the top; draw_image's from the bottom.
            top = int(renderer.height) - y1
            pixels = np.asarray(alone.buffer_rgba())[top : top + y1 - y0, x0:x1]
            pixels = np.ascontiguousarray(pixels[::-1])
            if len(self._legends) > 64:  # a demo whose legend keeps changing
                self._legends.clear()
            self._legends[look] = (x0, y0, pixels)
        x0, y0, pixels = self._legends[look]
        gc = renderer.new_gc()
        renderer.draw_image(gc, x0, y0, pixels)
        gc.restore()


def _place(fig, positions) -> None:
    """Put each axes of ``fig`` at its position, and keep it in the layout: ``set_position``
    alone takes an axes out of constrained layout, and a later new layout would skip it."""
    for ax, position in zip(fig.axes, positions, strict=True):
        ax.set_position(position)
        ax.set_in_layout(True)


def _legend_look(legend, renderer) -> tuple | None:
    """What a legend's pixels depend on: its box on the canvas (the whole pixels it covers,
    with a margin for antialiasing, first), its texts, and each handle's colours and style;
    None for a handle that is neither a line nor a patch."""
    box = legend.get_window_extent(renderer)
    x0, y0 = max(0, int(np.floor(box.x0)) - 2), max(0, int(np.floor(box.y0)) - 2)
    x1 = min(int(renderer.width), int(np.ceil(box.x1)) + 2)
    y1 = min(int(renderer.height), int(np.ceil(box.y1)) + 2)
    handles = []
    for handle in legend.legend_handles:
        if isinstance(handle, Line2D):
            handles.append(("line", str(handle.get_color()), str(handle.get_linestyle()),
                            handle.get_linewidth(), str(handle.get_marker()),
                            handle.get_markersize(), str(handle.get_markerfacecolor()),
                            handle.get_alpha()))  # fmt: skip
        elif isinstance(handle, Patch):
            handles.append(("patch", tuple(handle.get_facecolor()),
                            tuple(handle.get_edgecolor()), handle.get_linewidth(),
                            str(handle.get_hatch()), handle.get_alpha()))  # fmt: skip
        else:
            return None
    texts = tuple((t.get_text(), str(t.get_color())) for t in legend.get_texts())
    place = tuple(np.round(box.bounds, 3))  # a legend a fraction of a pixel away renders anew
    return ((x0, y0, x1, y1), place, texts, legend.get_title().get_text(), tuple(handles))


def _background_state(fig) -> tuple:
    """What a saved background shows: each axes' place, limits, titles, labels, tick labels."""
    def rounded(values):  # autoscaled limits wobble in the last bits from frame to frame
        return tuple(np.round(np.asarray(values, dtype=float), 9))

    state = [rounded(fig.get_size_inches()), fig.dpi]
    for ax in fig.axes:
        state += [rounded(ax.get_position().bounds), rounded(ax.get_xlim()),
                  rounded(ax.get_ylim()), ax.axison, ax.get_xlabel(), ax.get_ylabel()]
        state += [ax.get_title(loc) for loc in ("left", "center", "right")]
        for axis in (ax.xaxis, ax.yaxis):
            state.append(rounded(axis.get_majorticklocs()))
            state += [(t.get_text(), t.get_rotation()) for t in axis.get_majorticklabels()]
    return tuple(state)


def _tick_label_widths(fig) -> tuple:
    """The longest tick label of every axis, in characters: what the layout made room for."""
    return tuple(
        max((len(label.get_text()) for label in axis.get_ticklabels()), default=0)
        for ax in fig.axes
        for axis in (ax.xaxis, ax.yaxis)
    )


def live_canvas(update: Callable[[], None] | None = None, fixed_layout=True) -> DemoCanvas:
    """An empty figure on a ``DemoCanvas``; draw on it inside ``figures.drawing_on``.

    ``fixed_layout=False`` lays out every frame (a plot whose tick labels grow as it fills).
    """
    return DemoCanvas(Figure(dpi=DPI), update, fixed_layout)


def make_demo(title: str, controls: dict, render: Callable[..., tuple]) -> widgets.VBox:
    """Wire ``controls`` to ``render(**values) -> (fig, readout_html)`` drawn on one canvas.

    ``render`` draws with ``figures.new_figure``, which hands it the demo's own figure: the
    canvas keeps its figure and layout, and only the browser's next frame is drawn.
    """
    readout = widgets.HTML()

    def update():
        with figures.drawing_on(plot.figure):
            _, text = render(**{name: control.value for name, control in controls.items()})
        readout.value = text

    plot = live_canvas(update)
    for control in controls.values():
        control.observe(lambda change: plot.request(), names="value")
    update()
    # The first frame now: the page shows a plot, never an empty box. Under nbgrader no page
    # ever shows it: skipping it saves 0.1-0.2 s per demo of every graded notebook.
    if not system.nbgrader_executing():
        plot.draw()
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
    box.controls, box.readout, box.plot, box.figure = controls, readout, plot, plot.figure
    box.update = update
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
    """A slider with the course's defaults: the plot follows the drag (``DemoCanvas`` draws
    only the latest value, so a drag never queues redraws).

    An int ``value`` gives an IntSlider (a count, a batch size, a seed: step 1 unless given);
    a float one a FloatSlider that shows 3 significant digits. ``label_width="initial"`` sizes
    the label to its text; ``""`` keeps ipywidgets' fixed label width.
    """
    options = {
        "value": value,
        "min": lo,
        "max": hi,
        "description": description,
        "continuous_update": True,
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
