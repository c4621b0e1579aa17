"""The per-epoch trigger: one action at the first step that reaches each target j/k of an epoch.

Shared by two seams (saves: ``seams.saves_per_epoch``; evaluations: ``seams.evals_per_epoch``), each
with its subclass here (:class:`SavesPerEpochCallback`, :class:`EvalsPerEpochCallback`: a flag and a key). It
compares Transformers' float ``state.epoch`` with the targets j/k using
:func:`math.isclose` for "reached" (:func:`schedule.targets_reached`) and keeps
the count of targets already acted on as guard, so each target fires exactly
once: also when the batches per epoch are not divisible by k, when one step
crosses several targets, and after a resume (the guard is rebuilt from the
restored ``state.epoch``). The last step of the run always fires.

Transformers itself is kept on the ``steps`` strategy with an interval that is
never reached (:data:`NEVER`), so everything it does for that strategy still
holds: the last step, best-checkpoint tracking, and ``load_best_model_at_end``'s
check (``NEVER % NEVER == 0`` when both saves and evals are per epoch).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, ClassVar

from transformers import TrainerCallback

from ..rules import schedule
from ..rules.checks import saves_turned_off, streamed_data, streamed_keys, streamed_line
from .log import log_once
from .patching import key_hidden

# Transformers' own step interval for a per-epoch schedule: never reached.
NEVER = 2**62


def batches_per_epoch(train_dataloader: Any) -> int | None:
    """``len(train_dataloader)``, or ``None`` where there is none: no dataloader, or streamed data (no length)."""
    if train_dataloader is None:
        return None
    try:
        return len(train_dataloader)
    except TypeError:  # an IterableDataset: Transformers' has_length is False
        return None


def save_strategy_no_line(cfg: Any) -> str:
    """The one line of a run whose ``saves_per_epoch`` ``save_strategy: no`` turns off."""
    return (
        f"save_strategy: no with saves_per_epoch: {cfg.get('saves_per_epoch')}: no checkpoint is saved, "
        "as save_strategy: no asks (saves_per_epoch is off)"
    )


class PerEpochCallback(TrainerCallback):
    """Set ``control.<flag>`` at the first step whose epoch progress reaches each target j/k."""

    flag: ClassVar[str]  # the TrainerControl flag to set
    key: ClassVar[str]  # the config key, for messages
    verb: ClassVar[str]

    def __init__(self, per_epoch: int, before: Callable[[], None] | None = None) -> None:
        """``before``: called at each step where this callback sets its flag, ahead of the save or eval."""
        self.per_epoch = per_epoch
        self.before = before
        self.targets_done = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, train_dataloader: Any = None, **kwargs: Any) -> Any:
        # Fresh run: epoch 0. Resume: the restored epoch, so targets done before the stop stay done.
        self.targets_done = schedule.targets_reached(state.epoch or 0.0, self.per_epoch)
        batches = batches_per_epoch(train_dataloader)
        if batches:
            per_epoch = schedule.steps_per_epoch(batches, args.gradient_accumulation_steps)
            if self.per_epoch > per_epoch:
                log_once(
                    f"k>S:{self.key}",
                    f"{self.key}: {self.per_epoch} is more than the {per_epoch} optimizer steps per epoch; "
                    f"{self.verb} every step ({per_epoch} per epoch). Set {self.key} to {per_epoch} or less.",
                    logging.WARNING,
                )
        return control

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        reached = schedule.targets_reached(state.epoch, self.per_epoch)
        fire = reached > self.targets_done or (state.max_steps > 0 and state.global_step >= state.max_steps)
        self.targets_done = max(self.targets_done, reached)
        if fire:
            setattr(control, self.flag, True)
            if self.before is not None:
                self.before()
        return control


class SavesPerEpochCallback(PerEpochCallback):
    """Save at the first step that reaches each target j/``saves_per_epoch``, and at the last step."""

    flag = "should_save"
    key = "saves_per_epoch"
    verb = "saving"


def _collect_garbage() -> None:
    import gc

    import torch

    gc.collect()
    torch.cuda.empty_cache()


def saves_callback(cfg: Any, per_epoch: int) -> SavesPerEpochCallback:
    """The :class:`SavesPerEpochCallback` of a run with ``cfg``: ``per_epoch`` saves per epoch.

    Axolotl's GCCallback (``gc_collect_steps``, ``gc_steps`` before 0.14) collects before the saves of
    Transformers' interval, which a per-epoch run never reaches: the callback collects before its own saves instead.
    """
    collects = bool(cfg.get("gc_collect_steps") or cfg.get("gc_steps"))
    return SavesPerEpochCallback(per_epoch, _collect_garbage if collects else None)


class EvalsPerEpochCallback(PerEpochCallback):
    """Evaluate at the first step that reaches each target j/``evals_per_epoch``, and at the last step (once)."""

    flag = "should_evaluate"
    key = "evals_per_epoch"
    verb = "evaluating"


def hiding(key: str, check: Callable[[Any], None] | None = None) -> Callable[..., Any]:
    """``normalize_config``'s layer for a per-epoch ``key``: ``check(cfg)`` first, then Axolotl's own with ``key`` hidden.

    Stock ``normalize_config`` turns ``saves_per_epoch``/``evals_per_epoch`` into a float ratio of the
    run; hidden, it sets none, and the key is put back for the per-epoch callback. With streamed data
    (:func:`rules.checks.streamed_data`) the key is not hidden: stock's ratio of ``max_steps``, said in one line.
    ``saves_per_epoch`` with ``save_strategy: no`` (:func:`rules.checks.saves_turned_off`, streamed or not) is
    hidden, said in one line: no ratio, so Axolotl's builder keeps ``save_strategy: no`` and saves nothing.
    """

    def around(call: Callable[..., Any], cfg: Any, *args: Any, **kwargs: Any) -> Any:
        if check is not None:
            check(cfg)
        if not cfg.get(key):
            return call(cfg, *args, **kwargs)
        if key == "saves_per_epoch" and saves_turned_off(cfg):
            log_once("save-strategy-no", save_strategy_no_line(cfg))  # once per run
        elif streamed_data(cfg):
            keys = streamed_keys(cfg)
            if keys:
                log_once("streamed-per-epoch", streamed_line(keys))  # once per run, for either key
            return call(cfg, *args, **kwargs)
        with key_hidden(cfg, key):
            return call(cfg, *args, **kwargs)

    return around
