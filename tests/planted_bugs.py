"""Planted wrong answers, one or more per exercise, used by the grading round-trip tests.

For each lesson (the notebook's stem), a list of ``PlantedBug``: ``code`` replaces the WHOLE
source of the answer cell whose grade_id is ``ex_<exercise>``; grading that notebook must lose
exactly the points of ``test_<exercise>``, and the failure message of that test cell must
contain ``message`` (case-insensitive): the misconception the check names.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PlantedBug:
    exercise: str  # the exercise name: cells ex_<exercise> and test_<exercise>
    code: str  # the wrong answer, replacing the whole answer cell
    message: str  # words the failed check's message must contain
    why: str = ""  # the misconception, for people reading this file


PLANTED_BUGS: dict[str, list[PlantedBug]] = {
    # "01_log_ratio": [PlantedBug("sequence_logprob", "def sequence_logprob(...): ...", "summing")],
    "01_log_ratio": [
        PlantedBug(
            "sequence_logprob",
            "def sequence_logprob(token_logps, completion_mask):\n"
            "    token_logps = np.asarray(token_logps, dtype=float)\n"
            "    return (token_logps * completion_mask).sum(-1) / completion_mask.sum(-1)\n",
            "averaged token log-probs instead of summing",
            "length-normalised (mean) log-prob",
        ),
        PlantedBug(
            "sequence_logprob",
            "def sequence_logprob(token_logps, completion_mask):\n"
            "    return np.asarray(token_logps, dtype=float).sum(-1)\n",
            "prompt tokens are included in the sum",
            "mask ignored: prompt and padding summed too",
        ),
        PlantedBug(
            "sequence_logprob",
            "def sequence_logprob(token_logps, completion_mask):\n"
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
    ],
    "02_kl_reference_point": [
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
    ],
    "03_value_and_loss": [
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
            "def batch_kto_loss(logp_theta, logp_ref, kl_logp_theta, kl_logp_ref, desirable,\n"
            "                   beta=0.1, lambda_D=1.0, lambda_U=1.0):\n"
            "    r = core.log_ratio(logp_theta, logp_ref)\n"
            "    z0 = core.z0_estimate(core.log_ratio(kl_logp_theta, kl_logp_ref))\n"
            "    losses = core.kto_losses(r, z0, desirable, beta, lambda_D, lambda_U)\n"
            "    return losses.sum() / np.where(desirable, lambda_D, lambda_U).sum()\n",
            "not renormalised",
            "divided by the sum of the weights",
        ),
        PlantedBug(
            "batch_kto_loss",
            "def batch_kto_loss(logp_theta, logp_ref, kl_logp_theta, kl_logp_ref, desirable,\n"
            "                   beta=0.1, lambda_D=1.0, lambda_U=1.0):\n"
            "    r = core.log_ratio(logp_theta, logp_ref)\n"
            "    z0 = core.z0_estimate(core.log_ratio(kl_logp_theta, kl_logp_ref))\n"
            "    losses = core.kto_losses(r, z0, desirable, beta, lambda_D, lambda_U)\n"
            "    return (losses[desirable].mean() + losses[~desirable].mean()) / 2\n",
            "averaged each label separately",
            "mean of the two per-label means",
        ),
        PlantedBug(
            "batch_kto_loss",
            "def batch_kto_loss(logp_theta, logp_ref, kl_logp_theta, kl_logp_ref, desirable,\n"
            "                   beta=0.1, lambda_D=1.0, lambda_U=1.0):\n"
            "    r = core.log_ratio(logp_theta, logp_ref)\n"
            "    z0 = core.z0_estimate(core.log_ratio(kl_logp_theta, kl_logp_ref))\n"
            "    losses = core.kto_losses(r, z0, desirable, beta, lambda_D, lambda_U)\n"
            "    return losses[desirable].mean()\n",
            "desirable examples only",
            "averaged over one label only",
        ),
        PlantedBug(
            "batch_kto_loss",
            "def batch_kto_loss(logp_theta, logp_ref, kl_logp_theta, kl_logp_ref, desirable,\n"
            "                   beta=0.1, lambda_D=1.0, lambda_U=1.0):\n"
            "    r = core.log_ratio(logp_theta, logp_ref)\n"
            "    z0 = np.mean(core.log_ratio(kl_logp_theta, kl_logp_ref))\n"
            "    return np.mean(core.kto_losses(r, z0, desirable, beta, lambda_D, lambda_U))\n",
            "clamp",
            "z0 not clamped at 0",
        ),
        PlantedBug(
            "batch_kto_loss",
            "def batch_kto_loss(logp_theta, logp_ref, kl_logp_theta, kl_logp_ref, desirable,\n"
            "                   beta=0.1, lambda_D=1.0, lambda_U=1.0):\n"
            "    r = core.log_ratio(logp_theta, logp_ref)\n"
            "    z0 = max(0.0, float(np.mean(r)))\n"
            "    return np.mean(core.kto_losses(r, z0, desirable, beta, lambda_D, lambda_U))\n",
            "labelled pairs",
            "z0 estimated from the matched (labelled) pairs",
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
    ],
    "04_gradients_and_saturation": [
        PlantedBug(
            "kto_loss_grad",
            "def kto_loss_grad(r, z0, desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0):\n"
            "    s = core.sigmoid(beta * (np.asarray(r) - z0))\n"
            "    return np.where(desirable, lambda_D * beta * s * (1 - s),\n"
            "                    -lambda_U * beta * s * (1 - s))\n",
            "swapped",
            "signs of the two labels exchanged",
        ),
        PlantedBug(
            "kto_loss_grad",
            "def kto_loss_grad(r, z0, desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0):\n"
            "    s = core.sigmoid(beta * (np.asarray(r) - z0))\n"
            "    return np.where(desirable, -lambda_D * s * (1 - s), lambda_U * s * (1 - s))\n",
            "factor beta",
            "chain rule's beta forgotten",
        ),
        PlantedBug(
            "kto_loss_grad",
            "def kto_loss_grad(r, z0, desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0):\n"
            "    s = core.sigmoid(beta * (np.asarray(r) - z0))\n"
            "    return np.where(desirable, -lambda_U * beta * s * (1 - s),\n"
            "                    lambda_D * beta * s * (1 - s))\n",
            "wrong class",
            "lambda_D and lambda_U exchanged",
        ),
        PlantedBug(
            "kto_loss_grad",
            "def kto_loss_grad(r, z0, desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0):\n"
            "    s = core.sigmoid(beta * (np.asarray(r) - z0))\n"
            "    return np.where(desirable, -lambda_D * beta * s, lambda_U * beta * (1 - s))\n",
            "s * (1 - s)",
            "wrong derivative of the sigmoid",
        ),
        PlantedBug(
            "autograd_grad",
            "def autograd_grad(r, z0, desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0):\n"
            "    r = torch.tensor(r, dtype=torch.float64, requires_grad=True)\n"
            "    delta = r - z0\n"
            "    losses = torch.where(torch.as_tensor(desirable),\n"
            "                         lambda_D * torch.sigmoid(-beta * delta),\n"
            "                         lambda_U * torch.sigmoid(beta * delta))\n"
            "    losses.sum().backward()\n"
            "    return r.grad.numpy()\n",
            "SUM of the losses",
            "backward() on the sum, not the mean",
        ),
        PlantedBug(
            "largest_updates",
            "def largest_updates(r, z0, desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0, k=3):\n"
            "    losses = core.kto_losses(r, z0, desirable, beta, lambda_D, lambda_U)\n"
            "    return np.argsort(-losses)[:k]\n",
            "ranked by loss",
            "largest loss taken for largest update",
        ),
        PlantedBug(
            "largest_updates",
            "def largest_updates(r, z0, desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0, k=3):\n"
            "    g = core.kto_loss_grad(r, z0, desirable, beta, lambda_D, lambda_U)\n"
            "    return np.argsort(np.abs(g))[:k]\n",
            "SMALLEST",
            "sorted ascending",
        ),
        PlantedBug(
            "largest_updates",
            "def largest_updates(r, z0, desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0, k=3):\n"
            "    g = core.kto_loss_grad(r, z0, desirable, beta, lambda_D, lambda_U)\n"
            "    return np.argsort(-g)[:k]\n",
            "signed gradient",
            "ranked the signed gradient, not its magnitude",
        ),
        PlantedBug(
            "grad_through_z0",
            "def grad_through_z0(r, r_mismatched, desirable, beta=0.1, lambda_D=1.0,\n"
            "                    lambda_U=1.0):\n"
            "    r_mis = torch.tensor(r_mismatched, dtype=torch.float64, requires_grad=True)\n"
            "    z0 = torch.clamp(r_mis.mean(), min=0).detach()\n"
            "    delta = torch.as_tensor(r, dtype=torch.float64) - z0\n"
            "    losses = torch.where(torch.as_tensor(desirable),\n"
            "                         lambda_D * torch.sigmoid(-beta * delta),\n"
            "                         lambda_U * torch.sigmoid(beta * delta))\n"
            "    losses.mean().backward()\n"
            "    return np.zeros(len(r)) if r_mis.grad is None else r_mis.grad.numpy()\n",
            "DETACHED",
            "z0 detached: no gradient reaches the mismatched pairs",
        ),
        PlantedBug(
            "grad_through_z0",
            "def grad_through_z0(r, r_mismatched, desirable, beta=0.1, lambda_D=1.0,\n"
            "                    lambda_U=1.0):\n"
            "    r_mis = torch.tensor(r_mismatched, dtype=torch.float64, requires_grad=True)\n"
            "    z0 = r_mis.mean()\n"
            "    delta = torch.as_tensor(r, dtype=torch.float64) - z0\n"
            "    losses = torch.where(torch.as_tensor(desirable),\n"
            "                         lambda_D * torch.sigmoid(-beta * delta),\n"
            "                         lambda_U * torch.sigmoid(beta * delta))\n"
            "    losses.mean().backward()\n"
            "    return r_mis.grad.numpy()\n",
            "clamp",
            "z0 not clamped at 0",
        ),
        PlantedBug(
            "grad_through_z0",
            "def grad_through_z0(r, r_mismatched, desirable, beta=0.1, lambda_D=1.0,\n"
            "                    lambda_U=1.0):\n"
            "    z0_raw = float(np.mean(r_mismatched))\n"
            "    g = core.kto_loss_grad(r, max(0.0, z0_raw), desirable, beta, lambda_D, lambda_U)\n"
            "    return np.full(len(r_mismatched), -g.mean() if z0_raw > 0 else 0.0)\n",
            "1/B",
            "forgot that each mismatched pair moves z0 by 1/B",
        ),
    ],
    # Lesson 05 (owned by the lesson 05 author)
    "05_kto_vs_dpo": [
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
            "def pairs_to_unpaired(pairs, rng):\n"
            "    rows = []\n"
            "    for p in pairs:\n"
            "        x = p['prompt']\n"
            "        rows.append({'prompt': x, 'completion': p['chosen'], 'label': False})\n"
            "        rows.append({'prompt': x, 'completion': p['rejected'], 'label': True})\n"
            "    return [rows[i] for i in rng.permutation(len(rows))]\n",
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
            "def pairs_to_unpaired(pairs, rng):\n"
            "    rows = []\n"
            "    for p in pairs:\n"
            "        x = p['prompt']\n"
            "        rows.append({'prompt': x, 'completion': p['chosen'], 'label': True})\n"
            "        rows.append({'prompt': x, 'completion': p['rejected'], 'label': False})\n"
            "    return [rows[i] for i in np.random.permutation(len(rows))]\n",
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
    ],
    "06_tiny_gpt2_kto": [
        PlantedBug(
            "completion_logps",
            "def completion_logps(logits, input_ids, attention_mask, prompt_lengths):\n"
            "    positions = torch.arange(input_ids.shape[1])\n"
            "    mask = attention_mask.bool() & (positions[None, :] >= prompt_lengths[:, None])\n"
            "    logp = torch.log_softmax(logits[:, :-1], dim=-1)\n"
            "    per_token = logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)\n"
            "    return (per_token * mask[:, 1:]).sum(-1) / mask[:, 1:].sum(-1)\n",
            "averaged token log-probs instead of summing",
            "length-normalised log-prob",
        ),
        PlantedBug(
            "completion_logps",
            "def completion_logps(logits, input_ids, attention_mask, prompt_lengths):\n"
            "    positions = torch.arange(input_ids.shape[1])\n"
            "    mask = attention_mask.bool() & (positions[None, :] >= prompt_lengths[:, None])\n"
            "    logp = torch.log_softmax(logits, dim=-1)\n"
            "    per_token = logp.gather(-1, input_ids[:, :, None]).squeeze(-1)\n"
            "    return (per_token * mask).sum(-1)\n",
            "the shift is missing",
            "logits at t scored against token t instead of t+1",
        ),
        PlantedBug(
            "completion_logps",
            "def completion_logps(logits, input_ids, attention_mask, prompt_lengths):\n"
            "    logp = torch.log_softmax(logits[:, :-1], dim=-1)\n"
            "    per_token = logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)\n"
            "    return (per_token * attention_mask[:, 1:]).sum(-1)\n",
            "prompt tokens are included in the sum",
            "attention mask only: prompt tokens counted",
        ),
        PlantedBug(
            "completion_logps",
            "def completion_logps(logits, input_ids, attention_mask, prompt_lengths):\n"
            "    positions = torch.arange(input_ids.shape[1])\n"
            "    mask = positions[None, :] >= prompt_lengths[:, None]\n"
            "    logp = torch.log_softmax(logits[:, :-1], dim=-1)\n"
            "    per_token = logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)\n"
            "    return (per_token * mask[:, 1:]).sum(-1)\n",
            "padding tokens are counted",
            "right padding summed as if it were completion",
        ),
        PlantedBug(
            "completion_logps",
            "def completion_logps(logits, input_ids, attention_mask, prompt_lengths):\n"
            "    positions = torch.arange(input_ids.shape[1])\n"
            "    mask = attention_mask.bool() & (positions[None, :] >= prompt_lengths[:, None])\n"
            "    logp = torch.log_softmax(logits[:, :-1], dim=-1)\n"
            "    per_token = logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)\n"
            "    return (per_token * mask[:, :-1]).sum(-1)\n",
            "one position off",
            "mask not shifted with the ids",
        ),
        PlantedBug(
            "kto_microbatch_loss",
            "def kto_microbatch_loss(logp_theta, logp_ref, kl_logp_theta, kl_logp_ref,\n"
            "                        desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0):\n"
            "    z0 = (kl_logp_theta - kl_logp_ref).mean().detach()\n"
            "    delta = logp_theta - logp_ref - z0\n"
            "    losses = torch.where(desirable, lambda_D * torch.sigmoid(-beta * delta),\n"
            "                         lambda_U * torch.sigmoid(beta * delta))\n"
            "    return losses.mean()\n",
            "clamp at 0",
            "negative z0 estimate not clamped",
        ),
        PlantedBug(
            "kto_microbatch_loss",
            "def kto_microbatch_loss(logp_theta, logp_ref, kl_logp_theta, kl_logp_ref,\n"
            "                        desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0):\n"
            "    z0 = (logp_theta - logp_ref).mean().clamp(min=0).detach()\n"
            "    delta = logp_theta - logp_ref - z0\n"
            "    losses = torch.where(desirable, lambda_D * torch.sigmoid(-beta * delta),\n"
            "                         lambda_U * torch.sigmoid(beta * delta))\n"
            "    return losses.mean()\n",
            "mismatched pairs",
            "z0 from the labelled (matched) pairs",
        ),
        PlantedBug(
            "kto_microbatch_loss",
            "def kto_microbatch_loss(logp_theta, logp_ref, kl_logp_theta, kl_logp_ref,\n"
            "                        desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0):\n"
            "    z0 = (kl_logp_theta - kl_logp_ref).mean().clamp(min=0)\n"
            "    delta = logp_theta - logp_ref - z0\n"
            "    losses = torch.where(desirable, lambda_D * torch.sigmoid(-beta * delta),\n"
            "                         lambda_U * torch.sigmoid(beta * delta))\n"
            "    return losses.mean()\n",
            "z0 is not detached",
            "gradient flows into the mismatched pairs",
        ),
        PlantedBug(
            "kto_microbatch_loss",
            "def kto_microbatch_loss(logp_theta, logp_ref, kl_logp_theta, kl_logp_ref,\n"
            "                        desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0):\n"
            "    z0 = (kl_logp_theta - kl_logp_ref).mean().clamp(min=0).detach()\n"
            "    delta = logp_theta - logp_ref - z0\n"
            "    losses = torch.where(desirable, lambda_D * torch.sigmoid(-beta * delta),\n"
            "                         lambda_U * torch.sigmoid(beta * delta))\n"
            "    return losses.sum()\n",
            "summed the per-example losses",
            "sum instead of mean over the microbatch",
        ),
        PlantedBug(
            "kto_microbatch_loss",
            "def kto_microbatch_loss(logp_theta, logp_ref, kl_logp_theta, kl_logp_ref,\n"
            "                        desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0):\n"
            "    z0 = (kl_logp_theta - kl_logp_ref).mean().clamp(min=0).detach()\n"
            "    delta = logp_theta - logp_ref - z0\n"
            "    losses = torch.where(desirable, lambda_D * torch.sigmoid(-beta * delta),\n"
            "                         lambda_U * torch.sigmoid(beta * delta))\n"
            "    return losses.mean().item()\n",
            "no gradient",
            "returned a Python float: loss.backward() impossible",
        ),
        PlantedBug(
            "score_samples",
            "def score_samples(prompts, completions):\n"
            "    n = len(completions)\n"
            "    well_formed = [task.is_well_formed(c) for c in completions]\n"
            "    return [sum(well_formed) / n, sum(well_formed) / n, len(set(completions))]\n",
            "well-formed is not enough",
            "the format alone counted as a thumbs-up",
        ),
        PlantedBug(
            "score_samples",
            "def score_samples(prompts, completions):\n"
            "    n = len(completions)\n"
            "    labels = task.judge(prompts, completions)\n"
            "    well_formed = [task.is_well_formed(c) for c in completions]\n"
            "    return [sum(labels) / n, sum(well_formed) / n,\n"
            "            len(set(zip(prompts, completions)))]\n",
            "not distinct (prompt, completion) pairs",
            "diversity counted over prompt-completion pairs",
        ),
    ],
}
