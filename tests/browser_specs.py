"""What the browser tests do with each lesson's demos, and what the learner must then see.

``LESSONS`` maps a lesson (its solution notebook's stem) to its demos, in notebook order: one
``Demo`` per ``demos.<name>(...)`` call in the notebook's code cells. Each demo lists ``steps``:
move ONE control (found by its description label, as the learner sees it), then every
expectation of the step must hold, compared with what the page showed just before the move.
A step's ``why`` quotes what the lesson says will happen.

Expectations read the demo's readout as text. ``number("loss", DECREASES)`` means: the readout
holds ``loss = <number>`` (``=`` or ``:``; pairs separated by commas, semicolons or new lines)
and that number went down; a readout written otherwise gets a ``pattern``. ``shows("...")``
means the readout contains those words afterwards. ``PLOT_CHANGES`` means the plot image's bytes
changed. A demo with no control (lesson 06's live training run) is ``watch``-ed instead: what it
must show once its cell has run.

``tests/test_browser.py`` fails when a lesson has a demo that no entry here drives, when an
entry names a demo the lesson does not have, and when a step's expectation does not hold in
the browser (or, checked first without a browser, in Python).
"""

from __future__ import annotations

import ast
import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

# How a number (or the plot) must change.
INCREASES = "increases"
DECREASES = "decreases"
CHANGES = "changes"
FLIPS_SIGN = "flips sign"  # nonzero before and after, with opposite signs
STAYS = "stays"  # equal before and after (as printed)
SHOWS = "shows"  # the readout's text contains ``Expect.text`` after the move
SHOWN = "is shown"  # the readout shows this number (a demo without controls: what it must show)

PLOT = "<plot>"  # the demo's image
READOUT = "<readout>"  # the readout's whole text

DEMO = ".kto-demo"  # what kto_course.demos.make_demo builds
LIVE = ".kto-live-training"  # demos.live_training's box (lesson 06): a readout and a plot


@dataclass(frozen=True)
class Move:
    control: str  # the control's description label; "" for a toggle or dropdown without one
    # (then the one whose options include ``to``)
    to: float | str | bool | None  # slider: a value; toggle/dropdown: an option's label;
    # checkbox: True/False; button: None (click it)


@dataclass(frozen=True)
class Expect:
    what: str  # a number's name in the readout, or PLOT, or READOUT
    how: str  # INCREASES, DECREASES, CHANGES, FLIPS_SIGN, STAYS or SHOWS
    text: str = ""  # for SHOWS: the words the readout must contain
    pattern: str = ""  # for a number the readout does not show as "name = number": a regex
    # whose first group is the number

    def __str__(self) -> str:
        return f"readout shows {self.text!r}" if self.how == SHOWS else f"{self.what} {self.how}"


@dataclass(frozen=True)
class Step:
    move: Move
    expect: tuple[Expect, ...]
    why: str  # what the lesson says happens


@dataclass(frozen=True)
class Demo:
    name: str  # the function called in the notebook: demos.<name>()
    steps: tuple[Step, ...]
    settle_s: float = 30.0  # how long a step may take to show its result (a training demo: more)
    selector: str = DEMO  # the demo's box on the page
    shown: tuple[Expect, ...] = ()  # a demo without controls: what it shows once its cell ran
    why: str = ""


def number(name: str, how: str, pattern: str = "") -> Expect:
    return Expect(name, how, pattern=pattern)


def shows(text: str) -> Expect:
    return Expect(READOUT, SHOWS, text)


PLOT_CHANGES = Expect(PLOT, CHANGES)
READOUT_CHANGES = Expect(READOUT, CHANGES)


def step(control: str, to, *expect: Expect, why: str) -> Step:
    if not expect:
        raise ValueError(f"step moving {control!r} expects nothing: name what must change")
    return Step(Move(control, to), tuple(expect), why)


def demo(name: str, *steps: Step, settle_s: float = 30.0) -> Demo:
    if not steps:
        raise ValueError(f"demo {name!r} has no step: move at least one control")
    return Demo(name, tuple(steps), settle_s)


