"""Lesson 07: the course against Hugging Face TRL's KTOTrainer (kto_course.trl_bridge).

- the course's KTO loss against TRL's own loss code (``KTOTrainer._compute_loss`` driven with
  precomputed reference log-probs and a stub model whose log-probs the test sets);
- 20 steps of the course's TRL-matching trainer against TRL's real trainer;
- the 2-process ``accelerate launch`` run (slow) and the launcher's bad-input messages.

Skipped only when TRL is not installed; CI sets KTO_COURSE_REQUIRE_TRL=1 so that a missing TRL
fails there instead of skipping.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import types
import zlib
from pathlib import Path

import pytest
import torch

if not os.environ.get("KTO_COURSE_REQUIRE_TRL"):
    try:
        import accelerate  # noqa: F401
        import trl  # noqa: F401
    except ImportError:
        pytest.skip("TRL is not installed: pip install -e '.[trl]'", allow_module_level=True)

from kto_course import figures, torch_ops, trl_bridge, trl_launch  # noqa: E402
from kto_course.lm import load_reference  # noqa: E402
from kto_course.train import KTOTrainer, make_offline_dataset  # noqa: E402

SHARED = ("kl", "rewards/chosen", "rewards/rejected", "rewards/margins",
          "logps/chosen", "logps/rejected")  # fmt: skip
PARITY = ("loss", "kl", "rewards/chosen", "rewards/rejected")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """1 torch thread (the figures' setting; a shared 2-core machine), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- the loss against TRL's _compute_loss --------------------------------------------------------


class StubModel:
    """Stands in for the policy inside ``_compute_loss``: returns per-token log-probs whose sums
    are the sequence log-probs the test chose (all of it on the first completion position)."""

    def __init__(self, logp, kl_logp, kl_input_ids):
        self.logp, self.kl_logp, self.kl_input_ids = logp, kl_logp, kl_input_ids

    def __call__(self, input_ids, labels=None, **kwargs):
        value = self.kl_logp if input_ids is self.kl_input_ids else self.logp
        b, t = input_ids.shape
        per_token = torch.cat([value[:, None], value.new_zeros(b, t - 2)], dim=1)
        zeros = torch.zeros(b, t - 1)
        return types.SimpleNamespace(log_probs=per_token, entropy=zeros, mean_logits=zeros)


@pytest.fixture(scope="module")
def trl_trainer():
    """A real KTOTrainer on 4 rows of the tiny GPT-2, built once; cases set beta etc."""
    policy, tok = load_reference()
    reference, _ = load_reference()
    rows = [
        {"prompt": "review: soup, 5 stars ->", "completion": " it was great and fun.",
         "label": True},
        {"prompt": "review: film, 1 star ->", "completion": " it was dull and rude.",
         "label": True},
        {"prompt": "review: cafe, 5 stars ->", "completion": " it was cold and slow.",
         "label": False},
        {"prompt": "review: bike, 1 star ->", "completion": " it was warm and calm.",
         "label": False},
    ]  # fmt: skip
    trainer = trl_bridge.make_trainer(policy, reference, tok, rows, steps=1, batch_size=2)
    trainer.precompute_ref_logps = True  # reference log-probs come from the batch
    trainer.model.train()
    return trainer


def trl_loss(trainer, logp, ref, kl_theta, kl_ref, desirable, beta, wd, wu, loss_type):
    trainer.beta, trainer.desirable_weight, trainer.undesirable_weight = beta, wd, wu
    trainer.loss_type, trainer.calculate_KL = loss_type, loss_type == "kto"
    b = len(logp)
    ids, kl_ids = torch.ones(b, 4, dtype=torch.long), torch.ones(b, 4, dtype=torch.long)
    comp = torch.tensor([[0, 1, 1, 1]] * b)
    batch = {"input_ids": ids, "attention_mask": torch.ones(b, 4, dtype=torch.long),
             "completion_mask": comp, "label": desirable, "ref_logps": ref}  # fmt: skip
    if loss_type == "kto":
        batch.update(KL_input_ids=kl_ids, KL_attention_mask=torch.ones_like(kl_ids),
                     KL_completion_mask=comp, ref_KL_logps=kl_ref)  # fmt: skip
    leaf = logp.clone().requires_grad_(True)
    trainer._metrics["train"].clear()
    loss = trainer._compute_loss(StubModel(leaf, kl_theta, kl_ids), batch, False)
    loss.backward()
    metrics = {k: v[-1] for k, v in trainer._metrics["train"].items() if v}
    trainer._metrics["train"].clear()
    return loss.detach(), leaf.grad, metrics


def course_loss(logp, ref, kl_theta, kl_ref, desirable, beta, wd, wu, loss_type):
    leaf = logp.clone().requires_grad_(True)
    loss, metrics = torch_ops.batch_kto_loss(
        logp_theta=leaf, logp_ref=ref, desirable=desirable, kl_logp_theta=kl_theta,
        kl_logp_ref=kl_ref, beta=beta, lambda_D=wd, lambda_U=wu, loss_type=loss_type,
    )  # fmt: skip
    (grad,) = torch.autograd.grad(loss, leaf)
    return loss.detach(), grad, metrics


# labels, beta, desirable_weight, undesirable_weight, loss_type, kl_shift (z0 sign: + or clamped)
CASES = [
    ("mixed", 0.1, 1.0, 1.0, "kto", +1.0),
    ("mixed", 0.1, 1.0, 1.0, "kto", -1.0),
    ("mixed", 0.01, 1.33, 1.0, "kto", +0.5),
    ("mixed", 2.0, 0.0, 2.0, "kto", +2.0),
    ("mixed", 0.5, 2.0, 0.0, "kto", -0.5),
    ("all_desirable", 0.1, 1.0, 1.0, "kto", +1.0),
    ("all_desirable", 1.0, 2.0, 0.5, "kto", -1.0),
    ("all_undesirable", 0.1, 1.0, 1.0, "kto", +1.0),
    ("all_undesirable", 2.0, 0.7, 1.5, "kto", +3.0),
    ("mixed", 0.1, 1.0, 1.0, "apo_zero_unpaired", 0.0),
    ("mixed", 2.0, 0.3, 1.7, "apo_zero_unpaired", 0.0),
    ("all_desirable", 0.01, 1.0, 1.0, "apo_zero_unpaired", 0.0),
    ("all_undesirable", 1.0, 1.0, 2.0, "apo_zero_unpaired", 0.0),
]


@pytest.mark.parametrize("labels,beta,wd,wu,loss_type,kl_shift", CASES)
def test_loss_matches_trl_compute_loss(trl_trainer, labels, beta, wd, wu, loss_type, kl_shift):
    seed = zlib.crc32(repr((labels, beta, wd, wu, loss_type, kl_shift)).encode())
    gen = torch.Generator().manual_seed(seed)
    b = 7  # odd on purpose
    desirable = {"mixed": torch.rand(b, generator=gen) < 0.5,
                 "all_desirable": torch.ones(b, dtype=torch.bool),
                 "all_undesirable": torch.zeros(b, dtype=torch.bool)}[labels]  # fmt: skip
    if labels == "mixed":
        desirable[0], desirable[1] = True, False
    ref = -10 + 3 * torch.randn(b, generator=gen)
    logp = ref + 2 * torch.randn(b, generator=gen)
    kl_ref = -12 + 3 * torch.randn(b, generator=gen)
    kl_theta = kl_ref + kl_shift + 0.3 * torch.randn(b, generator=gen)
    args = (logp, ref, kl_theta, kl_ref, desirable, beta, wd, wu, loss_type)
    t_loss, t_grad, t_metrics = trl_loss(trl_trainer, *args)
    c_loss, c_grad, c_metrics = course_loss(*args)

    assert abs(float(t_loss) - float(c_loss)) <= 1e-6
    assert torch.allclose(t_grad, c_grad, rtol=0, atol=1e-6)
    for name in SHARED:
        if name in c_metrics:
            assert abs(t_metrics[name] - c_metrics[name]) <= 1e-5, name
        else:  # what the course omits, TRL does not log (or logs as NaN)
            assert name not in t_metrics or math.isnan(t_metrics[name]), name
    extra = set(t_metrics) - set(SHARED)
    assert extra <= {"entropy", "num_tokens", "logits/chosen", "logits/rejected"}


# -- 20 steps: the course's trainer against TRL's --------------------------------------------------


@pytest.fixture(scope="module")
def lesson_rows():
    model, tok = load_reference()
    return make_offline_dataset(model, tok, 2048, 0), tok  # lesson 06's offline rows


def fresh_pair():
    policy, _ = load_reference()
    reference, _ = load_reference()
    return policy, reference


def test_course_trainer_in_trl_matching_config_reproduces_trl_for_20_steps(lesson_rows):
    rows, tok = lesson_rows
    trl_steps = trl_bridge.run_trl(*fresh_pair(), tok, rows, 20, batch_size=16)
    # Lesson 06's own trainer, with TRL's choices as its knobs (what run_trl_matching runs).
    config, slips = trl_bridge.matching_config(20, batch_size=16)
    assert slips == {}
    assert (config.schedule, config.order, config.tokenization, config.logprobs,
            config.max_length) == ("linear", "sequential", "joint", "fused_head", 32)  # fmt: skip
    trainer = KTOTrainer(*fresh_pair(), tok, config, dataset=rows)
    ours = [trainer.step() for _ in range(20)]
    assert [s["step"] for s in trl_steps] == list(range(1, 21))
    for name in PARITY:
        assert figures.max_diff(ours, trl_steps, name) <= 1e-5, name
    assert all(math.isfinite(s["loss"]) for s in ours)


def test_matching_run_refuses_batch_of_one_and_unknown_choices(lesson_rows):
    rows, tok = lesson_rows
    with pytest.raises(ValueError, match="batch size must be > 1"):
        trl_bridge.run_trl_matching(*fresh_pair(), tok, rows, 1, batch_size=1)
    with pytest.raises(ValueError, match="unknown choice"):
        trl_bridge.matching_config(1, choices={"precision": "bf16"})
    with pytest.raises(ValueError, match="choice padding='middle'"):
        trl_bridge.matching_config(1, choices={"padding": "middle"})
    with pytest.raises(TypeError, match="unknown settings: warmup"):
        trl_bridge.matching_config(1, warmup=3)


def test_slips_change_the_tokens_the_way_they_say(lesson_rows):
    rows, tok = lesson_rows
    rows = rows[:4]
    plain = trl_bridge.matching_config(1, batch_size=2)[0]
    trainers = {}
    for name, value in (("none", None), ("bos", "added"), ("eos", "missing"), ("padding", "left")):
        config, slips = trl_bridge.matching_config(1, choices={name: value} if value else None,
                                                   batch_size=2)  # fmt: skip
        assert config == plain and slips == ({name: value} if value else {})
        trainers[name] = trl_bridge._Slips(*fresh_pair(), tok, config, dataset=rows, slips=slips)
    idx = torch.arange(4)
    batch = {name: t._pairs(idx, idx) for name, t in trainers.items()}
    right, left = batch["none"], batch["padding"]
    assert torch.equal(batch["bos"]["input_ids"][:, 0], torch.full((4,), tok.bos_token_id))
    eos_count = {k: int((b["input_ids"] == tok.eos_token_id).sum()) for k, b in batch.items()}
    assert eos_count["none"] == 4 and eos_count["eos"] == 0
    # Left padding: the same tokens, moved to the right end of a max_length-wide row.
    assert left["input_ids"].shape[1] == plain.max_length
    for i in range(4):
        n = int(right["attention_mask"][i].sum())
        assert torch.equal(left["input_ids"][i, -n:], right["input_ids"][i, :n])
        assert torch.equal(left["completion_mask"][i, -n:], right["completion_mask"][i, :n])
        assert not left["attention_mask"][i, :-n].any()


def test_trl_config_is_the_matching_setup():
    cfg = trl_bridge.trl_config(batch_size=8, lr=1e-3, lambda_D=1.33)
    assert (cfg.bf16, cfg.gradient_checkpointing, cfg.logging_steps) == (False, False, 1)
    assert (cfg.per_device_train_batch_size, cfg.learning_rate, cfg.desirable_weight) == (
        8, 1e-3, 1.33)  # fmt: skip
    assert cfg.train_sampling_strategy == "sequential" and cfg.warmup_steps == 0
    assert cfg.optim == "adamw_torch_fused" and cfg.report_to in ([], "none", ["none"])




def test_stored_trl_defaults_are_trls_own():
    # The lesson-07 check reads trl_mapping.TRL_DEFAULTS when TRL is not installed: the values
    # must be what this TRL's KTOConfig holds when the keyword is left out.
    from kto_course import trl_mapping

    args = trl_bridge.matching_args({}, device="cpu")
    held = {k: getattr(args, k) for k in trl_mapping.TRL_DEFAULTS}
    held = {k: getattr(v, "value", v) for k, v in held.items()}  # enums: their values
    assert held == trl_mapping.TRL_DEFAULTS
    assert set(trl_mapping.KNOB) <= set(trl_mapping.TRL_DEFAULTS)
    assert not set(trl_mapping.COURSE_ONLY) & set(args.to_dict())
# -- lesson 07's trl_kwargs check: which answers TRL must run ---------------------------------


def test_trl_kwargs_check_runs_the_course_mapping_like_the_course_trainer(monkeypatch, capsys):
    """The check skips TRL's run for the course's own mapping, because that run matches the
    course's trainer: here it is run anyway, on the check's own visible and graded cases."""
    from kto_course import trl_mapping
    from kto_course.checks import l07_graduate_to_trl as l07

    ran = []
    real_run = l07._run_both
    monkeypatch.setattr(l07, "_identical", lambda got, want: False)
    monkeypatch.setattr(l07, "_same_training", lambda args, config, n: False)
    monkeypatch.setattr(l07, "_run_both", lambda *a: ran.append(a) or real_run(*a))
    for hidden in (False, True):
        l07.check_trl_kwargs(trl_mapping.trl_kwargs, hidden=hidden)
    assert len(ran) == 2 and "all 6 checks passed" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "runs"),
    [({}, 0), ({"bf16": False}, 0), ({"logging_first_step": True}, 1)],
    ids=["the mapping", "a fixed setting restated", "another field"],
)
def test_trl_kwargs_check_runs_trl_only_for_other_fields(monkeypatch, extra, runs):
    from kto_course import trl_mapping
    from kto_course.checks import l07_graduate_to_trl as l07

    ran = []
    monkeypatch.setattr(l07, "_run_both", lambda *a: ran.append(a))
    l07.check_trl_kwargs(lambda config, n=1: {**trl_mapping.trl_kwargs(config, n), **extra})
    assert len(ran) == runs


