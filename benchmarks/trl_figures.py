"""Figures for lesson 07 (TRL): parity, speed, choice effects, unpairing, 2 processes.

    python benchmarks/trl_figures.py                 # everything, ~3-5 min on 2 busy cores
    python benchmarks/trl_figures.py --skip-launch   # without the 2-process accelerate run

Prints one JSON object (and writes it to --out). Measures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from kto_course import figures
from kto_course import trl_bridge as tb
from kto_course.lm import load_reference
from kto_course.train import make_offline_dataset

METRICS = ("loss", "kl", "rewards/chosen", "rewards/rejected", "rewards/margins",
           "logps/chosen", "logps/rejected", "grad_norm", "learning_rate")  # fmt: skip


def fresh():
    return load_reference()[0], load_reference()[0]


def parity(rows, tok, steps, batch):
    trl_steps = tb.run_trl(*fresh(), tok, rows, steps, batch_size=batch)
    ours = tb.run_trl_matching(*fresh(), tok, rows, steps, batch_size=batch)
    return trl_steps, {m: figures.max_diff(ours, trl_steps, m) for m in METRICS}


def speed(rows, tok, steps, batch, repeats=2):
    best = {}
    for _ in range(repeats):
        trainer = tb.make_trainer(*fresh(), tok, rows, steps, batch_size=batch)
        start = time.perf_counter()
        with tb.quiet():
            trainer.train()
        best["trl"] = max(best.get("trl", 0), steps / (time.perf_counter() - start))
        policy, ref = fresh()
        start = time.perf_counter()
        tb.run_trl_matching(policy, ref, tok, rows, steps, batch_size=batch)
        best["matching"] = max(best.get("matching", 0), steps / (time.perf_counter() - start))
        policy, ref = fresh()
        start = time.perf_counter()
        tb.run_trl_matching(policy, ref, tok, rows, steps, batch_size=batch,
                            choices={"logprobs": "log_softmax"})  # fmt: skip
        best["matching_log_softmax"] = max(best.get("matching_log_softmax", 0),
                                           steps / (time.perf_counter() - start))  # fmt: skip
    return {k: round(v, 2) for k, v in best.items()}


def launch(rows_n, steps, per_device, out):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu",
           "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", str(port), "-m",
           "kto_course.trl_launch", "--steps", str(steps), "--batch-size", str(per_device),
           "--rows", str(rows_n), "--out", str(out)]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode:
        return {"error": done.stderr[-2000:]}
    record = json.loads((Path(out) / "metrics.json").read_text())
    record["wall_seconds"] = round(wall, 1)
    return record


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--skip-launch", action="store_true")
    p.add_argument("--out", default="benchmarks/trl_figures.json")
    a = p.parse_args()
    torch.set_num_threads(1)
    model, tok = load_reference()
    rows = make_offline_dataset(model, tok, 2048, 0)
    fig = {"threads": 1, "steps": a.steps, "rows": len(rows),
           "desirable_share": sum(r["label"] for r in rows) / len(rows)}  # fmt: skip

    trl16, fig["parity_b16"] = parity(rows, tok, a.steps, 16)
    _, fig["parity_b8"] = parity(rows, tok, a.steps, 8)
    fig["trl_b16_steps"] = [{k: s[k] for k in ("step", "loss", "kl") if k in s} for s in trl16]
    fig["speed_b16_steps_per_s"] = speed(rows, tok, 40, 16)
    fig["choice_effects_b16"] = figures.choice_effects(
        fresh, tok, rows, a.steps, trl_history=trl16, metrics=figures.PARITY_METRICS,
        batch_size=16)  # fmt: skip
    pairs = figures.paired_rows(rows)
    fig["unpairing"] = {"pairs": len(pairs), **figures.unpairing_pitfall(pairs, batch_size=16)}

    if not a.skip_launch:
        with tempfile.TemporaryDirectory() as out:
            two = launch(len(rows), a.steps, 8, out)
        fig["two_process"] = two
        if "steps" in two:
            one = tb.run_trl(*fresh(), tok, rows, a.steps, batch_size=16)
            halves = tb.run_trl_matching(*fresh(), tok, rows, a.steps, batch_size=16, kl_group=8)
            whole = tb.run_trl_matching(*fresh(), tok, rows, a.steps, batch_size=16)
            local = two["local_z0"]
            mean = [(x + y) / 2 for x, y in zip(*local, strict=True)]
            fig["z0_across_processes"] = {
                "kl_2proc": [s["kl"] for s in two["steps"]],
                "kl_1proc_b16": [s["kl"] for s in one],
                "local_z0_rank0": local[0],
                "local_z0_rank1": local[1],
                "mean_of_means_unclamped": mean,
                "1proc_b16_pairs_in_halves_unclamped": [h["kl_unclamped"] for h in halves],
                "1proc_b16_pairs_across_16_unclamped": [w["kl_unclamped"] for w in whole],
                "clamp_each_then_average": [(max(0, x) + max(0, y)) / 2
                                            for x, y in zip(*local, strict=True)],
                "max_diff_loss_2proc_vs_1proc_b16": figures.max_diff(two["steps"], one, "loss"),
                "max_diff_kl_2proc_vs_1proc_b16": figures.max_diff(two["steps"], one, "kl"),
                "max_diff_mean_of_means_vs_halves": max(
                    abs(m - h["kl_unclamped"]) for m, h in zip(mean, halves, strict=True)),
                "max_diff_mean_of_means_vs_whole": max(
                    abs(m - w["kl_unclamped"]) for m, w in zip(mean, whole, strict=True)),
            }  # fmt: skip
    text = json.dumps(fig, indent=1)
    Path(a.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
