"""Lesson 05, KTO against DPO: the toy and its trainers, the checks, planted bugs, demos.

Each check must pass the reference (``kto_course.toy``, itself tied to ``core`` below) and the
notebook's own solutions in visible and hidden mode, and fail every planted misconception with
the words its message promises. The demos are driven from Python as the lesson describes them,
and every render function is swept over its controls' ranges with warnings turned into errors.
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from browser_specs import readout_numbers, readout_text
from planted_bugs import PLANTED_BUGS
from shared import answer_cells, define, first_failure, passes, raising, readout, returns_none

from kto_course import checks, core, demos, figures, toy

LESSON = "05_kto_vs_dpo"
EXERCISES = ("pairs_to_unpaired", "balanced_order", "dpo_batch_loss", "flip_labels")
REFERENCES = {name: getattr(toy, name) for name in EXERCISES}
# What the notebook's first code cell imports; planted bugs and solutions run in this namespace.
NAMESPACE = {"np": np, "torch": torch, "F": F, "core": core, "toy": toy}


# ---------------------------------------------------------------------------------------------
# The toy: its losses agree with core and torch_ops, its trainers are deterministic and learn
# ---------------------------------------------------------------------------------------------


def test_dpo_batch_loss_is_the_mean_of_core_dpo_loss():
    rng = np.random.default_rng(0)
    theta_ref = rng.normal(size=(5, 6))
    theta = theta_ref + rng.normal(size=(5, 6))
    prompt, chosen, rejected = (rng.integers(0, n, 12) for n in (5, 6, 6))
    beta = 0.3
    indices = map(torch.tensor, (prompt, chosen, rejected))
    loss = toy.dpo_batch_loss(torch.tensor(theta), torch.tensor(theta_ref), *indices, beta)
    logp = theta - np.log(np.exp(theta).sum(1, keepdims=True))
    logp_ref = theta_ref - np.log(np.exp(theta_ref).sum(1, keepdims=True))
    r_w = logp[prompt, chosen] - logp_ref[prompt, chosen]
    r_l = logp[prompt, rejected] - logp_ref[prompt, rejected]
    assert float(loss) == pytest.approx(np.mean(core.dpo_loss(r_w, r_l, beta)), rel=1e-12)


def test_kto_batch_loss_matches_core_with_the_shifted_z0():
    rng = np.random.default_rng(1)
    theta_ref = rng.normal(size=(4, 5))
    theta = torch.tensor(theta_ref + rng.normal(size=(4, 5)), requires_grad=True)
    prompt, completion = rng.integers(0, 4, 10), rng.integers(0, 5, 10)
    desirable = rng.random(10) < 0.4
    loss, metrics = toy.kto_batch_loss(
        theta, torch.tensor(theta_ref), torch.tensor(prompt), torch.tensor(completion),
        torch.tensor(desirable), beta=0.5, lambda_D=1.5, lambda_U=0.8,
    )
    logp = toy.policy_logps(theta).detach().numpy()
    logp_ref = toy.policy_logps(torch.tensor(theta_ref)).numpy()
    r = logp[prompt, completion] - logp_ref[prompt, completion]
    shifted = completion[core.mismatched_indices(10)]  # x_i with y_{i-1}
    z0 = core.z0_estimate(logp[prompt, shifted] - logp_ref[prompt, shifted])
    assert metrics["kl"] == pytest.approx(z0)
    right = core.kto_loss(r, z0, desirable, 0.5, 1.5, 0.8)
    assert loss.item() == pytest.approx(right, rel=1e-10)
    loss.backward()
    assert theta.grad is not None and theta.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def small():
    problem = toy.make_problem(n_prompts=6, n_completions=5, seed=3)
    pairs = toy.sample_pairs(problem, 48, seed=3)
    return problem, pairs


def test_trainers_are_deterministic_and_both_learn(small):
    problem, pairs = small
    rows = toy.pairs_to_unpaired(pairs, np.random.default_rng(3))
    start = toy.evaluate(problem, problem.theta_ref)
    assert start["kl"] == pytest.approx(0.0, abs=1e-12)
    for train, data in ((toy.train_dpo, pairs), (toy.train_kto, rows)):
        first, second = train(problem, data, epochs=3), train(problem, data, epochs=3)
        np.testing.assert_array_equal(first["theta"], second["theta"])
        assert first["utility"] > start["utility"] + 0.2  # training helps on clean labels
        assert 0 < first["kl"]
        assert first["utility"] <= first["utility_best"]
        assert len(first["losses"]) == 3 * math.ceil(len(data) / (8 if data is pairs else 16))


def test_trainers_restore_torch_threads(small):
    problem, pairs = small
    before = torch.get_num_threads()
    toy.train_dpo(problem, pairs, epochs=1)
    assert torch.get_num_threads() == before


def test_kto_trainer_refuses_batch_size_one(small):
    problem, pairs = small
    with pytest.raises(ValueError, match="at least 2"):
        toy.train_kto(problem, toy.chosen_first(pairs), batch_size=1)


def test_kto_trainer_skips_a_last_microbatch_of_one_row(small):
    problem, pairs = small
    rows = toy.pairs_to_unpaired(pairs, np.random.default_rng(0))[:17]  # 16 + 1
    result = toy.train_kto(problem, rows, epochs=1)
    assert np.isfinite(result["losses"]).all() and np.isnan(result["z0"][-1])


def test_conversion_and_corruptions(small):
    problem, pairs = small
    first = toy.chosen_first(pairs)
    labels = [row["label"] for row in first]
    assert labels == [True] * len(pairs) + [False] * len(pairs)
    shuffled = toy.pairs_to_unpaired(pairs, np.random.default_rng(0))
    key = lambda row: (row["prompt"], row["completion"], row["label"])  # noqa: E731
    assert sorted(map(key, shuffled)) == sorted(map(key, first))
    shares = toy.batch_label_shares(labels, 16)
    assert set(shares) == {0.0, 1.0}
    assert len(toy.batch_label_shares(labels, 10)) == math.ceil(len(labels) / 10)

    flipped = toy.flip_labels(labels, 0.25, np.random.default_rng(0))
    assert (flipped != np.array(labels)).sum() == round(0.25 * len(labels))
    swapped = toy.swap_pairs(pairs, 0.5, np.random.default_rng(0))
    n_swapped = sum(s["chosen"] != p["chosen"] for s, p in zip(swapped, pairs, strict=True))
    assert n_swapped == round(0.5 * len(pairs))
    kept = toy.drop_desirable(first, 0.25, np.random.default_rng(0))
    assert sum(row["label"] for row in kept) == round(0.25 * len(pairs))
    assert sum(not row["label"] for row in kept) == len(pairs)


@pytest.mark.parametrize(("n", "n_D", "batch_size"), [(100, 30, 16), (282, 26, 16), (96, 96, 8),
                                                     (7, 3, 16), (13, 4, 1), (0, 0, 4)])
def test_balanced_order_gives_every_microbatch_its_share(n, n_D, batch_size):
    labels = np.arange(n) < n_D  # chosen first, the order a conversion writes
    order = toy.balanced_order(labels, batch_size, np.random.default_rng(0))
    assert order.dtype == np.int64 and sorted(order) == list(range(n))
    sizes = np.array([min(batch_size, n - s) for s in range(0, n, batch_size)])
    counts = np.rint(toy.batch_label_shares(labels[order], batch_size) * sizes)
    assert ((sizes * n_D // n <= counts) & (counts <= -(-sizes * n_D // n))).all()
    again = toy.balanced_order(list(labels), batch_size, np.random.default_rng(0))
    np.testing.assert_array_equal(again, order)



@pytest.mark.parametrize("batch_size", [0, -2, 1.5])
def test_balanced_order_refuses_a_batch_that_is_not_a_count(batch_size):
    with pytest.raises(ValueError, match="batch_size must be a whole number"):
        toy.balanced_order([True, False, False], batch_size, np.random.default_rng(0))

def test_label_quality_is_a_set_of_shares():
    quality = toy.label_quality(seed=1)
    assert set(quality) == {"chosen_negative", "rejected_positive", "pairs_reversed"}
    assert all(0 <= v <= 1 for v in quality.values())


def test_experiments_return_one_value_per_setting_and_seed():
    ordering = toy.ordering_experiment(seeds=(0,), epochs=1)
    assert ordering["dpo"].shape == (2, 1) and ordering["reference"].shape == (1,)
    noise = toy.noise_experiment(fractions=(0.0, 0.4), seeds=(0,), epochs=1)
    assert noise["kto"].shape == noise["dpo_kl"].shape == (2, 1)
    imbalance = toy.imbalance_experiment(keeps=(1.0, 0.1), seeds=(0,), epochs=1)
    assert imbalance["kto_weighted"].shape == (2, 1)
    # Eq. 8's low end: lambda_D n_D / n_U = 1 after the drop.
    assert imbalance["lambda_D"][0, 0] == pytest.approx(1.0)
    assert imbalance["lambda_D"][1, 0] > 5
    for result in (noise, imbalance):
        for value in result.values():
            assert np.isfinite(value).all()


# ---------------------------------------------------------------------------------------------
# Checks: the references and the notebook's solutions pass; misconceptions fail clearly
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hidden", [False, True])
@pytest.mark.parametrize("name", EXERCISES)
def test_reference_passes(name, hidden, capsys):
    passes(name, REFERENCES[name], hidden, capsys)


def test_notebook_has_exactly_these_exercises():
    assert set(answer_cells(LESSON)) == set(EXERCISES)


@pytest.mark.parametrize("name", EXERCISES)
def test_notebook_solution_passes(name):
    fn = define(answer_cells(LESSON)[name], name, NAMESPACE)
    assert first_failure(name, fn) is None


BUGS = PLANTED_BUGS[LESSON]


@pytest.mark.parametrize("bug", BUGS, ids=[f"{b.exercise}-{b.why}" for b in BUGS])
def test_planted_bug_fails_with_its_message(bug):
    message = first_failure(bug.exercise, define(bug.code, bug.exercise, NAMESPACE))
    assert message is not None, f"the check passed the planted bug: {bug.why}"
    assert bug.message.lower() in message.lower(), message


def test_every_exercise_has_a_planted_bug():
    assert {bug.exercise for bug in BUGS} == set(EXERCISES)


def _returns_nan(*args, **kwargs):
    return np.full(3, np.nan)


def _returns_nan_scalar(*args, **kwargs):
    return torch.tensor(float("nan"), requires_grad=True)


@pytest.mark.parametrize("name", EXERCISES)
@pytest.mark.parametrize(
    "bad, words",
    [(raising(RuntimeError("boom")), "raised RuntimeError"), (returns_none, "None")],
    ids=["raises", "none"],
)
def test_broken_functions_fail_clearly(name, bad, words):
    message = first_failure(name, bad)
    assert message is not None and words in message


def test_nan_and_wrong_shapes_fail_clearly():
    assert "3 indices for 100 rows" in first_failure("balanced_order", _returns_nan)

    def nan_per_row(labels, batch_size, rng):
        return np.full(len(labels), np.nan)

    assert "integer row indices" in first_failure("balanced_order", nan_per_row)
    assert "NaN" in first_failure("dpo_batch_loss", _returns_nan_scalar)
    assert "shape" in first_failure("flip_labels", _returns_nan)

    def one_row_repeated(labels, batch_size, rng):
        order = toy.balanced_order(labels, batch_size, rng)
        return np.append(order[:-1], order[0])

    assert "not a permutation" in first_failure("balanced_order", one_row_repeated)

    def microbatches(labels, batch_size, rng):
        order = toy.balanced_order(labels, batch_size, rng)
        return [order[s : s + batch_size] for s in range(0, len(order), batch_size)]

    assert "one flat array" in first_failure("balanced_order", microbatches)

    def per_pair_losses(theta, theta_ref, prompt, chosen, rejected, beta):
        logp, logp_ref = F.log_softmax(theta, -1), F.log_softmax(theta_ref, -1)
        r_w = logp[prompt, chosen] - logp_ref[prompt, chosen]
        r_l = logp[prompt, rejected] - logp_ref[prompt, rejected]
        return -F.logsigmoid(beta * (r_w - r_l))  # no mean: shape (B,)

    assert "shape" in first_failure("dpo_batch_loss", per_pair_losses)

    def rows_as_tuples(pairs, rng):
        rows = toy.pairs_to_unpaired(pairs, rng)
        return [(r["prompt"], r["completion"], r["label"]) for r in rows]

    assert "dict" in first_failure("pairs_to_unpaired", rows_as_tuples)

    def one_row_per_pair(pairs, rng):
        return toy.pairs_to_unpaired(pairs, rng)[: len(pairs)]

    assert "exactly two rows" in first_failure("pairs_to_unpaired", one_row_per_pair)


def test_more_misconceptions_are_named():
    def integer_labels(pairs, rng):
        return [dict(row, label=int(row["label"])) for row in toy.pairs_to_unpaired(pairs, rng)]

    assert "booleans" in first_failure("pairs_to_unpaired", integer_labels)

    def rounded_down(labels, batch_size, rng):
        # Every microbatch gets floor(m * share); the desirable rows left over come last.
        labels = np.asarray(labels, dtype=bool)
        n, share = len(labels), labels.mean()
        d = list(rng.permutation(np.flatnonzero(labels)))
        u = list(rng.permutation(np.flatnonzero(~labels)))
        order = []
        for start in range(0, n, batch_size):
            m = min(batch_size, n - start)
            k = int(m * share) if start + m < n else len(d)
            order += d[:k] + u[: m - k]
            d, u = d[k:], u[m - k :]
        return np.array(order + d + u)

    assert "surplus piles up at the end" in first_failure("balanced_order", rounded_down)

    def grouped(labels, batch_size, rng):
        labels = np.asarray(labels, dtype=bool)
        return np.concatenate([rng.permutation(np.flatnonzero(labels)),
                               rng.permutation(np.flatnonzero(~labels))])  # fmt: skip

    assert "single label" in first_failure("balanced_order", grouped)

    def unchanged(labels, batch_size, rng):
        return np.arange(len(labels))

    assert "nothing was reordered" in first_failure("balanced_order", unchanged)

    def sorted_desirable(labels, batch_size, rng):
        labels = np.asarray(labels, dtype=bool)
        order = toy.balanced_order(labels, batch_size, rng)
        where = labels[order]
        order[where] = np.sort(order[where])  # the desirable rows back in their own order
        return order

    assert "keep their original order" in first_failure("balanced_order", sorted_desirable)

    def fixed_generator(labels, batch_size, rng):
        return toy.balanced_order(labels, batch_size, np.random.default_rng(0))

    assert "whatever the rng" in first_failure("balanced_order", fixed_generator)

    def reorders_in_place(labels, batch_size, rng):
        order = toy.balanced_order(labels, batch_size, rng)
        labels[:] = np.asarray(labels)[order]
        return order

    assert "changed the labels" in first_failure("balanced_order", reorders_in_place)

    def too_short(labels, batch_size, rng):
        return toy.balanced_order(labels, batch_size, rng)[1:]

    assert "every row must be read exactly once" in first_failure("balanced_order", too_short)

    def no_beta(theta, theta_ref, prompt, chosen, rejected, beta):
        return toy.dpo_batch_loss(theta, theta_ref, prompt, chosen, rejected, 1.0)

    assert "beta is missing" in first_failure("dpo_batch_loss", no_beta)

    def probabilities(theta, theta_ref, prompt, chosen, rejected, beta):
        p, p_ref = torch.softmax(theta, -1), torch.softmax(theta_ref, -1)
        margin = (p[prompt, chosen] - p_ref[prompt, chosen]) - (
            p[prompt, rejected] - p_ref[prompt, rejected]
        )
        return -F.logsigmoid(beta * margin).mean()

    assert "probabilities" in first_failure("dpo_batch_loss", probabilities)

    def detached_rejected(theta, theta_ref, prompt, chosen, rejected, beta):
        logp, logp_ref = F.log_softmax(theta, -1), F.log_softmax(theta_ref, -1)
        r_w = logp[prompt, chosen] - logp_ref[prompt, chosen]
        r_l = (logp[prompt, rejected] - logp_ref[prompt, rejected]).detach()
        return -F.logsigmoid(beta * (r_w - r_l)).mean()

    assert "wrong gradient" in first_failure("dpo_batch_loss", detached_rejected)

    def set_to_false(labels, fraction, rng):
        labels = np.array(labels, dtype=bool)
        where = rng.choice(len(labels), size=round(fraction * len(labels)), replace=False)
        labels[where] = False  # "flipping" that leaves False labels unchanged
        return labels

    assert "number of flipped labels" in first_failure("flip_labels", set_to_false)

    def with_replacement(labels, fraction, rng):
        labels = np.array(labels, dtype=bool)
        where = rng.choice(len(labels), size=round(fraction * len(labels)), replace=True)
        labels[where] = ~labels[where]
        return labels

    assert "number of flipped labels" in first_failure("flip_labels", with_replacement)

    def ignores_rng(labels, fraction, rng):
        return toy.flip_labels(labels, fraction, np.random.default_rng(0))

    assert "rng" in first_failure("flip_labels", ignores_rng)

    def fixed_order(pairs, rng):
        return toy.pairs_to_unpaired(pairs, np.random.default_rng(0))

    assert "rng" in first_failure("pairs_to_unpaired", fixed_order)


def test_checks_restore_the_global_generators():
    np.random.seed(123)
    expected = np.random.random()
    np.random.seed(123)
    checks.check_flip_labels(toy.flip_labels)
    checks.check_pairs_to_unpaired(toy.pairs_to_unpaired)
    checks.check_balanced_order(toy.balanced_order)
    assert np.random.random() == expected


# ---------------------------------------------------------------------------------------------
# Demos driven from Python, and every render function swept over its controls' ranges
# ---------------------------------------------------------------------------------------------


def test_pair_margins_demo_behaves_as_the_lesson_says():
    demo = demos.pair_margins()
    before, plot = readout(demo), figures.png_bytes(demo.figure)
    assert before["DPO loss"] == pytest.approx(0.313, abs=1e-3)
    demo.controls["shift"].value = 10.0
    after = readout(demo)
    assert after["DPO loss"] == before["DPO loss"]  # a common lift is invisible to DPO
    assert after["d loss / d r_w"] == before["d loss / d r_w"]
    assert after["KTO loss"] > before["KTO loss"]
    assert after["chosen row loss"] < before["chosen row loss"]
    assert abs(after["d L / d r_w"]) < abs(before["d L / d r_w"]) / 10  # saturated
    assert figures.png_bytes(demo.figure) != plot
    demo.controls["shift"].value = 0.0
    demo.controls["margin"].value = -4.0
    wrong = readout(demo)
    demo.controls["margin"].value = 4.0
    right = readout(demo)
    assert wrong["DPO loss"] / right["DPO loss"] > 10  # unbounded
    assert wrong["KTO loss"] < 1.0 and wrong["KTO loss"] > right["KTO loss"]  # bounded


def test_batch_order_demo_behaves_as_the_lesson_says():
    demo = demos.batch_order()
    first = readout(demo)
    assert first["one-label share"] == 100
    plot = figures.png_bytes(demo.figure)
    demo.controls["order"].value = "shuffled"
    shuffled = readout(demo)
    assert shuffled["one-label microbatches"] < first["one-label microbatches"]
    assert figures.png_bytes(demo.figure) != plot
    demo.controls["batch_size"].value = 2
    assert readout(demo)["one-label share"] > shuffled["one-label share"]
    demo.controls["order"].value = "chosen first"
    for size in demo.controls["batch_size"].options:
        demo.controls["batch_size"].value = size
        assert readout(demo)["one-label share"] == 100


def _sweep(render, grid):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for values in grid:
            fig, html = render(**values)
            text = readout_text(html)
            assert "nan" not in text.lower() and "inf" not in text.lower(), (values, text)
            assert readout_numbers(text), values
            figures.png_bytes(fig)


def test_pair_margins_sweep():
    margins, shifts = (-10.0, 0.0, 10.0), (-15.0, 15.0)
    z0s, betas = (0.0, 5.0), (0.05, 1.0)
    grid = [
        {"margin": m, "shift": s, "z0": z, "beta": b}
        for m, s, z, b in itertools.product(margins, shifts, z0s, betas)
    ]
    _sweep(figures.pair_margins, grid)


def test_batch_order_sweep():
    grid = [
        {"order": o, "batch_size": b, "seed": 0}
        for o, b in itertools.product(figures.BATCH_ORDERS, (2, 4, 8, 16, 32))
    ]
    grid.append({"order": "shuffled", "batch_size": 8, "seed": 20})
    _sweep(figures.batch_order, grid)
    with pytest.raises(ValueError, match="order must be one of"):
        figures.batch_order("backwards")


def test_experiment_figures_draw_without_warnings():
    rng = np.random.default_rng(0)
    base = {"reference": rng.normal(size=2), "best": 2 + rng.random(2)}
    noise = dict(base, fractions=np.array([0.0, 0.2, 0.4]))
    noise.update({k: rng.normal(size=(3, 2)) for k in ("dpo", "kto", "dpo_kl", "kto_kl")})
    keys = ("kto", "kto_weighted", "dpo", "kto_kl", "kto_weighted_kl", "dpo_kl", "lambda_D")
    imbalance = dict(base, keeps=np.array([1.0, 0.5, 0.1]))
    imbalance.update({k: rng.random((3, 2)) for k in keys})
    ordering = dict(base)
    ordering.update({k: rng.random((2, 2)) for k in ("dpo", "kto_shuffled", "kto_chosen_first")})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for render, result in (
            (figures.noise_experiment_figure, noise),
            (figures.imbalance_experiment_figure, imbalance),
        ):
            fig, table = render(result)
            figures.png_bytes(fig)
            assert table.count("<tr>") == 1 + 3 and "nan" not in table
        table = figures.ordering_experiment_table(ordering)
        assert "KTO, chosen rows first" in table and "nan" not in table
