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
        "    return np.logaddexp(0.0, -beta * (np.asarray(r_l) - np.asarray(r_w)))\n",
        "swapped the preferred and rejected",
        "margin r_l - r_w",
    ),
    PlantedBug(
        "dpo_loss",
        "def dpo_loss(r_w, r_l, beta):\n"
        "    return np.logaddexp(0.0, -(np.asarray(r_w) - np.asarray(r_l)))\n",
        "beta is missing",
        "forgot beta",
    ),
    PlantedBug(
        "moved_toward",
        "def moved_toward(logp_theta, logp_ref, prompt_ids):\n"
        "    prompt_ids = np.asarray(prompt_ids)\n"
        "    best = []\n"
        "    for p in np.unique(prompt_ids):\n"
        "        members = np.flatnonzero(prompt_ids == p)\n"
        "        best.append(members[np.argmax(np.asarray(logp_theta)[members])])\n"
        "    return np.array(best)\n",
        "the policy finds most likely",
        "the policy's most likely completion taken for the one it moved toward",
    ),
    PlantedBug(
        "moved_toward",
        "def moved_toward(logp_theta, logp_ref, prompt_ids):\n"
        "    r = np.asarray(logp_theta) - np.asarray(logp_ref)\n"
        "    prompt_ids = np.asarray(prompt_ids)\n"
        "    return np.array([np.argmax(r[prompt_ids == p]) for p in np.unique(prompt_ids)])\n",
        "count from the start of each prompt's group",
        "an index within the prompt's group, not in the batch",
    ),
    PlantedBug(
        "moved_toward",
        "def moved_toward(logp_theta, logp_ref, prompt_ids):\n"
        "    r = np.asarray(logp_theta) - np.asarray(logp_ref)\n"
        "    prompt_ids = np.asarray(prompt_ids)\n"
        "    best = []\n"
        "    for p in np.unique(prompt_ids):\n"
        "        members = np.flatnonzero(prompt_ids == p)\n"
        "        best.append(members[np.argmin(r[members])])\n"
        "    return np.array(best)\n",
        "moved AWAY from the most",
        "smallest r",
    ),
    PlantedBug(
        "moved_toward",
        "def moved_toward(logp_theta, logp_ref, prompt_ids):\n"
        "    return int(np.argmax(np.asarray(logp_theta) - np.asarray(logp_ref)))\n",
        "of the whole batch",
        "one global argmax instead of one per prompt",
    ),
]
