"""Grading round trips: every lesson (and the fixture lesson) graded end to end with nbgrader.

Per lesson, ONE temporary nbgrader course grades every scenario as its own "student" in one
autograde call (module cache), then the tests below assert on the results:
the solved notebook scores full marks, the untouched student version scores zero, each planted
bug (tests/planted_bugs.py) loses exactly its exercise's points with the listed words, an endless
loop times out while the other exercises are graded, an edited test cell is restored, a deleted
one is put back and graded, and the HTML feedback shows no hidden test.

Each student costs a kernel start and the lesson's imports (seconds), so: the cells after a
lesson's last test cell are left out (they cannot change a grade; test_notebooks.py runs them),
and only the first planted bug of each exercise is graded alone; the others share students,
at most one bug per exercise each (see ``Lesson.bug_students``).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import html
import io
import json
import re
import shutil
from pathlib import Path

import nbformat
import pytest
from conftest import ROOT, SOLUTIONS
from planted_bugs import PLANTED_BUGS, PlantedBug

from kto_course import cli, grading

FIXTURES = ROOT / "tests" / "fixtures"
FIXTURE_SOLUTIONS = FIXTURES / "solutions"
FIXTURE_NOTEBOOKS = FIXTURES / "notebooks"
FIXTURE = "99_fixture"

# The fixture lesson's planted bugs live here; lesson authors fill tests/planted_bugs.py.
FIXTURE_BUGS = [
    PlantedBug("add", "def add(a, b):\n    return a - b", "subtracted", "sign"),
    PlantedBug("mean_of", "def mean_of(xs):\n    return sum(xs)", "summed", "no division"),
]

# Per-cell timeout of the grading courses below. Every cell up to a lesson's last test cell
# must finish well within it, on a busy machine too (the slowest is the import cell: torch and
# transformers). A lesson's endless loop does not wait for it (its kernel does not run the test
# cells; the worker stops the call after sandbox.CALL_TIME_LIMIT); the fixture lesson's does
# (its checks live in the notebook, so its kernel runs them).
TIMEOUT = 20
TIMEOUT_BY_LESSON: dict[str, int] = {"06_tiny_gpt2_kto": 30}

# An answer that never returns; it also swallows the check's own 10 s alarm (an Exception), so
# only the grader can stop it: the worker's call limit (a lesson), the per-cell timeout (the
# fixture lesson).
ENDLESS_LOOP = """def {name}(*args, **kwargs):
    import time
    while True:
        try:
            while True:
                time.sleep(0.01)
        except Exception:
            pass
"""


# The lesson whose grading also has a student that counts the kernel's calls of an answer.
COUNTED_LESSON = grading.lessons(SOLUTIONS)[0]
COUNTING = """
_kernel_calls = []
_answer = {name}


def {name}(*args, **kwargs):
    _kernel_calls.append(1)
    return _answer(*args, **kwargs)
"""
COUNT_CELL = 'print(f"calls in the kernel: {len(_kernel_calls)}")'


def _lesson_cases() -> list[tuple[str, Path]]:
    return [(FIXTURE, FIXTURE_SOLUTIONS)] + [(n, SOLUTIONS) for n in grading.lessons(SOLUTIONS)]


LESSONS = _lesson_cases()
LESSON_IDS = [name for name, _ in LESSONS]


def _bugs(name: str) -> list[PlantedBug]:
    return FIXTURE_BUGS if name == FIXTURE else PLANTED_BUGS.get(name, [])


BUG_CASES = [(name, i) for name, _ in LESSONS for i in range(len(_bugs(name)))]


def _grading_group(name: str):
    """The tests of one lesson share its grading (``graded``): with pytest-xdist, one worker."""
    return pytest.mark.xdist_group(f"grading-{name}")


LESSON_PARAMS = [pytest.param(name, marks=_grading_group(name)) for name in LESSON_IDS]
BUG_PARAMS = [pytest.param(n, i, id=f"{n}-bug{i}", marks=_grading_group(n)) for n, i in BUG_CASES]


# ---------------------------------------------------------------------------------------------
# Building the scenarios
# ---------------------------------------------------------------------------------------------


def _by_id(nb) -> dict:
    return {
        c.metadata["nbgrader"]["grade_id"]: c
        for c in nb.cells
        if c.metadata.get("nbgrader", {}).get("grade_id")
    }


def exercises(solution_nb) -> dict[str, float]:
    """{exercise name: points} from the test cells ``test_<name>``."""
    return {
        gid.removeprefix("test_"): c.metadata["nbgrader"]["points"]
        for gid, c in _by_id(solution_nb).items()
        if gid.startswith("test_") and c.cell_type == "code"
    }


def solved(student_nb, solution_nb):
    """The student version with every answer cell holding the instructor's solution."""
    nb = copy.deepcopy(student_nb)
    reference = _by_id(solution_nb)
    for gid, cell in _by_id(nb).items():
        if cell.metadata["nbgrader"].get("solution"):
            cell.source = reference[gid].source
    return nb


