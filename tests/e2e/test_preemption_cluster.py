"""Preemption notices as clusters deliver them (issue 30): to every process of the job, and at an eval.

SLURM (a requeue, ``scancel``, ``--signal``) and Kubernetes signal every process of the job, Axolotl's
DataLoader workers too (``dataloader_num_workers`` defaults to 1 per process). The signal here is sent
to the run's whole process group by a separate process (tests/e2e/signal_shim.py, point ``group``),
as a scheduler's is: torch's worker handler treats a SIGTERM from its own parent as "exit quietly",
so a signal from the trainer itself would not show the fault.

Each case: the patched run must save the step in flight complete, say so truly, exit 143, and the
same command must resume there and end with the exact schedule; stock beside. More shapes (two
workers, every ``save_strategy``, a long eval, a worker fault, PID 1, accelerate's launcher):
tests/e2e/test_signals.py (``nox -s signals``).
"""

from __future__ import annotations

import json
import re

import harness
import pytest
from signal_shim import read_step_log
from test_preemption import assert_complete
from test_preemption_notice import ENV, MARKER, SIGTERM, _config, check_preempted, check_resumed, random_step, report

pytestmark = [pytest.mark.e2e, pytest.mark.preemption]

PENDING = "savefix_pending_eval.json"


def group_signal_run(e2e_root, name: str, *, plugin: bool = True, workers: int | None = None, **extra):
    """A run whose process group gets SIGTERM at a random off-schedule step; (config, step, status, log)."""
    step = random_step(1, "cluster")
    if workers is not None:
        extra["dataloader_num_workers"] = workers
    config = _config(e2e_root, name, plugin=plugin, **extra)
    code, log = harness.run_cli_raw(config, env={**ENV, "SAVEFIX_SIGNAL_AT": f"{step}:SIGTERM:*:group"}, log_name="first.log")
    assert f"[signal_shim] SIGTERM at the end of step {step} to the process group" in log, log[-3000:]
    return config, step, code, log


def test_sigterm_to_the_whole_process_group_with_axolotls_default_dataloader_worker(e2e_root):
    """The reported crash: SIGTERM reaches the DataLoader worker too; the notice save must still happen."""
    config, step, code, first = group_signal_run(e2e_root, "cluster-default-workers")
    assert "is killed by signal" not in first, first[-3000:]  # the worker lived: it ignored the notice
    folder = check_preempted(config, code, first, step)
    assert f"preempted by SIGTERM at step {step}: checkpoint-{step} saved (complete)" in first
    assert json.loads((folder / MARKER).read_text())["global_step"] == step
    code, second = harness.run_cli_raw(config, env=ENV, log_name="second.log")
    assert code == 0, second[-3000:]
    check_resumed(config, second, step)
    report("process group SIGTERM, default worker", signalled=step, saved=step, lost=0, status=SIGTERM)


def test_stock_beside_the_process_group_sigterm_dies_and_loses_the_steps_since_its_last_checkpoint(e2e_root):
    config, step, code, first = group_signal_run(e2e_root, "cluster-default-workers-stock", plugin=False)
    assert code == -15, first[-3000:]  # the trainer itself dies of the signal: nothing saved at the step
    out = harness.output_dir(config)
    kept = sorted(int(p.name.split("-")[1]) for p in out.glob("checkpoint-*"))
    assert kept and kept[-1] < step
    report("stock, process group SIGTERM", signalled=step, saved="nothing", resumes_from=kept[-1], lost=step - kept[-1])


BEST = {
    "saves_per_epoch": None,
    "save_strategy": "best",
    "val_set_size": 0.1,
    "eval_strategy": "steps",
    "eval_steps": 5,
    "metric_for_best_model": "eval_loss",
    "greater_is_better": True,  # the loss falls: only the first eval is a "best", the one at step 20 is not
}


def notice_at_an_eval_step(e2e_root, name: str, extra: dict, step: int = 20):
    """SIGTERM to the process group at the end of ``step`` (an eval step), then the same command; both logs."""
    config = _config(e2e_root, name, plugin=True, **extra)
    steps_log = config.parent / "steps.log"
    env = {**ENV, "SAVEFIX_STEP_LOG": str(steps_log)}
    code, first = harness.run_cli_raw(config, env={**env, "SAVEFIX_SIGNAL_AT": f"{step}:SIGTERM:*:group"}, log_name="first.log")
    assert code == SIGTERM, first[-3000:]
    first_steps, first_evals = read_step_log(steps_log)
    steps_log.unlink()
    code, second = harness.run_cli_raw(config, env=env, log_name="second.log")
    assert code == 0, second[-3000:]
    second_steps, second_evals = read_step_log(steps_log)
    return config, first, second, (first_steps, first_evals), (second_steps, second_evals)


STRATEGIES = {
    "best": BEST,
    "steps": {**BEST, "save_strategy": "steps", "save_steps": 15},  # 20 is not a scheduled save
    "epoch": {**BEST, "save_strategy": "epoch"},
    "no": {**BEST, "save_strategy": "no"},
}


def check_notice_at_an_eval_step(e2e_root, strategy: str, step: int = 20) -> None:
    """Whatever ``save_strategy`` and the eval decide, the step in flight is saved, the exit line is true,
    and the resumed run evaluates that step (its eval was skipped to save first), once."""
    config, first, second, (steps1, evals1), (steps2, evals2) = notice_at_an_eval_step(
        e2e_root, f"cluster-{strategy}", STRATEGIES[strategy], step
    )
    out = harness.output_dir(config)
    folder = out / f"checkpoint-{step}"
    assert f"preempted by SIGTERM at step {step}: checkpoint-{step} saved (complete)" in first, first[-3000:]
    assert steps1 == list(range(1, step + 1))
    assert step not in evals1 and evals1[-1] == step - 5  # saved first: the eval of the stop step did not run
    assert re.search(rf"resume from checkpoint at \S*checkpoint-{step}\b", second), second[-3000:]
    assert f"resumed at global_step {step}: evaluating it again" in second
    assert steps2 == list(range(step + 1, steps2[-1] + 1)) and steps2[-1] > step  # every step once, none twice
    assert evals2[0] == step and evals2.count(step) == 1  # step 20 evaluated once, by the resumed run, first
    if strategy in ("best", "no"):  # no later checkpoint supersedes it: the preemption checkpoint stays (user guide)
        assert folder.is_dir() and (folder / MARKER).is_file()
        assert_complete(folder, step)
    else:
        assert not folder.exists()  # removed once a later checkpoint was complete
    report(f"save_strategy {strategy}, notice at eval step {step}", signalled=step, saved=step, lost=0, status=SIGTERM)


def test_save_strategy_best_a_notice_at_an_eval_step_that_is_not_a_best_saves_the_step(e2e_root):
    """Transformers sets should_save from the eval's metric under ``best`` (after evaluating): the notice save
    used to be dropped while the exit line said saved. Here the notice saves first."""
    check_notice_at_an_eval_step(e2e_root, "best")
