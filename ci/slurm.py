"""A real SLURM on this machine for `nox -s slurm`: install, configure, start, stop (standard library only).

One ``slurmctld``, one ``slurmd`` (this host, one node, partition ``debug``) and a ``munged`` of
their own, as root, the recipe of ``../shared/SLURM.md`` with everything private:

- Debian's ``slurm-wlm`` and ``munge`` are installed with apt where their commands are missing
  (``apt-get update`` first); :class:`Unavailable` where the machine cannot (not root, no apt,
  the install failed), for the session to skip with that sentence.
- The configuration, munge key and socket, state, spool, pid and log files live in one folder
  (``.nox/slurm`` by default): an existing ``/etc/slurm`` or system munge is never read or
  touched. Clients find this cluster through ``SLURM_CONF`` (:meth:`Cluster.env`), which
  ``sbatch`` exports into the job, so ``srun`` and ``scontrol`` inside a job reach it too. Its
  ports are free ones picked at start, so another SLURM on the machine does not collide.
- No accounting storage (no ``slurmdbd``): each end of a job, a requeue included, is one line of
  ``jobcomp/filetxt`` (:meth:`Cluster.completions`), and ``scontrol show job`` keeps a finished
  job for ``MinJobAge`` (600 s here).
- The daemons run in the foreground as children of this process; :meth:`Cluster.stop` cancels
  what is still queued, waits for its processes to end (``KillWait`` + 15 s), then ends the
  daemons by pid (SIGTERM, then SIGKILL after 15 s). Use it as a context manager.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

COMMANDS = ("slurmctld", "slurmd", "sbatch", "srun", "scontrol", "munged")
PACKAGES = ["slurm-wlm", "munge"]
# Debian's KillWait default, written out: requeue/scancel send SIGTERM, then SIGKILL this many seconds later
KILL_WAIT_S = 30


class Unavailable(RuntimeError):
    """This machine cannot run the cluster (not root, no apt, the packages would not install); says why."""


def missing() -> list[str]:
    return [c for c in COMMANDS if shutil.which(c) is None and not Path("/usr/sbin", c).exists()]


def install(log=print) -> None:
    """apt-get install slurm-wlm munge where a command is missing; :class:`Unavailable` where that cannot work."""
    if not missing():
        return
    if os.geteuid() != 0:
        raise Unavailable(f"SLURM is not installed ({', '.join(missing())} missing) and this is not root: cannot apt-get it")
    if shutil.which("apt-get") is None:
        raise Unavailable(f"SLURM is not installed ({', '.join(missing())} missing) and there is no apt-get here")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]):
        log(" ".join(cmd))
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise Unavailable(f"`{' '.join(cmd)}` failed ({done.returncode}): {done.stderr.strip()[-600:]}")
    if missing():
        raise Unavailable(f"installed {PACKAGES} but {', '.join(missing())} still missing")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _bin(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


@dataclass
class Cluster:
    """The private cluster under ``root``; :meth:`start` brings it up, :meth:`stop` takes it down."""

    root: Path
    node: str = field(default_factory=lambda: socket.gethostname().split(".")[0])
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def socket(self) -> Path:
        return self.root / "munge" / "munge.socket"

    @property
    def jobcomp(self) -> Path:
        return self.root / "log" / "jobcomp.txt"

    def env(self, base: dict | None = None) -> dict:
        """``base`` (default: this process's environment) with ``SLURM_CONF`` pointing at this cluster."""
        return {**(os.environ if base is None else base), "SLURM_CONF": str(self.conf)}

    def _write(self) -> None:
        for sub in ("munge", "state", "spool", "log", "run"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.root / "munge", 0o700)
        key = self.root / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        cpus = os.cpu_count() or 1
        self.conf.write_text(
            f"""# written by ci/slurm.py for nox -s slurm; private to {self.root}
ClusterName=savefix
SlurmctldHost={self.node}
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.socket}
StateSaveLocation={self.root / "state"}
SlurmdSpoolDir={self.root / "spool"}
SlurmctldPidFile={self.root / "run" / "slurmctld.pid"}
SlurmdPidFile={self.root / "run" / "slurmd.pid"}
SlurmctldLogFile={self.root / "log" / "slurmctld.log"}
SlurmdLogFile={self.root / "log" / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
KillWait={KILL_WAIT_S}
MinJobAge=600
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={self.jobcomp}
NodeName={self.node} CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
"""
        )

    def _spawn(self, name: str, *args: str) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")  # noqa: SIM115 - the daemon's own stdout/stderr
        self.procs[name] = subprocess.Popen([_bin(name), *args], stdout=log, stderr=subprocess.STDOUT, env=self.env())

    def scontrol(self, *args: str, check: bool = True) -> str:
        done = subprocess.run(["scontrol", *args], env=self.env(), capture_output=True, text=True, timeout=60)
        if check and done.returncode != 0:
            raise RuntimeError(f"scontrol {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def start(self, timeout: float = 90.0) -> Cluster:
        """Write the configuration, start munged, slurmctld, slurmd; wait until the node is idle."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._write()
        munge = self.root / "munge"
        self._spawn(
            "munged", "--foreground", "--force", f"--socket={self.socket}", f"--key-file={munge / 'munge.key'}",
            f"--pid-file={munge / 'munged.pid'}", f"--log-file={self.root / 'log' / 'munged.log'}",
            f"--seed-file={munge / 'munged.seed'}",
        )  # fmt: skip
        self._wait(lambda: self.socket.exists(), timeout, "munged's socket")
        self.jobcomp.unlink(missing_ok=True)  # job ids start again at 1
        self._spawn("slurmctld", "-D", "-c", "-f", str(self.conf))  # -c: no state from an earlier run
        self._wait(lambda: self.scontrol("ping", check=False).count("UP") > 0, timeout, "slurmctld to answer")
        self._spawn("slurmd", "-D", "-f", str(self.conf), "-N", self.node)
        self._wait(lambda: self.node_state() == "IDLE", timeout, f"node {self.node} idle")
        return self

    def node_state(self) -> str:
        found = re.search(r"State=(\S+)", self.scontrol("show", "node", self.node, check=False))
        return found.group(1) if found else ""

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited while waiting for {what}: see {self.root / 'log'}")
            if ready():
                return
            time.sleep(0.5)
        raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}: see {self.root / 'log'}")

    def completions(self) -> list[dict[str, str]]:
        """jobcomp/filetxt's lines, one per end of a job run (``JobState=REQUEUED``, ``COMPLETED`` ...), as dicts."""
        if not self.jobcomp.exists():
            return []
        return [dict(re.findall(r"(\w+)=(\S*)", line)) for line in self.jobcomp.read_text().splitlines() if line.strip()]

    def stop(self) -> None:
        """Cancel every job still here, then end the daemons this object started, by pid."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            subprocess.run(["scancel", "--full", "--partition=debug"], env=self.env(), capture_output=True, timeout=60)
            deadline = time.monotonic() + KILL_WAIT_S + 15
            while (
                time.monotonic() < deadline
                and subprocess.run(
                    ["squeue", "-h", "-t", "R,CG"], env=self.env(), capture_output=True, text=True, timeout=60
                ).stdout.strip()
            ):
                time.sleep(1)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def run(session, python: str, root: Path) -> None:
    """`nox -s slurm`'s body: install where missing (or skip, saying why), start the cluster, run tests/e2e/test_slurm.py.

    ``python``: the shared Axolotl venv's. ``--repeat N`` among the session's arguments repeats the patched
    requeue case; the others go to pytest. nox is imported by the caller; this module stays standard library.
    """
    from environments import venv_env

    args, repeat = list(session.posargs), "1"
    if "--repeat" in args:
        at = args.index("--repeat")
        repeat = args[at + 1]
        del args[at : at + 2]
    try:
        install(session.log)
    except Unavailable as why:
        session.skip(f"slurm: {why}")
    with Cluster(root / ".nox" / "slurm") as cluster:
        session.log(f"SLURM up: SLURM_CONF={cluster.conf}, node {cluster.node} idle")
        env = cluster.env(venv_env(python, {"SAVEFIX_SLURM_REPEAT": repeat}))
        test, work = "tests/e2e/test_slurm.py", root / ".nox" / "slurm-work"  # kept for reading after the run
        pytest = [python, "-m", "pytest", "-p", "no:anyio", test, "-s", f"--basetemp={work}", *args]
        session.run(*pytest, env=env, external=True)