def trimmed(nb):
    """The notebook without the ordinary code cells after its last test cell.

    Those cells (lesson 06 trains there) cannot change any grade: a test cell's score depends
    only on the cells run before it. Dropping them keeps grading every scenario fast; the full
    notebooks are executed by test_notebooks.py.
    """
    nb = copy.deepcopy(nb)
    graded = [
        i
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("grade")
    ]
    last = graded[-1] if graded else len(nb.cells)
    nb.cells = [
        c
        for i, c in enumerate(nb.cells)
        if i <= last or c.cell_type != "code" or c.metadata.get("nbgrader")
    ]
    return nb


def with_answer(nb, exercise: str, code: str):
    nb = copy.deepcopy(nb)
    _by_id(nb)[f"ex_{exercise}"].source = code
    return nb


class Lesson:
    def __init__(self, name: str, solutions_dir: Path, student_text: str):
        self.name = name
        self.solutions_dir = solutions_dir
        self.solution = grading.read_notebook(solutions_dir / f"{name}.ipynb")
        self.student = nbformat.reads(student_text, as_version=4)
        self.exercises = exercises(self.solution)
        self.bugs = _bugs(name)
        self.loop_exercise = next(iter(self.exercises))
        first, last = next(iter(self.exercises)), list(self.exercises)[-1]
        self.edited_exercise, self.deleted_exercise = first, last

    def bug_students(self) -> dict[str, list[int]]:
        """{student: indices of the planted bugs in their notebook}.

        The first bug of each exercise is graded alone: that proves the exercise is isolated
        (its bug costs exactly its points). Each further bug shares a student with further bugs
        of OTHER exercises (at most one per exercise), which saves a kernel start per bug; every
        exercise without a bug in that student must still score full points.
        """
        students, seen, rounds = {}, set(), {}
        for i, bug in enumerate(self.bugs):
            if bug.exercise not in seen:
                seen.add(bug.exercise)
                students[f"bug{i}"] = [i]
                continue
            k = rounds[bug.exercise] = rounds.get(bug.exercise, 0) + 1
            students.setdefault(f"bugs_round{k}", []).append(i)
        return students

    def student_of_bug(self, index: int) -> str:
        return next(s for s, ids in self.bug_students().items() if index in ids)

    def scenarios(self) -> dict:
        # Trimmed before any tampering, so that a deleted test cell does not move the cut.
        student = trimmed(self.student)
        full = solved(student, self.solution)
        cases = {"solved": full, "untouched": student}
        for bug_student, indices in self.bug_students().items():
            nb = full
            for i in indices:
                nb = with_answer(nb, self.bugs[i].exercise, self.bugs[i].code)
            cases[bug_student] = nb
        cases["loop"] = with_answer(
            full, self.loop_exercise, ENDLESS_LOOP.format(name=self.loop_exercise)
        )
        # One student who tampered: the first exercise is unanswered and its test cell is
        # replaced by `pass` (restored from the gradebook, so it must fail); the last test cell
        # is deleted (put back and graded, so it must pass). With one exercise, only the edit.
        tampered = copy.deepcopy(full)
        _by_id(tampered)[f"ex_{self.edited_exercise}"].source = _by_id(student)[
            f"ex_{self.edited_exercise}"
        ].source
        _by_id(tampered)[f"test_{self.edited_exercise}"].source = "pass"
        if self.deleted_exercise != self.edited_exercise:
            deleted = _by_id(tampered)[f"test_{self.deleted_exercise}"]
            tampered.cells = [c for c in tampered.cells if c is not deleted]
        cases["tampered"] = tampered
        if self.name == COUNTED_LESSON:
            # The answer counts its calls in the kernel; a cell the learner added prints them.
            name = self.loop_exercise
            counted = with_answer(full, name, _by_id(full)[f"ex_{name}"].source
                                  + "\n" + COUNTING.format(name=name))  # fmt: skip
            counted.cells.append(nbformat.v4.new_code_cell(COUNT_CELL))
            cases["counted"] = counted
        return cases


@functools.cache
def _student_texts() -> dict[str, str]:
    texts = grading.student_versions([FIXTURE], FIXTURE_SOLUTIONS)
    texts.update(grading.student_versions(grading.lessons(SOLUTIONS), SOLUTIONS))
    return texts


@functools.cache
def graded(name: str):
    """(lesson, {scenario: GradeResult}): every scenario of a lesson in one autograde call."""
    solutions_dir = dict(LESSONS)[name]
    lesson = Lesson(name, solutions_dir, _student_texts()[name])
    results = grading.grade(
        name,
        lesson.scenarios(),
        solutions_dir=solutions_dir,
        timeout=TIMEOUT_BY_LESSON.get(name, TIMEOUT),
    )
    return lesson, results


def _autograded(result) -> dict:
    return {c.exercise: c for c in result.cells if c.kind == "autograded"}


