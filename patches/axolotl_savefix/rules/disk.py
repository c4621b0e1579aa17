"""How many checkpoints fit: the disk rule for an unset ``save_total_limit``. Pure, plus two measurements.

Upstream refused "keep every checkpoint" as a default (PR 2177) because runs
fill disks. Our default keeps every scheduled checkpoint only when they fit in
the free space of ``output_dir``'s file system with a margin; otherwise it keeps
what fits, never fewer than :data:`MIN_KEPT` (the newest one for a resume and
one more, so a checkpoint being written never leaves zero good ones).

Sizes are counted as the file system counts them: a folder's size is what its
files and folders have *allocated* (whole blocks: ``st_blocks`` × 512, or each
file's size rounded up to the block size where ``st_blocks`` is not reported),
not their apparent bytes; a 310 KB checkpoint of 12 files allocates about 9.5%
more on a 4 KiB-block file system, and free space is counted in the same blocks.

The measurements: :func:`free_bytes` (``os.statvfs``'s ``f_bavail``: what an
unprivileged writer may use, so ext4's reserved blocks are not counted) and
:func:`dir_bytes` (what a checkpoint folder has allocated). Tests replace
:func:`free_bytes` only.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

MIN_KEPT = 2
DEFAULT_BLOCK = 4096  # bytes: ext4's, XFS's and tmpfs's (a page) block, where the file system does not say
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


def block_bytes(path: str | os.PathLike[str]) -> int:
    """The allocation unit of the file system that holds ``path`` (or its nearest parent): ``f_frsize``, bytes."""
    target = Path(path).absolute()
    while not target.exists() and target != target.parent:
        target = target.parent
    stats = os.statvfs(target)
    return stats.f_frsize or stats.f_bsize or DEFAULT_BLOCK


def allocated(size: int, blocks: int | None, block: int = DEFAULT_BLOCK) -> int:
    """Bytes a file of ``size`` apparent bytes takes on disk.

    ``blocks``: its ``st_blocks`` (512-byte units, POSIX), None where the platform does not report it;
    ``block``: the file system's block size (bytes). ``st_blocks × 512`` when reported; otherwise, and
    for a non-empty file that reports 0 blocks (data kept inline, or a file system that does not
    count), ``size`` rounded up to whole blocks, which is what writing it again allocates.
    """
    if blocks is not None and (blocks > 0 or size == 0):
        return blocks * 512
    block = block if block > 0 else DEFAULT_BLOCK
    return -(-size // block) * block


def _allocated_stat(result: os.stat_result, block: int) -> int:
    """A regular file by :func:`allocated`; a folder or a link by its own blocks only (tmpfs reports 0 for a folder)."""
    blocks = getattr(result, "st_blocks", None)
    if stat.S_ISREG(result.st_mode):
        return allocated(result.st_size, blocks, block)
    return (blocks or 0) * 512


def dir_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes ``path`` has allocated on its file system, as ``du -s --block-size=1`` counts them.

    Every entry under ``path`` and ``path`` itself (files, folders, a symbolic link's own blocks:
    links are not followed), files by :func:`allocated`; 0 when ``path`` is not a folder. What writing
    the same folder again would take from the free space.
    """
    if not os.path.isdir(path):
        return 0
    block = block_bytes(path)
    total = _allocated_stat(os.stat(path), block)
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            total += _allocated_stat(os.lstat(os.path.join(root, name)), block)
    return total


def apparent_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes of the regular files under ``path`` as ``ls -l`` (``du -sb``) counts them; for messages only."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            entry = os.lstat(os.path.join(root, name))
            if stat.S_ISREG(entry.st_mode):
                total += entry.st_size
    return total


# What the next save may take beyond the newest checkpoint's allocated size, in blocks of the file
# system: its trainer_state.json is longer (one log entry a step, about 200 bytes), and Axolotl's
# debug.log in output_dir grows between saves. 16 blocks: 64 KiB on a 4 KiB-block file system.
NEXT_SAVE_SLACK_BLOCKS = 16


