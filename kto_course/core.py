"""The math of KTO in NumPy, one function per object, in teaching order.

Notation follows the lessons (and ``KTO_FACTS``): ``r`` the policy/reference log-ratio,
``z0`` the KL reference point, ``delta = r - z0``, ``beta``, ``lambda_D``, ``lambda_U``.
Paper: Ethayarajh et al., "KTO: Model Alignment as Prospect Theoretic Optimization" (ICML 2024).

Every function checks its inputs and raises a ``ValueError`` written for a learner: what was
wrong and what to do. Nothing is silently broadcast.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "sigmoid",
    "log_sigmoid",
    "sequence_logps",
    "log_ratio",
    "dpo_loss",
    "dpo_loss_grad",
    "mismatched_indices",
    "z0_estimate",
    "value_desirable",
    "value_undesirable",
    "kto_losses",
    "kto_loss",
    "kto_loss_grad",
    "largest_updates",
    "apo_zero_unpaired_losses",
    "imbalance_ratio",
    "recommended_weights",
    "IMBALANCE_RANGE",
]

# The paper's Eq. 8 range for lambda_D * n_D / (lambda_U * n_U); TRL writes 4/3 as 1.33.
IMBALANCE_RANGE = (1.0, 4.0 / 3.0)


# ---------------------------------------------------------------------------------------------
# Input checks shared by every function below
# ---------------------------------------------------------------------------------------------


def _float_array(name: str, x) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be numbers (got {type(x).__name__}): {e}") from None
    if a.size == 0:
        raise ValueError(f"{name} is empty: a batch needs at least one example.")
    if np.isnan(a).any():
        raise ValueError(f"{name} contains NaN: check the log-probs that produced it.")
    return a


def same_shape(**arrays) -> None:
    """One value per example in each array (NumPy or torch): else a ValueError naming them.

    Shared with ``torch_ops``, so a shape mismatch reads the same everywhere.
    """
    shapes = {name: tuple(a.shape) for name, a in arrays.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{n} {s}" for n, s in shapes.items())
        raise ValueError(
            f"shape mismatch: {listed}. Each example needs exactly one value in each array; "
            "the course never broadcasts silently."
        )


def _labels(desirable, shape: tuple) -> np.ndarray:
    d = np.asarray(desirable)
    if d.dtype != np.bool_:
        raise ValueError(
            f"desirable must be booleans (True = thumbs-up, False = thumbs-down), got dtype "
            f"{d.dtype}. Convert with `np.asarray(labels) == 1` if your labels are 0/1."
        )
    if d.shape != shape:
        raise ValueError(
            f"shape mismatch: desirable {d.shape} but r {shape}: one label per example."
        )
    return d


def require_positive(name: str, x, allow_zero: bool = False) -> float:
    """``x`` as a finite float > 0 (>= 0 with ``allow_zero``), else a ValueError naming it.

    Shared with ``torch_ops`` so beta and the lambdas are checked the same way everywhere.
    """
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {x!r}.") from None
    if not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {x!r}.")
    return v


def require_batch_of_two(batch_size: int) -> None:
    """z0 needs a microbatch of at least 2 (lesson 02): the one guard every z0 path calls."""
    if batch_size < 2:
        raise ValueError(
            f"a batch of {batch_size} cannot estimate z0: with one example the only other "
            "completion is the example's own, so the 'mismatched' pair is the matched one "
            "(there is no mismatched pair). Use a microbatch of at least 2 (TRL raises "
            "'Actual (not effective) batch size must be > 1')."
        )


def _scalar(name: str, x) -> float:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 0:
        raise ValueError(
            f"{name} must be a single number (one per microbatch), got shape {a.shape}."
        )
    if not np.isfinite(a):
        raise ValueError(f"{name} must be finite, got {float(a)}.")
    return float(a)


def _scalar_or_array(a: np.ndarray):
    return float(a) if a.ndim == 0 else a


# ---------------------------------------------------------------------------------------------
# Lesson 01: sigmoids, sequence log-probs, the log-ratio, DPO
# ---------------------------------------------------------------------------------------------


def sigmoid(x):
    """Logistic function 1 / (1 + exp(-x)), stable for any |x| (no overflow warning).

    Used by every value function (paper Eq. 7); lesson 01 introduces it with DPO.
    """
    x = np.asarray(x, dtype=np.float64)
    e = np.exp(-np.abs(x))  # never overflows: the exponent is <= 0
    out = np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return _scalar_or_array(out)


def log_sigmoid(x):
    """log sigmoid(x) = -log(1 + exp(-x)), stable for any |x|.

    DPO's loss is -log_sigmoid(beta * margin) (lesson 01).
    """
    x = np.asarray(x, dtype=np.float64)
    return _scalar_or_array(-np.logaddexp(0.0, -x))


def sequence_logps(token_logps, completion_mask):
    """log pi(y|x) = SUM of per-token log-probs over the completion tokens (lesson 01).

    ``token_logps`` and ``completion_mask`` have the same shape ``(..., T)``; the mask is True
    (or 1) on completion tokens and False (0) on prompt and padding tokens. No length
    normalisation: KTO and DPO use the sum, not the mean.
    """
    logps = _float_array("token_logps", token_logps)
    mask = np.asarray(completion_mask)
    if mask.dtype != np.bool_:
        if not np.isin(mask, (0, 1)).all():
            raise ValueError("completion_mask must be True/False (or 1/0) per token.")
        mask = mask.astype(bool)
    same_shape(token_logps=logps, completion_mask=mask)
    if logps.ndim == 0:
        raise ValueError("token_logps needs a token axis: shape (T,) or (B, T).")
    if (logps[mask] > 0).any():
        raise ValueError("token log-probs must be <= 0 (they are logs of probabilities).")
    return _scalar_or_array(np.where(mask, logps, 0.0).sum(axis=-1))


def log_ratio(logp_theta, logp_ref):
    """Implied reward r = log pi_theta(y|x) - log pi_ref(y|x) (inside paper Eq. 7; lesson 01)."""
    logp_theta = _float_array("logp_theta", logp_theta)
    logp_ref = _float_array("logp_ref", logp_ref)
    same_shape(logp_theta=logp_theta, logp_ref=logp_ref)
    return _scalar_or_array(logp_theta - logp_ref)


def dpo_loss(r_w, r_l, beta=0.1):
    """DPO per pair: -log sigmoid(beta * (r_w - r_l)) (DPO paper Eq. 7; lesson 01).

    ``r_w`` and ``r_l`` are the log-ratios of the preferred and rejected completion of the
    same prompt.
    """
    r_w = _float_array("r_w", r_w)
    r_l = _float_array("r_l", r_l)
    same_shape(r_w=r_w, r_l=r_l)
    beta = require_positive("beta", beta)
    return _scalar_or_array(-np.asarray(log_sigmoid(beta * (r_w - r_l))))


def dpo_loss_grad(r_w, r_l, beta=0.1):
    """d dpo_loss / d r_w = -beta * sigmoid(-beta * (r_w - r_l)); d / d r_l is its negative.

    Lesson 01: DPO's push never saturates on the wrong side (it tends to -beta), unlike KTO's.
    """
    r_w = _float_array("r_w", r_w)
    r_l = _float_array("r_l", r_l)
    same_shape(r_w=r_w, r_l=r_l)
    beta = require_positive("beta", beta)
    return _scalar_or_array(-beta * np.asarray(sigmoid(-beta * (r_w - r_l))))


# ---------------------------------------------------------------------------------------------
# Lesson 02: the KL reference point z0
# ---------------------------------------------------------------------------------------------


def mismatched_indices(batch_size: int, convention: str = "trl") -> np.ndarray:
    """Which completion each prompt is paired with to estimate z0 (lesson 02).

    A cyclic shift by one: TRL pairs x_i with y_{i-1} (x_0 gets y_{n-1}), HALOs pairs x_i with
    y_{i+1}. Never i itself, for every batch size >= 2 (reversal fails on odd sizes).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise ValueError(f"batch_size must be a whole number, got {batch_size!r}.")
    require_batch_of_two(batch_size)
    shifts = {"trl": 1, "halos": -1}
    if convention not in shifts:
        raise ValueError(f"convention must be 'trl' or 'halos', got {convention!r}.")
    return np.roll(np.arange(batch_size), shifts[convention])


