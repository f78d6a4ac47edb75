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


def _diagnose(name: str, got: np.ndarray, expected, suspects, otherwise: str) -> None:
    """Raise ``CheckFailed`` naming the first misconception whose answer matches ``got``.

    ``suspects`` lists ``(wrong_answer, message)`` pairs, most specific first. A wrong answer
    that happens to equal the right one on this case proves nothing and is skipped; when no
    suspect matches, ``otherwise`` is the message. Used by the checks of lessons 01 and 02.
    """
    for wrong, message in suspects:
        wrong = np.asarray(wrong, dtype=np.float64)
        if wrong.shape == got.shape and not close(wrong, expected) and close(got, wrong):
            raise CheckFailed(f"{name}: {message}")
    raise CheckFailed(f"{name}: {otherwise}")


def _per_example(value, name: str, shape: tuple) -> np.ndarray:
    """``as_float_array`` with a clearer message when a batch mean comes back instead of (B,)."""
    got = as_float_array(value, name)
    if got.ndim == 0 and len(shape) == 1:
        raise CheckFailed(
            f"{name} returned a single number: return one value per example, shape (B,). "
            "Averaging over the batch is a later step, not this function's job."
        )
    return as_float_array(got, name, shape)


def _token_case(rng: np.random.Generator, batch: int, length: int):
    """Token log-probs (B, T) and a completion mask: prompt tokens, completion tokens, padding."""
    token_logps = -rng.exponential(1.5, size=(batch, length))
    mask = np.zeros((batch, length), dtype=bool)
    for row in range(batch):
        prompt = int(rng.integers(1, length // 2))
        completion = int(rng.integers(2, length - prompt + 1))
        mask[row, prompt : prompt + completion] = True
    return token_logps, mask


def check_sequence_logprob(sequence_logprob, hidden: bool = False) -> None:
    """Exercise 01.1: log pi(y|x) as the SUM of token log-probs over the completion tokens."""
    name = "sequence_logprob"
    rng = _rng(hidden, 101)
    cases = [_token_case(rng, b, t) for b, t in ((3, 10), (4, 12), (2, 7))]
    if hidden:
        cases.append(_token_case(rng, 6, 40))
        # Padding filled with 0 (as some code does): summing everything then adds only the prompt.
        token_logps, mask = _token_case(rng, 3, 9)
        after = np.cumsum(mask, axis=-1) == mask.sum(-1, keepdims=True)
        token_logps[after & ~mask] = 0.0
        cases.append((token_logps, mask))
        # One long example whose completion runs to the last token (no padding at all).
        token_logps = -rng.exponential(0.2, size=(1, 300))
        mask = np.zeros((1, 300), dtype=bool)
        mask[0, 20:] = True
        cases.append((token_logps, mask))
    for token_logps, mask in cases:
        expected = core.sequence_logprob(token_logps, mask)
        # Copies: a function that edits its inputs in place must not change what we compare.
        result = call_learner(sequence_logprob, token_logps.copy(), mask.copy(), name=name)
        got = _per_example(result, name, expected.shape)
        if close(got, expected):
            continue
        first = mask.argmax(-1)
        from_first = np.arange(mask.shape[-1]) >= first[:, None]
        with np.errstate(all="ignore"):
            suspects = [
                (
                    expected / mask.sum(-1),
                    "you averaged token log-probs instead of summing: log pi(y|x) is the SUM "
                    "over the completion tokens, with no division by the length.",
                ),
                (
                    token_logps.mean(-1),
                    "you averaged token log-probs over all tokens instead of summing: sum, and "
                    "only where completion_mask is True.",
                ),
                (
                    token_logps.sum(-1),
                    "prompt tokens are included in the sum (and padding too): keep only the "
                    "tokens where completion_mask is True.",
                ),
                (
                    np.where(mask, 0.0, token_logps).sum(-1),
                    "you summed the tokens where completion_mask is False (prompt and padding): "
                    "sum the tokens where it is True.",
                ),
                (
                    np.where(from_first, token_logps, 0.0).sum(-1),
                    "padding tokens are included in the sum: the completion ends where "
                    "completion_mask turns False again.",
                ),
                (
                    np.exp(expected),
                    "you returned a probability (a product of token probabilities): return its "
                    "log, the sum of the token log-probs.",
                ),
            ]
        _diagnose(
            name,
            got,
            expected,
            suspects,
            "the result is not the sum of the token log-probs over the completion tokens. "
            "Keep the tokens where completion_mask is True and sum along the last axis.",
        )
    passed(name, len(cases))


def check_log_ratio(log_ratio, hidden: bool = False) -> None:
    """Exercise 01.2: the implied reward r = log pi_theta(y|x) - log pi_ref(y|x) (paper Eq. 5)."""
    name = "log_ratio"
    rng = _rng(hidden, 102)
    cases = []
    for size in (5, 8):
        logp_ref = -rng.uniform(2.0, 40.0, size)
        logp_theta = np.minimum(logp_ref + rng.normal(0.0, 2.0, size), -0.1)
        cases.append((logp_theta, logp_ref))
    if hidden:
        cases.append((np.float64(-3.0), np.float64(-5.5)))  # one example, as plain numbers
        logp_ref = -rng.uniform(500.0, 2000.0, 6)  # long completions: large sums
        cases.append((logp_ref + rng.normal(0.0, 5.0, 6), logp_ref))
    for logp_theta, logp_ref in cases:
        expected = np.asarray(core.log_ratio(logp_theta, logp_ref))
        result = call_learner(log_ratio, np.copy(logp_theta), np.copy(logp_ref), name=name)
        got = _per_example(result, name, expected.shape)
        if close(got, expected):
            continue
        with np.errstate(all="ignore"):
            suspects = [
                (
                    -expected,
                    "you computed log pi_ref - log pi_theta: r is policy minus reference, "
                    "positive when the policy made y MORE likely than the reference did.",
                ),
                (
                    np.abs(expected),
                    "you took the absolute value: r keeps its sign, negative when the policy "
                    "made y less likely than the reference did.",
                ),
                (
                    np.asarray(logp_theta) / np.asarray(logp_ref),
                    "you divided the log-probs: the log of a ratio is a DIFFERENCE of logs.",
                ),
                (
                    np.exp(expected),
                    "you returned the probability ratio pi_theta / pi_ref: r is its log.",
                ),
            ]
        _diagnose(
            name, got, expected, suspects, "r should be log pi_theta(y|x) - log pi_ref(y|x)."
        )
    passed(name, len(cases))


def check_dpo_loss(dpo_loss, hidden: bool = False) -> None:
    """Exercise 01.3: DPO's loss -log sigmoid(beta * (r_w - r_l)), computed stably."""
    name = "dpo_loss"
    rng = _rng(hidden, 103)
    unstable = (
        f"{name}: for a pair the policy gets badly wrong (beta * margin = -800) your loss is not "
        "the right finite number: sigmoid(-800) underflows to 0 and log(0) = -inf, and clipping "
        "only hides it. Compute log sigmoid stably: core.log_sigmoid(x), or -np.logaddexp(0, -x)."
    )
    cases = [(rng.normal(0.0, 6.0, 6), rng.normal(0.0, 6.0, 6), beta) for beta in (0.1, 0.5)]
    if hidden:
        cases += [(rng.normal(0.0, 30.0, 9), rng.normal(0.0, 30.0, 9), beta) for beta in (1.0, 2)]
        cases.append((np.array([3.0]), np.array([3.0]), 0.3))  # a tie: margin 0
    for r_w, r_l, beta in cases:
        expected = core.dpo_loss(r_w, r_l, beta)
        result = call_learner(dpo_loss, r_w.copy(), r_l.copy(), beta, name=name)
        got = _per_example(result, name, expected.shape)
        if close(got, expected):
            continue
        margin = r_w - r_l
        # Right wherever beta * margin is moderate, wrong only far on the losing side: unstable.
        moderate = beta * margin > -30.0
        if moderate.any() and close(got[moderate], expected[moderate]):
            raise CheckFailed(unstable)
        suspects = [
            (
                core.dpo_loss(r_l, r_w, beta),
                "you swapped the preferred and rejected completions: the margin is r_w - r_l "
                "(the winner's log-ratio minus the loser's).",
            ),
            (
                -expected,
                "your loss is negative: the loss is MINUS log sigmoid(beta * margin), which is "
                "never negative.",
            ),
            (
                core.dpo_loss(r_w, r_l, 1.0),
                "beta is missing: DPO multiplies the margin by beta before the sigmoid.",
            ),
            (
                beta * core.dpo_loss(r_w, r_l, 1.0),
                "beta multiplies the margin inside the sigmoid, not the loss outside it.",
            ),
            (
                core.sigmoid(-beta * margin),
                "you left out the log: the loss is -log sigmoid(beta * margin).",
            ),
            (
                -core.sigmoid(beta * margin),
                "you left out the log: the loss is -log sigmoid(beta * margin).",
            ),
        ]
        _diagnose(
            name,
            got,
            expected,
            suspects,
            "the result is not -log sigmoid(beta * (r_w - r_l)) for each pair.",
        )
    # A pair the policy gets badly wrong: beta * margin = -800. Naive -log(sigmoid(x)) overflows.
    r_w, r_l = np.array([0.0, 0.0, 500.0]), np.array([0.0, 800.0, 0.0])
    expected = core.dpo_loss(r_w, r_l, 1.0)
    result = call_learner(dpo_loss, r_w.copy(), r_l.copy(), 1.0, name=name)
    if result is not None:
        try:
            finite = np.isfinite(np.asarray(result, dtype=np.float64)).all()
        except (TypeError, ValueError):
            finite = True  # as_float_array below names the problem
        if not finite:
            raise CheckFailed(unstable)
    got = _per_example(result, name, expected.shape)
    if not close(got, expected):
        raise CheckFailed(unstable)
    passed(name, len(cases) + 1)


def _moved_case(rng: np.random.Generator, k: int):
    # Redraw until the right answer differs from every wrong one (and, for K > 3, the wrong ones
    # from each other), so that each misconception gets its own message.
    while True:
        logp_ref = -rng.uniform(5.0, 30.0, k)
        logp_theta = logp_ref + rng.normal(0.0, 3.0, k)
        r = logp_theta - logp_ref
        best = int(np.argmax(r))
        wrong = [int(np.argmax(logp_theta)), int(np.argmax(logp_ref)), int(np.argmin(r))]
        if best in wrong or (k > 3 and len(set(wrong + [best + 1])) < 4):
            continue
        return logp_theta, logp_ref


def check_moved_toward(moved_toward, hidden: bool = False) -> None:
    """Exercise 01.4: which completion did the policy move toward? The one with the largest r."""
    name = "moved_toward"
    rng = _rng(hidden, 104)
    cases = [_moved_case(rng, k) for k in ((4, 5, 6) if not hidden else (4, 5, 7, 9, 12, 3))]
    for logp_theta, logp_ref in cases:
        r = np.asarray(core.log_ratio(logp_theta, logp_ref))
        expected = float(np.argmax(r))
        result = call_learner(moved_toward, logp_theta.copy(), logp_ref.copy(), name=name)
        got = as_float_array(result, name, shape=())
        if got == expected:
            continue
        if got != np.round(got):
            raise CheckFailed(
                f"{name} returned {float(got):.3g}, which is not a position: return the INDEX "
                "of the completion (a whole number from 0 to K-1), e.g. with np.argmax."
            )
        suspects = [
            (
                np.argmax(logp_theta),
                "you picked the completion the policy finds most likely. The question is which "
                "one it MOVED TOWARD relative to the reference: the largest r, not the largest "
                "log pi_theta.",
            ),
            (
                np.argmax(logp_ref),
                "you picked the completion the reference finds most likely: compare the policy "
                "with the reference through r = log pi_theta - log pi_ref.",
            ),
            (
                np.argmin(r),
                "you picked the completion the policy moved AWAY from (the smallest r): take "
                "the largest r.",
            ),
            (expected + 1, "Python counts positions from 0: the first completion is index 0."),
        ]
        _diagnose(
            name, got, expected, suspects, "that is not the completion with the largest r."
        )
    passed(name, len(cases))

# =============================================================================================
# Lesson 02 checks (owned by the lessons 01-02 author)
# =============================================================================================

_OWN_COMPLETION = "an example is paired with its own completion"


def check_mismatched_indices(mismatched_indices, hidden: bool = False) -> None:
    """Exercise 02.1: TRL's cyclic shift (x_i gets y_{i-1}); a ValueError for batch size 1."""
    name = "mismatched_indices"
    sizes = (2, 3, 4, 5, 8) if not hidden else (2, 3, 6, 7, 9, 16, 31, 64)
    for n in sizes:
        expected = core.mismatched_indices(n).astype(np.float64)
        got = _per_example(call_learner(mismatched_indices, n, name=name), name, (n,))
        if close(got, expected):
            continue
        positions = np.arange(n)
        if close(got, positions[::-1]):
            raise CheckFailed(
                f"{name}: you reversed the batch. That works for even sizes, but for an odd "
                f"batch size (here {n}) the middle example is paired with its own completion. "
                "Use a cyclic shift."
            )
        if (got != np.round(got)).any() or (got < 0).any() or (got >= n).any():
            raise CheckFailed(
                f"{name}: with batch size {n} some entries are not positions 0..{n - 1}. "
                "Wrap around with % batch_size (so x_0 gets the last completion)."
            )
        if (got == positions).any():
            i = int(np.flatnonzero(got == positions)[0])
            raise CheckFailed(
                f"{name}: {_OWN_COMPLETION} (batch size {n}: x_{i} gets y_{i}). That is the "
                "labelled pair, not a mismatched one."
            )
        if close(got, core.mismatched_indices(n, convention="halos")):
            raise CheckFailed(
                f"{name}: you shifted the other way (x_i gets y_(i+1), HALOs' convention). "
                "This exercise follows TRL: x_i gets y_(i-1), and x_0 gets the last completion."
            )
        if len(set(got.tolist())) < n:
            raise CheckFailed(
                f"{name}: two prompts share one completion (batch size {n}): every completion "
                "should be used exactly once."
            )
        raise CheckFailed(
            f"{name}: for batch size {n} this pairing is not the cyclic shift x_i -> y_(i-1)."
        )
    for n in (1,) if not hidden else (1, 0):
        try:
            with _time_limit(LEARNER_TIME_LIMIT):
                mismatched_indices(n)
        except ValueError:
            continue
        except NotImplementedError:
            raise CheckFailed(
                f"{name} still raises NotImplementedError: replace that line with your code."
            ) from None
        except _LearnerTimeout:
            raise CheckFailed(
                f"{name}({n}) never returned: is there a loop that never ends?"
            ) from None
        except Exception as e:
            raise CheckFailed(
                f"{name}({n}) raised {type(e).__name__}: raise a ValueError instead, with a "
                "message saying why a batch of size < 2 cannot estimate z0."
            ) from None
        raise CheckFailed(
            f"{name}({n}) returned instead of raising: a batch size < 2 has no mismatched pair "
            "(the only completion is the example's own). Raise a ValueError that says so."
        )
    passed(name, len(sizes) + (2 if hidden else 1))


def check_mismatched_log_ratios(mismatched_log_ratios, hidden: bool = False) -> None:
    """Exercise 02.2: r of the mismatched pairs from matrices logp[i, j] = log pi(y_j | x_i)."""
    name = "mismatched_log_ratios"
    rng = _rng(hidden, 202)
    sizes = (4, 5, 3) if not hidden else (2, 7, 16)
    for n in sizes:
        logp_ref = -rng.uniform(5.0, 40.0, (n, n))
        logp_theta = np.minimum(logp_ref + rng.normal(0.3, 1.5, (n, n)), -0.1)
        rows, idx = np.arange(n), core.mismatched_indices(n)
        expected = np.asarray(core.log_ratio(logp_theta[rows, idx], logp_ref[rows, idx]))
        result = call_learner(mismatched_log_ratios, logp_theta.copy(), logp_ref.copy(), name=name)
        got = _per_example(result, name, (n,))
        if close(got, expected):
            continue
        halos = core.mismatched_indices(n, convention="halos")
        suspects = [
            (
                np.diag(logp_theta) - np.diag(logp_ref),
                f"you used the diagonal: {_OWN_COMPLETION}. Those are the labelled pairs; z0 "
                "needs the mismatched ones, logp[i, idx[i]] with idx = "
                "core.mismatched_indices(B).",
            ),
            (
                logp_theta[idx, rows] - logp_ref[idx, rows],
                "you read logp[idx[i], i]: rows are prompts and columns completions, "
                "logp[i, j] = log pi(y_j | x_i), so x_i's mismatched pair is logp[i, idx[i]].",
            ),
            (
                logp_theta[rows, halos] - logp_ref[rows, halos],
                "you shifted the other way (x_i gets y_(i+1)): use core.mismatched_indices(B), "
                "TRL's x_i gets y_(i-1).",
            ),
            (
                -expected,
                "you computed log pi_ref - log pi_theta: r is policy minus reference.",
            ),
            (
                logp_theta[rows, idx],
                "you returned the policy's log-probs only: r subtracts the reference's.",
            ),
        ]
        _diagnose(
            name,
            got,
            expected,
            suspects,
            "the result is not r = logp_theta[i, idx[i]] - logp_ref[i, idx[i]] with idx = "
            "core.mismatched_indices(B).",
        )
    passed(name, len(sizes))


def _z0_case(rng: np.random.Generator, size: int, mean: float) -> np.ndarray:
    # Positive means get some negative entries, so clamping each term differs from the clamp.
    while True:
        r = rng.normal(mean, 1.0, size)
        if np.sign(r.mean()) == np.sign(mean) and (r < 0).any():
            return r


def check_z0_estimate(z0_estimate, hidden: bool = False) -> None:
    """Exercise 02.3: z0 = max(0, mean of the mismatched r) (paper Eq. 6, as trainers do it)."""
    name = "z0_estimate"
    rng = _rng(hidden, 203)
    plan = ((6, 0.6), (8, -0.5), (16, 0.3), (5, 1.2))
    if hidden:
        plan = ((2, 0.8), (3, -1.0), (64, 0.2), (200, -0.1), (9, 2.0))
    cases = [_z0_case(rng, size, mean) for size, mean in plan]
    if hidden:
        cases.append(np.full(4, -0.25))  # every pair negative: z0 is exactly 0
    for r_mis in cases:
        expected = core.z0_estimate(r_mis)
        got = as_float_array(call_learner(z0_estimate, r_mis.copy(), name=name), name, ())
        if close(got, expected):
            continue
        if got < 0:
            raise CheckFailed(
                f"{name}: your z0 is negative: clamp at 0, z0 = max(0, mean of the mismatched r)."
            )
        suspects = [
            (
                max(0.0, r_mis.sum()),
                "you summed the mismatched r instead of averaging: z0 is a MEAN over the "
                "microbatch, so it does not grow with the batch size.",
            ),
            (
                r_mis.sum(),
                "you summed the mismatched r instead of averaging: z0 is a MEAN over the "
                "microbatch, so it does not grow with the batch size.",
            ),
            (
                np.maximum(r_mis, 0.0).mean(),
                "you clamped each example before averaging: average first, then clamp the "
                "mean at 0 (negative terms must pull the mean down).",
            ),
            (
                abs(r_mis.mean()),
                "you took the absolute value of the mean: a negative mean is clamped to 0, "
                "not flipped.",
            ),
        ]
        _diagnose(
            name, got, expected, suspects, "z0 should be max(0, mean of the mismatched r)."
        )
    passed(name, len(cases))

# =============================================================================================
# Lesson 03 checks (owned by the lessons 03-04 author)
# =============================================================================================

_L03_SALT = 3


def _l03_case(rng, n_D: int, n_U: int, beta=None, z0=None):
    """A random labelled batch for lesson 03/04 checks: r, z0, desirable, beta, lambda_D, lambda_U.

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


def _l03_describe(r, z0, desirable, beta, lambda_D, lambda_U) -> str:
    n_D = int(np.sum(desirable))
    return (
        f"(a batch of {len(desirable)} with {n_D} desirable, z0 = {z0:.3g}, beta = {beta:.3g}, "
        f"lambda_D = {lambda_D:.3g}, lambda_U = {lambda_U:.3g})"
    )


def _l03_first_match(result, diagnoses, rtol=1e-6, atol=1e-9) -> str | None:
    """The message of the first wrong formula that ``result`` reproduces, if any."""
    for wrong, message in diagnoses:
        if np.shape(wrong) == np.shape(result) and close(result, wrong, rtol, atol):
            return message
    return None


def _l03_loss_diagnoses(r, z0, d, beta, lambda_D, lambda_U):
    """Per-example losses a learner gets from each common misconception, with its message."""
    delta = r - z0
    s_pos, s_neg = core.sigmoid(beta * delta), core.sigmoid(-beta * delta)
    lam = np.where(d, lambda_D, lambda_U)
    right = core.kto_losses(r, z0, d, beta, lambda_D, lambda_U)
    return [
        (
            np.where(d, lambda_D * s_pos, lambda_U * s_neg),
            "the two labels are swapped, or you returned the value v_y instead of the loss "
            "lambda_y - v_y: a desirable example's loss must FALL as r rises above z0, an "
            "undesirable example's loss must RISE.",
        ),
        (
            np.where(d, lambda_D * s_neg, lambda_U * s_neg),
            "your undesirable loss falls as r rises: the undesirable value is "
            "v_U = lambda_U * sigmoid(-beta * delta), not sigmoid(beta * delta).",
        ),
        (
            np.where(d, lambda_D * s_pos, lambda_U * s_pos),
            "your desirable loss rises as r rises: v_D = lambda_D * sigmoid(beta * delta), so "
            "L_D = lambda_D * (1 - sigmoid(beta * delta)) falls as r climbs above z0.",
        ),
        (
            core.kto_losses(r, z0, d, 1.0, lambda_D, lambda_U),
            "beta is missing: the value functions take sigmoid(beta * delta); beta sets how fast "
            "the loss saturates.",
        ),
        (
            core.kto_losses(r, 0.0, d, beta, lambda_D, lambda_U),
            "z0 is ignored: the margin is delta = r - z0, measured from the KL reference point.",
        ),
        (
            core.kto_losses(r + 2 * z0, z0, d, beta, lambda_D, lambda_U),
            "z0 has the wrong sign: the margin is delta = r - z0, not r + z0.",
        ),
        (
            core.kto_losses(r, z0, d, beta, lambda_U, lambda_D),
            "lambda applied to the wrong class: lambda_D weights the desirable examples and "
            "lambda_U the undesirable ones.",
        ),
        (
            core.kto_losses(r, z0, d, beta, 1.0, 1.0),
            "the class weights are missing: L = lambda_y - v_y with v_y = lambda_y * sigmoid(...).",
        ),
        (
            1.0 - (lam - right),
            "you subtracted the value from 1: the loss is lambda_y - v_y, and v_y already carries "
            "lambda_y.",
        ),
        (
            -(lam - right),
            "you returned -v_y: the loss is lambda_y - v_y, which is never negative.",
        ),
    ]


def check_kto_losses(kto_losses, hidden: bool = False) -> None:
    """Lesson 03, exercise 1: per-example loss lambda_y - v_y (paper Eq. 7)."""
    rng = _rng(hidden, _L03_SALT * 10 + 1)
    cases = [_l03_case(rng, 3, 4), _l03_case(rng, 5, 2), _l03_case(rng, 1, 1)]
    if hidden:
        cases += [_l03_case(rng, 2, 7), _l03_case(rng, 6, 0), _l03_case(rng, 0, 5)]
        cases.append(_l03_case(rng, 1, 0))
    for case in cases:
        r, z0, d, beta, lambda_D, lambda_U = case
        out = as_float_array(
            call_learner(kto_losses, r, z0, d, beta, lambda_D, lambda_U, name="kto_losses"),
            "kto_losses",
            shape=r.shape,
        )
        right = core.kto_losses(r, z0, d, beta, lambda_D, lambda_U)
        if not close(out, right):
            message = _l03_first_match(out, _l03_loss_diagnoses(*case))
            raise CheckFailed(
                message or f"kto_losses disagrees with L = lambda_y - v_y {_l03_describe(*case)}."
            )
    # Far from the baseline a naive exp(x) / (1 + exp(x)) overflows to inf / inf = NaN.
    r = np.array([-5000.0, 5000.0, -5000.0, 5000.0])
    d = np.array([True, True, False, False])
    out = call_learner(kto_losses, r, 1.0, d, 1.0, 1.0, 1.0, name="kto_losses")
    if out is not None and np.isnan(np.asarray(out, dtype=np.float64)).any():
        raise CheckFailed(
            "kto_losses returned NaN for an example far from z0 (|beta * delta| in the "
            "thousands): exp() overflowed. Use a stable sigmoid such as core.sigmoid."
        )
    out = as_float_array(out, "kto_losses", shape=r.shape)
    if not close(out, core.kto_losses(r, 1.0, d, 1.0, 1.0, 1.0), atol=1e-6):
        raise CheckFailed(
            "kto_losses is wrong far from z0 (|beta * delta| in the thousands): the loss should "
            "be ~0 on the correct side of the baseline and ~lambda_y on the wrong side."
        )
    passed("kto_losses", len(cases) + 1)


def _l03_batch_case(rng, n_D: int, n_U: int, z0_sign: int):
    """Log-probs of a labelled batch and of its mismatched pairs (raw z0 of the given sign)."""
    r, _, d, beta, lambda_D, lambda_U = _l03_case(rng, n_D, n_U)
    logp_ref = rng.uniform(-40.0, -10.0, d.size)
    logp_theta = logp_ref + r
    kl_logp_ref = rng.uniform(-40.0, -10.0, d.size)
    kl_r = rng.normal(0.0, 2.0, d.size)
    kl_r += z0_sign * (abs(kl_r.mean()) + rng.uniform(0.5, 2.0)) - kl_r.mean()
    kl_logp_theta = kl_logp_ref + kl_r
    return logp_theta, logp_ref, kl_logp_theta, kl_logp_ref, d, beta, lambda_D, lambda_U


def _l03_batch_reference(logp_theta, logp_ref, kl_logp_theta, kl_logp_ref, d, beta, lD, lU):
    r = core.log_ratio(logp_theta, logp_ref)
    z0 = core.z0_estimate(core.log_ratio(kl_logp_theta, kl_logp_ref))
    return core.kto_loss(r, z0, d, beta, lD, lU)


def _l03_batch_diagnoses(logp_theta, logp_ref, kl_logp_theta, kl_logp_ref, d, beta, lD, lU):
    r = np.asarray(core.log_ratio(logp_theta, logp_ref))
    kl_r = np.asarray(core.log_ratio(kl_logp_theta, kl_logp_ref))
    z0 = core.z0_estimate(kl_r)
    z0_raw = core.z0_estimate(kl_r, clamp=False)
    losses = np.asarray(core.kto_losses(r, z0, d, beta, lD, lU))
    lam = np.where(d, lD, lU)
    diagnoses = [
        (
            losses.sum() / lam.sum(),
            "you divided by the sum of the weights: the batch loss is the plain mean over all "
            "examples; the weights are not renormalised.",
        ),
        (
            losses.sum(),
            "you summed the losses: the batch loss is their mean over the batch.",
        ),
        (
            float(np.mean(core.kto_losses(r, z0_raw, d, beta, lD, lU))),
            "z0 is negative in this batch and you did not clamp it: z0 = max(0, mean of the "
            "mismatched log-ratios).",
        ),
        (
            float(np.mean(core.kto_losses(r, max(0.0, float(r.mean())), d, beta, lD, lU))),
            "you estimated z0 from the labelled pairs: use the mismatched pairs (kl_logp_theta, "
            "kl_logp_ref), whose completions were not selected for being good or bad.",
        ),
        (
            float(np.mean(core.kto_losses(r, 0.0, d, beta, lD, lU))),
            "z0 is ignored: estimate it from the mismatched pairs and measure delta = r - z0.",
        ),
    ]
    if d.any() and (~d).any():
        per_label = (losses[d].mean() + losses[~d].mean()) / 2
        diagnoses.append((
            per_label,
            "you averaged each label separately: the batch loss is one mean over ALL examples, "
            "so the larger class counts more (that is what the weights are for).",
        ))
        for mask, label in ((d, "desirable"), (~d, "undesirable")):
            diagnoses.append((
                losses[mask].mean(),
                f"you averaged over the {label} examples only: the batch loss is the mean over "
                "ALL examples of the batch.",
            ))
    return diagnoses


def check_batch_kto_loss(batch_kto_loss, hidden: bool = False) -> None:
    """Lesson 03, exercise 2: the batch loss from log-probs (mean over ALL examples)."""
    rng = _rng(hidden, _L03_SALT * 10 + 2)
    cases = [_l03_batch_case(rng, 2, 6, +1), _l03_batch_case(rng, 5, 3, +1)]
    cases += [_l03_batch_case(rng, 3, 5, -1)]
    if hidden:
        cases += [_l03_batch_case(rng, 7, 2, -1), _l03_batch_case(rng, 1, 9, +1)]
        cases += [_l03_batch_case(rng, 4, 0, +1), _l03_batch_case(rng, 0, 4, -1)]
    else:
        cases += [_l03_batch_case(rng, 4, 0, +1)]
    for case in cases:
        d = case[4]
        out = call_learner(batch_kto_loss, *case, name="batch_kto_loss")
        if out is not None and np.isnan(np.asarray(out, dtype=np.float64)).any() and (
            d.all() or not d.any()
        ):
            raise CheckFailed(
                "batch_kto_loss returned NaN for a batch with only one label: did you average "
                "each label separately? The batch loss is one mean over all examples."
            )
        out = as_float_array(out, "batch_kto_loss")
        if out.size != 1:
            raise CheckFailed(
                f"batch_kto_loss returned {out.size} numbers: the batch loss is ONE number, the "
                "mean of the per-example losses."
            )
        out = float(out.reshape(()))
        if not close(out, _l03_batch_reference(*case)):
            message = _l03_first_match(out, _l03_batch_diagnoses(*case))
            raise CheckFailed(
                message
                or f"batch_kto_loss disagrees with the mean of lambda_y - v_y over a batch of "
                f"{d.size} ({int(d.sum())} desirable)."
            )
    passed("batch_kto_loss", len(cases))


_IMBALANCE_KEYS = ("ratio", "in_range", "lambda_D_range", "lambda_U_range")


def _l03_weights_diagnoses(n_D, n_U, lambda_D, lambda_U):
    ratio = core.imbalance_ratio(n_D, n_U, lambda_D, lambda_U)
    return [
        (1.0 / ratio, "your ratio is inverted: it is lambda_D * n_D / (lambda_U * n_U)."),
        (
            n_D / n_U,
            "the weights are missing from your ratio: it is lambda_D * n_D / (lambda_U * n_U).",
        ),
    ]


def check_recommended_weights(recommended_weights, hidden: bool = False) -> None:
    """Lesson 03, exercise 3: the imbalance rule lambda_D n_D / (lambda_U n_U) in [1, 4/3]."""
    rng = _rng(hidden, _L03_SALT * 10 + 3)
    # TRL writes 4/3 as 1.33; both are accepted (they differ by 0.25 %).
    rtol = 3e-3
    cases = [(1000, 9000, 1.0, 1.0), (800, 600, 1.0, 1.0), (5000, 1000, 1.0, 2.0)]
    cases += [(int(rng.integers(50, 5000)), int(rng.integers(50, 5000)), 1.0, 1.0)]
    if hidden:
        cases += [(300, 7000, 1.5, 1.0), (1000, 1000, 1.0, 1.0), (4000, 3000, 1.0, 1.0)]
        for _ in range(4):
            counts = (int(rng.integers(10, 20000)), int(rng.integers(10, 20000)))
            cases.append((*counts, float(rng.uniform(0.5, 3)), float(rng.uniform(0.5, 3))))
    for n_D, n_U, lambda_D, lambda_U in cases:
        about = f"(n_D = {n_D}, n_U = {n_U}, lambda_D = {lambda_D:.3g}, lambda_U = {lambda_U:.3g})"
        out = call_learner(
            recommended_weights, n_D, n_U, lambda_D, lambda_U, name="recommended_weights"
        )
        if not isinstance(out, dict):
            raise CheckFailed(
                f"recommended_weights returned {type(out).__name__}: return a dict with the keys "
                f"{', '.join(_IMBALANCE_KEYS)}."
            )
        missing = [key for key in _IMBALANCE_KEYS if key not in out]
        if missing:
            raise CheckFailed(f"recommended_weights' dict lacks the key(s) {', '.join(missing)}.")
        right = core.recommended_weights(n_D, n_U, lambda_D, lambda_U)
        ratio = float(as_float_array(out["ratio"], "ratio", shape=()))
        if not close(ratio, right["ratio"], rtol=1e-9):
            message = _l03_first_match(ratio, _l03_weights_diagnoses(n_D, n_U, lambda_D, lambda_U))
            raise CheckFailed(message or f"the ratio is wrong {about}.")
        if not isinstance(out["in_range"], (bool, np.bool_)):
            raise CheckFailed("in_range must be True or False.")
        if bool(out["in_range"]) != right["in_range"]:
            raise CheckFailed(
                f"in_range is wrong {about}: it is True exactly when 1 <= ratio <= 4/3 "
                "(ratio slightly ABOVE 1 is fine; below 1 is not)."
            )
        for key, weight in (("lambda_D_range", "lambda_D"), ("lambda_U_range", "lambda_U")):
            got = as_float_array(out[key], key, shape=(2,))
            if got[0] > got[1]:
                raise CheckFailed(f"{key} must be (low, high) with low <= high.")
            if not close(got, right[key], rtol=rtol):
                other = "lambda_U" if weight == "lambda_D" else "lambda_D"
                raise CheckFailed(
                    f"{key} is wrong {about}: keep {other} as given and solve "
                    f"1 <= lambda_D * n_D / (lambda_U * n_U) <= 4/3 for {weight} alone "
                    "(a larger weight on the rarer class, not on the common one)."
                )
    passed("recommended_weights", len(cases))

# =============================================================================================
# Lesson 04 checks (owned by the lessons 03-04 author)
# =============================================================================================

_L04_SALT = 4


def _l04_grad_diagnoses(r, z0, d, beta, lambda_D, lambda_U):
    """dL/dr a learner gets from each common misconception, with its message."""
    g = np.asarray(core.kto_loss_grad(r, z0, d, beta, lambda_D, lambda_U))
    s = np.asarray(core.sigmoid(beta * (r - z0)))
    lam = np.where(d, lambda_D, lambda_U)
    sign = np.where(d, -1.0, 1.0)
    return [
        (
            -g,
            "the signs are swapped: a desirable loss falls as r rises, so dL/dr < 0 for "
            "desirable examples and > 0 for undesirable ones.",
        ),
        (
            -np.abs(g),
            "your undesirable gradient is negative: raising r RAISES an undesirable example's "
            "loss, so its dL/dr is positive.",
        ),
        (
            np.abs(g),
            "your desirable gradient is positive: raising r LOWERS a desirable example's loss, "
            "so its dL/dr is negative.",
        ),
        (
            g / beta,
            "the chain rule's factor beta is missing: d/dr sigmoid(beta * delta) = "
            "beta * s * (1 - s).",
        ),
        (
            core.kto_loss_grad(r, z0, d, 1.0, lambda_D, lambda_U),
            "beta is missing: s = sigmoid(beta * (r - z0)) and the derivative carries a factor "
            "beta.",
        ),
        (
            sign * lam * beta * np.where(d, s, 1 - s),
            "the derivative of the sigmoid is s * (1 - s), not s (or 1 - s) alone.",
        ),
        (
            sign * lam * beta * np.where(d, 1 - s, s),
            "the derivative of the sigmoid is s * (1 - s), not s (or 1 - s) alone.",
        ),
        (
            core.kto_loss_grad(r, z0, d, beta, lambda_U, lambda_D),
            "lambda applied to the wrong class: lambda_D weights the desirable examples and "
            "lambda_U the undesirable ones.",
        ),
        (
            core.kto_loss_grad(r, z0, d, beta, 1.0, 1.0),
            "the class weight lambda_y is missing from the derivative.",
        ),
        (
            core.kto_loss_grad(r, 0.0, d, beta, lambda_D, lambda_U),
            "z0 is ignored: s = sigmoid(beta * (r - z0)).",
        ),
        (
            g / r.size,
            "you divided by the batch size: return the derivative of each example's OWN loss "
            "L_i with respect to its own r_i.",
        ),
    ]


def check_kto_loss_grad(kto_loss_grad, hidden: bool = False) -> None:
    """Lesson 04, exercise 1: the analytic dL/dr with z0 held fixed."""
    rng = _rng(hidden, _L04_SALT * 10 + 1)
    cases = [_l03_case(rng, 3, 4), _l03_case(rng, 5, 3), _l03_case(rng, 1, 1)]
    if hidden:
        cases += [_l03_case(rng, 2, 7), _l03_case(rng, 6, 0), _l03_case(rng, 0, 5)]
    for case in cases:
        r, z0, d, beta, lambda_D, lambda_U = case
        out = as_float_array(
            call_learner(kto_loss_grad, r, z0, d, beta, lambda_D, lambda_U, name="kto_loss_grad"),
            "kto_loss_grad",
            shape=r.shape,
        )
        if not close(out, core.kto_loss_grad(*case), rtol=1e-6, atol=1e-12):
            message = _l03_first_match(out, _l04_grad_diagnoses(*case), atol=1e-12)
            raise CheckFailed(
                message or f"kto_loss_grad disagrees with dL/dr {_l03_describe(*case)}."
            )
    r = np.array([-5000.0, 5000.0, -5000.0, 5000.0])
    d = np.array([True, True, False, False])
    out = call_learner(kto_loss_grad, r, 1.0, d, 1.0, 1.0, 1.0, name="kto_loss_grad")
    if out is not None and np.isnan(np.asarray(out, dtype=np.float64)).any():
        raise CheckFailed(
            "kto_loss_grad returned NaN far from z0 (|beta * delta| in the thousands): exp() "
            "overflowed. Use a stable sigmoid such as core.sigmoid."
        )
    out = as_float_array(out, "kto_loss_grad", shape=r.shape)
    if not close(out, 0.0, atol=1e-6):
        raise CheckFailed(
            "kto_loss_grad is not ~0 far from z0: the gradient saturates (vanishes) when "
            "|delta| is large, on either side of the baseline."
        )
    passed("kto_loss_grad", len(cases) + 1)


def _l04_call_autograd(fn, *args, name: str, hint: str):
    """call_learner, plus the course's words for autograd's 'does not require grad' error."""
    try:
        return call_learner(fn, *args, name=name)
    except CheckFailed as failure:
        if "does not require grad" in str(failure):
            raise CheckFailed(f"{failure} ({hint})") from None
        raise


def check_autograd_grad(autograd_grad, hidden: bool = False) -> None:
    """Lesson 04, exercise 2: d(mean batch loss)/dr by torch autograd, z0 a constant."""
    rng = _rng(hidden, _L04_SALT * 10 + 2)
    cases = [_l03_case(rng, 3, 4), _l03_case(rng, 6, 2)]
    if hidden:
        cases += [_l03_case(rng, 1, 8), _l03_case(rng, 5, 0), _l03_case(rng, 1, 0)]
    for case in cases:
        r, z0, d, beta, lambda_D, lambda_U = case
        out = as_float_array(
            _l04_call_autograd(
                autograd_grad, r, z0, d, beta, lambda_D, lambda_U, name="autograd_grad",
                hint="backward() found no tensor to differentiate: create r with "
                "torch.tensor(..., requires_grad=True) and build the loss from it",
            ),
            "autograd_grad",
            shape=r.shape,
        )
        g = np.asarray(core.kto_loss_grad(*case))
        right = g / r.size
        if close(out, right, rtol=1e-5, atol=1e-10):
            continue
        diagnoses = [
            (
                g,
                "you differentiated the SUM of the losses: the batch loss is their mean, so "
                "each example's gradient carries a factor 1/B.",
            ),
            (-right, "the sign is flipped: check the loss you call backward() on."),
            (
                np.asarray(core.kto_loss_grad(r, z0, d, beta, lambda_U, lambda_D)) / r.size,
                "lambda applied to the wrong class in your torch loss.",
            ),
            (
                np.asarray(core.kto_loss_grad(r, z0, d, 1.0, lambda_D, lambda_U)) / r.size,
                "beta is missing from your torch loss.",
            ),
        ]
        message = _l03_first_match(out, diagnoses, rtol=1e-5, atol=1e-10)
        raise CheckFailed(
            message
            or f"autograd_grad disagrees with d(mean loss)/dr {_l03_describe(*case)}: return "
            "r.grad after calling backward() on the MEAN of the per-example losses."
        )
    passed("autograd_grad", len(cases))


def _l04_rank_diagnoses(r, z0, d, beta, lambda_D, lambda_U, k):
    g = np.asarray(core.kto_loss_grad(r, z0, d, beta, lambda_D, lambda_U))
    losses = np.asarray(core.kto_losses(r, z0, d, beta, lambda_D, lambda_U))
    return [
        (
            np.argsort(-losses, kind="stable")[:k],
            "you ranked by loss: the largest losses sit far on the WRONG side of z0, where the "
            "gradient has saturated. Rank by |dL/dr|.",
        ),
        (
            np.argsort(np.abs(g), kind="stable")[:k],
            "you returned the SMALLEST updates: sort by |dL/dr| from largest to smallest.",
        ),
        (
            np.argsort(-g, kind="stable")[:k],
            "you ranked the signed gradient: desirable gradients are negative, so rank by the "
            "magnitude |dL/dr|.",
        ),
        (
            np.argsort(g, kind="stable")[:k],
            "you ranked the signed gradient: undesirable gradients are positive, so rank by the "
            "magnitude |dL/dr|.",
        ),
        (
            np.argsort(np.abs(r - z0), kind="stable")[:k],
            "you ranked by closeness to z0 alone: the weight lambda_y scales each gradient too.",
        ),
        (
            np.argsort(np.abs(r), kind="stable")[:k],
            "you ranked by |r|: the gradient peaks at delta = r - z0 = 0, not at r = 0.",
        ),
    ]


def _l04_rank_case(rng, n_D, n_U, k):
    r, z0, d, beta, lambda_D, lambda_U = _l03_case(rng, n_D, n_U)
    # Spread some examples far out, so that the largest loss and the largest gradient differ.
    far = rng.random(r.size) < 0.3
    r = np.where(far, z0 + np.sign(rng.normal(size=r.size)) * rng.uniform(15, 40, r.size), r)
    return r, z0, d, beta, lambda_D, lambda_U, k


def check_largest_updates(largest_updates, hidden: bool = False) -> None:
    """Lesson 04, exercise 3: the k examples with the largest |dL/dr|, largest first."""
    rng = _rng(hidden, _L04_SALT * 10 + 3)
    cases = [_l04_rank_case(rng, 6, 6, 3), _l04_rank_case(rng, 4, 8, 4)]
    cases += [_l04_rank_case(rng, 5, 5, 1)]
    if hidden:
        cases += [_l04_rank_case(rng, 9, 3, 5), _l04_rank_case(rng, 2, 10, 2)]
        cases += [_l04_rank_case(rng, 4, 4, 8)]
    for case in cases:
        r, z0, d, beta, lambda_D, lambda_U, k = case
        raw = call_learner(
            largest_updates, r, z0, d, beta, lambda_D, lambda_U, k, name="largest_updates"
        )
        out = as_float_array(raw, "largest_updates", shape=(k,))
        if not np.all(out == np.round(out)) or out.min() < 0 or out.max() >= r.size:
            raise CheckFailed(
                "largest_updates must return example INDICES (whole numbers from 0 to B-1), "
                "e.g. from np.argsort, not gradient values."
            )
        out = out.astype(int)
        g = np.abs(np.asarray(core.kto_loss_grad(r, z0, d, beta, lambda_D, lambda_U)))
        right = np.argsort(-g, kind="stable")[:k]
        if np.array_equal(out, right):
            continue
        if set(out.tolist()) == set(right.tolist()):
            raise CheckFailed(
                "the right examples in the wrong order: list them from the largest |dL/dr| down."
            )
        for wrong, message in _l04_rank_diagnoses(*case):
            if np.array_equal(out, wrong):
                raise CheckFailed(message)
        raise CheckFailed(
            f"largest_updates picked other examples than the {k} with the largest |dL/dr| "
            f"{_l03_describe(r, z0, d, beta, lambda_D, lambda_U)}."
        )
    passed("largest_updates", len(cases))


def _l04_through_z0_reference(r, r_mismatched, d, beta, lambda_D, lambda_U):
    """d(mean loss)/d r'_j if z0 = max(0, mean(r')) were NOT detached (chain rule on core)."""
    raw = float(np.mean(r_mismatched))
    g = np.asarray(core.kto_loss_grad(r, max(0.0, raw), d, beta, lambda_D, lambda_U))
    # delta = r - z0, so dL_i/dz0 = -dL_i/dr_i; each r'_j moves z0 by 1/B, unless clamped.
    dz0 = 1.0 / r_mismatched.size if raw > 0 else 0.0
    return np.full(r_mismatched.shape, -g.mean() * dz0), g, raw


def _l04_through_z0_case(rng, n_D, n_U, z0_sign):
    r, _, d, beta, lambda_D, lambda_U = _l03_case(rng, n_D, n_U)
    r_mis = rng.normal(0.0, 2.0, r.size)
    r_mis += z0_sign * (abs(r_mis.mean()) + rng.uniform(0.5, 2.0)) - r_mis.mean()
    return r, r_mis, d, beta, lambda_D, lambda_U


def check_grad_through_z0(grad_through_z0, hidden: bool = False) -> None:
    """Lesson 04, exercise 4: the gradient that would reach the mismatched pairs through z0."""
    rng = _rng(hidden, _L04_SALT * 10 + 4)
    cases = [_l04_through_z0_case(rng, 4, 3, +1), _l04_through_z0_case(rng, 6, 0, +1)]
    cases += [_l04_through_z0_case(rng, 3, 4, -1)]
    if hidden:
        cases += [_l04_through_z0_case(rng, 0, 5, +1), _l04_through_z0_case(rng, 2, 7, +1)]
        cases += [_l04_through_z0_case(rng, 5, 2, -1)]
    for case in cases:
        r, r_mis = case[0], case[1]
        out = as_float_array(
            _l04_call_autograd(
                grad_through_z0, *case, name="grad_through_z0",
                hint="nothing in your loss depends on r_mismatched: a DETACHED z0 lets no "
                "gradient through. This exercise asks what would flow if z0 were NOT detached",
            ),
            "grad_through_z0",
            shape=r_mis.shape,
        )
        right, g, raw = _l04_through_z0_reference(*case)
        if close(out, right, rtol=1e-5, atol=1e-12):
            continue
        B = r.size
        if raw <= 0 and not close(out, 0.0, atol=1e-12):
            raise CheckFailed(
                "the raw mean of the mismatched log-ratios is negative here, so z0 is clamped at "
                "0 and no gradient passes through the clamp: z0 = max(0, mean(r_mismatched))."
            )
        diagnoses = [
            (
                np.zeros(B),
                "your gradient is zero: that is what a DETACHED z0 gives. This exercise asks "
                "what would reach the mismatched pairs if z0 were NOT detached.",
            ),
            (
                -right,
                "the sign is flipped: delta = r - z0, so raising z0 acts like lowering r: "
                "dL/dz0 = -dL/dr.",
            ),
            (
                np.full(B, -g.mean()),
                "a factor 1/B is missing: z0 is the MEAN of the mismatched log-ratios, so each "
                "one moves z0 by 1/B.",
            ),
            (
                np.full(B, -g.sum()),
                "two factors 1/B are missing: the loss is a mean over the batch and z0 a mean "
                "over the mismatched pairs.",
            ),
        ]
        message = _l03_first_match(out, diagnoses, rtol=1e-5, atol=1e-12)
        raise CheckFailed(
            message
            or "grad_through_z0 disagrees with d(mean loss)/d r_mismatched for an attached "
            f"z0 {_l03_describe(r, max(raw, 0.0), *case[2:])}."
        )
    passed("grad_through_z0", len(cases))

# =============================================================================================
# Lesson 05 checks (owned by the lesson 05 author)
# =============================================================================================

_L05_SALT = 5


def _l05_pairs(rng, n: int) -> list[dict]:
    """Random preference pairs with string prompts and completions (a few prompts repeat)."""
    prompts = [f"prompt {i}" for i in range(max(2, n // 2))]
    pairs = []
    for _ in range(n):
        a, b = rng.choice(9, 2, replace=False)
        pairs.append(
            {"prompt": str(rng.choice(prompts)), "chosen": f"answer {a}", "rejected": f"answer {b}"}
        )
    return pairs


def _l05_rows(result, n_pairs: int) -> list[tuple]:
    """The learner's rows as (prompt, completion, label) tuples; structural problems fail here."""
    if result is None:
        raise CheckFailed("pairs_to_unpaired returned None: did you forget the return statement?")
    if not isinstance(result, list | tuple):
        raise CheckFailed(
            f"pairs_to_unpaired returned {type(result).__name__}: return a list of rows, one dict "
            "per row with the keys 'prompt', 'completion' and 'label'."
        )
    if len(result) != 2 * n_pairs:
        raise CheckFailed(
            f"pairs_to_unpaired returned {len(result)} rows for {n_pairs} pairs: each pair must "
            "become exactly two rows, one desirable and one undesirable."
        )
    rows = []
    for row in result:
        if not isinstance(row, dict):
            raise CheckFailed(
                f"a row is a {type(row).__name__}: each row must be a dict with the keys "
                "'prompt', 'completion' and 'label'."
            )
        if "prompt" not in row:
            raise CheckFailed(
                "a row has no 'prompt': the prompt was lost. KTO needs log pi(y|x) for each row, "
                "so every row keeps the prompt of its pair."
            )
        missing = {"completion", "label"} - set(row)
        if missing:
            raise CheckFailed(
                f"a row has no {sorted(missing)}: each row is {{'prompt', 'completion', 'label'}}."
            )
        if not isinstance(row["label"], bool | np.bool_):
            raise CheckFailed(
                f"a label is {row['label']!r} ({type(row['label']).__name__}): labels are "
                "booleans, True for the chosen (desirable) row, False for the rejected one."
            )
        rows.append((row["prompt"], row["completion"], bool(row["label"])))
    return rows


