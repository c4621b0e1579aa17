"""How many checkpoints fit: the disk rule for an unset ``save_total_limit``. Pure, plus two seams.

Upstream refused "keep every checkpoint" as a default (PR 2177) because runs
fill disks. Our default keeps every scheduled checkpoint only when they fit in
the free space of ``output_dir``'s file system with a margin; otherwise it keeps
what fits, never fewer than :data:`MIN_KEPT` (the newest one for a resume and
one more, so a checkpoint being written never leaves zero good ones).

The seams: :func:`free_bytes` (``os.statvfs``) and :func:`dir_bytes` (what a
checkpoint folder really holds). Tests replace :func:`free_bytes` only.
"""

from __future__ import annotations

import os
from pathlib import Path

MIN_KEPT = 2
DEFAULT_MARGIN = 0.1  # keep 10% of the free space free

# bytes per parameter of the optimizer state Transformers saves, by optimizer family
_OPTIMIZER_BYTES = {"adamw": 8, "adam": 8, "lion": 4, "sgd": 0, "adafactor": 4}


def free_bytes(path: str | os.PathLike[str]) -> int:
    """Free bytes for an unprivileged writer on the file system that holds ``path`` (or its nearest parent)."""
    target = Path(path).absolute()
    while not target.exists() and target != target.parent:
        target = target.parent
    stats = os.statvfs(target)
    return stats.f_bavail * stats.f_frsize


def dir_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes of the regular files under ``path``."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            file = os.path.join(root, name)
            if not os.path.islink(file):
                total += os.path.getsize(file)
    return total


def optimizer_bytes_per_param(optimizer: str | None) -> int:
    name = (optimizer or "adamw").lower()
    return next((b for family, b in _OPTIMIZER_BYTES.items() if family in name), 8)


def estimate_checkpoint_bytes(
    total_params: int,
    trainable_params: int,
    dtype_bytes: int,
    optimizer: str | None = None,
    *,
    adapter_only: bool = False,
    save_only_model: bool = False,
) -> int:
    """One checkpoint before any is written: weights, plus optimizer state for the trainable parameters.

    A LoRA checkpoint holds the adapter only (trainable parameters, saved as float32).
    """
    weights = trainable_params * 4 if adapter_only else total_params * dtype_bytes
    optim = 0 if save_only_model else trainable_params * optimizer_bytes_per_param(optimizer)
    return weights + optim


def budget(available_bytes: int, margin: float = DEFAULT_MARGIN) -> int:
    """The bytes checkpoints may use: ``available_bytes`` less the margin."""
    return int(available_bytes * (1.0 - margin))


def fitting_limit(planned: int, checkpoint_bytes: int, available_bytes: int, margin: float = DEFAULT_MARGIN) -> int:
    """``save_total_limit`` for ``planned`` checkpoints when ``available_bytes`` can hold them.

    ``available_bytes``: free space plus what the run's own checkpoints already
    use. Transformers writes a checkpoint before it deletes the oldest, so a
    limit of ``n`` needs room for ``n + 1`` at the peak. Never below
    :data:`MIN_KEPT`, never above ``planned``.
    """
    if planned <= 0:
        return MIN_KEPT
    if checkpoint_bytes <= 0:
        return planned
    room = budget(available_bytes, margin)
    if planned * checkpoint_bytes <= room:
        return planned
    return max(MIN_KEPT, min(planned, room // checkpoint_bytes - 1))


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


# upstream's fixed default, kept as the floor of ours
UPSTREAM_DEFAULT = 4


def resolve_default_limit(
    planned: int, checkpoint_bytes: int | None, available_bytes: int | None, margin: float = DEFAULT_MARGIN
) -> tuple[int, bool]:
    """``save_total_limit`` for a run that left it unset and will save ``planned`` times; and whether disk lowered it.

    Every scheduled checkpoint (at least upstream's 4) when the size or the free
    space is unknown or when they fit; otherwise :func:`fitting_limit`.
    """
    keep_all = max(UPSTREAM_DEFAULT, planned)
    if not checkpoint_bytes or available_bytes is None:
        return keep_all, False
    fits = fitting_limit(planned, checkpoint_bytes, available_bytes, margin)
    return (keep_all, False) if fits >= planned else (fits, True)
