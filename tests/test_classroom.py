"""The classroom flow end to end, with nbgrader's own commands in a course from `kto-course course`.

Instructor: generate_assignment, release_assignment; student: fetch_assignment, answer, submit;
instructor: collect, autograde, generate_feedback (no hidden test in the HTML), export (CSV).
The exchange is a temporary folder inside the course. One lesson is enough: the fixture lesson
(the grading of every real lesson is tested in test_grading.py).
"""

from __future__ import annotations

import csv
import getpass
import html
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from conftest import ROOT, SOLUTIONS

from kto_course import cli, grading

FIXTURE_SOLUTIONS = ROOT / "tests" / "fixtures" / "solutions"
LESSON = "99_fixture"


def nbgrader(*args, cwd: Path, env: dict) -> str:
    """Run one nbgrader command as a person would; its output (fails the test on error)."""
    done = subprocess.run(
        [sys.executable, "-m", "nbgrader", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"nbgrader {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def classroom(tmp_path_factory):
    """Run the whole flow once; the paths the tests look at."""
    base = tmp_path_factory.mktemp("classroom")
    course = base / "course"
    assert cli.main(["course", str(course), "--solutions-dir", str(FIXTURE_SOLUTIONS)]) == 0
    env = dict(os.environ)
    # nbgrader finds `alembic` and the kernel next to this Python; no personal Jupyter config.
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["JUPYTER_CONFIG_DIR"] = str(base / "jupyter-config")
    exchange = course / "exchange"

    nbgrader("generate_assignment", LESSON, cwd=course, env=env)
    nbgrader("release_assignment", LESSON, cwd=course, env=env)

    # The student works in their own home, with the course id and exchange in their config.
    home = base / "student"
    home.mkdir()
    student_flags = [f"--Exchange.root={exchange}", "--CourseDirectory.course_id=kto-course"]
    nbgrader("fetch_assignment", LESSON, *student_flags, cwd=home, env=env)
    fetched = home / LESSON / f"{LESSON}.ipynb"
    nb = nbformat.read(fetched, as_version=4)
    for cell in nb.cells:
        if cell.metadata.get("nbgrader", {}).get("grade_id") == "ex_add":
            cell.source = "def add(a, b):\n    return a + b"  # right; mean_of left unanswered
    nbformat.write(nb, fetched)
    nbgrader("submit", LESSON, *student_flags, cwd=home, env=env)

    nbgrader("collect", LESSON, cwd=course, env=env)
    nbgrader("autograde", LESSON, cwd=course, env=env)
    nbgrader("generate_feedback", LESSON, cwd=course, env=env)
    nbgrader("export", cwd=course, env=env)
    return {"course": course, "student": getpass.getuser()}


def test_course_layout(classroom):
    course = classroom["course"]
    assert (course / "source" / LESSON / f"{LESSON}.ipynb").read_bytes() == (
        FIXTURE_SOLUTIONS / f"{LESSON}.ipynb"
    ).read_bytes()
    config = (course / "nbgrader_config.py").read_text()
    for setting in (
        "c.CourseDirectory.course_id = 'kto-course'",
        f"c.CourseDirectory.root = '{course}'",
        "c.CourseDirectory.db_url = 'sqlite:///",
        f"c.Exchange.root = '{course / 'exchange'}'",
        "c.ExecutePreprocessor.timeout = 60",
        "c.OverwriteCells.add_missing_cells = True",
    ):
        assert setting in config
    readme = (course / "README.md").read_text()
    for command in (
        "generate_assignment",
        "release_assignment",
        "collect",
        "autograde",
        "formgrader",
        "generate_feedback",
        "export",
    ):
        assert f"nbgrader {command}" in readme


def test_collected_and_autograded(classroom):
    course, student = classroom["course"], classroom["student"]
    assert (course / "submitted" / student / LESSON / f"{LESSON}.ipynb").exists()
    graded = nbformat.read(course / "autograded" / student / LESSON / f"{LESSON}.ipynb", 4)
    ids = [c.metadata.get("nbgrader", {}).get("grade_id") for c in graded.cells]
    assert "test_add" in ids and "test_mean_of" in ids


def test_feedback_has_scores_and_no_hidden_tests(classroom):
    course, student = classroom["course"], classroom["student"]
    page = (course / "feedback" / student / LESSON / f"{LESSON}.html").read_text()
    text = html.unescape(re.sub(r"<[^>]+>", "", page))
    assert "Score: 2.0 / 2.0" in text and "Score: 0.0 / 1.0" in text
    assert "HIDDEN TESTS" not in text
    solution = grading.read_notebook(FIXTURE_SOLUTIONS / f"{LESSON}.ipynb")
    hidden = [s for s, what in grading.secret_lines(solution).items() if what == "a hidden test"]
    assert hidden
    for line in hidden:
        assert line not in text and line not in page


def test_export_csv_has_the_scores(classroom):
    course, student = classroom["course"], classroom["student"]
    with open(course / "grades.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["assignment"] == LESSON]
    assert len(rows) == 1
    row = rows[0]
    assert row["student_id"] == student
    # add (2 points) right, mean_of (1 point) unanswered, the written answer (1) not graded yet.
    assert float(row["raw_score"]) == 2.0
    assert float(row["max_score"]) == 4.0


@pytest.mark.skipif(not grading.lessons(SOLUTIONS), reason="no lessons in solutions/ yet")
def test_course_from_the_real_lessons_has_every_lesson(tmp_path):
    course = tmp_path / "course"
    assert cli.main(["course", str(course), "--root", str(ROOT)]) == 0
    for name in grading.lessons(SOLUTIONS):
        assert (course / "source" / name / f"{name}.ipynb").read_bytes() == (
            SOLUTIONS / f"{name}.ipynb"
        ).read_bytes()
        assert f"`{name}`" in (course / "README.md").read_text()
