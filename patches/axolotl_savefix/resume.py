"""Defect 5: a run killed while it writes a checkpoint cannot resume.

Axolotl's ``determine_last_checkpoint`` takes the highest ``checkpoint-N``
folder, complete or not, and Transformers then fails on the missing
``trainer_state.json`` (or a truncated weight file); its rotation also counts
the broken folder as a checkpoint.

Targets:

* ``axolotl.utils.train.determine_last_checkpoint`` (and its copies in
  ``axolotl.train`` and ``axolotl.cli.merge_sharded_fsdp_weights``): every
  ``checkpoint-N`` that is not complete (:mod:`axolotl_savefix.checkpoints`) is
  moved out of the ``checkpoint-*`` names (``incomplete-checkpoint-N``, by the
  main process of each node; nothing is deleted), with one warning naming it,
  what it lacks and the checkpoint the run resumes from. Every rank then resumes
  from the newest complete checkpoint. A ``resume_from_checkpoint`` that names an
  incomplete folder is an error naming the missing file and the newest complete
  checkpoint.
* ``TrainerBuilderBase.get_callbacks``: adds :class:`SaveFixCheckpointRecord`, whose
  state Transformers writes into each checkpoint's ``trainer_state.json``: the
  world size (so every rank's RNG file can be asked for), ``save_only_model``, and the
  run's fingerprint (:mod:`axolotl_savefix.run_match`); and :class:`RunMatchCallback`,
  which stops a resume into a checkpoint that does not belong to the run (issue 22);
  and :class:`RotateAtTrainEnd`, which finishes a rotation a kill interrupted (below); and
  :class:`BestFollowsOutputDir`, which points a stale ``best_model_checkpoint`` (a moved
  ``output_dir``, Transformers issue 48315) at the folder in ``output_dir``; and
  :class:`CommitMarker`, which writes each checkpoint's commit marker once every rank's part is
  written (rule 0 of :mod:`axolotl_savefix.checkpoints`).

Several processes take the resume decision together (:mod:`axolotl_savefix.decision`): newest
first, one walker per node (one per job on a shared ``output_dir``), a few integers per rank on
the wire; the checkpoints older than the one taken are not judged, but by the cleanup rules.
* ``TokensPerSecondCallback.on_train_begin`` (``include_tkps``; Axolotl issue 3940): on an
  auto-resume it is given the folder the run resumed from, so the checkpoint's token counters
  are restored instead of restarting at zero (:func:`apply_token_counters`); on Axolotl 0.13.2 to
  0.15.0 it reads the file under the name the trainer writes it (:func:`apply_token_state_file`).
* ``ReLoRACallback.on_train_begin`` (``relora: true``): after any resume its logged ``num_lora_restarts``
  starts at the restarts made so far (:func:`apply_relora_restarts`). Its merged base weights are left
  as stock handles them (see the user guide: Axolotl's own loader of ``checkpoint-N/relora`` fails).
* ``transformers.trainer.skip_first_batches`` (Transformers before 5.0 only; Transformers issue 40690):
  a resume in the middle of epoch 2 or later trains on epoch 0's sample order (:func:`apply_epoch_order`).
* ``axolotl.utils.config.validate_config``: carries ``savefix_resume_anyway`` past
  Axolotl's schema and warns when ``save_only_model`` meets auto-resume.

Where the resume is checked: at train begin (``on_train_begin``), not in
``determine_last_checkpoint``. Axolotl picks the checkpoint before the trainer
exists, but the run's last step (``max_steps``) is only known once the
dataloader is built (packing, sharding across ranks), inside Transformers'
``_inner_training_loop``; ``on_train_begin`` is its first callback, after the
checkpoint's state is loaded and before ``eval_on_start`` and the first step,
so nothing has been trained or written when it stops the run.

A rotation a kill interrupted: Transformers rotates right after each save, so a run
killed after its last checkpoint is complete and before the rotation deleted the
oldest leaves ``save_total_limit + 1`` checkpoints, and the rerun, resumed at its
last step, saves nothing and so never rotates (stock the same). At train end
(``on_train_end``, on the processes that save) :class:`RotateAtTrainEnd` runs
Transformers' own ``rotate_checkpoints`` once more, with the limit, the best
checkpoint and the patched rotation (disk rule, preemption checkpoints) as a save
would: a no-op when nothing is in excess. Transformers before 5.3 (Axolotl 0.13.2
and 0.14.0) rotate in a ``Trainer`` method a callback cannot reach; there it does
nothing (stock's behaviour).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from . import args as savefix_args
from . import checkpoints, disk, journal, run_match
from ._log import log_once
from ._patching import patch_item, wraps
from ._targets import require
from .agreement import NotSharedOutputDirError, ResumeAgreementError, agree_on_resume, node, writes_markers  # noqa: F401 - ResumeAgreementError: re-exported
from .plan import relora_restarts
from .save_decision import CALLBACKS_TARGET

RESUME_TARGET = ("axolotl.utils.train", "determine_last_checkpoint", ("cfg",))
VALIDATE_TARGET = ("axolotl.utils.config", "validate_config", ("cfg",))


class IncompleteCheckpointError(ValueError):
    """``resume_from_checkpoint`` names a checkpoint that cannot be resumed from."""


class SaveFixCheckpointRecord(TrainerCallback, ExportableState):
    """Records, inside every checkpoint's ``trainer_state.json``, what a complete checkpoint holds."""

    def __init__(self) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
        self.save_only_model = False
        self.fingerprint: dict = {}  # run_match.fingerprint, set by the builder seam
        self._output_dir: str | None = None
        self._state: Any = None  # the trainer's TrainerState: its global_step names the folder being saved

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self.world_size = int(args.world_size)
        self.save_only_model = bool(args.save_only_model)
        self._output_dir, self._state = str(args.output_dir), state
        journal.note_run_start(args.output_dir)  # after the resume's set-aside: what this run's saves did not create
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


