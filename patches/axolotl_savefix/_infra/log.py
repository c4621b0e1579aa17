"""One line, once per run, on rank 0 only."""

from __future__ import annotations

import logging
import os

LOG = logging.getLogger("axolotl_savefix")
if not LOG.handlers:
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("[axolotl_savefix] %(levelname)s: %(message)s"))
    LOG.addHandler(_handler)
    LOG.setLevel(logging.INFO)
    LOG.propagate = False

_said: set[str] = set()


def is_rank_zero() -> bool:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0) == 0


def log_once(key: str, message: str, level: int = logging.INFO) -> None:
    """Log ``message`` the first time ``key`` is seen in this process, on rank 0."""
    if key in _said:
        return
    _said.add(key)
    if is_rank_zero():
        LOG.log(level, message)


def forget() -> None:
    """Let every message be said again (a new run in the same interpreter)."""
    _said.clear()
