"""The lesson notebooks: they run, they follow CONTRIBUTING.md's markup, they are in sync.

- every solution notebook runs clean under nbval (``pytest --nbval-lax`` on a temp copy,
  KTO_COURSE_QUICK=1 from conftest); every student version, Run All as a learner does it,
  reaches its last cell, its only errors are in the check cells (tagged `raises-exception`),
  and those fail ONLY with NotImplementedError;
- a failed check shows the course's message alone, not the checker's traceback;
- no notebook in git carries outputs or execution counts;
- `kto-course generate --check` passes on the committed tree;
- every solution has valid nbgrader metadata, 2-5 autograded exercises, a written answer, and
  test cells that call the exercise's check (visible, then hidden).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import nbformat
import pytest
from conftest import (
    NOTEBOOKS,
    ROOT,
    SOLUTIONS,
    inner_pytest_env,
    skip_if_learner_edited,
    unanswered,
)
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from kto_course import checks, cli, grading

FIXTURE_SOLUTIONS = ROOT / "tests" / "fixtures" / "solutions"
FIXTURE_NOTEBOOKS = ROOT / "tests" / "fixtures" / "notebooks"

LESSONS = grading.lessons(SOLUTIONS)
# Executed: every lesson and the grading tests' fixture lesson.
EXECUTED = [(SOLUTIONS, NOTEBOOKS, n) for n in LESSONS] + [
    (FIXTURE_SOLUTIONS, FIXTURE_NOTEBOOKS, n) for n in grading.lessons(FIXTURE_SOLUTIONS)
]
EXECUTED_IDS = [n for _, _, n in EXECUTED]
# Seconds one cell may take; lesson 06 trains in quick mode, everything else takes seconds.
CELL_TIMEOUT = 600


def _execute(path, tmp_path, allow_errors=True):
    """Run a copy of the notebook in a temp folder; the executed notebook.

    ``allow_errors=False`` is Run All: execution stops at the first error, except in a cell
    tagged ``raises-exception`` (nbclient, like JupyterLab, goes on past those).
    """
    copy = tmp_path / path.name
    shutil.copyfile(path, copy)
    nb = nbformat.read(copy, as_version=4)
    return _run(nb, tmp_path, allow_errors)


def _run(nb, tmp_path, allow_errors=True):
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        allow_errors=allow_errors,
        extra_arguments=["--HistoryManager.hist_file=:memory:", "--IPKernelApp.log_level=ERROR"],
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()
    return nb


def _errors(nb):
    return [
        (i, o)
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code"
        for o in cell.get("outputs", [])
        if o.get("output_type") == "error"
    ]


@pytest.mark.slow
@pytest.mark.parametrize("solutions,notebooks,name", EXECUTED, ids=EXECUTED_IDS)
def test_solution_runs_clean_under_nbval(solutions, notebooks, name, tmp_path):
    """nbval, the field's notebook validator: every code cell of the solution runs without an
    error (``--nbval-lax``: outputs are not compared; they depend on the machine)."""
    copy = tmp_path / f"{name}.ipynb"
    shutil.copyfile(solutions / f"{name}.ipynb", copy)
    # A separate pytest in the copy's folder: none of this suite's conftest or options, and
    # of the installed plugins only nbval (loading them all took 1 s of each run).
    env = inner_pytest_env(PYTHONDONTWRITEBYTECODE="1", PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "nbval", "-p", "no:cacheprovider",
         "--nbval-lax", f"--nbval-cell-timeout={CELL_TIMEOUT}", copy.name],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=CELL_TIMEOUT * 2,
    )  # fmt: skip
    assert done.returncode == 0, f"{name}: nbval failed:\n{done.stdout[-4000:]}"
    assert re.search(r"\d+ passed", done.stdout) and "failed" not in done.stdout, done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("solutions,notebooks,name", EXECUTED, ids=EXECUTED_IDS)
def test_student_version_fails_only_with_not_implemented(solutions, notebooks, name, tmp_path):
    path = notebooks / f"{name}.ipynb"
    if not path.exists():
        pytest.fail(f"{path} is missing: run `kto-course generate`")
    skip_if_learner_edited(path)
    # Run All, as a learner does: it must reach the end of the untouched notebook.
    try:
        nb = _execute(path, tmp_path, allow_errors=False)
    except CellExecutionError as e:
        pytest.fail(f"{name}: Run All stops at an error outside a tagged check cell: {e}")
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    assert code[-1].get("execution_count"), f"{name}: Run All did not reach the last cell"
    errors = _errors(nb)
    untagged = [
        f"cell {i}: {o.ename}"
        for i, o in errors
        if "raises-exception" not in nb.cells[i].metadata.get("tags", [])
        or not nb.cells[i].metadata.get("nbgrader", {}).get("grade")
    ]
    assert not untagged, f"{name}: errors outside the tagged check cells: " + "; ".join(untagged)
    others = [
        f"cell {i}: {o.ename}: {o.evalue}" for i, o in errors if not unanswered(o.ename, o.evalue)
    ]
    assert not others, f"{name}: errors other than NotImplementedError: " + "; ".join(others)
    graded = {
        c.metadata["nbgrader"]["grade_id"]
        for c in nb.cells
        if c.metadata.get("nbgrader", {}).get("grade") and c.cell_type == "code"
    }
    failed_cells = {nb.cells[i].metadata.get("nbgrader", {}).get("grade_id") for i, _ in errors}
    assert graded <= failed_cells, (
        f"{name}: test cells pass without an answer: {graded - failed_cells}"
    )


def test_a_failed_check_shows_its_message_alone(tmp_path):
    """In Jupyter a CheckFailed is one line: no frame of kto_course/checks, no expected value."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell(
            "from kto_course import checks\n\ndef dpo_loss(*args, **kwargs):\n    return 0.0"
        ),
        nbformat.v4.new_code_cell(
            "checks.check_dpo_loss(dpo_loss)", metadata={"tags": ["raises-exception"]}
        ),
        nbformat.v4.new_code_cell("1 / 0", metadata={"tags": ["raises-exception"]}),
        nbformat.v4.new_code_cell("print('reached the end')"),
    ]
    nb = _run(nb, tmp_path, allow_errors=False)
    (error,) = [o for o in nb.cells[1].outputs if o.output_type == "error"]
    assert error.ename == "CheckFailed" and "dpo_loss" in error.evalue
    text = "\n".join(error.traceback)
    assert error.evalue in text and len(error.traceback) == 1, text
    for frame in ("kto_course/checks", "kto_course", "expected =", ".py", "Traceback"):
        assert frame not in text, f"{frame!r} in the failed check's output: {text}"
    # Other exceptions keep IPython's ordinary traceback; Run All reached the end.
    (other,) = [o for o in nb.cells[2].outputs if o.output_type == "error"]
    assert other.ename == "ZeroDivisionError" and len(other.traceback) > 1
    assert nb.cells[3].outputs[0].text == "reached the end\n"