# ---------------------------------------------------------------------------------------------
# Per lesson: full marks, zero, planted bugs, loop, tampering, feedback
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", LESSON_PARAMS)
def test_solution_scores_full_autograded_marks(name):
    lesson, results = graded(name)
    result = results["solved"]
    assert result.max_score == sum(lesson.exercises.values())
    assert result.score == result.max_score, grading.format_report(result)
    assert set(_autograded(result)) == set(lesson.exercises)
    assert all(c.message is None for c in result.cells if c.kind == "autograded")


@pytest.mark.slow
@pytest.mark.parametrize("name", LESSON_PARAMS)
def test_untouched_student_version_scores_zero(name):
    lesson, results = graded(name)
    result = results["untouched"]
    assert result.score == 0, grading.format_report(result)
    for exercise, cell in _autograded(result).items():
        assert cell.points == 0
        assert "NotImplementedError" in cell.message, (exercise, cell.message)


@pytest.mark.slow
@pytest.mark.parametrize("name", LESSON_PARAMS)
def test_written_answers_are_left_to_the_instructor(name):
    lesson, results = graded(name)
    written = [c for c in results["solved"].cells if c.kind == "written"]
    assert written, f"{name} has no written answer"
    for cell in written:
        assert cell.points is None and cell.message == grading.WRITTEN_STATUS
        assert cell.grade_id.startswith("written_")
    report = grading.format_report(results["solved"])
    assert "graded by your instructor" in report


@pytest.mark.parametrize("name", LESSON_PARAMS)
def test_every_exercise_has_a_planted_bug(name):
    solution = grading.read_notebook(dict(LESSONS)[name] / f"{name}.ipynb")
    lesson_exercises = exercises(solution)
    covered = {bug.exercise for bug in _bugs(name)}
    missing = sorted(set(lesson_exercises) - covered)
    assert not missing, (
        f"{name}: no planted bug in tests/planted_bugs.py for exercise(s) {missing}; a lesson "
        "must not ship an exercise that no planted bug covers"
    )
    unknown = sorted(covered - set(lesson_exercises))
    assert not unknown, f"{name}: planted bugs name exercises the lesson does not have: {unknown}"


@pytest.mark.slow
@pytest.mark.parametrize("name,index", BUG_PARAMS)
def test_planted_bug_loses_exactly_its_exercise(name, index):
    lesson, results = graded(name)
    bug = lesson.bugs[index]
    student = lesson.student_of_bug(index)
    bugged = {lesson.bugs[i].exercise for i in lesson.bug_students()[student]}
    result = results[student]
    cells = _autograded(result)
    assert bug.exercise in cells, f"{name}: no test cell test_{bug.exercise}"
    assert cells[bug.exercise].points == 0, (
        f"{name}: planted bug {bug.why or bug.code!r} was not caught:\n"
        + grading.format_report(result)
    )
    others = {e: c.points for e, c in cells.items() if e not in bugged}
    assert others == {e: lesson.exercises[e] for e in others}, grading.format_report(result)
    assert result.score == result.max_score - sum(lesson.exercises[e] for e in bugged)
    message = cells[bug.exercise].message or ""
    assert bug.message.lower() in message.lower(), (
        f"{name}: the message for {bug.why or bug.code!r} should contain {bug.message!r}; it is "
        f"{message!r}"
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", LESSON_PARAMS)
def test_endless_loop_times_out_and_the_rest_is_graded(name):
    lesson, results = graded(name)
    cells = _autograded(results["loop"])
    looping = cells[lesson.loop_exercise]
    assert looping.points == 0
    assert "never ends" in looping.message and "stopped" in looping.message, looping.message
    for exercise, cell in cells.items():
        if exercise != lesson.loop_exercise:
            assert cell.points == lesson.exercises[exercise], (exercise, cell.message)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", [pytest.param(COUNTED_LESSON, marks=_grading_group(COUNTED_LESSON))]
)
def test_the_kernel_never_runs_the_checks(name):
    """The test cells' outcome is the isolated verdict: the kernel does not run them (their
    result would be replaced; a looping answer would hold the notebook for the cell timeout)."""
    lesson, results = graded(name)
    result = results["counted"]
    assert result.score == result.max_score, grading.format_report(result)
    assert "calls in the kernel: 0" in _visible_text(result.feedback_html)


@pytest.mark.slow
@pytest.mark.parametrize("name", LESSON_PARAMS)
def test_edited_test_cell_is_restored_and_deleted_one_put_back(name):
    lesson, results = graded(name)
    cells = _autograded(results["tampered"])
    # Its test cell said `pass`; restored, the check sees the unanswered exercise and fails.
    assert set(cells) == set(lesson.exercises)
    assert cells[lesson.edited_exercise].points == 0
    assert "NotImplementedError" in cells[lesson.edited_exercise].message
    # Deleted, put back, graded: the answer is right, so it scores its points.
    deleted = lesson.deleted_exercise
    assert cells[deleted].points == lesson.exercises[deleted]


