"""The worker: runs a learner's answer cells in a separate, locked-down process.

Started by ``sandbox.Sandbox`` as ``python -I -c "from kto_course.grading.worker import main;
main()"`` with a clean environment and a fresh temporary working directory. It never sees the
checker, the cases' expected values or the course files: it receives (pickled, from the
trusted grading process) the setup source (the lesson's first code cell from the SOURCE
notebook), then, per exercise, the learner's answer source, the exercise's answer twins and the
function's name; it answers each call with the result in the safe encoding of ``codec``.

One process (the "zygote") runs the setup's imports once, then forks one child per exercise, so
that every exercise starts from the same fresh state and a crash costs only that exercise. The
rest of the setup (lesson 07's check for TRL, which imports all of it) runs in the zygote only
before the first exercise whose answer names what it binds. Before any learner code the child:

- sets resource limits (address space, CPU seconds, file size, no new processes);
- turns every answer twin (and every function of ``kto_course.checks``) into a stub that
  raises, by replacing its ``__code__``: every reference to it is dead, however it was found;
- installs the audit hook of ``lockdown`` (it cannot be removed): no reading the course
  checkout, the grading folder or the package's files, no writing outside the scratch folder,
  no processes, signals to others, sockets, ctypes, garbage-collector walks or code swaps.

Protocol: frames of an 8-byte big-endian length and a payload; grading process -> worker:
pickle; worker -> grading process: ``codec`` JSON only (never pickle). A call's reply carries
its value, the arguments it changed in place (arrays, tensors, lists, dicts) and, on request,
the gradients of its tensor arguments after ``backward()`` on the value (``backprop``) or what
it did to each ``torch.nn.Module`` argument: the ``.grad`` of every parameter and which
parameters changed (``modules``; a lesson-06 training step fills ``.grad`` itself).
"""

from __future__ import annotations

import os
import sys

MAX_FRAME = 64 * 2**20  # bytes of one reply; bigger is "too large to read back"
# What a module imports only when first used; a zygote imports it once for all its children.
# torch imports its compiler (torch._dynamo, 1.3-1.6 s) the first time an optimizer is built.
LAZY_IMPORTS = {"torch": ("torch._dynamo",)}


def _read_exact(fd: int, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 2**20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _send(fd: int, payload: bytes) -> None:
    data = len(payload).to_bytes(8, "big") + payload
    while data:
        data = data[os.write(fd, data) :]


def _recv(fd: int):
    import pickle

    n = int.from_bytes(_read_exact(fd, 8), "big")
    return pickle.loads(_read_exact(fd, n))  # from the trusted grading process only


class _Discard:
    """sys.stdout/sys.stderr of the worker: the learner's prints are dropped (capped count)."""

    encoding = "utf-8"
    errors = "replace"

    def write(self, text) -> int:
        return len(text) if isinstance(text, str) else 0

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return 1  # /dev/null


def _stub_code(name: str):
    def stub(*args, **kwargs):
        __import__("sys").audit("kto_course.twin", "NAME")
        raise RuntimeError("the course's own NAME is not available while this exercise is graded")

    code = stub.__code__
    consts = tuple(c.replace("NAME", name) if isinstance(c, str) else c for c in code.co_consts)
    short = name.rsplit(".", 1)[-1]
    return code.replace(co_consts=consts, co_name=short, co_qualname=short)


def _twin_stand_in(name: str, twins) -> None:
    """A package module the setup did not load (its files are unreadable once the hook is in):
    a stand-in whose declared twins are stubs, so that calling one is still named as such."""
    import builtins
    import types

    prefix = name.removeprefix("kto_course.") + "."
    stubs = {
        t[len(prefix) :]: t for t in twins if t.startswith(prefix) and "." not in t[len(prefix) :]
    }

    def lookup(attr, _stubs=stubs, _name=name):
        if attr in _stubs:
            return types.FunctionType(_stub_code(_stubs[attr]), {"__builtins__": builtins})
        raise AttributeError(f"{_name}.{attr} is not available in graded code of this lesson")

    module = types.ModuleType(name, "a stand-in: not loaded for this lesson")
    module.__getattr__ = lookup
    sys.modules[name] = module
    parent, _, child = name.rpartition(".")
    if parent in sys.modules:
        setattr(sys.modules[parent], child, module)


def _neuter(twins, dead_modules) -> None:
    """Replace the code of every twin and of every function of ``dead_modules`` with a stub."""
    import importlib
    import types

    def kill(fn, label):
        fn = getattr(fn, "__func__", fn)
        if isinstance(fn, types.FunctionType) and not fn.__code__.co_freevars:
            fn.__code__ = _stub_code(label)

    for twin in twins:  # "core.kto_losses", "lm.task.judge", "checks.l01_log_ratio.x"
        module, _, attr = twin.rpartition(".")
        if f"kto_course.{module}" not in sys.modules:
            _twin_stand_in(f"kto_course.{module}", twins)  # not loaded: no need to import it
            continue
        try:
            obj = importlib.import_module(f"kto_course.{module}")
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError):
            continue
        kill(obj, twin)
    for name, module in list(sys.modules.items()):
        if module is not None and any(name.startswith(p) for p in dead_modules):
            for value in list(vars(module).values()):
                if getattr(value, "__module__", None) == name:
                    if isinstance(value, type):
                        for member in list(vars(value).values()):
                            kill(member, f"checks.{value.__name__}")
                    else:
                        kill(value, "checker")