@contextmanager
def _l05_global_rngs_moved(seed: int):
    """Reseed np.random and random, restoring them afterwards: code that ignores the ``rng``
    argument and draws from a global generator then gives a different answer."""
    import random

    np_state, py_state = np.random.get_state(), random.getstate()
    np.random.seed(seed)
    random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


def check_pairs_to_unpaired(pairs_to_unpaired, hidden: bool = False) -> None:
    """Lesson 05, exercise 1: pairs to unpaired rows, shuffled with the rng passed in."""
    import copy
    from collections import Counter

    from kto_course import toy

    rng = _rng(hidden, _L05_SALT * 10 + 1)
    sizes = [6, 11, 1] + ([40, 2, 25] if hidden else [])
    for n in sizes:
        pairs = _l05_pairs(rng, n)
        given = copy.deepcopy(pairs)
        seed = int(rng.integers(1_000_000))
        with _l05_global_rngs_moved(seed):
            result = call_learner(
                pairs_to_unpaired, given, np.random.default_rng(seed), name="pairs_to_unpaired"
            )
        if given != pairs:
            raise CheckFailed(
                "pairs_to_unpaired changed the pairs it was given: build new row dicts instead."
            )
        rows = _l05_rows(result, n)
        right = [(r["prompt"], r["completion"], r["label"]) for r in toy.chosen_first(pairs)]
        if Counter(rows) != Counter(right):
            swapped = [(p, c, not label) for p, c, label in right]
            if Counter(rows) == Counter(swapped):
                raise CheckFailed(
                    "the labels are swapped: the chosen completion is the desirable row "
                    "(label True), the rejected completion the undesirable one (label False)."
                )
            if Counter((c, label) for _, c, label in rows) == Counter(
                (c, label) for _, c, label in right
            ):
                raise CheckFailed(
                    "the completions and labels are right but the prompts are not: the prompt "
                    "was lost or mixed up. Each row keeps the prompt of its own pair."
                )
            raise CheckFailed(
                "the rows do not match the pairs: each (prompt, chosen, rejected) must give "
                "(prompt, chosen, True) and (prompt, rejected, False), nothing else."
            )
        if n < 5:
            continue  # too few rows for an order to tell a shuffle from no shuffle
        labels = [label for _, _, label in rows]
        if labels == [True] * n + [False] * n:
            raise CheckFailed(
                "all chosen rows come before all rejected rows: shuffle the rows with rng. "
                "Read in order, every microbatch would hold a single label (the pitfall of this "
                "lesson)."
            )
        interleaved = [row for pair in zip(right[:n], right[n:], strict=True) for row in pair]
        if rows == interleaved or rows == right[n:] + right[:n]:
            raise CheckFailed(
                "the rows come in a fixed order (not shuffled): shuffle them with rng.permutation "
                "or rng.shuffle."
            )
        # Reproducible: the same seed must give the same order, whatever the global generators.
        with _l05_global_rngs_moved(seed + 1):
            again = call_learner(
                pairs_to_unpaired, copy.deepcopy(pairs), np.random.default_rng(seed),
                name="pairs_to_unpaired",
            )
        if _l05_rows(again, n) != rows:
            raise CheckFailed(
                "two calls with generators seeded alike gave different orders: draw the shuffle "
                "from the rng argument, not from np.random or random, so that a run can be "
                "reproduced."
            )
        other = call_learner(
            pairs_to_unpaired, copy.deepcopy(pairs), np.random.default_rng(seed + 1),
            name="pairs_to_unpaired",
        )
        if _l05_rows(other, n) == rows:
            raise CheckFailed(
                "the order does not change with the rng: shuffle with the rng you are given."
            )
    passed("pairs_to_unpaired", len(sizes))


