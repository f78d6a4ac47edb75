"""KTO fine-tune of the tiny GPT-2 in plain PyTorch (lesson 06).

    kto-course train                          # online KTO on the best device, JSON summary
    kto-course train --device cpu --steps 200 # the CPU path, ~20-40 s on 2 cores
    kto-course train --mode offline           # a fixed labelled dataset (the paper's setting)
    kto-course train --out runs/policy        # also save the trained policy

One step: take a microbatch of (prompt, completion, label) rows, compute the SEQUENCE log-probs
of the completions under the policy (with grad) and the frozen reference (without), pair each
prompt with another row's completion for z0, and let ``torch_ops.batch_kto_loss`` (the course's one
copy of the math) give the loss and TRL-named metrics. Then backward, clip, AdamW step.

Two data modes:
- ``offline``: a fixed dataset of reference samples judged once, sampled in epochs (what TRL's
  KTOTrainer and the paper do);
- ``online``: every step samples fresh completions from the CURRENT policy and judges them.
"""

from __future__ import annotations

import copy
import json
import random
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from kto_course import core, system, torch_ops
from kto_course.lm import fast, sampling, task
from kto_course.lm.model import load_reference
from kto_course.lm.pretrain import pretrain
from kto_course.train_config import (  # noqa: F401 (train.MODES ... for the CLI and trl_bridge)
    LOGPROBS,
    MODES,
    OPTIMIZERS,
    ORDERS,
    SCHEDULES,
    TOKENIZATIONS,
    KTOConfig,
)

__all__ = [
    "GPU_PRESET",
    "KTOConfig",
    "KTOTrainer",
    "make_offline_dataset",
    "sequence_logps_of",
    "peak_memory_mb",
    "run_train",
]

# Rows scored in one forward when the reference log-probs are precomputed (offline mode): a
# bound on the memory of one scoring pass, not on how many rows are scored.
SCORE_CHUNK = 512


def make_offline_dataset(model, tokenizer, n: int, seed: int) -> list[dict]:
    """``n`` rows ``{prompt, completion, label}`` sampled from ``model`` and judged once."""
    prompts = task.random_prompts(n, random.Random(seed))
    completions = sampling.sample_seeded(model, tokenizer, prompts, seed)
    labels = task.judge(prompts, completions)
    return [
        {"prompt": p, "completion": c, "label": y}
        for p, c, y in zip(prompts, completions, labels, strict=True)
    ]


def sequence_logps_of(model, batch: dict, logprobs: str = "log_softmax") -> torch.Tensor:
    """Sequence log-probs log pi(y|x) of a right-padded batch from ``sampling.encode`` (B,).

    ``logprobs="fused_head"``: TRL's arithmetic (``torch_ops.head_token_logps`` on the model's
    own forward), which the TRL-matching configuration needs to reproduce TRL's steps (lesson 07).
    """
    ids, mask = batch["input_ids"], batch["completion_mask"]
    # Logits are needed from the position before the first completion token on: the prompt
    # positions' LM head is skipped (the same sum; those terms are masked out anyway).
    start = max(0, int(mask.any(0).int().argmax()) - 1)
    if logprobs == "fused_head":
        out = model.base_model(input_ids=ids, attention_mask=batch["attention_mask"],
                               use_cache=False)  # fmt: skip
        hidden = out.last_hidden_state[:, start:-1]
        completion = mask[:, start + 1 :]
        targets = ids[:, start + 1 :].masked_fill(~completion, 0)
        per_token = torch_ops.head_token_logps(
            hidden.reshape(-1, hidden.shape[-1]), model.get_output_embeddings().weight,
            targets.reshape(-1),
        ).view(completion.shape)  # fmt: skip
        return per_token.masked_fill(~completion, 0).sum(-1)
    # fast.logits: the model's own forward in fewer calls (the same logits to ~4e-6).
    logits = fast.logits(model, ids, batch["attention_mask"], start=start)
    return torch_ops.sequence_logps_from_logits(logits, ids[:, start:], mask[:, start:])


def z0_pairs(batch_size: int, config: KTOConfig, device=None) -> torch.Tensor:
    """z0's mismatched pairs of a microbatch under ``config``: the cyclic shift of lesson 02,
    inside each of ``config.pairing_groups`` equal parts (one part per process, lesson 07)."""
    size = batch_size // config.pairing_groups
    shift = torch_ops.mismatched_indices(size, config.kl_pairing, device=device)
    return torch.cat([shift + g * size for g in range(config.pairing_groups)])


