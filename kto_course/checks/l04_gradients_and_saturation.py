"""Lesson 04, gradients and saturation: checks of dL/dr by hand and by autograd (for any value
function), of the gradient that z0 would pass on, and of which examples carry the update."""

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


# Exactness of autograd_grad: float64 autograd answers agree with the reference to a few units
# of rounding (measured: under 2% of this tolerance); a central difference misses it tenfold or
# more at any step from 1e-7 to 1e-3, float32 autograd a thousandfold.
AUTOGRAD_RTOL, AUTOGRAD_ATOL = 1e-12, 1e-15


def _exact_in_float32(x: float, scale: int) -> float:
    """``x`` on a grid of 1/scale: a value that a float32 tensor holds exactly.

    ``torch.where(d, lambda_D, lambda_U)`` and ``torch.tensor(beta)`` make float32 tensors of
    Python floats; on this grid that loses nothing, so the tight tolerance measures how the
    gradient was computed, not the dtype a weight passed through.
    """
    return round(x * scale) / scale


def _value_case(rng, n_D: int, n_U: int, value):
    r, z0, d, beta, lambda_D, lambda_U = labelled_batch(rng, n_D, n_U)
    return (r, _exact_in_float32(z0, 128), d, _exact_in_float32(beta, 64),
            _exact_in_float32(lambda_D, 32), _exact_in_float32(lambda_U, 32), value)  # fmt: skip


def _value_name(value) -> str:
    import torch

    names = {torch.sigmoid: "torch.sigmoid", torch.tanh: "torch.tanh", torch.atan: "torch.atan",
             torch.special.ndtr: "torch.special.ndtr", torch.special.erf: "torch.special.erf",
             torch.nn.functional.logsigmoid: "torch.nn.functional.logsigmoid"}  # fmt: skip
    return names.get(value, getattr(value, "__name__", "a value function"))


def _autograd_reference(r, z0, d, beta, lambda_D, lambda_U, value, losses=None):
    """d(mean batch loss)/dr by float64 autograd through ``losses`` (default: the course's
    ``torch_ops.halo_losses``, the one definition of the loss with any value function)."""
    import torch

    from kto_course import torch_ops

    losses = losses or torch_ops.halo_losses
    r = torch.tensor(r, dtype=torch.float64, requires_grad=True)
    losses(r, z0, torch.as_tensor(d), beta, lambda_D, lambda_U, value).mean().backward()
    return r.grad.numpy()


def _mirrored(desirable_side: bool, undesirable_side: bool):
    """Losses written with the sigmoid's symmetry 1 - sigmoid(t) = sigmoid(-t), which other
    value functions lack: lambda_D * value(-x) and/or lambda_U * value(x)."""
    import torch

    def losses(r, z0, d, beta, lambda_D, lambda_U, value):
        x = beta * (r - z0)
        loss_D = lambda_D * (value(-x) if desirable_side else 1 - value(x))
        loss_U = lambda_U * (value(x) if undesirable_side else 1 - value(-x))
        return torch.where(d, loss_D, loss_U)

    return losses


