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


def token_logprobs() -> widgets.VBox:
    """Lesson 01: which tokens make up log pi(y|x); sum against mean; prompt and padding."""
    controls = {
        "completion": widgets.Dropdown(
            options=["short", "long"], value="short", description="completion"
        ),
        "reduce": widgets.ToggleButtons(
            options=list(figures.TOKEN_REDUCTIONS), value="sum", description="reduce"
        ),
        "tokens": widgets.Dropdown(
            options=list(figures.TOKEN_SPANS),
            value=figures.TOKEN_SPANS[0],
            description="tokens",
            style={"description_width": "initial"},
        ),
    }
    return make_demo("Sequence log-probs from token log-probs", controls, figures.token_logprobs)


def dpo_margin() -> widgets.VBox:
    """Lesson 01: DPO's loss and its slope as the margin r_w - r_l and beta move."""
    controls = {
        "beta": slider("beta", 0.1, 0.02, 1.0, 0.01),
        "margin": slider("margin r_w - r_l", 2.0, -30.0, 30.0, 0.5),
    }
    return make_demo("DPO: loss against the margin", controls, figures.dpo_margin)


# =============================================================================================
# Lesson 02 (owned by the lessons 01-02 author)
# =============================================================================================


def _int_slider(description: str, value: int, lo: int, hi: int) -> widgets.IntSlider:
    return widgets.IntSlider(
        value=value,
        min=lo,
        max=hi,
        description=description,
        continuous_update=False,
        style={"description_width": "initial"},
    )


def z0_spread() -> widgets.VBox:
    """Lesson 02: the spread of the microbatch z0 estimate against the batch size; the clamp."""
    controls = {
        "batch_size": _int_slider("batch size", 8, 2, 128),
        "true_mean": slider("true mean of r'", 0.3, -1.0, 2.0, 0.05),
        "spread": slider("spread of r'", 1.0, 0.2, 4.0, 0.1),
        "clamp": widgets.ToggleButtons(options=list(figures.Z0_CLAMP), value=figures.Z0_CLAMP[0]),
    }
    return make_demo("How much does z0 scatter from microbatch to microbatch?", controls,
                     figures.z0_spread)


def mismatched_pairs() -> widgets.VBox:
    """Lesson 02: which completion each prompt gets: cyclic shifts against reversal."""
    controls = {
        "batch_size": _int_slider("batch size", 5, 1, 9),
        "method": widgets.ToggleButtons(options=list(figures.PAIRINGS), value=figures.PAIRINGS[0]),
    }
    return make_demo("Mismatched pairs in a microbatch", controls, figures.mismatched_pairs)


# =============================================================================================
# Lesson 03 (owned by the lessons 03-04 author)
# =============================================================================================

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
        "n_D": widgets.IntSlider(value=1000, min=100, max=10000, step=100, description="n_D",
                                 continuous_update=False),
        "n_U": widgets.IntSlider(value=4000, min=100, max=10000, step=100, description="n_U",
                                 continuous_update=False),
        "lambda_D": slider("lambda_D", 1.0, 0.1, 10.0, 0.05),
        "lambda_U": slider("lambda_U", 1.0, 0.1, 10.0, 0.05),
    }
    return make_demo("Class imbalance: lambda_D n_D / (lambda_U n_U)", controls,
                     figures.imbalance_figure)

# =============================================================================================
# Lesson 04 (owned by the lessons 03-04 author)
# =============================================================================================


def gradient_batch_explorer() -> widgets.VBox:
    """Lesson 04's demo: per-example |dL/dr| across a batch, and how beta concentrates it."""
    controls = {
        "beta": slider("beta", 0.1, 0.02, 1.0, 0.01),
        "z0": slider("z0", 2.0, 0.0, 10.0, 0.25),
        "r_hard": slider("hard example r", -30.0, -60.0, 10.0, 1.0),
    }
    return make_demo("Where a batch's updates go", controls, figures.gradient_batch_figure)

# =============================================================================================
# Lesson 05 (owned by the lesson 05 author)
# =============================================================================================


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
        "seed": widgets.IntSlider(
            value=0, min=0, max=20, description="shuffle seed", continuous_update=False,
            style={"description_width": "initial"},
        ),
    }
    return make_demo("Which labels share a microbatch?", controls, figures.batch_order)

# =============================================================================================
# Lesson 06 (owned by the lesson 06 author)
# =============================================================================================


def adjective_explorer(policy=None, reference=None, tokenizer=None) -> widgets.VBox:
    """Lesson 06: which first adjective each model picks, for a rating, an item, a temperature.

    Exact next-token probabilities (one forward pass each), so it is cheap and deterministic.
    Without arguments it loads the shipped reference and compares it with itself.
    """
    from kto_course.lm import load_reference, sampling, task

    if reference is None or tokenizer is None:
        reference, tokenizer = load_reference()
    policy = reference if policy is None else policy
    words = task.POSITIVE + task.NEGATIVE

    def render(rating, item, temperature):
        prompt = task.make_prompt(item, rating)
        return figures.adjective_bars(
            words,
            sampling.adjective_probs(reference, tokenizer, prompt, temperature),
            sampling.adjective_probs(policy, tokenizer, prompt, temperature),
            wanted_positive=task.RATINGS[rating],
            n_positive=len(task.POSITIVE),
        )

    controls = {
        "rating": widgets.ToggleButtons(options=list(task.RATINGS), value="5 stars",
                                        description="rating"),  # fmt: skip
        "item": widgets.Dropdown(options=list(task.ITEMS), value=task.ITEMS[0],
                                 description="item"),  # fmt: skip
        "temperature": slider("temperature", 1.0, 0.3, 2.0, 0.1),
    }
    return make_demo("Reference and policy: the first adjective", controls, render)


def live_training(trainer, steps: int | None = None, every: int = 10) -> dict:
    """Lesson 06: run ``trainer.train`` while a plot of its metrics refreshes every ``every``
    steps (a thin wrapper around ``figures.training_curves``). Returns the run's summary."""
    from IPython.display import display

    readout = widgets.HTML()
    plot = widgets.Image(format="png")
    box = widgets.VBox([readout, plot])
    box.add_class("kto-live-training")

    def refresh(t=None):
        fig, text = figures.training_curves(trainer.history, trainer.evals)
        plot.value = figures.png_bytes(fig)
        readout.value = text

    def callback(t):
        if len(t.history) % every == 0:
            refresh()

    display(box)
    summary = trainer.train(steps, callback=callback)
    refresh()
    return summary
