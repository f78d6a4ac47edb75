"""Lesson 07, graduate to TRL: what the lesson measures about TRL's ``KTOTrainer`` and draws.

- ``parity_curves``: TRL's per-step metrics and the course's TRL-matching trainer, overlaid;
- ``parity_table``: the same runs as rows of numbers, with the largest difference per metric;
- ``choice_effects``: each of TRL's choices switched to the course's (``COURSE_CHOICES``), one
  at a time, and how far the run then moves from TRL's;
- ``paired_rows``, ``unpairing_pitfall``, ``microbatch_label_shares``: TRL's own
  pair-to-unpaired conversion and the one-label microbatches a sequential sampler then reads;
- ``z0_across_processes_curves``: each process's z0 estimate, their combination and the clamp.

The runs themselves are ``kto_course.trl_bridge``'s (TRL is imported only when one is made).
"""

from __future__ import annotations

import math

import numpy as np

from kto_course.figures.base import COLOR_D, COLOR_POLICY, COLOR_REF, COLOR_U, new_figure

__all__ = [
    "PARITY_METRICS",
    "COURSE_CHOICES",
    "max_diff",
    "parity_curves",
    "parity_table",
    "choice_effects",
    "microbatch_label_shares",
    "paired_rows",
    "unpairing_pitfall",
    "z0_across_processes_curves",
]

# What the course's lesson-06 loop (or a common slip) does instead of each of TRL's choices
# (``trl_bridge.TRL_CHOICES``); ``choice_effects`` switches them one at a time.
COURSE_CHOICES = {
    "optimizer": "adamw",  # torch.optim.AdamW with its default (non-fused) implementation
    "schedule": "warmup_constant",  # lesson 06: 20 warmup steps, then constant
    "order": "shuffled",  # lesson 06 shuffles the offline rows each epoch
    "kl_pairing": "halos",  # HALOs' convention: x_i paired with y_{i+1}
    "bos": "added",  # a BOS token in front of every prompt
    "eos": "missing",  # no EOS at the end of the completion
    "tokenization": "separate",  # prompt and completion tokenized apart (lesson 06's encode)
    "padding": "left",  # left padding to max_length without position ids (wrong positions)
    "logprobs": "log_softmax",  # lesson 06: log_softmax of the full logits (sequence_logps_of)
}


PARITY_METRICS = ("loss", "kl", "rewards/chosen", "rewards/rejected")


def max_diff(a: list[dict], b: list[dict], metric: str) -> float:
    """Largest |a - b| of ``metric`` over the steps both logged it (nan if none)."""
    diffs = [abs(x[metric] - y[metric]) for x, y in zip(a, b, strict=False)
             if metric in x and metric in y]  # fmt: skip
    return max(diffs) if diffs else float("nan")


def choice_effects(make_models, tokenizer, rows, steps=20, trl_history=None, names=None,
                   metrics=None, **cfg):  # fmt: skip
    """Max per-step loss difference against TRL when ONE choice takes the course's value.

    ``make_models()`` returns a fresh (policy, reference) pair. Returns
    ``{"trl_matching": d0, choice: d, ...}``: d0 is the matching run itself (~0), each other
    entry switches only that choice to ``COURSE_CHOICES[choice]``. With ``metrics`` (e.g.
    ``PARITY_METRICS``) each entry is ``{metric: max diff}`` instead. Measured, not asserted.
    """
    from kto_course.trl_bridge import DEFAULTS, TRL_CHOICES, run_trl, run_trl_matching

    if trl_history is None:
        policy, ref = make_models()
        trl_history = run_trl(policy, ref, tokenizer, rows, steps, **cfg)
    # A run in TRL's sequential order reads only its first steps x batch rows; the course's
    # trainer scores every row it is given when it is built, so it gets only those.
    read = rows[: steps * cfg.get("batch_size", DEFAULTS["batch_size"])]
    effects = {}
    for name in ["trl_matching", *(names or COURSE_CHOICES)]:
        choice = {} if name == "trl_matching" else {name: COURSE_CHOICES[name]}
        given = read if {**TRL_CHOICES, **choice}["order"] == "sequential" else rows
        policy, ref = make_models()
        history = run_trl_matching(policy, ref, tokenizer, given, steps, choices=choice, **cfg)
        if metrics:
            effects[name] = {m: max_diff(history, trl_history, m) for m in metrics}
        else:
            effects[name] = max_diff(history, trl_history, "loss")
    return effects


# -- the unpairing pitfall ---------------------------------------------------------------------


def microbatch_label_shares(labels, batch_size: int) -> dict:
    """Share of full microbatches (in order) that are all-desirable or all-undesirable."""
    batches = [labels[i : i + batch_size] for i in range(0, len(labels) - batch_size + 1,
                                                           batch_size)]  # fmt: skip
    n = max(1, len(batches))
    all_d = sum(all(b) for b in batches) / n
    all_u = sum(not any(b) for b in batches) / n
    return {"all_desirable": all_d, "all_undesirable": all_u, "single_label": all_d + all_u,
            "batches": len(batches)}  # fmt: skip


