"""Benchmark: the course's offline KTO step against TRL's KTOTrainer on the same setup.

    .venv/bin/python benchmarks/vs_trl.py                 # 3 rounds, 1 thread (~2-3 min)
    .venv/bin/python benchmarks/vs_trl.py --rounds 5 --threads 2 --steps 80

Same model (the shipped tiny GPT-2), the same 2048 judged offline rows (lesson 06's
``make_offline_dataset(reference, tok, 2048, seed=0)``), batch 16, fp32. Each measurement runs
in a FRESH process with a fixed torch thread count, and the kinds alternate round by round
(course, TRL fp32, TRL CPU defaults, floor, legacy, course, ...): on a shared machine only
figures from one interleaved run compare. Reported: the median steps/s of each kind over the
rounds (timed from step 5 to the last step, so construction and the first steps are left out),
the ratios the issue asks for (course/TRL fp32 >= 2, course/floor >= 0.9) and the largest
per-step loss difference between the course's trainer and the LEGACY step (the implementation
before the speed-up, kept below: four model forwards, per-step tokenization, non-fused AdamW)
over 20 steps (must be <= 1e-5).

Kinds:
- ``course``: ``kto_course.train.KTOTrainer`` in offline mode (reference log-probs precomputed:
  the rows' and the first epoch's mismatched pairs' when it is built, as TRL's
  ``precompute_ref_log_probs`` does before its first step; lean forward, fused AdamW);
- ``trl_fp32``: TRL's ``KTOTrainer`` as lesson 07 drives it (``trl_bridge.make_trainer``: fp32,
  no gradient checkpointing, fused AdamW);
- ``trl_defaults``: TRL's ``KTOTrainer`` with its own ``KTOConfig`` defaults on the CPU
  (bf16 autocast, gradient checkpointing);
- ``floor``: a bare loop of exactly the pieces of a step on pre-tokenized batches: one forward
  with grad + backward and one no-grad forward (the mismatched pairs) through the model's own
  ``forward``, reference log-probs precomputed, grad clipping, fused AdamW;
- ``legacy``: the step as it was before (see above).

TRL is an optional extra: ``pip install -e '.[trl]'`` (the TRL kinds are skipped without it).
Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

KINDS = ("course", "trl_fp32", "trl_defaults", "floor", "legacy")
WARMUP = 5  # steps before the clock starts
PARITY_STEPS = 20


def _setup(threads: int):
    import torch

    torch.set_num_threads(threads)
    from kto_course.lm.model import load_reference, quiet_transformers
    from kto_course.train import make_offline_dataset

    quiet_transformers()
    reference, tok = load_reference("cpu")
    rows = make_offline_dataset(reference, tok, 2048, 0)
    return reference, tok, rows


def _config(steps: int, threads: int, **overrides):
    from kto_course.train import KTOConfig

    return KTOConfig(mode="offline", steps=steps, device="cpu", threads=threads,
                     **overrides)  # fmt: skip


def _legacy_trainer(reference, tok, rows, steps, threads):
    """The course's trainer with the step it had before the speed-up (losses to compare)."""
    import torch

    from kto_course import core, torch_ops
    from kto_course.lm import load_reference, sampling
    from kto_course.train import KTOTrainer

    class Legacy(KTOTrainer):
        def step(self):
            cfg, tok = self.config, self.tokenizer
            start = time.perf_counter()
            prompts, completions, labels = self.next_batch()
            desirable = torch.tensor(labels, dtype=torch.bool)
            batch = sampling.encode(tok, prompts, completions)
            shifted = torch_ops.mismatched_indices(len(prompts)).tolist()
            kl_batch = sampling.encode(tok, prompts, [completions[j] for j in shifted])

            def logps(model, b):
                logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                               use_cache=False).logits  # fmt: skip
                return torch_ops.sequence_logps_from_logits(
                    logits, b["input_ids"], b["completion_mask"]
                )

            logp_theta = logps(self.policy, batch)
            with torch.no_grad():
                logp_ref = logps(self.reference, batch)
                kl_logp_theta = logps(self.policy, kl_batch)
                kl_logp_ref = logps(self.reference, kl_batch)
            kl_unclamped = core.z0_estimate((kl_logp_theta - kl_logp_ref).numpy(), clamp=False)
            loss, metrics = torch_ops.batch_kto_loss(
                logp_theta, logp_ref, kl_logp_theta, kl_logp_ref, desirable,
                beta=cfg.beta, lambda_D=cfg.lambda_D, lambda_U=cfg.lambda_U,
                loss_type=cfg.loss_type,
            )  # fmt: skip
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(),
                                                       cfg.max_grad_norm)  # fmt: skip
            self.opt.step()
            self.sched.step()
            self.train_seconds += time.perf_counter() - start
            record = {"step": len(self.history) + 1, "loss": loss.item(), **metrics,
                      "kl_unclamped": kl_unclamped, "grad_norm": float(grad_norm)}  # fmt: skip
            self.history.append(record)
            return record

        def _pretokenize(self):  # the legacy step tokenizes every step
            pass

        def next_batch(self):
            n = self.config.batch_size
            if len(self._order) < n:
                order = list(range(len(self.dataset)))
                self.rng.shuffle(order)
                self._order += order
            chunk = [self.dataset[i] for i in self._order[:n]]
            del self._order[:n]
            return ([r["prompt"] for r in chunk], [r["completion"] for r in chunk],
                    [bool(r["label"]) for r in chunk])  # fmt: skip

    policy, _ = load_reference("cpu")
    cfg = _config(steps, threads, optimizer="adamw")
    return Legacy(policy, reference, tok, cfg, dataset=rows)


