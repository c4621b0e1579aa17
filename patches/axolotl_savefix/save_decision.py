"""Defect 2: which steps save. The fix: save when epoch progress reaches j/k.

Targets: ``TrainerBuilderBase._configure_save_and_eval_strategy`` (which steps
Transformers saves by itself) and ``TrainerBuilderBase.get_callbacks`` (the
callbacks every trainer builder starts from; subclasses call ``super()``).

Replacement: for a ``saves_per_epoch`` run Transformers keeps the ``steps``
strategy, so it still saves the last step, tracks the best checkpoint and
accepts ``load_best_model_at_end``, but its interval is set past any run
(:data:`~axolotl_savefix.per_epoch.NEVER`):
:class:`~axolotl_savefix.per_epoch.SavesPerEpochCallback` makes every other save.
"""

from __future__ import annotations

from typing import Any

from ._patching import patch_item, wraps
from ._targets import require
from .per_epoch import NEVER, SavesPerEpochCallback

BUILDER = "axolotl.core.builders.base"
STRATEGY_TARGET = (BUILDER, "TrainerBuilderBase._configure_save_and_eval_strategy", ("training_args_kwargs",))
CALLBACKS_TARGET = (BUILDER, "TrainerBuilderBase.get_callbacks")

__all__ = ["NEVER", "SavesPerEpochCallback", "apply", "apply_builder"]


def apply() -> None:
    """Nothing to patch before the trainer builder is imported (see :func:`apply_builder`)."""


def apply_builder() -> None:
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
