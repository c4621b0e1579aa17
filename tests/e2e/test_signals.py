"""Preemption notices in the shapes clusters deliver them, beyond tests/e2e/test_preemption_cluster.py.

``nox -s signals`` (about 12 minutes here; not in README's main command). Every case is a real run;
stock beside where stock has a behaviour:

* SIGTERM to the process group with ``dataloader_num_workers: 2``;
* a notice at an eval step for ``save_strategy`` steps, epoch and no (best: the cluster file);
* a notice during a long evaluation: the run exits within one eval batch plus the save, and the
  resumed run evaluates that step;
* a DataLoader worker that dies without a notice still fails the run loudly, as in stock;
* the trainer as PID 1 of its own PID namespace (a Kubernetes pod's ``exec python ...``);
* ``axolotl train``'s default launcher (accelerate) and ``--launcher python``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import harness
import pytest
from signal_shim import read_step_log
from test_preemption import assert_complete
from test_preemption_cluster import check_notice_at_an_eval_step, group_signal_run
from test_preemption_notice import (
    ENV,
    SIGTERM,
    _config,
    check_preempted,
    check_resumed,
    expected,
    python_launch,
    report,
)

pytestmark = [pytest.mark.e2e, pytest.mark.signals]


def test_sigterm_to_the_process_group_with_two_dataloader_workers(e2e_root):
    config, step, code, first = group_signal_run(e2e_root, "signals-two-workers", workers=2)
    assert "is killed by signal" not in first, first[-3000:]
    check_preempted(config, code, first, step)
    code, second = harness.run_cli_raw(config, env=ENV, log_name="second.log")
    assert code == 0, second[-3000:]
    check_resumed(config, second, step)
    report("process group SIGTERM, 2 workers", signalled=step, saved=step, lost=0, status=SIGTERM)


@pytest.mark.parametrize("strategy", ["steps", "epoch", "no"])
def test_a_notice_at_an_eval_step_saves_the_step_in_flight(strategy, e2e_root):
    check_notice_at_an_eval_step(e2e_root, strategy)


EVAL_SLEEP = 2.0  # seconds added to every eval batch
LONG_EVAL = {
    "saves_per_epoch": None,
    "save_strategy": "steps",
    "save_steps": 5,
    "val_set_size": 0.5,  # 30 eval samples: 15 eval batches of 2, 30 s an eval
    "eval_strategy": "steps",
    "eval_steps": 10,
}


def test_a_notice_during_a_long_evaluation_saves_within_one_eval_batch_and_the_resume_evaluates_the_step(e2e_root):
    config = _config(e2e_root, "signals-long-eval", plugin=True, **LONG_EVAL)
    out = harness.output_dir(config)
    steps_log = config.parent / "steps.log"
    env = {**ENV, "SAVEFIX_STEP_LOG": str(steps_log), "SAVEFIX_EVAL_SLEEP": str(EVAL_SLEEP)}
    sent_at = config.parent / "sent"
    first_env = {**env, "SAVEFIX_SIGNAL_AT": "10:SIGTERM:*:eval3", "SAVEFIX_SENT_AT": str(sent_at)}
    code, first = harness.run_cli_raw(config, env=first_env, log_name="first.log")
    exited = time.time()
    assert code == SIGTERM, first[-3000:]
    took = exited - float(sent_at.read_text())
    rest_of_eval = (15 - 3) * EVAL_SLEEP  # what stock's order would still have spent evaluating
    assert "at eval batch 3 of the eval at step 10" in first
    assert "preempted by SIGTERM at step 10: checkpoint-10 saved (complete)" in first, first[-3000:]
    assert took < rest_of_eval / 2, took  # one eval batch, the save and the teardown; not the rest of the eval
    folder = out / "checkpoint-10"
    assert_complete(folder, 10)
    steps1, evals1 = read_step_log(steps_log)
    assert steps1 == list(range(1, 11)) and 10 not in evals1
    steps_log.unlink()
    code, second = harness.run_cli_raw(config, env={**env}, log_name="second.log")
    assert code == 0, second[-3000:]
    steps2, evals2 = read_step_log(steps_log)
    assert evals2[0] == 10 and evals2.count(10) == 1  # the cut eval, done again first, once
    assert steps2 == list(range(11, steps2[-1] + 1))
    observed = harness.observe(out, second)
    assert observed.saved == [s for s in range(5, steps2[-1] + 1, 5) if s > 10] + ([steps2[-1]] if steps2[-1] % 5 else [])
    report("notice at eval batch 3 of 15", signalled="eval of step 10", saved=10, lost=0, status=SIGTERM,
           signal_to_exit_s=round(took, 1), rest_of_eval_s=rest_of_eval)  # fmt: skip


@pytest.mark.parametrize("plugin", [True, False], ids=["patched", "stock"])
def test_a_dataloader_worker_killed_without_a_notice_still_fails_the_run_loudly(plugin, e2e_root):
    config = _config(e2e_root, f"signals-worker-fault-{plugin}", plugin=plugin)
    code, log = harness.run_cli_raw(config, env={**ENV, "SAVEFIX_SIGNAL_AT": "12:SIGKILL:*:worker"}, log_name="first.log")
    assert "SIGKILL to 1 DataLoader worker(s) at step 12" in log, log[-3000:]
    assert code == 1, log[-3000:]
    if plugin:  # torch's own error, as the run's last words (stock's log here ends without it: status 1 alone)
        assert re.search(r"DataLoader worker \(pid \d+\) is killed by signal: Killed", log), log[-3000:]
    assert "preempted by" not in log
    report(f"{'patched' if plugin else 'stock'}: worker SIGKILLed, no notice", status=code, outcome="fails loudly")


def _unshare() -> str | None:
    tool = shutil.which("unshare")
    if tool is None:
        return "unshare (util-linux) is not installed"
    probe = subprocess.run([tool, "--pid", "--fork", "--mount-proc", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"a PID namespace is not permitted here ({probe.stderr.strip()}): run as root"
    return None


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in open(f"/proc/{pid}/task/{pid}/children").read().split()]
    except OSError:
        return []


@pytest.mark.parametrize("plugin", [True, False], ids=["patched", "stock"])
def test_the_trainer_as_pid_1_of_its_own_pid_namespace(plugin, e2e_root):
    """A pod's ``exec python ...``: PID 1 ignores a signal it has no handler for (stock runs on until SIGKILL)."""
    why = _unshare()
    if why:
        pytest.skip(why)
    saved, _ = expected(stock=not plugin)
    config = _config(e2e_root, f"signals-pid1-{plugin}", plugin=plugin)
    out = harness.output_dir(config)
    log_path = config.parent / "first.log"
    cmd = ["unshare", "--pid", "--fork", "--mount-proc", *python_launch(config)]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env={**harness.cli_env(ENV)}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            watched = out / f"checkpoint-{saved[1]}" / "trainer_state.json"
            while proc.poll() is None and not watched.exists():
                time.sleep(0.05)
            trainer = _children(proc.pid)
            assert len(trainer) == 1, trainer
            os.kill(trainer[0], signal.SIGTERM)  # to PID 1 of the namespace, from outside it, as the kubelet does
            code = proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    first = log_path.read_text()
    if plugin:
        stop = int(re.findall(r"every rank stops after step (\d+)", first)[0])
        assert code == SIGTERM, first[-3000:]
        check_preempted(config, code, first, stop)
        report("PID 1, patched", signalled=f"~{stop}", saved=stop, lost=0, status=code)
    else:
        assert code == 0, first[-3000:]  # the SIGTERM was ignored: the run went on to its end
        assert "every rank stops" not in first
        kept = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
        assert kept[-1] == saved[-1]
        outcome = "signal ignored, ran on (a pod is SIGKILLed at its grace's end)"
        report("PID 1, stock", signalled=f"after checkpoint-{saved[1]}", outcome=outcome, status=code)


