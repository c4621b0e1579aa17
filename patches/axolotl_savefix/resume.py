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
  which stops a resume into a checkpoint that does not belong to the run (issue 22).
* ``axolotl.utils.config.validate_config``: carries ``savefix_resume_anyway`` past
  Axolotl's schema and warns when ``save_only_model`` meets auto-resume.

Where the resume is checked: at train begin (``on_train_begin``), not in
``determine_last_checkpoint``. Axolotl picks the checkpoint before the trainer
exists, but the run's last step (``max_steps``) is only known once the
dataloader is built (packing, sharding across ranks), inside Transformers'
``_inner_training_loop``; ``on_train_begin`` is its first callback, after the
checkpoint's state is loaded and before ``eval_on_start`` and the first step,
so nothing has been trained or written when it stops the run.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from . import args as savefix_args
from . import checkpoints, run_match
from ._log import log_once
from ._patching import patch_item, wraps
from ._targets import require
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


assert SaveFixCheckpointRecord.__name__ == checkpoints.RECORD  # the name Transformers stores its state under


def _local_main() -> bool:
    return int(os.environ.get("LOCAL_RANK", "0") or 0) == 0


def _describe(problems: list[str]) -> str:
    return "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")


def set_aside_incomplete(output_dir: str) -> tuple[Path | None, list[tuple[Path, list[str], Path | None]]]:
    """The newest complete checkpoint; each incomplete one, what it lacks, and where it was moved.

    Only the main process of each node moves folders (``None``: moved by another
    process); every rank finds the same newest complete checkpoint, moved or not.
    """
    scanned = [(p, checkpoints.missing(p)) for p in checkpoints.checkpoints(output_dir)]  # each folder read once
    incomplete = [(p, lacks) for p, lacks in scanned if lacks]
    newest = next((p for p, lacks in reversed(scanned) if not lacks), None)
    moved = []
    for folder, lacks in incomplete:
        target = None
        if _local_main():
            try:
                target = checkpoints.quarantine(folder)
            except FileNotFoundError:  # another node's main process (shared disk) moved it first
                pass
        moved.append((folder, lacks, target))
    return newest, moved


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
                f"{folder.name} is incomplete: it lacks {_describe(lacks)}; moved to "
                f"{target.name if target else checkpoints.QUARANTINE_PREFIX + folder.name} "
                f"(delete it to free the space); {resumed}",
                logging.WARNING,
            )
        return result

    patch_item(module, name, determine_last_checkpoint, rebind_copies=True)
    apply_run_match()


def apply_builder() -> None:
    """The trainer builder's part, applied when ``axolotl.core.builders.base`` is imported."""
    owner, name, get_callbacks = require(*CALLBACKS_TARGET)

    @wraps(get_callbacks)
    def get_callbacks_with_record(self: Any, *args: Any, **kwargs: Any) -> Any:
        callbacks = get_callbacks(self, *args, **kwargs)
        record = SaveFixCheckpointRecord()
        record.fingerprint = run_match.fingerprint(self.cfg, dataset_hash=_dataset_hash(self), world_size=_world_size())
        callbacks += [record, RunMatchCallback(self.cfg, record.fingerprint)]
        return callbacks

    patch_item(owner, name, get_callbacks_with_record)


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

    @wraps(validate)
    def validate_config(cfg: Any, *args: Any, **kwargs: Any) -> Any:
        anyway = savefix_args.resume_anyway(cfg)  # checked first: Axolotl's schema would drop the key
        validated = validate(cfg, *args, **kwargs)
        if anyway is not None:
            validated[savefix_args.RESUME_ANYWAY_KEY] = anyway
        warning = run_match.save_only_model_warning(validated)
        if warning and not anyway:
            log_once("save-only-model-resume", warning, logging.WARNING)
        return validated

    patch_item(module, name, validate_config, rebind_copies=True)