class RotateAtTrainEnd(TrainerCallback):
    """At train end, the rotation a save would run: finishes one a kill interrupted (module docstring)."""

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:  # noqa: ARG002 - TrainerCallback's hook
        import transformers.trainer

        rotate = getattr(transformers.trainer, "rotate_checkpoints", None)  # looked up now: the patched one
        if rotate is None or not args.should_save or not os.path.isdir(args.output_dir):
            return control
        rotate(
            output_dir=args.output_dir,
            save_total_limit=args.save_total_limit,
            best_model_checkpoint=state.best_model_checkpoint,
            use_mtime=True,  # as Trainer._save_checkpoint
        )
        return control


class BestFollowsOutputDir(TrainerCallback):
    """A resume from a moved or renamed ``output_dir``: ``best_model_checkpoint`` names the folder here, not the old path.

    Transformers stores ``best_model_checkpoint`` as the path it saved to (``<output_dir>/checkpoint-N``)
    in ``trainer_state.json`` and restores it on resume. After the run's folder is moved (another disk,
    a scratch copy), that path names the old place (Transformers issue 48315): the rotation no longer
    protects the best checkpoint here and deletes it, and with ``save_total_limit: 1`` the end of
    training loads the best model from the old path (``FileNotFoundError``, or the old copy's weights
    where it still exists) and deletes every checkpoint here that is not that path. At train begin,
    after the resumed state is loaded, a best checkpoint outside ``output_dir`` whose folder name is in
    ``output_dir`` is rewritten to it, with one line; otherwise nothing changes (stock's).

    Transformers 5.20 drops a recorded best checkpoint that is not a folder when it loads the resumed
    state ("Ignoring it for this run"): no crash, but ``load_best_model_at_end`` then loads nothing and
    the best checkpoint here is no longer protected. There the record is read again from the resumed
    checkpoint's ``trainer_state.json`` (:func:`resumed_checkpoint`) and the same rule applies.
    """

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:  # noqa: ARG002 - TrainerCallback's hook
        if not args.output_dir:
            return control
        best = getattr(state, "best_model_checkpoint", None) or self._recorded_best(args, state)
        if not best:
            return control
        old, here = Path(best), Path(args.output_dir)
        moved = here / old.name
        if os.path.realpath(old.parent) == os.path.realpath(here) or not moved.is_dir():
            return control
        state.best_model_checkpoint = str(moved)
        log_once(
            f"best-moved:{moved}",
            f"best_model_checkpoint {best} is outside output_dir (moved or renamed since it was saved): "
            f"taking {moved} instead, so the rotation keeps it and load_best_model_at_end loads it",
        )
        return control

    @staticmethod
    def _recorded_best(args: Any, state: Any) -> str | None:
        """``best_model_checkpoint`` as the resumed checkpoint's ``trainer_state.json`` records it (None: none, or unreadable)."""
        resumed = resumed_checkpoint(args, state)
        if resumed is None:
            return None
        try:
            recorded = json.loads((Path(resumed) / checkpoints.STATE).read_text())
        except (OSError, ValueError):
            return None
        best = recorded.get("best_model_checkpoint") if isinstance(recorded, dict) else None
        return best if isinstance(best, str) and best else None


assert SaveFixCheckpointRecord.__name__ == checkpoints.RECORD  # the name Transformers stores its state under


def _local_main() -> bool:
    return int(os.environ.get("LOCAL_RANK", "0") or 0) == 0


