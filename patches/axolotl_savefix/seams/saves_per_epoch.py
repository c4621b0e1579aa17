"""``saves_per_epoch: k`` saves at every epoch's fractions j/k exactly, and at every epoch end (upstream issues 1642, 1618).

Stock Axolotl's ``normalize_config`` sets ``save_steps = 1 / (saves_per_epoch * num_epochs)``, a float
ratio of the whole run; Transformers rounds ``max_steps * ratio`` up to an interval, so the count is
wrong and the saves drift off the epoch fractions (``saves_per_epoch: 6`` over a 20-step epoch saves 5
times; the end of epoch 1 is never saved).

Targets (``_infra.targets``):

* ``normalize_config``: the config is checked (:func:`rules.checks.check_save_config`), then the
  original runs with ``saves_per_epoch`` hidden, so no ratio is set; the key is put back;
* ``configure_strategy``: a ``saves_per_epoch`` run keeps Transformers' ``steps`` strategy, so it
  still saves the last step, tracks the best checkpoint and accepts ``load_best_model_at_end``,
  with an interval no run reaches (:data:`_infra.per_epoch.NEVER`);
* ``get_callbacks``: :class:`SavesPerEpochCallback` saves at the first optimizer step whose epoch
  progress reaches each target j/k (:func:`rules.schedule.targets_reached`), and at the last step.

Streamed data (``streaming`` / ``pretraining_dataset``, :func:`rules.checks.streamed_data`): no dataset
length, so Transformers counts the whole ``max_steps`` run as one epoch; every target above steps aside
and ``saves_per_epoch`` keeps stock's ratio (``saves_per_epoch: 1``, ``num_epochs: 4``: 4 saves over the run).

Upstream: docs/upstream/series, PR 1.
"""

from __future__ import annotations

from typing import Any

from .._infra import hooks
from .._infra.per_epoch import NEVER, SavesPerEpochCallback, hiding, saves_callback
from ..rules.checks import check_save_config, per_epoch_value

NAME = "saves_per_epoch"
__all__ = ["SavesPerEpochCallback", "install"]  # the callback lives with the trigger it subclasses (_infra.per_epoch)


def _strategy(call: Any, builder: Any, training_args_kwargs: dict, *args: Any, **kwargs: Any) -> Any:
    result = call(builder, training_args_kwargs, *args, **kwargs)
    if per_epoch_value(builder.cfg, "saves_per_epoch"):  # None with streamed data: stock's ratio stays
        training_args_kwargs["save_strategy"] = "steps"
        training_args_kwargs["save_steps"] = NEVER
    return result


def _callbacks(builder: Any) -> list[Any]:
    k = per_epoch_value(builder.cfg, "saves_per_epoch")
    return [saves_callback(builder.cfg, k)] if k else []


def install() -> None:
    hooks.add(hooks.Layer("normalize_config", NAME, 20, hiding("saves_per_epoch", check_save_config)))
    hooks.add(hooks.Layer("configure_strategy", NAME, 30, _strategy))
    hooks.add_callbacks("saves per epoch", NAME, _callbacks)
