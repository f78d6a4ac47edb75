"""Self-checks for the exercises: ``check_<exercise>(learner_fn, hidden=False)``.

A check calls the learner's function on ordinary and edge cases, compares it with the reference
in ``core`` / ``torch_ops``, and raises ``CheckFailed`` with a message that names the
misconception it looks like ("you averaged token log-probs instead of summing"). Messages never
print expected numbers a learner could paste back. ``hidden=True`` runs the graded variant:
other random cases and more edge cases (the notebooks call it from nbgrader's hidden tests).

``base`` holds what every lesson's checks share (the learner's call, the misconception
matcher, the seeded cases), then one module per lesson; every name is re-exported here, so that
a notebook writes ``checks.check_x(...)``.
"""

from kto_course.checks.base import (
    LEARNER_TIME_LIMIT,
    CheckFailed,
    as_float_array,
    brief_check_failures,
    call_learner,
    case_rng,
    close,
    diagnose,
    passed,
    per_example,
)
from kto_course.checks.l01_log_ratio import (
    check_dpo_loss,
    check_moved_toward,
    check_sequence_logps,
)
from kto_course.checks.l02_kl_reference_point import (
    check_mismatched_indices,
    check_z0_estimate,
)
from kto_course.checks.l03_value_and_loss import (
    check_batch_kto_loss,
    check_kto_losses,
    check_recommended_weights,
)
from kto_course.checks.l04_gradients_and_saturation import (
    check_autograd_grad,
    check_grad_through_z0,
    check_kto_loss_grad,
    check_largest_updates,
)
from kto_course.checks.l05_kto_vs_dpo import (
    check_balanced_order,
    check_dpo_batch_loss,
    check_flip_labels,
    check_pairs_to_unpaired,
)
from kto_course.checks.l06_tiny_gpt2_kto import (
    check_completion_logps,
    check_kto_microbatch_loss,
    check_kto_step,
)
from kto_course.checks.l07_graduate_to_trl import (
    check_from_trl_logs,
    check_trl_kwargs,
    check_z0_across_processes,
)

__all__ = [
    "EXERCISES",
    "LEARNER_TIME_LIMIT",
    "CheckFailed",
    "as_float_array",
    "call_learner",
    "case_rng",
    "close",
    "diagnose",
    "passed",
    "per_example",
    # lesson 01
    "check_sequence_logps",
    "check_moved_toward",
    "check_dpo_loss",
    # lesson 02
    "check_mismatched_indices",
    "check_z0_estimate",
    # lesson 03
    "check_kto_losses",
    "check_batch_kto_loss",
    "check_recommended_weights",
    # lesson 04
    "check_kto_loss_grad",
    "check_autograd_grad",
    "check_grad_through_z0",
    "check_largest_updates",
    # lesson 05
    "check_pairs_to_unpaired",
    "check_balanced_order",
    "check_dpo_batch_loss",
    "check_flip_labels",
    # lesson 06
    "check_completion_logps",
    "check_kto_microbatch_loss",
    "check_kto_step",
    # lesson 07
    "check_trl_kwargs",
    "check_from_trl_logs",
    "check_z0_across_processes",
]



def _exercise_tables() -> dict[str, dict]:
    """{lesson notebook name ("03_value_and_loss"): that lesson's EXERCISES table}.

    Every ``lNN_<lesson>.py`` module of this package that defines ``EXERCISES`` (name -> check,
    answer twins, allowed functions, hint) is found by its file name, so a new lesson's table
    is collected without editing this file.
    """
    import importlib
    import pkgutil
    import re

    tables = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if re.fullmatch(r"l\d\d_\w+", info.name):
            module = importlib.import_module(f"{__name__}.{info.name}")
            table = getattr(module, "EXERCISES", None)
            if table is not None:
                tables[info.name[1:]] = table
    return tables


# The exercises of every lesson, for the grader (kto_course/grading/verdicts.py).
EXERCISES = _exercise_tables()

# In Jupyter a failed check shows as one line, the course's message (a no-op elsewhere).
brief_check_failures()
