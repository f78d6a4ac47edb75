"""The synthetic task of lesson 06: star-rated reviews, judged by a rule.

A prompt asks for a review of an item with a star rating; a completion names two adjectives:

    prompt:      "review: soup, 5 stars ->"
    completion:  " it was fresh and lovely."

The judge gives a thumbs-up (desirable) when the completion is well formed AND both adjectives
agree with the rating (positive for 5 stars, negative for 1 star). The pretraining corpus picks
each adjective in agreement with the rating only with probability ``AGREE_P``, so the reference
model is right about half the time (0.7 ** 2 ~ 0.49): KTO has room to improve it.
"""

from __future__ import annotations

import random
import re

__all__ = [
    "ITEMS",
    "RATINGS",
    "POSITIVE",
    "NEGATIVE",
    "AGREE_P",
    "make_prompt",
    "make_completion",
    "parse",
    "is_well_formed",
    "is_desirable",
    "judge",
    "random_prompts",
    "corpus_example",
    "corpus",
]

ITEMS = ("soup", "film", "hotel", "book", "concert", "game", "phone", "cafe",
         "bike", "show", "album", "train")  # fmt: skip
RATINGS = {"5 stars": True, "1 star": False}  # rating text -> wants positive adjectives
POSITIVE = ("great", "lovely", "superb", "fun", "fresh", "warm", "bright", "charming",
            "clean", "calm")  # fmt: skip
NEGATIVE = ("awful", "dull", "bland", "noisy", "cold", "boring", "messy", "rude",
            "dirty", "slow")  # fmt: skip
# Probability that a pretraining adjective agrees with the rating: the reference's accuracy.
AGREE_P = 0.7

_PROMPT = re.compile(r"^review: (\w+), (5 stars|1 star) ->$")
_COMPLETION = re.compile(r"^ it was (\w+) and (\w+)\.$")


def make_prompt(item: str, rating: str) -> str:
    return f"review: {item}, {rating} ->"


def make_completion(adj1: str, adj2: str) -> str:
    return f" it was {adj1} and {adj2}."


def parse(completion: str) -> tuple[str, str] | None:
    """The two adjectives of a well-formed completion, else None."""
    m = _COMPLETION.match(completion)
    if m is None or any(a not in POSITIVE + NEGATIVE for a in m.groups()):
        return None
    return m.group(1), m.group(2)


def is_well_formed(completion: str) -> bool:
    """The template ' it was <adj> and <adj>.' with two adjectives the task knows."""
    return parse(completion) is not None


def _wants_positive(prompt: str) -> bool:
    m = _PROMPT.match(prompt)
    if m is None:
        raise ValueError(
            f"not a prompt of the task: {prompt!r}. Prompts look like "
            f"{make_prompt('soup', '5 stars')!r} (make them with task.make_prompt)."
        )
    return RATINGS[m.group(2)]


def is_desirable(prompt: str, completion: str) -> bool:
    """Thumbs-up: well formed and both adjectives agree with the prompt's rating."""
    adjectives = parse(completion)
    if adjectives is None:
        return False
    wanted = POSITIVE if _wants_positive(prompt) else NEGATIVE
    return all(a in wanted for a in adjectives)


def judge(prompts, completions) -> list[bool]:
    """Labels for a batch: True = desirable (thumbs-up), False = undesirable."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions.")
    return [is_desirable(p, c) for p, c in zip(prompts, completions, strict=True)]


def random_prompts(n: int, rng: random.Random) -> list[str]:
    return [make_prompt(rng.choice(ITEMS), rng.choice(tuple(RATINGS))) for _ in range(n)]


def corpus_example(rng: random.Random) -> tuple[str, str]:
    """One pretraining (prompt, completion): each adjective agrees with the rating w.p. AGREE_P."""
    rating = rng.choice(tuple(RATINGS))
    agree, disagree = (POSITIVE, NEGATIVE) if RATINGS[rating] else (NEGATIVE, POSITIVE)
    adjectives = [rng.choice(agree if rng.random() < AGREE_P else disagree) for _ in range(2)]
    return make_prompt(rng.choice(ITEMS), rating), make_completion(*adjectives)


def corpus(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [corpus_example(rng) for _ in range(n)]
