"""Lesson 06's trainer: learning, metrics against the core math, save/load, bad input, CLI."""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from kto_course import cli, core, demos, figures
from kto_course.lm import load_model, load_reference, sampling, task
from kto_course.lm.sampling import encode
from kto_course.train import (
    GPU_PRESET,
    KTOConfig,
    KTOTrainer,
    from_reference,
    learning_rate_factor,
    sequence_logps_of,
    z0_pairs,
)


def _trainer(**overrides) -> KTOTrainer:
    config = KTOConfig(**{"device": "cpu", "threads": 1, "eval_samples": 128, **overrides})
    return from_reference(config)


def test_online_steps_raise_the_desirable_rate():
    trainer = _trainer(steps=30, eval_every=30, eval_samples=256)
    summary = trainer.train(progress=False)
    # Seed 0: 0.47 -> ~0.7-0.8 after 30 steps; a 0.1 rise is far outside sampling noise (~0.03).
    assert summary["desirable_after"] > summary["desirable_before"] + 0.1
    assert summary["well_formed_after"] > 0.85
    assert summary["steps"] == 30 and len(trainer.history) == 30
    assert [e["step"] for e in trainer.evals] == [0, 30]


def test_steps_on_a_fixed_microbatch_lower_its_loss():
    reference, tokenizer = load_reference()
    torch.manual_seed(0)
    prompts = task.random_prompts(8, random.Random(0))
    rows = [
        {"prompt": p, "completion": c, "label": y}
        for p, c, y in zip(
            prompts,
            [task.make_completion(*pair) for pair in [("great", "calm"), ("dull", "rude")] * 4],
            [True, False] * 4,
            strict=True,
        )
    ]
    config = KTOConfig(mode="offline", batch_size=8, steps=12, device="cpu", threads=1,
                       offline_size=8, eval_every=100, eval_samples=16)  # fmt: skip
    trainer = KTOTrainer(load_reference()[0], reference, tokenizer, config, dataset=rows)
    trainer.train(progress=False)
    losses = [h["loss"] for h in trainer.history]
    assert losses[0] == pytest.approx(0.5, abs=1e-6)  # policy == reference: every r is 0
    assert losses[-1] < losses[0] - 0.02
    assert trainer.history[-1]["rewards/margins"] > 0


def test_step_metrics_equal_the_core_math():
    trainer = _trainer(steps=1, beta=0.3, lambda_D=1.2, lambda_U=0.8)
    for _ in range(3):  # move the policy away from the reference first
        trainer.step()
    prompts = task.random_prompts(6, random.Random(7))
    completions = [task.make_completion(a, b) for a, b in
                   [("great", "calm"), ("dull", "rude"), ("fun", "cold"),
                    ("warm", "fresh"), ("slow", "messy"), ("bland", "fun")]]  # fmt: skip
    labels = task.judge(prompts, completions)
    assert any(labels) and not all(labels)
    shifted = [completions[i - 1] for i in range(6)]  # TRL: x_i with y_{i-1}
    with torch.no_grad():
        policy = trainer.policy
        tok = trainer.tokenizer
        lp = sequence_logps_of(policy, encode(tok, prompts, completions)).numpy()
        lr_ = sequence_logps_of(trainer.reference, encode(tok, prompts, completions))
        kp = sequence_logps_of(policy, encode(tok, prompts, shifted)).numpy()
        kr = sequence_logps_of(trainer.reference, encode(tok, prompts, shifted)).numpy()
    lr_ = lr_.numpy()
    trainer.next_batch = lambda: (prompts, completions, labels)
    record = trainer.step()

    d = np.array(labels)
    r = core.log_ratio(lp, lr_)
    z0 = core.z0_estimate(core.log_ratio(kp, kr))
    assert record["loss"] == pytest.approx(core.kto_loss(r, z0, d, 0.3, 1.2, 0.8), rel=1e-5)
    assert record["kl"] == pytest.approx(z0, abs=1e-5)
    assert record["kl_unclamped"] == pytest.approx(np.mean(kp - kr), abs=1e-4)
    assert record["rewards/chosen"] == pytest.approx(0.3 * r[d].mean(), abs=1e-5)
    assert record["rewards/rejected"] == pytest.approx(0.3 * r[~d].mean(), abs=1e-5)
    assert record["rewards/margins"] == pytest.approx(0.3 * (r[d].mean() - r[~d].mean()), abs=1e-5)
    assert record["logps/chosen"] == pytest.approx(lp[d].mean(), abs=1e-4)
    assert record["logps/rejected"] == pytest.approx(lp[~d].mean(), abs=1e-4)
    assert record["learning_rate"] == pytest.approx(1e-3 * 4 / 20)
    assert record["grad_norm"] > 0