def _describe(problems: list[str] | tuple[str, ...]) -> str:
    return "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")


def _delete_own(folder: Path) -> bool:
    """Delete ``folder`` when it is, checked again now, this package's own cut save (:func:`checkpoints.own_cut`)."""
    if not checkpoints.own_cut(folder):
        return False
    return journal.delete_own(folder)


def _sizes(output_dir: str, folders: list[Path]) -> tuple[dict[Path, int], int | None]:
    try:
        return {p: disk.dir_bytes(p) for p in folders}, disk.free_bytes(output_dir)
    except OSError:
        return {}, None


def set_aside_incomplete(
    output_dir: str, judge: Callable[[Path], list[str]] = checkpoints.missing, *, acts: bool | None = None
) -> tuple[Path | None, list[tuple[Path, list[str], Path | str | None]]]:
    """The auto-resume's scan: the newest complete checkpoint; each newer incomplete one, what it lacks, what became of it.

    Newest first, stopping at the first complete checkpoint: older folders are not read, and never
    touched. The policy is :func:`checkpoints.cleanup` (docs/user-guide.md "Incomplete checkpoints"):
    each incomplete ``checkpoint-N`` newer than the one the resume takes is renamed to
    ``incomplete-checkpoint-N``; a folder is deleted only when it is provably this package's own cut
    save (:func:`checkpoints.own_cut`, checked again right before); any other set-aside folder is left,
    with one line saying where and how to reclaim it. What became of each incomplete ``checkpoint-N``:
    the ``Path`` it was moved to, a ``str`` (deleted, and why), or None (not this process's to move).
    ``judge``: what a folder lacks (default :func:`checkpoints.missing`, one disk; several processes pass
    :meth:`axolotl_savefix.decision.Verdict.judge`, the job's verdict). ``acts``: whether this process
    renames and deletes (default: the node's main process).
    """
    folders = checkpoints.checkpoints(output_dir)
    walked: list[tuple[Path, list[str]]] = []
    newest = None
    for folder in reversed(folders):  # newest first; the one taken ends the walk
        lacks = judge(folder)
        walked.append((folder, lacks))
        if not lacks:
            newest = folder
            break
    walked.reverse()
    incomplete = [(p, lacks) for p, lacks in walked if lacks]
    if not (_local_main() if acts is None else acts):
        return newest, [(folder, lacks, None) for folder, lacks in incomplete]
    journal.finish_deletes(output_dir)  # a delete of the package's own that a kill interrupted
    scanned = [(p, lacks, bool(lacks) and checkpoints.own_cut(p)) for p, lacks in walked]
    aside = [(p, checkpoints.own_cut(p)) for p in checkpoints.set_aside_folders(output_dir)]
    sizes, free = _sizes(output_dir, [*([newest] if newest else []), *(p for p, _ in incomplete), *(p for p, _ in aside)])
    plan = checkpoints.cleanup(scanned, aside, sizes=sizes, free_bytes=free)
    fates: dict[Path, Path | str | None] = {}
    for folder, why in plan.delete:
        if _delete_own(folder):
            fates[folder] = why
            if folder.name.startswith(checkpoints.QUARANTINE_PREFIX):
                log_once(f"deleted:{folder}", f"deleted {folder.name}: {why}", logging.WARNING)
        elif folder in dict(incomplete):
            plan = checkpoints.Cleanup(plan.newest, (*plan.set_aside, (folder, why)), plan.delete, plan.kept)
    for folder, _ in plan.set_aside:
        try:
            fates[folder] = checkpoints.quarantine(folder)
        except FileNotFoundError:  # another node's main process (shared disk) moved it first
            fates[folder] = None
    if plan.kept:
        total = sum(sizes.get(p, 0) for p in plan.kept)
        log_once(
            f"kept-aside:{output_dir}",
            f"{len(plan.kept)} set-aside folder(s) left in output_dir ({', '.join(p.name for p in plan.kept)}; {total} bytes): "
            "not provably cut saves of this package, so it never deletes them; inspect them, then delete them "
            f"(rm -r {Path(output_dir) / checkpoints.QUARANTINE_PREFIX}{checkpoints.PREFIX}...) to free the space",
            logging.WARNING,
        )
    return newest, [(folder, lacks, fates.get(folder)) for folder, lacks in incomplete]


def _fate(folder: Path, target: Path | str | None) -> str:
    if isinstance(target, str):
        return f"deleted ({target})"
    name = target.name if target else checkpoints.QUARANTINE_PREFIX + folder.name
    own = "this package's own save, never committed" if target and checkpoints.own_cut(target) else "nothing in it removed"
    return f"moved to {name} ({own}; delete it once inspected to free the space)"