def test_brief_check_failures_is_a_no_op_outside_ipython():
    from kto_course.checks.base import brief_check_failures

    assert brief_check_failures() is False


def _all_committed_notebooks():
    folders = (SOLUTIONS, NOTEBOOKS, FIXTURE_SOLUTIONS, FIXTURE_NOTEBOOKS)
    return sorted(p for folder in folders for p in folder.glob("*.ipynb"))


@pytest.mark.parametrize(
    "path", _all_committed_notebooks(), ids=lambda p: f"{p.parent.name}/{p.name}"
)
def test_notebook_has_no_outputs_or_execution_counts(path):
    skip_if_learner_edited(path)
    nb = nbformat.read(path, as_version=4)
    dirty = [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count"))
    ]
    assert not dirty, (
        f"{path.relative_to(ROOT)}: cells {dirty} carry outputs or execution counts. Clear them "
        "(Edit > Clear Outputs of All Cells) before committing; for notebooks/ run "
        "`kto-course generate`."
    )


def test_generate_check_passes_on_the_committed_tree(capsys):
    rc = cli.main(["generate", "--check", "--root", str(ROOT)])
    out = capsys.readouterr().out
    assert rc == 0, out


# ---------------------------------------------------------------------------------------------
# The markup contract of CONTRIBUTING.md, per lesson
# ---------------------------------------------------------------------------------------------


