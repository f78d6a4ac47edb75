"""A byte-level BPE tokenizer built locally with ``tokenizers`` (lesson 06).

Same kind as GPT-2's (byte-level BPE), trained in about a second on the task's corpus instead of
downloaded. With a small vocabulary every word of the task becomes one token; any other text
still encodes (as bytes). Specials: ``<pad>`` (padding, distinct from ``<eos>`` so that a pad
mask never drops the real end of a completion), ``<bos>``, ``<eos>``, ``<unk>``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kto_course.lm import task

# tokenizers and transformers are imported where a tokenizer is built or loaded (see lm.model:
# importing transformers costs seconds that code which never tokenizes should not pay).
if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

__all__ = ["SPECIALS", "build_tokenizer", "load_tokenizer"]

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
VOCAB_SIZE = 400  # merges stop earlier, once every word of the task is a single token


def build_tokenizer(texts: list[str] | None = None) -> PreTrainedTokenizerFast:
    """Train the BPE on ``texts`` (default: every word and template of the task)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if texts is None:
        texts = _task_texts()
    bpe = Tokenizer(models.BPE(unk_token=UNK))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    return _wrap(bpe)


def _task_texts() -> list[str]:
    # Every item, rating and adjective in every slot, so that training sees each word often
    # enough to merge it; sorted lists make the result independent of any random seed.
    texts = []
    for item in task.ITEMS:
        for rating in task.RATINGS:
            texts.append(task.make_prompt(item, rating))
    for a in task.POSITIVE + task.NEGATIVE:
        for b in task.POSITIVE + task.NEGATIVE:
            texts.append(task.make_completion(a, b))
    return texts


def _wrap(bpe: Tokenizer) -> PreTrainedTokenizerFast:
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK
    )
    tok.padding_side = "right"  # log-probs need right padding; generation sets left itself
    return tok


def load_tokenizer(folder) -> PreTrainedTokenizerFast:
    """Load a saved tokenizer offline. ``padding_side`` is not saved: it is set here."""
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast.from_pretrained(str(folder))
    tok.padding_side = "right"
    return tok
