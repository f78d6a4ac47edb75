"""Grading a learner's notebook: ``grade`` (many students, one lesson), ``submit``, the report.

``grade`` autogrades submissions of one lesson in a temporary nbgrader course (one
generate_assignment, autograde and generate_feedback for all students) and reads each cell's
points and failure message back; the grading tests call it directly. ``submit`` (``kto-course
submit``) grades a COPY of a learner's notebook and writes HTML feedback with the hidden tests
stripped; the learner's file is never written. ``format_report`` is what the learner reads.
"""

from __future__ import annotations

import html
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import nbformat

from kto_course.grading.nbgrader_app import (
    COURSE_ID,
    DEFAULT_TIMEOUT,
    course_config,
    new_course,
    quiet,
    run_app,
)
from kto_course.grading.notebooks import (
    check_markup,
    lessons,
    nbgrader_meta,
    notebook_text,
    read_notebook,
)

WRITTEN_STATUS = "graded by your instructor"
# The one student of a temporary course made by ``submit``.
LEARNER = "learner"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


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
    previous_feedback: str | None = None  # where the report it replaced was kept
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
    solutions_dir: Path,
    timeout: int = DEFAULT_TIMEOUT,
    feedback: bool = True,
) -> dict[str, GradeResult]:
    """Autograde several submissions of one lesson in a temporary nbgrader course.

    ``submissions`` maps a student id to the notebook's bytes (or a NotebookNode). One
    generate_assignment, one autograde and one generate_feedback serve all students.
    """
    from nbgrader.api import Gradebook
    from nbgrader.converters import Autograde, GenerateAssignment, GenerateFeedback

    from kto_course.grading.verdicts import setup_source
    from kto_course.grading.warm_kernels import zygote

    check_markup([lesson], solutions_dir)
    with tempfile.TemporaryDirectory(prefix="kto-grade-") as tmp:
        root = Path(tmp)
        config = course_config(root, timeout=timeout)
        new_course(root, solutions_dir, [lesson])
        source = read_notebook(root / "source" / lesson / f"{lesson}.ipynb")
        # The kernels' imports, once: started first, the zygote imports while nbgrader prepares.
        with zygote(setup_source(source)):
            run_app(GenerateAssignment, config, assignment_id=lesson, student_id=".", force=True)
            for student, notebook in submissions.items():
                dest = root / "submitted" / student / lesson
                dest.mkdir(parents=True)
                if isinstance(notebook, nbformat.NotebookNode):
                    notebook = notebook_text(notebook).encode("utf-8")
                (dest / f"{lesson}.ipynb").write_bytes(notebook)
            run_app(Autograde, config, assignment_id=lesson, force=True, create_student=True)
        if feedback:
            run_app(GenerateFeedback, config, assignment_id=lesson, force=True)

        order = [nbgrader_meta(c).get("grade_id") for c in source.cells]
        with quiet(), Gradebook(config.CourseDirectory.db_url, COURSE_ID) as gb:
            return {
                student: _student_result(gb, root, lesson, student, order, timeout)
                for student in submissions
            }


def _student_result(gb, root: Path, lesson: str, student: str, order: list, timeout: int):
    """One student's GradeResult, from the gradebook and their autograded notebook's outputs."""
    graded = root / "autograded" / student / lesson / f"{lesson}.ipynb"
    outputs = {}
    if graded.exists():
        for cell in read_notebook(graded).cells:
            if nbgrader_meta(cell).get("grade_id") and cell.cell_type == "code":
                outputs[nbgrader_meta(cell)["grade_id"]] = cell.get("outputs", [])
    notebook = gb.find_submission_notebook(lesson, lesson, student)
    cells = []
    for g in sorted(notebook.grades, key=lambda g: order.index(g.name)):
        name = g.name.removeprefix("test_").removeprefix("written_")
        if g.cell_type == "markdown":
            cells.append(CellResult(g.name, name, "written", g.max_score, None, WRITTEN_STATUS))
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
    return GradeResult(
        lesson=lesson,
        score=sum(c.points for c in auto),
        max_score=sum(c.max_points for c in auto),
        cells=cells,
        feedback_html=html_path.read_text("utf-8") if html_path.exists() else "",
    )