def writes_here(args: Any) -> bool:
    """Whether this process writes the commit marker and the pending-save record of a save (its disk's walker)."""
    decided = writes_markers()
    return decided if decided is not None else int(args.local_process_index) == 0


class CommitMarker(TrainerCallback):
    """After each save, once every rank's part is written: the node's main process writes the commit marker (rule 0).

    ``on_save`` runs on every rank after Transformers' ``_save_checkpoint`` returned there; a barrier
    (one per save, none per step) waits for every rank, then each node's main process writes
    ``savefix_commit.json`` into ``checkpoint-{global_step}`` (:func:`checkpoints.write_marker`). On an
    ``output_dir`` the resume decision found shared with rank 0, rank 0 alone writes it.
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
        return control


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


def check_explicit(path: str, output_dir: str | None) -> None:
    """``resume_from_checkpoint: path``: stop when it is a save that did not finish, before anything loads.

    A folder without ``trainer_state.json`` and without this package's pending-save record is what
    Transformers takes as a warm start (the weights, step 0): it goes on as stock's, with one line.
    """
    folder = Path(path)
    judged = checkpoints.judge(folder) if folder.is_dir() else checkpoints.Judgment()
    for note in judged.notes:
        log_once(f"bad-input:{note}", note, logging.WARNING)
    lacks = list(judged.lacks)
    if not lacks:
        return
    if all(lack.startswith(f"{checkpoints.STATE} (never written") for lack in lacks) and checkpoints.read_pending(folder) is None:
        log_once(
            f"warm-start:{folder}",
            f"resume_from_checkpoint: {path} has no {checkpoints.STATE}: Transformers loads its weights and starts at step 0 "
            "(a warm start, as stock Axolotl does)",
            logging.WARNING,
        )
        return
    newest = checkpoints.newest_complete(output_dir) if output_dir else None
    fix = (
        f"Set resume_from_checkpoint: {newest} (the newest complete checkpoint in output_dir)"
        if newest
        else "output_dir holds no complete checkpoint: remove resume_from_checkpoint to start from the beginning"
    )
    raise IncompleteCheckpointError(
        f"resume_from_checkpoint: {path} is not a complete checkpoint, it lacks {_describe(lacks)}. {fix}, or remove "
        "resume_from_checkpoint and set auto_resume_from_checkpoints: true to resume from the newest complete one."
    )


def _judge_noting(folder: Path) -> list[str]:
    """:func:`checkpoints.judge` on one disk; its notes (bad input set aside) logged once."""
    judged = checkpoints.judge(folder)
    for note in judged.notes:
        log_once(f"bad-input:{note}", note, logging.WARNING)
    return list(judged.lacks)


def _warn_if_incomplete(folder: str) -> None:
    """Axolotl's own pick where nothing is resumed (the merge of sharded weights): a line when it is incomplete."""
    lacks = checkpoints.missing(folder) if Path(folder).is_dir() else []
    if lacks:
        newest = checkpoints.newest_complete(Path(folder).parent)
        log_once(
            f"merge-incomplete:{folder}",
            f"{Path(folder).name}, the newest checkpoint-N, lacks {_describe(lacks)}: reading it may fail"
            + (f"; {newest.name} is the newest complete one" if newest else "")
            + " (nothing was moved or deleted)",
            logging.WARNING,
        )


def apply() -> None:
    module, name, determine = require(*RESUME_TARGET)

    @wraps(determine)
    def determine_last_checkpoint(cfg: Any, *args: Any, **kwargs: Any) -> Any:
        explicit = cfg.get("resume_from_checkpoint")
        if explicit:
            check_explicit(str(explicit), cfg.get("output_dir"))
            return determine(cfg, *args, **kwargs)
        update = kwargs.get("update", args[0] if args else True)
        if not cfg.get("output_dir") or not update or not cfg.get("auto_resume_from_checkpoints"):
            # no auto-resume here (off, or the merge of sharded weights): nothing on disk changes
            result = determine(cfg, *args, **kwargs)
            if result is not None and not update:
                _warn_if_incomplete(str(result))
            return result
        agreement = agree_on_resume(cfg.output_dir)  # the resume decision: every rank's
        if agreement is not None and agreement.error:
            raise NotSharedOutputDirError(agreement.error)
        judge = agreement.judge if agreement is not None else _judge_noting
        for note in agreement.notes if agreement is not None else ():
            log_once(f"bad-input:{note}", note, logging.WARNING)
        acts = agreement.walked if agreement is not None else None
        newest, incomplete = set_aside_incomplete(cfg.output_dir, judge, acts=acts)
        result = determine(cfg, *args, **kwargs)
        if agreement is not None and result is not None:
            agreed = str(Path(cfg.output_dir) / f"{checkpoints.PREFIX}{agreement.step}") if agreement.step is not None else None
            if result != agreed:  # never ranks on different steps
                result = cfg["resume_from_checkpoint"] = agreed
        moved = {str(p) for p, _, _ in incomplete}
        if result is not None and str(result) in moved:
            # another rank: it listed the folders before the main process moved one aside
            result = str(newest) if newest else None
            if cfg.get("resume_from_checkpoint") in moved:
                cfg["resume_from_checkpoint"] = result
        for folder, lacks, target in incomplete:
            resumed = "resuming from " + (newest.name if newest else "nothing (no complete checkpoint)")
            log_once(
                f"incomplete:{folder}",
                f"{folder.name} is incomplete: it lacks {_describe(lacks)}; {_fate(folder, target)}; {resumed}",
                logging.WARNING,
            )
        return result

    patch_item(module, name, determine_last_checkpoint, rebind_copies=True)
    apply_run_match()
    apply_epoch_order()


