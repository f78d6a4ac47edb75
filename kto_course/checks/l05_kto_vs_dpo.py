"""Lesson 05, KTO against DPO: checks of converting pairs to rows, a balanced order for
sequential microbatches, DPO's batch loss on the toy policy, and label noise."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from kto_course.checks.base import (
    CheckFailed,
    as_float_array,
    call_and_backprop,
    call_learner,
    case_rng,
    close,
    diagnose,
    passed,
)

LESSON = 5


def _pairs(rng, n: int) -> list[dict]:
    """Random preference pairs with string prompts and completions (a few prompts repeat)."""
    prompts = [f"prompt {i}" for i in range(max(2, n // 2))]
    pairs = []
    for _ in range(n):
        a, b = rng.choice(9, 2, replace=False)
        pairs.append(
            {"prompt": str(rng.choice(prompts)), "chosen": f"answer {a}", "rejected": f"answer {b}"}
        )
    return pairs


def _rows(result, n_pairs: int) -> list[tuple]:
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
def _global_rngs_moved(seed: int):
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

    rng = case_rng(LESSON, 1, hidden)
    sizes = [6, 11, 1] + ([40, 2, 25] if hidden else [])
    for n in sizes:
        pairs = _pairs(rng, n)
        given = copy.deepcopy(pairs)
        seed = int(rng.integers(1_000_000))
        with _global_rngs_moved(seed):
            result = call_learner(
                pairs_to_unpaired, given, np.random.default_rng(seed), name="pairs_to_unpaired"
            )
        if given != pairs:
            raise CheckFailed(
                "pairs_to_unpaired changed the pairs it was given: build new row dicts instead."
            )
        rows = _rows(result, n)
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
                "the rows come in a fixed order (not shuffled): shuffle them with the rng you "
                "are given."
            )
        # Reproducible: the same seed must give the same order, whatever the global generators.
        with _global_rngs_moved(seed + 1):
            again = call_learner(
                pairs_to_unpaired, copy.deepcopy(pairs), np.random.default_rng(seed),
                name="pairs_to_unpaired",
            )
        if _rows(again, n) != rows:
            raise CheckFailed(
                "two calls with generators seeded alike gave different orders: draw the shuffle "
                "from the rng argument, not from np.random or random, so that a run can be "
                "reproduced."
            )
        other = call_learner(
            pairs_to_unpaired, copy.deepcopy(pairs), np.random.default_rng(seed + 1),
            name="pairs_to_unpaired",
        )
        if _rows(other, n) == rows:
            raise CheckFailed(
                "the order does not change with the rng: shuffle with the rng you are given."
            )
    passed("pairs_to_unpaired", len(sizes))


def _order_cases(rng, hidden: bool) -> list[tuple]:
    """(labels, batch_size): lopsided shares with a shorter last microbatch, where rounding
    every microbatch alike goes wrong, and a chosen-first list as a conversion writes it."""

    def mixed(n: int, n_D: int) -> np.ndarray:
        labels = np.zeros(n, dtype=bool)
        labels[rng.choice(n, size=n_D, replace=False)] = True
        return labels

    cases = [
        (mixed(100, 30), 16),  # 4.8 per microbatch: rounding each one alike starves the last
        (mixed(120, 25), 16),  # 3.3 per microbatch: the rounded-up count runs out early
        ([True] * 40 + [False] * 40, 12),  # a Python list, chosen first
    ]
    if hidden:
        cases += [
            (mixed(90, 7), 8),
            (mixed(101, 70), 10),
            (mixed(12, 5), 16),  # a single, short microbatch
            (mixed(20, 0), 4),
            (mixed(13, 4), 1),
            (mixed(64, 13), 5),
        ]
    return cases


_LABELS_RETURNED = (
    "balanced_order returned labels: return the row indices, in the order the trainer should "
    "read the rows (rows[order[0]] first), not the labels in that order."
)


def _order(result, n: int) -> np.ndarray:
    """The learner's order as an int array; anything but a permutation of 0 .. n-1 fails."""
    if result is None:
        raise CheckFailed("balanced_order returned None: did you forget the return statement?")
    try:
        order = np.asarray(result)
    except (TypeError, ValueError):
        order = np.empty(0, dtype=object)
    if order.dtype == object or order.ndim != 1:
        raise CheckFailed(
            "balanced_order must return one flat array of row indices, one per row in reading "
            "order, not microbatches or anything nested."
        )
    if order.dtype == bool:
        raise CheckFailed(_LABELS_RETURNED)
    if len(order) != n:
        raise CheckFailed(
            f"balanced_order returned {len(order)} indices for {n} rows: every row must be read "
            "exactly once (dropping or repeating rows to even out the microbatches changes the "
            "data)."
        )
    if not np.issubdtype(order.dtype, np.integer):
        raise CheckFailed(
            f"balanced_order returned {order.dtype} values: return integer row indices "
            "(rows[i] needs an int; np.concatenate of an empty float array turns ints into "
            "floats)."
        )
    if n > 2 and set(order.tolist()) <= {0, 1}:
        raise CheckFailed(_LABELS_RETURNED)
    if not np.array_equal(np.sort(order), np.arange(n)):
        raise CheckFailed(
            "balanced_order is not a permutation of 0 .. n-1: some rows are repeated or missing "
            "(or an index is out of range). Every row must be read exactly once."
        )
    return order.astype(np.int64)


