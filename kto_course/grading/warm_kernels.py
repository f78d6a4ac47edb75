"""Grading kernels forked from a warm process: a lesson's imports are paid once per grading run.

Every graded notebook still runs in a kernel process of its own, locked down as before
(``lockdown.lock_kernel`` runs in it, from nbgrader's ``--IPKernelApp.exec_lines``); only its
start differs. Starting a kernel and importing torch and matplotlib took 3-4 s of the 6-8 s a
submission cost (lesson 04, measured); forked, a kernel is ready in a fraction of a second.

- ``zygote_for(setup)``, in the grading process: starts one process (``main``) that imports
  ipykernel and the third-party modules the lesson's setup cell needs (and what those import
  only when first used: ``worker.LAZY_IMPORTS``), then forks one kernel per request.
  ``SafeExecute`` asks for the lesson's before each notebook (so a class's ``nbgrader
  autograde`` forks its kernels too); ``grade`` starts it early and ends it.
- ``WarmKernelManager``, the kernel manager of ``verdicts.SafeExecute``: while a zygote is up,
  jupyter_client launches ``warm_client.py`` instead of ``python -m ipykernel_launcher``. The
  client asks the zygote for a kernel with its own arguments, folder and environment, passes
  on the signals jupyter_client sends it (interrupt, terminate) and exits with the kernel's
  status, so nbclient sees one kernel process as usual. Without a zygote, or when the zygote
  cannot be reached, the client becomes the usual kernel (``exec``).

What looks at the IPython shell when it is imported is not imported before the fork
(``SHELL_AWARE``: the course's own modules install the one-line ``CheckFailed`` there,
matplotlib_inline its figure display); each kernel imports those itself. The zygote watches
``get_ipython`` while it imports: the known askers (``ASKERS``) are made right in each kernel,
any other makes the run's kernels start the usual way. Only the grading process's own client
processes may ask for a kernel (checked by the peer's parent process): a kernel, or learner
code in it, cannot.
"""

from __future__ import annotations

import ast
import atexit
import contextlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager

from kto_course.grading.worker import preload_lazy_imports

CLIENT = Path(__file__).with_name("warm_client.py")
_PACKAGE = Path(__file__).resolve().parents[1]
# Imported by each kernel itself, never before the fork: at import they look at the IPython
# shell, which exists only in the kernel (see the module docstring).
SHELL_AWARE = ("kto_course", "ipywidgets", "ipympl", "matplotlib_inline", "matplotlib.pyplot",
               "tqdm.auto", "tqdm.autonotebook")  # fmt: skip
# What every kernel imports before its first cell (ipykernel_launcher's own imports).
KERNEL_MODULES = ("ipykernel.kernelapp", "ipykernel.ipkernel", "IPython.display")
# Modules that look for the shell when imported but that the zygote may import anyway (through
# transformers), and what a kernel forked after that does to be as if it had imported them:
# - tqdm.autonotebook picks the notebook bar because ipykernel.zmqshell is imported (it is,
#   here too); it asks the shell only for its class name (to spot Qt and Spyder consoles);
# - ipywidgets registers its comm targets with the kernel's comm manager: the kernel does it.
# Any other module that asks makes every kernel of the run start the usual way.
ASKERS = {"tqdm.autonotebook": None, "ipywidgets": "register_comm_target"}
_INLINE = "module://matplotlib_inline.backend_inline"  # the backend ipykernel selects at start


# -- the grading process's side ----------------------------------------------------------------


class Zygote:
    """One zygote process, for the kernels of the lesson whose setup cell is ``setup`` (the
    SOURCE notebook's first code cell: the course's code, never a learner's)."""

    def __init__(self, setup: str):
        self.setup = setup
        self._folder = tempfile.TemporaryDirectory(prefix="kto-kernels-")
        self.address = os.path.join(self._folder.name, "zygote")
        # Its stdin stays open while this process wants it: at EOF it stops its kernels and ends.
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kto_course.grading.warm_kernels", self.address],
            stdin=subprocess.PIPE,
            env={**os.environ, "MPLBACKEND": os.environ.get("MPLBACKEND", _INLINE)},
        )
        self.proc.stdin.write(json.dumps({"setup": setup}).encode() + b"\n")
        self.proc.stdin.flush()
        # It listens before it imports: a client that connects early waits in the backlog.
        deadline = time.monotonic() + 30
        while not os.path.exists(self.address) and self.proc.poll() is None:
            if time.monotonic() > deadline:
                break
            time.sleep(0.01)

    def serving(self) -> bool:
        return self.proc.poll() is None and os.path.exists(self.address)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._folder.cleanup()


_CURRENT: list[Zygote] = []  # the zygote serving this process's kernels: one at a time


def _supported() -> bool:
    """fork, pidfds (Linux 5.3), SO_PEERCRED and /proc: elsewhere kernels start the usual way."""
    if not sys.platform.startswith("linux") or not hasattr(os, "pidfd_open"):
        return False
    try:
        os.close(os.pidfd_open(os.getpid()))
    except OSError:  # an older kernel: ENOSYS
        return False
    return True


