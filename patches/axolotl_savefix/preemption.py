"""Preemption notices: SIGTERM (SIGINT, a chosen signal) saves a resumable checkpoint where the run is, then exits.

Stock Axolotl (``axolotl.train.setup_signal_handler``, 0.13 to 0.21) leaves SIGTERM unhandled (the
process dies, everything since the last scheduled checkpoint is lost), and on SIGINT, on local rank 0
only, writes the weights alone into ``output_dir`` (no optimizer, scheduler, RNG or
``trainer_state.json``: nothing to resume from, and ``output_dir`` then looks like a finished run) and
exits with status 0, so a scheduler counts the interrupted run as a success.

Targets:

* ``axolotl.train.setup_signal_handler`` (replaced: stock's SIGINT handler is never installed, so no
  weights-only files land in ``output_dir``): installs, on every rank, a handler for SIGTERM, SIGINT
  and ``savefix_preemption_signal`` that only records the signal. Where handlers cannot be installed
  (``use_ray``, or not the main thread), stock's function runs unchanged.
* ``axolotl.train.execute_training``: adds :class:`PreemptionCallback` (last, so it sees the schedule's
  decision for the step), and after training exits with :func:`exit_status` when the run was preempted.
* ``transformers.trainer.rotate_checkpoints``: a preemption checkpoint is never counted by rotation.
* ``validate_config``: checks ``savefix_preemption_signal`` and ``savefix_preemption_grace`` and carries
  them past Axolotl's schema.

The rule: at the end of every optimizer step (and after every scheduled save) the ranks agree, with one
``all_reduce(MAX)`` of one integer (the signal number, 0 for none), whether a signal reached any of
them. If so, all stop at that step: Transformers saves ``checkpoint-<global_step>`` through its own
save path (``control.should_save``; rotation, the completeness rule and the FSDP/DeepSpeed layouts
hold), the process exits with status ``128 + signal number`` (143 for SIGTERM, 130 for SIGINT, 138
for SIGUSR1): "preempted, requeue me". A step that was already a scheduled save is not saved twice; a
signal that arrives during a scheduled save stops the run right after that save. A second signal, or
``savefix_preemption_grace`` seconds after the first, exits at once with the same status (a
checkpoint cut then is set aside at the resume by the completeness rule).

The preemption checkpoint is extra to the schedule: it carries a marker file (:data:`MARKER`, written
before the save starts), rotation never counts it, and it is removed once a later checkpoint is
complete (at the next save, or at the end of training). The resumed run saves exactly the scheduled
steps still ahead (the per-epoch guard is rebuilt from the restored ``state.epoch``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from transformers import TrainerCallback

from . import checkpoints, plan
from ._log import log_once
from ._patching import patch_item, wraps
from ._targets import require
from .args import carrying, checked
from .checks import SaveFixConfigError

SIGNAL_KEY = "savefix_preemption_signal"
GRACE_KEY = "savefix_preemption_grace"
MARKER = "savefix_preemption.json"  # inside a checkpoint-N saved on a preemption notice
DEFAULT_SIGNALS = (signal.SIGTERM, signal.SIGINT)
UNCATCHABLE = {signal.SIGKILL, signal.SIGSTOP}

HANDLER_TARGET = ("axolotl.train", "setup_signal_handler", ("cfg", "model"))
EXECUTE_TARGET = ("axolotl.train", "execute_training", ("cfg", "trainer", "resume_from_checkpoint"))
VALIDATE_TARGET = ("axolotl.utils.config", "validate_config", ("cfg",))
ROTATE_TARGET = ("transformers.trainer", "rotate_checkpoints", ("output_dir", "save_total_limit"))
# Transformers before 5.3 (Axolotl 0.13.2 and 0.14.0) rotate in a method; the limit is args.save_total_limit
ROTATE_METHOD_TARGET = ("transformers.trainer", "Trainer._rotate_checkpoints", ("use_mtime", "output_dir"))


def exit_status(signum: int) -> int:
    """The exit status of a preempted process: ``128 + signum`` (143 for SIGTERM), as a shell reports a signal death."""
    return 128 + int(signum)


class PreemptionArgs(BaseModel):
    """The config keys of the ``preemption`` patch (checked and carried by its ``validate_config`` wrapper)."""

    savefix_preemption_signal: str | int | None = Field(
        default=None,
        json_schema_extra={
            "description": "A signal, besides SIGTERM and SIGINT, that saves a checkpoint and exits 128 + its "
            "number (e.g. SIGUSR1, for SLURM's --signal=USR1@90)."
        },
    )
    savefix_preemption_grace: float | None = Field(
        default=None,
        gt=0.0,
        json_schema_extra={
            "description": "Seconds after the first signal after which the process exits at once, saved or not "
            "(default: no deadline; a second signal always exits at once)."
        },
    )


def parse_signal(value: Any) -> signal.Signals | None:
    """``SIGUSR1``, ``USR1`` or ``10`` -> ``signal.SIGUSR1``; ``None`` when unset.

    Raises :class:`SaveFixConfigError` naming the key for an unknown or uncatchable signal.
    """
    if value is None or value == "":
        return None
    try:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, int) or (isinstance(value, str) and value.strip().isdigit()):
            sig = signal.Signals(int(value))
        else:
            name = str(value).strip().upper()
            sig = signal.Signals[name if name.startswith("SIG") else "SIG" + name]
    except (KeyError, ValueError):
        raise SaveFixConfigError(
            f"{SIGNAL_KEY}: {value!r} is not a signal. Set it to a signal name such as SIGUSR1 or SIGUSR2 "
            "(the one your scheduler sends, e.g. SLURM's --signal=USR1@90), or remove it."
        ) from None
    if sig in UNCATCHABLE:
        raise SaveFixConfigError(
            f"{SIGNAL_KEY}: {sig.name} cannot be caught by any process. Set it to a signal such as SIGUSR1, "
            "and have the scheduler send it before the kill (SLURM: --signal=USR1@90)."
        )
    return sig


def _signal_setting(cfg: Mapping[str, Any]) -> Any:
    """``savefix_preemption_signal`` as written, once :func:`parse_signal` accepts it (``None`` when unset)."""
    parse_signal(cfg.get(SIGNAL_KEY))
    return cfg.get(SIGNAL_KEY)


def grace_seconds(cfg: Mapping[str, Any]) -> float | None:
    """``savefix_preemption_grace`` (seconds) from a config, checked; ``None`` when unset."""
    return checked(
        cfg,
        GRACE_KEY,
        PreemptionArgs,
        "a number of seconds above 0. Set it a little under your scheduler's grace (e.g. 80 for SLURM's "
        "--signal=TERM@90), or remove it to wait for the checkpoint.",
    )


# --- the signal side: the handler only records -------------------------------------------------


class _Notice:
    signum = 0  # the first signal received, 0 for none
    received_at = 0.0  # time.monotonic() of the first signal
    grace: float | None = None
    previous: dict[int, Any] = {}
    timer: threading.Timer | None = None


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
    """Record ``signals`` from now on (replacing the handlers there were, kept for :func:`uninstall`)."""
    _notice.signum, _notice.grace, _notice.received_at = 0, grace, 0.0
    for sig in signals:
        previous = signal.signal(sig, _handler)
        _notice.previous.setdefault(int(sig), previous)


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


# --- the trainer side: agree, save, stop ----------------------------------------------------------


def _world() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return int(dist.get_world_size())
    return 1


def marked(output_dir: str | os.PathLike[str]) -> list[Path]:
    """The ``checkpoint-N`` folders of ``output_dir`` that were saved on a preemption notice, oldest first."""
    return [folder for folder in checkpoints.checkpoints(output_dir) if (folder / MARKER).is_file()]


def remove_superseded(output_dir: str | os.PathLike[str]) -> list[Path]:
    """Remove every preemption checkpoint older than the newest complete checkpoint; returns those removed."""
    preempted = marked(output_dir)
    if not preempted:
        return []
    newest = checkpoints.newest_complete(output_dir)
    newest_step = checkpoints.step_of(newest) if newest is not None else None
    removed = []
    for folder in preempted:
        step = checkpoints.step_of(folder)
        if newest_step is not None and step is not None and step < newest_step:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
            log_once(
                f"preempt-removed:{folder}",
                f"removed {folder.name}, the preemption checkpoint: {newest.name} is complete"  # type: ignore[union-attr]
                " (a preemption checkpoint is extra to the schedule and never counted by save_total_limit)",
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
        self._flag: Any = None  # the one-integer tensor of the agreement
        self._world: int | None = None  # read at the first agreement: the process group is set up by then

    def agree(self, args: Any) -> int:
        """The largest signal number any rank received (0: none); one ``all_reduce(MAX)`` where world > 1."""
        local = _notice.signum
        if self._world is None:
            self._world = _world()  # once: asked every step it cost 17 ms over 600 steps (bench -- accounting, profiled)
        if self._world <= 1:
            return local
        import torch
        import torch.distributed as dist

        if self._flag is None:
            device = args.device if dist.get_backend() == "nccl" else torch.device("cpu")
            self._flag = torch.zeros(1, dtype=torch.int32, device=device)
        self._flag.fill_(local)
        dist.all_reduce(self._flag, op=dist.ReduceOp.MAX)
        return int(self._flag.item())

    def on_train_begin(self, args: Any, state: Any, control: Any, train_dataloader: Any = None, **kwargs: Any) -> Any:  # noqa: ARG002 - TrainerCallback's hook
        if not state.global_step or not self.resume_from_checkpoint:
            return control
        folder = Path(str(self.resume_from_checkpoint))
        why = "the newest complete checkpoint, a scheduled one"
        notice = folder / MARKER
        if notice.is_file():
            try:
                record = json.loads(notice.read_text())
                why = f"a preemption checkpoint ({record.get('signal', 'a signal')} at step {record.get('global_step')})"
            except (OSError, ValueError):
                why = "a preemption checkpoint"
        ahead = ""
        if train_dataloader is not None and len(train_dataloader) and state.max_steps > 0:
            run_plan = plan.make_plan(plan.Settings.from_config(self.cfg), len(train_dataloader), state.max_steps)
            saved = run_plan.patched.saved or []
            ahead = f"; scheduled saves still ahead: {plan.steps_text([s for s in saved if s > state.global_step])}"
        log_once(f"preempt-resumed:{id(self)}", f"resumed at step {state.global_step} from {folder.name}, {why}{ahead}")
        return control

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
        if not scheduled and args.should_save:
            folder = Path(args.output_dir) / f"{checkpoints.PREFIX}{state.global_step}"
            folder.mkdir(parents=True, exist_ok=True)
            record = {"global_step": state.global_step, "signal": signal.Signals(signum).name, "scheduled": False}
            (folder / MARKER).write_text(json.dumps(record))  # before the save: a cut save is still marked
        control.should_save = True
        self._stop(signum, state, control, scheduled=scheduled)
        return control

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:  # noqa: ARG002 - TrainerCallback's hook
        if self.stop_signal:
            return control
        signum = self.agree(args)  # a signal during a scheduled save: stop right after it
        if signum:
            self._stop(signum, state, control, scheduled=True)
        return control

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:  # noqa: ARG002 - TrainerCallback's hook
        import torch.distributed as dist

        if _world() > 1:
            dist.barrier()  # every rank's part of the last checkpoint is written
        if args.should_save and not self.stop_signal:
            remove_superseded(args.output_dir)
        return control


def _exit_preempted(callback: PreemptionCallback) -> None:
    import torch.distributed as dist

    signum = callback.stop_signal
    took = time.monotonic() - _notice.received_at if _notice.received_at else None
    since = f" {took:.1f} s after the signal reached this process;" if took is not None else ""
    folder = f"{checkpoints.PREFIX}{callback.stop_step}"
    log_once(
        "preempt-exit",
        f"preempted by {signal.Signals(signum).name} at step {callback.stop_step}: {folder} saved;{since} exiting with "
        f"status {exit_status(signum)} (128 + {signum}). The same command resumes from it "
        "(auto_resume_from_checkpoints: true, or resume_from_checkpoint).",
        logging.WARNING,
    )
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    raise SystemExit(exit_status(signum))


def apply() -> None:
    module, name, setup = require(*HANDLER_TARGET)

    @wraps(setup)
    def setup_signal_handler(cfg: Any, model: Any, *args: Any, **kwargs: Any) -> Any:
        if cfg.get("use_ray") or threading.current_thread() is not threading.main_thread():
            return setup(cfg, model, *args, **kwargs)  # no signal handlers there: stock's behaviour
        extra = parse_signal(cfg.get(SIGNAL_KEY))
        signals = list(DEFAULT_SIGNALS) + ([extra] if extra is not None and extra not in DEFAULT_SIGNALS else [])
        install(signals, grace_seconds(cfg))
        names = ", ".join(s.name for s in signals)
        log_once(
            "preempt-armed",
            f"preemption: {names} save a checkpoint at the step the run is in and exit 128 + the signal number",
        )
        return None

    patch_item(module, name, setup_signal_handler, rebind_copies=True)

    module, name, execute = require(*EXECUTE_TARGET)

    @wraps(execute)
    def execute_training(cfg: Any, trainer: Any, resume_from_checkpoint: Any, *args: Any, **kwargs: Any) -> Any:
        callback = PreemptionCallback(cfg, resume_from_checkpoint)
        trainer.add_callback(callback)  # last: it sees what the schedule decided for the step
        try:
            result = execute(cfg, trainer, resume_from_checkpoint, *args, **kwargs)
        except BaseException:
            uninstall()
            raise
        if callback.stop_signal:
            # the handlers stay: a launcher's SIGTERM to the ranks still tearing down (torchrun stops the
            # others when one exits) then exits at once with the same status, not as a signal death
            _notice.signum = _notice.signum or callback.stop_signal
            _exit_preempted(callback)
        uninstall()
        if _notice.signum:
            log_once(
                "preempt-late",
                f"{signal.Signals(_notice.signum).name} came after the last step's save: training is complete; "
                "finishing the final save",
                logging.WARNING,
            )
        return result

    patch_item(module, name, execute_training, rebind_copies=True)

    module, name, validate = require(*VALIDATE_TARGET)

    checks = {SIGNAL_KEY: _signal_setting, GRACE_KEY: grace_seconds}  # first: Axolotl's schema would drop them
    patch_item(module, name, carrying(validate, checks), rebind_copies=True)


def rotation_limit(output_dir: str | os.PathLike[str], save_total_limit: int | None) -> int | None:
    """``save_total_limit`` for one rotation of ``output_dir``: preemption checkpoints still there are not counted.

    Removes the preemption checkpoints a later complete checkpoint superseded first.
    """
    remove_superseded(output_dir)
    extra = len(marked(output_dir))  # still there: the newest checkpoint is not complete yet
    if extra and save_total_limit is not None and save_total_limit > 0:
        return save_total_limit + extra
    return save_total_limit


def apply_builder() -> None:
    """Rotation never counts a preemption checkpoint (applied with the builder: Transformers' trainer is loaded)."""
    import transformers.trainer

    if not hasattr(transformers.trainer, ROTATE_TARGET[1]):  # Transformers < 5.3: Trainer._rotate_checkpoints
        owner, name, rotate_method = require(*ROTATE_METHOD_TARGET)

        @wraps(rotate_method)
        def _rotate_checkpoints(self: Any, use_mtime: bool = False, output_dir: str | None = None) -> Any:
            limit = self.args.save_total_limit
            if not limit or limit <= 0:
                return rotate_method(self, use_mtime, output_dir)
            self.args.save_total_limit = rotation_limit(output_dir or self.args.output_dir, limit)
            try:
                return rotate_method(self, use_mtime, output_dir)
            finally:
                self.args.save_total_limit = limit

        patch_item(owner, name, _rotate_checkpoints)
        return

    owner, name, rotate = require(*ROTATE_TARGET)

    @wraps(rotate)
    def rotate_checkpoints(output_dir: str, save_total_limit: int | None = None, *args: Any, **kwargs: Any) -> Any:
        return rotate(output_dir, rotation_limit(output_dir, save_total_limit), *args, **kwargs)

    patch_item(owner, name, rotate_checkpoints)