TRAINER_SAVE_TARGET = ("transformers.trainer", "Trainer._save_checkpoint", ("model", "trial"))
AXOLOTL_SAVE_CHECKPOINT_TARGET = ("axolotl.core.trainers.base", "AxolotlTrainer._save_checkpoint", ("model", "trial"))
_saving = threading.local()  # how deep this thread is in _save_checkpoint (Axolotl's override calls Transformers')


def _beginning_with_pending(save: Any) -> Any:
    """``_save_checkpoint`` that first writes the pending-save record (:func:`journal.begin_save`), in the outermost call only."""

    @wraps(save)
    def _save_checkpoint(self: Any, model: Any, trial: Any, *args: Any, **kwargs: Any) -> Any:
        depth = getattr(_saving, "depth", 0)
        _saving.depth = depth + 1
        try:
            if depth == 0 and writes_here(self.args):
                step = int(self.state.global_step)
                folder = Path(self._get_output_dir(trial=trial)) / f"{checkpoints.PREFIX}{step}"
                journal.begin_save(folder, step, f"{node()}-{os.getpid()}")
            return save(self, model, trial, *args, **kwargs)
        finally:
            _saving.depth = depth

    return _save_checkpoint


def apply_builder() -> None:
    """The trainer builder's part, applied when ``axolotl.core.builders.base`` is imported."""
    owner, name, get_callbacks = require(*CALLBACKS_TARGET)

    @wraps(get_callbacks)
    def get_callbacks_with_record(self: Any, *args: Any, **kwargs: Any) -> Any:
        callbacks = get_callbacks(self, *args, **kwargs)
        record = SaveFixCheckpointRecord()
        record.fingerprint = run_match.fingerprint(self.cfg, dataset_hash=_dataset_hash(self), world_size=_world_size())
        callbacks += [record, RunMatchCallback(self.cfg, record.fingerprint), RotateAtTrainEnd(), BestFollowsOutputDir()]
        # the marker first among this package's callbacks, whichever concern's wrapper ran first: the disk
        # rule's measurement (save_limit.PlanCallback.on_save) then counts it as the folder's last file
        ours = [n for n, c in enumerate(callbacks) if type(c).__module__.startswith(__package__ + ".")]
        callbacks.insert(ours[0] if ours else len(callbacks), CommitMarker())
        return callbacks

    patch_item(owner, name, get_callbacks_with_record)
    for target in (TRAINER_SAVE_TARGET, AXOLOTL_SAVE_CHECKPOINT_TARGET):
        owner, name, save = require(*target)
        patch_item(owner, name, _beginning_with_pending(save))
    apply_save_on_each_node()
    apply_token_counters()
    apply_relora_restarts()


TOKENS_MODULE = "axolotl.utils.callbacks.tokens_per_second"
TOKENS_TARGET = (TOKENS_MODULE, "TokensPerSecondCallback.on_train_begin", ("args", "state"))
TOKENS_STATE_FILE = "tokens_state.json"  # axolotl.core.trainers.constants.TOKENS_STATE_FILE (0.13.2-0.15.0: "tokens_state.")


def resumed_checkpoint(args: Any, state: Any) -> str | None:
    """The ``checkpoint-<global_step>`` of ``output_dir`` a run resumed from, seen at ``on_train_begin``; None on a fresh run.

    Transformers has loaded the checkpoint's ``trainer_state.json`` before ``on_train_begin``, so
    ``state.global_step`` is the resumed step (0 on a fresh run); an auto-resume takes its folder
    from ``output_dir`` (Axolotl's ``determine_last_checkpoint``).
    """
    step = int(getattr(state, "global_step", 0) or 0)
    folder = Path(str(args.output_dir)) / f"{checkpoints.PREFIX}{step}"
    return str(folder) if step > 0 and folder.is_dir() else None