def _time_steps(step, steps: int) -> float:
    for _ in range(WARMUP):
        step()
    start = time.perf_counter()
    for _ in range(steps - WARMUP):
        step()
    return (steps - WARMUP) / (time.perf_counter() - start)


def _trl_rate(reference, tok, rows, steps, defaults: bool) -> float:
    import tempfile

    from transformers import TrainerCallback

    from kto_course import trl_bridge
    from kto_course.lm import load_reference

    trl_bridge.require_trl()
    marks = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            marks[state.global_step] = time.perf_counter()

    policy, _ = load_reference("cpu")
    args = None
    if defaults:  # TRL's own KTOConfig defaults on a CPU; only what the run needs is set
        from trl import KTOConfig

        with trl_bridge.quiet():
            args = KTOConfig(output_dir=tempfile.mkdtemp(prefix="kto-trl-"), max_steps=steps,
                             per_device_train_batch_size=16, learning_rate=1e-3, use_cpu=True,
                             report_to="none", save_strategy="no", disable_tqdm=True,
                             logging_steps=1)  # fmt: skip
    trainer = trl_bridge.make_trainer(policy, reference, tok, rows, steps, args=args,
                                      batch_size=16, device="cpu")  # fmt: skip
    trainer.add_callback(Clock())
    with trl_bridge.quiet():
        trainer.train()
    return (steps - WARMUP) / (marks[steps] - marks[WARMUP])


def _floor_rate(reference, tok, rows, steps) -> float:
    """One fwd+bwd and one no-grad fwd through the model's own forward, reference log-probs
    precomputed, clip, fused AdamW: on batches tokenized before the clock starts."""
    import random

    import torch

    from kto_course import torch_ops
    from kto_course.lm import load_reference, sampling

    policy, _ = load_reference("cpu")
    policy.train()
    order = list(range(len(rows)))
    random.Random(0).shuffle(order)
    batches = []
    shift = torch_ops.mismatched_indices(16).tolist()
    for k in range(steps):
        chunk = [rows[i] for i in order[16 * k : 16 * k + 16]]
        prompts = [r["prompt"] for r in chunk]
        completions = [r["completion"] for r in chunk]
        b = sampling.encode(tok, prompts, completions)
        kb = sampling.encode(tok, prompts, [completions[j] for j in shift])
        batches.append((b, kb, torch.tensor([bool(r["label"]) for r in chunk])))

    def logps(model, b):
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                       use_cache=False).logits  # fmt: skip
        return torch_ops.sequence_logps_from_logits(logits, b["input_ids"], b["completion_mask"])

    with torch.no_grad():
        refs = [(logps(reference, b), logps(reference, kb)) for b, kb, _ in batches]
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-3, fused=True)
    it = iter(range(steps))

    def step():
        k = next(it)
        (b, kb, d), (ref, kref) = batches[k], refs[k]
        lp = logps(policy, b)
        with torch.no_grad():
            klp = logps(policy, kb)
        loss, _ = torch_ops.batch_kto_loss(lp, ref, klp, kref, d)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        opt.step()
        float(loss)

    return _time_steps(step, steps)


