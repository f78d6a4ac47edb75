"""Pure functions that compute and draw what the demos show, from plain parameters.

No widgets here: each function takes numbers, returns a matplotlib Figure and/or plain values,
and can be tested without a browser. ``demos.py`` wires controls to them. Sections follow the
lessons.
"""

from __future__ import annotations

import io

import numpy as np  # noqa: F401  (used by the lesson sections below)
from matplotlib.figure import Figure

from kto_course import core  # noqa: F401

# Colours used for the two labels everywhere in the course.
COLOR_D = "#1b7837"  # desirable: green
COLOR_U = "#b2182b"  # undesirable: red


def new_figure(ncols: int = 1, width: float = 4.2, height: float = 3.2):
    """A figure that is NOT registered with pyplot, so demos never leak open figures."""
    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    axes = fig.subplots(1, ncols)
    return fig, axes


def png_bytes(fig) -> bytes:
    """Render a figure to PNG bytes (what a demo's Image widget shows)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    return buffer.getvalue()


# =============================================================================================
# Lesson 01 (owned by the lessons 01-02 author)
# =============================================================================================

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
COLOR_POLICY = "#2166ac"
COLOR_REF = "#999999"


def token_logprobs(completion: str = "short", reduce: str = "sum", tokens: str = TOKEN_SPANS[0]):
    """Lesson 01 demo: which tokens make up log pi(y|x), and what sum vs mean does to r.

    Returns ``(fig, readout_html)``. The readout states log pi_theta(y|x), log pi_ref(y|x) and
    r as computed with the chosen tokens and reduction (``core.sequence_logprob`` for the sum).
    """
    from matplotlib.colors import to_rgb  # imported here: the shared import block is not ours

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
    seq_theta = core.sequence_logprob(logp_theta, used)
    seq_ref = core.sequence_logprob(logp_ref, used)
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
        ax.bar(position + shift, values, 0.4, color=rgba, label=label)
    ax.set_xticks(position, labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylim(-10, 0)
    ax.set_ylabel("token log-prob")
    ax.text(0, -9.6, "prompt", fontsize=8)
    ax.text(n_prompt, -9.6, "completion", fontsize=8)
    if n_body < width:
        ax.text(n_body, -9.6, "padding", fontsize=8)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{reduce} over {int(used.sum())} tokens ({tokens}): faded bars are left out")
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

# =============================================================================================
# Lesson 02 (owned by the lessons 01-02 author)
# =============================================================================================

Z0_RESAMPLES = 2000  # simulated microbatches per histogram: enough for a smooth shape
Z0_BATCH_SIZES = (2, 4, 8, 16, 32, 64, 128)
Z0_CLAMP = ("clamp at 0", "raw mean")


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
    # The x-range depends on the spread only (widest at B = 2), so moving the batch-size
    # slider shows the histogram narrowing instead of the axis rescaling.
    half = 4.0 * spread / np.sqrt(2.0)
    lo, hi = min(true_mean - half, -0.5), max(true_mean + half, 0.5)
    # np.histogram + stairs: one artist instead of 60 bars, a third of the drawing time.
    counts, edges = np.histogram(np.clip(estimates, lo, hi), bins=np.linspace(lo, hi, 61))
    ax_hist.stairs(counts, edges, fill=True, color=COLOR_POLICY)
    ax_hist.axvline(true_mean, color="black", linestyle="--", linewidth=1, label="true mean of r'")
    ax_hist.axvline(0.0, color=COLOR_U, linewidth=1, label="0 (the clamp)")
    ax_hist.set_xlim(lo, hi)
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
    ax_sd.legend(fontsize=7)

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

# =============================================================================================
# Lesson 03 (owned by the lessons 03-04 author)
# =============================================================================================

# The r axis of the lesson 03 demo: wide enough to show saturation at the smallest beta.
R_RANGE_03 = (-40.0, 40.0)


def _n03(x: float) -> str:
    """A number for a readout: 3 significant digits; whole above 1000, scientific below 1e-3."""
    if abs(x) >= 1000:
        return f"{x:.0f}"
    return f"{x:.3g}" if abs(x) >= 1e-3 or x == 0 else f"{x:.2e}"


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
    grid = np.linspace(*R_RANGE_03, 321)
    fig, (ax_loss, ax_grad) = new_figure(ncols=2)
    for label, color, name in ((True, COLOR_D, "desirable"), (False, COLOR_U, "undesirable")):
        d = np.full(grid.shape, label)
        current = label == bool(desirable)
        style = {"color": color, "lw": 2.2 if current else 1.0, "alpha": 1.0 if current else 0.35}
        ax_loss.plot(grid, core.kto_losses(grid, z0, d, beta, lambda_D, lambda_U), label=name,
                     **style)
        ax_grad.plot(grid, core.kto_loss_grad(grid, z0, d, beta, lambda_D, lambda_U), **style)
    color = COLOR_D if desirable else COLOR_U
    for ax in (ax_loss, ax_grad):
        ax.axvline(z0, color="0.4", ls="--", lw=1)
        ax.set_xlabel("r = log-ratio")
        ax.set_xlim(*R_RANGE_03)
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
    # "name = number" pairs, so that the browser tests (and the learner) can read them off.
    readout = (
        f"<b>{label}</b> example; r = {_n03(r)}, z0 = {_n03(z0)}, delta = {_n03(state['delta'])}, "
        f"beta*delta = {_n03(beta * state['delta'])}"
        f"<br>value = {_n03(state['value'])}, loss = {_n03(state['loss'])}, "
        f"dL/dr = {_n03(state['grad'])} (gradient descent {direction})"
        f"<br>peak |dL/dr| = {_n03(state['peak'])} (lambda beta / 4, reached at delta 0), "
        f"|dL/dr| / peak = {_n03(100 * state['share_of_peak'])}%"
    )
    return fig, readout

def value_functions_figure(betas=(0.1, 0.3, 1.0)):
    """Lesson 03's opening picture: v_D and v_U against delta = r - z0 for a few beta (Eq. 7)."""
    delta = np.linspace(-30.0, 30.0, 301)
    fig, (ax_D, ax_U) = new_figure(ncols=2)
    for beta, alpha in zip(betas, np.linspace(0.35, 1.0, len(betas)), strict=True):
        ax_D.plot(delta, core.value_desirable(delta, beta), color=COLOR_D, alpha=alpha,
                  label=f"beta = {beta:g}")
        ax_U.plot(delta, core.value_undesirable(delta, beta), color=COLOR_U, alpha=alpha,
                  label=f"beta = {beta:g}")
    for ax, title in ((ax_D, "desirable: v_D = sigmoid(beta delta)"),
                      (ax_U, "undesirable: v_U = sigmoid(-beta delta)")):
        ax.axvline(0, color="0.4", ls="--", lw=1)
        ax.set_xlabel("delta = r - z0")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    return fig