def apply_token_counters() -> None:
    """Axolotl issue 3940: ``include_tkps`` token counters restart at zero after an auto-resume.

    ``TokensPerSecondCallback`` is built with ``cfg.resume_from_checkpoint`` before
    ``determine_last_checkpoint`` sets it, so on an auto-resume it holds None and its
    ``on_train_begin`` skips the restore of ``tokens_state.json``. The wrapper gives it the folder the
    run resumed from (:func:`resumed_checkpoint`) for that call only; an explicit
    ``resume_from_checkpoint`` (a string already) and a fresh run are stock's. Releases without the
    callback have nothing to fix, nor have those whose callback takes the config (Axolotl 0.20 on,
    PR 3941: it reads ``cfg.resume_from_checkpoint`` at train begin): steps aside there.
    """
    import importlib
    import importlib.util
    import inspect

    if importlib.util.find_spec(TOKENS_MODULE) is None:
        return
    apply_token_state_file()
    if "cfg" in inspect.signature(importlib.import_module(TOKENS_MODULE).TokensPerSecondCallback).parameters:
        return
    owner, name, on_train_begin = require(*TOKENS_TARGET)

    @wraps(on_train_begin)
    def on_train_begin_restoring(self: Any, args: Any, state: Any, *rest: Any, **kwargs: Any) -> Any:
        held = getattr(self, "resume_from_checkpoint", None)
        resumed = None if isinstance(held, str) else resumed_checkpoint(args, state)
        if resumed is None:
            return on_train_begin(self, args, state, *rest, **kwargs)
        self.resume_from_checkpoint = resumed
        try:
            return on_train_begin(self, args, state, *rest, **kwargs)
        finally:
            self.resume_from_checkpoint = held

    patch_item(owner, name, on_train_begin_restoring)


RELORA_MODULE = "axolotl.monkeypatch.relora"
RELORA_TARGET = (RELORA_MODULE, "ReLoRACallback.on_train_begin")


def apply_relora_restarts() -> None:
    """ReLoRA's logged ``num_lora_restarts`` restarts at 0 after any resume (explicit or auto).

    ``ReLoRACallback`` counts its restarts in memory and logs the count at every log; no checkpoint
    holds it. At train begin of a resumed run (``global_step`` above 0) a count still at 0 is set to
    the restarts the run made up to the resumed step (:func:`relora_restarts`), which is what the run
    would log there had it not stopped. The restarts are a function of the step (every
    ``jagged_restart_steps``), so nothing needs saving. A callback without the count or the restart
    interval is left as is.
    """
    import importlib.util

    if importlib.util.find_spec(RELORA_MODULE) is None:
        return
    owner, name, on_train_begin = require(*RELORA_TARGET)

    @wraps(on_train_begin)
    def on_train_begin_counting(self: Any, args: Any, state: Any, *rest: Any, **kwargs: Any) -> Any:
        step = int(getattr(state, "global_step", 0) or 0)
        every = getattr(self, "jagged_restart_steps", None) or getattr(self, "relora_steps", None)  # 0.17 renamed it
        if step > 0 and getattr(self, "num_lora_restarts", None) == 0 and isinstance(every, int) and every > 0:
            self.num_lora_restarts = relora_restarts(step, every)
        return on_train_begin(self, args, state, *rest, **kwargs)

    patch_item(owner, name, on_train_begin_counting)


TRAINER_MODULE = "axolotl.core.trainers.base"  # AxolotlTrainer._save writes the token counters under its TOKENS_STATE_FILE


def apply_token_state_file() -> None:
    """Axolotl 0.13.2 to 0.15.0: the token counters are written under one name and read under another.

    There ``AxolotlTrainer._save`` writes them into each checkpoint as ``tokens_state.`` (its module's
    ``TOKENS_STATE_FILE``) and ``TokensPerSecondCallback.on_train_begin`` reads ``tokens_state.json``
    (its own module's): the file is never found, and ``tokens/total`` and ``tokens/trainable`` restart
    at zero after any resume, explicit or auto. The reader is given the writer's name, so checkpoints
    those releases wrote (stock or patched) are read as written. From Axolotl 0.16 both import one
    constant (``axolotl.core.trainers.constants``): nothing is patched. Idempotent (patched, the names
    agree); :func:`axolotl_savefix.revert` gives the reader its own name back.
    """
    import importlib

    reader = importlib.import_module(TOKENS_MODULE)
    writer = importlib.import_module(TRAINER_MODULE)
    read, written = getattr(reader, "TOKENS_STATE_FILE", None), getattr(writer, "TOKENS_STATE_FILE", None)
    if isinstance(read, str) and isinstance(written, str) and read != written:
        patch_item(reader, "TOKENS_STATE_FILE", written)


