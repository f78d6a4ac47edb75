"""Benchmark: how long grading takes. Prints figures, asserts nothing.

    .venv/bin/python benchmarks/grading.py                 # every lesson, then a class of 30
    .venv/bin/python benchmarks/grading.py --lessons 01 05 --class-size 10 --class-lesson 03

Per lesson, with the solved notebook (answers from solutions/):
- ``verdict``: the autograded verdicts alone (``scoring.verdicts_now``: no kernel, no nbgrader),
  which ``kto-course submit`` prints first and ``submit --quick`` stops at. Cold: the worker
  imports the lesson's setup (torch, transformers) first; warm: a second notebook of the same
  lesson, which is what each student after the first costs in a class run.
  Cold runs in this process, after the lessons before it: what it imported for them (torch,
  nbformat) is not counted again.
- ``quick``: ``kto-course submit --quick`` in a fresh process (Python, nbformat and torch
  imports included), wall time: what a learner waits for the verdicts.
- ``submit``: the whole ``kto-course submit`` command (a fresh process: verdicts, then the full
  nbgrader execution of the notebook for the HTML feedback), wall time.
Then ``nbgrader autograde`` of a class of N copies of one lesson in one course (wall time).
Target: the verdict of any lesson within 5 s (cold), whatever the notebook's training costs.
The machine's load average is printed with the figures: on a shared machine they move with it.
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from kto_course import checks, grading  # noqa: E402
from kto_course.grading import scoring, verdicts  # noqa: E402


def solved(lesson: str):
    from test_adversarial import solved_student

    return solved_student(lesson)


def time_verdicts(lesson: str) -> tuple[float, float]:
    verdicts.close_workers()
    nb = solved(lesson)
    t0 = time.perf_counter()
    result = scoring.verdicts_now(lesson, nb, solutions_dir=ROOT / "solutions")
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    scoring.verdicts_now(lesson, copy.deepcopy(nb), solutions_dir=ROOT / "solutions")
    warm = time.perf_counter() - t0
    assert result is None or result.score == result.max_score, result
    return cold, warm


def time_submit(lesson: str, folder: Path, *options: str) -> float:
    import nbformat

    path = folder / f"{lesson}.ipynb"
    nbformat.write(solved(lesson), path)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "kto_course.cli", "submit", str(path), "--root",
                    str(ROOT), "--feedback-dir", str(folder / "feedback"), *options],
                   check=True, capture_output=True, timeout=1800)  # fmt: skip
    return time.perf_counter() - t0


def load() -> str:
    """The load average (1, 5, 15 min): the figures move with it on a shared machine."""
    return "load " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def time_class(lesson: str, size: int) -> float:
    nb = solved(lesson)
    t0 = time.perf_counter()
    results = grading.grade(lesson, {f"s{i:02d}": copy.deepcopy(nb) for i in range(size)},
                            solutions_dir=ROOT / "solutions", feedback=False)  # fmt: skip
    wall = time.perf_counter() - t0
    assert all(r.score == r.max_score for r in results.values())
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lessons", nargs="*", default=None)
    parser.add_argument("--class-size", type=int, default=30)
    parser.add_argument("--class-lesson", default="01")
    parser.add_argument("--no-submit", action="store_true", help="skip the whole-command times")
    args = parser.parse_args()
    lessons = grading.resolve_lessons(args.lessons, ROOT / "solutions")
    print(f"{'lesson':<28} {'verdict cold':>12} {'verdict warm':>12} {'quick':>7} {'submit':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for lesson in lessons:
            if lesson not in checks.EXERCISES:
                print(f"{lesson:<28} {'(no EXERCISES table)':>26}")
                continue
            cold, warm = time_verdicts(lesson)
            folder = Path(tmp) / lesson
            folder.mkdir()
            quick = time_submit(lesson, folder, "--quick")
            whole = float("nan") if args.no_submit else time_submit(lesson, folder)
            print(f"{lesson:<28} {cold:>11.1f}s {warm:>11.1f}s {quick:>6.1f}s {whole:>7.1f}s  "
                  f"({load()})", flush=True)  # fmt: skip
    if args.class_size:
        lesson = grading.resolve_lessons([args.class_lesson], ROOT / "solutions")[0]
        wall = time_class(lesson, args.class_size)
        print(f"autograde of {args.class_size} x {lesson}: {wall:.0f} s wall "
              f"({wall / args.class_size:.1f} s per student, {load()})")  # fmt: skip


if __name__ == "__main__":
    main()
