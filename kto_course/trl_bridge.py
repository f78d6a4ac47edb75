"""The bridge to Hugging Face TRL's ``KTOTrainer`` (lesson 07, "graduate to TRL").

Lesson 06 trained the tiny GPT-2 with the course's own loop. This module runs the SAME data and
model through TRL's production trainer and shows that nothing was lost on the way:

- ``trl_dataset`` / ``trl_config``: the lesson-06 rows and knobs in TRL's format and names;
- ``run_trl``: TRL's real ``KTOTrainer`` for a few steps, returning its per-step logs;
- ``matching_config`` / ``run_trl_matching``: the course's own trainer (``train.KTOTrainer``)
  with TRL's choices as its knobs, so its per-step ``loss``, ``kl`` and rewards equal TRL's.

What the lesson measures with them (each choice switched back, the unpairing pitfall, the
overlaid curves) lives in ``kto_course.figures.l07_graduate_to_trl``; the course's names
against TRL's (config knobs, logged metrics) in ``kto_course.trl_mapping``.

TRL and accelerate are an optional extra (``pip install -e '.[trl]'``): they are imported
inside the functions, and ``require_trl`` says so in one line before any work starts.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass, field

import torch

from kto_course import train

__all__ = [
    "TRLUnavailable",
    "SUPPORTED_TRL",
    "TRL_CHOICES",
    "require_trl",
    "trl_dataset",
    "matching_args",
    "trl_config",
    "make_trainer",
    "run_trl",
    "step_logs",
    "matching_config",
    "run_trl_matching",
]

SUPPORTED_TRL = (">=1.6", "<2")  # 1.6 moved the loss inline into KTOTrainer._compute_loss
INSTALL_HINT = "install the extra: pip install -e '.[trl]'"

# Course knob -> KTOConfig field (the rest of KTOConfig is fixed by trl_config or passed as is).
CONFIG_FIELDS = {
    "steps": "max_steps",  # optimizer steps (TRL counts steps, the course counts steps)
    "batch_size": "per_device_train_batch_size",  # the microbatch z0 is estimated from
    "lr": "learning_rate",  # TRL's default 1e-6 is for real LLMs; the tiny model needs ~1e-3
    "beta": "beta",
    "lambda_D": "desirable_weight",
    "lambda_U": "undesirable_weight",
    "loss_type": "loss_type",
    "max_grad_norm": "max_grad_norm",
    "seed": "seed",
    "max_length": "max_length",
    "adam_betas": ("adam_beta1", "adam_beta2"),  # one course knob, two TRL fields
    "weight_decay": "weight_decay",  # transformers skips biases and LayerNorm weights
}
# The course's defaults for those knobs (lesson 06's offline run).
DEFAULTS = {"steps": 20, "batch_size": 16, "lr": 1e-3, "beta": 0.1, "lambda_D": 1.0,
            "lambda_U": 1.0, "loss_type": "kto", "max_grad_norm": 1.0, "seed": 0,
            "max_length": 32, "adam_betas": (0.9, 0.999), "weight_decay": 0.0}  # fmt: skip

# What TRL does, choice by choice; ``run_trl_matching(choices=...)`` switches any of them
# (``figures.COURSE_CHOICES``: what the course's lesson-06 loop, or a common slip, does instead).
TRL_CHOICES = {
    "optimizer": "adamw_fused",  # TrainingArguments' default optim on torch >= 2.8
    "schedule": "linear",  # linear decay to 0 over max_steps, no warmup
    "order": "sequential",  # TRL forces a sequential sampler for loss_type="kto"
    "kl_pairing": "trl",  # x_i paired with y_{i-1} inside each chunk of batch_size rows
    "bos": "none",  # the tokenizer adds no BOS (no post-processor), so TRL adds none
    "eos": "text",  # "<eos>" appended to the completion TEXT before tokenizing
    "tokenization": "joint",  # tokenize prompt+completion together, split at the common prefix
    "padding": "right",
    "logprobs": "fused_head",  # TRL's fused LM head: z_t - (max + log sum exp(z - max))
}


class TRLUnavailable(ImportError):
    """TRL or accelerate is missing, or the installed TRL is outside the supported range."""


# -- setup -------------------------------------------------------------------------------------


def require_trl(trainer: bool = True):
    """Import and return ``trl``; raise ``TRLUnavailable`` with a one-line reason otherwise.

    ``trainer=False``: enough for TRL's ``KTOConfig``. The trainer module (~7 s to import cold,
    through transformers' processors) is then not imported, and ``datasets`` is only found.
    """
    for name in ("trl", "accelerate", "datasets"):
        try:
            if name == "datasets" and not trainer:
                if importlib.util.find_spec(name) is None:
                    raise ImportError(name)
                continue
            module = importlib.import_module(name)
        except (ImportError, ValueError) as exc:  # also a module set to None in sys.modules
            raise TRLUnavailable(
                f"lesson 07 needs {name}, which is not installed here ({exc.__class__.__name__}):"
                f" {INSTALL_HINT}"
            ) from None
        if name == "trl":
            trl = module
    from packaging.version import Version

    version = Version(trl.__version__)
    if not (Version("1.6") <= version < Version("2")):
        raise TRLUnavailable(
            f"TRL {trl.__version__} is installed, but lesson 07 supports TRL "
            f"{','.join(SUPPORTED_TRL)} (its KTO loss lives in KTOTrainer._compute_loss): "
            f"{INSTALL_HINT}"
        )
    if trainer and not hasattr(
        importlib.import_module("trl.trainer.kto_trainer").KTOTrainer, "_compute_loss"
    ):
        raise TRLUnavailable(
            f"TRL {trl.__version__} has no KTOTrainer._compute_loss: {INSTALL_HINT}"
        )
    return trl


@contextlib.contextmanager
def quiet():
    """No progress bars, info logs or warnings a learner does not need, while TRL runs."""
    from transformers.utils import logging as hf_logging

    names = ("transformers", "trl", "accelerate", "datasets")
    levels = {n: logging.getLogger(n).level for n in names}
    old_tqdm = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"  # TRL's own tqdm bars read this
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    except ImportError:
        pass
    for n in names:
        logging.getLogger(n).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        for n, level in levels.items():
            logging.getLogger(n).setLevel(level)
        if old_tqdm is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = old_tqdm


def trl_dataset(rows):
    """Lesson-06 rows ``{prompt, completion, label}`` as a ``datasets.Dataset`` in TRL's
    unpaired format (standard, not conversational: plain strings, ``label`` a bool)."""
    require_trl()
    from datasets import Dataset

    rows = list(rows)
    if not rows:
        raise ValueError("no rows: KTO needs labelled rows {prompt, completion, label}.")
    return Dataset.from_dict({
        "prompt": [str(r["prompt"]) for r in rows],
        "completion": [str(r["completion"]) for r in rows],
        "label": [bool(r["label"]) for r in rows],
    })  # fmt: skip


def _knobs(cfg: dict) -> tuple[dict, dict]:
    """Split keyword arguments into course knobs (with defaults) and raw KTOConfig fields."""
    knobs = {k: cfg.pop(k) if k in cfg else v for k, v in DEFAULTS.items()}
    return knobs, cfg


def matching_args(fields: dict, output_dir=None, device=None):
    """TRL's ``KTOConfig`` from ``fields`` (KTOConfig names) on top of the settings that make
    TRL's run match the course's loop on this machine (``fields`` override them).

    The fixed settings: fp32 without gradient checkpointing, TRL's fused AdamW with linear
    decay and no warmup, one log per step, a sequential sampler, no saving or reporting.
    ``device``: "cpu", "cuda" or None (cuda when there is one).
    """
    require_trl(trainer=False)
    import dataclasses

    from trl import KTOConfig

    use_cpu = device == "cpu" or not torch.cuda.is_available()
    settings = dict(
        output_dir=output_dir or tempfile.mkdtemp(prefix="kto-trl-"),
        # fp32 everywhere. KTOConfig's own defaults are bf16=True and gradient checkpointing:
        # on a CPU without native bf16 they make TRL ~5x slower and change every number.
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        disable_dropout=True,  # the tiny GPT-2 has no dropout anyway (policy and reference)
        use_cpu=use_cpu,
        # What the course's matching loop does: AdamW (fused kernel, TRL's default), linear
        # decay to 0 without warmup, no weight decay, TRL's Adam constants.
        optim="adamw_torch_fused",
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        gradient_accumulation_steps=1,  # z0 is per microbatch anyway (TRL PR #2153)
        train_sampling_strategy="sequential",  # the KL pairs are fixed in advance
        precompute_ref_log_probs=False,  # the reference model scores each batch
        logging_steps=1,  # one log per optimizer step: the per-step metrics
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=False,
        dataset_num_proc=None,
    )
    if "activation_checkpointing" in {f.name for f in dataclasses.fields(KTOConfig)}:
        settings["activation_checkpointing"] = False  # transformers >= 5.2's name for it
    return KTOConfig(**{**settings, **fields})


def trl_config(output_dir=None, **overrides):
    """``matching_args`` from course knobs: TRL's ``KTOConfig`` in the setup that matches the
    course's loop on this machine.

    Course knobs (``steps, batch_size, lr, beta, lambda_D, lambda_U, loss_type, max_grad_norm,
    seed, max_length, adam_betas, weight_decay``) map to KTOConfig fields as in
    ``CONFIG_FIELDS``; any other keyword is a KTOConfig field and overrides the fixed choices.
    """
    require_trl(trainer=False)
    knobs, raw = _knobs(dict(overrides))
    device = raw.pop("device", None)
    fields = {}
    for knob, value in knobs.items():
        name = CONFIG_FIELDS[knob]
        fields.update(zip(name, value, strict=True) if isinstance(name, tuple) else {name: value})
    return matching_args({**fields, **raw}, output_dir, device)


def make_trainer(model, ref_model, tokenizer, rows, steps, trainer_cls=None, args=None, **cfg):
    """A ready ``KTOTrainer`` (or ``trainer_cls``, a subclass) with ``trl_config(**cfg)`` (or
    a ready ``KTOConfig`` as ``args``, which then sets the steps), without TRL's per-step
    printing. ``model`` is trained in place; TRL also patches its ``forward`` (a fused LM
    head): pass a fresh copy."""
    require_trl()
    from transformers import PrinterCallback, ProgressCallback

    cfg.setdefault("device", next(model.parameters()).device.type)  # train where the model is
    from trl import KTOTrainer

    with quiet():
        args = args if args is not None else trl_config(steps=steps, **cfg)
        trainer = (trainer_cls or KTOTrainer)(
            model=model, ref_model=ref_model, args=args, train_dataset=trl_dataset(rows),
            processing_class=tokenizer,
        )  # fmt: skip
    for callback in (PrinterCallback, ProgressCallback):
        trainer.remove_callback(callback)
    return trainer


def run_trl(model, ref_model, tokenizer, rows, steps, **cfg) -> list[dict]:
    """Run TRL's ``KTOTrainer`` for ``steps`` optimizer steps; return its per-step logs.

    Each dict has TRL's names: ``loss``, ``kl``, ``rewards/chosen``, ``rewards/rejected``,
    ``rewards/margins``, ``logps/*``, ``logits/*``, ``entropy``, ``grad_norm``,
    ``learning_rate``, ``step``. ``cfg``: ``trl_config`` keywords (``batch_size=16`` ...).
    """
    trainer = make_trainer(model, ref_model, tokenizer, rows, steps, **cfg)
    with quiet():
        trainer.train()
    return step_logs(trainer)


def step_logs(trainer) -> list[dict]:
    """The per-step entries of a finished trainer's ``log_history``."""
    return [dict(log) for log in trainer.state.log_history if "loss" in log and "step" in log]


# -- the course's trainer with TRL's choices --------------------------------------------------


# The choices of TRL_CHOICES that are knobs of the course's trainer (train.KTOConfig: the same
# names and values) and the values each takes; bos, eos and padding are slips, not knobs:
# ``_Slips`` makes them.
KNOB_CHOICES = {
    "optimizer": train.OPTIMIZERS,
    "schedule": train.SCHEDULES,
    "order": train.ORDERS,
    "kl_pairing": ("trl", "halos"),
    "tokenization": train.TOKENIZATIONS,
    "logprobs": train.LOGPROBS,
}
SLIPS = {"bos": ("none", "added"), "eos": ("text", "missing"), "padding": ("right", "left")}


def matching_config(steps, choices=None, kl_group=None, device="cpu", **cfg):
    """The course's ``train.KTOConfig`` in the TRL-matching configuration (lesson 07).

    ``cfg``: the course knobs of ``DEFAULTS`` (``batch_size=16`` ...). TRL's choices
    (``TRL_CHOICES``) become the trainer's knobs: sequential offline reading, linear decay
    without warmup, joint tokenization with "<eos>" text, ``max_length`` truncation, the
    fused-head log-probs.
    ``choices`` switches any of them; ``kl_group`` forms z0's pairs inside groups of that many
    rows (``pairing_groups``). Returns (config, slips): the bos/eos/padding choices that are not
    TRL's, which ``_Slips`` applies.
    """
    knobs, raw = _knobs(dict(cfg))
    if raw:
        raise TypeError(f"the TRL-matching run got unknown settings: {', '.join(raw)}.")
    choices = {**TRL_CHOICES, **(choices or {})}
    unknown = set(choices) - set(TRL_CHOICES)
    if unknown:
        raise ValueError(f"unknown choice(s) {sorted(unknown)}: use {sorted(TRL_CHOICES)}.")
    for name, value in choices.items():
        allowed = KNOB_CHOICES.get(name) or SLIPS[name]
        if value not in allowed:
            raise ValueError(f"choice {name}={value!r}: use one of {sorted(allowed)}.")
    b = knobs["batch_size"]
    if knobs["loss_type"] == "kto" and b < 2:
        raise ValueError("Actual (not effective) batch size must be > 1 (z0 needs 2 examples).")
    knobs["steps"] = steps
    trl_knobs = {name: choices[name] for name in KNOB_CHOICES}
    config = train.KTOConfig(
        mode="offline", warmup_steps=20, device=device,
        pairing_groups=1 if kl_group is None else b // kl_group,
        threads=torch.get_num_threads(),  # leave the thread count as the caller has it
        **knobs, **trl_knobs,
    )  # fmt: skip
    slips = {n: choices[n] for n in SLIPS if choices[n] != SLIPS[n][0]}
    return config, slips


def run_trl_matching(
    model, ref_model, tokenizer, rows, steps, choices=None, kl_group=None, **cfg
) -> list[dict]:
    """The course's own trainer (``train.KTOTrainer``) in the TRL-matching configuration.

    Same arguments and per-step dicts as ``run_trl`` (``loss``, ``kl``, ``rewards/*``,
    ``logps/*``, ``grad_norm``, ``learning_rate``, ``step``), plus ``kl_unclamped``, z0 before
    the clamp. ``choices`` switches any of ``TRL_CHOICES`` (e.g. ``{"optimizer": "adamw"}``);
    ``kl_group=8`` with ``batch_size=16`` forms the mismatched pairs inside each half of the
    batch, as 2 processes of 8 do. ``model`` is trained in place.
    """
    device = str(next(model.parameters()).device)
    config, slips = matching_config(steps, choices, kl_group, device=device, **cfg)
    trainer = _Slips(model, ref_model, tokenizer, config, dataset=list(rows), slips=slips)
    return [trainer.step() for _ in range(steps)]


@dataclass
class _Slips(train.KTOTrainer):
    """``train.KTOTrainer`` with common slips (``SLIPS``): a BOS added, no EOS, left padding."""

    slips: dict = field(default_factory=dict)

    def encode(self, prompts, completions):
        prompt_ids, completion_ids = super().encode(prompts, completions)
        eos = self.tokenizer.eos_token_id
        if self.slips.get("bos") == "added":
            prompt_ids = [[self.tokenizer.bos_token_id] + ids for ids in prompt_ids]
        if self.slips.get("eos") == "missing":
            completion_ids = [ids[:-1] if ids and ids[-1] == eos else ids
                              for ids in completion_ids]  # fmt: skip
        return prompt_ids, completion_ids

    def _pairs(self, prompt_rows, completion_rows):
        batch = super()._pairs(prompt_rows, completion_rows)
        if self.slips.get("padding") != "left":
            return batch
        # Left padding to max_length with the plain forward's positions 0..W-1: each row moves
        # right by its padding, so its tokens sit at other positions than TRL gives them. One
        # width for every batch, so the precomputed reference sees the same shift as the policy.
        pad = self.tokenizer.pad_token_id
        ids, width = batch["input_ids"], self.config.max_length or batch["input_ids"].shape[1]
        extra = width - ids.shape[1]
        batch = {k: torch.nn.functional.pad(v, (0, extra), value=pad if k == "input_ids" else 0)
                 for k, v in batch.items()}  # fmt: skip
        length = batch["attention_mask"].sum(1, keepdim=True)
        src = (torch.arange(width, device=length.device).unsqueeze(0) + length) % width
        return {k: v.gather(1, src) for k, v in batch.items()}
