"""Lessons 03 and 04: their checks, planted bugs, demos and solution notebooks.

Each check must pass the reference (core, and the notebooks' own solutions) in visible and
hidden mode, and fail every planted misconception with the words its message promises. The
demos are driven from Python as the lessons describe them, and every render function is swept
over its controls' ranges with warnings turned into errors.
"""

from __future__ import annotations

import itertools
import warnings

import nbformat
import numpy as np
import pytest
import torch
from browser_specs import readout_numbers, readout_text
from conftest import SOLUTIONS
from planted_bugs import PLANTED_BUGS

from kto_course import checks, core, demos, figures

LESSONS = {
    "03_value_and_loss": ("kto_losses", "batch_kto_loss", "recommended_weights"),
    "04_gradients_and_saturation": (
        "kto_loss_grad",
        "autograd_grad",
        "grad_through_z0",
        "largest_updates",
    ),
}
EXERCISES = [name for names in LESSONS.values() for name in names]
CHECKS = {name: getattr(checks, f"check_{name}") for name in EXERCISES}


# ---------------------------------------------------------------------------------------------
# Reference answers: from core, or written in torch for the autograd exercises
# ---------------------------------------------------------------------------------------------


def ref_batch_kto_loss(logp_theta, logp_ref, kl_logp_theta, kl_logp_ref, desirable, beta=0.1,
                       lambda_D=1.0, lambda_U=1.0):
    r = core.log_ratio(logp_theta, logp_ref)
    z0 = core.z0_estimate(core.log_ratio(kl_logp_theta, kl_logp_ref))
    return core.kto_loss(r, z0, desirable, beta, lambda_D, lambda_U)


def _torch_losses(r, z0, desirable, beta, lambda_D, lambda_U):
    delta = r - z0
    return torch.where(torch.as_tensor(desirable), lambda_D * torch.sigmoid(-beta * delta),
                       lambda_U * torch.sigmoid(beta * delta))


def ref_autograd_grad(r, z0, desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0):
    r = torch.tensor(r, dtype=torch.float64, requires_grad=True)
    _torch_losses(r, z0, desirable, beta, lambda_D, lambda_U).mean().backward()
    return r.grad.numpy()


def ref_grad_through_z0(r, r_mismatched, desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0):
    r_mis = torch.tensor(r_mismatched, dtype=torch.float64, requires_grad=True)
    z0 = torch.clamp(r_mis.mean(), min=0)
    r = torch.tensor(r, dtype=torch.float64)
    _torch_losses(r, z0, desirable, beta, lambda_D, lambda_U).mean().backward()
    return r_mis.grad.numpy()


def ref_largest_updates(r, z0, desirable, beta=0.1, lambda_D=1.0, lambda_U=1.0, k=3):
    g = core.kto_loss_grad(r, z0, desirable, beta, lambda_D, lambda_U)
    return np.argsort(-np.abs(g), kind="stable")[:k]


REFERENCES = {
    "kto_losses": core.kto_losses,
    "batch_kto_loss": ref_batch_kto_loss,
    "recommended_weights": core.recommended_weights,
    "kto_loss_grad": core.kto_loss_grad,
    "autograd_grad": ref_autograd_grad,
    "grad_through_z0": ref_grad_through_z0,
    "largest_updates": ref_largest_updates,
}


def _answer_cells(lesson: str) -> dict[str, str]:
    nb = nbformat.read(SOLUTIONS / f"{lesson}.ipynb", as_version=4)
    return {
        c.metadata["nbgrader"]["grade_id"].removeprefix("ex_"): c.source
        for c in nb.cells
        if c.metadata.get("nbgrader", {}).get("grade_id", "").startswith("ex_")
    }


def _define(code: str, name: str):
    """Run an answer cell's code as the notebook would (after its imports); return the function."""
    namespace = {"np": np, "torch": torch, "core": core}
    exec(compile(code, f"<answer {name}>", "exec"), namespace)
    return namespace[name]


