"""Lessons 01 (log-ratio) and 02 (KL reference point): checks, planted bugs, demos, notebooks.

Fast: nothing here starts a kernel. Executing the notebooks and grading them end to end is the
job of the notebook and grading tests.
"""

from __future__ import annotations

import itertools
import re
import warnings

import nbformat
import numpy as np
import pytest
from conftest import SOLUTIONS
from planted_bugs import PLANTED_BUGS

from kto_course import checks, core, demos, figures

LESSONS = ("01_log_ratio", "02_kl_reference_point")


def _moved_toward(logp_theta, logp_ref):
    return int(np.argmax(core.log_ratio(logp_theta, logp_ref)))


def _mismatched_log_ratios(logp_theta, logp_ref):
    rows, idx = np.arange(len(logp_theta)), core.mismatched_indices(len(logp_theta))
    return core.log_ratio(logp_theta[rows, idx], logp_ref[rows, idx])


# Each exercise's check and a reference answer built from core.
REFERENCES = {
    "sequence_logprob": core.sequence_logprob,
    "log_ratio": core.log_ratio,
    "moved_toward": _moved_toward,
    "dpo_loss": core.dpo_loss,
    "mismatched_indices": core.mismatched_indices,
    "mismatched_log_ratios": _mismatched_log_ratios,
    "z0_estimate": core.z0_estimate,
}
EXERCISES = {
    "01_log_ratio": ("sequence_logprob", "log_ratio", "moved_toward", "dpo_loss"),
    "02_kl_reference_point": ("mismatched_indices", "mismatched_log_ratios", "z0_estimate"),
}


def _check(exercise: str):
    return getattr(checks, f"check_{exercise}")


def _failure(exercise: str, fn, hidden: bool) -> str:
    with pytest.raises(checks.CheckFailed) as info:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # buggy answers may overflow on purpose
            _check(exercise)(fn, hidden=hidden)
    return str(info.value)


def _notebook(lesson: str) -> nbformat.NotebookNode:
    return nbformat.read(SOLUTIONS / f"{lesson}.ipynb", as_version=4)


def _grade_id(cell) -> str:
    return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id", "")


# ---------------------------------------------------------------------------------------------
# Checks: the reference passes, every misconception fails with its message
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hidden", [False, True])
@pytest.mark.parametrize("exercise", list(REFERENCES))
def test_reference_passes(exercise, hidden, capsys):
    _check(exercise)(REFERENCES[exercise], hidden=hidden)
    assert f"✓ {exercise}" in capsys.readouterr().out


@pytest.mark.parametrize("lesson", LESSONS)
def test_solution_cells_pass_their_checks(lesson, capsys):
    """The answers written in the solution notebook pass visible and hidden checks."""
    for cell in _notebook(lesson).cells:
        if not _grade_id(cell).startswith("ex_"):
            continue
        exercise = _grade_id(cell).removeprefix("ex_")
        namespace = {"np": np, "core": core}
        exec(cell.source, namespace)
        for hidden in (False, True):
            _check(exercise)(namespace[exercise], hidden=hidden)
    out = capsys.readouterr().out
    assert all(f"✓ {name}" in out for name in EXERCISES[lesson])


PLANTED = [(lesson, bug) for lesson in LESSONS for bug in PLANTED_BUGS[lesson]]


@pytest.mark.parametrize("hidden", [False, True])
@pytest.mark.parametrize(
    "lesson,bug", PLANTED, ids=[f"{bug.exercise}-{bug.message[:24]}" for _, bug in PLANTED]
)
def test_planted_bug_fails_with_its_message(lesson, bug, hidden):
    namespace = {"np": np, "core": core}
    exec(bug.code, namespace)
    message = _failure(bug.exercise, namespace[bug.exercise], hidden)
    assert bug.message.lower() in message.lower(), message


@pytest.mark.parametrize("lesson", LESSONS)
def test_every_exercise_has_a_planted_bug(lesson):
    planted = {bug.exercise for bug in PLANTED_BUGS[lesson]}
    assert planted == set(EXERCISES[lesson])


def _halos_log_ratios(logp_theta, logp_ref):
    rows = np.arange(len(logp_theta))
    idx = core.mismatched_indices(len(logp_theta), convention="halos")
    return logp_theta[rows, idx] - logp_ref[rows, idx]


