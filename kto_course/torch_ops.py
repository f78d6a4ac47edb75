"""The KTO objects of ``core`` in PyTorch, for real models (lessons 01-04 and 06).

Same names, argument order and defaults as ``core`` for the same object; the two agree to float
precision (a test checks it). The loss and its metrics follow TRL's ``KTOTrainer``
(``loss_type="kto"`` and ``"apo_zero_unpaired"``), with metric names as TRL logs them so that
learners recognise them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kto_course import core

__all__ = [
    "token_logps",
    "sequence_logps",
    "sequence_logps_from_logits",
    "head_token_logps",
    "dpo_loss",
    "mismatched_indices",
    "z0_estimate",
    "kto_losses",
    "halo_losses",
    "batch_kto_loss",
    "LOSS_TYPES",
]

LOSS_TYPES = ("kto", "apo_zero_unpaired")


def _check_batch(name: str, t: torch.Tensor, ndim: int) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}.")
    if t.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}.")
    if t.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch: a batch needs at least one example.")


def token_logps(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log pi(token_t | tokens_<t) for t = 1..T-1, shape (B, T-1) (lesson 01, lesson 06).

    A causal LM's logits at position t predict token t+1: the logits lose their last position
    and the ids their first (the shift). Token 0 has no prediction.
    """
    _check_batch("logits", logits, 3)
    _check_batch("input_ids", input_ids, 2)
    if logits.shape[:2] != input_ids.shape:
        raise ValueError(
            f"shape mismatch: logits {tuple(logits.shape)} and input_ids {tuple(input_ids.shape)}:"
            " logits must be (B, T, vocab) for ids (B, T)."
        )
    if input_ids.shape[1] < 2:
        raise ValueError("sequences need at least 2 tokens: the first token has no prediction.")
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    return logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)


