"""Pretrain the reference model: next-token prediction on the task's corpus (lesson 06).

    kto-course pretrain                    # rebuild the shipped reference (seed 0)
    kto-course pretrain --out DIR --seed 1 # another reference, elsewhere

The corpus is generated from the seed, so the same seed, size and thread count give identical
weights. The reference learns the template and that adjectives agree with the rating only
``task.AGREE_P`` of the time: it samples about half desirable completions.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from kto_course.lm import model as lm_model
from kto_course.lm import sampling, task
from kto_course.lm.tokenizer import build_tokenizer

__all__ = ["pretrain", "save_reference", "run_pretrain", "PRETRAIN_STEPS"]

PRETRAIN_STEPS = 400  # loss has flattened by ~300 steps for the tiny model
CARD_EVAL_SAMPLES = 2048  # samples behind the documented desirable rate (std err ~0.011)


def pretrain(
    seed: int = 0,
    steps: int = PRETRAIN_STEPS,
    size: str = "tiny",
    batch_size: int = 64,
    lr: float = 3e-3,
    device: str = "cpu",
    progress: bool = True,
):
    """Train a fresh tiny GPT-2 on ``steps`` batches of the corpus; return (model, tokenizer).

    AdamW (betas 0.9/0.98, weight decay 0.01), linear warmup then cosine decay, clip 1.0.
    """
    torch.manual_seed(seed)
    rng = random.Random(seed)
    tokenizer = build_tokenizer()
    model = lm_model.build_model(tokenizer, size, seed).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = min(30, steps // 10 + 1)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    bar = tqdm(range(steps), desc="pretrain", disable=not progress)
    for _ in bar:
        prompts, completions = zip(*(task.corpus_example(rng) for _ in range(batch_size)),
                                   strict=True)  # fmt: skip
        batch = sampling.encode(tokenizer, prompts, completions, device)
        # Labels -100 on padding: the loss covers prompt, completion and <eos> tokens.
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    labels=labels, use_cache=False)  # fmt: skip
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{out.loss.item():.3f}")
    return model.eval(), tokenizer


def save_reference(model, tokenizer, out, card: dict) -> Path:
    """Write model (safetensors), tokenizer and the card that documents them."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / lm_model.CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
    return out


def run_pretrain(args) -> int:
    """``kto-course pretrain [--out DIR] [--seed N]``."""
    out = Path(args.out) if args.out else lm_model.REFERENCE_DIR
    # One thread: identical weights need the same thread count, and on a busy 2-core machine
    # one thread is also much faster for a model this small (see KTOConfig.threads).
    threads = 1
    torch.set_num_threads(threads)
    start = time.perf_counter()
    steps = getattr(args, "steps", None) or PRETRAIN_STEPS
    model, tokenizer = pretrain(seed=args.seed, steps=steps)
    seconds = time.perf_counter() - start
    scores = sampling.evaluate(model, tokenizer, n=CARD_EVAL_SAMPLES, seed=1234)
    card = {
        "seed": args.seed,
        "size": "tiny",
        "steps": steps,
        "parameters": lm_model.n_params(model),
        "threads": threads,
        "pretrain_seconds": round(seconds, 1),
        "eval_samples": CARD_EVAL_SAMPLES,
        "eval_seed": 1234,
        "desirable_rate": scores["desirable_rate"],
        "well_formed_rate": scores["well_formed_rate"],
        "distinct": scores["distinct"],
    }
    save_reference(model, tokenizer, out, card)
    print(json.dumps({"out": str(out), **card}, indent=2))
    return 0
