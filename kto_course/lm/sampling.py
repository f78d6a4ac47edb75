"""Tokenize (prompt, completion) batches, sample completions, and evaluate a model (lesson 06).

Two paddings, on purpose: training forwards use RIGHT padding, so positions 0..T-1 line up with
the tokens and a plain forward gives correct logits; ``generate`` uses LEFT padding, so every
prompt ends where sampling starts (it derives positions from the attention mask itself).
"""

from __future__ import annotations

import torch

from kto_course.lm import task

__all__ = ["encode", "sample", "evaluate", "adjective_probs", "MAX_NEW_TOKENS"]

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
    completion_ids = [ids[:MAX_COMPLETION_TOKENS] for ids in completion_ids]
    eos = [tokenizer.eos_token_id]
    rows = [p + c + eos for p, c in zip(prompt_ids, completion_ids, strict=True)]
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    completion_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (row, p) in enumerate(zip(rows, prompt_ids, strict=True)):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
        completion_mask[i, len(p) : len(row)] = True
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": attention_mask.to(device),
        "completion_mask": completion_mask.to(device),
    }


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
    was_training = model.training
    model.eval()
    out = model.generate(
        **batch,
        do_sample=True,
        temperature=temperature,
        # generate's silent defaults are top_k=50 and max_length=20: set both explicitly.
        top_k=0,
        top_p=1.0,
        max_new_tokens=MAX_NEW_TOKENS,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model.train(was_training)
    new_tokens = out[:, batch["input_ids"].shape[1] :].tolist()
    completions = []
    for ids in new_tokens:
        if tokenizer.eos_token_id in ids:
            ids = ids[: ids.index(tokenizer.eos_token_id)]
        completions.append(tokenizer.decode(ids, skip_special_tokens=True))
    return completions


def evaluate(model, tokenizer, n: int = 512, seed: int = 1234, batch_size: int = 512) -> dict:
    """Sample ``n`` completions for fixed random prompts and judge them.

    Returns ``desirable_rate``, ``well_formed_rate``, ``distinct`` (number of different
    completion strings: mode collapse shows here first) and a few ``examples``. Seeded, and the
    global random state is restored afterwards, so evaluating never changes a training run.
    """
    import random

    prompts = task.random_prompts(n, random.Random(seed))
    device = next(model.parameters()).device
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        completions = []
        for start in range(0, n, batch_size):
            completions += sample(model, tokenizer, prompts[start : start + batch_size])
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
