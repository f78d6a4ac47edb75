"""The audit hook that fences graded code in: in the worker (strict) and in the grading kernel.

``install`` adds a ``sys.addaudithook`` hook (it cannot be removed). Everything it uses is bound
as a default argument (C functions, tuples of strings), so patching a module, builtins or a
global cannot change what it decides, and it refuses ``__code__`` / ``__defaults__`` swaps.

- reads: nothing under ``deny_read`` (unless under ``allow_read``), no other process's /proc
  but its one-line ``stat``;
  SQLite files count as reads (``sqlite3.connect`` opens files without an ``open`` event);
- writes, deletes, renames, links: only under ``write_ok`` (and /dev/null);
- no new processes (subprocess, os.system, exec, spawn, fork), no signals to other processes,
  no sockets, no ``resource`` changes; ``strict`` (the worker, whose imports all happen before
  the hook) also refuses ctypes and the garbage collector's object walks. The kernel cannot
  refuse ctypes (torch imports dill, which uses it), so there the hook is a fence against the
  Python routes (open, os.remove, shutil, subprocess, sqlite3), not against native code.

``lock_kernel`` is what the grading kernel runs at start (nbgrader's Execute passes it with
``--IPKernelApp.exec_lines``, see ``nbgrader_app.course_config``): the checkout's solutions and
the grading course (source/, gradebook.db, other submissions) become unreadable, and the kernel
may write only in its notebook's folder and a scratch folder.

An audit hook is not an operating-system sandbox: native code that is already loaded and opens
files itself (``torch.from_file``, for one) is not seen. See CONTRIBUTING.md, "Threat model".
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parents[1]


# Paths of any grading course on this machine, not only the one being graded: the temporary
# courses of ``kto-course submit`` (and of the workers and kernels), and any gradebook.
GRADING_MARKS = ("/kto-grade-", "/kto-worker-", "/kto-answer-", "/gradebook.db")


def install(
    *, deny_read=(), write_ok, allow_read=(), deny_always=(), record=None, strict: bool = True
) -> None:
    """``deny_always`` beats ``allow_read``, which beats ``deny_read`` (the Python of a
    virtual environment inside the checkout stays readable; the package itself does not)."""
    import posix

    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
    refused = ("subprocess.", "os.exec", "os.spawn", "os.posix_spawn", "os.fork", "os.forkpty",
               "pty.", "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg",
               "resource.setrlimit", "resource.prlimit", "winreg.", "_winapi.",
               "os.system", "sys.remote_exec")  # fmt: skip
    if strict:  # the kernel must let torch (through dill) use ctypes at import
        refused += ("ctypes.", "gc.get_", "socket.")
    path_events = ("os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown",
                   "os.truncate", "os.utime", "os.link", "os.symlink", "shutil.rmtree",
                   "shutil.copytree", "shutil.move", "shutil.copymode", "shutil.copystat",
                   "os.chflags", "os.mkfifo", "os.mknod", "os.setxattr", "os.removexattr",
                   "shutil.unpack_archive", "shutil.make_archive")  # fmt: skip
    list_events = ("os.listdir", "os.scandir", "glob.glob", "os.listxattr", "os.walk")
    record = record if record is not None else []

    def hook(
        event,
        args,
        _deny=tuple(str(p) for p in deny_read),
        _allow=tuple(str(p) for p in allow_read),
        _never=tuple(str(p) for p in deny_always), _marks=GRADING_MARKS,
        _write=tuple(str(p) for p in write_ok), _record=record, _flags=write_flags,
        _refused=refused, _paths=path_events, _lists=list_events,
        _getcwd=posix.getcwd, _readlink=posix.readlink, _fspath=posix.fspath,
        _getpid=posix.getpid, _str=str, _bytes=bytes, _int=int, _isinstance=isinstance,
        _OSError=OSError, _Perm=PermissionError, _len=len, _tuple=tuple, _any=any,
        _hasattr=hasattr, _getattr=getattr,
    ):  # fmt: skip
        def real(path):
            try:
                path = _fspath(path)
            except Exception:
                return None
            if _isinstance(path, _bytes):
                path = path.decode("utf-8", "surrogateescape")
            if not _isinstance(path, _str) or path in (":memory:", ""):
                return None
            if path.startswith("file:"):  # an SQLite URI
                path = path[5:].split("?", 1)[0]
            if not path.startswith("/"):
                path = _getcwd() + "/" + path
            parts, todo, hops = [], path.split("/"), 0
            while todo:
                part = todo.pop(0)
                if part in ("", "."):
                    continue
                if part == "..":
                    if parts:
                        parts.pop()
                    continue
                candidate = "/" + "/".join(parts + [part])
                try:
                    target = _readlink(candidate)
                except _OSError:
                    parts.append(part)
                    continue
                hops += 1
                if hops > 40:
                    return candidate
                if target.startswith("/"):
                    parts = []
                todo = target.split("/") + todo
            return "/" + "/".join(parts)

        def inside(path, folders):
            for folder in folders:
                if path == folder or path.startswith(folder + "/"):
                    return True
            return False

        def readable(path):
            if path is None:
                return True
            if inside(path, _never):
                return False
            if inside(path, _allow):
                return True
            if _any(m in path for m in _marks):
                return False
            if inside(path, _deny):
                return False
            if path.startswith("/proc/"):
                pid, _, rest = path[6:].partition("/")
                # Another process's /proc stays closed (cmdline, environ, memory) except its
                # one-line "stat" (pid, name, state, parent): ipykernel reads all of them when
                # it shuts down (psutil), and the refusal printed a traceback after every
                # kto-course submit.
                if pid.isdigit() and pid != _str(_getpid()) and rest != "stat":
                    return False
            return True

        def writable(path):
            return path is None or path == "/dev/null" or inside(path, _write)

        if event == "kto_course.twin":
            _record.append(args[0])
            return
        if event == "open":
            path, mode, flags = (_tuple(args) + (None, None, None))[:3]
            if _isinstance(path, _int):
                return
            p = real(path)
            if not readable(p):
                raise _Perm(f"the grader does not let graded code read {path}")
            writing = (_isinstance(mode, _str) and _any(m in mode for m in "wax+")) or (
                _isinstance(flags, _int) and flags & _flags
            )
            if writing and not writable(p):
                raise _Perm(f"the grader does not let graded code write {path}")
            return
        if event == "sqlite3.connect" or event == "sqlite3.connect/handle":
            if args and not _isinstance(args[0], _int) and not readable(real(args[0])):
                raise _Perm(f"the grader does not let graded code open {args[0]}")
            return
        if event in _paths:
            for arg in args[:2]:
                if _isinstance(arg, (_str, _bytes)) or _hasattr(arg, "__fspath__"):
                    if not writable(real(arg)):
                        raise _Perm(f"the grader does not let graded code change {arg}")
            return
        if event == "shutil.copyfile":
            if not readable(real(args[0])) or not writable(real(args[1])):
                raise _Perm("the grader does not let graded code copy that file")
            return
        if event in _lists:
            if args and _isinstance(args[0], (_str, _bytes)) and not readable(real(args[0])):
                raise _Perm(f"the grader does not let graded code list {args[0]}")
            return
        if event in ("os.kill", "os.killpg", "signal.pthread_kill"):
            if event == "os.kill" and args[0] == _getpid():
                return  # its own process: a crash, and reported as one
            raise _Perm("the grader does not let graded code signal other processes")
        if event == "import" and args and args[0] == "_posixsubprocess":
            raise _Perm("the grader does not let graded code start processes")
        if event.startswith(_refused):
            raise _Perm(f"the grader does not let graded code do {event}")
        if event == "object.__setattr__" and _len(args) > 1:
            if args[1] == "__code__" or (
                args[1] in ("__defaults__", "__kwdefaults__")
                and _getattr(_getattr(args[0], "__code__", None), "co_name", "") == "hook"
                and _getattr(args[0], "__module__", "") == "kto_course.grading.lockdown"
            ):
                raise _Perm("the grader does not let graded code swap a function's code")

    sys.addaudithook(hook)


def course_root(start) -> Path | None:
    """The nbgrader course a notebook folder belongs to: the first folder at or above it that
    holds ``source/`` and a gradebook or an nbgrader_config.py."""
    start = Path(start).resolve()
    for folder in (start, *start.parents):
        if (folder / "source").is_dir() and (
            (folder / "gradebook.db").exists() or (folder / "nbgrader_config.py").exists()
        ):
            return folder
    return None


def checkout_secrets() -> list[Path]:
    """The parts of the course checkout a grading kernel has no business reading."""
    checkout = _PACKAGE.parent
    if not (checkout / "solutions").is_dir():
        return []
    return [checkout / name for name in ("solutions", ".git", "tests", "feedback")]


def lock_kernel() -> None:
    """Lock the grading kernel down (run once at its start, before any learner code)."""
    import tempfile

    here = Path.cwd().resolve()
    scratch = os.path.realpath(tempfile.mkdtemp(prefix="kto-kernel-"))
    os.environ["TMPDIR"] = scratch
    tempfile.tempdir = scratch
    root = course_root(here)
    deny = [p.resolve() for p in checkout_secrets()] + ([root] if root else [])
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    install(
        deny_read=deny, allow_read=[here, *sorted(prefixes)], write_ok=[here, scratch], strict=False
    )


KERNEL_EXEC_LINE = "import kto_course.grading.lockdown as _l; _l.lock_kernel(); del _l"
