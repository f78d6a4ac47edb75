"""``kto-course course DIR``: a full nbgrader course directory for a class.

``make_course`` copies every lesson of ``solutions_dir`` to ``DIR/source/<lesson>/``, writes the
``nbgrader_config.py`` of ``nbgrader_app.course_config`` (exchange inside the course) and a
README with the instructor's nbgrader commands. Called by cli.py and test_classroom.py.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from kto_course.grading.nbgrader_app import (
    AUTOGRADE_PREPROCESSORS,
    COURSE_ID,
    DEFAULT_TIMEOUT,
    FEEDBACK_PREPROCESSORS,
    FEEDBACK_TEMPLATE,
    SANITIZE_PREPROCESSORS,
    course_config,
    new_course,
)
from kto_course.grading.notebooks import check_markup, lessons

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
# The feedback page with MathJax loaded offline (jupyter-server-mathjax), not from a CDN.
c.HTMLExporter.template_name = {template[template_name]!r}
c.HTMLExporter.extra_template_basedirs = {template[extra_template_basedirs]!r}
c.HTMLExporter.filters = {template[filters]!r}

# Grade the function, not the kernel (kto_course/grading/verdicts.py): duplicated cells and
# another lesson's notebook are handled before DeduplicateIds; a dead or hung kernel stops
# execution instead of failing the notebook; each test cell's verdict comes from the learner's
# answer cells run in an isolated worker process, never from the kernel (which skips it). The
# kernel itself is locked down at start (Execute.extra_arguments above). See README.md, "What
# the grader defends".
c.Autograde.sanitize_preprocessors = {sanitize!r}
c.Autograde.autograde_preprocessors = {autograde!r}
'''

_README_TEMPLATE = """\
# {course_id}: the nbgrader course of the KTO course

Made by `kto-course course`. Every lesson is an assignment of the same name:
{lesson_list}

`nbgrader_config.py` here holds the settings. The exchange is `{exchange}`: students need
the same `c.Exchange.root` and `c.CourseDirectory.course_id = {course_id!r}` in their own
`~/.jupyter/nbgrader_config.py`.

Run the commands below in a shell, starting with these two lines: the first puts the course
repository's environment (its `nbgrader`, `jupyter` and the kernel the lessons need) first on
PATH, the second enters this directory.

    export PATH="{bin_dir}:$PATH"
    cd {root}
    nbgrader generate_assignment {first}      # source/ -> release/ (student version)
    nbgrader release_assignment {first}       # put it in the exchange
    # students: nbgrader fetch_assignment {first}; nbgrader submit {first}
    nbgrader collect {first}                  # exchange -> submitted/
    nbgrader autograde {first}                # submitted/ -> autograded/, gradebook.db
    nbgrader generate_feedback {first}        # HTML feedback, hidden tests stripped
    nbgrader release_feedback {first}         # students: nbgrader fetch_feedback
    nbgrader export                           # grades.csv

Grade the written answers in the formgrader (nbgrader has no `formgrader` command): run
`jupyter lab` in this directory, after the two lines above, and open Nbgrader -> Formgrader.

Autograde puts back every locked cell a student edited and logs "Attribute 'checksum' for cell
... has changed!" for it: that line means a real edit. (Stock nbgrader also logs it for every
test cell with hidden tests, of every honest submission, nbgrader issue #1961; this course's
`RestoreLockedCells` replaces `OverwriteCells` to log only real edits.)

Edit lessons in the course repository's solutions/, not in source/ here: copy them again with
a fresh `kto-course course` when they change.

## What the grader defends (and what it does not)

A grade says the student wrote the function. `nbgrader autograde` still executes each notebook
(outputs, written answers, your manual grading), but the student's kernel does not run the
autograded test cells: each one's outcome is a verdict computed outside that kernel:

- the student's answer cell for an exercise runs in a fresh worker process (time, memory, CPU
  and file-size limits, a scratch folder, no access to this course folder, the gradebook, the
  course repository or the package's files, no processes, sockets or ctypes) that only gets
  inputs and sends back plain results (numbers, strings, lists, dicts, arrays, tensors; no
  pickle);
- the check (cases, expected values, comparisons, messages) runs in the grading process, which
  never runs student code: patching `checks`, `numpy.allclose` or `core` in the notebook,
  blanking test cells with an IPython input transformer, or reading `expected` from the call
  stack changes nothing;
- each exercise's "answer twins" (the package functions that compute its answer, e.g.
  `core.kto_losses`) are dead in the worker: calling one scores 0 with "you called the course's
  own ...";
- a crash costs only its exercise: an exception, an endless loop (even inside a bare
  `except:`), `os._exit`, killing its own process, `SystemExit`, megabytes of output, a huge
  allocation; a duplicated answer cell grades the last copy; another lesson's notebook under
  this name gets one message naming both lessons; a dead kernel does not stop the class run.
- the student's kernel is fenced at start: it cannot read source/, the gradebook or other
  submissions, nor write or delete outside its own folder, nor start processes (Python
  routes: open, os.remove, shutil, subprocess, sqlite3).

Not defended: copying the package's source or the repository's solutions/ by hand (the
repository ships solutions/ for self-study: that is plagiarism, not a grading bug); native code
that bypasses Python's audit hooks in the kernel (ctypes, `torch.from_file`): for a class on a
shared machine, also run autograde as a user who cannot write the course repository, or in a
container.
"""


def make_course(
    directory,
    *,
    course_id: str = COURSE_ID,
    solutions_dir: Path,
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
    check_markup(lesson_names, solutions_dir)
    config = course_config(root, course_id=course_id, timeout=timeout)
    root.mkdir(parents=True, exist_ok=True)
    new_course(root, solutions_dir, lesson_names)
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
            template=FEEDBACK_TEMPLATE,
            sanitize=list(SANITIZE_PREPROCESSORS),
            autograde=list(AUTOGRADE_PREPROCESSORS),
        ),
        encoding="utf-8",
    )
    (root / "README.md").write_text(
        _README_TEMPLATE.format(
            course_id=course_id,
            root=str(root),
            exchange=str(exchange),
            lesson_list="\n".join(f"- `{name}`" for name in lesson_names),
            first=lesson_names[0],
            bin_dir=Path(sys.executable).parent,
        ),
        encoding="utf-8",
    )
    return root
