"""Lesson 04, gradients and saturation: its checks, planted bugs, demos and solution notebook.

Each check must pass the reference (core or torch autograd, and the notebook's own solutions)
in visible and hidden mode, and fail every planted misconception with the words its message
promises. The demo is driven from Python as the lesson describes it, and its render function
is swept over its controls' ranges with warnings turned into errors.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from shared import (
    ExerciseTests,
    broken_answers,
    fails_with,
    per_example_answer,
    readout,
    sweep_corners_and_interior,
)

from kto_course import core, demos, figures

LESSON = "04_gradients_and_saturation"
EXERCISES = ("kto_loss_grad", "autograd_grad", "grad_through_z0", "largest_updates")
# What the notebook's first code cell imports; planted bugs and solutions run in this namespace.
NAMESPACE = {"np": np, "torch": torch, "core": core}


# ---------------------------------------------------------------------------------------------
# Reference answers: from core, or written in torch for the autograd exercises
# ---------------------------------------------------------------------------------------------


def _torch_losses(r, z0, desirable, beta, lambda_D, lambda_U):
    delta = r - z0
    return torch.where(torch.as_tensor(desirable), lambda_D * torch.sigmoid(-beta * delta),
                       lambda_U * torch.sigmoid(beta * delta))


def ref_autograd_grad(r, z0, desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0):
    r = torch.tensor(r, dtype=torch.float64, requires_grad=True)
    _torch_losses(r, z0, desirable, beta, lambda_D, lambda_U).mean().backward()
    return r.grad.numpy()


def ref_grad_through_z0(r, r_mismatched, desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0):
    r_mis = torch.tensor(r_mismatched, dtype=torch.float64, requires_grad=True)
    z0 = torch.clamp(r_mis.mean(), min=0)
    r = torch.tensor(r, dtype=torch.float64)
    _torch_losses(r, z0, desirable, beta, lambda_D, lambda_U).mean().backward()
    return r_mis.grad.numpy()


def ref_largest_updates(r, z0, desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0, k=3):
    g = core.kto_loss_grad(r, z0, desirable, beta, lambda_D, lambda_U)
    return np.argsort(-np.abs(g), kind="stable")[:k]


REFERENCES = {
    "kto_loss_grad": core.kto_loss_grad,
    "autograd_grad": ref_autograd_grad,
    "grad_through_z0": ref_grad_through_z0,
    "largest_updates": ref_largest_updates,
}


# The tests every lesson's exercises get: references and solutions pass, planted bugs fail.
class TestExercises(ExerciseTests):
    LESSON, EXERCISES, REFERENCES, NAMESPACE = LESSON, EXERCISES, REFERENCES, NAMESPACE
    PLANTED_MODES = (False,)  # each planted bug fails its visible check with its words


# ---------------------------------------------------------------------------------------------
# Misconceptions beyond the planted bugs
# ---------------------------------------------------------------------------------------------


# A kto_loss_grad variant: transform(r, z0, d, beta, lambda_D, lambda_U).
_grads = per_example_answer


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
    ("autograd_grad", lambda *a: -ref_autograd_grad(*a), "sign is flipped"),
    ("autograd_grad",
     lambda r, z0, d, b=0.1, lD=1.0, lU=1.0: ref_autograd_grad(r, z0, d, 1.0, lD, lU),
     "beta is missing"),
    ("autograd_grad",
     lambda r, z0, d, b=0.1, lD=1.0, lU=1.0: ref_autograd_grad(r, z0, d, b, lU, lD),
     "wrong class"),
    # grad_through_z0
    ("grad_through_z0", lambda *a: -ref_grad_through_z0(*a), "sign is flipped"),
    ("grad_through_z0", lambda *a: np.zeros(len(a[0])), "DETACHED"),
    ("grad_through_z0", lambda *a: ref_grad_through_z0(*a) * len(a[0]) ** 2, "two factors 1/B"),
    # largest_updates
    ("largest_updates", lambda *a: ref_largest_updates(*a)[::-1], "wrong order"),
    ("largest_updates", lambda r, z0, d, b=0.1, lD=1.0, lU=1.0, k=3: np.argsort(np.abs(r - z0))[:k],
     "closeness to z0"),
    ("largest_updates", lambda r, z0, d, b=0.1, lD=1.0, lU=1.0, k=3: np.argsort(np.abs(r))[:k],
     "ranked by |r|"),
    ("largest_updates", lambda r, z0, d, b=0.1, lD=1.0, lU=1.0, k=3: np.sort(
        np.abs(core.kto_loss_grad(r, z0, d, b, lD, lU)))[::-1][:k], "INDICES"),
]


@pytest.mark.parametrize("name,fn,words", MISCONCEPTIONS,
                         ids=[f"{n}-{w}" for n, _, w in MISCONCEPTIONS])
def test_misconception_is_named(name, fn, words):
    fails_with(name, fn, words)


def test_z0_clamp_is_checked_in_grad_through_z0():
    def unclamped(r, r_mis, d, beta=0.1, lambda_D=1.0, lambda_U=1.0):
        g = core.kto_loss_grad(r, float(np.mean(r_mis)), d, beta, lambda_D, lambda_U)
        return np.full(len(r_mis), -np.mean(g) / len(r_mis))

    fails_with("grad_through_z0", unclamped, "clamp")


# ---------------------------------------------------------------------------------------------
# Broken answers: a raise, None, NaN, a wrong shape
# ---------------------------------------------------------------------------------------------


def _returns_nan(*args, **kwargs):
    if len(args) == 7:  # largest_updates(..., k)
        return np.full(args[6], np.nan)
    return np.full(np.shape(args[0]), np.nan)


def _wrong_shape(*args, **kwargs):
    return np.zeros(101)


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
