"""The grader's armour: cheats and crashes, each a row of a table, and what each must cost.

- ``test_delegation_*``: for every exercise of every lesson (``checks.EXERCISES``, so a new
  lesson's table is covered when it lands), an answer that calls one of its answer twins scores
  0 on that exercise only, with "you called the course's own ...". Graded through
  ``verdicts.grade_notebook``, the step both ``kto-course submit`` and ``nbgrader autograde``
  use, with one warm worker per lesson (fast).
- ``CHEATS`` and ``CRASHES``: each row a student of lesson 01 whose answer to ``dpo_loss`` is
  the cheat (and otherwise the solution). They are graded in ONE class run, nbgrader's own
  ``nbgrader autograde`` in a course that ``kto-course course`` lays out (the class path), and
  a selection of them through ``kto-course submit`` (the learner's path). A cheat must score 0
  on ``dpo_loss`` and full marks elsewhere, leave no trace (the checkout's files it aims at are
  unchanged, a sentinel outside the grading folder still exists) and no hidden text in the
  feedback; a crash must grade the rest.
"""

from __future__ import annotations

import copy
import hashlib
import html
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat
import pytest
from conftest import ROOT, SOLUTIONS

from kto_course import checks, grading
from kto_course.grading import verdicts
from kto_course.grading.sandbox import Sandbox

LESSON = "01_log_ratio"
TARGET = "dpo_loss"
TIMEOUT = 12  # seconds a kernel cell may run in these courses
WRONG = "def dpo_loss(r_w, r_l, beta):\n    return 0.0 * np.asarray(r_w, dtype=float)\n"
# The body of a right answer (the stable DPO loss), after its def line.
RIGHT = "    return np.logaddexp(0.0, -beta * (np.asarray(r_w) - np.asarray(r_l)))\n"
# Files of the checkout that the cheats below aim at, and one they try to create.
AIMED_AT = ["kto_course/core.py", "kto_course/checks/l01_log_ratio.py", "README.md",
            f"solutions/{LESSON}.ipynb"]  # fmt: skip
CANARY = ROOT / "CHEATED_BY_A_LEARNER"

