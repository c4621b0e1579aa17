"""The user guide's sbatch recipe on a real SLURM: requeued from outside, at the time limit, under torchrun.

Needs a running cluster whose ``SLURM_CONF`` is in the environment: ``nox -s slurm`` installs
Debian's slurm-wlm and munge where missing and starts one (ci/slurm.py); without it every case
skips, saying so. The batch script is the guide's own (docs/user-guide.md, the ``#!/bin/bash``
block with ``#SBATCH --requeue``), written out unchanged; the test adds only sbatch options on
the command line (output file, job name; ``--time``/``--signal`` for the time-limit case) and,
for torchrun, the guide's torchrun line in place of its ``srun python`` line, at 2 processes.

Each job trains with Axolotl's default DataLoader workers (``dataloader_num_workers`` unset),
so SLURM's SIGTERM reaches them too. Each case runs patched (the plugin line) and stock beside it
(the same job without it), and must end ``COMPLETED`` after its restart(s); patched, every
restart resumes from the step in flight (0 steps lost) and the scheduled checkpoints are kept
exactly. The step of the outside requeue is drawn from a seeded generator
(``SAVEFIX_SLURM_SEED``, default 30) and printed; ``SAVEFIX_SLURM_REPEAT`` (default 1) repeats
the patched requeue case with the next draws (``nox -s slurm -- --repeat 10``; stock once). Each case prints one
``[slurm]`` line: step signalled, step resumed from, steps lost, restarts, final state, wall time.

Evidence: the disk (checkpoints, tests/e2e/step_log.py's per-step lines), ``scontrol show job``
(``JobState``, ``Restarts``, ``ExitCode``: kept ``MinJobAge`` = 600 s after the end) and the
cluster's ``jobcomp/filetxt`` lines (one per end of a run: ``REQUEUED``, ``COMPLETED``...):
there is no accounting storage, so no ``sacct``.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import time
from pathlib import Path

import harness
import pytest
import yaml
from test_preemption import assert_complete
from test_preemption_notice import CASE, expected, losses

pytestmark = [pytest.mark.e2e, pytest.mark.slurm]

HERE = Path(__file__).parent
GUIDE = HERE.parent.parent / "docs" / "user-guide.md"
SEED = int(os.environ.get("SAVEFIX_SLURM_SEED", "30"))
REPEAT = int(os.environ.get("SAVEFIX_SLURM_REPEAT", "1"))
MARKER = "savefix_preemption.json"
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


def _cluster() -> None:
    if not os.environ.get("SLURM_CONF"):
        pytest.skip("no SLURM cluster: run `nox -s slurm` (it installs and starts one; SLURM_CONF names it)")
    done = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
    if "UP" not in done.stdout:
        pytest.skip(f"SLURM_CONF={os.environ['SLURM_CONF']}: slurmctld does not answer ({done.stdout.strip()})")


# --- the guide's recipe ----------------------------------------------------------------------------------


def guide_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", GUIDE.read_text(), re.S)


def guide_script() -> str:
    """The guide's batch script: its one ```bash block that starts ``#!/bin/bash`` and asks ``--requeue``."""
    found = [b for b in guide_blocks() if b.startswith("#!/bin/bash\n") and "#SBATCH --requeue" in b]
    assert len(found) == 1, f"docs/user-guide.md: {len(found)} sbatch scripts (#!/bin/bash + #SBATCH --requeue)"
    assert "srun python -m axolotl.cli.train config.yml" in found[0]
    return found[0]


def guide_torchrun_script(world: int) -> str:
    """The script with the guide's torchrun line (its own ```bash block) for its srun line, ``world`` processes."""
    lines = [b.strip() for b in guide_blocks() if b.startswith("srun torchrun ")]
    assert len(lines) == 1, "docs/user-guide.md: no (or several) `srun torchrun` line"
    line, n = re.subn(r"--nproc_per_node \d+", f"--nproc_per_node {world}", lines[0])
    assert n == 1, lines[0]
    script = guide_script()
    srun = next(s for s in script.splitlines() if s.startswith("srun python -m axolotl.cli.train"))
    return script.replace(srun, line)


# --- one job -----------------------------------------------------------------------------------------------


