"""Lesson 02, the KL reference point: its planted wrong answers."""

from planted_bugs.bug import PlantedBug

BUGS = [
    PlantedBug(
        "mismatched_indices",
        "def mismatched_indices(batch_size):\n"
        "    if batch_size < 2:\n"
        "        raise ValueError('need at least 2 examples')\n"
        "    return np.arange(batch_size)[::-1]\n",
        "reversed the batch",
        "reversal: the middle example of an odd batch keeps its own completion",
    ),
    PlantedBug(
        "mismatched_indices",
        "def mismatched_indices(batch_size):\n"
        "    if batch_size < 2:\n"
        "        raise ValueError('need at least 2 examples')\n"
        "    return np.arange(batch_size)\n",
        "an example is paired with its own completion",
        "no shift at all: the labelled pairs",
    ),
    PlantedBug(
        "mismatched_indices",
        "def mismatched_indices(batch_size):\n"
        "    return np.roll(np.arange(batch_size), 1)\n",
        "instead of raising",
        "batch size 1 silently 'paired' with itself",
    ),
    PlantedBug(
        "mismatched_indices",
        "def mismatched_indices(batch_size):\n"
        "    if batch_size < 2:\n"
        "        raise ValueError('need at least 2 examples')\n"
        "    return np.roll(np.arange(batch_size), -1)\n",
        "shifted the other way",
        "HALOs' direction instead of TRL's",
    ),
    PlantedBug(
        "mismatched_indices",
        "def mismatched_indices(batch_size):\n"
        "    if batch_size < 2:\n"
        "        raise ValueError('need at least 2 examples')\n"
        "    return np.arange(batch_size) - 1\n",
        "wrap around",
        "shift without the modulo: index -1",
    ),
    PlantedBug(
        "z0_estimate",
        "def z0_estimate(logp_theta, logp_ref):\n"
        "    return max(0.0, float(np.mean(np.diag(logp_theta) - np.diag(logp_ref))))\n",
        "you used the diagonal",
        "the labelled (matched) pairs on the diagonal",
    ),
    PlantedBug(
        "z0_estimate",
        "def z0_estimate(logp_theta, logp_ref):\n"
        "    rows = np.arange(len(logp_theta))\n"
        "    idx = np.roll(rows, -1)\n"
        "    return max(0.0, float(np.mean(logp_theta[rows, idx] - logp_ref[rows, idx])))\n",
        "x_i -> y_(i+1)",
        "HALOs' shift direction instead of TRL's",
    ),
    PlantedBug(
        "z0_estimate",
        "def z0_estimate(logp_theta, logp_ref):\n"
        "    rows = np.arange(len(logp_theta))\n"
        "    idx = core.mismatched_indices(len(logp_theta))\n"
        "    return float(np.mean(logp_theta[rows, idx] - logp_ref[rows, idx]))\n",
        "your z0 is negative: clamp at 0",
        "no clamp",
    ),
    PlantedBug(
        "z0_estimate",
        "def z0_estimate(logp_theta, logp_ref):\n"
        "    rows = np.arange(len(logp_theta))\n"
        "    idx = core.mismatched_indices(len(logp_theta))\n"
        "    r = logp_theta[rows, idx] - logp_ref[rows, idx]\n"
        "    return float(np.mean(np.maximum(r, 0.0)))\n",
        "clamped each pair before averaging",
        "clamp inside the mean",
    ),
    PlantedBug(
        "z0_estimate",
        "def z0_estimate(logp_theta, logp_ref):\n"
        "    r = np.asarray(logp_theta) - np.asarray(logp_ref)\n"
        "    return max(0.0, float(r[~np.eye(len(r), dtype=bool)].mean()))\n",
        "every off-diagonal cell",
        "all the mismatched cells of the grid, not the B pairs a trainer scores",
    ),
    PlantedBug(
        "z0_estimate",
        "def z0_estimate(logp_theta, logp_ref):\n"
        "    rows = np.arange(len(logp_theta))\n"
        "    idx = core.mismatched_indices(len(logp_theta))\n"
        "    return max(0.0, float(np.mean(logp_ref[rows, idx] - logp_theta[rows, idx])))\n",
        "log pi_ref - log pi_theta",
        "policy and reference swapped",
    ),
]
