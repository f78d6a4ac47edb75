"""Lesson 04, gradients and saturation: its checks, planted bugs, demos and solution notebook.

Each check must pass the reference (core or torch autograd, and the notebook's own solutions)
in visible and hidden mode, and fail every planted misconception with the words its message
promises. The demo is driven from Python as the lesson describes it, and its render function
is swept over its controls' ranges with warnings turned into errors.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest
import torch
from shared import (
    ExerciseTests,
    broken_answers,
    define,
    fails_with,
    first_failure,
    passes,
    per_example_answer,
    readout,
    sweep_corners_and_interior,
)

from kto_course import core, demos, figures, torch_ops

LESSON = "04_gradients_and_saturation"
EXERCISES = ("kto_loss_grad", "autograd_grad", "grad_through_z0", "largest_updates")
# What the notebook's first code cell imports; planted bugs and solutions run in this namespace.
NAMESPACE = {"np": np, "torch": torch, "core": core}


# ---------------------------------------------------------------------------------------------
# Reference answers: from core, or written in torch for the autograd exercises
# ---------------------------------------------------------------------------------------------


def _torch_losses(r, z0, desirable, beta, lambda_D, lambda_U, value=torch.sigmoid):
    x = beta * (r - z0)
    return torch.where(torch.as_tensor(desirable), lambda_D * (1 - value(x)),
                       lambda_U * (1 - value(-x)))


def ref_autograd_grad(r, z0, desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0,
                      value=torch.sigmoid, dtype=torch.float64):
    r = torch.tensor(r, dtype=dtype, requires_grad=True)
    _torch_losses(r, z0, desirable, beta, lambda_D, lambda_U, value).mean().backward()
    return r.grad.double().numpy()


def ref_grad_through_z0(r, r_mismatched, desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0):
    r_mis = torch.tensor(r_mismatched, dtype=torch.float64, requires_grad=True)
    z0 = torch.clamp(r_mis.mean(), min=0)
    r = torch.tensor(r, dtype=torch.float64)
    _torch_losses(r, z0, desirable, beta, lambda_D, lambda_U).mean().backward()
    return r_mis.grad.numpy()


def ref_largest_updates(r, z0, desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0, share=0.8):
    g = np.abs(core.kto_loss_grad(r, z0, desirable, beta, lambda_D, lambda_U))
    order = np.argsort(-g, kind="stable")
    k = next(k for k in range(1, len(g) + 1) if g[order[:k]].sum() >= share * g.sum())
    return order[:k]


REFERENCES = {
    "kto_loss_grad": core.kto_loss_grad,
    "autograd_grad": ref_autograd_grad,
    "grad_through_z0": ref_grad_through_z0,
    "largest_updates": ref_largest_updates,
}


# The tests every lesson's exercises get: references and solutions pass, planted bugs fail.
class TestExercises(ExerciseTests):
    LESSON, EXERCISES, REFERENCES, NAMESPACE = LESSON, EXERCISES, REFERENCES, NAMESPACE

    def test_planted_bug_fails_with_its_message(self, bug):
        """As the test cell runs (visible check, then hidden): some bugs, a derivative written
        by hand for the visible value functions, pass the visible check and fail the hidden."""
        fn = define(bug.code, bug.exercise, NAMESPACE)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # buggy answers may overflow on purpose
            message = first_failure(bug.exercise, fn)
        assert message is not None, f"{bug.why}: passed both checks"
        assert bug.message.lower() in message.lower(), message


def test_the_sigmoid_case_is_the_course_kto_loss():
    """halo_losses with the sigmoid is kto_losses, and autograd on it is core's gradient / B."""
    rng = np.random.default_rng(3)
    r, d = rng.normal(1, 8, 12), rng.random(12) < 0.5
    losses = torch_ops.halo_losses(torch.tensor(r), 1.5, torch.tensor(d), 0.3, 0.7, 1.4)
    torch.testing.assert_close(losses, torch_ops.kto_losses(torch.tensor(r), 1.5, torch.tensor(d),
                                                            0.3, 0.7, 1.4))
    np.testing.assert_allclose(ref_autograd_grad(r, 1.5, d, 0.3, 0.7, 1.4),
                               core.kto_loss_grad(r, 1.5, d, 0.3, 0.7, 1.4) / 12, rtol=1e-12)