def z0_estimate(mismatched_r, clamp: bool = True):
    """z0 = max(0, mean_j r(x_j, y'_j)) over the mismatched pairs of a microbatch (paper §4.1).

    Lesson 02. ``mismatched_r`` has shape (B,), or (..., B) for many microbatches at once (one
    z0 each, as in lesson 02's spread demo). ``clamp=False`` shows the raw estimate (it can be
    negative); the clamp at 0 is what makes trainers log "kl = 0" so often. Treated as a
    constant (stop-gradient) in the loss.
    """
    r_mis = _float_array("mismatched_r", mismatched_r)
    if r_mis.ndim == 0:
        raise ValueError("mismatched_r must be one value per example, shape (B,), not a number.")
    require_batch_of_two(r_mis.shape[-1])
    z0 = r_mis.mean(axis=-1)
    return _scalar_or_array(np.maximum(z0, 0.0) if clamp else z0)


# ---------------------------------------------------------------------------------------------
# Lesson 03: value functions and the KTO loss
# ---------------------------------------------------------------------------------------------


def value_desirable(delta, beta, lambda_D=1.0):
    """v_D = lambda_D * sigmoid(beta * delta), delta = r - z0 (Eq. 7, w(y) inside; lesson 03)."""
    delta = _float_array("delta", delta)
    beta = require_positive("beta", beta)
    lambda_D = require_positive("lambda_D", lambda_D, allow_zero=True)
    return _scalar_or_array(lambda_D * np.asarray(sigmoid(beta * delta)))


