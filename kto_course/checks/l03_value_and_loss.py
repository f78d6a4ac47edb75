"""Lesson 03, value and loss: checks of the per-example KTO loss, the batch loss and the
imbalance rule for lambda_D and lambda_U."""

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
    diagnose,
    labelled_batch,
    mismatched_r,
    passed,
    returned_nan,
)

LESSON = 3


def _loss_suspects(r, z0, d, beta, lambda_D, lambda_U):
    """Per-example losses a learner gets from each common misconception, with its message."""
    delta = r - z0
    s_pos, s_neg = core.sigmoid(beta * delta), core.sigmoid(-beta * delta)
    lam = np.where(d, lambda_D, lambda_U)
    right = core.kto_losses(r, z0, d, beta, lambda_D, lambda_U)
    return [
        (
            np.where(d, lambda_D * s_pos, lambda_U * s_neg),
            "the two labels are swapped, or you returned the value v_y instead of the loss "
            "lambda_y - v_y: a desirable example's loss must FALL as r rises above z0, an "
            "undesirable example's loss must RISE.",
        ),
        (
            np.where(d, lambda_D * s_neg, lambda_U * s_neg),
            "your undesirable loss falls as r rises: the undesirable value is "
            "v_U = lambda_U * sigmoid(-beta * delta), not sigmoid(beta * delta).",
        ),
        (
            np.where(d, lambda_D * s_pos, lambda_U * s_pos),
            "your desirable loss rises as r rises: v_D = lambda_D * sigmoid(beta * delta), so "
            "L_D = lambda_D * (1 - sigmoid(beta * delta)) falls as r climbs above z0.",
        ),
        (
            core.kto_losses(r, z0, d, 1.0, lambda_D, lambda_U),
            "beta is missing: the value functions take sigmoid(beta * delta); beta sets how fast "
            "the loss saturates.",
        ),
        (
            core.kto_losses(r, 0.0, d, beta, lambda_D, lambda_U),
            "z0 is ignored: the margin is delta = r - z0, measured from the KL reference point.",
        ),
        (
            core.kto_losses(r + 2 * z0, z0, d, beta, lambda_D, lambda_U),
            "z0 has the wrong sign: the margin is delta = r - z0, not r + z0.",
        ),
        (
            core.kto_losses(r, z0, d, beta, lambda_U, lambda_D),
            "lambda applied to the wrong class: lambda_D weights the desirable examples and "
            "lambda_U the undesirable ones.",
        ),
        (
            core.kto_losses(r, z0, d, beta, 1.0, 1.0),
            "the class weights are missing: L = lambda_y - v_y with v_y = lambda_y * sigmoid(...).",
        ),
        (
            1.0 - (lam - right),
            "you subtracted the value from 1: the loss is lambda_y - v_y, and v_y already carries "
            "lambda_y.",
        ),
        (
            -(lam - right),
            "you returned -v_y: the loss is lambda_y - v_y, which is never negative.",
        ),
    ]


def check_kto_losses(kto_losses, hidden: bool = False) -> None:
    """Lesson 03, exercise 1: per-example loss lambda_y - v_y (paper Eq. 7)."""
    sizes = [(3, 4), (5, 2), (1, 1)] + ([(2, 7), (6, 0), (0, 5), (1, 0)] if hidden else [])
    compare_on_labelled_batches(
        kto_losses,
        "kto_losses",
        case_rng(LESSON, 1, hidden),
        sizes,
        core.kto_losses,
        _loss_suspects,
        "L = lambda_y - v_y",
        far_nan="kto_losses returned NaN for an example far from z0 (|beta * delta| in the "
        "thousands): exp() overflowed. Use a stable sigmoid such as core.sigmoid.",
        far_wrong="kto_losses is wrong far from z0 (|beta * delta| in the thousands): the loss "
        "should be ~0 on the correct side of the baseline and ~lambda_y on the wrong side.",
    )


def _batch_case(rng, n_D: int, n_U: int, z0_sign: int):
    """Log-probs of a labelled batch and of its mismatched pairs (raw z0 of the given sign)."""
    r, _, d, beta, lambda_D, lambda_U = labelled_batch(rng, n_D, n_U)
    logp_ref = rng.uniform(-40.0, -10.0, d.size)
    logp_theta = logp_ref + r
    kl_logp_ref = rng.uniform(-40.0, -10.0, d.size)
    kl_logp_theta = kl_logp_ref + mismatched_r(rng, d.size, z0_sign)
    return logp_theta, logp_ref, kl_logp_theta, kl_logp_ref, d, beta, lambda_D, lambda_U


def _batch_reference(logp_theta, logp_ref, kl_logp_theta, kl_logp_ref, d, beta, lD, lU):
    r = core.log_ratio(logp_theta, logp_ref)
    z0 = core.z0_estimate(core.log_ratio(kl_logp_theta, kl_logp_ref))
    return core.kto_loss(r, z0, d, beta, lD, lU)