@pytest.mark.parametrize("hidden", [False, True], ids=["visible", "hidden"])
@pytest.mark.parametrize("name", EXERCISES)
def test_check_passes_the_reference(name, hidden, capsys):
    CHECKS[name](REFERENCES[name], hidden=hidden)
    assert "passed" in capsys.readouterr().out


@pytest.mark.parametrize("hidden", [False, True], ids=["visible", "hidden"])
@pytest.mark.parametrize("lesson", list(LESSONS))
def test_check_passes_the_notebook_solution(lesson, hidden):
    answers = _answer_cells(lesson)
    assert set(answers) == set(LESSONS[lesson])
    for name, code in answers.items():
        CHECKS[name](_define(code, name), hidden=hidden)


# ---------------------------------------------------------------------------------------------
# Misconceptions: the planted bugs, and more wrong answers written here
# ---------------------------------------------------------------------------------------------

PLANTED = [(lesson, i) for lesson in LESSONS for i in range(len(PLANTED_BUGS[lesson]))]


def _fails_with(fn, name: str, words: str, hidden: bool = False) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a naive learner's exp() may overflow
        with pytest.raises(checks.CheckFailed) as failure:
            CHECKS[name](fn, hidden=hidden)
    assert words.lower() in str(failure.value).lower(), str(failure.value)


@pytest.mark.parametrize("lesson,index", PLANTED, ids=[f"{a}-{i}" for a, i in PLANTED])
def test_planted_bug_fails_its_visible_check_with_its_words(lesson, index):
    bug = PLANTED_BUGS[lesson][index]
    assert bug.exercise in LESSONS[lesson]
    _fails_with(_define(bug.code, bug.exercise), bug.exercise, bug.message)


@pytest.mark.parametrize("lesson", list(LESSONS))
def test_every_exercise_has_a_planted_bug(lesson):
    assert {bug.exercise for bug in PLANTED_BUGS[lesson]} == set(LESSONS[lesson])


def _losses(transform):
    """A kto_losses variant: transform(r, z0, d, beta, lambda_D, lambda_U) -> per-example losses."""
    return lambda r, z0, d, beta=0.1, lambda_D=1.0, lambda_U=1.0: transform(
        np.asarray(r), z0, np.asarray(d), beta, lambda_D, lambda_U
    )


def _grads(transform):
    return lambda r, z0, d, beta=0.1, lambda_D=1.0, lambda_U=1.0: transform(
        np.asarray(r), z0, np.asarray(d), beta, lambda_D, lambda_U
    )


def _batch(transform):
    """A batch_kto_loss variant: transform(r, kl_r, d, losses, lam) -> the batch loss."""

    def fn(lt, lr, klt, klr, d, beta=0.1, lambda_D=1.0, lambda_U=1.0):
        r, kl_r = core.log_ratio(lt, lr), core.log_ratio(klt, klr)
        losses = core.kto_losses(r, core.z0_estimate(kl_r), d, beta, lambda_D, lambda_U)
        return transform(r, kl_r, np.asarray(d), losses, np.where(d, lambda_D, lambda_U))

    return fn


def _weights(**changes):
    def fn(n_D, n_U, lambda_D=1.0, lambda_U=1.0):
        out = dict(core.recommended_weights(n_D, n_U, lambda_D, lambda_U))
        out.update({k: f(n_D, n_U, lambda_D, lambda_U, out) for k, f in changes.items()})
        return out

    return fn


def _sig(x):
    return np.asarray(core.sigmoid(x))