def _batch_sizes(n: int, batch_size: int) -> np.ndarray:
    return np.array([min(batch_size, n - s) for s in range(0, n, batch_size)], dtype=np.int64)


def _desirable_counts(labels: np.ndarray, order: np.ndarray, batch_size: int) -> np.ndarray:
    """Desirable rows in each sequential microbatch of ``order``, measured with the toy's own
    ``batch_label_shares``."""
    from kto_course import toy

    sizes = _batch_sizes(len(labels), batch_size)
    return np.rint(toy.batch_label_shares(labels[order], batch_size) * sizes).astype(np.int64)


def _off_balance(labels: np.ndarray, counts: np.ndarray, batch_size: int) -> np.ndarray:
    """Which microbatches hold neither floor nor ceil of m * n_D / n desirable rows."""
    n, n_D = len(labels), int(labels.sum())
    sizes = _batch_sizes(n, batch_size)
    low, high = sizes * n_D // n, -(-sizes * n_D // n)
    return (counts < low) | (counts > high)


def _name_imbalance(labels, batch_size, orders) -> str:
    """The message for orders (drawn with several seeds; the first is the one graded) whose
    microbatches are off balance: the misconception their desirable counts show."""
    sizes = _batch_sizes(len(labels), batch_size)
    counts = [_desirable_counts(labels, order, batch_size) for order in orders]
    bad = [_off_balance(labels, c, batch_size) for c in counts]
    if len(labels) % batch_size and all(b[-1] and not b[:-1].any() for b in bad):
        return (
            "the last, shorter microbatch is off balance: it holds fewer rows, so its share of "
            "the desirable rows is smaller too, and rounding every full microbatch the same way "
            "leaves it whatever is left over."
        )
    if any(not np.array_equal(c, counts[0]) for c in counts[1:]):
        if len(sizes) > 2 and not any(b[0] for b in bad):
            return (
                "only the first microbatch is balanced: the trainer reads every microbatch, so "
                "each of them must hold its share of the desirable rows."
            )
        return (
            "the microbatches' label mix changes with the rng and is off balance: a random "
            "order mixes the labels only on average, so some microbatches get too few of the "
            "rarer label (or none) and others too many."
        )
    if np.array_equal(orders[0], np.arange(len(labels))):
        return (
            "balanced_order returned the rows in their own order (0, 1, 2, ...): nothing was "
            "reordered, so the microbatches keep whatever label mix the data came with."
        )
    share = labels.mean()
    one_label = (counts[0] == 0) | (counts[0] == sizes)
    if len(sizes) > 2 and 0 < share < 1 and (~one_label).sum() <= 1:
        return (
            "(nearly) every microbatch holds a single label: the rows are grouped by label, the "
            "pitfall this exercise is meant to remove."
        )
    drift = np.cumsum(counts[0]) - np.cumsum(sizes) * share  # read so far minus their share
    last_bad = int(np.flatnonzero(bad[0])[-1])
    deviation = counts[0][last_bad] - sizes[last_bad] * share
    if drift.max() >= 1 and deviation < 0:
        return (
            "the early microbatches hold more desirable rows than their share, so the desirable "
            "rows run out before the end. Alternating the labels one by one, or giving every "
            "microbatch the same rounded-up count, does this unless the labels are half and "
            "half."
        )
    if drift.min() <= -1 and deviation > 0:
        return (
            "the early microbatches hold fewer desirable rows than their share, so the surplus "
            "piles up at the end. Giving every microbatch the same rounded-down count does this."
        )
    return (
        f"microbatch {last_bad + 1} of {len(sizes)} is off balance: a microbatch of m rows must "
        "hold m times the dataset's share of desirable rows, rounded down or up."
    )


