"""Lesson 06, the tiny GPT-2 fine-tune: checks of completion log-probs from logits, one
microbatch's KTO loss from the four sets of log-probs, and one KTO step on the model (its four
forward passes, z0, the loss and backward), graded on the loss and the gradients it leaves."""

from __future__ import annotations

import copy
import functools

import numpy as np

from kto_course import core, system
from kto_course.checks.base import (
    CheckFailed,
    as_float_array,
    call_and_backprop,
    call_and_read_modules,
    call_learner,
    case_rng,
    close,
    diagnose,
    gradient_distance,
    has_gradient,
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


# -- exercise 3: one KTO step on the tiny GPT-2 -----------------------------------------------

# The step runs in float32, as the lesson's models do: how far (relative L2 distance over all the
# policy's parameters) its gradient may be from the reference computation's. Another order of
# the same operations (the trainer's lean forward, no attention mask) stays below 1e-5.
GRAD_RTOL = 1e-4
# kto_step's cases, (batch, desirable rows, sign of the raw z0): a positive z0 (which a z0 left
# attached to the policy shows in the gradient) and a clamped one in each mode.
STEP_CASES = [(8, 6, 1), (5, 2, -1), (4, 1, 1)]
HIDDEN_STEP_CASES = [(8, 8, 1), (2, 1, -1), (7, 3, -1), (6, 0, 1)]


@functools.cache
def _shipped():
    """The lesson's reference model and tokenizer, loaded once; cases hand out copies."""
    from kto_course.lm import load_reference

    return load_reference()


def _seq_logps(model, batch):
    """The trainer's sequence log-probs (imported here: the checks load without torch)."""
    from kto_course.train import sequence_logps_of

    return sequence_logps_of(model, batch)


def _rows(rng, batch: int, n_desirable: int):
    """Prompts, completions and labels of the task, ``n_desirable`` judged 👍; the others have
    an adjective against the rating or are malformed."""
    from kto_course.lm import task

    labels = np.array([True] * n_desirable + [False] * (batch - n_desirable))
    rng.shuffle(labels)
    prompts, completions = [], []
    for label in labels:
        rating = str(rng.choice(list(task.RATINGS)))
        agree, disagree = (task.POSITIVE, task.NEGATIVE)[:: 1 if task.RATINGS[rating] else -1]
        prompts.append(task.make_prompt(str(rng.choice(task.ITEMS)), rating))
        words = [str(rng.choice(agree)), str(rng.choice(agree if label else disagree))]
        rng.shuffle(words)
        malformed = not label and rng.random() < 0.2
        completions.append(str(rng.choice([" it was great", " it was dull and.", " was fun."]))
                           if malformed else task.make_completion(*words))  # fmt: skip
    return prompts, completions, labels


def _perturbed(base, labelled, mismatched, rng, z0_sign: int):
    """A policy that differs from ``base``: seeded noise, then one gradient step that moves each
    labelled row's log-prob up or down at random and the mismatched rows' mean log-prob in the
    direction ``z0_sign`` (a positive z0, or a negative estimate that the clamp sets to 0)."""
    import torch

    policy = copy.deepcopy(base)
    g = torch.Generator().manual_seed(int(rng.integers(2**31)))
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))
    weights = torch.tensor(rng.normal(0.0, 1.0, len(labelled["input_ids"])), dtype=torch.float32)
    objective = ((weights * _seq_logps(policy, labelled)).mean()
                 + z0_sign * _seq_logps(policy, mismatched).mean())  # fmt: skip
    params = list(policy.parameters())
    with torch.no_grad():
        for p, grad in zip(params, torch.autograd.grad(objective, params), strict=True):
            p.add_(0.03 * grad)
    return policy.train()


