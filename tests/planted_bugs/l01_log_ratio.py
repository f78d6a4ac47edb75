"""Lesson 01, the log-ratio: its planted wrong answers."""

from planted_bugs.bug import PlantedBug

BUGS = [
    PlantedBug(
        "sequence_logps",
        "def sequence_logps(token_logps, completion_mask):\n"
        "    token_logps = np.asarray(token_logps, dtype=float)\n"
        "    return (token_logps * completion_mask).sum(-1) / completion_mask.sum(-1)\n",
        "averaged token log-probs instead of summing",
        "length-normalised (mean) log-prob",
    ),
    PlantedBug(
        "sequence_logps",
        "def sequence_logps(token_logps, completion_mask):\n"
        "    return np.asarray(token_logps, dtype=float).sum(-1)\n",
        "prompt tokens are included in the sum",
        "mask ignored: prompt and padding summed too",
    ),
    PlantedBug(
        "sequence_logps",
        "def sequence_logps(token_logps, completion_mask):\n"
        "    token_logps = np.asarray(token_logps, dtype=float)\n"
        "    return np.where(completion_mask, 0.0, token_logps).sum(-1)\n",
        "where completion_mask is False",
        "mask inverted",
    ),
    PlantedBug(
        "log_ratio",
        "def log_ratio(logp_theta, logp_ref):\n"
        "    return np.asarray(logp_ref) - np.asarray(logp_theta)\n",
        "policy minus reference",
        "sign reversed",
    ),
    PlantedBug(
        "log_ratio",
        "def log_ratio(logp_theta, logp_ref):\n"
        "    return np.asarray(logp_theta) / np.asarray(logp_ref)\n",
        "difference of logs",
        "ratio of the log-probs instead of the log of the ratio",
    ),
    PlantedBug(
        "dpo_loss",
        "def dpo_loss(r_w, r_l, beta):\n"
        "    margin = np.asarray(r_w) - np.asarray(r_l)\n"
        "    return -np.log(core.sigmoid(beta * margin))\n",
        "compute log sigmoid stably",
        "log of a sigmoid that underflows to 0: inf for a badly wrong pair",
    ),
    PlantedBug(
        "dpo_loss",
        "def dpo_loss(r_w, r_l, beta):\n"
        "    return -core.log_sigmoid(beta * (np.asarray(r_l) - np.asarray(r_w)))\n",
        "swapped the preferred and rejected",
        "margin r_l - r_w",
    ),
    PlantedBug(
        "dpo_loss",
        "def dpo_loss(r_w, r_l, beta):\n"
        "    return -core.log_sigmoid(np.asarray(r_w) - np.asarray(r_l))\n",
        "beta is missing",
        "forgot beta",
    ),
    PlantedBug(
        "moved_toward",
        "def moved_toward(logp_theta, logp_ref):\n"
        "    return int(np.argmax(logp_theta))\n",
        "moved toward",
        "the policy's most likely completion taken for the one it moved toward",
    ),
    PlantedBug(
        "moved_toward",
        "def moved_toward(logp_theta, logp_ref):\n"
        "    return int(np.argmin(np.asarray(logp_theta) - np.asarray(logp_ref)))\n",
        "moved away",
        "smallest r",
    ),
]
