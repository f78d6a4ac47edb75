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
        "def autograd_grad(r, z0, desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0,\n"
        "                  value=torch.sigmoid):\n"
        "    r = torch.tensor(r, dtype=torch.float64, requires_grad=True)\n"
        "    x = beta * (r - z0)\n"
        "    losses = torch.where(torch.as_tensor(desirable), lambda_D * (1 - value(x)),\n"
        "                         lambda_U * (1 - value(-x)))\n"
        "    losses.sum().backward()\n"
        "    return r.grad.numpy()\n",
        "SUM of the losses",
        "backward() on the sum, not the mean",
    ),
    PlantedBug(
        "autograd_grad",
        "def autograd_grad(r, z0, desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0,\n"
        "                  value=torch.sigmoid):\n"
        "    s = core.sigmoid(beta * (np.asarray(r) - z0))\n"
        "    g = np.where(desirable, -lambda_D, lambda_U) * beta * s * (1 - s)\n"
        "    return g / len(r)\n",
        "you used the sigmoid",
        "the sigmoid's derivative by hand, value ignored (fails the visible tanh case)",
    ),
    PlantedBug(
        "autograd_grad",
        "def autograd_grad(r, z0, desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0,\n"
        "                  value=torch.sigmoid):\n"
        "    x = beta * (np.asarray(r) - z0)\n"
        "    if value is torch.tanh:  # d/dx tanh(x) = 1 - tanh(x)**2\n"
        "        bump = 1 - np.tanh(x) ** 2\n"
        "    else:  # d/dx sigmoid(x) = s * (1 - s)\n"
        "        bump = core.sigmoid(x) * core.sigmoid(-x)\n"
        "    return np.where(desirable, -lambda_D, lambda_U) * beta * bump / len(r)\n",
        "you used the sigmoid",
        "derivatives by hand for the visible value functions: passes the visible check, "
        "fails the hidden",
    ),
    PlantedBug(
        "autograd_grad",
        "def autograd_grad(r, z0, desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0,\n"
        "                  value=torch.sigmoid):\n"
        "    def mean_loss(r):\n"
        "        x = beta * (torch.tensor(r) - z0)\n"
        "        losses = torch.where(torch.as_tensor(desirable), lambda_D * (1 - value(x)),\n"
        "                             lambda_U * (1 - value(-x)))\n"
        "        return float(losses.mean())\n"
        "    h = 1e-5\n"
        "    return np.array([(mean_loss(r + h * e) - mean_loss(r - h * e)) / (2 * h)\n"
        "                     for e in np.eye(len(r))])\n",
        "not exact",
        "a central difference: close to the gradient, not float64-exact",
    ),
    PlantedBug(
        "autograd_grad",
        "def autograd_grad(r, z0, desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0,\n"
        "                  value=torch.sigmoid):\n"
        "    r = torch.tensor(r.tolist(), requires_grad=True)  # a list of floats: float32\n"
        "    x = beta * (r - z0)\n"
        "    losses = torch.where(torch.as_tensor(desirable), lambda_D * (1 - value(x)),\n"
        "                         lambda_U * (1 - value(-x)))\n"
        "    losses.mean().backward()\n"
        "    return r.grad.numpy()\n",
        "float32",
        "autograd in float32",
    ),
    PlantedBug(
        "autograd_grad",
        "def autograd_grad(r, z0, desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0,\n"
        "                  value=torch.sigmoid):\n"
        "    r = torch.tensor(r, dtype=torch.float64, requires_grad=True)\n"
        "    x = beta * (r - z0)\n"
        "    # 1 - value(-x) = value(x) holds for the sigmoid, not for every value function\n"
        "    losses = torch.where(torch.as_tensor(desirable), lambda_D * (1 - value(x)),\n"
        "                         lambda_U * value(x))\n"
        "    losses.mean().backward()\n"
        "    return r.grad.numpy()\n",
        "symmetry",
        "the sigmoid's symmetry in the undesirable loss: passes the visible check, fails "
        "the hidden",
    ),
    PlantedBug(
        "largest_updates",
        "def largest_updates(r, z0, desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0, share=0.8):\n"
        "    losses = core.kto_losses(r, z0, desirable, beta, lambda_D, lambda_U)\n"
        "    g = np.abs(core.kto_loss_grad(r, z0, desirable, beta, lambda_D, lambda_U))\n"
        "    order = np.argsort(-losses, kind=\"stable\")\n"
        "    carried = np.cumsum(g[order])\n"
        "    return order[: np.searchsorted(carried, share * carried[-1]) + 1]\n",
        "ranked by loss",
        "largest loss taken for largest update",
    ),
    PlantedBug(
        "largest_updates",
        "def largest_updates(r, z0, desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0, share=0.8):\n"
        "    g = np.abs(core.kto_loss_grad(r, z0, desirable, beta, lambda_D, lambda_U))\n"
        "    order = np.argsort(-g, kind=\"stable\")\n"
        "    carried = np.cumsum(g[order])\n"
        "    return order[: np.searchsorted(carried, share * carried[-1])]\n",
        "one example short",
        "off by one: the example that reaches the share left out",
    ),
    PlantedBug(
        "largest_updates",
        "def largest_updates(r, z0, desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0, share=0.8):\n"
        "    g = np.abs(core.kto_loss_grad(r, z0, desirable, beta, lambda_D, lambda_U))\n"
        "    order = np.argsort(-g, kind=\"stable\")\n"
        "    k = int(np.sum(np.cumsum(g[order]) <= share * g.sum())) + 2\n"
        "    return order[:k]\n",
        "one example too many",
        "off by one the other way",
    ),
    PlantedBug(
        "largest_updates",
        "def largest_updates(r, z0, desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0, share=0.8):\n"
        "    g = core.kto_loss_grad(r, z0, desirable, beta, lambda_D, lambda_U)\n"
        "    order = np.argsort(-g, kind=\"stable\")\n"
        "    carried = np.cumsum(np.abs(g[order]))\n"
        "    return order[: np.searchsorted(carried, share * carried[-1]) + 1]\n",
        "signed gradient",
        "ranked the signed gradient, not its magnitude",
    ),
    PlantedBug(
        "largest_updates",
        "def largest_updates(r, z0, desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0, share=0.8):\n"
        "    g = np.abs(core.kto_loss_grad(r, z0, desirable, beta, lambda_D, lambda_U))\n"
        "    order = np.argsort(g, kind=\"stable\")[::-1]  # largest first, but ties reversed\n"
        "    carried = np.cumsum(g[order])\n"
        "    return order[: np.searchsorted(carried, share * carried[-1]) + 1]\n",
        "ties keep the batch order",
        "a reversed ascending sort: tied examples in reverse batch order",
    ),
    PlantedBug(
        "largest_updates",
        "def largest_updates(r, z0, desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0, share=0.8):\n"
        "    g = np.abs(core.kto_loss_grad(r, z0, desirable, beta, lambda_D, lambda_U))\n"
        "    order = np.argsort(-g, kind=\"stable\")\n"
        "    carried = np.cumsum(g[order])\n"
        "    chosen = order[: np.searchsorted(carried, share * carried[-1]) + 1]\n"
        "    return np.isin(np.arange(len(g)), chosen)\n",
        "mask",
        "a mask of the set instead of its indices, largest first",
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