EPOCH_ORDER_TARGET = ("transformers.trainer", "skip_first_batches", ("dataloader", "num_batches"))
EPOCH_ORDER_FIXED = "5.0.0.dev0"  # Transformers PR 40691: set_epoch after skip_first_batches (5.0.0's trainer.py)


def apply_epoch_order() -> None:
    """Transformers issue 40690: a mid-epoch resume in epoch >= 1 replays epoch 0's sample order.

    Before 5.0, ``Trainer._inner_training_loop`` calls ``set_epoch(epoch)`` on the train dataloader and
    then, on the resumed epoch, replaces it with ``skip_first_batches(dataloader, n)``: Accelerate's new
    ``DataLoaderShard`` starts at ``iteration`` 0 and its ``__iter__`` calls ``set_epoch(0)`` on the
    sampler it shares, so the resumed epoch skips ``n`` batches of epoch 0's shuffled order and trains on
    the rest of it (measured on Axolotl 0.13.2, Transformers 4.57.6: tests/e2e/test_resume_fidelity.py).
    The wrapper gives the skipping dataloader the epoch the original holds (``iteration``), as
    Transformers 5.0 does by calling ``set_epoch`` after the skip. Transformers 5.0 and later: nothing
    is patched. A dataloader without ``iteration`` or ``set_epoch`` (not Accelerate's) is left as is.
    """
    import transformers
    from packaging.version import Version

    if Version(transformers.__version__) >= Version(EPOCH_ORDER_FIXED):
        return
    owner, name, skip_first_batches = require(*EPOCH_ORDER_TARGET)
    if getattr(skip_first_batches, "__savefix_original__", None) is not None:
        return  # already ours: applied once

    @wraps(skip_first_batches)
    def skip_first_batches_in_epoch(dataloader: Any, num_batches: int = 0, *args: Any, **kwargs: Any) -> Any:
        skipped = skip_first_batches(dataloader, num_batches, *args, **kwargs)
        epoch = getattr(dataloader, "iteration", None)
        if isinstance(epoch, int) and epoch > 0 and hasattr(skipped, "set_epoch"):
            skipped.set_epoch(epoch)
        return skipped

    patch_item(owner, name, skip_first_batches_in_epoch)


SAVE_TARGET = ("axolotl.core.trainers.base", "AxolotlTrainer._save", ("output_dir", "state_dict"))


class _NodeMainAccelerator:
    """The trainer's accelerator as Axolotl's ``_save`` sees it on a node's main process: ``is_main_process``."""

    is_main_process = True

    def __init__(self, accelerator: Any) -> None:
        self._accelerator = accelerator

    def __getattr__(self, name: str) -> Any:
        return getattr(self._accelerator, name)


def _node_main_saves(is_main_process: bool) -> bool:
    return is_main_process


def apply_save_on_each_node() -> None:
    """``save_on_each_node: true`` writes the weights on every node's main process, not only on rank 0.

    Transformers calls ``_save`` where ``args.should_save`` (each node's local rank 0 under
    ``save_on_each_node``), but Axolotl's ``AxolotlTrainer._save`` passes
    ``is_main_process=accelerator.is_main_process`` (rank 0 only) to ``save_pretrained``: the
    other nodes' checkpoints get the optimizer, scheduler and ``trainer_state.json`` but no
    ``model.safetensors`` nor ``config.json``, and Transformers' resume then fails there with
    ``Can't find a valid checkpoint`` (observed, Axolotl 0.19.0, two nodes). Transformers'
    ``save_pretrained`` itself writes only on ``torch.distributed`` rank 0
    (``should_save_on_this_rank``, Transformers 5), whatever ``is_main_process`` says. During
    a save on a node's main process that is not rank 0, ``_save`` sees an accelerator whose
    ``is_main_process`` is true, and the model's ``should_save_on_this_rank`` (an instance
    attribute for that save only) returns what it is given.
    """
    owner, name, save = require(*SAVE_TARGET)

    @wraps(save)
    def _save(self: Any, output_dir: Any = None, state_dict: Any = None, *args: Any, **kwargs: Any) -> Any:
        accelerator = self.accelerator
        if not (getattr(self.args, "save_on_each_node", False) and self.args.should_save and not accelerator.is_main_process):
            return save(self, output_dir, state_dict, *args, **kwargs)
        models = {id(m): m for m in (self.model, accelerator.unwrap_model(self.model)) if hasattr(m, "should_save_on_this_rank")}
        self.accelerator = _NodeMainAccelerator(accelerator)
        for model in models.values():  # an instance attribute, for this save only
            model.should_save_on_this_rank = _node_main_saves
        try:
            return save(self, output_dir, state_dict, *args, **kwargs)
        finally:
            self.accelerator = accelerator
            for model in models.values():
                del model.should_save_on_this_rank

    patch_item(owner, name, _save)


