"""Numbers the text quotes are numbers the code prints (lessons 01-05).

Every figure a markdown cell of a solution notebook quotes (a decimal such as 0.426, -0.0244 or
1.125, a percentage such as 30% or 42 %; link targets are skipped) is tied to the code in
exactly one of three ways:

(a) printed: the executed notebook's outputs (streams, text/plain, text/html, text/markdown)
    contain the same digits as a number, with or without the % sign;
(b) CLAIMS: a function computes it with the course's package (core, figures, demos, toy) and the
    result rounds to the quoted digits: within half a unit of the last quoted digit, or one
    percentage point for "about N%";
(c) NOT_COMPUTED: it is not the result of a computation (a section of the paper, an arXiv id,
    a constant, a setting the text tells the learner to choose), with the reason;
(d) MEASURED: a result that depends on the machine or the seed (a training run), which the text
    quotes as the range measured over seeds or runs: every number the run printed there lies
    in that range (from the smallest to the largest quoted number of the fragment, give or
    take half a unit of the last quoted digit).

A table entry applies first; a number that none covers fails the test, which names the lesson,
the cell, the number and its context, and so does a claim that no longer rounds to the text, an
entry that matches no quoted number (the text moved on), or a number that two entries claim.

The suite runs the notebooks in quick mode (KTO_COURSE_QUICK=1, tests/conftest.py), where the
training cells run a short version. Lesson 05's text quotes its full run (three seeds, 8 epochs),
so lesson 05 is executed in full mode (FULL_MODE: KTO_COURSE_QUICK=0 for its kernel; about 35 s
on 2 cores), and its claims rerun the toy's experiments with ``toy`` (about 30 s, once).

Lessons 06 (a tiny GPT-2's training runs, about 25 s) and 07 (TRL's runs against the course's,
about 50 s; skipped without the ``trl`` extra unless KTO_COURSE_REQUIRE_TRL is set, as in CI)
run in full mode too. Timings are never tied: they follow the machine's load (NOT_COMPUTED).
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections import Counter
from collections.abc import Callable
from typing import NamedTuple

import nbformat
import numpy as np
import pytest
from conftest import SOLUTIONS
from nbclient import NotebookClient

from kto_course import core, demos, figures, system, toy
from kto_course.lm import task

pytestmark = pytest.mark.slow

LESSONS = {
    "01": "01_log_ratio",
    "02": "02_kl_reference_point",
    "03": "03_value_and_loss",
    "04": "04_gradients_and_saturation",
    "05": "05_kto_vs_dpo",
    "06": "06_tiny_gpt2_kto",
    "07": "07_graduate_to_trl",
}
# Lessons whose text quotes the full run of their training cells: executed with quick mode off.
FULL_MODE = {"05", "06", "07"}


class Claim(NamedTuple):
    """A quoted number and how to compute it; ``near``: a fragment of the text around it, when
    the lesson quotes the same digits for something else too. Percentages compute in percent."""

    lesson: str
    number: str
    what: str
    compute: Callable[[], float]
    near: str | None = None


class NotComputed(NamedTuple):
    """Every quoted number inside ``text`` (a fragment of the markdown), in each of ``lessons``."""

    lessons: str
    text: str
    reason: str


class Measured(NamedTuple):
    """Every quoted number inside ``text`` bounds a range (its smallest to its largest); each
    value ``read`` finds in the executed notebook's outputs must lie in it."""

    lesson: str
    text: str
    what: str
    read: Callable[[str], list[float]]


def printed(pattern: str, first: int = 0, last: int | None = None) -> Callable[[str], list]:
    """A ``Measured.read``: the numbers at ``{}`` in ``pattern`` wherever the outputs print it
    (the matches ``first`` to ``last``, in output order)."""
    number = r"([-+]?\d+(?:\.\d+)?)"
    regex = re.sub(r"(\\ )+", r"\\s+", re.escape(pattern)).replace(r"\{\}", number)

    def read(outputs: str) -> list[float]:
        found = [float(m.group(1)) for m in re.finditer(regex, outputs)][first:last]
        if not found:
            raise LookupError(f"no output prints {pattern!r}")
        return found

    return read


LARGE_CHOICES = ("schedule", "order", "bos", "padding")  # lesson 07's "Large" effects


def _effects(outputs: str, choices, columns) -> list[float]:
    """Lesson 07's table "ONE choice switched": the differences of ``choices`` in ``columns``
    (0 the loss, 1 kl, 2 and 3 the rewards)."""
    values = []
    for name in choices:
        row = re.search(rf"^{name} +\S+((?: +\d\.\de[-+]\d\d){{4}}) *$", outputs, re.M)
        if row is None:
            raise LookupError(f"the table of switched choices has no row {name!r}")
        numbers = [float(x) for x in row.group(1).split()]
        values += [numbers[c] for c in columns]
    return values


# ---------------------------------------------------------------------------------------------
# How the claims compute: a demo driven as a learner drives it, or the course's functions
# ---------------------------------------------------------------------------------------------


@functools.cache
def _readout(demo: str, settings: tuple) -> str:
    box = getattr(demos, demo)()
    for name, value in settings:
        box.controls[name].value = value
    return re.sub(r"<[^>]+>", "", box.readout.value)


def demo(name: str, pattern: str, **settings) -> float:
    """The number at ``{}`` in ``pattern`` in the readout of ``demos.<name>()``, its controls
    set to ``settings`` (the others at their defaults)."""
    text = _readout(name, tuple(settings.items()))
    number = r"([-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?)"
    found = re.search(re.escape(pattern).replace(r"\{\}", number), text)
    if not found:
        raise LookupError(f"{pattern!r} is not in the readout of demos.{name}(): {text}")
    return float(found.group(1))


def _normal_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def _mean_of_clamped_normal(mean: float, sd: float) -> float:
    """E[max(0, X)] for X ~ Normal(mean, sd^2): what the clamped z0 averages to."""
    t = mean / sd
    return mean * _normal_cdf(t) + sd * math.exp(-t * t / 2) / math.sqrt(2 * math.pi)