def test_reference_stays_frozen_and_policy_moves():
    trainer = _trainer(steps=3)
    before = {k: v.clone() for k, v in trainer.reference.state_dict().items()}
    policy_before = trainer.policy.transformer.wte.weight.clone()
    trainer.train(progress=False)
    assert not trainer.reference.training
    assert all(not p.requires_grad for p in trainer.reference.parameters())
    assert all(torch.equal(before[k], v) for k, v in trainer.reference.state_dict().items())
    assert not torch.equal(policy_before, trainer.policy.transformer.wte.weight)


def test_save_and_load_round_trip(tmp_path):
    trainer = _trainer(steps=2)
    trainer.train(progress=False)
    trainer.save(tmp_path)
    reloaded = load_model(tmp_path)
    assert json.loads((tmp_path / "kto_config.json").read_text())["steps"] == 2
    ids = encode(trainer.tokenizer, [task.make_prompt("soup", "5 stars")],
                 [" it was fun and warm."])["input_ids"]  # fmt: skip
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, trainer.policy(input_ids=ids).logits)


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"batch_size": 1}, "cannot estimate z0"),
        ({"mode": "sideways"}, "mode must be"),
        ({"device": "tpu"}, "unknown device"),
        ({"mode": "offline", "offline_size": 4}, "fewer than one microbatch"),
        ({"batch_size": 16, "pairing_groups": 3}, "equal parts of at least 2"),
        ({"batch_size": 4, "pairing_groups": 4}, "equal parts of at least 2"),
        ({"schedule": "cosine"}, "schedule must be"),
        ({"max_length": 1}, "max_length must be"),
    ],
)
def test_bad_config_fails_before_training(overrides, words):
    with pytest.raises(ValueError, match=words):
        from_reference(KTOConfig(**overrides))


