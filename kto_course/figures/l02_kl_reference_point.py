"""Lesson 02, the KL reference point: how the microbatch z0 scatters; which pairs estimate it;
why not the labelled pairs."""

from __future__ import annotations

import numpy as np
from matplotlib.patches import Rectangle

from kto_course import core
from kto_course.figures.base import COLOR_D, COLOR_POLICY, COLOR_REF, COLOR_U, new_figure

__all__ = [
    "Z0_RESAMPLES",
    "Z0_BATCH_SIZES",
    "Z0_CLAMP",
    "TRUE_MEAN_RANGE",
    "PAIRINGS",
    "z0_spread",
    "mismatched_pairs",
    "trained_batch",
    "labelled_vs_mismatched",
]

Z0_RESAMPLES = 2000  # simulated microbatches per histogram: enough for a smooth shape
Z0_BATCH_SIZES = (2, 4, 8, 16, 32, 64, 128)
Z0_CLAMP = ("clamp at 0", "raw mean")
Z0_BINS = 80  # histogram bins across the x-range
TRUE_MEAN_RANGE = (-1.0, 2.0)  # the demo's slider for the true mean of r'


# One fixed set of standard-normal draws (2 MB, drawn at import): moving a slider changes the
# parameter, not the luck of the draw, and a render does not redraw 2000 x 128 numbers.
_Z0_DRAWS = np.random.default_rng(0).standard_normal((Z0_RESAMPLES, max(Z0_BATCH_SIZES)))


def _z0_estimates(batch_size: int, true_mean: float, spread: float, clamp: bool) -> np.ndarray:
    """``core.z0_estimate`` of each of ``Z0_RESAMPLES`` simulated microbatches."""
    draws = _Z0_DRAWS
    if batch_size > draws.shape[1]:
        draws = np.random.default_rng(0).standard_normal((Z0_RESAMPLES, batch_size))
    r_mis = true_mean + spread * draws[:, :batch_size]
    return core.z0_estimate(r_mis, clamp=clamp)  # one z0 per simulated microbatch (row)


