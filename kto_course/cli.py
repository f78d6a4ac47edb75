"""The ``kto-course`` command: doctor, generate, submit, course, pretrain, train.

The course commands (generate, submit, course) work on a course checkout: the folder that holds
``solutions/`` and ``notebooks/``. It is ``--root DIR``, else the checkout around the notebook
(submit) or around the current folder; ``--solutions-dir`` and friends override single folders.
torch is imported only by the commands that train (and by ``train --help``, whose options are
made from ``KTOConfig``), so ``kto-course generate`` and ``submit`` start without loading it.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import platform
import sys
import typing
from pathlib import Path

from kto_course import system


def _grading():
    """``kto_course.grading``, imported on first use: it pulls in nbgrader and nbconvert (~1-5 s),
    which ``kto-course train``, ``pretrain`` and ``doctor`` never need."""
    from kto_course import grading

    return grading

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
    "ipympl",
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


# ---------------------------------------------------------------------------------------------
# generate, submit, course: the folders of the course checkout
# ---------------------------------------------------------------------------------------------


def _add_course_dirs(p: argparse.ArgumentParser, *folders: str) -> None:
    p.add_argument(
        "--root",
        default=None,
        help="the course checkout, which holds solutions/ and notebooks/ (default: the one "
        "around the current folder)",
    )
    # For maintainers and the tests (fixture lessons); learners never need them.
    for folder in ("solutions", *folders):
        p.add_argument(
            f"--{folder}-dir", default=None, help=f"{folder} folder (default: ROOT/{folder}/)"
        )


def _course_dir(args: argparse.Namespace, folder: str, *near) -> Path:
    """``--<folder>-dir`` if given, else that folder of the checkout (found only when needed)."""
    grading = _grading()
    given = getattr(args, f"{folder}_dir", None)
    if given:
        return Path(given)
    if args.root:
        return grading.checkout(args.root) / folder
    return grading.find_checkout(*near, Path.cwd()) / folder


def run_generate(args: argparse.Namespace) -> int:
    grading = _grading()
    solutions_dir = _course_dir(args, "solutions")
    notebooks_dir = _course_dir(args, "notebooks")
    if args.check:
        problems, notes = grading.check_report(args.lessons, solutions_dir, notebooks_dir)
        for note in notes:
            print(f"kto-course generate --check: note: {note}")
        for problem in problems:
            print(f"kto-course generate --check: {problem}")
        if problems:
            print(
                f"{len(problems)} problem(s). Edit solutions/ only, then run `kto-course generate`."
            )
            return 1
        checked = len(grading.resolve_lessons(args.lessons, solutions_dir))
        print(
            f"student notebooks are up to date ({checked} lessons checked, no solution or "
            "hidden test leaks)."
        )
        return 0
    done = grading.generate_report(args.lessons, solutions_dir, notebooks_dir, force=args.force)
    for path in done.written:
        backup = done.backups.get(path)
        print(f"wrote {path}" + (f" (your version is kept in {backup})" if backup else ""))
    for path in grading.orphans(solutions_dir, notebooks_dir) if not args.lessons else []:
        print(f"warning: {path} has no solution notebook; delete it if the lesson is gone.")
    for path in done.refused:
        print(
            f"kto-course generate: {path} was edited since it was generated (answers or "
            f"outputs): not replaced. Your work stays as it is; to get the new version, keep a "
            f"copy (`cp {path} {path.with_name(path.stem + '-mine.ipynb')}`) or run "
            f"`kto-course generate --force {path.stem[:2]}`, which keeps a backup beside it.",
            file=sys.stderr,
        )
    return 1 if done.refused else 0


def run_submit(args: argparse.Namespace) -> int:
    grading = _grading()
    # The checkout around the notebook first: feedback/ lands beside ITS notebooks/, wherever
    # the learner runs the command from (a JupyterLab terminal opens in notebooks/).
    near = Path(args.notebook).resolve().parent
    shown = []

    def show_verdicts(first) -> None:  # the grades, in seconds, before the notebook runs
        if not args.json:
            shown.append(first)
            print(grading.format_report(first), flush=True)
            if not args.quick:
                print("\n(running the whole notebook for the feedback page...)", flush=True)

    result = grading.submit(
        args.notebook,
        solutions_dir=_course_dir(args, "solutions", near),
        feedback_dir=None if args.quick else _course_dir(args, "feedback", near),
        timeout=args.timeout or grading.DEFAULT_TIMEOUT,
        quick=args.quick,
        on_verdicts=show_verdicts,
    )
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    elif shown and shown[0].cells == result.cells:
        if result.feedback:
            print(f"Feedback: {result.feedback}")
        if result.previous_feedback:
            print(f"(it replaced an earlier report, kept as {result.previous_feedback})")
    else:
        print(grading.format_report(result))
    return 0


def run_course(args: argparse.Namespace) -> int:
    grading = _grading()
    root = grading.make_course(
        args.directory,
        course_id=args.course_id or grading.COURSE_ID,
        solutions_dir=_course_dir(args, "solutions"),
    )
    print(f"nbgrader course written to {root}; see {root / 'README.md'} for the commands.")
    return 0


# ---------------------------------------------------------------------------------------------
# pretrain, train: one option per KTOConfig field
# ---------------------------------------------------------------------------------------------


def run_pretrain(args: argparse.Namespace) -> int:
    from kto_course.lm import pretrain

    return pretrain.run_pretrain(args)


def _config_option(config_class, f: dataclasses.Field, hint) -> dict:
    """``add_argument`` keywords for one dataclass field: its type, default, help and rule."""
    optional = type(None) in typing.get_args(hint)
    base = next(t for t in typing.get_args(hint) if t is not type(None)) if optional else hint
    shape = typing.get_origin(base)
    kind = typing.get_args(base)[0] if shape is tuple else base

    def parse(text: str):
        if optional and text in ("auto", "None"):
            return None
        try:
            value = kind(text)
        except ValueError:
            words = {int: "a whole number", float: "a number"}.get(kind, kind.__name__)
            raise argparse.ArgumentTypeError(f"expected {words}, got {text!r}") from None
        wanted = config_class.problem(f.name, value)
        if wanted:
            raise argparse.ArgumentTypeError(f"expected {wanted}, got {value}")
        return value

    default = "auto" if f.default is None else f.default
    help_text = f.metadata.get("help", "") + f" (default: {default})"
    metavar = {int: "N", float: "X"}.get(kind, "NAME")
    option = {"dest": f.name, "default": f.default, "help": help_text.replace("%", "%%")}
    if f.metadata.get("choices"):
        return {**option, "choices": f.metadata["choices"]}
    if shape is tuple:
        n = len(typing.get_args(base))
        return {**option, "type": parse, "nargs": n, "metavar": (metavar,) * n}
    return {**option, "type": parse, "metavar": metavar}


def _add_config_options(p: argparse.ArgumentParser, config_class) -> None:
    """One ``--field-name`` option per field of ``config_class``, made from the dataclass."""
    hints = typing.get_type_hints(config_class)
    for f in dataclasses.fields(config_class):
        option = "--" + f.name.replace("_", "-")
        p.add_argument(option, **_config_option(config_class, f, hints[f.name]))


def _add_train_options(p: argparse.ArgumentParser) -> None:
    from kto_course.train import KTOConfig

    _add_config_options(p, KTOConfig)
    p.add_argument("--out", default=None, help="save the trained policy here")


def run_train(args: argparse.Namespace) -> int:
    from kto_course import train

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(train.KTOConfig)}
    # nargs gives lists; the dataclass's tuple fields (adam_betas) want tuples.
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    config = train.KTOConfig(**values)  # a bad value: ValueError, one line and exit 2 (main)
    print(json.dumps(train.run_train(config, out=args.out), indent=2))
    return 0


class _Subcommand(argparse.ArgumentParser):
    """A subcommand's parser; ``add_options(parser)``, if set, adds its options on first use.

    ``train``'s options come from ``KTOConfig``, which needs torch: only ``train`` pays for it.
    """

    add_options = None

    def _complete(self) -> None:
        add, self.add_options = self.add_options, None
        if add is not None:
            add(self)

    def parse_known_args(self, args=None, namespace=None):
        self._complete()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._complete()
        return super().format_help()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kto-course", description="Tools of the KTO course for learners and instructors."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Subcommand)
    sub.required = True

    p = sub.add_parser("doctor", help="versions, compute device, threads, Chromium")
    p.set_defaults(handler=run_doctor)

    p = sub.add_parser(
        "generate", help="regenerate notebooks/ (student versions) from solutions/ with nbgrader"
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="write nothing; fail if a student notebook is out of date or leaks a solution",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="replace student notebooks a learner edited too, keeping a .bak-<time> copy of each",
    )
    p.add_argument("lessons", nargs="*", metavar="LESSON", help="only these lessons (e.g. 01)")
    _add_course_dirs(p, "notebooks")
    p.set_defaults(handler=run_generate)

    p = sub.add_parser("submit", help="grade a copy of your notebook and write HTML feedback")
    p.add_argument("notebook", help="a course notebook, e.g. notebooks/01_log_ratio.ipynb")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument(
        "--quick",
        action="store_true",
        help="only the autograded verdicts (seconds): do not run the notebook, no feedback page",
    )
    p.add_argument(
        "--timeout",
        type=_positive_int,
        default=None,
        help="seconds a cell may run before it is interrupted",
    )
    _add_course_dirs(p, "feedback")
    p.set_defaults(handler=run_submit)

    p = sub.add_parser("course", help="lay out a full nbgrader course directory for a class")
    p.add_argument("directory", help="the course directory to create")
    p.add_argument("--course-id", default=None, help="nbgrader course id (default: kto-course)")
    _add_course_dirs(p)
    p.set_defaults(handler=run_course)

    p = sub.add_parser("pretrain", help="rebuild the tiny GPT-2 reference model and tokenizer")
    p.add_argument("--out", default=None, help="folder to write (default: the shipped one)")
    p.add_argument("--seed", type=int, default=0, help="random seed (0 gives the shipped files)")
    p.add_argument("--steps", type=_positive_int, default=None, help="pretraining steps (400)")
    p.set_defaults(handler=run_pretrain)

    p = sub.add_parser(
        "train",
        help="KTO fine-tune of the tiny GPT-2; prints a JSON summary",
        description="KTO fine-tune of the tiny GPT-2 from the shipped reference; prints a JSON "
        "summary. One option per field of kto_course.train.KTOConfig.",
    )
    p.add_options = _add_train_options
    p.set_defaults(handler=run_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (ValueError, FileNotFoundError) as e:
        # Bad input from a person (a path, a lesson name, a device): say what, lose nothing.
        print(f"kto-course {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


# Commands whose work is done when their output is: the console script then ends the process at
# once. Python's own teardown of torch and transformers, module by module, takes ~1 s after the
# work (measured: `kto-course train` 8.7 -> 7.7 s wall).
QUICK_EXIT = ("train", "pretrain")


def entry() -> None:
    """The ``kto-course`` console script: ``main``, then the exit (``QUICK_EXIT``)."""
    code = main()
    if sys.argv[1:2] and sys.argv[1] in QUICK_EXIT:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    entry()
