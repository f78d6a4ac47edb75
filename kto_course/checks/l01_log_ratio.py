"""Lesson 01, the log-ratio: checks of sequence log-probs, r, DPO's loss and "moved toward"."""

from __future__ import annotations

import numpy as np

from kto_course import core
from kto_course.checks.base import (
    CheckFailed,
    as_float_array,
    call_learner,
    case_rng,
    close,
    diagnose,
    passed,
    per_example,
)

LESSON = 1


def _token_case(rng: np.random.Generator, batch: int, length: int):
    """Token log-probs (B, T) and a completion mask: prompt tokens, completion tokens, padding."""
    token_logps = -rng.exponential(1.5, size=(batch, length))
    mask = np.zeros((batch, length), dtype=bool)
    for row in range(batch):
        prompt = int(rng.integers(1, length // 2))
        completion = int(rng.integers(2, length - prompt + 1))
        mask[row, prompt : prompt + completion] = True
    return token_logps, mask


def check_sequence_logps(sequence_logps, hidden: bool = False) -> None:
    """Exercise 01.1: log pi(y|x) as the SUM of token log-probs over the completion tokens."""
    name = "sequence_logps"
    rng = case_rng(LESSON, 1, hidden)
    cases = [_token_case(rng, b, t) for b, t in ((3, 10), (4, 12), (2, 7))]
    if hidden:
        cases.append(_token_case(rng, 6, 40))
        # Padding filled with 0 (as some code does): summing everything then adds only the prompt.
        token_logps, mask = _token_case(rng, 3, 9)
        after = np.cumsum(mask, axis=-1) == mask.sum(-1, keepdims=True)
        token_logps[after & ~mask] = 0.0
        cases.append((token_logps, mask))
        # One long example whose completion runs to the last token (no padding at all).
        token_logps = -rng.exponential(0.2, size=(1, 300))
        mask = np.zeros((1, 300), dtype=bool)
        mask[0, 20:] = True
        cases.append((token_logps, mask))
    for token_logps, mask in cases:
        expected = core.sequence_logps(token_logps, mask)
        # Copies: a function that edits its inputs in place must not change what we compare.
        result = call_learner(sequence_logps, token_logps.copy(), mask.copy(), name=name)
        got = per_example(result, name, expected.shape)
        if close(got, expected):
            continue
        first = mask.argmax(-1)
        from_first = np.arange(mask.shape[-1]) >= first[:, None]
        with np.errstate(all="ignore"):
            suspects = [
                (
                    expected / mask.sum(-1),
                    "you averaged token log-probs instead of summing: log pi(y|x) is the SUM "
                    "over the completion tokens, with no division by the length.",
                ),
                (
                    token_logps.mean(-1),
                    "you averaged token log-probs over all tokens instead of summing: sum, and "
                    "only where completion_mask is True.",
                ),
                (
                    token_logps.sum(-1),
                    "prompt tokens are included in the sum (and padding too): keep only the "
                    "tokens where completion_mask is True.",
                ),
                (
                    np.where(mask, 0.0, token_logps).sum(-1),
                    "you summed the tokens where completion_mask is False (prompt and padding): "
                    "sum the tokens where it is True.",
                ),
                (
                    np.where(from_first, token_logps, 0.0).sum(-1),
                    "padding tokens are included in the sum: the completion ends where "
                    "completion_mask turns False again.",
                ),
                (
                    np.exp(expected),
                    "you returned a probability (a product of token probabilities): return its "
                    "log, the sum of the token log-probs.",
                ),
            ]
        diagnose(
            got,
            expected,
            suspects,
            "the result is not the sum of the token log-probs over the completion tokens. "
            "Keep the tokens where completion_mask is True and sum along the last axis.",
            name=name,
        )
    passed(name, len(cases))


def check_log_ratio(log_ratio, hidden: bool = False) -> None:
    """Exercise 01.2: the implied reward r = log pi_theta(y|x) - log pi_ref(y|x) (paper Eq. 7)."""
    name = "log_ratio"
    rng = case_rng(LESSON, 2, hidden)
    cases = []
    for size in (5, 8):
        logp_ref = -rng.uniform(2.0, 40.0, size)
        logp_theta = np.minimum(logp_ref + rng.normal(0.0, 2.0, size), -0.1)
        cases.append((logp_theta, logp_ref))
    if hidden:
        cases.append((np.float64(-3.0), np.float64(-5.5)))  # one example, as plain numbers
        logp_ref = -rng.uniform(500.0, 2000.0, 6)  # long completions: large sums
        cases.append((logp_ref + rng.normal(0.0, 5.0, 6), logp_ref))
    for logp_theta, logp_ref in cases:
        expected = np.asarray(core.log_ratio(logp_theta, logp_ref))
        result = call_learner(log_ratio, np.copy(logp_theta), np.copy(logp_ref), name=name)
        got = per_example(result, name, expected.shape)
        if close(got, expected):
            continue
        with np.errstate(all="ignore"):
            suspects = [
                (
                    -expected,
                    "you computed log pi_ref - log pi_theta: r is policy minus reference, "
                    "positive when the policy made y MORE likely than the reference did.",
                ),
                (
                    np.abs(expected),
                    "you took the absolute value: r keeps its sign, negative when the policy "
                    "made y less likely than the reference did.",
                ),
                (
                    np.asarray(logp_theta) / np.asarray(logp_ref),
                    "you divided the log-probs: the log of a ratio is a DIFFERENCE of logs.",
                ),
                (
                    np.exp(expected),
                    "you returned the probability ratio pi_theta / pi_ref: r is its log.",
                ),
            ]
        diagnose(
            got, expected, suspects, "r should be log pi_theta(y|x) - log pi_ref(y|x).", name=name
        )
    passed(name, len(cases))


def check_dpo_loss(dpo_loss, hidden: bool = False) -> None:
    """Exercise 01.3: DPO's loss -log sigmoid(beta * (r_w - r_l)), computed stably."""
    name = "dpo_loss"
    rng = case_rng(LESSON, 3, hidden)
    unstable = (
        f"{name}: for a pair the policy gets badly wrong (beta * margin = -800) your loss is not "
        "the right finite number: sigmoid(-800) underflows to 0 and log(0) = -inf, and clipping "
        "only hides it. Compute log sigmoid stably: in a form that never takes the log of a "
        "probability that has already underflowed to 0."
    )
    cases = [(rng.normal(0.0, 6.0, 6), rng.normal(0.0, 6.0, 6), beta) for beta in (0.1, 0.5)]
    if hidden:
        cases += [(rng.normal(0.0, 30.0, 9), rng.normal(0.0, 30.0, 9), beta) for beta in (1.0, 2)]
        cases.append((np.array([3.0]), np.array([3.0]), 0.3))  # a tie: margin 0
    for r_w, r_l, beta in cases:
        expected = core.dpo_loss(r_w, r_l, beta)
        result = call_learner(dpo_loss, r_w.copy(), r_l.copy(), beta, name=name)
        got = per_example(result, name, expected.shape)
        if close(got, expected):
            continue
        margin = r_w - r_l
        # Right wherever beta * margin is moderate, wrong only far on the losing side: unstable.
        moderate = beta * margin > -30.0
        if moderate.any() and close(got[moderate], expected[moderate]):
            raise CheckFailed(unstable)
        suspects = [
            (
                core.dpo_loss(r_l, r_w, beta),
                "you swapped the preferred and rejected completions: the margin is r_w - r_l "
                "(the winner's log-ratio minus the loser's).",
            ),
            (
                -expected,
                "your loss is negative: the loss is MINUS log sigmoid(beta * margin), which is "
                "never negative.",
            ),
            (
                core.dpo_loss(r_w, r_l, 1.0),
                "beta is missing: DPO multiplies the margin by beta before the sigmoid.",
            ),
            (
                beta * core.dpo_loss(r_w, r_l, 1.0),
                "beta multiplies the margin inside the sigmoid, not the loss outside it.",
            ),
            (
                core.sigmoid(-beta * margin),
                "you left out the log: the loss is -log sigmoid(beta * margin).",
            ),
            (
                -core.sigmoid(beta * margin),
                "you left out the log: the loss is -log sigmoid(beta * margin).",
            ),
        ]
        diagnose(
            got,
            expected,
            suspects,
            "the result is not -log sigmoid(beta * (r_w - r_l)) for each pair.",
            name=name,
        )
    # A pair the policy gets badly wrong: beta * margin = -800. Naive -log(sigmoid(x)) overflows.
    r_w, r_l = np.array([0.0, 0.0, 500.0]), np.array([0.0, 800.0, 0.0])
    expected = core.dpo_loss(r_w, r_l, 1.0)
    result = call_learner(dpo_loss, r_w.copy(), r_l.copy(), 1.0, name=name)
    if result is not None:
        try:
            finite = np.isfinite(np.asarray(result, dtype=np.float64)).all()
        except (TypeError, ValueError):
            finite = True  # as_float_array below names the problem
        if not finite:
            raise CheckFailed(unstable)
    got = per_example(result, name, expected.shape)
    if not close(got, expected):
        raise CheckFailed(unstable)
    passed(name, len(cases) + 1)


def _moved_case(rng: np.random.Generator, k: int):
    # Redraw until the right answer differs from every wrong one (and, for K > 3, the wrong ones
    # from each other), so that each misconception gets its own message.
    while True:
        logp_ref = -rng.uniform(5.0, 30.0, k)
        logp_theta = logp_ref + rng.normal(0.0, 3.0, k)
        r = logp_theta - logp_ref
        best = int(np.argmax(r))
        wrong = [int(np.argmax(logp_theta)), int(np.argmax(logp_ref)), int(np.argmin(r))]
        if best in wrong or (k > 3 and len(set(wrong + [best + 1])) < 4):
            continue
        return logp_theta, logp_ref


def check_moved_toward(moved_toward, hidden: bool = False) -> None:
    """Exercise 01.4: which completion did the policy move toward? The one with the largest r."""
    name = "moved_toward"
    rng = case_rng(LESSON, 4, hidden)
    cases = [_moved_case(rng, k) for k in ((4, 5, 6) if not hidden else (4, 5, 7, 9, 12, 3))]
    for logp_theta, logp_ref in cases:
        r = np.asarray(core.log_ratio(logp_theta, logp_ref))
        expected = float(np.argmax(r))
        result = call_learner(moved_toward, logp_theta.copy(), logp_ref.copy(), name=name)
        got = as_float_array(result, name, shape=())
        if got == expected:
            continue
        if got != np.round(got):
            raise CheckFailed(
                f"{name} returned {float(got):.3g}, which is not a position: return the INDEX "
                "of the completion (a whole number from 0 to K-1), e.g. with np.argmax."
            )
        suspects = [
            (
                np.argmax(logp_theta),
                "you picked the completion the policy finds most likely. The question is which "
                "one it MOVED TOWARD relative to the reference: the largest r, not the largest "
                "log pi_theta.",
            ),
            (
                np.argmax(logp_ref),
                "you picked the completion the reference finds most likely: compare the policy "
                "with the reference through r = log pi_theta - log pi_ref.",
            ),
            (
                np.argmin(r),
                "you picked the completion the policy moved AWAY from (the smallest r): take "
                "the largest r.",
            ),
            (expected + 1, "Python counts positions from 0: the first completion is index 0."),
        ]
        diagnose(
            got, expected, suspects, "that is not the completion with the largest r.", name=name
        )
    passed(name, len(cases))


# The lesson's exercises, for the grader (kto_course/grading/verdicts.py): each one's check, its
# answer twins (the package functions that compute its answer: unreachable while it is graded;
# calling one fails the exercise with "you called the course's own ...") and the functions of
# the package it may use.
EXERCISES = {
    "sequence_logps": {
        "check": check_sequence_logps,
        "twins": ("core.sequence_logps", "torch_ops.sequence_logps",
                  "torch_ops.sequence_logps_from_logits"),
        "allowed": (),
        "hint": "sum the token log-probs yourself, from token_logps and completion_mask.",
    },
    "log_ratio": {
        "check": check_log_ratio,
        "twins": ("core.log_ratio",),
        "allowed": (),
        "hint": "write r from logp_theta and logp_ref.",
    },
    "moved_toward": {
        "check": check_moved_toward,
        "twins": (),
        "allowed": ("core.log_ratio",),
        "hint": "",
    },
    "dpo_loss": {
        "check": check_dpo_loss,
        "twins": ("core.dpo_loss", "torch_ops.dpo_loss"),
        "allowed": ("core.sigmoid", "core.log_sigmoid"),
        "hint": "write the loss from r_w, r_l and beta with NumPy.",
    },
}