def _visible_text(page: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", page))


def _hidden_lines(solution_nb) -> list[str]:
    return [s for s, what in grading.secret_lines(solution_nb).items() if what == "a hidden test"]


@pytest.mark.slow
@pytest.mark.parametrize("name", LESSON_PARAMS)
def test_feedback_html_has_no_hidden_test(name):
    lesson, results = graded(name)
    hidden = _hidden_lines(lesson.solution)
    assert hidden, f"{name}: no hidden tests found in the solution"
    for scenario in ("solved", "untouched", "bug0", "loop", "tampered"):
        if scenario not in results:
            continue
        page = results[scenario].feedback_html
        assert "Grade cell" in page or "Score" in page, f"{scenario}: no feedback page"
        text = _visible_text(page)
        assert "HIDDEN TESTS" not in text and "HIDDEN TESTS" not in page
        for line in hidden:
            assert line not in text, f"{name}/{scenario}: feedback shows the hidden test {line!r}"
            assert line not in page, f"{name}/{scenario}: feedback shows the hidden test {line!r}"


# ---------------------------------------------------------------------------------------------
# kto-course submit (on the fixture lesson): the report, JSON, the learner's file, bad input
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def learner_copy(tmp_path_factory):
    """A learner's notebook folder holding the fixture with `add` right and `mean_of` buggy."""
    folder = tmp_path_factory.mktemp("learner") / "notebooks"
    folder.mkdir()
    student = grading.read_notebook(FIXTURE_NOTEBOOKS / f"{FIXTURE}.ipynb")
    nb = with_answer(student, "add", "def add(a, b):\n    return a + b")
    nb = with_answer(nb, "mean_of", FIXTURE_BUGS[1].code)
    path = folder / f"{FIXTURE}.ipynb"
    nbformat.write(nb, path)
    return path


def _submit(args, capsys):
    rc = cli.main(["submit", *map(str, args), "--solutions-dir", str(FIXTURE_SOLUTIONS)])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def submitted_json(learner_copy, tmp_path_factory):
    """`kto-course submit --json` once; the learner file's bytes before and after."""
    feedback_dir = tmp_path_factory.mktemp("feedback")
    before = learner_copy.read_bytes()
    mtime = learner_copy.stat().st_mtime_ns
    # capsys is function-scoped: capture this module-wide run by hand.
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(
            [
                "submit",
                str(learner_copy),
                "--json",
                "--timeout",
                "20",
                "--feedback-dir",
                str(feedback_dir),
                "--solutions-dir",
                str(FIXTURE_SOLUTIONS),
            ]
        )
    return {
        "rc": rc,
        "out": out.getvalue(),
        "err": err.getvalue(),
        "before": before,
        "after": learner_copy.read_bytes(),
        "mtime": (mtime, learner_copy.stat().st_mtime_ns),
        "feedback_dir": feedback_dir,
    }


def test_submit_json_reports_points_per_exercise(submitted_json):
    assert submitted_json["rc"] == 0, submitted_json["err"]
    data = json.loads(submitted_json["out"])
    cells = {c["exercise"]: c for c in data["cells"]}
    assert data["lesson"] == FIXTURE
    assert (data["score"], data["max_score"]) == (2, 3)
    assert cells["add"]["points"] == 2 and cells["add"]["message"] is None
    assert cells["mean_of"]["points"] == 0
    assert "summed instead of averaging" in cells["mean_of"]["message"]
    assert cells["empty_mean"]["kind"] == "written"
    assert cells["empty_mean"]["message"] == "graded by your instructor"
    assert Path(data["feedback"]) == submitted_json["feedback_dir"] / f"{FIXTURE}.html"


def test_submit_leaves_the_learner_file_untouched(submitted_json):
    assert submitted_json["after"] == submitted_json["before"]
    assert submitted_json["mtime"][0] == submitted_json["mtime"][1]


def test_submit_writes_feedback_without_hidden_tests(submitted_json):
    files = list(submitted_json["feedback_dir"].iterdir())
    assert [f.name for f in files] == [f"{FIXTURE}.html"]
    page = files[0].read_text("utf-8")
    text = _visible_text(page)
    assert "summed instead of averaging" in text  # the failed check's message
    for line in _hidden_lines(grading.read_notebook(FIXTURE_SOLUTIONS / f"{FIXTURE}.ipynb")):
        assert line not in text and line not in page


def test_feedback_page_loads_mathjax_from_this_machine(submitted_json):
    """No CDN (raw TeX offline): jupyter-server-mathjax's copy, which exists. The browser test
    test_feedback_page_typesets_math_offline opens such a page with the network refused."""
    page = (submitted_json["feedback_dir"] / f"{FIXTURE}.html").read_text("utf-8")
    url = grading.nbgrader_app.mathjax_file()
    assert url.startswith("file://") and Path(url.removeprefix("file://")).is_file()
    assert f'var file = "{url}";' in page and "/static/jupyter_server_mathjax/" in page
    assert "cdnjs" not in page and not re.search(r'(src|href)="https?:', page.split("<body")[0])


def test_feedback_shows_a_widget_as_one_line():
    from kto_course.grading.nbgrader_app import WIDGET_NOTE, WIDGET_VIEW, StaticWidgets

    cell = nbformat.v4.new_code_cell("demos.margin()")
    cell.outputs = [nbformat.v4.new_output("display_data", data={
        WIDGET_VIEW: {"model_id": "abc", "version_major": 2}, "text/plain": "VBox(...)"})]
    cell, _ = StaticWidgets().preprocess_cell(cell, {}, 0)
    assert cell.outputs[0]["data"] == {"text/plain": WIDGET_NOTE}


def test_submit_prints_a_clean_report(learner_copy, tmp_path, capsys):
    rc, out, err = _submit([learner_copy, "--feedback-dir", tmp_path / "fb"], capsys)
    assert rc == 0, err
    assert "99_fixture: 2 / 3 autograded points" in out
    assert re.search(r"✓ add\s+2 / 2", out) and re.search(r"✗ mean_of\s+0 / 1", out)
    assert "summed instead of averaging" in out
    assert "graded by your instructor" in out
    # nbgrader's harmless noise stays out of the learner's report.
    for noise in ("checksum", "SAWarning", "without encryption", "[WARNING]", "Traceback"):
        assert noise not in out + err
    # The page opens with the same report: each exercise by name, the terminal's total.
    page = (tmp_path / "fb" / f"{FIXTURE}.html").read_text("utf-8")
    block = page.split('class="panel panel-default kto-summary"')[1].split("</table>")[0]
    summary = _visible_text(block)
    assert "99_fixture: 2 / 3 autograded points" in summary
    for exercise, points in (("add", "2 / 2"), ("mean_of", "0 / 1"), ("empty_mean", "- / 1")):
        assert f"<td><code>{exercise}</code></td><td>{points}</td>" in block, block
    assert "summed instead of averaging" in summary and "graded by your instructor" in summary
    assert 'href="#test_add">add</a>' in page and ">Test cell<" not in page
    # A second submit keeps the first report and says so.
    rc, out, err = _submit([learner_copy, "--feedback-dir", tmp_path / "fb"], capsys)
    assert rc == 0, err
    previous = tmp_path / "fb" / f"{FIXTURE}.previous.html"
    assert previous.read_text("utf-8") == page
    assert f"replaced an earlier report, kept as {previous}" in out


def _assert_nothing_written(folder: Path, before: dict):
    now = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert now == before


@pytest.mark.parametrize(
    "case,expected",
    [
        ("missing", "does not exist"),
        ("not_course", "not a course notebook"),
        ("bad_json", "not a valid notebook"),
        ("directory", "not a notebook file"),
        ("not_ipynb", "not a notebook file"),
    ],
)
def test_submit_rejects_bad_input_clearly(case, expected, tmp_path, capsys):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    (notebooks / "my_homework.ipynb").write_bytes(
        (FIXTURE_NOTEBOOKS / f"{FIXTURE}.ipynb").read_bytes()
    )
    (notebooks / f"{FIXTURE}.ipynb").write_text('{"cells": [ oops', encoding="utf-8")
    (notebooks / f"{FIXTURE}.txt").write_text("hello", encoding="utf-8")
    (notebooks / "folder.ipynb").mkdir()
    target = {
        "missing": notebooks / "77_nothing.ipynb",
        "not_course": notebooks / "my_homework.ipynb",
        "bad_json": notebooks / f"{FIXTURE}.ipynb",
        "directory": notebooks / "folder.ipynb",
        "not_ipynb": notebooks / f"{FIXTURE}.txt",
    }[case]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    rc, out, err = _submit([target, "--feedback-dir", tmp_path / "feedback"], capsys)
    assert rc == 2
    assert expected in err and err.count("\n") == 1, err  # one clear line
    assert "Traceback" not in err and out == ""
    assert not (tmp_path / "feedback").exists()
    _assert_nothing_written(tmp_path, before)


# ---------------------------------------------------------------------------------------------
# kto-course generate and generate --check (on copies of the fixture tree)
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path):
    """A copy of the fixture's solutions/ and notebooks/."""
    shutil.copytree(FIXTURE_SOLUTIONS, tmp_path / "solutions")
    shutil.copytree(FIXTURE_NOTEBOOKS, tmp_path / "notebooks")
    return tmp_path