def _l05_label_cases(rng, hidden: bool) -> list[tuple]:
    cases = [
        (np.array([True] * 12 + [False] * 12), 8),
        (rng.random(21) < 0.5, 4),
        (rng.random(10) < 0.3, 3),
    ]
    if hidden:
        cases += [
            (rng.random(37) < 0.7, 5),
            (np.array([True] * 6 + [False] * 5), 16),
            (rng.random(16) < 0.5, 2),
            (rng.random(9) < 0.5, 1),
        ]
    return cases


def check_batch_label_shares(batch_label_shares, hidden: bool = False) -> None:
    """Lesson 05, exercise 2: the desirable share of each sequential microbatch."""
    from kto_course import toy

    rng = _rng(hidden, _L05_SALT * 10 + 2)
    cases = _l05_label_cases(rng, hidden)
    for labels, batch_size in cases:
        result = call_learner(
            batch_label_shares, labels.copy(), batch_size, name="batch_label_shares"
        )
        right = toy.batch_label_shares(labels, batch_size)
        n_full = len(labels) // batch_size
        if (
            len(labels) % batch_size
            and result is not None
            and np.shape(result) == (n_full,)
        ):
            raise CheckFailed(
                "the last, shorter microbatch is missing: when len(labels) is not a multiple of "
                "batch_size the trainer still takes a step on the rows left over. Include it."
            )
        out = as_float_array(result, "batch_label_shares", shape=right.shape)
        if close(out, right):
            continue
        starts = range(0, len(labels), batch_size)
        sizes = np.array([len(labels[s : s + batch_size]) for s in starts])
        strided = np.array([labels[k :: len(right)].mean() for k in range(len(right))])
        diagnoses = [
            (1 - right, "you computed the share of UNDESIRABLE rows: count the True labels."),
            (
                right * sizes,
                "you returned counts: divide by the number of rows in each microbatch.",
            ),
            (
                right * sizes / batch_size,
                "the last microbatch is shorter than batch_size: divide by its own length.",
            ),
            (
                strided,
                "your microbatches are not contiguous: microbatch k holds rows k*batch_size to "
                "(k+1)*batch_size - 1, in order, as a trainer reads them sequentially.",
            ),
        ]
        for wrong, message in diagnoses:
            if close(out, wrong):
                raise CheckFailed(message)
        raise CheckFailed(
            "batch_label_shares is wrong: cut the labels, in order, into microbatches of "
            "batch_size (the last may be shorter) and return the share of True in each."
        )
    passed("batch_label_shares", len(cases))


