"""Preemption notices: SIGTERM (SIGINT, a chosen signal) saves a resumable checkpoint where the run is, then exits.

Stock Axolotl (``axolotl.train.setup_signal_handler``, 0.13 to 0.21) leaves SIGTERM unhandled (the
process dies, everything since the last scheduled checkpoint is lost), and on SIGINT, on local rank 0
only, writes the weights alone into ``output_dir`` (no optimizer, scheduler, RNG or
``trainer_state.json``: nothing to resume from, and ``output_dir`` then looks like a finished run) and
exits with status 0, so a scheduler counts the interrupted run as a success.

Targets (``_infra.targets``; the signal side is ``_infra.signals``, the agreement ``_infra.collectives``):

* ``setup_signal_handler`` (replaced: stock's SIGINT handler is never installed, so no
  weights-only files land in ``output_dir``): installs, on every rank, a handler for SIGTERM, SIGINT
  and ``savefix_preemption_signal`` that only records the signal. Where handlers cannot be installed
  (``use_ray``, or not the main thread), stock's function runs unchanged.
* ``execute_training``: adds :class:`PreemptionCallback` (last, so it sees the schedule's
  decision for the step), and after training exits with :func:`exit_status` when the run was preempted.
* the rotation (``_infra.hooks.add_rotation``): a preemption checkpoint is never counted by rotation.
* ``validate_config``: checks ``savefix_preemption_signal`` and ``savefix_preemption_grace`` and carries
  them past Axolotl's schema (:mod:`rules.keys`).

The rule: at the end of every optimizer step (and after every scheduled save) the ranks agree, with one
``all_reduce(MAX)`` of one integer (the signal number, 0 for none), whether a signal reached any of
them. If so, all stop at that step: Transformers saves ``checkpoint-<global_step>`` through its own
save path (``control.should_save``; rotation, the completeness rule and the FSDP/DeepSpeed layouts
hold), the process exits with status ``128 + signal number`` (143 for SIGTERM, 130 for SIGINT, 138
for SIGUSR1): "preempted, requeue me". A step that was already a scheduled save is not saved twice; a
signal that arrives during a scheduled save stops the run right after that save. A second signal, or
``savefix_preemption_grace`` seconds after the first, exits at once with the same status (a
checkpoint cut then is set aside at the resume by the completeness rule).

Signals as schedulers send them (issue 30):

* SLURM and Kubernetes signal every process of the job, the DataLoader workers too. torch's workers die
  of SIGTERM (``_set_worker_signal_handlers`` gives them a handler that re-raises it), and the main
  process then raises ``DataLoader worker ... is killed by signal``. Target
  ``torch.utils.data._utils.signal_handling._set_worker_signal_handlers`` (called first in every
  worker): once this process armed the notice, a worker ignores the notice signals and lives until
  the main process stops it, as after any epoch. Workers started with ``fork`` (Linux's default) only:
  a ``spawn``/``forkserver`` worker imports torch afresh. A worker that dies of anything else
  (SIGKILL, an exception) still fails the run loudly, as in stock. At the preemption exit, workers
  still alive after 2 s are killed, so the exit never waits on one.
* A launcher that forwards the notice (srun, torchrun) delivers it twice within milliseconds: the
  same signal again within ``_infra.signals.REPEAT_SECONDS`` of the first is the same notice. A signal after
  that (a person's second Ctrl-C) exits at once, as before.
* The step's evaluation never runs before the notice save: a notice agreed at a step whose eval is
  due saves first and skips that eval (so ``save_strategy: best`` cannot turn the save off), and a
  notice that arrives during an evaluation stops it at the next eval batch (every rank agrees at
  each batch). Either way the checkpoint records ``savefix_pending_eval.json``, and the resumed run evaluates
  that step again (``eval_on_start``, which the resume otherwise turns off).
* The exit line says ``saved`` only after the completeness rule found the checkpoint complete;
  otherwise it names what is missing and the checkpoint the next run resumes from.
* Transformers' own SIGTERM handler (``enable_jit_checkpoint``) is taken out when the run starts:
  one handler decides, and ours agrees across ranks and keeps the schedule.

The preemption checkpoint is extra to the schedule: it carries a record (``savefix_preemption.json``, written
before the save starts), rotation never counts it, and it is removed once a later checkpoint is
complete (at the next save, or at the end of training). The resumed run saves exactly the scheduled
steps still ahead (the per-epoch guard is rebuilt from the restored ``state.epoch``).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from .._infra import hooks, journal, signals
from .._infra.collectives import NoticeFlag, world
from .._infra.log import log_once
from .._infra.per_epoch import batches_per_epoch
from ..rules import checkpoints, keys, plan, records
from ..rules.records import PREEMPTION, eval_pending

NAME = "preemption"
exit_status = signals.exit_status


class EvalInterrupted(Exception):  # noqa: N818 - not an error: the notice stops the evaluation
    """Raised at an eval batch once every rank agreed on a notice; the training entry point saves and exits."""


def marked(output_dir: str | os.PathLike[str]) -> list[Path]:
    """The ``checkpoint-N`` folders of ``output_dir`` that were saved on a preemption notice, oldest first."""
    return [folder for folder in checkpoints.checkpoints(output_dir) if (folder / PREEMPTION).is_file()]


def _fresh_notice(folder: Path) -> bool:
    """Whether ``folder``'s preemption record says the notice save created the folder (it was not there when its run started)."""
    record = records.read_preemption(folder)
    return record is not None and record["fresh"]