def _grad(r: float, beta: float, z0: float = 0.0) -> float:
    """dL/dr of one desirable example (weights 1)."""
    return float(core.kto_loss_grad(np.array([r]), z0, np.array([True]), beta)[0])


def _half_peak_at(beta: float = 1.0) -> float:
    """beta * delta > 0 where |dL/dr| of a desirable example falls to half its peak."""
    delta = np.linspace(0.0, 10.0 / beta, 1_000_001)
    magnitude = np.abs(core.kto_loss_grad(delta, 0.0, np.ones(delta.shape, bool), beta))
    return beta * float(delta[np.argmin(np.abs(magnitude - beta / 8))])


@functools.cache
def _experiment(name: str, **settings) -> dict:
    """``toy.<name>_experiment`` as lesson 05's full run calls it: seeds 0, 1, 2, 8 epochs."""
    return getattr(toy, f"{name}_experiment")(seeds=(0, 1, 2), epochs=toy.EPOCHS, **settings)


def _ordering(key: str, kl: bool = False) -> np.ndarray:
    """Per seed: the expected utility (or the KL) of one run of the ordering experiment."""
    return _experiment("ordering")[key][int(kl)]


def _noise(key: str, fraction: float, beta: float = toy.BETA) -> np.ndarray:
    """Per seed: ``key`` (dpo, kto, dpo_kl, kto_kl) of the noise experiment at ``fraction``."""
    out = _experiment("noise", beta=beta)
    return out[key][list(out["fractions"]).index(fraction)]


def _imbalance(key: str, keep: float) -> np.ndarray:
    """Per seed: ``key`` (kto, kto_weighted, dpo, their _kl, lambda_D) at ``keep``."""
    out = _experiment("imbalance")
    return out[key][list(out["keeps"]).index(keep)]


def _both_at_noise_0(reduce: Callable) -> float:
    """``reduce`` over every clean run of the noise experiment, DPO's and KTO's."""
    return float(reduce(np.concatenate([_noise("dpo", 0.0), _noise("kto", 0.0)])))


TOKENS = figures.TOKEN_SPANS
AGREES = "P(adjective agrees with the rating): reference = {}"  # the adjective demo's readout
RAW = figures.Z0_CLAMP[1]
BETA_1_MEANS = "DPO 0.92, 0.77, 0.62, 0.26, 0.17 and KTO 1.01, 0.90, 0.67, 0.53, 0.12"

