"""The demos in a real browser: Chromium drives Voila (every lesson) and JupyterLab (every lesson).

For each lesson with a demo, a temporary copy of its solution notebook is served by Voila (one
server and one page load per lesson, executed with KTO_COURSE_QUICK=1); every demo is driven as
``browser_specs.py`` says: move a control, wait until the readout and plot show what the lesson
promises, screenshot the demo into ``screenshots/<lesson>/``. Every lesson's untouched student
version is also opened in JupyterLab (with the learner's profile, ``jupyter/learner/``, as
``make lab`` opens it: no instructor panel, Validate kept) and run with Run All: it must reach
the last cell, its only errors the unanswered checks, each one line with no frame of the
checker (screenshots in ``screenshots/lab_<lesson>_page/``: the page, the first failed check);
then its demos are driven the same way, or, in a lesson without demos
(``browser_specs.RUN_ALL_SHOWS``: lesson 07), its experiments' output must show. Every test also
checks that no traceback is shown or logged, that the page raised no uncaught error, that no
request left loopback and that every server, kernel and browser process it started has
exited. The feedback page of ``kto-course submit`` must typeset its math offline.

Chromium: Debian's (``apt-get install chromium``; ``.ci/run`` installs it) or the path in
$KTO_COURSE_CHROMIUM. Without it these tests are skipped, except in CI (CI=true): there they fail.

Run only these:  .venv/bin/pytest -m browser tests/test_browser.py
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import browser_specs as specs
import numpy as np
import psutil
import pytest
from conftest import NOTEBOOKS, skip_if_learner_edited, unanswered

from kto_course import system

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = ROOT / "solutions"
FIXTURE_DIR = Path(__file__).resolve().parent / "fixtures" / "browser"
SCREENSHOTS = ROOT / "screenshots"
LEARNER_PROFILE = ROOT / "jupyter" / "learner"
# What a learner's JupyterLab must not show: nbgrader's instructor panels and their errors.
INSTRUCTOR_ONLY = ("Formgrader", "Create Assignment", "Course List", "Error fetching courses",
                   "exchange directory")  # fmt: skip

INSTALL_HINT = (
    "install Debian's Chromium (`apt-get install chromium`, as `.ci/run` does) or set "
    f"{system.CHROMIUM_ENV} to a Chromium executable"
)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    # Below page.route, for what it cannot see (websockets, the browser's own traffic): no host
    # name but loopback resolves.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
]
LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def notebook_of(lesson: str, student: bool = False) -> Path:
    """The solution notebook (Voila, the demos), or with ``student`` the learner's untouched
    version (JupyterLab Run All); the fixture lesson has one version."""
    folder = FIXTURE_DIR if lesson == specs.FIXTURE else NOTEBOOKS if student else SOLUTIONS
    return folder / f"{lesson}.ipynb"


def lessons_with_demos() -> list[str]:
    return [nb.stem for nb in sorted(SOLUTIONS.glob("*.ipynb")) if specs.demo_calls(nb)]


def load_s(lesson: str) -> float:
    return specs.LOAD_S.get(lesson, specs.DEFAULT_LOAD_S)


def time_budget_s(lesson: str) -> int:
    """The pytest-timeout of a lesson's browser test: its page load plus its demos' steps."""
    demos = specs.specs_for(lesson) if lesson == specs.FIXTURE or lesson in specs.LESSONS else ()
    steps_s = sum(d.settle_s * len(d.steps) for d in demos)
    return int(60 + 2 * load_s(lesson) + steps_s)


@pytest.fixture(scope="module")
def chromium() -> str:
    path = system.find_chromium()
    if path:
        return path
    message = f"Chromium not found: {INSTALL_HINT}."
    if in_ci():
        pytest.fail(f"{message} CI=true: the browser tests must run in CI.", pytrace=False)
    pytest.skip(message)


# =============================================================================================
# Without a browser: every demo has a spec, and every spec holds in Python
# =============================================================================================


def test_every_demo_has_a_browser_spec():
    """A lesson's demos (``demos.<name>(...)`` calls, in order) are those its spec drives."""
    problems = []
    shown = {nb.stem: specs.demo_calls(nb) for nb in sorted(SOLUTIONS.glob("*.ipynb"))}
    for lesson, names in shown.items():
        driven = [d.name for d in specs.LESSONS.get(lesson, ())]
        if names != driven:
            problems.append(
                f"{lesson}: the notebook shows demos {names} but tests/browser_specs.py drives "
                f"{driven}; add (or reorder) its entry in LESSONS"
            )
    for lesson in specs.LESSONS:
        if lesson not in shown:
            problems.append(f"browser_specs.LESSONS names {lesson!r}: no such solution notebook")
    assert specs.demo_calls(notebook_of(specs.FIXTURE)) == [d.name for d in specs.FIXTURE_DEMOS]
    assert not problems, "\n".join(problems)


def test_readout_parsing():
    text = "loss = 0.620, dL/dr = \u22120.024; peak |dL/dr|: 2.5e-2\nz0 (clamped) = 0"
    assert specs.readout_numbers(text) == {
        "loss": 0.62,
        "dL/dr": -0.024,
        "peak |dL/dr|": 0.025,
        "z0 (clamped)": 0.0,
    }
    shown = specs.readout_text("<b>loss</b> = 0.5<br>r &minus; z0 = 1")
    assert shown == "loss = 0.5\nr \u2212 z0 = 1"
    step = specs.step("r", 1.0, specs.number("loss", specs.FLIPS_SIGN), why="x")
    before, after = specs.Snapshot("loss = 0.5", "a"), specs.Snapshot("loss = -0.5", "a")
    assert specs.failures(step, before, after) == []
    assert specs.failures(step, before, before)  # no flip
    missing = specs.step("r", 1.0, specs.number("kl", specs.CHANGES), why="x")
    assert "names no number 'kl'" in specs.failures(missing, before, after)[0]


def _import_demos(lesson: str):
    if lesson != specs.FIXTURE:
        from kto_course import demos

        return demos
    sys.path.insert(0, str(FIXTURE_DIR))
    try:
        import fixture_demos

        return fixture_demos
    finally:
        sys.path.remove(str(FIXTURE_DIR))


