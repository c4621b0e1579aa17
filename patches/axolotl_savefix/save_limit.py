"""Defect 3: ``save_total_limit`` is forced to 4 when unset, and an explicit 0 becomes 4.

Target: ``TrainerBuilderBase._configure_save_and_eval_strategy`` (the line
``save_total_limit if save_total_limit else 4``) and ``get_callbacks``.

Replacement:

* an explicit positive value is kept;
* ``0`` keeps every checkpoint (Transformers' meaning: no rotation);
* unset: keep at least every checkpoint the run will save, never fewer than
  upstream's 4. The number of saves is known once the Trainer knows its
  batches per epoch, so the builder passes upstream's 4 as a floor and
  :class:`SaveLimitCallback` raises it at ``on_train_begin``.
  :func:`default_limit` is the one place that decides; a disk-space rule
  plugs in there.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from ._log import log_once
from ._patching import patch_item, wraps
from ._targets import require
from .save_decision import CALLBACKS_TARGET, STRATEGY_TARGET
from .schedule import RunShape

UPSTREAM_DEFAULT = 4


def default_limit(planned_saves: int) -> int:
    """``save_total_limit`` for a run that left it unset and will save ``planned_saves`` times."""
    return max(UPSTREAM_DEFAULT, planned_saves)


def planned_steps(cfg: Any, args: Any, shape: RunShape) -> list[int] | None:
    """The steps this run saves at, or ``None`` where no schedule is known (``best``, ``no``)."""
    if cfg.get("saves_per_epoch"):
        steps = shape.per_epoch_steps(cfg["saves_per_epoch"])
    elif str(getattr(args.save_strategy, "value", args.save_strategy)) == "steps":
        steps = shape.interval_steps(args.save_steps)
    elif str(getattr(args.save_strategy, "value", args.save_strategy)) == "epoch":
        steps = shape.epoch_end_steps()
    else:
        return None
    if cfg.get("save_first_step") and 1 not in steps:
        steps = [1, *steps]
    return steps


class SaveLimitCallback(TrainerCallback):
    """Resolve an unset ``save_total_limit`` once the run's shape is known."""

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    def on_train_begin(self, args: Any, state: Any, control: Any, train_dataloader: Any = None, **kwargs: Any) -> Any:
        if train_dataloader is None or not len(train_dataloader) or state.max_steps <= 0:
            return control
        shape = RunShape(len(train_dataloader), args.gradient_accumulation_steps, state.max_steps)
        steps = planned_steps(self.cfg, args, shape)
        if steps is None:
            return control
        args.save_total_limit = default_limit(len(steps))
        log_once(
            "limit",
            f"save_total_limit unset: this run saves {len(steps)} checkpoints and keeps "
            f"{args.save_total_limit} (set save_total_limit to keep fewer, 0 to keep all).",
        )
        return control


def apply() -> None:
    owner, name, configure = require(*STRATEGY_TARGET)

    @wraps(configure)
    def _configure_save_and_eval_strategy(self: Any, training_args_kwargs: dict, *args: Any, **kwargs: Any) -> Any:
        result = configure(self, training_args_kwargs, *args, **kwargs)
        limit = self.cfg.save_total_limit
        if limit is None:
            training_args_kwargs["save_total_limit"] = UPSTREAM_DEFAULT  # raised at train begin
        elif limit == 0:
            training_args_kwargs["save_total_limit"] = None  # keep every checkpoint
        else:
            training_args_kwargs["save_total_limit"] = limit
        return result

    patch_item(owner, name, _configure_save_and_eval_strategy)

    owner, name, get_callbacks = require(*CALLBACKS_TARGET)

    @wraps(get_callbacks)
    def get_callbacks_with_limit(self: Any, *args: Any, **kwargs: Any) -> Any:
        callbacks = get_callbacks(self, *args, **kwargs)
        if self.cfg.save_total_limit is None:
            callbacks.append(SaveLimitCallback(self.cfg))
        return callbacks

    patch_item(owner, name, get_callbacks_with_limit)
