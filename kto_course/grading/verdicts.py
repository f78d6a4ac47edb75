"""Grade the function, not the kernel: each graded test cell's verdict from a trusted step.

The notebook still executes (visible outputs, written answers), but a test cell's outcome is
computed here, and the kernel does not run that cell: the exercise's check
(``checks.EXERCISES``) runs in THIS process against a ``RemoteFunction`` built from the
learner's answer cell(s), which run in a worker process (``sandbox``, ``worker``).
``IsolatedVerdicts`` then writes the verdict as the cell's output: "✓ ..." on a pass, one
``CheckFailed`` error with the check's message on a failure (never the hidden tests' source or
values).

Three nbgrader preprocessors, wired by ``nbgrader_app.course_config`` (and so by ``kto-course
course``'s nbgrader_config.py):

- ``SanitizeSubmission`` (sanitize stage, before ``DeduplicateIds``): duplicated cells (keep the
  LAST copy), invalid nbgrader metadata, a notebook of another lesson;
- ``SafeExecute`` (replaces ``Execute``): the verdicts' test cells are not run; a dead or hung
  kernel stops execution with a note in that cell instead of failing the notebook;
- ``IsolatedVerdicts`` (after ``SafeExecute``, before ``SaveAutoGrades``): the verdicts.
"""

from __future__ import annotations

import ast
import atexit
import contextlib
import io
import logging
import os
import re
import sys
from pathlib import Path

from nbformat import NotebookNode
from nbgrader.preprocessors import Execute, NbGraderPreprocessor

from kto_course.checks.base import CheckFailed
from kto_course.grading.notebooks import HIDDEN_MARKERS, nbgrader_meta
from kto_course.grading.sandbox import STAND_INS, Sandbox

KEY = "kto_course"  # notebook metadata key for what the sanitize stage found

# ---------------------------------------------------------------------------------------------
# Which exercise, which cells
# ---------------------------------------------------------------------------------------------


def exercise_tables() -> dict:
    from kto_course.checks import EXERCISES

    return EXERCISES


def lesson_ids(lesson: str) -> set[str]:
    table = exercise_tables().get(lesson, {})
    return {f"{kind}_{name}" for name in table for kind in ("ex", "test")}


def foreign_lesson(nb, lesson: str) -> str | None:
    """The other lesson a notebook belongs to when it was saved under ``lesson``'s name."""
    ids = {nbgrader_meta(c).get("grade_id") for c in nb.cells} - {None}
    if lesson not in exercise_tables() or ids & lesson_ids(lesson):
        return None
    for other in exercise_tables():
        if other != lesson and ids & lesson_ids(other):
            return other
    return None


def foreign_message(lesson: str, other: str) -> str:
    return (
        f"this notebook is lesson {other} saved under the name {lesson}.ipynb: nothing in it "
        f"was graded. Submit it as {other}.ipynb, and submit your {lesson} notebook here."
    )


def setup_source(source_nb) -> str:
    """The lesson's first code cell in the SOURCE (instructor's) notebook: its imports."""
    return next((c.source for c in source_nb.cells if c.cell_type == "code"), "")


def warm_imports(setup: str) -> None:
    """Import here the modules the lesson's setup imports (torch, kto_course.lm ...): the
    checks need the same ones, and importing them while the just-launched worker imports its
    own makes the two overlap (on two cores) instead of adding up. The setup is the SOURCE
    notebook's, the course's code; what graded code never needs (``STAND_INS``) is skipped."""
    import importlib

    from kto_course.grading.worker import setup_statements

    try:
        imports, _ = setup_statements(setup)
    except SyntaxError:
        return
    for node in imports:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif node.module and not node.level:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name in sys.modules or name.startswith(STAND_INS):
                continue
            try:  # a name, not a module (from kto_course.lm import encode), raises too
                importlib.import_module(name)
            except Exception:  # noqa: BLE001: only a head start; the checks import their own
                continue


def _defines(source: str, name: str) -> bool:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name
               for n in tree.body)  # fmt: skip


