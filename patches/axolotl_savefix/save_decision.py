"""Defect 2: which steps save. The fix: save when epoch progress reaches j/k.

Targets: ``TrainerBuilderBase._configure_save_and_eval_strategy`` (which steps
Transformers saves by itself) and ``TrainerBuilderBase.get_callbacks`` (the
callbacks every trainer builder starts from; subclasses call ``super()``).

Replacement: for a ``saves_per_epoch`` run Transformers keeps the ``steps``
strategy, so it still saves the last step, tracks the best checkpoint and
accepts ``load_best_model_at_end``, but its interval is set past any run
(:data:`NEVER`): :class:`SavesPerEpochCallback` makes every other save. It
compares Transformers' float ``state.epoch`` with the targets j/k using
:func:`math.isclose` for "reached", and keeps the count of targets already
saved as guard, so each target saves exactly once: also when the batches per
epoch are not divisible by k, when one step crosses several targets, and after
a resume (the guard is rebuilt from the restored ``state.epoch``).
"""

from __future__ import annotations

import logging
from typing import Any

from transformers import TrainerCallback

from . import schedule
from ._log import log_once
from ._patching import patch_item, wraps
from ._targets import require

BUILDER = "axolotl.core.builders.base"
STRATEGY_TARGET = (BUILDER, "TrainerBuilderBase._configure_save_and_eval_strategy", ("training_args_kwargs",))
CALLBACKS_TARGET = (BUILDER, "TrainerBuilderBase.get_callbacks")

# Transformers' own step interval for a saves_per_epoch run: never reached.
NEVER = 2**62


class SavesPerEpochCallback(TrainerCallback):
    """Save at the first step whose epoch progress reaches each target j/k."""

    def __init__(self, saves_per_epoch: int) -> None:
        self.saves_per_epoch = saves_per_epoch
        self.targets_saved = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, train_dataloader: Any = None, **kwargs: Any) -> Any:
        # Fresh run: epoch 0. Resume: the restored epoch, so targets saved before the stop stay saved.
        self.targets_saved = schedule.targets_reached(state.epoch or 0.0, self.saves_per_epoch)
        if train_dataloader is not None and len(train_dataloader):
            per_epoch = schedule.steps_per_epoch(len(train_dataloader), args.gradient_accumulation_steps)
            if self.saves_per_epoch > per_epoch:
                log_once(
                    "k>S",
                    f"saves_per_epoch: {self.saves_per_epoch} is more than the {per_epoch} optimizer "
                    f"steps per epoch; saving every step ({per_epoch} per epoch). "
                    f"Set saves_per_epoch to {per_epoch} or less.",
                    logging.WARNING,
                )
        return control

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        reached = schedule.targets_reached(state.epoch, self.saves_per_epoch)
        if reached > self.targets_saved:
            self.targets_saved = reached
            control.should_save = True
        if state.max_steps > 0 and state.global_step >= state.max_steps:
            control.should_save = True
        return control


def apply() -> None:
    owner, name, configure = require(*STRATEGY_TARGET)

    @wraps(configure)
    def _configure_save_and_eval_strategy(self: Any, training_args_kwargs: dict, *args: Any, **kwargs: Any) -> Any:
        result = configure(self, training_args_kwargs, *args, **kwargs)
        if self.cfg.saves_per_epoch:
            training_args_kwargs["save_strategy"] = "steps"
            training_args_kwargs["save_steps"] = NEVER
        return result

    patch_item(owner, name, _configure_save_and_eval_strategy)

    owner, name, get_callbacks = require(*CALLBACKS_TARGET)

    @wraps(get_callbacks)
    def get_callbacks_with_saves(self: Any, *args: Any, **kwargs: Any) -> Any:
        callbacks = get_callbacks(self, *args, **kwargs)
        if self.cfg.saves_per_epoch:
            callbacks.append(SavesPerEpochCallback(self.cfg.saves_per_epoch))
        return callbacks

    patch_item(owner, name, get_callbacks_with_saves)
