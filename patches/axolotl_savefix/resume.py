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
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from . import args as savefix_args
from . import checkpoints, disk, run_match
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

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self.world_size = int(args.world_size)
        self.save_only_model = bool(args.save_only_model)
        if self.fingerprint:
            self.fingerprint = {**self.fingerprint, "world_size": self.world_size, "max_steps": int(state.max_steps)}
        return control

    def state(self) -> dict:
        attributes = {"world_size": self.world_size, "save_only_model": self.save_only_model, "fingerprint": self.fingerprint}
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


def _describe(problems: list[str]) -> str:
    return "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")


def _delete(folder: Path) -> bool:
    """Delete ``folder``; False when it was already gone (another node's main process deleted it first)."""
    try:
        shutil.rmtree(folder)
    except FileNotFoundError:
        if folder.exists():  # a concurrent delete from another node: finish what remains
            shutil.rmtree(folder, ignore_errors=True)
        return False
    return True


def _sizes(output_dir: str, folders: list[Path]) -> tuple[dict[Path, int], int | None]:
    try:
        return {p: disk.dir_bytes(p) for p in folders}, disk.free_bytes(output_dir)
    except OSError:
        return {}, None


def set_aside_incomplete(
    output_dir: str, judge: Callable[[Path], list[str]] = checkpoints.missing
) -> tuple[Path | None, list[tuple[Path, list[str], Path | str | None]]]:
    """The newest complete checkpoint; each incomplete one, what it lacks, and what became of it.

    The set-aside policy (:func:`checkpoints.cleanup`, docs/user-guide.md "Full disk"): an incomplete
    ``checkpoint-N`` older than the newest complete one is deleted; the newest cut save is moved to
    ``incomplete-checkpoint-N``; at most one set-aside folder is kept (the newest), none when the free
    space of ``output_dir`` is short of one checkpoint. What became of each incomplete ``checkpoint-N``:
    the ``Path`` it was moved to, a ``str`` (deleted, and why), or None (another process's part).
    Only the main process of each node deletes or moves; every rank finds the same newest complete
    checkpoint. Deleted set-aside folders are logged here, one warning line each.
    ``judge``: what a folder lacks (default :func:`checkpoints.missing`, one disk; several
    processes pass :meth:`axolotl_savefix.decision.Verdict.judge`, the job's verdict), so a checkpoint
    another node holds part of is never taken for garbage.
    """
    scanned = [(p, judge(p)) for p in checkpoints.checkpoints(output_dir)]  # each folder read once
    aside = checkpoints.set_aside_folders(output_dir)
    newest = next((p for p, lacks in reversed(scanned) if not lacks), None)
    incomplete = [(p, lacks) for p, lacks in scanned if lacks]
    if not _local_main():
        return newest, [(folder, lacks, None) for folder, lacks in incomplete]
    sizes, free = _sizes(output_dir, [*([newest] if newest else []), *(p for p, _ in incomplete), *aside])
    plan = checkpoints.cleanup(scanned, aside, sizes=sizes, free_bytes=free)
    deleted = dict(plan.delete)
    for folder, why in plan.delete:
        _delete(folder)
        if folder in aside:
            log_once(f"deleted:{folder}", f"deleted {folder.name}: {why}", logging.WARNING)
    moved: list[tuple[Path, list[str], Path | str | None]] = []
    for folder, lacks in incomplete:
        fate: Path | str | None = deleted.get(folder)
        if folder == plan.set_aside:
            try:
                fate = checkpoints.quarantine(folder)
            except FileNotFoundError:  # another node's main process (shared disk) moved it first
                fate = None
        moved.append((folder, lacks, fate))
    return newest, moved


def _fate(folder: Path, target: Path | str | None) -> str:
    if isinstance(target, str):
        return f"deleted ({target})"
    name = target.name if target else checkpoints.QUARANTINE_PREFIX + folder.name
    return f"moved to {name} (kept for inspection: only the newest such folder is kept)"


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
        decided = writes_markers()
        writes = decided if decided is not None else int(args.local_process_index) == 0
        folder = Path(args.output_dir) / f"{checkpoints.PREFIX}{state.global_step}"
        if writes and folder.is_dir():
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


def check_explicit(path: str, output_dir: str | None) -> None:
    lacks = checkpoints.missing(path) if Path(path).is_dir() else []
    if not lacks:
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


def apply() -> None:
    module, name, determine = require(*RESUME_TARGET)

    @wraps(determine)
    def determine_last_checkpoint(cfg: Any, *args: Any, **kwargs: Any) -> Any:
        explicit = cfg.get("resume_from_checkpoint")
        if explicit:
            check_explicit(str(explicit), cfg.get("output_dir"))
            return determine(cfg, *args, **kwargs)
        if not cfg.get("output_dir"):
            return determine(cfg, *args, **kwargs)
        update = kwargs.get("update", args[0] if args else True)
        agreement = agree_on_resume(cfg.output_dir) if update else None  # the resume decision: every rank's
        if agreement is not None and agreement.error and cfg.get("auto_resume_from_checkpoints"):
            raise NotSharedOutputDirError(agreement.error)
        judge = agreement.judge if agreement is not None else checkpoints.missing
        newest, incomplete = set_aside_incomplete(cfg.output_dir, judge)
        result = determine(cfg, *args, **kwargs)
        if agreement is not None and result is not None and cfg.get("auto_resume_from_checkpoints"):
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
            if not cfg.get("auto_resume_from_checkpoints"):
                resumed = "not resuming (auto_resume_from_checkpoints is off)"
            log_once(
                f"incomplete:{folder}",
                f"{folder.name} is incomplete: it lacks {_describe(lacks)}; {_fate(folder, target)}; {resumed}",
                logging.WARNING,
            )
        return result

    patch_item(module, name, determine_last_checkpoint, rebind_copies=True)
    apply_run_match()
    apply_epoch_order()


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
        recorded = (checkpoints.record(saved) or {}).get("fingerprint") or None
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