SUPPORTED = _supported()


def zygote_for(setup: str) -> Zygote | None:
    """The zygote of this setup, started now unless it serves already; another lesson's ends
    (a class is graded one lesson after another). None where it is not ``SUPPORTED``."""
    if not SUPPORTED:
        return None
    if _CURRENT and _CURRENT[0].setup == setup and _CURRENT[0].serving():
        return _CURRENT[0]
    close_zygote()
    _CURRENT.append(Zygote(setup))
    return _CURRENT[0]


@atexit.register
def close_zygote() -> None:
    while _CURRENT:
        _CURRENT.pop().close()


def current_address() -> str | None:
    """Where the serving zygote listens, if one serves."""
    return _CURRENT[0].address if _CURRENT and _CURRENT[0].serving() else None


@contextlib.contextmanager
def zygote(setup: str):
    """A zygote for ``setup`` that serves this block (started early: it imports while the
    caller prepares), then ends with its kernels."""
    try:
        yield zygote_for(setup)
    finally:
        close_zygote()


class WarmKernelManager(AsyncKernelManager):
    """jupyter_client's kernel manager, launching a forked kernel while a ``zygote`` serves."""

    def format_kernel_cmd(self, extra_arguments=None) -> list[str]:
        cmd = super().format_kernel_cmd(extra_arguments)
        address = current_address()
        same_python = os.path.realpath(cmd[0]) == os.path.realpath(sys.executable)
        if address and same_python and cmd[1:3] == ["-m", "ipykernel_launcher"]:
            # -I -S: the client needs only the standard library (it starts in 50-90 ms here).
            return [sys.executable, "-I", "-S", str(CLIENT), address, "--", *cmd]
        return cmd


# -- the zygote --------------------------------------------------------------------------------


def _shell_aware(name: str) -> bool:
    return any(name == s or name.startswith(s + ".") for s in SHELL_AWARE)


def _course_file(module: str) -> Path | None:
    parts = module.split(".")
    if parts[0] != "kto_course":
        return None
    base = _PACKAGE.parent.joinpath(*parts)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _top_level_imports(tree, package: str):
    """The modules a module imports when it is imported (not inside functions or classes)."""
    body = list(tree.body)
    while body:
        node = body.pop(0)
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # from .base import x, inside the course's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield module
            yield from (f"{module}.{alias.name}" for alias in node.names)  # may be submodules
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                body.extend(getattr(node, field, []))
        elif isinstance(node, ast.ExceptHandler):
            body.extend(node.body)


def preload_modules(setup: str) -> list[str]:
    """The third-party modules the setup cell imports, directly or through the course's modules
    at their top level (a static walk: nothing of the course is imported), in order."""
    found, seen, todo = [], set(), [(setup, "")]
    while todo:
        source, package = todo.pop(0)
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for name in _top_level_imports(tree, package):
            if not name or name in seen:
                continue
            seen.add(name)
            path = _course_file(name)
            if path is not None:
                is_package = path.name == "__init__.py"
                todo.append((path.read_text(), name if is_package else name.rpartition(".")[0]))
            elif not _shell_aware(name) and not name.startswith("kto_course"):
                found.append(name)
    return found


def preload(setup: str) -> list[str]:
    """Import what every kernel imports, then the setup's third-party modules. Returns the
    modules that looked for the IPython shell (``get_ipython``) while they were imported."""
    import importlib

    for name in KERNEL_MODULES:
        importlib.import_module(name)
    import IPython
    import IPython.core.getipython as getipython

    asked = []

    def get_ipython():
        asked.append(sys._getframe(1).f_globals.get("__name__", "?"))

    original, getipython.get_ipython = getipython.get_ipython, get_ipython
    IPython.get_ipython = get_ipython
    try:
        for name in preload_modules(setup):
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001: not a module (from x import y)? then an attribute
                module, _, attribute = name.rpartition(".")
                # transformers loads GPT2LMHeadModel's module when the name is first read
                with contextlib.suppress(Exception):
                    getattr(sys.modules.get(module), attribute)
        preload_lazy_imports()
    finally:
        getipython.get_ipython = IPython.get_ipython = original
    return sorted(set(asked))


def _peer_is_launcher(conn: socket.socket) -> bool:
    """Whether the peer is a process the grading process (this zygote's parent) started."""
    pid, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return uid == os.getuid() and int(stat.rpartition(")")[2].split()[1]) == os.getppid()


def _send(conn: socket.socket, message: dict) -> None:
    with contextlib.suppress(OSError):
        conn.sendall(json.dumps(message).encode() + b"\n")


