"""Lesson 06, the tiny GPT-2 fine-tune: checks of completion log-probs from logits, one
microbatch's KTO loss from the four forward passes, and the scores of sampled completions."""

from __future__ import annotations

import numpy as np

from kto_course import core
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

LESSON = 6


def _logps_case(rng, batch: int, width: int, vocab: int = 11, full_row: bool = True):
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


def _logps_suspects(logits, input_ids, attention_mask, prompt_lengths):
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
    rng = case_rng(LESSON, 1, hidden)
    cases = [_logps_case(rng, 4, 9), _logps_case(rng, 3, 12)]
    if hidden:
        cases += [_logps_case(rng, 6, 14, vocab=23), _logps_case(rng, 1, 7),
                  _logps_case(rng, 5, 10, full_row=False)]  # fmt: skip
    for logits, input_ids, attention_mask, prompt_lengths in cases:
        batch = input_ids.shape[0]
        out = as_float_array(
            call_learner(completion_logps, logits.clone(), input_ids.clone(),
                         attention_mask.clone(), prompt_lengths.clone(),
                         name="completion_logps"),  # fmt: skip
            "completion_logps",
            shape=(batch,),
        )
        right, suspects = _logps_suspects(logits, input_ids, attention_mask, prompt_lengths)
        if not close(out, right, rtol=1e-5, atol=1e-6):
            diagnose(
                out,
                right,
                suspects,
                "not the sum of log pi(token | tokens before it) over the completion tokens. "
                "Check the shift, the log_softmax and both masks.",
                name="completion_logps",
                rtol=1e-5,
                atol=1e-6,
            )
    passed("completion_logps", len(cases))


def _loss_case(rng, batch: int, n_desirable: int | None = None, z0_sign: int = 1):
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


def _loss_suspects(r, r_mis, d, beta, lambda_D, lambda_U):
    z0 = core.z0_estimate(r_mis)
    return [
        (
            core.kto_loss(r, core.z0_estimate(r_mis, clamp=False), d, beta, lambda_D, lambda_U),
            "your z0 is negative here: clamp at 0 (the reference point is never below 0).",
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
    rng = case_rng(LESSON, 2, hidden)
    cases = [_loss_case(rng, 6), _loss_case(rng, 5, z0_sign=-1),
             _loss_case(rng, 8, 3)]  # fmt: skip
    if hidden:
        cases += [_loss_case(rng, 2, 1, z0_sign=-1), _loss_case(rng, 7, 7),
                  _loss_case(rng, 4, 0), _loss_case(rng, 9, 2, z0_sign=-1)]  # fmt: skip
    for logp_theta, logp_ref, kl_theta, kl_ref, desirable, beta, lambda_D, lambda_U in cases:
        # Gradients on: the learner's loss must reach logp_theta and NOT the mismatched pairs.
        logp_theta = logp_theta.clone().requires_grad_(True)
        kl_theta = kl_theta.clone().requires_grad_(True)
        loss, requires_grad, grads, backward_error = call_and_backprop(
            kto_microbatch_loss, (logp_theta, logp_ref.clone(), kl_theta, kl_ref.clone(),
                                  desirable.clone(), beta, lambda_D, lambda_U),
            (0, 2), name="kto_microbatch_loss",
        )  # fmt: skip
        out = as_float_array(loss, "kto_microbatch_loss", shape=())
        r = (logp_theta - logp_ref).detach().numpy()
        r_mis = (kl_theta - kl_ref).detach().numpy()
        d = desirable.numpy()
        right = core.kto_loss(r, core.z0_estimate(r_mis), d, beta, lambda_D, lambda_U)
        if not close(out, right, rtol=1e-6, atol=1e-9):
            diagnose(
                out,
                right,
                _loss_suspects(r, r_mis, d, beta, lambda_D, lambda_U),
                "not the mean over the microbatch of lambda_y - v_y, with z0 "
                "the microbatch's reference point from its mismatched pairs, detached.",
                name="kto_microbatch_loss",
                rtol=1e-5,
                atol=1e-6,
            )
        if not requires_grad:
            raise CheckFailed(
                "kto_microbatch_loss returned a value with no gradient: return the torch tensor "
                "built from logp_theta (no .item(), no float(), no .detach()), so that "
                "loss.backward() can train the policy."
            )
        if backward_error:
            raise CheckFailed(f"loss.backward raised {backward_error}")
        theta_grad, kl_grad = grads
        if kl_grad is not None and kl_grad.abs().max() > 0:
            raise CheckFailed(
                "z0 is not detached: the gradient reaches the mismatched pairs. z0 only sets "
                "where the loss saturates; use .detach() (or torch_ops.z0_estimate)."
            )
        right_grad = core.kto_loss_grad(r, core.z0_estimate(r_mis), d, beta, lambda_D,
                                        lambda_U) / len(r)  # fmt: skip
        if theta_grad is None or not close(theta_grad.numpy(), right_grad, 1e-5, 1e-9):
            raise CheckFailed(
                "kto_microbatch_loss has the right value but the wrong gradient with respect to "
                "logp_theta: build it from logp_theta with torch operations."
            )
    passed("kto_microbatch_loss", len(cases))


def _samples(rng, n: int) -> tuple[list[str], list[str]]:
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

    rng = case_rng(LESSON, 3, hidden)
    sizes = [40, 25] + ([60, 7, 120] if hidden else [])
    for n in sizes:
        prompts, completions = _samples(rng, n)
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


# The lesson's exercises, for the grader: check, answer twins, usable package functions (see
# l01_log_ratio.EXERCISES).
EXERCISES = {
    "completion_logps": {
        "check": check_completion_logps,
        "twins": ("torch_ops.sequence_logps_from_logits", "torch_ops.token_logps",
                  "train.sequence_logps_of"),
        "allowed": ("torch_ops.sequence_logps",),
        "hint": "shift, log_softmax and mask the logits yourself.",
    },
    "kto_microbatch_loss": {
        "check": check_kto_microbatch_loss,
        "twins": ("torch_ops.batch_kto_loss", "torch_ops.kto_losses"),
        "allowed": ("torch_ops.z0_estimate",),
        "hint": "build the loss from the four log-prob tensors yourself.",
    },
    "score_samples": {
        "check": check_score_samples,
        "twins": (),
        "allowed": ("lm.task.judge", "lm.task.is_well_formed"),
        "hint": "",
    },
}