CLAIMS = [
    # Lesson 01
    Claim("01", "-3.0", "the rude answer's r in the ledger", lambda: core.log_ratio(-15.0, -12.0)),
    Claim("01", "-7.10", "token demo: log pi_theta of the long completion",
          lambda: demo("token_logprobs", "log pi_theta(y|x) = {}", completion="long")),
    Claim("01", "-1.00", "token demo: log pi_theta of the short completion",
          lambda: demo("token_logprobs", "log pi_theta(y|x) = {}", completion="short")),
    Claim("01", "3.90", "token demo: r of the long completion",
          lambda: demo("token_logprobs", "r = {}", completion="long")),
    Claim("01", "1.60", "token demo: r of the short completion",
          lambda: demo("token_logprobs", "r = {}", completion="short")),
    Claim("01", "0.80", "token demo: r of the short completion, mean",
          lambda: demo("token_logprobs", "r = {}", completion="short", reduce="mean")),
    Claim("01", "0.49", "token demo: r of the long completion, mean",
          lambda: demo("token_logprobs", "r = {}", completion="long", reduce="mean")),
    Claim("01", "+1.30", "token demo: what including the prompt adds to r",
          lambda: demo("token_logprobs", "r = {}", completion="short", tokens=TOKENS[1])
          - demo("token_logprobs", "r = {}", completion="short")),
    Claim("01", "2.90", "token demo: r of the short completion with its prompt",
          lambda: demo("token_logprobs", "r = {}", completion="short", tokens=TOKENS[1])),
    Claim("01", "5.20", "token demo: r of the long completion with its prompt",
          lambda: demo("token_logprobs", "r = {}", completion="long", tokens=TOKENS[1])),
    Claim("01", "4.70", "token demo: r of the short completion with prompt and padding",
          lambda: demo("token_logprobs", "r = {}", completion="short", tokens=TOKENS[2])),
    Claim("01", "2.7", "the probability ratio of r = 1 nat", lambda: np.exp(1.0)),
    Claim("01", "0.693", "log 2: the DPO loss at margin 0",
          lambda: core.dpo_loss(np.zeros(1), np.zeros(1), 0.1)[0]),
    Claim("01", "0.598", "DPO demo: the loss at margin 2",
          lambda: demo("dpo_margin", "loss = {}", margin=2.0)),
    Claim("01", "-0.095", "DPO demo: the slope at margin -30",
          lambda: demo("dpo_margin", "d loss / d margin = {}", margin=-30.0)),
    Claim("01", "-0.005", "DPO demo: the slope at margin +30",
          lambda: demo("dpo_margin", "d loss / d margin = {}", margin=30.0)),
    Claim("01", "+0.5", "the second printed row's r", lambda: core.log_ratio(-14.0, -14.5),
          near="($r = +0.5$)"),
    # Lesson 02
    Claim("02", "0.35", "z0 demo: sd of the raw mean at B = 8",
          lambda: demo("z0_spread", "spread (sd) {}", clamp=RAW, batch_size=8)),
    Claim("02", "0.18", "z0 demo: sd of the raw mean at B = 32",
          lambda: demo("z0_spread", "spread (sd) {}", clamp=RAW, batch_size=32)),
    Claim("02", "0.09", "z0 demo: sd of the raw mean at B = 128",
          lambda: demo("z0_spread", "spread (sd) {}", clamp=RAW, batch_size=128)),
    Claim("02", "42%", "z0 demo: share clamped to 0 at true mean 0.1, B = 4",
          lambda: demo("z0_spread", "{}% of microbatches clamped", true_mean=0.1, batch_size=4)),
    Claim("02", "-0.2", "the true mean 0.1 in sds of the B = 4 mean, negated",
          lambda: -0.1 / (1.0 / math.sqrt(4))),
    Claim("02", "0.42", "Phi(-0.2), the exact share below 0", lambda: _normal_cdf(-0.2)),
    Claim("02", "0.5", "the sd of the mean of 4 draws of sd 1", lambda: 1.0 / math.sqrt(4)),
    Claim("02", "0.2", "the true mean 0.1 in sds of the B = 4 mean",
          lambda: 0.1 / (1.0 / math.sqrt(4)), near="only 0.2 standard deviations"),
    Claim("02", "0.249", "z0 demo: mean of the clamped estimates at true mean 0.1, B = 4",
          lambda: demo("z0_spread", "mean {}", true_mean=0.1, batch_size=4)),
    Claim("02", "0.253", "E[max(0, X)], X ~ Normal(0.1, 0.5^2)",
          lambda: _mean_of_clamped_normal(0.1, 0.5)),
    # Lesson 03
    Claim("03", "0.426", "value demo: loss at the defaults (desirable, r 5, z0 2, beta 0.1)",
          lambda: demo("value_loss_explorer", "loss = {}")),
    Claim("03", "0.574", "value demo: loss of the same example, undesirable",
          lambda: demo("value_loss_explorer", "loss = {}", desirable=False)),
    Claim("03", "-0.0244", "value demo: dL/dr at the defaults",
          lambda: demo("value_loss_explorer", "dL/dr = {}")),
    Claim("03", "+0.0244", "value demo: dL/dr of the same example, undesirable",
          lambda: demo("value_loss_explorer", "dL/dr = {}", desirable=False)),
    Claim("03", "3.8", "value demo: beta*delta at r = 40",
          lambda: demo("value_loss_explorer", "beta*delta = {}", r=40.0)),
    Claim("03", "0.022", "value demo: loss at r = 40",
          lambda: demo("value_loss_explorer", "loss = {}", r=40.0)),
    Claim("03", "-0.0021", "value demo: dL/dr at r = 40",
          lambda: demo("value_loss_explorer", "dL/dr = {}", r=40.0)),
    Claim("03", "9%", "value demo: |dL/dr| / peak at r = 40",
          lambda: demo("value_loss_explorer", "|dL/dr| / peak = {}%", r=40.0)),
    Claim("03", "0.025", "value demo: the peak at beta = 0.1",
          lambda: demo("value_loss_explorer", "peak |dL/dr| = {}")),
    Claim("03", "0.25", "value demo: the peak at beta = 1",
          lambda: demo("value_loss_explorer", "peak |dL/dr| = {}", beta=1.0),
          near="tenfold to 0.25"),
    Claim("03", "-0.045", "value demo: dL/dr at beta = 1",
          lambda: demo("value_loss_explorer", "dL/dr = {}", beta=1.0)),
    Claim("03", "18%", "value demo: |dL/dr| / peak at beta = 1",
          lambda: demo("value_loss_explorer", "|dL/dr| / peak = {}%", beta=1.0)),
    Claim("03", "13.33", "the top of lambda_D's range with 10x fewer desirable examples",
          lambda: core.recommended_weights(100, 1000)["lambda_D_range"][1]),
    Claim("03", "0.25", "imbalance demo: the ratio at the defaults (1000, 4000)",
          lambda: demo("imbalance_explorer", "ratio = {}"), near="1000/4000 = 0.25"),
    Claim("03", "20%", "imbalance demo: the desirable share of the weighted mass",
          lambda: demo("imbalance_explorer", "desirable share of the weighted mass = {}%")),
    Claim("03", "0.25", "imbalance demo: the ratio with equal counts and lambda_U = 4",
          lambda: demo("imbalance_explorer", "ratio = {}", n_U=1000, lambda_U=4.0),
          near="a ratio of $0.25$"),
    Claim("03", "5.33", "imbalance demo: the top of lambda_D's range",
          lambda: demo("imbalance_explorer", "lambda_D in [4, {}]")),
    Claim("03", "1.125", "the ratio with lambda_D = 4.5",
          lambda: core.imbalance_ratio(1000, 4000, lambda_D=4.5)),
    Claim("03", "0.083", "written answer: the bottom of lambda_U's range (2,000 vs 18,000)",
          lambda: core.recommended_weights(2000, 18000)["lambda_U_range"][0]),
    Claim("03", "0.111", "written answer: the top of lambda_U's range (2,000 vs 18,000)",
          lambda: core.recommended_weights(2000, 18000)["lambda_U_range"][1]),
    # Lesson 04
    Claim("04", "1.76", "beta*|delta| where |dL/dr| is half its peak", _half_peak_at),
    Claim("04", "3.5", "the bump's full width at half its peak, times beta",
          lambda: 2 * _half_peak_at()),
    Claim("04", "30%", "batch demo: top-25% share at the defaults",
          lambda: demo("gradient_batch_explorer", "top-25% share = {}%")),
    Claim("04", "52%", "batch demo: top-25% share at beta = 0.3",
          lambda: demo("gradient_batch_explorer", "top-25% share = {}%", beta=0.3)),
    Claim("04", "15%", "batch demo: hard example's |dL/dr| / peak at the defaults",
          lambda: demo("gradient_batch_explorer", "hard |dL/dr| / peak = {}%")),
    Claim("04", "0.03%", "batch demo: hard example's |dL/dr| / peak at beta = 0.3",
          lambda: demo("gradient_batch_explorer", "hard |dL/dr| / peak = {}%", beta=0.3)),
    Claim("04", "0.8%", "batch demo: hard example at r = -60, |dL/dr| / peak",
          lambda: demo("gradient_batch_explorer", "hard |dL/dr| / peak = {}%", r_hard=-60.0)),
    Claim("04", "-6.2", "beta*delta of the hard example at r = -60",
          lambda: 0.1 * demo("gradient_batch_explorer", "hard delta = {}", r_hard=-60.0)),
    Claim("04", "56%", "batch demo: hard example's |dL/dr| / peak at beta = 0.05",
          lambda: demo("gradient_batch_explorer", "hard |dL/dr| / peak = {}%", beta=0.05)),
    Claim("04", "0.0125", "batch demo: the peak at beta = 0.05",
          lambda: demo("gradient_batch_explorer", "peak |dL/dr| = {}", beta=0.05)),
    Claim("04", "-4.5", "written answer: beta*delta at delta = -45", lambda: 0.1 * -45),
    Claim("04", "0.011", "written answer: s(1 - s) at delta = -45",
          lambda: abs(_grad(-45.0, 0.1)) / 0.1),
    Claim("04", "4.3%", "written answer: |dL/dr| / peak at delta = -45",
          lambda: 100 * abs(_grad(-45.0, 0.1)) / (0.1 / 4)),
    Claim("04", "0.99", "written answer: the loss at delta = -45",
          lambda: core.kto_losses(np.array([-45.0]), 0.0, np.array([True]), 0.1)[0]),
    # Lesson 05: the pair demo at its defaults (beta 0.5, z0 1, margin 2) and a few settings
    Claim("05", "0.313", "pair demo: DPO's loss at the defaults",
          lambda: demo("pair_margins", "DPO loss = {}")),
    Claim("05", "0.384", "pair demo: KTO's mean loss at shift 0",
          lambda: demo("pair_margins", "KTO loss = {}")),
    Claim("05", "0.5", "KTO's mean loss of the pair, shifted by 100 nats: where it tends",
          lambda: core.kto_loss(np.array([1.0, -1.0]) + 100, 1.0, np.array([True, False]), 0.5),
          near="towards 0.5"),
    Claim("05", "0.076", "pair demo: the chosen row's loss at shift 5",
          lambda: demo("pair_margins", "chosen row loss = {}", shift=5.0)),
    Claim("05", "0.818", "pair demo: the rejected row's loss at shift 5",
          lambda: demo("pair_margins", "rejected row loss = {}", shift=5.0)),
    Claim("05", "-0.125", "pair demo: KTO's dL/dr_w at shift 0",
          lambda: demo("pair_margins", "d L / d r_w = {}")),
    Claim("05", "-0.0033", "pair demo: KTO's dL/dr_w at shift 10",
          lambda: demo("pair_margins", "d L / d r_w = {}", shift=10.0)),
    Claim("05", "-0.1345", "pair demo: DPO's slope d loss / d r_w at shift 10",
          lambda: demo("pair_margins", "d loss / d r_w = {}", shift=10.0)),
    Claim("05", "0.0088", "pair demo: KTO's dL/dr_l at shift 10",
          lambda: demo("pair_margins", "d L / d r_l = {}", shift=10.0)),
    Claim("05", "0.125", "|dL/dr| at delta = 0, beta = 0.5: the peak beta/4",
          lambda: abs(_grad(1.0, 0.5, z0=1.0))),
    Claim("05", "2.13", "pair demo: DPO's loss at margin -4",
          lambda: demo("pair_margins", "DPO loss = {}", margin=-4.0)),
    Claim("05", "0.127", "pair demo: DPO's loss at margin +4",
          lambda: demo("pair_margins", "DPO loss = {}", margin=4.0)),
    Claim("05", "0.280", "pair demo: KTO's mean loss at margin +4",
          lambda: demo("pair_margins", "KTO loss = {}", margin=4.0)),
    Claim("05", "0.720", "pair demo: KTO's mean loss at margin -4",
          lambda: demo("pair_margins", "KTO loss = {}", margin=-4.0)),
    # Lesson 05: the toy on seed 0 (the setup cell and the two first runs)
    Claim("05", "0.05", "the reference policy's expected utility on seed 0",
          lambda: toy.evaluate(toy.make_problem(seed=0), toy.make_problem(seed=0).theta_ref)
          ["utility"], near="reference is worth 0.05"),
    Claim("05", "2.00", "the best policy's expected utility on seed 0",
          lambda: toy.evaluate(toy.make_problem(seed=0), toy.make_problem(seed=0).theta_ref)
          ["utility_best"]),
    Claim("05", "0.05", "seed 0: the reference's utility, where the runs start",
          lambda: _experiment("ordering")["reference"][0], near="from 0.05 to 1.13"),
    Claim("05", "1.13", "seed 0: DPO's expected utility after 8 epochs",
          lambda: _ordering("dpo")[0], near="from 0.05 to 1.13"),
    Claim("05", "1.15", "seed 0: shuffled KTO's expected utility after 8 epochs",
          lambda: _ordering("kto_shuffled")[0]),
    Claim("05", "1.05", "seed 0: the mean of DPO's and shuffled KTO's KL",
          lambda: (_ordering("dpo", kl=True)[0] + _ordering("kto_shuffled", kl=True)[0]) / 2,
          near="KL of about 1.05"),
    Claim("05", "0.38", "batch demo: the smallest desirable share, shuffled, microbatches of 8",
          lambda: demo("batch_order", "min = {}", order="shuffled")),
    Claim("05", "0.62", "batch demo: the largest desirable share, shuffled, microbatches of 8",
          lambda: demo("batch_order", "max = {}", order="shuffled"), near="0.38 and 0.62"),
    # Lesson 05: experiment 1 (ordering), per seed
    Claim("05", "0.02", "the smallest utility shuffled KTO gains over chosen-first KTO",
          lambda: min(_ordering("kto_shuffled") - _ordering("kto_chosen_first"))),
    Claim("05", "0.09", "the largest utility shuffled KTO gains over chosen-first KTO",
          lambda: max(_ordering("kto_shuffled") - _ordering("kto_chosen_first"))),
    Claim("05", "0.8", "shuffled KTO's lowest utility over the seeds",
          lambda: min(_ordering("kto_shuffled")), near="from about 0.8 to 1.5"),
    Claim("05", "1.5", "shuffled KTO's highest utility over the seeds",
          lambda: max(_ordering("kto_shuffled")), near="from about 0.8 to 1.5"),
    Claim("05", "0.03", "the largest gap between shuffled KTO and DPO on one seed",
          lambda: max(abs(_ordering("kto_shuffled") - _ordering("dpo"))),
          near="0.03 of each other"),
    # Lesson 05: experiment 2 (label noise), per seed, and the suggested rerun at beta = 1
    Claim("05", "0.8", "the lowest clean utility, DPO's and KTO's runs",
          lambda: _both_at_noise_0(np.min), near="between about 0.8 and 1.5"),
    Claim("05", "1.5", "the highest clean utility, DPO's and KTO's runs",
          lambda: _both_at_noise_0(np.max), near="between about 0.8 and 1.5"),
    Claim("05", "-0.05", "DPO's lowest utility at 40% wrong labels",
          lambda: min(_noise("dpo", 0.4)), near="$-0.05$ and $0.8$"),
    Claim("05", "0.8", "DPO's highest utility at 40% wrong labels",
          lambda: max(_noise("dpo", 0.4)), near="$-0.05$ and $0.8$"),
    Claim("05", "-0.34", "KTO's lowest utility at 40% wrong labels",
          lambda: min(_noise("kto", 0.4))),
    Claim("05", "0.4", "KTO's highest utility at 40% wrong labels",
          lambda: max(_noise("kto", 0.4)), near="$-0.34$ and $0.4$"),
    *[Claim("05", number, f"beta = 1: {method}'s mean utility at {fraction:.0%} wrong labels",
            lambda method=method, fraction=fraction:
            float(np.mean(_noise(method.lower(), fraction, beta=1.0))), near=BETA_1_MEANS)
      for method, numbers in (("DPO", ("0.92", "0.77", "0.62", "0.26", "0.17")),
                              ("KTO", ("1.01", "0.90", "0.67", "0.53", "0.12")))
      for fraction, number in zip((0.0, 0.1, 0.2, 0.3, 0.4), numbers, strict=True)],
    # Lesson 05: experiment 3 (class imbalance), per seed
    Claim("05", "0.85", "unweighted KTO's lowest utility at 10% kept",
          lambda: min(_imbalance("kto", 0.1))),
    Claim("05", "1.22", "unweighted KTO's highest utility at 10% kept",
          lambda: max(_imbalance("kto", 0.1))),
    Claim("05", "0.36", "DPO's lowest utility at 10% kept", lambda: min(_imbalance("dpo", 0.1))),
    Claim("05", "1.13", "DPO's highest utility at 10% kept",
          lambda: max(_imbalance("dpo", 0.1)), near="0.36 to 1.13"),
    Claim("05", "2.0", "Eq. 8's lambda_D at 50% kept", lambda: max(_imbalance("lambda_D", 0.5))),
    Claim("05", "5.0", "Eq. 8's lambda_D at 20% kept", lambda: max(_imbalance("lambda_D", 0.2))),
    Claim("05", "1.28", "unweighted KTO's lowest KL at 10% kept",
          lambda: min(_imbalance("kto_kl", 0.1))),
    Claim("05", "1.74", "unweighted KTO's highest KL at 10% kept",
          lambda: max(_imbalance("kto_kl", 0.1))),
    Claim("05", "0.78", "weighted KTO's lowest KL at 10% kept",
          lambda: min(_imbalance("kto_weighted_kl", 0.1))),
    Claim("05", "1.09", "weighted KTO's highest KL at 10% kept",
          lambda: max(_imbalance("kto_weighted_kl", 0.1))),
    Claim("05", "27%", "the lowest share of chosen rows with negative utility, seeds 0-2",
          lambda: 100 * min(toy.label_quality(s)["chosen_negative"] for s in (0, 1, 2)),
          near="27% to 41%"),
    Claim("05", "41%", "the highest share of chosen rows with negative utility, seeds 0-2",
          lambda: 100 * max(toy.label_quality(s)["chosen_negative"] for s in (0, 1, 2))),
    # Lesson 05: the written answer's scenario (20 000 pairs; 150 000 clicks, 85% thumbs-down)
    Claim("05", "7.5", "150 000 clicks against 20 000 pairs", lambda: 150_000 / 20_000),
    Claim("05", "0.18", "the scenario's ratio lambda_D n_D / (lambda_U n_U) at weights 1",
          lambda: core.imbalance_ratio(22_500, 127_500)),
    Claim("05", "15%", "the scenario's share of thumbs-up clicks (2 or 3 per microbatch of 16)",
          lambda: 100 * 22_500 / 150_000),
    # Lesson 07
    Claim("07", "0.5", "the loss at r = 0 and z0 = 0, whatever the labels",
          lambda: core.kto_loss(np.zeros(16), 0.0, np.arange(16) % 3 == 0), near="Exactly 0.5"),
    # Lesson 06
    Claim("06", "0.5", "the loss at r = 0 and z0 = 0 (step 0, and near delta = 0), any labels",
          lambda: core.kto_loss(np.zeros(8), 0.0, np.arange(8) % 3 == 0)),
    Claim("06", "70%", "how often a pretraining adjective agrees with the rating",
          lambda: 100 * task.AGREE_P),
    Claim("06", "0.7", "the same, as a probability", lambda: task.AGREE_P, near="$0.7^2"),
    Claim("06", "0.49", "both adjectives agree", lambda: task.AGREE_P**2),
    Claim("06", "0.7", "adjective demo: the reference's agreement, 5 stars",
          lambda: demo("adjective_explorer", AGREES), near="about 0.7 on positive"),
    Claim("06", "0.69", "adjective demo: the reference's agreement at temperature 1",
          lambda: demo("adjective_explorer", AGREES)),
    Claim("06", "0.60", "adjective demo: the reference's agreement at temperature 2",
          lambda: demo("adjective_explorer", AGREES, temperature=2.0)),
    Claim("06", "18.6", "adjective demo: the reference's adjectives in effective use",
          lambda: demo("adjective_explorer", "(exp entropy): reference = {}")),
]

