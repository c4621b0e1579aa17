"""Signal handling for preemption notices: the handler only records; DataLoader workers ignore the notice.

No Axolotl, no Transformers. :func:`install` sets a handler for the notice signals that records the
first one (:func:`received`); the same signal again within :data:`REPEAT_SECONDS` is the same notice
forwarded (srun, torchrun, a process-group signal); another signal, or the grace deadline, exits at
once with :func:`exit_status`. A DataLoader worker forked while the notice is armed ignores it
(:func:`quiet_worker`: SLURM and Kubernetes signal every process of a job), and at interpreter exit
:func:`end_quiet_workers` ends such workers, so a failing run never waits on them.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

from ..rules.keys import PREEMPTION_GRACE as GRACE_KEY

REPEAT_SECONDS = 3.0  # the same signal again within this is the same notice (srun and torchrun forward it)
DEFAULT_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def exit_status(signum: int) -> int:
    """The exit status of a preempted process: ``128 + signum`` (143 for SIGTERM), as a shell reports a signal death."""
    return 128 + int(signum)


class _Notice:
    signum = 0  # the first signal received, 0 for none
    received_at = 0.0  # time.monotonic() of the first signal
    grace: float | None = None
    previous: dict[int, Any] = {}
    timer: threading.Timer | None = None
    exit_hook = False  # end_quiet_workers registered with atexit


_notice = _Notice()


def _say(text: str) -> None:
    """Write one line to stderr from a signal handler or a timer thread (no logging locks)."""
    rank = os.environ.get("RANK", "0")
    os.write(2, f"[axolotl_savefix] WARNING: (rank {rank}) {text}\n".encode())


def _exit_now(signum: int, why: str) -> None:
    status = exit_status(signum)
    _say(f"{why}: exiting now with status {status} (preempted); a checkpoint cut by this exit is set aside at the resume")
    os._exit(status)


def _handler(signum: int, frame: Any) -> None:  # noqa: ARG001 - signal's handler signature
    if _notice.signum:
        if signum == _notice.signum and time.monotonic() - _notice.received_at < REPEAT_SECONDS:
            return  # the same notice, forwarded (srun, torchrun, a process group signal)
        _exit_now(signum, f"a second signal ({signal.Signals(signum).name}) during the preemption save")
    _notice.signum = signum
    _notice.received_at = time.monotonic()
    if _notice.grace:
        grace = _notice.grace
        timer = threading.Timer(grace, _exit_now, (signum, f"{GRACE_KEY} ({grace:g} s) passed since {signal.Signals(signum).name}"))
        timer.daemon = True
        timer.start()
        _notice.timer = timer


def install(signals: list[signal.Signals], grace: float | None) -> None:
    """Record ``signals`` from now on (replacing the handlers there were, kept for :func:`uninstall`).

    Also registers, once per process, :func:`end_quiet_workers` to run at interpreter exit.
    """
    _notice.signum, _notice.grace, _notice.received_at = 0, grace, 0.0
    for sig in signals:
        previous = signal.signal(sig, _handler)
        _notice.previous.setdefault(int(sig), previous)
    if not _notice.exit_hook:
        import atexit
        import multiprocessing.util  # noqa: F401 - its exit function first, so that ours runs before it (LIFO)

        atexit.register(end_quiet_workers)
        _notice.exit_hook = True


def end_quiet_workers(timeout: float = 1.0) -> int:
    """At interpreter exit: end the daemonic multiprocessing children (DataLoader workers); how many were killed.

    multiprocessing's own exit function sends each daemonic child SIGTERM, then joins every
    child without a timeout. A DataLoader worker forked while the notice was armed ignores
    SIGTERM (:func:`quiet_worker`), so a run that fails with its iterator still alive (an
    exception out of ``trainer.train``: a peer rank's death in a collective) would wait on
    it for ever, where stock exits with the error. Here each daemonic child gets SIGTERM as
    multiprocessing would send it, ``timeout`` seconds (at most) to end, then SIGKILL. torch's
    SIGCHLD handler, which would raise "DataLoader worker ... is killed by signal" for a worker
    ended by anything but SIGTERM, is set back to the default first: the process is exiting.
    """
    import multiprocessing

    children = [p for p in multiprocessing.active_children() if p.daemon]
    for child in children:
        child.terminate()
    deadline = time.monotonic() + timeout
    for child in children:
        child.join(max(0.0, deadline - time.monotonic()))
    alive = [child for child in children if child.is_alive()]
    if alive and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in alive:
        child.kill()
        child.join(timeout)
    return len(alive)


def uninstall() -> None:
    """Give each signal back the handler it had before :func:`install`; stop a grace timer."""
    for sig, previous in _notice.previous.items():
        signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
    _notice.previous = {}
    if _notice.timer is not None:
        _notice.timer.cancel()
        _notice.timer = None


def received() -> int:
    """The signal number this process received (0 for none)."""
    return _notice.signum


def armed() -> list[int]:
    """The signals :func:`install` handles in this process (inherited by a forked DataLoader worker)."""
    return list(_notice.previous)


def quiet_worker() -> None:
    """In a DataLoader worker: ignore the notice signals, so the worker lives until the main process stops it."""
    for sig in armed():
        signal.signal(sig, signal.SIG_IGN)


def stop_workers(timeout: float = 2.0) -> int:
    """Kill the multiprocessing children (DataLoader workers) still alive ``timeout`` seconds from now; how many."""
    import multiprocessing

    deadline = time.monotonic() + timeout
    left = 0
    for child in multiprocessing.active_children():
        child.join(max(0.0, deadline - time.monotonic()))
        if child.is_alive():
            child.kill()
            left += 1
    return left


def received_at() -> float:
    """``time.monotonic()`` of the first signal this process received (0.0 for none)."""
    return _notice.received_at


def note(signum: int) -> None:
    """Record ``signum`` as the notice where this process received none (another rank did: the run stops for it)."""
    _notice.signum = _notice.signum or signum


handler = _handler  # the handler install() sets, for code that must put it back (Transformers' JIT checkpoint)
