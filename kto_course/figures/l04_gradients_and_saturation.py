"""Lesson 04, gradients and saturation: the gradient bump, for KTO's value function and others;
where a batch's updates go."""

from __future__ import annotations

import numpy as np

from kto_course import core
from kto_course.figures.base import (
    COLOR_D,
    COLOR_U,
    LABELS,
    bars,
    beta_shades,
    fmt,
    mark_z0,
    new_figure,
    readout_html,
)

__all__ = [
    "BATCH_SIZE",
    "gradient_bump_figure",
    "value_bumps",
    "value_bumps_figure",
    "gradient_batch",
    "gradient_batch_figure",
]


def gradient_bump_figure(betas=(0.1, 0.3, 1.0)):
    """Lesson 04's opening picture: dL/dr against delta for both labels and a few beta."""
    delta = np.linspace(-30.0, 30.0, 601)
    fig, ax = new_figure(ncols=1, width=6.0)
    for beta, alpha in beta_shades(betas):
        for label, color, _ in LABELS:
            d = np.full(delta.shape, label)
            ax.plot(delta, core.kto_loss_grad(delta, 0.0, d, beta), color=color, alpha=alpha,
                    label=f"beta = {beta:g}" if label else None)
    ax.text(0.02, 0.95, "undesirable: dL/dr > 0", color=COLOR_U, transform=ax.transAxes,
            va="top", fontsize=9)
    ax.text(0.02, 0.05, "desirable: dL/dr < 0", color=COLOR_D, transform=ax.transAxes,
            va="bottom", fontsize=9)
    ax.axhline(0, color="0.6", lw=0.8)
    mark_z0(ax, 0, "delta = r - z0")
    ax.set_ylabel("dL/dr")
    ax.set_title("the gradient is a bump centred on the baseline", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    return fig


def value_bumps(beta: float = 0.1, delta=None) -> dict:
    """|dL/dr| of a desirable example against delta for KTO's sigmoid and three other value
    functions, by autograd through ``torch_ops.halo_losses`` (lesson 04, after exercise 2).

    ``{name: (delta, |dL/dr|)}``; no formula per value function: autograd follows each one.
    """
    import torch

    from kto_course import torch_ops

    values = {
        "sigmoid (KTO)": torch.sigmoid,
        "tanh": torch.tanh,
        "arctan": torch.atan,
        "log-sigmoid (inside DPO's loss)": torch.nn.functional.logsigmoid,
    }
    grid = np.linspace(-60.0, 60.0, 601) if delta is None else np.asarray(delta, dtype=float)
    out = {}
    for name, value in values.items():
        d = torch.tensor(grid, dtype=torch.float64, requires_grad=True)
        losses = torch_ops.halo_losses(d, 0.0, torch.ones(d.shape, dtype=torch.bool), beta,
                                       value=value)
        (g,) = torch.autograd.grad(losses.sum(), d)  # each loss depends on its own delta only
        out[name] = (grid, np.abs(g.numpy()))
    return out


def value_bumps_figure(beta: float = 0.1):
    """Lesson 04: saturation is the value function's. |dL/dr| of a desirable example, each
    curve divided by its own peak, on a log scale (``value_bumps``)."""
    fig, ax = new_figure(ncols=1, width=6.0)
    for (name, (delta, g)), color in zip(value_bumps(beta).items(),
                                         (COLOR_D, "#762a83", "#e08214", "#2166ac"), strict=True):
        ax.plot(delta, g / g.max(), color=color, label=name)
    ax.set_yscale("log")
    ax.set_ylim(1e-5, 2.0)
    mark_z0(ax, 0, "delta = r - z0")
    ax.set_ylabel("|dL/dr| / its peak")
    ax.set_title(f"one desirable example, beta = {beta:g}: how fast does each push fade?",
                 fontsize=10)
    ax.legend(fontsize=8, loc="lower center")
    return fig


# The batch of the gradient demo: fixed, so that moving a control changes one thing only.
_BATCH_SEED = 4
BATCH_SIZE = 24  # ordinary examples, half per label; the hard desirable one comes on top


def gradient_batch(beta: float, z0: float, r_hard: float) -> dict:
    """Per-example |dL/dr| of lesson 04's demo batch (lambda_D = lambda_U = 1).

    The batch: 12 desirable and 12 undesirable examples around z0, plus one hard desirable
    example at ``r_hard`` (the last one). Returns r, desirable, |dL/dr| and summary numbers.
    """
    rng = np.random.default_rng(_BATCH_SEED)
    half = BATCH_SIZE // 2
    # r is drawn relative to z0: desirable examples mostly above it, undesirable mostly below.
    r = z0 + np.concatenate([rng.normal(4.0, 8.0, half), rng.normal(-4.0, 8.0, half), [0.0]])
    r[-1] = r_hard
    desirable = np.array([True] * half + [False] * half + [True])
    g = np.abs(np.asarray(core.kto_loss_grad(r, z0, desirable, beta)))
    total = g.sum()
    top = max(1, len(r) // 4)
    peak = beta / 4
    return {
        "r": r,
        "desirable": desirable,
        "abs_grad": g,
        "peak": peak,
        "top": top,
        "top_share": float(np.sort(g)[::-1][:top].sum() / total) if total > 0 else 0.0,
        "hard_of_peak": float(g[-1] / peak),
        "hard_share": float(g[-1] / total) if total > 0 else 0.0,
    }


def gradient_batch_figure(beta: float = 0.1, z0: float = 2.0, r_hard: float = -30.0):
    """Lesson 04's demo: where a batch's updates concentrate, and how beta changes it.

    Left: |dL/dr| as a share of its peak beta / 4 against r, the batch on the curve; right: the
    share of the batch's total |dL/dr| that the largest updates carry together, largest first
    (``core.largest_updates`` reads it). Returns (fig, readout_html).
    """
    b = gradient_batch(beta, z0, r_hard)
    r, d, g = b["r"], b["desirable"], b["abs_grad"]
    fig, (ax_curve, ax_share) = new_figure(ncols=2)
    # Both panels on fixed axes (shares of the peak, shares of the total), so that a live frame
    # redraws only the curve and the bars (demos.base.DemoCanvas).
    lo, hi = -62.0, 62.0
    grid = np.linspace(min(lo, r.min()), max(hi, r.max()), 401)
    curve = np.abs(core.kto_loss_grad(grid, z0, np.ones(grid.shape, bool), beta)) / b["peak"]
    ax_curve.plot(grid, curve, color="0.5", lw=1.2)
    of_peak = g / b["peak"]
    ax_curve.scatter(r[:-1][d[:-1]], of_peak[:-1][d[:-1]], color=COLOR_D, s=22,
                     label="desirable")
    ax_curve.scatter(r[~d], of_peak[~d], color=COLOR_U, s=22, label="undesirable")
    ax_curve.scatter([r[-1]], [of_peak[-1]], color=COLOR_D, marker="*", s=160, ec="black",
                     label="hard desirable")
    mark_z0(ax_curve, z0, "r = log-ratio")
    ax_curve.set_xlim(lo, hi)
    ax_curve.set_ylim(0, 1.15)
    ax_curve.set_ylabel("|dL/dr| / peak (beta / 4)")
    ax_curve.set_title("|dL/dr| of each example")
    ax_curve.legend(fontsize=7, loc="upper left")
    order = np.argsort(-g, kind="stable")
    share = g[order] / g.sum() if g.sum() > 0 else np.zeros_like(g)
    hard = order == len(g) - 1  # the hard example's bar is framed
    bars(ax_share, np.arange(1, len(g) + 1), 100 * np.cumsum(share),
         color=np.where(d[order], COLOR_D, COLOR_U), edgecolor=np.where(hard, "black", "none"),
         linewidth=np.where(hard, 1.5, 0.0))  # fmt: skip
    for level in (50, 80):
        ax_share.axhline(level, color="0.6", lw=0.8, ls=":")
    ax_share.set_xlim(0.4, len(g) + 0.6)
    ax_share.set_ylim(0, 102)
    ax_share.set_xlabel("the k largest updates (bar k adds the k-th)")
    ax_share.set_ylabel("% of the batch's total |dL/dr|")
    ax_share.set_title("where the update goes")
    return fig, readout_html(
        f"beta = {fmt(beta)}, z0 = {fmt(z0)}, peak |dL/dr| = {fmt(b['peak'])} (beta / 4)",
        f"top-25% share = {fmt(100 * b['top_share'])}% of the total |dL/dr| "
        f"(the {b['top']} largest of {len(g)} examples)",
        f"hard desirable example; hard delta = {fmt(r_hard - z0)}, "
        f"hard |dL/dr| / peak = {fmt(100 * b['hard_of_peak'])}%, "
        f"hard share of the total = {fmt(100 * b['hard_share'])}%",
    )