def _padding_included(token_logps, completion_mask):
    started = np.cumsum(completion_mask, axis=-1) > 0
    return np.where(started, token_logps, 0.0).sum(-1)


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
    ("sequence_logprob", _padding_included, "padding tokens are included", True),
    ("sequence_logprob", lambda t, m: np.asarray(t).mean(-1), "averaged token log-probs", True),
    ("sequence_logprob", lambda t, m: np.exp(core.sequence_logprob(t, m)), "probability", True),
    ("sequence_logprob", lambda t, m: core.sequence_logprob(t, m).sum(), "single number", True),
    ("log_ratio", lambda a, b: np.abs(core.log_ratio(a, b)), "absolute value", True),
    ("log_ratio", lambda a, b: np.exp(core.log_ratio(a, b)), "probability ratio", True),
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
    ("moved_toward", lambda t, r: int(np.argmax(r)), "reference finds most likely", True),
    ("moved_toward", lambda t, r: _moved_toward(t, r) + 1, "from 0", True),
    ("moved_toward", lambda t, r: float(np.max(core.log_ratio(t, r))), "not a position", True),
    ("mismatched_indices", _raises_type_error_for_one, "raise a ValueError instead", True),
    ("mismatched_indices", _refuses_only_one, "mismatched_indices(0) returned", False),
    ("mismatched_indices", _reuses_a_completion, "share one completion", True),
    ("mismatched_log_ratios", _halos_log_ratios, "shifted the other way", True),
    ("mismatched_log_ratios", lambda t, r: -_mismatched_log_ratios(t, r), "policy minus", True),
    (
        "mismatched_log_ratios",
        lambda t, r: t[np.arange(len(t)), core.mismatched_indices(len(t))],
        "subtracts the reference",
        True,
    ),
    (
        "mismatched_log_ratios",
        lambda t, r: _mismatched_log_ratios(t, r).mean(),
        "single number",
        True,
    ),
    ("z0_estimate", lambda r: abs(float(np.mean(r))), "absolute value", True),
    ("z0_estimate", lambda r: float(np.sum(r)), "instead of averaging", True),
    ("z0_estimate", lambda r: max(0.0, float(np.mean(r[1:]))), "should be max(0, mean", True),
]


@pytest.mark.parametrize(
    "exercise,wrong,words,visible",
    MISCONCEPTIONS,
    ids=[f"{m[0]}-{m[2][:20]}" for m in MISCONCEPTIONS],
)
def test_misconception_is_named(exercise, wrong, words, visible):
    for hidden in (True, False) if visible else (True,):
        message = _failure(exercise, wrong, hidden)
        assert words.lower() in message.lower(), message
    if not visible:  # caught by the hidden edge cases only
        _check(exercise)(wrong, hidden=False)


def _raises(*args):
    raise IndexError("index 7 is out of bounds")


BAD_ANSWERS = [
    (_raises, "raised IndexError"),
    (lambda *args: None, "returned None"),
    (lambda *args: np.nan, "returned NaN"),
    (lambda *args: np.zeros((2, 3, 4)), "shape"),
    (lambda *args: "yes", "not numbers"),
]


@pytest.mark.parametrize("bad,words", BAD_ANSWERS, ids=[w for _, w in BAD_ANSWERS])
@pytest.mark.parametrize("exercise", list(REFERENCES))
def test_broken_answer_fails_clearly(exercise, bad, words):
    message = _failure(exercise, bad, hidden=False)
    assert words in message and exercise in message, message


def test_not_implemented_and_endless_loop(monkeypatch):
    def not_yet(batch_size):
        raise NotImplementedError()

    assert "NotImplementedError" in _failure("mismatched_indices", not_yet, hidden=False)

    def hangs_on_one(batch_size):  # fine for real batches, endless for the edge case
        while batch_size < 2:
            pass
        return core.mismatched_indices(batch_size)

    monkeypatch.setattr(checks, "LEARNER_TIME_LIMIT", 0.2)
    assert "never returned" in _failure("mismatched_indices", hangs_on_one, hidden=False)


def test_inputs_are_copies():
    """A learner's function that edits its inputs in place does not change what is compared."""

    def destructive(token_logps, completion_mask):
        result = core.sequence_logprob(token_logps, completion_mask)
        token_logps[:] = 0.0
        completion_mask[:] = False
        return result

    checks.check_sequence_logprob(destructive, hidden=True)


def test_visible_and_hidden_cases_differ():
    seen = {}

    def spy(token_logps, completion_mask):
        seen.setdefault(len(seen), token_logps.copy())
        return core.sequence_logprob(token_logps, completion_mask)

    checks.check_sequence_logprob(spy)
    visible = seen.pop(0)
    seen.clear()
    checks.check_sequence_logprob(spy, hidden=True)
    assert visible.shape != seen[0].shape or not np.allclose(visible, seen[0])


# ---------------------------------------------------------------------------------------------
# Demos driven from Python
# ---------------------------------------------------------------------------------------------

Z0_MEAN = r"have mean (-?[\d.]+)"
Z0_SD = r"spread \(sd\) ([\d.]+)"


def _number(readout: str, name: str, pattern: str = "") -> float:
    """The number ``name = <number>`` in a readout, or the first group of ``pattern``."""
    pattern = pattern or rf"{re.escape(name)} = (-?\d+(?:\.\d+)?)"
    match = re.search(pattern, re.sub(r"<[^>]+>", "", readout))
    assert match, f"{name!r} not in the readout {readout!r}"
    return float(match.group(1))