def check_balanced_order(balanced_order, hidden: bool = False) -> None:
    """Lesson 05, exercise 2: an order whose every sequential microbatch holds its share of
    desirable rows, each label's rows in an order drawn with rng."""
    rng = case_rng(LESSON, 2, hidden)
    cases = _order_cases(rng, hidden)
    for given, batch_size in cases:
        labels = np.array(given, dtype=bool)
        seed = int(rng.integers(1_000_000))
        argument = list(given) if isinstance(given, list) else labels.copy()
        with _global_rngs_moved(seed):
            result = call_learner(
                balanced_order, argument, batch_size, np.random.default_rng(seed),
                name="balanced_order",
            )
        if not np.array_equal(np.array(argument, dtype=bool), labels):
            raise CheckFailed(
                "balanced_order changed the labels it was given: leave them as they are (they "
                "belong to the rows) and return an order of the rows instead."
            )
        order = _order(result, len(labels))
        if _off_balance(labels, _desirable_counts(labels, order, batch_size), batch_size).any():
            others = [
                _order(
                    call_learner(balanced_order, labels.copy(), batch_size,
                                 np.random.default_rng(seed + k), name="balanced_order"),
                    len(labels),
                )
                for k in (1, 2, 3, 4)
            ]  # fmt: skip
            raise CheckFailed(_name_imbalance(labels, batch_size, [order, *others]))
        # Reproducible: the same seed gives the same order, whatever the global generators.
        with _global_rngs_moved(seed + 1):
            again = call_learner(
                balanced_order, labels.copy(), batch_size, np.random.default_rng(seed),
                name="balanced_order",
            )
        if not np.array_equal(_order(again, len(labels)), order):
            raise CheckFailed(
                "two calls with generators seeded alike gave different orders: draw from the "
                "rng argument, not from np.random or random, so that a run can be reproduced."
            )
        other = _order(
            call_learner(balanced_order, labels.copy(), batch_size,
                         np.random.default_rng(seed + 1), name="balanced_order"),
            len(labels),
        )  # fmt: skip
        for label, name in ((True, "desirable"), (False, "undesirable")):
            rows, rows_other = order[labels[order] == label], other[labels[other] == label]
            if len(rows) < 6 or not np.array_equal(rows, rows_other):
                continue  # too few rows for an order to tell rng from no rng
            kept = "keep their original order" if (np.diff(rows) > 0).all() else (
                "come in the same order whatever the rng")  # fmt: skip
            raise CheckFailed(
                f"the {name} rows {kept}: draw the order of each label's rows with rng. Data "
                "on disk is often sorted (by prompt, source or date), and a fixed order carries "
                "that into the microbatches."
            )
    passed("balanced_order", len(cases))


def _dpo_case(rng, n_prompts: int, n_completions: int, batch: int):
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


