"""One Axolotl import shared by many training processes: a fork server for the e2e harness.

A tiny ``python -m axolotl.cli.train CONFIG`` spends most of its CPU importing
torch, Transformers, TRL and Axolotl (measured here: about 30 s of the 66 s of
CPU one reported-case run took on a loaded machine). The server below imports
them once, then forks one child per run. Each child is a real process of its
own (its own pid, signals, exit status, memory): it takes the run's
environment and ``sys.path``, sends its stdout and stderr to the run's log
file, and runs ``axolotl.cli.train`` as ``python -m`` would. A SIGKILL or
SIGTERM reaches it as it would reach ``axolotl train``'s worker.

What differs from ``axolotl train CONFIG``: no ``accelerate launch`` wrapper
(single process, the same as ``axolotl train --launcher python``), and modules
imported by the server read their import-time environment once: the server
starts with the harness' offline settings (``fixture.OFFLINE``) and nothing
else a run could change. Runs that need a launcher (torchrun) or the real
``axolotl`` entry point (tests/e2e/test_cli.py) do not come here.

Protocol (one request at a time, over a Unix socket): the client sends one
JSON line ``{"argv", "env", "sys_path", "log"}``; the server answers the
child's pid on one line, then, when it ends, its exit status on another
(``-N`` for a signal, as ``subprocess`` reports it).
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# what `python -m axolotl.cli.train` imports before it trains, and what it imports lazily later
PRELOAD = (
    "torch",
    "transformers",
    "transformers.trainer",
    "datasets",
    "accelerate",
    "peft",
    "trl",
    "axolotl.cli.train",
    "axolotl.cli.config",
    "axolotl.train",
    "axolotl.common.datasets",
    "axolotl.core.builders",
    "axolotl.loaders",
    "axolotl.utils.callbacks",
)


def _child(request: dict) -> None:
    """In the forked child: become the run, never return."""
    code = 1
    try:
        os.setsid()  # its own process group: a timeout kills the run and whatever it started
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        sys.stdout.reconfigure(line_buffering=True)
        sys.stderr.reconfigure(line_buffering=True)
        os.environ.clear()
        os.environ.update(request["env"])
        sys.path[:0] = request["sys_path"]
        sys.argv = request["argv"]
        import runpy

        try:
            runpy.run_module("axolotl.cli.train", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if not isinstance(exc.code, int) and exc.code is not None:
                print(exc.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - what python -m prints and exits 1 with
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _reattach_submodules() -> None:
    """Bind each loaded submodule to its package as it is in ``sys.modules`` now.

    Transformers 5.0 (Axolotl 0.14.0) replaces ``sys.modules["transformers"]`` while
    ``transformers.trainer`` imports, so ``transformers.modelcard``, imported before
    that, hangs off the old module object and Axolotl's ``setup_model_card`` fails
    with ``AttributeError`` in every forked run. In ``python -m axolotl.cli.train``
    the import order differs and the attribute is there; this restores that.

    Only packages that are such lazy modules, and only names that are missing and that their
    lazy map does not export as an object (``transformers.convert_slow_tokenizer`` resolves to a
    function there): a package that deleted a submodule's name (``torch.optim``) keeps it deleted.
    """
    for name, module in list(sys.modules.items()):
        package, _, child = name.rpartition(".")
        parent = sys.modules.get(package) if package else None
        if parent is None or module is None or type(parent).__name__ != "_LazyModule":
            continue
        exported = vars(parent).get("_class_to_module") or {}
        if child not in vars(parent) and child not in exported:
            setattr(parent, child, module)


def serve(path: str) -> None:
    """The server: import once, then fork a child per request."""
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - a module this release lacks: the child imports what it needs
            print(f"[zygote] not preloaded: {name}: {exc}", file=sys.stderr, flush=True)
    _reattach_submodules()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    print("ready", flush=True)
    while True:
        conn, _ = server.accept()
        with conn, conn.makefile("rw") as stream:
            line = stream.readline()
            if not line:
                continue
            pid = os.fork()
            if pid == 0:
                server.close()
                conn.close()
                _child(json.loads(line))
            stream.write(f"{pid}\n")
            stream.flush()
            _, status = os.waitpid(pid, 0)
            code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            stream.write(f"{code}\n")
            stream.flush()


class Zygote:
    """The client: starts the server on first use (one per test process), then runs configs through it."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.dir = tempfile.mkdtemp(prefix="savefix-zygote-")
        self.path = os.path.join(self.dir, "socket")

    def start(self, env: dict[str, str]) -> None:
        """Start the server now (imports done) unless it runs: a caller that times runs starts it first."""
        if self.proc is None or self.proc.poll() is not None:
            self._start(env)

    def _start(self, env: dict[str, str]) -> None:
        """``env``: the harness' base environment (offline); what a run adds is set in its child only."""
        self.proc = subprocess.Popen(
            [sys.executable, __file__, self.path],
            env=env,
            stdout=subprocess.PIPE,
            stderr=open(os.path.join(self.dir, "server.log"), "w"),  # noqa: SIM115 - the server's life
            text=True,
        )
        printed = []  # what an import printed to stdout before the server was ready (Axolotl 0.21.0's do)
        for line in self.proc.stdout or ():
            if line.strip() == "ready":
                break
            printed.append(line)
        else:
            raise RuntimeError(
                f"the harness' fork server did not start: {''.join(printed)[-1000:]}"
                f"{Path(self.dir, 'server.log').read_text()[-2000:]}"
            )
        atexit.register(self.close)

    def close(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def run(
        self, argv: list[str], base_env: dict[str, str], env: dict[str, str], log: Path, timeout: float, sys_path: list[str]
    ) -> int:
        """Run ``python -m axolotl.cli.train *argv[1:]`` as a forked child with ``env``; its exit status (``-N``: signal N)."""
        self.start(base_env)
        request = {"argv": argv, "env": env, "sys_path": sys_path, "log": str(log)}
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(self.path)
            stream = conn.makefile("rw")
            stream.write(json.dumps(request) + "\n")
            stream.flush()
            pid = int(stream.readline())
            conn.settimeout(timeout)
            started = time.monotonic()
            try:
                status = stream.readline()
            except TimeoutError:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:  # it ended just now
                    pass
                conn.settimeout(None)
                conn.makefile("r").readline()  # the server reaps it (a timed-out stream cannot be read again)
                raise subprocess.TimeoutExpired(argv, time.monotonic() - started) from None
            return int(status)


_ZYGOTE: Zygote | None = None


def zygote() -> Zygote:
    global _ZYGOTE
    if _ZYGOTE is None:
        _ZYGOTE = Zygote()
    return _ZYGOTE


if __name__ == "__main__":
    serve(sys.argv[1])