def test_token_demo_sum_mean_and_prompt():
    demo = demos.token_logprobs()
    controls = demo.controls

    def read():
        return _number(demo.readout.value, "log pi_theta(y|x)"), _number(demo.readout.value, "r")

    short_logp, short_r = read()
    plot = demo.plot.value
    controls["completion"].value = "long"
    long_logp, long_r = read()
    assert demo.plot.value != plot
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
    assert _number(demo.readout.value, "loss") == pytest.approx(np.log(2), abs=1e-3)
    losses, slopes = [], []
    for margin in (-30.0, -5.0, 5.0, 30.0):
        demo.controls["margin"].value = margin
        losses.append(_number(demo.readout.value, "loss"))
        slopes.append(_number(demo.readout.value, "d loss / d margin"))
    assert losses == sorted(losses, reverse=True)
    assert all(s < 0 for s in slopes) and abs(slopes[-1]) < abs(slopes[0])
    plot = demo.plot.value
    demo.controls["beta"].value = 0.5
    assert demo.plot.value != plot


def test_z0_demo_spread_shrinks_with_batch_size():
    demo = demos.z0_spread()
    demo.controls["clamp"].value = figures.Z0_CLAMP[1]  # raw mean: the 1/sqrt(B) law
    spreads = {}
    for batch_size in (8, 32, 128):
        demo.controls["batch_size"].value = batch_size
        spreads[batch_size] = _number(demo.readout.value, "sd", Z0_SD)
    assert spreads[8] > spreads[32] > spreads[128]
    assert spreads[8] / spreads[32] == pytest.approx(2.0, rel=0.15)
    assert spreads[8] / spreads[128] == pytest.approx(4.0, rel=0.15)


def test_z0_demo_clamp():
    demo = demos.z0_spread()
    controls = demo.controls
    controls["batch_size"].value = 4
    controls["true_mean"].value = -0.5
    share = int(re.search(r"(\d+)% of microbatches clamped", demo.readout.value).group(1))
    assert share > 50 and _number(demo.readout.value, "mean", Z0_MEAN) >= 0
    controls["true_mean"].value = 0.1
    clamped_mean = _number(demo.readout.value, "mean", Z0_MEAN)
    controls["clamp"].value = figures.Z0_CLAMP[1]
    raw_mean = _number(demo.readout.value, "mean", Z0_MEAN)
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


def _ranges(control) -> tuple[list, list]:
    """A control's (corner values, interior grid values) over its whole range."""
    if getattr(control, "options", None):
        options = [o[1] if isinstance(o, tuple) else o for o in control.options]
        return options, []
    if isinstance(control.value, int):
        middle = (control.min + control.max) // 2
        return [control.min, control.max], sorted({control.min + 1, middle})
    return [control.min, control.max], list(np.linspace(control.min, control.max, 5)[1:-1])


SWEEPS = {
    "token_logprobs": figures.token_logprobs,
    "dpo_margin": figures.dpo_margin,
    "z0_spread": figures.z0_spread,
    "mismatched_pairs": figures.mismatched_pairs,
}


@pytest.mark.parametrize("demo_name", list(SWEEPS))
def test_render_sweep_no_warning_no_nan(demo_name):
    """Every render at all corners of its controls' ranges, and on a grid of interior values
    (one control at a time, the others at their defaults): no warning, no NaN or inf."""
    controls = getattr(demos, demo_name)().controls
    defaults = {name: control.value for name, control in controls.items()}
    ranges = {name: _ranges(control) for name, control in controls.items()}
    settings = [
        dict(zip(ranges, corner, strict=True))
        for corner in itertools.product(*(corners for corners, _ in ranges.values()))
    ]
    for name, (_, grid) in ranges.items():
        settings += [{**defaults, name: value} for value in grid]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for values in settings:
            fig, readout = SWEEPS[demo_name](**values)
            assert figures.png_bytes(fig)
            assert not re.search(r"\b(nan|inf)\b", readout.lower()), (values, readout)


# ---------------------------------------------------------------------------------------------
# The notebooks' structure (cheap: no kernel)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lesson", LESSONS)
def test_notebook_structure(lesson):
    nb = _notebook(lesson)
    cells = nb.cells
    ids = [_grade_id(c) for c in cells]
    exercises = [i.removeprefix("ex_") for i in ids if i.startswith("ex_")]
    assert tuple(exercises) == EXERCISES[lesson] and 3 <= len(exercises) <= 5
    for name in exercises:
        test = cells[ids.index(f"ex_{name}") + 1]
        assert _grade_id(test) == f"test_{name}"
        assert test.source == (
            f"checks.check_{name}({name})\n### BEGIN HIDDEN TESTS\n"
            f"checks.check_{name}({name}, hidden=True)\n### END HIDDEN TESTS"
        )
        assert 1 <= test.metadata.nbgrader["points"] <= 3
    assert any(i.startswith("written_") for i in ids)
    demo_cells = [i for i, c in enumerate(cells) if c.source.startswith("demos.")]
    assert demo_cells
    for i in demo_cells:
        name = cells[i].source.removeprefix("demos.").removesuffix("()")
        assert callable(getattr(demos, name)), name
        assert "Predict first" in cells[i - 1].source
        assert "<details><summary>Reveal</summary>" in cells[i + 1].source
    for cell in cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None
    first_code = next(c for c in cells if c.cell_type == "code")
    assert "from kto_course import" in first_code.source
