"""Self-checks for the exercises: ``check_<exercise>(learner_fn, hidden=False)``.

A check calls the learner's function on ordinary and edge cases, compares it with the reference
in ``core`` / ``torch_ops``, and raises ``CheckFailed`` with a message that names the
misconception it looks like ("you averaged token log-probs instead of summing"). Messages never
print expected numbers a learner could paste back. ``hidden=True`` runs the graded variant:
other random cases and more edge cases (the notebooks call it from nbgrader's hidden tests).

The learner's function always runs through ``call_learner``: an exception, an endless loop or a
NaN becomes a clear ``CheckFailed`` instead of a crash or a hang.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

import numpy as np

from kto_course import core

# Seconds one call of a learner's function may take; the reference takes milliseconds.
LEARNER_TIME_LIMIT = 10


class CheckFailed(AssertionError):
    """An exercise check failed; the message says which misconception it looks like."""


class _LearnerTimeout(Exception):
    pass


@contextmanager
def _time_limit(seconds: float):
    # SIGALRM only works in the main thread of the main interpreter (a Jupyter kernel's cells
    # run there); elsewhere the grader's per-cell timeout is the backstop.
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield
        return

    def on_alarm(signum, frame):
        raise _LearnerTimeout

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def call_learner(fn, *args, name: str | None = None, **kwargs):
    """Call the learner's ``fn``; turn a raise, a hang or a non-callable into ``CheckFailed``."""
    name = name or getattr(fn, "__name__", "your function")
    if not callable(fn):
        raise CheckFailed(
            f"{name} is not a function (got {type(fn).__name__}): define it with def."
        )
    try:
        with _time_limit(LEARNER_TIME_LIMIT):
            return fn(*args, **kwargs)
    except NotImplementedError:
        raise CheckFailed(
            f"{name} still raises NotImplementedError: replace that line with your code."
        ) from None
    except _LearnerTimeout:
        raise CheckFailed(
            f"{name} ran for more than {LEARNER_TIME_LIMIT} s on a small input: is there a loop "
            "that never ends?"
        ) from None
    except CheckFailed:
        raise
    except Exception as e:  # the learner's bug, reported in the course's words
        raise CheckFailed(f"{name} raised {type(e).__name__}: {e}") from None


def as_float_array(value, name: str, shape: tuple | None = None) -> np.ndarray:
    """The learner's result as a float array: reject None, NaN and wrong shapes clearly."""
    if value is None:
        raise CheckFailed(f"{name} returned None: did you forget the return statement?")
    try:
        if hasattr(value, "detach"):  # a torch tensor
            value = value.detach().cpu().numpy()
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise CheckFailed(f"{name} returned {type(value).__name__}, not numbers.") from None
    if shape is not None and a.shape != tuple(shape):
        raise CheckFailed(
            f"{name} returned shape {a.shape} where {tuple(shape)} was expected: one value per "
            "example (check which axis you reduced over)."
        )
    if np.isnan(a).any():
        raise CheckFailed(f"{name} returned NaN: look for 0 * inf, log(0) or 0/0.")
    if np.isinf(a).any():
        raise CheckFailed(
            f"{name} returned inf: an exp() overflowed? Use the stable form of the function."
        )
    return a


def close(a, b, rtol: float = 1e-6, atol: float = 1e-9) -> bool:
    return bool(np.allclose(a, b, rtol=rtol, atol=atol))


def passed(name: str, n_cases: int) -> None:
    """The message a learner sees when a check passes."""
    print(f"✓ {name}: all {n_cases} checks passed.")


def _rng(hidden: bool, lesson_salt: int) -> np.random.Generator:
    # Visible and hidden checks draw different cases, so passing the visible one by pasting
    # outputs cannot pass the hidden one.
    return np.random.default_rng(lesson_salt * 2 + int(hidden))


# =============================================================================================
# Lesson 01 checks (owned by the lessons 01-02 author)
# =============================================================================================

# =============================================================================================
# Lesson 02 checks (owned by the lessons 01-02 author)
# =============================================================================================

# =============================================================================================
# Lesson 03 checks (owned by the lessons 03-04 author)
# =============================================================================================

# =============================================================================================
# Lesson 04 checks (owned by the lessons 03-04 author)
# =============================================================================================

# =============================================================================================
# Lesson 05 checks (owned by the lesson 05 author)
# =============================================================================================

# =============================================================================================
# Lesson 06 checks (owned by the lesson 06 author)
# =============================================================================================
