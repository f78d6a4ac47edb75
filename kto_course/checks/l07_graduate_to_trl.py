"""Lesson 07, graduate to TRL: checks of the course's config as TRL's keyword arguments (run
through TRL and the course's TRL-matching trainer), TRL's logged metrics read back as r, z0 and
delta, and z0 across processes the way TRL and HALOs form it."""

from __future__ import annotations

import contextlib
import io
import math
import random

import numpy as np

from kto_course import core, system, trl_launch, trl_mapping
from kto_course.checks.base import (
    CheckFailed,
    as_float_array,
    call_learner,
    case_rng,
    close,
    diagnose,
    passed,
)
from kto_course.trl_mapping import COURSE_ONLY, KNOB, TRL_DEFAULTS

LESSON = 7

# -- exercise 1: trl_kwargs ------------------------------------------------------------------

_RUN_STEPS = 3  # optimizer steps of TRL and of the course's trainer that the check compares


def _course_config(rng, batch_size: int, loss_type: str = "kto"):
    """A course config in which every knob differs from TRL's default (and lambda_D from
    lambda_U), so that a knob that does not reach TRL changes the run."""
    from kto_course.train import KTOConfig

    lambda_D = round(float(rng.uniform(0.6, 1.0)), 3)
    return KTOConfig(
        mode="offline", steps=_RUN_STEPS, batch_size=batch_size, loss_type=loss_type,
        beta=round(float(rng.uniform(0.2, 0.6)), 3), lambda_D=lambda_D,
        lambda_U=round(lambda_D + float(rng.uniform(0.3, 0.6)), 3),
        lr=round(float(rng.uniform(1.5e-3, 4e-3)), 5), warmup_steps=int(rng.integers(5, 30)),
        max_grad_norm=round(float(rng.uniform(0.3, 0.8)), 3),
        adam_betas=(round(float(rng.uniform(0.8, 0.88)), 3),
                    round(float(rng.uniform(0.95, 0.99)), 3)),
        weight_decay=round(float(rng.uniform(0.01, 0.1)), 3), seed=int(rng.integers(1, 1000)),
    )  # fmt: skip


def _value(v):
    return getattr(v, "value", v)  # TrainingArguments turns some strings into enums


def _trl_args(kwargs: dict):
    """TRL's KTOConfig from ``kwargs`` on top of the fixed TRL-matching settings, or CheckFailed
    with TRL's own reason for refusing them."""
    from kto_course import trl_bridge

    try:
        with contextlib.redirect_stdout(io.StringIO()), trl_bridge.quiet():
            return trl_bridge.matching_args(dict(kwargs), device="cpu")
    except TypeError as e:  # an unknown keyword
        raise CheckFailed(
            f"TRL's KTOConfig refused your keyword arguments ({e}): every key must be a "
            "field of trl.KTOConfig (the table in the lesson lists them)."
        ) from None
    except ValueError as e:
        raise CheckFailed(f"TRL's KTOConfig refused your keyword arguments: {e}") from None


def _effective(kwargs: dict, args) -> dict:
    """What TRL's KTOConfig holds for the fields the course's config sets: read from ``args``
    (TRL's KTOConfig of ``kwargs``), or from TRL's defaults when TRL is not installed (None)."""
    if args is not None:
        return {k: _value(getattr(args, k)) for k in TRL_DEFAULTS}
    return {k: _value(kwargs.get(k, v)) for k, v in TRL_DEFAULTS.items()}


def _identical(got: dict, want: dict) -> bool:
    """The same keys and, for each, a value of the same type that compares equal: TRL would
    then build the very KTOConfig of ``want`` (no need to import TRL to know it)."""
    return got.keys() == want.keys() and all(
        type(got[k]) is type(want[k]) and got[k] == want[k] for k in want
    )


def _same_training(args, config, n: int) -> bool:
    """Whether ``args`` equals, field by field, TRL's KTOConfig of the course's own mapping of
    ``config``: then TRL's run IS the run that tests/test_trl.py proves equal to the course's
    trainer, and the check need not repeat it."""
    reference = _trl_args(trl_mapping.trl_kwargs(config, n)).to_dict()
    mine = args.to_dict()
    for fields in (mine, reference):
        fields.pop("output_dir")  # a fresh temporary folder per KTOConfig
    return mine == reference


