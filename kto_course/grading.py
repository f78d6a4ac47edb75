"""Authoring and grading with nbgrader: ``kto-course generate``, ``submit`` and ``course``.

- ``generate``: rebuild every ``notebooks/NN_name.ipynb`` (student version) from
  ``solutions/NN_name.ipynb`` with nbgrader's generate_assignment; ``--check`` writes nothing and
  fails when a student version is stale, missing, orphaned or leaks a solution or hidden test.
- ``submit``: grade a COPY of a learner's notebook in a temporary nbgrader course (autograde,
  then HTML feedback with the hidden tests stripped); the learner's file is never written.
- ``course``: lay out a full nbgrader course directory for a class.

Every function takes the solutions/notebooks folders as parameters (default: the repository's),
so the tests can point them at fixture lessons. nbgrader's apps run in this process; one
``GenerateAssignment`` / ``Autograde`` / ``GenerateFeedback`` call handles every lesson or every
student at once, which avoids nbgrader's start-up cost per notebook.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat
from nbconvert.preprocessors import Preprocessor
from traitlets import Bool
from traitlets.config import Config

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS_DIR = ROOT / "solutions"
NOTEBOOKS_DIR = ROOT / "notebooks"
# Beside notebooks/, never inside it, wherever the learner runs the command from (git-ignored).
FEEDBACK_DIR = ROOT / "feedback"

COURSE_ID = "kto-course"
# Seconds one cell may run when a learner submits; the longest lesson cell takes far less.
DEFAULT_TIMEOUT = 60
# The one student of a temporary course made by ``submit``.
LEARNER = "learner"

LESSON_NAME = re.compile(r"^\d\d_[A-Za-z0-9_]+$")
SOLUTION_MARKERS = ("### BEGIN SOLUTION", "### END SOLUTION")
HIDDEN_MARKERS = ("### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS")
MARKERS = SOLUTION_MARKERS + HIDDEN_MARKERS
WRITTEN_STATUS = "graded by your instructor"
# Lines nbgrader itself writes into student versions: never a leak.
_STUB_LINES = {"raise NotImplementedError()", "YOUR ANSWER HERE", "# YOUR CODE HERE", "pass"}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


# ---------------------------------------------------------------------------------------------
# Lessons and their notebooks
# ---------------------------------------------------------------------------------------------


def lessons(solutions_dir: Path = SOLUTIONS_DIR) -> list[str]:
    """The lesson names (``NN_name``) that have a solution notebook, in course order."""
    return sorted(p.stem for p in Path(solutions_dir).glob("*.ipynb") if LESSON_NAME.match(p.stem))


def resolve_lessons(names, solutions_dir: Path = SOLUTIONS_DIR) -> list[str]:
    """Lesson names from what a person typed: ``01``, ``01_log_ratio`` or a notebook path."""
    known = lessons(solutions_dir)
    if not names:
        return known
    chosen = []
    for name in names:
        stem = Path(str(name)).name.removesuffix(".ipynb")
        matches = [k for k in known if k == stem or k.split("_", 1)[0] == stem]
        if len(matches) != 1:
            listed = ", ".join(known) or "none yet"
            raise ValueError(
                f"no lesson called {name!r} in {solutions_dir}. The lessons: {listed}."
            )
        if matches[0] not in chosen:
            chosen.append(matches[0])
    return chosen


def read_notebook(path: Path) -> nbformat.NotebookNode:
    """A notebook read from disk; a clear ValueError if the file is not a notebook."""
    path = Path(path)
    try:
        return nbformat.read(path, as_version=4)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(
            f"{path} is not a readable Jupyter notebook ({type(e).__name__}: {e}). "
            "Was it saved completely? Open it in JupyterLab and save it again."
        ) from None


def notebook_text(nb: nbformat.NotebookNode) -> str:
    """The exact text ``generate`` writes for a notebook (nbformat's layout, final newline)."""
    text = nbformat.writes(nb)
    return text if text.endswith("\n") else text + "\n"


def _nbgrader_meta(cell) -> dict:
    return dict(cell.get("metadata", {}).get("nbgrader", {}))


def _describe(cell, index: int) -> str:
    meta = _nbgrader_meta(cell)
    if meta.get("grade_id"):
        return f"cell {index} ({meta['grade_id']})"
    first = cell.get("source", "").strip().splitlines()[:1]
    return f"cell {index} ({first[0][:40]!r})" if first else f"cell {index}"


# ---------------------------------------------------------------------------------------------
# Markup: nbgrader's own validator plus the course's rules for markers
# ---------------------------------------------------------------------------------------------


def markup_problems(nb: nbformat.NotebookNode, where: str) -> list[str]:
    """What is wrong with a solution notebook's nbgrader markup; empty when it is valid."""
    from jsonschema import ValidationError
    from nbgrader.nbgraderformat import MetadataValidator
    from nbgrader.nbgraderformat.common import SchemaMismatchError

    validator = MetadataValidator()
    problems = []
    seen_ids: dict[str, int] = {}
    for i, cell in enumerate(nb.cells):
        meta = _nbgrader_meta(cell)
        here = f"{where}, {_describe(cell, i)}"
        if "nbgrader" in cell.get("metadata", {}):
            try:
                validator.validate_cell(cell)
            except (ValidationError, SchemaMismatchError) as e:
                problems.append(f"{here}: invalid nbgrader metadata: {getattr(e, 'message', e)}")
            for key in ("checksum", "cell_type"):
                if key in meta:
                    problems.append(f"{here}: remove '{key}' from the metadata (nbgrader adds it)")
            grade_id = meta.get("grade_id")
            if grade_id:
                if grade_id in seen_ids:
                    problems.append(
                        f"{here}: grade_id {grade_id!r} is also used by cell "
                        f"{seen_ids[grade_id]}; grade ids must be unique"
                    )
                seen_ids.setdefault(grade_id, i)
        source = cell.get("source", "")
        for begin, end, needs, kind in (
            (*SOLUTION_MARKERS, "solution", "an exercise (solution: true)"),
            (*HIDDEN_MARKERS, "grade", "a test cell (grade: true)"),
        ):
            if begin in source or end in source:
                if not meta.get(needs):
                    problems.append(f"{here}: '{begin}' may only appear in {kind}")
                if source.count(begin) != source.count(end):
                    problems.append(f"{here}: '{begin}' and '{end}' do not pair up")
    return problems


def secret_lines(solution_nb: nbformat.NotebookNode) -> dict[str, str]:
    """Lines a student version must not contain, mapped to what they are.

    Solution regions, hidden-test regions and model written answers, minus any line that also
    appears in the public part of the notebook (a code witness may well say ``return r``).
    """
    secret: dict[str, str] = {}
    public: set[str] = set()
    for cell in solution_nb.cells:
        meta = _nbgrader_meta(cell)
        lines = cell.get("source", "").splitlines()
        if cell.cell_type == "markdown" and meta.get("solution"):
            secret.update({s.strip(): "a model written answer" for s in lines if s.strip()})
            continue
        region = None
        for line in lines:
            s = line.strip()
            if any(m in line for m in MARKERS):
                region = (
                    None
                    if "### END" in line
                    else ("solution code" if "SOLUTION" in line else "a hidden test")
                )
            elif region:
                secret.setdefault(s, region)
            elif s:
                public.add(s)
    return {s: what for s, what in secret.items() if s and s not in public | _STUB_LINES}


def leaks(
    student_nb: nbformat.NotebookNode, solution_nb: nbformat.NotebookNode, where: str
) -> list[str]:
    """Markers, solution code, hidden tests or model answers found in a student version."""
    secret = secret_lines(solution_nb)
    found = []
    for i, cell in enumerate(student_nb.cells):
        here = f"{where}, {_describe(cell, i)}"
        source = cell.get("source", "")
        for marker in MARKERS:
            if marker in source:
                found.append(f"{here}: contains the marker '{marker}'")
        for line in source.splitlines():
            what = secret.get(line.strip())
            if what:
                found.append(f"{here}: contains {what}: {line.strip()[:60]!r}")
    return found


# ---------------------------------------------------------------------------------------------
# Running nbgrader in this process, quietly
# ---------------------------------------------------------------------------------------------


class HideHiddenTestTracebacks(Preprocessor):
    """Feedback: in test cells that had hidden tests, an error shows only as "ename: evalue".

    ClearHiddenTests removes the hidden lines from the source, but a traceback quotes the line
    that failed; the check's message already says what went wrong.
    """

    enabled = Bool(True)  # nbconvert skips preprocessors that are not enabled

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type == "code" and HIDDEN_MARKERS[0] in cell.source:
            for output in cell.get("outputs", []):
                if output.get("output_type") == "error":
                    output["traceback"] = [f"{output.get('ename')}: {output.get('evalue')}"]
        return cell, resources


FEEDBACK_PREPROCESSORS = [
    "nbgrader.preprocessors.GetGrades",
    "kto_course.grading.HideHiddenTestTracebacks",
    "nbgrader.preprocessors.ClearHiddenTests",
    "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
]


def course_config(
    root: Path,
    *,
    course_id: str = COURSE_ID,
    timeout: int = DEFAULT_TIMEOUT,
    exchange_root: Path | None = None,
) -> Config:
    """The nbgrader configuration of a course rooted at ``root`` (also written by ``course``)."""
    root = Path(root).resolve()
    c = Config()
    c.CourseDirectory.course_id = course_id
    c.CourseDirectory.root = str(root)
    c.CourseDirectory.db_url = f"sqlite:///{root / 'gradebook.db'}"
    # nbgrader's default exchange (/usr/local/share/nbgrader/exchange) needs root to create.
    c.Exchange.root = str(Path(exchange_root).resolve() if exchange_root else root / "exchange")
    c.ExecutePreprocessor.timeout = timeout
    # Quiet kernels (no "running over TCP without encryption") and no IPython history file.
    c.Execute.extra_arguments = [
        "--HistoryManager.hist_file=:memory:",
        "--IPKernelApp.log_level=ERROR",
    ]
    # A learner who deleted a test cell still gets it graded instead of a silent zero.
    c.OverwriteCells.add_missing_cells = True
    c.GenerateFeedback.preprocessors = list(FEEDBACK_PREPROCESSORS)
    return c


@contextlib.contextmanager
def _quiet():
    """Silence the harmless noise of nbgrader and SQLAlchemy while an app runs."""
    # nbgrader's Gradebook runs the `alembic` command, which sits next to this Python: a
    # learner who calls .venv/bin/kto-course without activating the venv must still find it.
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if bin_dir not in path.split(os.pathsep):
            os.environ["PATH"] = bin_dir + os.pathsep + path
        try:
            yield
        finally:
            os.environ["PATH"] = path


def _logger() -> tuple[logging.Logger, io.StringIO]:
    buffer = io.StringIO()
    log = logging.getLogger("kto_course.nbgrader")
    log.handlers = [logging.StreamHandler(buffer)]
    log.setLevel(logging.WARNING)
    log.propagate = False
    return log, buffer


def _run_app(
    app_class, config: Config, *, assignment_id: str, student_id: str = "*", **attrs
) -> str:
    """Run one nbgrader converter app in this process; its log on success, RuntimeError else."""
    from nbgrader.coursedir import CourseDirectory

    log, buffer = _logger()
    coursedir = CourseDirectory(config=config, log=log)
    coursedir.assignment_id = assignment_id
    coursedir.student_id = student_id
    app = app_class(coursedir=coursedir, config=config, log=log)
    for name, value in attrs.items():
        setattr(app, name, value)
    with _quiet():
        try:
            app.start()
        except Exception as e:
            raise RuntimeError(
                f"nbgrader {app_class.__name__} failed: {e}\n{buffer.getvalue()}"
            ) from e
    return buffer.getvalue()


def _new_course(root: Path, solutions_dir: Path, lesson_names: list[str]) -> None:
    for name in lesson_names:
        dest = root / "source" / name
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(solutions_dir) / f"{name}.ipynb", dest / f"{name}.ipynb")


