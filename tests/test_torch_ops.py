"""kto_course.torch_ops: agreement with core, the shift, masks, detached z0, TRL metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kto_course import core, torch_ops


def _batch(seed=0, B=6, T=9, V=11):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g, dtype=torch.float64)
    ids = torch.randint(0, V, (B, T), generator=g)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b in range(B):  # prompt of 2-4 tokens, completion of 2-4 tokens, then padding
        start = 2 + b % 3
        mask[b, start : start + 2 + b % 3] = True
    return logits, ids, mask


def test_token_logps_apply_the_causal_shift():
    logits, ids, _ = _batch()
    per_token = torch_ops.token_logps(logits, ids)
    assert per_token.shape == (ids.shape[0], ids.shape[1] - 1)
    b, t = 3, 4  # token t of the sequence is predicted by the logits at position t-1
    expected = torch.log_softmax(logits[b, t - 1], -1)[ids[b, t]]
    assert per_token[b, t - 1].item() == pytest.approx(expected.item())


def test_sequence_logps_sum_completion_tokens_and_match_core():
    logits, ids, mask = _batch()
    seq = torch_ops.sequence_logps_from_logits(logits, ids, mask)
    per_token = torch_ops.token_logps(logits, ids).numpy()
    np.testing.assert_allclose(seq.numpy(), core.sequence_logps(per_token, mask[:, 1:].numpy()))
    # The tensor twin of core.sequence_logps: same name, same arguments.
    torch.testing.assert_close(
        torch_ops.sequence_logps(torch.from_numpy(per_token), mask[:, 1:]), seq
    )
    # Changing a prompt or padding token's logits leaves the sum unchanged.
    logits2 = logits.clone()
    logits2[:, 0] += torch.randn_like(logits2[:, 0])
    logits2[:, -1] += 5.0
    torch.testing.assert_close(torch_ops.sequence_logps_from_logits(logits2, ids, mask), seq)


def test_dpo_loss_matches_core():
    r_w, r_l = torch.tensor([0.5, -1.0, 30.0]), torch.tensor([0.0, 2.0, -30.0])
    np.testing.assert_allclose(
        torch_ops.dpo_loss(r_w, r_l, 0.3).numpy(), core.dpo_loss(r_w.numpy(), r_l.numpy(), 0.3),
        rtol=1e-6,
    )
    with pytest.raises(ValueError, match="shape mismatch"):
        torch_ops.dpo_loss(r_w, r_l[:2])


def test_mismatched_indices_tensor():
    idx = torch_ops.mismatched_indices(5)
    assert idx.dtype == torch.long and idx.tolist() == [4, 0, 1, 2, 3]


def _kto_inputs(seed, B, n_desirable):
    g = torch.Generator().manual_seed(seed)
    logp_ref = -torch.rand(B, generator=g, dtype=torch.float64) * 20
    logp_theta = (logp_ref + torch.randn(B, generator=g, dtype=torch.float64)).requires_grad_()
    kl_ref = -torch.rand(B, generator=g, dtype=torch.float64) * 20
    kl_theta = kl_ref + torch.randn(B, generator=g, dtype=torch.float64) + 0.5
    desirable = torch.zeros(B, dtype=torch.bool)
    desirable[:n_desirable] = True
    return logp_theta, logp_ref, desirable, kl_theta, kl_ref


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    B=st.integers(2, 12),
    frac=st.floats(0, 1),
    beta=st.floats(0.01, 2),
    lam_D=st.floats(0.1, 3),
    lam_U=st.floats(0.1, 3),
)
def test_kto_loss_and_gradient_agree_with_core(seed, B, frac, beta, lam_D, lam_U):
    logp_theta, logp_ref, desirable, kl_theta, kl_ref = _kto_inputs(seed, B, round(frac * B))
    loss, metrics = torch_ops.batch_kto_loss(
        logp_theta, logp_ref, kl_theta, kl_ref, desirable, beta, lam_D, lam_U
    )
    r = (logp_theta - logp_ref).detach().numpy()
    z0 = core.z0_estimate((kl_theta - kl_ref).numpy())
    d = desirable.numpy()
    assert loss.item() == pytest.approx(core.kto_loss(r, z0, d, beta, lam_D, lam_U), rel=1e-10)
    assert metrics["kl"] == pytest.approx(z0)
    loss.backward()
    # d(mean loss)/d logp_theta = (1/B) dL/dr with z0 held fixed: z0 is detached.
    np.testing.assert_allclose(
        logp_theta.grad.numpy(), core.kto_loss_grad(r, z0, d, beta, lam_D, lam_U) / B, atol=1e-12
    )


def test_z0_is_detached_even_when_kl_logps_carry_gradients():
    logp_theta, logp_ref, desirable, kl_theta, kl_ref = _kto_inputs(1, 6, 3)
    kl_theta = kl_theta.clone().requires_grad_()
    loss, _ = torch_ops.batch_kto_loss(logp_theta, logp_ref, kl_theta, kl_ref, desirable)
    loss.backward()
    assert kl_theta.grad is None
    assert torch_ops.z0_estimate(kl_theta - kl_ref).requires_grad is False


def test_metrics_named_and_computed_as_trl_logs_them():
    logp_theta, logp_ref, desirable, kl_theta, kl_ref = _kto_inputs(2, 8, 3)
    beta = 0.1
    _, m = torch_ops.batch_kto_loss(logp_theta, logp_ref, kl_theta, kl_ref, desirable, beta=beta)
    r = (logp_theta - logp_ref).detach()
    assert set(m) == {
        "kl", "rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen",
        "logps/rejected",
    }  # fmt: skip
    assert m["rewards/chosen"] == pytest.approx((beta * r[desirable]).mean().item())
    assert m["rewards/rejected"] == pytest.approx((beta * r[~desirable]).mean().item())
    assert m["rewards/margins"] == pytest.approx(m["rewards/chosen"] - m["rewards/rejected"])
    assert m["logps/chosen"] == pytest.approx(logp_theta[desirable].mean().item())
    assert m["logps/rejected"] == pytest.approx(logp_theta[~desirable].mean().item())


@pytest.mark.parametrize("n_desirable", [0, 5])
def test_single_label_batches_give_finite_loss_and_omit_missing_metrics(n_desirable):
    logp_theta, logp_ref, desirable, kl_theta, kl_ref = _kto_inputs(3, 5, n_desirable)
    loss, m = torch_ops.batch_kto_loss(logp_theta, logp_ref, kl_theta, kl_ref, desirable)
    assert torch.isfinite(loss)
    assert all(np.isfinite(v) for v in m.values())
    assert "rewards/margins" not in m
    present, absent = ("chosen", "rejected") if n_desirable else ("rejected", "chosen")
    assert f"rewards/{present}" in m and f"logps/{present}" in m
    assert f"rewards/{absent}" not in m and f"logps/{absent}" not in m


def test_apo_zero_unpaired_matches_core_and_needs_no_kl_batch():
    logp_theta, logp_ref, desirable, _, _ = _kto_inputs(4, 6, 2)
    loss, m = torch_ops.batch_kto_loss(logp_theta, logp_ref, None, None, desirable,
                                   loss_type="apo_zero_unpaired")
    r = (logp_theta - logp_ref).detach().numpy()
    expected = core.apo_zero_unpaired_losses(r, desirable.numpy(), 0.1).mean()
    assert loss.item() == pytest.approx(expected, rel=1e-10)
    assert m["kl"] == 0.0


def test_float32_agrees_with_core_to_float_precision():
    logp_theta, logp_ref, desirable, kl_theta, kl_ref = _kto_inputs(5, 16, 7)
    loss32, _ = torch_ops.batch_kto_loss(
        logp_theta.detach().float(), logp_ref.float(), kl_theta.float(), kl_ref.float(), desirable
    )
    r = (logp_theta - logp_ref).detach().numpy()
    z0 = core.z0_estimate((kl_theta - kl_ref).numpy())
    assert loss32.item() == pytest.approx(core.kto_loss(r, z0, desirable.numpy()), rel=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        (dict(kl_logp_theta=torch.zeros(1), kl_logp_ref=torch.zeros(1)), "at least 2"),
        (dict(desirable=torch.tensor([1, 0, 1])), "bool tensor"),
        (dict(desirable=torch.tensor([True, False])), "shape mismatch"),
        (dict(logp_ref=torch.zeros(4)), "shape mismatch"),
        (dict(beta=-0.1), "beta must be"),
        (dict(loss_type="sigmoid"), "loss_type"),
        (dict(kl_logp_theta=None), "needs kl_logp_theta"),
        (
            dict(
                logp_theta=torch.zeros(0),
                logp_ref=torch.zeros(0),
                desirable=torch.zeros(0, dtype=torch.bool),
            ),
            "empty",
        ),
    ],
)
def test_kto_loss_bad_input(kwargs, words):
    args = dict(
        logp_theta=torch.zeros(3),
        logp_ref=torch.zeros(3),
        desirable=torch.tensor([True, False, True]),
        kl_logp_theta=torch.zeros(3),
        kl_logp_ref=torch.zeros(3),
    )
    args.update(kwargs)
    with pytest.raises(ValueError) as info:
        torch_ops.batch_kto_loss(**args)
    assert words in str(info.value)


from_logits = torch_ops.sequence_logps_from_logits


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda lg, i, m: from_logits(lg, i[:, :-1], m), "shape mismatch"),
        (lambda lg, i, m: from_logits(lg, i, m.long()), "bool tensor"),
        (lambda lg, i, m: from_logits(lg[:, :1], i[:, :1], m[:, :1]), "at least 2"),
        (lambda lg, i, m: from_logits(lg, i, torch.ones_like(m)), "first token"),
        (lambda lg, i, m: torch_ops.token_logps(lg[0], i), "dimensions"),
        (lambda lg, i, m: torch_ops.mismatched_indices(1), "only other completion"),
    ],
)
def test_logp_bad_input(make, words):
    logits, ids, mask = _batch()
    with pytest.raises(ValueError) as info:
        make(logits, ids, mask)
    assert words in str(info.value)


@pytest.mark.cuda
def test_kto_loss_on_cuda_matches_cpu():
    inputs = _kto_inputs(6, 8, 4)
    logp_theta, logp_ref, desirable, kl_theta, kl_ref = (t.detach() for t in inputs)
    cpu_loss, cpu_m = torch_ops.batch_kto_loss(logp_theta, logp_ref, kl_theta, kl_ref, desirable)
    gpu_loss, gpu_m = torch_ops.batch_kto_loss(
        *(t.cuda() for t in (logp_theta, logp_ref, kl_theta, kl_ref, desirable))
    )
    assert gpu_loss.device.type == "cuda"
    assert gpu_loss.item() == pytest.approx(cpu_loss.item(), rel=1e-10)
    assert gpu_m == pytest.approx(cpu_m)


def test_head_token_logps_is_log_softmax_with_trls_rounding():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(12, 8, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(30, 8, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 30, (12,), generator=g)
    want = torch.log_softmax(hidden @ weight.T, -1).gather(-1, targets[:, None]).squeeze(-1)
    got = torch_ops.head_token_logps(hidden, weight, targets)
    assert torch.allclose(got, want, atol=1e-12)
    # The hand-written backward is the autograd of the same quantity.
    assert torch.autograd.gradcheck(torch_ops.head_token_logps, (hidden, weight, targets))
