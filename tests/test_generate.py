"""`kto-course generate` never overwrites a learner's work (on copies of the fixture tree).

generate records the sha256 of what it wrote in notebooks/.generated.json; a student notebook
that differs from its record (answers, outputs) is refused without --force and backed up with
it; --check reports such a notebook as a note, yet still fails when the solution changed since
the recorded generation. Also: the markup checker requires the `raises-exception` tag.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import shutil

import nbformat
import pytest
from conftest import ROOT, skip_if_learner_edited

from kto_course import cli, grading

FIXTURES = ROOT / "tests" / "fixtures"
FIXTURE = "99_fixture"
OTHER = "98_other"


@pytest.fixture
def tree(tmp_path):
    """A copy of the fixture's solutions/ and notebooks/ (with its manifest)."""
    shutil.copytree(FIXTURES / "solutions", tmp_path / "solutions")
    shutil.copytree(FIXTURES / "notebooks", tmp_path / "notebooks")
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


def _student(tree, name=FIXTURE):
    return tree / "notebooks" / f"{name}.ipynb"


def _manifest(tree) -> dict:
    return json.loads((tree / "notebooks" / grading.MANIFEST).read_text(encoding="utf-8"))


def _learner_edits(path, answer="def add(a, b):\n    return a + b"):
    """What a learner's save looks like: an answer typed in, the notebook run (outputs)."""
    nb = nbformat.read(path, as_version=4)
    by_id = {c.metadata.get("nbgrader", {}).get("grade_id"): c for c in nb.cells}
    by_id["ex_add"].source = answer
    by_id["ex_add"].execution_count = 1
    by_id["test_add"].outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="add: all checks passed\n")
    ]
    nbformat.write(nb, path)
    return path.read_bytes()


def _change_solution(tree, name=FIXTURE):
    path = tree / "solutions" / f"{name}.ipynb"
    nb = grading.read_notebook(path)
    nb.cells[0].source += "\n\nA new sentence."
    nbformat.write(nb, path)


def test_committed_manifest_records_every_student_notebook():
    for notebooks in (ROOT / "notebooks", FIXTURES / "notebooks"):
        records = json.loads((notebooks / grading.MANIFEST).read_text(encoding="utf-8"))
        files = {p.name for p in notebooks.glob("*.ipynb")}
        assert set(records["sha256"]) == files, notebooks
        for name, digest in records["sha256"].items():
            skip_if_learner_edited(notebooks / name)
            assert hashlib.sha256((notebooks / name).read_bytes()).hexdigest() == digest, name


def test_manifest_is_up_to_date_and_deterministic_after_generate(tree, capsys):
    committed = (tree / "notebooks" / grading.MANIFEST).read_bytes()
    (tree / "notebooks" / grading.MANIFEST).unlink()
    _student(tree).unlink()
    rc, out, err = _generate(tree, capsys=capsys)
    assert rc == 0, out + err
    assert (tree / "notebooks" / grading.MANIFEST).read_bytes() == committed
    digest = hashlib.sha256(_student(tree).read_bytes()).hexdigest()
    assert _manifest(tree)["sha256"] == {f"{FIXTURE}.ipynb": digest}
    assert _generate(tree, "--check", capsys=capsys)[0] == 0


def test_edited_notebook_is_refused_without_force_and_other_lessons_are_generated(tree, capsys):
    shutil.copyfile(tree / "solutions" / f"{FIXTURE}.ipynb", tree / "solutions" / f"{OTHER}.ipynb")
    assert _generate(tree, capsys=capsys)[0] == 0
    mine = _learner_edits(_student(tree))
    _change_solution(tree, OTHER)
    other_before = _student(tree, OTHER).read_bytes()
    rc, out, err = _generate(tree, capsys=capsys)
    assert rc == 1
    assert _student(tree).read_bytes() == mine  # the learner's work, untouched
    assert not list((tree / "notebooks").glob("*.bak-*"))
    assert str(_student(tree)) in err and "was edited" in err and "--force" in err, err
    assert "cp " in err and "Traceback" not in out + err
    assert err.count("\n") == 1, err  # one message
    # The other lesson was regenerated, and its record updated; the refused one's record kept.
    assert _student(tree, OTHER).read_bytes() != other_before and f"wrote {tree}" in out
    records = _manifest(tree)["sha256"]
    assert (
        records[f"{OTHER}.ipynb"] == hashlib.sha256(_student(tree, OTHER).read_bytes()).hexdigest()
    )
    assert records[f"{FIXTURE}.ipynb"] != hashlib.sha256(mine).hexdigest()