def _find_control(box, move: specs.Move):
    for control in box.controls.values():
        if getattr(control, "description", None) != move.control:
            continue
        if move.control or str(move.to) in map(str, getattr(control, "_options_labels", ())):
            return control
    labels = [getattr(c, "description", "?") for c in box.controls.values()]
    raise AssertionError(f"no control labelled {move.control!r}: the demo's are {labels}")


def _python_move(box, move: specs.Move) -> None:
    import ipywidgets as widgets

    control = _find_control(box, move)
    if isinstance(control, widgets.Button):
        control.click()
    elif isinstance(control, widgets.widget_selection._Selection):
        labels = [str(label) for label in control._options_labels]
        assert move.to in labels, f"{move.control!r} has no option {move.to!r}: {labels}"
        control.label = move.to
    elif isinstance(control, (widgets.FloatSlider, widgets.IntSlider)):
        assert control.min <= move.to <= control.max, f"{move.control!r}: {move.to} out of range"
        control.value = move.to
    else:
        control.value = move.to


def _python_snapshot(box) -> specs.Snapshot:
    from kto_course import figures

    plot = hashlib.sha256(figures.png_bytes(box.figure)).hexdigest()
    return specs.Snapshot(specs.readout_text(box.readout.value), plot)


@pytest.mark.parametrize("lesson", [specs.FIXTURE, *specs.LESSONS])
def test_specs_hold_in_python(lesson):
    """Each spec's moves are possible and its expectations hold when driven from Python, and
    the controls set back to their first values show the first frame again.

    Catches a wrong spec (a label, an option, a direction) before a browser is involved.
    """
    import ipywidgets as widgets

    demos = _import_demos(lesson)
    for demo in specs.specs_for(lesson):
        if not demo.steps:  # a watched demo (a training run): only the browser test sees it
            continue
        box = getattr(demos, demo.name)()
        start, values = _python_snapshot(box), {n: c.value for n, c in box.controls.items()}
        for step in demo.steps:
            before = _python_snapshot(box)
            _python_move(box, step.move)
            problems = specs.failures(step, before, _python_snapshot(box))
            assert not problems, f"{lesson} {demo.name}, moving {step.move}: {problems}"
        if any(isinstance(c, widgets.Button) for c in box.controls.values()):
            continue  # a button's click (a new sample) cannot be undone
        # Each frame redraws the demo's one figure: nothing a frame set may leak into the next.
        for name, value in reversed(values.items()):
            box.controls[name].value = value
        assert _python_snapshot(box) == start, f"{lesson} {demo.name}: back at the start, it "
        "shows another plot or readout than it first did"


def test_demo_canvas_draws_only_the_latest_state(monkeypatch):
    """With a browser attached, a lone move draws at once; moves right after a frame only ask
    for the next one, and the frame the browser then asks for renders the controls' latest
    values, once (quick moves queue no redraws)."""
    from kto_course import demos, figures

    rendered = []

    def render(x):
        rendered.append(x)
        fig, ax = figures.new_figure()
        ax.plot([0.0, 1.0], [0.0, x])
        ax.set_ylim(0.0, 10.0 if x < 8 else 1e-3)  # from x = 8 on, wider tick labels
        return fig, f"x = {x}"

    box = demos.make_demo("t", {"x": demos.slider("x", 1.0, 0.0, 10.0, 0.5)}, render)
    canvas, sent = box.plot, []
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    engine = canvas.figure.get_layout_engine()
    assert rendered == [1.0] and not isinstance(engine, ConstrainedLayoutEngine)  # laid out once
    monkeypatch.setattr(
        canvas, "send", lambda content, buffers=None: sent.append(json.loads(content["data"]))
    )
    canvas._handle_message(canvas, {"type": "initialized"}, [])  # a browser attached
    rendered.clear()
    canvas._drawn_at = 0.0  # the last frame is long gone: a lone move draws at once
    box.controls["x"].value = 2.0
    assert rendered == [2.0] and box.readout.value == "x = 2.0"
    assert [m["type"] for m in sent][-1] == "binary"
    sent.clear()
    for x in (3.0, 4.0, 5.0, 6.0):  # right after that frame: only ask for the next one
        box.controls["x"].value = x
    assert rendered == [2.0] and box.readout.value == "x = 2.0"
    assert [m["type"] for m in sent] == ["draw"] * 4  # "draw when you can", to the browser
    sent.clear()
    canvas._handle_message(canvas, {"type": "draw"}, [])  # the browser asks for a frame
    assert rendered == [2.0, 6.0] and box.readout.value == "x = 6.0"
    assert [m["type"] for m in sent] == ["binary"]
    axes = canvas.figure.axes[0]
    assert list(axes.lines[0].get_ydata()) == [0.0, 6.0] and len(canvas.figure.axes) == 1
    canvas._handle_message(canvas, {"type": "draw"}, [])  # nothing new: drawn, not rendered
    assert rendered == [2.0, 6.0]
    # Tick labels that grow ("0.0010" after "10") get the layout done again, in that frame.
    left = axes.get_position().x0
    canvas._drawn_at, sent[:] = 0.0, []
    box.controls["x"].value = 9.0
    assert [m["type"] for m in sent].count("binary") == 1 and axes.get_position().x0 > left


def test_a_demo_draws_its_first_frame_unless_nbgrader_runs_it(monkeypatch):
    """A demo draws its first frame when it is built (the page never shows an empty box);
    under nbgrader (autograde, a learner's Validate) no page shows it, so it draws none. Its
    figure and readout are the same either way."""
    from kto_course import demos

    drawn = []
    draw = demos.base.DemoCanvas.draw
    monkeypatch.setattr(demos.base.DemoCanvas, "draw", lambda self: drawn.append(draw(self)))

    def built(execution):
        monkeypatch.setenv("NBGRADER_EXECUTION", execution)
        drawn.clear()
        box = demos.dpo_margin()
        lines = [list(map(float, line.get_ydata())) for ax in box.figure.axes for line in ax.lines]
        return len(drawn), box.readout.value, lines

    frames, readout, lines = built("")  # not under nbgrader
    assert frames == 1 and readout and lines
    for execution in ("autograde", "validate"):
        assert built(execution) == (0, readout, lines), execution