def z0_spread(batch_size: int = 8, true_mean: float = 0.3, spread: float = 1.0, clamp=Z0_CLAMP[0]):
    """Lesson 02 demo: how the microbatch estimate of z0 scatters, against the batch size.

    Each simulated microbatch draws ``batch_size`` mismatched log-ratios r' ~ Normal(true_mean,
    spread) and estimates z0 with ``core.z0_estimate`` (clamped or raw). Left: histogram of the
    estimates over ``Z0_RESAMPLES`` microbatches. Right: their standard deviation against the
    batch size (it shrinks like spread / sqrt(B)). Returns ``(fig, readout_html)``.
    """
    batch_size = int(batch_size)
    if batch_size < 2:
        raise ValueError("batch_size must be at least 2: a batch of 1 has no mismatched pair.")
    if clamp not in Z0_CLAMP:
        raise ValueError(f"clamp must be one of {Z0_CLAMP}, got {clamp!r}.")
    clamped = clamp == Z0_CLAMP[0]
    estimates = _z0_estimates(batch_size, true_mean, spread, clamped)
    raw = _z0_estimates(batch_size, true_mean, spread, clamp=False)
    share_below = float((raw < 0).mean())
    sd = float(estimates.std())

    fig, (ax_hist, ax_sd) = new_figure(ncols=2)
    # Fixed axes while only the true mean or the clamp moves: the x-range depends on the spread
    # alone (widest at B = 2, for any true mean of the slider), the height on the spread and B
    # (a bin's share is at most its width times the peak density of Normal(mean, sd / sqrt(B))).
    # A live frame then redraws only the histogram (demos.base.DemoCanvas).
    half = 4.0 * spread / np.sqrt(2.0)
    lo, hi = min(TRUE_MEAN_RANGE[0] - half, -0.5), max(TRUE_MEAN_RANGE[1] + half, 0.5)
    lo, hi = min(lo, true_mean - half), max(hi, true_mean + half)  # a mean off the slider
    edges = np.linspace(lo, hi, Z0_BINS + 1)
    top = min(Z0_RESAMPLES, 1.25 * Z0_RESAMPLES * (edges[1] - edges[0])
              / (spread / np.sqrt(batch_size) * np.sqrt(2 * np.pi)))  # fmt: skip
    # np.histogram + stairs: one artist instead of 80 bars, a third of the drawing time.
    counts, _ = np.histogram(np.clip(estimates, lo, hi), bins=edges)
    ax_hist.stairs(np.minimum(counts, top), edges, fill=True, color=COLOR_POLICY)
    if counts.max() > top:  # the clamped microbatches, all in the bin at 0: taller than the axes
        # Left of 0, where a clamped histogram has nothing.
        ax_hist.annotate(f"↑ {counts.max() / Z0_RESAMPLES:.0%} at 0", (0.0, top),
                         xytext=(-4, -12), textcoords="offset points", ha="right",
                         fontsize=8)  # fmt: skip
    ax_hist.axvline(true_mean, color="black", linestyle="--", linewidth=1, label="true mean of r'")
    ax_hist.axvline(0.0, color=COLOR_U, linewidth=1, label="0 (the clamp)")
    ax_hist.set_xlim(lo, hi)
    ax_hist.set_ylim(0, top)
    ax_hist.set_xlabel(f"z0 estimate, batch size {batch_size}")
    ax_hist.set_ylabel(f"microbatches (of {Z0_RESAMPLES})")
    ax_hist.legend(fontsize=7, loc="upper right")

    sizes = np.array(Z0_BATCH_SIZES)
    sds = [_z0_estimates(b, true_mean, spread, clamped).std() for b in sizes]
    ax_sd.plot(sizes, spread / np.sqrt(sizes), color=COLOR_REF, label="spread / sqrt(B)")
    ax_sd.plot(sizes, sds, "o", color=COLOR_POLICY, label="measured")
    ax_sd.plot([batch_size], [sd], "o", color="black", markersize=10, fillstyle="none")
    ax_sd.set_xscale("log", base=2)
    ax_sd.set_xticks(sizes, [str(b) for b in sizes])
    ax_sd.set_ylim(0, 1.05 * spread / np.sqrt(2.0))
    ax_sd.set_xlabel("batch size B")
    ax_sd.set_ylabel("sd of the z0 estimate")
    ax_sd.legend(fontsize=7, loc="upper right")

    if clamped:
        clamp_text = f"{share_below:.0%} of microbatches clamped to 0"
    else:
        clamp_text = f"{share_below:.0%} of microbatches give a negative raw estimate"
    readout = (
        f"batch size {batch_size}: z0 estimates have mean {estimates.mean():.3f} and "
        f"<b>spread (sd) {sd:.3f}</b> over {Z0_RESAMPLES} microbatches "
        f"(true mean of r' = {true_mean:.2f}); {clamp_text}"
    )
    return fig, readout


PAIRINGS = ("cyclic shift (TRL)", "cyclic shift (HALOs)", "reversal")


def mismatched_pairs(batch_size: int = 5, method: str = PAIRINGS[0]):
    """Lesson 02 demo: which completion y_j each prompt x_i is paired with to estimate z0.

    Draws the B x B grid of (prompt, completion) pairs: the diagonal holds the labelled pairs,
    a dot marks the pair each method picks, a red cross one that falls on the diagonal.
    Returns ``(fig, readout_html)``.
    """
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1.")
    if method not in PAIRINGS:
        raise ValueError(f"method must be one of {PAIRINGS}, got {method!r}.")
    if method == "reversal":  # the old bug (TRL issue #1911), shown on purpose
        pick = np.arange(batch_size)[::-1]
    elif batch_size == 1:
        pick = None  # the shifts refuse a batch of 1
    else:
        convention = "trl" if method == PAIRINGS[0] else "halos"
        pick = core.mismatched_indices(batch_size, convention=convention)

    fig, ax = new_figure(width=3.6, height=3.4)
    diagonal = np.arange(batch_size)
    ax.scatter(diagonal, diagonal, s=300, marker="s", color="#eeeeee", zorder=1)
    if pick is not None:
        own = pick == diagonal
        ax.scatter(pick[~own], diagonal[~own], s=80, color=COLOR_POLICY, zorder=2)
        ax.scatter(pick[own], diagonal[own], s=120, marker="x", color=COLOR_U, zorder=3)
    ax.set_xlim(-0.6, batch_size - 0.4)
    ax.set_ylim(batch_size - 0.4, -0.6)  # row 0 at the top, as in a matrix
    ax.set_xticks(diagonal, [f"y{j}" for j in diagonal], fontsize=8)
    ax.set_yticks(diagonal, [f"x{i}" for i in diagonal], fontsize=8)
    ax.set_xlabel("completion")
    ax.set_ylabel("prompt")
    ax.set_title(f"{method}, batch size {batch_size}", fontsize=9)

    if pick is None:
        readout = (
            "batch size 1: no mismatched pair exists (the only completion is x0's own); "
            "TRL raises 'Actual (not effective) batch size must be > 1'"
        )
    else:
        own_list = [int(i) for i in np.flatnonzero(pick == diagonal)]
        named = ", ".join(f"x{i} with y{i}" for i in own_list)
        if own_list:
            verdict = (
                f"<b>{len(own_list)} of {batch_size}</b> prompts paired with their own "
                f"completion ({named})"
            )
        else:
            verdict = f"<b>0 of {batch_size}</b> prompts paired with their own completion"
        readout = f"batch size {batch_size}, {method}: {verdict}"
    return fig, readout