def imbalance_figure(n_D: int = 1000, n_U: int = 4000, lambda_D: float = 1.0,
                     lambda_U: float = 1.0):
    """Lesson 03's imbalance demo: the weighted mass of each class and the ratio's target band.

    Returns (fig, readout_html) with the ratio lambda_D n_D / (lambda_U n_U), whether it lies in
    [1, 4/3] (paper Eq. 8) and the single-weight ranges that would put it there.
    """
    advice = core.recommended_weights(n_D, n_U, lambda_D, lambda_U)
    mass_D, mass_U = lambda_D * n_D, lambda_U * n_U
    share_D = mass_D / (mass_D + mass_U)
    fig, (ax_mass, ax_ratio) = new_figure(ncols=2)
    ax_mass.bar(["desirable", "undesirable"], [n_D, n_U], color="none",
                edgecolor=[COLOR_D, COLOR_U], ls="--", label="count n")
    ax_mass.bar(["desirable", "undesirable"], [mass_D, mass_U], color=[COLOR_D, COLOR_U],
                alpha=0.7, label="lambda * n")
    ax_mass.set_title("weighted mass lambda * n")
    ax_mass.legend(fontsize=8)
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
    readout = (
        f"ratio = {_n03(advice['ratio'])} (lambda_D n_D / (lambda_U n_U), {verdict})"
        f"<br>desirable share of the weighted mass = {100 * share_D:.1f}%"
        f"<br>fix ONE weight: lambda_D in [{_n03(d_lo)}, {_n03(d_hi)}] with lambda_U kept at "
        f"{_n03(lambda_U)}, or lambda_U in [{_n03(u_lo)}, {_n03(u_hi)}] with lambda_D kept at "
        f"{_n03(lambda_D)}"
    )
    return fig, readout