def _axolotl_train(config, extra: list[str], env: dict) -> tuple[int, str]:
    """``axolotl train CONFIG *extra`` in a session of its own; waits for all its processes (the trainer outlives accelerate)."""
    log_path = config.parent / "first.log"
    cmd = [str(harness.Path(sys.executable).parent / "axolotl"), "train", str(config), *extra]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=harness.cli_env(env), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        code = proc.wait(timeout=900)
        deadline = time.time() + 300
        while time.time() < deadline:  # an orphaned trainer is still in the session (its process group)
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
    return code, log_path.read_text()


@pytest.mark.parametrize("launcher", ["accelerate", "python"])
def test_axolotl_train_launchers_and_a_process_group_sigterm(launcher, e2e_root):
    """accelerate's launcher dies of the notice at once (it has no handler) while the trainer saves: under a
    scheduler the job step ends with it and the save is killed; ``--launcher python`` is the trainer itself."""
    step = 17
    config = _config(e2e_root, f"signals-launcher-{launcher}", plugin=True)
    extra = [] if launcher == "accelerate" else ["--launcher", "python"]
    code, log = _axolotl_train(config, extra, {**ENV, "SAVEFIX_SIGNAL_AT": f"{step}:SIGTERM:*:group"})
    assert f"preempted by SIGTERM at step {step}: checkpoint-{step} saved (complete)" in log, log[-3000:]
    assert_complete(harness.output_dir(config) / f"checkpoint-{step}", step)
    if launcher == "accelerate":
        assert code == -signal.SIGTERM, log[-3000:]  # the launcher died first; the trainer finished the save alone
    else:
        assert code == SIGTERM, log[-3000:]
    report(f"axolotl train, launcher {launcher}", signalled=step, saved=step, launcher_status=code)


