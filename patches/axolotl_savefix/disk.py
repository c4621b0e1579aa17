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


def peak_bytes(
    saved: list[int] | None, limit: int | None, checkpoint_bytes: int | None, final_bytes: int | None = None
) -> int | None:
    """The most bytes a run's checkpoints (and final model) take in ``output_dir`` at once; None when unknown.

    ``limit`` None or <= 0 keeps every one of ``saved``; a positive ``limit`` peaks at ``limit + 1``
    (Transformers writes a checkpoint before it deletes the oldest). At the end, the kept checkpoints
    and the final model Axolotl writes into ``output_dir`` (``final_bytes``) are there together.
    """
    if saved is None or not checkpoint_bytes:
        return None
    n = len(saved)
    keeps_all = limit is None or limit <= 0
    during = n if keeps_all else min(n, limit + 1)
    at_end = (n if keeps_all else min(n, limit)) * checkpoint_bytes + (final_bytes or 0)
    return max(during * checkpoint_bytes, at_end)


def max_fitting_limit(checkpoint_bytes: int, available_bytes: int, final_bytes: int = 0) -> int:
    """The largest ``save_total_limit`` whose peak fits in ``available_bytes`` (0: not even one fits)."""
    if checkpoint_bytes <= 0:
        return 0
    return max(0, min(available_bytes // checkpoint_bytes - 1, (available_bytes - final_bytes) // checkpoint_bytes))


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


# --- A full disk (the `disk_full` patch): the numbers and the one line a run stops with. Pure.

FULL_ERRNOS = (28, 122)  # ENOSPC, EDQUOT (Linux numbers; errno.ENOSPC / errno.EDQUOT where the platform has them)


# How the writers of a checkpoint report a full disk when they do not raise OSError: safetensors
# (Rust: "IoError(Os { code: 28, kind: StorageFull, message: \"No space left on device\" })") and
# torch.save's zip writer ("PytorchStreamWriter failed writing file ...: file write failed", no errno).
FULL_TEXTS = ("No space left on device", "Disk quota exceeded", "StorageFull", "QuotaExceeded")
# torch.save's zip writer on a full disk, measured on a tmpfs: "basic_ios::clear: iostream error", then
# "[enforce fail at inline_container.cc:672] . unexpected pos 5312 vs 5204"; elsewhere "file write failed"
TORCH_WRITE_FAILED = ("file write failed", "iostream error", "unexpected pos", "PytorchStreamWriter failed")


def is_disk_full(error: BaseException, free: int | None = None, checkpoint_bytes: int | None = None) -> bool:
    """True when ``error`` says the file system (or the user's quota) is full: ENOSPC, EDQUOT.

    An ``OSError`` with that errno, or an error of another type whose text names it (safetensors).
    torch's zip writer says no errno ("file write failed", "iostream error"): it counts when ``free`` (bytes free now) is less than
    ``checkpoint_bytes`` (one checkpoint), so the write could not have fitted.
    """
    import errno

    if isinstance(error, OSError) and error.errno in {errno.ENOSPC, getattr(errno, "EDQUOT", 122)}:
        return True
    text = str(error)
    if any(words in text for words in FULL_TEXTS):
        return True
    torch_write = any(words in text for words in TORCH_WRITE_FAILED)
    return torch_write and free is not None and bool(checkpoint_bytes) and free < (checkpoint_bytes or 0)


def fit_count(free: int, checkpoint_bytes: int, kept_bytes: int = 0) -> int:
    """How many checkpoints of ``checkpoint_bytes`` fit in ``free`` bytes plus the ``kept_bytes`` checkpoints use."""
    return (free + kept_bytes) // checkpoint_bytes if checkpoint_bytes > 0 else 0


def full_message(
    output_dir: str,
    free: int,
    checkpoint_bytes: int | None,
    size_source: str,
    kept: int,
    kept_bytes: int,
    limit: int | None,
    what: str,
) -> str:
    """The one line a run stops with when ``output_dir`` cannot hold its next checkpoint.

    ``free``: free bytes now; ``checkpoint_bytes``: one checkpoint (``size_source`` says how it was
    known); ``kept``/``kept_bytes``: the complete checkpoints there and their bytes; ``limit``:
    the run's ``save_total_limit`` (None or <= 0: keeps all); ``what``: what failed, or will.
    """
    limit_text = "keep all" if not limit or limit <= 0 else str(limit)
    head = f"disk full: {what}. output_dir {output_dir} has {free} bytes free ({human(free)})"
    if not checkpoint_bytes:
        return head + "; free space there, or set output_dir on a larger disk, and run the same command again."
    fit = fit_count(free, checkpoint_bytes, kept_bytes)
    head += (
        f"; one checkpoint is {checkpoint_bytes} bytes ({human(checkpoint_bytes)}, {size_source}); "
        f"{kept} kept use {kept_bytes} bytes; {fit} checkpoint{'s fit' if fit != 1 else ' fits'} in all"
    )
    best = fit - 1  # Transformers writes a checkpoint before it deletes the oldest
    if best >= 1:
        fix = (
            f"set save_total_limit: {best} (now {limit_text}; Transformers writes one more before it deletes the oldest), "
            "free space, or set output_dir on a larger disk"
        )
    else:
        fix = f"free space, or set output_dir on a larger disk (save_total_limit, now {limit_text}, cannot make room)"
    return f"{head}. Fix: {fix}; then run the same command again."


# the final model's weight files, as Transformers and PEFT name them in a checkpoint and in output_dir
WEIGHT_PATTERNS = ("model.safetensors", "model-*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin",
                   "adapter_model.safetensors", "adapter_model.bin")  # fmt: skip


def weight_files(folder: str | os.PathLike[str]) -> set[Path]:
    """The weight files directly in ``folder`` (``WEIGHT_PATTERNS``; regular files, no links)."""
    return {f for pattern in WEIGHT_PATTERNS for f in Path(folder).glob(pattern) if f.is_file() and not f.is_symlink()}


def weight_bytes(folder: str | os.PathLike[str]) -> int:
    """Bytes of the weight files directly in ``folder``: what a final model save writes there."""
    return sum(f.stat().st_size for f in weight_files(folder))


def final_model_message(output_dir: str, free: int, final_bytes: int | None, weights_in: str | None, what: str) -> str:
    """The one line a run stops with when ``output_dir`` cannot hold the final model (Axolotl's ``save_trained_model``).

    ``free``: free bytes now; ``final_bytes``: the final model's weights (measured on a checkpoint's,
    None when unknown); ``weights_in``: a complete checkpoint that holds the same trained weights
    (the last step's), or None; ``what``: what failed, or will.
    """
    head = f"disk full: {what}. output_dir {output_dir} has {free} bytes free ({human(free)})"
    if final_bytes:
        head += f"; the final model needs about {final_bytes} bytes ({human(final_bytes)})"
    fix = (
        "free space (a smaller save_total_limit keeps fewer checkpoints), or set output_dir on a larger disk; "
        "then run the same command again: it resumes at its last step and writes only the final model"
    )
    if weights_in:
        fix += f". The trained weights are in {weights_in} meanwhile"
    return f"{head}. Fix: {fix}."