def _kwargs_problem(got: dict, config, n: int) -> str | None:
    """The misconception a wrong set of TRL fields shows, in the course's words; None if right."""
    want = trl_mapping.trl_kwargs(config, n)
    wrong = {k for k in want if not (got[k] == want[k] or (
        isinstance(want[k], float) and isinstance(got[k], int | float)
        and close(got[k], want[k])))}  # fmt: skip
    if not wrong:
        return None
    if {"desirable_weight", "undesirable_weight"} & wrong and close(
        [got["desirable_weight"], got["undesirable_weight"]], [config.lambda_U, config.lambda_D]
    ):
        return (
            "lambda_D and lambda_U are swapped: TRL's desirable_weight multiplies the loss of "
            "the desirable (thumbs-up) rows, undesirable_weight that of the thumbs-down rows."
        )
    if "beta" in wrong:
        if close(got["beta"], TRL_DEFAULTS["beta"]):
            return (
                "beta did not reach TRL: KTOConfig fell back to its own default beta, so the "
                "value functions saturate at a different scale than the course's run."
            )
        return "TRL's beta is not the course's beta (the same name, the same meaning)."
    if "warmup_steps" in wrong and got["warmup_steps"] == config.warmup_steps:
        return (
            "you kept lesson 06's warmup: in the TRL-matching configuration the course's trainer "
            "takes TRL's schedule (linear decay to 0, no warmup); transformers' warmup would "
            "also start at a learning rate of 0 on step 1, unlike lesson 06's."
        )
    if {"warmup_steps", "lr_scheduler_type"} & wrong:
        return (
            "the learning-rate schedule is not the matching one: linear decay to 0 over the "
            "run's steps, without warmup (lesson 06's warmup-then-constant has no exact TRL "
            "counterpart)."
        )
    if "per_device_train_batch_size" in wrong:
        size = got["per_device_train_batch_size"]
        if n > 1 and size == config.batch_size:
            return (
                f"per_device_train_batch_size is PER PROCESS: on {n} processes TRL's global "
                f"batch would be {n} times the course's batch_size. The course's batch_size "
                "is the whole step's rows (the global batch)."
            )
        if n > 1 and size == config.batch_size * n:
            return (
                "you multiplied the batch by the number of processes: the course's batch_size "
                "is already the global batch, which the processes share."
            )
        return (
            "per_device_train_batch_size does not carry the course's batch_size over (the rows "
            "each process puts into one step; z0 is estimated from them)."
        )
    if "learning_rate" in wrong:
        if close(got["learning_rate"], TRL_DEFAULTS["learning_rate"]):
            return (
                "the learning rate did not reach TRL: its default 1e-6 is meant for real LLMs, "
                "the tiny GPT-2 trains at the course's rate."
            )
        return "TRL's learning_rate does not carry the course's lr over."
    if "max_steps" in wrong:
        if got["max_steps"] == -1:
            return (
                "max_steps is missing: TRL would then train for num_train_epochs passes over "
                "the data, and its linear schedule would decay over that many steps instead."
            )
        return "max_steps must count the course's optimizer steps (config.steps)."
    if {"adam_beta1", "adam_beta2"} & wrong:
        pair = [got["adam_beta1"], got["adam_beta2"]]
        if close(pair, list(config.adam_betas)[::-1]):
            return "the two Adam betas are swapped: beta1 is the momentum one (the smaller)."
        if close(pair, [TRL_DEFAULTS["adam_beta1"], TRL_DEFAULTS["adam_beta2"]]):
            return (
                "config.adam_betas did not reach TRL: its optimizer used its own default betas. "
                "TRL takes the two betas as two separate fields."
            )
        return "TRL's two Adam betas do not carry config.adam_betas over."
    field = sorted(wrong)[0]
    if got[field] == TRL_DEFAULTS[field]:
        return f"config.{KNOB[field]} did not reach TRL: {field} kept TRL's own default."
    return f"TRL's {field} does not carry config.{KNOB[field]} over."


