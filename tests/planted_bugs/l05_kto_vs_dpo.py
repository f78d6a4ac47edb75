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


def _queued_order(count: str, draw: str = "rng.permutation") -> str:
    """A balanced_order answer: one queue of row indices per label, in an order drawn by
    ``draw``; each microbatch (rows start to end) takes the k desirable rows that ``count``
    sets and fills up with undesirable ones."""
    return (
        "def balanced_order(labels, batch_size, rng):\n"
        "    labels = np.asarray(labels, dtype=bool)\n"
        "    n, n_D = len(labels), int(labels.sum())\n"
        f"    d = list({draw}(np.flatnonzero(labels)))\n"
        f"    u = list({draw}(np.flatnonzero(~labels)))\n"
        "    order, taken = [], 0\n"
        "    for start in range(0, n, batch_size):\n"
        "        end = min(start + batch_size, n)\n"
        f"{count}"
        "        k = max(0, min(k, end - start, n_D - taken))\n"
        "        order += d[taken:taken + k] + u[start - taken:end - taken - k]\n"
        "        taken += k\n"
        "    return np.array(order)\n"
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
        "balanced_order",
        "def balanced_order(labels, batch_size, rng):\n"
        "    return rng.permutation(len(labels))\n",
        "mixes the labels only on average",
        "a plain shuffle: balanced on average, not microbatch by microbatch",
    ),
    PlantedBug(
        "balanced_order",
        _queued_order(
            "        full = end - start == batch_size\n"
            "        k = round(batch_size * n_D / n) if full else end - start\n"
        ),
        "the last, shorter microbatch is off balance",
        "every full microbatch rounds its share alike; the last takes what is left",
    ),
    PlantedBug(
        "balanced_order",
        "def balanced_order(labels, batch_size, rng):\n"
        "    labels = np.asarray(labels, dtype=bool)\n"
        "    d = list(rng.permutation(np.flatnonzero(labels)))\n"
        "    u = list(rng.permutation(np.flatnonzero(~labels)))\n"
        "    order = [i for pair in zip(d, u) for i in pair]\n"
        "    return np.array(order + d[len(u):] + u[len(d):])\n",
        "the desirable rows run out before the end",
        "alternating labels one by one: the surplus label piles up at the end",
    ),
    PlantedBug(
        "balanced_order",
        "def balanced_order(labels, batch_size, rng):\n"
        "    labels = np.asarray(labels, dtype=bool)\n"
        "    d = rng.permutation(np.flatnonzero(labels))\n"
        "    u = rng.permutation(np.flatnonzero(~labels))\n"
        "    k = round(min(batch_size, len(labels)) * labels.mean())\n"
        "    first = [*d[:k], *u[:batch_size - k]]\n"
        "    rest = rng.permutation([*d[k:], *u[batch_size - k:]])\n"
        "    return np.array(first + list(rest), dtype=int)\n",
        "only the first microbatch is balanced",
        "balances the first microbatch, then shuffles the rest",
    ),
    PlantedBug(
        "balanced_order",
        "def balanced_order(labels, batch_size, rng):\n"
        "    labels = np.asarray(labels, dtype=bool)\n"
        "    n, n_D = len(labels), int(labels.sum())\n"
        "    ends = np.minimum(np.arange(batch_size, n + batch_size, batch_size), n)\n"
        "    counts = np.diff(ends * n_D // n, prepend=0)\n"
        "    sizes = np.diff(ends, prepend=0)\n"
        "    return np.concatenate([[True] * c + [False] * (m - c)\n"
        "                           for c, m in zip(counts, sizes)]).astype(bool)\n",
        "returned labels",
        "the labels in the balanced order instead of the row indices",
    ),
    PlantedBug(
        "balanced_order",
        _queued_order("        k = end * n_D // n - taken\n", draw="np.random.permutation"),
        "generators seeded alike gave different orders",
        "right counts, drawn from the global np.random instead of the rng passed in",
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
