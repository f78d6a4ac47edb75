"""What the lesson tests share: answer cells, running a check, demo readouts, render sweeps.

Each ``test_lNN_*.py`` next to this file holds one lesson's tests: its checks against the
reference, the notebook's own solutions, the planted bugs (``planted_bugs``) and more wrong
answers; its demos driven from Python; its solution notebook's structure. The scaffolding they
have in common is written once, here. Fast: nothing here starts a kernel.
"""

from __future__ import annotations

import itertools
import re
import warnings

import nbformat
import numpy as np
import pytest
from browser_specs import readout_numbers, readout_text
from conftest import SOLUTIONS
from planted_bugs import PLANTED_BUGS

from kto_course import checks, demos, figures

# -- the solution notebook -------------------------------------------------------------------


def solution_notebook(lesson: str) -> nbformat.NotebookNode:
    return nbformat.read(SOLUTIONS / f"{lesson}.ipynb", as_version=4)


def grade_id(cell) -> str:
    return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id", "")


def answer_cells(lesson: str) -> dict[str, str]:
    """{exercise: the source of its answer cell ex_<exercise>} in the solution notebook."""
    return {
        grade_id(cell).removeprefix("ex_"): cell.source
        for cell in solution_notebook(lesson).cells
        if grade_id(cell).startswith("ex_")
    }


def define(code: str, name: str, namespace: dict):
    """Run an answer cell's code as the notebook would (after its imports, given as
    ``namespace``, which is not changed); return the function it defines."""
    namespace = dict(namespace)
    exec(compile(code, f"<answer {name}>", "exec"), namespace)  # noqa: S102  (test code only)
    return namespace[name]


# -- running a check -------------------------------------------------------------------------


def check(exercise: str):
    return getattr(checks, f"check_{exercise}")


def passes(exercise: str, fn, hidden: bool, capsys) -> None:
    """The check passes ``fn`` and says so."""
    check(exercise)(fn, hidden=hidden)
    out = capsys.readouterr().out
    assert f"✓ {exercise}" in out and "passed" in out, out


def failure(exercise: str, fn, hidden: bool = False) -> str:
    """The message of the check's failure on ``fn`` (the test fails if the check passes)."""
    with pytest.raises(checks.CheckFailed) as info:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # buggy answers may overflow on purpose
            check(exercise)(fn, hidden=hidden)
    return str(info.value)


def fails_with(exercise: str, fn, words: str, hidden: bool = False) -> None:
    """The check fails ``fn`` with a message that contains ``words`` (any case)."""
    message = failure(exercise, fn, hidden)
    assert words.lower() in message.lower(), message


def first_failure(exercise: str, fn) -> str | None:
    """The message of the first failing mode (visible, then hidden, as the test cell runs)."""
    for hidden in (False, True):
        try:
            check(exercise)(fn, hidden=hidden)
        except checks.CheckFailed as e:
            return str(e)
    return None


def raising(error: Exception):
    """A broken answer that raises ``error`` whatever it is given."""

    def broken(*args, **kwargs):
        raise error

    return broken


def returns_none(*args, **kwargs):
    return None


def solution_cells_pass(lesson: str, exercises, namespace: dict, capsys,
                        modes: tuple[bool, ...] = (False, True)) -> None:
    """The answers written in the solution notebook, one per exercise, pass their checks in
    each mode (visible, hidden)."""
    answers = answer_cells(lesson)
    assert set(answers) == set(exercises)
    for exercise, code in answers.items():
        for hidden in modes:
            check(exercise)(define(code, exercise, namespace), hidden=hidden)
    out = capsys.readouterr().out
    assert all(f"✓ {name}" in out for name in exercises)


def planted_bug_fails(bug, namespace: dict, hidden: bool) -> None:
    """A planted bug fails its check in this mode, with the words it promises."""
    message = failure(bug.exercise, define(bug.code, bug.exercise, namespace), hidden)
    assert bug.message.lower() in message.lower(), message


def misconception_is_named(exercise: str, wrong, words: str, visible: bool) -> None:
    """``wrong`` fails with ``words`` in both modes; or, when only the hidden edge cases can
    catch it (``visible`` False), fails the hidden check and passes the visible one."""
    for hidden in (True, False) if visible else (True,):
        message = failure(exercise, wrong, hidden)
        assert words.lower() in message.lower(), message
    if not visible:  # caught by the hidden edge cases only
        check(exercise)(wrong, hidden=False)


# Answers that are not answers, for a check of a NumPy function: (answer, words of the failure)
BAD_ANSWERS = [
    (raising(IndexError("index 7 is out of bounds")), "raised IndexError"),
    (returns_none, "returned None"),
    (lambda *args: np.nan, "returned NaN"),
    (lambda *args: np.zeros((2, 3, 4)), "shape"),
    (lambda *args: "yes", "not numbers"),
]