def scontrol(*args: str) -> str:
    done = subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"scontrol {' '.join(args)}: {done.stderr}"
    return done.stdout


def job_fields(job: str) -> dict[str, str]:
    return dict(re.findall(r"(\w+)=(\S*)", scontrol("show", "job", job)))


def completions(job: str) -> list[str]:
    """The job's ``JobState`` at each end of a run, from jobcomp/filetxt (JobCompLoc in SLURM_CONF)."""
    conf = Path(os.environ["SLURM_CONF"]).read_text()
    path = Path(re.search(r"^JobCompLoc=(\S+)", conf, re.M).group(1))
    lines = path.read_text().splitlines() if path.exists() else []
    return [dict(re.findall(r"(\w+)=(\S*)", li))["JobState"] for li in lines if re.search(rf"\bJobId={job}\b", li)]


def step_runs(output_dir: Path) -> list[dict]:
    """tests/e2e/step_log.py's file, per run (its ``begin`` lines): ``steps`` [(step, time)], ``end`` step or None."""
    path = output_dir / "step_log.txt"
    found: list[dict] = []
    for line in path.read_text().splitlines() if path.exists() else []:
        if line.startswith("[step_log] begin"):
            found.append({"steps": [], "end": None})
        elif line.startswith("[step_log] step ") and found:
            _, _, step, _, t = line.split()
            found[-1]["steps"].append((int(step), float(t)))
        elif line.startswith("[step_log] end step ") and found:
            found[-1]["end"] = int(line.split()[-1])
    return found