TIMING = "timings of our full runs on 2 CPU cores; the cell prints this machine's"
NOT_COMPUTED = [
    NotComputed("01 02 03 04 05 06 07", "2402.01306", "the KTO paper's arXiv id"),
    NotComputed("01 02 03 04 05 06 07", "§4.1", "a section of the paper"),
    NotComputed("05 06", "§4.2", "a section of the paper"),
    NotComputed("01 04 05", "§4.3", "a section of the paper"),
    NotComputed("01 03", "§3.1", "a section of the paper"),
    NotComputed("01 05", "2305.18290", "the DPO paper's arXiv id"),
    NotComputed("03", "2408.06266", "the APO paper's arXiv id"),
    NotComputed("01", "answer | −4.0 | −3.8 |", "the ledger's log-probs: inputs (code cell 13)"),
    NotComputed("01", "answer | −31.0 | −27.5 |", "the ledger's log-probs: inputs"),
    NotComputed("01", "answer | −12.0 | −15.0 |", "the ledger's log-probs: inputs"),
    NotComputed("01", "\\beta = 0.1$", "the DPO demo's beta, a setting"),
    NotComputed("01", "-\\beta = -0.1$", "minus the default beta: where the slope tends"),
    NotComputed("01", "(try $0.5$)", "a beta the text suggests trying"),
    NotComputed("01", "Is $r = 0.8$", "a hypothetical r, an example"),
    NotComputed("01", "Is $r = +0.5$", "a hypothetical r, an example"),
    NotComputed("02", "0.1", "the true mean the text tells the learner to set"),
    NotComputed("02", "drift of about $0.2$", "the drift the toy batch is drawn with"),
    NotComputed("03", "0.1", "beta, the default and a setting"),
    NotComputed("03", "discarding 90%", "a scenario: the share of examples discarded"),
    NotComputed("03", "2.25", "Kahneman and Tversky's loss-aversion coefficient"),
    NotComputed("03", "as 1.33.", "how TRL's source writes 4/3"),
    NotComputed("03", "`recommended_weights(n_D, n_U, lambda_D=1.0, lambda_U=1.0)`",
                "the exercise's signature"),
    NotComputed("03", "`(1.0, 4/3)`", "core.IMBALANCE_RANGE's definition"),
    NotComputed("03", "`core.kto_losses(r, 0.0, ...)`", "code: z0 = 0 by definition"),
    NotComputed("03", "instance 4.5", "a lambda_D the text picks in the range"),
    NotComputed("04", "0.1", "beta, the default and a setting"),
    NotComputed("04", "0.3", "a beta the text tells the learner to set"),
    NotComputed("04", "0.05", "a beta the text proposes"),
    NotComputed("04", "25%", "the demo's top quarter, a definition"),
    NotComputed("04", "flip 20%", "a setting of a suggested experiment"),
    NotComputed("05", "($\\beta = 0.5$, $z_0 = 1$, margin 2)", "the pair demo's defaults"),
    NotComputed("05", "\\mathcal N(0, 1.5^2)", "the utilities' sd, a constant of toy.make_problem"),
    NotComputed("05", "\\beta = 0.1", "toy.BETA, the beta of every run: a setting"),
    NotComputed("05", "learning rate of 0.05", "toy.LR, the trainers' learning rate: a setting"),
    NotComputed("05", "takes 0.1 to 0.7 s", "timings on the authors' machine (the cell prints "
                "this machine's)"),
    NotComputed("05", "| wrong labels | 0 | 0.1 | 0.2 | 0.3 | 0.4 |",
                "the noise experiment's fractions of wrong labels, settings"),
    NotComputed("05", "| desirable rows kept | 1.0 | 0.5 | 0.2 | 0.1 |",
                "the imbalance experiment's shares kept, settings"),
    *[NotComputed("05", share, "a share of wrong labels or of desirable rows kept: a setting")
      for share in ("10%", "20%", "30%", "40%", "50%", "keeps 100%", "below 100%")],
    NotComputed("05", "beta=1.0)`", "the beta of the rerun the text suggests"),
    NotComputed("05", "\\beta = 0.3$", "a beta the text suggests trying"),
    NotComputed("05", "85%", "the written answer's scenario: the share of thumbs-down clicks"),
    NotComputed("06", "`--lambda-U 0.3`", "a setting of a suggested run"),
    NotComputed("06", "`lambda_U=0.3`", "a setting of a suggested run"),
    NotComputed("07", "TRL 1.16", "the TRL version the comparison was written against"),
    NotComputed("07", "accelerate 1.15", "the accelerate version whose behaviour is described"),
    NotComputed("07", "Qwen/Qwen2.5-0.5B", "a model's name"),
    NotComputed("07", "ran 1.7x to 5.7x slower", TIMING),
    NotComputed("07", "1.6x to 2.6x the steps/s", TIMING),
    NotComputed("07", "0.5x to 0.7x the steps/s", TIMING),
]