# -- the cheats: {name: answer cell}. {root}: the grading course; {checkout}; {sentinel} ----------
CHEATS = {
    "no-op check": "checks.check_dpo_loss = "
    "lambda *a, **k: print('✓ dpo_loss: all 6 checks passed.')\n"
    + WRONG,
    "rebound checks": "import types\n"
    "checks = types.SimpleNamespace(check_dpo_loss=lambda *a, **k: None)\n"
    + WRONG,
    "always-true np.allclose": "np.allclose = lambda *a, **k: True\n"
    "np.isclose = lambda *a, **k: True\n"
    + WRONG,
    "always-true checks.close": (
        "import kto_course.checks.base as _b, kto_course.checks.l01_log_ratio as _l\n"
        "_b.close = _l.close = lambda *a, **k: True\n" + WRONG
    ),
    "patched core": "core.dpo_loss = lambda w, lo, beta=0.1: 0.0 * np.asarray(w, dtype=float)\n"
    + WRONG,
    "input transformer": (
        "get_ipython().input_transformers_cleanup.append(\n"
        "    lambda lines: ['pass\\n'] if any('check_' in l for l in lines) else lines)\n" + WRONG
    ),
    "expected via inspect.stack": (
        "import inspect\n"
        "def dpo_loss(r_w, r_l, beta):\n"
        "    for frame in inspect.stack():\n"
        "        if 'expected' in frame.frame.f_locals:\n"
        "            return frame.frame.f_locals['expected']\n"
    ),
    "expected via sys._getframe": (
        "import sys\n"
        "def dpo_loss(r_w, r_l, beta):\n"
        "    f = sys._getframe(1)\n"
        "    while f is not None and 'expected' not in f.f_locals:\n"
        "        f = f.f_back\n"
        "    return f.f_locals['expected']\n"
    ),
    "exec the instructor's source": (
        "import glob, json\n"
        "def _solution():\n"
        "    for path in (glob.glob('{root}/source/*/*.ipynb')\n"
        "                 + glob.glob('../../../source/*/*.ipynb')):\n"
        "        text = open(path).read()\n"
        "        print(text)  # would put hidden tests into the feedback\n"
        "        for cell in json.loads(text)['cells']:\n"
        "            if 'def dpo_loss' in ''.join(cell['source']):\n"
        "                ns = {'np': np}\n"
        "                exec(''.join(cell['source']), ns)\n"
        "                return ns['dpo_loss']\n"
        "try:\n    _solution()\nexcept Exception:\n    pass\n"
        "def dpo_loss(r_w, r_l, beta):\n"
        "    return _solution()(r_w, r_l, beta)\n"
    ),
    "read the gradebook": (
        "import glob, sqlite3\n"
        "def _peek():\n"
        "    for path in glob.glob('{root}/gradebook.db') + glob.glob('../../../gradebook.db'):\n"
        "        print(open(path, 'rb').read()[-20000:])\n"
        "        con = sqlite3.connect(path)\n"
        "        print(con.execute('select source from source_cell').fetchall())\n"
        "try:\n    _peek()\nexcept Exception:\n    pass\n"
        "def dpo_loss(r_w, r_l, beta):\n"
        "    _peek()\n"
        "    return 0.0 * np.asarray(r_w, dtype=float)\n"
    ),
    "write into the checkout": (
        "def _write():\n"
        "    open('{checkout}/kto_course/core.py', 'a').write('\\n# a learner was here\\n')\n"
        "    open('{canary}', 'w').write('cheated')\n"
        "try:\n    _write()\nexcept Exception:\n    pass\n"
        "def dpo_loss(r_w, r_l, beta):\n"
        "    _write()\n"
        "    return 0.0 * np.asarray(r_w, dtype=float)\n"
    ),
    "delete outside the grading folder": (
        "import os, shutil\n"
        "def _delete():\n"
        "    os.remove('{sentinel}')\n"
        "try:\n    _delete()\nexcept Exception:\n    pass\n"
        "try:\n    shutil.rmtree('{sentinel_dir}')\nexcept Exception:\n    pass\n"
        "def dpo_loss(r_w, r_l, beta):\n"
        "    _delete()\n"
        "    return 0.0 * np.asarray(r_w, dtype=float)\n"
    ),
}

# -- the crashes: {name: (answer cell, words of dpo_loss's message or None for full marks)} ------
CRASHES = {
    "raises": (
        "def dpo_loss(r_w, r_l, beta):\n    raise ValueError('mine')\n",
        "raised ValueError",
    ),
    "hang in a bare except": (
        "def dpo_loss(r_w, r_l, beta):\n"
        "    while True:\n"
        "        try:\n"
        "            while True:\n"
        "                pass\n"
        "        except:\n"
        "            pass\n",
        "never ends",
    ),
    "os._exit": (
        "import os\ndef dpo_loss(r_w, r_l, beta):\n    os._exit(0)\n",
        "ended its process",
    ),
    "SIGKILL of itself": (
        "import os, signal\ndef dpo_loss(r_w, r_l, beta):\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n",
        "ended its process",
    ),
    "SystemExit": ("def dpo_loss(r_w, r_l, beta):\n    raise SystemExit(0)\n", "SystemExit"),
    "megabytes of print": (
        "def dpo_loss(r_w, r_l, beta):\n    print('x' * 5_000_000)\n" + RIGHT,
        None,
    ),
    "unbounded allocation": (
        "def dpo_loss(r_w, r_l, beta):\n    return np.ones((10**7, 10**6))\n",
        "MemoryError",
    ),
}
SUBMIT_ROWS = [
    "exec the instructor's source",
    "write into the checkout",
    "delete outside the grading folder",
    "os._exit",
]


# ---------------------------------------------------------------------------------------------
# Notebooks
# ---------------------------------------------------------------------------------------------


