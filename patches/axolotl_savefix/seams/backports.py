"""Fixes bound to releases: each one's range is declared here, and each steps aside outside it.

=====================================  ====================================  =================================
back-port                              releases (the target's ``where``)     what goes wrong in stock there
=====================================  ====================================  =================================
:func:`_epoch_order`                   Transformers < 5.0 (Axolotl 0.13.2)   a resume in epoch >= 1 replays epoch 0's order
(the rotation's hook point)            Transformers < 5.3 (0.13.2, 0.14.0)   rotation is a ``Trainer`` method:
                                                                             ``_infra.hooks`` adapts it, so
                                                                             every rotation contribution holds
:func:`_token_state_file`              Axolotl 0.13.2 to 0.15.0              token counters written and read under two names
:func:`_token_counters`                Axolotl < 0.20 (the callback without  token counters restart at 0 after an auto-resume
                                       ``cfg``; PR 3941 fixed it)
:class:`BestFollowsOutputDir`          every release (Transformers issue      a moved ``output_dir``'s best checkpoint
                                       48315); the re-read on 5.20            is deleted by rotation; 5.20 drops it
=====================================  ====================================  =================================
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from .._infra import hooks, targets
from .._infra.log import log_once
from .._infra.patching import patch_item
from ..rules import checkpoints
from ..rules.records import resumed_checkpoint

NAME = "backports"


# --- Transformers issue 40690 (before 5.0) ------------------------------------------------------------------------


def _epoch_order(skip_first_batches: Any, dataloader: Any, num_batches: int = 0, *args: Any, **kwargs: Any) -> Any:
    """Transformers issue 40690: a mid-epoch resume in epoch >= 1 replays epoch 0's sample order.

    Before 5.0, ``Trainer._inner_training_loop`` calls ``set_epoch(epoch)`` on the train dataloader and
    then, on the resumed epoch, replaces it with ``skip_first_batches(dataloader, n)``: Accelerate's new
    ``DataLoaderShard`` starts at ``iteration`` 0 and its ``__iter__`` calls ``set_epoch(0)`` on the
    sampler it shares, so the resumed epoch skips ``n`` batches of epoch 0's shuffled order and trains on
    the rest of it (measured on Axolotl 0.13.2, Transformers 4.57.6: tests/e2e/test_resume_fidelity.py).
    The skipping dataloader is given the epoch the original holds (``iteration``), as Transformers 5.0
    does by calling ``set_epoch`` after the skip. A dataloader without ``iteration`` or ``set_epoch``
    (not Accelerate's) is left as is.
    """
    skipped = skip_first_batches(dataloader, num_batches, *args, **kwargs)
    epoch = getattr(dataloader, "iteration", None)
    if isinstance(epoch, int) and epoch > 0 and hasattr(skipped, "set_epoch"):
        skipped.set_epoch(epoch)
    return skipped


# --- Axolotl issue 3940 (token counters) -----------------------------------------------------------------------------


def _token_counters(on_train_begin: Any, self: Any, args: Any, state: Any, *rest: Any, **kwargs: Any) -> Any:
    """Axolotl issue 3940: ``include_tkps`` token counters restart at zero after an auto-resume.

    ``TokensPerSecondCallback`` is built with ``cfg.resume_from_checkpoint`` before
    ``determine_last_checkpoint`` sets it, so on an auto-resume it holds None and its
    ``on_train_begin`` skips the restore of ``tokens_state.json``. It is given the folder the run
    resumed from (:func:`rules.records.resumed_checkpoint`) for that call only; an explicit
    ``resume_from_checkpoint`` (a string already) and a fresh run are stock's. Releases whose callback
    takes the config (Axolotl 0.20 on, PR 3941: it reads ``cfg.resume_from_checkpoint`` at train
    begin) have nothing to fix: :func:`_counters_need_it` leaves them out.
    """
    held = getattr(self, "resume_from_checkpoint", None)
    resumed = None if isinstance(held, str) else resumed_checkpoint(args.output_dir, state.global_step)
    if resumed is None:
        return on_train_begin(self, args, state, *rest, **kwargs)
    self.resume_from_checkpoint = resumed
    try:
        return on_train_begin(self, args, state, *rest, **kwargs)
    finally:
        self.resume_from_checkpoint = held


def _counters_need_it() -> bool:
    """The callback that does not take the config (Axolotl before 0.20) reads a resume folder set before auto-resume."""
    import importlib

    callback = importlib.import_module(targets.TOKENS_MODULE).TokensPerSecondCallback
    return "cfg" not in inspect.signature(callback).parameters


def _token_state_file() -> None:
    """Axolotl 0.13.2 to 0.15.0: the token counters are written under one name and read under another.

    There ``AxolotlTrainer._save`` writes them into each checkpoint as ``tokens_state.`` (its module's
    ``TOKENS_STATE_FILE``) and ``TokensPerSecondCallback.on_train_begin`` reads ``tokens_state.json``
    (its own module's): the file is never found, and ``tokens/total`` and ``tokens/trainable`` restart
    at zero after any resume, explicit or auto. The reader is given the writer's name, so checkpoints
    those releases wrote (stock or patched) are read as written. From Axolotl 0.16 both import one
    constant (``axolotl.core.trainers.constants``): nothing is patched. :func:`axolotl_savefix.revert`
    gives the reader its own name back.
    """
    if not targets.present("tokens_file_read"):
        return
    reader, name, read = targets.resolve("tokens_file_read")
    _, _, written = targets.resolve("tokens_file_written")
    if isinstance(read, str) and isinstance(written, str) and read != written:
        patch_item(reader, name, written)


# --- Transformers issue 48315: the best checkpoint after a move ----------------------------------------------------


class BestFollowsOutputDir(TrainerCallback):
    """A resume from a moved or renamed ``output_dir``: ``best_model_checkpoint`` names the folder here, not the old path.

    Transformers stores ``best_model_checkpoint`` as the path it saved to (``<output_dir>/checkpoint-N``)
    in ``trainer_state.json`` and restores it on resume. After the run's folder is moved (another disk,
    a scratch copy), that path names the old place (Transformers issue 48315): the rotation no longer
    protects the best checkpoint here and deletes it, and with ``save_total_limit: 1`` the end of
    training loads the best model from the old path (``FileNotFoundError``, or the old copy's weights
    where it still exists) and deletes every checkpoint here that is not that path. At train begin,
    after the resumed state is loaded, a best checkpoint outside ``output_dir`` whose folder name is in
    ``output_dir`` is rewritten to it, with one line; otherwise nothing changes (stock's).

    Transformers 5.20 drops a recorded best checkpoint that is not a folder when it loads the resumed
    state ("Ignoring it for this run"): no crash, but ``load_best_model_at_end`` then loads nothing and
    the best checkpoint here is no longer protected. There the record is read again from the resumed
    checkpoint's ``trainer_state.json`` (:func:`rules.records.resumed_checkpoint`) and the same rule applies.
    """

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:  # noqa: ARG002 - TrainerCallback's hook
        if not args.output_dir:
            return control
        best = getattr(state, "best_model_checkpoint", None) or self._recorded_best(args, state)
        if not best:
            return control
        old, here = Path(best), Path(args.output_dir)
        moved = here / old.name
        if os.path.realpath(old.parent) == os.path.realpath(here) or not moved.is_dir():
            return control
        state.best_model_checkpoint = str(moved)
        log_once(
            f"best-moved:{moved}",
            f"best_model_checkpoint {best} is outside output_dir (moved or renamed since it was saved): "
            f"taking {moved} instead, so the rotation keeps it and load_best_model_at_end loads it",
        )
        return control

    @staticmethod
    def _recorded_best(args: Any, state: Any) -> str | None:
        """``best_model_checkpoint`` as the resumed checkpoint's ``trainer_state.json`` records it (None: none, or unreadable)."""
        resumed = resumed_checkpoint(args.output_dir, state.global_step)
        if resumed is None:
            return None
        try:
            recorded, _ = checkpoints.read_state(Path(resumed))  # bounded; None when missing or not JSON
        except FileNotFoundError:
            return None
        best = recorded.get("best_model_checkpoint") if isinstance(recorded, dict) else None
        return best if isinstance(best, str) and best else None


def install() -> None:
    hooks.add(hooks.Layer("skip_first_batches", NAME, 20, _epoch_order))
    hooks.add(hooks.Layer("tokens_on_train_begin", NAME, 20, _token_counters, when=_counters_need_it))
    hooks.on_builder(NAME, _token_state_file)
    hooks.add_callbacks("best follows output_dir", NAME, lambda builder: [BestFollowsOutputDir()])  # noqa: ARG005
