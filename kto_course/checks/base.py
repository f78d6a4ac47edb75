"""What every lesson's checks share: the learner's call, the result's shape, the verdict.

A check calls the learner's function through ``call_learner`` (a raise, an endless loop or a
non-callable becomes a clear ``CheckFailed``), reads the result with ``as_float_array`` (None,
NaN, inf and wrong shapes named), compares it with the reference in ``core`` / ``torch_ops``,
and on a mismatch raises through ``diagnose``: the message of the first misconception whose
wrong answer the learner's result reproduces. Cases come from ``case_rng``, one seed per lesson,
exercise and mode.
"""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager

import numpy as np

# Seconds one call of a learner's function may take; the reference takes milliseconds.
LEARNER_TIME_LIMIT = 10


class CheckFailed(AssertionError):
    """An exercise check failed; the message says which misconception it looks like."""


def brief_check_failures() -> bool:
    """In IPython/Jupyter, show a ``CheckFailed`` as one line, ``CheckFailed: <message>``.

    Without it the learner sees a traceback through the checker's own frames (its file paths,
    its ``expected = ...`` lines) above the one line that matters. The cell still ends in an
    error output (ename ``CheckFailed``): nbgrader scores it 0, nbclient and the
    ``raises-exception`` tag behave as before. Called once by ``checks/__init__.py``; a no-op
    outside IPython, or when something else already handles exceptions there. Returns whether
    the handler is installed.
    """
    ipython = sys.modules.get("IPython")  # never imported here: not loaded, not in IPython
    shell = ipython.get_ipython() if ipython and hasattr(ipython, "get_ipython") else None
    if shell is None or not hasattr(shell, "set_custom_exc"):
        return False
    if getattr(shell, "custom_exceptions", ()) not in ((), (CheckFailed,)):
        return False  # someone else's handler: leave it

    def show_message_only(shell, etype, value, tb, tb_offset=None):
        stb = [f"\x1b[0;31m{etype.__name__}\x1b[0m: {value}"]
        shell._showtraceback(etype, value, stb)  # ipykernel turns this into the error output
        return stb

    shell.set_custom_exc((CheckFailed,), show_message_only)
    return True


class LearnerTimeout(Exception):
    """The learner's function ran past ``LEARNER_TIME_LIMIT`` (raised by ``time_limit``)."""


@contextmanager
def time_limit(seconds: float):
    # SIGALRM only works in the main thread of the main interpreter (a Jupyter kernel's cells
    # run there); elsewhere the grader's per-cell timeout is the backstop.
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield
        return

    def on_alarm(signum, frame):
        raise LearnerTimeout

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def not_implemented(name: str) -> CheckFailed:
    """The failure for an exercise the learner has not started: the template's raise is there."""
    return CheckFailed(
        f"{name} still raises NotImplementedError: replace that line with your code."
    )


def call_learner(fn, *args, name: str | None = None, **kwargs):
    """Call the learner's ``fn``; turn a raise, a hang or a non-callable into ``CheckFailed``."""
    name = name or getattr(fn, "__name__", "your function")
    if not callable(fn):
        raise CheckFailed(
            f"{name} is not a function (got {type(fn).__name__}): define it with def."
        )
    try:
        with time_limit(LEARNER_TIME_LIMIT):
            return fn(*args, **kwargs)
    except NotImplementedError:
        raise not_implemented(name) from None
    except LearnerTimeout:
        raise CheckFailed(
            f"{name} ran for more than {LEARNER_TIME_LIMIT} s on a small input: is there a loop "
            "that never ends?"
        ) from None
    except CheckFailed:
        raise
    except Exception as e:  # the learner's bug, reported in the course's words
        raise CheckFailed(f"{name} raised {type(e).__name__}: {e}") from None


def call_and_backprop(fn, args, wrt, name: str):
    """Call the learner's loss function, then ``backward()`` on what it returned.

    ``(value, requires_grad, grads, backward_error)``: the value (detached), whether it carried
    a gradient, the ``.grad`` of ``args[i]`` for each ``i`` in ``wrt`` (None where none reached
    it) and what a failed ``backward()`` raised (else None). The same with the learner's own
    function in the notebook and with the grader's ``RemoteFunction``, which runs the backward
    pass in its worker process (``fn.call_backward``).
    """
    remote = getattr(fn, "call_backward", None)
    if remote is not None and callable(fn):
        return call_learner(remote, list(wrt), *args, name=name)
    value = call_learner(fn, *args, name=name)
    requires = bool(getattr(value, "requires_grad", False))
    grads, error = [None] * len(wrt), None
    if requires:
        try:
            with time_limit(LEARNER_TIME_LIMIT):
                value.backward()
        except Exception as e:  # noqa: BLE001: the learner's graph, reported
            error = f"{type(e).__name__}: {e}"
        grads = [getattr(args[i], "grad", None) for i in wrt]
    if hasattr(value, "detach"):
        value = value.detach()
    return value, requires, grads, error


