"""What a planted bug is: a wrong answer, the exercise it replaces, the words it must draw."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PlantedBug:
    exercise: str  # the exercise name: cells ex_<exercise> and test_<exercise>
    code: str  # the wrong answer, replacing the whole answer cell
    message: str  # words the failed check's message must contain
    why: str = ""  # the misconception, for people reading this file