def _step_case(rng, batch: int, n_desirable: int, z0_sign: int):
    """(policy, reference, labelled, mismatched, desirable, beta, lambda_D, lambda_U): one
    microbatch of the task encoded as the lesson encodes it, and two models that differ."""
    import torch

    from kto_course import torch_ops
    from kto_course.lm import encode

    base, tokenizer = _shipped()
    prompts, completions, labels = _rows(rng, batch, n_desirable)
    shift = torch_ops.mismatched_indices(batch).tolist()  # x_i with y_{i-1}
    labelled = encode(tokenizer, prompts, completions)
    mismatched = encode(tokenizer, prompts, [completions[j] for j in shift])
    for _ in range(20):  # the first draw almost always has a raw z0 of the wanted sign
        policy = _perturbed(base, labelled, mismatched, rng, z0_sign)
        with torch.no_grad():
            r_mis = _seq_logps(policy, mismatched) - _seq_logps(base, mismatched)
        if z0_sign * float(r_mis.mean()) > 0.1:
            break
    lambda_D = float(rng.uniform(0.6, 1.0))
    weights = (float(rng.uniform(0.3, 1.0)), lambda_D, lambda_D + float(rng.uniform(0.3, 0.8)))
    # The reference keeps requires_grad on (as load_reference gives it): a forward pass of it
    # with gradient shows as gradients in its parameters.
    reference = copy.deepcopy(base).eval()
    return (policy, reference, labelled, mismatched, torch.tensor(labels), *weights)


def _reference_step(case, attached_z0: bool = False):
    """The four log-prob sets (NumPy, float64) and the policy's gradients {name: float64} of
    the step, on a copy of the policy; ``attached_z0``: z0 left attached to the policy."""
    import torch

    from kto_course import torch_ops

    policy, reference, labelled, mismatched, desirable, *weights = case
    policy = copy.deepcopy(policy)
    logp_theta = _seq_logps(policy, labelled)
    with torch.no_grad():
        logp_ref, kl_logp_ref = _seq_logps(reference, labelled), _seq_logps(reference, mismatched)
    with torch.set_grad_enabled(attached_z0):
        kl_logp_theta = _seq_logps(policy, mismatched)
    z0 = (kl_logp_theta - kl_logp_ref).mean().clamp(min=0)
    torch_ops.kto_losses(logp_theta - logp_ref, z0, desirable, *weights).mean().backward()
    four = (logp_theta, logp_ref, kl_logp_theta, kl_logp_ref)
    return ([t.detach().double().numpy() for t in four],
            {n: p.grad.detach().double() for n, p in policy.named_parameters()})  # fmt: skip


def _step_suspects(r, r_mis, d, beta, lambda_D, lambda_U):
    z0, weights = core.z0_estimate(r_mis), (beta, lambda_D, lambda_U)
    return [
        (core.kto_loss(r, core.z0_estimate(r_mis, clamp=False), d, *weights),
         "your z0 is negative here: clamp it at 0 (the reference point is never below 0)."),
        (float(np.sum(core.kto_losses(r, z0, d, *weights))),
         "you summed the per-example losses: the microbatch's loss is their MEAN."),
        (core.kto_loss(r_mis, core.z0_estimate(r), d, *weights),
         "labelled and mismatched are swapped: r comes from the labelled pairs (x_i, y_i), z0 "
         "from the mismatched pairs (x_i, y_{i-1})."),
        (core.kto_loss(r, core.z0_estimate(r), d, *weights),
         "z0 comes from the labelled pairs: estimate it from the MISMATCHED batch."),
        (core.kto_loss(-r, core.z0_estimate(-r_mis), d, *weights),
         "policy and reference are swapped: r = log pi_theta - log pi_ref, the policy's "
         "log-prob minus the reference's, on the same rows."),
        (core.kto_loss(r, 0.0, d, *weights), "z0 is missing: the margin is delta = r - z0."),
        (core.kto_loss(r, z0, d),
         "beta, lambda_D and lambda_U were not passed on: the loss must use kto_step's own "
         "arguments, not the defaults."),
        (core.kto_loss(r, z0, ~d, *weights),
         "the labels are swapped: desirable examples should be pushed UP."),
    ]  # fmt: skip


def _gradient_suspects(case, grads: dict):
    _, attached = _reference_step(case, attached_z0=True)
    return [
        (attached, "z0 is not detached: the gradient flows through the policy's forward pass on "
         "the mismatched pairs. z0 only sets where the loss saturates; compute it under "
         "torch.no_grad() (or detach it)."),
        ({n: len(case[4]) * g for n, g in grads.items()}, "the gradient is that of the SUM of "
         "the per-example losses: call backward() on the mean, the loss you return."),
    ]  # fmt: skip


