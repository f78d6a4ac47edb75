"""Lesson 03, value and loss: its planted wrong answers."""

from planted_bugs.bug import PlantedBug

# The batch loss's first lines, and the right per-example losses after them: most bugs below
# differ from the answer only after these.
_BATCH_START = (
    "def batch_kto_loss(logp_theta, logp_ref, kl_logp_theta, kl_logp_ref, desirable,\n"
    "                   beta=0.1, lambda_D=1.0, lambda_U=1.0):\n"
    "    r = core.log_ratio(logp_theta, logp_ref)\n"
)
_BATCH_LOSSES = (
    _BATCH_START
    + "    z0 = core.z0_estimate(core.log_ratio(kl_logp_theta, kl_logp_ref))\n"
    "    losses = core.kto_losses(r, z0, desirable, beta, lambda_D, lambda_U)\n"
)

BUGS = [
    PlantedBug(
        "kto_losses",
        "def kto_losses(r, z0, desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0):\n"
        "    delta = np.asarray(r) - z0\n"
        "    return np.where(desirable, lambda_D * core.sigmoid(beta * delta),\n"
        "                    lambda_U * core.sigmoid(-beta * delta))\n",
        "swapped",
        "desirable and undesirable losses exchanged",
    ),
    PlantedBug(
        "kto_losses",
        "def kto_losses(r, z0, desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0):\n"
        "    delta = np.asarray(r) - z0\n"
        "    v_D = lambda_D * core.sigmoid(beta * delta)\n"
        "    v_U = lambda_U * core.sigmoid(beta * delta)\n"
        "    return np.where(desirable, lambda_D - v_D, lambda_U - v_U)\n",
        "sigmoid(-beta * delta)",
        "sigmoid(beta * delta) used for the undesirable value",
    ),
    PlantedBug(
        "kto_losses",
        "def kto_losses(r, z0, desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0):\n"
        "    delta = np.asarray(r) - z0\n"
        "    return np.where(desirable, lambda_D * core.sigmoid(-delta),\n"
        "                    lambda_U * core.sigmoid(delta))\n",
        "beta is missing",
        "forgot beta",
    ),
    PlantedBug(
        "kto_losses",
        "def kto_losses(r, z0, desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0):\n"
        "    delta = np.asarray(r) - z0\n"
        "    return np.where(desirable, lambda_U * core.sigmoid(-beta * delta),\n"
        "                    lambda_D * core.sigmoid(beta * delta))\n",
        "wrong class",
        "lambda_D and lambda_U exchanged",
    ),
    PlantedBug(
        "kto_losses",
        "def kto_losses(r, z0, desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0):\n"
        "    x = beta * (np.asarray(r) - z0)\n"
        "    s = np.exp(x) / (1 + np.exp(x))  # overflows to inf / inf far from z0\n"
        "    return np.where(desirable, lambda_D * (1 - s), lambda_U * s)\n",
        "stable sigmoid",
        "a naive sigmoid that returns NaN for large |beta * delta|",
    ),
    PlantedBug(
        "batch_kto_loss",
        _BATCH_LOSSES
        +         "    return losses.sum() / np.where(desirable, lambda_D, lambda_U).sum()\n",
        "not renormalised",
        "divided by the sum of the weights",
    ),
    PlantedBug(
        "batch_kto_loss",
        _BATCH_LOSSES
        +         "    return (losses[desirable].mean() + losses[~desirable].mean()) / 2\n",
        "averaged each label separately",
        "mean of the two per-label means",
    ),
    PlantedBug(
        "batch_kto_loss",
        _BATCH_LOSSES
        +         "    return losses[desirable].mean()\n",
        "desirable examples only",
        "averaged over one label only",
    ),
    PlantedBug(
        "batch_kto_loss",
        _BATCH_START
        +         "    z0 = np.mean(core.log_ratio(kl_logp_theta, kl_logp_ref))\n"
        "    return np.mean(core.kto_losses(r, z0, desirable, beta, lambda_D, lambda_U))\n",
        "clamp",
        "z0 not clamped at 0",
    ),
    PlantedBug(
        "batch_kto_loss",
        _BATCH_START
        +         "    z0 = max(0.0, float(np.mean(r)))\n"
        "    return np.mean(core.kto_losses(r, z0, desirable, beta, lambda_D, lambda_U))\n",
        "labelled pairs",
        "z0 estimated from the matched (labelled) pairs",
    ),
    PlantedBug(
        "batch_kto_loss",
        _BATCH_START
        +         "    z0 = max(0.0, float(np.mean(core.log_ratio(kl_logp_ref, kl_logp_theta))))\n"
        "    return np.mean(core.kto_losses(r, z0, desirable, beta, lambda_D, lambda_U))\n",
        "wrong sign",
        "z0 from reference minus policy (clamps to 0 like an ignored z0 on some batches)",
    ),
    PlantedBug(
        "batch_kto_loss",
        _BATCH_START
        +         "    return np.mean(core.kto_losses(r, 0.0, desirable, beta, lambda_D,"
        " lambda_U))\n",
        "z0 is ignored",
        "z0 left out (0), which a wrong-sign z0 matches on some batches",
    ),
    PlantedBug(
        "recommended_weights",
        "def recommended_weights(n_D, n_U, lambda_D=1.0, lambda_U=1.0):\n"
        "    ratio = lambda_U * n_U / (lambda_D * n_D)\n"
        "    low, high = core.IMBALANCE_RANGE\n"
        "    d_range = (low * n_U * lambda_U / n_D, high * n_U * lambda_U / n_D)\n"
        "    u_range = (n_D * lambda_D / (high * n_U), n_D * lambda_D / (low * n_U))\n"
        "    return {'ratio': ratio, 'in_range': low <= ratio <= high,\n"
        "            'lambda_D_range': d_range, 'lambda_U_range': u_range}\n",
        "inverted",
        "ratio inverted",
    ),
    PlantedBug(
        "recommended_weights",
        "def recommended_weights(n_D, n_U, lambda_D=1.0, lambda_U=1.0):\n"
        "    ratio = lambda_D * n_D / (lambda_U * n_U)\n"
        "    low, high = core.IMBALANCE_RANGE\n"
        "    d_range = (low * n_D * lambda_U / n_U, high * n_D * lambda_U / n_U)\n"
        "    u_range = (n_U * lambda_D / (high * n_D), n_U * lambda_D / (low * n_D))\n"
        "    return {'ratio': ratio, 'in_range': low <= ratio <= high,\n"
        "            'lambda_D_range': d_range, 'lambda_U_range': u_range}\n",
        "solve",
        "weight ranges with the counts inverted (more weight on the common class)",
    ),
]
