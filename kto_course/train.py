"""KTO fine-tune of the tiny GPT-2 in plain PyTorch (lesson 06).

    kto-course train                          # online KTO on the best device, JSON summary
    kto-course train --device cpu --steps 200 # the CPU path, ~20-40 s on 2 cores
    kto-course train --mode offline           # a fixed labelled dataset (the paper's setting)
    kto-course train --out runs/policy        # also save the trained policy

One step: take a microbatch of (prompt, completion, label) rows, compute the SEQUENCE log-probs
of the completions under the policy (with grad) and the frozen reference (without), pair each
prompt with another row's completion for z0, and let ``torch_ops.kto_loss`` (the course's one
copy of the math) give the loss and TRL-named metrics. Then backward, clip, AdamW step.

Two data modes:
- ``offline``: a fixed dataset of reference samples judged once, sampled in epochs (what TRL's
  KTOTrainer and the paper do);
- ``online``: every step samples fresh completions from the CURRENT policy and judges them.
"""

from __future__ import annotations

import json
import random
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from kto_course import core, system, torch_ops
from kto_course.lm import sampling, task
from kto_course.lm.model import load_reference

__all__ = [
    "KTOConfig",
    "KTOTrainer",
    "make_offline_dataset",
    "batch_logps",
    "peak_memory_mb",
    "run_train",
]

MODES = ("online", "offline")


@dataclass
class KTOConfig:
    """Every knob of the fine-tune; each default says why it has that value."""

    mode: str = "online"  # online sampling is what works at this size (see the lesson)
    steps: int = 150  # online, the tiny model passes 0.9 desirable after ~50-75 steps
    batch_size: int = 16  # microbatch: z0 is estimated from its 16 mismatched pairs
    beta: float = 0.1  # TRL's and HALOs' default: how fast the value function saturates
    lambda_D: float = 1.0  # desirable weight (TRL desirable_weight)
    lambda_U: float = 1.0  # undesirable weight; online data is ~balanced, so 1/1
    loss_type: str = "kto"  # or "apo_zero_unpaired" (z0 = 0)
    lr: float = 1e-3  # tiny from-scratch models need ~1e-3, not TRL's 1e-6 for real LLMs
    warmup_steps: int = 20  # linear warmup, then constant: no schedule to tune per run
    max_grad_norm: float = 1.0  # TRL's default clip
    adam_betas: tuple[float, float] = (0.9, 0.999)  # TRL's AdamW defaults
    weight_decay: float = 0.0  # TRL's default
    temperature: float = 1.0  # sample the policy's full distribution (no top-k)
    offline_size: int = 2048  # offline: reference samples judged once (~half desirable)
    eval_every: int = 50  # steps between evaluations (desirable rate, diversity)
    eval_samples: int = 512  # completions per evaluation: std err of a rate ~0.02
    seed: int = 0  # seeds prompts, sampling and the offline dataset
    device: str | None = None  # None or "auto": cuda, then mps, then cpu
    # CPU threads. 1, measured: at this size a second thread gains little, and on a busy
    # 2-core machine 2 threads ran 25-40x SLOWER (0.4 vs 10-17 steps/s; OpenMP spin-waits).
    # None: system.default_threads(), for larger models on an idle machine.
    threads: int | None = 1

    def validate(self) -> None:
        """Reject a bad config before any work starts, in the course's words."""
        if self.mode not in MODES:
            raise ValueError(f"mode must be 'online' or 'offline', got {self.mode!r}.")
        if self.batch_size < 2:
            raise ValueError(
                f"batch_size {self.batch_size} cannot estimate z0: each prompt must be paired "
                "with ANOTHER example's completion, so a microbatch needs at least 2 examples "
                "(lesson 02). Use --batch-size 2 or more (16 is the default)."
            )
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}.")
        if not self.beta > 0:
            raise ValueError(f"beta must be > 0, got {self.beta}.")
        if self.loss_type not in torch_ops.LOSS_TYPES:
            raise ValueError(f"loss_type must be one of {torch_ops.LOSS_TYPES}.")
        if self.eval_every < 1 or self.eval_samples < 1:
            raise ValueError("eval_every and eval_samples must be >= 1.")
        if self.mode == "offline" and self.offline_size < self.batch_size:
            raise ValueError(
                f"the offline dataset has {self.offline_size} rows, fewer than one microbatch "
                f"of {self.batch_size}: make it larger or the batch smaller."
            )


def make_offline_dataset(model, tokenizer, n: int, seed: int) -> list[dict]:
    """``n`` rows ``{prompt, completion, label}`` sampled from ``model`` and judged once."""
    rng = random.Random(seed)
    prompts = task.random_prompts(n, rng)
    device = next(model.parameters()).device
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        completions = []
        for start in range(0, n, 512):
            completions += sampling.sample(model, tokenizer, prompts[start : start + 512])
    labels = task.judge(prompts, completions)
    return [
        {"prompt": p, "completion": c, "label": y}
        for p, c, y in zip(prompts, completions, labels, strict=True)
    ]