MISCONCEPTIONS = [
    # lesson 03, kto_losses
    ("kto_losses", _losses(lambda r, z0, d, b, lD, lU: core.kto_losses(r, 0.0, d, b, lD, lU)),
     "z0 is ignored"),
    ("kto_losses", _losses(lambda r, z0, d, b, lD, lU: core.kto_losses(r + 2 * z0, z0, d, b, lD,
                                                                       lU)),
     "wrong sign"),
    ("kto_losses", _losses(lambda r, z0, d, b, lD, lU: core.kto_losses(r, z0, d, b, 1.0, 1.0)),
     "weights are missing"),
    ("kto_losses", _losses(lambda r, z0, d, b, lD, lU: np.where(d, lD, lU)
                           - core.kto_losses(r, z0, d, b, lD, lU)), "returned the value v_y"),
    ("kto_losses", _losses(lambda r, z0, d, b, lD, lU: 1 - np.where(d, lD, lU)
                           + core.kto_losses(r, z0, d, b, lD, lU)), "subtracted the value from 1"),
    ("kto_losses", _losses(lambda r, z0, d, b, lD, lU: np.where(
        d, lD * _sig(b * (r - z0)), lU * _sig(b * (r - z0)))), "desirable loss rises"),
    ("kto_losses", _losses(lambda r, z0, d, b, lD, lU: core.kto_losses(r, z0, d, b, lD, lU)[:1]),
     "shape"),
    # lesson 03, batch_kto_loss
    ("batch_kto_loss", _batch(lambda r, kl_r, d, losses, lam: losses.sum()), "summed"),
    ("batch_kto_loss", _batch(lambda r, kl_r, d, losses, lam: losses[~d].mean()),
     "undesirable examples only"),
    ("batch_kto_loss", _batch(lambda r, kl_r, d, losses, lam: losses), "ONE number"),
    # lesson 03, recommended_weights
    ("recommended_weights", _weights(ratio=lambda nD, nU, lD, lU, o: nD / nU),
     "weights are missing"),
    ("recommended_weights", _weights(in_range=lambda nD, nU, lD, lU, o: o["ratio"] >= 1),
     "in_range is wrong"),
    ("recommended_weights", _weights(in_range=lambda nD, nU, lD, lU, o: int(o["in_range"])),
     "True or False"),
    ("recommended_weights",
     _weights(lambda_U_range=lambda nD, nU, lD, lU, o: o["lambda_U_range"][::-1]),
     "low <= high"),
    ("recommended_weights", lambda n_D, n_U, lambda_D=1.0, lambda_U=1.0: [1.0, True], "dict"),
    ("recommended_weights", lambda n_D, n_U, lambda_D=1.0, lambda_U=1.0: {"ratio": 1.0},
     "lacks the key"),
    # lesson 04, kto_loss_grad
    ("kto_loss_grad", _grads(lambda r, z0, d, b, lD, lU: -np.abs(core.kto_loss_grad(
        r, z0, d, b, lD, lU))), "undesirable gradient is negative"),
    ("kto_loss_grad", _grads(lambda r, z0, d, b, lD, lU: core.kto_loss_grad(r, z0, d, 1.0, lD, lU)),
     "beta is missing"),
    ("kto_loss_grad", _grads(lambda r, z0, d, b, lD, lU: core.kto_loss_grad(r, 0.0, d, b, lD, lU)),
     "z0 is ignored"),
    ("kto_loss_grad", _grads(lambda r, z0, d, b, lD, lU: core.kto_loss_grad(r, z0, d, b, 1.0, 1.0)),
     "lambda_y is missing"),
    ("kto_loss_grad", _grads(lambda r, z0, d, b, lD, lU: core.kto_loss_grad(r, z0, d, b, lD, lU)
                             / len(r)), "divided by the batch size"),
    # lesson 04, autograd_grad
    ("autograd_grad", lambda *a: -ref_autograd_grad(*a), "sign is flipped"),
    ("autograd_grad",
     lambda r, z0, d, b=0.1, lD=1.0, lU=1.0: ref_autograd_grad(r, z0, d, 1.0, lD, lU),
     "beta is missing"),
    ("autograd_grad",
     lambda r, z0, d, b=0.1, lD=1.0, lU=1.0: ref_autograd_grad(r, z0, d, b, lU, lD),
     "wrong class"),
    # lesson 04, grad_through_z0
    ("grad_through_z0", lambda *a: -ref_grad_through_z0(*a), "sign is flipped"),
    ("grad_through_z0", lambda *a: np.zeros(len(a[0])), "DETACHED"),
    ("grad_through_z0", lambda *a: ref_grad_through_z0(*a) * len(a[0]) ** 2, "two factors 1/B"),
    # lesson 04, largest_updates
    ("largest_updates", lambda *a: ref_largest_updates(*a)[::-1], "wrong order"),
    ("largest_updates", lambda r, z0, d, b=0.1, lD=1.0, lU=1.0, k=3: np.argsort(np.abs(r - z0))[:k],
     "closeness to z0"),
    ("largest_updates", lambda r, z0, d, b=0.1, lD=1.0, lU=1.0, k=3: np.argsort(np.abs(r))[:k],
     "ranked by |r|"),
    ("largest_updates", lambda r, z0, d, b=0.1, lD=1.0, lU=1.0, k=3: np.sort(
        np.abs(core.kto_loss_grad(r, z0, d, b, lD, lU)))[::-1][:k], "INDICES"),
]


