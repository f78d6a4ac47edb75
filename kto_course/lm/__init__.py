"""The tiny GPT-2 of lesson 06: task and judge, tokenizer, model, sampling, pretraining.

``from kto_course.lm import load_reference`` gives the shipped reference model and tokenizer.
"""

from kto_course.lm.model import load_model, load_reference, reference_card
from kto_course.lm.sampling import encode, evaluate, sample
from kto_course.lm.tokenizer import build_tokenizer, load_tokenizer

__all__ = [
    "build_tokenizer",
    "encode",
    "evaluate",
    "load_model",
    "load_reference",
    "load_tokenizer",
    "reference_card",
    "sample",
]
