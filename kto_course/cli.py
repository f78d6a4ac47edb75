"""The ``kto-course`` command: doctor, generate, submit, course, pretrain, train.

Each subcommand imports its module only when it runs, so ``kto-course doctor`` and
``kto-course generate`` start without loading torch.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import platform
import sys

from kto_course import system

# ---------------------------------------------------------------------------------------------
# doctor
# ---------------------------------------------------------------------------------------------

DOCTOR_PACKAGES = (
    "torch",
    "transformers",
    "tokenizers",
    "nbgrader",
    "jupyterlab",
    "ipywidgets",
    "voila",
    "playwright",
)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def doctor_report() -> dict:
    """What ``kto-course doctor`` prints: versions, device, threads, Chromium."""
    report = {"python": platform.python_version()}
    report.update({name: _version(name) for name in DOCTOR_PACKAGES})
    try:
        import torch

        report["device"] = system.available_device()
        report["torch threads"] = torch.get_num_threads()
        if report["device"] == "cuda":
            report["cuda device"] = torch.cuda.get_device_name(0)
    except ImportError:
        report["device"] = "unknown (torch is not installed)"
    report["cpu threads for larger models"] = system.default_threads()
    chromium = system.find_chromium()
    report["chromium"] = chromium or (
        f"not found (apt-get install chromium, or set {system.CHROMIUM_ENV}); "
        "browser tests will be skipped"
    )
    return report


def run_doctor(args: argparse.Namespace) -> int:
    report = doctor_report()
    width = max(len(k) for k in report)
    for key, value in report.items():
        print(f"{key:<{width}}  {value}")
    return 0


# ---------------------------------------------------------------------------------------------
# The parser: every subcommand and its arguments
# ---------------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {value}")
    return value


def _add_course_dirs(p: argparse.ArgumentParser, notebooks: bool = False) -> None:
    # For maintainers and the tests (fixture lessons); learners never need them.
    p.add_argument(
        "--solutions-dir", default=None, help="instructor notebooks (default: solutions/)"
    )
    if notebooks:
        p.add_argument(
            "--notebooks-dir", default=None, help="student notebooks (default: notebooks/)"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kto-course", description="Tools of the KTO course for learners and instructors."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("doctor", help="versions, compute device, threads, Chromium")
    p.set_defaults(handler=("kto_course.cli", "run_doctor"))

    p = sub.add_parser(
        "generate", help="regenerate notebooks/ (student versions) from solutions/ with nbgrader"
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="write nothing; fail if a student notebook is out of date or leaks a solution",
    )
    p.add_argument("lessons", nargs="*", metavar="LESSON", help="only these lessons (e.g. 01)")
    _add_course_dirs(p, notebooks=True)
    p.set_defaults(handler=("kto_course.grading", "run_generate"))

    p = sub.add_parser("submit", help="grade a copy of your notebook and write HTML feedback")
    p.add_argument("notebook", help="a course notebook, e.g. notebooks/01_log_ratio.ipynb")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument(
        "--timeout",
        type=_positive_int,
        default=None,
        help="seconds a cell may run before it is interrupted",
    )
    p.add_argument(
        "--feedback-dir",
        default=None,
        help="where the HTML feedback goes (default: feedback/ beside notebooks/)",
    )
    _add_course_dirs(p)
    p.set_defaults(handler=("kto_course.grading", "run_submit"))

    p = sub.add_parser("course", help="lay out a full nbgrader course directory for a class")
    p.add_argument("directory", help="the course directory to create")
    p.add_argument("--course-id", default="kto-course", help="nbgrader course id")
    _add_course_dirs(p)
    p.set_defaults(handler=("kto_course.grading", "run_course"))

    p = sub.add_parser("pretrain", help="rebuild the tiny GPT-2 reference model and tokenizer")
    p.add_argument("--out", default=None, help="folder to write (default: the shipped one)")
    p.add_argument("--seed", type=int, default=0, help="random seed (0 gives the shipped files)")
    p.add_argument("--steps", type=_positive_int, default=None, help="pretraining steps (400)")
    p.set_defaults(handler=("kto_course.lm.pretrain", "run_pretrain"))

    p = sub.add_parser("train", help="KTO fine-tune of the tiny GPT-2; prints a JSON summary")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--steps", type=_positive_int, default=None, help="optimizer steps")
    p.add_argument(
        "--mode",
        choices=("online", "offline"),
        default="online",
        help="online: fresh samples judged each step; offline: a fixed labelled dataset "
        "(at beta 0.1 it collapses transiently on the tiny model; --beta 1 fixes it)",
    )
    p.add_argument("--batch-size", type=_positive_int, default=None, help="microbatch size")
    p.add_argument("--beta", type=_positive_float, default=None, help="KTO beta")
    p.add_argument("--seed", type=int, default=None, help="random seed")
    p.add_argument("--out", default=None, help="save the trained policy here")
    p.set_defaults(handler=("kto_course.train", "run_train"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module_name, function_name = args.handler
    handler = getattr(importlib.import_module(module_name), function_name)
    try:
        return int(handler(args) or 0)
    except (ValueError, FileNotFoundError) as e:
        # Bad input from a person (a path, a lesson name, a device): say what, lose nothing.
        print(f"kto-course {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