def value_undesirable(delta, beta, lambda_U=1.0):
    """v_U = lambda_U * sigmoid(-beta * delta), delta = r - z0 (Eq. 7, w(y) inside; lesson 03)."""
    delta = _float_array("delta", delta)
    beta = require_positive("beta", beta)
    lambda_U = require_positive("lambda_U", lambda_U, allow_zero=True)
    return _scalar_or_array(lambda_U * np.asarray(sigmoid(-beta * delta)))


def _kto_inputs(r, z0, desirable, beta, lambda_D, lambda_U):
    r = _float_array("r", r)
    z0 = _scalar("z0", z0)
    d = _labels(desirable, r.shape)
    beta = require_positive("beta", beta)
    lambda_D = require_positive("lambda_D", lambda_D, allow_zero=True)
    lambda_U = require_positive("lambda_U", lambda_U, allow_zero=True)
    return r, z0, d, beta, lambda_D, lambda_U


def kto_losses(r, z0, desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0):
    """Per-example KTO loss L = lambda_y - v_y (paper Eq. 7; lesson 03).

    Desirable: lambda_D * (1 - sigmoid(beta * (r - z0))).
    Undesirable: lambda_U * (1 - sigmoid(beta * (z0 - r))).
    """
    r, z0, d, beta, lambda_D, lambda_U = _kto_inputs(r, z0, desirable, beta, lambda_D, lambda_U)
    delta = r - z0
    # 1 - sigmoid(x) = sigmoid(-x): written this way it keeps precision when sigmoid(x) ~ 1.
    loss_D = lambda_D * np.asarray(sigmoid(-beta * delta))
    loss_U = lambda_U * np.asarray(sigmoid(beta * delta))
    return _scalar_or_array(np.where(d, loss_D, loss_U))


def kto_loss(r, z0, desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0) -> float:
    """Batch KTO loss: the plain mean of the per-example losses over ALL examples (lesson 03).

    The weights are not renormalised (TRL takes the mean of the weighted losses too).
    """
    return float(np.mean(kto_losses(r, z0, desirable, beta, lambda_D, lambda_U)))


# ---------------------------------------------------------------------------------------------
# Lesson 04: the analytic derivative and saturation
# ---------------------------------------------------------------------------------------------


