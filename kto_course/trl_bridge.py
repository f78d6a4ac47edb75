"""The bridge to Hugging Face TRL's ``KTOTrainer`` (lesson 07, "graduate to TRL").

Lesson 06 trained the tiny GPT-2 with the course's own loop. This module runs the SAME data and
model through TRL's production trainer and shows that nothing was lost on the way:

- ``trl_dataset`` / ``trl_config``: the lesson-06 rows and knobs in TRL's format and names;
- ``run_trl``: TRL's real ``KTOTrainer`` for a few steps, returning its per-step logs;
- ``run_trl_matching``: the course's math (``torch_ops``) in a plain PyTorch loop that makes
  exactly TRL's choices, so its per-step ``loss``, ``kl`` and rewards equal TRL's.

What the lesson measures with them (each choice switched back, the unpairing pitfall, the
overlaid curves) lives in ``kto_course.figures.l07_graduate_to_trl``; the course's names
against TRL's (config knobs, logged metrics) in ``kto_course.trl_mapping``.

TRL and accelerate are an optional extra (``pip install -e '.[trl]'``): they are imported
inside the functions, and ``require_trl`` says so in one line before any work starts.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import random
import tempfile
import warnings

import torch

from kto_course import torch_ops

# The course's one copy of the KTO loss (keyword arguments only: the name may change).

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


def require_trl():
    """Import and return ``trl``; raise ``TRLUnavailable`` with a one-line reason otherwise."""
    for name in ("trl", "accelerate", "datasets"):
        try:
            module = importlib.import_module(name)
        except ImportError as exc:  # also a module set to None in sys.modules
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
    if not hasattr(importlib.import_module("trl.trainer.kto_trainer").KTOTrainer, "_compute_loss"):
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
    require_trl()
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
    require_trl()
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


# -- the course's loop with TRL's choices ------------------------------------------------------


def _sequence_logps(logits, input_ids, completion_mask):
    """The one place this module calls the course's sequence log-prob (its API may change)."""
    return torch_ops.sequence_logps_from_logits(logits, input_ids, completion_mask.bool())


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _tokenize(tokenizer, rows, choices, max_length):
    """(prompt_ids, completion_ids, label) per row, the way ``choices`` says."""
    out = []
    eos_text = tokenizer.eos_token if choices["eos"] == "text" else ""
    bos = [tokenizer.bos_token_id] if choices["bos"] == "added" else []
    for r in rows:
        if choices["tokenization"] == "joint":  # TRL: prompt alone and prompt+completion
            prompt = tokenizer(r["prompt"])["input_ids"]
            full = tokenizer(r["prompt"] + r["completion"] + eos_text)["input_ids"]
            n = _common_prefix(prompt, full)
            prompt_ids, completion_ids = prompt[:n], full[n:]
        else:  # lesson 06's encode: apart, completion capped at 16 tokens, then <eos>
            prompt_ids = tokenizer(r["prompt"], add_special_tokens=False)["input_ids"]
            completion_ids = tokenizer(r["completion"], add_special_tokens=False)["input_ids"]
            completion_ids = completion_ids[:16]
            if choices["eos"] == "text":
                completion_ids = completion_ids + [tokenizer.eos_token_id]
        prompt_ids = bos + prompt_ids
        if max_length is not None and len(prompt_ids) >= max_length:
            continue  # TRL drops rows whose prompt alone fills max_length
        out.append((prompt_ids, completion_ids, bool(r["label"])))
    return out