def watch(name: str, *shown: Expect, why: str, selector: str = LIVE) -> Demo:
    """A demo with no control to move (a live training run): what it must show when done."""
    if not shown:
        raise ValueError(f"watched demo {name!r} expects nothing: name what it must show")
    return Demo(name, (), selector=selector, shown=tuple(shown), why=why)


# =============================================================================================
# The registry
# =============================================================================================

# The browser tests' own fixture (tests/fixtures/browser/demo_fixture.ipynb, not a lesson): it
# exercises the three kinds of control the lessons use.
FIXTURE = "demo_fixture"
FIXTURE_DEMOS: tuple[Demo, ...] = (
    demo(
        "loss_vs_r",
        step(
            "r",
            2.0,
            number("loss", DECREASES),
            PLOT_CHANGES,
            why="a desirable example's loss falls as r grows",
        ),
        step(
            "label",
            "undesirable",
            number("dL/dr", FLIPS_SIGN),
            number("loss", INCREASES),
            PLOT_CHANGES,
            why="the same r is good for a desirable example and bad for an undesirable one",
        ),
    ),
    demo(
        "peak_vs_beta",
        step(
            "beta",
            "2.0",
            number("peak |dL/dr|", INCREASES),
            PLOT_CHANGES,
            why="the gradient's peak is beta/4",
        ),
    ),
)

# Readouts that do not write "name = number" (lessons 02 and 06).
AGREE_REFERENCE = r"agrees with the rating\): reference = ([\d.]+)"
AGREE_POLICY = r"agrees with the rating\): reference = [\d.]+, policy = ([\d.]+)"
EFFECTIVE_REFERENCE = r"exp entropy\): reference = ([\d.]+)"
OWN_PAIRS = r"(\d+) of \d+ prompts paired with their own"
Z0_MEAN = r"have mean ([-\u2212]?[\d.]+)"
Z0_SD = r"spread \(sd\) ([\d.]+)"
Z0_CLAMPED = r"(\d+)% of microbatches clamped to 0"

