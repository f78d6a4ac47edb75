"""Lesson 06, the tiny GPT-2 fine-tune: its checks against references built from the package and
the notebook's solutions, the planted bugs, more misconceptions, and their answers to
non-answers. The model, task and demo are in test_lm.py; the worker's side of ``kto_step``
(gradients of modules coming back from the sandbox) in test_grading.py."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from shared import ExerciseTests, check, failure, grade_id, returns_none, solution_notebook

from kto_course import checks, figures, system, torch_ops, train
from kto_course.checks import l06_tiny_gpt2_kto as l06
from kto_course.lm import encode, fast, load_reference, task

LESSON = "06_tiny_gpt2_kto"
EXERCISES = ("completion_logps", "kto_microbatch_loss", "kto_step")
# What the notebook's first code cell imports; planted bugs and solutions run in this namespace.
NAMESPACE = {"torch": torch, "np": np, "task": task, "torch_ops": torch_ops, "copy": copy,
             "encode": encode}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Reference answers, from the package's own functions
# ---------------------------------------------------------------------------------------------


def ref_completion_logps(logits, input_ids, attention_mask, prompt_lengths):
    positions = torch.arange(input_ids.shape[1])
    completion = attention_mask.bool() & (positions[None, :] >= prompt_lengths[:, None])
    return torch_ops.sequence_logps_from_logits(logits, input_ids, completion)


def ref_kto_microbatch_loss(logp_theta, logp_ref, kl_logp_theta, kl_logp_ref, desirable,
                            beta=0.1, lambda_D=1.0, lambda_U=1.0):  # fmt: skip
    return torch_ops.batch_kto_loss(logp_theta, logp_ref, kl_logp_theta, kl_logp_ref, desirable,
                                    beta, lambda_D, lambda_U)[0]  # fmt: skip


def ref_kto_step(policy, reference, labelled, mismatched, desirable, beta=0.1, lambda_D=1.0,
                 lambda_U=1.0):  # fmt: skip
    """The trainer's step (KTOTrainer.step), without its optimizer."""
    logp_theta = train.sequence_logps_of(policy, labelled)
    with torch.no_grad():
        kl_logp_theta = train.sequence_logps_of(policy, mismatched)
        logp_ref = train.sequence_logps_of(reference, labelled)
        kl_logp_ref = train.sequence_logps_of(reference, mismatched)
    loss, _ = torch_ops.batch_kto_loss(logp_theta, logp_ref, kl_logp_theta, kl_logp_ref,
                                       desirable, beta, lambda_D, lambda_U)  # fmt: skip
    loss.backward()
    return loss


REFERENCES = {
    "completion_logps": ref_completion_logps,
    "kto_microbatch_loss": ref_kto_microbatch_loss,
    "kto_step": ref_kto_step,
}


# The tests every lesson's exercises get: references and solutions pass, planted bugs fail.
class TestExercises(ExerciseTests):
    LESSON, EXERCISES, REFERENCES, NAMESPACE = LESSON, EXERCISES, REFERENCES, NAMESPACE

    def test_notebook_structure(self):
        """The shared contract, but for the demos: the live training run is a demo that takes
        the trainer (``summary = demos.live_training(trainer, ...)``), not a bare ``demos.x()``."""
        from nbgrader.nbgraderformat import MetadataValidator

        nb = solution_notebook(LESSON)
        MetadataValidator().validate_nb(nb)
        ids = [grade_id(c) for c in nb.cells]
        assert tuple(i[3:] for i in ids if i.startswith("ex_")) == EXERCISES
        for name in EXERCISES:
            at = ids.index(f"ex_{name}")
            assert "### BEGIN SOLUTION" in nb.cells[at].source and ids[at + 1] == f"test_{name}"
            assert nb.cells[at + 1].source == (
                f"checks.check_{name}({name})\n### BEGIN HIDDEN TESTS\n"
                f"checks.check_{name}({name}, hidden=True)\n### END HIDDEN TESTS"
            )
            assert 1 <= nb.cells[at + 1].metadata.nbgrader["points"] <= 3
        assert any(i.startswith("written_") for i in ids)
        assert len({c.get("id") for c in nb.cells}) == len(nb.cells)
        assert all(not c.get("outputs") and c.get("execution_count") is None
                   for c in nb.cells if c.cell_type == "code")  # fmt: skip
        # kto_step's answer is not written out above it: no cell before it runs a forward pass
        # with gradient or calls backward (figures.four_logps shows the four sets).
        before = [c.source for c in nb.cells[: ids.index("ex_kto_step")] if c.cell_type == "code"]
        assert not any(".backward(" in s or "def logps" in s or "batch_kto_loss" in s
                       for s in before)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# kto_step: misconceptions beyond the planted bugs, and right answers written another way