def remove_superseded(output_dir: str | os.PathLike[str]) -> list[Path]:
    """Retire every preemption checkpoint older than the newest complete checkpoint; returns those deleted.

    A preemption checkpoint is this package's own extra save: once a later checkpoint is complete it is
    rotation's to remove. Deleted only when its record proves the notice save created the folder
    (``fresh``); otherwise (the folder was there before the run) its record is removed, and the folder
    is an ordinary checkpoint that ``save_total_limit`` counts, as stock would.
    """
    preempted = marked(output_dir)
    if not preempted:
        return []
    newest = checkpoints.newest_complete(output_dir)
    newest_step = checkpoints.step_of(newest) if newest is not None else None
    removed = []
    for folder in preempted:
        step = checkpoints.step_of(folder)
        if newest is None or newest_step is None or step is None or step >= newest_step:
            continue
        if _fresh_notice(folder):
            journal.delete_own(folder)
            removed.append(folder)
            log_once(
                f"preempt-removed:{folder}",
                f"removed {folder.name}, the preemption checkpoint: {newest.name} is complete"
                " (a preemption checkpoint is extra to the schedule and never counted by save_total_limit)",
            )
        else:
            (folder / PREEMPTION).unlink(missing_ok=True)  # its own record: the folder is an ordinary checkpoint again
            log_once(
                f"preempt-kept:{folder}",
                f"kept {folder.name}, a preemption checkpoint saved into a folder that was there before the run: "
                "it is now an ordinary checkpoint, counted by save_total_limit",
            )
    return removed