def _differing_share(a, b) -> float:
    """The share of pixels of two RGBA frames that differ visibly (by more than 40 of 255)."""
    return float((np.abs(a.astype(int) - b.astype(int)).max(-1) > 40).mean())


def _frame_against_full_draw(box) -> float:
    """``_differing_share`` of the demo canvas's current frame and its figure drawn from
    scratch (``figures.png_bytes``)."""
    import io

    from PIL import Image

    from kto_course import figures

    frame = np.asarray(box.plot.buffer_rgba()).copy()
    full = np.asarray(Image.open(io.BytesIO(figures.png_bytes(box.figure))).convert("RGBA"))
    return _differing_share(frame, full)


def test_axes_seen_in_an_earlier_frame_come_from_its_saved_image(monkeypatch):
    """Toggling between two looks of the axes (tick labels of different widths, so two
    layouts) draws each look whole once; after that every frame is a blit, and each frame is
    what a full draw shows."""
    import ipywidgets as widgets
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from kto_course import demos, figures

    def render(tokens):
        fig, ax = figures.new_figure()
        labels = tokens.split()
        ax.bar(range(len(labels)), range(1, len(labels) + 1))
        ax.set_xticks(range(len(labels)), labels, rotation=45)
        return fig, tokens

    control = widgets.Dropdown(options=["a b", "a long-token-label b c"])
    box = demos.make_demo("t", {"tokens": control}, render)
    canvas = box.plot
    canvas.send = lambda *args, **kwargs: None
    whole = []
    draw = FigureCanvasAgg.draw
    monkeypatch.setattr(FigureCanvasAgg, "draw", lambda self: whole.append(1) or draw(self))
    counts = []  # whole draws per frame
    for tokens in ["a long-token-label b c", "a b"] * 3:
        control.value = tokens
        before = len(whole)
        canvas.draw()
        counts.append(len(whole) - before)
        assert _frame_against_full_draw(box) < 1e-4, tokens
    assert counts[0] > 0 and counts[1:] == [0] * 5, counts  # only the new look is drawn whole


def test_a_legend_is_drawn_from_its_pixels_only_while_it_looks_the_same():
    """DemoCanvas keeps a legend's pixels per look (place, texts, handles): a frame whose
    legend changed draws the new one, a legend seen before is drawn from its pixels, and
    either way the frame is what a full draw shows (the data under the legend too)."""
    import ipywidgets as widgets

    from kto_course import demos, figures

    def render(label, color):
        fig, ax = figures.new_figure()
        ax.plot([0.0, 1.0], [0.0, 1.0], color=color, label=label)
        ax.plot([0.0, 1.0], [0.9, 0.9], color="black", linewidth=3)  # runs under the legend
        ax.set_ylim(0.0, 1.0)
        ax.legend(loc="upper left")
        return fig, label

    controls = {"label": widgets.Dropdown(options=["short", "a much longer label"]),
                "color": widgets.Dropdown(options=["tab:blue", "tab:red"])}  # fmt: skip
    box = demos.make_demo("t", controls, render)
    canvas = box.plot
    canvas.send = lambda *args, **kwargs: None
    looks = []
    for label, color in (("a much longer label", "tab:blue"), ("a much longer label", "tab:red"),
                         ("short", "tab:blue"), ("a much longer label", "tab:red")):  # fmt: skip
        controls["label"].value, controls["color"].value = label, color
        canvas.draw()
        assert _frame_against_full_draw(box) < 1e-4, (label, color)
        looks.append(len(canvas._legends))
    assert looks == [2, 3, 3, 3]  # new texts, a new colour, the first look, seen before


@pytest.mark.parametrize("lesson", specs.LESSONS)
def test_live_frames_show_what_a_full_draw_shows(lesson):
    """A demo's canvas redraws only a frame's artists over the saved axes when those look as
    before: after every step of the spec, its frame is the figure drawn from scratch (and the
    frame before the step is not: the comparison sees a stale frame)."""
    import io

    from PIL import Image

    from kto_course import figures

    demos = _import_demos(lesson)
    for demo in specs.specs_for(lesson):
        if not demo.steps:
            continue
        box = getattr(demos, demo.name)()
        canvas, stale_seen = box.plot, False
        canvas.send = lambda *args, **kwargs: None
        for step in demo.steps:
            before = np.asarray(canvas.buffer_rgba()).copy()
            _python_move(box, step.move)
            canvas.draw()
            frame = np.asarray(canvas.buffer_rgba()).copy()
            full = Image.open(io.BytesIO(figures.png_bytes(box.figure))).convert("RGBA")
            full = np.asarray(full)
            assert _differing_share(frame, full) < 1e-4, (
                f"{lesson} {demo.name}, after moving {step.move}: the live frame differs from "
                f"a full draw in {_differing_share(frame, full):.2%} of its pixels"
            )
            stale_seen |= _differing_share(before, full) > 1e-4  # 17 of 172 000 pixels
        assert stale_seen, f"{lesson} {demo.name}: no step changed the plot visibly"