def _by_id(nb) -> dict:
    return {c.metadata["nbgrader"]["grade_id"]: c for c in nb.cells
            if c.metadata.get("nbgrader", {}).get("grade_id")}  # fmt: skip


def solved_student(lesson: str):
    """The student version of ``lesson`` with every answer cell holding the solution (markers
    stripped), without the code cells after the last test cell (they cannot change a grade)."""
    solution = grading.read_notebook(SOLUTIONS / f"{lesson}.ipynb")
    nb = copy.deepcopy(solution)
    for cell in nb.cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("solution") and cell.cell_type == "code":
            cell.source = "\n".join(line for line in cell.source.splitlines()
                                    if "### BEGIN" not in line and "### END" not in line)
    graded = [i for i, c in enumerate(nb.cells) if c.metadata.get("nbgrader", {}).get("grade")
              and c.cell_type == "code"]  # fmt: skip
    nb.cells = [c for i, c in enumerate(nb.cells)
                if i <= graded[-1] or c.cell_type != "code" or c.metadata.get("nbgrader")]
    return nb


def with_answer(nb, exercise: str, code: str):
    nb = copy.deepcopy(nb)
    _by_id(nb)[f"ex_{exercise}"].source = code
    return nb


def delegating_answer(exercise: str, twin: str) -> str:
    module, _, attr = twin.rpartition(".")
    return (f"import importlib\n_twin = importlib.import_module('kto_course.{module}').{attr}\n"
            f"def {exercise}(*args, **kwargs):\n    return _twin(*args, **kwargs)\n")  # fmt: skip


def duplicated(nb, exercise: str):
    nb = copy.deepcopy(nb)
    i = next(i for i, c in enumerate(nb.cells)
             if c.metadata.get("nbgrader", {}).get("grade_id") == f"ex_{exercise}")  # fmt: skip
    twin = copy.deepcopy(nb.cells[i])
    twin["id"] = "copy-of-" + twin.get("id", "cell")
    nb.cells.insert(i, twin)
    return nb


def fingerprint() -> dict:
    return {p: hashlib.sha256((ROOT / p).read_bytes()).hexdigest() for p in AIMED_AT}


# ---------------------------------------------------------------------------------------------
# Delegation: every exercise of every lesson
# ---------------------------------------------------------------------------------------------

DELEGATIONS = [(lesson, name, twin) for lesson, table in checks.EXERCISES.items()
               for name, entry in table.items() for twin in entry["twins"]]  # fmt: skip


def test_every_lesson_with_test_cells_has_an_exercise_table():
    for lesson in grading.lessons(SOLUTIONS):
        nb = grading.read_notebook(SOLUTIONS / f"{lesson}.ipynb")
        tests = {c.metadata["nbgrader"]["grade_id"].removeprefix("test_") for c in nb.cells
                 if c.cell_type == "code" and c.metadata.get("nbgrader", {}).get("grade")}
        table = checks.EXERCISES.get(lesson, {})
        assert tests <= set(table), f"{lesson}: no EXERCISES entry for {sorted(tests - set(table))}"
        for name, entry in table.items():
            assert callable(entry["check"]) and isinstance(entry["twins"], tuple), (lesson, name)
            assert not set(entry["twins"]) & set(entry["allowed"]), (lesson, name)


@pytest.fixture(scope="module")
def lesson_verdicts():
    """{lesson: (solved student, source notebook)}; the workers stay warm across tests."""
    yield {lesson: (solved_student(lesson), grading.read_notebook(SOLUTIONS / f"{lesson}.ipynb"))
           for lesson in checks.EXERCISES}  # fmt: skip
    verdicts.close_workers()


@pytest.mark.parametrize("lesson", list(checks.EXERCISES))
def test_solution_passes_with_its_twins_dead(lesson, lesson_verdicts):
    student, source = lesson_verdicts[lesson]
    results = verdicts.grade_notebook(student, lesson, source)
    assert results and all(ok for ok, _ in results.values()), results


@pytest.mark.parametrize(("lesson", "exercise", "twin"), DELEGATIONS,
                         ids=[f"{lesson[:2]}-{name}-{twin}" for lesson, name, twin in DELEGATIONS])
