"""The grading process's side of the worker: ``Sandbox`` (one worker per graded notebook) and
``RemoteFunction``, the callable that the checks receive instead of the learner's function.

``checks.check_x(RemoteFunction(...), hidden=True)`` works unchanged: a check only calls the
learner's function through ``call_learner``, and ``RemoteFunction`` raises what that expects
(the learner's exception by name, ``NotImplementedError``, or a ``CheckFailed`` in the course's
words for a timeout, a dead process, an unreadable result or a call of an answer twin). The
learner's code never runs in this process; results come back through ``codec`` (no pickle).
"""

from __future__ import annotations

import builtins
import os
import pickle
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from kto_course.checks.base import LEARNER_TIME_LIMIT, CheckFailed
from kto_course.grading import codec
from kto_course.grading.worker import MAX_FRAME

# Seconds the worker may take to import the lesson's setup (torch, transformers) on a busy
# machine, and to run an answer cell's top level.
SETUP_TIME_LIMIT = 180
# Seconds one call may take: just under the checks' own alarm, so that the worker is stopped
# (and the message says so) before ``call_learner`` gives up on its own.
CALL_TIME_LIMIT = LEARNER_TIME_LIMIT - 1
CELL_TIME_LIMIT = CALL_TIME_LIMIT
MEMORY_LIMIT = 4 * 2**30  # address space of one exercise's process (torch needs headroom)
CPU_LIMIT = 120  # CPU seconds of one exercise's process
FILE_LIMIT = 16 * 2**20  # bytes of any file it writes (in its scratch folder)
# Package modules the import cells name that graded code never needs (slow to import).
STAND_INS = ("kto_course.demos", "kto_course.figures")
_BOOT = "from kto_course.grading.worker import main; main()"
_PACKAGE = Path(__file__).resolve().parents[1]


class WorkerGone(Exception):
    """The worker process ended (or was killed) before it answered."""


def protected_folders(*extra) -> tuple[list[str], list[str]]:
    """(never readable, not readable outside the Python installation) for graded code: the
    package and ``extra`` (the grading course: source/, gradebook.db, submissions); the
    checkout around the package, if it is one (its .venv stays readable)."""
    never = sorted({os.path.realpath(p) for p in [_PACKAGE, *extra] if p})
    checkout = []
    if (_PACKAGE.parent / "solutions").is_dir() or (_PACKAGE.parent / ".git").exists():
        checkout.append(os.path.realpath(_PACKAGE.parent))
    return never, checkout


def _clean_env() -> dict:
    keep = ("PATH", "LANG", "LC_ALL", "KTO_COURSE_QUICK", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONHASHSEED"] = "0"
    return env


class Sandbox:
    """One worker process: the lesson's setup imported once, one forked child per exercise."""

    def __init__(self, setup_source: str, *, deny=(), timeout: float = CALL_TIME_LIMIT):
        self.setup_source = setup_source
        self.deny, self.deny_checkout = protected_folders(*deny)
        self.timeout = timeout
        self.proc = None
        self._buffer = b""
        self.setup_error = None
        self._home = None
        self._ready = False

    # -- the process -------------------------------------------------------------------------

    def launch(self) -> None:
        """Start the worker and send it the setup; ``start`` waits for it to be ready."""
        self._home = tempfile.TemporaryDirectory(prefix="kto-worker-")
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-c", _BOOT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=self._home.name,
            env={**_clean_env(), "HOME": self._home.name, "TMPDIR": self._home.name},
            start_new_session=True,
        )
        self._buffer = b""
        self.setup_error = None
        self._ready = False
        self._send({"source": self.setup_source, "stand_ins": STAND_INS})

    def start(self) -> None:
        if self.proc is None:
            self.launch()
        if self._ready:
            return
        self._ready = True
        try:
            ready = self._recv(time.monotonic() + SETUP_TIME_LIMIT)
        except (WorkerGone, TimeoutError, OverflowError):
            ready = {"error": "WorkerGone", "message": "the worker did not start"}
        if ready.get("error"):
            self.setup_error = f"{ready['error']}: {ready.get('message', '')}"

    def close(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait()
            for pipe in (self.proc.stdin, self.proc.stdout):
                pipe.close()
            self.proc = None
        if self._home is not None:
            self._home.cleanup()
            self._home = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- frames ------------------------------------------------------------------------------

    def _send(self, msg) -> None:
        payload = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self.proc.stdin.write(len(payload).to_bytes(8, "big") + payload)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError, ValueError):
            raise WorkerGone from None

    def _read(self, n: int, deadline: float) -> bytes:
        fd = self.proc.stdout.fileno()
        while len(self._buffer) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                raise TimeoutError
            chunk = os.read(fd, max(n - len(self._buffer), 2**16))
            if not chunk:
                raise WorkerGone
            self._buffer += chunk
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def _recv(self, deadline: float) -> dict:
        n = int.from_bytes(self._read(8, deadline), "big")
        if n > MAX_FRAME:
            raise OverflowError
        try:
            msg = codec.loads(self._read(n, deadline))
        except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError):
            return {"op": "reply", "error": "Unreadable", "message": ""}
        return msg if isinstance(msg, dict) else {"op": "reply", "error": "Unreadable"}

    # -- exercises ---------------------------------------------------------------------------

    def function(self, name: str, sources, twins=(), hint: str = "") -> RemoteFunction:
        """The learner's ``name`` from ``sources`` [(label, source, defs_only)], as a callable."""
        return RemoteFunction(self, name, list(sources), tuple(twins), hint)