LESSONS: dict[str, tuple[Demo, ...]] = {
    "01_log_ratio": (
        demo(
            "token_logprobs",
            step(
                "completion",
                "long",
                number("log pi_theta(y|x)", DECREASES),
                number("r", INCREASES),
                PLOT_CHANGES,
                why="the long completion has the lower log-prob (-7.10) yet the larger r (3.90)",
            ),
            step(
                "reduce",
                "mean",
                number("r", DECREASES),
                # The bars are the token log-probs: the reduction changes the readout, not them.
                why="with the mean the long completion's r drops to 0.49",
            ),
            step(
                "completion",
                "short",
                number("r", INCREASES),
                why="with the mean the order flips: the short completion's r is 0.80",
            ),
            step("reduce", "sum", number("r", INCREASES), why="the short completion's sum: 1.60"),
            step(
                "tokens",
                "prompt + completion",
                number("r", INCREASES),
                PLOT_CHANGES,
                why="including the prompt adds its own change, +1.30 (r = 2.90)",
            ),
        ),
        demo(
            "dpo_margin",
            step(
                "margin r_w - r_l",
                -30.0,
                number("loss", INCREASES),
                number("d loss / d margin", DECREASES),
                PLOT_CHANGES,
                why="at margin -30 the slope levels off near -beta (-0.095): DPO keeps pushing",
            ),
            step(
                "margin r_w - r_l",
                30.0,
                number("loss", DECREASES),
                number("d loss / d margin", INCREASES),
                PLOT_CHANGES,
                why="at +30 the slope shrinks to -0.005: a pair already right barely moves",
            ),
        ),
    ),
    "02_kl_reference_point": (
        demo(
            "mismatched_pairs",
            step(
                "",
                "reversal",
                number("own pairs", INCREASES, pattern=OWN_PAIRS),
                shows("x2 with y2"),
                PLOT_CHANGES,
                why="reversal at B = 5 pairs the middle prompt x2 with its own completion",
            ),
            step(
                "batch size",
                6,
                number("own pairs", DECREASES, pattern=OWN_PAIRS),
                PLOT_CHANGES,
                why="for even sizes reversal happens to work",
            ),
            step(
                "",
                "cyclic shift (TRL)",
                number("own pairs", STAYS, pattern=OWN_PAIRS),
                READOUT_CHANGES,
                PLOT_CHANGES,
                why="a shift gives 0 own pairs for every B >= 2",
            ),
            step(
                "batch size",
                1,
                shows("no mismatched pair exists"),
                PLOT_CHANGES,
                why="at B = 1 a shift has nothing to pick",
            ),
        ),
        demo(
            "z0_spread",
            step(
                "",
                "raw mean",
                number("mean z0", DECREASES, pattern=Z0_MEAN),
                shows("negative raw estimate"),
                PLOT_CHANGES,
                why="without the clamp the negative estimates stay negative",
            ),
            step(
                "batch size",
                32,
                number("sd", DECREASES, pattern=Z0_SD),
                PLOT_CHANGES,
                why="four times the batch, half the spread (0.35 -> 0.18)",
            ),
            step(
                "",
                "clamp at 0",
                shows("clamped to 0"),
                PLOT_CHANGES,
                why="back to the clamp",
            ),
            step(
                "true mean of r'",
                0.1,
                number("clamped share", INCREASES, pattern=Z0_CLAMPED),
                PLOT_CHANGES,
                why="a true mean near 0 sends more microbatches to the clamp",
            ),
            step(
                "batch size",
                4,
                number("clamped share", INCREASES, pattern=Z0_CLAMPED),
                number("sd", INCREASES, pattern=Z0_SD),
                PLOT_CHANGES,
                why="at B = 4 about 40% of microbatches report z0 = 0",
            ),
        ),
    ),
    "03_value_and_loss": (
        demo(
            "value_loss_explorer",
            step(
                "label",
                "undesirable",
                number("loss", INCREASES),
                number("dL/dr", FLIPS_SIGN),
                PLOT_CHANGES,
                why="switched to undesirable, the loss goes from 0.426 to 0.574 and dL/dr flips",
            ),
            step(
                "label",
                "desirable",
                number("loss", DECREASES),
                number("dL/dr", FLIPS_SIGN),
                why="back to desirable: the mirror image",
            ),
            step(
                "r",
                40.0,
                number("loss", DECREASES),
                number("|dL/dr| / peak", DECREASES),
                PLOT_CHANGES,
                why="at r = 40 the loss and the gradient shrink (about 9% of the peak): saturation",
            ),
            step(
                "r",
                5.0,
                number("loss", INCREASES),
                why="back to r = 5",
            ),
            step(
                "beta",
                1.0,
                number("peak |dL/dr|", INCREASES),
                number("|dL/dr| / peak", DECREASES),
                PLOT_CHANGES,
                why="beta 0.1 -> 1: the peak grows tenfold, the example falls to ~18% of it",
            ),
        ),
        demo(
            "imbalance_explorer",
            step(
                "lambda_D",
                4.5,
                number("ratio", INCREASES),
                number("desirable share of the weighted mass", INCREASES),
                shows("inside [1, 4/3]"),
                PLOT_CHANGES,
                why="lambda_D = 4.5 alone brings 1000 vs 4000 into range (ratio 1.125)",
            ),
            step(
                "lambda_U",
                4.0,
                number("ratio", DECREASES),
                shows("OUTSIDE [1, 4/3]"),
                PLOT_CHANGES,
                why="a weight can create an imbalance as easily as fix one",
            ),
        ),
    ),
    "04_gradients_and_saturation": (
        demo(
            "gradient_batch_explorer",
            step(
                "beta",
                0.3,
                number("top-25% share", INCREASES),
                number("hard |dL/dr| / peak", DECREASES),
                PLOT_CHANGES,
                why="beta 0.3 narrows the bump: the top 25% take ~52%, the hard example ~0.03%",
            ),
            step("beta", 0.1, number("top-25% share", DECREASES), why="back to beta = 0.1"),
            step(
                "hard example r",
                -60.0,
                number("hard |dL/dr| / peak", DECREASES),
                PLOT_CHANGES,
                why="at r = -60 the hard example keeps about 0.8% of the peak",
            ),
            step(
                "hard example r",
                -30.0,
                number("hard |dL/dr| / peak", INCREASES),
                why="back to r = -30 (15% of the peak)",
            ),
            step(
                "beta",
                0.05,
                number("hard |dL/dr| / peak", INCREASES),
                number("peak |dL/dr|", DECREASES),
                PLOT_CHANGES,
                why="beta 0.05 reaches the hard example (~56%) but halves the peak",
            ),
        ),
    ),
    "05_kto_vs_dpo": (
        demo(
            "pair_margins",
            step(
                "shift both r",
                10.0,
                number("DPO loss", STAYS),
                number("d loss / d r_w", STAYS),
                number("KTO loss", INCREASES),
                number("d L / d r_w", INCREASES),
                PLOT_CHANGES,
                why="shifting both r moves only KTO's loss; its chosen row saturates (-0.0033)",
            ),
            step(
                "shift both r",
                0.0,
                number("DPO loss", STAYS),
                number("KTO loss", DECREASES),
                why="back to shift 0",
            ),
            step(
                "margin r_w - r_l",
                -4.0,
                number("DPO loss", INCREASES),
                number("KTO loss", INCREASES),
                PLOT_CHANGES,
                why="margin -4: DPO's loss grows without bound (2.13), KTO's stays below 1",
            ),
        ),
        demo(
            "batch_order",
            step(
                "order",
                "shuffled",
                number("one-label microbatches", DECREASES),
                number("min", INCREASES),
                PLOT_CHANGES,
                why="shuffled microbatches of 8 (seed 0): none is one-label",
            ),
            step(
                "microbatch",
                "2",
                number("one-label microbatches", INCREASES),
                PLOT_CHANGES,
                why="with 2 rows per microbatch about half are one-label by chance",
            ),
            step(
                "order",
                "chosen first",
                number("one-label share", INCREASES),
                PLOT_CHANGES,
                why="chosen first: every microbatch is one-label",
            ),
            step(
                "microbatch",
                "32",
                number("one-label share", STAYS),
                shows("one-label microbatches = 2 of 2"),
                PLOT_CHANGES,
                why="no size in the dropdown makes chosen-first order harmless (2 of 2 at 32)",
            ),
        ),
    ),
    "06_tiny_gpt2_kto": (
        watch(
            "live_training",
            number("loss", SHOWN),
            number("kl", SHOWN),
            shows("desirable"),
            Expect(PLOT, SHOWN),
            why="the live run draws its metrics: loss, kl, the desirable rate",
        ),
        demo(
            "adjective_explorer",
            step(
                "temperature",
                2.0,
                number("reference agreement", DECREASES, pattern=AGREE_REFERENCE),
                number("policy agreement", DECREASES, pattern=AGREE_POLICY),
                number("reference adjectives in use", INCREASES, pattern=EFFECTIVE_REFERENCE),
                PLOT_CHANGES,
                why="temperature 2 flattens both distributions: agreement drops for both models",
            ),
            step(
                "rating",
                "1 star",
                PLOT_CHANGES,
                why="the other rating: other adjectives agree with it",
            ),
        ),
    ),
}

