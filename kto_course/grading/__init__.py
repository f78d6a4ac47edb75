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

from kto_course.grading.course import make_course
from kto_course.grading.nbgrader_app import (
    COURSE_ID,
    DEFAULT_TIMEOUT,
    FEEDBACK_PREPROCESSORS,
    HideHiddenTestTracebacks,
    course_config,
)
from kto_course.grading.notebooks import (
    MARKERS,
    NotACheckout,
    checkout,
    find_checkout,
    leaks,
    lessons,
    markup_problems,
    notebook_text,
    read_notebook,
    resolve_lessons,
    secret_lines,
)
from kto_course.grading.scoring import (
    LEARNER,
    WRITTEN_STATUS,
    CellResult,
    GradeResult,
    format_report,
    grade,
    submit,
)
from kto_course.grading.student_notebooks import (
    MANIFEST,
    Generated,
    LearnerEdits,
    check,
    check_report,
    generate,
    generate_report,
    orphans,
    read_manifest,
    student_versions,
)

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