def paired_rows(rows) -> list[dict]:
    """Lesson-style preference pairs from unpaired rows: for each prompt, one desirable and
    one undesirable completion, ``{prompt, chosen, rejected}``."""
    by_prompt: dict[str, dict[bool, list[str]]] = {}
    for r in rows:
        by_prompt.setdefault(r["prompt"], {True: [], False: []})[bool(r["label"])].append(
            r["completion"]
        )
    pairs = []
    for prompt, groups in by_prompt.items():
        for good, bad in zip(groups[True], groups[False], strict=False):
            pairs.append({"prompt": prompt, "chosen": good, "rejected": bad})
    return pairs


def unpairing_pitfall(pairs, batch_size: int = 16, seed: int = 0) -> dict:
    """TRL's ``unpair_preference_dataset`` on preference pairs, then sequential microbatches,
    against the same rows shuffled after unpairing.

    Returns ``{"sequential": shares, "shuffled": shares, "rows": n}`` with
    ``microbatch_label_shares`` of each order.
    """
    from kto_course.trl_bridge import quiet, require_trl

    require_trl()
    from datasets import Dataset
    from trl.data_utils import unpair_preference_dataset

    with quiet():
        paired = Dataset.from_list(list(pairs))
        unpaired = unpair_preference_dataset(paired)
        shuffled = unpaired.shuffle(seed=seed)
    return {
        "sequential": microbatch_label_shares(list(unpaired["label"]), batch_size),
        "shuffled": microbatch_label_shares(list(shuffled["label"]), batch_size),
        "rows": len(unpaired),
    }


# -- the two runs side by side -----------------------------------------------------------------


def _series(history: list[dict], key: str) -> np.ndarray:
    """One metric over a run (NaN where a step lacks it: a one-label batch has no margin)."""
    return np.array([float(s.get(key, math.nan)) for s in history], dtype=float)


def parity_curves(trl_history: list[dict], ours: list[dict], metrics=PARITY_METRICS):
    """Lesson 07: TRL's per-step metrics (thick, light) with the course's matching run on top
    (thin, dark), one panel per metric, and below each the |difference| on a log scale.

    Returns the figure (``figures.new_figure``, never pyplot)."""
    fig, axes = new_figure(len(metrics), width=3.0, height=2.6)
    colors = {"rewards/chosen": COLOR_D, "rewards/rejected": COLOR_U}
    for ax, metric in zip(np.atleast_1d(axes), metrics, strict=True):
        steps_t, steps_o = _series(trl_history, "step"), _series(ours, "step")
        color = colors.get(metric, COLOR_POLICY)
        ax.plot(steps_t, _series(trl_history, metric), color=COLOR_REF, lw=5, alpha=0.6,
                label="TRL KTOTrainer")  # fmt: skip
        ax.plot(steps_o, _series(ours, metric), color=color, lw=1.4, marker=".",
                label="course, TRL-matching")  # fmt: skip
        diff = max_diff(ours, trl_history, metric)
        ax.set(title=f"{metric}\nmax |diff| = {diff:.1e}", xlabel="step")
        ax.title.set_fontsize(9)
    np.atleast_1d(axes)[0].legend(fontsize=7, loc="best")
    return fig


def parity_table(trl_history: list[dict], ours: list[dict], metrics=PARITY_METRICS,
                 every: int = 1) -> str:  # fmt: skip
    """The two runs as text: per step, TRL's value and the course's for each metric, then the
    largest |difference| over all steps (what the lesson quotes)."""
    width = 12
    head = f"{'step':>4} " + " ".join(f"{m + ' TRL':>{width + 6}} {'course':>{width}}"
                                      for m in metrics)  # fmt: skip
    lines = [head]
    for t, o in zip(trl_history, ours, strict=False):
        if (int(t["step"]) - 1) % every and t is not trl_history[-1]:
            continue
        cells = [f"{t.get(m, math.nan):>{width + 6}.7f} {o.get(m, math.nan):>{width}.7f}"
                 for m in metrics]  # fmt: skip
        lines.append(f"{int(t['step']):>4} " + " ".join(cells))
    lines.append("max |diff| " + ", ".join(f"{m} {max_diff(ours, trl_history, m):.1e}"
                                           for m in metrics))  # fmt: skip
    return "\n".join(lines)


def z0_across_processes_curves(local_z0, one_process_whole=None):
    """Lesson 07: each process's own z0 estimate before the gather (thin), their mean (what TRL
    clamps, dashed), the clamped value TRL logs as ``kl`` (thick), and optionally one process
    holding the whole global batch (its raw estimate, dotted). Returns the figure."""
    local = np.asarray(local_z0, dtype=float)
    steps = np.arange(1, local.shape[1] + 1)
    fig, ax = new_figure(1, width=6.4, height=3.0)
    for rank, row in enumerate(local):
        ax.plot(steps, row, lw=1, alpha=0.8, label=f"process {rank}: its own estimate")
    mean = local.mean(axis=0)
    ax.plot(steps, mean, "--", color="0.2", label="mean of the processes (before the clamp)")
    ax.plot(steps, np.maximum(0.0, mean), color=COLOR_POLICY, lw=3, alpha=0.6,
            label="kl = max(0, mean): what TRL logs")  # fmt: skip
    if one_process_whole is not None:
        ax.plot(steps, np.asarray(one_process_whole, dtype=float)[: len(steps)], ":",
                color=COLOR_U, label="1 process, same 16 rows, pairs across all 16")  # fmt: skip
    ax.axhline(0.0, color="0.8", lw=0.8)
    ax.set(xlabel="step", ylabel="z0 estimate (nats)", title="z0 across processes")
    ax.legend(fontsize=7, loc="lower left")
    return fig