def _l05_dpo_case(rng, n_prompts: int, n_completions: int, batch: int):
    import torch

    theta_ref = rng.normal(0.0, 1.0, (n_prompts, n_completions))
    theta = theta_ref + rng.normal(0.0, 1.5, theta_ref.shape)
    prompt = rng.integers(n_prompts, size=batch)
    chosen = rng.integers(n_completions, size=batch)
    rejected = (chosen + rng.integers(1, n_completions, size=batch)) % n_completions
    beta = float(rng.uniform(0.1, 0.9))
    as_long = lambda a: torch.tensor(a, dtype=torch.long)  # noqa: E731
    return (
        torch.tensor(theta), torch.tensor(theta_ref), as_long(prompt), as_long(chosen),
        as_long(rejected), beta,
    )


def _l05_dpo_diagnoses(theta, theta_ref, prompt, chosen, rejected, beta):
    import torch
    import torch.nn.functional as F

    logp, logp_ref = F.log_softmax(theta, -1), F.log_softmax(theta_ref, -1)
    r_w = logp[prompt, chosen] - logp_ref[prompt, chosen]
    r_l = logp[prompt, rejected] - logp_ref[prompt, rejected]
    p, p_ref = torch.softmax(theta, -1), torch.softmax(theta_ref, -1)
    q_w = p[prompt, chosen] - p_ref[prompt, chosen]
    q_l = p[prompt, rejected] - p_ref[prompt, rejected]
    no_ref = logp[prompt, chosen] - logp[prompt, rejected]
    return [
        (
            -F.logsigmoid(beta * (r_l - r_w)).mean(),
            "chosen and rejected are swapped: DPO's margin is r_w - r_l, chosen minus rejected.",
        ),
        (
            -F.logsigmoid(beta * no_ref).mean(),
            "the reference is missing: r = log pi_theta(y|x) - log pi_ref(y|x) for both "
            "completions of the pair.",
        ),
        (
            -F.logsigmoid(r_w - r_l).mean(),
            "beta is missing: DPO's loss is -log sigmoid(beta * (r_w - r_l)).",
        ),
        (
            -F.logsigmoid(beta * (r_w - r_l)).sum(),
            "you summed over the pairs: the batch loss is the mean over the pairs.",
        ),
        (
            -F.logsigmoid(beta * (q_w - q_l)).mean(),
            "you used probabilities: r is a difference of LOG-probabilities (log_softmax over "
            "the completions of the prompt), not of probabilities.",
        ),
        (
            (-F.logsigmoid(beta * r_w) - F.logsigmoid(-beta * r_l)).mean(),
            "you scored each completion on its own (a pointwise loss): DPO's loss is one "
            "sigmoid of the pair's margin, -log sigmoid(beta * (r_w - r_l)).",
        ),
    ]