# Results of the training runs of lessons 06 and 07: the text quotes the range over seeds 0-2
# or over several runs of one cell; the executed notebook runs seed 0 once.
MEASURED = [
    Measured("06", "between 0.96 and 0.98 over seeds 0-2",
             "online run: the desirable rate after 120 steps", printed("'desirable_after': {}")),
    Measured("06", "0.96 to 0.98 in 120 steps", "online run: the desirable rate after 120 steps",
             printed("'desirable_after': {}")),
    Measured("06", "(39% to 59% kept)", "online run: the share of distinct completions kept",
             printed("diversity kept: {}%")),
    Measured("06", "rate of 0.96 to 0.98", "online run: the policy's desirable rate (512 samples)",
             printed("policy     desirable {}")),
    Measured("06", "against 0.46", "the reference's desirable rate (512 samples)",
             printed("reference  desirable {}")),
    Measured("06", "between 0.6 and 0.8 at step 100",
             "offline run, beta = 0.1: the desirable rate at step 100",
             printed("step 100: desirable {}", 0, 1)),
    Measured("06", "(between -2.5 and -4.3 here",
             "offline run, beta = 1: the raw z0 at each evaluation after step 0",
             printed("raw z0 {}", 6, 10)),
    Measured("07", "from about -4.2 nats", "the raw z0's lowest value in the 20-step run",
             printed("(the course's kl_unclamped): from {} to")),
    Measured("07", "by up to 0.7 nats here", "2 processes' z0 against 1 process pairing all 16",
             printed("pairing across all 16: max |diff| {}")),
    Measured("07", "rewards off by 0.25 to 2.9", "the large choices' reward differences",
             lambda outputs: _effects(outputs, LARGE_CHOICES, (2, 3))),
    Measured("07", "the loss by 0.037 to 0.23", "the large choices' loss differences",
             lambda outputs: _effects(outputs, LARGE_CHOICES, (0,))),
]