@pytest.mark.parametrize("name,fn,words", MISCONCEPTIONS,
                         ids=[f"{n}-{w}" for n, _, w in MISCONCEPTIONS])
def test_misconception_is_named(name, fn, words):
    _fails_with(fn, name, words)


def test_batch_loss_per_label_means_on_a_one_label_batch_names_the_cause():
    def per_label(lt, lr, klt, klr, d, beta=0.1, lambda_D=1.0, lambda_U=1.0):
        r = core.log_ratio(lt, lr)
        losses = core.kto_losses(r, core.z0_estimate(core.log_ratio(klt, klr)), d, beta,
                                 lambda_D, lambda_U)
        with np.errstate(invalid="ignore"):
            means = [losses[d].mean() if d.any() else np.nan,
                     losses[~d].mean() if (~d).any() else np.nan]
        return sum(means) / 2

    _fails_with(per_label, "batch_kto_loss", "averaged each label separately")


def test_z0_clamp_is_checked_in_grad_through_z0():
    def unclamped(r, r_mis, d, beta=0.1, lambda_D=1.0, lambda_U=1.0):
        g = core.kto_loss_grad(r, float(np.mean(r_mis)), d, beta, lambda_D, lambda_U)
        return np.full(len(r_mis), -np.mean(g) / len(r_mis))

    _fails_with(unclamped, "grad_through_z0", "clamp")


# ---------------------------------------------------------------------------------------------
# Broken answers: a raise, None, NaN, a wrong shape
# ---------------------------------------------------------------------------------------------


def _raises(*args, **kwargs):
    raise ValueError("boom")


def _returns_none(*args, **kwargs):
    return None


def _returns_nan(*args, **kwargs):
    if isinstance(args[0], int):  # recommended_weights(n_D, ...)
        return {"ratio": float("nan"), "in_range": False, "lambda_D_range": (1, 2),
                "lambda_U_range": (1, 2)}
    if len(args) == 7:  # largest_updates(..., k)
        return np.full(args[6], np.nan)
    return np.full(np.shape(args[0]), np.nan)


def _wrong_shape(*args, **kwargs):
    if isinstance(args[0], int):
        return {"ratio": [1.0, 2.0], "in_range": False, "lambda_D_range": (1, 2),
                "lambda_U_range": (1, 2)}
    return np.zeros(101)


BROKEN = [
    (_raises, "raised ValueError: boom"),
    (_returns_none, "None"),
    (_returns_nan, "NaN"),
    (_wrong_shape, "shape"),
]


@pytest.mark.parametrize("fn,words", BROKEN, ids=[w for _, w in BROKEN])
@pytest.mark.parametrize("name", EXERCISES)
def test_broken_answer_fails_clearly(name, fn, words):
    if name == "batch_kto_loss" and fn is _wrong_shape:
        words = "ONE number"
    _fails_with(fn, name, words)
    _fails_with(fn, name, words, hidden=True)