def _batch_suspects(logp_theta, logp_ref, kl_logp_theta, kl_logp_ref, d, beta, lD, lU):
    r = np.asarray(core.log_ratio(logp_theta, logp_ref))
    kl_r = np.asarray(core.log_ratio(kl_logp_theta, kl_logp_ref))
    z0 = core.z0_estimate(kl_r)
    z0_raw = core.z0_estimate(kl_r, clamp=False)
    losses = np.asarray(core.kto_losses(r, z0, d, beta, lD, lU))
    lam = np.where(d, lD, lU)
    diagnoses = [
        (
            losses.sum() / lam.sum(),
            "you divided by the sum of the weights: the batch loss is the plain mean over all "
            "examples; the weights are not renormalised.",
        ),
        (
            losses.sum(),
            "you summed the losses: the batch loss is their mean over the batch.",
        ),
        (
            float(np.mean(core.kto_losses(r, z0_raw, d, beta, lD, lU))),
            "z0 is negative in this batch and you did not clamp it: the reference point is never "
            "below 0.",
        ),
        (
            float(np.mean(core.kto_losses(r, max(0.0, float(r.mean())), d, beta, lD, lU))),
            "you estimated z0 from the labelled pairs: use the mismatched pairs (kl_logp_theta, "
            "kl_logp_ref), whose completions were not selected for being good or bad.",
        ),
        (
            float(np.mean(core.kto_losses(r, 0.0, d, beta, lD, lU))),
            "z0 is ignored: estimate it from the mismatched pairs and measure delta = r - z0.",
        ),
        (
            float(np.mean(core.kto_losses(r, max(0.0, -float(kl_r.mean())), d, beta, lD, lU))),
            "your z0 has the wrong sign: the mismatched log-ratio is the policy's log-prob "
            "minus the reference's, as for r, not reference minus policy.",
        ),
    ]
    if d.any() and (~d).any():
        per_label = (losses[d].mean() + losses[~d].mean()) / 2
        diagnoses.append((
            per_label,
            "you averaged each label separately: the batch loss is one mean over ALL examples, "
            "so the larger class counts more (that is what the weights are for).",
        ))
        for mask, label in ((d, "desirable"), (~d, "undesirable")):
            diagnoses.append((
                losses[mask].mean(),
                f"you averaged over the {label} examples only: the batch loss is the mean over "
                "ALL examples of the batch.",
            ))
    return diagnoses


def check_batch_kto_loss(batch_kto_loss, hidden: bool = False) -> None:
    """Lesson 03, exercise 2: the batch loss from log-probs (mean over ALL examples)."""
    rng = case_rng(LESSON, 2, hidden)
    cases = [_batch_case(rng, 2, 6, +1), _batch_case(rng, 5, 3, +1)]
    cases += [_batch_case(rng, 3, 5, -1)]
    if hidden:
        cases += [_batch_case(rng, 7, 2, -1), _batch_case(rng, 1, 9, +1)]
        cases += [_batch_case(rng, 4, 0, +1), _batch_case(rng, 0, 4, -1)]
    else:
        cases += [_batch_case(rng, 4, 0, +1)]
    seen = []  # (out, right, suspects, d) of every case: the diagnosis looks at all of them
    for case in cases:
        d = case[4]
        out = call_learner(batch_kto_loss, *case, name="batch_kto_loss")
        if returned_nan(out) and (d.all() or not d.any()):
            if any(not close(o, r) for o, r, _, _ in seen):
                break  # an earlier case already failed: its diagnosis comes first
            raise CheckFailed(
                "batch_kto_loss returned NaN for a batch with only one label: did you average "
                "each label separately? The batch loss is one mean over all examples."
            )
        out = as_float_array(out, "batch_kto_loss")
        if out.size != 1:
            raise CheckFailed(
                f"batch_kto_loss returned {out.size} numbers: the batch loss is ONE number, the "
                "mean of the per-example losses."
            )
        seen.append((float(out.reshape(())), _batch_reference(*case), _batch_suspects(*case), d))
    failed = [s for s in seen if not close(s[0], s[1])]
    if failed:
        out, right, suspects, d = failed[0]
        diagnose(
            out,
            right,
            _consistent(seen, suspects),
            "batch_kto_loss disagrees with the mean of lambda_y - v_y over a batch of "
            f"{d.size} ({int(d.sum())} desirable).",
        )
    passed("batch_kto_loss", len(cases))


def _consistent(seen, suspects):
    """The suspects of the first failed case, those that explain EVERY case first.

    On some batches two mistakes give the same number (a z0 of the wrong sign and an ignored z0
    both clamp to 0 when the mismatched mean is positive): the misconception named is one whose
    answer matches the learner's on all the cases, the ones that passed included.
    """
    def explains(message) -> bool:
        for out, _, case_suspects, _ in seen:
            values = [wrong for wrong, words in case_suspects if words == message]
            if not values or not close(out, values[0]):
                return False
        return True

    return sorted(suspects, key=lambda pair: not explains(pair[1]))


