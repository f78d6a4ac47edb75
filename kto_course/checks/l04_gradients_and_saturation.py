"""Lesson 04, gradients and saturation: checks of dL/dr by hand and by autograd, of the
gradient that z0 would pass on, and of where the updates concentrate."""

from __future__ import annotations

import numpy as np

from kto_course import core
from kto_course.checks.base import (
    CheckFailed,
    as_float_array,
    call_learner,
    case_rng,
    close,
    compare_on_labelled_batches,
    describe_batch,
    diagnose,
    labelled_batch,
    mismatched_r,
    passed,
)

LESSON = 4


def _grad_suspects(r, z0, d, beta, lambda_D, lambda_U):
    """dL/dr a learner gets from each common misconception, with its message."""
    g = np.asarray(core.kto_loss_grad(r, z0, d, beta, lambda_D, lambda_U))
    s = np.asarray(core.sigmoid(beta * (r - z0)))
    lam = np.where(d, lambda_D, lambda_U)
    sign = np.where(d, -1.0, 1.0)
    return [
        (
            -g,
            "the signs are swapped: a desirable loss falls as r rises, so dL/dr < 0 for "
            "desirable examples and > 0 for undesirable ones.",
        ),
        (
            -np.abs(g),
            "your undesirable gradient is negative: raising r RAISES an undesirable example's "
            "loss, so its dL/dr is positive.",
        ),
        (
            np.abs(g),
            "your desirable gradient is positive: raising r LOWERS a desirable example's loss, "
            "so its dL/dr is negative.",
        ),
        (
            g / beta,
            "the chain rule's factor beta is missing: d/dr sigmoid(beta * delta) = "
            "beta * s * (1 - s).",
        ),
        (
            core.kto_loss_grad(r, z0, d, 1.0, lambda_D, lambda_U),
            "beta is missing: s = sigmoid(beta * (r - z0)) and the derivative carries a factor "
            "beta.",
        ),
        (
            sign * lam * beta * np.where(d, s, 1 - s),
            "the derivative of the sigmoid is s * (1 - s), not s (or 1 - s) alone.",
        ),
        (
            sign * lam * beta * np.where(d, 1 - s, s),
            "the derivative of the sigmoid is s * (1 - s), not s (or 1 - s) alone.",
        ),
        (
            core.kto_loss_grad(r, z0, d, beta, lambda_U, lambda_D),
            "lambda applied to the wrong class: lambda_D weights the desirable examples and "
            "lambda_U the undesirable ones.",
        ),
        (
            core.kto_loss_grad(r, z0, d, beta, 1.0, 1.0),
            "the class weight lambda_y is missing from the derivative.",
        ),
        (
            core.kto_loss_grad(r, 0.0, d, beta, lambda_D, lambda_U),
            "z0 is ignored: s = sigmoid(beta * (r - z0)).",
        ),
        (
            g / r.size,
            "you divided by the batch size: return the derivative of each example's OWN loss "
            "L_i with respect to its own r_i.",
        ),
    ]


def check_kto_loss_grad(kto_loss_grad, hidden: bool = False) -> None:
    """Lesson 04, exercise 1: the analytic dL/dr with z0 held fixed."""
    sizes = [(3, 4), (5, 3), (1, 1)] + ([(2, 7), (6, 0), (0, 5)] if hidden else [])
    compare_on_labelled_batches(
        kto_loss_grad,
        "kto_loss_grad",
        case_rng(LESSON, 1, hidden),
        sizes,
        core.kto_loss_grad,
        _grad_suspects,
        "dL/dr",
        far_nan="kto_loss_grad returned NaN far from z0 (|beta * delta| in the thousands): "
        "exp() overflowed. Use a stable sigmoid such as core.sigmoid.",
        far_wrong="kto_loss_grad is not ~0 far from z0: the gradient saturates (vanishes) when "
        "|delta| is large, on either side of the baseline.",
        atol=1e-12,
    )


def _call_autograd(fn, *args, name: str, hint: str):
    """call_learner, plus the course's words for autograd's 'does not require grad' error."""
    try:
        return call_learner(fn, *args, name=name)
    except CheckFailed as failure:
        if "does not require grad" in str(failure):
            raise CheckFailed(f"{failure} ({hint})") from None
        raise