def _close_back_doors() -> None:
    """Process creation without an audit event (``_posixsubprocess.fork_exec``): unreachable."""
    for name in ("_posixsubprocess", "subprocess"):
        module = sys.modules.get(name)
        if module is not None:
            for attr in ("fork_exec", "_fork_exec", "_posixsubprocess"):
                if hasattr(module, attr):
                    try:
                        delattr(module, attr)
                    except (AttributeError, TypeError):
                        pass
    sys.modules.pop("_posixsubprocess", None)


def _limits(memory_bytes: int, cpu_seconds: int, file_bytes: int) -> None:
    import resource
    import signal

    for which, value in (
        (resource.RLIMIT_AS, memory_bytes),
        (resource.RLIMIT_CPU, cpu_seconds),
        (resource.RLIMIT_FSIZE, file_bytes),
        (resource.RLIMIT_CORE, 0),
    ):
        try:
            resource.setrlimit(which, (value, value))
        except (ValueError, OSError):
            pass
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a big write fails instead of killing


def _exception(e: BaseException) -> dict:
    kind = type(e).__name__
    if isinstance(e, SyntaxError):
        return {"error": "SyntaxError", "message": f"{e.msg} (line {e.lineno})"}
    try:
        message = str(e)[:500]
    except Exception:
        message = ""
    return {"error": kind if kind.isidentifier() else "Exception", "message": message}


