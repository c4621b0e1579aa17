"""Config checks for the keys the fix touches: each error names the key, the value and the fix.

Pure: works on any mapping with ``.get`` (Axolotl's ``DictDefault``, a dict).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


class SaveFixConfigError(ValueError):
    """A save setting that cannot do what the user asked."""

    __module__ = "axolotl_savefix"  # its public name: tracebacks and the guide say axolotl_savefix.SaveFixConfigError


# Save/eval strategies that never act at epoch fractions. With a per-epoch key
# stock Axolotl silently overrides them with its float ratio (at drifting steps
# under "epoch"), so the combination is refused; the one exception is "epoch"
# with 1 per epoch, which asks for the same steps twice. "no" is refused with
# evals_per_epoch only (as stock's validator does): save_strategy "no" turns
# saves_per_epoch off (:func:`saves_turned_off`).
_STRATEGIES_WITHOUT_FRACTIONS = ("no", "epoch", "best")


def _off(value: Any) -> bool:
    """A per-epoch key's value that means off: unset or ``0``, as stock's ``if cfg.saves_per_epoch:`` reads it."""
    return value is None or (value == 0 and not isinstance(value, str))


def streamed_data(cfg: Mapping[str, Any]) -> bool:
    """The train data is streamed: Axolotl's condition, ``cfg.streaming or cfg.pretraining_dataset`` (``utils/data/sft.py``).

    The train dataloader then has no length, and Transformers counts the whole ``max_steps`` run as one
    epoch (``state.epoch`` 0 to 1): there are no epoch fractions to act at. ``saves_per_epoch`` /
    ``evals_per_epoch`` keep stock's ratio of the run, ``1 / (k * num_epochs)`` of ``max_steps``.
    """
    return bool(cfg.get("streaming") or cfg.get("pretraining_dataset"))


def streamed_keys(cfg: Mapping[str, Any]) -> list[str]:
    """The per-epoch keys that keep stock's share of the run on streamed data, in the order the config reads.

    ``saves_per_epoch`` when set and not turned off by ``save_strategy: no``; ``evals_per_epoch`` when set
    with an eval split (``val_set_size`` or ``test_datasets``: stock's own condition for its ratio). Empty
    when the data is not streamed.
    """
    if not streamed_data(cfg):
        return []
    keys = []
    if not _off(cfg.get("saves_per_epoch")) and not saves_turned_off(cfg):
        keys.append("saves_per_epoch")
    if not _off(cfg.get("evals_per_epoch")) and (cfg.get("val_set_size") or cfg.get("test_datasets")):
        keys.append("evals_per_epoch")
    return keys


def keep_stocks_share(keys: list[str]) -> str:
    """``keys`` (:func:`streamed_keys`) and the verb that agrees with them: "saves_per_epoch keeps Axolotl's share of max_steps"."""
    return f"{' / '.join(keys)} {'keeps' if len(keys) == 1 else 'keep'} Axolotl's share of max_steps"


def streamed_line(keys: list[str]) -> str:
    """The one line a streamed run logs for its per-epoch ``keys`` (:func:`streamed_keys`), which stay stock's."""
    return (
        f"streamed data (streaming / pretraining_dataset): {keep_stocks_share(keys)}, 1/(k * num_epochs) of the run "
        "(no epoch length, so no epoch fractions)"
    )


def saves_turned_off(cfg: Mapping[str, Any]) -> bool:
    """``saves_per_epoch`` is set and ``save_strategy: no`` turns it off: no checkpoint is saved.

    ``save_strategy: no`` is Axolotl's documented way to turn checkpoints off. Stock honours it only
    where its ratio ``1 / (k * num_epochs)`` is 1 or more (and saves on ``steps`` anyway below 1); here,
    ``no`` wins: no ratio, no per-epoch callback, no saves (the upstream series refuses the pair at config
    time instead, restoring Axolotl's own check of #944; the plugin keeps accepting what it accepted).
    """
    return not _off(cfg.get("saves_per_epoch")) and strategy_of(cfg, "save_strategy") == "no"


def per_epoch_value(cfg: Mapping[str, Any], key: str) -> int | None:
    """``saves_per_epoch`` / ``evals_per_epoch`` as the fix uses it: ``None`` when off, or left to stock.

    Unset and ``0`` both mean off, as in stock Axolotl (``if cfg.saves_per_epoch:``). With streamed data
    (:func:`streamed_data`) the key is stock's (its ratio of ``max_steps``): ``None`` too, so no per-epoch
    check, schedule or best-model rule applies. ``saves_per_epoch`` with ``save_strategy: no`` is off
    (:func:`saves_turned_off`): ``None``, streamed or not.
    """
    if streamed_data(cfg) or (key == "saves_per_epoch" and saves_turned_off(cfg)):
        return None
    value = cfg.get(key)
    if _off(value):
        return None
    return value


def strategy_name(value: Any) -> str | None:
    """A save/eval strategy as a plain string (a validated config or TrainingArguments may hold an enum)."""
    return None if value is None else str(getattr(value, "value", value))


def strategy_of(cfg: Mapping[str, Any], key: str) -> str | None:
    """``save_strategy`` / ``eval_strategy`` of a config, as a plain string."""
    return strategy_name(cfg.get(key))


def check_per_epoch(cfg: Mapping[str, Any], key: str, interval_key: str, strategy_key: str) -> None:
    """``saves_per_epoch`` / ``evals_per_epoch``: off (unset or 0), or a positive integer, alone.

    Streamed data: nothing is checked here (:func:`per_epoch_value`); stock's ratio and stock's own checks apply.
    ``saves_per_epoch`` with ``save_strategy: no``: off, nothing to check (:func:`saves_turned_off`).
    """
    value = per_epoch_value(cfg, key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SaveFixConfigError(
            f"{key}: {value!r} is not a whole number of times per epoch. Set {key} to how many times "
            f"per epoch you want it (1 or more), or to 0 (or remove it) for none."
        )
    if cfg.get(interval_key):
        raise SaveFixConfigError(
            f"{key}: {value} and {interval_key}: {cfg.get(interval_key)!r} both set the schedule. "
            f"Keep one: remove {interval_key} to get {value} per epoch, or remove {key}."
        )
    strategy = strategy_of(cfg, strategy_key)
    if strategy in _STRATEGIES_WITHOUT_FRACTIONS and not (strategy == "epoch" and value == 1):
        raise SaveFixConfigError(
            f"{key}: {value} conflicts with {strategy_key}: {strategy!r}, which never runs at "
            f"epoch fractions. Remove {strategy_key} (or set it to 'steps') to get {value} per "
            f"epoch, or remove {key} to keep {strategy_key}: {strategy!r}."
        )


def check_save_total_limit(cfg: Mapping[str, Any]) -> None:
    """Any integer is accepted, as in stock: positive keeps that many, 0 or negative keeps all (Transformers)."""
    value = cfg.get("save_total_limit")
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise SaveFixConfigError(
            f"save_total_limit: {value!r} is not allowed. Use a positive number to keep that "
            "many checkpoints, 0 to keep every checkpoint, or leave it unset to keep every "
            "scheduled checkpoint (at least 4)."
        )


def check_save_config(cfg: Mapping[str, Any]) -> None:
    check_per_epoch(cfg, "saves_per_epoch", "save_steps", "save_strategy")
    check_save_total_limit(cfg)


def check_eval_config(cfg: Mapping[str, Any]) -> None:
    check_per_epoch(cfg, "evals_per_epoch", "eval_steps", "eval_strategy")


def _multiples(k: int) -> str:
    return ", ".join(str(k * n) for n in (1, 2, 3)) + ", ..."


def _divisors(k: int) -> str:
    """The divisors of ``k``, in O(sqrt(k)) (``evals_per_epoch: 10**9`` passes Axolotl's schema)."""
    small = [d for d in range(1, math.isqrt(k) + 1) if k % d == 0]
    found = sorted({*small, *(k // d for d in small)})
    shown = found if len(found) <= 12 else [*found[:6], "...", *found[-3:]]
    return ", ".join(map(str, shown))


def _instead_of(cfg: Mapping[str, Any], steps_key: str, strategy_key: str) -> str:
    key = steps_key if cfg.get(steps_key) else strategy_key
    value = cfg.get(key)
    return f" instead of {key}: {value!r}." if value else "."


def saves_each_epoch_by_default(cfg: Mapping[str, Any]) -> bool:
    """Axolotl's default saves: once per epoch, at each epoch end (the builder's ``save_strategy: epoch``).

    ``saves_per_epoch`` unset, no ``save_steps``, ``save_strategy`` unset or ``epoch``. An explicit
    ``saves_per_epoch: 0`` is not this: it stays "no per-epoch saves" (:func:`per_epoch_value`); nor is
    ``save_strategy: no``, with or without ``saves_per_epoch`` (it saves nothing).
    """
    return cfg.get("saves_per_epoch") is None and not cfg.get("save_steps") and strategy_of(cfg, "save_strategy") in (None, "epoch")


def per_epoch_saves_and_evals(cfg: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """``(saves_per_epoch, evals_per_epoch)`` as the best-model alignment reads them (``None``: off).

    With ``evals_per_epoch`` and Axolotl's default saves (:func:`saves_each_epoch_by_default`), saves
    count as 1 per epoch: each epoch end is a save, and the eval target k/k. Streamed data:
    ``(None, None)``, stock's ratios (:func:`per_epoch_value`).
    """
    k_save, k_eval = per_epoch_value(cfg, "saves_per_epoch"), per_epoch_value(cfg, "evals_per_epoch")
    if k_eval and k_save is None and saves_each_epoch_by_default(cfg):
        k_save = 1
    return k_save, k_eval


def _saves_follow_evals(k_save: int | None, k_eval: int | None) -> bool:
    """Both per-epoch counts set and every save target j/k_save an eval target: ``saves_per_epoch`` divides ``evals_per_epoch``."""
    return bool(k_save and k_eval and k_eval % k_save == 0)


def loads_best_model(cfg: Mapping[str, Any]) -> bool:
    """Whether a per-epoch run loads the best model at its end: stock Axolotl's rule, aligned.

    Axolotl's causal builder turns ``load_best_model_at_end`` on when it is asked for (``true``, or
    ``early_stopping_patience``), the run has a validation set, and ``save_steps % eval_steps == 0``
    on the float ratios ``normalize_config`` sets. The per-epoch seams set no ratio, so that rule is
    false for every per-epoch run; here the alignment is the per-epoch one (``saves_per_epoch``
    divides ``evals_per_epoch``, Axolotl's default saves counting as 1: :func:`per_epoch_saves_and_evals`).
    """
    asked = cfg.get("load_best_model_at_end") is not False or bool(cfg.get("early_stopping_patience"))
    val_set_size = cfg.get("val_set_size") or 0
    validates = (not cfg.get("test_datasets") and val_set_size > 0) or (bool(cfg.get("test_datasets")) and val_set_size == 0)
    return bool(asked and validates) and _saves_follow_evals(*per_epoch_saves_and_evals(cfg))


def saves_each_epoch_for_best_model(cfg: Mapping[str, Any]) -> bool:
    """The best model is loaded with ``evals_per_epoch`` and Axolotl's default saves (no ``saves_per_epoch``).

    The per-epoch seams then save as ``saves_per_epoch: 1`` does (each epoch end and the last step, the
    steps of the ``epoch`` strategy), on Transformers' ``steps`` strategy: ``load_best_model_at_end``
    needs the save strategy to be the eval strategy, and the per-epoch evals are on ``steps``.
    """
    return saves_each_epoch_by_default(cfg) and loads_best_model(cfg)


def check_best_model_alignment(cfg: Mapping[str, Any]) -> None:
    """``load_best_model_at_end`` / ``early_stopping_patience`` need an evaluation at every save.

    With per-epoch schedules that holds exactly when every save target j/k_save
    is an eval target, i.e. when ``saves_per_epoch`` divides ``evals_per_epoch``.
    ``evals_per_epoch`` alone, with Axolotl's default saves (once per epoch, at each
    epoch end: k_save = 1), is aligned: every epoch end is the eval target k/k.
    Runs without a validation set are left alone (Axolotl turns both off there).
    """
    patience = cfg.get("early_stopping_patience")
    if not (cfg.get("load_best_model_at_end") or patience):
        return
    if not (cfg.get("val_set_size") or cfg.get("test_datasets")):
        return
    k_save, k_eval = per_epoch_saves_and_evals(cfg)
    if not (k_save or k_eval) or strategy_of(cfg, "save_strategy") == "best":
        return
    if _saves_follow_evals(k_save, k_eval):
        return
    why = f"early_stopping_patience: {patience}" if patience else "load_best_model_at_end: true"
    if saves_turned_off(cfg):
        off = "remove early_stopping_patience" if patience else "set load_best_model_at_end: false"
        raise SaveFixConfigError(
            f"{why} needs checkpoints, but save_strategy: 'no' turns saves_per_epoch: {cfg.get('saves_per_epoch')} "
            f"off and saves none. Remove save_strategy: 'no' to save with saves_per_epoch, or {off}."
        )
    if k_save and k_eval:
        raise SaveFixConfigError(
            f"{why} needs an evaluation at every save, but saves_per_epoch: {k_save} does not divide "
            f"evals_per_epoch: {k_eval}. Set evals_per_epoch to a multiple of {k_save} ({_multiples(k_save)}) "
            f"or saves_per_epoch to a divisor of {k_eval} ({_divisors(k_eval)})."
        )
    if k_save:
        raise SaveFixConfigError(
            f"{why} needs an evaluation at every save: with saves_per_epoch: {k_save}, set evals_per_epoch "
            f"to a multiple of {k_save} ({_multiples(k_save)})" + _instead_of(cfg, "eval_steps", "eval_strategy")
        )
    assert k_eval  # one of the two is set (returned above otherwise)
    raise SaveFixConfigError(
        f"{why} needs an evaluation at every save: with evals_per_epoch: {k_eval}, set saves_per_epoch "
        f"to a divisor of {k_eval} ({_divisors(k_eval)})" + _instead_of(cfg, "save_steps", "save_strategy")
    )