def kto_loss_grad(r, z0, desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0):
    """dL/dr of each per-example loss with z0 held fixed (lesson 04).

    With s = sigmoid(beta * (r - z0)): desirable -lambda_D * beta * s * (1 - s) < 0,
    undesirable +lambda_U * beta * s * (1 - s) > 0. Peaks at delta = 0 (lambda * beta / 4),
    vanishes as |delta| grows: saturation.
    """
    r, z0, d, beta, lambda_D, lambda_U = _kto_inputs(r, z0, desirable, beta, lambda_D, lambda_U)
    x = beta * (r - z0)
    # s * (1 - s) = sigmoid(x) * sigmoid(-x): both factors stable, no cancellation.
    s_one_minus_s = np.asarray(sigmoid(x)) * np.asarray(sigmoid(-x))
    grad = np.where(d, -lambda_D * beta * s_one_minus_s, lambda_U * beta * s_one_minus_s)
    return _scalar_or_array(grad)


def largest_updates(r, z0, desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0, share=0.8):
    """The fewest examples that together carry at least ``share`` of a batch's total |dL/dr|:
    their indices, largest |dL/dr| first, tied examples in batch order (lesson 04).

    The examples near the baseline, weighted by lambda_y; saturated ones, however large their
    loss, come last or not at all. An empty array if every gradient is exactly 0.
    """
    g = np.abs(np.atleast_1d(kto_loss_grad(r, z0, desirable, beta, lambda_D, lambda_U)))
    share = require_positive("share", share)
    if share > 1:
        raise ValueError(f"share must be a fraction of the total, at most 1, got {share!r}.")
    order = np.argsort(-g, kind="stable")  # stable: ties keep the batch order
    carried = np.cumsum(g[order])
    if carried[-1] == 0:
        return order[:0]
    # The first prefix whose running total reaches share of the total (the total summed in the
    # same order, so that share = 1 stops at the last nonzero gradient).
    return order[: int(np.searchsorted(carried, share * carried[-1])) + 1]


def apo_zero_unpaired_losses(r, desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0):
    """TRL's ``apo_zero_unpaired`` variant: KTO with z0 = 0 (lesson 03 aside).

    Desirable lambda_D * (1 - sigmoid(beta * r)); undesirable lambda_U * sigmoid(beta * r).
    """
    return kto_losses(r, 0.0, desirable, beta, lambda_D, lambda_U)


# ---------------------------------------------------------------------------------------------
# Lesson 03: class imbalance
# ---------------------------------------------------------------------------------------------


def _count(name: str, n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"{name} must be a whole number >= 1 (a count of examples), got {n!r}.")
    return int(n)


def imbalance_ratio(n_D, n_U, lambda_D=1.0, lambda_U=1.0) -> float:
    """lambda_D * n_D / (lambda_U * n_U); the paper (Eq. 8) recommends it lie in [1, 4/3]."""
    n_D, n_U = _count("n_D", n_D), _count("n_U", n_U)
    lambda_D = require_positive("lambda_D", lambda_D)
    lambda_U = require_positive("lambda_U", lambda_U)
    return lambda_D * n_D / (lambda_U * n_U)


def recommended_weights(n_D, n_U, lambda_D=1.0, lambda_U=1.0) -> dict:
    """Weight ranges that put lambda_D n_D / (lambda_U n_U) in [1, 4/3] (paper Eq. 8; lesson 03).

    As TRL's warning does: EITHER change lambda_D (keeping lambda_U) OR change lambda_U
    (keeping lambda_D), not both. Returns ``ratio``, ``in_range``, ``lambda_D_range`` and
    ``lambda_U_range`` (each a (low, high) tuple).
    """
    ratio = imbalance_ratio(n_D, n_U, lambda_D, lambda_U)
    low, high = IMBALANCE_RANGE
    return {
        "ratio": ratio,
        "in_range": bool(low <= ratio <= high),
        "lambda_D_range": (low * n_U * lambda_U / n_D, high * n_U * lambda_U / n_D),
        "lambda_U_range": (n_D * lambda_D / (high * n_U), n_D * lambda_D / (low * n_U)),
    }
