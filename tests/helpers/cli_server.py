"""Run ``anomalib`` and ``anogen`` commands in fresh processes that skip the ~15 s of imports.

Importing anomalib's CLI (torch, Lightning, OpenVINO, timm, ...) takes about 15 s per process on this
project's 2-core machine, more than most tiny docs commands take to run. This server imports what the two
console scripts import, once, and then runs each command in a process forked from it: a fresh process
per command (its own globals, seed, logging, exit code, no state left for the next one), started in
milliseconds. The child runs exactly the console script's ``main`` with ``sys.argv`` set, so the plugin
hook that matters is the real one: ``anomalib.cli`` is imported here as the ``anomalib`` script imports it,
and the one-line error hook, which the plugin installs only in the ``anomalib`` command, is installed in each
``anomalib`` child; an uncaught error goes to ``sys.excepthook`` as in a real process.

Protocol (one JSON object a line): the client writes ``{"argv": [...], "cwd": ..., "log": ..., "timeout": s,
"err": ..., "env": {...}}`` and reads ``{"returncode": n}``; the command's stdout goes to ``log``, its stderr
to ``err`` (or ``log`` too), and it runs with ``env`` (or the server's environment).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO


def _mains() -> dict:
    import anomalib.cli.cli  # the `anomalib` console script's import; the plugin hook fires here

    import anomalib_anogen.cli
    import anomalib_anogen.generate.command
    import anomalib_anogen.generate.show
    import anomalib_anogen.learn.command

    return {"anomalib": anomalib.cli.cli.main, "anogen": anomalib_anogen.cli.main}


def _child(  # pragma: no cover - runs in the fork
    main, argv: list[str], cwd: str, log: str, err: str | None, env: dict[str, str] | None
) -> None:
    code = 1
    try:
        if env is not None:  # the caller's environment, as a new process of the caller would get it
            os.environ.clear()
            os.environ.update(env)
        descriptor = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(descriptor, 1)
        os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644) if err else descriptor, 2)
        os.chdir(cwd)
        sys.argv = argv
        if argv[0] == "anomalib":  # what the plugin hook does when the `anomalib` script imports anomalib.cli
            from anomalib_anogen.arguments import install_cli_error_hook

            install_cli_error_hook()
        try:
            result = main()  # as the console script: sys.exit(main())
            code = result if isinstance(result, int) else 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:
        sys.excepthook(*sys.exc_info())  # as the interpreter reports an uncaught error (the plugin's hook included)
    finally:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # as multiprocessing's fork children end: no parent exit handlers in the child


def _wait(pid: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return -signal.SIGKILL
        time.sleep(0.05)


def serve() -> None:
    """Answer requests from stdin until it closes."""
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # stray prints of the imports must not mix with the replies
    mains = _mains()
    replies.write(json.dumps({"ready": True}) + "\n")
    replies.flush()
    for line in sys.stdin:
        request = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            argv = request["argv"]
            _child(mains[argv[0]], argv, request["cwd"], request["log"], request.get("err"), request.get("env"))
        replies.write(json.dumps({"returncode": _wait(pid, request["timeout"])}) + "\n")
        replies.flush()


class CliServer:
    """The client: ``run(["anomalib", "train", ...], cwd)`` gives a :class:`subprocess.CompletedProcess`."""

    commands = ("anomalib", "anogen")

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.env = dict(os.environ if env is None else env)  # every command runs with this environment
        self.process = subprocess.Popen(
            [sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=self.env
        )
        self._read()

    def _read(self) -> dict:
        stream: IO[str] = self.process.stdout  # type: ignore[assignment]
        line = stream.readline()
        if not line:
            msg = f"the CLI server ended (exit code {self.process.wait()}); its stderr is in the test output"
            raise RuntimeError(msg)
        return json.loads(line)

    def run(
        self,
        argv: list[str],
        cwd: Path,
        log: Path,
        timeout: float = 600,
        err: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess:
        """Run one command in a fresh fork; stdout holds its stdout, and its stderr too unless ``err`` is given.

        ``env``: the command's environment (default: the server's). Only what modules read at run time follows
        it; what they read once at import is the server's.
        """
        request = {"argv": argv, "cwd": str(cwd), "log": str(log), "timeout": timeout, "err": err and str(err)}
        request["env"] = env
        self.process.stdin.write(json.dumps(request) + "\n")  # type: ignore[union-attr]
        self.process.stdin.flush()  # type: ignore[union-attr]
        returncode = self._read()["returncode"]
        stderr = err.read_text(errors="replace") if err else ""
        return subprocess.CompletedProcess(argv, returncode, log.read_text(errors="replace"), stderr)

    def close(self) -> None:
        """End the server."""
        self.process.stdin.close()  # type: ignore[union-attr]
        self.process.wait(timeout=60)


if __name__ == "__main__":
    serve()
