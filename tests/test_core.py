"""kto_course.core: the seed page's witness, bad inputs, and properties of the KTO math."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kto_course import core

# ---------------------------------------------------------------------------------------------
# The seed page's code witness (shared/seed/kto_concept_page.txt, section 03), reproduced
# ---------------------------------------------------------------------------------------------

SEED = dict(
    logp_theta=np.array([-8.2, -5.1, -7.0, -6.4]),
    logp_ref=np.array([-8.6, -5.0, -6.1, -6.9]),
    desirable=np.array([True, True, False, False]),
    mismatch_logp_theta=np.array([-6.0, -7.2, -5.8, -8.0]),
    mismatch_logp_ref=np.array([-6.3, -7.6, -6.0, -8.2]),
    beta=0.2,
)


def _plain_sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_seed_witness_r_z0_delta():
    r = core.log_ratio(SEED["logp_theta"], SEED["logp_ref"])
    mismatch_r = core.log_ratio(SEED["mismatch_logp_theta"], SEED["mismatch_logp_ref"])
    z0 = core.z0_estimate(mismatch_r)
    np.testing.assert_allclose(r, [0.4, -0.1, -0.9, 0.5], atol=1e-12)
    np.testing.assert_allclose(mismatch_r, [0.3, 0.4, 0.2, 0.2], atol=1e-12)
    assert z0 == pytest.approx(0.275)
    np.testing.assert_allclose(r - z0, [0.125, -0.375, -1.175, 0.225], atol=1e-12)


def test_seed_witness_losses_and_gradient_signs():
    r = np.array([0.4, -0.1, -0.9, 0.5])
    z0, beta, d = 0.275, SEED["beta"], SEED["desirable"]
    losses = core.kto_losses(r, z0, d, beta)
    # The seed prints these rounded to 3 decimals; recomputed here from the formula by hand.
    expected = [
        1 - _plain_sigmoid(beta * (0.4 - z0)),
        1 - _plain_sigmoid(beta * (-0.1 - z0)),
        1 - _plain_sigmoid(beta * (z0 + 0.9)),
        1 - _plain_sigmoid(beta * (z0 - 0.5)),
    ]
    np.testing.assert_allclose(losses, expected, rtol=1e-12)
    np.testing.assert_allclose(np.round(losses, 3), [0.494, 0.519, 0.442, 0.511])
    assert round(core.kto_loss(r, z0, d, beta), 3) == 0.491
    grad = core.kto_loss_grad(r, z0, d, beta)
    np.testing.assert_allclose(np.round(grad, 3), [-0.05, -0.05, 0.049, 0.05])
    assert (grad[d] < 0).all() and (grad[~d] > 0).all()


# ---------------------------------------------------------------------------------------------
# Individual objects
# ---------------------------------------------------------------------------------------------


def test_sequence_logps_sums_completion_tokens_only():
    token_logps = np.array([[-1.0, -2.0, -0.5, -0.25, -9.0], [-3.0, -0.1, -0.2, -7.0, -7.0]])
    mask = np.array([[0, 0, 1, 1, 0], [0, 1, 1, 0, 0]], dtype=bool)
    np.testing.assert_allclose(core.sequence_logps(token_logps, mask), [-0.75, -0.3])
    assert core.sequence_logps([-0.5, -0.5], [1, 1]) == pytest.approx(-1.0)


def test_dpo_loss_matches_definition_and_prefers_larger_margin():
    loss = core.dpo_loss(1.0, -1.0, beta=0.5)
    assert loss == pytest.approx(-math.log(_plain_sigmoid(0.5 * 2.0)))
    assert core.dpo_loss(2.0, 0.0, 0.1) < core.dpo_loss(1.0, 0.0, 0.1)
    assert core.dpo_loss(0.0, 0.0, 0.1) == pytest.approx(math.log(2))


@pytest.mark.parametrize("n", [2, 3, 4, 5, 7, 16])
def test_mismatched_indices_conventions(n):
    trl = core.mismatched_indices(n)
    halos = core.mismatched_indices(n, convention="halos")
    assert list(trl) == [(i - 1) % n for i in range(n)]  # x_i gets y_{i-1}
    assert list(halos) == [(i + 1) % n for i in range(n)]  # x_i gets y_{i+1}
    assert sorted(trl) == list(range(n))  # a permutation: every completion used once


def test_dpo_loss_grad_matches_finite_differences():
    r_w, r_l, beta, h = np.array([1.0, -2.0, 40.0]), np.array([0.5, 3.0, -40.0]), 0.3, 1e-6
    numeric = (core.dpo_loss(r_w + h, r_l, beta) - core.dpo_loss(r_w - h, r_l, beta)) / (2 * h)
    np.testing.assert_allclose(core.dpo_loss_grad(r_w, r_l, beta), numeric, rtol=1e-6, atol=1e-12)


def test_z0_of_many_microbatches_at_once_equals_one_at_a_time():
    r_mis = np.random.default_rng(0).normal(0.1, 1.0, size=(50, 6))
    for clamp in (True, False):
        batched = core.z0_estimate(r_mis, clamp=clamp)
        assert batched.shape == (50,)
        np.testing.assert_allclose(batched, [core.z0_estimate(row, clamp=clamp) for row in r_mis])


def test_z0_mean_then_clamp():
    assert core.z0_estimate([-1.0, -3.0]) == 0.0
    assert core.z0_estimate([-1.0, -3.0], clamp=False) == -2.0
    assert core.z0_estimate([1.0, 2.0]) == 1.5


def test_value_functions_and_losses_are_consistent():
    delta = np.linspace(-5, 5, 11)
    v_D = core.value_desirable(delta, 0.3, 1.5)
    v_U = core.value_undesirable(delta, 0.3, 0.5)
    r = delta + 0.2
    np.testing.assert_allclose(
        core.kto_losses(r, 0.2, np.ones(11, bool), 0.3, 1.5, 0.5), 1.5 - v_D, atol=1e-12
    )
    np.testing.assert_allclose(
        core.kto_losses(r, 0.2, np.zeros(11, bool), 0.3, 1.5, 0.5), 0.5 - v_U, atol=1e-12
    )


def test_batch_loss_is_plain_mean_weights_not_renormalised():
    r, d = np.array([0.5, -0.5, 1.0]), np.array([True, False, False])
    per = core.kto_losses(r, 0.1, d, 0.1, lambda_D=2.0, lambda_U=0.5)
    assert core.kto_loss(r, 0.1, d, 0.1, 2.0, 0.5) == pytest.approx(per.sum() / 3)


def test_apo_zero_unpaired_is_kto_with_z0_zero():
    r, d = np.array([0.5, -2.0, 3.0]), np.array([True, False, True])
    np.testing.assert_allclose(
        core.apo_zero_unpaired_losses(r, d, 0.2),
        np.where(d, 1 - core.sigmoid(0.2 * r), core.sigmoid(0.2 * r)),
    )


def test_imbalance_rule_like_trl_warning():
    # 100 desirable, 1000 undesirable: TRL recommends desirable_weight in [10, 13.3].
    rec = core.recommended_weights(100, 1000)
    assert not rec["in_range"]
    assert rec["lambda_D_range"] == pytest.approx((10.0, 1000 / 75))
    assert rec["lambda_U_range"] == pytest.approx((0.075, 0.1))
    for lam_D in rec["lambda_D_range"]:
        assert 1 - 1e-12 <= core.imbalance_ratio(100, 1000, lam_D, 1.0) <= 4 / 3 + 1e-12
    for lam_U in rec["lambda_U_range"]:
        assert 1 - 1e-12 <= core.imbalance_ratio(100, 1000, 1.0, lam_U) <= 4 / 3 + 1e-12
    assert core.recommended_weights(120, 100)["in_range"]


# ---------------------------------------------------------------------------------------------
# Bad input: a ValueError that says what was wrong and what to do
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda: core.log_ratio([1.0, 2.0], [1.0]), "shape mismatch"),
        (lambda: core.log_ratio([], []), "empty"),
        (lambda: core.kto_losses([0.1, 0.2], 0.0, [1, 0]), "must be booleans"),
        (lambda: core.kto_losses([0.1, 0.2], 0.0, [True]), "shape mismatch"),
        (lambda: core.kto_losses([0.1], 0.0, [True], beta=-0.1), "beta must be"),
        (lambda: core.kto_losses([0.1], 0.0, [True], beta=0), "beta must be"),
        (lambda: core.kto_losses([0.1], [0.0, 1.0], [True]), "single number"),
        (lambda: core.kto_losses([0.1], 0.0, [True], lambda_D=-1), "lambda_D"),
        (lambda: core.mismatched_indices(1), "only other completion"),
        (lambda: core.mismatched_indices(0), "cannot estimate z0"),
        (lambda: core.mismatched_indices(2.5), "whole number"),
        (lambda: core.mismatched_indices(4, convention="reverse"), "convention"),
        (lambda: core.z0_estimate([0.3]), "batch of 1"),
        (lambda: core.z0_estimate([]), "empty"),
        (lambda: core.z0_estimate(0.3), "shape (B,)"),
        (lambda: core.sequence_logps([[-1.0, -2.0]], [[1, 0, 1]]), "shape mismatch"),
        (lambda: core.sequence_logps([-1.0, -2.0], [1, 2]), "True/False"),
        (lambda: core.sequence_logps([-1.0, 0.5], [1, 1]), "<= 0"),
        (lambda: core.dpo_loss([0.1], [0.2, 0.3], 0.1), "shape mismatch"),
        (lambda: core.log_ratio([np.nan], [0.0]), "NaN"),
        (lambda: core.recommended_weights(0, 10), "n_D"),
    ],
)
def test_bad_input_raises_clear_value_error(call, words):
    with pytest.raises(ValueError, match=None) as info:
        call()
    assert words in str(info.value)


# ---------------------------------------------------------------------------------------------
# Properties (hypothesis)
# ---------------------------------------------------------------------------------------------

finite = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False)
betas = st.floats(min_value=1e-3, max_value=10.0)
weights = st.floats(min_value=0.05, max_value=5.0)


@given(r=finite, z0=st.floats(min_value=0, max_value=1e3), beta=betas, lam=weights)
def test_gradient_signs_everywhere(r, z0, beta, lam):
    g_D = core.kto_loss_grad(r, z0, True, beta, lambda_D=lam)
    g_U = core.kto_loss_grad(r, z0, False, beta, lambda_U=lam)
    assert g_D <= 0 <= g_U
    if abs(beta * (r - z0)) < 600:  # beyond that s(1-s) underflows to exactly 0 in float64
        assert g_D < 0 < g_U


@given(beta=betas, lam=weights, delta=st.floats(min_value=-50, max_value=50))
def test_gradient_magnitude_peaks_at_baseline(beta, lam, delta):
    for label in (True, False):
        peak = abs(core.kto_loss_grad(0.0, 0.0, label, beta, lam, lam))
        assert peak == pytest.approx(lam * beta / 4)
        assert abs(core.kto_loss_grad(delta, 0.0, label, beta, lam, lam)) <= peak + 1e-15


@given(beta=betas, lam=weights, label=st.booleans())
def test_gradient_saturates_far_from_baseline(beta, lam, label):
    mags = [abs(core.kto_loss_grad(d / beta, 0.0, label, beta, lam, lam)) for d in (5, 20, 60)]
    assert mags[0] > mags[1] > mags[2] >= 0
    assert mags[2] < 1e-20 * lam * beta + 1e-300


@settings(max_examples=60, deadline=None)
@given(
    r=st.lists(st.floats(-20, 20), min_size=1, max_size=8),
    z0=st.floats(0, 5),
    beta=st.floats(0.01, 3.0),
    lam_D=weights,
    lam_U=weights,
    data=st.data(),
)
def test_analytic_gradient_equals_autograd(r, z0, beta, lam_D, lam_U, data):
    import torch

    d = np.array(data.draw(st.lists(st.booleans(), min_size=len(r), max_size=len(r))))
    r_t = torch.tensor(r, dtype=torch.float64, requires_grad=True)
    x = beta * (r_t - z0)
    per_example = torch.where(
        torch.tensor(d), lam_D * (1 - torch.sigmoid(x)), lam_U * (1 - torch.sigmoid(-x))
    )
    per_example.sum().backward()
    np.testing.assert_allclose(
        core.kto_loss_grad(np.array(r), z0, d, beta, lam_D, lam_U), r_t.grad.numpy(), atol=1e-12
    )


@given(n=st.integers(min_value=2, max_value=2000), convention=st.sampled_from(["trl", "halos"]))
def test_mismatched_indices_never_pair_an_example_with_itself(n, convention):
    idx = core.mismatched_indices(n, convention)
    assert not (idx == np.arange(n)).any()


@given(n=st.integers(min_value=1, max_value=50))
def test_reversal_would_pair_the_middle_example_with_itself_on_odd_batches(n):
    # Why the course (and TRL since issue #1911) shifts instead of reversing.
    reversed_idx = np.arange(n)[::-1]
    assert (reversed_idx == np.arange(n)).any() == (n % 2 == 1)


@given(x=st.lists(finite, min_size=1, max_size=20), beta=betas, label=st.booleans())
def test_no_overflow_warning_and_finite_up_to_1e4(x, beta, label):
    x = np.array(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        outputs = [
            core.sigmoid(x),
            core.log_sigmoid(x),
            core.kto_losses(x, 0.0, np.full(x.shape, label), beta),
            core.kto_loss_grad(x, 0.0, np.full(x.shape, label), beta),
            core.dpo_loss(x, -x, beta),
            core.value_desirable(x, beta),
            core.value_undesirable(x, beta),
        ]
    for out in outputs:
        assert np.isfinite(out).all()
    s = core.sigmoid(x)
    assert ((0 <= s) & (s <= 1)).all()
    assert (np.asarray(core.log_sigmoid(x)) <= 0).all()


@given(x=st.floats(-30, 30))
def test_sigmoid_log_sigmoid_match_plain_formulas_where_those_are_safe(x):
    assert core.sigmoid(x) == pytest.approx(_plain_sigmoid(x), rel=1e-12)
    assert core.log_sigmoid(x) == pytest.approx(math.log(_plain_sigmoid(x)), rel=1e-9, abs=1e-12)