def _check_markup(lesson_names: list[str], solutions_dir: Path) -> None:
    problems = []
    for name in lesson_names:
        path = Path(solutions_dir) / f"{name}.ipynb"
        problems += markup_problems(read_notebook(path), str(path))
    if problems:
        raise ValueError("bad nbgrader markup in solutions:\n  " + "\n  ".join(problems))


# ---------------------------------------------------------------------------------------------
# kto-course generate
# ---------------------------------------------------------------------------------------------


def student_versions(lesson_names: list[str], solutions_dir: Path = SOLUTIONS_DIR) -> dict:
    """What generate_assignment makes of each lesson: {lesson: notebook text}. Writes nothing."""
    from nbgrader.converters import GenerateAssignment

    _check_markup(lesson_names, solutions_dir)
    if not lesson_names:
        return {}
    with tempfile.TemporaryDirectory(prefix="kto-generate-") as tmp:
        root = Path(tmp)
        _new_course(root, solutions_dir, lesson_names)
        # One app call for every lesson: each lesson is its own assignment.
        _run_app(
            GenerateAssignment,
            course_config(root),
            assignment_id="*",
            student_id=".",
            force=True,
            create_assignment=True,
        )
        texts = {}
        for name in lesson_names:
            nb = nbformat.read(root / "release" / name / f"{name}.ipynb", as_version=4)
            for cell in nb.cells:
                if cell.cell_type == "code":
                    cell.outputs, cell.execution_count = [], None
            texts[name] = notebook_text(nb)
    return texts