class PreemptionCallback(TrainerCallback):
    """Stops every rank at the same optimizer step once any rank received a preemption signal, saving there."""

    def __init__(self, cfg: Any, resume_from_checkpoint: str | None = None) -> None:
        self.cfg = cfg
        self.resume_from_checkpoint = resume_from_checkpoint
        self.stop_signal = 0  # agreed signal number: the run stops
        self.stop_step: int | None = None
        self.scheduled = False  # the stop step was a scheduled save anyway
        self._flag = NoticeFlag()  # one all_reduce(MAX) of one integer per step (_infra.collectives)
        self.saved_at: int | None = None  # the step of the last save seen (on_save)
        self.eval_cut = False  # the notice stopped or skipped the stop step's evaluation

    def agree(self, args: Any) -> int:
        """The largest signal number any rank received (0: none); one ``all_reduce(MAX)`` where world > 1."""
        return self._flag.agree(signals.received(), getattr(args, "device", None))

    def on_train_begin(self, args: Any, state: Any, control: Any, train_dataloader: Any = None, **kwargs: Any) -> Any:  # noqa: ARG002 - TrainerCallback's hook
        if not state.global_step or not self.resume_from_checkpoint:
            return control
        folder = Path(str(self.resume_from_checkpoint))
        why = "the newest complete checkpoint, a scheduled one"
        if (folder / PREEMPTION).is_file():
            record = records.read_preemption(folder)
            why = "a preemption checkpoint" + (f" ({record['signal']} at step {record['global_step']})" if record else "")
        ahead = ""
        settings = plan.Settings.from_config(self.cfg)
        batches = batches_per_epoch(train_dataloader)
        if not batches and settings.streamed:  # no length: Transformers' one epoch is the run
            batches = state.max_steps * args.gradient_accumulation_steps
        if batches and state.max_steps > 0:
            run_plan = plan.make_plan(settings, batches, state.max_steps)
            saved = run_plan.patched.saved or []
            ahead = f"; scheduled saves still ahead: {plan.steps_text([s for s in saved if s > state.global_step])}"
        log_once(f"preempt-resumed:{id(self)}", f"resumed at step {state.global_step} from {folder.name}, {why}{ahead}")
        if eval_pending(folder) and getattr(args, "eval_strategy", "no") not in ("no", None):
            args.eval_on_start = True  # Transformers evaluates right after on_train_begin, at the restored step
        return control

    def _mark(self, args: Any, state: Any, signum: int, *, scheduled: bool, eval_cut: bool) -> None:
        """Write the preemption marker (not for a scheduled save) and the pending eval record, before the save."""
        if not args.should_save:
            return
        folder = Path(args.output_dir) / f"{checkpoints.PREFIX}{state.global_step}"
        fresh = journal.is_fresh(folder)  # the folder was not there when the run started: the notice save makes it
        folder.mkdir(parents=True, exist_ok=True)
        name = signal.Signals(signum).name
        if not scheduled:
            records.write_preemption(folder, int(state.global_step), name, fresh)  # before the save: a cut save is still marked
        if eval_cut:
            records.write_pending_eval(folder, int(state.global_step), name)

    def _stop(self, signum: int, state: Any, control: Any, *, scheduled: bool) -> None:
        self.stop_signal, self.stop_step, self.scheduled = signum, state.global_step, scheduled
        control.should_training_stop = True
        name = signal.Signals(signum).name
        what = "the scheduled checkpoint just saved" if scheduled else f"checkpoint-{state.global_step}"
        log_once(
            f"preempt:{id(self)}",
            f"{name}: every rank stops after step {state.global_step}; {what} is the one to resume from; "
            f"exiting with status {exit_status(signum)} (128 + {signum}: preempted) once it is saved",
            logging.WARNING,
        )

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:  # noqa: ARG002 - TrainerCallback's hook
        if self.stop_signal:
            return control
        signum = self.agree(args)
        if not signum:
            return control
        scheduled = bool(control.should_save)  # this callback runs last: the schedule has decided
        # save first: the step's eval (due now) would delay the save by a whole evaluation, and with
        # save_strategy best Transformers sets should_save from the eval's metric, dropping the notice save
        self.eval_cut = bool(control.should_evaluate)
        control.should_evaluate = False
        self._mark(args, state, signum, scheduled=scheduled, eval_cut=self.eval_cut)
        control.should_save = True
        self._stop(signum, state, control, scheduled=scheduled)
        return control

    def on_prediction_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:  # noqa: ARG002 - TrainerCallback's hook
        """At each eval batch: a notice stops the evaluation (every rank at the same batch)."""
        if self.stop_signal or not state.global_step:
            return control
        signum = self.agree(args)
        if not signum:
            return control
        scheduled = bool(control.should_save)  # the eval precedes the step's scheduled save
        self.eval_cut = True
        self._mark(args, state, signum, scheduled=scheduled, eval_cut=True)
        self._stop(signum, state, control, scheduled=scheduled)
        raise EvalInterrupted(f"{signal.Signals(signum).name} during the evaluation of step {state.global_step}")

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:  # noqa: ARG002 - TrainerCallback's hook
        self.saved_at = state.global_step
        if self.stop_signal:
            return control
        signum = self.agree(args)  # a signal during a scheduled save: stop right after it
        if signum:
            self._stop(signum, state, control, scheduled=True)
        return control

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:  # noqa: ARG002 - TrainerCallback's hook
        import torch.distributed as dist

        if world() > 1:
            dist.barrier()  # every rank's part of the last checkpoint is written
        if args.should_save and not self.stop_signal:
            remove_superseded(args.output_dir)
        return control


