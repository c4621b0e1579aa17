"""``save_total_limit`` keeps what you asked for: ``0`` keeps all, unset keeps every scheduled checkpoint that fits.

Upstream issue 1520.

Stock Axolotl's builder passes ``save_total_limit if save_total_limit else 4``: unset and an explicit
``0`` both become 4, and rotation deletes every checkpoint but the last 4. Upstream refused "keep
all" as the default (PR 2177) because users run out of disk; the disk rule answers that.

Targets (``_infra.targets``):

* ``configure_strategy``: an explicit positive value is kept; ``0`` or a negative one keeps every
  checkpoint (Transformers' meaning, and stock's for a negative one); unset gets upstream's 4 as a
  floor until the run's shape is known;
* ``get_callbacks``: :class:`PlanCallback` logs the run's plan (:mod:`rules.plan`) at train begin
  and resolves an unset limit: every checkpoint the run schedules (never fewer than 4) when they fit
  in ``output_dir``'s free space with a margin (``savefix_disk_margin``, default 10%), else the
  newest that fit, never fewer than 2 (:mod:`rules.disk`); estimated before the first save, measured
  after it, one warning when the disk lowered it. :class:`RotateAtTrainEnd` finishes a rotation a kill
  interrupted after the last save (the rerun saves nothing, so it never rotates);
* ``validate_config``: carries ``savefix_disk_margin`` past Axolotl's schema (:mod:`rules.keys`).

Upstream: docs/upstream/series, PR 2 (``0`` keeps all, the warning for an unset limit); the disk
rule stays in the plugin (PR.md says why).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from .._infra import hooks, journal
from .._infra.log import log_once
from .._infra.per_epoch import batches_per_epoch
from ..rules import checkpoints, disk, keys, plan

NAME = "retention"
UPSTREAM_DEFAULT = disk.UPSTREAM_DEFAULT
model_checkpoint_bytes = disk.model_checkpoint_bytes


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
        batches = batches_per_epoch(train_dataloader)
        if not batches and self.settings.streamed and state.max_steps > 0:
            batches = state.max_steps * args.gradient_accumulation_steps  # no length: Transformers' one epoch, the run
        if not batches or state.max_steps <= 0:
            return control
        self.shape = (batches, state.max_steps)
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
        self.measured = True  # on every rank, so each joins the one barrier
        journal.after_commit(self._measure, args, state)  # the whole checkpoint: every file, the marker last
        return control

    def _measure(self, args: Any, state: Any, folder: Path) -> None:
        """The first checkpoint measured once committed: the unset limit resolved again from its bytes."""
        _wait_for_every_rank()  # FSDP / DeepSpeed: other ranks may still be writing their part (no marker: no barrier yet)
        size = disk.dir_bytes(folder)
        if not size:  # not visible from this process (another node's local disk)
            return
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


class RotateAtTrainEnd(TrainerCallback):
    """At train end, the rotation a save would run: finishes one a kill interrupted (module docstring)."""

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:  # noqa: ARG002 - TrainerCallback's hook
        if args.should_save and os.path.isdir(args.output_dir):
            hooks.rotate_now(str(args.output_dir), args.save_total_limit, state.best_model_checkpoint)
        return control


def _strategy(call: Any, builder: Any, training_args_kwargs: dict, *args: Any, **kwargs: Any) -> Any:
    result = call(builder, training_args_kwargs, *args, **kwargs)
    limit = builder.cfg.save_total_limit
    if limit is None:
        training_args_kwargs["save_total_limit"] = UPSTREAM_DEFAULT  # resolved at train begin
    elif limit <= 0:
        training_args_kwargs["save_total_limit"] = None  # keep every checkpoint (Transformers' meaning of <= 0)
    else:
        training_args_kwargs["save_total_limit"] = limit
    return result


def install() -> None:
    hooks.carry(keys.DISK_MARGIN, NAME, 40, keys.disk_margin)
    hooks.add(hooks.Layer("configure_strategy", NAME, 20, _strategy))
    hooks.add_callbacks("plan", NAME, lambda builder: [PlanCallback(builder.cfg)])
    hooks.add_callbacks("rotate at train end", NAME, lambda builder: [RotateAtTrainEnd()])  # noqa: ARG005
