"""Lesson 01, the log-ratio: the tokens inside log pi(y|x); DPO's loss against its margin."""

from __future__ import annotations

import numpy as np
from matplotlib.colors import to_rgb

from kto_course import core
from kto_course.figures.base import COLOR_POLICY, COLOR_REF, bars, new_figure

__all__ = [
    "TOKEN_REDUCTIONS",
    "TOKEN_SPANS",
    "token_logprobs",
    "dpo_margin",
]

# One prompt, two completions (a short and a long one), padded into one batch. Per-token
# log-probs under the policy and the reference: invented but plausible numbers. The policy
# drifted on the prompt too, which is what makes "prompt included" visibly wrong.
_PROMPT = (("Is", -6.1, -5.6), (" 7", -4.3, -4.0), (" prime", -3.2, -2.9), ("?", -1.4, -1.2))
_COMPLETIONS = {
    "short": ((" Yes", -1.9, -0.6), (".", -0.7, -0.4)),
    "long": (
        (" Yes", -1.9, -0.7),
        (",", -2.3, -1.6),
        (" 7", -1.5, -1.2),
        (" has", -1.1, -0.8),
        (" no", -0.9, -0.6),
        (" other", -1.6, -1.1),
        (" divisors", -1.2, -0.8),
        (".", -0.5, -0.3),
    ),
}
_PAD = ("<pad>", -9.0, -8.7)  # whatever the model predicts at padding: meaningless numbers
TOKEN_REDUCTIONS = ("sum", "mean")
TOKEN_SPANS = ("completion only", "prompt + completion", "all positions (padding too)")


def token_logprobs(completion: str = "short", reduce: str = "sum", tokens: str = TOKEN_SPANS[0]):
    """Lesson 01 demo: which tokens make up log pi(y|x), and what sum vs mean does to r.

    Returns ``(fig, readout_html)``. The readout states log pi_theta(y|x), log pi_ref(y|x) and
    r as computed with the chosen tokens and reduction (``core.sequence_logps`` for the sum).
    """
    known = completion in _COMPLETIONS and reduce in TOKEN_REDUCTIONS and tokens in TOKEN_SPANS
    if not known:
        raise ValueError(
            f"completion must be one of {tuple(_COMPLETIONS)}, reduce one of {TOKEN_REDUCTIONS}, "
            f"tokens one of {TOKEN_SPANS}."
        )
    width = len(_PROMPT) + max(len(c) for c in _COMPLETIONS.values())
    body = _PROMPT + _COMPLETIONS[completion]
    rows = body + (_PAD,) * (width - len(body))
    labels = [t for t, _, _ in rows]
    logp_ref = np.array([ref for _, ref, _ in rows])
    logp_theta = np.array([theta for _, _, theta in rows])
    n_prompt, n_body = len(_PROMPT), len(body)
    position = np.arange(width)
    completion_mask = (position >= n_prompt) & (position < n_body)
    used = {
        TOKEN_SPANS[0]: completion_mask,
        TOKEN_SPANS[1]: position < n_body,
        TOKEN_SPANS[2]: np.ones(width, dtype=bool),
    }[tokens]
    seq_theta = core.sequence_logps(logp_theta, used)
    seq_ref = core.sequence_logps(logp_ref, used)
    if reduce == "mean":  # the misconception, shown on purpose: length normalisation
        seq_theta, seq_ref = seq_theta / used.sum(), seq_ref / used.sum()
    r = core.log_ratio(seq_theta, seq_ref)

    fig, ax = new_figure(width=8.4, height=3.2)
    ax.axvspan(-0.5, n_prompt - 0.5, color="#eeeeee", zorder=0)
    if n_body < width:
        ax.axvspan(n_body - 0.5, width - 0.5, color="#f7f0e0", zorder=0)
    alpha = np.where(used, 1.0, 0.2)[:, None]
    for shift, values, color, label in (
        (-0.2, logp_theta, COLOR_POLICY, "policy  log pi_theta"),
        (0.2, logp_ref, COLOR_REF, "reference  log pi_ref"),
    ):
        rgba = np.hstack([np.tile(to_rgb(color), (width, 1)), alpha])  # faded = left out
        bars(ax, position + shift, values, 0.4, color=rgba, label=label)
    ax.set_xticks(position, labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(-10, 0)
    ax.set_ylabel("token log-prob")
    ax.text(0, -9.6, "prompt", fontsize=8)
    ax.text(n_prompt, -9.6, "completion", fontsize=8)
    if n_body < width:
        ax.text(n_body, -9.6, "padding", fontsize=8)
    ax.legend(loc="lower right", fontsize=8)
    # A fixed title: the choice is in the readout, and an unchanged title lets a live frame
    # redraw only the bars (demos.base.DemoCanvas).
    ax.set_title("token log-probs: faded bars are left out of log pi(y|x)")
    how = f"{reduce} over {int(used.sum())} tokens, {tokens}"
    readout = (
        f"log pi_theta(y|x) = {seq_theta:.2f}, log pi_ref(y|x) = {seq_ref:.2f}, "
        f"<b>r = {r:.2f}</b> ({how})"
    )
    return fig, readout


def dpo_margin(beta: float = 0.1, margin: float = 2.0):
    """Lesson 01 demo: DPO's loss -log sigmoid(beta * m) and its slope against the margin m.

    ``margin`` is r_w - r_l. The slope d loss / d m = -beta * sigmoid(-beta * m) follows from
    d/dx log sigmoid(x) = sigmoid(-x). Returns ``(fig, readout_html)``.
    """
    m = np.linspace(-30.0, 30.0, 301)
    loss_curve = core.dpo_loss(m, np.zeros_like(m), beta)
    slope_curve = core.dpo_loss_grad(m, np.zeros_like(m), beta)
    loss = core.dpo_loss(np.array([margin]), np.zeros(1), beta)[0]
    slope = core.dpo_loss_grad(margin, 0.0, beta)

    fig, (ax_loss, ax_slope) = new_figure(ncols=2)
    ax_loss.plot(m, loss_curve, color=COLOR_POLICY)
    ax_loss.plot([margin], [loss], "o", color="black")
    ax_loss.set_xlabel("margin  r_w - r_l")
    ax_loss.set_ylabel("DPO loss")
    ax_loss.set_ylim(0, max(3.0, float(loss_curve.max())))
    ax_slope.plot(m, slope_curve, color=COLOR_POLICY)
    ax_slope.plot([margin], [slope], "o", color="black")
    ax_slope.axhline(-beta, color=COLOR_REF, linestyle=":", linewidth=1)
    ax_slope.set_xlabel("margin  r_w - r_l")
    ax_slope.set_ylabel("d loss / d margin")
    ax_slope.set_ylim(-1.05, 0.05)
    for ax in (ax_loss, ax_slope):
        ax.axvline(0, color=COLOR_REF, linewidth=0.8)
    readout = (
        f"beta = {beta:.2f}, margin r_w - r_l = {margin:.1f}: <b>loss = {loss:.3f}</b>, "
        f"d loss / d margin = {slope:.3f}"
    )
    return fig, readout
