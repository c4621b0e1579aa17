"""Defect 3: ``save_total_limit`` is forced to 4 when unset, and an explicit 0 becomes 4.

Targets: ``TrainerBuilderBase._configure_save_and_eval_strategy`` (the line
``save_total_limit if save_total_limit else 4``), ``get_callbacks``, and
``validate_config`` (and its ``axolotl.cli.config`` copy), which checks
``savefix_disk_margin`` and ``save_on_each_node`` and carries them past Axolotl's
schema (the builder passes ``save_on_each_node`` on to Transformers' training args).

Replacement:

* an explicit positive value is kept, never changed;
* ``0`` keeps every checkpoint (Transformers' meaning: no rotation), and so
  does a negative value, as it does in stock (Transformers never rotates then);
* unset: keep every checkpoint the run will save (at least upstream's 4) when
  they fit on ``output_dir``'s file system with a margin, else what fits, never
  fewer than 2 (:mod:`axolotl_savefix.disk`). The builder passes upstream's 4;
  :class:`PlanCallback` resolves the real value at ``on_train_begin`` from an
  estimate of one checkpoint's size, then again from the measured size of the
  first checkpoint written, and warns once if the disk lowered it.

:class:`PlanCallback` also logs the run's plan (:mod:`axolotl_savefix.plan`) at
the start of every patched run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from . import args as savefix_args
from . import checkpoints, disk, plan
from ._log import log_once
from ._patching import patch_item, wraps
from ._targets import require
from .save_decision import CALLBACKS_TARGET, STRATEGY_TARGET

UPSTREAM_DEFAULT = disk.UPSTREAM_DEFAULT
VALIDATE_TARGET = ("axolotl.utils.config", "validate_config", ("cfg",))


def model_checkpoint_bytes(model: Any, optimizer: str | None, save_only_model: bool = False) -> int:
    """Estimate one checkpoint of ``model`` (a torch module, or a PEFT model: adapter only)."""
    total = trainable = 0
    dtype_bytes = 4
    for param in model.parameters():
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
        dtype_bytes = param.element_size()
    return disk.estimate_checkpoint_bytes(
        total,
        trainable,
        dtype_bytes,
        optimizer,
        adapter_only=hasattr(model, "peft_config"),
        save_only_model=save_only_model,
    )


def _wait_for_every_rank() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def _checkpoints_bytes(output_dir: str) -> int:
    return sum(disk.dir_bytes(p) for p in Path(output_dir).glob("checkpoint-*") if p.is_dir())


class PlanCallback(TrainerCallback):
    """Log the plan at train begin; resolve an unset ``save_total_limit`` against the disk."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg
        self.settings = plan.Settings.from_config(cfg)
        self.shape: tuple[int, int] | None = None
        self.measured = False
        self.final_bytes: int | None = None

    def _plan(self, args: Any, checkpoint_bytes: int | None, measured: bool) -> plan.Plan:
        assert self.shape is not None
        batches, max_steps = self.shape
        available = disk.free_bytes(args.output_dir) + _checkpoints_bytes(args.output_dir)  # set-aside folders: used
        return plan.make_plan(
            self.settings,
            batches,
            max_steps,
            checkpoint_bytes=checkpoint_bytes,
            checkpoint_measured=measured,
            free_bytes=available,
            final_bytes=self.final_bytes,
        )

    def _rotation_limit(self, run_plan: plan.Plan) -> int | None:
        """The plan's limit for Transformers' rotation, plus ReLoRA's restart folders, which it counts too."""
        limit = run_plan.patched.limit
        if not limit or not self.cfg.get("relora") or self.shape is None:
            return limit
        every = self.cfg.get("jagged_restart_steps") or self.cfg.get("relora_steps")  # the key's name up to 0.16, from 0.17
        extra = plan.relora_restart_folders(self.shape[1], every if isinstance(every, int) else None, run_plan.patched.saved)
        return limit + len(extra)

    def on_train_begin(
        self, args: Any, state: Any, control: Any, train_dataloader: Any = None, model: Any = None, **kwargs: Any
    ) -> Any:
        if train_dataloader is None or not len(train_dataloader) or state.max_steps <= 0:
            return control
        self.shape = (len(train_dataloader), state.max_steps)
        estimate = None
        if model is not None:
            optim = str(getattr(args.optim, "value", args.optim))
            estimate = model_checkpoint_bytes(model, optim, args.save_only_model)
            self.final_bytes = model_checkpoint_bytes(model, optim, save_only_model=True)  # Axolotl's final save
        newest = checkpoints.newest_complete(args.output_dir)  # a resumed run: one checkpoint, measured
        measured = disk.dir_bytes(newest) if newest is not None else 0
        run_plan = self._plan(args, measured or estimate, measured=bool(measured))
        if self.cfg.get("save_total_limit") is None:
            args.save_total_limit = self._rotation_limit(run_plan)
        for n, line in enumerate(plan.log_lines(run_plan)):
            log_once(f"plan{n}:{id(self)}", line)  # once per run
        warning = run_plan.disk_warning()
        if warning:  # the user's choice: the run goes on, told once
            log_once(f"disk-short:{id(self)}", warning, logging.WARNING)
        return control

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self.measured or self.shape is None or self.cfg.get("save_total_limit") is not None:
            return control
        self.measured = True  # on every rank, so each joins the one barrier below
        _wait_for_every_rank()  # FSDP / DeepSpeed: other ranks may still be writing their part
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        size = disk.dir_bytes(folder)
        if not size:  # not visible from this process (another node's local disk)
            return control
        log_once(f"measured:{id(self)}", f"measured {folder.name}: {size} bytes allocated ({disk.human(size)}) for the disk rule")
        run_plan = self._plan(args, size, measured=True)
        args.save_total_limit = self._rotation_limit(run_plan)
        saves = len(run_plan.patched.saved or [])
        if run_plan.limit_lowered_for_disk:
            floor_note = ""
            if (args.save_total_limit + 1) * size > disk.budget(run_plan.free_bytes or 0, run_plan.margin):
                floor_note = f" Even {args.save_total_limit} (the floor, for a resume) may not fit: free space now."
            log_once(
                f"disk:{id(self)}",
                f"save_total_limit unset: the {saves} scheduled checkpoints need {disk.human(size * saves)} "
                f"({disk.human(size)} each, measured: allocated) but output_dir has {disk.human(run_plan.free_bytes or 0)} "
                f"for checkpoints (margin {run_plan.margin:.0%}): keeping the newest {args.save_total_limit}. "
                "Set save_total_limit to choose, free space, or lower savefix_disk_margin." + floor_note,
                logging.WARNING,
            )
        return control