# ---------------------------------------------------------------------------------------------
# The helpers: quoted numbers, printed outputs, and the check
# ---------------------------------------------------------------------------------------------

QUOTED = re.compile(r"(?<![\w.])\d+(?:\.\d+)? ?%|(?<![\w.])[-+]?\d+\.\d+(?!\d|\.\d)")
LINK_TARGET = re.compile(r"\]\([^)]*\)|<?https?://[^\s)>]+>?")


def _normal(text: str) -> str:
    return " ".join(text.replace("−", "-").split())


def quoted_numbers(markdown: str) -> tuple[str, list[tuple[int, int, str]]]:
    """The markdown with link targets removed, whitespace runs as one space and Unicode minus
    signs as '-'; and each quoted number in it as (start, end, number without spaces)."""
    text = _normal(LINK_TARGET.sub("]", markdown))
    return text, [(m.start(), m.end(), m.group().replace(" ", "")) for m in QUOTED.finditer(text)]


def outputs_text(nb) -> str:
    """The text of every output of the executed notebook: streams, text/plain, html, markdown."""
    parts = []
    for cell in nb.cells:
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if output.get("output_type") == "stream":
                parts.append(output.get("text", ""))
            for kind in ("text/plain", "text/html", "text/markdown"):
                value = output.get("data", {}).get(kind, "")
                parts.append(value if isinstance(value, str) else "".join(value))
    return "\n".join(parts).replace("−", "-")