def answer_sources(nb, name: str):
    """[(label, source, defs_only)] for the worker: the definitions of the answer cells before
    this exercise's (an answer may call the learner's earlier function), then its own cell.

    The answer cell is the one with grade_id ``ex_<name>``; if its nbgrader metadata was lost,
    the last unlocked code cell that defines ``name``. None when there is none.
    """
    code = [c for c in nb.cells if c.cell_type == "code"]
    answer = [c for c in code if nbgrader_meta(c).get("grade_id") == f"ex_{name}"]
    if not answer:
        answer = [c for c in code if not nbgrader_meta(c).get("locked")
                  and _defines(c.source, name)][-1:]  # fmt: skip
    if not answer:
        return None
    first = code.index(answer[0])
    earlier = [c for c in code[:first] if nbgrader_meta(c).get("solution")]
    return [("<an earlier answer cell>", c.source, True) for c in earlier] + [
        (f"<the answer cell of {name}>", c.source, False) for c in answer
    ]


# ---------------------------------------------------------------------------------------------
# Verdicts
# ---------------------------------------------------------------------------------------------

_POOL: dict[str, Sandbox] = {}
# A hidden case described in a message ("(a batch of 9 with 2 desirable, z0 = 1.2, ...)"):
# dropped, so that a hidden failure never shows a hidden case's values.
_HIDDEN_CASE = re.compile(r"\s*\(a batch of [^)]*\)")


def sandbox_for(setup: str, deny=()) -> Sandbox:
    """A worker for this setup, launched now (its imports overlap with the kernel's run) and
    kept for the next notebook of the same lesson: learner code never runs in it, only in the
    children it forks."""
    box = _POOL.get(setup)
    if box is None or (box.proc is not None and not box.alive()):
        box = _POOL[setup] = Sandbox(setup)
        box.launch()
    box.deny = sorted(set(box.deny) | {os.path.realpath(p) for p in deny})
    return box


@atexit.register
def close_workers() -> None:
    for box in _POOL.values():
        box.close()
    _POOL.clear()


def verdict(entry: dict, name: str, sources, box: Sandbox, hidden: bool) -> tuple[bool, str]:
    """(passed, what the learner reads) for one exercise."""
    if sources is None:
        return False, (
            f"the answer cell of {name} is missing (deleted, or its nbgrader metadata removed): "
            f"put a cell defining {name} back where the exercise asks for it."
        )
    fn = box.function(name, sources, entry.get("twins", ()), entry.get("hint", ""))
    printed = io.StringIO()
    in_hidden = False
    fn.prepare()  # the worker's imports and the answer cell: not inside the checks' time limit
    try:
        with contextlib.redirect_stdout(printed):
            entry["check"](fn)
            visible = printed.getvalue().strip()
            if hidden:
                in_hidden = True
                entry["check"](fn, hidden=True)
        lines = [visible or f"✓ {name}: passed."]
        if hidden:
            lines.append(f"✓ {name}: the graded checks passed too.")
        return True, "\n".join(lines)
    except CheckFailed as e:
        return False, _HIDDEN_CASE.sub("", str(e)) if in_hidden else str(e)
    except Exception as e:  # noqa: BLE001: a grader bug must cost points, not the notebook
        return (
            False,
            f"the grader could not check {name} ({type(e).__name__}); tell your instructor.",
        )
    finally:
        fn.finish()


def verdict_cells(lesson: str, source_nb) -> list:
    """The SOURCE notebook's test cells whose outcome ``IsolatedVerdicts`` writes: those of the
    exercises in ``EXERCISES`` (a test cell of an undeclared exercise keeps the kernel's)."""
    table = exercise_tables().get(lesson) or {}
    return [c for c in source_nb.cells
            if c.cell_type == "code" and nbgrader_meta(c).get("grade")
            and nbgrader_meta(c).get("grade_id", "").removeprefix("test_") in table]  # fmt: skip


def grade_notebook(nb, lesson: str, source_nb, deny=()) -> dict[str, tuple[bool, str]]:
    """{test cell grade_id: (passed, message)} for every exercise of ``lesson`` found in
    ``EXERCISES`` (test cells of undeclared exercises are left out)."""
    table = exercise_tables().get(lesson)
    tests = verdict_cells(lesson, source_nb)
    if not tests:
        return {}
    other = (nb.metadata.get(KEY) or {}).get("foreign") or foreign_lesson(nb, lesson)
    results = {}
    box = sandbox_for(setup_source(source_nb), deny) if not other else None
    if box is not None:
        warm_imports(box.setup_source)
    for cell in tests:
        grade_id = nbgrader_meta(cell)["grade_id"]
        name = grade_id.removeprefix("test_")
        if other:
            results[grade_id] = (False, foreign_message(lesson, other))
            continue
        hidden = HIDDEN_MARKERS[0] in cell.source
        results[grade_id] = verdict(table[name], name, answer_sources(nb, name), box, hidden)
    return results