def test_missing_chromium_skips_locally_and_fails_in_ci(tmp_path):
    """Without Chromium: a local run skips with the install hint, a CI run fails."""
    base = {k: v for k, v in os.environ.items() if k != "CI"}
    base[system.CHROMIUM_ENV] = str(tmp_path / "no-chromium-here")
    command = [
        sys.executable, "-m", "pytest", str(Path(__file__)), "-k", "test_voila_demos",
        "-p", "no:cacheprovider", "-q", "-rs",
    ]  # fmt: skip
    local = subprocess.run(command, env=base, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert local.returncode == 0, local.stdout + local.stderr
    assert " skipped" in local.stdout and "apt-get install chromium" in local.stdout
    assert "passed" not in local.stdout and "failed" not in local.stdout
    ci = subprocess.run(
        command, env={**base, "CI": "true"}, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert ci.returncode != 0, ci.stdout
    assert "CI=true" in ci.stdout and "apt-get install chromium" in ci.stdout


# =============================================================================================
# Servers: isolated Jupyter dirs, free ports, everything stopped and checked at the end
# =============================================================================================


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def isolated_env(home: Path) -> dict:
    """The server's environment: its own Jupyter dirs (no user settings), quick mode on."""
    dirs = {
        "JUPYTER_CONFIG_DIR": "config",
        "JUPYTER_DATA_DIR": "data",
        "JUPYTER_RUNTIME_DIR": "runtime",
        "JUPYTERLAB_SETTINGS_DIR": "lab-settings",
        "JUPYTERLAB_WORKSPACES_DIR": "lab-workspaces",
        "IPYTHONDIR": "ipython",
        "TMPDIR": "tmp",
    }
    env = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "CI")}
    for var, name in dirs.items():
        (home / name).mkdir(parents=True, exist_ok=True)
        env[var] = str(home / name)
    env[system.QUICK_ENV] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    # The learner's profile, as `make lab` sets it: no instructor panels, Validate kept.
    env["JUPYTER_CONFIG_PATH"] = str(LEARNER_PROFILE)
    # JupyterLab: no news or update popup over the notebook; keep every cell in the DOM.
    settings = home / "lab-settings" / "@jupyterlab"
    for plugin, content in {
        "apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
        "notebook-extension/tracker": {"windowingMode": "none"},
    }.items():
        path = settings / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content))
    return env


