"""Defect 1: ``saves_per_epoch`` becomes a float ratio of the whole run.

Target: ``axolotl.utils.config.normalize_config`` (and the copy that
``axolotl.cli.config`` imported by name). Stock code sets
``cfg.save_steps = 1 / (saves_per_epoch * num_epochs)``; Transformers rounds
``max_steps * ratio`` up to an interval, so the count is wrong and the saves
drift off the epoch fractions.

Replacement: the config is checked (:mod:`axolotl_savefix.checks`), then the
original runs with ``saves_per_epoch`` hidden, so no ratio is ever set; the key
is put back for the save decision (:mod:`axolotl_savefix.save_decision`),
which saves at the exact epoch fractions.
"""

from __future__ import annotations

from typing import Any

from ._patching import key_hidden, patch_item, wraps
from ._targets import require
from .checks import check_save_config

TARGET = ("axolotl.utils.config", "normalize_config", ("cfg",))


def apply() -> None:
    module, name, original = require(*TARGET)

    @wraps(original)
    def normalize_config(cfg: Any, *args: Any, **kwargs: Any) -> Any:
        check_save_config(cfg)
        if not cfg.get("saves_per_epoch"):
            return original(cfg, *args, **kwargs)
        with key_hidden(cfg, "saves_per_epoch"):
            return original(cfg, *args, **kwargs)

    patch_item(module, name, normalize_config, rebind_copies=True)


def apply_builder() -> None:
    """Nothing in the trainer builder: the save decision patches it."""
