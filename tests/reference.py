"""An independent reference for what a run should save: a brute-force walk of the Trainer's loop.

Written from the rules, not from ``axolotl_savefix.schedule`` (which it must not import):

* patched (the spec): target j/k of every epoch is saved at the first optimizer
  step whose consumed batches reach the fraction j/k, exactly (``Fraction``);
  the last step of the run is always saved; nothing else.
* stock: Axolotl sets ``save_steps = 1 / (k * num_epochs)`` when that is below 1;
  Transformers saves every ``ceil(max_steps * ratio)`` steps and at the last
  step. With a ratio of 1 or more Axolotl sets nothing and the run saves at
  every epoch end (``save_strategy: epoch``) and at the end.
* rotation keeps the newest ``limit`` checkpoints; stock's limit is
  ``save_total_limit or 4``; patched keeps all when the limit is unset or 0.
"""

from __future__ import annotations

import math
from fractions import Fraction


def walk(batches_per_epoch: int, grad_accum: int, max_steps: int):
    """Yield ``(global_step, epoch_index, batches_consumed_in_epoch, epoch_float)`` like Transformers.

    ``epoch_float`` is computed the way Transformers computes ``state.epoch``:
    ``epoch + (step + 1) / steps_in_epoch`` in floating point.
    """
    global_step = 0
    epoch = 0
    while True:
        consumed = 0
        while consumed < batches_per_epoch:
            consumed += min(grad_accum, batches_per_epoch - consumed)
            global_step += 1
            yield global_step, epoch, consumed, epoch + consumed / batches_per_epoch
            if global_step >= max_steps:
                return
        epoch += 1


def patched_saves(batches_per_epoch: int, grad_accum: int, per_epoch: int, max_steps: int) -> list[int]:
    saved = []
    done_epoch, next_target = 0, 1
    for step, epoch, consumed, _ in walk(batches_per_epoch, grad_accum, max_steps):
        if epoch != done_epoch:
            done_epoch, next_target = epoch, 1
        hit = False
        while next_target <= per_epoch and Fraction(consumed, batches_per_epoch) >= Fraction(next_target, per_epoch):
            next_target += 1
            hit = True
        if hit or step == max_steps:
            saved.append(step)
    return saved


def stock_saves(batches_per_epoch: int, grad_accum: int, per_epoch: int, num_epochs: float, max_steps: int) -> list[int]:
    ratio = 1.0 / (per_epoch * num_epochs)
    saved = []
    if ratio < 1.0:
        interval = math.ceil(max_steps * ratio)
        for step, *_ in walk(batches_per_epoch, grad_accum, max_steps):
            if step % interval == 0 or step == max_steps:
                saved.append(step)
    else:
        for step, _, consumed, _ in walk(batches_per_epoch, grad_accum, max_steps):
            if consumed == batches_per_epoch or step == max_steps:
                saved.append(step)
    return saved


def kept(saved: list[int], limit: int | None) -> list[int]:
    return list(saved) if not limit else list(saved[-limit:])


def stock_limit(save_total_limit: int | None) -> int:
    return save_total_limit if save_total_limit else 4


def axolotl_max_steps(samples: int, micro_batch: int, grad_accum: int, num_epochs: float, world: int = 1) -> int:
    """Axolotl's ``calculate_total_num_steps`` without packing: ceil(samples * epochs / batch size)."""
    return math.ceil(samples * num_epochs / (micro_batch * grad_accum * world))
