"""Grading kernels forked from a warm process (kto_course/grading/warm_kernels.py).

A forked kernel must be a kernel like a fresh one: the same folder, paths, environment, backend,
progress bars, widget comm targets and one-line CheckFailed; interrupted by a timeout, dead when
its code ends the process, killed when jupyter_client kills its client. Only the grading
process's clients may ask for one. Without a zygote, or when a preloaded module looked for the
IPython shell while it was imported, kernels start the usual way.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import nbformat
import pytest
from conftest import SOLUTIONS
from jupyter_core.utils import run_sync
from nbclient import NotebookClient
from nbclient.exceptions import DeadKernelError
from nbformat.v4 import new_code_cell, new_notebook

from kto_course.grading import verdicts, warm_kernels

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("warm_kernels")]

# Lesson 06's setup: the heaviest (torch, transformers, matplotlib), and transformers imports
# tqdm.auto, which looks for the shell (warm_kernels.ASKERS).
SETUP = verdicts.setup_source(nbformat.read(SOLUTIONS / "06_tiny_gpt2_kto.ipynb", as_version=4))

PROBES = [
    "import os, sys\nprint(os.getcwd(), sys.path[:2], os.path.basename(sys.argv[0]))",
    "print(os.environ.get('KTO_PROBE'), os.environ.get('JPY_PARENT_PID'))",
    "import matplotlib\nprint(matplotlib.get_backend())",
    "import tqdm.auto\nprint(tqdm.auto.tqdm.__mro__[1].__module__)",
    "import ipywidgets\nprint(sorted(get_ipython().kernel.comm_manager.targets))",
    "from kto_course.checks.base import CheckFailed\nraise CheckFailed('short')",
    "import numpy, torch\nprint(numpy.__version__, torch.get_num_threads())",
    "import matplotlib.pyplot as plt\nplt.plot([0, 1]);",  # shown by matplotlib_inline's hook
    "ipywidgets.IntSlider()",
]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] not in ("Z", "X")  # zombies are dead
    except FileNotFoundError:
        return False


def _wait_dead(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _notebook(*sources):
    return new_notebook(cells=[new_code_cell(s) for s in sources])


def _run(nb, folder, timeout=60, **kwargs):
    client = NotebookClient(nb, kernel_manager_class=warm_kernels.WarmKernelManager,
                            timeout=timeout, allow_errors=True,
                            resources={"metadata": {"path": str(folder)}}, **kwargs)  # fmt: skip
    client.execute()
    return nb


def _outputs(nb) -> list:
    """Per cell: its printed text (one stream, however the kernel chunked it), its error."""
    shown = []
    for cell in nb.cells:
        text = "".join(o.text for o in cell.outputs if o.output_type == "stream").strip()
        if text:
            shown.append(text)
        shown += [(o.ename, o.evalue, len(o.traceback))
                  for o in cell.outputs if o.output_type == "error"]  # fmt: skip
        shown += [sorted(o.data) for o in cell.outputs
                  if o.output_type in ("display_data", "execute_result")]  # fmt: skip
    return shown


@pytest.fixture(scope="module")
def zygote():
    with warm_kernels.zygote(SETUP) as zygote:
        assert warm_kernels.current_address(), "the zygote did not start listening"
        yield zygote.proc


def test_the_preload_is_the_setups_third_party_modules():
    names = warm_kernels.preload_modules(SETUP)
    for expected in ("torch", "transformers", "matplotlib.figure", "numpy"):
        assert expected in names, names
    assert not [n for n in names if n.startswith(warm_kernels.SHELL_AWARE)], names


def test_a_forked_kernel_is_a_kernel_like_a_fresh_one(zygote, tmp_path, monkeypatch):
    monkeypatch.setenv("KTO_PROBE", "from the grading process")
    parent = "import os\nprint(os.getppid())"
    warm = _outputs(_run(_notebook(*PROBES, parent), tmp_path))
    monkeypatch.setattr(warm_kernels, "current_address", lambda: None)
    cold = _outputs(_run(_notebook(*PROBES, parent), tmp_path))
    assert warm[:-1] == cold[:-1]
    assert warm[0].startswith(str(tmp_path)) and "ipykernel_launcher.py" in warm[0]
    assert warm[1] == f"from the grading process {os.getpid()}"
    assert "'jupyter.widget'" in warm[4]
    assert ("CheckFailed", "short", 1) in warm  # the one-line message, no checker frames
    assert ["image/png", "text/plain"] in warm  # the inline backend showed the figure
    assert any("application/vnd.jupyter.widget-view+json" in o for o in warm if type(o) is list)
    assert int(warm[-1]) == zygote.pid  # forked by the zygote...
    assert int(cold[-1]) == os.getpid()  # ... where a fresh kernel is the launcher's child


# A cell that builds its first optimizer and prints the torch._dynamo modules that this imported.
FIRST_OPTIMIZER = """import sys
before = set(sys.modules)
import torch
torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
print(len([m for m in set(sys.modules) - before if m.startswith("torch._dynamo")]))"""


def _setup_with_torch_alone() -> str:
    """A lesson's setup that imports torch but not transformers (which imports torch._dynamo
    itself, so a zygote of its lesson would have it either way)."""
    for path in sorted(SOLUTIONS.glob("*.ipynb")):
        setup = verdicts.setup_source(nbformat.read(path, as_version=4))
        names = warm_kernels.preload_modules(setup)
        if "torch" in names and not any(n.startswith("transformers") for n in names):
            return setup
    pytest.fail("no lesson's setup imports torch without transformers")


def test_a_zygote_has_built_the_first_optimizer_for_its_kernels():
    """torch imports its compiler when the first optimizer is built (1.3-1.6 s): a zygote
    whose lesson imports torch has done it (``worker.LAZY_IMPORTS``), once for all its kernels."""
    setup = _setup_with_torch_alone()
    script = ("import sys\nfrom kto_course.grading import warm_kernels as w\n"
              "w.preload(sys.stdin.read())\n" + FIRST_OPTIMIZER)  # fmt: skip
    out = subprocess.run([sys.executable, "-c", script], input=setup, capture_output=True,
                         text=True, timeout=300, check=True)  # fmt: skip
    assert out.stdout.split() == ["0"], out.stderr[-2000:]
    fresh = subprocess.run([sys.executable, "-c", FIRST_OPTIMIZER], capture_output=True,
                           text=True, timeout=300, check=True)  # fmt: skip
    assert int(fresh.stdout) > 0  # without the zygote's preload, the optimizer imports it


@pytest.mark.parametrize("imported, expected", [("torch", True), ("numpy", False)])
def test_a_worker_zygote_imports_what_its_modules_import_when_first_used(imported, expected):
    """torch._dynamo where torch is imported, and nothing (torch neither) where it is not."""
    probe = (f"import sys, {imported}\n"
             "from kto_course.grading.worker import preload_lazy_imports\n"
             "assert 'torch._dynamo' not in sys.modules\n"
             "preload_lazy_imports()\n"
             "print('torch._dynamo' in sys.modules, 'torch' in sys.modules)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.stdout.split() == [str(expected)] * 2, done.stderr


def test_two_forked_kernels_draw_different_random_numbers(zygote, tmp_path):
    draws = [
        _outputs(_run(_notebook("import numpy, random\nprint(numpy.random.randint(2**30),"
                                " random.random())"), tmp_path))[0]
        for _ in range(2)
    ]  # fmt: skip
    assert draws[0] != draws[1]


def test_a_timeout_interrupts_a_forked_kernel(zygote, tmp_path):
    nb = _notebook("import time\nwhile True:\n    time.sleep(0.01)", "print('after')")
    shown = _outputs(_run(nb, tmp_path, timeout=3, interrupt_on_timeout=True))
    assert shown[0][0] == "KeyboardInterrupt", shown  # the client passed SIGINT on
    assert shown[-1] == "after"


def test_a_forked_kernel_that_ends_its_process_is_dead(zygote, tmp_path):
    with pytest.raises(DeadKernelError):
        _run(_notebook("import os\nos._exit(3)", "print('never')"), tmp_path)
    assert _outputs(_run(_notebook("print('next')"), tmp_path)) == ["next"]  # still serving


def test_killing_the_client_kills_its_kernel(zygote, tmp_path):
    nb = _notebook("import os\nprint(os.getpid())")
    client = NotebookClient(nb, kernel_manager_class=warm_kernels.WarmKernelManager, timeout=60,
                            resources={"metadata": {"path": str(tmp_path)}})  # fmt: skip
    with client.setup_kernel():
        client.execute_cell(nb.cells[0], 0)
        pid = int(nb.cells[0].outputs[0].text)
        assert pid != client.km.provisioner.pid  # the kernel is not the client
        run_sync(client.km.shutdown_kernel)(now=True)  # SIGKILL to the client's group
        assert _wait_dead(pid), f"kernel {pid} outlived its killed client"


def test_only_the_grading_processs_clients_get_a_kernel(zygote):
    # This test's process is the zygote's parent, not a process that its parent started.
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(warm_kernels.current_address())
        conn.sendall(json.dumps({"argv": [], "cwd": "/", "env": {}}).encode() + b"\n")
        reply = json.loads(conn.makefile("rb").readline())
    assert "refused" in reply


def test_without_a_zygote_the_client_is_the_usual_kernel(tmp_path, monkeypatch):
    monkeypatch.setattr(warm_kernels, "current_address", lambda: str(tmp_path / "nobody"))
    shown = _outputs(_run(_notebook("import os\nprint(os.getppid())"), tmp_path))
    assert int(shown[0]) == os.getpid()  # the client exec'd ipykernel_launcher itself


def test_a_module_that_asks_for_the_shell_makes_kernels_start_cold(tmp_path, monkeypatch, capfd):
    (tmp_path / "asks_for_the_shell.py").write_text(
        "from IPython import get_ipython\nINSIDE = get_ipython() is not None\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    with warm_kernels.zygote("import asks_for_the_shell"):
        shown = _outputs(_run(_notebook(
            "import os, asks_for_the_shell\nprint(asks_for_the_shell.INSIDE, os.getppid())"
        ), tmp_path))  # fmt: skip
    assert shown == [f"True {os.getpid()}"]  # imported in the kernel itself, not the zygote
    assert "asks_for_the_shell looks for the IPython shell" in capfd.readouterr().err


def test_the_zygote_ends_with_its_block_and_takes_its_kernels(tmp_path):
    with warm_kernels.zygote("import json") as zygote:
        pass
    assert zygote.proc.poll() is not None and not warm_kernels.current_address()
    # And a zygote whose grading process died ends too: its stdin closes.
    script = (
        "import sys, time\nfrom kto_course.grading import warm_kernels\n"
        "print(warm_kernels.zygote_for('import json').proc.pid, flush=True)\n"
        "import os\nos._exit(0)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, check=True)  # fmt: skip
    pid = int(out.stdout.split()[0])
    assert _wait_dead(pid), f"the zygote {pid} outlived its grading process"


def test_no_lessons_kernels_start_cold():
    """Every lesson's modules, imported as a zygote imports them: none asks for the shell but
    the known askers. (A module asks when it is first imported, so the union of the lessons'
    setups, in one process, covers each lesson's.)"""
    setups = [verdicts.setup_source(nbformat.read(path, as_version=4))
              for path in sorted(SOLUTIONS.glob("*.ipynb"))]  # fmt: skip
    script = (
        "import json, sys\nfrom kto_course.grading import warm_kernels as w\n"
        "asked = w.preload(sys.stdin.read())\n"
        "print(json.dumps([a for a in asked if a not in w.ASKERS]))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], input="\n".join(setups),
                         capture_output=True, text=True, timeout=300, check=True)  # fmt: skip
    assert json.loads(out.stdout.splitlines()[-1]) == [], out.stderr[-2000:]


def test_where_forking_is_not_supported_kernels_start_the_usual_way(tmp_path, monkeypatch):
    monkeypatch.setattr(warm_kernels, "SUPPORTED", False)
    with warm_kernels.zygote("import json") as zygote:
        assert zygote is None and warm_kernels.current_address() is None
        shown = _outputs(_run(_notebook("import os\nprint(os.getppid())"), tmp_path))
    assert int(shown[0]) == os.getpid()
