"""Lesson 07, graduate to TRL: its checks against the references and the notebook's solutions,
the planted bugs, the answers that are not answers, the check without TRL, the name mapping,
the lesson's figures, and the solution notebook's structure (TRL cells guarded, every
experiment predicted first). TRL itself against the course is tested in tests/test_trl.py."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
from shared import ExerciseTests, check, fails_with, returns_none, solution_notebook

from kto_course import checks, figures, trl_launch, trl_mapping
from kto_course.train import KTOConfig

LESSON = "07_graduate_to_trl"
EXERCISES = ("trl_kwargs", "from_trl_logs", "z0_across_processes")


class TestExercises(ExerciseTests):
    LESSON = LESSON
    EXERCISES = EXERCISES
    REFERENCES = {
        "trl_kwargs": trl_mapping.trl_kwargs,
        "from_trl_logs": trl_mapping.from_trl_logs,
        "z0_across_processes": trl_launch.z0_across_processes,
    }
    # What the notebook's first code cell imports; planted bugs and solutions run in it.
    NAMESPACE = {"np": np, "math": math, "trl_mapping": trl_mapping, "KTOConfig": KTOConfig}
    REQUIRE_DEMO = False  # the experiments are cells (TRL runs), not widgets


def test_checks_reject_non_answers():
    def not_done(*args):
        raise NotImplementedError

    for name in EXERCISES:
        with pytest.raises(checks.CheckFailed, match="NotImplementedError"):
            check(name)(not_done)
        with pytest.raises(checks.CheckFailed, match="None|NoneType"):
            check(name)(returns_none)


def test_trl_kwargs_check_without_trl(monkeypatch, capsys):
    """Without TRL the check compares the keyword arguments only, and says so."""
    monkeypatch.setitem(sys.modules, "trl", None)
    check("trl_kwargs")(trl_mapping.trl_kwargs)
    assert "TRL is not installed" in capsys.readouterr().out

    def swapped(config, num_processes=1):
        kwargs = trl_mapping.trl_kwargs(config, num_processes)
        kwargs["desirable_weight"], kwargs["undesirable_weight"] = config.lambda_U, config.lambda_D
        return kwargs

    fails_with("trl_kwargs", swapped, "swapped")


def test_trl_kwargs_rejects_a_non_dict_and_unknown_fields():
    fails_with("trl_kwargs", lambda config, n=1: [("beta", config.beta)], "return a dict")
    pytest.importorskip("trl")

    def typo(config, num_processes=1):
        return {**trl_mapping.trl_kwargs(config, num_processes), "betta": config.beta}

    fails_with("trl_kwargs", typo, "field of trl.KTOConfig")


def test_from_trl_logs_rejects_missing_keys():
    fails_with("from_trl_logs", lambda log, beta: {"r_D": 0.0}, "missing")


def test_z0_across_processes_names_a_wrong_shape():
    fails_with("z0_across_processes", lambda parts: [0.0, 0.0, 0.0], "shape")


# -- the name mapping -------------------------------------------------------------------------


def test_trl_kwargs_of_lesson_06_config():
    config = KTOConfig(mode="offline")
    kwargs = trl_mapping.trl_kwargs(config)
    assert kwargs["per_device_train_batch_size"] == config.batch_size
    assert kwargs["max_steps"] == config.steps and kwargs["warmup_steps"] == 0
    on_two = trl_mapping.trl_kwargs(config, 2)["per_device_train_batch_size"]
    assert on_two == config.batch_size // 2
    with pytest.raises(ValueError, match="at least 2 rows"):
        trl_mapping.trl_kwargs(config, 16)
    knobs = trl_mapping.course_knobs(config)
    assert knobs["lambda_U"] == config.lambda_U and knobs["adam_betas"] == config.adam_betas


def test_from_trl_logs_of_a_single_label_step():
    log = {"loss": 0.4, "kl": 0.5, "rewards/chosen": 0.2, "logps/chosen": -9.0}
    q = trl_mapping.from_trl_logs(log, beta=0.1)
    assert q["r_D"] == pytest.approx(2.0) and q["delta_D"] == pytest.approx(1.5)
    assert math.isnan(q["r_U"]) and math.isnan(q["delta_U"]) and q["z0"] == 0.5
    assert math.isnan(trl_mapping.from_trl_logs({**log, "rewards/chosen": math.nan}, 0.1)["r_D"])


def test_z0_across_processes_rules():
    equal = [np.array([1.0, -3.0]), np.array([0.5, 0.5])]
    assert trl_launch.z0_across_processes(equal) == pytest.approx((0.0, 0.0))
    unequal = [np.array([2.0]), np.array([0.0, 0.0, -1.0])]
    trl, halos = trl_launch.z0_across_processes(unequal)
    assert trl == pytest.approx((2.0 - 1 / 3) / 2) and halos == pytest.approx(0.25)


# -- the lesson's figures (plain numbers, no TRL) ----------------------------------------------


def _history(offset: float, n: int = 6, one_label_at: int = 3) -> list[dict]:
    steps = []
    for i in range(1, n + 1):
        s = {"step": i, "loss": 0.5 - 0.01 * i + offset, "kl": 0.0,
             "rewards/chosen": 0.01 * i, "rewards/rejected": -0.02 * i + offset}  # fmt: skip
        if i == one_label_at:
            del s["rewards/rejected"]
        steps.append(s)
    return steps


def test_parity_figures():
    a, b = _history(0.0), _history(1e-7)
    assert figures.max_diff(a, b, "loss") == pytest.approx(1e-7)
    assert figures.max_diff(a, b, "rewards/rejected") == pytest.approx(1e-7)
    assert math.isnan(figures.max_diff(a, b, "grad_norm"))
    assert figures.png_bytes(figures.parity_curves(a, b)).startswith(b"\x89PNG")
    table = figures.parity_table(a, b)
    assert table.splitlines()[-1].startswith("max |diff| loss 1.0e-07")
    assert len(table.splitlines()) == 1 + 6 + 1 and "nan" in table  # the one-label step
    local = [[0.0, -0.2, 0.3], [0.0, -0.4, -0.6]]
    fig = figures.z0_across_processes_curves(local, [0.0, -0.3, -0.1])
    assert figures.png_bytes(fig).startswith(b"\x89PNG")


def test_choice_effects_gives_a_sequential_run_only_the_rows_it_reads(monkeypatch):
    from kto_course import trl_bridge

    given = {}

    def run(policy, ref, tokenizer, rows, steps, choices=None, **cfg):
        given[next(iter(choices), "trl_matching")] = len(rows)
        return [{"loss": 0.0, "step": i + 1} for i in range(steps)]

    monkeypatch.setattr(trl_bridge, "run_trl_matching", run)
    trl = [{"loss": 0.0, "step": i + 1} for i in range(5)]
    rows = [{"prompt": "p", "completion": "c", "label": True}] * 500
    effects = figures.choice_effects(lambda: (None, None), None, rows, 5, trl_history=trl,
                                     batch_size=8)  # fmt: skip
    assert set(effects) == {"trl_matching", *figures.COURSE_CHOICES}
    # Shuffled, the run may read any row; in TRL's order, the first 5 x 8.
    assert given == {name: 500 if name == "order" else 40 for name in effects}


def test_microbatch_label_shares_and_paired_rows():
    shares = figures.microbatch_label_shares([True] * 8 + [False] * 8 + [True, False] * 4, 8)
    assert shares == {"all_desirable": 1 / 3, "all_undesirable": 1 / 3,
                      "single_label": 2 / 3, "batches": 3}  # fmt: skip
    rows = [{"prompt": "p", "completion": c, "label": y}
            for c, y in ((" a", True), (" b", False), (" c", True))]  # fmt: skip
    assert figures.paired_rows(rows) == [{"prompt": "p", "chosen": " a", "rejected": " b"}]


# -- the solution notebook -------------------------------------------------------------------

# Calls that need TRL: a code cell that makes one must start by testing HAVE_TRL.
TRL_CALLS = ("trl_bridge.make_trainer", "trl_bridge.run_trl", "figures.choice_effects",
             "figures.unpairing_pitfall", "subprocess.run")  # fmt: skip
GUARDS = ("if HAVE_TRL", "elif HAVE_TRL", "if RUN_EXPERIMENTS", "elif RUN_EXPERIMENTS")


def test_trl_cells_are_guarded_and_the_flag_is_set_first():
    cells = [c for c in solution_notebook(LESSON).cells if c.cell_type == "code"]
    first = cells[0].source
    assert "HAVE_TRL = False" in first
    # While nbgrader grades, no trainer runs: TRL's trainer module (seconds) is not imported.
    assert "trl_bridge.require_trl(trainer=not GRADING)" in first
    assert first.index("GRADING = ") < first.index("require_trl(")
    # RUN_EXPERIMENTS is HAVE_TRL narrowed (off while nbgrader grades), so it guards too.
    assert "RUN_EXPERIMENTS = HAVE_TRL and not GRADING" in first
    guarded = [c for c in cells if any(call in c.source for call in TRL_CALLS)]
    assert len(guarded) >= 6
    for cell in guarded:
        block = ""  # the unindented statement that opens the current block
        for line in cell.source.splitlines():
            if line and not line[0].isspace():
                block = line
            if any(call in line for call in TRL_CALLS):
                assert block.startswith(GUARDS), (block, line)


def test_every_experiment_is_predicted_then_revealed():
    cells = solution_notebook(LESSON).cells
    text = [c.source for c in cells]
    predicts = [i for i, t in enumerate(text) if "**Predict first.**" in t]
    reveals = [i for i, t in enumerate(text) if "<details><summary>Reveal</summary>" in t]
    assert len(predicts) == len(reveals) >= 5
    for p, r in zip(predicts, reveals, strict=True):
        assert p < r and any(cells[j].cell_type == "code" for j in range(p, r))
    for later, earlier in zip(predicts[1:], reveals[:-1], strict=True):
        assert earlier < later


def test_exercises_have_badges_and_hints():
    cells = solution_notebook(LESSON).cells
    for i, cell in enumerate(cells):
        if cell.get("metadata", {}).get("nbgrader", {}).get("grade_id", "").startswith("ex_"):
            intro = cells[i - 1].source
            assert "Difficulty:" in intro and "Importance:" in intro and "min" in intro
            assert intro.count("<details><summary>Hint") >= 2


def test_readings_further_summary_and_bridge():
    text = "\n".join(c.source for c in solution_notebook(LESSON).cells if c.cell_type == "markdown")
    for needed in ("https://huggingface.co/docs/trl/main/en/kto_trainer", "kto_trainer.py",
                   "huggingface.co/docs/accelerate", "ContextualAI/HALOs", "## Go further",
                   "## Summary", "process reward models", "pip install -e '.[trl]'",
                   "--multi_gpu"):  # fmt: skip
        assert needed in text, needed
