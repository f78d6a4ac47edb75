"""Lesson 02, the KL reference point: checks of the mismatched pairs and of z0."""

from __future__ import annotations

import numpy as np

from kto_course import core
from kto_course.checks import base
from kto_course.checks.base import (
    CheckFailed,
    LearnerTimeout,
    as_float_array,
    call_learner,
    case_rng,
    close,
    diagnose,
    not_implemented,
    passed,
    per_example,
    time_limit,
)

LESSON = 2

_OWN_COMPLETION = "an example is paired with its own completion"


def check_mismatched_indices(mismatched_indices, hidden: bool = False) -> None:
    """Exercise 02.1: TRL's cyclic shift (x_i gets y_{i-1}); a ValueError for batch size 1."""
    name = "mismatched_indices"
    sizes = (2, 3, 4, 5, 8) if not hidden else (2, 3, 6, 7, 9, 16, 31, 64)
    for n in sizes:
        expected = core.mismatched_indices(n).astype(np.float64)
        got = per_example(call_learner(mismatched_indices, n, name=name), name, (n,))
        if close(got, expected):
            continue
        positions = np.arange(n)
        if close(got, positions[::-1]):
            raise CheckFailed(
                f"{name}: you reversed the batch. That works for even sizes, but for an odd "
                f"batch size (here {n}) the middle example is paired with its own completion. "
                "Use a cyclic shift."
            )
        if (got != np.round(got)).any() or (got < 0).any() or (got >= n).any():
            raise CheckFailed(
                f"{name}: with batch size {n} some entries are not positions 0..{n - 1}. "
                "Wrap around with % batch_size (so x_0 gets the last completion)."
            )
        if (got == positions).any():
            i = int(np.flatnonzero(got == positions)[0])
            raise CheckFailed(
                f"{name}: {_OWN_COMPLETION} (batch size {n}: x_{i} gets y_{i}). That is the "
                "labelled pair, not a mismatched one."
            )
        if close(got, core.mismatched_indices(n, convention="halos")):
            raise CheckFailed(
                f"{name}: you shifted the other way (x_i gets y_(i+1), HALOs' convention). "
                "This exercise follows TRL: x_i gets y_(i-1), and x_0 gets the last completion."
            )
        if len(set(got.tolist())) < n:
            raise CheckFailed(
                f"{name}: two prompts share one completion (batch size {n}): every completion "
                "should be used exactly once."
            )
        raise CheckFailed(
            f"{name}: for batch size {n} this pairing is not the cyclic shift x_i -> y_(i-1)."
        )
    for n in (1,) if not hidden else (1, 0):
        try:
            with time_limit(base.LEARNER_TIME_LIMIT):
                mismatched_indices(n)
        except ValueError:
            continue
        except NotImplementedError:
            raise not_implemented(name) from None
        except LearnerTimeout:
            raise CheckFailed(
                f"{name}({n}) never returned: is there a loop that never ends?"
            ) from None
        except Exception as e:
            raise CheckFailed(
                f"{name}({n}) raised {type(e).__name__}: raise a ValueError instead, with a "
                "message saying why a batch of size < 2 cannot estimate z0."
            ) from None
        raise CheckFailed(
            f"{name}({n}) returned instead of raising: a batch size < 2 has no mismatched pair "
            "(the only completion is the example's own). Raise a ValueError that says so."
        )
    passed(name, len(sizes) + (2 if hidden else 1))


