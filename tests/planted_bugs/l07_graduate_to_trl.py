"""Lesson 07, graduate to TRL: its planted wrong answers."""

from planted_bugs.bug import PlantedBug

# The right mapping, one line per TRL field; a bug replaces or drops lines of it.
_RIGHT_KWARGS = {
    "max_steps": "config.steps",
    "per_device_train_batch_size": "config.batch_size // num_processes",
    "learning_rate": "config.lr",
    "beta": "config.beta",
    "desirable_weight": "config.lambda_D",
    "undesirable_weight": "config.lambda_U",
    "loss_type": "config.loss_type",
    "max_grad_norm": "config.max_grad_norm",
    "adam_beta1": "config.adam_betas[0]",
    "adam_beta2": "config.adam_betas[1]",
    "weight_decay": "config.weight_decay",
    "seed": "config.seed",
    "lr_scheduler_type": '"linear"',
    "warmup_steps": "0",
}


def _kwargs(**changes) -> str:
    """A trl_kwargs answer with some fields changed (a value) or dropped (None)."""
    fields = {**_RIGHT_KWARGS, **changes}
    body = "".join(f"        {k!r}: {v},\n" for k, v in fields.items() if v is not None)
    return f"def trl_kwargs(config, num_processes=1):\n    return {{\n{body}    }}\n"


def _logs(
    r: str = "log[key] / beta",
    z0: str = 'log["kl"]',
    delta_U: str = "r_U - z0",
    absent: str = "float('nan')",
) -> str:
    """A from_trl_logs answer with the given pieces, right otherwise."""
    return (
        "def from_trl_logs(log, beta):\n"
        "    def mean_r(key):\n"
        "        if key not in log or math.isnan(log[key]):\n"
        f"            return {absent}\n"
        f"        return {r}\n"
        '    r_D, r_U = mean_r("rewards/chosen"), mean_r("rewards/rejected")\n'
        f"    z0 = {z0}\n"
        '    return {"r_D": r_D, "r_U": r_U, "z0": z0, "delta_D": r_D - z0,\n'
        f'            "delta_U": {delta_U}}}\n'
    )


def _z0(trl: str, halos: str) -> str:
    return (
        "def z0_across_processes(per_process):\n"
        "    parts = [np.asarray(r, dtype=float) for r in per_process]\n"
        "    means = np.array([r.mean() for r in parts])\n"
        "    pooled = np.concatenate(parts).mean()\n"
        f"    return {trl}, {halos}\n"
    )


BUGS = [
    PlantedBug(
        "trl_kwargs",
        _kwargs(desirable_weight="config.lambda_U", undesirable_weight="config.lambda_D"),
        "swapped",
        "lambda_D and lambda_U swapped",
    ),  # fmt: skip
    PlantedBug("trl_kwargs", _kwargs(beta=None), "beta did not reach TRL", "beta forgotten"),
    PlantedBug(
        "trl_kwargs",
        _kwargs(warmup_steps="config.warmup_steps"),
        "kept lesson 06's warmup",
        "lesson 06's warmup kept",
    ),  # fmt: skip
    PlantedBug(
        "trl_kwargs",
        _kwargs(lr_scheduler_type='"constant_with_warmup"', warmup_steps=None),
        "schedule is not the matching one",
        "constant schedule",
    ),  # fmt: skip
    PlantedBug(
        "trl_kwargs",
        _kwargs(per_device_train_batch_size="config.batch_size"),
        "PER PROCESS",
        "TRL's per-device batch treated as the global batch",
    ),  # fmt: skip
    PlantedBug(
        "trl_kwargs",
        _kwargs(learning_rate=None, lr="config.lr"),
        "the course's name",
        "course names instead of TRL's",
    ),  # fmt: skip
    PlantedBug(
        "trl_kwargs",
        _kwargs(learning_rate=None),
        "learning rate did not reach TRL",
        "lr forgotten: TRL's 1e-6",
    ),  # fmt: skip
    PlantedBug(
        "trl_kwargs", _kwargs(max_steps=None), "max_steps is missing", "epochs instead of steps"
    ),  # fmt: skip
    PlantedBug(
        "trl_kwargs",
        _kwargs(adam_beta1=None, adam_beta2=None),
        "adam_betas did not reach TRL",
        "Adam betas forgotten",
    ),  # fmt: skip
    PlantedBug(
        "trl_kwargs",
        _kwargs(gradient_accumulation_steps="2"),
        "something else you passed changes training",
        "an extra setting that only the run exposes",
    ),  # fmt: skip
    PlantedBug(
        "from_trl_logs", _logs(r="log[key]"), "without the factor beta", "forgot to divide by beta"
    ),  # fmt: skip
    PlantedBug(
        "from_trl_logs",
        _logs(z0='log["kl"] / beta'),
        "kl is not scaled by beta",
        "kl treated like a reward",
    ),  # fmt: skip
    PlantedBug(
        "from_trl_logs",
        _logs(delta_U="z0 - r_U"),
        "for both labels",
        "delta flipped for undesirable rows",
    ),  # fmt: skip
    PlantedBug(
        "from_trl_logs", _logs(absent="0.0"), "not 0", "an absent label reported as r = 0"
    ),  # fmt: skip
    PlantedBug(
        "from_trl_logs",
        "def from_trl_logs(log, beta):\n"
        '    r_D, r_U = log["rewards/chosen"] / beta, log["rewards/rejected"] / beta\n'
        '    z0 = log["kl"]\n'
        '    return {"r_D": r_D, "r_U": r_U, "z0": z0, "delta_D": r_D - z0, "delta_U": r_U - z0}\n',
        "single-label microbatch",
        "KeyError on a batch with one label",
    ),
    PlantedBug(
        "from_trl_logs",
        _logs(r='log[key.replace("rewards", "logps")]'),
        "policy's log-probs alone",
        "logps/* read as the log-ratio",
    ),  # fmt: skip
    PlantedBug(
        "from_trl_logs",
        _logs(delta_U="r_U").replace('"delta_D": r_D - z0', '"delta_D": r_D'),
        "ignores z0",
        "delta without the reference point",
    ),  # fmt: skip
    PlantedBug(
        "z0_across_processes",
        _z0(
            "np.maximum(0, means).mean()",
            "sum(r.size * max(0, r.mean()) for r in parts) / sum(r.size for r in parts)",
        ),
        "before combining",
        "each process clamped first",
    ),  # fmt: skip
    PlantedBug(
        "z0_across_processes",
        _z0("max(0, pooled)", "max(0, pooled)"),
        "TRL averages the per-process MEANS",
        "TRL's z0 pooled like HALOs'",
    ),  # fmt: skip
    PlantedBug(
        "z0_across_processes",
        _z0("max(0, means.mean())", "max(0, means.mean())"),
        "HALOs pools the rows",
        "HALOs' z0 as a mean of means",
    ),  # fmt: skip
    PlantedBug(
        "z0_across_processes", _z0("means.mean()", "pooled"), "clamped at 0 after", "no clamp"
    ),  # fmt: skip
    PlantedBug(
        "z0_across_processes",
        _z0("max(0, means[0])", "max(0, means[0])"),
        "only the first process",
        "rank 0's estimate only",
    ),  # fmt: skip
    PlantedBug(
        "z0_across_processes",
        _z0("max(0, pooled)", "max(0, means.mean())"),
        "in that order",
        "(HALOs, TRL) instead of (TRL, HALOs)",
    ),  # fmt: skip
]