def next_save_bytes(checkpoint_bytes: int, block: int = DEFAULT_BLOCK) -> int:
    """The free bytes the next save needs: one checkpoint's allocated bytes plus :data:`NEXT_SAVE_SLACK_BLOCKS`."""
    return checkpoint_bytes + NEXT_SAVE_SLACK_BLOCKS * (block if block > 0 else DEFAULT_BLOCK)


def next_save_fits(free: int, checkpoint_bytes: int, block: int = DEFAULT_BLOCK) -> bool:
    """Whether ``free`` bytes (``f_bavail`` × ``f_frsize``) hold the next save (:func:`next_save_bytes`)."""
    return free >= next_save_bytes(checkpoint_bytes, block)


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


def model_checkpoint_bytes(model: Any, optimizer: str | None, save_only_model: bool = False) -> int:
    """:func:`estimate_checkpoint_bytes` of ``model``: anything with ``parameters()`` (a torch module; a PEFT model: adapter only).

    Each parameter is asked ``numel()``, ``requires_grad`` and ``element_size()``; nothing is imported.
    """
    total = trainable = 0
    dtype_bytes = 4
    for param in model.parameters():
        total += param.numel()
        if param.requires_grad:
            trainable += param.numel()
        dtype_bytes = param.element_size()
    return estimate_checkpoint_bytes(
        total,
        trainable,
        dtype_bytes,
        optimizer,
        adapter_only=hasattr(model, "peft_config"),
        save_only_model=save_only_model,
    )


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
    if limit is None or limit <= 0:  # keeps every one
        during = kept = n
    else:
        during, kept = min(n, limit + 1), min(n, limit)
    at_end = kept * checkpoint_bytes + (final_bytes or 0)
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


# --- A full disk (the `full_disk` seam): the numbers and the one line a run stops with. Pure.

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


def fit_count(free: int, checkpoint_bytes: int, kept_bytes: int = 0, slack: int = 0) -> int:
    """How many checkpoints of ``checkpoint_bytes`` fit in ``free`` bytes plus the ``kept_bytes`` checkpoints use.

    ``slack``: bytes the next save needs beyond one checkpoint (:func:`next_save_bytes`), left out of ``free``.
    """
    return max(0, free - slack + kept_bytes) // checkpoint_bytes if checkpoint_bytes > 0 else 0


def full_message(
    output_dir: str,
    free: int,
    checkpoint_bytes: int | None,
    size_source: str,
    kept: int,
    kept_bytes: int,
    limit: int | None,
    what: str,
    block: int = DEFAULT_BLOCK,
) -> str:
    """The one line a run stops with when ``output_dir`` cannot hold its next checkpoint.

    ``free``: free bytes now (``f_bavail``); ``checkpoint_bytes``: one checkpoint's allocated bytes
    (``size_source`` says how it was known); ``kept``/``kept_bytes``: the complete checkpoints there
    and their allocated bytes; ``limit``: the run's ``save_total_limit`` (None or <= 0: keeps all);
    ``what``: what failed, or will; ``block``: the file system's block size (bytes), for the slack
    the next save needs (:func:`next_save_bytes`).
    """
    limit_text = "keep all" if not limit or limit <= 0 else str(limit)
    head = f"disk full: {what}. output_dir {output_dir} has {free} bytes free ({human(free)})"
    if not checkpoint_bytes:
        return head + "; free space there, or set output_dir on a larger disk, and run the same command again."
    need = next_save_bytes(checkpoint_bytes, block)
    fit = fit_count(free, checkpoint_bytes, kept_bytes, need - checkpoint_bytes)
    head += (
        f"; one checkpoint is {checkpoint_bytes} bytes allocated on disk ({human(checkpoint_bytes)}, {size_source}), "
        f"the next save needs {need} bytes free with its slack; "
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
    """Bytes the weight files directly in ``folder`` have allocated (:func:`allocated`): what a final model save writes there."""
    files = weight_files(folder)
    block = block_bytes(folder) if files else DEFAULT_BLOCK
    return sum(_allocated_stat(f.stat(), block) for f in files)


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