def _batches(examples, batch_size, steps, choices, seed, kl_group=None):
    """``steps`` microbatches: sequential epochs (TRL) or reshuffled epochs (lesson 06).

    Each example gets its KL completion as TRL builds it: rows are cut into chunks of
    ``batch_size`` in dataset order and the completions rotate by one inside each chunk.
    ``kl_group`` < ``batch_size`` rotates inside smaller chunks: what each of
    ``batch_size / kl_group`` processes does with its share of a global batch.
    """
    shift = 1 if choices["kl_pairing"] == "trl" else -1  # x_i with y_{i-1} (TRL) or y_{i+1}
    group = kl_group or batch_size
    with_kl = []
    for start in range(0, len(examples), group):
        chunk = examples[start : start + group]
        for i, (p, c, y) in enumerate(chunk):
            with_kl.append((p, c, chunk[(i - shift) % len(chunk)][1], y))
    rng = random.Random(seed)
    order: list[int] = []
    for _ in range(steps):
        if not order:
            order = list(range(len(with_kl)))
            if choices["order"] == "shuffled":
                rng.shuffle(order)
        take, order = order[:batch_size], order[batch_size:]
        batch = [with_kl[i] for i in take]
        if choices["order"] == "shuffled":  # pairs formed inside the shuffled microbatch
            n = len(batch)
            batch = [(p, c, batch[(i - shift) % n][1], y) for i, (p, c, _, y) in enumerate(batch)]
        yield batch


def _collate(seqs, pad_id, max_length, side):
    """Right (or left) padded ids, attention mask and completion mask of (prompt, completion)."""
    rows, masks = [], []
    for p, c in seqs:
        ids, m = (p + c)[:max_length], ([0] * len(p) + [1] * len(c))[:max_length]
        rows.append(ids)
        masks.append(m)
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(rows), width), dtype=torch.long)
    comp = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (r, m) in enumerate(zip(rows, masks, strict=True)):
        sl = slice(0, len(r)) if side == "right" else slice(width - len(r), width)
        ids[i, sl], att[i, sl], comp[i, sl] = torch.tensor(r), 1, torch.tensor(m)
    return ids, att, comp