def _rows(rng, n: int = 48) -> list[dict]:
    """Labelled rows of the lesson-06 task (desirable and undesirable mixed), without a model."""
    from kto_course.lm import task

    prompts = task.random_prompts(n, random.Random(int(rng.integers(2**31))))
    words = task.POSITIVE + task.NEGATIVE
    completions = [task.make_completion(words[int(rng.integers(len(words)))],
                                        words[int(rng.integers(len(words)))])
                   for _ in prompts]  # fmt: skip
    labels = task.judge(prompts, completions)
    return [{"prompt": p, "completion": c, "label": bool(y)}
            for p, c, y in zip(prompts, completions, labels, strict=True)]  # fmt: skip


def _run_both(kwargs: dict, config, rng) -> None:
    """A few steps of TRL with the learner's keyword arguments (plus the fixed TRL-matching
    settings) against the course's TRL-matching trainer with ``config``: the same per-step loss,
    kl and rewards to 1e-5, or CheckFailed."""
    from kto_course import figures, trl_bridge
    from kto_course.lm import load_reference

    rows = _rows(rng)
    knobs = trl_mapping.course_knobs(config)
    steps = knobs.pop("steps")
    with system.one_thread(), contextlib.redirect_stdout(io.StringIO()):
        policy, tokenizer = load_reference()
        reference, _ = load_reference()
        args = trl_bridge.matching_args(dict(kwargs), device="cpu")
        trainer = trl_bridge.make_trainer(policy, reference, tokenizer, rows, steps, args=args,
                                          device="cpu")  # fmt: skip
        with trl_bridge.quiet():
            trainer.train()
        trl_steps = trl_bridge.step_logs(trainer)
        ours = trl_bridge.run_trl_matching(*(load_reference()[0] for _ in range(2)), tokenizer,
                                           rows, steps, **knobs)  # fmt: skip
    if len(trl_steps) != len(ours):
        raise CheckFailed(
            f"with your keyword arguments TRL logged {len(trl_steps)} optimizer steps where the "
            f"course's trainer took {len(ours)}: look at what sets the number of steps and the "
            "logging interval."
        )
    for metric in figures.PARITY_METRICS:
        diff = figures.max_diff(ours, trl_steps, metric)
        if not diff <= 1e-5:
            raise CheckFailed(
                f"every knob reaches TRL, but TRL's run still differs from the course's trainer in "
                f"{metric}: something else you passed changes training (precision, gradient "
                "accumulation or checkpointing, the optimizer, the sampler...). Pass only the "
                "knobs the course's config sets."
            )


def check_trl_kwargs(trl_kwargs, hidden: bool = False) -> None:
    """Lesson 07, exercise 1: the course's KTOConfig as keyword arguments of TRL's KTOConfig,
    checked field by field; any setting beyond the course's mapping is then run, a few steps of
    TRL against the course's trainer (the mapping's own run is tests/test_trl.py's)."""
    from kto_course import trl_bridge

    try:
        trl_bridge.require_trl(trainer=False)  # the trainer is imported only if it must run
        have_trl = True
    except trl_bridge.TRLUnavailable:
        have_trl = False
    rng = case_rng(LESSON, 1, hidden)
    cases = [(_course_config(rng, 8), 1), (_course_config(rng, 8), 2)]
    if hidden:
        cases += [(_course_config(rng, 4, "apo_zero_unpaired"), 1),
                  (_course_config(rng, 12), 3), (_course_config(rng, 16), 4)]  # fmt: skip
    answers = []
    for config, n in cases:
        got = call_learner(trl_kwargs, config, n, name="trl_kwargs")
        if got is None:
            raise CheckFailed("trl_kwargs returned None: did you forget the return statement?")
        if not isinstance(got, dict) or not all(isinstance(k, str) for k in got):
            raise CheckFailed(
                f"trl_kwargs returned {type(got).__name__}: return a dict of keyword arguments "
                "for trl.KTOConfig, {field name: value}."
            )
        course_names = sorted(set(got) & set(COURSE_ONLY))
        if course_names:
            raise CheckFailed(
                f"trl_kwargs: {course_names[0]!r} is the course's name, not a field of TRL's "
                "KTOConfig: TRL calls that knob differently (see the table of names)."
            )
        if _identical(got, trl_mapping.trl_kwargs(config, n)):
            answers.append((got, None))  # the course's mapping, key for key: TRL's proven run
            continue
        args = _trl_args(got) if have_trl else None
        problem = _kwargs_problem(_effective(got, args), config, n)
        if problem:
            raise CheckFailed(f"trl_kwargs: {problem}")
        answers.append((got, args))
    if have_trl:  # the proof: the same steps (one process; the check cannot launch two)
        run = 2 if hidden else 0
        (got, args), (config, n) = answers[run], cases[run]
        # Arguments that make TRL's KTOConfig the course's mapping's give TRL's proven run; any
        # other field a learner passed (precision, accumulation, ...) is run for real.
        if args is not None and not _same_training(args, config, n):
            _run_both(got, config, rng)
    else:
        print("(TRL is not installed: the keyword arguments were compared, not run; "
              "pip install -e '.[trl]' to run both.)")  # fmt: skip
    passed("trl_kwargs", len(cases) + int(have_trl))