def check_dpo_batch_loss(dpo_batch_loss, hidden: bool = False) -> None:
    """Lesson 05, exercise 3: DPO's batch loss on the toy policy, with its gradient."""
    import torch

    from kto_course import toy

    rng = _rng(hidden, _L05_SALT * 10 + 3)
    cases = [_l05_dpo_case(rng, 4, 5, 6), _l05_dpo_case(rng, 3, 8, 10)]
    if hidden:
        cases += [_l05_dpo_case(rng, 6, 3, 1), _l05_dpo_case(rng, 2, 2, 16)]
    for theta, theta_ref, prompt, chosen, rejected, beta in cases:
        learner_theta = theta.clone().requires_grad_(True)
        result = call_learner(
            dpo_batch_loss, learner_theta, theta_ref.clone(), prompt.clone(), chosen.clone(),
            rejected.clone(), beta, name="dpo_batch_loss",
        )
        right_theta = theta.clone().requires_grad_(True)
        right = toy.dpo_batch_loss(right_theta, theta_ref, prompt, chosen, rejected, beta)
        out = as_float_array(result, "dpo_batch_loss", shape=())
        if not close(out, right.detach().item()):
            diagnoses = _l05_dpo_diagnoses(theta, theta_ref, prompt, chosen, rejected, beta)
            message = next((m for w, m in diagnoses if close(out, float(w))), None)
            raise CheckFailed(
                message
                or "dpo_batch_loss is wrong: the mean over pairs of -log sigmoid(beta * (r_w - "
                "r_l)), r from log_softmax(theta) and log_softmax(theta_ref)."
            )
        if not (isinstance(result, torch.Tensor) and result.requires_grad):
            raise CheckFailed(
                "the loss carries no gradient: keep it a torch tensor computed from theta (no "
                ".item(), float() or NumPy on the way) so that loss.backward() can train theta."
            )
        result.backward()
        right.backward()
        if learner_theta.grad is None or not close(learner_theta.grad, right_theta.grad):
            raise CheckFailed(
                "the loss has the right value but the wrong gradient: did part of it go through "
                ".detach() or torch.no_grad()?"
            )
    passed("dpo_batch_loss", len(cases))


