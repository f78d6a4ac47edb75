"""Lesson 06, KTO on a tiny GPT-2: each model's first adjective; a training run's live curves."""

from __future__ import annotations

import ipywidgets as widgets

from kto_course import figures
from kto_course.demos.base import live_canvas, make_demo, slider

__all__ = ["adjective_explorer", "live_training"]

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
    plot = live_canvas(fixed_layout=False)  # a frame per 10 steps: lay each one out
    box = widgets.VBox([readout, plot])
    box.add_class("kto-live-training")

    def refresh(t=None):
        with figures.drawing_on(plot.figure):
            _, text = figures.training_curves(trainer.history, trainer.evals)
        readout.value = text
        # The kernel is busy training, so it cannot answer the browser's frame requests:
        # push each frame instead.
        plot.draw()

    def callback(t):
        if len(t.history) % every == 0:
            refresh()

    refresh()  # empty axes and "no steps yet" at once, before the first step
    display(box)
    summary = trainer.train(steps, callback=callback)
    refresh()
    return summary