def _generate(tree, *args, capsys):
    rc = cli.main(
        [
            "generate",
            *args,
            "--solutions-dir",
            str(tree / "solutions"),
            "--notebooks-dir",
            str(tree / "notebooks"),
        ]
    )
    out, err = capsys.readouterr()
    return rc, out, err


def test_fixture_student_version_is_generated_and_in_sync(tree, capsys):
    rc, out, err = _generate(tree, "--check", capsys=capsys)
    assert rc == 0, out + err


def test_a_new_gradebook_records_alembics_head_without_a_subprocess(tmp_path, monkeypatch):
    """nbgrader runs `alembic heads` for each new gradebook (1.8 s); the course reads the same
    revision in-process (nbgrader_app.alembic_head)."""
    import subprocess
    import sys

    import nbgrader.api
    from nbgrader.api import Gradebook
    from nbgrader.dbutil import _temp_alembic_ini
    from sqlalchemy import create_engine, text

    from kto_course.grading import nbgrader_app  # every grading step imports it

    assert nbgrader.api.get_alembic_version is nbgrader_app.alembic_head

    alembic = str(Path(sys.executable).parent / "alembic")
    with _temp_alembic_ini("sqlite:///unused.db") as ini:
        heads = subprocess.check_output([alembic, "-c", ini, "heads"], text=True)

    def no_subprocess(*args, **kwargs):
        raise AssertionError(f"a subprocess while creating a gradebook: {args}")

    monkeypatch.setattr(subprocess, "Popen", no_subprocess)
    db = f"sqlite:///{tmp_path / 'gradebook.db'}"
    with Gradebook(db, "kto-course"):
        pass
    with create_engine(db).connect() as connection:
        (version,) = connection.execute(text("SELECT version_num FROM alembic_version")).one()
    assert version == heads.split()[0] and len(version) == 12, (version, heads)