def worker(kind: str, steps: int, threads: int) -> dict:
    """One measurement in this process: {"kind", "steps_per_s"} (+ "losses" for parity)."""
    reference, tok, rows = _setup(threads)
    if kind in ("trl_fp32", "trl_defaults"):
        return {"kind": kind,
                "steps_per_s": _trl_rate(reference, tok, rows, steps, kind == "trl_defaults")}
    if kind == "floor":
        return {"kind": kind, "steps_per_s": _floor_rate(reference, tok, rows, steps)}
    if kind == "legacy":
        trainer = _legacy_trainer(reference, tok, rows, steps, threads)
    else:
        from kto_course.lm import load_reference
        from kto_course.train import KTOTrainer

        start = time.perf_counter()
        trainer = KTOTrainer(load_reference("cpu")[0], reference, tok,
                             _config(steps, threads), dataset=rows)  # fmt: skip
        setup = time.perf_counter() - start  # tokenizing, and the reference's precomputed scores
        return {"kind": kind, "steps_per_s": _time_steps(trainer.step, steps), "setup_s": setup}
    return {"kind": kind, "steps_per_s": _time_steps(trainer.step, steps)}


def parity(threads: int) -> dict:
    """Per-step losses of the course's trainer and the legacy step over 20 steps."""
    from kto_course.lm import load_reference
    from kto_course.train import KTOTrainer

    reference, tok, rows = _setup(threads)
    out = {}
    for name, optimizer in (("course", "adamw_fused"), ("course_adamw", "adamw")):
        trainer = KTOTrainer(load_reference("cpu")[0], reference, tok,
                             _config(PARITY_STEPS, threads, optimizer=optimizer),
                             dataset=rows)  # fmt: skip
        out[name] = [trainer.step()["loss"] for _ in range(PARITY_STEPS)]
    legacy = _legacy_trainer(reference, tok, rows, PARITY_STEPS, threads)
    out["legacy"] = [legacy.step()["loss"] for _ in range(PARITY_STEPS)]
    return out


def _run(args, *extra) -> dict | None:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TQDM_DISABLE": "1"}
    cmd = [sys.executable, __file__, "--threads", str(args.threads), "--steps", str(args.steps),
           *extra]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        print(f"  {' '.join(extra)} failed:\n{proc.stderr[-1500:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="fresh processes per kind")
    p.add_argument("--steps", type=int, default=60, help="steps per measurement")
    p.add_argument("--threads", type=int, default=1, help="torch threads in every process")
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    p.add_argument("--worker", choices=KINDS, help=argparse.SUPPRESS)
    p.add_argument("--parity", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps, args.threads)))
        return 0
    if args.parity:
        print(json.dumps(parity(args.threads)))
        return 0

    kinds = list(args.kinds)
    try:
        from kto_course import trl_bridge

        trl_bridge.require_trl()
    except ImportError as exc:
        print(f"TRL kinds skipped: {exc}  (install the extra: pip install -e '.[trl]')")
        kinds = [k for k in kinds if not k.startswith("trl")]
    print(f"threads {args.threads}, {args.steps} steps per run ({WARMUP} untimed), "
          f"{args.rounds} rounds, load average at start {os.getloadavg()}")  # fmt: skip
    rates: dict[str, list[float]] = {k: [] for k in kinds}
    setups = []
    for r in range(args.rounds):
        for kind in kinds:
            res = _run(args, "--worker", kind)
            if res:
                rates[kind].append(res["steps_per_s"])
                setups += [res["setup_s"]] if "setup_s" in res else []
                print(f"  round {r + 1} {kind:<13} {res['steps_per_s']:6.2f} steps/s")
    med = {k: statistics.median(v) for k, v in rates.items() if v}
    print("\nmedian steps/s (min-max):")
    for k, v in rates.items():
        if v:
            print(f"  {k:<13} {med[k]:6.2f}  ({min(v):.2f}-{max(v):.2f})")
    if "course" in med:
        for other, target in (("trl_fp32", 2.0), ("floor", 0.9), ("trl_defaults", None),
                              ("legacy", None)):  # fmt: skip
            if other in med:
                ok = "" if target is None else f"  (target >= {target}: "
                ok += "" if target is None else ("met)" if med["course"] / med[other] >= target
                                                 else "NOT met)")  # fmt: skip
                print(f"  course / {other:<13} {med['course'] / med[other]:5.2f}{ok}")
    if setups:  # what the steps/s leave out, as TRL's precompute_ref_log_probs would
        print("  course setup, not in its steps/s (tokenizing the rows; the reference's "
              "scores of the rows and of epoch 1's mismatched pairs): "
              f"median {statistics.median(setups):.2f} s")
    losses = _run(args, "--parity")
    if losses:
        for name in ("course", "course_adamw"):
            diff = max(abs(a - b) for a, b in zip(losses[name], losses["legacy"], strict=True))
            print(f"max |loss diff| over {PARITY_STEPS} steps, {name} vs legacy: {diff:.2e}"
                  f"  ({'<=' if diff <= 1e-5 else '>'} 1e-5)")  # fmt: skip
    print(f"load average at end {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