def _torchrun_session(config, env: dict, log_name: str) -> tuple[int, str]:
    """2-process torchrun in a session of its own (a process group signal must not reach this test)."""
    log_path = config.parent / log_name
    launch = harness.torchrun(config, 2)
    full = harness.cli_env({**ENV, "ACCELERATE_USE_CPU": "true", **env})
    with open(log_path, "w") as log:
        proc = subprocess.Popen(launch, env=full, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout=900)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    return code, log_path.read_text()


def test_ddp_a_notice_during_an_eval_stops_every_rank_at_the_same_eval_batch(e2e_root):
    """2 processes (gloo) under torchrun; SIGTERM to the whole group (torchrun forwards it again: one notice)."""
    extra = {**LONG_EVAL, "save_steps": 3, "eval_steps": 4}  # 8 steps; 8 eval batches per rank
    config = _config(e2e_root, "signals-ddp-eval", plugin=True, shims=["cpu_ddp_shim.CpuDdpShim"], **extra)
    out = harness.output_dir(config)
    steps_log = config.parent / "steps.log"
    env = {"SAVEFIX_STEP_LOG": str(steps_log), "SAVEFIX_EVAL_SLEEP": str(EVAL_SLEEP)}
    code, first = _torchrun_session(config, {**env, "SAVEFIX_SIGNAL_AT": "4:SIGTERM:0:eval3"}, "first.log")
    assert "at eval batch 3 of the eval at step 4" in first, first[-4000:]
    assert f"exitcode  : {SIGTERM}" in first or code == SIGTERM, first[-4000:]
    assert "preempted by SIGTERM at step 4: checkpoint-4 saved (complete)" in first, first[-4000:]
    assert_complete(out / "checkpoint-4", 4, world=2)
    steps_log.unlink()
    code, second = _torchrun_session(config, env, "second.log")
    assert code == 0, second[-4000:]
    steps2, evals2 = read_step_log(steps_log)
    assert evals2[0] == 4 and evals2.count(4) == 1
    assert steps2 == list(range(5, steps2[-1] + 1))
    report("DDP, notice at eval batch 3", signalled="eval of step 4", saved=4, lost=0, torchrun_status=code)
