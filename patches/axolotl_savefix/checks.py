"""Config checks for the keys the fix touches: each error names the key, the value and the fix.

Pure: works on any mapping with ``.get`` (Axolotl's ``DictDefault``, a dict).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class SaveFixConfigError(ValueError):
    """A save setting that cannot do what the user asked."""


_STRATEGIES_WITHOUT_FRACTIONS = ("no", "epoch", "best")


def check_per_epoch(cfg: Mapping[str, Any], key: str, interval_key: str, strategy_key: str) -> None:
    """``saves_per_epoch`` / ``evals_per_epoch``: a positive integer, alone."""
    value = cfg.get(key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SaveFixConfigError(
            f"{key}: {value!r} is not a positive integer. Set {key} to how many times per "
            f"epoch you want it (1 or more), or remove {key}."
        )
    if cfg.get(interval_key):
        raise SaveFixConfigError(
            f"{key}: {value} and {interval_key}: {cfg.get(interval_key)!r} both set the schedule. "
            f"Keep one: remove {interval_key} to get {value} per epoch, or remove {key}."
        )
    strategy = cfg.get(strategy_key)
    if strategy in _STRATEGIES_WITHOUT_FRACTIONS:
        raise SaveFixConfigError(
            f"{key}: {value} conflicts with {strategy_key}: {strategy!r}, which never runs at "
            f"epoch fractions. Remove {strategy_key} (or set it to 'steps') to get {value} per "
            f"epoch, or remove {key} to keep {strategy_key}: {strategy!r}."
        )


def check_save_total_limit(cfg: Mapping[str, Any]) -> None:
    value = cfg.get("save_total_limit")
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SaveFixConfigError(
            f"save_total_limit: {value!r} is not allowed. Use a positive number to keep that "
            "many checkpoints, 0 to keep every checkpoint, or leave it unset to keep every "
            "scheduled checkpoint (at least 4)."
        )


def check_save_config(cfg: Mapping[str, Any]) -> None:
    check_per_epoch(cfg, "saves_per_epoch", "save_steps", "save_strategy")
    check_save_total_limit(cfg)
