"""Planted wrong answers, one or more per exercise, used by the grading round-trip tests.

For each lesson (the notebook's stem), a list of ``PlantedBug``: ``code`` replaces the WHOLE
source of the answer cell whose grade_id is ``ex_<exercise>``; grading that notebook must lose
exactly the points of ``test_<exercise>``, and the failure message of that test cell must
contain ``message`` (case-insensitive): the misconception the check names.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PlantedBug:
    exercise: str  # the exercise name: cells ex_<exercise> and test_<exercise>
    code: str  # the wrong answer, replacing the whole answer cell
    message: str  # words the failed check's message must contain
    why: str = ""  # the misconception, for people reading this file


PLANTED_BUGS: dict[str, list[PlantedBug]] = {
    # "01_log_ratio": [PlantedBug("sequence_logprob", "def sequence_logprob(...): ...", "summing")],
}
