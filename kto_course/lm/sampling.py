"""Tokenize (prompt, completion) batches, sample completions, and evaluate a model (lesson 06).

Two paddings, on purpose: training forwards use RIGHT padding, so positions 0..T-1 line up with
the tokens and a plain forward gives correct logits; ``generate`` uses LEFT padding, so every
prompt ends where sampling starts (it derives positions from the attention mask itself).
"""

from __future__ import annotations

import random

import torch

from kto_course.lm import fast, task

__all__ = ["encode", "encode_ids", "encode_rows", "pairs", "padded", "sample", "sample_seeded",
           "evaluate", "adjective_probs", "MAX_NEW_TOKENS"]  # fmt: skip

# A completion is 6 tokens plus <eos>; anything still going after 12 cannot be well formed.
MAX_NEW_TOKENS = 12
# encode() keeps at most this many completion tokens. Decoding a sample and tokenizing the text
# again can give MORE tokens than were sampled (an untrained model emits odd byte sequences);
# the cap keeps every row inside the model's 32 positions. Such a row is malformed anyway.
MAX_COMPLETION_TOKENS = 16


def encode(tokenizer, prompts, completions, device="cpu") -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``completion_mask`` (B, T).

    Each row is prompt tokens + completion tokens (at most ``MAX_COMPLETION_TOKENS``) + <eos>,
    then <pad>. ``completion_mask`` is
    True on the completion tokens and the <eos> (the model must learn where to stop), False on
    prompt and padding: exactly what ``torch_ops.sequence_logps`` sums over.
    """
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions.")
    if len(prompts) == 0:
        raise ValueError("encode got an empty batch: pass at least one prompt and completion.")
    prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(list(completions), add_special_tokens=False)["input_ids"]
    return encode_ids(prompt_ids, completion_ids, tokenizer.eos_token_id,
                      tokenizer.pad_token_id, device)  # fmt: skip


def encode_rows(tokenizer, prompts, completions, tokenization: str = "separate"):
    """Token ids (prompt_ids, completion_ids) per row, tokenized the way ``tokenization`` says.

    separate: lesson 06's ``encode`` (apart, completion capped, + <eos>); joint: TRL's
    (the prompt alone and prompt + completion + "<eos>" text, split at their common prefix).
    """
    if tokenization == "separate":
        prompt_ids = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        completion_ids = tokenizer(list(completions), add_special_tokens=False)["input_ids"]
        completion_ids = [ids[:MAX_COMPLETION_TOKENS] + [tokenizer.eos_token_id]
                          for ids in completion_ids]  # fmt: skip
        return prompt_ids, completion_ids
    alone = tokenizer(list(prompts))["input_ids"]
    full = tokenizer(
        [p + c + tokenizer.eos_token for p, c in zip(prompts, completions, strict=True)]
    )["input_ids"]
    split = [_common_prefix(a, b) for a, b in zip(alone, full, strict=True)]
    return [a[:n] for a, n in zip(alone, split, strict=True)], [
        b[n:] for b, n in zip(full, split, strict=True)]  # fmt: skip


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def padded(rows: list[list[int]], pad_id: int, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists as one (N, W) LongTensor padded on the right with ``pad_id``, and lengths."""
    width = max(1, max(map(len, rows)))
    ids = torch.tensor([row + [pad_id] * (width - len(row)) for row in rows], dtype=torch.long)
    return ids.to(device), torch.tensor([len(row) for row in rows], dtype=torch.long).to(device)


def pairs(prompts: torch.Tensor, prompt_len: torch.Tensor, completions: torch.Tensor,
          completion_len: torch.Tensor, pad_id: int,
          max_length: int | None = None) -> dict[str, torch.Tensor]:  # fmt: skip
    """``encode``'s batch from padded token tensors, in a few tensor ops (no per-row work).

    Row i is ``prompts[i, :prompt_len[i]]`` followed by ``completions[i, :completion_len[i]]``
    (the completion's tokens INCLUDING its <eos>), then <pad>. Index the inputs first to pair
    prompt i with another row's completion (z0's mismatched pairs). ``max_length`` cuts each
    row after that many tokens (TRL's truncation).
    """
    total = prompt_len + completion_len
    if max_length is not None:
        total = total.clamp(max=max_length)
    width = int(total.max())
    t = torch.arange(width, device=prompts.device).unsqueeze(0)
    in_prompt = t < prompt_len.unsqueeze(1)
    p = prompts.gather(1, t.clamp(max=prompts.shape[1] - 1).expand(len(prompts), -1))
    c_pos = (t - prompt_len.unsqueeze(1)).clamp(min=0, max=completions.shape[1] - 1)
    c = completions.gather(1, c_pos)
    attention = t < total.unsqueeze(1)
    input_ids = torch.where(in_prompt, p, c).masked_fill(~attention, pad_id)
    return {
        "input_ids": input_ids,
        "attention_mask": attention.long(),
        "completion_mask": attention & ~in_prompt,
    }


