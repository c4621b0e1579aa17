"""A save that fills the disk (ENOSPC, EDQUOT) stops the run with one clear line, and the same command never loops.

Stock Transformers leaves the half-written ``checkpoint-N`` where it failed (its
``trainer_state.json`` may be cut mid-file), so the same command again resumes
from it and dies at once, or, with ``save_total_limit: 0``, sets it aside on the
full disk and dies at the same save again: a crash loop on a cluster that
requeues failed jobs.

Targets (``_infra.targets``):

* ``trainer_save_checkpoint`` and ``axolotl_save_checkpoint`` (Axolotl's override writes files
  before it calls Transformers'): an ``OSError`` with ENOSPC or EDQUOT (or safetensors' and torch's
  own errors for it, :func:`rules.disk.is_disk_full`) deletes the half-written ``checkpoint-N`` when
  it is provably this run's own (:func:`rules.records.own_cut`: the journal's pending record says the
  save created the folder; the main process of each node; a folder that was there before the run is
  left to the next auto-resume, which renames it) and is raised again as :class:`DiskFullError`,
  whose message is the run's last line: ``output_dir``, free bytes, one checkpoint's bytes, how many
  fit, the keys to change, and the set-aside folders that hold space.
* ``get_callbacks``: :class:`DiskFullGuard`. At train begin, when ``output_dir`` holds a complete
  checkpoint (measured) and a save is still ahead but the free space is less than that checkpoint,
  it first runs the rotation the next save would run anyway (Transformers 5.3 on: ``rotate_checkpoints``
  through the table; before 5.3 the rotation is a ``Trainer`` method a callback cannot reach), and if
  that is not enough, stops before the first training step with the same message. A rerun of the
  same command therefore never trains to the same full save again. A run resumed at its last step
  (only the final model is ahead) stops the same way when the final model cannot fit.
* ``save_trained_model`` (the final model, written into ``output_dir`` at the end of training):
  ENOSPC or EDQUOT there deletes the weight files that save wrote or rewrote in ``output_dir`` (a
  half-written ``model.safetensors`` is garbage, and it is what fills the disk; the logs and the
  config stay) and stops the run with one line: free bytes, the final model's size, the fix, and the
  checkpoint that holds the same trained weights.

DDP: the rank that hits ENOSPC raises (as in stock); torchrun's agent then stops
the other ranks, also those waiting at a collective. A rank that does not hit it
is not made to wait longer than in stock. The disk-aware default limit is
``seams.retention``'s; this seam and the disk rule stay in the plugin (docs/upstream/PR.md).
"""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from .._infra import collectives, hooks, journal
from .._infra.log import log_once
from ..rules import checkpoints, disk

NAME = "full_disk"


class DiskFullError(OSError):
    """``output_dir`` cannot hold the run's next checkpoint; the message says the numbers and the fix."""

    __module__ = "axolotl_savefix"  # its public name: tracebacks and the guide say axolotl_savefix.DiskFullError


def _local_main() -> bool:
    return collectives.local_main()


def _newest(output_dir: str) -> tuple[Path | None, int]:
    """The newest complete checkpoint and its bytes (only that one is walked); ``(None, 0)`` when there is none."""
    newest = checkpoints.newest_complete(output_dir)
    return (newest, disk.dir_bytes(newest)) if newest is not None else (None, 0)


def _measure(output_dir: str) -> tuple[Path | None, int, int, int]:
    """The newest complete checkpoint, its bytes, how many complete ones there are and their bytes."""
    complete = [p for p in checkpoints.checkpoints(output_dir) if not checkpoints.missing(p)]
    sizes = [disk.dir_bytes(p) for p in complete]
    return (complete[-1] if complete else None), (sizes[-1] if sizes else 0), len(complete), sum(sizes)


def message(output_dir: str, what: str, limit: int | None, estimate: int | None = None) -> str:
    """The stop line for ``output_dir`` now (its free space and complete checkpoints, measured: allocated bytes)."""
    newest, size, kept, kept_bytes = _measure(output_dir)
    source = f"measured: {newest.name}, {disk.apparent_bytes(newest)} bytes apparent" if newest else "estimated from the model"
    free, block = disk.free_bytes(output_dir), disk.block_bytes(output_dir)
    text = disk.full_message(output_dir, free, size or estimate, source, kept, kept_bytes, limit, what, block)
    aside = checkpoints.set_aside_folders(output_dir)
    if aside:  # never deleted by the fix unless provably its own: the user's to reclaim
        held = sum(disk.dir_bytes(p) for p in aside)
        names = ", ".join(p.name for p in aside[:3]) + (f" and {len(aside) - 3} more" if len(aside) > 3 else "")
        text += f" Set-aside folders hold {held} bytes ({names}): delete them once inspected to free that space."
    return text


RANKS_WAIT_SECONDS = 10.0  # how long the main process waits for the other ranks' part of a failed save


