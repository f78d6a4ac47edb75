"""What this machine offers the course: a compute device, a thread count, a browser.

Used by the trainer (lesson 06), by ``kto-course doctor`` and by the browser tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

DEVICES = ("cuda", "mps", "cpu")
CHROMIUM_ENV = "KTO_COURSE_CHROMIUM"
_CHROMIUM_PATHS = ("/usr/lib/chromium/chromium", "/usr/bin/chromium", "/usr/bin/chromium-browser")


def available_device() -> str:
    """The best device present: cuda, then mps, then cpu."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def pick_device(requested: str | None = None) -> str:
    """The device to train on: ``requested`` if it is usable, else the best one present.

    Raises ValueError for an unknown name or a device this machine does not have, before any
    work starts.
    """
    import torch

    if requested is None or requested == "auto":
        return available_device()
    kind = requested.split(":")[0]
    if kind not in DEVICES:
        raise ValueError(f"unknown device {requested!r}: use one of auto, {', '.join(DEVICES)}.")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {requested!r} was asked for but this machine has no CUDA GPU "
            "(torch.cuda.is_available() is False). Use --device cpu, or auto."
        )
    if kind == "cuda" and ":" in requested:
        index = int(requested.split(":")[1])
        if index >= torch.cuda.device_count():
            raise ValueError(
                f"device {requested!r} does not exist: this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)."
            )
    if kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError("device 'mps' was asked for but Apple's MPS backend is not available.")
    return requested


def default_threads() -> int:
    """CPU threads for torch: the cores this process may use, at most 4.

    More threads than cores oversubscribe a small machine; past ~4 the tiny model gains nothing.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    return max(1, min(4, cores))


def find_chromium() -> str | None:
    """Path of a Chromium for browser tests: $KTO_COURSE_CHROMIUM, else Debian's, else on PATH."""
    override = os.environ.get(CHROMIUM_ENV)
    if override:
        return override if Path(override).is_file() else None
    for path in _CHROMIUM_PATHS:
        if Path(path).is_file():
            return path
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


QUICK_ENV = "KTO_COURSE_QUICK"


def nbgrader_executing() -> bool:
    """Whether nbgrader runs this kernel (autograde, or a learner's Validate): no browser will
    show its widgets (the feedback shows a demo as one line)."""
    return os.environ.get("NBGRADER_EXECUTION") in ("autograde", "validate")


def quick_mode() -> bool:
    """True when $KTO_COURSE_QUICK=1: notebooks that train run a short version (tests set it)."""
    return os.environ.get(QUICK_ENV, "") not in ("", "0")


@contextlib.contextmanager
def one_thread():
    """Run the block on one torch thread, then restore the setting (lessons 05 and 07).

    The tiny models' tensors are small: torch's thread pool only adds synchronisation, and on
    a busy 2-core machine that made a 0.3 s run take 15 s (measured).
    """
    import torch  # here, not at the top: ``kto-course doctor`` imports this module

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
