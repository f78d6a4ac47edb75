"""Lesson 05, KTO against DPO: one pair both ways, batch order, the toy experiments' results."""

from __future__ import annotations

import numpy as np
from matplotlib.colors import ListedColormap

from kto_course import core
from kto_course.figures.base import COLOR_D, COLOR_REF, COLOR_U, bars, new_figure, readout_html

__all__ = [
    "COLOR_DPO",
    "COLOR_KTO",
    "COLOR_KTO_WEIGHTED",
    "BATCH_ORDERS",
    "pair_margins",
    "batch_order",
    "noise_experiment_figure",
    "imbalance_experiment_figure",
    "ordering_experiment_table",
]

# The two methods in this lesson's plots (the labels keep COLOR_D / COLOR_U).
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
    return fig, readout_html(
        f"r_w = {r_w:.2f}, r_l = {r_l:.2f}, margin = {margin:.2f}, z0 = {z0:.2f}, "
        f"beta = {beta:.2f}",
        f"<b>DPO loss = {dpo:.3f}</b>, d loss / d r_w = {dpo_grad_w:.4f}",
        f"<b>KTO loss = {kto_mean:.3f}</b>; chosen row loss = {kto_w:.3f}, rejected row "
        f"loss = {kto_l:.3f}; d L / d r_w = {kto_grad_w:.4f}, d L / d r_l = {kto_grad_l:.4f}",
    )


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
    # Each microbatch's bar spans its own rows, on the same row axis as the left panel: the axes
    # stay put whatever the batch size, so a live frame redraws only the bars.
    starts = np.arange(0, len(labels), batch_size)
    widths = np.minimum(batch_size, len(labels) - starts)
    bars(ax_share, starts - 0.5, shares, widths, align="edge", color=COLOR_D, edgecolor="black",
         linewidth=0.5)
    bars(ax_share, starts - 0.5, 1 - shares, widths, bottom=shares, align="edge", color=COLOR_U,
         edgecolor="black", linewidth=0.5)
    ax_share.set_xlim(-0.5, len(labels) - 0.5)
    ax_share.set_xlabel("rows, one bar per microbatch")
    ax_share.set_ylabel("share of desirable rows")
    ax_share.set_ylim(0, 1)
    return fig, readout_html(
        f"{len(labels)} rows ({order}) in microbatches of {batch_size}",
        f"<b>one-label microbatches = {one_label} of {len(shares)}</b>; one-label share = "
        f"{100 * one_label / len(shares):.0f}%; desirable share per microbatch: "
        f"min = {shares.min():.2f}, max = {shares.max():.2f}",
    )


def _mean_band(ax, x, values, color, label):
    # Mean over seeds with the min-max band: with 3 seeds a standard error would overclaim.
    ax.plot(x, values.mean(axis=1), marker="o", color=color, label=label)
    ax.fill_between(x, values.min(axis=1), values.max(axis=1), color=color, alpha=0.15)


def _baseline_lines(ax, result):
    ax.axhline(result["reference"].mean(), color=COLOR_REF, linestyle="--", linewidth=1)
    ax.axhline(result["best"].mean(), color="black", linestyle=":", linewidth=1)
    ax.text(ax.get_xlim()[0], result["reference"].mean(), " reference", fontsize=7, va="bottom")
    ax.text(ax.get_xlim()[0], result["best"].mean(), " best possible", fontsize=7, va="top")


def _html_table(header, rows) -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{v}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def noise_experiment_figure(result: dict):
    """Lesson 05: final expected utility and KL against the label-noise fraction, for
    ``toy.noise_experiment``'s result. Returns ``(fig, table_html)``; means over seeds."""
    x = result["fractions"]
    fig, (ax_u, ax_kl) = new_figure(ncols=2)
    _mean_band(ax_u, x, result["dpo"], COLOR_DPO, "DPO (pairs swapped)")
    _mean_band(ax_u, x, result["kto"], COLOR_KTO, "KTO (labels flipped)")
    _baseline_lines(ax_u, result)
    ax_u.set_xlabel("fraction of corrupted labels")
    ax_u.set_ylabel("expected true utility")
    ax_u.legend(fontsize=7, loc="center left")
    _mean_band(ax_kl, x, result["dpo_kl"], COLOR_DPO, "DPO")
    _mean_band(ax_kl, x, result["kto_kl"], COLOR_KTO, "KTO")
    ax_kl.set_xlabel("fraction of corrupted labels")
    ax_kl.set_ylabel("KL(policy || reference)")
    rows = [
        (f"{f:.2f}", *(f"{result[k][i].mean():.2f}" for k in ("dpo", "kto", "dpo_kl", "kto_kl")))
        for i, f in enumerate(x)
    ]
    header = ("noise", "DPO utility", "KTO utility", "DPO KL", "KTO KL")
    return fig, _html_table(header, rows)


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
        _mean_band(ax_u, x, result[key], color, label)
        _mean_band(ax_kl, x, result[f"{key}_kl"], color, label)
    _baseline_lines(ax_u, result)
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
    return fig, _html_table(header, rows)


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
    return _html_table(("run", "expected true utility", "KL(policy || reference)"), rows)