def _autograd_suspects(r, z0, d, beta, lambda_D, lambda_U, value):
    """d(mean loss)/dr a learner gets from each common misconception, with its message."""
    import torch

    ref = _autograd_reference
    right = ref(r, z0, d, beta, lambda_D, lambda_U, value)
    B = r.size
    mirror = (
        "the loss is written with the sigmoid's symmetry, 1 - sigmoid(t) = sigmoid(-t), which "
        "this value function does not have: build each loss exactly as lambda_y * (1 - "
        "value(...)), with value(beta * delta) for desirable and value(-beta * delta) for "
        "undesirable examples."
    )
    sigmoid = ref(r, z0, d, beta, lambda_D, lambda_U, torch.sigmoid)
    ignored_value = [] if value is torch.sigmoid else [
        (
            sigmoid,
            "you used the sigmoid where the case hands you another value function: build the "
            "loss from `value`, whatever function it is, and let autograd differentiate it "
            "(a derivative written by hand fits only the function it was written for).",
        ),
        (
            B * sigmoid,
            "you used the sigmoid where the case hands you another value function, and "
            "differentiated the SUM of the losses (the batch loss is their mean).",
        ),
    ]
    return ignored_value + [
        (
            B * right,
            "you differentiated the SUM of the losses: the batch loss is their mean, so each "
            "example's gradient carries a factor 1/B.",
        ),
        (-right, "the sign is flipped: check the loss you call backward() on."),
        (
            ref(r, z0, ~d, beta, lambda_D, lambda_U, value),
            "the labels are swapped: desirable examples (True) take lambda_D * (1 - "
            "value(beta * delta)), undesirable ones lambda_U * (1 - value(-beta * delta)).",
        ),
        (
            ref(r, z0, d, beta, lambda_U, lambda_D, value),
            "lambda applied to the wrong class in your torch loss: lambda_D weights the "
            "desirable examples and lambda_U the undesirable ones.",
        ),
        (
            ref(r, z0, d, beta, 1.0, 1.0, value),
            "the class weight lambda_y is missing from your torch loss.",
        ),
        (ref(r, z0, d, 1.0, lambda_D, lambda_U, value), "beta is missing from your torch loss."),
        (ref(r, 0.0, d, beta, lambda_D, lambda_U, value), "z0 is ignored: delta = r - z0."),
        (ref(r, z0, d, beta, lambda_D, lambda_U, value, losses=_mirrored(True, True)), mirror),
        (ref(r, z0, d, beta, lambda_D, lambda_U, value, losses=_mirrored(False, True)), mirror),
        (ref(r, z0, d, beta, lambda_D, lambda_U, value, losses=_mirrored(True, False)), mirror),
    ]


def check_autograd_grad(autograd_grad, hidden: bool = False) -> None:
    """Lesson 04, exercise 2: d(mean batch loss)/dr by torch autograd for a value function the
    case hands over (the hidden ones are new to the learner), z0 a constant."""
    import torch

    rng = case_rng(LESSON, 2, hidden)
    if hidden:
        cases = [_value_case(rng, 4, 4, torch.special.ndtr), _value_case(rng, 1, 7, torch.atan),
                 _value_case(rng, 5, 0, torch.special.erf),
                 _value_case(rng, 3, 3, torch.nn.functional.logsigmoid),
                 _value_case(rng, 1, 0, torch.sigmoid), _value_case(rng, 0, 6, torch.tanh)]
    else:
        cases = [_value_case(rng, 3, 4, torch.sigmoid), _value_case(rng, 6, 2, torch.sigmoid),
                 _value_case(rng, 2, 5, torch.tanh)]  # fmt: skip
    for case in cases:
        r, value = case[0], case[-1]
        out = as_float_array(
            _call_autograd(
                autograd_grad, *case, name="autograd_grad",
                hint="backward() found no tensor to differentiate: create r with "
                "torch.tensor(..., requires_grad=True) and build the loss from it",
            ),
            "autograd_grad",
            shape=r.shape,
        )
        right = _autograd_reference(*case)
        if close(out, right, rtol=AUTOGRAD_RTOL, atol=AUTOGRAD_ATOL):
            continue
        if close(out, right, rtol=1e-4, atol=1e-9):
            raise CheckFailed(
                "autograd_grad is close to d(mean loss)/dr but not exact "
                f"(value = {_value_name(value)}): the check compares at float64 precision. A "
                "float32 tensor somewhere (torch.tensor of a Python list, or .float()) or a "
                "numerical difference (f(r + h) - f(r - h)) / 2h gets close, never exact; "
                "autograd on float64 tensors is exact."
            )
        diagnose(
            out,
            right,
            _autograd_suspects(*case),
            f"autograd_grad disagrees with d(mean loss)/dr {describe_batch(*case[:-1])} with "
            f"value = {_value_name(value)}: return r.grad after calling backward() on the MEAN "
            "of the per-example losses built from `value`.",
            rtol=1e-5,
            atol=1e-10,
        )
    passed("autograd_grad", len(cases))