def generate(
    names=(), solutions_dir: Path = SOLUTIONS_DIR, notebooks_dir: Path = NOTEBOOKS_DIR
) -> list[Path]:
    """Write the student version of each lesson (all by default); the paths written."""
    lesson_names = resolve_lessons(names, solutions_dir)
    texts = student_versions(lesson_names, solutions_dir)
    notebooks_dir = Path(notebooks_dir)
    notebooks_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in texts.items():
        path = notebooks_dir / f"{name}.ipynb"
        path.write_bytes(text.encode("utf-8"))
        written.append(path)
    return written


def orphans(solutions_dir: Path = SOLUTIONS_DIR, notebooks_dir: Path = NOTEBOOKS_DIR) -> list[Path]:
    """Student notebooks whose solution no longer exists."""
    known = set(lessons(solutions_dir))
    return sorted(
        p
        for p in Path(notebooks_dir).glob("*.ipynb")
        if LESSON_NAME.match(p.stem) and p.stem not in known
    )


def check(
    names=(), solutions_dir: Path = SOLUTIONS_DIR, notebooks_dir: Path = NOTEBOOKS_DIR
) -> list[str]:
    """Problems of the committed student versions (empty: all in sync, nothing leaks)."""
    solutions_dir, notebooks_dir = Path(solutions_dir), Path(notebooks_dir)
    lesson_names = resolve_lessons(names, solutions_dir)
    problems = []
    valid = []
    for name in lesson_names:
        path = solutions_dir / f"{name}.ipynb"
        found = markup_problems(read_notebook(path), str(path))
        problems += found
        if not found:
            valid.append(name)
    expected = student_versions(valid, solutions_dir)
    for name in lesson_names:
        student = notebooks_dir / f"{name}.ipynb"
        if not student.exists():
            problems.append(f"{student} is missing: run `kto-course generate {name}`")
            continue
        committed = student.read_bytes()
        try:
            student_nb = nbformat.reads(committed.decode("utf-8"), as_version=4)
        except (ValueError, UnicodeDecodeError) as e:
            problems.append(f"{student} is not a readable notebook ({e})")
            continue
        problems += leaks(student_nb, read_notebook(solutions_dir / f"{name}.ipynb"), str(student))
        if name in expected and committed != expected[name].encode("utf-8"):
            problems.append(
                f"{student} differs from what solutions/{name}.ipynb generates: "
                f"run `kto-course generate {name}`"
            )
    if not names:
        for path in orphans(solutions_dir, notebooks_dir):
            problems.append(f"{path} has no solution notebook in {solutions_dir}: delete it")
    return problems


