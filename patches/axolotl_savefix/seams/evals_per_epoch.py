"""``evals_per_epoch: k`` evaluates at every epoch's fractions j/k exactly, and the best model is picked from fresh metrics.

Stock Axolotl turns ``evals_per_epoch`` into the same float ratio of the run as ``saves_per_epoch``:
evaluations drift, ``evals_per_epoch: 1`` over one epoch never evaluates, and with
``load_best_model_at_end`` saves rarely follow an eval, so the best model is picked from stale
metrics, or not at all.

Targets (``_infra.targets``):

* ``normalize_config``: runs with ``evals_per_epoch`` hidden, so no ``eval_steps`` ratio is set;
* ``validate_config``: saves line up with evals for ``load_best_model_at_end`` /
  ``early_stopping_patience`` (:func:`rules.checks.check_best_model_alignment`: ``saves_per_epoch``
  divides ``evals_per_epoch``, so every save follows a fresh eval; without ``saves_per_epoch``,
  Axolotl's default saves are once per epoch, at each epoch end, which divides any ``evals_per_epoch``),
  and ``early_stopping_patience`` is let through Axolotl's validator with per-epoch evals and aligned
  saves (it asks for ``save_steps``/``eval_steps``);
* ``configure_strategy``: Transformers keeps the ``steps`` strategy with an interval no run reaches,
  ``eval_on_start`` as upstream (on, unless the config says otherwise). When the best model is loaded
  with Axolotl's default saves (:func:`rules.checks.saves_each_epoch_for_best_model`), the saves move
  to that ``steps`` strategy too, as ``saves_per_epoch: 1`` (Transformers wants the save strategy to be
  the eval strategy for ``load_best_model_at_end``; the default would be ``epoch``);
* ``get_callbacks``: :class:`EvalsPerEpochCallback`, and in that case a ``SavesPerEpochCallback(1)``:
  each epoch end and the last step, the steps the ``epoch`` strategy saves at;
* ``pre_training_args`` (the causal builder's last word before its training args): with per-epoch
  saves and evals, ``load_best_model_at_end`` follows stock's rule with the per-epoch alignment in place
  of the ratios (:func:`rules.checks.loads_best_model`); stock's rule reads ratios these seams never set.

Runs without a validation set, or with ``eval_strategy: no``, do not evaluate, as upstream. With streamed
data (:func:`rules.checks.streamed_data`) every target above steps aside: ``evals_per_epoch`` keeps stock's
ratio of ``max_steps``, stock's checks and stock's best-model rule (:func:`rules.checks.per_epoch_value`).
Upstream: docs/upstream/series, PR 3.
"""

from __future__ import annotations

from typing import Any

from .._infra import hooks
from .._infra.patching import key_hidden
from .._infra.per_epoch import NEVER, EvalsPerEpochCallback, hiding, saves_callback
from ..rules.checks import (
    check_best_model_alignment,
    check_eval_config,
    loads_best_model,
    per_epoch_saves_and_evals,
    per_epoch_value,
    saves_each_epoch_for_best_model,
)

NAME = "evals_per_epoch"
__all__ = ["EvalsPerEpochCallback", "install"]  # the callback lives with the trigger it subclasses (_infra.per_epoch)


def _validate(call: Any, cfg: Any, *args: Any, **kwargs: Any) -> Any:
    patience = cfg.get("early_stopping_patience")
    k_save, k_eval = per_epoch_saves_and_evals(cfg)  # evals_per_epoch alone: Axolotl's default saves, 1 per epoch
    if not (patience and k_save and k_eval):
        validated = call(cfg, *args, **kwargs)
    else:
        # per-epoch saves and evals (aligned: checked below): Axolotl's own check wants step intervals
        with key_hidden(cfg, "early_stopping_patience"):
            validated = call(cfg, *args, **kwargs)
        validated["early_stopping_patience"] = patience
    # on Axolotl's validated values (its schema coerces and refuses first, as in stock)
    check_eval_config(validated)
    check_best_model_alignment(validated)
    return validated


def _strategy(call: Any, builder: Any, training_args_kwargs: dict, *args: Any, **kwargs: Any) -> Any:
    result = call(builder, training_args_kwargs, *args, **kwargs)
    if per_epoch_value(builder.cfg, "evals_per_epoch") and training_args_kwargs.get("eval_strategy") != "no":
        training_args_kwargs["eval_strategy"] = "steps"
        training_args_kwargs["eval_steps"] = NEVER
        on_start = builder.cfg.get("eval_on_start")
        training_args_kwargs["eval_on_start"] = True if on_start is None else bool(on_start)
    if saves_each_epoch_for_best_model(builder.cfg):
        # Axolotl's default saves (epoch) as saves_per_epoch: 1 on the evals' strategy, as load_best_model_at_end asks
        training_args_kwargs["save_strategy"] = "steps"
        training_args_kwargs["save_steps"] = NEVER
    return result


def _callbacks(builder: Any) -> list[Any]:
    cfg = builder.cfg
    callbacks = [saves_callback(cfg, 1)] if saves_each_epoch_for_best_model(cfg) else []  # as _strategy's saves
    k = per_epoch_value(cfg, "evals_per_epoch")  # None with streamed data: stock's ratio
    if k and builder.eval_dataset is not None:
        callbacks.append(EvalsPerEpochCallback(k))
    return callbacks


def _best_model(call: Any, builder: Any, training_arguments_kwargs: dict, *args: Any, **kwargs: Any) -> Any:
    per_epoch = training_arguments_kwargs.get("save_steps") == NEVER and training_arguments_kwargs.get("eval_steps") == NEVER
    if per_epoch and loads_best_model(builder.cfg):
        training_arguments_kwargs["load_best_model_at_end"] = True
    return call(builder, training_arguments_kwargs, *args, **kwargs)


def install() -> None:
    hooks.add(hooks.Layer("validate_config", NAME, 50, _validate))
    hooks.add(hooks.Layer("normalize_config", NAME, 10, hiding("evals_per_epoch")))
    hooks.add(hooks.Layer("configure_strategy", NAME, 10, _strategy))
    hooks.add(hooks.Layer("pre_training_args", NAME, 10, _best_model))
    hooks.add_callbacks("evals per epoch", NAME, _callbacks)