def exit_line(signum: int, step: int | None, output_dir: str | os.PathLike[str], took: float | None) -> str:
    """The last line of a preempted run, true to the disk: ``saved`` only for a complete ``checkpoint-<step>``.

    Reads ``output_dir`` with the completeness rule (:func:`checkpoints.missing`); call it once every
    rank's part of the save is written.
    """
    name = signal.Signals(signum).name
    folder = Path(output_dir) / f"{checkpoints.PREFIX}{step}"
    since = f" {took:.1f} s after the signal reached this process;" if took is not None else ""
    status = f"exiting with status {exit_status(signum)} (128 + {signum})"
    lacks = checkpoints.missing(folder) if folder.is_dir() else [checkpoints.GONE]
    if not lacks:
        return (
            f"preempted by {name} at step {step}: {folder.name} saved (complete);{since} {status}. The same command "
            "resumes from it (auto_resume_from_checkpoints: true, or resume_from_checkpoint)."
        )
    newest = checkpoints.newest_complete(output_dir)
    back = f"resumes from {newest.name}" if newest is not None else "starts again from step 0 (no complete checkpoint)"
    return (
        f"preempted by {name} at step {step}: {folder.name} is NOT complete (lacks {', '.join(lacks)});{since} "
        f"{status}. The next run sets it aside and {back}."
    )


def _exit_preempted(callback: PreemptionCallback, args: Any) -> None:
    import torch.distributed as dist

    signum = callback.stop_signal
    took = time.monotonic() - signals.received_at() if signals.received_at() else None
    if args.should_save:  # the main process of the node that writes: every rank's part is written (barrier)
        log_once("preempt-exit", exit_line(signum, callback.stop_step, args.output_dir, took), logging.WARNING)
    # the save is over on every rank (barrier): a launcher's SIGTERM now (torchrun stops the other ranks once one
    # exits) must not turn 143 into a signal death during teardown; Python resets its handlers to the default at
    # finalization, an ignored signal stays ignored. A teardown that hangs is still SIGKILLed by the launcher.
    for sig in signals.armed():
        signal.signal(sig, signal.SIG_IGN)
    signals.stop_workers()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    raise SystemExit(exit_status(signum))


def save_after_eval_interrupted(trainer: Any) -> None:
    """The notice save after :class:`EvalInterrupted` unwound ``trainer.train``: Transformers' own save path.

    The step in flight was trained; only its evaluation was cut. Every rank raised at the same eval
    batch (the agreement), so every rank saves; a barrier then waits for every rank's part.
    """
    import torch.distributed as dist

    model = getattr(trainer, "model_wrapped", None) or trainer.model
    model.train()  # as after an evaluation that ran to its end
    trainer._save_checkpoint(model, trial=None)
    trainer.control = trainer.callback_handler.on_save(trainer.args, trainer.state, trainer.control)
    if world() > 1:
        dist.barrier()


def take_over_jit_checkpoint(trainer: Any) -> bool:
    """Take Transformers' ``enable_jit_checkpoint`` SIGTERM handler and callback out of ``trainer``; whether it was on.

    Both would answer the same SIGTERM: Transformers' saves without the ranks agreeing on a step and
    without the schedule, and puts its SIGTERM handler back at train end. One handler decides: this
    package's (installed by the patched ``setup_signal_handler``).
    """
    if not getattr(trainer.args, "enable_jit_checkpoint", False):
        return False
    for callback in list(trainer.callback_handler.callbacks):
        if type(callback).__name__ == "JITCheckpointCallback":
            manager = getattr(callback, "jit_manager", None)
            trainer.callback_handler.remove_callback(callback)
            if manager is not None and signal.getsignal(signal.SIGTERM) == getattr(manager, "_sigterm_handler", None):
                signal.signal(signal.SIGTERM, signals.handler if signals.armed() else signal.SIG_DFL)
    trainer.args.enable_jit_checkpoint = False
    log_once(
        "preempt-jit",
        "enable_jit_checkpoint: Transformers' SIGTERM checkpoint is off for this run; the plugin's preemption "
        "notice saves instead (every rank at the same step, a complete checkpoint, exit 143)",
        logging.WARNING,
    )
    return True