def run_generate(args: argparse.Namespace) -> int:
    solutions_dir = Path(getattr(args, "solutions_dir", None) or SOLUTIONS_DIR)
    notebooks_dir = Path(getattr(args, "notebooks_dir", None) or NOTEBOOKS_DIR)
    if args.check:
        problems = check(args.lessons, solutions_dir, notebooks_dir)
        for problem in problems:
            print(f"kto-course generate --check: {problem}")
        if problems:
            print(
                f"{len(problems)} problem(s). Edit solutions/ only, then run `kto-course generate`."
            )
            return 1
        print(
            f"student notebooks are up to date ({len(resolve_lessons(args.lessons, solutions_dir))}"
            " lessons checked, no solution or hidden test leaks)."
        )
        return 0
    for path in generate(args.lessons, solutions_dir, notebooks_dir):
        print(f"wrote {path}")
    for path in orphans(solutions_dir, notebooks_dir) if not args.lessons else []:
        print(f"warning: {path} has no solution notebook; delete it if the lesson is gone.")
    return 0


# ---------------------------------------------------------------------------------------------
# Grading: many students of one lesson in one autograde call
# ---------------------------------------------------------------------------------------------


@dataclass
class CellResult:
    """One graded cell: an exercise's test cell or a written answer."""

    grade_id: str
    exercise: str
    kind: str  # "autograded" or "written"
    max_points: float
    points: float | None  # None for a written answer (graded by the instructor)
    message: str | None = None  # why an autograded cell lost points