# Lessons without a demo, opened in JupyterLab and run with Run All only: the text their
# outputs must show at the end (proof that the lesson's real work ran, not a skip message).
RUN_ALL_SHOWS = {"07_graduate_to_trl": "max |diff| loss"}

# Seconds a lesson's page may take to execute and show its demos (lesson 06 trains, lesson 07
# runs TRL, both in quick mode).
LOAD_S: dict[str, float] = {"06_tiny_gpt2_kto": 300.0, "07_graduate_to_trl": 300.0}
DEFAULT_LOAD_S = 120.0


def specs_for(lesson: str) -> tuple[Demo, ...]:
    return FIXTURE_DEMOS if lesson == FIXTURE else LESSONS.get(lesson, ())


# =============================================================================================
# Finding a notebook's demos
# =============================================================================================

# Functions of kto_course.demos that build demos but are not demos themselves.
BUILDERS = frozenset({"make_demo", "slider"})


def _demo_calls_in(source: str) -> list[tuple[int, int, str]]:
    try:
        tree = ast.parse(source)
    except SyntaxError:  # IPython magics: fall back to a plain search
        return [
            (m.start(), 0, m.group(1)) for m in re.finditer(r"\bdemos\.([A-Za-z]\w*)\s*\(", source)
        ]
    calls = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "demos"
        ):
            calls.append((node.lineno, node.col_offset, node.func.attr))
    return sorted(calls)


