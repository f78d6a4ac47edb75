"""Lesson 03, value and loss: its checks, planted bugs, demos and solution notebook.

Each check must pass the reference (core, and the notebook's own solutions) in visible and
hidden mode, and fail every planted misconception with the words its message promises. The
demos are driven from Python as the lesson describes them, and every render function is swept
over its controls' ranges with warnings turned into errors.
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

LESSON = "03_value_and_loss"
EXERCISES = ("kto_losses", "batch_kto_loss", "recommended_weights")
# What the notebook's first code cell imports; planted bugs and solutions run in this namespace.
NAMESPACE = {"np": np, "torch": torch, "core": core}


def ref_batch_kto_loss(logp_theta, logp_ref, kl_logp_theta, kl_logp_ref, desirable, beta=0.1,
                       lambda_D=1.0, lambda_U=1.0):
    r = core.log_ratio(logp_theta, logp_ref)
    z0 = core.z0_estimate(core.log_ratio(kl_logp_theta, kl_logp_ref))
    return core.kto_loss(r, z0, desirable, beta, lambda_D, lambda_U)


REFERENCES = {
    "kto_losses": core.kto_losses,
    "batch_kto_loss": ref_batch_kto_loss,
    "recommended_weights": core.recommended_weights,
}


# The tests every lesson's exercises get: references and solutions pass, planted bugs fail.
class TestExercises(ExerciseTests):
    LESSON, EXERCISES, REFERENCES, NAMESPACE = LESSON, EXERCISES, REFERENCES, NAMESPACE
    PLANTED_MODES = (False,)  # each planted bug fails its visible check with its words


# ---------------------------------------------------------------------------------------------
# Misconceptions beyond the planted bugs
# ---------------------------------------------------------------------------------------------


# A kto_losses variant: transform(r, z0, d, beta, lambda_D, lambda_U).
_losses = per_example_answer


def _batch(transform):
    """A batch_kto_loss variant: transform(r, kl_r, d, losses, lam) -> the batch loss."""

    def fn(lt, lr, klt, klr, d, beta=0.1, lambda_D=1.0, lambda_U=1.0):
        r, kl_r = core.log_ratio(lt, lr), core.log_ratio(klt, klr)
        losses = core.kto_losses(r, core.z0_estimate(kl_r), d, beta, lambda_D, lambda_U)
        return transform(r, kl_r, np.asarray(d), losses, np.where(d, lambda_D, lambda_U))

    return fn


def _weights(**changes):
    def fn(n_D, n_U, lambda_D=1.0, lambda_U=1.0):
        out = dict(core.recommended_weights(n_D, n_U, lambda_D, lambda_U))
        out.update({k: f(n_D, n_U, lambda_D, lambda_U, out) for k, f in changes.items()})
        return out

    return fn


def _sig(x):
    return np.asarray(core.sigmoid(x))


MISCONCEPTIONS = [
    # kto_losses
    ("kto_losses", _losses(lambda r, z0, d, b, lD, lU: core.kto_losses(r, 0.0, d, b, lD, lU)),
     "z0 is ignored"),
    ("kto_losses", _losses(lambda r, z0, d, b, lD, lU: core.kto_losses(r + 2 * z0, z0, d, b, lD,
                                                                       lU)),
     "wrong sign"),
    ("kto_losses", _losses(lambda r, z0, d, b, lD, lU: core.kto_losses(r, z0, d, b, 1.0, 1.0)),
     "weights are missing"),
    ("kto_losses", _losses(lambda r, z0, d, b, lD, lU: np.where(d, lD, lU)
                           - core.kto_losses(r, z0, d, b, lD, lU)), "returned the value v_y"),
    ("kto_losses", _losses(lambda r, z0, d, b, lD, lU: 1 - np.where(d, lD, lU)
                           + core.kto_losses(r, z0, d, b, lD, lU)), "subtracted the value from 1"),
    ("kto_losses", _losses(lambda r, z0, d, b, lD, lU: np.where(
        d, lD * _sig(b * (r - z0)), lU * _sig(b * (r - z0)))), "desirable loss rises"),
    ("kto_losses", _losses(lambda r, z0, d, b, lD, lU: core.kto_losses(r, z0, d, b, lD, lU)[:1]),
     "shape"),
    # batch_kto_loss
    ("batch_kto_loss", _batch(lambda r, kl_r, d, losses, lam: losses.sum()), "summed"),
    ("batch_kto_loss", _batch(lambda r, kl_r, d, losses, lam: losses[~d].mean()),
     "undesirable examples only"),
    ("batch_kto_loss", _batch(lambda r, kl_r, d, losses, lam: losses), "ONE number"),
    # recommended_weights
    ("recommended_weights", _weights(ratio=lambda nD, nU, lD, lU, o: nD / nU),
     "weights are missing"),
    ("recommended_weights", _weights(in_range=lambda nD, nU, lD, lU, o: o["ratio"] >= 1),
     "in_range is wrong"),
    ("recommended_weights", _weights(in_range=lambda nD, nU, lD, lU, o: int(o["in_range"])),
     "True or False"),
    ("recommended_weights",
     _weights(lambda_U_range=lambda nD, nU, lD, lU, o: o["lambda_U_range"][::-1]),
     "low <= high"),
    ("recommended_weights", lambda n_D, n_U, lambda_D=1.0, lambda_U=1.0: [1.0, True], "dict"),
    ("recommended_weights", lambda n_D, n_U, lambda_D=1.0, lambda_U=1.0: {"ratio": 1.0},
     "lacks the key"),
]


@pytest.mark.parametrize("name,fn,words", MISCONCEPTIONS,
                         ids=[f"{n}-{w}" for n, _, w in MISCONCEPTIONS])
def test_misconception_is_named(name, fn, words):
    fails_with(name, fn, words)


def test_batch_loss_per_label_means_on_a_one_label_batch_names_the_cause():
    def per_label(lt, lr, klt, klr, d, beta=0.1, lambda_D=1.0, lambda_U=1.0):
        r = core.log_ratio(lt, lr)
        losses = core.kto_losses(r, core.z0_estimate(core.log_ratio(klt, klr)), d, beta,
                                 lambda_D, lambda_U)
        with np.errstate(invalid="ignore"):
            means = [losses[d].mean() if d.any() else np.nan,
                     losses[~d].mean() if (~d).any() else np.nan]
        return sum(means) / 2

    fails_with("batch_kto_loss", per_label, "averaged each label separately")


# ---------------------------------------------------------------------------------------------
# Broken answers: a raise, None, NaN, a wrong shape
# ---------------------------------------------------------------------------------------------


def _returns_nan(*args, **kwargs):
    if isinstance(args[0], int):  # recommended_weights(n_D, ...)
        return {"ratio": float("nan"), "in_range": False, "lambda_D_range": (1, 2),
                "lambda_U_range": (1, 2)}
    return np.full(np.shape(args[0]), np.nan)


def _wrong_shape(*args, **kwargs):
    if isinstance(args[0], int):
        return {"ratio": [1.0, 2.0], "in_range": False, "lambda_D_range": (1, 2),
                "lambda_U_range": (1, 2)}
    return np.zeros(101)


BROKEN = broken_answers(_returns_nan, _wrong_shape)


@pytest.mark.parametrize("fn,words", BROKEN, ids=[w for _, w in BROKEN])
@pytest.mark.parametrize("name", EXERCISES)
def test_broken_answer_fails_clearly(name, fn, words):
    if name == "batch_kto_loss" and fn is _wrong_shape:
        words = "ONE number"
    for hidden in (False, True):
        fails_with(name, fn, words, hidden)


# ---------------------------------------------------------------------------------------------
# Demos driven from Python, as the lesson describes them
# ---------------------------------------------------------------------------------------------


def test_value_loss_explorer_flips_and_saturates():
    demo = demos.value_loss_explorer()
    c = demo.controls
    start, plot = readout(demo), figures.png_bytes(demo.figure)
    assert start["dL/dr"] < 0 < start["loss"]

    c["r"].value = 10.0  # a desirable example moving up: lower loss
    up = readout(demo)
    assert up["loss"] < start["loss"] and figures.png_bytes(demo.figure) != plot

    c["desirable"].value = False  # same place, other label: the gradient flips sign
    flipped = readout(demo)
    assert flipped["dL/dr"] > 0 and flipped["loss"] > up["loss"]
    assert flipped["dL/dr"] == pytest.approx(-up["dL/dr"])

    c["desirable"].value = True
    c["r"].value = 40.0  # far above the baseline: the gradient has saturated
    far = readout(demo)
    assert abs(far["dL/dr"]) < abs(up["dL/dr"]) and far["|dL/dr| / peak"] < 10

    c["r"].value = c["z0"].value  # at the baseline: the peak lambda * beta / 4
    at_z0 = readout(demo)
    assert at_z0["|dL/dr| / peak"] == pytest.approx(100)
    assert at_z0["peak |dL/dr|"] == pytest.approx(0.1 / 4)

    c["beta"].value = 0.5
    assert readout(demo)["peak |dL/dr|"] == pytest.approx(0.5 / 4)
    c["lambda_D"].value = 2.0
    assert readout(demo)["peak |dL/dr|"] == pytest.approx(2.0 * 0.5 / 4)
    c["desirable"].value = False  # lambda_U is still 1
    assert readout(demo)["peak |dL/dr|"] == pytest.approx(0.5 / 4)
    c["lambda_U"].value = 3.0
    assert readout(demo)["loss"] == pytest.approx(1.5)  # lambda_U / 2 at the baseline


def test_imbalance_explorer_reports_the_rule():
    demo = demos.imbalance_explorer()
    c = demo.controls
    assert readout(demo)["ratio"] == pytest.approx(0.25)
    assert "OUTSIDE" in demo.readout.value
    c["lambda_D"].value = 4.5
    assert readout(demo)["ratio"] == pytest.approx(1.125, rel=5e-3)  # printed to 3 digits
    assert "inside" in demo.readout.value
    share = readout(demo)["desirable share of the weighted mass"]
    c["n_D"].value = 2000
    assert readout(demo)["desirable share of the weighted mass"] > share
    c["lambda_U"].value = 4.0
    assert readout(demo)["ratio"] < 1


SWEEPS = [
    (demos.value_loss_explorer, figures.value_loss_figure),
    (demos.imbalance_explorer, figures.imbalance_figure),
]


@pytest.mark.parametrize("make,render", SWEEPS, ids=[r.__name__ for _, r in SWEEPS])
def test_render_sweeps_without_warning_or_nan(make, render):
    sweep_corners_and_interior(make, render)


def test_static_figures_draw_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert figures.png_bytes(figures.value_functions_figure()).startswith(b"\x89PNG")
