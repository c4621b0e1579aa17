"""Test-only Axolotl plugin: one line per optimizer step to ``OUTPUT_DIR/step_log.txt``, on rank 0. Never shipped.

A test watching a job it does not run (tests/e2e/test_slurm.py: a SLURM job) reads it to act at a
chosen step and to tell, afterwards, which steps each run trained. Lines, appended across runs::

    [step_log] begin pid 1234 restart 0        at each train begin ($SLURM_RESTART_COUNT, 0 unset)
    [step_log] step 17 t 1796302291.25         at each on_step_end (time.time(), seconds)
    [step_log] end step 30                     at train end (a run resumed at its last step trains none)

Each line is written and flushed at once, so a process killed right after a step has logged it.

``SAVEFIX_STEP_SLEEP=S``: sleep S seconds after each step, in the first run of a job only
(``$SLURM_RESTART_COUNT`` unset or 0), on every rank: the tiny model trains 30 steps in about
5 s, too fast for a notice that SLURM times to 30 s; the runs after a restart go at full speed.
"""

import os
import time
from pathlib import Path

from axolotl.integrations.base import BasePlugin
from transformers import TrainerCallback

FILE = "step_log.txt"


def _append(args, line: str) -> None:
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    with (Path(args.output_dir) / FILE).open("a") as f:
        f.write(line + "\n")


class _StepLogCallback(TrainerCallback):
    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            _append(args, f"[step_log] begin pid {os.getpid()} restart {os.environ.get('SLURM_RESTART_COUNT', '0')}")
        return control

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            _append(args, f"[step_log] step {state.global_step} t {time.time():.2f}")
        if os.environ.get("SLURM_RESTART_COUNT", "0") == "0":
            time.sleep(float(os.environ.get("SAVEFIX_STEP_SLEEP", "0")))
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            _append(args, f"[step_log] end step {state.global_step}")
        return control


class StepLog(BasePlugin):
    def add_callbacks_post_trainer(self, cfg, trainer):  # noqa: ARG002
        return [_StepLogCallback()]
