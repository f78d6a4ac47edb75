"""Lesson 03, value and loss: v_D and v_U, one example's loss and gradient, the imbalance rule."""

from __future__ import annotations

import numpy as np

from kto_course import core
from kto_course.figures.base import (
    COLOR_D,
    COLOR_U,
    LABELS,
    beta_shades,
    fmt,
    mark_z0,
    new_figure,
    readout_html,
)

__all__ = [
    "R_RANGE",
    "value_loss_state",
    "value_loss_figure",
    "value_functions_figure",
    "imbalance_figure",
]

# The r axis of the value-and-loss demo: wide enough to show saturation at the smallest beta.
R_RANGE = (-40.0, 40.0)


def value_loss_state(desirable: bool, r: float, z0: float, beta: float, lambda_D: float,
                     lambda_U: float) -> dict:
    """The numbers of one labelled example (lesson 03): delta, v_y, L, dL/dr and its peak."""
    d = np.array([bool(desirable)])
    lam = lambda_D if desirable else lambda_U
    loss = float(core.kto_losses([r], z0, d, beta, lambda_D, lambda_U)[0])
    grad = float(core.kto_loss_grad([r], z0, d, beta, lambda_D, lambda_U)[0])
    peak = lam * beta / 4
    return {
        "delta": r - z0,
        "value": lam - loss,
        "loss": loss,
        "grad": grad,
        "peak": peak,
        "share_of_peak": abs(grad) / peak if peak > 0 else 0.0,
    }


def value_loss_figure(desirable: bool = True, r: float = 5.0, z0: float = 2.0, beta: float = 0.1,
                      lambda_D: float = 1.0, lambda_U: float = 1.0):
    """Lesson 03's live demo: loss and dL/dr against r for both labels, the example marked.

    Returns (fig, readout_html). The current label's curves are solid, the other label's faint.
    """
    state = value_loss_state(desirable, r, z0, beta, lambda_D, lambda_U)
    grid = np.linspace(*R_RANGE, 321)
    fig, (ax_loss, ax_grad) = new_figure(ncols=2)
    for label, color, name in LABELS:
        d = np.full(grid.shape, label)
        current = label == bool(desirable)
        style = {"color": color, "lw": 2.2 if current else 1.0, "alpha": 1.0 if current else 0.35}
        ax_loss.plot(grid, core.kto_losses(grid, z0, d, beta, lambda_D, lambda_U), label=name,
                     **style)
        ax_grad.plot(grid, core.kto_loss_grad(grid, z0, d, beta, lambda_D, lambda_U), **style)
    color = COLOR_D if desirable else COLOR_U
    for ax in (ax_loss, ax_grad):
        mark_z0(ax, z0, "r = log-ratio")
        ax.set_xlim(*R_RANGE)
    ax_loss.plot([r], [state["loss"]], "o", color=color, ms=8, mec="black")
    ax_grad.plot([r], [state["grad"]], "o", color=color, ms=8, mec="black")
    ax_grad.axhline(0, color="0.6", lw=0.8)
    sign = -1 if desirable else 1
    ax_grad.axhline(sign * state["peak"], color=color, ls=":", lw=1)
    ax_loss.set_title("loss L = lambda_y - v_y")
    ax_grad.set_title("dL/dr (z0 held fixed)")
    ax_loss.text(z0, ax_loss.get_ylim()[1], " z0", va="top", fontsize=9, color="0.3")
    ax_loss.legend(loc="center right", fontsize=8)

    label = "desirable" if desirable else "undesirable"
    direction = "raises r" if desirable else "lowers r"
    return fig, readout_html(
        f"<b>{label}</b> example; r = {fmt(r)}, z0 = {fmt(z0)}, delta = {fmt(state['delta'])}, "
        f"beta*delta = {fmt(beta * state['delta'])}",
        f"value = {fmt(state['value'])}, loss = {fmt(state['loss'])}, "
        f"dL/dr = {fmt(state['grad'])} (gradient descent {direction})",
        f"peak |dL/dr| = {fmt(state['peak'])} (lambda beta / 4, reached at delta 0), "
        f"|dL/dr| / peak = {fmt(100 * state['share_of_peak'])}%",
    )


