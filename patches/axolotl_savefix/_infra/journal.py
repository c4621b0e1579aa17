"""The save protocol: what this package writes around every save, and what it may therefore delete.

No Axolotl import; Transformers' callback classes only. Installed by :func:`install` when an
enabled seam needs it (``seams.SEAMS``: incomplete checkpoints, several nodes, full disk,
preemption, resume matches the run, retention):

* **before a save** (``_save_checkpoint``, the outermost call): the pending-save record,
  ``savefix_pending.json`` (:func:`begin_save`): the step, and whether the folder was absent when
  the run started (``fresh``, from :func:`note_run_start`'s snapshot);
* **in ``trainer_state.json``**: the run record (:class:`SaveFixCheckpointRecord`): the world size,
  ``save_only_model``, whether this save wrote optimizer state, and the fields seams add
  (``hooks.add_record_field``: the run's fingerprint);
* **after a save**, once every rank's part is written: the commit marker
  (:class:`CommitMarker`), which replaces the pending record; and one line, once, when a save wrote
  no optimizer state on purpose;
* **around a rotation**: each folder Transformers' rotation deletes is named first
  (:func:`recording_rotation`), so a delete a kill interrupted is finished by the next rotation
  (:func:`finish_interrupted_rotation`) instead of leaving a folder whose modification time makes it
  look like the newest.

What this proves is all this package ever deletes a folder on (:func:`rules.records.own_cut`, a
recorded rotation victim, a superseded preemption checkpoint its notice save created), and every
folder delete goes through :func:`delete_own`. The only other deletes: this package's own records
and temporary files, and the weight files a failing final save itself wrote (``seams.full_disk``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from ..rules import checkpoints, records
from . import hooks
from .collectives import node, writes_markers
from .log import log_once

_present: dict[str, frozenset[str]] = {}  # realpath(output_dir) -> the checkpoint-N names there at train begin


def _key(output_dir: str | os.PathLike[str]) -> str:
    return os.path.realpath(os.fspath(output_dir))


def note_run_start(output_dir: str | os.PathLike[str]) -> None:
    """At train begin (after the resume's set-aside): remember the ``checkpoint-N`` folders ``output_dir`` holds."""
    _present[_key(output_dir)] = frozenset(p.name for p in checkpoints.checkpoints(output_dir))


def is_fresh(folder: str | os.PathLike[str]) -> bool:
    """Whether ``checkpoint-N`` at ``folder`` was absent when this run started (False when the start was not seen)."""
    path = Path(folder)
    names = _present.get(_key(path.parent))
    return names is not None and path.name not in names


def begin_save(folder: Path, step: int, writer: str) -> None:
    """Before the save of ``checkpoint-{step}`` at ``folder``: its pending-save record (:func:`checkpoints.write_pending`).

    A record that cannot be written (a full disk, say) is not fatal: the save goes on as stock's,
    and that folder is then never provably this package's own. An empty folder this call created
    for the record is removed again (``rmdir``: never a folder with anything in it).
    """
    existed = folder.exists()
    try:
        checkpoints.write_pending(folder, step, is_fresh(folder), writer)
    except OSError as error:
        with contextlib.suppress(OSError):
            (folder / f".{checkpoints.PENDING}.{writer}.tmp").unlink(missing_ok=True)  # its own temporary file
            if not existed:
                folder.rmdir()  # only succeeds on the empty folder made above
        log_once(
            f"pending:{folder}",
            f"{folder.name}: pending-save record not written ({error.strerror or error}); the save goes on as stock's, "
            "and a cut of it is set aside, never deleted",
            logging.WARNING,
        )


def writes_here(args: Any) -> bool:
    """Whether this process writes the commit marker and the pending-save record of a save (its disk's walker)."""
    decided = writes_markers()
    return decided if decided is not None else int(args.local_process_index) == 0


_saving = threading.local()  # how deep this thread is in _save_checkpoint (Axolotl's override calls Transformers')


def _pending_first(call: Callable[..., Any], trainer: Any, model: Any, trial: Any, *args: Any, **kwargs: Any) -> Any:
    """``_save_checkpoint``'s layer: the pending-save record first (:func:`begin_save`), in the outermost call only."""
    depth = getattr(_saving, "depth", 0)
    _saving.depth = depth + 1
    try:
        if depth == 0 and writes_here(trainer.args):
            step = int(trainer.state.global_step)
            folder = Path(trainer._get_output_dir(trial=trial)) / f"{checkpoints.PREFIX}{step}"
            begin_save(folder, step, f"{node()}-{os.getpid()}")
        return call(trainer, model, trial, *args, **kwargs)
    finally:
        _saving.depth = depth


class SaveFixCheckpointRecord(TrainerCallback, ExportableState):
    """Records, inside every checkpoint's ``trainer_state.json``, what a complete checkpoint holds."""

    def __init__(self) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
        self.save_only_model = False
        self.fingerprint: dict = {}  # the run's fingerprint (a record field of seams.resume_matches_run)
        self._output_dir: str | None = None
        self._state: Any = None  # the trainer's TrainerState: its global_step names the folder being saved

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self.world_size = int(args.world_size)
        self.save_only_model = bool(args.save_only_model)
        self._output_dir, self._state = str(args.output_dir), state
        note_run_start(args.output_dir)  # after the resume's set-aside: what this run's saves did not create
        if self.fingerprint:
            self.fingerprint = {**self.fingerprint, "world_size": self.world_size, "max_steps": int(state.max_steps)}
        return control

    def _wrote_optimizer(self) -> bool | None:
        """Whether the save in progress wrote optimizer state: ``state()`` runs after its optimizer save returned."""
        if self._output_dir is None or self._state is None:
            return None
        folder = Path(self._output_dir) / f"{checkpoints.PREFIX}{self._state.global_step}"
        try:
            with os.scandir(folder) as scan:
                return checkpoints.has_optimizer(entry.name + ("/" if entry.is_dir() else "") for entry in scan)
        except OSError:
            return None

    def state(self) -> dict:
        attributes = {"world_size": self.world_size, "save_only_model": self.save_only_model, "fingerprint": self.fingerprint}
        optimizer = False if self.save_only_model else self._wrote_optimizer()
        if optimizer is not None:
            attributes["optimizer"] = optimizer
        return {"args": {}, "attributes": attributes}


_after_commit: list[Callable[[Any, Any, Path], None]] = []  # one-shot: run once the save in progress is committed
_committing = False  # a CommitMarker is in this process's trainer (install() put it there)


def after_commit(action: Callable[[Any, Any, Path], None], args: Any, state: Any) -> None:
    """Run ``action(args, state, folder)`` once the save in progress is committed (every file of it written, the
    marker last); at once where no commit marker is written in this process."""
    if _committing:
        _after_commit.append(action)
    else:
        action(args, state, Path(args.output_dir) / f"{checkpoints.PREFIX}{state.global_step}")


class CommitMarker(TrainerCallback):
    """After each save, once every rank's part and every callback's files are written: the commit marker (rule 0).

    It is the trainer's last callback but the preemption notice's (:func:`_marker_last`): ``on_save``
    runs on every rank after Transformers' ``_save_checkpoint`` returned there and after every other
    callback's ``on_save`` (ReLoRA writes ``checkpoint-N/relora/`` there); a barrier (one per save,
    none per step) waits for every rank, then each node's main process writes ``savefix_commit.json``
    into ``checkpoint-{global_step}`` (:func:`rules.records.write_marker`). On an ``output_dir`` the
    resume decision found shared with rank 0, rank 0 alone writes it. Then the actions waiting for
    the commit run (:func:`after_commit`: the disk rule's measurement of the whole checkpoint).
    """

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:  # noqa: ARG002 - TrainerCallback's hook
        world = int(args.world_size)
        if world > 1:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                dist.barrier()
        folder = Path(args.output_dir) / f"{checkpoints.PREFIX}{state.global_step}"
        if getattr(args, "should_save", False) and not args.save_only_model:
            _say_no_optimizer(folder)
        if writes_here(args) and folder.is_dir():
            writer = f"{node()}-{os.getpid()}"
            try:
                checkpoints.write_marker(folder, int(state.global_step), world, bool(args.save_only_model), writer)
            except OSError as error:  # a full disk, say: the checkpoint stays, judged by rules 1 to 4
                (folder / f".{checkpoints.MARKER}.{writer}.tmp").unlink(missing_ok=True)  # its own only
                log_once(
                    f"marker:{folder}",
                    f"{folder.name}: commit marker not written ({error.strerror or error}); a resume judges it file by file",
                    logging.WARNING,
                )
        waiting = list(_after_commit)
        _after_commit.clear()
        for action in waiting:
            action(args, state, folder)
        return control


def _marker_last(execute: Callable[..., Any], cfg: Any, trainer: Any, *args: Any, **kwargs: Any) -> Any:
    """``execute_training``'s layer: the commit marker joins the trainer last, after every callback Axolotl's
    builders added (a callback's ``on_save`` files are part of the save). Outside the preemption seam's layer,
    whose callback comes after it and writes no file at a save."""
    global _committing
    trainer.add_callback(CommitMarker())
    _committing = True
    try:
        return execute(cfg, trainer, *args, **kwargs)
    finally:
        _committing = False
        _after_commit.clear()


def _say_no_optimizer(folder: Path) -> None:
    """At the save: one line, once per run, when a save that is not model-only wrote no optimizer state."""
    try:
        with os.scandir(folder) as scan:
            wrote = checkpoints.has_optimizer(entry.name + ("/" if entry.is_dir() else "") for entry in scan)
    except OSError:
        return
    if not wrote:
        log_once(
            "no-optimizer",
            f"{folder.name} was saved without optimizer or scheduler state (the trainer could not save this optimizer; "
            "see its warning above), as every save of this run will be: each checkpoint is complete as saved, and a "
            "resume from one starts a fresh optimizer with the learning-rate schedule put at its step",
            logging.WARNING,
        )


# --- deleting what is proven the package's own ---------------------------------------------------------------------

DELETING = ".savefix-deleting-"  # a folder renamed so before it is removed: its name alone proves it


def delete_own(folder: Path) -> bool:
    """Delete ``folder``, already proven this package's own by the caller; whether it is gone.

    It is first renamed to a hidden ``.savefix-deleting-<name>.<pid>`` beside it (one atomic rename),
    then removed: a kill in the middle leaves a folder whose name alone says it was being deleted,
    and :func:`finish_deletes` ends it, where a half-deleted folder could no longer prove whose it was.
    """
    target = folder.with_name(f"{DELETING}{folder.name}.{os.getpid()}")
    try:
        folder.rename(target)
    except FileNotFoundError:
        return not folder.exists()
    except OSError:
        target = folder  # cannot rename here: removed in place
    shutil.rmtree(target, ignore_errors=True)
    return not target.exists() and not folder.exists()


def finish_deletes(output_dir: str | os.PathLike[str]) -> list[Path]:
    """Remove what a killed :func:`delete_own` left in ``output_dir`` (``.savefix-deleting-*`` folders)."""
    left = [p for p in Path(output_dir).glob(f"{DELETING}*") if p.is_dir()] if Path(output_dir).is_dir() else []
    for folder in left:
        shutil.rmtree(folder, ignore_errors=True)
    return left


# --- the rotation's victims: Transformers' rotation deletes the oldest checkpoints with shutil.rmtree ----------------

ROTATING = ".savefix-rotating"  # output_dir/.savefix-rotating.<writer>.json: the folder the rotation is deleting


class _RecordingShutil:
    """``shutil`` as Transformers' rotation sees it during one rotation: ``rmtree`` names its victim first.

    Before each ``rmtree(checkpoint)`` the victim's name is written to ``output_dir``; once the
    delete returns the record goes. A kill in between leaves the record: the folder is provably the
    rotation's victim, and :func:`finish_interrupted_rotation` finishes it.
    """

    def __init__(self, output_dir: str, writer: str) -> None:
        self._record = Path(output_dir) / f"{ROTATING}.{writer}.json"

    def __getattr__(self, name: str) -> object:
        return getattr(shutil, name)

    def rmtree(self, path: str | os.PathLike[str], *args: Any, **kwargs: Any) -> None:
        victim = Path(path)
        try:
            records.write_atomically(self._record.parent, self._record.name, json.dumps({"victim": victim.name}), "r")
        except OSError:
            pass  # no record: this delete goes on as stock's
        try:
            shutil.rmtree(victim, *args, **kwargs)  # Transformers' own delete, forwarded
        finally:
            self._record.unlink(missing_ok=True)


ROTATION_MODULES = ("transformers.trainer_utils", "transformers.trainer")  # where the rotation's rmtree is (5.3 on; before)


@contextlib.contextmanager
def recording_rotation(output_dir: str | os.PathLike[str] | None) -> Iterator[None]:
    """During one rotation, the ``shutil`` of Transformers' rotation modules records each victim (:class:`_RecordingShutil`).

    A module that does not use the standard ``shutil`` (another release's layout) is left as it is.
    """
    swapped = [m for m in map(sys.modules.get, ROTATION_MODULES) if m is not None and getattr(m, "shutil", None) is shutil]
    if not output_dir or not swapped:
        yield
        return
    recording = _RecordingShutil(os.fspath(output_dir), f"{os.getpid()}")
    for module in swapped:
        module.shutil = recording  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for module in swapped:
            module.shutil = shutil  # type: ignore[attr-defined]


def _around_rotation(call: Callable[..., Any], output_dir: str, limit: int | None) -> Any:
    """The journal's part of every rotation: finish one a kill interrupted, then record each victim."""
    finish_interrupted_rotation(output_dir)
    with recording_rotation(output_dir):
        return call(output_dir, limit)


def finish_interrupted_rotation(output_dir: str | os.PathLike[str]) -> list[Path]:
    """Before a rotation: delete what a killed rotation was deleting (its record names it), if it is incomplete now.

    Transformers sorts checkpoints by modification time, and a half-deleted folder's time is the
    kill's: left, it would count as the newest, be kept, and a complete checkpoint deleted in its
    place. A named folder that is complete now (rewritten since, or the kill came before the delete
    began) is left to the rotation. Returns the folders deleted.
    """
    done = []
    finish_deletes(output_dir)
    for record in sorted(Path(output_dir).glob(f"{ROTATING}.*.json")):
        try:
            victim = json.loads(record.read_text(encoding="utf-8")).get("victim")
        except (OSError, ValueError, AttributeError, RecursionError):
            victim = None
        folder = Path(output_dir) / victim if isinstance(victim, str) and "/" not in victim else None
        if folder is not None and checkpoints.step_of(folder) is not None and folder.is_dir() and checkpoints.missing(folder):
            delete_own(folder)
            done.append(folder)
            log_once(
                f"rotation-finished:{folder}",
                f"deleted {folder.name}: a rotation a kill interrupted was deleting it (save_total_limit); finished now",
                logging.WARNING,
            )
        record.unlink(missing_ok=True)
    return done


# --- installing the protocol -----------------------------------------------------------------------------------------


def _record(builder: Any) -> list[Any]:
    record = SaveFixCheckpointRecord()
    record.fingerprint = hooks.record_fields(builder).get("fingerprint") or {}  # seams.resume_matches_run's
    return [record]


def install() -> None:
    """Contribute the protocol's layers and callbacks (idempotent: one registry entry per name)."""
    for target in ("trainer_save_checkpoint", "axolotl_save_checkpoint"):
        if not hooks.contributes(target, "journal"):
            hooks.add(hooks.Layer(target, "journal", 50, _pending_first))
    if not hooks.contributes("execute_training", "journal"):
        hooks.add(hooks.Layer("execute_training", "journal", 5, _marker_last))
    hooks.add_callbacks("run record", "journal", _record)
    hooks.add_rotation("journal", 10, _around_rotation)