def verdict_outputs(passed: bool, text: str) -> list:
    if passed:
        return [NotebookNode(output_type="stream", name="stdout", text=text + "\n")]
    return [NotebookNode(output_type="error", ename="CheckFailed", evalue=text,
                         traceback=[f"\x1b[0;31mCheckFailed\x1b[0m: {text}"])]  # fmt: skip


def _course_paths(config, resources):
    """(source notebook, folders graded code may not read) of the notebook being graded."""
    from nbgrader.coursedir import CourseDirectory

    coursedir = CourseDirectory(config=config)
    info = resources.get("nbgrader", {})
    folder = Path(coursedir.format_path(coursedir.source_directory, ".", info.get("assignment")))
    return folder / f"{info.get('notebook')}.ipynb", [coursedir.root]


class IsolatedVerdicts(NbGraderPreprocessor):
    """Each graded test cell's outputs, replaced by its verdict from the isolated worker."""

    def preprocess(self, nb, resources):
        from kto_course.grading.notebooks import read_notebook

        lesson = resources.get("nbgrader", {}).get("notebook", "")
        source_path, deny = _course_paths(self.config, resources)
        if lesson not in exercise_tables() or not source_path.exists():
            self.log.warning("kto-course: no exercise table for %s: kernel verdicts kept", lesson)
            return nb, resources
        results = grade_notebook(nb, lesson, read_notebook(source_path), deny)
        for cell in nb.cells:
            grade_id = nbgrader_meta(cell).get("grade_id")
            if cell.cell_type == "code" and grade_id in results:
                cell.outputs = verdict_outputs(*results[grade_id])
        return nb, resources


# ---------------------------------------------------------------------------------------------
# Sanitize: duplicated cells, broken metadata, another lesson's notebook
# ---------------------------------------------------------------------------------------------


def _placeholder(source_nb, message: str) -> list:
    """The cells of a submission that is another lesson's notebook: the message, then this
    lesson's nbgrader cells, unanswered (nbgrader's OverwriteCells needs each grade cell's
    neighbours; the test cells are restored from the gradebook anyway)."""
    import copy

    from nbformat.v4 import new_markdown_cell

    cells = [new_markdown_cell(f"**Not graded:** {message}")]
    for cell in source_nb.cells:
        meta = nbgrader_meta(cell)
        if not meta:
            continue
        cell = copy.deepcopy(cell)
        if meta.get("solution"):
            cell.source = (
                "YOUR ANSWER HERE"
                if cell.cell_type == "markdown"
                else ("# not graded: this submission is another lesson's notebook")
            )
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        cells.append(cell)
    return cells


def sanitize(nb, lesson: str, source_nb=None) -> list[str]:
    """Make a submission gradable in place; the notes say what was done."""
    from jsonschema import ValidationError
    from nbgrader.nbgraderformat import MetadataValidator
    from nbgrader.nbgraderformat.common import SchemaMismatchError

    notes = []
    other = foreign_lesson(nb, lesson)
    if other:
        message = foreign_message(lesson, other)
        if source_nb is not None:
            nb.cells = _placeholder(source_nb, message)
        else:
            for cell in nb.cells:
                cell.metadata.pop("nbgrader", None)
        nb.metadata[KEY] = {"foreign": other, "notes": [message]}
        return nb.metadata[KEY]["notes"]
    validator = MetadataValidator()
    last = {}
    for i, cell in enumerate(nb.cells):
        if "nbgrader" not in cell.metadata:
            continue
        try:
            validator.validate_cell(cell)
        except (ValidationError, SchemaMismatchError, KeyError, TypeError, ValueError):
            cell.metadata.pop("nbgrader")
            notes.append(f"cell {i}: its nbgrader metadata was invalid and was removed")
            continue
        grade_id = nbgrader_meta(cell).get("grade_id")
        if grade_id:
            if grade_id in last:
                nb.cells[last[grade_id]].metadata.pop("nbgrader", None)
                notes.append(f"{grade_id} appeared more than once: the last copy is graded")
            last[grade_id] = i
    if notes:
        nb.metadata[KEY] = {"notes": notes}
    return notes