def check_autograd_grad(autograd_grad, hidden: bool = False) -> None:
    """Lesson 04, exercise 2: d(mean batch loss)/dr by torch autograd, z0 a constant."""
    rng = case_rng(LESSON, 2, hidden)
    cases = [labelled_batch(rng, 3, 4), labelled_batch(rng, 6, 2)]
    if hidden:
        cases += [labelled_batch(rng, 1, 8), labelled_batch(rng, 5, 0), labelled_batch(rng, 1, 0)]
    for case in cases:
        r, z0, d, beta, lambda_D, lambda_U = case
        out = as_float_array(
            _call_autograd(
                autograd_grad, r, z0, d, beta, lambda_D, lambda_U, name="autograd_grad",
                hint="backward() found no tensor to differentiate: create r with "
                "torch.tensor(..., requires_grad=True) and build the loss from it",
            ),
            "autograd_grad",
            shape=r.shape,
        )
        g = np.asarray(core.kto_loss_grad(*case))
        right = g / r.size
        if close(out, right, rtol=1e-5, atol=1e-10):
            continue
        diagnoses = [
            (
                g,
                "you differentiated the SUM of the losses: the batch loss is their mean, so "
                "each example's gradient carries a factor 1/B.",
            ),
            (-right, "the sign is flipped: check the loss you call backward() on."),
            (
                np.asarray(core.kto_loss_grad(r, z0, d, beta, lambda_U, lambda_D)) / r.size,
                "lambda applied to the wrong class in your torch loss.",
            ),
            (
                np.asarray(core.kto_loss_grad(r, z0, d, 1.0, lambda_D, lambda_U)) / r.size,
                "beta is missing from your torch loss.",
            ),
        ]
        diagnose(
            out,
            right,
            diagnoses,
            f"autograd_grad disagrees with d(mean loss)/dr {describe_batch(*case)}: return "
            "r.grad after calling backward() on the MEAN of the per-example losses.",
            rtol=1e-5,
            atol=1e-10,
        )
    passed("autograd_grad", len(cases))


def _rank_suspects(r, z0, d, beta, lambda_D, lambda_U, k):
    g = np.asarray(core.kto_loss_grad(r, z0, d, beta, lambda_D, lambda_U))
    losses = np.asarray(core.kto_losses(r, z0, d, beta, lambda_D, lambda_U))
    return [
        (
            np.argsort(-losses, kind="stable")[:k],
            "you ranked by loss: the largest losses sit far on the WRONG side of z0, where the "
            "gradient has saturated. Rank by |dL/dr|.",
        ),
        (
            np.argsort(np.abs(g), kind="stable")[:k],
            "you returned the SMALLEST updates: sort by |dL/dr| from largest to smallest.",
        ),
        (
            np.argsort(-g, kind="stable")[:k],
            "you ranked the signed gradient: desirable gradients are negative, so rank by the "
            "magnitude |dL/dr|.",
        ),
        (
            np.argsort(g, kind="stable")[:k],
            "you ranked the signed gradient: undesirable gradients are positive, so rank by the "
            "magnitude |dL/dr|.",
        ),
        (
            np.argsort(np.abs(r - z0), kind="stable")[:k],
            "you ranked by closeness to z0 alone: the weight lambda_y scales each gradient too.",
        ),
        (
            np.argsort(np.abs(r), kind="stable")[:k],
            "you ranked by |r|: the gradient peaks at delta = r - z0 = 0, not at r = 0.",
        ),
    ]


def _rank_case(rng, n_D, n_U, k):
    r, z0, d, beta, lambda_D, lambda_U = labelled_batch(rng, n_D, n_U)
    # Spread some examples far out, so that the largest loss and the largest gradient differ.
    far = rng.random(r.size) < 0.3
    r = np.where(far, z0 + np.sign(rng.normal(size=r.size)) * rng.uniform(15, 40, r.size), r)
    return r, z0, d, beta, lambda_D, lambda_U, k


def check_largest_updates(largest_updates, hidden: bool = False) -> None:
    """Lesson 04, exercise 3: the k examples with the largest |dL/dr|, largest first."""
    rng = case_rng(LESSON, 3, hidden)
    cases = [_rank_case(rng, 6, 6, 3), _rank_case(rng, 4, 8, 4)]
    cases += [_rank_case(rng, 5, 5, 1)]
    if hidden:
        cases += [_rank_case(rng, 9, 3, 5), _rank_case(rng, 2, 10, 2)]
        cases += [_rank_case(rng, 4, 4, 8)]
    for case in cases:
        r, z0, d, beta, lambda_D, lambda_U, k = case
        raw = call_learner(
            largest_updates, r, z0, d, beta, lambda_D, lambda_U, k, name="largest_updates"
        )
        out = as_float_array(raw, "largest_updates", shape=(k,))
        if not np.all(out == np.round(out)) or out.min() < 0 or out.max() >= r.size:
            raise CheckFailed(
                "largest_updates must return example INDICES (whole numbers from 0 to B-1), "
                "e.g. from np.argsort, not gradient values."
            )
        out = out.astype(int)
        g = np.abs(np.asarray(core.kto_loss_grad(r, z0, d, beta, lambda_D, lambda_U)))
        right = np.argsort(-g, kind="stable")[:k]
        if np.array_equal(out, right):
            continue
        if set(out.tolist()) == set(right.tolist()):
            raise CheckFailed(
                "the right examples in the wrong order: list them from the largest |dL/dr| down."
            )
        diagnose(
            out,
            right,
            _rank_suspects(*case),
            f"largest_updates picked other examples than the {k} with the largest |dL/dr| "
            f"{describe_batch(r, z0, d, beta, lambda_D, lambda_U)}.",
        )
    passed("largest_updates", len(cases))


