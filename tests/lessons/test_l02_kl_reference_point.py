"""Lesson 02, the KL reference point: its checks, planted bugs, demos and solution notebook."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
from shared import (
    BAD_ANSWERS,
    ExerciseTests,
    broken_answer_fails_clearly,
    failure,
    misconception_is_named,
    number,
    sweep_corners_and_grid,
)

from kto_course import checks, core, demos, figures

LESSON = "02_kl_reference_point"
EXERCISES = ("mismatched_indices", "z0_estimate")
# What the notebook's first code cell imports; planted bugs and solutions run in this namespace.
NAMESPACE = {"np": np, "core": core}


def _mismatched_r(logp_theta, logp_ref, convention="trl"):
    rows = np.arange(len(logp_theta))
    idx = core.mismatched_indices(len(logp_theta), convention=convention)
    return core.log_ratio(logp_theta[rows, idx], logp_ref[rows, idx])


def _z0_estimate(logp_theta, logp_ref):
    return core.z0_estimate(_mismatched_r(logp_theta, logp_ref))


# Each exercise's reference answer, built from core.
REFERENCES = {
    "mismatched_indices": core.mismatched_indices,
    "z0_estimate": _z0_estimate,
}


# The tests every lesson's exercises get: references and solutions pass, planted bugs fail.
class TestExercises(ExerciseTests):
    LESSON, EXERCISES, REFERENCES, NAMESPACE = LESSON, EXERCISES, REFERENCES, NAMESPACE


# ---------------------------------------------------------------------------------------------
# Misconceptions beyond the planted bugs, and answers that are not answers
# ---------------------------------------------------------------------------------------------


def _transposed_z0(logp_theta, logp_ref):
    """Rows read as completions and columns as prompts: logp[idx[i], i]."""
    rows, idx = np.arange(len(logp_theta)), core.mismatched_indices(len(logp_theta))
    return core.z0_estimate(logp_theta[idx, rows] - logp_ref[idx, rows])


def _raises_type_error_for_one(batch_size):
    if batch_size < 2:
        raise TypeError("no")
    return core.mismatched_indices(batch_size)


def _refuses_only_one(batch_size):
    if batch_size == 1:
        raise ValueError("batch size 1")
    return np.roll(np.arange(batch_size), 1)


def _reuses_a_completion(batch_size):
    if batch_size < 2:
        raise ValueError("too small")
    idx = core.mismatched_indices(batch_size).copy()
    idx[-1] = idx[0]  # the last prompt gets x_0's completion too
    if idx[-1] == batch_size - 1:
        idx[-1] = 0
    return idx


# Misconceptions beyond the planted bugs: (exercise, wrong answer, words, visible check catches it)
MISCONCEPTIONS = [
    ("mismatched_indices", _raises_type_error_for_one, "raise a ValueError instead", True),
    ("mismatched_indices", _refuses_only_one, "mismatched_indices(0) returned", False),
    ("mismatched_indices", _reuses_a_completion, "share one completion", True),
    ("z0_estimate", _transposed_z0, "rows and columns swapped", True),
    ("z0_estimate", lambda t, r: abs(float(_mismatched_r(t, r).mean())), "flipped instead", True),
    ("z0_estimate", lambda t, r: max(0.0, float(_mismatched_r(t, r).sum())), "instead of averaging",
     True),  # fmt: skip
    ("z0_estimate", lambda t, r: max(0.0, float((t - r).mean())), "whole grid", True),
    ("z0_estimate", lambda t, r: -float(_mismatched_r(t, r).mean()), "policy minus reference",
     True),  # fmt: skip
    ("z0_estimate", lambda t, r: _mismatched_r(t, r), "ONE number", True),
    ("z0_estimate", lambda t, r: max(0.0, float(np.median(_mismatched_r(t, r)))),
     "should be the reference point", True),  # fmt: skip
]


@pytest.mark.parametrize(
    "exercise,wrong,words,visible",
    MISCONCEPTIONS,
    ids=[f"{m[0]}-{m[2][:20]}" for m in MISCONCEPTIONS],
)
def test_misconception_is_named(exercise, wrong, words, visible):
    misconception_is_named(exercise, wrong, words, visible)


@pytest.mark.parametrize("bad,words", BAD_ANSWERS, ids=[w for _, w in BAD_ANSWERS])
@pytest.mark.parametrize("exercise", list(REFERENCES))
def test_broken_answer_fails_clearly(exercise, bad, words):
    broken_answer_fails_clearly(exercise, bad, words)


def test_not_implemented_and_endless_loop(monkeypatch):
    def not_yet(batch_size):
        raise NotImplementedError()

    assert "NotImplementedError" in failure("mismatched_indices", not_yet, hidden=False)

    def hangs_on_one(batch_size):  # fine for real batches, endless for the edge case
        while batch_size < 2:
            pass
        return core.mismatched_indices(batch_size)

    # The limit lives in checks.base, where call_learner and the checks read it.
    monkeypatch.setattr(checks.base, "LEARNER_TIME_LIMIT", 0.2)
    assert "never returned" in failure("mismatched_indices", hangs_on_one, hidden=False)


# ---------------------------------------------------------------------------------------------
# Demos driven from Python
# ---------------------------------------------------------------------------------------------

Z0_MEAN = r"have mean (-?[\d.]+)"
Z0_SD = r"spread \(sd\) ([\d.]+)"


def test_z0_demo_spread_shrinks_with_batch_size():
    demo = demos.z0_spread()
    demo.controls["clamp"].value = figures.Z0_CLAMP[1]  # raw mean: the 1/sqrt(B) law
    spreads = {}
    for batch_size in (8, 32, 128):
        demo.controls["batch_size"].value = batch_size
        spreads[batch_size] = number(demo.readout.value, "sd", Z0_SD)
    assert spreads[8] > spreads[32] > spreads[128]
    assert spreads[8] / spreads[32] == pytest.approx(2.0, rel=0.15)
    assert spreads[8] / spreads[128] == pytest.approx(4.0, rel=0.15)


def test_z0_demo_clamp():
    demo = demos.z0_spread()
    controls = demo.controls
    controls["batch_size"].value = 4
    controls["true_mean"].value = -0.5
    share = int(re.search(r"(\d+)% of microbatches clamped", demo.readout.value).group(1))
    assert share > 50 and number(demo.readout.value, "mean", Z0_MEAN) >= 0
    controls["true_mean"].value = 0.1
    clamped_mean = number(demo.readout.value, "mean", Z0_MEAN)
    controls["clamp"].value = figures.Z0_CLAMP[1]
    raw_mean = number(demo.readout.value, "mean", Z0_MEAN)
    assert "negative raw estimate" in demo.readout.value
    assert clamped_mean > raw_mean  # the clamp biases small-batch estimates upward


def test_z0_demo_estimates_are_cores():
    """The vectorised estimates in figures equal core.z0_estimate applied to each microbatch."""
    for clamp in (True, False):
        fast = figures._z0_estimates(5, 0.1, 1.0, clamp)
        draws = figures._Z0_DRAWS[:, :5]
        slow = [core.z0_estimate(row, clamp=clamp) for row in 0.1 + 1.0 * draws]
        np.testing.assert_allclose(fast, slow)


def test_pairs_demo_reversal_fails_on_odd_sizes():
    demo = demos.mismatched_pairs()
    controls = demo.controls
    for method in figures.PAIRINGS:
        controls["method"].value = method
        for batch_size in range(2, 10):
            controls["batch_size"].value = batch_size
            own = int(re.search(r"(\d+) of \d+", re.sub(r"<[^>]+>", "", demo.readout.value))[1])
            odd_reversal = method == "reversal" and batch_size % 2 == 1
            assert own == (1 if odd_reversal else 0), (method, batch_size, demo.readout.value)
    controls["method"].value = figures.PAIRINGS[0]
    controls["batch_size"].value = 1
    assert "no mismatched pair" in demo.readout.value


def test_toy_batch_figure_shows_the_labelled_pairs_bias():
    """Section 3's toy batch: the labelled pairs' "z0" against the exercise's z0 on its grid."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig, summary = figures.labelled_vs_mismatched()
        assert figures.png_bytes(fig).startswith(b"\x89PNG")
    r, desirable = figures.trained_batch()
    assert desirable.tolist() == [True, True, True, False]
    logp_ref = -np.random.default_rng(0).uniform(10.0, 40.0, r.shape)
    z0 = number(summary, "z0")
    assert z0 == pytest.approx(_z0_estimate(logp_ref + r, logp_ref), abs=1e-3)
    assert number(summary, "'z0'") == pytest.approx(1.5) and z0 < 0.5


SWEEPS = {"z0_spread": figures.z0_spread, "mismatched_pairs": figures.mismatched_pairs}


@pytest.mark.parametrize("demo_name", list(SWEEPS))
def test_render_sweep_no_warning_no_nan(demo_name):
    sweep_corners_and_grid(demo_name, SWEEPS[demo_name])