def _l05_flip_cases(rng, hidden: bool) -> list[tuple]:
    # fraction * n never ends in .5, so rounding up or to even cannot disagree.
    cases = [(rng.random(20) < 0.5, 0.25), (rng.random(50) < 0.3, 0.1), (rng.random(30) < 0.6, 0.4)]
    if hidden:
        cases += [
            (rng.random(40) < 0.5, 0.0),
            (rng.random(12) < 0.5, 1.0),
            (rng.random(101) < 0.5, 0.2),
            (rng.random(33) < 0.4, 0.33),
        ]
    return cases


def check_flip_labels(flip_labels, hidden: bool = False) -> None:
    """Lesson 05, exercise 4: flip exactly round(fraction * n) labels, drawn with rng."""
    rng = _rng(hidden, _L05_SALT * 10 + 4)
    cases = _l05_flip_cases(rng, hidden)
    only_desirable = first_k = True
    for labels, fraction in cases:
        seed = int(rng.integers(1_000_000))
        given = labels.copy()
        with _l05_global_rngs_moved(seed):
            result = call_learner(
                flip_labels, given, fraction, np.random.default_rng(seed), name="flip_labels"
            )
        if not np.array_equal(given, labels):
            raise CheckFailed(
                "flip_labels changed the labels it was given: flip a copy (labels.copy()), so "
                "the clean labels stay available for the next experiment."
            )
        out = as_float_array(result, "flip_labels", shape=labels.shape)
        if not np.isin(out, (0.0, 1.0)).all():
            raise CheckFailed("flip_labels must return booleans (True = desirable), one per row.")
        out = out.astype(bool)
        changed = out != labels
        n = len(labels)
        allowed = {int(np.floor(fraction * n)), int(np.ceil(fraction * n))}
        if int(changed.sum()) not in allowed:
            raise CheckFailed(
                "the number of flipped labels is wrong: flip exactly round(fraction * "
                "len(labels)) of them, at distinct positions (rng.choice(n, k, replace=False)). "
                "Flipping each label with probability fraction gives a different count every "
                "time; drawing positions with replacement can pick one twice; setting a label to "
                "False is not flipping it."
            )
        k = int(changed.sum())
        if 0 < k < n:
            only_desirable &= bool(labels[changed].all()) and not labels.all()
            first_k &= bool(changed[:k].all())
            with _l05_global_rngs_moved(seed + 1):
                again = call_learner(
                    flip_labels, labels.copy(), fraction, np.random.default_rng(seed),
                    name="flip_labels",
                )
            if not np.array_equal(np.asarray(again, dtype=bool), out):
                raise CheckFailed(
                    "two calls with generators seeded alike flipped different labels: draw the "
                    "positions from the rng argument, not from np.random or random, so that an "
                    "experiment can be rerun."
                )
            other = call_learner(
                flip_labels, labels.copy(), fraction, np.random.default_rng(seed + 1),
                name="flip_labels",
            )
            if np.array_equal(np.asarray(other, dtype=bool), out):
                if changed[:k].all():
                    raise CheckFailed(
                        "the first labels are always the ones flipped: draw the positions at "
                        "random with rng."
                    )
                raise CheckFailed(
                    "the flipped positions do not change with the rng: draw them with the rng "
                    "you are given (a generator of your own makes every experiment flip the "
                    "same rows)."
                )
    if only_desirable:
        raise CheckFailed(
            "only desirable labels were flipped: label noise hits both labels, so draw the "
            "positions from all rows."
        )
    if first_k:
        raise CheckFailed(
            "the first labels are always the ones flipped: draw the positions at random with rng."
        )
    passed("flip_labels", len(cases))

