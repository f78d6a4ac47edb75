"""``kto-course generate``: the student versions in notebooks/ rebuilt from solutions/.

``generate`` writes each ``notebooks/NN_name.ipynb`` that nbgrader's generate_assignment makes of
``solutions/NN_name.ipynb`` (outputs and execution counts cleared) and records the sha256 of what
it wrote in ``notebooks/.generated.json`` (the manifest, committed with the notebooks). A student
notebook that differs from its record was edited by a learner (answers, outputs): ``generate``
refuses to replace it (``LearnerEdits``) unless ``force``, and then keeps a backup first.
``check`` (``--check``) writes nothing and lists every student version that is stale, missing,
orphaned or leaks a solution or hidden test; a learner-edited one is a note, not a problem, but
the fresh generation must still match its record. Called by cli.py and by the grading tests,
with the folders to use.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from kto_course.grading.nbgrader_app import course_config, new_course, run_app
from kto_course.grading.notebooks import (
    LESSON_NAME,
    check_markup,
    leaks,
    lessons,
    markup_problems,
    notebook_text,
    read_notebook,
    resolve_lessons,
)


def student_versions(lesson_names: list[str], solutions_dir: Path) -> dict:
    """What generate_assignment makes of each lesson: {lesson: notebook text}. Writes nothing."""
    from nbgrader.converters import GenerateAssignment

    check_markup(lesson_names, solutions_dir)
    if not lesson_names:
        return {}
    with tempfile.TemporaryDirectory(prefix="kto-generate-") as tmp:
        root = Path(tmp)
        new_course(root, solutions_dir, lesson_names)
        # One app call for every lesson: each lesson is its own assignment.
        run_app(
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


# ---------------------------------------------------------------------------------------------
# The manifest: what generate last wrote, so that a learner's edits are never overwritten
# ---------------------------------------------------------------------------------------------

MANIFEST = ".generated.json"


def content_hash(text: str) -> str:
    """sha256 of a notebook's normalised text (nbformat's layout); of the raw text if unreadable."""
    try:
        text = notebook_text(nbformat.reads(text, as_version=4))
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def file_hash(path: Path) -> str:
    return content_hash(Path(path).read_bytes().decode("utf-8", errors="replace"))


def read_manifest(notebooks_dir: Path) -> dict[str, str]:
    """{notebook file name: sha256 of what generate wrote}; empty if there is no manifest yet."""
    try:
        data = json.loads((Path(notebooks_dir) / MANIFEST).read_text(encoding="utf-8"))
        return {str(k): str(v) for k, v in data.get("sha256", {}).items()}
    except (OSError, ValueError, AttributeError):
        return {}


def write_manifest(notebooks_dir: Path, records: dict[str, str]) -> None:
    data = {
        "about": "written by `kto-course generate`: the sha256 of each student notebook as "
        "generated (nbformat layout); a notebook that differs was edited by a learner",
        "sha256": dict(sorted(records.items())),
    }
    text = json.dumps(data, indent=1, ensure_ascii=False) + "\n"
    (Path(notebooks_dir) / MANIFEST).write_text(text, encoding="utf-8")


def learner_edited(path: Path, records: dict[str, str], fresh: str | None = None) -> bool:
    """Whether ``path`` holds something generate did not write (a learner's answers or outputs).

    Compared with the manifest's record; without a record, with the fresh generation ``fresh``
    (a file equal to it loses nothing when replaced), else it counts as edited.
    """
    path = Path(path)
    if not path.exists():
        return False
    on_disk = file_hash(path)
    recorded = records.get(path.name)
    if recorded is not None:
        return on_disk != recorded
    return fresh is None or on_disk != content_hash(fresh)


class LearnerEdits(ValueError):
    """Student notebooks ``generate`` refused to replace: a learner edited them."""

    def __init__(self, refused: list[Path], written: list[Path]):
        self.refused, self.written = refused, written
        super().__init__("; ".join(f"{p} was edited since it was generated" for p in refused))


@dataclass
class Generated:
    """What ``generate`` did: the notebooks written, their backups, the ones it refused."""

    written: list[Path] = field(default_factory=list)
    backups: dict[Path, Path] = field(default_factory=dict)
    refused: list[Path] = field(default_factory=list)


def backup_path(path: Path) -> Path:
    """``NN_name.ipynb.bak-YYYYmmdd-HHMMSS`` beside ``path`` (a counter if that exists too)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate = path.with_name(f"{path.name}.bak-{stamp}")
    n = 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.bak-{stamp}-{n}")
    return candidate


def generate_report(
    names, solutions_dir: Path, notebooks_dir: Path, force: bool = False
) -> Generated:
    """Write the student version of each lesson (all when ``names`` is empty), never over a
    learner's edits: an edited notebook is refused, or with ``force`` backed up and replaced."""
    lesson_names = resolve_lessons(names, solutions_dir)
    texts = student_versions(lesson_names, solutions_dir)
    notebooks_dir = Path(notebooks_dir)
    notebooks_dir.mkdir(parents=True, exist_ok=True)
    records = read_manifest(notebooks_dir)
    if not names:  # a full generation: forget lessons that are gone
        records = {k: v for k, v in records.items() if Path(k).stem in texts}
    done = Generated()
    for name, text in texts.items():
        path = notebooks_dir / f"{name}.ipynb"
        if learner_edited(path, records, fresh=text):
            if not force:
                done.refused.append(path)
                continue
            backup = backup_path(path)
            path.replace(backup)
            done.backups[path] = backup
        path.write_bytes(text.encode("utf-8"))
        records[path.name] = content_hash(text)
        done.written.append(path)
    if done.written or not (notebooks_dir / MANIFEST).exists():
        write_manifest(notebooks_dir, records)
    return done


def generate(names, solutions_dir: Path, notebooks_dir: Path, force: bool = False) -> list[Path]:
    """``generate_report``'s notebooks written; raises ``LearnerEdits`` if it refused any."""
    done = generate_report(names, solutions_dir, notebooks_dir, force=force)
    if done.refused:
        raise LearnerEdits(done.refused, done.written)
    return done.written


def orphans(solutions_dir: Path, notebooks_dir: Path) -> list[Path]:
    """Student notebooks whose solution no longer exists."""
    known = set(lessons(solutions_dir))
    return sorted(
        p
        for p in Path(notebooks_dir).glob("*.ipynb")
        if LESSON_NAME.match(p.stem) and p.stem not in known
    )


def check(names, solutions_dir: Path, notebooks_dir: Path) -> list[str]:
    """Problems of the committed student versions (empty: all in sync, nothing leaks)."""
    return check_report(names, solutions_dir, notebooks_dir)[0]


def check_report(names, solutions_dir: Path, notebooks_dir: Path) -> tuple[list[str], list[str]]:
    """(problems, notes) of the student versions; a learner-edited notebook is only a note.

    A notebook that matches its manifest record must equal the fresh generation byte for byte.
    One a learner edited is not compared with it (their answers are theirs), but its record
    must still equal the fresh generation: a solution changed since is a stale notebook.
    """
    solutions_dir, notebooks_dir = Path(solutions_dir), Path(notebooks_dir)
    records = read_manifest(notebooks_dir)
    notes = []
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
        recorded = records.get(student.name)
        stale = (
            f"{student} differs from what solutions/{name}.ipynb generates: "
            f"run `kto-course generate {name}`"
        )
        if recorded is None:
            problems.append(
                f"{student} has no record in {notebooks_dir / MANIFEST}: "
                f"run `kto-course generate {name}`"
            )
            continue
        if file_hash(student) != recorded:
            # A learner's answers or outputs: theirs, not compared. What generate recorded must
            # still be what the solution generates now, and must not leak.
            notes.append(
                f"{student} was edited by a learner (not what generate wrote): not compared; "
                "it is kept as it is"
            )
            solution_nb = read_notebook(solutions_dir / f"{name}.ipynb")
            if name in expected:
                if content_hash(expected[name]) != recorded:
                    problems.append(stale)
                fresh_nb = nbformat.reads(expected[name], as_version=4)
                problems += leaks(fresh_nb, solution_nb, f"{student} (as generated)")
            try:
                edited_nb = nbformat.reads(student.read_text(encoding="utf-8"), as_version=4)
            except (ValueError, UnicodeDecodeError):
                continue
            # Markers, hidden tests and model answers are never a learner's; solution lines can be.
            problems += leaks(edited_nb, solution_nb, str(student), skip=("solution code",))
            continue
        committed = student.read_bytes()
        try:
            student_nb = nbformat.reads(committed.decode("utf-8"), as_version=4)
        except (ValueError, UnicodeDecodeError) as e:
            problems.append(f"{student} is not a readable notebook ({e})")
            continue
        problems += leaks(student_nb, read_notebook(solutions_dir / f"{name}.ipynb"), str(student))
        if name in expected and committed != expected[name].encode("utf-8"):
            problems.append(stale)
    if not names:
        for path in orphans(solutions_dir, notebooks_dir):
            problems.append(f"{path} has no solution notebook in {solutions_dir}: delete it")
    return problems, notes
