"""Every knob of lesson 06's fine-tune, in one dataclass: ``KTOConfig``.

``kto-course train`` has one option per field, ``train.KTOTrainer`` reads them, and
``trl_bridge.matching_config`` sets TRL's choices on the same fields (lesson 07). Each field's
help text says what it is and why it has its default; ``KTOConfig.problem`` applies its rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from kto_course import torch_ops

__all__ = ["KTOConfig", "knob"]

MODES = ("online", "offline")
OPTIMIZERS = ("adamw_fused", "adamw")
SCHEDULES = ("warmup_constant", "linear")
ORDERS = ("shuffled", "sequential")
TOKENIZATIONS = ("separate", "joint")
LOGPROBS = ("log_softmax", "fused_head")

def knob(default, help: str, *, at_least=None, above=None, choices=None):
    """A KTOConfig field: its default, its help text (``kto-course train --help``) and its rule.

    ``at_least`` / ``above``: the smallest / a strict lower bound of a number; ``choices``: the
    allowed values. ``KTOConfig.problem`` checks a value against the rule.
    """
    rule = {"at_least": at_least, "above": above, "choices": choices}
    return field(default=default, metadata={"help": help, **rule})


@dataclass
class KTOConfig:
    """Every knob of the fine-tune; each help text says what it is and why it has that value.

    ``kto-course train`` has one option per field (``--batch-size`` for ``batch_size``), made
    from these fields. A bad value is a ValueError here, before any work starts.
    """

    # Online sampling is what works at this size; offline at beta 0.1 collapses transiently on
    # the tiny model (--beta 1 fixes it). See the lesson.
    mode: str = knob("online", "online: fresh samples judged each step; offline: a fixed "
                     "labelled dataset (the paper's setting)", choices=MODES)  # fmt: skip
    steps: int = knob(150, "optimizer steps (online: 0.9 desirable after ~50-75)", at_least=1)
    batch_size: int = knob(16, "microbatch size; z0 comes from its mismatched pairs", at_least=1)
    beta: float = knob(0.1, "KTO beta: how fast the value function saturates", above=0)
    lambda_D: float = knob(1.0, "desirable weight (TRL desirable_weight)", above=0)
    lambda_U: float = knob(1.0, "undesirable weight; online data is ~balanced", above=0)
    loss_type: str = knob("kto", "apo_zero_unpaired: z0 = 0", choices=torch_ops.LOSS_TYPES)
    # Tiny from-scratch models need ~1e-3, not TRL's 1e-6 for real LLMs.
    lr: float = knob(1e-3, "AdamW learning rate", above=0)
    warmup_steps: int = knob(20, "linear warmup, then constant (no schedule to tune)", at_least=0)
    max_grad_norm: float = knob(1.0, "gradient clip (TRL's default)", above=0)
    adam_betas: tuple[float, float] = knob((0.9, 0.999), "AdamW betas (TRL's defaults)")
    weight_decay: float = knob(0.0, "AdamW weight decay (TRL's default)", at_least=0)
    # Same update; the fused kernel is one call instead of a dozen per step (3.7 -> 0.5 ms
    # here) and rounds differently in the last bits (losses agree to ~1e-7 over 20 steps).
    optimizer: str = knob("adamw_fused", "AdamW kernel: adamw_fused (TRL's default, one "
                          "fused kernel) or adamw (PyTorch's multi-tensor loop)",
                          choices=OPTIMIZERS)  # fmt: skip
    # Defaults: lesson 06's choices; trl_bridge.matching_config sets TRL's (lesson 07).
    schedule: str = knob("warmup_constant", "learning rate: warmup_constant (warmup_steps, "
                         "then constant) or linear (TRL's: decay to 0 over steps, no warmup)",
                         choices=SCHEDULES)  # fmt: skip
    order: str = knob("shuffled", "offline: rows reshuffled each epoch, or read sequentially "
                      "(TRL's sampler for KTO)", choices=ORDERS)  # fmt: skip
    kl_pairing: str = knob("trl", "z0's mismatched pairs: trl (x_i with y_{i-1}) or halos "
                           "(x_i with y_{i+1})", choices=("trl", "halos"))  # fmt: skip
    pairing_groups: int = knob(1, "z0's pairs are formed inside each of this many equal parts "
                               "of the microbatch (2: what 2 processes of batch_size/2 do)",
                               at_least=1)  # fmt: skip
    tokenization: str = knob("separate", "separate: prompt and completion apart, completion "
                             "capped at 16 tokens, + <eos>; joint: TRL's (prompt + completion "
                             "+ '<eos>' at once, split at the common prefix)",
                             choices=TOKENIZATIONS)  # fmt: skip
    max_length: int | None = knob(None, "tokens kept per row, prompt + completion (TRL's "
                                  "max_length); rows whose prompt alone fills it are dropped",
                                  at_least=2)  # fmt: skip
    logprobs: str = knob("log_softmax", "log_softmax of the full logits, or fused_head (TRL's "
                         "LM-head arithmetic: the same values, rounded differently)",
                         choices=LOGPROBS)  # fmt: skip
    temperature: float = knob(1.0, "sampling temperature (full distribution, no top-k)", above=0)
    offline_size: int = knob(2048, "offline: reference samples judged once", at_least=1)
    eval_every: int = knob(50, "steps between evaluations (desirable rate, diversity)", at_least=1)
    eval_samples: int = knob(512, "completions per evaluation (std err ~0.02)", at_least=1)
    seed: int = knob(0, "seeds prompts, sampling and the offline dataset")
    device: str | None = knob(None, "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    # 1, measured: at this size a second thread gains little, and on a busy 2-core machine
    # 2 threads ran 25-40x SLOWER (0.4 vs 10-17 steps/s; OpenMP spin-waits). None (auto):
    # system.default_threads(), for larger models on an idle machine.
    threads: int | None = knob(1, "CPU threads (auto: the free cores, at most 4)", at_least=1)

    def __post_init__(self):
        self.validate()

    @staticmethod
    def problem(name: str, value) -> str | None:
        """What is wrong with ``value`` for the field ``name`` ("a number >= 1"); None if fine.

        The one place a knob's rule is applied: ``validate`` and ``kto-course train`` both ask.
        """
        meta = next(f.metadata for f in fields(KTOConfig) if f.name == name)
        if meta["choices"] is not None:
            if value not in meta["choices"]:
                return " or ".join(map(repr, meta["choices"]))
            return None
        strict = meta["above"] is not None
        low = meta["above"] if strict else meta["at_least"]
        if low is None or value is None:
            return None
        wanted = f"a number {'>' if strict else '>='} {low}"
        if isinstance(value, bool) or not isinstance(value, int | float):
            return wanted
        return wanted if (value <= low if strict else value < low) else None

    def validate(self) -> None:
        """Reject a bad config before any work starts, in the course's words."""
        for f in fields(self):
            wanted = self.problem(f.name, getattr(self, f.name))
            if wanted:
                raise ValueError(f"{f.name} must be {wanted}, got {getattr(self, f.name)!r}.")
        if self.batch_size < 2:
            raise ValueError(
                f"batch_size {self.batch_size} cannot estimate z0: each prompt must be paired "
                "with ANOTHER example's completion, so a microbatch needs at least 2 examples "
                "(lesson 02). Use --batch-size 2 or more (16 is the default)."
            )
        if self.batch_size % self.pairing_groups or self.batch_size < 2 * self.pairing_groups:
            raise ValueError(
                f"pairing_groups {self.pairing_groups} must split batch_size {self.batch_size} "
                "into equal parts of at least 2 examples (each part pairs its own rows for z0)."
            )
        if self.mode == "offline" and self.offline_size < self.batch_size:
            raise ValueError(
                f"the offline dataset has {self.offline_size} rows, fewer than one microbatch "
                f"of {self.batch_size}: make it larger or the batch smaller."
            )