def test_trl_kwargs_check_passes_a_field_that_does_not_change_training():
    from kto_course import trl_mapping
    from kto_course.checks import l07_graduate_to_trl as l07

    l07.check_trl_kwargs(lambda config, n=1: {**trl_mapping.trl_kwargs(config, n),
                                              "logging_first_step": True})  # fmt: skip


def test_unpairing_pitfall_shares():
    pairs = [{"prompt": f"p{i}", "chosen": " good.", "rejected": " bad."} for i in range(64)]
    shares = figures.unpairing_pitfall(pairs, batch_size=16)
    assert shares["sequential"]["single_label"] == 1.0  # chosen rows first, then rejected
    assert shares["shuffled"]["single_label"] < 0.5


# -- accelerate launch -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_launch_kl(tmp_path, lesson_rows):
    _, tok = lesson_rows
    # CPU processes over gloo, whatever GPUs the machine has (the numbers below are CPU's).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "CUDA_VISIBLE_DEVICES": ""}
    for key in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT", "ACCELERATE_USE_CPU"):
        env.pop(key, None)
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
           "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           str(_free_port()), "-m", "kto_course.trl_launch", "--steps", "20", "--batch-size",
           "8", "--rows", "320", "--out", str(tmp_path)]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "metrics.json").read_text())
    steps, local = record["steps"], record["local_z0"]
    assert record["processes"] == 2 and record["global_batch"] == 16 and len(steps) == 20
    assert all(math.isfinite(s[k]) for s in steps for k in PARITY if k in s)

    # z0 = clamp(mean of the per-process means): TRL's logged kl, step by step.
    tr_mean = [(a + b) / 2 for a, b in zip(*local, strict=True)]
    for s, m in zip(steps, tr_mean, strict=True):
        assert abs(s["kl"] - max(0.0, m)) <= 1e-5
    # One process with the same global batch of 16 and the pairs formed inside each half of 8
    # gives the same estimate; pairing across the whole 16 changes it.
    rows = make_offline_dataset(load_reference()[0], tok, 320, 0)
    halves = trl_bridge.run_trl_matching(*fresh_pair(), tok, rows, 20, batch_size=16, kl_group=8)
    whole = trl_bridge.run_trl_matching(*fresh_pair(), tok, rows, 20, batch_size=16)
    assert max(abs(h["kl_unclamped"] - m) for h, m in zip(halves, tr_mean, strict=True)) <= 1e-4
    assert max(abs(w["kl_unclamped"] - m) for w, m in zip(whole, tr_mean, strict=True)) > 1e-3
    # The clamp comes after the combination: on these rows kl reads 0 at every step, although
    # one process's own estimate is positive at some step (it alone would not read 0).
    assert all(s["kl"] == 0.0 for s in steps)
    assert max(max(per_process) for per_process in local) > 0.0
    assert figures.max_diff(halves, steps, "loss") <= 1e-4