@dataclass
class GradeResult:
    """What a submission scored; ``feedback_html`` is the HTML feedback page."""

    lesson: str
    score: float
    max_score: float
    cells: list[CellResult] = field(default_factory=list)
    feedback: str | None = None  # where the HTML feedback was written
    feedback_html: str = field(default="", repr=False)

    def to_dict(self) -> dict:
        data = asdict(self)
        del data["feedback_html"]
        return data


def _failure_message(outputs, timeout: int) -> str | None:
    errors = [o for o in outputs if o.get("output_type") == "error"]
    if not errors:
        return None
    error = errors[-1]
    ename, evalue = error.get("ename", "Error"), str(error.get("evalue", "")).strip()
    if ename in ("CellTimeoutError", "DeadKernelError") or any(
        o.get("ename") == "CellTimeoutError" for o in errors
    ):
        return (
            f"the cell ran for more than {timeout} s and was stopped: is there a loop that "
            "never ends?"
        )
    if ename == "CheckFailed" and evalue:
        return evalue
    if evalue:
        return f"{ename}: {evalue}"
    lines = [_ANSI.sub("", t).strip() for t in error.get("traceback", [])]
    return next((t for t in reversed(lines) if t), ename)


def grade(
    lesson: str,
    submissions: dict,
    *,
    solutions_dir: Path = SOLUTIONS_DIR,
    timeout: int = DEFAULT_TIMEOUT,
    feedback: bool = True,
) -> dict[str, GradeResult]:
    """Autograde several submissions of one lesson in a temporary nbgrader course.

    ``submissions`` maps a student id to the notebook's bytes (or a NotebookNode). One
    generate_assignment, one autograde and one generate_feedback serve all students.
    """
    from nbgrader.api import Gradebook
    from nbgrader.converters import Autograde, GenerateAssignment, GenerateFeedback

    _check_markup([lesson], solutions_dir)
    with tempfile.TemporaryDirectory(prefix="kto-grade-") as tmp:
        root = Path(tmp)
        config = course_config(root, timeout=timeout)
        _new_course(root, solutions_dir, [lesson])
        _run_app(GenerateAssignment, config, assignment_id=lesson, student_id=".", force=True)
        for student, notebook in submissions.items():
            dest = root / "submitted" / student / lesson
            dest.mkdir(parents=True)
            if isinstance(notebook, nbformat.NotebookNode):
                notebook = notebook_text(notebook).encode("utf-8")
            (dest / f"{lesson}.ipynb").write_bytes(notebook)
        _run_app(Autograde, config, assignment_id=lesson, force=True, create_student=True)
        if feedback:
            _run_app(GenerateFeedback, config, assignment_id=lesson, force=True)

        source = read_notebook(root / "source" / lesson / f"{lesson}.ipynb")
        order = [_nbgrader_meta(c).get("grade_id") for c in source.cells]
        results = {}
        with _quiet(), Gradebook(config.CourseDirectory.db_url, COURSE_ID) as gb:
            for student in submissions:
                graded = root / "autograded" / student / lesson / f"{lesson}.ipynb"
                outputs = {}
                if graded.exists():
                    for cell in read_notebook(graded).cells:
                        if _nbgrader_meta(cell).get("grade_id") and cell.cell_type == "code":
                            outputs[_nbgrader_meta(cell)["grade_id"]] = cell.get("outputs", [])
                notebook = gb.find_submission_notebook(lesson, lesson, student)
                cells = []
                for g in sorted(notebook.grades, key=lambda g: order.index(g.name)):
                    name = g.name.removeprefix("test_").removeprefix("written_")
                    if g.cell_type == "markdown":
                        cells.append(
                            CellResult(g.name, name, "written", g.max_score, None, WRITTEN_STATUS)
                        )
                        continue
                    points = float(g.score)
                    message = _failure_message(outputs.get(g.name, []), timeout)
                    if points < g.max_score and message is None:
                        message = "this test cell did not pass."
                    cells.append(
                        CellResult(
                            g.name,
                            name,
                            "autograded",
                            g.max_score,
                            points,
                            message if points < g.max_score else None,
                        )
                    )
                auto = [c for c in cells if c.kind == "autograded"]
                html_path = root / "feedback" / student / lesson / f"{lesson}.html"
                results[student] = GradeResult(
                    lesson=lesson,
                    score=sum(c.points for c in auto),
                    max_score=sum(c.max_points for c in auto),
                    cells=cells,
                    feedback_html=html_path.read_text("utf-8") if html_path.exists() else "",
                )
    return results


