"""Authoring and grading with nbgrader 0.9: what ``kto-course generate``, ``submit`` and
``course`` do, one module per job.

- ``notebooks``: the course checkout, its lessons, reading notebooks, markup and leak checks;
- ``nbgrader_app``: nbgrader's apps run in this process with the course's configuration;
- ``student_notebooks``: ``generate`` the student versions in notebooks/ from solutions/, and
  ``check`` them (``generate --check``);
- ``scoring``: ``grade`` submissions with nbgrader, ``submit`` for a learner, the report;
- ``course``: a full nbgrader course directory for a class.

Every function takes the folders it works on as arguments (the CLI finds them in the course
checkout), so the tests can point them at fixture lessons. The names below are the ones cli.py
and the tests use: ``grading.lessons(...)``, ``grading.grade(...)``.
"""

# Imported on first use (PEP 562): the worker and the grading kernel import
# ``kto_course.grading.worker`` / ``.lockdown``, and importing nbconvert and nbgrader here cost
# them ~3 s each (measured) for names they never use.
_NAMES = {
    "course": ("make_course",),
    "nbgrader_app": ("COURSE_ID", "DEFAULT_TIMEOUT", "FEEDBACK_PREPROCESSORS",
                     "HideHiddenTestTracebacks", "course_config"),
    "notebooks": ("MARKERS", "NotACheckout", "checkout", "find_checkout", "leaks", "lessons",
                  "markup_problems", "notebook_text", "read_notebook", "resolve_lessons",
                  "secret_lines"),
    "scoring": ("LEARNER", "WRITTEN_STATUS", "CellResult", "GradeResult", "format_report",
                "grade", "submit"),
    "student_notebooks": ("MANIFEST", "Generated", "LearnerEdits", "check", "check_report",
                          "generate", "generate_report", "orphans", "read_manifest",
                          "student_versions"),
}  # fmt: skip
_SUBMODULES = ("codec", "lockdown", "sandbox", "verdicts", "worker", *_NAMES)
_MODULE_OF = {name: module for module, names in _NAMES.items() for name in names}


def __getattr__(name: str):
    import importlib

    if name in _MODULE_OF:
        value = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    elif name in _SUBMODULES:  # grading.verdicts, grading.lockdown
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


__all__ = [
    "COURSE_ID",
    "DEFAULT_TIMEOUT",
    "FEEDBACK_PREPROCESSORS",
    "LEARNER",
    "MANIFEST",
    "MARKERS",
    "WRITTEN_STATUS",
    "CellResult",
    "GradeResult",
    "Generated",
    "LearnerEdits",
    "HideHiddenTestTracebacks",
    "NotACheckout",
    "check",
    "check_report",
    "checkout",
    "course_config",
    "find_checkout",
    "format_report",
    "generate",
    "generate_report",
    "grade",
    "leaks",
    "lessons",
    "make_course",
    "markup_problems",
    "notebook_text",
    "orphans",
    "read_manifest",
    "read_notebook",
    "resolve_lessons",
    "secret_lines",
    "student_versions",
    "submit",
]