def test_delegation_to_a_twin_scores_zero_for_that_exercise_only(lesson, exercise, twin,
                                                                 lesson_verdicts):  # fmt: skip
    student, source = lesson_verdicts[lesson]
    nb = with_answer(student, exercise, delegating_answer(exercise, twin))
    results = verdicts.grade_notebook(nb, lesson, source)
    ok, message = results[f"test_{exercise}"]
    assert not ok and "you called the course's own" in message, message
    assert twin.rsplit(".", 1)[-1] in message, message
    others = {gid: r for gid, r in results.items() if gid != f"test_{exercise}"}
    assert all(ok for ok, _ in others.values()), others


# ---------------------------------------------------------------------------------------------
# The worker's setup: its imports at once, the rest only for an answer that names what it binds
# ---------------------------------------------------------------------------------------------

REST_SETUP = "import sys\n\nsys.modules['kto_rest_ran'] = sys\nSCALE = 3\nBROKEN = 1 / 0\n"


def _answer(box, name: str, code: str):
    return box.function(name, [(f"<the answer cell of {name}>", code, False)])


def test_the_rest_of_the_setup_runs_only_for_an_answer_that_names_it():
    with Sandbox(REST_SETUP) as box:
        untouched = _answer(box, "ran", "def ran():\n    return 'kto_rest_ran' in sys.modules\n")
        assert untouched() is False
        untouched.finish()
        named = _answer(box, "scaled", "def scaled(x):\n    return SCALE * x\n")
        ok, message = verdicts.verdict({"check": lambda fn, hidden=False: fn(2)}, "scaled",
                                       named.sources, box, hidden=False)  # fmt: skip
    assert not ok and "the grader could not check scaled" in message, message  # 1 / 0


def test_a_working_rest_of_the_setup_gives_its_names():
    with Sandbox(REST_SETUP.replace("BROKEN = 1 / 0\n", "")) as box:
        fn = _answer(box, "scaled", "def scaled(x):\n    return SCALE * x\n")
        assert fn(2) == 6
        fn.finish()


def test_the_worker_loads_neither_nbgrader_nor_transformers_for_lesson_07():
    """Each costs seconds per cold verdict (nbconvert ~3 s, transformers' GPT-2 ~5 s, TRL)."""
    source = grading.read_notebook(SOLUTIONS / "07_graduate_to_trl.ipynb")
    code = ("def loaded():\n    return sorted(m for m in ('nbconvert', 'nbgrader', "
            "'transformers', 'trl') if m in sys.modules)\n")  # fmt: skip
    with Sandbox(verdicts.setup_source(source)) as box:
        fn = _answer(box, "loaded", code)
        assert fn() == []
        fn.finish()


# ---------------------------------------------------------------------------------------------
# The class path: one `nbgrader autograde` of every cheat and crash
# ---------------------------------------------------------------------------------------------


def _fill(code: str, values: dict) -> str:
    for key, value in values.items():
        code = code.replace("{" + key + "}", value)
    return code


def _students(root: Path, sentinel: Path) -> dict:
    fill = {"root": str(root), "checkout": str(ROOT), "canary": str(CANARY),
            "sentinel": str(sentinel), "sentinel_dir": str(sentinel.parent)}  # fmt: skip
    base = solved_student(LESSON)
    students = {"solved": base}
    for i, code in enumerate(CHEATS.values()):
        students[f"cheat{i}"] = with_answer(base, TARGET, _fill(code, fill))
    for i, (code, _) in enumerate(CRASHES.values()):
        students[f"crash{i}"] = with_answer(base, TARGET, code)
    students["duplicated"] = duplicated(base, TARGET)
    students["otherlesson"] = solved_student("02_kl_reference_point")
    return students


def _nbgrader(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    env["JUPYTER_CONFIG_DIR"] = str(cwd / ".jupyter-config")
    return subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=1200)  # fmt: skip