def _twin_message(twin: str, hint: str) -> str:
    short = twin.rsplit(".", 1)[-1]
    words = f"you called the course's own `{short}`"
    return f"{words}: {hint}" if hint else f"{words}: write the computation yourself."


class RemoteFunction:
    """The learner's function, running in a child of a ``Sandbox``; call it like the original.

    ``call_backward(wrt, *args)`` calls it, then ``backward()`` on its (scalar tensor) result
    in the worker: ``(value, requires_grad, grads of args[i] for i in wrt, backward error)``
    (what ``checks.base.call_and_backprop`` returns). ``call_modules(*args)`` calls it and
    reports what it did to its ``torch.nn.Module`` arguments, which live in the worker only
    (``checks.base.call_and_read_modules``).
    """

    def __init__(self, sandbox: Sandbox, name: str, sources, twins, hint: str):
        self.sandbox, self.__name__, self.sources = sandbox, name, sources
        self.twins, self.hint = twins, hint
        self.__qualname__ = name
        self.pid = None
        self.ready = None
        self._failure = None

    def __repr__(self) -> str:
        return f"<your function {self.__name__}, graded in a separate process>"

    # -- the child ---------------------------------------------------------------------------

    def _start(self) -> dict:
        box = self.sandbox
        if box.proc is None or not box.alive():
            box.close()
        box.start()
        if box.setup_error:
            raise CheckFailed(
                f"{self.__name__}: the grader could not prepare the lesson's setup "
                f"({box.setup_error}); tell your instructor."
            )
        box._send({
            "op": "exercise", "function": self.__name__, "sources": self.sources,
            "twins": self.twins, "deny": box.deny, "deny_checkout": box.deny_checkout,
            "memory_bytes": MEMORY_LIMIT,
            "cpu_seconds": CPU_LIMIT, "file_bytes": FILE_LIMIT,
        })  # fmt: skip
        hello = box._recv(time.monotonic() + SETUP_TIME_LIMIT)
        self.pid = int(hello.get("pid", 0)) or None
        try:
            self.ready = self._wait(CELL_TIME_LIMIT, what="running your answer cell")
        except CheckFailed:
            self.pid = None
            raise
        return self.ready

    def _wait(self, seconds: float, what: str) -> dict:
        box = self.sandbox
        try:
            msg = box._recv(time.monotonic() + seconds)
        except TimeoutError:
            self._kill()
            raise CheckFailed(
                f"{self.__name__}: {what} ran for more than {seconds:g} s and was stopped: is "
                "there a loop that never ends?"
            ) from None
        except OverflowError:
            self._kill()
            raise CheckFailed(
                f"{self.__name__} returned more data than the grader reads."
            ) from None
        except WorkerGone:
            box.close()
            self.pid = None
            raise CheckFailed(self._died()) from None
        except BaseException:  # an alarm or Ctrl-C in this process: never leave a child behind
            self._kill()
            raise
        if msg.get("op") == "exited":
            self.pid = None
            raise CheckFailed(self._died())
        return msg

    def _died(self) -> str:
        return (
            f"{self.__name__} ended its process (os._exit, a signal, or running out of memory "
            "or time): the grader could not get an answer from it."
        )

    def _kill(self) -> None:
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                self.sandbox._recv(time.monotonic() + 10)  # the zygote's "exited"
            except (TimeoutError, WorkerGone, OverflowError):
                self.sandbox.close()
        self.pid = None

    def finish(self) -> None:
        """End this exercise's child (the sandbox stays up for the next exercise)."""
        if self.pid and self.sandbox.alive():
            try:
                self.sandbox._send({"op": "done"})
                deadline = time.monotonic() + 10
                while self.sandbox._recv(deadline).get("op") != "exited":
                    pass
            except (TimeoutError, WorkerGone, OverflowError):
                self._kill()
        self.pid = None

    # -- calls -------------------------------------------------------------------------------

    def _check_twins(self, msg: dict) -> None:
        twins = [t for t in msg.get("twins") or [] if isinstance(t, str)]
        if twins and twins[0] != "checker":
            raise CheckFailed(_twin_message(twins[0], self.hint))
        if twins:
            raise CheckFailed(
                f"{self.__name__} called the course's checker: write the computation yourself."
            )

    def _raise(self, msg: dict):
        kind = str(msg.get("error"))
        message = str(msg.get("message", ""))
        if kind == "SystemExit":
            raise CheckFailed(f"{self.__name__} exited (SystemExit) instead of returning.")
        if kind == "NotAFunction":
            got = f" (got {message})" if message else ""
            raise CheckFailed(
                f"{self.__name__} is not defined as a function in its answer cell{got}: "
                f"define it there with def {self.__name__}(...)."
            )
        if kind == "Unreadable":
            raise CheckFailed(f"{self.__name__} returned something the grader cannot read.")
        if msg.get("where") == "cell":
            if kind == "NotImplementedError":
                raise NotImplementedError
            raise CheckFailed(
                f"running the answer cell of {self.__name__} raised {kind}: {message}"
            )
        known = getattr(builtins, kind, None)
        if isinstance(known, type) and issubclass(known, Exception) and kind != "CheckFailed":
            raise known(message)
        raise type(kind if kind.isidentifier() else "Exception", (Exception,), {})(message)

    def prepare(self) -> None:
        """Start the child and run the answer cell now, outside the checks' time limit; a
        failure is raised by the first call."""
        try:
            self.sandbox.start()
            self._check_twins(self._start())
        except CheckFailed as e:
            self._failure = e

    def _call(self, args, kwargs, backprop=None, modules: bool = False) -> dict:
        if self._failure is not None:
            raise self._failure
        if self.pid is None:
            ready = self._start()
            self._check_twins(ready)
        if self.ready.get("error"):
            self._raise(self.ready)
        try:
            self.sandbox._send({"op": "call", "args": args, "kwargs": kwargs,
                                "backprop": backprop, "modules": modules})  # fmt: skip
        except WorkerGone:
            self.sandbox.close()
            self.pid = None
            raise CheckFailed(self._died()) from None
        reply = self._wait(self.sandbox.timeout, what="one call")
        self._check_twins(reply)
        if reply.get("error"):
            self._raise(reply)
        _write_back(args, reply.get("args_after") or [])
        found = codec.find_unreadable(reply.get("value"))
        if found is not None:
            raise CheckFailed(
                f"{self.__name__} returned a {found.type_name} that the grader cannot read: "
                "return numbers, arrays, tensors, lists or dicts."
            )
        return reply

    def __call__(self, *args, **kwargs):
        return self._call(args, kwargs)["value"]

    def call_backward(self, wrt, *args, **kwargs):
        reply = self._call(args, kwargs, backprop=list(wrt))
        grads = list(reply.get("grads") or [None] * len(wrt))
        return (reply.get("value"), bool(reply.get("requires_grad")), grads,
                reply.get("backward_error"))  # fmt: skip

    def call_modules(self, *args, **kwargs):
        """Call it; ``(value, states)``, ``states[i]`` what the call did to ``args[i]`` if it
        is a ``torch.nn.Module`` (``worker.module_report``: its parameters' ``.grad`` and which
        parameters changed), else None (what ``checks.base.call_and_read_modules`` returns)."""
        reply = self._call(args, kwargs, modules=True)
        states = reply.get("modules")
        states = list(states) if isinstance(states, list) else []
        states = [s if isinstance(s, dict) else None for s in states[: len(args)]]
        return reply.get("value"), states + [None] * (len(args) - len(states))


def _write_back(args, after) -> None:
    """Arguments the learner's function changed in place, changed here too (checks look)."""
    for arg, new in zip(args, after, strict=False):
        if new is None or codec.find_unreadable(new) is not None:
            continue
        try:
            kind = type(arg).__module__ + "." + type(arg).__name__
            if kind == "numpy.ndarray" and getattr(new, "shape", None) == arg.shape:
                arg[...] = new
            elif kind == "torch.Tensor" and tuple(new.shape) == tuple(arg.shape):
                import torch

                with torch.no_grad():
                    arg.copy_(new.to(arg.dtype))
            elif kind == "builtins.list" and isinstance(new, list):
                arg[:] = new
            elif kind == "builtins.dict" and isinstance(new, dict):
                arg.clear()
                arg.update(new)
        except (TypeError, ValueError, RuntimeError):
            continue
