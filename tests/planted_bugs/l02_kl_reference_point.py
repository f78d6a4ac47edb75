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
        "mismatched_log_ratios",
        "def mismatched_log_ratios(logp_theta, logp_ref):\n"
        "    return np.diag(logp_theta) - np.diag(logp_ref)\n",
        "an example is paired with its own completion",
        "the labelled (matched) pairs on the diagonal",
    ),
    PlantedBug(
        "mismatched_log_ratios",
        "def mismatched_log_ratios(logp_theta, logp_ref):\n"
        "    idx = core.mismatched_indices(len(logp_theta))\n"
        "    rows = np.arange(len(logp_theta))\n"
        "    return logp_theta[idx, rows] - logp_ref[idx, rows]\n",
        "rows are prompts",
        "matrix indexed [completion, prompt]",
    ),
    PlantedBug(
        "z0_estimate",
        "def z0_estimate(mismatched_r):\n"
        "    return float(np.mean(mismatched_r))\n",
        "your z0 is negative: clamp at 0",
        "no clamp",
    ),
    PlantedBug(
        "z0_estimate",
        "def z0_estimate(mismatched_r):\n"
        "    return float(np.mean(np.maximum(mismatched_r, 0.0)))\n",
        "clamped each example before averaging",
        "clamp inside the mean",
    ),
    PlantedBug(
        "z0_estimate",
        "def z0_estimate(mismatched_r):\n"
        "    return max(0.0, float(np.sum(mismatched_r)))\n",
        "instead of averaging",
        "sum instead of mean",
    ),
]