def learning_rate_factor(config: KTOConfig):
    """The schedule as a factor of ``lr`` for step s = 0, 1, ... (``LambdaLR``'s lambda)."""
    if config.schedule == "linear":  # transformers' get_linear_schedule_with_warmup(0, steps)
        return lambda s: max(0.0, (config.steps - s) / config.steps)
    return lambda s: min(1.0, (s + 1) / max(1, config.warmup_steps))


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
        # No weight decay on biases and LayerNorm weights (the 1-D tensors), as transformers'
        # Trainer builds AdamW (Trainer.get_decay_parameter_names).
        params = [p for p in self.policy.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.ndim >= 2]},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]  # fmt: skip
        self.opt = torch.optim.AdamW(
            groups, lr=cfg.lr, betas=cfg.adam_betas, weight_decay=cfg.weight_decay,
            fused=cfg.optimizer == "adamw_fused",
        )  # fmt: skip
        self._shift = z0_pairs(cfg.batch_size, cfg, device=self.device)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, learning_rate_factor(cfg))
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
            self._pretokenize()
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
        rows = [self.dataset[i] for i in self._next_rows()[0]]
        return ([r["prompt"] for r in rows], [r["completion"] for r in rows],
                [bool(r["label"]) for r in rows])  # fmt: skip

    def encode(self, prompts, completions) -> tuple[list[list[int]], list[list[int]]]:
        """Prompt and completion token ids of each row (``encode_rows`` with this config)."""
        return sampling.encode_rows(self.tokenizer, prompts, completions,
                                    self.config.tokenization)  # fmt: skip

    def _pretokenize(self) -> None:
        """Offline: tokenize every row ONCE and score it under the frozen reference.

        The reference never changes, so log pi_ref of each (prompt, completion) row is computed
        here, in chunks, and never again (TRL's ``precompute_ref_log_probs``); those of the
        mismatched pairs once per epoch, as soon as its order is drawn (``_draw_epoch``: the
        first epoch here, so that no step of it waits for the reference).
        """
        tok, rows, dev = self.tokenizer, self.dataset, self.device
        prompt_ids, completion_ids = self.encode([r["prompt"] for r in rows],
                                                 [r["completion"] for r in rows])  # fmt: skip
        limit = self.config.max_length
        if limit is not None:  # as TRL: a prompt that fills max_length leaves no completion
            keep = [i for i, ids in enumerate(prompt_ids) if len(ids) < limit]
            if len(keep) < self.config.batch_size:
                raise ValueError(
                    f"only {len(keep)} rows have a prompt shorter than max_length {limit}, "
                    f"fewer than one microbatch of {self.config.batch_size}: raise max_length."
                )
            self.dataset = rows = [rows[i] for i in keep]
            prompt_ids = [prompt_ids[i] for i in keep]
            completion_ids = [completion_ids[i] for i in keep]
        self._prompts, self._prompt_len = sampling.padded(prompt_ids, tok.pad_token_id, dev)
        self._completions, self._completion_len = sampling.padded(
            completion_ids, tok.pad_token_id, dev
        )
        self._labels = torch.tensor([bool(r["label"]) for r in rows], dtype=torch.bool,
                                    device=dev)  # fmt: skip
        every = torch.arange(len(rows), device=dev)
        self._ref_logps = self._score_reference(every, every)
        self._draw_epoch()

    def _pairs(self, prompt_rows: torch.Tensor, completion_rows: torch.Tensor) -> dict:
        """The right-padded batch of dataset prompts ``prompt_rows`` with completions
        ``completion_rows`` (offline mode; row indices on the device)."""
        return sampling.pairs(
            self._prompts[prompt_rows], self._prompt_len[prompt_rows],
            self._completions[completion_rows], self._completion_len[completion_rows],
            self.tokenizer.pad_token_id, self.config.max_length,
        )  # fmt: skip

    @torch.no_grad()
    def _score_reference(self, prompt_rows, completion_rows) -> torch.Tensor:
        """log pi_ref of dataset prompts paired with dataset completions, ``SCORE_CHUNK`` rows
        at a time (B,)."""
        out = [
            self.logps(self.reference, self._pairs(prompt_rows[i : i + SCORE_CHUNK],
                                                   completion_rows[i : i + SCORE_CHUNK]))
            for i in range(0, len(prompt_rows), SCORE_CHUNK)
        ]  # fmt: skip
        return torch.cat(out)

    def _draw_epoch(self) -> None:
        """Offline: queue the next epoch's order of the dataset rows and score the mismatched
        pairs of its microbatches under the reference: the order fixes them."""
        n = self.config.batch_size
        order = list(range(len(self.dataset)))
        if self.config.order == "shuffled":  # so that microbatches mix both labels
            self.rng.shuffle(order)
        # Rows left over from the last epoch (fewer than a microbatch) open this one.
        self._order += order
        k = len(self._order) // n
        rows = torch.tensor(self._order[: k * n], device=self.device).view(k, n)
        self._kl_ref = self._score_reference(rows.flatten(), rows[:, self._shift].flatten())

    def _next_rows(self) -> tuple[list[int], torch.Tensor]:
        """Offline: the next microbatch's dataset rows and the reference log-probs of its
        mismatched pairs (precomputed by ``_draw_epoch``)."""
        n = self.config.batch_size
        if len(self._order) < n:
            self._draw_epoch()
        rows, kl_ref = self._order[:n], self._kl_ref[:n]
        del self._order[:n]
        self._kl_ref = self._kl_ref[n:]
        return rows, kl_ref

    def _tensors(self) -> tuple[dict, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """One microbatch as tensors on the device: a batch of 2B rows (the B labelled pairs,
        then their B mismatched pairs), the labels, and the reference log-probs of both
        halves when they are precomputed (offline), else None."""
        if self.config.mode == "offline" and "next_batch" not in self.__dict__:
            rows, kl_ref = self._next_rows()
            idx = torch.tensor(rows, device=self.device)
            both = self._pairs(idx.repeat(2), torch.cat([idx, idx[self._shift]]))
            return both, self._labels[idx], self._ref_logps[idx], kl_ref
        prompts, completions, labels = self.next_batch()
        n = len(prompts)
        tok = self.tokenizer
        prompt_ids, completion_ids = self.encode(prompts, completions)
        p, p_len = sampling.padded(prompt_ids, tok.pad_token_id, self.device)
        c, c_len = sampling.padded(completion_ids, tok.pad_token_id, self.device)
        shift = self._shift if n == len(self._shift) else z0_pairs(
            n, self.config, device=self.device)  # fmt: skip
        both = sampling.pairs(p.repeat(2, 1), p_len.repeat(2), torch.cat([c, c[shift]]),
                              torch.cat([c_len, c_len[shift]]), tok.pad_token_id,
                              self.config.max_length)  # fmt: skip
        desirable = torch.tensor(labels, dtype=torch.bool, device=self.device)
        return both, desirable, None, None

    # -- one optimizer step ---------------------------------------------------------------

    def logps(self, model, batch: dict) -> torch.Tensor:
        """``sequence_logps_of`` with this run's ``config.logprobs``."""
        return sequence_logps_of(model, batch, self.config.logprobs)

    def step(self) -> dict:
        """One KTO step on one microbatch; returns (and records) its metrics.

        Forwards: the policy on the labelled pairs (with grad) and on the mismatched pairs
        (without); the reference on both at once, unless offline mode precomputed them.
        """
        cfg = self.config
        start = time.perf_counter()
        both, desirable, logp_ref, kl_logp_ref = self._tensors()
        n = len(desirable)
        batch = {k: v[:n] for k, v in both.items()}
        kl_batch = {k: v[n:] for k, v in both.items()}

        logp_theta = self.logps(self.policy, batch)
        with torch.no_grad():
            kl_logp_theta = self.logps(self.policy, kl_batch)
            if logp_ref is None:
                logp_ref, kl_logp_ref = self.logps(self.reference, both).split(n)
        # The estimate before the clamp: shows why "kl" so often reads 0 (lesson 02).
        r_mismatched = (kl_logp_theta - kl_logp_ref).cpu().numpy()
        kl_unclamped = core.z0_estimate(r_mismatched, clamp=False)
        loss, metrics = torch_ops.batch_kto_loss(
            logp_theta, logp_ref, kl_logp_theta, kl_logp_ref, desirable,
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
        labels = desirable.tolist()
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
    return KTOTrainer(copy.deepcopy(reference), reference, tokenizer, config, dataset=dataset)


@dataclass(frozen=True)
class GPUPreset:
    """The larger model of lesson 06's GPU section and of ``benchmarks/finetune.py --gpu``.

    A 20x larger GPT-2 (``lm.model.SIZES["large"]``: 256-dimensional, 6 layers, ~5M parameters),
    pretrained on the GPU first, then fine-tuned in microbatches of 64 at a lower learning rate.
    At the tiny size a GPU gains little (each step is a handful of small kernel launches); the
    larger model is where it pays.
    """

    size: str = "large"
    pretrain_lr: float = 1e-3  # below the tiny model's 3e-3: a larger model takes smaller steps
    pretrain_steps: int = 400  # as many as the shipped tiny reference
    batch_size: int = 64  # a GPU has room for 4x the CPU microbatch
    lr: float = 3e-4  # likewise below the tiny model's 1e-3

    def reference(self, steps: int | None = None, seed: int = 0, progress: bool = False):
        """A freshly pretrained reference model of this size on CUDA, and its tokenizer."""
        steps = self.pretrain_steps if steps is None else steps
        return pretrain(size=self.size, device="cuda", lr=self.pretrain_lr, steps=steps,
                        seed=seed, progress=progress)  # fmt: skip

    def config(self, **overrides) -> KTOConfig:
        """The fine-tune's KTOConfig on CUDA with this preset's batch size and learning rate."""
        return KTOConfig(**{"device": "cuda", "batch_size": self.batch_size, "lr": self.lr,
                            **overrides})  # fmt: skip


GPU_PRESET = GPUPreset()


def run_train(config: KTOConfig, out=None) -> dict:
    """``kto-course train``: train from the shipped reference; the summary (+ where it saved)."""
    start = time.perf_counter()
    trainer = from_reference(config)
    summary = trainer.train()
    summary["wall_seconds"] = round(time.perf_counter() - start, 2)
    if out:
        summary["saved_to"] = str(trainer.save(out))
    return summary