def test_generate_is_deterministic_and_strips_outputs(tree, capsys):
    committed = (tree / "notebooks" / f"{FIXTURE}.ipynb").read_bytes()
    (tree / "notebooks" / f"{FIXTURE}.ipynb").unlink()
    assert _generate(tree, capsys=capsys)[0] == 0
    first = (tree / "notebooks" / f"{FIXTURE}.ipynb").read_bytes()
    assert _generate(tree, "99", capsys=capsys)[0] == 0
    assert (tree / "notebooks" / f"{FIXTURE}.ipynb").read_bytes() == first == committed
    nb = nbformat.reads(first.decode(), as_version=4)
    for cell in nb.cells:
        assert cell.get("outputs", []) == [] and cell.get("execution_count") is None
        for marker in grading.MARKERS:
            assert marker not in cell.source


def test_check_writes_nothing(tree, capsys):
    before = {p: p.read_bytes() for p in tree.rglob("*") if p.is_file()}
    nb = grading.read_notebook(tree / "solutions" / f"{FIXTURE}.ipynb")
    nb.cells[0].source += "\n\nA new sentence."
    nbformat.write(nb, tree / "solutions" / f"{FIXTURE}.ipynb")
    before[tree / "solutions" / f"{FIXTURE}.ipynb"] = (
        tree / "solutions" / f"{FIXTURE}.ipynb"
    ).read_bytes()
    _generate(tree, "--check", capsys=capsys)
    _assert_nothing_written(tree, before)


def test_check_detects_a_stale_student_notebook(tree, capsys):
    nb = grading.read_notebook(tree / "solutions" / f"{FIXTURE}.ipynb")
    nb.cells[0].source += "\n\nA new sentence."
    nbformat.write(nb, tree / "solutions" / f"{FIXTURE}.ipynb")
    rc, out, err = _generate(tree, "--check", capsys=capsys)
    assert rc == 1
    assert f"{FIXTURE}.ipynb differs" in out and "kto-course generate" in out


