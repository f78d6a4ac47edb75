"""Lesson 04, gradients and saturation: its planted wrong answers."""

from planted_bugs.bug import PlantedBug

BUGS = [
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
]