def _become_kernel(request: dict, inherited: list) -> None:
    """In the forked child: this process becomes the kernel ipykernel_launcher would start."""
    import importlib.util
    import random

    for thing in inherited:  # the zygote's sockets, selector and pidfds
        with contextlib.suppress(OSError):
            if isinstance(thing, int):
                os.close(thing)
            elif isinstance(thing, socket.socket):  # detached first, so that no object later
                os.close(thing.detach())  # closes a descriptor number the kernel reuses
            else:
                thing.close()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.setsid()  # as jupyter_client starts a kernel: its own session and process group
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    launcher = importlib.util.find_spec("ipykernel_launcher").origin
    sys.argv = [launcher, *request["argv"]]
    random.seed()  # a fresh kernel draws its own seeds, not the zygote's
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    from ipykernel import kernelapp

    init_shell = kernelapp.IPKernelApp.init_shell

    def init_shell_then_hooks(app):  # before exec_lines (the lockdown) and the first cell
        init_shell(app)
        for name, hook in ASKERS.items():
            if hook and name in sys.modules:
                getattr(sys.modules[name], hook)()

    kernelapp.IPKernelApp.init_shell = init_shell_then_hooks
    kernelapp.launch_new_instance(argv=request["argv"])


def _fork_kernel(request: dict, inherited: list) -> int:
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        _become_kernel(request, inherited)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001: the kernel's own failure, shown as a kernel would
        import traceback

        traceback.print_exc()
    finally:
        atexit._run_exitfuncs()  # what a kernel's interpreter runs at its end
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)  # the child never returns into the zygote's loop


class _ZygoteLoop:
    """The zygote's loop: one selector over its socket, its stdin, each client and each kernel."""

    def __init__(self, address: str):
        import selectors

        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(address)
        self.listener.listen(64)
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.listener, selectors.EVENT_READ, ("accept", None))
        self.sel.register(0, selectors.EVENT_READ, ("parent", None))
        self.kernels = {}  # pid: (its client's connection, its pidfd)
        self.cold = None  # why kernels start the usual way instead, if they must

    def run(self) -> None:
        try:
            while True:
                for key, _ in self.sel.select():
                    kind, pid = key.data
                    if kind == "parent" and not os.read(0, 4096):
                        return  # the grading process is done, or gone
                    if kind == "accept":
                        self.accept()
                    elif kind == "client":
                        self.client_gone(key.fileobj, pid)
                    elif kind == "exit":
                        self.exited(pid)
        finally:
            for pid in self.kernels:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)
            self.listener.close()

    def accept(self) -> None:
        import selectors
        import threading

        conn, _ = self.listener.accept()
        conn.settimeout(10)  # the client writes its request at once
        try:
            request = json.loads(conn.makefile("rb").readline())
        except (OSError, ValueError):
            conn.close()
            return
        if not _peer_is_launcher(conn):
            refusal = {"refused": "not a client of the grading process"}
        elif self.cold or threading.active_count() > 1:
            refusal = {"fallback": self.cold or "the zygote runs threads: it does not fork"}
        else:
            refusal = None
        if refusal:
            _send(conn, refusal)
            conn.close()
            return
        others = [x for pair in self.kernels.values() for x in pair]
        child = _fork_kernel(request, [self.listener, self.sel, conn, *others])
        pidfd = os.pidfd_open(child)
        self.kernels[child] = (conn, pidfd)
        self.sel.register(conn, selectors.EVENT_READ, ("client", child))
        self.sel.register(pidfd, selectors.EVENT_READ, ("exit", child))
        _send(conn, {"pid": child})

    def client_gone(self, conn: socket.socket, pid: int) -> None:
        """The client sends nothing after its request: readable means closed (it was killed,
        jupyter_client's immediate shutdown), so its kernel is killed."""
        with contextlib.suppress(OSError):
            if conn.recv(4096):
                return
        self.sel.unregister(conn)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def exited(self, pid: int) -> None:
        _, status = os.waitpid(pid, 0)
        conn, pidfd = self.kernels.pop(pid)
        self.sel.unregister(pidfd)
        os.close(pidfd)
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(conn)
        _send(conn, {"status": status})  # the client exits with it
        conn.close()


def main(address: str) -> None:
    """The zygote: listen at ``address`` (before the imports: early clients wait in the
    backlog), preload the setup's modules, then fork a kernel per client."""
    setup = json.loads(sys.stdin.buffer.readline() or b"{}").get("setup", "")
    # As ipykernel_launcher does: the folder `python -m` put first is no place to import from
    # (IPython's shell adds "" for the kernel's own folder).
    if sys.path[0] in ("", os.getcwd()):
        del sys.path[0]
    zygote = _ZygoteLoop(address)
    # ipykernel reads JPY_PARENT_PID when it is imported: a kernel ends if this process ends.
    os.environ["JPY_PARENT_PID"] = str(os.getpid())
    unknown = [name for name in preload(setup) if name not in ASKERS]
    if unknown:  # what it chose without a shell would be wrong in every kernel
        zygote.cold = f"{unknown[0]} looks for the IPython shell when it is imported"
        print(f"kto-course: grading kernels start the usual way: {zygote.cold}", file=sys.stderr)
    zygote.run()


if __name__ == "__main__":
    main(sys.argv[1])