def value_functions_figure(betas=(0.1, 0.3, 1.0)):
    """Lesson 03's opening picture: v_D and v_U against delta = r - z0 for a few beta (Eq. 7)."""
    delta = np.linspace(-30.0, 30.0, 301)
    fig, (ax_D, ax_U) = new_figure(ncols=2)
    for beta, alpha in beta_shades(betas):
        ax_D.plot(delta, core.value_desirable(delta, beta), color=COLOR_D, alpha=alpha,
                  label=f"beta = {beta:g}")
        ax_U.plot(delta, core.value_undesirable(delta, beta), color=COLOR_U, alpha=alpha,
                  label=f"beta = {beta:g}")
    for ax, title in ((ax_D, "desirable: v_D = sigmoid(beta delta)"),
                      (ax_U, "undesirable: v_U = sigmoid(-beta delta)")):
        mark_z0(ax, 0, "delta = r - z0")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    return fig


def imbalance_figure(n_D: int = 1000, n_U: int = 4000, lambda_D: float = 1.0,
                     lambda_U: float = 1.0):
    """Lesson 03's imbalance demo: each class's share of the weighted mass, and the ratio's band.

    Returns (fig, readout_html) with the ratio lambda_D n_D / (lambda_U n_U), whether it lies in
    [1, 4/3] (paper Eq. 8) and the single-weight ranges that would put it there.
    """
    advice = core.recommended_weights(n_D, n_U, lambda_D, lambda_U)
    mass_D, mass_U = lambda_D * n_D, lambda_U * n_U
    share_D = mass_D / (mass_D + mass_U)
    fig, (ax_mass, ax_ratio) = new_figure(ncols=2)
    # Shares, not raw masses: a fixed 0..1 axis, so that the bars move against the same ticks
    # (and a live frame only redraws the bars) whatever the counts and weights.
    classes = ["desirable", "undesirable"]
    ax_mass.bar(classes, [n_D / (n_D + n_U), n_U / (n_D + n_U)], color="none",
                edgecolor=[COLOR_D, COLOR_U], ls="--", label="share of the rows n")
    ax_mass.bar(classes, [share_D, 1 - share_D], color=[COLOR_D, COLOR_U], alpha=0.7,
                label="share of lambda * n")
    ax_mass.axhline(0.5, color="0.6", lw=0.8)
    ax_mass.set_ylim(0, 1.25)  # the top quarter holds the legend
    ax_mass.set_yticks([0, 0.25, 0.5, 0.75, 1])
    ax_mass.set_title("share of the weighted mass lambda * n")
    ax_mass.legend(fontsize=8, loc="upper center", ncol=2)
    low, high = core.IMBALANCE_RANGE
    ax_ratio.axvspan(low, high, color="0.8", label="[1, 4/3]")
    in_range = advice["in_range"]
    ax_ratio.plot([advice["ratio"]], [0.5], "D", ms=10,
                  color=COLOR_D if in_range else COLOR_U, mec="black")
    ax_ratio.set_xscale("log")
    ax_ratio.set_xlim(0.01, 100)
    ax_ratio.set_ylim(0, 1)
    ax_ratio.set_yticks([])
    ax_ratio.set_xlabel("lambda_D n_D / (lambda_U n_U)")
    ax_ratio.set_title("the ratio and the target band")
    ax_ratio.legend(fontsize=8, loc="upper left")

    d_lo, d_hi = advice["lambda_D_range"]
    u_lo, u_hi = advice["lambda_U_range"]
    verdict = "inside [1, 4/3]" if in_range else "OUTSIDE [1, 4/3]"
    return fig, readout_html(
        f"ratio = {fmt(advice['ratio'])} (lambda_D n_D / (lambda_U n_U), {verdict})",
        f"desirable share of the weighted mass = {100 * share_D:.1f}%",
        f"fix ONE weight: lambda_D in [{fmt(d_lo)}, {fmt(d_hi)}] with lambda_U kept at "
        f"{fmt(lambda_U)}, or lambda_U in [{fmt(u_lo)}, {fmt(u_hi)}] with lambda_D kept at "
        f"{fmt(lambda_D)}",
    )
