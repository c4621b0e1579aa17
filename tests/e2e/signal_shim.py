"""Test-only Axolotl plugin: a real signal to the training process at an exact step, or during one save.

``SAVEFIX_SIGNAL_AT=STEP:SIGNAL[:RANK][:POINT]`` (unset: the plugin does nothing, so the same config
trains normally on the next run). SIGNAL is a name (``SIGTERM``, ``SIGINT``, ``SIGUSR1``); RANK the
one rank that gets it (``*`` or absent: every rank); POINT where:

``step``  at ``on_step_end`` of optimizer step STEP (the default), before any later callback runs
``save``  while ``checkpoint-STEP`` is written: right after its ``optimizer.pt`` is written
``group`` at ``on_step_end`` of step STEP, to the whole process group (``os.killpg``): the training
          process and its DataLoader workers at once, as SLURM and Kubernetes signal every process
``evalB`` during the evaluation of step STEP, at its B-th batch (``on_prediction_step``), to the
          whole process group (``eval3``: the third batch)
``worker`` at ``on_step_end`` of step STEP, to this process's DataLoader workers only (a worker
          fault, no notice: use SIGKILL)

A process group signal is sent by a separate process (as a scheduler's is: torch's worker handler
treats a SIGTERM from its own parent as "exit quietly"), and the shim waits until it was sent.
``SAVEFIX_EVAL_SLEEP=SECONDS`` makes every eval batch take that much longer (a long evaluation).
``SAVEFIX_SENT_AT=PATH`` writes the ``time.time()`` of the signal's sending to PATH.
``SAVEFIX_STEP_LOG=PATH`` appends ``step N`` at every optimizer step's end and ``eval N`` at every
evaluation to PATH (what each run of a resumed pair trained and evaluated, whatever it saved).

The signal is sent with ``os.kill(os.getpid(), SIG)`` after a line ``[signal_shim] SIGNAL ...`` is
flushed: it lands where it says, no sleep, no race. A process that handles the signal goes on; one
that does not dies of it, as it would of a scheduler's notice. Registered in every rank. Never
shipped; used by tests/e2e/test_preemption_notice.py.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from axolotl.integrations.base import BasePlugin
from transformers import TrainerCallback


def spec():
    value = os.environ.get("SAVEFIX_SIGNAL_AT")
    if not value:
        return None
    step, name, *rest = value.split(":")
    rank = rest[0] if rest and rest[0] not in ("", "*") else None
    point = rest[1] if len(rest) > 1 else "step"
    if point not in ("step", "save", "group", "worker") and not (point.startswith("eval") and point[4:].isdigit()):
        raise ValueError(f"SAVEFIX_SIGNAL_AT: unknown point {point!r}")
    return int(step), signal.Signals[name], None if rank is None else int(rank), point


def _send(sig: signal.Signals, what: str, group: bool = False) -> None:
    if os.environ.get("SAVEFIX_SENT_AT"):  # when the signal left, for a test that times the exit
        Path(os.environ["SAVEFIX_SENT_AT"]).write_text(repr(time.time()))
    print(f"[signal_shim] {sig.name} {what} (rank {os.environ.get('RANK', '0')})", file=sys.stderr, flush=True)
    if group:  # the test starts every run in a session of its own; the sender is not the workers' parent
        code = f"import os; os.killpg({os.getpgrp()}, {int(sig)})"
        subprocess.run([sys.executable, "-S", "-c", code], start_new_session=True, check=True)
    else:
        os.kill(os.getpid(), sig)


class _AtStep(TrainerCallback):
    def __init__(self, step: int, sig: signal.Signals, group: bool = False) -> None:
        self.step, self.sig, self.group = step, sig, group

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            _send(self.sig, f"at the end of step {self.step}" + (" to the process group" if self.group else ""), self.group)
        return control


class _KillWorkers(TrainerCallback):
    def __init__(self, step: int, sig: signal.Signals) -> None:
        self.step, self.sig = step, sig

    def on_step_end(self, args, state, control, **kwargs):
        import multiprocessing

        if state.global_step == self.step:
            workers = multiprocessing.active_children()
            what = f"{self.sig.name} to {len(workers)} DataLoader worker(s) at step {self.step}"
            print(f"[signal_shim] {what}", file=sys.stderr, flush=True)
            for child in workers:
                os.kill(child.pid, self.sig)
        return control


class _StepLog(TrainerCallback):
    def __init__(self, path: str) -> None:
        self.path = path

    def _write(self, text: str) -> None:
        if int(os.environ.get("RANK", "0")) == 0:
            with open(self.path, "a") as f:
                f.write(text + "\n")

    def on_step_end(self, args, state, control, **kwargs):
        self._write(f"step {state.global_step}")
        return control

    def on_evaluate(self, args, state, control, **kwargs):
        self._write(f"eval {state.global_step}")
        return control


def read_step_log(path) -> tuple[list[int], list[int]]:
    """(steps trained, steps evaluated) from a ``SAVEFIX_STEP_LOG`` file, in order."""
    lines = Path(path).read_text().split() if Path(path).exists() else []
    pairs = list(zip(lines[::2], (int(n) for n in lines[1::2]), strict=True))
    return [n for k, n in pairs if k == "step"], [n for k, n in pairs if k == "eval"]


class _SlowEval(TrainerCallback):
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_prediction_step(self, args, state, control, **kwargs):
        time.sleep(self.seconds)
        return control


class _InEval(TrainerCallback):
    def __init__(self, step: int, sig: signal.Signals, batch: int) -> None:
        self.step, self.sig, self.batch, self.seen = step, sig, batch, 0

    def on_prediction_step(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            self.seen += 1
            if self.seen == self.batch:
                _send(self.sig, f"at eval batch {self.batch} of the eval at step {self.step} to the process group", True)
        return control


class SignalShim(BasePlugin):
    def _mine(self):
        parsed = spec()
        if parsed is None:
            return None
        step, sig, rank, point = parsed
        if rank is not None and int(os.environ.get("RANK", "0")) != rank:
            return None
        return step, sig, point

    def register(self, cfg):  # noqa: ARG002
        mine = self._mine()
        if mine is None or mine[2] != "save":
            return
        step, sig, _ = mine
        original_save = torch.save

        def save(obj, f, *args, **kwargs):
            result = original_save(obj, f, *args, **kwargs)
            p = Path(str(f)) if isinstance(f, (str, os.PathLike)) else None
            if p is not None and p.parent.name == f"checkpoint-{step}" and p.name == "optimizer.pt":
                _send(sig, f"while writing checkpoint-{step} (after optimizer.pt)")
            return result

        torch.save = save

    def add_callbacks_post_trainer(self, cfg, trainer):  # noqa: ARG002
        slow = [_SlowEval(float(os.environ["SAVEFIX_EVAL_SLEEP"]))] if os.environ.get("SAVEFIX_EVAL_SLEEP") else []
        if os.environ.get("SAVEFIX_STEP_LOG"):
            slow.append(_StepLog(os.environ["SAVEFIX_STEP_LOG"]))
        mine = self._mine()
        if mine is None or mine[2] == "save":
            return slow
        step, sig, point = mine
        if point.startswith("eval"):
            return [*slow, _InEval(step, sig, int(point[4:]))]
        if point == "worker":
            return [*slow, _KillWorkers(step, sig)]
        return [*slow, _AtStep(step, sig, group=point == "group")]