def call_and_read_modules(fn, args, name: str):
    """Call the learner's function on ``args``, some of them ``torch.nn.Module`` s (a training
    step that calls ``backward()`` itself, lesson 06).

    ``(value, states)``: the value (detached) and, for each argument, None if it is not a
    module, else ``{"grads": {parameter name: its .grad or None}, "changed": [names of the
    parameters the call changed]}``. The same with the learner's own function in the notebook
    and with the grader's ``RemoteFunction``, whose modules live in its worker process
    (``fn.call_modules``).
    """
    from kto_course.grading.worker import module_parameters, module_report, module_snapshot

    remote = getattr(fn, "call_modules", None)
    if remote is not None and callable(fn):
        value, states = call_learner(remote, *args, name=name)
    else:
        before = module_snapshot(args)
        value = call_learner(fn, *args, name=name)
        states = module_report(args, before)
    if hasattr(value, "detach"):
        value = value.detach()
    out = []
    for i, arg in enumerate(args):
        state = states[i] if isinstance(states, list) and i < len(states) else None
        out.append(None if module_parameters(arg) is None else _module_state(state, name))
    return value, out


def _module_state(state, name: str) -> dict:
    """A module's state from ``module_report``, its types checked (when graded it comes from
    the learner's process)."""
    import torch

    grads = state.get("grads") if isinstance(state, dict) else None
    changed = state.get("changed") if isinstance(state, dict) else None
    if (not isinstance(grads, dict) or not isinstance(changed, (list, tuple))
            or not all(g is None or isinstance(g, torch.Tensor) for g in grads.values())):
        raise CheckFailed(f"{name}: the grader could not read what it did to the models.")
    return {"grads": grads, "changed": [str(n) for n in changed]}


def has_gradient(grads: dict) -> bool:
    """Whether any of a module's parameters holds a nonzero ``.grad`` (``{name: grad|None}``)."""
    return any(g is not None and bool((g != 0).any()) for g in grads.values())


def gradient_distance(got: dict, want: dict) -> float:
    """Relative L2 distance over all parameters of the gradients ``got`` from ``want`` (both
    ``{name: tensor or None}``, None counting as 0); inf for NaN or a wrong shape."""
    import torch

    num = den = 0.0
    for name, w in want.items():
        g = got.get(name)
        if g is None and w is None:
            continue
        g = torch.zeros_like(w, dtype=torch.float64) if g is None else g.double()
        w = torch.zeros_like(g) if w is None else w.double()
        if g.shape != w.shape:
            return float("inf")
        num += float(((g - w) ** 2).sum())
        den += float((w**2).sum())
    return (num / max(den, 1e-300)) ** 0.5 if np.isfinite(num) else float("inf")


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


def per_example(value, name: str, shape: tuple) -> np.ndarray:
    """``as_float_array`` with a clearer message when a batch mean comes back instead of (B,)."""
    got = as_float_array(value, name)
    if got.ndim == 0 and len(shape) == 1:
        raise CheckFailed(
            f"{name} returned a single number: return one value per example, shape (B,). "
            "Averaging over the batch is a later step, not this function's job."
        )
    return as_float_array(got, name, shape)


def returned_nan(value) -> bool:
    """Whether a raw result (not yet through ``as_float_array``) holds a NaN: for the checks
    that name a more specific cause of the NaN than ``as_float_array`` can."""
    if value is None:
        return False
    try:
        return bool(np.isnan(np.asarray(value, dtype=np.float64)).any())
    except (TypeError, ValueError):
        return False  # not numbers: as_float_array names that


def close(a, b, rtol: float = 1e-6, atol: float = 1e-9) -> bool:
    return bool(np.allclose(a, b, rtol=rtol, atol=atol))


def passed(name: str, n_cases: int) -> None:
    """The message a learner sees when a check passes."""
    print(f"✓ {name}: all {n_cases} checks passed.")