def apply() -> None:
    module, name, validate = require(*VALIDATE_TARGET)

    # the keys are checked first: Axolotl's schema would drop them
    checks = {savefix_args.KEY: savefix_args.disk_margin, savefix_args.ON_EACH_NODE: savefix_args.save_on_each_node}
    patch_item(module, name, savefix_args.carrying(validate, checks), rebind_copies=True)


def apply_builder() -> None:
    """The trainer builder's part, applied when ``axolotl.core.builders.base`` is imported."""
    owner, name, configure = require(*STRATEGY_TARGET)

    @wraps(configure)
    def _configure_save_and_eval_strategy(self: Any, training_args_kwargs: dict, *args: Any, **kwargs: Any) -> Any:
        result = configure(self, training_args_kwargs, *args, **kwargs)
        limit = self.cfg.save_total_limit
        if limit is None:
            training_args_kwargs["save_total_limit"] = UPSTREAM_DEFAULT  # resolved at train begin
        elif limit <= 0:
            training_args_kwargs["save_total_limit"] = None  # keep every checkpoint (Transformers' meaning of <= 0)
        else:
            training_args_kwargs["save_total_limit"] = limit
        if self.cfg.get(savefix_args.ON_EACH_NODE) is not None:  # carried past Axolotl's schema by validate_config
            training_args_kwargs[savefix_args.ON_EACH_NODE] = bool(self.cfg.get(savefix_args.ON_EACH_NODE))
        return result

    patch_item(owner, name, _configure_save_and_eval_strategy)

    owner, name, get_callbacks = require(*CALLBACKS_TARGET)

    @wraps(get_callbacks)
    def get_callbacks_with_plan(self: Any, *args: Any, **kwargs: Any) -> Any:
        callbacks = get_callbacks(self, *args, **kwargs)
        callbacks.append(PlanCallback(self.cfg))
        return callbacks

    patch_item(owner, name, get_callbacks_with_plan)