def check_mismatched_log_ratios(mismatched_log_ratios, hidden: bool = False) -> None:
    """Exercise 02.2: r of the mismatched pairs from matrices logp[i, j] = log pi(y_j | x_i)."""
    name = "mismatched_log_ratios"
    rng = case_rng(LESSON, 2, hidden)
    sizes = (4, 5, 3) if not hidden else (2, 7, 16)
    for n in sizes:
        logp_ref = -rng.uniform(5.0, 40.0, (n, n))
        logp_theta = np.minimum(logp_ref + rng.normal(0.3, 1.5, (n, n)), -0.1)
        rows, idx = np.arange(n), core.mismatched_indices(n)
        expected = np.asarray(core.log_ratio(logp_theta[rows, idx], logp_ref[rows, idx]))
        result = call_learner(mismatched_log_ratios, logp_theta.copy(), logp_ref.copy(), name=name)
        got = per_example(result, name, (n,))
        if close(got, expected):
            continue
        halos = core.mismatched_indices(n, convention="halos")
        suspects = [
            (
                np.diag(logp_theta) - np.diag(logp_ref),
                f"you used the diagonal: {_OWN_COMPLETION}. Those are the labelled pairs; z0 "
                "needs the mismatched ones, which core.mismatched_indices(B) names.",
            ),
            (
                logp_theta[idx, rows] - logp_ref[idx, rows],
                "you swapped rows and columns: rows are prompts and columns completions, "
                "logp[i, j] = log pi(y_j | x_i).",
            ),
            (
                logp_theta[rows, halos] - logp_ref[rows, halos],
                "you shifted the other way (x_i gets y_(i+1)): use core.mismatched_indices(B), "
                "TRL's x_i gets y_(i-1).",
            ),
            (
                -expected,
                "you computed log pi_ref - log pi_theta: r is policy minus reference.",
            ),
            (
                logp_theta[rows, idx],
                "you returned the policy's log-probs only: r subtracts the reference's.",
            ),
        ]
        diagnose(
            got,
            expected,
            suspects,
            "the result is not r = logp_theta[i, idx[i]] - logp_ref[i, idx[i]] with idx = "
            "core.mismatched_indices(B).",
            name=name,
        )
    passed(name, len(sizes))


def _z0_case(rng: np.random.Generator, size: int, mean: float) -> np.ndarray:
    # Positive means get some negative entries, so clamping each term differs from the clamp.
    while True:
        r = rng.normal(mean, 1.0, size)
        if np.sign(r.mean()) == np.sign(mean) and (r < 0).any():
            return r


def check_z0_estimate(z0_estimate, hidden: bool = False) -> None:
    """Exercise 02.3: z0 = max(0, mean of the mismatched r) (paper §4.1, as trainers do it)."""
    name = "z0_estimate"
    rng = case_rng(LESSON, 3, hidden)
    plan = ((6, 0.6), (8, -0.5), (16, 0.3), (5, 1.2))
    if hidden:
        plan = ((2, 0.8), (3, -1.0), (64, 0.2), (200, -0.1), (9, 2.0))
    cases = [_z0_case(rng, size, mean) for size, mean in plan]
    if hidden:
        cases.append(np.full(4, -0.25))  # every pair negative: z0 is exactly 0
    for r_mis in cases:
        expected = core.z0_estimate(r_mis)
        got = as_float_array(call_learner(z0_estimate, r_mis.copy(), name=name), name, ())
        if close(got, expected):
            continue
        if got < 0:
            raise CheckFailed(
                f"{name}: your z0 is negative: clamp at 0. The reference point is never below 0, "
                "even when the policy has moved away from the reference on average."
            )
        suspects = [
            (
                max(0.0, r_mis.sum()),
                "you summed the mismatched r instead of averaging: z0 is a MEAN over the "
                "microbatch, so it does not grow with the batch size.",
            ),
            (
                r_mis.sum(),
                "you summed the mismatched r instead of averaging: z0 is a MEAN over the "
                "microbatch, so it does not grow with the batch size.",
            ),
            (
                np.maximum(r_mis, 0.0).mean(),
                "you clamped each example before averaging: average first, then clamp the "
                "mean at 0 (negative terms must pull the mean down).",
            ),
            (
                abs(r_mis.mean()),
                "you took the absolute value of the mean: a negative mean is clamped to 0, "
                "not flipped.",
            ),
        ]
        diagnose(
            got,
            expected,
            suspects,
            "z0 should be the reference point of this microbatch, from its mismatched log-ratios.",
            name=name,
        )
    passed(name, len(cases))


# The lesson's exercises, for the grader: check, answer twins, usable package functions (see
# l01_log_ratio.EXERCISES).
EXERCISES = {
    "mismatched_indices": {
        "check": check_mismatched_indices,
        "twins": ("core.mismatched_indices", "torch_ops.mismatched_indices"),
        "allowed": (),
        "hint": "build the indices from batch_size yourself.",
    },
    "mismatched_log_ratios": {
        "check": check_mismatched_log_ratios,
        "twins": (),
        "allowed": ("core.mismatched_indices", "core.log_ratio"),
        "hint": "",
    },
    "z0_estimate": {
        "check": check_z0_estimate,
        "twins": ("core.z0_estimate", "torch_ops.z0_estimate"),
        "allowed": (),
        "hint": "write it from mismatched_r.",
    },
}