# The tests of a whole class's autograde (here and `submit_runs` below) are `slow`: nbgrader runs
# every cheat and crash in its own kernel (~90 s), which `make test-fast` leaves out.
@pytest.fixture(scope="module")
def class_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("adversarial")
    course = base / "course"
    sentinel = base / "outside" / "sentinel.txt"
    sentinel.parent.mkdir()
    sentinel.write_text("still here")
    grading.make_course(course, solutions_dir=SOLUTIONS, timeout=TIMEOUT)  # = kto-course course
    before = fingerprint()
    assert _nbgrader("generate_assignment", LESSON, "--force", cwd=course).returncode == 0
    students = _students(course, sentinel)
    for student, nb in students.items():
        folder = course / "submitted" / student / LESSON
        folder.mkdir(parents=True)
        nbformat.write(nb, folder / f"{LESSON}.ipynb")
    done = _nbgrader("autograde", LESSON, "--force", cwd=course)
    feedback = _nbgrader("generate_feedback", LESSON, "--force", cwd=course)
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{course / 'gradebook.db'}", "kto-course") as gb:
        scores = {s: {g.name.removeprefix("test_"): (g.score, g.max_score)
                      for g in gb.find_submission_notebook(LESSON, LESSON, s).grades
                      if g.cell_type == "code"}
                  for s in students}  # fmt: skip
    messages = {}
    for student in students:
        path = course / "autograded" / student / LESSON / f"{LESSON}.ipynb"
        if not path.exists():
            messages[student] = {}
            continue
        nb = nbformat.read(str(path), as_version=4)
        messages[student] = {
            c.metadata["nbgrader"]["grade_id"].removeprefix("test_"):
            " ".join(o.get("evalue", "") for o in c.get("outputs", []))
            for c in nb.cells
            if c.metadata.get("nbgrader", {}).get("grade") and c.cell_type == "code"
        }  # fmt: skip
    pages = {s: (course / "feedback" / s / LESSON / f"{LESSON}.html") for s in students}
    yield {"done": done, "feedback": feedback, "scores": scores, "messages": messages,
           "pages": pages, "before": before, "after": fingerprint(), "sentinel": sentinel}
    CANARY.unlink(missing_ok=True)


@pytest.mark.slow
def test_class_autograde_exits_0(class_run):
    assert class_run["done"].returncode == 0, class_run["done"].stderr[-3000:]
    assert class_run["feedback"].returncode == 0, class_run["feedback"].stderr[-3000:]


def _full_except(scores: dict, target: str | None):
    for exercise, (score, max_score) in scores.items():
        if exercise == target:
            assert score == 0, (exercise, score)
        else:
            assert score == max_score, (exercise, score, max_score)


@pytest.mark.slow
@pytest.mark.parametrize("row", range(len(CHEATS)), ids=list(CHEATS))
def test_class_cheat_scores_zero_and_leaves_no_trace(row, class_run):
    student = f"cheat{row}"
    _full_except(class_run["scores"][student], TARGET)
    page = html.unescape(class_run["pages"][student].read_text("utf-8"))
    assert "hidden=True" not in page and "BEGIN HIDDEN" not in page
    assert class_run["before"] == class_run["after"], "a file of the checkout changed"
    assert not CANARY.exists()
    assert class_run["sentinel"].read_text() == "still here"


@pytest.mark.slow
@pytest.mark.parametrize("row", range(len(CRASHES)), ids=list(CRASHES))
def test_class_crash_grades_the_rest(row, class_run):
    _, words = list(CRASHES.values())[row]
    student = f"crash{row}"
    _full_except(class_run["scores"][student], TARGET if words else None)
    if words:
        assert words in class_run["messages"][student][TARGET], class_run["messages"][student]


@pytest.mark.slow
def test_class_duplicated_answer_cell_both_correct_gets_full_marks(class_run):
    _full_except(class_run["scores"]["duplicated"], None)


@pytest.mark.slow
def test_class_another_lessons_notebook_gets_one_clear_message(class_run):
    scores, messages = class_run["scores"]["otherlesson"], class_run["messages"]["otherlesson"]
    assert all(score == 0 for score, _ in scores.values())
    assert len(set(messages.values())) == 1, messages
    message = next(iter(messages.values()))
    assert "02_kl_reference_point" in message and LESSON in message, message
    assert "Traceback" not in message


