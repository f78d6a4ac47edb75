"""Lesson 01, the log-ratio: the tokens inside log pi(y|x); DPO's loss against its margin."""

from __future__ import annotations

import ipywidgets as widgets

from kto_course import figures
from kto_course.demos.base import make_demo, slider

__all__ = ["token_logprobs", "dpo_margin"]


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