# ---------------------------------------------------------------------------------------------
# kto-course submit
# ---------------------------------------------------------------------------------------------


def submit(
    notebook_path,
    *,
    solutions_dir: Path = SOLUTIONS_DIR,
    feedback_dir: Path | None = FEEDBACK_DIR,
    timeout: int = DEFAULT_TIMEOUT,
) -> GradeResult:
    """Grade a copy of a learner's notebook; write ``feedback_dir/<lesson>.html``.

    The learner's file is read once and never written. Bad input raises FileNotFoundError or
    ValueError before anything is written.
    """
    path = Path(notebook_path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: give the path of your notebook, "
            "e.g. notebooks/01_log_ratio.ipynb."
        )
    if not path.is_file() or path.suffix != ".ipynb":
        raise ValueError(
            f"{path} is not a notebook file (.ipynb): give the path of your "
            "notebook, e.g. notebooks/01_log_ratio.ipynb."
        )
    known = lessons(solutions_dir)
    if path.stem not in known:
        raise ValueError(
            f"{path.name} is not a course notebook: its name must be one of the lessons "
            f"({', '.join(known) or 'none found'}). Submit the notebook under its original name."
        )
    data = path.read_bytes()
    try:
        nbformat.reads(data.decode("utf-8"), as_version=4)
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(
            f"{path} is not a valid notebook ({type(e).__name__}: {str(e)[:200]}). Open it in "
            "JupyterLab and save it again, or restore it from notebooks/ in git."
        ) from None
    result = grade(
        path.stem,
        {LEARNER: data},
        solutions_dir=solutions_dir,
        timeout=timeout,
        feedback=feedback_dir is not None,
    )[LEARNER]
    if feedback_dir is not None:
        out = Path(feedback_dir) / f"{path.stem}.html"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(result.feedback_html, encoding="utf-8")
        result.feedback = str(out)
    return result


def _points(x: float) -> str:
    return f"{x:g}"


def format_report(result: GradeResult) -> str:
    """The report a learner reads after ``kto-course submit``."""
    width = max([len(c.exercise) for c in result.cells] + [8])
    lines = [
        f"{result.lesson}: {_points(result.score)} / {_points(result.max_score)} autograded points",
        "",
    ]
    for c in result.cells:
        if c.kind == "written":
            lines.append(
                f"  ✎ {c.exercise:<{width}}  - / {_points(c.max_points)}  "
                f"written answer, {WRITTEN_STATUS}"
            )
            continue
        mark = "✓" if c.points >= c.max_points else "✗"
        lines.append(
            f"  {mark} {c.exercise:<{width}}  {_points(c.points)} / {_points(c.max_points)}"
        )
        if c.message:
            lines.append(f"      {c.message}")
    if result.feedback:
        lines += ["", f"Feedback: {result.feedback}"]
    return "\n".join(lines)