# =============================================================================================
# Lesson 06 checks (owned by the lesson 06 author)
# =============================================================================================

_L06_SALT = 6


def _l06_first_match(result, diagnoses, rtol=1e-5, atol=1e-6) -> str | None:
    for wrong, message in diagnoses:
        if np.shape(wrong) == np.shape(result) and close(result, wrong, rtol, atol):
            return message
    return None


def _l06_logps_case(rng, batch: int, width: int, vocab: int = 11, full_row: bool = True):
    """Random logits and right-padded ids, as a model's forward would give them.

    Returns (logits, input_ids, attention_mask, prompt_lengths); row 0 has no padding when
    ``full_row``. Logits are large enough that every token's log-prob differs clearly.
    """
    import torch

    g = torch.Generator().manual_seed(int(rng.integers(2**31)))
    logits = torch.randn(batch, width, vocab, generator=g, dtype=torch.float64) * 2.0
    input_ids = torch.randint(1, vocab, (batch, width), generator=g)
    lengths = rng.integers(4, width + 1, size=batch)
    if full_row:
        lengths[0] = width
    prompt_lengths = np.array([rng.integers(1, n - 1) for n in lengths])
    positions = torch.arange(width)
    attention_mask = (positions[None, :] < torch.as_tensor(lengths)[:, None]).long()
    input_ids = input_ids.masked_fill(attention_mask == 0, 0)  # 0 plays <pad>
    return logits, input_ids, attention_mask, torch.as_tensor(prompt_lengths)


def _l06_logps_diagnoses(logits, input_ids, attention_mask, prompt_lengths):
    """Sequence log-probs that each misconception gives, with its message (lesson 06, ex. 1)."""
    import torch

    from kto_course import torch_ops

    width = input_ids.shape[1]
    positions = torch.arange(width)[None, :]
    real = attention_mask.bool()
    completion = real & (positions >= prompt_lengths[:, None])
    per_token = torch_ops.token_logps(logits, input_ids)  # (B, T-1): token t+1 from logits t
    right = (per_token * completion[:, 1:]).sum(-1)
    unshifted = torch.log_softmax(logits, -1).gather(-1, input_ids[..., None])[..., 0]
    raw = logits[:, :-1].gather(-1, input_ids[:, 1:, None])[..., 0]
    probs = torch.softmax(logits[:, :-1], -1).gather(-1, input_ids[:, 1:, None])[..., 0]
    not_pad = positions >= prompt_lengths[:, None]
    return right.numpy(), [
        (
            (right / completion[:, 1:].sum(-1)).numpy(),
            "you averaged token log-probs instead of summing: log pi(y|x) is the SUM over the "
            "completion tokens (no length normalisation).",
        ),
        (
            (unshifted * completion).sum(-1).numpy(),
            "the shift is missing: the logits at position t predict token t+1, so drop the last "
            "logit and the first id (logits[:, :-1] with input_ids[:, 1:]).",
        ),
        (
            (per_token * completion[:, :-1]).sum(-1).numpy(),
            "your mask is one position off: shift the completion mask with the ids "
            "(mask[:, 1:]), so the last prompt token is not counted and the last completion "
            "token is.",
        ),
        (
            (per_token * real[:, 1:]).sum(-1).numpy(),
            "prompt tokens are included in the sum: only completion tokens count "
            "(positions >= the prompt length).",
        ),
        (
            (per_token * not_pad[:, 1:]).sum(-1).numpy(),
            "padding tokens are counted: multiply by the attention mask too, so the <pad> "
            "positions after a short row add nothing.",
        ),
        (
            (raw * completion[:, 1:]).sum(-1).numpy(),
            "you summed raw logits: turn them into log-probabilities with log_softmax over the "
            "vocabulary first.",
        ),
        (
            (probs * completion[:, 1:]).sum(-1).numpy(),
            "you summed probabilities, not log-probabilities: use log_softmax, not softmax.",
        ),
    ]