class Job:
    """One sbatch job of the guide's script in ``workdir`` (next to its config.yml), and what it did."""

    def __init__(self, config: Path, script: str, *sbatch: str, env: dict) -> None:
        self.workdir = config.parent
        self.out = harness.output_dir(config)
        (self.workdir / "job.sh").write_text(script)
        self.log = self.workdir / "slurm.out"
        self.t0 = time.monotonic()
        cmd = ["sbatch", "--parsable", f"--output={self.log}", f"--job-name={self.workdir.name}", *sbatch, "job.sh"]
        done = subprocess.run(cmd, cwd=self.workdir, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        self.id = done.stdout.strip().split(";")[0]

    def fields(self) -> dict[str, str]:
        return job_fields(self.id)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for_step(self, step: int, timeout: float = 600) -> int:
        """Until the current run has trained ``step`` (or more): the last step it logged."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            runs = step_runs(self.out)
            if runs and runs[-1]["steps"] and runs[-1]["steps"][-1][0] >= step:
                return runs[-1]["steps"][-1][0]
            state = self.fields()["JobState"]
            assert state in ("PENDING", "RUNNING", "CONFIGURING"), (
                f"job {self.id} {state} before step {step}:\n{self.text()[-3000:]}"
            )
            time.sleep(0.05)
        raise AssertionError(f"job {self.id}: no step {step} within {timeout} s:\n{self.text()[-3000:]}")

    def __enter__(self) -> Job:
        return self

    def __exit__(self, *exc) -> None:
        """A job still queued or running when the test ends (a failure) is cancelled."""
        if self.fields()["JobState"] not in TERMINAL:
            subprocess.run(["scancel", self.id], timeout=60)

    def finish(self, timeout: float = 900, max_restarts: int = 4) -> dict[str, str]:
        """Until the job ends; each time it is requeued, start it at once (SLURM holds it ~2 min otherwise)."""
        deadline = time.monotonic() + timeout
        started: set[str] = set()
        while time.monotonic() < deadline:
            fields = self.fields()
            if fields["JobState"] in TERMINAL:
                self.wall = time.monotonic() - self.t0
                return fields
            restarts = int(fields.get("Restarts", "0"))
            assert restarts <= max_restarts, f"job {self.id}: {restarts} restarts:\n{self.text()[-3000:]}"
            if fields["JobState"] == "PENDING" and fields.get("Restarts", "0") != "0" and fields["Restarts"] not in started:
                # not in the second of the requeue: slurmd then refuses the new run's credential
                # ("Job credential revoked": the job ends FAILED), which SLURM's ~2 min hold avoids
                time.sleep(3)
                scontrol("update", f"jobid={self.id}", "StartTime=now")
                started.add(fields["Restarts"])
            time.sleep(0.5)
        raise AssertionError(f"job {self.id} still {self.fields()['JobState']} after {timeout} s:\n{self.text()[-3000:]}")


# --- the cases ---------------------------------------------------------------------------------------------


REQUEUE_SLEEP = 0.2  # (a), (c): the first run slowed a little, so the requeue lands at the step drawn


def _config(root: Path, name: str, *, plugin: bool, shims=()) -> Path:
    config = harness.write_config(CASE, root / name, plugin=plugin)
    cfg = yaml.safe_load(config.read_text())
    cfg["plugins"] = [*shims, "step_log.StepLog", *(cfg.get("plugins") or [])]
    cfg["auto_resume_from_checkpoints"] = True
    assert "dataloader_num_workers" not in cfg  # Axolotl's default workers: SLURM signals them too
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return config


def job_env(**extra: str) -> dict:
    """The job's environment (sbatch exports it): this venv's python first on PATH, Axolotl offline, the shims."""
    return harness.cli_env({"PYTHONPATH": str(HERE), **extra})


def random_step(label: str, world: int = 1) -> int:
    saved, _ = expected(world)
    rng = random.Random(f"{SEED}:{label}")
    step = rng.choice([s for s in range(saved[0] + 1, saved[-2]) if s not in saved])
    print(f"[slurm] {label}: SAVEFIX_SLURM_SEED={SEED} -> requeue at step {step}")
    return step


def outcome(job: Job, fields: dict[str, str], signalled: int | None = None) -> dict:
    """What the job did, from the disk and SLURM: per restart the last step trained and the step resumed from."""
    runs = step_runs(job.out)
    assert len(runs) >= 2, f"job {job.id}: {len(runs)} training run(s):\n{job.text()[-3000:]}"
    # the last step each run trained (or the one it resumed at, if it trained none); where the next resumed
    last, resumed = [], []
    for run in runs:
        start = run["steps"][0][0] - 1 if run["steps"] else run["end"]
        if last:
            resumed.append(start)
        last.append(run["steps"][-1][0] if run["steps"] else start)
    last = last[:-1]
    lost = [a - b if None not in (a, b) else None for a, b in zip(last, resumed, strict=True)]
    return {
        "signalled": signalled if signalled is not None else last,
        "last_trained": last,
        "resumed_from": resumed,
        "lost": lost,
        "restarts": int(fields["Restarts"]),
        "state": fields["JobState"],
        "exit": fields["ExitCode"],
        "ends": completions(job.id),
        "wall_s": round(job.wall, 1),
    }


def report(case: str, numbers: dict) -> None:
    print(f"\n[slurm] {case}: " + ", ".join(f"{k} {v}" for k, v in numbers.items()))


def check_patched(job: Job, numbers: dict, world: int = 1) -> None:
    """COMPLETED after its restarts; each resumed where the last run stopped; the exact schedule on disk."""
    text = job.text()
    assert numbers["state"] == "COMPLETED" and numbers["exit"] == "0:0", text[-4000:]
    assert numbers["restarts"] == len(numbers["resumed_from"]) >= 1
    # jobcomp writes one line per end of a run; a requeued run's line says the state it went to (PENDING)
    assert numbers["ends"] == ["PENDING"] * numbers["restarts"] + ["COMPLETED"], numbers
    assert numbers["lost"] == [0] * numbers["restarts"], text[-4000:]
    for step in numbers["resumed_from"]:
        assert f"every rank stops after step {step}" in text
        assert f"resumed at step {step} from checkpoint-{step}" in text
    saved, kept = expected(world)
    observed = harness.observe(job.out, "")
    assert observed.kept == kept
    assert not list(job.out.glob("incomplete-*"))
    for step in kept:
        assert_complete(job.out / f"checkpoint-{step}", step, world)
        assert not (job.out / f"checkpoint-{step}" / MARKER).exists()
    assert sorted(losses(observed.log_history)) == list(range(1, observed.max_steps + 1))


def check_stock(job: Job, numbers: dict, world: int = 1) -> None:
    """Stock beside: COMPLETED too, but each restart went back to its last scheduled checkpoint."""
    assert numbers["state"] == "COMPLETED", job.text()[-4000:]
    stock_saved, _ = expected(world, stock=True)
    for last, back in zip(numbers["last_trained"], numbers["resumed_from"], strict=True):
        assert back == max([s for s in stock_saved if s <= last], default=0)


@pytest.fixture(scope="module")
def slurm_root(e2e_root):
    _cluster()
    return e2e_root


# the patched job REPEAT times (the next seeded draws), stock beside once
REQUEUES = [pytest.param(True, r, id=f"patched-{r}") for r in range(REPEAT)] + [pytest.param(False, 0, id="stock")]


@pytest.mark.parametrize(("plugin", "repeat"), REQUEUES)
def test_requeue_from_outside_resumes_from_the_step_in_flight(plugin, repeat, slurm_root):
    """(a) ``scontrol requeue JOBID`` at a random step: SIGTERM to every process of the job, KillWait, restart."""
    label = f"requeue-{repeat}"
    step = random_step(label)
    name = f"slurm-{label}-{'patched' if plugin else 'stock'}"
    with Job(_config(slurm_root, name, plugin=plugin), guide_script(), env=job_env(SAVEFIX_STEP_SLEEP=str(REQUEUE_SLEEP))) as job:
        signalled = job.wait_for_step(step)
        scontrol("requeue", job.id)
        numbers = outcome(job, job.finish(), signalled)
    report(f"requeue from outside, {'patched' if plugin else 'stock'}", numbers)
    (check_patched if plugin else check_stock)(job, numbers)
    if not plugin:
        assert sum(numbers["lost"]) > 0


# The time-limit path. SLURM checks limits every 30 s and sends --signal up to 30 s before its time:
# --time=4 --signal=TERM@90 lands 120 to 150 s after the start. Axolotl's startup took 15 to 90 s here
# (the machine loaded: 80 s of imports seen; the first job prepares the data set), so the first run trains 30 steps of
# TIME_SLEEP s (180 s, cut by the notice: the sleep costs nothing past it) and the notice comes
# mid-training. The runs after a restart go at full speed (~5 s of training); one that is still
# starting when its own notice comes is requeued again (0 steps lost either way).
TIME, LEAD, TIME_SLEEP = 4, 90, 6.0


@pytest.mark.parametrize("plugin", [True, False], ids=["patched", "stock"])
def test_time_limit_signal_requeues_itself_and_resumes(plugin, slurm_root):
    """(b) ``--time`` with ``--signal=TERM@N``: the guide's recipe requeues on the 143 and the next run resumes."""
    name = f"slurm-timelimit-{'patched' if plugin else 'stock'}"
    opts = (f"--time={TIME}", f"--signal=TERM@{LEAD}")
    config = _config(slurm_root, name, plugin=plugin)
    with Job(config, guide_script(), *opts, env=job_env(SAVEFIX_STEP_SLEEP=str(TIME_SLEEP))) as job:
        numbers = outcome(job, job.finish())
    report(f"time limit, --time={TIME} --signal=TERM@{LEAD}, {'patched' if plugin else 'stock'}", numbers)
    (check_patched if plugin else check_stock)(job, numbers)


WORLD = 2


@pytest.mark.parametrize("plugin", [True, False], ids=["patched", "stock"])
def test_torchrun_job_requeued_from_outside(plugin, slurm_root):
    """(c) the guide's ``srun torchrun`` line, 2 CPU processes (gloo), requeued from outside at a random step."""
    step = random_step("torchrun", WORLD)
    name = f"slurm-torchrun-{'patched' if plugin else 'stock'}"
    config = _config(slurm_root, name, plugin=plugin, shims=["cpu_ddp_shim.CpuDdpShim"])
    env = job_env(ACCELERATE_USE_CPU="true", SAVEFIX_STEP_SLEEP=str(REQUEUE_SLEEP))
    with Job(config, guide_torchrun_script(WORLD), env=env) as job:
        signalled = job.wait_for_step(step)
        scontrol("requeue", job.id)
        numbers = outcome(job, job.finish(), signalled)
    report(f"torchrun {WORLD} processes, requeue from outside, {'patched' if plugin else 'stock'}", numbers)
    (check_patched if plugin else check_stock)(job, numbers, WORLD)
    if not plugin:
        assert sum(numbers["lost"]) > 0