# -- bad input -------------------------------------------------------------------------------------


def _launch(monkeypatch, capsys, tmp_path, *args, world=None):
    for key in ("WORLD_SIZE", "MASTER_ADDR", "ACCELERATE_USE_CPU"):
        monkeypatch.delenv(key, raising=False)
    if world is not None:
        monkeypatch.setenv("WORLD_SIZE", str(world))
    code = trl_launch.main([*args, "--out", str(tmp_path)])
    return code, capsys.readouterr().err


def test_launch_refuses_batch_of_one(monkeypatch, capsys, tmp_path):
    code, err = _launch(monkeypatch, capsys, tmp_path, "--batch-size", "1")
    assert code == 2 and "z0 needs >= 2 per process" in err
    assert not (tmp_path / "metrics.json").exists()


def test_launch_refuses_more_processes_than_examples(monkeypatch, capsys, tmp_path):
    code, err = _launch(monkeypatch, capsys, tmp_path, "--rows", "3", world=4)
    assert code == 2 and "4 processes but only 3 examples" in err
    code, err = _launch(monkeypatch, capsys, tmp_path, "--rows", "12", "--batch-size", "8",
                        world=2)  # fmt: skip
    assert code == 2 and "fewer than one global batch" in err


def test_launch_names_the_single_process_trap(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert trl_launch.main(["--out", str(tmp_path)]) == 2
    assert "--multi_gpu" in capsys.readouterr().err


@pytest.mark.parametrize("missing", ["trl", "accelerate"])
def test_missing_trl_is_one_clear_line(monkeypatch, capsys, tmp_path, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # makes `import missing` fail
    with pytest.raises(trl_bridge.TRLUnavailable, match=r"pip install -e '\.\[trl\]'"):
        trl_bridge.require_trl()
    with pytest.raises(trl_bridge.TRLUnavailable):
        trl_bridge.trl_config()
    code, err = _launch(monkeypatch, capsys, tmp_path)
    assert code == 2 and missing in err and "Traceback" not in err


def test_unsupported_trl_version_is_named(monkeypatch):
    import trl as real_trl

    monkeypatch.setattr(real_trl, "__version__", "0.9.6")
    with pytest.raises(trl_bridge.TRLUnavailable, match="TRL 0.9.6 is installed"):
        trl_bridge.require_trl()
