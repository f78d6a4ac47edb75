"""Lesson 06, KTO on a tiny GPT-2: one microbatch's four sets of log-probs; a run's training
curves; each model's first adjective; the log-probs of the tokens every completion ends with."""

from __future__ import annotations

import numpy as np

from kto_course.figures.base import COLOR_D, COLOR_U, bars, new_figure, readout_html

__all__ = [
    "four_logps",
    "training_curves",
    "adjective_bars",
    "ending_logps",
]


def four_logps(policy, reference, labelled: dict, mismatched: dict) -> dict[str, np.ndarray]:
    """Lesson 06's table of one microbatch, as numbers: the sequence log-probs (B,) of the
    labelled pairs (x_i, y_i) and of the mismatched pairs (x_i, y_{i-1}), batches from
    ``lm.encode``, under the policy and the reference, named as in the lesson. Read only: no
    gradient, and the models are left as they were (the trainer's own forward pass)."""
    import torch

    from kto_course.train import sequence_logps_of

    with torch.no_grad():
        sets = {"logp_theta": (policy, labelled), "logp_ref": (reference, labelled),
                "kl_logp_theta": (policy, mismatched), "kl_logp_ref": (reference, mismatched)}
        return {name: sequence_logps_of(model, batch).cpu().numpy()
                for name, (model, batch) in sets.items()}  # fmt: skip


def ending_logps(model, tokenizer, rows: list[dict]) -> dict[str, float]:
    """Mean log pi of the two tokens every well-formed completion ends with, "." and <eos>, at
    their places in ``rows``' well-formed completions (lesson 06: what offline KTO at a small
    beta lowers for every sequence at once)."""
    import torch

    from kto_course import torch_ops
    from kto_course.lm import sampling, task

    rows = [r for r in rows if task.is_well_formed(r["completion"])]
    if not rows:
        raise ValueError("no well-formed completion among the rows: nothing ends with '.'.")
    batch = sampling.encode(tokenizer, [r["prompt"] for r in rows],
                            [r["completion"] for r in rows])  # fmt: skip
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        token_logps = torch_ops.token_logps(logits.logits, batch["input_ids"])
    # token_logps[:, t] predicts token t + 1; the completion's last token (t + 1) is <eos>.
    last = batch["completion_mask"].long().cumsum(1).argmax(1) - 1
    rows_ = torch.arange(len(rows))
    return {"<eos>": float(token_logps[rows_, last].mean()),
            ".": float(token_logps[rows_, last - 1].mean())}  # fmt: skip


def _series(rows: list[dict], key: str) -> np.ndarray:
    """One metric over a run's rows (NaN where a row lacks it)."""
    return np.array([row.get(key, np.nan) for row in rows], dtype=float)


def _trailing_mean(y: np.ndarray, window: int) -> np.ndarray:
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
    steps = _series(history, "step")
    if len(history):
        loss = _series(history, "loss")
        ax_loss.plot(steps, loss, color="0.75", lw=0.8)
        ax_loss.plot(steps, _trailing_mean(loss, smooth), color="0.1", lw=1.5)
        for key, color, label in (("rewards/chosen", COLOR_D, "rewards/chosen"),
                                  ("rewards/rejected", COLOR_U, "rewards/rejected"),
                                  ("kl", "0.4", "kl (z0)")):  # fmt: skip
            ax_reward.plot(steps, _trailing_mean(_series(history, key), smooth), color=color,
                           lw=1.5, label=label)  # fmt: skip
        ax_reward.axhline(0.0, color="0.8", lw=0.8)
        ax_reward.legend(fontsize=7, loc="best")
    ax_loss.set(title="loss", xlabel="step")
    ax_reward.set(title=f"rewards and kl ({smooth}-step mean)", xlabel="step")
    if evals:
        e_steps = _series(evals, "step")
        distinct = _series(evals, "distinct")
        ax_eval.plot(e_steps, _series(evals, "desirable_rate"), "o-", color=COLOR_D,
                     label="desirable")  # fmt: skip
        ax_eval.plot(e_steps, _series(evals, "well_formed_rate"), "s--", color="0.3",
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
    return fig, readout_html(*parts) or "no steps yet"


# The heights the adjective chart's probability axis snaps to.
Y_TOPS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0)


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
    bars(ax, x - 0.2, p_reference, width=0.4, color="0.65", label="reference")
    bars(ax, x + 0.2, p_policy, width=0.4, color=np.where(agrees, COLOR_D, COLOR_U),
         label="policy (green: agrees with the rating)")  # fmt: skip
    ax.set_xticks(x, list(words), rotation=60, fontsize=7)
    # The height snaps to a few fixed tops instead of following the tallest bar: most control
    # changes then keep the axes, and a live frame redraws only the bars (demos.base).
    tallest = 1.05 * max(p_reference.max(), p_policy.max())
    ax.set_ylim(0, next((top for top in Y_TOPS if top >= tallest), 1.0))
    ax.set(ylabel="probability", title="first adjective after ' it was'")
    ax.legend(fontsize=7)

    def agree(p):
        return float(p[agrees].sum() / max(p.sum(), 1e-12))

    def effective(p):  # exp(entropy) of the adjective distribution: how many it really uses
        q = p / max(p.sum(), 1e-12)
        q = q[q > 0]
        return float(np.exp(-(q * np.log(q)).sum()))

    return fig, readout_html(
        f"P(adjective agrees with the rating): reference = {agree(p_reference):.2f}, "
        f"policy = {agree(p_policy):.2f}",
        f"adjectives in effective use (exp entropy): reference = {effective(p_reference):.1f}, "
        f"policy = {effective(p_policy):.1f}",
    )
