"""Planted wrong answers, one or more per exercise, used by the lesson and grading tests.

For each lesson (the notebook's stem), a list of ``PlantedBug``: ``code`` replaces the WHOLE
source of the answer cell whose grade_id is ``ex_<exercise>``; grading that notebook must lose
exactly the points of ``test_<exercise>``, and the failure message of that test cell must
contain ``message`` (case-insensitive): the misconception the check names. One module per
lesson, in teaching order, holds its lesson's ``BUGS``, e.g.
``PlantedBug("sequence_logps", "def sequence_logps(...): ...", "summing", "mean")``.
"""

from __future__ import annotations

from planted_bugs import (
    l01_log_ratio,
    l02_kl_reference_point,
    l03_value_and_loss,
    l04_gradients_and_saturation,
    l05_kto_vs_dpo,
    l06_tiny_gpt2_kto,
    l07_graduate_to_trl,
)
from planted_bugs.bug import PlantedBug

PLANTED_BUGS: dict[str, list[PlantedBug]] = {
    "01_log_ratio": l01_log_ratio.BUGS,
    "02_kl_reference_point": l02_kl_reference_point.BUGS,
    "03_value_and_loss": l03_value_and_loss.BUGS,
    "04_gradients_and_saturation": l04_gradients_and_saturation.BUGS,
    "05_kto_vs_dpo": l05_kto_vs_dpo.BUGS,
    "06_tiny_gpt2_kto": l06_tiny_gpt2_kto.BUGS,
    "07_graduate_to_trl": l07_graduate_to_trl.BUGS,
}

__all__ = ["PLANTED_BUGS", "PlantedBug"]