class Server:
    """A Voila or JupyterLab server on a free loopback port, for one test."""

    def __init__(self, kind: str, notebook: Path, home: Path):
        self.kind, self.notebook, self.home = kind, notebook, home
        self.token = secrets.token_hex(16)
        self.log_path = home / f"{kind}.log"
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def command(self) -> list[str]:
        if self.kind == "voila":
            return [
                sys.executable, "-m", "voila", str(self.notebook), "--no-browser",
                "--Voila.ip=127.0.0.1", f"--port={self.port}", "--Voila.port_retries=0",
                f"--token={self.token}", "--VoilaConfiguration.show_tracebacks=True",
            ]  # fmt: skip
        return [
            sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
            "--ip=127.0.0.1", f"--port={self.port}", "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.notebook.parent}",
            "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        ]  # fmt: skip

    @property
    def url(self) -> str:
        base = f"http://127.0.0.1:{self.port}"
        if self.kind == "voila":
            return f"{base}/?token={self.token}"
        return f"{base}/lab/tree/{self.notebook.name}?token={self.token}&reset"

    def start(self, timeout_s: float = 90.0) -> None:
        env = isolated_env(self.home)
        for _ in range(3):  # a free port can be taken between choosing and binding it
            self.port = free_port()
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    self.command(), cwd=self.notebook.parent, env=env, stdout=log,
                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                )  # fmt: skip
            if self._wait_ready(timeout_s):
                return
            if "already in use" not in self.log():
                break
        raise AssertionError(f"{self.kind} did not start:\n{self.log()[-3000:]}")

    def _wait_ready(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if self.kind == "voila":
                with (
                    contextlib.suppress(OSError),
                    socket.create_connection(("127.0.0.1", self.port), timeout=1),
                ):
                    return True
            else:
                url = f"http://127.0.0.1:{self.port}/api/status?token={self.token}"
                with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return True
            time.sleep(0.25)
        return False

    def _wait_no_connections(self, timeout_s: float) -> None:
        url = f"http://127.0.0.1:{self.port}/api/kernels?token={self.token}"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    kernels = json.load(r)
            except (OSError, ValueError):
                return  # the server is gone or not answering: stop() insists below
            if all(k.get("connections", 0) == 0 for k in kernels):
                return
            time.sleep(0.1)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """Stop as a user would (JupyterLab: the shutdown API; Voila: SIGTERM), then insist."""
        if self.proc is None or self.proc.poll() is not None:
            return
        if self.kind == "lab":
            # A tab closed just before the shutdown request can leave the server writing a
            # kernel's last messages to that tab's closing websocket, which tornado logs as a
            # WebSocketClosedError traceback. A user closes the tab and then shuts down: wait
            # until the server has seen every tab go.
            self._wait_no_connections(timeout_s=10.0)
            request = urllib.request.Request(
                f"http://127.0.0.1:{self.port}/api/shutdown",
                method="POST",
                headers={"Authorization": f"token {self.token}"},
            )
            with contextlib.suppress(OSError):
                urllib.request.urlopen(request, timeout=10).close()
        else:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


class Processes:
    """A server and every process it starts (kernels) must be gone when the test ends.

    Kernels run in their own process sessions, so killing a server's process group would not
    reach them: the test records them while they live and checks each one at the end.
    """

    def __init__(self):
        self.seen: dict[int, psutil.Process] = {}
        self.cmdlines: dict[int, str] = {}

    def record(self, root_pid: int) -> None:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(root_pid)
            for p in [root, *root.children(recursive=True)]:
                if p.pid not in self.seen:
                    with contextlib.suppress(psutil.Error):
                        self.cmdlines[p.pid] = " ".join(p.cmdline())
                        self.seen[p.pid] = p

    def kernels(self) -> list[str]:
        return [cmd for cmd in self.cmdlines.values() if "ipykernel" in cmd]

    def leftovers(self) -> list[str]:
        """Wait for recorded processes to exit; kill and name any still running."""
        _, alive = psutil.wait_procs(list(self.seen.values()), timeout=20)
        names = []
        for p in alive:
            names.append(f"{p.pid} {self.cmdlines.get(p.pid, '?')[:120]}")
            with contextlib.suppress(psutil.Error):
                p.kill()
        return names


# =============================================================================================
# The browser
# =============================================================================================

SNAPSHOT_JS = """
async (box) => {
  const htmls = [...box.children].filter(e => e.classList.contains('widget-html'));
  const readout = htmls.length ? htmls[htmls.length - 1].innerText.trim() : '';
  const canvas = box.querySelector('.jupyter-matplotlib canvas');  // ipympl draws here
  if (!canvas || !box.__ktoDraws) return {readout, plot: null};  // no frame yet
  // Hash what the learner sees: the canvas's pixels.
  const bytes = new TextEncoder().encode(canvas.toDataURL());
  const digest = await crypto.subtle.digest('SHA-256', bytes);
  const hex = [...new Uint8Array(digest)].map(b => b.toString(16).padStart(2, '0')).join('');
  return {readout, plot: hex};
}
"""

# Installed in every page before its scripts: count each demo's frames (ipympl draws each onto
# its canvas with drawImage) and time the first frame and the first readout change after a
# control was moved (``ARM_JS``).
FRAMES_JS = """
(() => {
  const DEMO = '.kto-demo, .kto-live-training';
  const draw = CanvasRenderingContext2D.prototype.drawImage;
  CanvasRenderingContext2D.prototype.drawImage = function (...args) {
    const result = draw.apply(this, args);
    const box = this.canvas.closest && this.canvas.closest(DEMO);
    if (box) {
      box.__ktoDraws = (box.__ktoDraws || 0) + 1;
      const w = box.__kto;
      if (w && w.t0 !== null && w.plotAt === null) w.plotAt = performance.now();
    }
    return result;
  };
})();
"""

# Start timing a move: the next click, change or key press in the box is t0; then the first
# frame and the first change of the readout after it.
ARM_JS = """
(box) => {
  const w = box.__kto = {t0: null, plotAt: null, readoutAt: null};
  if (!box.__ktoListening) {
    box.__ktoListening = true;
    for (const type of ['click', 'change', 'keydown']) {
      box.addEventListener(type, (e) => {
        const now = box.__kto;
        if (now && now.t0 === null) now.t0 = performance.now();
      }, true);
    }
  }
  const htmls = [...box.children].filter(e => e.classList.contains('widget-html'));
  const readout = htmls[htmls.length - 1];
  if (box.__ktoObserver) box.__ktoObserver.disconnect();
  box.__ktoObserver = new MutationObserver(() => {
    if (w.t0 !== null && w.readoutAt === null) w.readoutAt = performance.now();
  });
  if (readout) {
    box.__ktoObserver.observe(readout, {childList: true, subtree: true, characterData: true});
  }
}
"""
LATENCY_JS = """
(box) => {
  const w = box.__kto;
  if (!w || w.t0 === null) return null;
  const seen = [w.plotAt, w.readoutAt].filter(t => t !== null);
  return seen.length ? Math.max(...seen) - w.t0 : null;
}
"""

# Marks the control whose description label (or button text) is `label` in a demo box; for
# label "", the toggle/dropdown without a description that offers the option `to`.
MARK_CONTROL_JS = """
(box, [label, to]) => {
  box.querySelectorAll('[data-kto-target]').forEach(e => e.removeAttribute('data-kto-target'));
  for (const l of box.querySelectorAll('.widget-label')) {
    if (l.textContent.trim() !== label || l.parentElement === box) continue;
    const control = l.parentElement;
    const options = [...control.querySelectorAll('button, option, label')]
      .map(o => o.textContent.trim());
    if (label === '' && !options.includes(to)) continue;
    control.setAttribute('data-kto-target', '1');
    return control.className;
  }
  for (const b of box.querySelectorAll('button.widget-button')) {
    if (b.textContent.trim() === label) {
      b.setAttribute('data-kto-target', '1');
      return b.className;
    }
  }
  const labels = [...box.querySelectorAll('.widget-label')].map(l => l.textContent.trim());
  return 'missing: ' + JSON.stringify(labels);
}
"""

BOXES = f"{specs.DEMO}, {specs.LIVE}"  # every demo box, in page order
SHOWN_JS = """
([selector, n]) => document.querySelectorAll(selector).length >= n
  && [...document.querySelectorAll(selector)].every(b => b.__ktoDraws > 0)
"""

TRACEBACK_JS = """
() => [...document.querySelectorAll('.jp-OutputArea-output, .widget-output')]
  .map(e => e.innerText)
  .filter(t => /Traceback|There was an error when executing cell|Cell execution timed out/.test(t))
"""


@pytest.fixture(scope="module")
def browser(chromium):
    """One headless Chromium for the module (each test gets its own context); its processes
    must be gone after it closes."""
    from playwright.sync_api import sync_playwright

    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    pw = sync_playwright().start()
    processes = Processes()
    try:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        for p in me.children(recursive=True):
            if p.pid not in before:
                processes.record(p.pid)
        yield browser
        browser.close()
    finally:
        pw.stop()
        leftovers = processes.leftovers()
    assert not leftovers, f"browser processes still running: {leftovers}"


@contextlib.contextmanager
def browser_page(browser):
    """A fresh page whose every non-loopback request is aborted; records uncaught errors."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    try:
        page = context.new_page()
        page.errors, page.aborted, page.console_errors = [], [], []
        page.loopback_requests = 0

        def only_loopback(route):
            if urlsplit(route.request.url).hostname in LOOPBACK or route.request.url.startswith(
                ("data:", "blob:", "file:")  # this machine's own files (a feedback page)
            ):
                page.loopback_requests += 1
                route.continue_()
            else:
                page.aborted.append(route.request.url)
                route.abort()

        context.route("**/*", only_loopback)
        context.add_init_script(FRAMES_JS)
        # A widget callback that raises shows nothing on the page (the demo just does not
        # update): catch the kernel's error messages on their way to the browser.
        page.kernel_errors = []

        def watch(ws):
            ws.on("framereceived", lambda payload: _record_kernel_error(page, payload))

        page.on("websocket", watch)
        page.on("pageerror", lambda error: page.errors.append(str(error)))
        page.on(
            "console",
            lambda m: page.console_errors.append(m.text) if m.type == "error" else None,
        )
        yield page
    finally:
        context.close()


def _record_kernel_error(page, payload) -> None:
    text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload
    if re.search(r'"msg_type":\s*"error"', text):
        found = re.search(r'"ename":\s*"([^"]*)",\s*"evalue":\s*"([^"]*)"', text)
        page.kernel_errors.append(": ".join(found.groups()) if found else text[:300])


def snapshot(box, timeout_s: float = 10.0) -> specs.Snapshot:
    deadline = time.monotonic() + timeout_s
    while True:
        seen = box.evaluate(SNAPSHOT_JS)
        if seen["plot"] is not None or time.monotonic() > deadline:
            return specs.Snapshot(seen["readout"], seen["plot"] or "")
        time.sleep(0.2)


def move_control(page, box, move: specs.Move) -> None:
    """Move a control as a learner would: type into a slider's readout, click, select. The
    latency watch (``ARM_JS``) starts right before the action that sends the new value."""
    kind = box.evaluate(MARK_CONTROL_JS, [move.control, str(move.to)])
    assert not kind.startswith("missing"), f"no control labelled {move.control!r}: {kind}"
    target = box.locator("[data-kto-target]")
    if "widget-slider" in kind:
        # The slider's readout is editable: type the value, Enter sends it once (as releasing
        # the handle after a drag does).
        readout = target.locator(".widget-readout")
        readout.click()
        page.keyboard.press("Control+A")
        page.keyboard.type(str(move.to))
        box.evaluate(ARM_JS)
        page.keyboard.press("Enter")
        return
    box.evaluate(ARM_JS)
    if "widget-toggle-buttons" in kind or "widget-radio" in kind:
        target.get_by_text(str(move.to), exact=True).click()
    elif "widget-dropdown" in kind:
        target.locator("select").select_option(label=str(move.to))
    elif "widget-checkbox" in kind:
        target.locator("input").set_checked(bool(move.to))
    elif "widget-button" in kind:
        target.click()
    elif "widget-text" in kind:
        target.locator("input").fill(str(move.to))
        target.locator("input").press("Enter")
    else:
        raise AssertionError(f"no way to move a control of class {kind!r} ({move.control!r})")


# The width of each slider's track (without its label and readout) in a demo box.
SLIDER_TRACKS_JS = """
(box) => [...box.querySelectorAll('.widget-slider .slider-container')]
  .map(e => Math.round(e.getBoundingClientRect().width))
"""
MIN_TRACK_PX = 200


def drive_demos(page, lesson: str, shots: Path) -> list[Path]:
    """Drive every demo of a loaded page as its spec says; a screenshot of each into ``shots``."""
    demos = specs.specs_for(lesson)
    boxes = page.locator(BOXES)
    assert boxes.count() == len(demos), (
        f"{lesson}: the page shows {boxes.count()} demos, the spec drives {len(demos)}"
    )
    paths, latencies = [], {}
    for i, demo in enumerate(demos):
        box = boxes.nth(i)
        assert box.evaluate("(e, s) => e.matches(s)", demo.selector), (
            f"{lesson} demo {i} ({demo.name}): expected a {demo.selector} box here"
        )
        box.scroll_into_view_if_needed()
        tracks = box.evaluate(SLIDER_TRACKS_JS)
        assert all(w >= MIN_TRACK_PX for w in tracks), (
            f"{lesson} demo {i} ({demo.name}): slider tracks {tracks} px wide, under "
            f"{MIN_TRACK_PX} px: too short to drag to a value"
        )
        if not demo.steps:
            seen = snapshot(box)
            problems = specs.failures(demo, seen, seen)
            assert not problems, f"{lesson} demo {i} ({demo.name}) ({demo.why}): {problems}"
        for step in demo.steps:
            before = snapshot(box)
            move_control(page, box, step.move)
            deadline = time.monotonic() + demo.settle_s
            while True:
                after = snapshot(box)
                problems = specs.failures(step, before, after)
                if not problems:
                    # The plot and the readout arrive as two messages: look once more.
                    time.sleep(0.1)
                    after = snapshot(box)
                    problems = specs.failures(step, before, after)
                if not problems or time.monotonic() > deadline:
                    break
                time.sleep(0.25)
            assert not problems, (
                f"{lesson} demo {i} ({demo.name}): after moving {step.move.control!r} to "
                f"{step.move.to!r}: {problems}; readout before {before.readout!r}, "
                f"after {after.readout!r}; kernel errors: {page.kernel_errors}"
            )
            latency = box.evaluate(LATENCY_JS)
            assert latency is not None, f"{lesson} {demo.name}: no frame or readout change seen"
            latencies.setdefault(demo.name, []).append(round(latency, 1))
        if demo.steps and _first_slider(box) is not None:
            latencies[f"{demo.name}: frames for 5 quick key presses"] = [
                rapid_presses(page, box, lesson, demo.name)
            ]
        path = shots / f"{i + 1:02d}_{demo.name}.png"
        box.screenshot(path=str(path))
        paths.append(path)
    (shots / LATENCY_FILE).write_text(json.dumps(latencies, indent=1))
    return paths


# Each driven page's redraw latencies (ms from the input event to the frame and the readout
# showing the change, per demo) land in its screenshot folder; conftest prints their medians.
LATENCY_FILE = "latency.json"
PRESSES = 5


def _first_slider(box):
    sliders = box.locator(".widget-slider .noUi-handle")
    return sliders.first if sliders.count() else None


def _settle(box) -> int:
    """Wait until the demo has drawn no new frame for half a second; its frame count."""
    deadline, last = time.monotonic() + 10, None
    while time.monotonic() < deadline:
        time.sleep(0.5)
        frames = box.evaluate("(b) => b.__ktoDraws")
        if frames == last:
            break
        last = frames
    return last


def rapid_presses(page, box, lesson: str, name: str) -> int:
    """Five quick arrow-key presses on a demo's first slider, then five back (left first when
    it stands at its maximum): at most one frame per press each way, and the demo then shows
    exactly what it showed before (a frame of a value already left behind, drawn last, would
    differ). Returns the frames of the first five.
    """
    start, errors = snapshot(box), len(page.kernel_errors)
    handle = _first_slider(box)
    handle.focus()
    at_max = handle.get_attribute("aria-valuenow") == handle.get_attribute("aria-valuemax")
    frames = [_settle(box)]
    for key in ("ArrowLeft", "ArrowRight") if at_max else ("ArrowRight", "ArrowLeft"):
        for _ in range(PRESSES):
            page.keyboard.press(key)
        frames.append(_settle(box))
    drawn = [b - a for a, b in zip(frames, frames[1:], strict=False)]
    assert all(1 <= n <= PRESSES for n in drawn), (
        f"{lesson} {name}: {PRESSES} quick key presses each way drew {drawn} frames"
    )
    back = snapshot(box)
    assert back == start, (
        f"{lesson} {name}: after {PRESSES} presses right and {PRESSES} left the demo shows "
        f"{back.readout!r}, not {start.readout!r} as before (or another plot)"
    )
    assert not page.kernel_errors[errors:], f"{lesson} {name}: {page.kernel_errors[errors:]}"
    return drawn[0]


def wait_for_voila(page, server: Server, lesson: str) -> None:
    """Wait until Voila has executed the notebook and every demo shows its plot."""
    deadline = time.monotonic() + load_s(lesson)
    n = len(specs.specs_for(lesson))
    while not page.evaluate(SHOWN_JS, [BOXES, n]):
        if time.monotonic() > deadline or server.proc.poll() is not None:
            progress = page.evaluate("() => document.body ? document.body.innerText : ''")
            raise AssertionError(
                f"{lesson}: Voila did not show {n} demos within {load_s(lesson):.0f} s; the page "
                f"says {progress.strip()[-300:]!r}; kernel errors: {page.kernel_errors}; "
                f"server log:\n{server.log()[-2000:]}"
            )
        time.sleep(0.5)


def assert_clean(page, server: Server) -> None:
    tracebacks = page.evaluate(TRACEBACK_JS)
    assert not tracebacks, "the page shows a traceback:\n" + "\n".join(tracebacks)[:3000]
    assert not page.errors, f"uncaught errors in the page: {page.errors}"
    assert not page.kernel_errors, f"the kernel raised (a cell or a demo): {page.kernel_errors}"
    # The guard saw the page's own traffic, so it also saw anything bound elsewhere (aborted).
    assert page.loopback_requests > 0, "the loopback guard saw no request: is page.route active?"


# The error outputs on a JupyterLab page (a check cell's CheckFailed, a raised exception).
ERROR_OUTPUT = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'
ERROR_OUTPUTS_JS = "(s) => [...document.querySelectorAll(s)].map(e => e.innerText.trim())"


def _unanswered(error: str) -> bool:
    """``conftest.unanswered`` of an error shown as "ename: evalue"."""
    ename, _, evalue = error.partition(": ")
    return unanswered(ename, evalue)


def assert_unanswered_checks(page, lesson: str, shots: Path) -> None:
    """Run All of an untouched student version: the kernel's only errors are unanswered
    exercises', each shown as one line with no frame of the checker; a screenshot of the
    first into ``shots``."""
    others = [e for e in page.kernel_errors if not _unanswered(e)]
    assert not others, f"{lesson}: Run All raised more than unanswered checks: {others}"
    page.kernel_errors = []  # what remains is what assert_clean looks for
    shown = page.evaluate(ERROR_OUTPUTS_JS, ERROR_OUTPUT)
    for text in shown:
        assert _unanswered(text) and "\n" not in text and "kto_course/" not in text, (
            f"{lesson}: a failed check shows more than its one-line message:\n{text[:1500]}"
        )
    if lesson != specs.FIXTURE:
        assert shown, f"{lesson}: an untouched student version shows no failed check"
        first = page.locator(ERROR_OUTPUT).first
        first.scroll_into_view_if_needed()
        page.screenshot(path=str(shots / "failed_check.png"))


def assert_learner_lab(page, server: Server) -> None:
    """The learner's profile: nbgrader's Validate button, no instructor panel, menu or error."""
    menus = page.evaluate(
        "() => [...document.querySelectorAll('.lm-MenuBar-itemLabel')].map(e => e.textContent)"
    )
    assert "File" in menus and "Nbgrader" not in menus, menus
    text = page.evaluate("() => document.body.innerText")
    shown = [word for word in INSTRUCTOR_ONLY if word.lower() in text.lower()]
    assert not shown, f"the learner's JupyterLab shows {shown}"
    toolbar = page.evaluate(
        "() => [...document.querySelectorAll('.jp-NotebookPanel-toolbar')]"
        ".map(e => e.innerText).join(' ')"
    )
    assert "Validate" in toolbar, f"no Validate button in the notebook toolbar: {toolbar!r}"
    log = server.log()
    assert "ExchangeError" not in log and "exchange" not in log.lower(), log[-3000:]


def copy_notebook(lesson: str, root: Path, student: bool = False) -> Path:
    """A temporary copy to serve: the committed notebook is never opened by a server."""
    root.mkdir(parents=True)
    source = notebook_of(lesson, student)
    copy = root / source.name
    shutil.copyfile(source, copy)
    if lesson == specs.FIXTURE:
        shutil.copyfile(FIXTURE_DIR / "fixture_demos.py", root / "fixture_demos.py")
    return copy


def fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def assert_stopped(server: Server, leftovers: list[str]) -> None:
    assert server.proc is not None and server.proc.poll() is not None, f"{server.kind} still runs"
    assert not leftovers, f"processes still running after the test: {leftovers}"
    log = server.log()
    assert "Traceback" not in log, f"the server logged a traceback:\n{log[-4000:]}"


# =============================================================================================
# The tests
# =============================================================================================


# `make test` runs in parallel (tests/conftest.py): the Voila pages and JupyterLab's Run All are
# two of the suite's longest pieces, so each is its own group, with its own Chromium (the
# module's `browser`, started once in each worker that runs one of them).
VOILA_GROUP, LAB_GROUP = "browser-voila", "browser-lab"


def _voila_params():
    return [
        pytest.param(
            lesson,
            marks=[
                pytest.mark.browser,
                pytest.mark.timeout(time_budget_s(lesson), method="signal"),
                pytest.mark.xdist_group(VOILA_GROUP),
            ],
        )
        for lesson in lessons_with_demos() or [specs.FIXTURE]
    ]


@pytest.mark.parametrize("lesson", _voila_params())
def test_voila_demos(lesson, browser, tmp_path):
    """Voila runs the lesson; each demo, driven in Chromium, shows what the lesson says."""
    assert lesson == specs.FIXTURE or lesson in specs.LESSONS, (
        f"{lesson} has demos but no entry in tests/browser_specs.py LESSONS"
    )
    notebook = copy_notebook(lesson, tmp_path / "served")
    procs = Processes()
    server = Server("voila", notebook, tmp_path)
    try:
        server.start()
        procs.record(server.proc.pid)
        with browser_page(browser) as page:
            page.goto(server.url, wait_until="commit")
            wait_for_voila(page, server, lesson)
            procs.record(server.proc.pid)
            drive_demos(page, lesson, fresh_dir(SCREENSHOTS / lesson))
            assert_clean(page, server)
            procs.record(server.proc.pid)
        kernels = procs.kernels()
        assert kernels, "no kernel process was seen: did Voila execute the notebook?"
    finally:
        server.stop()
        leftovers = procs.leftovers()
    assert_stopped(server, leftovers)


LAB_IDLE_JS = """
() => [...document.querySelectorAll('#jp-main-statusbar span')]
  .some(e => /^(?!No Kernel).+ \\| Idle$/.test(e.textContent.trim()))