def test_force_keeps_a_backup_then_replaces(tree, capsys):
    generated = _student(tree).read_bytes()
    mine = _learner_edits(_student(tree))
    rc, out, err = _generate(tree, "--force", capsys=capsys)
    assert rc == 0, out + err
    backups = list((tree / "notebooks").glob(f"{FIXTURE}.ipynb.bak-*"))
    assert len(backups) == 1 and backups[0].read_bytes() == mine
    assert _student(tree).read_bytes() == generated
    assert str(backups[0]) in out, out
    # The backup is ignored by git, and not taken for a lesson or an orphan.
    patterns = (ROOT / ".gitignore").read_text().split()
    assert any(fnmatch.fnmatch(backups[0].name, p) for p in patterns), patterns
    assert _generate(tree, "--check", capsys=capsys)[0] == 0
    # A second --force keeps both backups.
    _learner_edits(_student(tree))
    assert _generate(tree, "--force", capsys=capsys)[0] == 0
    assert len(list((tree / "notebooks").glob(f"{FIXTURE}.ipynb.bak-*"))) == 2


def test_check_passes_with_a_learner_edited_notebook_and_names_it(tree, capsys):
    before = _learner_edits(_student(tree))  # their answer repeats the solution's line
    rc, out, err = _generate(tree, "--check", capsys=capsys)
    assert rc == 0, out + err
    assert "note:" in out and f"{FIXTURE}.ipynb was edited by a learner" in out, out
    assert _student(tree).read_bytes() == before


def test_check_still_fails_when_the_solution_changed_under_an_edited_notebook(tree, capsys):
    _learner_edits(_student(tree))
    _change_solution(tree)
    rc, out, err = _generate(tree, "--check", capsys=capsys)
    assert rc == 1
    assert f"{FIXTURE}.ipynb differs" in out and "kto-course generate" in out, out


def test_check_still_finds_a_hidden_test_in_an_edited_notebook(tree, capsys):
    path = _student(tree)
    nb = nbformat.read(path, as_version=4)
    nb.cells[4].source = "checks.check_add(add)\nchecks.check_add(add, hidden=True)"
    nbformat.write(nb, path)
    rc, out, err = _generate(tree, "--check", capsys=capsys)
    assert rc == 1 and "a hidden test" in out, out


def test_check_fails_for_a_notebook_the_manifest_does_not_record(tree, capsys):
    (tree / "notebooks" / grading.MANIFEST).unlink()
    rc, out, err = _generate(tree, "--check", capsys=capsys)
    assert rc == 1 and "has no record" in out and grading.MANIFEST in out, out


def test_without_a_manifest_an_identical_notebook_is_replaced_and_a_different_one_refused(
    tree, capsys
):
    (tree / "notebooks" / grading.MANIFEST).unlink()
    assert _generate(tree, capsys=capsys)[0] == 0  # equal to the fresh version: nothing lost
    (tree / "notebooks" / grading.MANIFEST).unlink()
    mine = _learner_edits(_student(tree))
    assert _generate(tree, capsys=capsys)[0] == 1
    assert _student(tree).read_bytes() == mine


def test_test_cell_without_the_raises_exception_tag_is_reported(tree, capsys):
    path = tree / "solutions" / f"{FIXTURE}.ipynb"
    nb = grading.read_notebook(path)
    nb.cells[4].metadata["tags"] = []
    nbformat.write(nb, path)
    for args in ([], ["--check"]):
        rc, out, err = _generate(tree, *args, capsys=capsys)
        assert rc != 0
        assert "cell 4 (test_add)" in out + err and "'raises-exception'" in out + err, out + err


def test_student_versions_keep_the_raises_exception_tag():
    for path in [*(ROOT / "notebooks").glob("*.ipynb"), *(FIXTURES / "notebooks").glob("*.ipynb")]:
        nb = grading.read_notebook(path)
        graded = [c for c in nb.cells if c.metadata.get("nbgrader", {}).get("grade")]
        code = [c for c in graded if c.cell_type == "code"]
        assert code, path
        for cell in code:
            assert "raises-exception" in cell.metadata.get("tags", []), (path, cell.metadata)