def _serve_exercise(msg: dict, ns: dict, fd_in: int, fd_out: int) -> None:
    """The child for one exercise: lock down, run the answer, answer calls, then exit."""
    import tempfile

    from kto_course.grading import codec, lockdown

    _send(fd_out, codec.dumps({"op": "hello", "pid": os.getpid()}))
    scratch = os.path.realpath(tempfile.mkdtemp(prefix="kto-answer-"))
    os.chdir(scratch)
    os.environ.update(TMPDIR=scratch, HOME=scratch)
    tempfile.tempdir = scratch
    _limits(msg["memory_bytes"], msg["cpu_seconds"], msg["file_bytes"])
    _neuter(msg["twins"], ("kto_course.checks",))
    record: list = []
    _close_back_doors()
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    lockdown.install(deny_always=msg["deny"], allow_read=[scratch, *sorted(prefixes)],
                     deny_read=msg.get("deny_checkout", ()), write_ok=[scratch], record=record,
                     strict=True)  # fmt: skip

    ready: dict = {"op": "ready", **(msg.get("setup_error") or {})}
    sources = [] if "error" in ready else msg["sources"]  # a failed setup: run no answer
    for label, source, defs_only in sources:
        try:
            code = compile(source, label, "exec")
            if defs_only:
                import ast

                tree = ast.parse(source)
                keep = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import,
                        ast.ImportFrom)  # fmt: skip
                tree.body = [node for node in tree.body if isinstance(node, keep)]
                code = compile(tree, label, "exec")
            exec(code, ns)
        except BaseException as e:  # noqa: BLE001: the learner's code, reported
            if not defs_only:
                ready.update(_exception(e), where="cell")
                break
    fn = ns.get(msg["function"])
    if "error" not in ready and not callable(fn):
        ready.update(error="NotAFunction", message=type(fn).__name__ if fn is not None else "")
    ready["twins"] = list(dict.fromkeys(record))
    _send(fd_out, codec.dumps(ready))
    while True:
        request = _recv(fd_in)
        if request["op"] != "call":
            os._exit(0)
        record.clear()
        args, kwargs = request["args"], request["kwargs"]
        reply: dict = {"op": "reply"}
        try:
            before = module_snapshot(args) if request.get("modules") else None
            value = fn(*args, **kwargs)
            if request.get("backprop") is not None:
                value = _backprop(value, args, request["backprop"], reply)
            if before is not None:
                reply["modules"] = module_report(args, before)
            reply["value"] = value
        except SystemExit:
            reply.update(error="SystemExit", message="")
        except BaseException as e:  # noqa: BLE001: the learner's exception, reported
            reply.update(_exception(e))
        reply["twins"] = list(dict.fromkeys(record))
        reply["args_after"] = [a if codec.mutable(a) else None for a in args]
        try:
            payload = codec.dumps(reply)
        except Exception as e:  # noqa: BLE001
            payload = codec.dumps({"op": "reply", "error": "Unreadable", "message": str(e)})
        _send(fd_out, payload)


def _backprop(value, args, wrt, reply):
    """Call ``backward()`` on a scalar tensor result; the gradients of the args in ``wrt``."""
    import torch

    reply["requires_grad"] = bool(isinstance(value, torch.Tensor) and value.requires_grad)
    if reply["requires_grad"]:
        try:
            value.backward()
        except Exception as e:  # noqa: BLE001
            reply["backward_error"] = f"{type(e).__name__}: {str(e)[:300]}"
        reply["grads"] = [
            args[i].grad.detach() if getattr(args[i], "grad", None) is not None else None
            for i in wrt
        ]
    return value.detach() if isinstance(value, torch.Tensor) else value


def module_parameters(arg):
    """``arg``'s named parameters if it is a ``torch.nn.Module``, else None."""
    torch = sys.modules.get("torch")  # never imported here: no torch, no module
    if torch is None or not isinstance(arg, torch.nn.Module):
        return None
    return dict(arg.named_parameters())


def module_snapshot(args) -> list:
    """For each argument that is a ``torch.nn.Module``, a copy of its parameter values (else
    None): what ``module_report`` compares with after the call."""
    out = []
    for arg in args:
        params = module_parameters(arg)
        out.append(None if params is None else {n: p.detach().clone() for n, p in params.items()})
    return out


def module_report(args, before) -> list:
    """What a call did to each ``torch.nn.Module`` argument (None for the others):
    ``{"grads": {parameter name: its .grad or None}, "changed": [names of the parameters whose
    values changed, or that were replaced, added or removed]}``. Plain tensors, lists and dicts:
    ``codec`` carries them back (a module itself cannot cross)."""
    import torch

    out = []
    for arg, old in zip(args, before, strict=True):
        params = module_parameters(arg)
        if params is None or old is None:
            out.append(None)
            continue
        grads = {n: None if p.grad is None else p.grad.detach().clone() for n, p in params.items()}
        changed = sorted(set(old) ^ set(params))
        changed += [n for n, p in params.items() if n in old and not (
            p.dtype == old[n].dtype and p.shape == old[n].shape
            and torch.equal(p.detach(), old[n]))]  # fmt: skip
        out.append({"grads": grads, "changed": changed})
    return out


def _stand_ins(names) -> None:
    """Modules graded code has no use for (the demos, the figures: slow to import), replaced
    by empty stand-ins so that the lesson's import cell still runs."""
    import types

    def missing(attr, _name=None):
        raise AttributeError(f"{attr} is not available in graded code")

    for name in names:
        module = types.ModuleType(name, "a stand-in: not available in graded code")
        module.__getattr__ = missing
        sys.modules[name] = module
        parent, _, child = name.rpartition(".")
        if parent in sys.modules:
            setattr(sys.modules[parent], child, module)