def run_submit(args: argparse.Namespace) -> int:
    result = submit(
        args.notebook,
        solutions_dir=Path(getattr(args, "solutions_dir", None) or SOLUTIONS_DIR),
        feedback_dir=Path(args.feedback_dir) if args.feedback_dir else FEEDBACK_DIR,
        timeout=args.timeout or DEFAULT_TIMEOUT,
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    else:
        print(format_report(result))
    return 0


# ---------------------------------------------------------------------------------------------
# kto-course course
# ---------------------------------------------------------------------------------------------

_CONFIG_TEMPLATE = '''\
"""nbgrader configuration of the KTO course (written by `kto-course course`)."""

c = get_config()  # noqa: F821 (nbgrader provides get_config)

c.CourseDirectory.course_id = {course_id!r}
c.CourseDirectory.root = {root!r}
c.CourseDirectory.db_url = {db_url!r}

# The exchange that release_assignment, fetch_assignment, submit and collect share. It lives
# inside this course directory; for a real class on a shared machine, point it (here and in
# each student's ~/.jupyter/nbgrader_config.py) at a folder every user can write.
c.Exchange.root = {exchange!r}

# Seconds one cell may run during autograde: an endless loop is stopped, the rest is graded.
c.ExecutePreprocessor.timeout = {timeout!r}
c.Execute.extra_arguments = {extra!r}

# A student who deleted a test cell gets it back and graded (not a silent zero).
c.OverwriteCells.add_missing_cells = True

# Feedback without hidden tests: neither their source nor their tracebacks.
c.GenerateFeedback.preprocessors = {feedback!r}
'''

_README_TEMPLATE = """\
# {course_id}: the nbgrader course of the KTO course

Made by `kto-course course`. Every lesson is an assignment of the same name:
{lesson_list}

Run these from this directory (`cd {root}`); `nbgrader_config.py` here holds the settings.
The exchange is `{exchange}`: students need the same `c.Exchange.root` and
`c.CourseDirectory.course_id = {course_id!r}` in their own `~/.jupyter/nbgrader_config.py`.

    nbgrader generate_assignment 01_log_ratio      # source/ -> release/ (student version)
    nbgrader release_assignment 01_log_ratio       # put it in the exchange
    # students: nbgrader fetch_assignment 01_log_ratio; nbgrader submit 01_log_ratio
    nbgrader collect 01_log_ratio                  # exchange -> submitted/
    nbgrader autograde 01_log_ratio                # submitted/ -> autograded/, gradebook.db
    nbgrader formgrader                            # grade the written answers (or JupyterLab's
                                                   # Formgrader tab)
    nbgrader generate_feedback 01_log_ratio        # HTML feedback, hidden tests stripped
    nbgrader release_feedback 01_log_ratio         # students: nbgrader fetch_feedback
    nbgrader export                                # grades.csv

Edit lessons in the course repository's solutions/, not in source/ here: copy them again with
a fresh `kto-course course` when they change.
"""


def make_course(
    directory,
    *,
    course_id: str = COURSE_ID,
    solutions_dir: Path = SOLUTIONS_DIR,
    timeout: int = DEFAULT_TIMEOUT,
) -> Path:
    """Lay out a full nbgrader course in ``directory`` (which must be absent or empty)."""
    root = Path(directory).resolve()
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ValueError(
            f"{directory} already exists and is not empty: give a new directory "
            "(nothing was changed)."
        )
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", course_id):
        raise ValueError(f"course id {course_id!r}: use letters, digits, '-', '_' or '.' only.")
    lesson_names = lessons(solutions_dir)
    if not lesson_names:
        raise ValueError(f"no lessons found in {solutions_dir}.")
    _check_markup(lesson_names, solutions_dir)
    config = course_config(root, course_id=course_id, timeout=timeout)
    root.mkdir(parents=True, exist_ok=True)
    _new_course(root, solutions_dir, lesson_names)
    exchange = Path(config.Exchange.root)
    exchange.mkdir()
    exchange.chmod(0o777)  # students write their submissions into the exchange
    (root / "nbgrader_config.py").write_text(
        _CONFIG_TEMPLATE.format(
            course_id=course_id,
            root=str(root),
            db_url=config.CourseDirectory.db_url,
            exchange=str(exchange),
            timeout=timeout,
            extra=list(config.Execute.extra_arguments),
            feedback=list(FEEDBACK_PREPROCESSORS),
        ),
        encoding="utf-8",
    )
    (root / "README.md").write_text(
        _README_TEMPLATE.format(
            course_id=course_id,
            root=str(root),
            exchange=str(exchange),
            lesson_list="\n".join(f"- `{name}`" for name in lesson_names),
        ),
        encoding="utf-8",
    )
    return root


def run_course(args: argparse.Namespace) -> int:
    root = make_course(
        args.directory,
        course_id=args.course_id,
        solutions_dir=Path(getattr(args, "solutions_dir", None) or SOLUTIONS_DIR),
    )
    print(f"nbgrader course written to {root}; see {root / 'README.md'} for the commands.")
    return 0