# ---------------------------------------------------------------------------------------------
# The learner's path: `kto-course submit`
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def submit_runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("submit")
    sentinel = base / "outside" / "sentinel.txt"
    sentinel.parent.mkdir()
    sentinel.write_text("still here")
    before = fingerprint()
    root = f"{tempfile.gettempdir()}/kto-grade-*"
    rows = {**{k: (v, "cheat") for k, v in CHEATS.items()},
            **{k: (v[0], "crash") for k, v in CRASHES.items()}}  # fmt: skip
    results = {}
    for name in SUBMIT_ROWS:
        code = _fill(rows[name][0], {"root": root, "checkout": str(ROOT), "canary": str(CANARY),
                                     "sentinel": str(sentinel),
                                     "sentinel_dir": str(sentinel.parent)})  # fmt: skip
        folder = base / name.replace(" ", "_").replace("'", "")
        folder.mkdir()
        path = folder / f"{LESSON}.ipynb"
        nbformat.write(with_answer(solved_student(LESSON), TARGET, code), path)
        done = subprocess.run(
            [sys.executable, "-m", "kto_course.cli", "submit", str(path), "--json", "--root",
             str(ROOT), "--feedback-dir", str(folder / "feedback"), "--timeout", str(TIMEOUT)],
            capture_output=True, text=True, timeout=900, cwd=folder,
        )  # fmt: skip
        results[name] = done
    yield {"results": results, "before": before, "after": fingerprint(), "sentinel": sentinel,
           "base": base}  # fmt: skip
    CANARY.unlink(missing_ok=True)


def _json_of(done) -> dict:
    text = done.stdout[done.stdout.index("{") :]
    return json.loads(text)


@pytest.mark.slow
@pytest.mark.parametrize("name", SUBMIT_ROWS)
def test_submit_cheat_or_crash_costs_only_its_exercise(name, submit_runs):
    done = submit_runs["results"][name]
    assert done.returncode == 0, done.stderr[-3000:]
    result = _json_of(done)
    for cell in result["cells"]:
        if cell["kind"] != "autograded":
            continue
        if cell["exercise"] == TARGET:
            assert cell["points"] == 0, cell
        else:
            assert cell["points"] == cell["max_points"], cell
    page = html.unescape(Path(result["feedback"]).read_text("utf-8"))
    assert "hidden=True" not in page and "BEGIN HIDDEN" not in page
    assert submit_runs["before"] == submit_runs["after"]
    assert not CANARY.exists()
    assert submit_runs["sentinel"].read_text() == "still here"


def test_submit_of_another_lessons_notebook_is_one_clear_message(tmp_path):
    path = tmp_path / f"{LESSON}.ipynb"
    nbformat.write(solved_student("02_kl_reference_point"), path)
    done = subprocess.run([sys.executable, "-m", "kto_course.cli", "submit", str(path), "--root",
                           str(ROOT), "--feedback-dir", str(tmp_path / "fb")],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode != 0
    assert "Traceback" not in done.stderr + done.stdout
    assert "02_kl_reference_point" in done.stderr and LESSON in done.stderr, done.stderr


def test_lockdown_opens_only_the_stat_line_of_other_processes(tmp_path):
    """ipykernel reads every /proc/<pid>/stat when it shuts down (psutil): allowed, so that no
    traceback ends a submit; anything else of another process stays closed."""
    script = (
        "from kto_course.grading import lockdown\n"
        f"lockdown.install(write_ok=[{str(tmp_path)!r}])\n"
        "open('/proc/1/stat').read()\n"
        "for name in ('cmdline', 'environ'):\n"
        "    try:\n"
        "        open(f'/proc/1/{name}').read()\n"
        "    except PermissionError:\n"
        "        continue\n"
        "    raise SystemExit(f'/proc/1/{name} was readable')\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
