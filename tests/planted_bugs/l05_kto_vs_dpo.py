"""Lesson 05, KTO against DPO: its planted wrong answers."""

from planted_bugs.bug import PlantedBug


def _shuffled_rows(chosen: str, rejected: str, shuffle: str) -> str:
    """A pairs_to_unpaired answer: two rows per pair with these labels, shuffled by this."""
    return (
        "def pairs_to_unpaired(pairs, rng):\n"
        "    rows = []\n"
        "    for p in pairs:\n"
        "        x = p['prompt']\n"
        f"        rows.append({{'prompt': x, 'completion': p['chosen'], 'label': {chosen}}})\n"
        f"        rows.append({{'prompt': x, 'completion': p['rejected'], 'label': {rejected}}})\n"
        f"    return [rows[i] for i in {shuffle}(len(rows))]\n"
    )


BUGS = [
    PlantedBug(
        "pairs_to_unpaired",
        "def pairs_to_unpaired(pairs, rng):\n"
        "    chosen = [{'prompt': p['prompt'], 'completion': p['chosen'], 'label': True}\n"
        "              for p in pairs]\n"
        "    rejected = [{'prompt': p['prompt'], 'completion': p['rejected'], 'label': False}\n"
        "                for p in pairs]\n"
        "    return chosen + rejected\n",
        "all chosen rows come before all rejected rows",
        "no shuffle: TRL's chunked conversion order",
    ),
    PlantedBug(
        "pairs_to_unpaired",
        _shuffled_rows("False", "True", "rng.permutation"),
        "labels are swapped",
        "chosen marked undesirable",
    ),
    PlantedBug(
        "pairs_to_unpaired",
        "def pairs_to_unpaired(pairs, rng):\n"
        "    rows = []\n"
        "    for p in pairs:\n"
        "        rows.append({'completion': p['chosen'], 'label': True})\n"
        "        rows.append({'completion': p['rejected'], 'label': False})\n"
        "    return [rows[i] for i in rng.permutation(len(rows))]\n",
        "the prompt was lost",
        "rows without their prompt",
    ),
    PlantedBug(
        "pairs_to_unpaired",
        _shuffled_rows("True", "False", "np.random.permutation"),
        "generators seeded alike gave different orders",
        "shuffles with the global np.random, not the rng passed in",
    ),
    PlantedBug(
        "batch_label_shares",
        "def batch_label_shares(labels, batch_size):\n"
        "    labels = np.asarray(labels, dtype=bool)\n"
        "    n = len(labels) // batch_size\n"
        "    return np.array([labels[k * batch_size:(k + 1) * batch_size].mean()\n"
        "                     for k in range(n)])\n",
        "the last, shorter microbatch is missing",
        "drops the partial microbatch",
    ),
    PlantedBug(
        "batch_label_shares",
        "def batch_label_shares(labels, batch_size):\n"
        "    labels = np.asarray(labels, dtype=bool)\n"
        "    return np.array([(~labels[s:s + batch_size]).mean()\n"
        "                     for s in range(0, len(labels), batch_size)])\n",
        "share of undesirable rows",
        "counts the False labels",
    ),
    PlantedBug(
        "batch_label_shares",
        "def batch_label_shares(labels, batch_size):\n"
        "    labels = np.asarray(labels, dtype=bool)\n"
        "    return np.array([labels[s:s + batch_size].sum() / batch_size\n"
        "                     for s in range(0, len(labels), batch_size)])\n",
        "divide by its own length",
        "the partial microbatch divided by the full batch size",
    ),
    PlantedBug(
        "batch_label_shares",
        "def batch_label_shares(labels, batch_size):\n"
        "    labels = np.asarray(labels, dtype=bool)\n"
        "    n = -(-len(labels) // batch_size)\n"
        "    return np.array([labels[k::n].mean() for k in range(n)])\n",
        "not contiguous",
        "strided microbatches",
    ),
    PlantedBug(
        "dpo_batch_loss",
        "def dpo_batch_loss(theta, theta_ref, prompt, chosen, rejected, beta):\n"
        "    logp, logp_ref = F.log_softmax(theta, -1), F.log_softmax(theta_ref, -1)\n"
        "    r_w = logp[prompt, chosen] - logp_ref[prompt, chosen]\n"
        "    r_l = logp[prompt, rejected] - logp_ref[prompt, rejected]\n"
        "    return -F.logsigmoid(beta * (r_l - r_w)).mean()\n",
        "chosen and rejected are swapped",
        "margin r_l - r_w",
    ),
    PlantedBug(
        "dpo_batch_loss",
        "def dpo_batch_loss(theta, theta_ref, prompt, chosen, rejected, beta):\n"
        "    logp = F.log_softmax(theta, -1)\n"
        "    margin = logp[prompt, chosen] - logp[prompt, rejected]\n"
        "    return -F.logsigmoid(beta * margin).mean()\n",
        "the reference is missing",
        "policy log-probs only",
    ),
    PlantedBug(
        "dpo_batch_loss",
        "def dpo_batch_loss(theta, theta_ref, prompt, chosen, rejected, beta):\n"
        "    logp, logp_ref = F.log_softmax(theta, -1), F.log_softmax(theta_ref, -1)\n"
        "    r_w = logp[prompt, chosen] - logp_ref[prompt, chosen]\n"
        "    r_l = logp[prompt, rejected] - logp_ref[prompt, rejected]\n"
        "    return -F.logsigmoid(beta * (r_w - r_l)).sum()\n",
        "you summed over the pairs",
        "sum instead of mean",
    ),
    PlantedBug(
        "dpo_batch_loss",
        "def dpo_batch_loss(theta, theta_ref, prompt, chosen, rejected, beta):\n"
        "    logp, logp_ref = F.log_softmax(theta, -1), F.log_softmax(theta_ref, -1)\n"
        "    r_w = logp[prompt, chosen] - logp_ref[prompt, chosen]\n"
        "    r_l = logp[prompt, rejected] - logp_ref[prompt, rejected]\n"
        "    return torch.tensor(-F.logsigmoid(beta * (r_w - r_l)).mean().item())\n",
        "the loss carries no gradient",
        ".item() cuts the graph",
    ),
    PlantedBug(
        "flip_labels",
        "def flip_labels(labels, fraction, rng):\n"
        "    labels = np.asarray(labels, dtype=bool)\n"
        "    return labels ^ (rng.random(len(labels)) < fraction)\n",
        "the number of flipped labels is wrong",
        "each label flipped with probability fraction",
    ),
    PlantedBug(
        "flip_labels",
        "def flip_labels(labels, fraction, rng):\n"
        "    k = round(fraction * len(labels))\n"
        "    where = rng.choice(len(labels), size=k, replace=False)\n"
        "    labels[where] = ~labels[where]\n"
        "    return labels\n",
        "changed the labels it was given",
        "flips in place",
    ),
    PlantedBug(
        "flip_labels",
        "def flip_labels(labels, fraction, rng):\n"
        "    labels = np.array(labels, dtype=bool)\n"
        "    where = np.random.choice(len(labels), size=round(fraction * len(labels)),\n"
        "                             replace=False)\n"
        "    labels[where] = ~labels[where]\n"
        "    return labels\n",
        "generators seeded alike flipped different labels",
        "global np.random instead of rng",
    ),
    PlantedBug(
        "flip_labels",
        "def flip_labels(labels, fraction, rng):\n"
        "    labels = np.array(labels, dtype=bool)\n"
        "    desirable = np.flatnonzero(labels)\n"
        "    k = min(round(fraction * len(labels)), len(desirable))\n"
        "    where = rng.choice(desirable, size=k, replace=False)\n"
        "    labels[where] = False\n"
        "    return labels\n",
        "only desirable labels were flipped",
        "noise only on the desirable rows",
    ),
    PlantedBug(
        "flip_labels",
        "def flip_labels(labels, fraction, rng):\n"
        "    labels = np.array(labels, dtype=bool)\n"
        "    k = round(fraction * len(labels))\n"
        "    labels[:k] = ~labels[:k]\n"
        "    return labels\n",
        "the first labels are always the ones flipped",
        "no randomness at all",
    ),
]
