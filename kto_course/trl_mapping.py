"""The course's names against TRL's, both ways (lesson 07, "graduate to TRL").

- ``trl_kwargs``: the course's ``train.KTOConfig`` as keyword arguments of TRL's ``KTOConfig``,
  for the comparison in which TRL and the course's TRL-matching trainer take the same steps;
- ``course_knobs``: the same config as the knobs of ``trl_bridge.run_trl_matching``;
- ``from_trl_logs``: one of TRL's logged dicts read back as the lesson-03 quantities (the mean
  log-ratio r per label, z0, the mean margin delta = r - z0 per label).

Plain Python: nothing here imports TRL. The lesson's exercises 1 and 2 are these functions.
"""

from __future__ import annotations

import math

__all__ = [
    "COURSE_ONLY", "KNOB", "MATCHING_SCHEDULE", "TRL_DEFAULTS",
    "course_knobs", "trl_kwargs", "from_trl_logs",
]  # fmt: skip

# The schedule of the TRL-matching comparison: TRL's linear decay to 0 over max_steps, no
# warmup. The course's lesson-06 loop warms up for config.warmup_steps and then stays constant;
# transformers' warmup starts at lr 0 (step s gets s / warmup), the course's at lr / warmup, so
# no TRL setting reproduces it exactly: the matching run takes TRL's schedule instead.
MATCHING_SCHEDULE = {"lr_scheduler_type": "linear", "warmup_steps": 0}


# What TRL's KTOConfig holds for these fields when a keyword is left out, on top of the fixed
# TRL-matching settings (trl_bridge.matching_args); used when TRL is not installed.
TRL_DEFAULTS = {
    "max_steps": -1, "per_device_train_batch_size": 8, "learning_rate": 1e-6, "beta": 0.1,
    "desirable_weight": 1.0, "undesirable_weight": 1.0, "loss_type": "kto",
    "max_grad_norm": 1.0, "adam_beta1": 0.9, "adam_beta2": 0.999, "weight_decay": 0.0,
    "seed": 42, "lr_scheduler_type": "linear", "warmup_steps": 0,
}  # fmt: skip
# The course's names, which TRL's KTOConfig does not know.
COURSE_ONLY = ("steps", "batch_size", "lr", "lambda_D", "lambda_U", "adam_betas", "mode",
               "temperature", "offline_size", "eval_every", "eval_samples", "threads")  # fmt: skip
# The course knob each TRL field carries (for the messages).
KNOB = {
    "max_steps": "steps", "per_device_train_batch_size": "batch_size", "learning_rate": "lr",
    "beta": "beta", "desirable_weight": "lambda_D", "undesirable_weight": "lambda_U",
    "loss_type": "loss_type", "max_grad_norm": "max_grad_norm", "adam_beta1": "adam_betas",
    "adam_beta2": "adam_betas", "weight_decay": "weight_decay", "seed": "seed",
}  # fmt: skip


def course_knobs(config) -> dict:
    """The knobs of ``run_trl_matching`` that a course ``KTOConfig`` sets (lesson 06's names)."""
    return {
        "steps": config.steps,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "beta": config.beta,
        "lambda_D": config.lambda_D,
        "lambda_U": config.lambda_U,
        "loss_type": config.loss_type,
        "max_grad_norm": config.max_grad_norm,
        "adam_betas": tuple(config.adam_betas),
        "weight_decay": config.weight_decay,
        "seed": config.seed,
    }


def trl_kwargs(config, num_processes: int = 1) -> dict:
    """Keyword arguments of TRL's ``KTOConfig`` that train like the course's ``config``.

    ``config.batch_size`` is the number of rows in one optimizer step (the course's trainer runs
    on one process); TRL's ``per_device_train_batch_size`` is per PROCESS, so on
    ``num_processes`` processes each gets ``batch_size / num_processes`` rows and the global
    batch stays the same. The schedule is the matching one (``MATCHING_SCHEDULE``), not
    lesson 06's warmup. Mode, sampling and evaluation knobs have no TRL counterpart here.
    """
    if config.batch_size % num_processes or config.batch_size // num_processes < 2:
        raise ValueError(
            f"batch_size {config.batch_size} cannot be split into {num_processes} processes of "
            "at least 2 rows each (z0 needs 2 rows per process)."
        )
    beta1, beta2 = config.adam_betas
    return {
        "max_steps": config.steps,  # optimizer steps, not epochs
        "per_device_train_batch_size": config.batch_size // num_processes,
        "learning_rate": config.lr,
        "beta": config.beta,
        "desirable_weight": config.lambda_D,
        "undesirable_weight": config.lambda_U,
        "loss_type": config.loss_type,
        "max_grad_norm": config.max_grad_norm,
        "adam_beta1": beta1,
        "adam_beta2": beta2,
        "weight_decay": config.weight_decay,
        "seed": config.seed,
        **MATCHING_SCHEDULE,
    }


def _logged(log: dict, key: str) -> float:
    """A logged metric, NaN when TRL did not log it (a one-label microbatch) or logged NaN."""
    value = log.get(key)
    return math.nan if value is None else float(value)


def from_trl_logs(log: dict, beta: float) -> dict:
    """One logged step of TRL's ``KTOTrainer`` in the course's quantities (lessons 01-03).

    ``rewards/chosen`` and ``rewards/rejected`` are beta times the mean log-ratio r of the
    desirable / undesirable rows; ``kl`` is z0 after the clamp (in nats, not scaled by beta),
    the reference point the loss used. Returns ``{"r_D", "r_U", "z0", "delta_D", "delta_U"}``:
    delta = r - z0 for both labels (z0 is one number per step, so the mean of delta is the
    mean of r minus z0). A label the microbatch did not contain is NaN, never 0.
    """
    r_D = _logged(log, "rewards/chosen") / beta
    r_U = _logged(log, "rewards/rejected") / beta
    z0 = _logged(log, "kl")
    return {"r_D": r_D, "r_U": r_U, "z0": z0, "delta_D": r_D - z0, "delta_U": r_U - z0}
