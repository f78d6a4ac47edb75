"""TRL's KTOTrainer across processes with ``accelerate launch`` (lesson 07).

The same run as ``trl_bridge.run_trl`` (the shipped tiny GPT-2, the lesson-06 offline rows),
as a script that ``accelerate launch`` starts once per process. Rank 0 writes the per-step
metrics to ``OUT/metrics.json``.

    # 2 CPU processes on this machine (gloo), 8 rows per process = a global batch of 16:
    accelerate launch --multi_gpu --num_processes 2 -m kto_course.trl_launch --steps 20 \\
        --batch-size 8 --out runs/trl2
    # the same global batch on ONE process, for comparison:
    python -m kto_course.trl_launch --steps 20 --batch-size 16 --out runs/trl1
    # N GPUs: the same command with N (one process per GPU, NCCL instead of gloo):
    accelerate launch --multi_gpu --num_processes N -m kto_course.trl_launch --out runs/trlN
    # a real small model from a hub instead of the tiny GPT-2 (the rows are the same text):
    accelerate launch --multi_gpu --num_processes 2 -m kto_course.trl_launch --model NAME \\
        --out runs/real
    # torchrun starts the same processes: torchrun --nproc_per_node 2 -m kto_course.trl_launch

Why ``--multi_gpu`` on a CPU: ``accelerate launch --cpu --num_processes 2`` (accelerate 1.15)
starts ONE process unless an MPI launcher is configured (``--mpirun_hostfile``): the count is
ignored without a word. This script notices that case and stops with the command above.
``--multi_gpu`` spawns the processes through torch.distributed; on a machine without CUDA each
one trains on the CPU and they talk over gloo.

``--model NAME`` needs a reachable hub (or a local folder saved with ``save_pretrained``):
the machine this course was built on has no network and cannot fetch one. Without ``-m``
(older accelerate) pass the file instead: ``accelerate launch ... kto_course/trl_launch.py``.

How z0 is formed across processes. Each process holds ``--batch-size`` rows of the global
batch and pairs them among themselves (x_i with y_{i-1}). TRL takes each process's mean of its
mismatched log-ratios, gathers the means, averages them and then clamps at 0; HALOs sums over
processes and divides by the number of rows, then clamps. With equal shares (accelerate gives
every process the same number of rows) both equal the mean over the global batch, clamped once.
What differs from one process with the same global batch is only which mismatched pairs exist:
pairs never cross a process boundary. ``local_z0`` in the output records each process's
estimate before the clamp, so the lesson can show all three numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

__all__ = ["main", "parse_args", "validate", "world_size", "single_process_trap",
           "z0_across_processes"]  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m kto_course.trl_launch",
        description="TRL's KTOTrainer on the lesson-06 rows (run it under accelerate launch).",
    )
    p.add_argument("--steps", type=int, default=20, help="optimizer steps (default 20)")
    p.add_argument("--batch-size", type=int, default=8,
                   help="rows PER PROCESS in a step; z0 needs >= 2 (default 8)")  # fmt: skip
    p.add_argument("--rows", type=int, default=2048, help="offline rows to sample (2048)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0, help="seed of the offline rows")
    p.add_argument("--model", default=None,
                   help="hub model id or local folder (default: shipped tiny GPT-2)")  # fmt: skip
    p.add_argument("--out", required=True, help="folder for metrics.json (rank 0)")
    return p.parse_args(argv)


def world_size() -> int:
    """Processes in this launch, from the launcher's environment (no process group needed)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def single_process_trap() -> bool:
    """True under ``accelerate launch --cpu --num_processes N>1`` without MPI: accelerate set
    up a rendezvous (MASTER_ADDR) for N processes but started only this one."""
    return (
        "WORLD_SIZE" not in os.environ
        and "MASTER_ADDR" in os.environ
        and os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("true", "1")
    )


def validate(args, n_processes: int) -> str | None:
    """The first reason this launch cannot work, in the course's words, else None."""
    if single_process_trap():
        return (
            "accelerate launch --cpu started ONE process although more were asked for "
            "(without MPI it ignores --num_processes). Run: accelerate launch --multi_gpu "
            "--num_processes 2 -m kto_course.trl_launch ... (gloo on a CPU-only machine)."
        )
    if args.batch_size < 2:
        return (
            f"--batch-size {args.batch_size} per process: z0 needs >= 2 per process (each "
            "prompt is paired with ANOTHER row's completion on the same process; TRL refuses "
            "with 'Actual (not effective) batch size must be > 1'). Use --batch-size 2 or more."
        )
    if args.steps < 1:
        return f"--steps must be >= 1, got {args.steps}."
    if n_processes > args.rows:
        return (
            f"{n_processes} processes but only {args.rows} examples: every process needs its "
            "own rows. Use fewer processes or more --rows."
        )
    if args.rows < n_processes * args.batch_size:
        return (
            f"{args.rows} examples are fewer than one global batch of {n_processes} processes x "
            f"{args.batch_size} rows = {n_processes * args.batch_size}: use more --rows or a "
            "smaller --batch-size."
        )
    return None


