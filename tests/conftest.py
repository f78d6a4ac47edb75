"""Shared pytest setup: paths of the course and the CUDA marker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = ROOT / "solutions"
NOTEBOOKS = ROOT / "notebooks"

# Notebooks executed by the tests run their training cells in quick mode.
os.environ.setdefault("KTO_COURSE_QUICK", "1")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


def unanswered(ename: str, evalue: str) -> bool:
    """An unanswered exercise's error: its own NotImplementedError, or its check reporting that
    same error as a CheckFailed that names it ("... still raises NotImplementedError ...")."""
    return ename == "NotImplementedError" or (
        ename == "CheckFailed" and "NotImplementedError" in evalue
    )


def skip_if_learner_edited(path) -> None:
    """Skip a test of a notebooks/ file that a learner edited (answers, outputs), except in CI.

    It differs from the sha256 `kto-course generate` recorded in notebooks/.generated.json; the
    learner's work is theirs, and `generate --check` still checks what generate wrote. In CI
    (the environment variable CI set) such a notebook fails the test as before.
    """
    from kto_course.grading.student_notebooks import learner_edited, read_manifest

    path = Path(path)
    if path.parent != NOTEBOOKS or os.environ.get("CI"):
        return
    records = read_manifest(NOTEBOOKS)
    if path.name in records and learner_edited(path, records):
        pytest.skip(f"{path.name} was edited by a learner (differs from notebooks/.generated.json)")
