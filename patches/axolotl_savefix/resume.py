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
  world size (so every rank's RNG file can be asked for) and ``save_only_model``.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from . import checkpoints, disk
from ._log import log_once
from ._patching import patch_item, wraps
from ._targets import require
from .save_decision import CALLBACKS_TARGET

RESUME_TARGET = ("axolotl.utils.train", "determine_last_checkpoint", ("cfg",))


class IncompleteCheckpointError(ValueError):
    """``resume_from_checkpoint`` names a checkpoint that cannot be resumed from."""


class SaveFixCheckpointRecord(TrainerCallback, ExportableState):
    """Records, inside every checkpoint's ``trainer_state.json``, what a complete checkpoint holds."""

    def __init__(self) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1") or 1)
        self.save_only_model = False

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        self.world_size = int(args.world_size)
        self.save_only_model = bool(args.save_only_model)
        return control

    def state(self) -> dict:
        return {"args": {}, "attributes": {"world_size": self.world_size, "save_only_model": self.save_only_model}}


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


def set_aside_incomplete(output_dir: str) -> tuple[Path | None, list[tuple[Path, list[str], Path | str | None]]]:
    """The newest complete checkpoint; each incomplete one, what it lacks, and what became of it.

    The set-aside policy (:func:`checkpoints.cleanup`, docs/user-guide.md "Full disk"): an incomplete
    ``checkpoint-N`` older than the newest complete one is deleted; the newest cut save is moved to
    ``incomplete-checkpoint-N``; at most one set-aside folder is kept (the newest), none when the free
    space of ``output_dir`` is short of one checkpoint. What became of each incomplete ``checkpoint-N``:
    the ``Path`` it was moved to, a ``str`` (deleted, and why), or None (another process's part).
    Only the main process of each node deletes or moves; every rank finds the same newest complete
    checkpoint. Deleted set-aside folders are logged here, one warning line each.
    """
    scanned = [(p, checkpoints.missing(p)) for p in checkpoints.checkpoints(output_dir)]  # each folder read once
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
        newest, incomplete = set_aside_incomplete(cfg.output_dir)
        result = determine(cfg, *args, **kwargs)
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


def apply_builder() -> None:
    """The trainer builder's part, applied when ``axolotl.core.builders.base`` is imported."""
    owner, name, get_callbacks = require(*CALLBACKS_TARGET)

    @wraps(get_callbacks)
    def get_callbacks_with_record(self: Any, *args: Any, **kwargs: Any) -> Any:
        callbacks = get_callbacks(self, *args, **kwargs)
        callbacks.append(SaveFixCheckpointRecord())
        return callbacks

    patch_item(owner, name, get_callbacks_with_record)