def _dpo_suspects(theta, theta_ref, prompt, chosen, rejected, beta):
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

    from kto_course import toy

    rng = case_rng(LESSON, 3, hidden)
    cases = [_dpo_case(rng, 4, 5, 6), _dpo_case(rng, 3, 8, 10)]
    if hidden:
        cases += [_dpo_case(rng, 6, 3, 1), _dpo_case(rng, 2, 2, 16)]
    for theta, theta_ref, prompt, chosen, rejected, beta in cases:
        learner_theta = theta.clone().requires_grad_(True)
        result, requires_grad, grads, backward_error = call_and_backprop(
            dpo_batch_loss, (learner_theta, theta_ref.clone(), prompt.clone(), chosen.clone(),
                             rejected.clone(), beta), (0,), name="dpo_batch_loss",
        )  # fmt: skip
        right_theta = theta.clone().requires_grad_(True)
        right = toy.dpo_batch_loss(right_theta, theta_ref, prompt, chosen, rejected, beta)
        out = as_float_array(result, "dpo_batch_loss", shape=())
        if not close(out, right.detach().item()):
            diagnose(
                out,
                right.detach().item(),
                _dpo_suspects(theta, theta_ref, prompt, chosen, rejected, beta),
                "dpo_batch_loss is wrong: the mean over pairs of -log sigmoid(beta * (r_w - "
                "r_l)), r from log_softmax(theta) and log_softmax(theta_ref).",
            )
        if not requires_grad:
            raise CheckFailed(
                "the loss carries no gradient: keep it a torch tensor computed from theta (no "
                ".item(), float() or NumPy on the way) so that loss.backward() can train theta."
            )
        if backward_error:
            raise CheckFailed(f"loss.backward() raised {backward_error}")
        right.backward()
        if grads[0] is None or not close(grads[0], right_theta.grad):
            raise CheckFailed(
                "the loss has the right value but the wrong gradient: did part of it go through "
                ".detach() or torch.no_grad()?"
            )
    passed("dpo_batch_loss", len(cases))


def _flip_cases(rng, hidden: bool) -> list[tuple]:
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
    rng = case_rng(LESSON, 4, hidden)
    cases = _flip_cases(rng, hidden)
    only_desirable = first_k = True
    for labels, fraction in cases:
        seed = int(rng.integers(1_000_000))
        given = labels.copy()
        with _global_rngs_moved(seed):
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
                "len(labels)) of them, at distinct positions drawn with rng. Flipping each label "
                "with probability fraction gives a different count every time; drawing positions "
                "with replacement can pick one twice; setting a label to False is not flipping it."
            )
        k = int(changed.sum())
        if 0 < k < n:
            only_desirable &= bool(labels[changed].all()) and not labels.all()
            first_k &= bool(changed[:k].all())
            with _global_rngs_moved(seed + 1):
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


# The lesson's exercises, for the grader: check, answer twins, usable package functions (see
# l01_log_ratio.EXERCISES).
EXERCISES = {
    "pairs_to_unpaired": {
        "check": check_pairs_to_unpaired,
        "twins": ("toy.pairs_to_unpaired", "toy.chosen_first"),
        "allowed": (),
        "hint": "build the rows from the pairs and shuffle them with rng yourself.",
    },
    "balanced_order": {
        "check": check_balanced_order,
        "twins": ("toy.balanced_order",),
        "allowed": ("toy.batch_label_shares",),
        "hint": "decide each microbatch's count of desirable rows and build the order yourself.",
    },
    "dpo_batch_loss": {
        "check": check_dpo_batch_loss,
        "twins": ("toy.dpo_batch_loss", "torch_ops.dpo_loss"),
        "allowed": ("toy.policy_logps",),
        "hint": "compute r_w and r_l from theta and theta_ref yourself.",
    },
    "flip_labels": {
        "check": check_flip_labels,
        "twins": ("toy.flip_labels",),
        "allowed": (),
        "hint": "draw the positions with rng and flip them yourself.",
    },
}
