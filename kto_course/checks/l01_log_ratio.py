"""Lesson 01, the log-ratio: checks of sequence log-probs, "moved toward" and DPO's loss."""

from __future__ import annotations

import numpy as np

from kto_course import core
from kto_course.checks.base import (
    CheckFailed,
    as_float_array,
    call_learner,
    case_rng,
    close,
    diagnose,
    passed,
    per_example,
)

LESSON = 1


def _token_case(rng: np.random.Generator, batch: int, length: int):
    """Token log-probs (B, T) and a completion mask: prompt tokens, completion tokens, padding."""
    token_logps = -rng.exponential(1.5, size=(batch, length))
    mask = np.zeros((batch, length), dtype=bool)
    for row in range(batch):
        prompt = int(rng.integers(1, length // 2))
        completion = int(rng.integers(2, length - prompt + 1))
        mask[row, prompt : prompt + completion] = True
    return token_logps, mask


def check_sequence_logps(sequence_logps, hidden: bool = False) -> None:
    """Exercise 01.1: log pi(y|x) as the SUM of token log-probs over the completion tokens."""
    name = "sequence_logps"
    rng = case_rng(LESSON, 1, hidden)
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
        expected = core.sequence_logps(token_logps, mask)
        # Copies: a function that edits its inputs in place must not change what we compare.
        result = call_learner(sequence_logps, token_logps.copy(), mask.copy(), name=name)
        got = per_example(result, name, expected.shape)
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
        diagnose(
            got,
            expected,
            suspects,
            "the result is not the sum of the token log-probs over the completion tokens. "
            "Keep the tokens where completion_mask is True and sum along the last axis.",
            name=name,
        )
    passed(name, len(cases))


def _per_prompt(values: np.ndarray, prompt_ids: np.ndarray, pick=np.argmax, within=False):
    """For each distinct prompt in sorted order, the batch index (or, ``within``, the index
    inside the prompt's group) of the completion that ``pick`` selects from ``values``."""
    out = []
    for prompt in np.unique(prompt_ids):
        members = np.flatnonzero(prompt_ids == prompt)
        k = int(pick(values[members]))
        out.append(k if within else int(members[k]))
    return np.array(out, dtype=np.float64)


def _last_argmax(values: np.ndarray) -> int:
    return len(values) - 1 - int(np.argmax(values[::-1]))


def _moved_suspects(logp_theta, logp_ref, prompt_ids):
    """(wrong answer, message) for each misconception of ``moved_toward``, most specific first."""
    r = logp_theta - logp_ref
    expected = _per_prompt(r, prompt_ids)
    _, first_seen = np.unique(prompt_ids, return_index=True)
    order = prompt_ids[np.sort(first_seen)]  # the prompts in the order they first appear
    by_appearance = np.array([expected[np.searchsorted(np.unique(prompt_ids), p)] for p in order])
    return [
        (
            _per_prompt(logp_theta, prompt_ids),
            "for some prompt you picked the completion the policy finds most likely. The "
            "question is which one it MOVED TOWARD relative to the reference: the largest r, "
            "not the largest log pi_theta.",
        ),
        (
            _per_prompt(logp_ref, prompt_ids),
            "you picked the completion the reference finds most likely: compare the policy "
            "with the reference through r = log pi_theta - log pi_ref.",
        ),
        (
            _per_prompt(r, prompt_ids, np.argmin),
            "you picked, for each prompt, the completion the policy moved AWAY from the most "
            "(the smallest r).",
        ),
        (
            _per_prompt(r, prompt_ids, within=True),
            "your indices count from the start of each prompt's group of completions: return "
            "positions in the whole batch (indices into logp_theta), not within a group.",
        ),
        (
            np.full(expected.shape, float(np.argmax(r))),
            "you returned the completion with the largest r of the WHOLE batch for every "
            "prompt: compare each completion only with the other completions of its prompt.",
        ),
        (
            by_appearance,
            "the indices are listed in the order the prompts first appear in the batch: list "
            "the prompts in increasing order of prompt id.",
        ),
        (
            _per_prompt(r, prompt_ids, _last_argmax),
            "where two completions of a prompt tie for the largest r, you picked the later "
            "one: a tie goes to the first (the smaller batch index).",
        ),
        (expected + 1, "Python counts positions from 0: the first completion is index 0."),
    ]


def _moved_case(rng: np.random.Generator, sizes, ids=None, ties=False):
    """A shuffled batch of completions of ``len(sizes)`` prompts: logp_theta, logp_ref and
    prompt_ids. Redrawn until every misconception's answer differs from the right one and from
    the others (where the case can tell them apart at all)."""
    n_prompts = len(sizes)
    while True:
        if ids is None:
            prompt_values = np.sort(rng.choice(40, n_prompts, replace=False))
        else:
            prompt_values = np.asarray(ids)
        prompt_ids = rng.permutation(np.repeat(prompt_values, sizes))
        if ties:  # whole-number log-probs: several completions of a prompt share the largest r
            logp_ref = -rng.integers(5, 30, prompt_ids.size).astype(np.float64)
            logp_theta = logp_ref + rng.integers(-2, 3, prompt_ids.size)
        else:
            logp_ref = -rng.uniform(5.0, 30.0, prompt_ids.size)
            logp_theta = logp_ref + rng.normal(0.0, 3.0, prompt_ids.size)
        r = logp_theta - logp_ref
        expected = _per_prompt(r, prompt_ids)
        wrong = [w for w, _ in _moved_suspects(logp_theta, logp_ref, prompt_ids)]
        skip = {3, 4, 5} if n_prompts == 1 else set()  # one prompt: its group is the batch
        if not ties:
            skip.add(6)  # no tie: the first and the last largest r are one completion
        wrong = [w for i, w in enumerate(wrong) if i not in skip]
        distinct = [w for w in wrong if not np.array_equal(w, expected)]
        if len(distinct) < len(wrong) or len({w.tobytes() for w in distinct}) < len(distinct):
            continue
        return logp_theta, logp_ref, prompt_ids


def check_moved_toward(moved_toward, hidden: bool = False) -> None:
    """Exercise 01.2: for each prompt of a batch, the completion the policy moved toward most:
    its largest r, as a batch index."""
    name = "moved_toward"
    rng = case_rng(LESSON, 4, hidden)
    if not hidden:
        cases = [
            _moved_case(rng, (3, 4), ids=(0, 1)),
            _moved_case(rng, (2, 4, 3)),
            _moved_case(rng, (5, 1, 3, 4)),
        ]
    else:
        cases = [
            _moved_case(rng, (4, 3, 5)),
            _moved_case(rng, (6,)),  # one prompt only: the answer still has one entry
            _moved_case(rng, (3, 3, 4), ties=True),
            _moved_case(rng, (2, 1, 5, 3, 4, 2, 6, 3)),
            _moved_case(rng, (12, 9, 15, 11), ids=(3, 104, 57_000, 2_000_000)),
        ]
    for logp_theta, logp_ref, prompt_ids in cases:
        r = logp_theta - logp_ref
        expected = _per_prompt(r, prompt_ids)
        n_prompts = expected.size
        result = call_learner(
            moved_toward, logp_theta.copy(), logp_ref.copy(), prompt_ids.copy(), name=name
        )
        got = as_float_array(result, name)
        if got.shape != expected.shape:
            if got.ndim == 0 and got == np.argmax(r):
                raise CheckFailed(
                    f"{name} returned one index, the completion with the largest r of the "
                    "whole batch: return one batch index per distinct prompt, comparing each "
                    "completion only with the other completions of its prompt."
                )
            if got.shape == prompt_ids.shape and n_prompts != prompt_ids.size:
                raise CheckFailed(
                    f"{name} returned one value per completion (shape {got.shape}): return "
                    f"one batch index per distinct prompt (here {n_prompts} prompts)."
                )
            raise CheckFailed(
                f"{name} returned shape {got.shape} where ({n_prompts},) was expected: one "
                "batch index per distinct prompt of the batch."
            )
        if np.array_equal(got, expected):
            continue
        if (got != np.round(got)).any():
            raise CheckFailed(
                f"{name} returned numbers that are not positions: return the batch INDEX of "
                "each chosen completion (whole numbers from 0 to N-1), not its r."
            )
        diagnose(
            got,
            expected,
            _moved_suspects(logp_theta, logp_ref, prompt_ids),
            "for some prompt, that is not the batch index of its completion with the "
            "largest r.",
            name=name,
        )
    passed(name, len(cases))


def check_dpo_loss(dpo_loss, hidden: bool = False) -> None:
    """Exercise 01.3: DPO's loss -log sigmoid(beta * (r_w - r_l)), computed stably."""
    name = "dpo_loss"
    rng = case_rng(LESSON, 3, hidden)
    unstable = (
        f"{name}: for a pair the policy gets badly wrong (beta * margin = -800) your loss is not "
        "the right finite number: sigmoid(-800) underflows to 0 and log(0) = -inf, and clipping "
        "only hides it. Compute log sigmoid stably: in a form that never takes the log of a "
        "probability that has already underflowed to 0."
    )
    cases = [(rng.normal(0.0, 6.0, 6), rng.normal(0.0, 6.0, 6), beta) for beta in (0.1, 0.5)]
    if hidden:
        cases += [(rng.normal(0.0, 30.0, 9), rng.normal(0.0, 30.0, 9), beta) for beta in (1.0, 2)]
        cases.append((np.array([3.0]), np.array([3.0]), 0.3))  # a tie: margin 0
    for r_w, r_l, beta in cases:
        expected = core.dpo_loss(r_w, r_l, beta)
        result = call_learner(dpo_loss, r_w.copy(), r_l.copy(), beta, name=name)
        got = per_example(result, name, expected.shape)
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
        diagnose(
            got,
            expected,
            suspects,
            "the result is not -log sigmoid(beta * (r_w - r_l)) for each pair.",
            name=name,
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
    got = per_example(result, name, expected.shape)
    if not close(got, expected):
        raise CheckFailed(unstable)
    passed(name, len(cases) + 1)


# The lesson's exercises, for the grader (kto_course/grading/verdicts.py): each one's check, its
# answer twins (the package functions that compute its answer: unreachable while it is graded;
# calling one fails the exercise with "you called the course's own ...") and the functions of
# the package it may use.
EXERCISES = {
    "sequence_logps": {
        "check": check_sequence_logps,
        "twins": ("core.sequence_logps", "torch_ops.sequence_logps",
                  "torch_ops.sequence_logps_from_logits"),
        "allowed": (),
        "hint": "sum the token log-probs yourself, from token_logps and completion_mask.",
    },
    "moved_toward": {
        "check": check_moved_toward,
        "twins": ("core.log_ratio",),
        "allowed": (),
        "hint": "compute r from logp_theta and logp_ref yourself.",
    },
    "dpo_loss": {
        "check": check_dpo_loss,
        # core.log_sigmoid is the stable form the exercise asks for: -log_sigmoid(beta * m).
        "twins": ("core.dpo_loss", "torch_ops.dpo_loss", "core.log_sigmoid"),
        "allowed": ("core.sigmoid",),
        "hint": "write the stable loss from r_w, r_l and beta with NumPy.",
    },
}