def setup_statements(source: str) -> tuple[list, list]:
    """The lesson's setup cell as (its top-level import statements, the other statements), ast
    nodes; SyntaxError if it does not parse. The worker runs the imports at once and the rest
    on demand (``_split_setup``); the grading process imports the same modules meanwhile
    (``verdicts.warm_imports``)."""
    import ast

    body = ast.parse(source).body
    imports = [n for n in body if isinstance(n, (ast.Import, ast.ImportFrom))]
    return imports, [n for n in body if n not in imports]


def _split_setup(source: str):
    """(the setup's import statements, the rest or None, the names the rest binds).

    The imports give graded code its names (and the modules its arguments unpickle into);
    the rest (``trl_bridge.require_trl()``, ``QUICK = ...``) can cost seconds (lesson 07's
    imports all of TRL) and only matters to an answer that names what it binds."""
    import ast

    imports, rest = setup_statements(source)
    names = set()
    for node in ast.walk(ast.Module(body=rest, type_ignores=[])):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.alias):
            names.add((node.asname or node.name).split(".")[0])
    module = ast.Module(body=imports, type_ignores=[])
    later = compile(ast.Module(body=rest, type_ignores=[]), "<setup>", "exec") if rest else None
    return compile(module, "<setup>", "exec"), later, names


def _names_any(sources, names) -> bool:
    """Whether any source mentions one of ``names`` (as a word anywhere, strings included:
    ``globals()["QUICK"]`` counts)."""
    import re

    if not names:
        return False
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(names))) + r")\b")
    return any(pattern.search(source) for _, source, _ in sources)


def preload_lazy_imports() -> None:
    """Import what the modules imported so far import only when first used (``LAZY_IMPORTS``)."""
    import importlib

    for module, lazy in LAZY_IMPORTS.items():
        if module in sys.modules:
            for name in lazy:
                importlib.import_module(name)


def main() -> None:
    fd_in, fd_out = os.dup(0), os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    sys.stdout = sys.stderr = _Discard()
    from kto_course.grading import codec

    setup = _recv(fd_in)
    _stand_ins(setup.get("stand_ins", ()))
    ns: dict = {"__name__": "__main__"}
    try:
        imports, rest, rest_names = _split_setup(setup["source"])
        exec(imports, ns)
        if "torch" in sys.modules:
            # What the lessons' setup does (and the rest of it may now never run): one thread,
            # as on a busy 2-core machine a second one made torch many times slower (lesson 06).
            sys.modules["torch"].set_num_threads(1)
        preload_lazy_imports()
        _send(fd_out, codec.dumps({"op": "ready"}))
    except BaseException as e:  # noqa: BLE001: a course bug, reported to the grader
        _send(fd_out, codec.dumps({"op": "ready", **_exception(e)}))
        return
    rest_error = None
    while True:
        try:
            msg = _recv(fd_in)
        except EOFError:
            return
        if msg.get("op") == "quit":
            return
        if msg.get("op") != "exercise":
            continue  # a "done" for a child that had already ended
        if _names_any(msg["sources"], rest_names):
            if rest is not None:  # here, in the zygote: the course's code, never the learner's
                try:
                    exec(rest, ns)
                except BaseException as e:  # noqa: BLE001: a course bug, reported as one
                    rest_error = {**_exception(e), "where": "setup"}
                rest = None
            msg["setup_error"] = rest_error
        pid = os.fork()
        if pid == 0:
            try:
                _serve_exercise(msg, ns, fd_in, fd_out)
            except BaseException as e:  # noqa: BLE001: a grader bug, reported as one
                try:
                    _send(
                        fd_out,
                        codec.dumps(
                            {
                                "op": "reply",
                                "error": "GraderError",
                                "message": f"{type(e).__name__}: {e}"[:300],
                            }
                        ),
                    )
                except BaseException:  # noqa: BLE001
                    pass
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        _send(fd_out, codec.dumps({"op": "exited", "status": status}))