def broken_answer_fails_clearly(exercise: str, bad, words: str) -> None:
    message = failure(exercise, bad, hidden=False)
    assert words in message and exercise in message, message


def per_example_answer(transform):
    """An answer ``fn(r, z0, desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0)`` (the KTO
    loss, its gradient) computed by ``transform(r, z0, d, beta, lambda_D, lambda_U)`` on arrays."""
    return lambda r, z0, d, beta=0.1, lambda_D=1.0, lambda_U=1.0: transform(
        np.asarray(r), z0, np.asarray(d), beta, lambda_D, lambda_U
    )


def broken_answers(returns_nan, wrong_shape) -> list:
    """(answer, words of its failure) for a raise, None, NaN and a wrong shape; the lesson says
    what NaN and a wrong shape look like for its exercises."""
    return [
        (raising(ValueError("boom")), "raised ValueError: boom"),
        (returns_none, "None"),
        (returns_nan, "NaN"),
        (wrong_shape, "shape"),
    ]


# -- demos: readouts and render sweeps -------------------------------------------------------


def readout(demo) -> dict[str, float]:
    """The numbers of a demo's readout, by name."""
    return readout_numbers(readout_text(demo.readout.value))


def number(text: str, name: str, pattern: str = "") -> float:
    """The number ``name = <number>`` in a readout, or the first group of ``pattern``."""
    pattern = pattern or rf"{re.escape(name)} = (-?\d+(?:\.\d+)?)"
    match = re.search(pattern, re.sub(r"<[^>]+>", "", text))
    assert match, f"{name!r} not in the readout {text!r}"
    return float(match.group(1))


def _control_ranges(control) -> tuple[list, list]:
    """A control's (corner values, interior grid values) over its whole range."""
    if getattr(control, "options", None):
        options = [o[1] if isinstance(o, tuple) else o for o in control.options]
        return options, []
    if isinstance(control.value, int):
        middle = (control.min + control.max) // 2
        return [control.min, control.max], sorted({control.min + 1, middle})
    return [control.min, control.max], list(np.linspace(control.min, control.max, 5)[1:-1])


def sweep_corners_and_grid(demo_name: str, render) -> None:
    """Every render at all corners of its controls' ranges, and on a grid of interior values
    (one control at a time, the others at their defaults): no warning, no NaN or inf."""
    controls = getattr(demos, demo_name)().controls
    defaults = {name: control.value for name, control in controls.items()}
    ranges = {name: _control_ranges(control) for name, control in controls.items()}
    settings = [
        dict(zip(ranges, corner, strict=True))
        for corner in itertools.product(*(corners for corners, _ in ranges.values()))
    ]
    for name, (_, grid) in ranges.items():
        settings += [{**defaults, name: value} for value in grid]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for values in settings:
            fig, text = render(**values)
            assert figures.png_bytes(fig)
            assert not re.search(r"\b(nan|inf)\b", text.lower()), (values, text)


def _demo_ranges(demo) -> dict[str, list]:
    out = {}
    for name, control in demo.controls.items():
        if hasattr(control, "options"):
            out[name] = [value for _, value in control.options]
        else:
            lo, hi = control.min, control.max
            out[name] = [lo, lo + 0.37 * (hi - lo), hi]
            if isinstance(control.value, int):
                out[name] = [int(v) for v in out[name]]
    return out


def _render_ok(render, values: dict, draw: bool) -> None:
    fig, html = render(**values)
    text = readout_text(html)
    numbers = readout_numbers(text)
    assert numbers, text
    assert all(np.isfinite(v) for v in numbers.values()), text
    assert "nan" not in text.lower() and "inf" not in text.lower().replace("info", "")
    if draw:
        assert figures.png_bytes(fig).startswith(b"\x89PNG")


def sweep_corners_and_interior(make, render) -> None:
    """Every control at its min or max (a few of those drawn to PNG), then a grid through the
    interior without drawing: finite readout numbers, no warning, no NaN."""
    ranges = _demo_ranges(make())
    names = list(ranges)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        corners = [{n: ranges[n][0 if i == 0 else -1] for n, i in zip(names, bits, strict=True)}
                   for bits in itertools.product((0, 1), repeat=len(names))]
        for i, values in enumerate(corners):
            _render_ok(render, values, draw=i % 8 == 0)
        # The math and readout are what vary in the interior.
        for combo in itertools.islice(itertools.product(*ranges.values()), 0, None, 3):
            _render_ok(render, dict(zip(names, combo, strict=True)), draw=False)


# -- the solution notebook's structure (cheap: no kernel) -------------------------------------


