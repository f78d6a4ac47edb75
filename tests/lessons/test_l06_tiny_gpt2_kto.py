"""Lesson 06, the tiny GPT-2 fine-tune: its checks against the notebook's solutions and the
planted bugs, and their answers to non-answers. The model, task and demo are in test_lm.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from planted_bugs import PLANTED_BUGS
from shared import answer_cells, check, define, failure, passes, returns_none

from kto_course import checks
from kto_course.lm import task

LESSON = "06_tiny_gpt2_kto"
EXERCISES = ("completion_logps", "kto_microbatch_loss", "score_samples")
# What the notebook's first code cells import; planted bugs and solutions run in this namespace.
NAMESPACE = {"torch": torch, "np": np, "task": task}


@pytest.mark.parametrize("name", list(EXERCISES))
def test_checks_pass_the_notebook_solutions(name, capsys):
    fn = define(answer_cells(LESSON)[name], name, NAMESPACE)
    for hidden in (False, True):
        passes(name, fn, hidden, capsys)


@pytest.mark.parametrize("bug", PLANTED_BUGS[LESSON], ids=lambda b: f"{b.exercise}-{b.why}")
def test_checks_name_the_planted_misconception(bug):
    for hidden in (False, True):
        message = failure(bug.exercise, define(bug.code, bug.exercise, NAMESPACE), hidden)
        assert bug.message.lower() in message.lower()


def test_checks_reject_non_answers():
    def not_done(*args):
        raise NotImplementedError

    for name in EXERCISES:
        with pytest.raises(checks.CheckFailed, match="NotImplementedError"):
            check(name)(not_done)
        with pytest.raises(checks.CheckFailed, match="None"):
            check(name)(returns_none)


def test_ending_logps_reads_the_last_two_tokens_of_each_completion():
    from kto_course import figures
    from kto_course.lm import load_reference

    model, tokenizer = load_reference()
    prompts = [task.make_prompt("soup", "5 stars"), task.make_prompt("film", "1 star")]
    completions = [task.make_completion(*words) for words in (task.POSITIVE[:2], task.NEGATIVE[:2])]
    rows = [{"prompt": p, "completion": c, "label": True}
            for p, c in zip(prompts, completions, strict=True)]  # fmt: skip
    want = {".": [], "<eos>": []}
    for p, c in zip(prompts, completions, strict=True):  # one row at a time, no padding
        ids = tokenizer(p + c, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0], -1)
        assert tokenizer.convert_ids_to_tokens(ids[-2]) == "."
        want["."].append(float(logp[-3, ids[-2]]))
        want["<eos>"].append(float(logp[-2, ids[-1]]))
    got = figures.ending_logps(model, tokenizer, rows)
    assert got == pytest.approx({k: float(np.mean(v)) for k, v in want.items()}, abs=1e-5)
    with pytest.raises(ValueError, match="no well-formed completion"):
        figures.ending_logps(model, tokenizer, [{"prompt": prompts[0], "completion": " meh"}])