def rotation_limit(output_dir: str | os.PathLike[str], save_total_limit: int | None) -> int | None:
    """``save_total_limit`` for one rotation of ``output_dir``: preemption checkpoints still there are not counted.

    Removes the preemption checkpoints a later complete checkpoint superseded first.
    """
    remove_superseded(output_dir)
    extra = len(marked(output_dir))  # still there: the newest checkpoint is not complete yet
    if extra and save_total_limit is not None and save_total_limit > 0:
        return save_total_limit + extra
    return save_total_limit


def _setup_signal_handler(setup: Any, cfg: Any, model: Any, *args: Any, **kwargs: Any) -> Any:
    if cfg.get("use_ray") or threading.current_thread() is not threading.main_thread():
        return setup(cfg, model, *args, **kwargs)  # no signal handlers there: stock's behaviour
    extra = keys.parse_signal(cfg.get(keys.PREEMPTION_SIGNAL))
    chosen = list(signals.DEFAULT_SIGNALS) + ([extra] if extra is not None and extra not in signals.DEFAULT_SIGNALS else [])
    signals.install(chosen, keys.grace_seconds(cfg))
    names = ", ".join(s.name for s in chosen)
    log_once(
        "preempt-armed",
        f"preemption: {names} save a checkpoint at the step the run is in and exit 128 + the signal number",
    )
    return None


def _execute_training(execute: Any, cfg: Any, trainer: Any, resume_from_checkpoint: Any, *args: Any, **kwargs: Any) -> Any:
    take_over_jit_checkpoint(trainer)
    callback = PreemptionCallback(cfg, resume_from_checkpoint)
    trainer.add_callback(callback)  # last: it sees what the schedule decided for the step
    try:
        result = execute(cfg, trainer, resume_from_checkpoint, *args, **kwargs)
    except EvalInterrupted:
        save_after_eval_interrupted(trainer)  # every rank raised at the same eval batch
    except BaseException:
        signals.uninstall()
        raise
    if callback.stop_signal:
        # the handlers stay until every rank's save is over; then _exit_preempted ignores the notice signals
        signals.note(callback.stop_signal)
        _exit_preempted(callback, trainer.args)
    signals.uninstall()
    if signals.received():
        log_once(
            "preempt-late",
            f"{signal.Signals(signals.received()).name} came after the last step's save: training is complete; "
            "finishing the final save",
            logging.WARNING,
        )
    return result


def _worker_signal_handlers(set_worker_handlers: Any, *args: Any, **kwargs: Any) -> Any:
    result = set_worker_handlers(*args, **kwargs)  # torch's: SIGBUS, SIGSEGV, SIGFPE, SIGTERM re-raised
    signals.quiet_worker()  # only where this process armed the notice before forking the worker
    return result


def _rotation(call: Any, output_dir: str, limit: int | None) -> Any:
    return call(output_dir, rotation_limit(output_dir, limit))


def install() -> None:
    hooks.carry(keys.PREEMPTION_SIGNAL, NAME, 10, keys.preemption_signal)  # first: Axolotl's schema would drop them
    hooks.carry(keys.PREEMPTION_GRACE, NAME, 11, keys.grace_seconds)
    hooks.add(hooks.Layer("setup_signal_handler", NAME, 20, _setup_signal_handler))
    hooks.add(hooks.Layer("execute_training", NAME, 20, _execute_training))
    hooks.add(hooks.Layer("worker_signal_handlers", NAME, 20, _worker_signal_handlers))
    hooks.add_rotation(NAME, 20, _rotation)  # inside the journal's (10): its victims recorded, superseded ones retired