def assert_notebook_structure(lesson: str, exercises: tuple[str, ...],
                              require_demo: bool = True) -> None:  # fmt: skip
    """The lesson contract in the solution notebook: valid nbgrader markup; the exercises in
    order, each answer cell followed by its test cell (visible and hidden check, 1-3 points);
    a written answer; demos between a "Predict first" cell and a revealed answer; no outputs;
    the package imported by the first code cell. ``require_demo=False``: a lesson whose
    experiments are cells, not widgets (lesson 07), needs no ``demos.x()`` cell."""
    from nbgrader.nbgraderformat import MetadataValidator

    nb = solution_notebook(lesson)
    MetadataValidator().validate_nb(nb)
    cells = nb.cells
    cell_ids = [c.get("id") for c in cells]
    assert len(set(cell_ids)) == len(cell_ids)
    ids = [grade_id(c) for c in cells]
    found = [i.removeprefix("ex_") for i in ids if i.startswith("ex_")]
    assert tuple(found) == tuple(exercises) and 2 <= len(found) <= 5
    for name in exercises:
        at = ids.index(f"ex_{name}")
        assert "### BEGIN SOLUTION" in cells[at].source
        test = cells[at + 1]
        assert ids[at + 1] == f"test_{name}"
        assert test.source == (
            f"checks.check_{name}({name})\n### BEGIN HIDDEN TESTS\n"
            f"checks.check_{name}({name}, hidden=True)\n### END HIDDEN TESTS"
        )
        assert 1 <= test.metadata.nbgrader["points"] <= 3
    assert any(i.startswith("written_") for i in ids)
    demo_cells = [
        i
        for i, c in enumerate(cells)
        if c.source.startswith("demos.") or (c.cell_type == "code" and "demos." in c.source)
    ]
    assert demo_cells or not require_demo
    for i in demo_cells:
        source = cells[i].source
        assert source.startswith("demos.") and source.endswith("()"), source
        assert callable(getattr(demos, source.removeprefix("demos.").removesuffix("()")))
        assert "Predict first" in cells[i - 1].source
        assert "<details><summary>Reveal</summary>" in cells[i + 1].source
    for cell in cells:
        if cell.cell_type == "code":
            assert not cell.get("outputs") and cell.get("execution_count") is None
    first_code = next(c for c in cells if c.cell_type == "code")
    assert "from kto_course import" in first_code.source


# -- the tests every lesson's exercises get ---------------------------------------------------


class ExerciseTests:
    """The tests every lesson's exercises get, written once.

    A lesson's test file subclasses it as ``TestExercises`` and names its ``LESSON`` (the
    notebook's stem), ``EXERCISES`` (in notebook order), ``REFERENCES`` ({exercise: a right
    answer}) and ``NAMESPACE`` (what the notebook's first code cell imports; solutions and
    planted bugs run in it). ``PLANTED_MODES``: the modes each planted bug must fail in with its
    words (visible, hidden).
    """

    LESSON: str
    EXERCISES: tuple[str, ...]
    REFERENCES: dict
    NAMESPACE: dict
    PLANTED_MODES: tuple[bool, ...] = (False, True)
    REQUIRE_DEMO: bool = True  # False: the lesson's experiments are cells, not widgets

    def pytest_generate_tests(self, metafunc):
        bugs = PLANTED_BUGS[self.LESSON]
        params = {
            "exercise": (list(self.EXERCISES), None),
            "hidden": ([False, True], ["visible", "hidden"]),
            "bug": (bugs, [f"{bug.exercise}-{bug.message[:24]}" for bug in bugs]),
            "planted_mode": (
                list(self.PLANTED_MODES),
                ["hidden" if mode else "visible" for mode in self.PLANTED_MODES],
            ),
        }
        for name in metafunc.fixturenames:
            if name in params:
                values, ids = params[name]
                metafunc.parametrize(name, values, ids=ids)

    def test_reference_passes(self, exercise, hidden, capsys):
        passes(exercise, self.REFERENCES[exercise], hidden, capsys)

    def test_solution_cells_pass_their_checks(self, hidden, capsys):
        solution_cells_pass(self.LESSON, self.EXERCISES, self.NAMESPACE, capsys, modes=(hidden,))

    def test_planted_bug_fails_with_its_message(self, bug, planted_mode):
        assert bug.exercise in self.EXERCISES
        planted_bug_fails(bug, self.NAMESPACE, planted_mode)

    def test_every_exercise_has_a_planted_bug(self):
        assert {bug.exercise for bug in PLANTED_BUGS[self.LESSON]} == set(self.EXERCISES)

    def test_notebook_structure(self):
        assert_notebook_structure(self.LESSON, self.EXERCISES, self.REQUIRE_DEMO)