def _edit_student(tree, grade_id: str, source: str):
    """A leaky student version as if generate had written it (its manifest record updated): a
    learner's edit is not compared, so only what generate wrote can leak a solution line."""
    path = tree / "notebooks" / f"{FIXTURE}.ipynb"
    nb = grading.read_notebook(path)
    _by_id(nb)[grade_id].source = source
    path.write_text(grading.notebook_text(nb), encoding="utf-8")
    manifest = path.parent / grading.MANIFEST
    data = json.loads(manifest.read_text(encoding="utf-8"))
    data["sha256"][path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


@pytest.mark.parametrize(
    "grade_id,source,expected",
    [
        (
            "ex_mean_of",
            "def mean_of(xs):\n    total = 0.0\n    for x in xs:\n"
            "        total += x\n    return total / len(xs)",
            "solution code",
        ),
        ("test_add", "checks.check_add(add)\nchecks.check_add(add, hidden=True)", "a hidden test"),
        ("ex_add", "def add(a, b):\n    ### BEGIN SOLUTION\n    pass", "### BEGIN SOLUTION"),
        ("test_add", "checks.check_add(add)\n### END HIDDEN TESTS", "### END HIDDEN TESTS"),
        (
            "written_empty_mean",
            "There is nothing to divide by: the count of an empty list is zero.",
            "a model written answer",
        ),
    ],
)
def test_check_detects_a_leak(tree, capsys, grade_id, source, expected):
    _edit_student(tree, grade_id, source)
    rc, out, err = _generate(tree, "--check", capsys=capsys)
    assert rc == 1
    assert f"{FIXTURE}.ipynb" in out and grade_id in out and expected in out, out


def test_check_detects_missing_and_orphaned_student_notebooks(tree, capsys):
    (tree / "notebooks" / f"{FIXTURE}.ipynb").rename(tree / "notebooks" / "98_gone.ipynb")
    rc, out, err = _generate(tree, "--check", capsys=capsys)
    assert rc == 1
    assert f"{FIXTURE}.ipynb is missing" in out
    assert "98_gone.ipynb has no solution notebook" in out


@pytest.mark.parametrize(
    "mutate,expected",
    [
        (lambda m: m.pop("points"), "does not have points"),
        (lambda m: m.update(grade_id="ex_add"), "grade_id 'ex_add' is also used by cell 3"),
        (lambda m: m.update(checksum="abc"), "remove 'checksum'"),
        (lambda m: m.update(grade="yes"), "invalid nbgrader metadata"),
    ],
)
def test_bad_markup_is_reported_clearly(tree, capsys, mutate, expected):
    path = tree / "solutions" / f"{FIXTURE}.ipynb"
    nb = grading.read_notebook(path)
    mutate(_by_id(nb)["test_add"].metadata["nbgrader"])
    nbformat.write(nb, path, version=nbformat.NO_CONVERT)
    for args in ([], ["--check"]):
        rc, out, err = _generate(tree, *args, capsys=capsys)
        assert rc != 0
        assert expected in out + err and "99_fixture.ipynb, cell 4" in out + err, out + err
        assert "Traceback" not in out + err


def test_hidden_test_outside_a_test_cell_is_reported(tree, capsys):
    path = tree / "solutions" / f"{FIXTURE}.ipynb"
    nb = grading.read_notebook(path)
    nb.cells[1].source += "\n### BEGIN HIDDEN TESTS\nx = 1\n### END HIDDEN TESTS"
    nbformat.write(nb, path)
    rc, out, err = _generate(tree, capsys=capsys)
    assert rc == 2 and "may only appear in a test cell" in err


def test_generate_rejects_an_unknown_lesson(tree, capsys):
    before = {p: p.read_bytes() for p in tree.rglob("*") if p.is_file()}
    rc, out, err = _generate(tree, "77_nothing", capsys=capsys)
    assert rc == 2 and "no lesson called '77_nothing'" in err and FIXTURE in err
    _assert_nothing_written(tree, before)


def test_course_refuses_a_non_empty_directory(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine", encoding="utf-8")
    rc = cli.main(["course", str(tmp_path), "--solutions-dir", str(FIXTURE_SOLUTIONS)])
    err = capsys.readouterr().err
    assert rc == 2 and "not empty" in err
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


@pytest.fixture
def submitted_dirs(monkeypatch) -> dict:
    """The folders ``kto-course submit`` hands to grading.submit, which stops right there."""
    seen = {}

    def fake_submit(notebook, **kwargs):
        seen.update(kwargs)
        raise ValueError("stop here")

    monkeypatch.setattr(grading, "submit", fake_submit)
    return seen


def test_submit_feedback_goes_beside_notebooks_wherever_it_is_run(
    submitted_dirs, monkeypatch, tmp_path
):
    """Run from notebooks/ (a JupyterLab terminal) or anywhere: feedback never lands in it."""
    seen = submitted_dirs
    monkeypatch.chdir(tmp_path)
    assert cli.main(["submit", str(ROOT / "notebooks" / "01_log_ratio.ipynb")]) == 2
    assert seen["feedback_dir"] == ROOT / "feedback"
    assert not seen["feedback_dir"].is_relative_to(ROOT / "notebooks")


def test_commands_outside_a_course_checkout_say_so_in_one_line(monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    for args in (
        ["generate", "--check"],
        ["submit", str(tmp_path / "01_log_ratio.ipynb")],
        ["course", str(tmp_path / "class")],
        ["generate", "--root", str(tmp_path)],
    ):
        assert cli.main(args) == 2, args
        out, err = capsys.readouterr()
        assert "not" in err and "a course checkout" in err and "--root" in err, err
        assert err.count("\n") == 1 and "Traceback" not in err and out == ""
    assert list(tmp_path.iterdir()) == []


def test_generate_check_run_from_the_course_root(tree, monkeypatch, capsys):
    monkeypatch.chdir(tree)
    assert cli.main(["generate", "--check"]) == 0, capsys.readouterr()


def test_submit_from_the_checkout_or_notebooks_finds_solutions_and_feedback(
    tree, submitted_dirs, monkeypatch
):
    seen = submitted_dirs
    root = tree.resolve()
    for cwd, notebook in (
        (tree, f"notebooks/{FIXTURE}.ipynb"),
        (tree / "notebooks", f"{FIXTURE}.ipynb"),
    ):
        monkeypatch.chdir(cwd)
        seen.clear()
        assert cli.main(["submit", notebook]) == 2
        assert seen["solutions_dir"] == root / "solutions"
        assert seen["feedback_dir"] == root / "feedback"


# ---------------------------------------------------------------------------------------------
# The worker's report on torch modules: a training step (lesson 06's kto_step) fills .grad in
# models that live in the worker only; their gradients and changes come back as plain tensors
# ---------------------------------------------------------------------------------------------

# A step that leaves a gradient in the policy and, when told to, changes the reference's weights.
MODULE_STEP = """def step(policy, reference, batch, scale):
    logits = policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    (scale * logits.float().logsumexp(-1).mean()).backward()
    if scale < 0:
        with torch.no_grad():
            reference.transformer.ln_f.bias += 1.0
    return scale * 2
"""


@pytest.fixture(scope="module")
def lesson06_box():
    """A worker with lesson 06's own setup cell: what unpickling its GPT-2 needs is loaded
    before the worker locks itself down."""
    from kto_course.grading import verdicts
    from kto_course.grading.sandbox import Sandbox

    source = grading.read_notebook(SOLUTIONS / "06_tiny_gpt2_kto.ipynb")
    with Sandbox(verdicts.setup_source(source)) as box:
        yield box


def _models_and_batch():
    from kto_course.lm import encode, load_reference

    reference, tokenizer = load_reference()
    batch = encode(tokenizer, ["review: soup, 5 stars ->", "review: film, 1 star ->"],
                   [" it was fresh and calm.", " it was dull."])  # fmt: skip
    return reference, batch


def test_a_modules_gradients_and_changes_come_back_from_the_worker(lesson06_box):
    import torch

    from kto_course.checks.base import call_and_read_modules

    model, batch = _models_and_batch()
    here = {"torch": torch}
    exec(MODULE_STEP, here)  # noqa: S102 (the same step, run in this process)
    remote = lesson06_box.function("step", [("<the answer cell of step>", MODULE_STEP, False)])
    try:
        for scale in (1.0, -1.0):
            views = []
            for fn in (remote, here["step"]):
                args = (copy.deepcopy(model).train(), copy.deepcopy(model), batch, scale)
                views.append(call_and_read_modules(fn, args, name="step"))
            (value, states), (value_here, states_here) = views
            assert float(value) == float(value_here) == 2 * scale
            assert states[2:] == states_here[2:] == [None, None]
            policy, reference = states[0], states[1]
            assert set(policy["grads"]) == {n for n, _ in model.named_parameters()}
            for name, grad in policy["grads"].items():
                assert torch.allclose(grad, states_here[0]["grads"][name], atol=1e-6), name
            assert all(g is None for g in reference["grads"].values())
            assert policy["changed"] == []
            assert reference["changed"] == states_here[1]["changed"] == (
                ["transformer.ln_f.bias"] if scale < 0 else [])
    finally:
        remote.finish()
    assert all(p.grad is None for p in model.parameters())  # the worker had its own copies


_Z0_ATTACHED = next(b.code for b in PLANTED_BUGS["06_tiny_gpt2_kto"]
                    if b.exercise == "kto_step" and b.message == "z0 is not detached")
WORKER_ANSWERS = {
    "raises": ("def kto_step(*args, **kwargs):\n    raise ValueError('boom')\n",
               "kto_step raised ValueError: boom"),
    "NaN": ("def kto_step(*args, **kwargs):\n    return float('nan')\n", "kto_step returned NaN"),
    "a model": ("def kto_step(policy, *args, **kwargs):\n    return policy\n", "cannot read"),
    "z0 attached": (_Z0_ATTACHED, "z0 is not detached"),
    "a twin": ("import importlib\n"
               "_twin = importlib.import_module('kto_course.train').sequence_logps_of\n"
               "def kto_step(policy, reference, labelled, *args):\n"
               "    return _twin(policy, labelled).sum()\n", "you called the course's own"),
}  # fmt: skip


@pytest.mark.parametrize("answer,words", list(WORKER_ANSWERS.values()), ids=list(WORKER_ANSWERS))
def test_kto_step_graded_in_the_worker_names_what_went_wrong(lesson06_box, answer, words):
    from kto_course.checks import EXERCISES
    from kto_course.grading import verdicts

    entry = EXERCISES["06_tiny_gpt2_kto"]["kto_step"]
    sources = [("<the answer cell of kto_step>", answer, False)]
    ok, message = verdicts.verdict(entry, "kto_step", sources, lesson06_box, hidden=True)
    assert not ok and words in message, message


def test_kto_step_solution_passes_in_the_worker(lesson06_box):
    from kto_course.checks import EXERCISES
    from kto_course.grading import verdicts

    source = grading.read_notebook(SOLUTIONS / "06_tiny_gpt2_kto.ipynb")
    sources = verdicts.answer_sources(source, "kto_step")
    entry = EXERCISES["06_tiny_gpt2_kto"]["kto_step"]
    ok, message = verdicts.verdict(entry, "kto_step", sources, lesson06_box, hidden=True)
    assert ok and "graded checks passed" in message, message