# =============================================================================================
# Lesson 04 (owned by the lessons 03-04 author)
# =============================================================================================

def gradient_bump_figure(betas=(0.1, 0.3, 1.0)):
    """Lesson 04's opening picture: dL/dr against delta for both labels and a few beta."""
    delta = np.linspace(-30.0, 30.0, 601)
    fig, ax = new_figure(ncols=1, width=6.0)
    for beta, alpha in zip(betas, np.linspace(0.35, 1.0, len(betas)), strict=True):
        for label, color in ((True, COLOR_D), (False, COLOR_U)):
            d = np.full(delta.shape, label)
            ax.plot(delta, core.kto_loss_grad(delta, 0.0, d, beta), color=color, alpha=alpha,
                    label=f"beta = {beta:g}" if label else None)
    ax.text(0.02, 0.95, "undesirable: dL/dr > 0", color=COLOR_U, transform=ax.transAxes,
            va="top", fontsize=9)
    ax.text(0.02, 0.05, "desirable: dL/dr < 0", color=COLOR_D, transform=ax.transAxes,
            va="bottom", fontsize=9)
    ax.axhline(0, color="0.6", lw=0.8)
    ax.axvline(0, color="0.4", ls="--", lw=1)
    ax.set_xlabel("delta = r - z0")
    ax.set_ylabel("dL/dr")
    ax.set_title("the gradient is a bump centred on the baseline", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    return fig


# The batch of the lesson 04 demo: fixed, so that moving a control changes one thing only.
_BATCH_04_RNG_SEED = 4
BATCH_04_SIZE = 24  # ordinary examples, half per label; the hard desirable one comes on top


def gradient_batch(beta: float, z0: float, r_hard: float) -> dict:
    """Per-example |dL/dr| of lesson 04's demo batch (lambda_D = lambda_U = 1).

    The batch: 12 desirable and 12 undesirable examples around z0, plus one hard desirable
    example at ``r_hard`` (the last one). Returns r, desirable, |dL/dr| and summary numbers.
    """
    rng = np.random.default_rng(_BATCH_04_RNG_SEED)
    half = BATCH_04_SIZE // 2
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

    Left: |dL/dr| against r with the batch on the curve; right: each example's share of the
    batch's total |dL/dr|, largest first. Returns (fig, readout_html).
    """
    b = gradient_batch(beta, z0, r_hard)
    r, d, g = b["r"], b["desirable"], b["abs_grad"]
    fig, (ax_curve, ax_share) = new_figure(ncols=2)
    lo, hi = min(-60.0, r.min()) - 2, max(60.0, r.max()) + 2
    grid = np.linspace(lo, hi, 401)
    ax_curve.plot(grid, np.abs(core.kto_loss_grad(grid, z0, np.ones(grid.shape, bool), beta)),
                  color="0.5", lw=1.2)
    ax_curve.scatter(r[:-1][d[:-1]], g[:-1][d[:-1]], color=COLOR_D, s=22, label="desirable")
    ax_curve.scatter(r[~d], g[~d], color=COLOR_U, s=22, label="undesirable")
    ax_curve.scatter([r[-1]], [g[-1]], color=COLOR_D, marker="*", s=160, ec="black",
                     label="hard desirable")
    ax_curve.axvline(z0, color="0.4", ls="--", lw=1)
    ax_curve.set_xlabel("r = log-ratio")
    ax_curve.set_title("|dL/dr| of each example")
    ax_curve.legend(fontsize=7, loc="upper left")
    order = np.argsort(-g, kind="stable")
    share = g[order] / g.sum() if g.sum() > 0 else np.zeros_like(g)
    colors = [COLOR_D if d[i] else COLOR_U for i in order]
    bars = ax_share.bar(np.arange(len(g)), 100 * share, color=colors)
    hard_pos = int(np.flatnonzero(order == len(g) - 1)[0])
    bars[hard_pos].set_edgecolor("black")
    bars[hard_pos].set_linewidth(1.5)
    ax_share.set_xlabel("examples, largest update first")
    ax_share.set_ylabel("% of the batch's total |dL/dr|")
    ax_share.set_title("where the update goes")
    readout = (
        f"beta = {_n03(beta)}, z0 = {_n03(z0)}, peak |dL/dr| = {_n03(b['peak'])} (beta / 4)"
        f"<br>top-25% share = {_n03(100 * b['top_share'])}% of the total |dL/dr| "
        f"(the {b['top']} largest of {len(g)} examples)"
        f"<br>hard desirable example; hard delta = {_n03(r_hard - z0)}, "
        f"hard |dL/dr| / peak = {_n03(100 * b['hard_of_peak'])}%, "
        f"hard share of the total = {_n03(100 * b['hard_share'])}%"
    )
    return fig, readout

# =============================================================================================
# Lesson 05 (owned by the lesson 05 author)
# =============================================================================================

# The two methods in lesson 05's plots (the labels keep COLOR_D / COLOR_U).
COLOR_DPO = "#5e3c99"
COLOR_KTO = "#e66101"
COLOR_KTO_WEIGHTED = "#fdb863"
BATCH_ORDERS = ("chosen first", "shuffled")


def pair_margins(margin: float = 2.0, shift: float = 0.0, z0: float = 1.0, beta: float = 0.5):
    """Lesson 05 demo: one preference pair as DPO sees it (pairwise) and as KTO sees it
    (pointwise, after conversion into a desirable and an undesirable row).

    r_w = shift + margin / 2 and r_l = shift - margin / 2. DPO's loss depends on the margin
    r_w - r_l alone (``core.dpo_loss``); KTO's on where each r sits against z0
    (``core.kto_losses``). Returns ``(fig, readout_html)``.
    """
    r_w, r_l = shift + margin / 2, shift - margin / 2
    r = np.array([r_w, r_l])
    labels = np.array([True, False])
    dpo = float(core.dpo_loss(r_w, r_l, beta))
    kto_w, kto_l = core.kto_losses(r, z0, labels, beta)
    kto_mean = core.kto_loss(r, z0, labels, beta)
    dpo_grad_w = core.dpo_loss_grad(r_w, r_l, beta)
    kto_grad_w, kto_grad_l = core.kto_loss_grad(r, z0, labels, beta)

    fig, (ax_line, ax_loss) = new_figure(ncols=2)
    lo, hi = -20.0, 20.0
    ax_line.axhline(0, color="#bbbbbb", linewidth=1)
    ax_line.axvline(z0, color="black", linestyle="--", linewidth=1)
    ax_line.text(z0, -0.9, " z0", fontsize=8)
    ax_line.plot([r_w], [0], "o", color=COLOR_D, markersize=9, label="r_w (chosen)")
    ax_line.plot([r_l], [0], "o", color=COLOR_U, markersize=9, label="r_l (rejected)")
    ax_line.annotate(
        "", xy=(r_w, 0.5), xytext=(r_l, 0.5), arrowprops={"arrowstyle": "<->", "color": COLOR_DPO}
    )
    ax_line.text((r_w + r_l) / 2, 0.62, "DPO: margin", color=COLOR_DPO, ha="center", fontsize=8)
    for r_y, y, color in ((r_w, -0.35, COLOR_D), (r_l, -0.6, COLOR_U)):
        ax_line.annotate(
            "", xy=(r_y, y), xytext=(z0, y), arrowprops={"arrowstyle": "->", "color": color}
        )
    ax_line.text(lo + 0.5, -0.5, "KTO: delta = r - z0", color=COLOR_KTO, fontsize=8)
    ax_line.set_xlim(lo, hi)
    ax_line.set_ylim(-1.0, 1.0)
    ax_line.set_yticks([])
    ax_line.set_xlabel("log-ratio r")
    ax_line.legend(loc="upper left", fontsize=7)

    c = np.linspace(lo, hi, 161)  # slide the whole pair along r, margin fixed
    ones = np.ones_like(c)
    ax_loss.plot(c, float(dpo) * ones, color=COLOR_DPO, label="DPO loss")
    loss_w = core.kto_losses(c + margin / 2, z0, ones.astype(bool), beta)
    loss_l = core.kto_losses(c - margin / 2, z0, ~ones.astype(bool), beta)
    ax_loss.plot(c, loss_w, color=COLOR_D, linestyle=":", label="KTO, chosen row")
    ax_loss.plot(c, loss_l, color=COLOR_U, linestyle=":", label="KTO, rejected row")
    ax_loss.plot(c, (loss_w + loss_l) / 2, color=COLOR_KTO, label="KTO, mean of the two")
    ax_loss.axvline(shift, color="black", linewidth=0.8)
    ax_loss.set_xlabel("shift of both log-ratios (margin fixed)")
    ax_loss.set_ylabel("loss")
    ax_loss.set_ylim(0, max(1.05, dpo * 1.05))
    ax_loss.legend(loc="upper right", fontsize=7)
    readout = (
        f"r_w = {r_w:.2f}, r_l = {r_l:.2f}, margin = {margin:.2f}, z0 = {z0:.2f}, "
        f"beta = {beta:.2f}<br><b>DPO loss = {dpo:.3f}</b>, d loss / d r_w = {dpo_grad_w:.4f}"
        f"<br><b>KTO loss = {kto_mean:.3f}</b>; chosen row loss = {kto_w:.3f}, rejected row "
        f"loss = {kto_l:.3f}; d L / d r_w = {kto_grad_w:.4f}, d L / d r_l = {kto_grad_l:.4f}"
    )
    return fig, readout


def batch_order(order: str = BATCH_ORDERS[0], batch_size: int = 8, seed: int = 0):
    """Lesson 05 demo: 32 preference pairs unpaired into 64 rows, cut into sequential
    microbatches; how many microbatches hold one label only. Returns ``(fig, readout_html)``."""
    from kto_course import toy  # here, not at the top: toy imports torch

    if order not in BATCH_ORDERS:
        raise ValueError(f"order must be one of {BATCH_ORDERS}, got {order!r}.")
    pairs = [{"prompt": i, "chosen": 0, "rejected": 1} for i in range(32)]
    if order == "shuffled":
        rows = toy.pairs_to_unpaired(pairs, np.random.default_rng(seed))
    else:
        rows = toy.chosen_first(pairs)
    labels = np.array([row["label"] for row in rows])
    shares = toy.batch_label_shares(labels, batch_size)
    one_label = int(((shares == 0) | (shares == 1)).sum())

    from matplotlib.colors import ListedColormap  # here: the shared imports are not lesson 05's

    fig, (ax_rows, ax_share) = new_figure(ncols=2)
    # One image for the 64 rows (one bar per row draws ~3x slower).
    ax_rows.imshow(
        labels[None, :].astype(float),
        cmap=ListedColormap([COLOR_U, COLOR_D]),
        vmin=0,
        vmax=1,
        aspect="auto",
        extent=(-0.5, len(labels) - 0.5, 0, 1),
    )
    ax_rows.vlines(np.arange(0, len(labels) + 1, batch_size) - 0.5, 0, 1, color="black")
    ax_rows.set_yticks([])
    ax_rows.set_xlabel("row, in the order the trainer reads it")
    ax_rows.set_title("green = desirable, red = undesirable", fontsize=9)
    ax_share.bar(np.arange(len(shares)), shares, color=COLOR_D)
    ax_share.bar(np.arange(len(shares)), 1 - shares, bottom=shares, color=COLOR_U)
    ax_share.set_xlabel("microbatch")
    ax_share.set_ylabel("share of desirable rows")
    ax_share.set_ylim(0, 1)
    readout = (
        f"{len(labels)} rows ({order}) in microbatches of {batch_size}<br><b>one-label "
        f"microbatches = {one_label} of {len(shares)}</b>; one-label share = "
        f"{100 * one_label / len(shares):.0f}%; desirable share per microbatch: "
        f"min = {shares.min():.2f}, max = {shares.max():.2f}"
    )
    return fig, readout


def _l05_mean_band(ax, x, values, color, label, marker="o"):
    # Mean over seeds with the min-max band: with 3 seeds a standard error would overclaim.
    ax.plot(x, values.mean(axis=1), marker=marker, color=color, label=label)
    ax.fill_between(x, values.min(axis=1), values.max(axis=1), color=color, alpha=0.15)


def _l05_baseline_lines(ax, result):
    ax.axhline(result["reference"].mean(), color="#999999", linestyle="--", linewidth=1)
    ax.axhline(result["best"].mean(), color="black", linestyle=":", linewidth=1)
    ax.text(ax.get_xlim()[0], result["reference"].mean(), " reference", fontsize=7, va="bottom")
    ax.text(ax.get_xlim()[0], result["best"].mean(), " best possible", fontsize=7, va="top")


def _l05_table(header, rows) -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{v}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def noise_experiment_figure(result: dict):
    """Lesson 05: final expected utility and KL against the label-noise fraction, for
    ``toy.noise_experiment``'s result. Returns ``(fig, table_html)``; means over seeds."""
    x = result["fractions"]
    fig, (ax_u, ax_kl) = new_figure(ncols=2)
    _l05_mean_band(ax_u, x, result["dpo"], COLOR_DPO, "DPO (pairs swapped)")
    _l05_mean_band(ax_u, x, result["kto"], COLOR_KTO, "KTO (labels flipped)")
    _l05_baseline_lines(ax_u, result)
    ax_u.set_xlabel("fraction of corrupted labels")
    ax_u.set_ylabel("expected true utility")
    ax_u.legend(fontsize=7, loc="center left")
    _l05_mean_band(ax_kl, x, result["dpo_kl"], COLOR_DPO, "DPO")
    _l05_mean_band(ax_kl, x, result["kto_kl"], COLOR_KTO, "KTO")
    ax_kl.set_xlabel("fraction of corrupted labels")
    ax_kl.set_ylabel("KL(policy || reference)")
    rows = [
        (f"{f:.2f}", *(f"{result[k][i].mean():.2f}" for k in ("dpo", "kto", "dpo_kl", "kto_kl")))
        for i, f in enumerate(x)
    ]
    header = ("noise", "DPO utility", "KTO utility", "DPO KL", "KTO KL")
    return fig, _l05_table(header, rows)


def imbalance_experiment_figure(result: dict):
    """Lesson 05: final expected utility and KL against the share of desirable rows kept, for
    ``toy.imbalance_experiment``'s result. Returns ``(fig, table_html)``; means over seeds."""
    x = result["keeps"]
    fig, (ax_u, ax_kl) = new_figure(ncols=2)
    series = (
        ("dpo", COLOR_DPO, "DPO (surviving pairs)"),
        ("kto", COLOR_KTO, "KTO, lambda_D = 1"),
        ("kto_weighted", COLOR_KTO_WEIGHTED, "KTO, lambda_D by Eq. 8"),
    )
    for key, color, label in series:
        _l05_mean_band(ax_u, x, result[key], color, label)
        _l05_mean_band(ax_kl, x, result[f"{key}_kl"], color, label)
    _l05_baseline_lines(ax_u, result)
    for ax in (ax_u, ax_kl):
        ax.set_xlabel("share of desirable rows kept")
        ax.invert_xaxis()  # left to right: more and more imbalanced
    ax_u.set_ylabel("expected true utility")
    ax_kl.set_ylabel("KL(policy || reference)")
    ax_u.legend(fontsize=7, loc="lower left")
    keys = ("dpo", "kto", "kto_weighted", "dpo_kl", "kto_kl", "kto_weighted_kl")
    rows = [
        (
            f"{keep:.2f}",
            f"{result['lambda_D'][i].mean():.2f}",
            *(f"{result[k][i].mean():.2f}" for k in keys),
        )
        for i, keep in enumerate(x)
    ]
    header = (
        "desirable kept", "lambda_D (Eq. 8)", "DPO utility", "KTO utility",
        "KTO weighted utility", "DPO KL", "KTO KL", "KTO weighted KL",
    )
    return fig, _l05_table(header, rows)


def ordering_experiment_table(result: dict) -> str:
    """Lesson 05: ``toy.ordering_experiment``'s result as an HTML table (means over seeds, the
    min-max range in brackets)."""

    def cell(values) -> str:
        return f"{values.mean():.2f} [{values.min():.2f}, {values.max():.2f}]"

    runs = (
        ("DPO on the pairs", "dpo"),
        ("KTO, rows shuffled", "kto_shuffled"),
        ("KTO, chosen rows first", "kto_chosen_first"),
    )
    rows = [(name, cell(result[key][0]), cell(result[key][1])) for name, key in runs]
    rows.append(("reference policy (start)", cell(result["reference"]), "0"))
    rows.append(("best possible", cell(result["best"]), ""))
    return _l05_table(("run", "expected true utility", "KL(policy || reference)"), rows)

# =============================================================================================
# Lesson 06 (owned by the lesson 06 author)
# =============================================================================================


def _l06_series(rows: list[dict], key: str) -> np.ndarray:
    return np.array([row.get(key, np.nan) for row in rows], dtype=float)


def _l06_smooth(y: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` steps, ignoring NaN (a step without that label)."""
    out = np.full_like(y, np.nan)
    for i in range(len(y)):
        chunk = y[max(0, i - window + 1) : i + 1]
        if np.isfinite(chunk).any():
            out[i] = np.nanmean(chunk)
    return out


def training_curves(history: list[dict], evals: list[dict], smooth: int = 10):
    """Lesson 06: a KTO run at a glance, from the trainer's ``history`` and ``evals``.

    Left: the loss (lesson 03). Middle: rewards/chosen and rewards/rejected (beta * r, lesson
    01) and kl (the clamped z0, lesson 02). Right: desirable rate, well-formed rate and distinct
    completions relative to the first evaluation. Returns (fig, readout_html).
    """
    fig, (ax_loss, ax_reward, ax_eval) = new_figure(3, width=3.6, height=2.9)
    steps = _l06_series(history, "step")
    if len(history):
        loss = _l06_series(history, "loss")
        ax_loss.plot(steps, loss, color="0.75", lw=0.8)
        ax_loss.plot(steps, _l06_smooth(loss, smooth), color="0.1", lw=1.5)
        for key, color, label in (("rewards/chosen", COLOR_D, "rewards/chosen"),
                                  ("rewards/rejected", COLOR_U, "rewards/rejected"),
                                  ("kl", "0.4", "kl (z0)")):  # fmt: skip
            ax_reward.plot(steps, _l06_smooth(_l06_series(history, key), smooth), color=color,
                           lw=1.5, label=label)  # fmt: skip
        ax_reward.axhline(0.0, color="0.8", lw=0.8)
        ax_reward.legend(fontsize=7, loc="best")
    ax_loss.set(title="loss", xlabel="step")
    ax_reward.set(title=f"rewards and kl ({smooth}-step mean)", xlabel="step")
    if evals:
        e_steps = _l06_series(evals, "step")
        distinct = _l06_series(evals, "distinct")
        ax_eval.plot(e_steps, _l06_series(evals, "desirable_rate"), "o-", color=COLOR_D,
                     label="desirable")  # fmt: skip
        ax_eval.plot(e_steps, _l06_series(evals, "well_formed_rate"), "s--", color="0.3",
                     label="well formed")  # fmt: skip
        ax_eval.plot(e_steps, distinct / max(distinct[0], 1), "^:", color="#2166ac",
                     label="distinct / before")  # fmt: skip
        ax_eval.legend(fontsize=7, loc="lower left")
    ax_eval.set(title="evaluations", xlabel="step", ylim=(0.0, 1.05))
    parts = []
    if history:
        last = history[-1]
        parts.append(f"step {int(last['step'])}: loss = {last['loss']:.3f}, "
                     f"kl = {last['kl']:.2f}")  # fmt: skip
    if evals:
        first, now = evals[0], evals[-1]
        parts.append(
            f"desirable {first['desirable_rate']:.2f} → {now['desirable_rate']:.2f}, "
            f"well formed {now['well_formed_rate']:.2f}, "
            f"distinct {first['distinct']} → {now['distinct']}"
        )
    return fig, "<br>".join(parts) or "no steps yet"


def adjective_bars(words, p_reference, p_policy, wanted_positive: bool, n_positive: int):
    """Lesson 06: P(first adjective) under the reference and the policy, side by side.

    ``words`` lists the positive adjectives first (``n_positive`` of them), then the negative
    ones; ``wanted_positive`` says which group agrees with the prompt's rating.
    Returns (fig, readout_html) with the probability of agreeing and how spread it is.
    """
    p_reference = np.asarray(p_reference, dtype=float)
    p_policy = np.asarray(p_policy, dtype=float)
    fig, ax = new_figure(1, width=7.5, height=3.0)
    x = np.arange(len(words))
    agrees = (x < n_positive) if wanted_positive else (x >= n_positive)
    ax.bar(x - 0.2, p_reference, width=0.4, color="0.65", label="reference")
    ax.bar(x + 0.2, p_policy, width=0.4, color=np.where(agrees, COLOR_D, COLOR_U),
           label="policy (green: agrees with the rating)")  # fmt: skip
    ax.set_xticks(x, list(words), rotation=60, fontsize=7)
    ax.set(ylabel="probability", title="first adjective after ' it was'")
    ax.legend(fontsize=7)

    def agree(p):
        return float(p[agrees].sum() / max(p.sum(), 1e-12))

    def effective(p):  # exp(entropy) of the adjective distribution: how many it really uses
        q = p / max(p.sum(), 1e-12)
        q = q[q > 0]
        return float(np.exp(-(q * np.log(q)).sum()))

    readout = (
        f"P(adjective agrees with the rating): reference = {agree(p_reference):.2f}, "
        f"policy = {agree(p_policy):.2f}<br>"
        f"adjectives in effective use (exp entropy): reference = {effective(p_reference):.1f}, "
        f"policy = {effective(p_policy):.1f}"
    )
    return fig, readout