def diagnose(
    got,
    expected,
    suspects,
    otherwise: str,
    *,
    name: str = "",
    rtol: float = 1e-6,
    atol: float = 1e-9,
) -> None:
    """Raise ``CheckFailed`` naming the first misconception whose answer matches ``got``.

    ``suspects`` lists ``(wrong_answer, message)`` pairs, most specific first. A wrong answer of
    another shape, or one that happens to equal the right answer ``expected`` on this case,
    proves nothing and is skipped; when no suspect matches, ``otherwise`` is the message.
    ``name``, when given, opens the message ("name: ...").
    """
    got = np.asarray(got, dtype=np.float64)
    message = otherwise
    for wrong, words in suspects:
        wrong = np.asarray(wrong, dtype=np.float64)
        if (
            wrong.shape == got.shape
            and not close(wrong, expected, rtol, atol)
            and close(got, wrong, rtol, atol)
        ):
            message = words
            break
    raise CheckFailed(f"{name}: {message}" if name else message)


def case_rng(lesson: int, exercise: int, hidden: bool) -> np.random.Generator:
    """The generator of one exercise's cases: lesson 03, exercise 2 draws from seed 2 * 32 + 0
    (visible) or + 1 (hidden).

    Visible and hidden checks draw different cases, so passing the visible one by pasting
    outputs cannot pass the hidden one; every exercise has its own seed.
    """
    return np.random.default_rng(2 * (10 * lesson + exercise) + int(hidden))


# Labelled batches for the KTO loss and its gradient (lessons 03, 04)


def labelled_batch(rng: np.random.Generator, n_D: int, n_U: int, beta=None, z0=None):
    """A random labelled batch: r, z0, desirable, beta, lambda_D, lambda_U.

    beta < 1, z0 > 0 and lambda_D != lambda_U, so that forgetting beta, ignoring z0 or swapping
    the weights always changes the answer.
    """
    desirable = np.array([True] * n_D + [False] * n_U)
    rng.shuffle(desirable)
    r = rng.normal(1.0, 6.0, desirable.size)
    z0 = float(rng.uniform(0.5, 4.0)) if z0 is None else z0
    beta = float(rng.uniform(0.1, 0.8)) if beta is None else beta
    lambda_D = float(rng.uniform(0.6, 1.0))
    lambda_U = lambda_D + float(rng.uniform(0.4, 1.0))
    if rng.random() < 0.5:
        lambda_D, lambda_U = lambda_U, lambda_D
    return r, z0, desirable, beta, lambda_D, lambda_U


def mismatched_r(rng: np.random.Generator, size: int, z0_sign: int) -> np.ndarray:
    """Log-ratios of a batch's mismatched pairs whose raw mean has the sign ``z0_sign``."""
    r = rng.normal(0.0, 2.0, size)
    r += z0_sign * (abs(r.mean()) + rng.uniform(0.5, 2.0)) - r.mean()
    return r


def describe_batch(r, z0, desirable, beta, lambda_D, lambda_U) -> str:
    """A labelled batch in words, for a message that names no misconception."""
    n_D = int(np.sum(desirable))
    return (
        f"(a batch of {len(desirable)} with {n_D} desirable, z0 = {z0:.3g}, beta = {beta:.3g}, "
        f"lambda_D = {lambda_D:.3g}, lambda_U = {lambda_U:.3g})"
    )


def compare_on_labelled_batches(
    fn,
    name: str,
    rng,
    sizes,
    reference,
    suspects,
    what: str,
    far_nan: str,
    far_wrong: str,
    atol: float = 1e-9,
) -> None:
    """The check of a per-example function of a labelled batch (the KTO loss, its gradient).

    On one ``labelled_batch`` per (n_D, n_U) in ``sizes``, ``fn(*case)`` must equal
    ``reference(*case)``: a mismatch names the misconception ``suspects(*case)`` finds, else
    says which batch disagrees with ``what``. Then far from z0 (|beta * delta| in the
    thousands), where a naive exp(x) / (1 + exp(x)) overflows to inf / inf = NaN: ``far_nan``
    is the message for a NaN there, ``far_wrong`` for a wrong number.
    """
    cases = [labelled_batch(rng, n_D, n_U) for n_D, n_U in sizes]
    for case in cases:
        out = as_float_array(call_learner(fn, *case, name=name), name, shape=case[0].shape)
        right = reference(*case)
        if not close(out, right, atol=atol):
            otherwise = f"{name} disagrees with {what} {describe_batch(*case)}."
            diagnose(out, right, suspects(*case), otherwise, atol=atol)
    r = np.array([-5000.0, 5000.0, -5000.0, 5000.0])
    d = np.array([True, True, False, False])
    out = call_learner(fn, r, 1.0, d, 1.0, 1.0, 1.0, name=name)
    if returned_nan(out):
        raise CheckFailed(far_nan)
    out = as_float_array(out, name, shape=r.shape)
    if not close(out, reference(r, 1.0, d, 1.0, 1.0, 1.0), atol=1e-6):
        raise CheckFailed(far_wrong)
    passed(name, len(cases) + 1)
