"""Lesson 06, the tiny GPT-2 fine-tune: its planted wrong answers."""

from planted_bugs.bug import PlantedBug

# The right z0: the mismatched pairs' mean log-ratio, clamped at 0, detached.
_RIGHT_Z0 = "(kl_logp_theta - kl_logp_ref).mean().clamp(min=0).detach()"


def _microbatch_loss(z0: str, result: str = "losses.mean()") -> str:
    """A kto_microbatch_loss answer with the given z0 line and return value, right otherwise."""
    return (
        "def kto_microbatch_loss(logp_theta, logp_ref, kl_logp_theta, kl_logp_ref,\n"
        "                        desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0):\n"
        f"    z0 = {z0}\n"
        "    delta = logp_theta - logp_ref - z0\n"
        "    losses = torch.where(desirable, lambda_D * torch.sigmoid(-beta * delta),\n"
        "                         lambda_U * torch.sigmoid(beta * delta))\n"
        f"    return {result}\n"
    )


def _step(z0: str = "(kl_logp_theta - kl_logp_ref).mean().clamp(min=0)",
          kl_with_grad: bool = False, ref_with_grad: bool = False, reduce: str = "mean",
          backward: str = "    loss.backward()\n") -> str:
    """A kto_step answer with one thing changed (the z0 line, a forward pass taken out of
    no_grad, the reduction, the lines after the loss), right otherwise."""
    forwards = [("logp_ref = logps(reference, labelled)", ref_with_grad),
                ("kl_logp_theta = logps(policy, mismatched)", kl_with_grad),
                ("kl_logp_ref = logps(reference, mismatched)", False)]
    with_grad = "".join(f"    {line}\n" for line, out in forwards if out)
    no_grad = "".join(f"        {line}\n" for line, out in forwards if not out)
    return (
        "def kto_step(policy, reference, labelled, mismatched, desirable, beta=0.1,\n"
        "             lambda_D=1.0, lambda_U=1.0):\n"
        "    def logps(model, batch):\n"
        "        logits = model(input_ids=batch['input_ids'],\n"
        "                       attention_mask=batch['attention_mask']).logits\n"
        "        return torch_ops.sequence_logps_from_logits(logits, batch['input_ids'],\n"
        "                                                    batch['completion_mask'])\n"
        "    logp_theta = logps(policy, labelled)\n"
        + with_grad
        + "    with torch.no_grad():\n" + no_grad
        + f"    z0 = {z0}\n"
        "    losses = torch_ops.kto_losses(logp_theta - logp_ref, z0, desirable, beta,\n"
        "                                  lambda_D, lambda_U)\n"
        f"    loss = losses.{reduce}()\n"
        + backward
        + "    return loss.detach()\n"
    )


BUGS = [
    PlantedBug(
        "completion_logps",
        "def completion_logps(logits, input_ids, attention_mask, prompt_lengths):\n"
        "    positions = torch.arange(input_ids.shape[1])\n"
        "    mask = attention_mask.bool() & (positions[None, :] >= prompt_lengths[:, None])\n"
        "    logp = torch.log_softmax(logits[:, :-1], dim=-1)\n"
        "    per_token = logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)\n"
        "    return (per_token * mask[:, 1:]).sum(-1) / mask[:, 1:].sum(-1)\n",
        "averaged token log-probs instead of summing",
        "length-normalised log-prob",
    ),
    PlantedBug(
        "completion_logps",
        "def completion_logps(logits, input_ids, attention_mask, prompt_lengths):\n"
        "    positions = torch.arange(input_ids.shape[1])\n"
        "    mask = attention_mask.bool() & (positions[None, :] >= prompt_lengths[:, None])\n"
        "    logp = torch.log_softmax(logits, dim=-1)\n"
        "    per_token = logp.gather(-1, input_ids[:, :, None]).squeeze(-1)\n"
        "    return (per_token * mask).sum(-1)\n",
        "the shift is missing",
        "logits at t scored against token t instead of t+1",
    ),
    PlantedBug(
        "completion_logps",
        "def completion_logps(logits, input_ids, attention_mask, prompt_lengths):\n"
        "    logp = torch.log_softmax(logits[:, :-1], dim=-1)\n"
        "    per_token = logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)\n"
        "    return (per_token * attention_mask[:, 1:]).sum(-1)\n",
        "prompt tokens are included in the sum",
        "attention mask only: prompt tokens counted",
    ),
    PlantedBug(
        "completion_logps",
        "def completion_logps(logits, input_ids, attention_mask, prompt_lengths):\n"
        "    positions = torch.arange(input_ids.shape[1])\n"
        "    mask = positions[None, :] >= prompt_lengths[:, None]\n"
        "    logp = torch.log_softmax(logits[:, :-1], dim=-1)\n"
        "    per_token = logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)\n"
        "    return (per_token * mask[:, 1:]).sum(-1)\n",
        "padding tokens are counted",
        "right padding summed as if it were completion",
    ),
    PlantedBug(
        "completion_logps",
        "def completion_logps(logits, input_ids, attention_mask, prompt_lengths):\n"
        "    positions = torch.arange(input_ids.shape[1])\n"
        "    mask = attention_mask.bool() & (positions[None, :] >= prompt_lengths[:, None])\n"
        "    logp = torch.log_softmax(logits[:, :-1], dim=-1)\n"
        "    per_token = logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)\n"
        "    return (per_token * mask[:, :-1]).sum(-1)\n",
        "one position off",
        "mask not shifted with the ids",
    ),
    PlantedBug(
        "kto_microbatch_loss",
        _microbatch_loss("(kl_logp_theta - kl_logp_ref).mean().detach()"),
        "clamp at 0",
        "negative z0 estimate not clamped",
    ),
    PlantedBug(
        "kto_microbatch_loss",
        _microbatch_loss("(logp_theta - logp_ref).mean().clamp(min=0).detach()"),
        "mismatched pairs",
        "z0 from the labelled (matched) pairs",
    ),
    PlantedBug(
        "kto_microbatch_loss",
        _microbatch_loss("(kl_logp_theta - kl_logp_ref).mean().clamp(min=0)"),
        "z0 is not detached",
        "gradient flows into the mismatched pairs",
    ),
    PlantedBug(
        "kto_microbatch_loss",
        _microbatch_loss(_RIGHT_Z0, "losses.sum()"),
        "summed the per-example losses",
        "sum instead of mean over the microbatch",
    ),
    PlantedBug(
        "kto_microbatch_loss",
        _microbatch_loss(_RIGHT_Z0, "losses.mean().item()"),
        "no gradient",
        "returned a Python float: loss.backward() impossible",
    ),
    PlantedBug(
        "kto_step",
        _step(kl_with_grad=True),
        "z0 is not detached",
        "the policy's mismatched forward pass runs with gradient and z0 is not detached",
    ),
    PlantedBug(
        "kto_step",
        _step(ref_with_grad=True),
        "the reference model received a gradient",
        "the reference's forward pass on the labelled pairs outside no_grad",
    ),
    PlantedBug(
        "kto_step",
        _step(backward=""),
        "no gradient reached the policy",
        "loss.backward() never called",
    ),
    PlantedBug(
        "kto_step",
        _step(z0="(kl_logp_theta - kl_logp_ref).mean()"),
        "clamp it at 0",
        "negative z0 estimate not clamped",
    ),
    PlantedBug(
        "kto_step",
        _step(reduce="sum"),
        "summed the per-example losses",
        "sum instead of mean over the microbatch",
    ),
]