def sequence_logps(token_logps: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """log pi(y|x): the SUM of token log-probs over completion tokens (``core.sequence_logps``).

    Lesson 01. ``token_logps`` and the bool ``completion_mask`` have the same shape (B, T).
    """
    _check_batch("token_logps", token_logps, 2)
    core.same_shape(token_logps=token_logps, completion_mask=completion_mask)
    if completion_mask.dtype != torch.bool:
        raise ValueError("completion_mask must be a bool tensor (True on completion tokens).")
    return (token_logps * completion_mask).sum(-1)


def sequence_logps_from_logits(
    logits: torch.Tensor, input_ids: torch.Tensor, completion_mask: torch.Tensor
) -> torch.Tensor:
    """``sequence_logps`` of a causal LM's logits for ``input_ids``, shape (B,) (lesson 06).

    ``completion_mask`` (B, T) is True on the completion tokens of ``input_ids`` and False on
    prompt and padding tokens. It is shifted with the ids, so position 0 is never counted.
    """
    _check_batch("completion_mask", completion_mask, 2)
    core.same_shape(completion_mask=completion_mask, input_ids=input_ids)
    if completion_mask.dtype != torch.bool:
        raise ValueError("completion_mask must be a bool tensor (True on completion tokens).")
    if completion_mask[:, 0].any():
        raise ValueError(
            "completion_mask is True on the first token, which no logit predicts: a completion "
            "must follow at least one prompt token."
        )
    return sequence_logps(token_logps(logits, input_ids), completion_mask[:, 1:])


class _HeadLogps(torch.autograd.Function):
    """TRL's fused LM head on a CPU (one tile): forward ``z_t - (m + log sum exp(z - m))``,
    backward ``g * (onehot - softmax(z))`` projected back with two matmuls."""

    @staticmethod
    def forward(ctx, hidden, weight, targets):
        z = torch.mm(hidden, weight.t())
        m = z.amax(-1)
        log_z = m + torch.log(torch.exp(z - m.unsqueeze(-1)).sum(-1))
        ctx.save_for_backward(hidden, weight, targets, log_z)
        return z.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - log_z

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, targets, log_z = ctx.saved_tensors
        z = torch.mm(hidden, weight.t())  # recomputed, as the fused head does, not stored
        p = torch.exp(z - log_z.unsqueeze(-1))
        onehot = torch.arange(z.shape[-1], device=z.device) == targets.unsqueeze(-1)
        g = torch.zeros_like(z)
        g += grad.unsqueeze(-1) * (onehot.float() - p)
        grad_hidden = torch.zeros_like(hidden).addmm_(g, weight)
        grad_weight = torch.zeros_like(weight).addmm_(g.t(), hidden)
        return grad_hidden, grad_weight, None


def head_token_logps(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor):
    """log pi(target) of ``hidden @ weight.T`` without keeping the logits, shape (N,) (lesson 07).

    ``token_logps`` of the same logits with the arithmetic of TRL's fused LM head: the same
    quantity, other float rounding (~1e-6 in a sequence log-prob), which Adam amplifies over
    steps. ``hidden`` (N, d), the LM head ``weight`` (vocab, d), ``targets`` (N,) ids.
    """
    return _HeadLogps.apply(hidden, weight, targets)


def dpo_loss(r_w: torch.Tensor, r_l: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """DPO per pair: -log sigmoid(beta * (r_w - r_l)), shape (B,) (``core.dpo_loss``; lesson 01)."""
    if not isinstance(r_w, torch.Tensor) or not isinstance(r_l, torch.Tensor):
        raise ValueError("r_w and r_l must be torch tensors.")
    core.same_shape(r_w=r_w, r_l=r_l)
    beta = core.require_positive("beta", beta)
    return -F.logsigmoid(beta * (r_w - r_l))


def mismatched_indices(batch_size: int, convention: str = "trl", device=None) -> torch.Tensor:
    """The cyclic shift of ``core.mismatched_indices`` as a LongTensor (lesson 02)."""
    return torch.as_tensor(core.mismatched_indices(batch_size, convention), device=device)


def z0_estimate(mismatched_r: torch.Tensor, clamp: bool = True) -> torch.Tensor:
    """z0 = max(0, mean_j r(x_j, y'_j)), DETACHED (``core.z0_estimate``; lesson 02).

    ``mismatched_r`` are the log-ratios of a microbatch's mismatched pairs, shape (B,). z0 sets
    where the loss saturates; it is never optimised through.
    """
    _check_batch("mismatched_r", mismatched_r, 1)
    core.require_batch_of_two(mismatched_r.shape[0])
    z0 = mismatched_r.detach().mean()
    return z0.clamp(min=0) if clamp else z0


def kto_losses(r, z0, desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0) -> torch.Tensor:
    """Per-example KTO loss lambda_y - v_y (``core.kto_losses``; lesson 03), shape (B,)."""
    beta = core.require_positive("beta", beta)
    lambda_D = core.require_positive("lambda_D", lambda_D, allow_zero=True)
    lambda_U = core.require_positive("lambda_U", lambda_U, allow_zero=True)
    delta = r - z0
    # 1 - sigmoid(x) written as sigmoid(-x) (exact, and keeps precision near 1).
    return torch.where(
        desirable, lambda_D * torch.sigmoid(-beta * delta), lambda_U * torch.sigmoid(beta * delta)
    )


def halo_losses(
    r, z0, desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0, value=torch.sigmoid
) -> torch.Tensor:
    """KTO's per-example loss with ``value`` in place of the sigmoid (lesson 04), shape (B,).

    Desirable lambda_D * (1 - value(beta * delta)), undesirable lambda_U * (1 - value(-beta *
    delta)), delta = r - z0. The paper's general human-aware loss (HALO, Eq. 5) leaves the value
    function open; ``value=torch.sigmoid`` is ``kto_losses`` (to float rounding). ``value`` is
    any torch function of a tensor, so autograd differentiates each choice without a formula.
    """
    beta = core.require_positive("beta", beta)
    lambda_D = core.require_positive("lambda_D", lambda_D, allow_zero=True)
    lambda_U = core.require_positive("lambda_U", lambda_U, allow_zero=True)
    x = beta * (r - z0)
    return torch.where(desirable, lambda_D * (1 - value(x)), lambda_U * (1 - value(-x)))


def batch_kto_loss(
    logp_theta: torch.Tensor,
    logp_ref: torch.Tensor,
    kl_logp_theta: torch.Tensor | None,
    kl_logp_ref: torch.Tensor | None,
    desirable: torch.Tensor,
    beta: float = 0.1,
    lambda_D: float = 1.0,
    lambda_U: float = 1.0,
    loss_type: str = "kto",
) -> tuple[torch.Tensor, dict[str, float]]:
    """Batch KTO loss (mean of lambda_y - v_y over all examples) and TRL-named metrics.

    Lesson 03's ``batch_kto_loss`` in PyTorch, the loss lesson 06 trains with.
    ``logp_theta``/``logp_ref`` are sequence log-probs of the labelled pairs (B,);
    ``kl_logp_theta``/``kl_logp_ref`` those of the mismatched pairs, computed under no_grad.
    ``loss_type="apo_zero_unpaired"`` uses z0 = 0 and needs no mismatched pairs (pass None).
    Metrics that a batch cannot compute (``rewards/chosen`` without a desirable example, ...)
    are omitted rather than NaN.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}.")
    _check_batch("logp_theta", logp_theta, 1)
    for name, t in (("logp_ref", logp_ref), ("desirable", desirable)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}.")
    core.same_shape(logp_theta=logp_theta, logp_ref=logp_ref, desirable=desirable)
    if desirable.dtype != torch.bool:
        raise ValueError(
            f"desirable must be a bool tensor (True = thumbs-up), got {desirable.dtype}."
        )

    if loss_type == "kto":
        if kl_logp_theta is None or kl_logp_ref is None:
            raise ValueError("loss_type='kto' needs kl_logp_theta and kl_logp_ref for z0.")
        core.same_shape(kl_logp_theta=kl_logp_theta, kl_logp_ref=kl_logp_ref)
        z0 = z0_estimate(kl_logp_theta - kl_logp_ref)
    else:
        z0 = torch.zeros((), dtype=logp_theta.dtype, device=logp_theta.device)

    r = logp_theta - logp_ref
    loss = kto_losses(r, z0, desirable, beta, lambda_D, lambda_U).mean()

    metrics: dict[str, float] = {"kl": float(z0)}
    rewards = beta * r.detach()
    chosen, rejected = desirable, ~desirable
    if chosen.any():
        metrics["rewards/chosen"] = float(rewards[chosen].mean())
        metrics["logps/chosen"] = float(logp_theta.detach()[chosen].mean())
    if rejected.any():
        metrics["rewards/rejected"] = float(rewards[rejected].mean())
        metrics["logps/rejected"] = float(logp_theta.detach()[rejected].mean())
    if chosen.any() and rejected.any():
        metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
    return loss, metrics