def batch_logps(model, batch: dict) -> torch.Tensor:
    """Sequence log-probs log pi(y|x) of a right-padded batch from ``sampling.encode`` (B,)."""
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
    ).logits
    return torch_ops.sequence_logps(logits, batch["input_ids"], batch["completion_mask"])


def peak_memory_mb(device: str) -> float:
    """Peak memory of this run: CUDA allocator peak on a GPU, else the process's peak RSS."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


@dataclass
class KTOTrainer:
    """Policy, frozen reference, optimizer, data and the metrics history of one run.

    ``policy`` and ``reference`` start as copies of the same model; pass ``dataset`` (a list of
    ``{prompt, completion, label}`` rows) for offline mode, or let it be sampled.
    """

    policy: torch.nn.Module
    reference: torch.nn.Module
    tokenizer: object
    config: KTOConfig = field(default_factory=KTOConfig)
    dataset: list[dict] | None = None
    history: list[dict] = field(default_factory=list)  # one dict of metrics per step
    evals: list[dict] = field(default_factory=list)  # one dict per evaluation

    def __post_init__(self):
        cfg = self.config
        cfg.validate()
        self.device = system.pick_device(cfg.device)
        torch.set_num_threads(cfg.threads or system.default_threads())
        torch.manual_seed(cfg.seed)
        self.rng = random.Random(cfg.seed)
        self.policy.to(self.device).train()
        # The reference only scores: frozen, in eval mode, never given to the optimizer.
        self.reference.to(self.device).eval().requires_grad_(False)
        self.opt = torch.optim.AdamW(
            self.policy.parameters(), lr=cfg.lr, betas=cfg.adam_betas,
            weight_decay=cfg.weight_decay,
        )  # fmt: skip
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda step: min(1.0, (step + 1) / max(1, cfg.warmup_steps))
        )
        if cfg.mode == "offline":
            if self.dataset is None:
                self.dataset = make_offline_dataset(
                    self.reference, self.tokenizer, cfg.offline_size, cfg.seed
                )
            if len(self.dataset) == 0:
                raise ValueError(
                    "the offline dataset is empty: KTO needs labelled rows "
                    "{prompt, completion, label}."
                )
            if len(self.dataset) < cfg.batch_size:
                raise ValueError(
                    f"the offline dataset has {len(self.dataset)} rows, fewer than one "
                    f"microbatch of {cfg.batch_size}."
                )
            self._order: list[int] = []
        self.train_seconds = 0.0
        self.eval_seconds = 0.0
        self.tokens = 0

    # -- data -----------------------------------------------------------------------------

    def next_batch(self) -> tuple[list[str], list[str], list[bool]]:
        """A microbatch of prompts, completions and labels for the current mode."""
        n = self.config.batch_size
        if self.config.mode == "online":
            prompts = task.random_prompts(n, self.rng)
            completions = sampling.sample(
                self.policy, self.tokenizer, prompts, self.config.temperature
            )
            return prompts, completions, task.judge(prompts, completions)
        if len(self._order) < n:  # a new epoch: reshuffle so microbatches mix both labels
            order = list(range(len(self.dataset)))
            self.rng.shuffle(order)
            self._order += order
        rows = [self.dataset[i] for i in self._order[:n]]
        del self._order[:n]
        return ([r["prompt"] for r in rows], [r["completion"] for r in rows],
                [bool(r["label"]) for r in rows])  # fmt: skip

    # -- one optimizer step ---------------------------------------------------------------

    def step(self) -> dict:
        """One KTO step on one microbatch; returns (and records) its metrics."""
        cfg, tok = self.config, self.tokenizer
        start = time.perf_counter()
        prompts, completions, labels = self.next_batch()
        desirable = torch.tensor(labels, dtype=torch.bool, device=self.device)
        batch = sampling.encode(tok, prompts, completions, self.device)
        # z0's mismatched pairs: prompt x_i with completion y_{i-1} (TRL's cyclic shift).
        shifted = torch_ops.mismatched_indices(len(prompts)).tolist()
        kl_batch = sampling.encode(tok, prompts, [completions[j] for j in shifted], self.device)

        logp_theta = batch_logps(self.policy, batch)
        with torch.no_grad():
            logp_ref = batch_logps(self.reference, batch)
            kl_logp_theta = batch_logps(self.policy, kl_batch)
            kl_logp_ref = batch_logps(self.reference, kl_batch)
        # The estimate before the clamp: shows why "kl" so often reads 0 (lesson 02).
        r_mismatched = (kl_logp_theta - kl_logp_ref).cpu().numpy()
        kl_unclamped = core.z0_estimate(r_mismatched, clamp=False)
        loss, metrics = torch_ops.kto_loss(
            logp_theta, logp_ref, desirable, kl_logp_theta, kl_logp_ref,
            beta=cfg.beta, lambda_D=cfg.lambda_D, lambda_U=cfg.lambda_U,
            loss_type=cfg.loss_type,
        )  # fmt: skip

        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), cfg.max_grad_norm)
        lr = self.sched.get_last_lr()[0]
        self.opt.step()
        self.sched.step()

        self.train_seconds += time.perf_counter() - start
        self.tokens += int(batch["attention_mask"].sum())
        record = {
            "step": len(self.history) + 1,
            "loss": loss.item(),
            **metrics,
            "kl_unclamped": kl_unclamped,
            "grad_norm": float(grad_norm),
            "learning_rate": lr,
            "batch_desirable": sum(labels) / len(labels),
            "seconds": self.train_seconds + self.eval_seconds,
        }
        self.history.append(record)
        return record

    # -- evaluation and the loop ----------------------------------------------------------

    def evaluate(self) -> dict:
        """Desirable rate, well-formed rate and distinct completions of the current policy."""
        start = time.perf_counter()
        scores = sampling.evaluate(self.policy, self.tokenizer, n=self.config.eval_samples)
        self.policy.train()
        self.eval_seconds += time.perf_counter() - start
        scores.update(step=len(self.history), seconds=self.train_seconds + self.eval_seconds)
        self.evals.append(scores)
        return scores

    def train(self, steps: int | None = None, callback=None, progress: bool = True) -> dict:
        """Run ``steps`` steps (default: the config's), evaluating before, every ``eval_every``
        steps and at the end. ``callback(trainer)`` runs after each step (live plots).
        Returns ``summary()``."""
        steps = self.config.steps if steps is None else steps
        if not self.evals:
            self.evaluate()
        bar = tqdm(range(steps), desc=f"KTO ({self.config.mode})", disable=not progress)
        for _ in bar:
            record = self.step()
            if record["step"] % self.config.eval_every == 0:
                self.evaluate()
            bar.set_postfix(loss=f"{record['loss']:.3f}", kl=f"{record['kl']:.2f}",
                            desirable=f"{self.evals[-1]['desirable_rate']:.2f}")  # fmt: skip
            if callback is not None:
                callback(self)
        if self.evals[-1]["step"] != len(self.history):
            self.evaluate()
        return self.summary()

    def summary(self) -> dict:
        """What ``kto-course train`` prints: before/after, diversity, speed, memory, device."""
        first, last = self.evals[0], self.evals[-1]
        reached = [e for e in self.evals if e["desirable_rate"] >= 0.9]
        return {
            "mode": self.config.mode,
            "device": self.device,
            "steps": len(self.history),
            "desirable_before": first["desirable_rate"],
            "desirable_after": last["desirable_rate"],
            "well_formed_after": last["well_formed_rate"],
            "distinct_before": first["distinct"],
            "distinct_after": last["distinct"],
            "steps_to_0.9": reached[0]["step"] if reached else None,
            "seconds": round(self.train_seconds + self.eval_seconds, 2),
            "train_seconds": round(self.train_seconds, 2),
            "steps_per_s": round(len(self.history) / max(self.train_seconds, 1e-9), 2),
            "tokens_per_s": round(self.tokens / max(self.train_seconds, 1e-9), 1),
            "peak_memory_mb": round(peak_memory_mb(self.device), 1),
            "threads": torch.get_num_threads(),
        }

    def save(self, out) -> Path:
        """Save the trained policy and tokenizer with ``save_pretrained`` (+ the config)."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.policy.save_pretrained(out)
        self.tokenizer.save_pretrained(out)
        (out / "kto_config.json").write_text(json.dumps(asdict(self.config), indent=2) + "\n")
        return out


def from_reference(config: KTOConfig | None = None, dataset=None) -> KTOTrainer:
    """A trainer whose policy and reference are two copies of the shipped reference model."""
    config = config or KTOConfig()
    config.validate()
    device = system.pick_device(config.device)  # an unusable device fails here, before loading
    reference, tokenizer = load_reference(device)
    policy, _ = load_reference(device)
    return KTOTrainer(policy, reference, tokenizer, config, dataset=dataset)


def run_train(args) -> int:
    """``kto-course train``: train from the shipped reference, print a JSON summary."""
    config = KTOConfig(mode=args.mode, device=args.device)
    for name in ("steps", "batch_size", "beta", "seed"):
        value = getattr(args, name, None)
        if value is not None:
            setattr(config, name, value)
    start = time.perf_counter()
    trainer = from_reference(config)
    summary = trainer.train()
    summary["wall_seconds"] = round(time.perf_counter() - start, 2)
    if args.out:
        summary["saved_to"] = str(trainer.save(args.out))
    print(json.dumps(summary, indent=2))
    return 0
