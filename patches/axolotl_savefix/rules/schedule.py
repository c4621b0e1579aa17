"""The checkpoint schedule of a ``saves_per_epoch`` run: pure arithmetic.

No Axolotl, no torch: this module is importable and testable anywhere. Integers
where the Trainer gives integers (batches, steps), :func:`math.isclose` only
where it gives a float (``state.epoch``).

Terms (one process; all counts are per rank):

``L``  batches per epoch (``len(train_dataloader)``)
``G``  gradient accumulation steps
``S``  optimizer steps per epoch, ``ceil(L / G)``
``M``  the last step the trainer runs (``state.max_steps``)
``k``  saves (or evals) per epoch

Optimizer step ``s`` (1..S) of an epoch has consumed ``b(s) = min(s*G, L)``
batches. Target ``j/k`` (j = 1..k) of every epoch is reached at the first step
with ``b(s) * k >= j * L``; its global step is ``e*S + s``. Steps past ``M``
are dropped; ``M`` itself is always saved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Relative tolerance for "epoch progress has reached a target". Transformers
# computes ``state.epoch = epoch + (step + 1) / steps_in_epoch`` in floats, so a
# target of exactly 1.0 can arrive as 0.9999999999999999.
EPOCH_REL_TOL = 1e-9


def _positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def steps_per_epoch(batches_per_epoch: int, grad_accum: int) -> int:
    """Optimizer steps in one epoch: ``ceil(L / G)`` (Transformers' count)."""
    _positive("batches_per_epoch", batches_per_epoch)
    _positive("grad_accum", grad_accum)
    return -(-batches_per_epoch // grad_accum)


def target_steps_in_epoch(batches_per_epoch: int, grad_accum: int, per_epoch: int) -> list[int]:
    """The in-epoch step (1..S) that reaches each target ``j/k``, j = 1..k: a list of k entries.

    Several targets can land on the same step when ``k > S``. O(k): for the
    steps a run saves at, use :func:`steps_in_epoch`, which is O(min(k, S)).
    """
    L, G, k = batches_per_epoch, grad_accum, _positive("per_epoch", per_epoch)
    S = steps_per_epoch(L, G)
    # first s with min(s*G, L) * k >= j * L  ->  s = ceil(j*L / (k*G)), at most S
    return [min(-(-(j * L) // (k * G)), S) for j in range(1, k + 1)]


def steps_in_epoch(batches_per_epoch: int, grad_accum: int, per_epoch: int) -> list[int]:
    """The distinct in-epoch steps (1..S) that reach at least one target ``j/k``, sorted.

    O(min(k, S)) work and memory, so ``saves_per_epoch: 10**9`` costs what
    ``k = S`` costs. When ``k * G >= L`` every step reaches a new target (a
    step before the last consumes G batches, that is ``k * G / L >= 1``
    targets; the last step reaches target k), so the answer is every step;
    otherwise ``k < L / G <= S`` and each target has its own formula
    (:func:`target_steps_in_epoch`).
    """
    L, G, k = batches_per_epoch, grad_accum, _positive("per_epoch", per_epoch)
    if k * G >= L:
        return list(range(1, steps_per_epoch(L, G) + 1))
    return sorted(set(target_steps_in_epoch(L, G, k)))


def per_epoch_steps(batches_per_epoch: int, grad_accum: int, per_epoch: int, max_steps: int) -> list[int]:
    """Global steps of a run that saves ``per_epoch`` times per epoch, ending at ``max_steps``.

    Sorted, without duplicates, ``max_steps`` always last.
    """
    _positive("max_steps", max_steps)
    S = steps_per_epoch(batches_per_epoch, grad_accum)
    in_epoch = steps_in_epoch(batches_per_epoch, grad_accum, per_epoch)
    if len(in_epoch) == S:  # every step saves
        return list(range(1, max_steps + 1))
    steps: list[int] = []
    for epoch in range(-(-max_steps // S)):
        steps.extend(s for s in (epoch * S + t for t in in_epoch) if s < max_steps)
    steps.append(max_steps)
    return steps


def interval_steps(max_steps: int, save_steps: float) -> list[int]:
    """Steps Transformers saves at with ``save_strategy="steps"`` (stock behaviour).

    A ``save_steps`` below 1 is a ratio of the run: the interval is
    ``ceil(max_steps * save_steps)`` (``TrainerState.compute_steps``). It saves at
    every multiple of the interval and always at the last step.
    """
    _positive("max_steps", max_steps)
    if save_steps <= 0:
        raise ValueError(f"save_steps must be positive, got {save_steps!r}")
    interval = math.ceil(max_steps * save_steps) if save_steps < 1 else int(save_steps)
    steps = list(range(interval, max_steps, interval))
    steps.append(max_steps)
    return steps


def epoch_end_steps(batches_per_epoch: int, grad_accum: int, max_steps: int) -> list[int]:
    """Steps Transformers saves at with ``save_strategy="epoch"``: every epoch end, and ``max_steps``."""
    return per_epoch_steps(batches_per_epoch, grad_accum, 1, max_steps)


def stock_per_epoch_ratio(per_epoch: int, num_epochs: float) -> float | None:
    """The ratio stock Axolotl's ``normalize_config`` derives from ``saves_per_epoch`` / ``evals_per_epoch``.

    ``None`` where stock sets no ``save_steps`` / ``eval_steps`` (ratio >= 1: saves
    fall back to each epoch, evals to none at all).
    """
    ratio = 1.0 / (per_epoch * num_epochs)
    return ratio if ratio < 1.0 else None


def targets_reached(epoch: float, per_epoch: int) -> int:
    """How many targets ``j/k`` the epoch progress ``epoch`` has reached, counted over the run.

    ``epoch`` is Transformers' float ``state.epoch``; target ``n`` (n = 1, 2, ...)
    sits at ``n / k``. A progress within :data:`EPOCH_REL_TOL` of the next target
    counts as having reached it, so 0.9999999999999999 reaches 1.0.
    """
    scaled = epoch * per_epoch
    reached = math.floor(scaled)
    if math.isclose(scaled, reached + 1, rel_tol=EPOCH_REL_TOL):
        reached += 1
    return max(reached, 0)


def last_epoch_end(batches_per_epoch: int, grad_accum: int, max_steps: int) -> int:
    """The step at which the epoch that ``max_steps`` falls in would end."""
    S = steps_per_epoch(batches_per_epoch, grad_accum)
    return -(-max_steps // S) * S


@dataclass(frozen=True)
class RunShape:
    """What the Trainer knows at ``on_train_begin``: enough to plan every save."""

    batches_per_epoch: int
    grad_accum: int
    max_steps: int

    @property
    def steps_per_epoch(self) -> int:
        return steps_per_epoch(self.batches_per_epoch, self.grad_accum)

    def per_epoch_steps(self, per_epoch: int) -> list[int]:
        return per_epoch_steps(self.batches_per_epoch, self.grad_accum, per_epoch, self.max_steps)

    def epoch_end_steps(self) -> list[int]:
        return epoch_end_steps(self.batches_per_epoch, self.grad_accum, self.max_steps)

    def interval_steps(self, save_steps: float) -> list[int]:
        return interval_steps(self.max_steps, save_steps)
