"""Lesson 05's toy problem: KTO against DPO on a policy small enough to train in a second.

The "language model" is a table of logits ``theta[x, y]``: P prompts, each with the same K
candidate completions, and ``log pi_theta(y|x) = log_softmax(theta[x])[y]``. That number plays
the role of a SEQUENCE log-prob (lesson 01), so every object of lessons 01-04 (``r``, ``z0``,
mismatched pairs, the KTO and DPO losses) applies unchanged. A hidden true utility ``u[x, y]``
stands in for human judgement: preference pairs are drawn from it by Bradley-Terry, and we can
measure what a trained policy is really worth (its expected utility) and how far it moved from
the reference (its KL).

The two trainers call the course's reference losses: ``torch_ops.batch_kto_loss`` for KTO and
``torch_ops.dpo_loss`` (the torch twin of ``core.dpo_loss``) for DPO. Everything is seeded: a
run is deterministic.

Run one of the lesson's experiments from a shell::

    .venv/bin/python -c "from kto_course import toy; print(toy.ordering_experiment(seeds=(0,)))"
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from kto_course import core, system, torch_ops

__all__ = [
    "ToyProblem",
    "make_problem",
    "sample_pairs",
    "pairs_to_unpaired",
    "chosen_first",
    "batch_label_shares",
    "balanced_order",
    "flip_labels",
    "swap_pairs",
    "drop_desirable",
    "policy_logps",
    "dpo_batch_loss",
    "kto_batch_loss",
    "evaluate",
    "train_dpo",
    "train_kto",
]

# Defaults of the toy, chosen so one training run takes about a second on a 2-core CPU.
N_PROMPTS = 16  # prompts x
N_COMPLETIONS = 8  # candidate completions y per prompt (the same K for every prompt)
N_PAIRS = 256  # preference pairs in the training set
BETA = 0.1  # TRL's and the paper's default for both losses
LR = 0.05  # Adam on a logits table tolerates a far larger step than an LLM's 1e-6
EPOCHS = 8
PAIR_BATCH = 8  # DPO: pairs per step; KTO gets 2 * PAIR_BATCH rows, so both take equal steps


@dataclass(frozen=True)
class ToyProblem:
    """The hidden truth and the reference policy of the toy (lesson 05)."""

    utility: np.ndarray  # (P, K) true utility u[x, y]; labels and preferences come from it
    theta_ref: np.ndarray  # (P, K) logits of the reference policy (the "SFT model")

    @property
    def n_prompts(self) -> int:
        return self.utility.shape[0]

    @property
    def n_completions(self) -> int:
        return self.utility.shape[1]


def make_problem(n_prompts: int = N_PROMPTS, n_completions: int = N_COMPLETIONS, seed: int = 0):
    """A random toy problem: utilities ~ N(0, 1.5^2), reference logits ~ N(0, 1)."""
    rng = np.random.default_rng(seed)
    utility = rng.normal(0.0, 1.5, size=(n_prompts, n_completions))
    theta_ref = rng.normal(0.0, 1.0, size=(n_prompts, n_completions))
    return ToyProblem(utility=utility, theta_ref=theta_ref)


def _ref_probs(problem: ToyProblem) -> np.ndarray:
    logits = problem.theta_ref - problem.theta_ref.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------------------------------
# Data: preference pairs, their unpaired form, and the corruptions the experiments apply
# ---------------------------------------------------------------------------------------------


def sample_pairs(problem: ToyProblem, n_pairs: int = N_PAIRS, seed: int = 0) -> list[dict]:
    """Preference pairs ``{"prompt", "chosen", "rejected"}`` as an annotator would give them.

    Two distinct completions are sampled from the reference policy (the model that generated
    the data), and the annotator prefers ``a`` over ``b`` with Bradley-Terry probability
    sigmoid(u[x, a] - u[x, b]): close calls are often "wrong", as with real annotators.
    """
    rng = np.random.default_rng(seed)
    probs = _ref_probs(problem)
    pairs = []
    for _ in range(n_pairs):
        x = int(rng.integers(problem.n_prompts))
        a, b = (int(y) for y in rng.choice(problem.n_completions, 2, replace=False, p=probs[x]))
        if rng.random() >= core.sigmoid(problem.utility[x, a] - problem.utility[x, b]):
            a, b = b, a
        pairs.append({"prompt": x, "chosen": a, "rejected": b})
    return pairs


def pairs_to_unpaired(pairs: list[dict], rng: np.random.Generator) -> list[dict]:
    """Each pair becomes two rows, ``(prompt, chosen, True)`` and ``(prompt, rejected, False)``,
    then the rows are shuffled with ``rng`` (lesson 05, exercise 1).

    Without the shuffle, all chosen rows come first: sequential microbatches are then
    one-label, the pitfall of TRL's chunked conversion (KTO_FACTS, "Data").
    """
    rows = chosen_first(pairs)
    order = rng.permutation(len(rows))
    return [rows[i] for i in order]


def chosen_first(pairs: list[dict]) -> list[dict]:
    """The unshuffled conversion: all chosen rows, then all rejected rows (the pitfall)."""
    chosen = [{"prompt": p["prompt"], "completion": p["chosen"], "label": True} for p in pairs]
    rejected = [{"prompt": p["prompt"], "completion": p["rejected"], "label": False} for p in pairs]
    return chosen + rejected


def batch_label_shares(labels, batch_size: int) -> np.ndarray:
    """Share of desirable labels in each sequential microbatch, the last partial one included
    (lesson 05: the measure of exercise 2's orders). 0 or 1 marks a one-label microbatch."""
    labels = np.asarray(labels, dtype=bool)
    starts = range(0, len(labels), batch_size)
    return np.array([labels[s : s + batch_size].mean() for s in starts])


def balanced_order(labels, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """A permutation of the rows whose every sequential microbatch of m rows holds m * n_D / n
    desirable rows, rounded down or up; the last microbatch may be shorter (lesson 05,
    exercise 2). The rows of each label come in an order drawn by ``rng``.

    A shuffle mixes the labels only on average: with a rare label, some microbatches get none
    of it. Here the count of desirable rows read by the end of each microbatch is
    floor(end * n_D / n): a difference of two such floors is m * n_D / n rounded down or up,
    and the counts add up to n_D, so no rounding error is ever carried into the last one.
    """
    labels = np.asarray(labels, dtype=bool)
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be a whole number, at least 1, got {batch_size!r}.")
    batch_size = int(batch_size)
    n, n_D = len(labels), int(labels.sum())
    desirable = rng.permutation(np.flatnonzero(labels))
    undesirable = rng.permutation(np.flatnonzero(~labels))
    ends = np.minimum(np.arange(batch_size, n + batch_size, batch_size), n)
    d_ends = ends * n_D // n  # desirable rows read by the end of each microbatch
    order, d_start, u_start = [], 0, 0
    for end, d_end in zip(ends, d_ends, strict=True):
        u_end = end - d_end
        order += [desirable[d_start:d_end], undesirable[u_start:u_end]]
        d_start, u_start = d_end, u_end
    return np.concatenate(order).astype(np.int64) if order else np.zeros(0, np.int64)


def flip_labels(labels, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """A copy of ``labels`` with exactly round(fraction * n) of them flipped, at positions drawn
    by ``rng`` without replacement (lesson 05, exercise 4). The input is left unchanged."""
    labels = np.asarray(labels, dtype=bool)
    n_flip = round(fraction * len(labels))
    flipped = labels.copy()
    where = rng.choice(len(labels), size=n_flip, replace=False)
    flipped[where] = ~flipped[where]
    return flipped


def swap_pairs(pairs: list[dict], fraction: float, rng: np.random.Generator) -> list[dict]:
    """DPO's label noise: chosen and rejected exchanged in round(fraction * n) pairs."""
    swap = flip_labels(np.zeros(len(pairs), dtype=bool), fraction, rng)
    return [
        {"prompt": p["prompt"], "chosen": p["rejected"], "rejected": p["chosen"]} if s else dict(p)
        for p, s in zip(pairs, swap, strict=True)
    ]


def drop_desirable(rows: list[dict], keep: float, rng: np.random.Generator) -> list[dict]:
    """Class imbalance: keep only round(keep * n_D) desirable rows (all undesirable rows stay)."""
    desirable = [i for i, row in enumerate(rows) if row["label"]]
    kept = set(rng.choice(desirable, size=round(keep * len(desirable)), replace=False).tolist())
    return [row for i, row in enumerate(rows) if not row["label"] or i in kept]


# ---------------------------------------------------------------------------------------------
# The policy and the two batch losses
# ---------------------------------------------------------------------------------------------


def policy_logps(theta: torch.Tensor) -> torch.Tensor:
    """log pi(y|x) for every (x, y): a log-softmax over the completions of each prompt."""
    return F.log_softmax(theta, dim=-1)


def dpo_batch_loss(theta, theta_ref, prompt, chosen, rejected, beta: float = BETA):
    """DPO on a batch of pairs: mean of -log sigmoid(beta * (r_w - r_l)) (lesson 05, exercise 3).

    ``torch_ops.dpo_loss`` (the torch twin of ``core.dpo_loss``) on the toy policy. ``prompt``,
    ``chosen``, ``rejected`` are LongTensors (B,); the result is a scalar that carries theta's
    gradient.
    """
    logp_theta, logp_ref = policy_logps(theta), policy_logps(theta_ref)
    r_w = logp_theta[prompt, chosen] - logp_ref[prompt, chosen]
    r_l = logp_theta[prompt, rejected] - logp_ref[prompt, rejected]
    return torch_ops.dpo_loss(r_w, r_l, beta).mean()


def kto_batch_loss(
    theta, theta_ref, prompt, completion, desirable, beta=BETA, lambda_D=1.0, lambda_U=1.0
):
    """KTO on a microbatch of rows: ``torch_ops.batch_kto_loss`` with z0 from mismatched pairs.

    Prompt x_i is paired with completion y_{i-1} (TRL's shift, lesson 02); those log-probs are
    computed without gradient, so z0 only sets where the loss saturates. Returns (loss, metrics).
    """
    logp_theta, logp_ref = policy_logps(theta), policy_logps(theta_ref)
    with torch.no_grad():
        shifted = completion[torch_ops.mismatched_indices(len(prompt))]
        kl_logp_theta = logp_theta[prompt, shifted]
        kl_logp_ref = logp_ref[prompt, shifted]
    return torch_ops.batch_kto_loss(
        logp_theta[prompt, completion],
        logp_ref[prompt, completion],
        kl_logp_theta,
        kl_logp_ref,
        desirable,
        beta=beta,
        lambda_D=lambda_D,
        lambda_U=lambda_U,
    )


def evaluate(problem: ToyProblem, theta) -> dict:
    """What a policy is worth: expected true utility E_pi[u] and KL(pi || pi_ref), both
    averaged over prompts; plus the reference's utility and the best achievable one."""
    theta = torch.as_tensor(theta, dtype=torch.float64)
    with torch.no_grad():
        logp = policy_logps(theta).numpy()
    logp_ref = policy_logps(torch.as_tensor(problem.theta_ref)).numpy()
    p, p_ref = np.exp(logp), np.exp(logp_ref)
    return {
        "utility": float((p * problem.utility).sum(axis=1).mean()),
        "kl": float((p * (logp - logp_ref)).sum(axis=1).mean()),
        "utility_ref": float((p_ref * problem.utility).sum(axis=1).mean()),
        "utility_best": float(problem.utility.max(axis=1).mean()),
    }


# ---------------------------------------------------------------------------------------------
# The trainers: sequential microbatches, as TRL feeds KTO (the data's order is the caller's)
# ---------------------------------------------------------------------------------------------




def _train(problem, n_examples, batch_size, epochs, lr, batch_loss) -> dict:
    with system.one_thread():
        return _train_loop(problem, n_examples, batch_size, epochs, lr, batch_loss)


def _train_loop(problem, n_examples, batch_size, epochs, lr, batch_loss) -> dict:
    theta_ref = torch.as_tensor(problem.theta_ref, dtype=torch.float64)
    theta = theta_ref.clone().requires_grad_(True)  # the policy starts AT the reference
    optimizer = torch.optim.Adam([theta], lr=lr)
    losses, kls = [], []
    for _ in range(epochs):
        for start in range(0, n_examples, batch_size):
            index = torch.arange(start, min(start + batch_size, n_examples))
            loss, z0 = batch_loss(theta, theta_ref, index)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            kls.append(z0)
    result = evaluate(problem, theta.detach())
    result.update(losses=np.array(losses), z0=np.array(kls), theta=theta.detach().numpy())
    return result


def train_dpo(problem, pairs, beta=BETA, epochs=EPOCHS, batch_size=PAIR_BATCH, lr=LR) -> dict:
    """Train the toy policy with DPO on ``pairs`` in their order; returns ``evaluate``'s dict
    plus ``losses`` (one per step) and the final ``theta``."""
    if not pairs:
        raise ValueError("train_dpo needs at least one preference pair.")
    prompt = torch.tensor([p["prompt"] for p in pairs])
    chosen = torch.tensor([p["chosen"] for p in pairs])
    rejected = torch.tensor([p["rejected"] for p in pairs])

    def batch_loss(theta, theta_ref, i):
        return dpo_batch_loss(theta, theta_ref, prompt[i], chosen[i], rejected[i], beta), np.nan

    return _train(problem, len(pairs), batch_size, epochs, lr, batch_loss)


def train_kto(
    problem,
    rows,
    beta=BETA,
    lambda_D=1.0,
    lambda_U=1.0,
    epochs=EPOCHS,
    batch_size=2 * PAIR_BATCH,
    lr=LR,
) -> dict:
    """Train the toy policy with KTO on unpaired ``rows`` in their order (sequential
    microbatches, as TRL does for ``loss_type="kto"``); returns ``evaluate``'s dict plus
    ``losses`` and ``z0`` (one per step) and the final ``theta``."""
    if batch_size < 2:
        raise ValueError("KTO needs microbatches of at least 2 rows to estimate z0 (lesson 02).")
    if not rows:
        raise ValueError("train_kto needs at least one row.")
    prompt = torch.tensor([row["prompt"] for row in rows])
    completion = torch.tensor([row["completion"] for row in rows])
    desirable = torch.tensor([bool(row["label"]) for row in rows])

    def batch_loss(theta, theta_ref, i):
        if len(i) < 2:  # a last microbatch of one row cannot estimate z0: skip its update
            return (theta * 0).sum(), np.nan
        loss, metrics = kto_batch_loss(
            theta, theta_ref, prompt[i], completion[i], desirable[i], beta, lambda_D, lambda_U
        )
        return loss, metrics["kl"]

    return _train(problem, len(rows), batch_size, epochs, lr, batch_loss)


# ---------------------------------------------------------------------------------------------
# The lesson's experiments: each returns plain arrays, (setting, seed), for figures.py to draw
# ---------------------------------------------------------------------------------------------


def _setup(seed: int, n_pairs: int = N_PAIRS):
    # One seed fixes everything: the problem, the annotator's pairs and the shuffle.
    problem = make_problem(seed=seed)
    pairs = sample_pairs(problem, n_pairs, seed=seed)
    rows = pairs_to_unpaired(pairs, np.random.default_rng(seed))
    return problem, pairs, rows


def _baselines(seeds) -> dict:
    # The two horizontal lines of every plot: where training starts and the best it could do.
    start = [evaluate(make_problem(seed=s), make_problem(seed=s).theta_ref) for s in seeds]
    return {
        "reference": np.array([e["utility"] for e in start]),
        "best": np.array([e["utility_best"] for e in start]),
    }


def _with_labels(rows: list[dict], labels) -> list[dict]:
    return [dict(row, label=bool(label)) for row, label in zip(rows, labels, strict=True)]


def ordering_experiment(seeds=(0, 1, 2), epochs: int = EPOCHS) -> dict:
    """DPO, KTO on shuffled rows and KTO on chosen-first rows: utility and KL per seed."""
    out = {key: np.zeros((2, len(seeds))) for key in ("dpo", "kto_shuffled", "kto_chosen_first")}
    for j, seed in enumerate(seeds):
        problem, pairs, rows = _setup(seed)
        runs = {
            "dpo": train_dpo(problem, pairs, epochs=epochs),
            "kto_shuffled": train_kto(problem, rows, epochs=epochs),
            "kto_chosen_first": train_kto(problem, chosen_first(pairs), epochs=epochs),
        }
        for key, run in runs.items():
            out[key][:, j] = run["utility"], run["kl"]
    out.update(_baselines(seeds))
    return out


def noise_experiment(
    fractions=(0.0, 0.1, 0.2, 0.3, 0.4), seeds=(0, 1, 2), epochs=EPOCHS, beta=BETA
) -> dict:
    """Label noise: DPO with a fraction of its pairs swapped, KTO with the same fraction of its
    rows' labels flipped (both at ``beta``). Returns ``fractions`` and, per method, utility and
    KL of shape (len(fractions), len(seeds))."""
    shape = (len(fractions), len(seeds))
    out = {key: np.zeros(shape) for key in ("dpo", "kto", "dpo_kl", "kto_kl")}
    for j, seed in enumerate(seeds):
        problem, pairs, rows = _setup(seed)
        labels = [row["label"] for row in rows]
        for i, fraction in enumerate(fractions):
            # A separate, seeded generator per corruption: the noise does not depend on the
            # order in which the settings run.
            noisy_pairs = swap_pairs(pairs, fraction, np.random.default_rng(1000 + seed))
            noisy = flip_labels(labels, fraction, np.random.default_rng(1000 + seed))
            dpo = train_dpo(problem, noisy_pairs, beta=beta, epochs=epochs)
            kto = train_kto(problem, _with_labels(rows, noisy), beta=beta, epochs=epochs)
            out["dpo"][i, j], out["dpo_kl"][i, j] = dpo["utility"], dpo["kl"]
            out["kto"][i, j], out["kto_kl"][i, j] = kto["utility"], kto["kl"]
    out["fractions"] = np.asarray(fractions, dtype=float)
    out.update(_baselines(seeds))
    return out


def imbalance_experiment(keeps=(1.0, 0.5, 0.2, 0.1), seeds=(0, 1, 2), epochs=EPOCHS) -> dict:
    """Class imbalance: keep only a fraction of the desirable rows.

    KTO trains on what is left (all undesirable rows stay) with lambda_D = 1 and with lambda_D
    at the low end of ``core.recommended_weights`` (paper Eq. 8). DPO can only use a pair whose
    chosen row survived, so it trains on that fraction of the pairs, for as many optimiser steps
    as on the full set (so that the comparison is about data, not about steps).
    """
    shape = (len(keeps), len(seeds))
    keys = ("kto", "kto_weighted", "dpo", "kto_kl", "kto_weighted_kl", "dpo_kl", "lambda_D")
    out = {key: np.zeros(shape) for key in keys}
    for j, seed in enumerate(seeds):
        problem, pairs, rows = _setup(seed)
        for i, keep in enumerate(keeps):
            kept = drop_desirable(rows, keep, np.random.default_rng(2000 + seed))
            n_D = sum(row["label"] for row in kept)
            lambda_D = core.recommended_weights(n_D, len(kept) - n_D)["lambda_D_range"][0]
            kept_pairs = pairs[: max(1, round(keep * len(pairs)))]
            dpo_epochs = max(1, round(epochs * len(pairs) / len(kept_pairs)))
            runs = {
                "kto": train_kto(problem, kept, epochs=epochs),
                "kto_weighted": train_kto(problem, kept, lambda_D=lambda_D, epochs=epochs),
                "dpo": train_dpo(problem, kept_pairs, epochs=dpo_epochs),
            }
            for key, run in runs.items():
                out[key][i, j], out[f"{key}_kl"][i, j] = run["utility"], run["kl"]
            out["lambda_D"][i, j] = lambda_D
    out["keeps"] = np.asarray(keeps, dtype=float)
    out.update(_baselines(seeds))
    return out


def label_quality(seed: int = 0) -> dict:
    """How true the conversion's assumption is on the toy: the share of chosen completions with
    negative utility, of rejected ones with positive utility, and of pairs the annotator got
    the wrong way round (Bradley-Terry noise)."""
    problem, pairs, _ = _setup(seed)
    u = problem.utility
    u_w = np.array([u[p["prompt"], p["chosen"]] for p in pairs])
    u_l = np.array([u[p["prompt"], p["rejected"]] for p in pairs])
    return {
        "chosen_negative": float((u_w < 0).mean()),
        "rejected_positive": float((u_l > 0).mean()),
        "pairs_reversed": float((u_w < u_l).mean()),
    }