# -- exercise 2: from_trl_logs ---------------------------------------------------------------

_KEYS = ("r_D", "r_U", "z0", "delta_D", "delta_U")


def _log_case(rng, labels: str = "both", kl_zero: bool = False, absent: str = "missing"):
    """A logged step as TRL writes it, from chosen r means and z0; ``labels``: both, D or U;
    a missing label's metrics are left out (``absent="missing"``) or NaN (``"nan"``)."""
    beta = round(float(rng.uniform(0.05, 0.5)), 3)
    r_D, r_U = float(rng.normal(2.0, 3.0)), float(rng.normal(-4.0, 3.0))
    z0 = 0.0 if kl_zero else float(rng.uniform(0.3, 3.0))
    log = {"loss": float(rng.uniform(0.3, 0.6)), "grad_norm": float(rng.uniform(0.1, 2.0)),
           "learning_rate": 1e-3, "kl": z0, "entropy": float(rng.uniform(1.0, 3.0)),
           "num_tokens": 1000.0, "epoch": 0.1, "step": int(rng.integers(1, 200))}  # fmt: skip
    if labels in ("both", "D"):
        log.update({"rewards/chosen": beta * r_D, "logps/chosen": -8.0 + r_D,
                    "logits/chosen": float(rng.normal())})  # fmt: skip
    if labels in ("both", "U"):
        log.update({"rewards/rejected": beta * r_U, "logps/rejected": -11.0 + r_U,
                    "logits/rejected": float(rng.normal())})  # fmt: skip
    if labels == "both":
        log["rewards/margins"] = beta * (r_D - r_U)
    elif absent == "nan":
        side = "rejected" if labels == "D" else "chosen"
        log.update({f"rewards/{side}": math.nan, f"logps/{side}": math.nan,
                    "rewards/margins": math.nan})  # fmt: skip
    return log, beta


def _logs_suspects(log, beta):
    """[r_D, r_U, z0, delta_D, delta_U] of each misconception, with its message."""
    get = trl_mapping._logged
    rc, rr, kl = get(log, "rewards/chosen"), get(log, "rewards/rejected"), get(log, "kl")
    r_D, r_U = rc / beta, rr / beta

    def out(rd, ru, z):
        return [rd, ru, z, rd - z, ru - z]

    return [
        (out(rc, rr, kl), "rewards/* are beta times the mean log-ratio: r itself is the reward "
         "without the factor beta."),
        (out(rc * beta, rr * beta, kl), "you scaled by beta the wrong way: rewards/* already "
         "carry one factor beta, which r does not have."),
        (out(r_D, r_U, kl / beta), "kl is not scaled by beta: it is z0 itself, in nats, the "
         "same units as r."),
        ([r_D, r_U, kl, r_D - kl, kl - r_U], "delta is r - z0 for both labels: the "
         "undesirable value function flips the sign inside the sigmoid, delta itself does not."),
        ([r_D, r_U, kl, kl - r_D, kl - r_U], "delta has the wrong sign: delta = r - z0."),
        ([r_D, r_U, kl, r_D, r_U], "delta ignores z0: it is measured from the reference point."),
        (out(get(log, "logps/chosen"), get(log, "logps/rejected"), kl), "logps/* are the "
         "policy's log-probs alone: the log-ratio r needs the reference, which TRL reports "
         "through rewards/*."),
    ]  # fmt: skip