def check_completion_logps(completion_logps, hidden: bool = False) -> None:
    """Lesson 06, exercise 1: log pi(y|x) from a model's logits with padding and a prompt."""
    rng = _rng(hidden, _L06_SALT * 10 + 1)
    cases = [_l06_logps_case(rng, 4, 9), _l06_logps_case(rng, 3, 12)]
    if hidden:
        cases += [_l06_logps_case(rng, 6, 14, vocab=23), _l06_logps_case(rng, 1, 7),
                  _l06_logps_case(rng, 5, 10, full_row=False)]  # fmt: skip
    for logits, input_ids, attention_mask, prompt_lengths in cases:
        batch = input_ids.shape[0]
        out = as_float_array(
            call_learner(completion_logps, logits.clone(), input_ids.clone(),
                         attention_mask.clone(), prompt_lengths.clone(),
                         name="completion_logps"),  # fmt: skip
            "completion_logps",
            shape=(batch,),
        )
        right, diagnoses = _l06_logps_diagnoses(logits, input_ids, attention_mask, prompt_lengths)
        if not close(out, right, rtol=1e-5, atol=1e-6):
            message = _l06_first_match(out, diagnoses)
            raise CheckFailed(
                "completion_logps: "
                + (message or "not the sum of log pi(token | tokens before it) over the "
                   "completion tokens. Check the shift, the log_softmax and both masks.")
            )
    passed("completion_logps", len(cases))


def _l06_loss_case(rng, batch: int, n_desirable: int | None = None, z0_sign: int = 1):
    """Sequence log-probs of one microbatch: labelled pairs and mismatched pairs (float64)."""
    import torch

    n_desirable = batch // 2 if n_desirable is None else n_desirable
    desirable = np.array([True] * n_desirable + [False] * (batch - n_desirable))
    rng.shuffle(desirable)
    logp_ref = -rng.uniform(4.0, 12.0, batch)
    logp_theta = logp_ref + rng.normal(0.0, 4.0, batch)
    kl_logp_ref = -rng.uniform(6.0, 14.0, batch)
    kl_logp_theta = kl_logp_ref + z0_sign * rng.uniform(1.0, 3.0) + rng.normal(0.0, 0.5, batch)
    beta = float(rng.uniform(0.2, 0.8))
    lambda_D = float(rng.uniform(0.6, 1.0))
    lambda_U = lambda_D + float(rng.uniform(0.3, 0.8))
    tensors = [torch.tensor(a, dtype=torch.float64)
               for a in (logp_theta, logp_ref, kl_logp_theta, kl_logp_ref)]  # fmt: skip
    return (*tensors, torch.tensor(desirable), beta, lambda_D, lambda_U)


def _l06_loss_diagnoses(r, r_mis, d, beta, lambda_D, lambda_U):
    z0 = core.z0_estimate(r_mis)
    return [
        (
            core.kto_loss(r, core.z0_estimate(r_mis, clamp=False), d, beta, lambda_D, lambda_U),
            "your z0 is negative here: clamp at 0 (z0 = max(0, mean of the mismatched r)).",
        ),
        (
            core.kto_loss(r, core.z0_estimate(r), d, beta, lambda_D, lambda_U),
            "z0 comes from the matched pairs: estimate it from the MISMATCHED pairs "
            "(kl_logp_theta - kl_logp_ref), not from the labelled completions.",
        ),
        (
            core.kto_loss(r, 0.0, d, beta, lambda_D, lambda_U),
            "z0 is ignored: the margin is delta = r - z0.",
        ),
        (
            core.kto_loss(r, z0, ~d, beta, lambda_D, lambda_U),
            "the two labels are swapped: desirable examples should be pushed UP (v_D uses "
            "sigmoid(beta * delta)).",
        ),
        (
            float(np.sum(core.kto_losses(r, z0, d, beta, lambda_D, lambda_U))),
            "you summed the per-example losses: the batch loss is their MEAN over all examples.",
        ),
        (
            core.kto_loss(r, z0, d, 1.0, lambda_D, lambda_U),
            "beta is missing: the value functions take sigmoid(beta * delta).",
        ),
        (
            core.kto_loss(r, z0, d, beta, lambda_U, lambda_D),
            "lambda applied to the wrong class: lambda_D weights desirable examples, lambda_U "
            "undesirable ones.",
        ),
        (
            core.kto_loss(-r, z0, d, beta, lambda_D, lambda_U),
            "r has the wrong sign: r = logp_theta - logp_ref (policy minus reference).",
        ),
    ]


def check_kto_microbatch_loss(kto_microbatch_loss, hidden: bool = False) -> None:
    """Lesson 06, exercise 2: one microbatch's KTO loss from the four forward passes."""
    rng = _rng(hidden, _L06_SALT * 10 + 2)
    cases = [_l06_loss_case(rng, 6), _l06_loss_case(rng, 5, z0_sign=-1),
             _l06_loss_case(rng, 8, 3)]  # fmt: skip
    if hidden:
        cases += [_l06_loss_case(rng, 2, 1, z0_sign=-1), _l06_loss_case(rng, 7, 7),
                  _l06_loss_case(rng, 4, 0), _l06_loss_case(rng, 9, 2, z0_sign=-1)]  # fmt: skip
    for logp_theta, logp_ref, kl_theta, kl_ref, desirable, beta, lambda_D, lambda_U in cases:
        # Gradients on: the learner's loss must reach logp_theta and NOT the mismatched pairs.
        logp_theta = logp_theta.clone().requires_grad_(True)
        kl_theta = kl_theta.clone().requires_grad_(True)
        loss = call_learner(
            kto_microbatch_loss, logp_theta, logp_ref.clone(), kl_theta, kl_ref.clone(),
            desirable.clone(), beta, lambda_D, lambda_U, name="kto_microbatch_loss",
        )  # fmt: skip
        out = as_float_array(loss, "kto_microbatch_loss", shape=())
        r = (logp_theta - logp_ref).detach().numpy()
        r_mis = (kl_theta - kl_ref).detach().numpy()
        d = desirable.numpy()
        right = core.kto_loss(r, core.z0_estimate(r_mis), d, beta, lambda_D, lambda_U)
        if not close(out, right, rtol=1e-6, atol=1e-9):
            message = _l06_first_match(out, _l06_loss_diagnoses(r, r_mis, d, beta, lambda_D,
                                                                lambda_U))  # fmt: skip
            raise CheckFailed(
                "kto_microbatch_loss: "
                + (message or "not the mean over the microbatch of lambda_y - v_y with "
                   "z0 = max(0, mean of the mismatched r), detached.")
            )
        if not getattr(loss, "requires_grad", False):
            raise CheckFailed(
                "kto_microbatch_loss returned a value with no gradient: return the torch tensor "
                "built from logp_theta (no .item(), no float(), no .detach()), so that "
                "loss.backward() can train the policy."
            )
        call_learner(loss.backward, name="loss.backward")
        if kl_theta.grad is not None and kl_theta.grad.abs().max() > 0:
            raise CheckFailed(
                "z0 is not detached: the gradient reaches the mismatched pairs. z0 only sets "
                "where the loss saturates; use .detach() (or torch_ops.z0_estimate)."
            )
        right_grad = core.kto_loss_grad(r, core.z0_estimate(r_mis), d, beta, lambda_D,
                                        lambda_U) / len(r)  # fmt: skip
        if logp_theta.grad is None or not close(logp_theta.grad.numpy(), right_grad, 1e-5, 1e-9):
            raise CheckFailed(
                "kto_microbatch_loss has the right value but the wrong gradient with respect to "
                "logp_theta: build it from logp_theta with torch operations."
            )
    passed("kto_microbatch_loss", len(cases))


def _l06_samples(rng, n: int) -> tuple[list[str], list[str]]:
    """Prompts and completions of the task: desirable, undesirable, malformed and repeats."""
    from kto_course.lm import task

    adjectives = task.POSITIVE + task.NEGATIVE
    prompts, completions = [], []
    for _ in range(n):
        prompts.append(task.make_prompt(rng.choice(task.ITEMS), rng.choice(list(task.RATINGS))))
        kind = rng.random()
        if kind < 0.15:
            completions.append(rng.choice([" it was great", " it was nice and warm.", "",
                                           " it was great and fun. it was", " was dull."]))
        elif kind < 0.35 and completions:
            completions.append(completions[int(rng.integers(len(completions)))])  # a repeat
        else:
            completions.append(task.make_completion(rng.choice(adjectives), rng.choice(adjectives)))
    return prompts, completions


def check_score_samples(score_samples, hidden: bool = False) -> None:
    """Lesson 06, exercise 3: desirable rate, well-formed rate and distinct completions."""
    from kto_course.lm import task

    rng = _rng(hidden, _L06_SALT * 10 + 3)
    sizes = [40, 25] + ([60, 7, 120] if hidden else [])
    for n in sizes:
        prompts, completions = _l06_samples(rng, n)
        out = as_float_array(
            call_learner(score_samples, list(prompts), list(completions), name="score_samples"),
            "score_samples",
            shape=(3,),
        )
        labels = task.judge(prompts, completions)
        well_formed = [task.is_well_formed(c) for c in completions]
        right = [sum(labels) / n, sum(well_formed) / n, len(set(completions))]
        if close(out, right):
            continue
        if not close(out[0], right[0]) and close(out[0], right[1]):
            raise CheckFailed(
                "score_samples: your desirable rate counts every well-formed completion: "
                "well-formed is not enough, both adjectives must agree with the rating "
                "(use task.judge)."
            )
        pairs = len(set(zip(prompts, completions, strict=True)))
        if not close(out[2], right[2]) and close(out[2], pairs):
            raise CheckFailed(
                "score_samples: count distinct completions, not distinct (prompt, completion) "
                "pairs: diversity asks how many different things the model says."
            )
        if not close(out[2], right[2]) and close(out[2], n):
            raise CheckFailed(
                "score_samples: your distinct count is the number of samples: count DIFFERENT "
                "completion strings (len(set(completions)))."
            )
        raise CheckFailed(
            "score_samples: expected [desirable rate, well-formed rate, number of distinct "
            "completions], rates as fractions of all samples."
        )
    passed("score_samples", len(sizes))