def _printed(number: str, outputs: str) -> bool:
    digits = number.rstrip("%").lstrip("+")
    before = r"(?<![\w.])" if digits.startswith("-") else r"(?<![\w.\-])"
    return re.search(before + re.escape(digits) + r"(?!\d|\.\d)", outputs) is not None


def _tolerance(number: str, text_before: str) -> float:
    digits = number.rstrip("%")
    decimals = len(digits.partition(".")[2])
    if number.endswith("%") and not decimals and re.search(r"(about|≈|\\approx)\W*$",
                                                           text_before, re.I):
        return 1.0
    return 0.5 * 10.0**-decimals


def _inside(text: str, start: int, end: int, fragment: str) -> bool:
    return any(m.start() <= start and end <= m.end()
               for m in re.finditer(re.escape(_normal(fragment)), text))


def _describe(entry) -> str:
    if isinstance(entry, NotComputed):
        return f"NOT_COMPUTED {entry.text!r} ({entry.reason})"
    if isinstance(entry, Measured):
        return f"MEASURED {entry.text!r} ({entry.what})"
    try:
        value = f"{float(entry.compute()):.6g}"
    except Exception as error:
        value = repr(error)
    return f"the claim {entry.number!r} ({entry.what}, computes to {value})"


def _range_problem(entry: Measured, outputs: str) -> str | None:
    """Why the values ``entry`` reads lie outside the range its fragment quotes (None: inside)."""
    _, numbers = quoted_numbers(entry.text)
    bounds = sorted((float(n.rstrip("%")), _tolerance(n, "")) for _, _, n in numbers)
    (lo, lo_tol), (hi, hi_tol) = bounds[0], bounds[-1]
    try:
        values = entry.read(outputs)
    except Exception as error:
        return f"reading {entry.what!r} raised {error!r}"
    outside = [v for v in values if not lo - lo_tol * (1 + 1e-9) <= v <= hi + hi_tol * (1 + 1e-9)]
    if outside:
        return f"{entry.what}: the run printed {outside}, outside {lo:g} to {hi:g}"
    return None


def check(lesson: str, cells: list, outputs: str, claims=CLAIMS, not_computed=NOT_COMPUTED,
          measured=None):
    """The problems of one lesson (an empty list when every quoted number is tied) and how many
    numbers each way ties. ``cells``: the notebook's cells; ``outputs``: ``outputs_text``."""
    measured = [m for m in (MEASURED if measured is None else measured) if m.lesson == lesson]
    claims = [c for c in claims if c.lesson == lesson]
    not_computed = [n for n in not_computed if lesson in n.lessons.split()]
    problems, used, ways = [], set(), Counter()
    ranges = {}
    values = {}
    for index, cell in enumerate(cells):
        if cell.cell_type != "markdown":
            continue
        text, numbers = quoted_numbers(cell.source)
        for start, end, number in numbers:
            context = text[max(0, start - 50):end + 30]
            where = f"lesson {lesson}, cell {index}: {number!r} in '...{context}...'"
            entries = [c for c in claims if _normal(c.number).replace(" ", "") == number
                       and (c.near is None or _inside(text, start, end, c.near))]
            entries += [n for n in not_computed if _inside(text, start, end, n.text)]
            entries += [m for m in measured if _inside(text, start, end, m.text)]
            used.update(entries)
            if len(entries) > 1:
                problems.append(f"{where}: more than one entry covers it: {entries}")
            elif entries and isinstance(entries[0], NotComputed):
                ways["not computed"] += 1
            elif entries and isinstance(entries[0], Measured):
                entry = entries[0]
                if entry not in ranges:
                    ranges[entry] = _range_problem(entry, outputs)
                    if ranges[entry]:
                        problems.append(f"{where}: {ranges[entry]}")
                ways["measured"] += 1
            elif entries:
                claim = entries[0]
                try:
                    value = values[claim] if claim in values else float(claim.compute())
                except Exception as error:  # a demo or function that changed: report, go on
                    problems.append(f"{where}: computing {claim.what!r} raised {error!r}")
                    continue
                values[claim] = value
                tolerance = _tolerance(number, text[max(0, start - 12):start])
                if abs(value - float(number.rstrip("%"))) > tolerance * (1 + 1e-9):
                    problems.append(f"{where}: {claim.what} computes to {value:.6g}, which is "
                                    f"not {number} (tolerance ±{tolerance:g})")
                ways["claims"] += 1
            elif _printed(number, outputs):
                ways["printed"] += 1
            else:
                problems.append(f"{where}: not printed by any cell, and no entry of CLAIMS or "
                                "NOT_COMPUTED covers it")
    for entry in claims + not_computed + measured:
        if entry not in used:
            problems.append(f"lesson {lesson}: {_describe(entry)} matches no quoted number")
    return problems, ways


