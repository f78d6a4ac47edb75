"""Shared pytest setup: paths of the course, the CUDA marker, the parallel groups."""

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


def inner_pytest_env(**extra: str) -> dict:
    """The environment of a pytest a test starts itself: this one's, without this run's xdist
    worker variables or options (``PYTEST_ADDOPTS``), plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_XDIST", "PYTEST_ADDOPTS"))}  # fmt: skip
    return {**env, **extra}


# -- Running in parallel (`make test`: pytest -n WORKERS --dist loadgroup, with pytest-xdist) --
#
# xdist sends each group of tests to one worker. A test's group: the one it names
# (``xdist_group``: test_grading.py grades a lesson once for all of that lesson's tests), else
# the module-scoped fixtures it uses (each built once, in one worker: the browser, a class's
# autograde), else the test alone. The groups go out longest first, so that the last ones to
# finish are short: seconds of the long groups, measured on a 2-core machine with 4 workers
# (only their order matters; a group not listed counts 1 s per slow test).
LONG_GROUPS = {
    "browser-lab": 294, "browser-voila": 216, "executed-07": 110,
    "grading-05_kto_vs_dpo": 105, "class_run": 84, "grading-07_graduate_to_trl": 82,
    "grading-06_tiny_gpt2_kto": 76, "grading-04_gradients_and_saturation": 74,
    "executed-06": 71, "lesson_rows+one_thread": 59, "grading-03_value_and_loss": 56,
    "warm_kernels": 56, "executed-05": 55, "lesson_verdicts": 52,
    "grading-02_kl_reference_point": 42, "grading-01_log_ratio": 38, "submit_runs": 36,
    "classroom": 35, "grading-99_fixture": 28,
}  # fmt: skip
# Tests alone in their group that take a minute: lesson 07 executed by nbval and as a student.
LONG_GROUPS.update({
    f"tests/test_notebooks.py::{test}[07_graduate_to_trl]": seconds for test, seconds in (
        ("test_solution_runs_clean_under_nbval", 59),
        ("test_student_version_fails_only_with_not_implemented", 52))
})  # fmt: skip


def xdist_group(item) -> str:
    for mark in item.iter_markers("xdist_group"):
        return str(mark.args[0] if mark.args else mark.kwargs.get("name", "default"))
    module = item.nodeid.split("::")[0]
    shared = []
    for name in item.fixturenames:
        defs = item._fixtureinfo.name2fixturedefs.get(name)
        if defs and defs[-1].scope == "module" and defs[-1].baseid == module:
            params = item.callspec.params if hasattr(item, "callspec") else {}
            shared.append(f"{name}-{params[name]}" if name in params else name)
    return "+".join(sorted(shared)) if shared else item.nodeid


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    import torch

    if os.environ.get("PYTEST_XDIST_WORKER"):  # a worker's collection: the scheduler's input
        groups = {id(item): xdist_group(item) for item in items}
        cost: dict[str, float] = {}
        for item in items:
            group = groups[id(item)]
            if not item.get_closest_marker("xdist_group"):
                item.add_marker(pytest.mark.xdist_group(group))
            cost[group] = LONG_GROUPS.get(group, cost.get(group, 0) + ("slow" in item.keywords))
        items.sort(key=lambda item: -cost[groups[id(item)]])  # stable: file order otherwise

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