# ---------------------------------------------------------------------------------------------


def _step(**changes):
    """``ref_kto_step`` with a piece replaced: ``forward`` (model, batch) -> log-probs,
    ``z0`` (kl_logp_theta, kl_logp_ref) -> z0, ``loss`` (losses) -> the loss, ``after``
    (loss, policy, desirable) run after it (default: backward), ``swap`` the two batches,
    ``swap_models`` policy and reference, ``grad_on`` the forward passes run with gradient,
    ``defaults`` beta and the lambdas at their defaults."""

    def forward(model, batch):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return torch_ops.sequence_logps_from_logits(logits, batch["input_ids"],
                                                    batch["completion_mask"])  # fmt: skip

    forward = changes.get("forward", forward)
    z0_of = changes.get("z0", lambda t, r: (t - r).mean().clamp(min=0).detach())

    def kto_step(policy, reference, labelled, mismatched, desirable, beta=0.1, lambda_D=1.0,
                 lambda_U=1.0):  # fmt: skip
        if changes.get("swap"):
            labelled, mismatched = mismatched, labelled
        if changes.get("swap_models"):
            policy, reference = reference, policy
        if changes.get("defaults"):
            beta, lambda_D, lambda_U = 0.1, 1.0, 1.0
        grad_on = changes.get("grad_on", ("logp_theta",))
        runs = {"logp_theta": (policy, labelled), "logp_ref": (reference, labelled),
                "kl_logp_theta": (policy, mismatched), "kl_logp_ref": (reference, mismatched)}
        sets = {}
        for name, (model, batch) in runs.items():
            with torch.set_grad_enabled(name in grad_on):
                sets[name] = forward(model, batch)
        z0 = z0_of(sets["kl_logp_theta"], sets["kl_logp_ref"])
        losses = torch_ops.kto_losses(sets["logp_theta"] - sets["logp_ref"], z0, desirable,
                                      beta, lambda_D, lambda_U)  # fmt: skip
        loss = changes.get("loss", torch.mean)(losses)
        changes.get("after", lambda loss, policy, d: loss.backward())(loss, policy, desirable)
        return loss

    return kto_step


def ref_forward(model, batch):
    return train.sequence_logps_of(model, batch)


def _sgd_step(loss, policy, desirable):
    loss.backward()
    torch.optim.SGD(policy.parameters(), lr=0.1).step()


def _backward_on_sum(loss, policy, desirable):
    (loss * len(desirable)).backward()


# Misconceptions beyond the planted bugs: (wrong answer, words, the visible check catches it)
MISCONCEPTIONS = [
    (_step(swap=True), "labelled and mismatched are swapped", True),
    (_step(swap_models=True, grad_on=("logp_ref",)), "policy and reference are swapped", True),
    (_step(defaults=True), "were not passed on", True),
    (_step(z0=lambda t, r: torch.zeros(())), "z0 is missing", True),
    (_step(loss=lambda losses: losses, after=lambda loss, policy, d: loss.mean().backward()),
     "return the microbatch's loss, one number", True),
    (_step(after=_sgd_step), "changed the policy's weights", True),
    (_step(after=_backward_on_sum), "the gradient is that of the SUM", True),
    (_step(after=lambda loss, policy, d: None, grad_on=()), "no gradient reached the policy",
     True),  # fmt: skip
    # every forward pass with gradient: the reference's too, whatever z0 does
    (_step(grad_on=("logp_theta", "logp_ref", "kl_logp_theta", "kl_logp_ref")),
     "the reference model received a gradient", True),
    # z0 attached to the reference's mismatched forward pass only
    (_step(grad_on=("logp_theta", "kl_logp_ref"), z0=lambda t, r: (t - r).mean().clamp(min=0)),
     "the reference model received a gradient", True),
]


@pytest.mark.parametrize("wrong,words,visible", MISCONCEPTIONS,
                         ids=[m[1][:28] for m in MISCONCEPTIONS])  # fmt: skip
def test_kto_step_misconception_is_named(wrong, words, visible):
    for hidden in (False, True) if visible else (True,):
        message = failure("kto_step", wrong, hidden)
        assert words.lower() in message.lower(), message