def encode_ids(prompt_ids, completion_ids, eos_id: int, pad_id: int, device="cpu"):
    """``encode`` from token lists: completions capped at ``MAX_COMPLETION_TOKENS``, + <eos>."""
    completion_ids = [ids[:MAX_COMPLETION_TOKENS] + [eos_id] for ids in completion_ids]
    prompts, prompt_len = padded(list(prompt_ids), pad_id, device)
    completions, completion_len = padded(completion_ids, pad_id, device)
    return pairs(prompts, prompt_len, completions, completion_len, pad_id)


@torch.no_grad()
def sample(model, tokenizer, prompts, temperature: float = 1.0) -> list[str]:
    """One completion per prompt, sampled from the full distribution (no top-k, no top-p).

    Uses torch's global random generator: seed it (``torch.manual_seed``) for repeatable
    samples.
    """
    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    try:
        batch = tokenizer(list(prompts), return_tensors="pt", padding=True,
                          add_special_tokens=False).to(device)  # fmt: skip
    finally:
        tokenizer.padding_side = "right"
    # fast.sample_ids: generate(do_sample=True, top_k=0, top_p=1.0) with a key/value cache
    # and none of generate's per-token machinery; the same draws from the same seed.
    was_training = model.training
    model.eval()
    new_tokens = fast.sample_ids(
        model, batch["input_ids"], batch["attention_mask"], MAX_NEW_TOKENS, temperature,
        tokenizer.eos_token_id, tokenizer.pad_token_id,
    ).tolist()  # fmt: skip
    model.train(was_training)
    completions = []
    for ids in new_tokens:
        if tokenizer.eos_token_id in ids:
            ids = ids[: ids.index(tokenizer.eos_token_id)]
        completions.append(ids)
    return tokenizer.batch_decode(completions, skip_special_tokens=True)


def sample_seeded(model, tokenizer, prompts, seed: int, batch_size: int = 512) -> list[str]:
    """``sample`` for many prompts, ``batch_size`` at a time, from ``torch.manual_seed(seed)``.

    The same seed gives the same completions, and torch's global random state is restored
    afterwards: evaluating or building a dataset never changes a training run's samples.
    """
    device = next(model.parameters()).device
    devices = [device] if device.type == "cuda" else []
    completions = []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for start in range(0, len(prompts), batch_size):
            completions += sample(model, tokenizer, prompts[start : start + batch_size])
    return completions


def evaluate(model, tokenizer, n: int = 512, seed: int = 1234, batch_size: int = 512) -> dict:
    """Sample ``n`` completions for fixed random prompts and judge them.

    Returns ``desirable_rate``, ``well_formed_rate``, ``distinct`` (number of different
    completion strings: mode collapse shows here first) and a few ``examples``. Seeded
    (``sample_seeded``), so evaluating never changes a training run.
    """
    prompts = task.random_prompts(n, random.Random(seed))
    completions = sample_seeded(model, tokenizer, prompts, seed, batch_size)
    labels = task.judge(prompts, completions)
    return {
        "desirable_rate": sum(labels) / n,
        "well_formed_rate": sum(map(task.is_well_formed, completions)) / n,
        "distinct": len(set(completions)),
        "examples": list(zip(prompts[:8], completions[:8], labels[:8], strict=True)),
    }


@torch.no_grad()
def adjective_probs(model, tokenizer, prompt: str, temperature: float = 1.0):
    """P(first adjective = a | prompt + " it was") for every adjective of the task.

    One forward pass, no sampling: the exact next-token distribution at ``temperature``,
    in the order ``task.POSITIVE + task.NEGATIVE`` (a NumPy array; the rest of the mass goes to
    tokens that are not adjectives).
    """
    device = next(model.parameters()).device
    ids = tokenizer(prompt + " it was", add_special_tokens=False, return_tensors="pt")
    logits = model(input_ids=ids["input_ids"].to(device), use_cache=False).logits[0, -1]
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    words = task.POSITIVE + task.NEGATIVE
    token_ids = tokenizer.convert_tokens_to_ids(["\u0120" + w for w in words])
    return probs[token_ids].cpu().numpy().astype(float)