def _check_step_case(kto_step, case) -> None:
    policy, reference, labelled, mismatched, desirable, *weights = case
    args = (copy.deepcopy(policy), copy.deepcopy(reference),
            {k: v.clone() for k, v in labelled.items()},
            {k: v.clone() for k, v in mismatched.items()}, desirable.clone(), *weights)  # fmt: skip
    value, states = call_and_read_modules(kto_step, args, name="kto_step")
    out = as_float_array(value, "kto_step")
    if out.shape != ():
        raise CheckFailed(
            f"kto_step returned shape {out.shape}: return the microbatch's loss, one number (the "
            "mean over its examples)."
        )
    logps, right_grads = _reference_step(case)
    r, r_mis, d = logps[0] - logps[1], logps[2] - logps[3], desirable.numpy()
    right = core.kto_loss(r, core.z0_estimate(r_mis), d, *weights)
    if not close(out, right, rtol=1e-5, atol=1e-6):
        diagnose(out, right, _step_suspects(r, r_mis, d, *weights),
                 "the loss is not the mean over the microbatch of lambda_y - v_y, with r from the "
                 "policy and the reference on the labelled pairs and z0 from both on the "
                 "mismatched pairs, clamped at 0.",
                 name="kto_step", rtol=1e-5, atol=1e-6)  # fmt: skip
    for who, state in (("policy", states[0]), ("reference", states[1])):
        if state["changed"]:
            raise CheckFailed(
                f"kto_step changed the {who}'s weights ({state['changed'][0]}): no optimizer step "
                "(and no other change of the parameters) inside kto_step. It only leaves the "
                "gradient in .grad; the trainer clips it and steps."
            )
    if has_gradient(states[1]["grads"]):
        raise CheckFailed(
            "kto_step: the reference model received a gradient: run its forward passes under "
            "torch.no_grad(). The reference is frozen; only the policy's forward pass on the "
            "labelled pairs carries a gradient."
        )
    grads = states[0]["grads"]
    if not has_gradient(grads):
        raise CheckFailed(
            "kto_step: no gradient reached the policy's parameters: call loss.backward() inside "
            "kto_step, so that .grad holds what the trainer's optimizer step reads."
        )
    if gradient_distance(grads, right_grads) > GRAD_RTOL:
        for wrong, words in _gradient_suspects(case, right_grads):
            if (gradient_distance(wrong, right_grads) > 100 * GRAD_RTOL
                    and gradient_distance(grads, wrong) < GRAD_RTOL):  # fmt: skip
                raise CheckFailed(f"kto_step: {words}")
        raise CheckFailed(
            "kto_step returns the right loss, but the gradients in the policy are not that loss's "
            "(or not finite): backward() once, on the loss you return, with only the policy's "
            "forward pass on the labelled pairs in the graph."
        )


def check_kto_step(kto_step, hidden: bool = False) -> None:
    """Lesson 06, exercise 3: one KTO step on the tiny GPT-2: the four forward passes (one with
    gradient), z0 detached and clamped, the mean loss, backward; no optimizer step."""
    rng = case_rng(LESSON, 3, hidden)
    specs = STEP_CASES + (HIDDEN_STEP_CASES if hidden else [])
    with system.one_thread():  # on a busy 2-core machine, two threads made it 40x slower
        for spec in specs:
            _check_step_case(kto_step, _step_case(rng, *spec))
    passed("kto_step", len(specs))


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
    "kto_step": {
        "check": check_kto_step,
        # sequence_logps_of is the trainer's forward: dead, it takes KTOTrainer.logps and
        # KTOTrainer.step (the whole step) with it.
        "twins": ("torch_ops.batch_kto_loss", "torch_ops.z0_estimate", "train.sequence_logps_of"),
        "allowed": ("torch_ops.sequence_logps_from_logits", "torch_ops.kto_losses"),
        "hint": "run the four forward passes, z0, the loss and backward() yourself.",
    },
}
