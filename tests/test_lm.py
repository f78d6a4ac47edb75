"""Lesson 06's tiny GPT-2: task and judge, tokenizer, encoding, shipped reference, pretraining,
and the demo. The lesson 06 checks are tested in tests/lessons/test_l06_tiny_gpt2_kto.py."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from kto_course import cli, demos, figures
from kto_course.lm import (
    build_tokenizer,
    encode,
    evaluate,
    load_model,
    load_reference,
    load_tokenizer,  # fmt: skip
    reference_card,
    sample,
    task,
)
from kto_course.lm.model import REFERENCE_DIR
from kto_course.lm.pretrain import pretrain
from kto_course.lm.sampling import adjective_probs, sample_seeded


@pytest.fixture(scope="module")
def reference():
    return load_reference()


# -- the task and its judge ----------------------------------------------------------------


def test_judge_labels_by_rating_and_form():
    good, bad = task.make_prompt("soup", "5 stars"), task.make_prompt("film", "1 star")
    assert task.is_desirable(good, " it was great and calm.")
    assert not task.is_desirable(good, " it was great and dull.")
    assert task.is_desirable(bad, " it was dull and rude.")
    assert not task.is_desirable(bad, " it was dull and great.")
    for broken in (" it was great.", " it was great and calm", " it was great and calm. ok",
                   " it was nice and calm.", ""):  # fmt: skip
        assert not task.is_well_formed(broken)
        assert not task.is_desirable(good, broken)
    assert task.judge([good, bad], [" it was fun and warm.", " it was fun and warm."]) == [
        True,
        False,
    ]
    with pytest.raises(ValueError, match="not a prompt"):
        task.is_desirable("write a poem", " it was great and calm.")


def test_corpus_agrees_with_rating_about_agree_p_of_the_time():
    rows = task.corpus(4000, seed=0)
    agree = []
    for prompt, completion in rows:
        wanted = task.POSITIVE if "5 stars" in prompt else task.NEGATIVE
        agree += [a in wanted for a in task.parse(completion)]
    assert abs(np.mean(agree) - task.AGREE_P) < 0.02
    assert task.corpus(50, seed=1) == task.corpus(50, seed=1)


# -- tokenizer and encoding ------------------------------------------------------------------


def test_tokenizer_is_deterministic_and_every_task_word_is_one_token(tmp_path):
    tok = build_tokenizer()
    assert build_tokenizer().get_vocab() == tok.get_vocab()
    for word in task.ITEMS + task.POSITIVE + task.NEGATIVE:
        assert len(tok.tokenize(" " + word)) == 1, word
    assert len({tok.pad_token_id, tok.eos_token_id, tok.bos_token_id}) == 3
    tok.save_pretrained(tmp_path)
    again = load_tokenizer(tmp_path)
    text = task.make_prompt("cafe", "1 star") + task.make_completion("cold", "rude")
    assert again(text)["input_ids"] == tok(text)["input_ids"]
    assert again.decode(again(text)["input_ids"]) == text


def test_encode_right_pads_and_masks_the_completion_and_eos(reference):
    _, tok = reference
    prompts = [task.make_prompt("soup", "5 stars"), task.make_prompt("film", "1 star")]
    completions = [" it was great and calm.", " it was dull."]
    batch = encode(tok, prompts, completions)
    ids, attn, mask = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    n_prompt = len(tok(prompts[1], add_special_tokens=False)["input_ids"])
    n_completion = len(tok(completions[1], add_special_tokens=False)["input_ids"]) + 1  # <eos>
    assert attn[1].sum() == n_prompt + n_completion
    assert mask[1].sum() == n_completion and not mask[1, :n_prompt].any()
    assert ids[1, n_prompt + n_completion - 1] == tok.eos_token_id
    assert (ids[1][attn[1] == 0] == tok.pad_token_id).all() and (attn[0] == 1).all()
    with pytest.raises(ValueError, match="empty"):
        encode(tok, [], [])


# -- the shipped reference -------------------------------------------------------------------


def test_shipped_reference_is_small_and_documented():
    files = {p.name: p.stat().st_size for p in REFERENCE_DIR.iterdir()}
    assert "model.safetensors" in files and "tokenizer.json" in files
    assert sum(files.values()) < 3 * 2**20
    card = reference_card()
    assert 0.35 < card["desirable_rate"] < 0.6


def test_shipped_reference_gives_its_documented_desirable_rate(reference):
    model, tok = reference
    assert not model.training
    card = reference_card()
    scores = evaluate(model, tok, n=512, seed=card["eval_seed"])
    # 512 samples: standard error ~0.022; 0.07 is three of them.
    assert abs(scores["desirable_rate"] - card["desirable_rate"]) < 0.07
    assert scores["well_formed_rate"] > 0.95
    assert scores["distinct"] > 150  # the reference is varied: most samples differ


def test_sampling_is_seeded_and_evaluate_leaves_the_global_rng_alone(reference):
    model, tok = reference
    prompts = task.random_prompts(8, random.Random(0))
    torch.manual_seed(5)
    first = sample(model, tok, prompts)
    torch.manual_seed(5)
    assert sample(model, tok, prompts) == first
    torch.manual_seed(5)
    evaluate(model, tok, n=16)
    assert sample(model, tok, prompts) == first


def test_adjective_probs_reflect_the_reference_bias(reference):
    model, tok = reference
    n_pos = len(task.POSITIVE)
    for rating, wanted in (("5 stars", slice(0, n_pos)), ("1 star", slice(n_pos, None))):
        p = adjective_probs(model, tok, task.make_prompt("book", rating))
        assert 0.9 < p.sum() <= 1.0 + 1e-6
        assert 0.6 < p[wanted].sum() / p.sum() < 0.8  # pretrained with AGREE_P = 0.7


# -- pretraining -----------------------------------------------------------------------------


def test_short_pretrain_is_deterministic():
    torch.set_num_threads(1)
    a, _ = pretrain(seed=3, steps=4, progress=False)
    b, _ = pretrain(seed=3, steps=4, progress=False)
    c, _ = pretrain(seed=4, steps=4, progress=False)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_cli_pretrain_writes_a_loadable_reference(tmp_path, capsys):
    assert cli.main(["pretrain", "--out", str(tmp_path), "--seed", "1", "--steps", "3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 3 and summary["seed"] == 1
    model, tok = load_reference(folder=tmp_path)
    assert reference_card(tmp_path)["steps"] == 3
    ids = encode(tok, [task.make_prompt("soup", "5 stars")], [" it was fun and warm."])
    assert torch.isfinite(model(input_ids=ids["input_ids"]).logits).all()
    with pytest.raises(FileNotFoundError, match="no saved model"):
        load_model(tmp_path / "missing")


# -- figures and the adjective demo ----------------------------------------------------------


def _bar_heights(fig) -> np.ndarray:
    """The tops of every bar the figure draws (``figures.bars``: one polygon per bar)."""
    return np.array([path.vertices[1, 1] for c in fig.axes[0].collections
                     for path in c.get_paths()])  # fmt: skip


def test_adjective_demo_reacts_to_every_control(reference, recwarn):
    model, tok = reference
    policy = load_model(REFERENCE_DIR)
    with torch.no_grad():  # a policy that differs from the reference
        policy.lm_head.weight.add_(torch.randn_like(policy.lm_head.weight) * 0.5)
    demo = demos.adjective_explorer(policy, model, tok)
    seen = {demo.readout.value}
    for name, value in (("rating", "1 star"), ("item", "train"), ("temperature", 2.0)):
        before, heights = figures.png_bytes(demo.figure), _bar_heights(demo.figure)
        demo.controls[name].value = value
        assert not np.allclose(_bar_heights(demo.figure), heights), name
        if name != "item":  # the item moves this tiny model's first adjective by < 1 pixel
            assert figures.png_bytes(demo.figure) != before, name
        seen.add(demo.readout.value)
    assert len(seen) >= 3 and "nan" not in " ".join(seen)
    for temperature in np.arange(0.3, 2.01, 0.1):  # the slider's whole range
        demo.controls["temperature"].value = round(float(temperature), 1)
        assert "nan" not in demo.readout.value
    assert not [w for w in recwarn if "nan" in str(w.message).lower()]


def test_adjective_bars_readout_states_agreement():
    n = len(task.POSITIVE)
    words = task.POSITIVE + task.NEGATIVE
    p_ref = np.r_[np.full(n, 0.07), np.full(n, 0.03)]
    p_pol = np.r_[np.full(2, 0.49), np.zeros(2 * n - 2)]
    _, readout = figures.adjective_bars(words, p_ref, p_pol, wanted_positive=True, n_positive=n)
    assert "reference = 0.70" in readout and "policy = 1.00" in readout
    assert "policy = 2.0" in readout  # two adjectives in effective use
    _, readout = figures.adjective_bars(words, p_ref, p_pol, wanted_positive=False, n_positive=n)
    assert "reference = 0.30" in readout and "policy = 0.00" in readout


def test_encode_caps_a_runaway_completion_within_the_model_positions(reference):
    model, tok = reference
    runaway = " it was great and calm" * 20 + "."
    batch = encode(tok, [task.make_prompt("soup", "5 stars")], [runaway])
    assert batch["input_ids"].shape[1] <= model.config.n_positions
    assert batch["input_ids"][0, -1] == tok.eos_token_id
    assert not task.is_well_formed(runaway)
    with torch.no_grad():
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


def test_fast_forward_and_sampler_match_transformers(reference):
    """lm.fast computes the model's own forward and generate's draws, in fewer calls."""
    from kto_course.lm import fast

    model, tok = reference
    assert fast.supported(model)
    prompts = task.random_prompts(24, random.Random(5))
    batch = encode(tok, prompts, sample_seeded(model, tok, prompts, 5))
    with torch.no_grad():
        want = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     use_cache=False).logits  # fmt: skip
        got = fast.logits(model, batch["input_ids"])
    real = batch["attention_mask"].bool()
    assert torch.allclose(got[real], want[real], atol=1e-4)
    # Left padding included: two prompts of different lengths.
    tok.padding_side = "left"
    enc = tok(prompts[:8] + ["review: soup soup ->"], return_tensors="pt", padding=True,
              add_special_tokens=False)  # fmt: skip
    tok.padding_side = "right"
    kw = dict(max_new_tokens=12, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(3)
    ours = fast.sample_ids(model, enc["input_ids"], enc["attention_mask"], temperature=0.8, **kw)
    torch.manual_seed(3)
    theirs = model.generate(**enc, do_sample=True, temperature=0.8, top_k=0, top_p=1.0, **kw)
    assert torch.equal(ours, theirs[:, enc["input_ids"].shape[1] :])