# Right answers, written another way: the check accepts them.
ACCEPTED = {
    # the policy's mismatched forward with gradient costs memory, but z0 detached: same step
    "mismatched forward with grad, z0 detached": _step(grad_on=("logp_theta", "kl_logp_theta")),
    "the trainer's lean forward": _step(forward=ref_forward),
    "no attention mask (right padding)": _step(
        forward=lambda m, b: torch_ops.sequence_logps_from_logits(
            fast.logits(m, b["input_ids"]), b["input_ids"], b["completion_mask"])),
}


@pytest.mark.parametrize("name", list(ACCEPTED))
def test_kto_step_accepts_right_answers_written_another_way(name, capsys):
    for hidden in (False, True):
        check("kto_step")(ACCEPTED[name], hidden=hidden)
    assert "✓ kto_step" in capsys.readouterr().out


def test_kto_step_accepts_a_python_float(capsys):
    step = _step()
    check("kto_step")(lambda *args: step(*args).item(), hidden=True)
    assert "✓ kto_step" in capsys.readouterr().out


@system.one_thread()
def test_kto_step_cases_are_what_they_promise():
    """Labels as the judge gives them; the raw z0 has the sign its spec asks for; the policy
    differs from the reference; the step sees the models as the lesson makes them."""
    for hidden in (False, True):
        rng = checks.case_rng(6, 3, hidden)  # as check_kto_step draws them
        for batch, n_desirable, z0_sign in l06.STEP_CASES + l06.HIDDEN_STEP_CASES * hidden:
            policy, reference, labelled, mismatched, desirable, *_ = l06._step_case(
                rng, batch, n_desirable, z0_sign)  # fmt: skip
            assert int(desirable.sum()) == n_desirable and len(desirable) == batch
            four = figures.four_logps(policy, reference, labelled, mismatched)
            r = four["logp_theta"] - four["logp_ref"]
            r_mis = four["kl_logp_theta"] - four["kl_logp_ref"]
            assert np.abs(r).max() > 0.1 and z0_sign * r_mis.mean() > 0.1
            assert policy.training and not reference.training
            assert all(p.requires_grad and p.grad is None for p in reference.parameters())


def test_kto_step_check_leaves_the_shipped_model_alone():
    model, _ = l06._shipped()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    check("kto_step")(REFERENCES["kto_step"], hidden=True)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert all(p.grad is None for p in model.parameters())


def test_four_logps_reads_the_four_sets_without_gradient():
    reference, tokenizer = load_reference()
    policy = copy.deepcopy(reference).train()
    prompts = [task.make_prompt("soup", "5 stars"), task.make_prompt("film", "1 star")]
    completions = [task.make_completion("fresh", "calm"), task.make_completion("dull", "cold")]
    labelled = encode(tokenizer, prompts, completions)
    mismatched = encode(tokenizer, prompts, completions[::-1])
    four = figures.four_logps(policy, reference, labelled, mismatched)
    assert list(four) == ["logp_theta", "logp_ref", "kl_logp_theta", "kl_logp_ref"]
    np.testing.assert_array_equal(four["logp_theta"], four["logp_ref"])  # step 0
    with torch.no_grad():
        want = train.sequence_logps_of(reference, mismatched).numpy()
    np.testing.assert_allclose(four["kl_logp_ref"], want, rtol=1e-6)
    assert (four["kl_logp_ref"] < four["logp_ref"]).all()  # the other rating's adjectives
    assert all(p.grad is None for p in policy.parameters())


# ---------------------------------------------------------------------------------------------
# Non-answers
# ---------------------------------------------------------------------------------------------


def test_checks_reject_non_answers():
    def not_done(*args):
        raise NotImplementedError

    for name in EXERCISES:
        with pytest.raises(checks.CheckFailed, match="NotImplementedError"):
            check(name)(not_done)
        with pytest.raises(checks.CheckFailed, match="None"):
            check(name)(returns_none)


@pytest.mark.parametrize("bad,words", [
    (lambda *a: (_ for _ in ()).throw(ValueError("boom")), "kto_step raised ValueError: boom"),
    (lambda *a: float("nan"), "kto_step returned NaN"),
    (lambda *a: "a loss", "not numbers"),
])  # fmt: skip
def test_kto_step_broken_answer_fails_clearly(bad, words):
    assert words in failure("kto_step", bad)


def test_ending_logps_reads_the_last_two_tokens_of_each_completion():
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