# ---------------------------------------------------------------------------------------------
# Demos driven from Python, as the lessons describe them
# ---------------------------------------------------------------------------------------------


def _numbers(demo) -> dict[str, float]:
    return readout_numbers(readout_text(demo.readout.value))


def test_value_loss_explorer_flips_and_saturates():
    demo = demos.value_loss_explorer()
    c = demo.controls
    start, plot = _numbers(demo), demo.plot.value
    assert start["dL/dr"] < 0 < start["loss"]

    c["r"].value = 10.0  # a desirable example moving up: lower loss
    up = _numbers(demo)
    assert up["loss"] < start["loss"] and demo.plot.value != plot

    c["desirable"].value = False  # same place, other label: the gradient flips sign
    flipped = _numbers(demo)
    assert flipped["dL/dr"] > 0 and flipped["loss"] > up["loss"]
    assert flipped["dL/dr"] == pytest.approx(-up["dL/dr"])

    c["desirable"].value = True
    c["r"].value = 40.0  # far above the baseline: the gradient has saturated
    far = _numbers(demo)
    assert abs(far["dL/dr"]) < abs(up["dL/dr"]) and far["|dL/dr| / peak"] < 10

    c["r"].value = c["z0"].value  # at the baseline: the peak lambda * beta / 4
    at_z0 = _numbers(demo)
    assert at_z0["|dL/dr| / peak"] == pytest.approx(100)
    assert at_z0["peak |dL/dr|"] == pytest.approx(0.1 / 4)

    c["beta"].value = 0.5
    assert _numbers(demo)["peak |dL/dr|"] == pytest.approx(0.5 / 4)
    c["lambda_D"].value = 2.0
    assert _numbers(demo)["peak |dL/dr|"] == pytest.approx(2.0 * 0.5 / 4)
    c["desirable"].value = False  # lambda_U is still 1
    assert _numbers(demo)["peak |dL/dr|"] == pytest.approx(0.5 / 4)
    c["lambda_U"].value = 3.0
    assert _numbers(demo)["loss"] == pytest.approx(1.5)  # lambda_U / 2 at the baseline


def test_imbalance_explorer_reports_the_rule():
    demo = demos.imbalance_explorer()
    c = demo.controls
    assert _numbers(demo)["ratio"] == pytest.approx(0.25)
    assert "OUTSIDE" in demo.readout.value
    c["lambda_D"].value = 4.5
    assert _numbers(demo)["ratio"] == pytest.approx(1.125, rel=5e-3)  # printed to 3 digits
    assert "inside" in demo.readout.value
    share = _numbers(demo)["desirable share of the weighted mass"]
    c["n_D"].value = 2000
    assert _numbers(demo)["desirable share of the weighted mass"] > share
    c["lambda_U"].value = 4.0
    assert _numbers(demo)["ratio"] < 1


def test_gradient_batch_explorer_concentrates_with_beta():
    demo = demos.gradient_batch_explorer()
    c = demo.controls
    start, plot = _numbers(demo), demo.plot.value
    c["beta"].value = 0.3
    sharp = _numbers(demo)
    assert sharp["top-25% share"] > start["top-25% share"]
    assert sharp["hard |dL/dr| / peak"] < start["hard |dL/dr| / peak"]
    assert demo.plot.value != plot
    c["beta"].value = 0.1
    c["r_hard"].value = -60.0
    farther = _numbers(demo)
    assert farther["hard |dL/dr| / peak"] < start["hard |dL/dr| / peak"]
    assert farther["hard delta"] == pytest.approx(-62)
    c["beta"].value = 0.05
    c["r_hard"].value = -30.0
    assert _numbers(demo)["hard |dL/dr| / peak"] > 50


def test_top_share_grows_with_beta():
    shares = [figures.gradient_batch(beta, 2.0, -30.0)["top_share"] for beta in
              (0.02, 0.05, 0.1, 0.3, 1.0)]
    assert shares == sorted(shares)