def verdicts_now(lesson: str, notebook, *, solutions_dir: Path) -> GradeResult | None:
    """The autograded verdicts alone, in seconds: no kernel, no nbgrader (``submit`` prints
    them first; ``--quick`` stops there). The same verdicts as ``grade``'s, from the same
    isolated worker; None for a lesson without an EXERCISES table."""
    import copy

    from kto_course.grading import verdicts

    if lesson not in verdicts.exercise_tables():
        return None
    source = read_notebook(Path(solutions_dir) / f"{lesson}.ipynb")
    nb = copy.deepcopy(notebook)
    verdicts.sanitize(nb, lesson)
    results = verdicts.grade_notebook(nb, lesson, source, deny=[solutions_dir])
    cells = []
    for cell in source.cells:
        meta = nbgrader_meta(cell)
        if not meta.get("grade"):
            continue
        gid = meta["grade_id"]
        name = gid.removeprefix("test_").removeprefix("written_")
        points = float(meta.get("points", 0))
        if cell.cell_type == "markdown":
            cells.append(CellResult(gid, name, "written", points, None, WRITTEN_STATUS))
        elif gid in results:
            ok, text = results[gid]
            cells.append(CellResult(gid, name, "autograded", points, points if ok else 0.0,
                                    None if ok else text))  # fmt: skip
        else:
            return None  # an exercise the table does not declare: only the full run grades it
    auto = [c for c in cells if c.kind == "autograded"]
    return GradeResult(lesson, sum(c.points for c in auto), sum(c.max_points for c in auto), cells)


def submit(
    notebook_path,
    *,
    solutions_dir: Path,
    feedback_dir: Path | None,
    timeout: int = DEFAULT_TIMEOUT,
    quick: bool = False,
    on_verdicts=None,
) -> GradeResult:
    """Grade a copy of a learner's notebook; write ``feedback_dir/<lesson>.html`` (None: none).

    The verdicts come first (``verdicts_now``, seconds; ``on_verdicts(result)`` is called with
    them, the CLI prints them), then the full nbgrader run executes the notebook for the HTML
    feedback, unless ``quick``. The learner's file is read once and never written. Bad input
    raises FileNotFoundError or ValueError before anything is written.
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
        notebook = nbformat.reads(data.decode("utf-8"), as_version=4)
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(
            f"{path} is not a valid notebook ({type(e).__name__}: {str(e)[:200]}). Open it in "
            "JupyterLab and save it again, or restore it from notebooks/ in git."
        ) from None
    from kto_course.grading.verdicts import foreign_lesson, foreign_message

    other = foreign_lesson(notebook, path.stem)
    if other:
        raise ValueError(foreign_message(path.stem, other))
    first = verdicts_now(path.stem, notebook, solutions_dir=solutions_dir)
    if first is not None and on_verdicts is not None:
        on_verdicts(first)
    if quick and first is not None:
        return first
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
        if out.exists():  # a second submit: the earlier report is kept, one step back
            previous = out.with_name(f"{path.stem}.previous.html")
            out.replace(previous)
            result.previous_feedback = str(previous)
        out.write_text(with_summary(result), encoding="utf-8")
        result.feedback = str(out)
    return result


def with_summary(result: GradeResult) -> str:
    """nbgrader's feedback page with the terminal's report on top (each exercise by name, the
    same autograded total, written answers pending) and its index naming the exercises."""
    page = result.feedback_html
    rows = []
    for c in result.cells:
        if c.kind == "written":
            points, said = f"- / {_points(c.max_points)}", f"written answer, {WRITTEN_STATUS}"
        else:
            points = f"{_points(c.points)} / {_points(c.max_points)}"
            said = c.message or "passed"
        rows.append(f"<tr><td><code>{html.escape(c.exercise)}</code></td><td>{points}</td>"
                    f"<td>{html.escape(said)}</td></tr>")  # fmt: skip
    summary = (
        '<div class="panel panel-default kto-summary"><div class="panel-heading"><h4>'
        f"{html.escape(result.lesson)}: {_points(result.score)} / {_points(result.max_score)} "
        "autograded points</h4></div><div class=\"panel-body\"><table class=\"table\">"
        "<tr><th>exercise</th><th>points</th><th>the check says</th></tr>"
        + "".join(rows) + "</table></div></div>"
    )  # fmt: skip
    # nbgrader's own heading counts the written answers too: say so, next to ours.
    page = re.sub(r"<h4>([^<]*) \(Score: ([^)]*)\)</h4>",
                  r"<h4>\1, every graded cell including written answers (Score: \2)</h4>",
                  page, count=1)  # fmt: skip
    page = re.sub(r'<a href="#test_([\w-]+)">Test cell</a>', r'<a href="#test_\1">\1</a>', page)
    page = re.sub(r'<a href="#written_([\w-]+)">Written response</a>',
                  r'<a href="#written_\1">\1 (written answer)</a>', page)  # fmt: skip
    if '<div class="container">' in page:
        return page.replace('<div class="container">', '<div class="container">' + summary, 1)
    return summary + page


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
    if result.previous_feedback:
        lines.append(f"(it replaced an earlier report, kept as {result.previous_feedback})")
    return "\n".join(lines)