def test_core_largest_updates_matches_the_definition():
    rng = np.random.default_rng(4)
    for _ in range(50):
        B = int(rng.integers(2, 20))
        r, d = rng.normal(1, 15, B), rng.random(B) < 0.5
        share = float(rng.uniform(0.05, 1.0))
        got = core.largest_updates(r, 2.0, d, 0.3, 0.8, 1.3, share)
        g = np.abs(core.kto_loss_grad(r, 2.0, d, 0.3, 0.8, 1.3))
        assert g[got].sum() >= share * g.sum() * (1 - 1e-12)
        assert got.size == 1 or g[got[:-1]].sum() < share * g.sum()
        assert np.all(np.diff(g[got]) <= 0)
    assert core.largest_updates([1.0, 1.0, 5.0], 1.0, [True, True, True], share=0.5).tolist() == [
        0, 1]
    with pytest.raises(ValueError, match="share"):
        core.largest_updates([1.0, 2.0], 1.0, [True, False], share=1.5)


# ---------------------------------------------------------------------------------------------
# Misconceptions beyond the planted bugs
# ---------------------------------------------------------------------------------------------


# A kto_loss_grad variant: transform(r, z0, d, beta, lambda_D, lambda_U).
_grads = per_example_answer


def _autograd(**changes):
    """An autograd_grad answer with one argument replaced (a misconception): changes maps an
    argument name to a function of all the arguments."""
    names = ("r", "z0", "desirable", "beta", "lambda_D", "lambda_U", "value")

    def answer(r, z0, desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0, value=torch.sigmoid):
        args = dict(zip(names, (r, z0, desirable, beta, lambda_D, lambda_U, value), strict=True))
        return ref_autograd_grad(**{**args, **{k: f(args) for k, f in changes.items()}})

    return answer


def _central_difference(r, z0, d, beta=0.1, lambda_D=1.0, lambda_U=1.0, value=torch.sigmoid,
                        h=1e-5):
    def mean_loss(x):
        return float(_torch_losses(torch.tensor(x), z0, d, beta, lambda_D, lambda_U, value).mean())

    eye = np.eye(len(r)) * h
    return np.array([(mean_loss(r + e) - mean_loss(r - e)) / (2 * h) for e in eye])


def _by_hand_for_sigmoid(r, z0, d, beta=0.1, lambda_D=1.0, lambda_U=1.0, value=torch.sigmoid):
    return core.kto_loss_grad(r, z0, d, beta, lambda_D, lambda_U) / len(r)


def _carriers(order_of, share_of=None):
    """A largest_updates answer that ranks by order_of(g, losses, r, z0) and adds share_of."""
    def answer(r, z0, d, beta=0.1, lambda_D=1.0, lambda_U=1.0, share=0.8):
        g = np.abs(core.kto_loss_grad(r, z0, d, beta, lambda_D, lambda_U))
        losses = core.kto_losses(r, z0, d, beta, lambda_D, lambda_U)
        order = order_of(g, losses, np.asarray(r), z0)
        added = g if share_of is None else share_of(g, losses)
        carried = np.cumsum(added[order])
        return order[: int(np.searchsorted(carried, share * carried[-1])) + 1]

    return answer