def _cells(name):
    nb = grading.read_notebook(SOLUTIONS / f"{name}.ipynb")
    return nb, [(c, c.metadata.get("nbgrader", {})) for c in nb.cells]


@pytest.mark.parametrize("name", LESSONS)
def test_solution_has_valid_nbgrader_metadata(name):
    nb, _ = _cells(name)
    assert grading.markup_problems(nb, name) == []


@pytest.mark.parametrize("name", LESSONS)
def test_solution_has_2_to_5_exercises_each_followed_by_its_test(name):
    nb, cells = _cells(name)
    answers = [
        (i, m) for i, (c, m) in enumerate(cells) if m.get("solution") and c.cell_type == "code"
    ]
    tests = [(i, m) for i, (c, m) in enumerate(cells) if m.get("grade") and c.cell_type == "code"]
    assert 2 <= len(tests) <= 5, f"{name}: {len(tests)} autograded exercises (want 2 to 5)"
    assert len(answers) == len(tests), f"{name}: {len(answers)} answer cells, {len(tests)} tests"
    for (i, answer), (j, test) in zip(answers, tests, strict=True):
        exercise = answer["grade_id"].removeprefix("ex_")
        assert answer["grade_id"] == f"ex_{exercise}", answer
        assert answer == {
            "schema_version": 3,
            "grade": False,
            "solution": True,
            "locked": False,
            "grade_id": f"ex_{exercise}",
        }
        assert j == i + 1, f"{name}: test_{exercise} must come right after ex_{exercise}"
        assert test["grade_id"] == f"test_{exercise}"
        assert test["locked"] and not test["solution"] and test["points"] in (1, 2, 3), test
        source = nb.cells[i].source
        assert re.search(rf"^def {exercise}\(", source, re.M), f"{name}: ex_{exercise} has no def"
        assert "### BEGIN SOLUTION" in source and "### END SOLUTION" in source


@pytest.mark.parametrize("name", LESSONS)
def test_each_test_cell_calls_its_check_visibly_and_hidden(name):
    nb, cells = _cells(name)
    for cell, meta in cells:
        if not (meta.get("grade") and cell.cell_type == "code"):
            continue
        exercise = meta["grade_id"].removeprefix("test_")
        expected = (
            f"checks.check_{exercise}({exercise})\n"
            "### BEGIN HIDDEN TESTS\n"
            f"checks.check_{exercise}({exercise}, hidden=True)\n"
            "### END HIDDEN TESTS"
        )
        assert cell.source.strip() == expected, f"{name}: test_{exercise} is not the standard cell"
        assert callable(getattr(checks, f"check_{exercise}", None)), (
            f"{name}: kto_course.checks has no check_{exercise}"
        )


@pytest.mark.parametrize("name", LESSONS)
def test_solution_has_a_written_answer(name):
    nb, cells = _cells(name)
    written = [
        (i, m)
        for i, (c, m) in enumerate(cells)
        if c.cell_type == "markdown" and m.get("grade") and m.get("solution")
    ]
    assert written, f"{name}: no written answer (a graded markdown solution cell)"
    for i, meta in written:
        assert meta["grade_id"].startswith("written_") and not meta["locked"], meta
        assert meta.get("points", 0) >= 1
        question = nb.cells[i - 1]
        assert question.cell_type == "markdown" and not question.metadata.get("nbgrader"), (
            f"{name}: {meta['grade_id']} must follow an ordinary markdown cell with the question"
        )
    others = [
        m for c, m in cells if m and not (m.get("grade") or m.get("solution") or m.get("locked"))
    ]
    assert not others, f"{name}: cells with nbgrader metadata that do nothing: {others}"