def _through_z0_reference(r, r_mismatched, d, beta, lambda_D, lambda_U):
    """d(mean loss)/d r'_j if z0 = max(0, mean(r')) were NOT detached (chain rule on core)."""
    raw = float(np.mean(r_mismatched))
    g = np.asarray(core.kto_loss_grad(r, max(0.0, raw), d, beta, lambda_D, lambda_U))
    # delta = r - z0, so dL_i/dz0 = -dL_i/dr_i; each r'_j moves z0 by 1/B, unless clamped.
    dz0 = 1.0 / r_mismatched.size if raw > 0 else 0.0
    return np.full(r_mismatched.shape, -g.mean() * dz0), g, raw


def _through_z0_case(rng, n_D, n_U, z0_sign):
    r, _, d, beta, lambda_D, lambda_U = labelled_batch(rng, n_D, n_U)
    return r, mismatched_r(rng, r.size, z0_sign), d, beta, lambda_D, lambda_U


def check_grad_through_z0(grad_through_z0, hidden: bool = False) -> None:
    """Lesson 04, exercise 4: the gradient that would reach the mismatched pairs through z0."""
    rng = case_rng(LESSON, 4, hidden)
    cases = [_through_z0_case(rng, 4, 3, +1), _through_z0_case(rng, 6, 0, +1)]
    cases += [_through_z0_case(rng, 3, 4, -1)]
    if hidden:
        cases += [_through_z0_case(rng, 0, 5, +1), _through_z0_case(rng, 2, 7, +1)]
        cases += [_through_z0_case(rng, 5, 2, -1)]
    for case in cases:
        r, r_mis = case[0], case[1]
        out = as_float_array(
            _call_autograd(
                grad_through_z0, *case, name="grad_through_z0",
                hint="nothing in your loss depends on r_mismatched: a DETACHED z0 lets no "
                "gradient through. This exercise asks what would flow if z0 were NOT detached",
            ),
            "grad_through_z0",
            shape=r_mis.shape,
        )
        right, g, raw = _through_z0_reference(*case)
        if close(out, right, rtol=1e-5, atol=1e-12):
            continue
        B = r.size
        if raw <= 0 and not close(out, 0.0, atol=1e-12):
            raise CheckFailed(
                "the raw mean of the mismatched log-ratios is negative here, so z0 is clamped at "
                "0 and no gradient passes through the clamp."
            )
        diagnoses = [
            (
                np.zeros(B),
                "your gradient is zero: that is what a DETACHED z0 gives. This exercise asks "
                "what would reach the mismatched pairs if z0 were NOT detached.",
            ),
            (
                -right,
                "the sign is flipped: delta = r - z0, so raising z0 acts like lowering r: "
                "dL/dz0 = -dL/dr.",
            ),
            (
                np.full(B, -g.mean()),
                "a factor 1/B is missing: z0 is the MEAN of the mismatched log-ratios, so each "
                "one moves z0 by 1/B.",
            ),
            (
                np.full(B, -g.sum()),
                "two factors 1/B are missing: the loss is a mean over the batch and z0 a mean "
                "over the mismatched pairs.",
            ),
        ]
        diagnose(
            out,
            right,
            diagnoses,
            "grad_through_z0 disagrees with d(mean loss)/d r_mismatched for an attached "
            f"z0 {describe_batch(r, max(raw, 0.0), *case[2:])}.",
            rtol=1e-5,
            atol=1e-12,
        )
    passed("grad_through_z0", len(cases))


# The lesson's exercises, for the grader: check, answer twins, usable package functions (see
# l01_log_ratio.EXERCISES).
EXERCISES = {
    "kto_loss_grad": {
        "check": check_kto_loss_grad,
        "twins": ("core.kto_loss_grad",),
        "allowed": ("core.sigmoid",),
        "hint": "differentiate the loss by hand, from r, z0 and beta.",
    },
    "autograd_grad": {
        "check": check_autograd_grad,
        "twins": ("core.kto_loss_grad", "torch_ops.kto_losses", "torch_ops.batch_kto_loss"),
        "allowed": ("core.sigmoid",),
        "hint": "build the loss from a tensor with requires_grad=True and let autograd "
        "differentiate it.",
    },
    "grad_through_z0": {
        "check": check_grad_through_z0,
        "twins": ("torch_ops.kto_losses", "torch_ops.batch_kto_loss"),
        "allowed": ("core.sigmoid",),
        "hint": "build the loss with z0 computed from r_mismatched yourself.",
    },
    "largest_updates": {
        "check": check_largest_updates,
        "twins": (),
        "allowed": ("core.kto_loss_grad",),
        "hint": "",
    },
}