# ---------------------------------------------------------------------------------------------
# Every render function over its controls' whole ranges: no warning, no NaN
# ---------------------------------------------------------------------------------------------


def _ranges(demo) -> dict[str, list]:
    out = {}
    for name, control in demo.controls.items():
        if hasattr(control, "options"):
            out[name] = [value for _, value in control.options]
        else:
            lo, hi = control.min, control.max
            out[name] = [lo, lo + 0.37 * (hi - lo), hi]
            if isinstance(control.value, int):
                out[name] = [int(v) for v in out[name]]
    return out


SWEEPS = [
    (demos.value_loss_explorer, figures.value_loss_figure),
    (demos.imbalance_explorer, figures.imbalance_figure),
    (demos.gradient_batch_explorer, figures.gradient_batch_figure),
]


def _render_ok(render, values: dict, draw: bool) -> None:
    fig, html = render(**values)
    text = readout_text(html)
    numbers = readout_numbers(text)
    assert numbers, text
    assert all(np.isfinite(v) for v in numbers.values()), text
    assert "nan" not in text.lower() and "inf" not in text.lower().replace("info", "")
    if draw:
        assert figures.png_bytes(fig).startswith(b"\x89PNG")


@pytest.mark.parametrize("make,render", SWEEPS, ids=[r.__name__ for _, r in SWEEPS])
def test_render_sweeps_without_warning_or_nan(make, render):
    ranges = _ranges(make())
    names = list(ranges)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # Corners: every control at its min or max, drawn to PNG (a few of them).
        corners = [{n: ranges[n][0 if i == 0 else -1] for n, i in zip(names, bits, strict=True)}
                   for bits in itertools.product((0, 1), repeat=len(names))]
        for i, values in enumerate(corners):
            _render_ok(render, values, draw=i % 8 == 0)
        # A grid through the interior, without drawing (the math and readout are what vary).
        for combo in itertools.islice(itertools.product(*ranges.values()), 0, None, 3):
            _render_ok(render, dict(zip(names, combo, strict=True)), draw=False)


def test_static_figures_draw_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for fig in (figures.value_functions_figure(), figures.gradient_bump_figure()):
            assert figures.png_bytes(fig).startswith(b"\x89PNG")


# ---------------------------------------------------------------------------------------------
# The solution notebooks: markup and the lesson contract
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lesson", list(LESSONS))
def test_notebook_markup(lesson):
    from nbgrader.nbgraderformat import MetadataValidator

    nb = nbformat.read(SOLUTIONS / f"{lesson}.ipynb", as_version=4)
    MetadataValidator().validate_nb(nb)
    cells = nb.cells
    ids = [c.get("id") for c in cells]
    assert len(set(ids)) == len(ids)
    grade_ids = [c.metadata.get("nbgrader", {}).get("grade_id") for c in cells]
    for name in LESSONS[lesson]:
        at = grade_ids.index(f"ex_{name}")
        test_cell = cells[at + 1]
        assert grade_ids[at + 1] == f"test_{name}"
        assert test_cell.source == (
            f"checks.check_{name}({name})\n### BEGIN HIDDEN TESTS\n"
            f"checks.check_{name}({name}, hidden=True)\n### END HIDDEN TESTS"
        )
        assert 1 <= test_cell.metadata["nbgrader"]["points"] <= 3
        assert "### BEGIN SOLUTION" in cells[at].source
    assert any(g and g.startswith("written_") for g in grade_ids)
    demo_cells = [c for c in cells if c.cell_type == "code" and "demos." in c.source]
    assert demo_cells and all(c.source.startswith("demos.") and c.source.endswith("()")
                              for c in demo_cells)
    for at, c in enumerate(cells):
        if c in demo_cells:
            assert "Predict first" in cells[at - 1].source
            assert "<details><summary>Reveal</summary>" in cells[at + 1].source
        if c.cell_type == "code":
            assert not c.get("outputs") and c.get("execution_count") is None