def _wait_for_ranks(folder: str, world_size: int, timeout: float | None = None) -> None:
    """Wait (at most ``timeout`` seconds) until every rank's ``rng_state_R.pth`` is in ``folder``.

    Under DDP, FSDP or DeepSpeed every rank writes its RNG state into the checkpoint last
    (after its optimizer shard), creating the folder again if it is gone (Transformers'
    ``_save_rng_state``). Deleted before a late rank wrote it, the folder comes back (seen: 2-process
    DDP on a full tmpfs, the machine loaded: ``checkpoint-19`` there after the line that said it was
    deleted). No collective here: a rank whose own write failed never writes it, and the wait then
    ends at ``timeout`` (default :data:`RANKS_WAIT_SECONDS`); on node-local disks other nodes' files
    never show either.
    """
    import time

    names = [checkpoints.rng_name(rank, world_size) for rank in range(world_size)]
    deadline = time.monotonic() + (RANKS_WAIT_SECONDS if timeout is None else timeout)
    while time.monotonic() < deadline:
        if all(os.path.exists(os.path.join(folder, name)) for name in names):
            return
        time.sleep(0.1)


def _remove(folder: str, world_size: int = 1, rng_states: bool = False) -> bool:
    """Delete the half-written ``folder`` (the main process of this node only); whether it is gone.

    Only this run's own save, proven (:func:`checkpoints.own_cut`: its pending-save record says the
    save created the folder, and it never committed); a folder that was there before is left as stock leaves it.

    With ``world_size`` above 1 and ``rng_states`` (the save writes them: not ``save_only_model``),
    first :func:`_wait_for_ranks`, so that no rank writes into it after.
    """

    if not _local_main() or not os.path.isdir(folder) or not checkpoints.own_cut(Path(folder)):
        return False  # not provably this run's own save (it was there before the run): left to the next resume
    if world_size > 1 and rng_states:
        _wait_for_ranks(folder, world_size)
    if not checkpoints.own_cut(Path(folder)):
        return False
    return journal.delete_own(Path(folder))


def _full(error: BaseException, run_dir: str) -> bool:
    if isinstance(error, OSError) and disk.is_disk_full(error):
        return True
    try:
        _, size = _newest(run_dir)
        return disk.is_disk_full(error, disk.free_bytes(run_dir), size)
    except OSError:
        return False


def _cause(error: BaseException) -> str:
    """The OS's words for a full-disk ``error`` (safetensors' and torch's errors carry none)."""
    return (error.strerror if isinstance(error, OSError) else None) or "No space left on device"


def _save_layer(call: Any, trainer: Any, model: Any, trial: Any, *args: Any, **kwargs: Any) -> Any:
    """``_save_checkpoint``'s layer: a full disk deletes this run's half-written folder and stops with the numbers."""
    try:
        return call(trainer, model, trial, *args, **kwargs)
    except DiskFullError:
        raise  # the inner target (Transformers' own method) already handled it
    except Exception as error:
        run_dir = trainer._get_output_dir(trial=trial)
        if not _full(error, run_dir):
            raise
        folder = os.path.join(run_dir, f"{checkpoints.PREFIX}{trainer.state.global_step}")
        training = trainer.args
        removed = _remove(folder, int(getattr(training, "world_size", 1) or 1), not getattr(training, "save_only_model", False))
        estimate = None
        try:
            estimate = disk.model_checkpoint_bytes(model, str(getattr(training.optim, "value", training.optim)))
        except Exception:  # noqa: BLE001 - the estimate is a fallback for the message only
            pass
        cause = _cause(error)
        what = f"the save of {os.path.basename(folder)} failed ({cause}); " + (
            "the half-written folder was deleted" if removed else "the half-written folder is left to the next resume"
        )
        text = message(run_dir, what, training.save_total_limit, estimate)
        log_once(f"disk-full:{folder}", text, logging.ERROR)
        raise DiskFullError(errno.ENOSPC, text) from error