class _HeadLogps(torch.autograd.Function):
    """log p(target) of ``hidden @ weight.T`` with the arithmetic of TRL's fused LM head on a
    CPU (one tile): forward ``z_t - (m + log sum exp(z - m))``, backward
    ``g * (onehot - exp(z - log_z))`` projected back with two matmuls. The same quantity as
    ``log_softmax(logits)[target]``; only the float rounding differs (~1e-6 in a sequence
    log-prob), and Adam amplifies that over steps (``choice_effects`` measures it)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets):
        z = torch.mm(hidden, weight.t())
        m = z.amax(-1)
        log_z = m + torch.log(torch.exp(z - m.unsqueeze(-1)).sum(-1))
        ctx.save_for_backward(hidden, weight, targets, log_z)
        return z.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - log_z

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, targets, log_z = ctx.saved_tensors
        z = torch.mm(hidden, weight.t())
        p = torch.exp(z - log_z.unsqueeze(-1))
        onehot = torch.arange(z.shape[-1], device=z.device) == targets.unsqueeze(-1)
        g = torch.zeros_like(z)
        g += grad.unsqueeze(-1) * (onehot.float() - p)
        grad_hidden = torch.zeros_like(hidden).addmm_(g, weight)
        grad_weight = torch.zeros_like(weight).addmm_(g.t(), hidden)
        return grad_hidden, grad_weight, None


def _logps(model, ids, att, comp, kind="fused_head"):
    """Sequence log-probs log pi(y|x) (B,): SUM over completion tokens (KTO_FACTS notation)."""
    if kind == "log_softmax":
        logits = model(input_ids=ids, attention_mask=att, use_cache=False).logits
        return _sequence_logps(logits, ids, comp)
    hidden = model.base_model(input_ids=ids, attention_mask=att, use_cache=False)
    hidden = hidden.last_hidden_state[:, :-1]
    mask = comp[:, 1:].bool()
    targets = ids[:, 1:].masked_fill(~mask, 0)
    per_token = _HeadLogps.apply(
        hidden.reshape(-1, hidden.shape[-1]), model.get_output_embeddings().weight,
        targets.reshape(-1),
    ).view(mask.shape)  # fmt: skip
    return per_token.masked_fill(~mask, 0).sum(-1)


def _optimizer(model, knobs, choices):
    """AdamW as transformers' Trainer builds it: no weight decay on biases and LayerNorm
    weights (``Trainer.get_decay_parameter_names``)."""
    from transformers import Trainer

    decay = set(Trainer.get_decay_parameter_names(None, model))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if n in decay],
               "weight_decay": knobs["weight_decay"]},
              {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}]  # fmt: skip
    fused = {"fused": True} if choices["optimizer"] == "adamw_fused" else {}
    return torch.optim.AdamW(groups, lr=knobs["lr"], betas=tuple(knobs["adam_betas"]), eps=1e-8,
                             **fused)  # fmt: skip


def _schedule(opt, steps, choices, warmup_steps=20):
    if choices["schedule"] == "linear":  # transformers' get_linear_schedule_with_warmup(0, steps)
        return torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: max(0.0, (steps - s) / max(1, steps))
        )
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup_steps))


def run_trl_matching(
    model, ref_model, tokenizer, rows, steps, choices=None, kl_group=None, **cfg
) -> list[dict]:
    """The course's KTO step (``torch_ops``) in a plain loop that makes TRL's choices.

    Same arguments and per-step dicts as ``run_trl`` (``loss``, ``kl``, ``rewards/*``,
    ``logps/*``, ``grad_norm``, ``learning_rate``, ``step``). ``choices`` switches any of
    ``TRL_CHOICES`` (e.g. ``{"optimizer": "adamw"}``); ``kl_group=8`` with ``batch_size=16``
    forms the mismatched pairs inside each half of the batch, as 2 processes of 8 do. Also
    logs ``kl_unclamped``, z0 before the clamp. ``model`` is trained in place.
    """
    knobs, raw = _knobs(dict(cfg))
    if raw:
        raise TypeError(f"run_trl_matching got unknown settings: {', '.join(raw)}.")
    choices = {**TRL_CHOICES, **(choices or {})}
    unknown = set(choices) - set(TRL_CHOICES)
    if unknown:
        raise ValueError(f"unknown choice(s) {sorted(unknown)}: use {sorted(TRL_CHOICES)}.")
    b, max_length = knobs["batch_size"], knobs["max_length"]
    if knobs["loss_type"] == "kto" and b < 2:
        raise ValueError("Actual (not effective) batch size must be > 1 (z0 needs 2 examples).")
    device = next(model.parameters()).device
    model.train()
    ref_model.eval().requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = _optimizer(model, knobs, choices)
    sched = _schedule(opt, steps, choices)
    examples = _tokenize(tokenizer, list(rows), choices, max_length)
    pad = tokenizer.pad_token_id
    history = []
    for step, batch in enumerate(_batches(examples, b, steps, choices, knobs["seed"], kl_group), 1):
        main = _collate([(p, c) for p, c, _, _ in batch], pad, max_length, choices["padding"])
        kl = _collate([(p, k) for p, _, k, _ in batch], pad, max_length, choices["padding"])
        main = [t.to(device) for t in main]
        kl = [t.to(device) for t in kl]
        desirable = torch.tensor([y for *_, y in batch], dtype=torch.bool, device=device)
        kind = choices["logprobs"]
        with torch.no_grad():
            kl_logp_theta = _logps(model, *kl, kind=kind)
        logp_theta = _logps(model, *main, kind=kind)
        with torch.no_grad():
            kl_logp_ref = _logps(ref_model, *kl, kind=kind)
            logp_ref = _logps(ref_model, *main, kind=kind)
        loss, metrics = torch_ops.batch_kto_loss(
            logp_theta=logp_theta, logp_ref=logp_ref, desirable=desirable,
            kl_logp_theta=kl_logp_theta, kl_logp_ref=kl_logp_ref, beta=knobs["beta"],
            lambda_D=knobs["lambda_D"], lambda_U=knobs["lambda_U"],
            loss_type=knobs["loss_type"],
        )  # fmt: skip
        # z0 before the clamp (not a TRL metric): why "kl" so often reads 0 (lesson 02).
        kl_unclamped = float((kl_logp_theta - kl_logp_ref).mean())
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, knobs["max_grad_norm"])
        lr = sched.get_last_lr()[0]  # the rate this step uses (what TRL logs)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        history.append({"loss": loss.item(), **metrics, "kl_unclamped": kl_unclamped,
                        "grad_norm": float(grad_norm),
                        "learning_rate": lr, "step": step})  # fmt: skip
    return history