_IMBALANCE_KEYS = ("ratio", "in_range", "lambda_D_range", "lambda_U_range")


def _weights_suspects(n_D, n_U, lambda_D, lambda_U):
    ratio = core.imbalance_ratio(n_D, n_U, lambda_D, lambda_U)
    return [
        (1.0 / ratio, "your ratio is inverted: it is lambda_D * n_D / (lambda_U * n_U)."),
        (
            n_D / n_U,
            "the weights are missing from your ratio: it is lambda_D * n_D / (lambda_U * n_U).",
        ),
    ]


def check_recommended_weights(recommended_weights, hidden: bool = False) -> None:
    """Lesson 03, exercise 3: the imbalance rule lambda_D n_D / (lambda_U n_U) in [1, 4/3]."""
    rng = case_rng(LESSON, 3, hidden)
    # TRL writes 4/3 as 1.33; both are accepted (they differ by 0.25 %).
    rtol = 3e-3
    cases = [(1000, 9000, 1.0, 1.0), (800, 600, 1.0, 1.0), (5000, 1000, 1.0, 2.0)]
    cases += [(int(rng.integers(50, 5000)), int(rng.integers(50, 5000)), 1.0, 1.0)]
    if hidden:
        cases += [(300, 7000, 1.5, 1.0), (1000, 1000, 1.0, 1.0), (4000, 3000, 1.0, 1.0)]
        for _ in range(4):
            counts = (int(rng.integers(10, 20000)), int(rng.integers(10, 20000)))
            cases.append((*counts, float(rng.uniform(0.5, 3)), float(rng.uniform(0.5, 3))))
    for n_D, n_U, lambda_D, lambda_U in cases:
        about = f"(n_D = {n_D}, n_U = {n_U}, lambda_D = {lambda_D:.3g}, lambda_U = {lambda_U:.3g})"
        out = call_learner(
            recommended_weights, n_D, n_U, lambda_D, lambda_U, name="recommended_weights"
        )
        if not isinstance(out, dict):
            raise CheckFailed(
                f"recommended_weights returned {type(out).__name__}: return a dict with the keys "
                f"{', '.join(_IMBALANCE_KEYS)}."
            )
        missing = [key for key in _IMBALANCE_KEYS if key not in out]
        if missing:
            raise CheckFailed(f"recommended_weights' dict lacks the key(s) {', '.join(missing)}.")
        right = core.recommended_weights(n_D, n_U, lambda_D, lambda_U)
        ratio = float(as_float_array(out["ratio"], "ratio", shape=()))
        if not close(ratio, right["ratio"], rtol=1e-9):
            suspects = _weights_suspects(n_D, n_U, lambda_D, lambda_U)
            diagnose(ratio, right["ratio"], suspects, f"the ratio is wrong {about}.")
        if not isinstance(out["in_range"], (bool, np.bool_)):
            raise CheckFailed("in_range must be True or False.")
        if bool(out["in_range"]) != right["in_range"]:
            raise CheckFailed(
                f"in_range is wrong {about}: it is True exactly when 1 <= ratio <= 4/3 "
                "(ratio slightly ABOVE 1 is fine; below 1 is not)."
            )
        for key, weight in (("lambda_D_range", "lambda_D"), ("lambda_U_range", "lambda_U")):
            got = as_float_array(out[key], key, shape=(2,))
            if got[0] > got[1]:
                raise CheckFailed(f"{key} must be (low, high) with low <= high.")
            if not close(got, right[key], rtol=rtol):
                other = "lambda_U" if weight == "lambda_D" else "lambda_D"
                raise CheckFailed(
                    f"{key} is wrong {about}: keep {other} as given and solve "
                    f"1 <= lambda_D * n_D / (lambda_U * n_U) <= 4/3 for {weight} alone "
                    "(a larger weight on the rarer class, not on the common one)."
                )
    passed("recommended_weights", len(cases))


# The lesson's exercises, for the grader: check, answer twins, usable package functions (see
# l01_log_ratio.EXERCISES).
EXERCISES = {
    "kto_losses": {
        "check": check_kto_losses,
        "twins": ("core.kto_losses", "core.kto_loss", "torch_ops.kto_losses",
                  "torch_ops.batch_kto_loss", "core.value_desirable", "core.value_undesirable"),
        "allowed": ("core.sigmoid",),
        "hint": "write it from r, z0 and beta.",
    },
    "batch_kto_loss": {
        "check": check_batch_kto_loss,
        "twins": ("core.kto_loss", "torch_ops.batch_kto_loss"),
        "allowed": ("core.log_ratio", "core.z0_estimate", "core.kto_losses", "core.sigmoid"),
        "hint": "combine r, z0 and the per-example losses yourself.",
    },
    "recommended_weights": {
        "check": check_recommended_weights,
        "twins": ("core.recommended_weights",),
        "allowed": ("core.IMBALANCE_RANGE", "core.imbalance_ratio"),
        "hint": "solve the imbalance rule for each weight yourself.",
    },
}