def test_empty_dataset_is_refused():
    reference, tokenizer = load_reference()
    with pytest.raises(ValueError, match="empty"):
        KTOTrainer(load_reference()[0], reference, tokenizer, KTOConfig(mode="offline"), dataset=[])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_asked_for_without_cuda_is_a_clear_error(capsys):
    with pytest.raises(ValueError, match="no CUDA GPU"):
        from_reference(KTOConfig(device="cuda"))
    assert cli.main(["train", "--device", "cuda"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err


def test_cli_bad_input_is_an_error_not_a_crash(capsys):
    assert cli.main(["train", "--batch-size", "1"]) == 2
    assert "cannot estimate z0" in capsys.readouterr().err
    assert cli.main(["train", "--device", "abacus"]) == 2
    assert "unknown device" in capsys.readouterr().err


def test_cli_train_has_one_option_per_config_field(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    out = capsys.readouterr().out
    for f in dataclasses.fields(KTOConfig):
        assert "--" + f.name.replace("_", "-") in out, f"kto-course train lacks {f.name}"
    with pytest.raises(SystemExit):
        cli.main(["train", "--lr", "0"])
    assert "expected a number > 0" in capsys.readouterr().err


def test_cli_train_prints_a_json_summary_and_saves(tmp_path, capsys):
    out = tmp_path / "policy"
    code = cli.main(["train", "--device", "cpu", "--steps", "3", "--batch-size", "4",
                     "--seed", "1", "--out", str(out)])  # fmt: skip
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    for key in ("desirable_before", "desirable_after", "distinct_before", "distinct_after",
                "steps", "seconds", "steps_per_s", "tokens_per_s", "peak_memory_mb", "device"):
        assert key in summary
    assert summary["steps"] == 3 and summary["device"] == "cpu"
    assert (out / "model.safetensors").is_file()
    load_model(out)


def test_console_script_exits_at_once_with_its_output_whole(tmp_path):
    """``kto-course train`` ends the process without Python's teardown (cli.QUICK_EXIT): the
    JSON summary, the saved policy and the exit status must all be there regardless."""
    script = Path(sys.executable).with_name("kto-course")
    out = tmp_path / "policy"
    done = subprocess.run([str(script), "train", "--device", "cpu", "--steps", "2",
                           "--batch-size", "4", "--eval-samples", "8", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["steps"] == 2 and summary["saved_to"] == str(out)
    load_model(out)
    bad = subprocess.run([str(script), "train", "--batch-size", "1"], capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert bad.returncode == 2 and "cannot estimate z0" in bad.stderr


def test_live_training_plots_the_history(monkeypatch):
    import IPython.display

    shown = []  # what the learner sees the moment the box appears, before the first step
    # (the canvas's first frame, which ipympl shows until the browser's own frames arrive)
    monkeypatch.setattr(IPython.display, "display", lambda box: shown.append(
        (box.children[0].value, box.children[1]._data_url)))  # fmt: skip
    trainer = _trainer(steps=4, eval_every=2, eval_samples=32)
    summary = demos.live_training(trainer, every=2)
    (readout, data_url), = shown
    png = base64.b64decode(data_url)
    assert readout == "no steps yet" and png[:4] == b"\x89PNG"  # axes, not a broken icon
    assert summary["steps"] == 4 and len(trainer.evals) == 3
    fig, readout = figures.training_curves(trainer.history, trainer.evals)
    assert "step 4" in readout and "desirable" in readout
    fig, readout = figures.training_curves([], [])  # before the first step
    assert readout == "no steps yet"
    # A history whose batches had one label only (no rewards/rejected): no crash, no NaN text.
    partial = [{k: v for k, v in h.items() if k != "rewards/rejected"} for h in trainer.history]
    _, readout = figures.training_curves(partial, trainer.evals)
    assert "nan" not in readout


@pytest.mark.cuda
def test_training_on_cuda():
    trainer = from_reference(KTOConfig(device="cuda", steps=20, eval_every=20, eval_samples=256))
    summary = trainer.train(progress=False)
    assert summary["device"] == "cuda"
    assert next(trainer.policy.parameters()).is_cuda
    assert next(trainer.reference.parameters()).is_cuda
    assert summary["desirable_after"] > summary["desirable_before"]
    assert summary["peak_memory_mb"] > 0


@pytest.mark.cuda
def test_large_model_pretrains_and_trains_on_cuda():
    reference, tokenizer = GPU_PRESET.reference(steps=20)
    trainer = KTOTrainer(copy.deepcopy(reference), reference, tokenizer,
                         GPU_PRESET.config(steps=3, eval_samples=64))  # fmt: skip
    assert trainer.train(progress=False)["steps"] == 3


def _offline_rows(n=48, seed=3):
    rng = random.Random(seed)
    prompts = task.random_prompts(n, rng)
    adjectives = task.POSITIVE + task.NEGATIVE
    completions = [task.make_completion(rng.choice(adjectives), rng.choice(adjectives))
                   for _ in range(n)]  # fmt: skip
    labels = task.judge(prompts, completions)
    return [{"prompt": p, "completion": c, "label": y}
            for p, c, y in zip(prompts, completions, labels, strict=True)]  # fmt: skip


def _device_tensors(trainer):
    both, desirable, ref, kl_ref = trainer._tensors()
    found = {f"batch.{k}": v for k, v in both.items()}
    found.update(desirable=desirable)
    if ref is not None:
        found.update(ref_logps=ref, kl_ref_logps=kl_ref)
    found.update({k: v for k, v in vars(trainer).items() if isinstance(v, torch.Tensor)})
    return found


@pytest.mark.parametrize("mode", ["offline", "online"])
def test_every_tensor_the_trainer_builds_is_on_its_device(mode):
    config = KTOConfig(mode=mode, batch_size=8, offline_size=48, device="cpu", threads=1,
                       eval_samples=16)  # fmt: skip
    reference, tokenizer = load_reference()
    trainer = KTOTrainer(load_reference()[0], reference, tokenizer, config,
                         dataset=_offline_rows() if mode == "offline" else None)  # fmt: skip
    tensors = _device_tensors(trainer)
    if mode == "offline":  # the precomputed ones are there
        assert {"_ref_logps", "_kl_ref", "_prompts", "_completions", "_labels"} <= set(tensors)
    for name, t in tensors.items():
        assert t.device == torch.device(config.device), name
    trainer.step()


def test_offline_reference_logps_are_precomputed_exactly():
    """The precomputed reference log-probs (matched rows, and the mismatched pairs of the
    epoch) equal scoring each microbatch afresh, as the step did before."""
    rows = _offline_rows()
    config = KTOConfig(mode="offline", batch_size=8, offline_size=48, device="cpu", threads=1)
    reference, tokenizer = load_reference()
    trainer = KTOTrainer(load_reference()[0], reference, tokenizer, config, dataset=rows)
    for _ in range(7):  # crosses an epoch (48 rows = 6 microbatches)
        order = list(trainer._order[:8]) if len(trainer._order) >= 8 else None
        both, _, ref, kl_ref = trainer._tensors()
        if order is None:
            continue
        chunk = [rows[i] for i in order]
        prompts = [r["prompt"] for r in chunk]
        completions = [r["completion"] for r in chunk]
        shifted = [completions[i - 1] for i in range(8)]
        with torch.no_grad():
            want = sequence_logps_of(reference, encode(tokenizer, prompts, completions))
            want_kl = sequence_logps_of(reference, encode(tokenizer, prompts, shifted))
        assert torch.allclose(ref, want, atol=1e-5)
        assert torch.allclose(kl_ref, want_kl, atol=1e-5)


def test_fused_and_plain_adamw_give_the_same_losses():
    rows = _offline_rows()
    reference, tokenizer = load_reference()
    losses = {}
    for optimizer in ("adamw_fused", "adamw"):
        config = KTOConfig(mode="offline", batch_size=8, offline_size=48, device="cpu",
                           threads=1, optimizer=optimizer)  # fmt: skip
        trainer = KTOTrainer(load_reference()[0], reference, tokenizer, config, dataset=rows)
        losses[optimizer] = [trainer.step()["loss"] for _ in range(8)]
    assert losses["adamw_fused"] == pytest.approx(losses["adamw"], abs=1e-5)


# -- the knobs lesson 07 sets to TRL's choices --------------------------------------------------


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_mismatched_pairs_stay_inside_their_group(groups):
    shift = z0_pairs(16, KTOConfig(pairing_groups=groups)).tolist()
    size = 16 // groups
    assert sorted(shift) == list(range(16))  # every completion used once
    for i, j in enumerate(shift):
        assert j != i and j // size == i // size  # never itself, never another group's
        assert j == i // size * size + (i - 1) % size  # TRL: x_i with y_{i-1} in its group
    halos = z0_pairs(8, KTOConfig(kl_pairing="halos")).tolist()
    assert halos == [1, 2, 3, 4, 5, 6, 7, 0]


def test_schedules():
    linear = learning_rate_factor(KTOConfig(schedule="linear", steps=10))
    assert [linear(s) for s in (0, 5, 10, 11)] == [1.0, 0.5, 0.0, 0.0]  # no warmup, decay to 0
    warm = learning_rate_factor(KTOConfig(warmup_steps=4))
    assert [warm(s) for s in (0, 3, 100)] == [0.25, 1.0, 1.0]


def test_sequential_order_reads_the_rows_as_given():
    rows = _offline_rows()
    reference, tokenizer = load_reference()
    for order, expect_sorted in (("sequential", True), ("shuffled", False)):
        config = KTOConfig(mode="offline", batch_size=8, offline_size=48, device="cpu",
                           threads=1, order=order)  # fmt: skip
        trainer = KTOTrainer(load_reference()[0], reference, tokenizer, config, dataset=rows)
        seen = [trainer._next_rows()[0] for _ in range(6)]
        assert (sum(seen, []) == list(range(48))) is expect_sorted


def test_joint_tokenization_and_max_length():
    _, tokenizer = load_reference()
    rows = _offline_rows(8)
    prompts, completions = [r["prompt"] for r in rows], [r["completion"] for r in rows]
    joint = sampling.encode_rows(tokenizer, prompts, completions, "joint")
    apart = sampling.encode_rows(tokenizer, prompts, completions)
    eos = tokenizer.eos_token_id
    for p, c, text_p, text_c in zip(*joint, prompts, completions, strict=True):
        assert c[-1] == eos and tokenizer.decode(p + c[:-1]) == text_p + text_c
    # The tiny BPE never merges across the prompt/completion boundary: the same ids both ways.
    assert joint == apart
    # A prompt that fills max_length leaves no completion: the row is dropped, as TRL does;
    # the others are cut after max_length tokens.
    limit = max(len(p) for p in joint[0]) + 3
    long_row = {**rows[0], "prompt": rows[0]["prompt"] * 3}
    config = KTOConfig(mode="offline", batch_size=2, offline_size=8, device="cpu", threads=1,
                       tokenization="joint", max_length=limit)  # fmt: skip
    reference, _ = load_reference()
    trainer = KTOTrainer(load_reference()[0], reference, tokenizer, config,
                         dataset=[long_row, *rows])  # fmt: skip
    assert trainer.dataset == rows
    lengths = trainer._pairs(*[torch.arange(8)] * 2)["attention_mask"].sum(1)
    assert int(lengths.max()) == limit


def test_fused_head_logps_equal_log_softmax_and_their_gradients():
    model, tokenizer = load_reference()
    rows = _offline_rows(6)
    batch = encode(tokenizer, [r["prompt"] for r in rows], [r["completion"] for r in rows])
    values, grads = {}, {}
    for kind in ("log_softmax", "fused_head"):
        model.zero_grad()
        values[kind] = sequence_logps_of(model, batch, kind)
        values[kind].sum().backward()
        grads[kind] = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert torch.allclose(values["fused_head"], values["log_softmax"], atol=1e-4)
    assert torch.allclose(grads["fused_head"], grads["log_softmax"], atol=1e-4)


@pytest.mark.cuda
def test_offline_training_on_cuda_keeps_every_tensor_on_the_gpu():
    config = KTOConfig(mode="offline", device="cuda", batch_size=8, offline_size=48,
                       steps=4, eval_every=4, eval_samples=32)  # fmt: skip
    reference, tokenizer = load_reference()
    trainer = KTOTrainer(load_reference()[0], reference, tokenizer, config,
                         dataset=_offline_rows())  # fmt: skip
    for name, t in _device_tensors(trainer).items():
        assert t.is_cuda, name
    assert trainer.train(progress=False)["steps"] == 4