class DiskFullGuard(TrainerCallback):
    """At train begin: stop before the first step when the next save cannot fit (see the module)."""

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:  # noqa: ARG002
        output_dir = str(args.output_dir)
        if state.max_steps and state.global_step >= state.max_steps:
            return self._final_model_fits(output_dir, state, control)  # resumed at its end: the final model is ahead
        if str(getattr(args.save_strategy, "value", args.save_strategy)) == "no":
            return control  # no save ahead
        newest, size = _newest(output_dir)
        if newest is None or not size:
            return control
        free, block = disk.free_bytes(output_dir), disk.block_bytes(output_dir)
        if disk.next_save_fits(free, size, block):  # allocated bytes, f_bavail, and the next save's slack
            return control
        limit = args.save_total_limit
        rotatable = _rotatable(output_dir, limit, state.best_model_checkpoint)
        freed = sum(disk.dir_bytes(p) for p in rotatable)
        if rotatable and disk.next_save_fits(free + freed, size, block) and hooks.can_rotate_now():
            if _local_main():
                hooks.rotate_now(output_dir, limit, state.best_model_checkpoint)
            log_once(
                "disk-rotate-early",
                f"output_dir has {free} bytes free, less than the next save needs ({disk.next_save_bytes(size, block)} bytes: "
                f"{newest.name} has {size} bytes allocated, and slack): deleted "
                f"{', '.join(p.name for p in rotatable)} now, as rotation (save_total_limit: {limit}) would right after "
                "the next save, which needs their room",
                logging.WARNING,
            )
            return control
        what = (
            f"the next save (after step {state.global_step}) cannot fit: the run stops before training, "
            "as it would stop at that save"
        )
        text = message(output_dir, what, limit)
        log_once("disk-full:begin", text, logging.ERROR)
        raise DiskFullError(errno.ENOSPC, text)

    @staticmethod
    def _final_model_fits(output_dir: str, state: Any, control: Any) -> Any:
        """Resumed at the last step: stop before anything when the final model cannot fit (sizes measured)."""
        newest, _ = _newest(output_dir)
        if newest is None or checkpoints.step_of(newest) != state.global_step:
            return control
        final = disk.weight_bytes(newest)  # the weights the final save writes (an FSDP sharded checkpoint: 0, unguarded)
        free = disk.free_bytes(output_dir)
        if not final or free + disk.weight_bytes(output_dir) >= final:  # a final model already there is overwritten
            return control
        what = f"the final model cannot fit (the run resumed at its last step, {state.global_step}): the run stops now"
        text = disk.final_model_message(output_dir, free, final, newest.name, what)
        log_once("disk-full:final-begin", text, logging.ERROR)
        raise DiskFullError(errno.ENOSPC, text)


def _top_files(output_dir: str) -> dict[str, int]:
    """The files directly in ``output_dir``: name -> modification time (ns)."""
    try:
        return {e.name: e.stat().st_mtime_ns for e in os.scandir(output_dir) if e.is_file(follow_symlinks=False)}
    except FileNotFoundError:
        return {}


def save_trained_model(save: Any, cfg: Any, trainer: Any, model: Any, *args: Any, **kwargs: Any) -> Any:
    """``save_trained_model``'s layer: a full disk deletes the weight files this save wrote and stops with the numbers."""
    output_dir = str(cfg.output_dir)
    before = _top_files(output_dir)
    try:
        return save(cfg, trainer, model, *args, **kwargs)
    except DiskFullError:
        raise
    except Exception as error:
        if not _full(error, output_dir):
            raise
        weights = {f.name for f in disk.weight_files(output_dir)}
        after = _top_files(output_dir)  # the weight files this save wrote or rewrote (not the logs, not the config)
        written = sorted(name for name in weights if name in after and before.get(name) != after[name])
        removed = []
        if _local_main():
            for name in written:
                try:
                    os.unlink(os.path.join(output_dir, name))
                    removed.append(name)
                except OSError:
                    pass
        cause = _cause(error)
        what = f"the final model save into output_dir failed ({cause}); " + (
            f"the half-written weights were deleted ({', '.join(removed)})" if removed else "no half-written weights were left"
        )
        newest, _ = _newest(output_dir)
        step = getattr(getattr(trainer, "state", None), "global_step", None)
        weights_in = newest.name if newest is not None and checkpoints.step_of(newest) == step else None
        final = disk.weight_bytes(newest) if weights_in and newest is not None else None
        text = disk.final_model_message(output_dir, disk.free_bytes(output_dir), final, weights_in, what)
        log_once("disk-full:final", text, logging.ERROR)
        raise DiskFullError(errno.ENOSPC, text) from error


def _rotatable(output_dir: str, limit: int | None, best: str | None) -> list[Path]:
    """What Transformers' rotation deletes after the next save and may go now: the oldest beyond ``limit``."""
    if not limit or limit <= 0:
        return []
    found = checkpoints.checkpoints(output_dir)
    protected = {found[-1]} if found else set()
    if best:
        protected.add(Path(best))
    keep = max(limit, len(protected))
    out: list[Path] = []
    remaining = len(found)
    for folder in found:
        if remaining <= keep:
            break
        if folder not in protected:
            out.append(folder)
            remaining -= 1
    return out


def install() -> None:
    hooks.add(hooks.Layer("save_trained_model", NAME, 20, save_trained_model))
    for target in ("trainer_save_checkpoint", "axolotl_save_checkpoint"):
        hooks.add(hooks.Layer(target, NAME, 40, _save_layer))  # outside the journal's pending record (50)
    hooks.add_callbacks("disk guard", NAME, lambda builder: [DiskFullGuard()])  # noqa: ARG005
