"""The process jupyter_client starts for a kernel forked by ``warm_kernels`` (standard library
only, run by path: ``python -I -S warm_client.py ADDRESS -- KERNEL COMMAND``).

It asks the zygote at ADDRESS for a kernel with this process's arguments, folder and
environment, passes on every signal jupyter_client sends it (they go to this process's group:
an interrupt, a terminate) to that kernel, and exits with the kernel's status. When it is
SIGKILLed, the zygote sees its connection close and kills the kernel. Without an answer from a
zygote it becomes the usual kernel: it execs KERNEL COMMAND.
"""

import json
import os
import signal
import socket
import sys

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2)  # fmt: skip


def main(argv: list[str]) -> None:
    address, cmd = argv[1], argv[3:]
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(address)
        request = {"argv": cmd[3:], "cwd": os.getcwd(), "env": dict(os.environ)}
        conn.sendall(json.dumps(request).encode() + b"\n")
        reader = conn.makefile("rb")
        pid = int(json.loads(reader.readline())["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        os.execv(cmd[0], cmd)  # the usual kernel, in this process

    def forward(signum, _frame):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:  # the kernel just ended: its status is on the way
            pass

    for signum in FORWARDED:
        signal.signal(signum, forward)
    try:
        status = int(json.loads(reader.readline())["status"])
    except (OSError, ValueError, KeyError, TypeError):  # the zygote is gone
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os._exit(1)
    code = os.waitstatus_to_exitcode(status)
    if code < 0:  # killed by a signal: end the same way
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code)


if __name__ == "__main__":
    main(sys.argv)
