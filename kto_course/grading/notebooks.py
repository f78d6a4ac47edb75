"""Course notebooks as files: the checkout, its lessons, nbgrader markup and leak checks.

The ``kto-course`` command (cli.py) finds the course checkout with ``find_checkout``; generate,
grade and course (this package) call ``lessons``, ``read_notebook`` and ``check_markup`` on the
folders they are given; ``generate --check`` calls ``leaks``. Nothing here runs nbgrader.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat

LESSON_NAME = re.compile(r"^\d\d_[A-Za-z0-9_]+$")
SOLUTION_MARKERS = ("### BEGIN SOLUTION", "### END SOLUTION")
HIDDEN_MARKERS = ("### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS")
MARKERS = SOLUTION_MARKERS + HIDDEN_MARKERS
# Lines nbgrader itself writes into student versions: never a leak.
_STUB_LINES = {"raise NotImplementedError()", "YOUR ANSWER HERE", "# YOUR CODE HERE", "pass"}
# The tag every test cell carries: Run All (JupyterLab, nbclient, nbval) goes on past a failing
# check; nbgrader still scores that cell 0.
RAISES_TAG = "raises-exception"


# ---------------------------------------------------------------------------------------------
# The course checkout: the folder that holds solutions/ (and notebooks/, feedback/)
# ---------------------------------------------------------------------------------------------


class NotACheckout(ValueError):
    """The folder a command was pointed at (or run from) holds no course."""


def is_checkout(folder) -> bool:
    """Whether ``folder`` is a course checkout: it has a ``solutions/`` folder."""
    return (Path(folder) / "solutions").is_dir()


def checkout(root) -> Path:
    """``root`` itself as a checkout (what ``--root DIR`` names); NotACheckout if it is not one."""
    root = Path(root).resolve()
    if not is_checkout(root):
        raise NotACheckout(
            f"{root} is not a course checkout (it has no solutions/ folder): give --root the "
            "folder that holds solutions/ and notebooks/."
        )
    return root


def find_checkout(*starts) -> Path:
    """The first checkout at or above one of ``starts`` (in order); NotACheckout if none.

    Walking up means a learner can run ``kto-course`` from ``notebooks/`` (JupyterLab's
    terminal opens there) as well as from the checkout itself.
    """
    for start in starts:
        start = Path(start).resolve()
        for folder in (start, *start.parents):
            if is_checkout(folder):
                return folder
    places = list(dict.fromkeys(str(Path(s).resolve()) for s in starts)) or [str(Path.cwd())]
    raise NotACheckout(
        f"{' and '.join(places)} {'is' if len(places) == 1 else 'are'} not inside a course "
        "checkout (no solutions/ folder there or above): run kto-course from the course's "
        "folder, or give --root DIR."
    )


# ---------------------------------------------------------------------------------------------
# Lessons and their notebooks
# ---------------------------------------------------------------------------------------------


def lessons(solutions_dir: Path) -> list[str]:
    """The lesson names (``NN_name``) that have a solution notebook, in course order."""
    return sorted(p.stem for p in Path(solutions_dir).glob("*.ipynb") if LESSON_NAME.match(p.stem))


def resolve_lessons(names, solutions_dir: Path) -> list[str]:
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


def nbgrader_meta(cell) -> dict:
    return dict(cell.get("metadata", {}).get("nbgrader", {}))


def _describe(cell, index: int) -> str:
    meta = nbgrader_meta(cell)
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
        meta = nbgrader_meta(cell)
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
            if cell.cell_type == "code" and meta.get("grade") is True:
                if RAISES_TAG not in cell.get("metadata", {}).get("tags", []):
                    problems.append(
                        f"{here}: a test cell (grade: true) needs the tag '{RAISES_TAG}' in "
                        "metadata.tags, so that Run All goes on past a failing check"
                    )
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
        meta = nbgrader_meta(cell)
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
    student_nb: nbformat.NotebookNode,
    solution_nb: nbformat.NotebookNode,
    where: str,
    skip: tuple[str, ...] = (),
) -> list[str]:
    """Markers, solution code, hidden tests or model answers found in a student version.

    ``skip``: kinds of secret line not to look for (a learner's own correct answer may well
    repeat a line of solution code: ``skip=("solution code",)``).
    """
    secret = {s: what for s, what in secret_lines(solution_nb).items() if what not in skip}
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


def check_markup(lesson_names: list[str], solutions_dir: Path) -> None:
    """Raise one ValueError listing every markup problem of these lessons' solutions."""
    problems = []
    for name in lesson_names:
        path = Path(solutions_dir) / f"{name}.ipynb"
        problems += markup_problems(read_notebook(path), str(path))
    if problems:
        raise ValueError("bad nbgrader markup in solutions:\n  " + "\n  ".join(problems))