# --- issue 22: a resume that matches the run -------------------------------------------------------------------


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def _dataset_hash(builder: Any) -> str | None:
    """Axolotl's prepared-dataset hash of the train split (what ``dataset_prepared_path`` is keyed by); None if unknown."""
    try:
        from axolotl.utils.data.shared import generate_dataset_hash_from_config

        tokenizer = getattr(builder, "tokenizer", None)
        datasets = builder.cfg.get("datasets")
        if tokenizer is None or not datasets:
            return None
        return str(generate_dataset_hash_from_config(builder.cfg, datasets, tokenizer.name_or_path))
    except Exception:  # noqa: BLE001 - a builder without SFT datasets (RL, pretraining): compared without it
        return None


def _put_scheduler_at(scheduler: Any, step: int) -> bool:
    """Put a fresh learning-rate scheduler at ``step`` (as if it had been stepped ``step`` times)."""
    import warnings

    inner = getattr(scheduler, "scheduler", scheduler)  # Accelerate's AcceleratedScheduler wraps it
    if not hasattr(inner, "last_epoch") or not hasattr(inner, "step"):
        return False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()": on purpose here
        inner.last_epoch = step - 1
        inner.step()
    return True


class RunMatchCallback(TrainerCallback):
    """At train begin of a resumed run: stop when the checkpoint does not belong to the run (:func:`run_match.decide`).

    Raises :class:`run_match.RunMismatchError` (before the first step and before
    ``eval_on_start``) naming what was found, why, and the fix.
    """

    def __init__(self, cfg: Any, fingerprint: dict) -> None:
        self.cfg = cfg
        self.fingerprint = fingerprint
        # Axolotl's builder runs before determine_last_checkpoint: set now means set by the user
        self.explicit = cfg.get("resume_from_checkpoint")

    def on_train_begin(self, args: Any, state: Any, control: Any, lr_scheduler: Any = None, **kwargs: Any) -> Any:
        checkpoint = self.cfg.get("resume_from_checkpoint")
        if not checkpoint or not state.global_step or not Path(str(checkpoint)).is_dir():
            return control
        folder = Path(str(checkpoint))
        try:
            saved = json.loads((folder / checkpoints.STATE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            saved = {}
        run, note = checkpoints.load_record(saved)
        if note:
            log_once(f"bad-input:{folder}/{note}", f"{folder.name}/{note}", logging.WARNING)
        recorded = (run or {}).get("fingerprint") or None
        model_only = bool(run.get("save_only_model")) if run else bool(self.cfg.get("save_only_model"))
        current = {**self.fingerprint, "world_size": int(args.world_size), "max_steps": int(state.max_steps)}
        verdict = run_match.decide(
            folder.name,
            int(state.global_step),
            int(state.max_steps),
            auto=not self.explicit,
            anyway=bool(self.cfg.get(savefix_args.RESUME_ANYWAY_KEY)),
            recorded=recorded,
            current=current,
            lacks=run_match.lacks_training_state((p.name, p.is_dir()) for p in folder.iterdir()),
            model_only=model_only,
        )
        if verdict.error:
            raise run_match.RunMismatchError(verdict.error)
        for line in verdict.warnings:
            log_once(f"run-match:{line}", line, logging.WARNING)
        for line in verdict.notes:
            log_once(f"run-match:{line}", line)
        if verdict.reset_scheduler and lr_scheduler is not None and _put_scheduler_at(lr_scheduler, int(state.global_step)):
            log_once(f"run-match-scheduler:{folder}", f"learning-rate scheduler put at step {state.global_step}")
        return control


def apply_run_match() -> None:
    """``validate_config``: carry ``savefix_resume_anyway`` past Axolotl's schema; warn on save_only_model + auto-resume."""
    module, name, validate = require(*VALIDATE_TARGET)

    def warn_save_only_model(validated: Any, carried: dict[str, Any]) -> None:
        warning = run_match.save_only_model_warning(validated)
        if warning and not carried[savefix_args.RESUME_ANYWAY_KEY]:
            log_once("save-only-model-resume", warning, logging.WARNING)

    checks = {savefix_args.RESUME_ANYWAY_KEY: savefix_args.resume_anyway}  # first: Axolotl's schema would drop it
    patch_item(module, name, savefix_args.carrying(validate, checks, warn_save_only_model), rebind_copies=True)
