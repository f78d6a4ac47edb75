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
        "score_samples",
        "def score_samples(prompts, completions):\n"
        "    n = len(completions)\n"
        "    well_formed = [task.is_well_formed(c) for c in completions]\n"
        "    return [sum(well_formed) / n, sum(well_formed) / n, len(set(completions))]\n",
        "well-formed is not enough",
        "the format alone counted as a thumbs-up",
    ),
    PlantedBug(
        "score_samples",
        "def score_samples(prompts, completions):\n"
        "    n = len(completions)\n"
        "    labels = task.judge(prompts, completions)\n"
        "    well_formed = [task.is_well_formed(c) for c in completions]\n"
        "    return [sum(labels) / n, sum(well_formed) / n,\n"
        "            len(set(zip(prompts, completions)))]\n",
        "not distinct (prompt, completion) pairs",
        "diversity counted over prompt-completion pairs",
    ),
]