def _read_logs_result(value, expected: dict) -> np.ndarray:
    """The learner's dict as numbers in ``_KEYS`` order; NaN only where a label is absent."""
    if value is None:
        raise CheckFailed("from_trl_logs returned None: did you forget the return statement?")
    if not isinstance(value, dict) or set(_KEYS) - set(value):
        missing = sorted(set(_KEYS) - set(value)) if isinstance(value, dict) else list(_KEYS)
        raise CheckFailed(
            f"from_trl_logs must return a dict with the keys {', '.join(_KEYS)} "
            f"(missing: {', '.join(missing)})."
        )
    got = []
    for key in _KEYS:
        v = value[key]
        try:
            v = float(v.item() if hasattr(v, "item") else v)
        except (TypeError, ValueError):
            raise CheckFailed(
                f"from_trl_logs: {key} is {type(v).__name__}, not a number."
            ) from None
        if math.isnan(expected[key]) and not math.isnan(v):
            if v == 0.0:
                raise CheckFailed(
                    f"from_trl_logs: the microbatch had no rows of that label, so {key} has no "
                    "mean: report nan, not 0 (0 would claim the policy and the reference agree)."
                )
            raise CheckFailed(
                f"from_trl_logs: {key} has a value although the microbatch had no rows of that "
                "label (TRL logged nothing for it): report nan."
            )
        if not math.isnan(expected[key]) and math.isnan(v):
            raise CheckFailed(
                f"from_trl_logs: {key} is nan although TRL logged that label's metrics."
            )
        if math.isinf(v):
            raise CheckFailed(f"from_trl_logs: {key} is inf.")
        got.append(v)
    return np.array(got)


def check_from_trl_logs(from_trl_logs, hidden: bool = False) -> None:
    """Lesson 07, exercise 2: one of TRL's logged steps read back as r per label, z0, delta."""
    rng = case_rng(LESSON, 2, hidden)
    cases = [_log_case(rng), _log_case(rng), _log_case(rng, "D"), _log_case(rng, kl_zero=True)]
    if hidden:
        cases += [_log_case(rng, "U"), _log_case(rng, "D", absent="nan"),
                  _log_case(rng, "U", absent="nan", kl_zero=True), _log_case(rng)]  # fmt: skip
    for log, beta in cases:
        try:
            value = call_learner(from_trl_logs, dict(log), beta, name="from_trl_logs")
        except CheckFailed as e:
            if "KeyError" in str(e):
                raise CheckFailed(
                    f"{e}. A single-label microbatch logs no rewards for the missing label (and "
                    "no rewards/margins): TRL leaves those keys out, so read them in a way that "
                    "survives their absence."
                ) from None
            raise
        right = trl_mapping.from_trl_logs(log, beta)
        got = _read_logs_result(value, right)
        want = np.array([right[k] for k in _KEYS])
        known = ~np.isnan(want)
        if not close(got[known], want[known], rtol=1e-6, atol=1e-9):
            suspects = [(np.asarray(w, dtype=float)[known], m)
                        for w, m in _logs_suspects(log, beta)]  # fmt: skip
            diagnose(got[known], want[known], suspects,
                     "not the lesson-03 quantities: r per label is the logged reward over beta, "
                     "z0 is kl, delta is r - z0.", name="from_trl_logs")  # fmt: skip
    passed("from_trl_logs", len(cases))


# -- exercise 3: z0_across_processes ---------------------------------------------------------


def _with_mean(rng, n: int, mean: float) -> np.ndarray:
    r = rng.normal(0.0, 1.5, n)
    return r - r.mean() + mean


def _process_case(rng, sizes, means) -> list[np.ndarray]:
    return [_with_mean(rng, n, m) for n, m in zip(sizes, means, strict=True)]


