"""Lesson 02, the KL reference point: checks of the mismatched pairs and of z0 from a batch."""

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


# The misconceptions _z0_wrong lists, in its order.
_Z0_WRONG = ("diagonal", "halos", "off-diagonal", "grid", "clamp each", "sum", "swapped",
             "swapped, unclamped", "no clamp")  # fmt: skip


def _z0_wrong(logp_theta, logp_ref, mis_sign: int):
    """(wrong z0, message) for each misconception of ``z0_estimate``, most specific first.
    ``mis_sign``: the sign of the raw mean of the mismatched log-ratios."""
    n = len(logp_theta)
    rows, r = np.arange(n), logp_theta - logp_ref
    r_mis = r[rows, core.mismatched_indices(n)]
    raw = r_mis.mean()
    off_diagonal = r[~np.eye(n, dtype=bool)]
    swapped = (
        "your z0 is 0 where the mismatched pairs' mean log-ratio is positive: did you compute "
        "log pi_ref - log pi_theta? r is policy minus reference."
        if mis_sign > 0
        else "your z0 is the size of a negative mean: either the policy and the reference are "
        "swapped (r is log pi_theta - log pi_ref), or a negative mean was flipped instead of "
        "clamped."
    )
    return [
        (
            max(0.0, np.diag(r).mean()),
            f"you used the diagonal: {_OWN_COMPLETION}. Those are the labelled pairs, selected "
            "and pushed by the loss; z0 needs the mismatched ones.",
        ),
        (
            max(0.0, r[rows, core.mismatched_indices(n, convention="halos")].mean()),
            "you read the pairs x_i -> y_(i+1): HALOs' shift, or rows and columns swapped "
            "(rows are prompts, columns completions: logp[i, j] = log pi(y_j | x_i)). This "
            "exercise follows TRL, core.mismatched_indices(B).",
        ),
        (
            max(0.0, off_diagonal.mean()),
            "you averaged every off-diagonal cell of the grid: a trainer scores only B "
            "mismatched pairs, one per prompt, given by core.mismatched_indices(B).",
        ),
        (
            max(0.0, r.mean()),
            "you averaged the whole grid, labelled pairs included: z0 reads the mismatched "
            "pairs only, one per prompt.",
        ),
        (
            np.maximum(r_mis, 0.0).mean(),
            "you clamped each pair before averaging: average first, then clamp the mean "
            "(negative terms must pull the mean down).",
        ),
        (
            max(0.0, r_mis.sum()),
            "you summed the mismatched log-ratios instead of averaging: z0 is a MEAN over the "
            "microbatch, so it does not grow with the batch size.",
        ),
        (max(0.0, -raw), swapped),
        (-raw, "you computed log pi_ref - log pi_theta: r is policy minus reference."),
        (
            raw,
            "your z0 is negative: clamp at 0, as trainers do. The reference point is never "
            "below 0, even when the policy has moved away from the reference on average.",
        ),
    ]


def _z0_case(rng: np.random.Generator, size: int, mis_sign: int):
    """Grids (B, B) of a policy after some training: the labelled pairs on the diagonal pushed
    up or down by the loss, a drift elsewhere; the mismatched pairs' raw mean has the sign
    ``mis_sign`` and mixed signs inside. Redrawn until every misconception's z0 differs from the
    right one (where the case can tell them apart) and from the others."""
    rows, idx = np.arange(size), core.mismatched_indices(size)
    while True:
        r = rng.normal(0.4, 1.0, (size, size))
        r[rows, rows] = np.where(rng.random(size) < 0.7, 3.0, -3.0) + rng.normal(0.0, 0.5, size)
        if mis_sign < 0:  # only TRL's pairs below 0: the other cells' mean stays positive
            r[rows, idx] -= r[rows, idx].mean() + rng.uniform(0.1, 0.5)
        r_mis = r[rows, idx]
        if np.sign(r_mis.mean()) != mis_sign or abs(r_mis.mean()) < 0.05:
            continue
        if not ((r_mis < 0).any() and (r_mis > 0).any()):
            continue
        logp_ref = -rng.uniform(5.0, 40.0, (size, size))
        logp_theta = logp_ref + r
        expected = max(0.0, float((logp_theta - logp_ref)[rows, idx].mean()))
        values = [float(w) for w, _ in _z0_wrong(logp_theta, logp_ref, mis_sign)]
        wrong = dict(zip(_Z0_WRONG, values, strict=True))
        if size == 2:  # one shift, and the two off-diagonal cells are the mismatched pairs
            del wrong["halos"], wrong["off-diagonal"]
        if mis_sign > 0:
            del wrong["no clamp"]  # the same z0 as the answer's for a positive mean
        else:  # a negative mean: the sum clamps to 0 too, the unclamped swap is the clamped one
            del wrong["sum"], wrong["swapped, unclamped"]
        wrong = list(wrong.values())
        apart = np.diff(np.sort(wrong + [expected]))
        if (apart > 1e-3).all():
            return logp_theta, logp_ref


def check_z0_estimate(z0_estimate, hidden: bool = False) -> None:
    """Exercise 02.2: the microbatch z0 from the grids logp[i, j] = log pi(y_j | x_i), as
    trainers log it: TRL's mismatched pairs, their mean log-ratio, clamped at 0 (paper §4.1)."""
    name = "z0_estimate"
    rng = case_rng(LESSON, 3, hidden)
    plan = ((4, 1), (5, -1), (6, 1), (8, 1))
    if hidden:
        plan = ((2, 1), (3, -1), (7, 1), (16, -1), (32, 1), (64, 1))
    cases = [_z0_case(rng, size, sign) for size, sign in plan]
    if hidden:  # step 0: the policy is the reference, every r is 0
        logp_ref = -rng.uniform(5.0, 40.0, (4, 4))
        cases.append((logp_ref.copy(), logp_ref))
    for logp_theta, logp_ref in cases:
        n = len(logp_theta)
        rows, idx = np.arange(n), core.mismatched_indices(n)
        r_mis = np.asarray(core.log_ratio(logp_theta[rows, idx], logp_ref[rows, idx]))
        expected = core.z0_estimate(r_mis)
        result = call_learner(z0_estimate, logp_theta.copy(), logp_ref.copy(), name=name)
        got = as_float_array(result, name)
        if got.shape == (n,):
            raise CheckFailed(
                f"{name} returned {n} values, one per prompt: z0 is ONE number for the whole "
                "microbatch, the reference point shared by all its examples."
            )
        got = as_float_array(got, name, ())
        if close(got, expected):
            continue
        wrong = _z0_wrong(logp_theta, logp_ref, 1 if r_mis.mean() > 0 else -1)
        otherwise = (
            wrong[-1][1]  # negative, whatever else went wrong: the clamp is missing
            if got < 0
            else "z0 should be the reference point of this microbatch, from its mismatched pairs."
        )
        diagnose(got, expected, wrong, otherwise, name=name)
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
    "z0_estimate": {
        "check": check_z0_estimate,
        # batch_kto_loss logs z0 as its "kl" metric, from the mismatched pairs' log-probs.
        "twins": ("core.z0_estimate", "torch_ops.z0_estimate", "torch_ops.batch_kto_loss"),
        "allowed": ("core.mismatched_indices", "core.log_ratio"),
        "hint": "average and clamp the mismatched pairs' log-ratios yourself.",
    },
}
