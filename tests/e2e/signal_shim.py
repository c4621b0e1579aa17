"""Test-only Axolotl plugin: a real signal to the training process at an exact step, or during one save.

``SAVEFIX_SIGNAL_AT=STEP:SIGNAL[:RANK][:POINT]`` (unset: the plugin does nothing, so the same config
trains normally on the next run). SIGNAL is a name (``SIGTERM``, ``SIGINT``, ``SIGUSR1``); RANK the
one rank that gets it (``*`` or absent: every rank); POINT where:

``step``  at ``on_step_end`` of optimizer step STEP (the default), before any later callback runs
``save``  while ``checkpoint-STEP`` is written: right after its ``optimizer.pt`` is written

The signal is sent with ``os.kill(os.getpid(), SIG)`` after a line ``[signal_shim] SIGNAL ...`` is
flushed: it lands where it says, no sleep, no race. A process that handles the signal goes on; one
that does not dies of it, as it would of a scheduler's notice. Registered in every rank. Never
shipped; used by tests/e2e/test_preemption_notice.py.
"""

import os
import signal
import sys
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
    if point not in ("step", "save"):
        raise ValueError(f"SAVEFIX_SIGNAL_AT: unknown point {point!r}")
    return int(step), signal.Signals[name], None if rank is None else int(rank), point


def _send(sig: signal.Signals, what: str) -> None:
    print(f"[signal_shim] {sig.name} {what} (rank {os.environ.get('RANK', '0')})", file=sys.stderr, flush=True)
    os.kill(os.getpid(), sig)


class _AtStep(TrainerCallback):
    def __init__(self, step: int, sig: signal.Signals) -> None:
        self.step, self.sig = step, sig

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            _send(self.sig, f"at the end of step {self.step}")
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
        mine = self._mine()
        if mine is None or mine[2] != "step":
            return []
        return [_AtStep(mine[0], mine[1])]