"""
LAB_ALL_RUN_JS = """
() => {
  const prompts = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')];
  return prompts.length > 0 && prompts.every(p => /^\\[\\d+\\]:$/.test(p.textContent.trim()));
}
"""


def _lab_params():
    lessons = [nb.stem for nb in sorted(NOTEBOOKS.glob("*.ipynb"))] or [specs.FIXTURE]
    return [
        pytest.param(
            lesson,
            marks=[
                pytest.mark.browser,
                pytest.mark.timeout(time_budget_s(lesson) + 60, method="signal"),
                pytest.mark.xdist_group(LAB_GROUP),
            ],
        )
        for lesson in lessons
    ]


@pytest.mark.parametrize("lesson", _lab_params())
def test_jupyterlab_run_all_and_demos(lesson, browser, tmp_path):
    """A new learner's path: open the untouched student version in JupyterLab, Run All. It must
    reach the last cell, every error on the way a check of an unanswered exercise shown as its
    one-line message; then play with every demo (or, in a lesson without demos, read the text
    its last experiments print)."""
    if lesson != specs.FIXTURE:  # a learner's answers in notebooks/ are theirs, not a failure
        skip_if_learner_edited(notebook_of(lesson, student=True))
    notebook = copy_notebook(lesson, tmp_path / "served", student=True)
    procs = Processes()
    server = Server("lab", notebook, tmp_path)
    try:
        server.start()
        procs.record(server.proc.pid)
        with browser_page(browser) as page:
            page.goto(server.url)
            # The execution indicator says idle before the kernel is ready: wait for the status
            # bar's "<kernel> | Idle", else Run All does nothing.
            page.wait_for_function(LAB_IDLE_JS, timeout=90_000, polling=250)
            page.evaluate("() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }")
            page.wait_for_function(LAB_ALL_RUN_JS, timeout=load_s(lesson) * 1000, polling=250)
            page.wait_for_function(LAB_IDLE_JS, timeout=60_000, polling=250)
            page.wait_for_function(
                SHOWN_JS, arg=[BOXES, len(specs.specs_for(lesson))], timeout=60_000
            )
            procs.record(server.proc.pid)
            if lesson in specs.RUN_ALL_SHOWS:
                text = page.evaluate("() => document.body.innerText")
                assert specs.RUN_ALL_SHOWS[lesson] in text, (
                    f"{lesson}: Run All finished, but no output shows "
                    f"{specs.RUN_ALL_SHOWS[lesson]!r}; the page ends {text.strip()[-500:]!r}"
                )
            elif specs.specs_for(lesson):
                drive_demos(page, lesson, fresh_dir(SCREENSHOTS / f"lab_{lesson}"))
            page.wait_for_function(LAB_IDLE_JS, timeout=60_000, polling=250)
            assert_learner_lab(page, server)
            shots = fresh_dir(SCREENSHOTS / f"lab_{lesson}_page")
            page.screenshot(path=str(shots / "lab.png"))
            assert_unanswered_checks(page, lesson, shots)
            assert_clean(page, server)
            procs.record(server.proc.pid)
        assert procs.kernels(), "no kernel process was seen: did JupyterLab start one?"
    finally:
        server.stop()
        leftovers = procs.leftovers()
    assert_stopped(server, leftovers)


# MathJax has typeset the page: no job pending, and rendered math on it.
MATHJAX_DONE_JS = """
() => window.MathJax && MathJax.Hub && MathJax.Hub.queue.pending === 0
  && document.querySelectorAll('.MathJax, .MathJax_Display').length > 0
