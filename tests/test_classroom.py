"""The classroom flow end to end, with nbgrader's own commands in a course from `kto-course course`.

Instructor: generate_assignment, release_assignment; student: fetch_assignment, answer, submit;
instructor: collect, autograde, generate_feedback (no hidden test in the HTML), export (CSV).
The instructor's commands are the course README's, run exactly as written in a fresh bash.
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


def readme_commands(readme: str) -> tuple[list[str], list[str]]:
    """The instructor README's command block: its two setup lines, then each command."""
    block = [line[4:] for line in readme.splitlines() if line.startswith("    ")]
    block = [line.split("  #")[0].rstrip() for line in block if line.strip()]
    setup = block[:2]
    assert setup[0].startswith("export PATH=") and setup[1].startswith("cd "), setup
    return setup, [line for line in block[2:] if not line.startswith("#")]


def run_as_written(setup: list[str], command: str, env: dict) -> str:
    """A README command exactly as written, in a fresh bash after the README's setup lines."""
    script = "\n".join([*setup, command])
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, f"{command!r} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def classroom(tmp_path_factory):
    """Run the whole flow once, the instructor's side with the README's commands exactly as
    written; the paths and outputs the tests look at."""
    base = tmp_path_factory.mktemp("classroom")
    course = base / "course"
    assert cli.main(["course", str(course), "--solutions-dir", str(FIXTURE_SOLUTIONS)]) == 0
    setup, commands = readme_commands((course / "README.md").read_text())
    # A person's shell: no venv on PATH (the README's first line adds it), no personal config.
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if Path(p) != Path(sys.executable).parent)  # fmt: skip
    env["JUPYTER_CONFIG_DIR"] = str(base / "jupyter-config")
    exchange = course / "exchange"
    outputs = {}
    for command in commands:
        if command.startswith("nbgrader collect"):
            _student_submits(base, exchange, env)
        outputs[command.split()[1]] = run_as_written(setup, command, env)
    # The formgrader the README points to: nbgrader's server extension, on in that environment.
    extensions = run_as_written(setup, "jupyter server extension list", env)
    return {"course": course, "student": getpass.getuser(), "outputs": outputs,
            "extensions": extensions}  # fmt: skip


def _student_submits(base: Path, exchange: Path, env: dict) -> None:
    """The student works in their own home, with the course id and exchange in their flags."""
    env = {**env, "PATH": str(Path(sys.executable).parent) + os.pathsep + env["PATH"]}
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


def test_readme_commands_ran_as_written(classroom):
    outputs = classroom["outputs"]
    assert list(outputs) == ["generate_assignment", "release_assignment", "collect", "autograde",
                             "generate_feedback", "release_feedback", "export"]  # fmt: skip
    assert "formgrader" not in " ".join(outputs)  # not an nbgrader command
    formgrader = r"nbgrader\.server_extensions\.formgrader\s+\S*enabled"
    assert re.search(formgrader, classroom["extensions"]), classroom["extensions"]
    # An honest submission: nbgrader issue #1961's false "checksum changed" alarm is gone.
    assert "checksum" not in outputs["autograde"], outputs["autograde"]


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
    for command in ("generate_assignment", "release_assignment", "collect", "autograde",
                    "generate_feedback", "export"):  # fmt: skip
        assert f"nbgrader {command}" in readme
    assert "Nbgrader -> Formgrader" in readme and "nbgrader formgrader" not in readme


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
    # MathJax offline (the course's template, through the written nbgrader_config.py).
    assert "cdnjs" not in page and grading.nbgrader_app.mathjax_file() in page


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


def test_restore_locked_cells_tells_a_released_cell_from_an_edited_one():
    from types import SimpleNamespace

    from kto_course.grading.nbgrader_app import _released, _same

    source = SimpleNamespace(
        cell_type="code",
        source="checks.check_add(add)\n### BEGIN HIDDEN TESTS\n"
        "checks.check_add(add, hidden=True)\n### END HIDDEN TESTS",
    )
    released = _released(source)
    assert released.strip() == "checks.check_add(add)"
    assert _same("checks.check_add(add)  \n", released)  # what the student version shows
    assert not _same("pass", released)  # an edit: OverwriteCells restores and reports it
    assert not _same(source.source, released)
