"""Lesson 01, the log-ratio: its checks, planted bugs, demos and solution notebook."""

from __future__ import annotations

import numpy as np
import pytest
from shared import (
    BAD_ANSWERS,
    ExerciseTests,
    broken_answer_fails_clearly,
    misconception_is_named,
    number,
    sweep_corners_and_grid,
)

from kto_course import checks, core, demos, figures

LESSON = "01_log_ratio"
EXERCISES = ("sequence_logps", "moved_toward", "dpo_loss")
# What the notebook's first code cell imports; planted bugs and solutions run in this namespace.
NAMESPACE = {"np": np, "core": core}


def _moved_toward(logp_theta, logp_ref, prompt_ids, pick=np.argmax):
    r = core.log_ratio(logp_theta, logp_ref)
    best = []
    for prompt in np.unique(prompt_ids):
        members = np.flatnonzero(prompt_ids == prompt)
        best.append(members[pick(r[members])])
    return np.array(best)


# Each exercise's reference answer, built from core.
REFERENCES = {
    "sequence_logps": core.sequence_logps,
    "moved_toward": _moved_toward,
    "dpo_loss": core.dpo_loss,
}


# The tests every lesson's exercises get: references and solutions pass, planted bugs fail.
class TestExercises(ExerciseTests):
    LESSON, EXERCISES, REFERENCES, NAMESPACE = LESSON, EXERCISES, REFERENCES, NAMESPACE


# ---------------------------------------------------------------------------------------------
# Misconceptions beyond the planted bugs, and answers that are not answers
# ---------------------------------------------------------------------------------------------


def _last_argmax(values):
    return len(values) - 1 - np.argmax(values[::-1])


def _by_appearance(logp_theta, logp_ref, prompt_ids):
    r = logp_theta - logp_ref
    order = dict.fromkeys(prompt_ids.tolist())  # the prompts as they first appear
    return np.array([np.flatnonzero(prompt_ids == p)[np.argmax(r[prompt_ids == p])] for p in order])


def _padding_included(token_logps, completion_mask):
    started = np.cumsum(completion_mask, axis=-1) > 0
    return np.where(started, token_logps, 0.0).sum(-1)


# Misconceptions beyond the planted bugs: (exercise, wrong answer, words, visible check catches it)
MISCONCEPTIONS = [
    ("sequence_logps", _padding_included, "padding tokens are included", True),
    ("sequence_logps", lambda t, m: np.asarray(t).mean(-1), "averaged token log-probs", True),
    ("sequence_logps", lambda t, m: np.exp(core.sequence_logps(t, m)), "probability", True),
    ("sequence_logps", lambda t, m: core.sequence_logps(t, m).sum(), "single number", True),
    ("dpo_loss", lambda w, lo, beta: core.log_sigmoid(beta * (w - lo)), "negative", True),
    ("dpo_loss", lambda w, lo, beta: beta * core.dpo_loss(w, lo, 1.0), "inside the sigmoid", True),
    ("dpo_loss", lambda w, lo, beta: core.sigmoid(beta * (lo - w)), "left out the log", True),
    (
        "dpo_loss",
        lambda w, lo, beta: -np.log(np.clip(core.sigmoid(beta * (w - lo)), 1e-12, 1)),
        "clipping only hides it",
        True,
    ),
    ("dpo_loss", lambda w, lo, beta: core.dpo_loss(w, lo, beta).mean(), "single number", True),
    ("moved_toward", lambda t, r, p: _moved_toward(r, 0.0 * r, p), "reference finds most likely",
     True),  # fmt: skip
    ("moved_toward", lambda t, r, p: _moved_toward(t, r, p) + 1, "from 0", True),
    ("moved_toward", _by_appearance, "first appear", True),
    ("moved_toward", lambda t, r, p: np.full(len(np.unique(p)), np.argmax(t - r)),
     "WHOLE batch", True),  # fmt: skip
    ("moved_toward", lambda t, r, p: t - r, "one value per completion", True),
    ("moved_toward", lambda t, r, p: _moved_toward(t, r, p, _last_argmax), "tie goes to the first",
     False),  # fmt: skip
    (
        "moved_toward",
        lambda t, r, p: np.array([np.max((t - r)[p == q]) for q in np.unique(p)]),
        "not positions",
        True,
    ),
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


def test_inputs_are_copies():
    """A learner's function that edits its inputs in place does not change what is compared."""

    def destructive(token_logps, completion_mask):
        result = core.sequence_logps(token_logps, completion_mask)
        token_logps[:] = 0.0
        completion_mask[:] = False
        return result

    checks.check_sequence_logps(destructive, hidden=True)


def test_visible_and_hidden_cases_differ():
    seen = {}

    def spy(token_logps, completion_mask):
        seen.setdefault(len(seen), token_logps.copy())
        return core.sequence_logps(token_logps, completion_mask)

    checks.check_sequence_logps(spy)
    visible = seen.pop(0)
    seen.clear()
    checks.check_sequence_logps(spy, hidden=True)
    assert visible.shape != seen[0].shape or not np.allclose(visible, seen[0])


# ---------------------------------------------------------------------------------------------
# Demos driven from Python
# ---------------------------------------------------------------------------------------------


def test_token_demo_sum_mean_and_prompt():
    demo = demos.token_logprobs()
    controls = demo.controls

    def read():
        return number(demo.readout.value, "log pi_theta(y|x)"), number(demo.readout.value, "r")

    short_logp, short_r = read()
    plot = figures.png_bytes(demo.figure)
    controls["completion"].value = "long"
    long_logp, long_r = read()
    assert figures.png_bytes(demo.figure) != plot
    assert long_logp < short_logp and long_r > short_r  # more tokens: lower log-prob, larger r

    controls["reduce"].value = "mean"  # length normalisation flips which one moved more
    long_mean_r = read()[1]
    controls["completion"].value = "short"
    short_mean_r = read()[1]
    assert short_mean_r > long_mean_r
    assert "mean over" in demo.readout.value

    controls["reduce"].value = "sum"
    controls["tokens"].value = figures.TOKEN_SPANS[1]  # the prompt's drift is added to both
    short_shift = read()[1] - short_r
    controls["completion"].value = "long"
    long_shift = read()[1] - long_r
    assert short_shift > 0 and short_shift == pytest.approx(long_shift)


def test_dpo_demo_loss_falls_with_the_margin():
    demo = demos.dpo_margin()
    demo.controls["margin"].value = 0.0
    assert number(demo.readout.value, "loss") == pytest.approx(np.log(2), abs=1e-3)
    losses, slopes = [], []
    for margin in (-30.0, -5.0, 5.0, 30.0):
        demo.controls["margin"].value = margin
        losses.append(number(demo.readout.value, "loss"))
        slopes.append(number(demo.readout.value, "d loss / d margin"))
    assert losses == sorted(losses, reverse=True)
    assert all(s < 0 for s in slopes) and abs(slopes[-1]) < abs(slopes[0])
    plot = figures.png_bytes(demo.figure)
    demo.controls["beta"].value = 0.5
    assert figures.png_bytes(demo.figure) != plot


SWEEPS = {"token_logprobs": figures.token_logprobs, "dpo_margin": figures.dpo_margin}


@pytest.mark.parametrize("demo_name", list(SWEEPS))
def test_render_sweep_no_warning_no_nan(demo_name):
    sweep_corners_and_grid(demo_name, SWEEPS[demo_name])