# ---------------------------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", params=sorted(LESSONS))
def executed(request):
    """(lesson, the executed solution notebook), once per lesson; the lessons of FULL_MODE with
    quick mode off (the kernel inherits the environment when it starts)."""
    if request.param == "07" and not os.environ.get("KTO_COURSE_REQUIRE_TRL"):
        pytest.importorskip("trl", reason="TRL is not installed: pip install -e '.[trl]'")
    nb = nbformat.read(SOLUTIONS / f"{LESSONS[request.param]}.ipynb", as_version=4)
    with pytest.MonkeyPatch.context() as patch:
        if request.param in FULL_MODE:
            patch.setenv(system.QUICK_ENV, "0")
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(SOLUTIONS)}}).execute()
    return request.param, nb


def test_every_quoted_number_is_printed_computed_or_explained(executed):
    lesson, nb = executed
    problems, ways = check(lesson, nb.cells, outputs_text(nb))
    assert not problems, f"{len(problems)} problems ({dict(ways)} tied):\n" + "\n".join(problems)


def test_the_check_reports_a_wrong_claim_and_an_uncovered_number():
    cells = [nbformat.v4.new_markdown_cell(
        "The loss is 0.426 [2402.01306](https://arxiv.org/abs/2402.99999), about 9% of it "
        "is 0.111, and 1.234 comes from nowhere.")]
    claims = [Claim("xx", "9%", "a share", lambda: 9.8),
              Claim("xx", "0.111", "a wrong one", lambda: 0.112)]
    not_computed = [NotComputed("xx", "2402.01306", "an arXiv id"),
                    NotComputed("xx", "never quoted 3.14", "stale")]
    problems, ways = check("xx", cells, "loss = 0.426\n", claims, not_computed)
    assert ways == {"printed": 1, "claims": 2, "not computed": 1}, ways
    assert len(problems) == 3, problems
    assert "cell 0: '0.111'" in problems[0] and "computes to 0.112" in problems[0]
    assert "cell 0: '1.234'" in problems[1] and "comes from nowhere" in problems[1]
    assert "'never quoted 3.14' (stale) matches no quoted number" in problems[2]
    # 9.8 is "about 9%" (one percentage point); 10.2 is not.
    claims[0] = Claim("xx", "9%", "a share", lambda: 10.2)
    problems, _ = check("xx", cells, "loss = 0.426\n", claims, not_computed)
    assert "'9%'" in problems[0] and "computes to 10.2" in problems[0], problems
    # A number two entries claim is a problem too: each number is tied exactly one way.
    not_computed.append(NotComputed("xx", "is 0.111", "a setting"))
    problems, _ = check("xx", cells, "loss = 0.426\n", claims, not_computed)
    assert any("'0.111'" in p and "more than one entry" in p for p in problems), problems


def test_a_measured_range_must_hold_what_the_run_printed():
    cells = [nbformat.v4.new_markdown_cell("Over seeds 0-2 it reached between 0.96 and 0.98.")]
    entry = Measured("xx", "between 0.96 and 0.98", "the rate", printed("rate   {}"))
    problems, ways = check("xx", cells, "rate 0.9609\n", [], [], [entry])
    assert problems == [] and ways == {"measured": 2}, problems
    problems, _ = check("xx", cells, "rate 0.9501\nrate 0.97\n", [], [], [entry])
    assert len(problems) == 1 and "printed [0.9501], outside 0.96 to 0.98" in problems[0]
    problems, _ = check("xx", cells, "no such line\n", [], [], [entry])
    assert len(problems) == 1 and "raised LookupError" in problems[0], problems


def test_a_changed_number_in_a_real_lesson_fails():
    nb = nbformat.read(SOLUTIONS / f"{LESSONS['03']}.ipynb", as_version=4)
    (cell,) = [c for c in nb.cells if "loss goes from 0.426" in c.source]
    cell.source = cell.source.replace("from 0.426", "from 0.436")
    problems, _ = check("03", nb.cells, "")
    assert any("'0.436' in" in p and "no entry" in p for p in problems), problems
    assert any("claim '0.426'" in p and "computes to 0.426)" in p for p in problems), problems


def test_quoted_numbers_finds_decimals_signs_and_percentages():
    text, found = quoted_numbers(
        "sd $0.35 \\to 0.18$, −3.0, $+0.0244$, top-25%, 42 %, e^{-6.2}, as 1.33. §4.1 v2.5.1 "
        "[x](https://a.b/1.5) 2,000 4/3"
    )
    assert [n for _, _, n in found] == [
        "0.35", "0.18", "-3.0", "+0.0244", "25%", "42%", "-6.2", "1.33", "4.1"
    ], found
    assert "https" not in text
