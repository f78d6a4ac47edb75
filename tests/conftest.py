"""Shared pytest setup: paths of the course and the CUDA marker."""

from __future__ import annotations

import json
import os
import statistics
import time
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


_SESSION_START = time.time()


def pytest_terminal_summary(terminalreporter):
    """The demos' redraw latencies that this run's browser tests measured: median per demo."""
    found = sorted(
        p for p in (ROOT / "screenshots").glob("*/latency.json")
        if p.stat().st_mtime >= _SESSION_START
    )  # fmt: skip
    if not found:
        return
    terminalreporter.section("demo redraw latency (ms, input event to frame and readout)")
    for path in found:
        for name, values in json.loads(path.read_text()).items():
            what = "frames" if "frames for" in name else "median ms"
            terminalreporter.write_line(
                f"{path.parent.name:38s} {name:52s} {what} {statistics.median(values):7.1f}"
                f"  (of {len(values)})"
            )


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