def _carriers(order, g, share) -> np.ndarray:
    """The shortest prefix of ``order`` whose |dL/dr| adds up to at least ``share`` of the
    total (for the misconceptions that order the batch another way)."""
    carried = np.cumsum(g[order])
    return order[: int(np.searchsorted(carried, share * carried[-1])) + 1]


def _share_suspects(r, z0, d, beta, lambda_D, lambda_U, share):
    """Wrong sets of indices, each with the misconception that gives it."""
    g = np.abs(np.asarray(core.kto_loss_grad(r, z0, d, beta, lambda_D, lambda_U)))
    losses = np.asarray(core.kto_losses(r, z0, d, beta, lambda_D, lambda_U))
    signed = np.asarray(core.kto_loss_grad(r, z0, d, beta, lambda_D, lambda_U))
    right = core.largest_updates(r, z0, d, beta, lambda_D, lambda_U, share)
    order = np.argsort(-g, kind="stable")
    k, B = len(right), r.size
    by_loss = np.argsort(-losses, kind="stable")
    loss_words = (
        "you ranked by loss: the largest losses sit far on the WRONG side of z0, where the "
        "gradient has saturated. Rank by |dL/dr|."
    )
    signed_words = (
        "you ranked the signed gradient: desirable gradients are negative and undesirable ones "
        "positive, so rank by the magnitude |dL/dr|."
    )
    count_words = (
        "you kept a share of the EXAMPLES: `share` is a share of the batch's total |dL/dr|, "
        "and how many examples carry it depends on the batch."
    )
    return [
        (right[:-1], "your set stops one example short: it must carry AT LEAST `share` of the "
         "total, so it includes the example whose |dL/dr| takes the running total to `share`."),
        (order[: k + 1], "your set has one example too many: it must be the SMALLEST set that "
         "carries `share` of the total, so it stops at the first example that reaches it."),
        (_carriers(by_loss, g, share), loss_words),
        (_carriers(by_loss, losses, share), loss_words),
        (_carriers(np.argsort(signed, kind="stable"), g, share), signed_words),
        (_carriers(np.argsort(-signed, kind="stable"), g, share), signed_words),
        (_carriers(np.argsort(g, kind="stable"), g, share),
         "you started from the SMALLEST updates: list the examples from the largest |dL/dr| "
         "down."),
        (order[: int(np.ceil(share * B))], count_words),
        (order[: int(share * B)], count_words),
        (order[: int(round(share * B))], count_words),
        (_carriers(np.argsort(np.abs(r - z0), kind="stable"), g, share),
         "you ranked by closeness to z0 alone: the weight lambda_y scales each gradient too."),
        (_carriers(np.argsort(np.abs(r), kind="stable"), g, share),
         "you ranked by |r|: the gradient peaks at delta = r - z0 = 0, not at r = 0."),
    ]


def _share_case(rng, n_D, n_U, ties: bool = False):
    """A batch with some examples far from z0 (so that the largest loss and the largest update
    differ), weights that differ, and a share whose boundary is not a matter of rounding."""
    r, z0, d, beta, lambda_D, lambda_U = labelled_batch(rng, n_D, n_U)
    far = rng.random(r.size) < 0.3
    r = np.where(far, z0 + np.sign(rng.normal(size=r.size)) * rng.uniform(15, 40, r.size), r)
    if ties:  # two pairs of twins: same r, same label, so the same |dL/dr| exactly
        i, j, k, m = np.argsort(np.abs(r - z0), kind="stable")[:4]
        r[j], d[j], r[m], d[m] = r[i], d[i], r[k], d[k]
    g = np.abs(np.asarray(core.kto_loss_grad(r, z0, d, beta, lambda_D, lambda_U)))
    fractions = np.cumsum(np.sort(g)[::-1]) / g.sum()
    while True:
        share = round(float(rng.uniform(0.5, 0.95)), 2)
        if np.min(np.abs(fractions - share)) > 1e-3:
            return r, z0, d, beta, lambda_D, lambda_U, share


