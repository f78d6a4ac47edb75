"""nbgrader's apps run inside this process, quietly, with the course's configuration.

``generate``, ``grade`` and ``course`` (this package) build a course folder with ``new_course``,
configure it with ``course_config`` and call ``run_app`` once per nbgrader step for every lesson
or every student at once, which avoids nbgrader's start-up cost per notebook. The feedback
preprocessors named here are also written into a class course's ``nbgrader_config.py``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import shutil
import sys
import warnings
from pathlib import Path

import nbgrader.api
from nbconvert.preprocessors import Preprocessor
from nbformat import NotebookNode
from nbgrader import utils
from nbgrader.api import MissingEntry
from nbgrader.preprocessors import ClearHiddenTests, OverwriteCells
from traitlets import Bool
from traitlets.config import Config

from kto_course.grading.lockdown import KERNEL_EXEC_LINE
from kto_course.grading.notebooks import HIDDEN_MARKERS

COURSE_ID = "kto-course"


@functools.cache
def alembic_head() -> str:
    """The gradebook schema's revision, which nbgrader writes into every new gradebook.

    nbgrader asks a subprocess for it (``alembic heads``: 1.8 s here, for each new gradebook,
    and a graded lesson makes two); this reads the same revision from nbgrader's own migration
    scripts in this process (0.13 s once).
    """
    from alembic.script import ScriptDirectory
    from nbgrader.dbutil import ALEMBIC_DIR

    return ScriptDirectory(ALEMBIC_DIR).get_current_head()


# Gradebook() looks the function up in nbgrader.api at each call: every gradebook made in a
# process that imported this module (grade, generate, submit, kto-course course) gets the
# in-process answer.
nbgrader.api.get_alembic_version = alembic_head

# Seconds one cell may run when a learner submits; the longest lesson cell takes far less.
DEFAULT_TIMEOUT = 60


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


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = "(an interactive demo: open the notebook in JupyterLab to use it)"


class StaticWidgets(Preprocessor):
    """Feedback: a demo's widget output becomes one line of text.

    A static page has no kernel to drive a widget, and nbconvert renders a widget view with a
    script that needs jQuery, which nbgrader's feedback page does not load: the page raised
    "$ is not defined" once per demo and showed nothing.
    """

    enabled = Bool(True)

    def preprocess_cell(self, cell, resources, index):
        for output in cell.get("outputs", []):
            if WIDGET_VIEW in output.get("data", {}):
                output["data"] = {"text/plain": WIDGET_NOTE}
        return cell, resources


class RestoreLockedCells(OverwriteCells):
    """nbgrader's OverwriteCells without its false alarm on honest submissions (nbgrader issue
    #1961).

    A test cell with hidden tests reaches autograde as the student version has it, without
    them, so stock OverwriteCells reports "Attribute 'checksum' for cell ... has changed!" for
    every such cell of every submission, which reads as cheating. Here a locked cell whose
    visible part is exactly the student version's gets its hidden tests back silently; a cell
    the student did edit is restored and reported, as before.
    """

    def preprocess_cell(self, cell, resources, cell_index):
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id is not None and utils.is_locked(cell):
            try:
                source = self.gradebook.find_source_cell(grade_id, self.notebook_id,
                                                         self.assignment_id)  # fmt: skip
            except MissingEntry:
                source = None  # OverwriteCells reports it
            if source is not None and source.locked and _same(cell.source, _released(source)):
                cell.source = source.source
        return super().preprocess_cell(cell, resources, cell_index)


def _released(source_cell) -> str:
    """A source cell as the student version shows it: hidden tests removed."""
    cell = NotebookNode(cell_type=source_cell.cell_type, source=source_cell.source, metadata={})
    ClearHiddenTests()._remove_hidden_test_region(cell)
    return cell.source


def _same(a: str, b: str) -> bool:
    lines = [[line.rstrip() for line in text.strip().splitlines()] for text in (a, b)]
    return lines[0] == lines[1]


FEEDBACK_PREPROCESSORS = [
    "nbgrader.preprocessors.GetGrades",
    "kto_course.grading.nbgrader_app.HideHiddenTestTracebacks",
    "kto_course.grading.nbgrader_app.StaticWidgets",
    "nbgrader.preprocessors.ClearHiddenTests",
    "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
]


# The feedback page: nbgrader's, with MathJax loaded offline (templates/kto_feedback/).
FEEDBACK_TEMPLATE = Config(
    template_name="kto_feedback",
    extra_template_basedirs=[
        str(Path(__file__).parent / "templates"),
        str(Path(utils.__file__).parent / "server_extensions" / "formgrader" / "templates"),
    ],
    filters={"kto_mathjax_file": "kto_course.grading.nbgrader_app.mathjax_file"},
)


def mathjax_file(_: str = "") -> str:
    """file:// URL of jupyter-server-mathjax's MathJax.js (a Jinja filter of the feedback page);
    "" without the package, and the page then shows raw TeX."""
    try:
        import jupyter_server_mathjax
    except ImportError:
        return ""
    return (Path(jupyter_server_mathjax.__file__).parent / "static" / "MathJax.js").as_uri()


# nbgrader's autograde pipeline with the course's three steps (kto_course/grading/verdicts.py):
# the sanitize stage repairs duplicated cells and spots another lesson's notebook BEFORE
# DeduplicateIds; SafeExecute survives a dead kernel; IsolatedVerdicts writes each test cell's
# verdict, computed against the learner's function in an isolated worker, before SaveAutoGrades.
SANITIZE_PREPROCESSORS = [
    "nbgrader.preprocessors.ClearOutput",
    "kto_course.grading.verdicts.SanitizeSubmission",
    "nbgrader.preprocessors.DeduplicateIds",
    "nbgrader.preprocessors.OverwriteKernelspec",
    "kto_course.grading.nbgrader_app.RestoreLockedCells",  # OverwriteCells, without #1961
    "nbgrader.preprocessors.CheckCellMetadata",
]
AUTOGRADE_PREPROCESSORS = [
    "kto_course.grading.verdicts.SafeExecute",
    "kto_course.grading.verdicts.IsolatedVerdicts",
    "nbgrader.preprocessors.IgnorePattern",
    "nbconvert.preprocessors.ClearMetadataPreprocessor",
    "nbgrader.preprocessors.LimitOutput",
    "nbgrader.preprocessors.SaveAutoGrades",
    "nbgrader.preprocessors.AssignLatePenalties",
    "nbgrader.preprocessors.CheckCellMetadata",
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
    # Every output has arrived when the last cell's reply has: the kernel is killed instead of
    # asked to shut down (which waits for its teardown, ~0.7 s per submission here).
    c.ExecutePreprocessor.shutdown_kernel = "immediate"
    # Quiet kernels (no "running over TCP without encryption") and no IPython history file.
    # ... and locked down before any learner code runs (kto_course/grading/lockdown.py).
    c.Execute.extra_arguments = [
        "--HistoryManager.hist_file=:memory:",
        "--IPKernelApp.log_level=ERROR",
        f"--IPKernelApp.exec_lines={KERNEL_EXEC_LINE}",
    ]
    # A learner who deleted a test cell still gets it graded instead of a silent zero.
    c.OverwriteCells.add_missing_cells = True  # RestoreLockedCells inherits it
    c.GenerateFeedback.preprocessors = list(FEEDBACK_PREPROCESSORS)
    c.HTMLExporter.merge(FEEDBACK_TEMPLATE)
    c.Autograde.sanitize_preprocessors = list(SANITIZE_PREPROCESSORS)
    c.Autograde.autograde_preprocessors = list(AUTOGRADE_PREPROCESSORS)
    return c


@contextlib.contextmanager
def quiet():
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


def run_app(
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
    with quiet():
        try:
            app.start()
        except Exception as e:
            raise RuntimeError(
                f"nbgrader {app_class.__name__} failed: {e}\n{buffer.getvalue()}"
            ) from e
    return buffer.getvalue()


def new_course(root: Path, solutions_dir: Path, lesson_names: list[str]) -> None:
    """Copy each lesson's solution to ``root/source/<lesson>/``: one assignment per lesson."""
    for name in lesson_names:
        dest = root / "source" / name
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(solutions_dir) / f"{name}.ipynb", dest / f"{name}.ipynb")