MISCONCEPTIONS = [
    # kto_loss_grad
    ("kto_loss_grad", _grads(lambda r, z0, d, b, lD, lU: -np.abs(core.kto_loss_grad(
        r, z0, d, b, lD, lU))), "undesirable gradient is negative"),
    ("kto_loss_grad", _grads(lambda r, z0, d, b, lD, lU: core.kto_loss_grad(r, z0, d, 1.0, lD, lU)),
     "beta is missing"),
    ("kto_loss_grad", _grads(lambda r, z0, d, b, lD, lU: core.kto_loss_grad(r, 0.0, d, b, lD, lU)),
     "z0 is ignored"),
    ("kto_loss_grad", _grads(lambda r, z0, d, b, lD, lU: core.kto_loss_grad(r, z0, d, b, 1.0, 1.0)),
     "lambda_y is missing"),
    ("kto_loss_grad", _grads(lambda r, z0, d, b, lD, lU: core.kto_loss_grad(r, z0, d, b, lD, lU)
                             / len(r)), "divided by the batch size"),
    # autograd_grad
    ("autograd_grad", lambda *a, **k: -ref_autograd_grad(*a, **k), "sign is flipped"),
    ("autograd_grad", _autograd(beta=lambda a: 1.0), "beta is missing"),
    ("autograd_grad", _autograd(lambda_D=lambda a: a["lambda_U"], lambda_U=lambda a: a["lambda_D"]),
     "wrong class"),
    ("autograd_grad", _autograd(desirable=lambda a: ~np.asarray(a["desirable"])),
     "labels are swapped"),
    ("autograd_grad", _autograd(z0=lambda a: 0.0), "z0 is ignored"),
    ("autograd_grad", _autograd(lambda_D=lambda a: 1.0, lambda_U=lambda a: 1.0),
     "lambda_y is missing"),
    ("autograd_grad", _autograd(dtype=lambda a: torch.float32), "close to"),
    ("autograd_grad", _central_difference, "not exact"),
    ("autograd_grad", _autograd(value=lambda a: torch.sigmoid), "you used the sigmoid"),
    # grad_through_z0
    ("grad_through_z0", lambda *a: -ref_grad_through_z0(*a), "sign is flipped"),
    ("grad_through_z0", lambda *a: np.zeros(len(a[0])), "DETACHED"),
    ("grad_through_z0", lambda *a: ref_grad_through_z0(*a) * len(a[0]) ** 2, "two factors 1/B"),
    # largest_updates
    ("largest_updates", lambda *a: ref_largest_updates(*a)[::-1], "wrong order"),
    ("largest_updates", lambda *a: ref_largest_updates(*a)[:-1], "one example short"),
    ("largest_updates", _carriers(lambda g, L, r, z0: np.argsort(-L, kind="stable")),
     "ranked by loss"),
    ("largest_updates", _carriers(lambda g, L, r, z0: np.argsort(-L, kind="stable"),
                                  lambda g, L: L), "ranked by loss"),
    ("largest_updates", _carriers(lambda g, L, r, z0: np.argsort(g, kind="stable")), "SMALLEST"),
    ("largest_updates", _carriers(lambda g, L, r, z0: np.argsort(g, kind="stable")[::-1]),
     "ties keep the batch order"),
    ("largest_updates", _carriers(lambda g, L, r, z0: np.argsort(np.abs(r - z0), kind="stable")),
     "closeness to z0"),
    ("largest_updates", _carriers(lambda g, L, r, z0: np.argsort(np.abs(r), kind="stable")),
     "ranked by |r|"),
    ("largest_updates", lambda r, z0, d, b=0.1, lD=1.0, lU=1.0, share=0.8: np.argsort(
        -np.abs(core.kto_loss_grad(r, z0, d, b, lD, lU)), kind="stable")[:int(np.ceil(
            share * len(r)))], "share of the EXAMPLES"),
    ("largest_updates", lambda *a: np.isin(np.arange(len(a[0])), ref_largest_updates(*a)), "mask"),
    ("largest_updates", lambda *a: np.abs(core.kto_loss_grad(*a[:6]))[ref_largest_updates(*a)],
     "INDICES"),
    ("largest_updates", lambda *a: len(ref_largest_updates(*a)), "single number"),
]


@pytest.mark.parametrize("name,fn,words", MISCONCEPTIONS,
                         ids=[f"{n}-{w}" for n, _, w in MISCONCEPTIONS])
def test_misconception_is_named(name, fn, words):
    fails_with(name, fn, words)


# Caught by the hidden tests only: they hand autograd_grad value functions the visible check
# does not, so a derivative written by hand for the visible ones passes it.
HIDDEN_ONLY = [
    ("autograd_grad", _by_hand_for_sigmoid, "you used the sigmoid", False),
    ("autograd_grad", _autograd(value=lambda a: torch.sigmoid), "you used the sigmoid", True),
]


@pytest.mark.parametrize("name,fn,words,visible", HIDDEN_ONLY,
                         ids=[f"{n}-{w}-{v}" for n, _, w, v in HIDDEN_ONLY])
def test_hidden_cases_name_what_the_visible_ones_cannot(name, fn, words, visible):
    if visible:  # a plain sigmoid fails on the visible tanh case too
        fails_with(name, fn, words, hidden=False)
    fails_with(name, fn, words, hidden=True)


def test_autograd_tolerance_fails_every_difference_quotient():
    for h in (1e-3, 1e-4, 3e-5, 1e-5, 1e-6, 1e-7):
        fails_with("autograd_grad", functools.partial(_central_difference, h=h), "not exact")
        fails_with("autograd_grad", functools.partial(_central_difference, h=h), "not exact",
                   hidden=True)