def trained_batch(seed: int = 2, batch_size: int = 4):
    """Lesson 02's toy microbatch after some training: the grid ``r[i, j] = r(x_i, y_j)`` and
    the labels ``desirable`` (three of every four examples).

    Off the diagonal the policy drifted a little (r ~ Normal(0.2, 0.3^2)); on it, training
    pushed the labelled completions up to +3 (desirable) or down to -3 (undesirable).
    """
    if batch_size < 2:
        raise ValueError("batch_size must be at least 2: a batch of 1 has no mismatched pair.")
    rng = np.random.default_rng(seed)
    desirable = np.arange(batch_size) % 4 != 3
    r = rng.normal(0.2, 0.3, (batch_size, batch_size))
    diagonal = np.arange(batch_size)
    r[diagonal, diagonal] = np.where(desirable, 3.0, -3.0)
    return r, desirable


def labelled_vs_mismatched(seed: int = 2, batch_size: int = 4):
    """Lesson 02: the toy batch's grid of r (``trained_batch``), its labelled pairs (the
    diagonal) against TRL's mismatched pairs (circled), and the z0 each would give.

    Returns ``(fig, summary)``, the summary as plain text.
    """
    r, desirable = trained_batch(seed, batch_size)
    diagonal = np.arange(batch_size)
    pick = core.mismatched_indices(batch_size)
    z0_labelled = core.z0_estimate(np.diag(r))
    z0_mismatched = core.z0_estimate(r[diagonal, pick])

    fig, ax = new_figure(width=3.8, height=3.4)
    limit = 2.0 * float(np.abs(r).max())  # pale colours: the numbers stay readable
    ax.imshow(r, cmap="PiYG", vmin=-limit, vmax=limit)
    for i in diagonal:
        for j in diagonal:
            ax.text(j, i, f"{r[i, j]:+.2f}", ha="center", va="center", fontsize=8)
    for i, good in zip(diagonal, desirable, strict=True):  # the labelled pairs
        color = COLOR_D if good else COLOR_U
        ax.add_patch(Rectangle((i - 0.5, i - 0.5), 1.0, 1.0, fill=False, edgecolor=color,
                               linewidth=2.5))  # fmt: skip
    ax.scatter(pick, diagonal, s=900, facecolors="none", edgecolors=COLOR_POLICY, linewidths=1.5)
    ax.set_xticks(diagonal, [f"y{j}" for j in diagonal], fontsize=8)
    ax.set_yticks(diagonal, [f"x{i}" for i in diagonal], fontsize=8)
    ax.set_xlabel("completion")
    ax.set_ylabel("prompt")
    ax.set_title("r(x_i, y_j) after some training", fontsize=9)

    n_D = int(desirable.sum())
    summary = (
        f"labelled pairs (the framed diagonal, {n_D} desirable, {batch_size - n_D} "
        f"undesirable): 'z0' = {z0_labelled:.3g}, biased by the labels\n"
        f"mismatched pairs (circled, TRL's x_i -> y_(i-1)): z0 = {z0_mismatched:.3g}"
    )
    return fig, summary