class SanitizeSubmission(NbGraderPreprocessor):
    """Sanitize stage, before ``DeduplicateIds``: see ``sanitize``."""

    def preprocess(self, nb, resources):
        from kto_course.grading.notebooks import read_notebook

        lesson = resources.get("nbgrader", {}).get("notebook", "")
        source_path, deny = _course_paths(self.config, resources)
        source = read_notebook(source_path) if source_path.exists() else None
        for note in sanitize(nb, lesson, source):
            self.log.warning("kto-course: %s: %s", lesson, note)
        if source is not None and lesson in exercise_tables():
            try:  # start the worker now: its imports overlap with the kernel's run
                sandbox_for(setup_source(source), deny)
            except Exception:  # noqa: BLE001: only a head start; IsolatedVerdicts starts it too
                pass
        return nb, resources


def _warm_kernels_for(source_nb) -> None:
    """Kernels forked from the zygote of this notebook's lesson (``warm_kernels``)."""
    from kto_course.grading.warm_kernels import zygote_for

    try:
        zygote_for(setup_source(source_nb))
    except Exception as e:  # noqa: BLE001: then kernels start the usual way
        logging.getLogger("kto_course").warning("kto-course: no warm kernels: %s", e)


class SafeExecute(Execute):
    """nbgrader's Execute, except that a dead kernel or a cell the kernel never comes back from
    stops execution with a note in that cell; the notebook is still graded (the verdicts do not
    come from the kernel). The test cells whose outcome ``IsolatedVerdicts`` writes are not run
    in the kernel: their result would be replaced, and an endless loop in the learner's function
    would hold the notebook for the whole cell timeout. Another lesson's notebook is not
    executed at all. Its kernels are forked from the lesson's zygote (``warm_kernels``)."""

    def __init__(self, *args, **kwargs):
        from kto_course.grading.warm_kernels import WarmKernelManager

        kwargs.setdefault("kernel_manager_class", WarmKernelManager)  # nbgrader sets its own
        super().__init__(*args, **kwargs)

    def preprocess(self, nb, resources=None, km=None):
        from nbclient.exceptions import CellTimeoutError, DeadKernelError
        from nbconvert.preprocessors.execute import NotebookClient

        from kto_course.grading.notebooks import read_notebook

        if (nb.metadata.get(KEY) or {}).get("foreign"):
            return nb, resources
        source_path, _ = _course_paths(self.config, resources)
        skip: set[str] = set()
        if source_path.exists():
            source = read_notebook(source_path)
            _warm_kernels_for(source)
            lesson = resources.get("nbgrader", {}).get("notebook", "")
            skip = {nbgrader_meta(c)["grade_id"] for c in verdict_cells(lesson, source)}
        NotebookClient.__init__(self, nb, km)
        self.reset_execution_trackers()
        self._check_assign_resources(resources)
        try:
            with self.setup_kernel():
                info = self.wait_for_reply(self.kc.kernel_info())
                self.nb.metadata["language_info"] = info["content"]["language_info"]
                for index, cell in enumerate(self.nb.cells):
                    if cell.cell_type == "code" and nbgrader_meta(cell).get("grade_id") in skip:
                        continue  # graded by IsolatedVerdicts, outside the kernel
                    try:
                        self.preprocess_cell(cell, resources, index)
                    except (DeadKernelError, CellTimeoutError, RuntimeError, TimeoutError) as e:
                        self._note(cell, "the kernel died" if isinstance(e, DeadKernelError)
                                   else "the kernel stopped answering")  # fmt: skip
                        break
                    if self._timed_out(cell) and not self._responsive():
                        self._note(cell, "the kernel did not come back after this cell timed out")
                        break
        except Exception as e:  # noqa: BLE001: shutting down a dead kernel may fail too
            self.log.warning("kto-course: the kernel ended badly: %s", type(e).__name__)
        self.set_widgets_metadata()
        return self.nb, self.resources

    @staticmethod
    def _timed_out(cell) -> bool:
        return any(o.get("ename") == "CellTimeoutError" for o in cell.get("outputs", []))

    def _responsive(self) -> bool:
        try:  # nbgrader's timeout handling answers a silent kernel with an error reply
            reply = self.wait_for_reply(self.kc.kernel_info())
        except Exception:  # noqa: BLE001
            return False
        return bool(reply) and reply.get("content", {}).get("status") == "ok"

    def _note(self, cell, why: str) -> None:
        cell.setdefault("outputs", []).append(NotebookNode(
            output_type="stream", name="stdout",
            text=f"[kto-course] {why}: execution stopped here and the cells below did not run. "
            "Exercises are still graded, each on its own.\n",
        ))  # fmt: skip