def test_autograd_accepts_float32_weights_and_any_exact_formulation(capsys):
    """Python floats through float32 tensors (torch.where on two floats), sum / B, the
    sigmoid's own form: all exact enough."""
    def other_ways(r, z0, d, beta=0.1, lambda_D=1.0, lambda_U=1.0, value=torch.sigmoid):
        r = torch.from_numpy(np.asarray(r, dtype=np.float64)).requires_grad_(True)
        lam = torch.where(torch.as_tensor(d), lambda_D, lambda_U)  # float32
        sign = torch.where(torch.as_tensor(d), 1.0, -1.0)
        losses = lam * (1 - value(sign * torch.tensor(beta) * (r - torch.tensor(z0))))
        (losses.sum() / len(r)).backward()
        return r.grad

    passes("autograd_grad", other_ways, False, capsys)
    passes("autograd_grad", other_ways, True, capsys)


def test_z0_clamp_is_checked_in_grad_through_z0():
    def unclamped(r, r_mis, d, beta=0.1, lambda_D=1.0, lambda_U=1.0):
        g = core.kto_loss_grad(r, float(np.mean(r_mis)), d, beta, lambda_D, lambda_U)
        return np.full(len(r_mis), -np.mean(g) / len(r_mis))

    fails_with("grad_through_z0", unclamped, "clamp")


# ---------------------------------------------------------------------------------------------
# Broken answers: a raise, None, NaN, a wrong shape
# ---------------------------------------------------------------------------------------------


def _returns_nan(*args, **kwargs):
    return np.full(np.shape(args[0]), np.nan)


def _wrong_shape(*args, **kwargs):
    return np.zeros((101, 2))


BROKEN = broken_answers(_returns_nan, _wrong_shape)


@pytest.mark.parametrize("fn,words", BROKEN, ids=[w for _, w in BROKEN])
@pytest.mark.parametrize("name", EXERCISES)
def test_broken_answer_fails_clearly(name, fn, words):
    for hidden in (False, True):
        fails_with(name, fn, words, hidden)


# ---------------------------------------------------------------------------------------------
# The demo driven from Python, as the lesson describes it
# ---------------------------------------------------------------------------------------------


def test_gradient_batch_explorer_concentrates_with_beta():
    demo = demos.gradient_batch_explorer()
    c = demo.controls
    start, plot = readout(demo), figures.png_bytes(demo.figure)
    c["beta"].value = 0.3
    sharp = readout(demo)
    assert sharp["top-25% share"] > start["top-25% share"]
    assert sharp["hard |dL/dr| / peak"] < start["hard |dL/dr| / peak"]
    assert figures.png_bytes(demo.figure) != plot
    c["beta"].value = 0.1
    c["r_hard"].value = -60.0
    farther = readout(demo)
    assert farther["hard |dL/dr| / peak"] < start["hard |dL/dr| / peak"]
    assert farther["hard delta"] == pytest.approx(-62)
    c["beta"].value = 0.05
    c["r_hard"].value = -30.0
    assert readout(demo)["hard |dL/dr| / peak"] > 50


def test_top_share_grows_with_beta():
    shares = [figures.gradient_batch(beta, 2.0, -30.0)["top_share"] for beta in
              (0.02, 0.05, 0.1, 0.3, 1.0)]
    assert shares == sorted(shares)


SWEEPS = [(demos.gradient_batch_explorer, figures.gradient_batch_figure)]


@pytest.mark.parametrize("make,render", SWEEPS, ids=[r.__name__ for _, r in SWEEPS])
def test_render_sweeps_without_warning_or_nan(make, render):
    sweep_corners_and_interior(make, render)


def test_static_figures_draw_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert figures.png_bytes(figures.gradient_bump_figure()).startswith(b"\x89PNG")
        assert figures.png_bytes(figures.value_bumps_figure()).startswith(b"\x89PNG")


def test_value_bumps_show_what_each_value_function_does_far_away():
    bumps = figures.value_bumps(0.1, np.array([-60.0, 0.0, 60.0]))
    fade = {name: g / g.max() for name, (_, g) in bumps.items()}
    assert fade["tanh"][0] < fade["sigmoid (KTO)"][0] < fade["arctan"][0]
    assert fade["log-sigmoid (inside DPO's loss)"][0] > 0.99 > fade["sigmoid (KTO)"][0]
    np.testing.assert_allclose(bumps["sigmoid (KTO)"][1],
                               np.abs(core.kto_loss_grad(np.array([-60.0, 0.0, 60.0]), 0.0,
                                                         np.ones(3, bool), 0.1)), rtol=1e-12)