def _fail(message: str) -> int:
    if rank() == 0:
        print(f"trl_launch: {message}", file=sys.stderr)
    return 2


def _load(args):
    from kto_course.lm import load_reference

    if args.model is None:
        policy, tokenizer = load_reference()
        reference, _ = load_reference()
        return policy, reference, tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        policy = AutoModelForCausalLM.from_pretrained(args.model)
        reference = AutoModelForCausalLM.from_pretrained(args.model)
    except OSError as exc:
        raise SystemExit(
            f"trl_launch: cannot load --model {args.model!r} ({exc.__class__.__name__}): it needs"
            " a reachable hub or a local folder saved with save_pretrained."
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return policy, reference, tokenizer


def _recording_trainer():
    """KTOTrainer that also records each process's z0 estimate BEFORE gathering and clamping."""
    from trl import KTOTrainer

    class Recording(KTOTrainer):
        local_z0: list[float]

        def _compute_kl_logps(self, model, batch):
            kl_logps = super()._compute_kl_logps(model, batch)
            if kl_logps is not None and self.model.training:
                if model is self.ref_model:  # second call of a step: the reference
                    self.local_z0.append(float((self._kl_theta - kl_logps).mean()))
                else:
                    self._kl_theta = kl_logps
            return kl_logps

    return Recording


def z0_across_processes(per_process) -> tuple[float, float]:
    """z0 of one step from each process's mismatched log-ratios, as (TRL, HALOs) form it.

    ``per_process``: one 1-D sequence per process, the log-ratios r(x_i, y_{i-1}) of the
    mismatched pairs it built from its own rows. TRL gathers each process's MEAN and clamps
    their average (each process counts once); HALOs sums over all processes and divides by the
    total number of rows, then clamps. Both combine first and clamp once (lesson 02's clamp).
    """
    import numpy as np

    parts = [np.asarray(r, dtype=float).ravel() for r in per_process]
    trl = max(0.0, float(np.mean([r.mean() for r in parts])))
    halos = max(0.0, float(sum(r.sum() for r in parts) / sum(r.size for r in parts)))
    return trl, halos


def _train_runtime(trainer) -> float | None:
    runtimes = [log["train_runtime"] for log in trainer.state.log_history if "train_runtime" in log]
    return runtimes[-1] if runtimes else None


def main(argv=None) -> int:
    from kto_course import trl_bridge

    try:
        trl_bridge.require_trl()
    except trl_bridge.TRLUnavailable as exc:
        return _fail(str(exc))
    args = parse_args(argv)
    n = world_size()
    problem = validate(args, n)
    if problem:
        return _fail(problem)

    import torch

    torch.set_num_threads(1)  # one thread per process: processes x threads <= cores
    from accelerate import PartialState
    from accelerate.utils import gather_object

    from kto_course.train import make_offline_dataset

    start = time.perf_counter()
    policy, reference, tokenizer = _load(args)
    rows = make_offline_dataset(reference, tokenizer, args.rows, args.seed)  # same on every rank
    cls = _recording_trainer()
    trainer = trl_bridge.make_trainer(
        policy, reference, tokenizer, rows, args.steps, trainer_cls=cls,
        batch_size=args.batch_size, lr=args.lr, beta=args.beta,
        # gloo: the CPU backend of torch.distributed (only set when there are processes to join)
        ddp_backend="gloo" if n > 1 and not torch.cuda.is_available() else None,
        ddp_find_unused_parameters=False if n > 1 else None,  # every parameter gets a gradient
    )  # fmt: skip
    trainer.local_z0 = []
    with trl_bridge.quiet():
        trainer.train()
    state = PartialState()
    local = gather_object([trainer.local_z0])  # one list per process, in rank order
    if state.is_main_process:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        record = {
            "processes": state.num_processes,
            "per_device_batch": args.batch_size,
            "global_batch": state.num_processes * args.batch_size,
            "steps": trl_bridge.step_logs(trainer),
            "train_runtime": _train_runtime(trainer),
            "local_z0": local,  # [process][step]: each process's mean before gather and clamp
            "seconds": round(time.perf_counter() - start, 2),
            "model": args.model or "tiny GPT-2 (shipped)",
        }
        (out / "metrics.json").write_text(json.dumps(record, indent=1) + "\n")
        print(f"trl_launch: {len(record['steps'])} steps on {state.num_processes} process(es), "
              f"metrics in {out / 'metrics.json'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