"""
# Markdown cells whose text still shows $...$ (TeX that MathJax did not typeset).
RAW_TEX_JS = """
() => [...document.querySelectorAll('.text_cell_render')].map(e => e.innerText)
  .filter(t => /\\$[^$\\n]+\\$/.test(t)).length
"""


@pytest.mark.browser
@pytest.mark.timeout(300, method="signal")
@pytest.mark.xdist_group(VOILA_GROUP)
def test_feedback_page_typesets_math_offline(browser, tmp_path):
    """The feedback page of `kto-course submit` shows its math typeset with every request off
    the machine refused: opened as a file, and shown by a Jupyter server under /files/."""
    from kto_course import cli

    notebook = copy_notebook("01_log_ratio", tmp_path / "served")
    feedback = notebook.parent / "feedback"
    assert cli.main(["submit", str(notebook), "--feedback-dir", str(feedback)]) == 0
    page_file = feedback / "01_log_ratio.html"
    assert "cdnjs" not in page_file.read_text("utf-8")
    procs = Processes()
    server = Server("lab", notebook, tmp_path)
    try:
        server.start()
        procs.record(server.proc.pid)
        served = f"http://127.0.0.1:{server.port}/files/feedback/{page_file.name}?token={server.token}"
        for url in (page_file.as_uri(), served):
            with browser_page(browser) as page:
                page.goto(url)
                page.wait_for_function(MATHJAX_DONE_JS, timeout=60_000, polling=250)
                assert page.evaluate(RAW_TEX_JS) == 0, f"{url}: TeX left untypeset"
                assert not page.aborted, f"{url}: requests off the machine: {page.aborted}"
                assert not page.errors, f"{url}: uncaught errors: {page.errors}"
                shots = SCREENSHOTS / "feedback"
                shots.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(shots / f"{urlsplit(url).scheme}.png"))
    finally:
        server.stop()
        leftovers = procs.leftovers()
    assert_stopped(server, leftovers)
