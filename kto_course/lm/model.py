"""The tiny GPT-2 of lesson 06: a ``transformers.GPT2LMHeadModel`` built from a config.

Same architecture as GPT-2, scaled down so that KTO runs in seconds on a laptop CPU. The
reference model and its tokenizer ship inside the package (``reference/``, ~1 MB) and load
offline with ``from_pretrained``; ``kto-course pretrain`` rebuilds them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from kto_course.lm.tokenizer import load_tokenizer

# transformers is imported in the functions that build or load a model: importing its GPT-2
# costs ~5 s (measured on 2 cores), which every ``import kto_course.train`` (and so the
# grader's worker and checks, which never load a model) would otherwise pay.
if TYPE_CHECKING:
    from transformers import GPT2Config, GPT2LMHeadModel

__all__ = [
    "REFERENCE_DIR",
    "SIZES",
    "make_config",
    "build_model",
    "load_model",
    "load_reference",
    "reference_card",
    "n_params",
]

REFERENCE_DIR = Path(__file__).resolve().parent / "reference"
CARD_FILE = "reference_card.json"  # how the shipped reference was made and what it scores

# Model sizes: (n_embd, n_layer, n_head). "tiny" ships; "large" is train.GPU_PRESET's model.
SIZES = {
    "tiny": (64, 4, 4),  # ~0.2M parameters, ~1 MB: the CPU path
    "large": (256, 6, 8),  # ~5M: worth it only on a GPU
}
N_POSITIONS = 32  # a prompt is 7 tokens, a completion 7 (with <eos>): room to spare


def quiet_transformers() -> None:
    """Keep notebook output clean: no progress bars or info logs from transformers."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def make_config(tokenizer, size: str = "tiny") -> GPT2Config:
    from transformers import GPT2Config

    if size not in SIZES:
        raise ValueError(f"unknown model size {size!r}: use one of {', '.join(SIZES)}.")
    n_embd, n_layer, n_head = SIZES[size]
    return GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=N_POSITIONS,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        # No dropout: KTO compares policy and reference log-probs, which must be deterministic
        # (TRL disables dropout too).
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        # The defaults (50256) are GPT-2's real ids and do not exist in a 400-token vocabulary.
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        # transformers 5 rejects attn_implementation in the model constructor: it goes here.
        attn_implementation="sdpa",
    )


def build_model(tokenizer, size: str = "tiny", seed: int = 0) -> GPT2LMHeadModel:
    """A freshly initialised tiny GPT-2 (the same seed gives the same weights)."""
    from transformers import GPT2LMHeadModel

    quiet_transformers()
    torch.manual_seed(seed)
    return GPT2LMHeadModel(make_config(tokenizer, size))


def load_model(folder, device="cpu") -> GPT2LMHeadModel:
    """Load a model saved with ``save_pretrained`` (offline), in eval mode, on ``device``."""
    from transformers import GPT2LMHeadModel

    quiet_transformers()
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"no saved model in {folder}: expected config.json and model.safetensors there "
            "(written by save_pretrained, kto-course pretrain or kto-course train --out)."
        )
    model = GPT2LMHeadModel.from_pretrained(str(folder))
    return model.to(device).eval()


def load_reference(device="cpu", folder=None):
    """The shipped reference model (eval mode, on ``device``) and its tokenizer."""
    folder = Path(folder) if folder is not None else REFERENCE_DIR
    return load_model(folder, device), load_tokenizer(folder)


def reference_card(folder=None) -> dict:
    """Seed, size, steps and the measured desirable rate of the shipped reference."""
    folder = Path(folder) if folder is not None else REFERENCE_DIR
    return json.loads((folder / CARD_FILE).read_text())


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())