def _indices(raw, B: int) -> np.ndarray:
    """The learner's result as distinct example indices, or a CheckFailed naming the problem."""
    if raw is not None and np.asarray(raw).dtype == np.bool_ and np.shape(raw) == (B,):
        raise CheckFailed(
            "largest_updates returned a mask (one True/False per example): return the INDICES "
            "of the examples, largest |dL/dr| first, so that their order is part of the answer."
        )
    out = as_float_array(raw, "largest_updates")
    if out.ndim == 0:
        raise CheckFailed(
            "largest_updates returned a single number: return the example INDICES of the set "
            "(a 1-D array), not how many examples it has."
        )
    if out.ndim != 1:
        raise CheckFailed(
            f"largest_updates returned an array of shape {out.shape}: return a 1-D array of "
            "example indices (its length is the number of examples in the set)."
        )
    if not np.all(out == np.round(out)) or (out.size and (out.min() < 0 or out.max() >= B)):
        raise CheckFailed(
            "largest_updates must return example INDICES (whole numbers from 0 to B-1), e.g. "
            "from np.argsort, not gradient values or shares."
        )
    out = out.astype(int)
    if len(set(out.tolist())) != out.size:
        raise CheckFailed("largest_updates returned an index twice: each example counts once.")
    return out


def check_largest_updates(largest_updates, hidden: bool = False) -> None:
    """Lesson 04, exercise 4: the fewest examples that carry ``share`` of the batch's total
    |dL/dr|, largest first."""
    rng = case_rng(LESSON, 3, hidden)  # the seeds of exercises 3 and 4 predate their order
    cases = [_share_case(rng, 6, 6), _share_case(rng, 4, 8), _share_case(rng, 5, 5, ties=True)]
    if hidden:
        cases += [_share_case(rng, 9, 3), _share_case(rng, 2, 10, ties=True),
                  _share_case(rng, 10, 10), _share_case(rng, 0, 7)]  # fmt: skip
    for case in cases:
        r, z0, d, beta, lambda_D, lambda_U, share = case
        raw = call_learner(largest_updates, *case, name="largest_updates")
        out = _indices(raw, r.size)
        right = core.largest_updates(*case)
        if np.array_equal(out, right):
            continue
        g = np.abs(np.asarray(core.kto_loss_grad(r, z0, d, beta, lambda_D, lambda_U)))
        if out.size == right.size and np.array_equal(g[out], g[right]):
            raise CheckFailed(
                "examples with equal |dL/dr| come out of your ranking in another order: ties "
                "keep the batch order (a stable sort of -|dL/dr| does; reversing an ascending "
                "sort reverses the tied examples too)."
            )
        if set(out.tolist()) == set(right.tolist()):
            raise CheckFailed(
                "the right examples in the wrong order: list them from the largest |dL/dr| down."
            )
        for wrong, words in _share_suspects(*case):
            if not np.array_equal(wrong, right) and np.array_equal(out, wrong):
                raise CheckFailed(words)
        raise CheckFailed(
            f"largest_updates picked other examples than the fewest that carry {share:.0%} of "
            f"the total |dL/dr| {describe_batch(*case[:-1])}."
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
    """Lesson 04, exercise 3: the gradient that would reach the mismatched pairs through z0."""
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
        "twins": ("core.kto_loss_grad", "torch_ops.kto_losses", "torch_ops.halo_losses",
                  "torch_ops.batch_kto_loss"),
        "allowed": (),
        "hint": "build the loss from `value` and a tensor with requires_grad=True, and let "
        "autograd differentiate it.",
    },
    "grad_through_z0": {
        "check": check_grad_through_z0,
        "twins": ("torch_ops.kto_losses", "torch_ops.halo_losses", "torch_ops.batch_kto_loss"),
        "allowed": ("core.sigmoid",),
        "hint": "build the loss with z0 computed from r_mismatched yourself.",
    },
    "largest_updates": {
        "check": check_largest_updates,
        "twins": ("core.largest_updates",),
        "allowed": ("core.kto_loss_grad",),
        "hint": "rank the examples by |dL/dr| from core.kto_loss_grad and add them up yourself.",
    },
}