def _z0_suspects(parts):
    means = np.array([p.mean() for p in parts])
    sizes = np.array([p.size for p in parts])
    pooled = float(np.concatenate(parts).mean())
    mom = float(means.mean())
    trl = [
        (float(np.mean(np.maximum(0.0, means))), "you clamped each process's estimate before "
         "combining them: TRL gathers the raw means and clamps once, after averaging."),
        (mom, "TRL's z0 is clamped at 0 after the processes are combined."),
        (max(0.0, pooled), "TRL averages the per-process MEANS (each process counts once, "
         "whatever its number of rows); pooling every row is HALOs' rule."),
        (max(0.0, float(means.sum())), "you summed the per-process means: TRL averages them."),
        (max(0.0, float(means[0])), "you used only the first process's estimate: TRL gathers "
         "every process's mean."),
    ]  # fmt: skip
    halos = [
        (float(np.sum(sizes * np.maximum(0.0, means)) / sizes.sum()), "you clamped each "
         "process's part before combining: HALOs sums over all processes and clamps once."),
        (pooled, "HALOs' z0 is clamped at 0 after the processes are combined."),
        (max(0.0, mom), "HALOs pools the rows (sum over every process divided by the total "
         "number of rows); averaging the per-process means is TRL's rule."),
        (max(0.0, float(np.concatenate(parts).sum())), "HALOs divides the sum by the total "
         "number of rows."),
        (max(0.0, float(means[0])), "you used only the first process's rows: HALOs sums over "
         "every process."),
    ]  # fmt: skip
    return trl, halos


def check_z0_across_processes(z0_across_processes, hidden: bool = False) -> None:
    """Lesson 07, exercise 3: z0 of one step on several processes, TRL's way and HALOs' way."""
    rng = case_rng(LESSON, 3, hidden)
    cases = [
        _process_case(rng, (8, 5), (0.6, -1.5)),  # one process positive, the whole negative
        _process_case(rng, (6, 10), (1.2, -0.4)),  # unequal shares: TRL and HALOs differ
        _process_case(rng, (8, 8), (0.9, 0.3)),  # equal shares, both positive
    ]
    if hidden:
        cases += [_process_case(rng, (4, 7, 3), (-0.5, 0.8, 1.6)),
                  _process_case(rng, (9,), (0.7,)),  # one process: plain lesson-02 z0
                  _process_case(rng, (5, 5, 5, 5), (-2.0, -0.3, 0.4, 1.0)),
                  _process_case(rng, (3, 12), (2.5, -0.2))]  # fmt: skip
    for parts in cases:
        out = as_float_array(
            call_learner(
                z0_across_processes, [p.copy() for p in parts], name="z0_across_processes"
            ),  # fmt: skip
            "z0_across_processes",
            shape=(2,),
        )
        right = np.array(trl_launch.z0_across_processes(parts))
        assert close(right[1], core.z0_estimate(np.concatenate(parts)))  # HALOs: lesson 02's z0
        if close(out, right, atol=1e-9):
            continue
        if close(out[::-1], right, atol=1e-9):
            raise CheckFailed("z0_across_processes: return (TRL's z0, HALOs' z0) in that order.")
        shares = ", ".join(str(p.size) for p in parts)
        trl_suspects, halos_suspects = _z0_suspects(parts)
        for i, (suspects, who) in enumerate(((trl_suspects, "TRL"), (halos_suspects, "HALOs"))):
            if not close(out[i], right[i], atol=1e-9):
                diagnose(out[i], right[i], suspects,
                         f"{who}'s z0 is not right for {len(parts)} processes holding {shares} "
                         "rows.", name="z0_across_processes", atol=1e-9)  # fmt: skip
    passed("z0_across_processes", len(cases))


# The lesson's exercises, for the grader (see l01_log_ratio.EXERCISES).
_TRL_KWARGS_TWINS = ("trl_mapping.trl_kwargs", "trl_mapping.course_knobs", "trl_bridge.trl_config",
                     "trl_bridge.matching_args")  # fmt: skip
EXERCISES = {
    "trl_kwargs": {"check": check_trl_kwargs, "twins": _TRL_KWARGS_TWINS, "allowed": (),
                   "hint": "map each field of the course's config to TRL's name yourself."},
    "from_trl_logs": {"check": check_from_trl_logs, "twins": ("trl_mapping.from_trl_logs",),
                      "allowed": (), "hint": "undo beta and the clamp from the logged numbers."},
    "z0_across_processes": {
        "check": check_z0_across_processes, "twins": ("trl_launch.z0_across_processes",),
        "allowed": ("core.z0_estimate",),
        "hint": "combine the per-process estimates the way each library does."},
}  # fmt: skip
