"""An independent reference for what a run should save: a brute-force walk of the Trainer's loop.

Written from the rules, not from ``axolotl_savefix.rules.schedule`` (which it must not import):

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


def epoch_end_saves(batches_per_epoch: int, grad_accum: int, max_steps: int) -> list[int]:
    """``save_strategy: epoch`` (Axolotl's default): every epoch end, and the last step."""
    return [
        step
        for step, _, consumed, _ in walk(batches_per_epoch, grad_accum, max_steps)
        if consumed == batches_per_epoch or step == max_steps
    ]


def patched_saves(batches_per_epoch: int, grad_accum: int, per_epoch: int | None, max_steps: int) -> list[int]:
    if not per_epoch:  # 0 (off, as in stock) or unset: Axolotl's default strategy
        return epoch_end_saves(batches_per_epoch, grad_accum, max_steps)
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


def stock_saves(batches_per_epoch: int, grad_accum: int, per_epoch: int | None, num_epochs: float, max_steps: int) -> list[int]:
    if not per_epoch:  # 0 or unset: `if cfg.saves_per_epoch:` is false: no ratio, Axolotl's default strategy
        return epoch_end_saves(batches_per_epoch, grad_accum, max_steps)
    ratio = 1.0 / (per_epoch * num_epochs)
    saved = []
    if ratio < 1.0:
        interval = math.ceil(max_steps * ratio)
        for step, *_ in walk(batches_per_epoch, grad_accum, max_steps):
            if step % interval == 0 or step == max_steps:
                saved.append(step)
    else:
        saved = epoch_end_saves(batches_per_epoch, grad_accum, max_steps)
    return saved


def kept(saved: list[int], limit: int | None) -> list[int]:
    return list(saved) if not limit else list(saved[-limit:])


def stock_limit(save_total_limit: int | None) -> int:
    return save_total_limit if save_total_limit else 4


def axolotl_max_steps(samples: int, micro_batch: int, grad_accum: int, num_epochs: float, world: int = 1) -> int:
    """Axolotl's ``calculate_total_num_steps`` without packing: ceil(samples * epochs / batch size)."""
    return math.ceil(samples * num_epochs / (micro_batch * grad_accum * world))


def patched_evals(batches_per_epoch: int, grad_accum: int, per_epoch: int, max_steps: int) -> list[int]:
    """Step 0 (``eval_on_start``, kept as upstream), then the same rule as the saves; 0 is off: none."""
    if per_epoch == 0:
        return []
    return [0, *patched_saves(batches_per_epoch, grad_accum, per_epoch, max_steps)]


def stock_evals(batches_per_epoch: int, grad_accum: int, per_epoch: int, num_epochs: float, max_steps: int) -> list[int]:
    """Stock: ``eval_steps = 1 / (k * num_epochs)`` when below 1, else no ``eval_steps`` at all.

    With the ratio, Axolotl sets ``eval_on_start`` (step 0) and Transformers
    evaluates every ``ceil(max_steps * ratio)`` steps and at the last step
    (Transformers 5: "evaluate at the end if ... not already"). Without it
    Axolotl sets no eval strategy and Transformers' default is ``no``. 0 is off: none.
    """
    if per_epoch == 0:
        return []
    ratio = 1.0 / (per_epoch * num_epochs)
    if ratio >= 1.0:
        return []
    interval = math.ceil(max_steps * ratio)
    return [0, *(s for s, *_ in walk(batches_per_epoch, grad_accum, max_steps) if s % interval == 0 or s == max_steps)]


def best_step(saved: list[int], eval_loss: dict[int, float]) -> int | None:
    """The checkpoint ``load_best_model_at_end`` ends up with (Transformers' rule).

    Every eval in the loop (not the step-0 ``eval_on_start`` one) may move the
    best step to its own step, when its loss is strictly lower. A save makes its
    checkpoint the best one only if the best step is then that very step; a
    better eval with no save at its step leaves the best checkpoint where it was.
    """
    best_eval: int | None = None
    best_checkpoint: int | None = None
    for step in sorted(set(saved) | set(eval_loss)):
        if step in eval_loss and step > 0 and (best_eval is None or eval_loss[step] < eval_loss[best_eval]):
            best_eval = step
        if step in saved and best_eval == step:
            best_checkpoint = step
    return best_checkpoint


def kept_with_best(saved: list[int], limit: int | None, best: int | None) -> list[int]:
    """Rotation that never deletes the best checkpoint nor the newest (Transformers' rule)."""
    if not limit or len(saved) <= limit:
        return list(saved)
    protected = {saved[-1], best} - {None}
    keep = max(limit, len(protected))
    survivors = list(saved)
    for step in list(saved):  # oldest first
        if len(survivors) <= keep:
            break
        if step not in protected:
            survivors.remove(step)
    return survivors


def interval_steps(batches_per_epoch: int, grad_accum: int, interval: int, max_steps: int) -> list[int]:
    """Integer ``save_steps``/``eval_steps``: every ``interval`` optimizer steps, and the last step."""
    return [s for s, *_ in walk(batches_per_epoch, grad_accum, max_steps) if s % interval == 0 or s == max_steps]


def cosine_lr(scheduler_steps: int, warmup: int, total: int, base: float) -> float:
    """The learning rate after ``scheduler_steps`` steps of a linear warmup then half a cosine to 0 over ``total``.

    The schedule Transformers documents for ``lr_scheduler_type: cosine``
    (``get_cosine_schedule_with_warmup``, ``num_cycles`` 0.5).
    """
    if scheduler_steps < warmup:
        return base * scheduler_steps / max(1, warmup)
    progress = (scheduler_steps - warmup) / max(1, total - warmup)
    return base * max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