def demo_calls(notebook: Path) -> list[str]:
    """The demos a notebook shows, in order: every ``demos.<name>(...)`` call in its code cells."""
    nb = json.loads(Path(notebook).read_text(encoding="utf-8"))
    names = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        names += [
            name
            for _, _, name in _demo_calls_in(source)
            if name not in BUILDERS and not name.startswith("_")
        ]
    return names


# =============================================================================================
# Reading a readout and judging a step
# =============================================================================================

_NUMBER = r"[+\-\u2212]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+\-\u2212]?\d+)?|[+\-\u2212]?inf|nan"
_PAIR = re.compile(r"([^=:,;\n\t]+?)\s*[=:]\s*(" + _NUMBER + r")")


def readout_text(readout_html: str) -> str:
    """The text a browser shows for a readout's HTML (tags dropped, entities decoded)."""
    text = re.sub(r"<br\s*/?>|</(?:p|div|li|tr)>", "\n", readout_html, flags=re.IGNORECASE)
    return html.unescape(re.sub(r"<[^>]+>", "", text))


def readout_numbers(text: str) -> dict[str, float]:
    """``"loss = 0.62, dL/dr = -0.024"`` -> ``{"loss": 0.62, "dL/dr": -0.024}``."""
    numbers = {}
    for match in _PAIR.finditer(text):
        name = " ".join(match.group(1).split())
        numbers[name] = float(match.group(2).replace("\u2212", "-"))
    return numbers


@dataclass
class Snapshot:
    """What a demo shows at one moment: the readout's text and a hash of the plot's bytes."""

    readout: str
    plot: str
    numbers: dict[str, float] = field(init=False)

    def __post_init__(self):
        self.numbers = readout_numbers(self.readout)


def _value(snapshot: Snapshot, expect: Expect):
    what = expect.what
    if what == PLOT:
        return snapshot.plot
    if what == READOUT:
        return snapshot.readout
    if expect.pattern:
        found = re.search(expect.pattern, snapshot.readout)
        if not found:
            raise KeyError(
                f"the readout does not match {expect.pattern!r} (for {what!r}): it shows "
                f"{snapshot.readout!r}"
            )
        return float(found.group(1).replace("\u2212", "-"))
    if what not in snapshot.numbers:
        raise KeyError(
            f"the readout names no number {what!r}: it shows {snapshot.readout!r} "
            f"(numbers found: {sorted(snapshot.numbers)})"
        )
    return snapshot.numbers[what]


def holds(expect: Expect, before: Snapshot, after: Snapshot) -> bool:
    """Whether ``expect`` holds between two snapshots (KeyError: the number is not shown)."""
    if expect.how == SHOWS:
        return expect.text in after.readout
    if expect.how == SHOWN:
        return bool(after.plot) if expect.what == PLOT else math.isfinite(_value(after, expect))
    a, b = _value(before, expect), _value(after, expect)
    if expect.how == CHANGES:
        return a != b
    if expect.how == STAYS:
        return a == b
    if expect.what in (PLOT, READOUT):
        raise ValueError(f"{expect.what} can only change or stay, not {expect.how!r}")
    if expect.how == INCREASES:
        return b > a
    if expect.how == DECREASES:
        return b < a
    if expect.how == FLIPS_SIGN:
        return a * b < 0
    raise ValueError(f"unknown expectation {expect.how!r}")


def failures(step_: Step | Demo, before: Snapshot, after: Snapshot) -> list[str]:
    """The expectations of a step (or a watched demo's) that do not hold, with the values seen."""
    out = []
    for expect in step_.expect if isinstance(step_, Step) else step_.shown:
        try:
            ok = holds(expect, before, after)
        except KeyError as error:
            out.append(f"{expect}: {error.args[0]}")
            continue
        if not ok:
            if expect.how in (SHOWS, SHOWN):
                seen = repr(after.readout)
            elif expect.what == PLOT:
                seen = "the plot " + ("did not change" if expect.how == CHANGES else "changed")
            else:
                seen = f"{_value(before, expect)!r} -> {_value(after, expect)!r}"
            out.append(f"{expect} ({step_.why}): saw {seen}")
    return out
