"""The checkpoint plan of a run, stock and patched: pure, no Axolotl import.

:func:`make_plan` takes the save/eval settings of a config and the run's shape
(batches per epoch, gradient accumulation, the step the run stops at) and says
which steps stock Axolotl and the patched one save, keep and evaluate, how much
disk the kept checkpoints take, and which requested checkpoints a run loses.
Used by ``axolotl-savefix plan`` and logged at the start of every patched run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from . import disk, run_match, schedule
from .checks import keep_stocks_share, streamed_data
from .checks import strategy_name as _strategy
from .disk import UPSTREAM_DEFAULT, resolve_default_limit

PLUGIN = "axolotl_savefix.SaveFixPlugin"
STREAMED = "streamed data (streaming / pretraining_dataset)"


def _streamed_note(keys: list[str]) -> str:
    return (
        f"{STREAMED}: Transformers counts the whole run as one epoch; {keep_stocks_share(keys)}, 1/(k * num_epochs), "
        "stock and patched alike"
    )


@dataclass(frozen=True)
class Settings:
    """The keys of an Axolotl config that decide saves and evals (validated or not)."""

    num_epochs: float = 1
    grad_accum: int = 1
    max_steps: int | None = None
    saves_per_epoch: int | None = None
    save_steps: float | None = None
    save_strategy: str | None = None
    save_total_limit: int | None = None
    save_first_step: bool = False
    evals_per_epoch: int | None = None
    eval_steps: float | None = None
    eval_strategy: str | None = None
    has_eval: bool = False
    patched: bool = False
    margin: float = disk.DEFAULT_MARGIN
    resume_warning: str | None = None  # run_match.save_only_model_warning: save_only_model meets auto-resume
    streamed: bool = False  # checks.streamed_data: no epoch length; the per-epoch keys keep stock's ratio

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> Settings:
        plugins = cfg.get("plugins") or []
        margin = cfg.get("savefix_disk_margin")
        return cls(
            num_epochs=cfg.get("num_epochs") or 1,
            grad_accum=cfg.get("gradient_accumulation_steps") or 1,
            max_steps=cfg.get("max_steps") or None,
            saves_per_epoch=cfg.get("saves_per_epoch"),  # 0: off, as in stock
            save_steps=cfg.get("save_steps"),
            save_strategy=cfg.get("save_strategy"),
            save_total_limit=cfg.get("save_total_limit"),
            save_first_step=bool(cfg.get("save_first_step")),
            evals_per_epoch=cfg.get("evals_per_epoch"),
            eval_steps=cfg.get("eval_steps"),
            eval_strategy=cfg.get("eval_strategy"),
            has_eval=bool(cfg.get("val_set_size") or cfg.get("test_datasets")),
            patched=PLUGIN in plugins,
            margin=disk.DEFAULT_MARGIN if margin is None else float(margin),
            resume_warning=run_match.save_only_model_warning(cfg),
            streamed=streamed_data(cfg),
        )


@dataclass
class Schedule:
    saved: list[int] | None  # None: decided at run time (save_strategy: best)
    kept: list[int] | None
    limit: int | None  # None: keeps every checkpoint
    evals: list[int]


@dataclass
class Plan:
    batches_per_epoch: int
    grad_accum: int
    steps_per_epoch: int
    num_epochs: float
    max_steps: int
    epochs_end_at: int  # the step at which num_epochs would end
    stock: Schedule
    patched: Schedule
    patched_run: bool
    requested: list[int]
    lost: list[int]
    checkpoint_bytes: int | None = None
    checkpoint_measured: bool = False
    free_bytes: int | None = None
    margin: float = disk.DEFAULT_MARGIN
    limit_lowered_for_disk: bool = False
    notes: list[str] = field(default_factory=list)
    resume_warning: str | None = None  # shown by `axolotl-savefix plan`; a run logs it once, at validate_config
    final_bytes: int | None = None  # the final model Axolotl writes into output_dir at the end
    disk_need_bytes: int | None = None  # the run's peak on disk: see disk.peak_bytes
    disk_short: bool = False  # disk_need_bytes is more than free_bytes: the run will fill the disk

    def disk_warning(self) -> str | None:
        """One line, with the numbers and the fix, when the run's choice cannot fit on the disk; else None."""
        if not self.disk_short or not self.checkpoint_bytes or self.free_bytes is None or self.disk_need_bytes is None:
            return None
        run = self.patched if self.patched_run else self.stock
        cb, free, final = self.checkpoint_bytes, self.free_bytes, self.final_bytes or 0
        n = len(run.saved or [])
        limit = "keep all" if run.limit is None else str(run.limit)
        at_peak = n if run.limit is None else min(n, run.limit + 1)
        best = disk.max_fitting_limit(cb, free, final)
        fix = "free space, or set output_dir on a larger disk"
        if best >= 1:
            fix = f"set save_total_limit: {best}, {fix}"
        fails_at = (free // cb) + 1
        how = "measured: allocated" if self.checkpoint_measured else "estimated"
        return (
            f"disk: save_total_limit {limit} needs {self.disk_need_bytes} bytes ({disk.human(self.disk_need_bytes)}) in "
            f"output_dir: {at_peak} checkpoints of {cb} bytes ({how}) "
            f"at the peak, the final model {final} bytes at the end; output_dir has {free} bytes "
            f"({disk.human(free)}) for them: the run will stop with a full disk at about save {fails_at} of {n}. "
            f"Fix: {fix}."
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _interval_or_epochs(shape: schedule.RunShape, steps: float | None, strategy: str | None) -> list[int] | None:
    """What Transformers does with a step interval / a strategy (the shared, unpatched part)."""
    if steps:
        return shape.interval_steps(steps)
    if strategy in (None, "epoch"):
        return shape.epoch_end_steps()
    if strategy == "steps":  # steps strategy, no interval given: Transformers' default of 500
        return shape.interval_steps(500)
    if strategy == "no":
        return []
    return None  # "best": decided by the metric


def _stock_saves(s: Settings, shape: schedule.RunShape) -> list[int] | None:
    steps, strategy = s.save_steps, _strategy(s.save_strategy)
    if s.saves_per_epoch:
        steps = schedule.stock_per_epoch_ratio(s.saves_per_epoch, s.num_epochs)
    return _interval_or_epochs(shape, steps, strategy)


def _saves_turned_off(s: Settings) -> bool:
    """checks.saves_turned_off on the settings: ``saves_per_epoch`` set, ``save_strategy: no`` wins."""
    return bool(s.saves_per_epoch) and _strategy(s.save_strategy) == "no"


def _save_strategy_no_note(s: Settings) -> str:
    return (
        f"saves_per_epoch: {s.saves_per_epoch} is off: save_strategy: 'no' saves no checkpoint"
        " (stock saves on its ratio 1/(k * num_epochs) anyway when that is below 1)"
    )


def _patched_saves(s: Settings, shape: schedule.RunShape) -> list[int] | None:
    if _saves_turned_off(s):  # streamed or not
        return []
    if s.streamed:  # no epoch fractions: stock's ratio of max_steps
        return _stock_saves(s, shape)
    if s.saves_per_epoch:
        return shape.per_epoch_steps(s.saves_per_epoch)
    return _interval_or_epochs(shape, s.save_steps, _strategy(s.save_strategy))


def _first_step(s: Settings, saved: list[int] | None) -> list[int] | None:
    if saved is None or not s.save_first_step or 1 in saved:
        return saved
    return [1, *saved]


def _evals(s: Settings, shape: schedule.RunShape, *, patched: bool) -> list[int]:
    strategy = _strategy(s.eval_strategy)
    if not s.has_eval or strategy == "no":
        return []
    if s.evals_per_epoch:
        if patched and not s.streamed:
            return [0, *shape.per_epoch_steps(s.evals_per_epoch)]
        ratio = schedule.stock_per_epoch_ratio(s.evals_per_epoch, s.num_epochs)
        return [0, *shape.interval_steps(ratio)] if ratio is not None else []
    if s.eval_steps:
        return [0, *shape.interval_steps(s.eval_steps)]
    if strategy == "epoch":
        return [0, *shape.epoch_end_steps()]
    return []


def _kept(saved: list[int] | None, limit: int | None) -> list[int] | None:
    if saved is None:
        return None
    return list(saved) if not limit or limit < 0 else saved[-limit:]


def _fallback(s: Settings, what: str) -> str:
    """What a run does for saves / evals when its per-epoch key is 0 (off)."""
    if what == "saves":
        if s.save_steps:
            return f"save_steps: {s.save_steps:g}"
        strategy = _strategy(s.save_strategy)
        return f"save_strategy: {strategy!r}" if strategy else "every epoch end (Axolotl's default save_strategy: 'epoch')"
    if s.eval_steps:
        return f"eval_steps: {s.eval_steps:g}"
    strategy = _strategy(s.eval_strategy)
    return f"eval_strategy: {strategy!r}" if strategy else "none"


def make_plan(
    settings: Settings,
    batches_per_epoch: int,
    max_steps: int,
    *,
    checkpoint_bytes: int | None = None,
    checkpoint_measured: bool = False,
    free_bytes: int | None = None,
    final_bytes: int | None = None,
) -> Plan:
    """The plan for a run of ``batches_per_epoch`` batches per epoch that stops at ``max_steps``.

    Streamed data (``settings.streamed``): Transformers' epoch is the whole run, ``max_steps`` times the
    accumulation in batches, whatever ``batches_per_epoch`` says; stock and patched save and evaluate alike.
    """
    s = settings
    if s.streamed:
        batches_per_epoch = max_steps * s.grad_accum
    shape = schedule.RunShape(batches_per_epoch, s.grad_accum, max_steps)
    stock_saved = _first_step(s, _stock_saves(s, shape))
    patched_saved = _first_step(s, _patched_saves(s, shape))

    # stock: unset and 0 become 4; a negative value reaches Transformers, which then keeps all
    stock_limit: int | None = s.save_total_limit or UPSTREAM_DEFAULT
    if stock_limit is not None and stock_limit < 0:
        stock_limit = None
    lowered = False
    if s.save_total_limit is None:
        planned = len(patched_saved) if patched_saved is not None else UPSTREAM_DEFAULT
        room = None if free_bytes is None else max(0, free_bytes - (final_bytes or 0))  # the final model stays too
        resolved, lowered = resolve_default_limit(planned, checkpoint_bytes, room, s.margin)
        patched_limit: int | None = resolved
    else:
        patched_limit = s.save_total_limit if s.save_total_limit > 0 else None  # 0 (or less) keeps all

    stock = Schedule(stock_saved, _kept(stock_saved, stock_limit), stock_limit, _evals(s, shape, patched=False))
    patched = Schedule(patched_saved, _kept(patched_saved, patched_limit), patched_limit, _evals(s, shape, patched=True))

    requested = list(patched_saved or [])
    run = patched if s.patched else stock
    # an explicit save_total_limit is the user's own choice: only misplaced saves count as lost then
    have = run.saved if s.save_total_limit else run.kept
    have_set = set(have or [])
    lost = [step for step in requested if step not in have_set]

    need = disk.peak_bytes(run.saved, run.limit, checkpoint_bytes, final_bytes)
    short = need is not None and free_bytes is not None and need > free_bytes
    S = shape.steps_per_epoch
    epochs_end_at = max_steps if s.streamed else math.ceil(s.num_epochs * S)
    notes = []
    for key, what in (("saves_per_epoch", "saves"), ("evals_per_epoch", "evals")):
        if getattr(s, key) == 0 and (what == "saves" or s.has_eval):
            notes.append(f"{key}: 0 is off, as in stock Axolotl; {what}: {_fallback(s, what)}")
    if _saves_turned_off(s):
        notes.append(_save_strategy_no_note(s))
    streamed_keys = [
        key
        for key, on in (
            ("saves_per_epoch", s.saves_per_epoch and not _saves_turned_off(s)),
            ("evals_per_epoch", s.evals_per_epoch and s.has_eval),
        )
        if on
    ]
    if s.streamed and streamed_keys:
        notes.append(_streamed_note(streamed_keys))
    if s.max_steps is None and max_steps < epochs_end_at and not s.streamed:
        notes.append(
            f"the last epoch ends at step {epochs_end_at}, the run stops at {max_steps}: Axolotl counts "
            "samples / batch size, one step short when gradient accumulation does not divide the batches per epoch"
        )
    return Plan(
        batches_per_epoch=batches_per_epoch,
        grad_accum=s.grad_accum,
        steps_per_epoch=S,
        num_epochs=s.num_epochs,
        max_steps=max_steps,
        epochs_end_at=epochs_end_at,
        stock=stock,
        patched=patched,
        patched_run=s.patched,
        requested=requested,
        lost=lost,
        checkpoint_bytes=checkpoint_bytes,
        checkpoint_measured=checkpoint_measured,
        free_bytes=free_bytes,
        margin=s.margin,
        limit_lowered_for_disk=lowered,
        notes=notes,
        final_bytes=final_bytes,
        disk_need_bytes=need,
        disk_short=short,
        resume_warning=s.resume_warning,
    )


def relora_restart_steps(end: int, every: int) -> range:
    """The ``global_step`` values below ``end`` at which ReLoRA restarts, every ``every`` steps.

    ``ReLoRACallback.on_step_begin`` (Axolotl's ``monkeypatch/relora.py``, ``relora: true``) restarts,
    and writes ``checkpoint-{global_step}/adapter``, at each ``global_step`` that is a positive
    multiple of ``every`` (``jagged_restart_steps``), before that step's training.
    """
    return range(every, end, every)


def relora_restarts(global_step: int, restart_steps: int) -> int:
    """ReLoRA restarts an uninterrupted run has made when step ``global_step`` ends (its logged ``num_lora_restarts``).

    The restarts before ``global_step`` ends are those at the multiples up to ``global_step - 1``
    (:func:`relora_restart_steps`). Raises ValueError for a ``restart_steps`` below 1.
    """
    if restart_steps < 1:
        raise ValueError(f"jagged_restart_steps must be 1 or more, not {restart_steps}")
    return len(relora_restart_steps(global_step, restart_steps))


def relora_restart_folders(max_steps: int, every: int | None, saved: list[int] | None) -> list[int]:
    """The ``checkpoint-N`` folders (steps N) ReLoRA's restarts write besides the scheduled saves.

    A step's begin sees ``global_step`` 0 to ``max_steps - 1`` (:func:`relora_restart_steps`).
    Transformers' rotation counts those folders as checkpoints, so a ``save_total_limit`` that keeps
    every save must count them too. ``every`` unset or below 1: none.
    """
    if not every or every < 1:
        return []
    scheduled = set(saved or [])
    return [step for step in relora_restart_steps(max_steps, every) if step not in scheduled]


def steps_text(steps: list[int] | None, *, head: int = 6, tail: int = 4) -> str:
    if steps is None:
        return "decided by the metric (save_strategy: best)"
    if not steps:
        return "none"
    if len(steps) <= head + tail + 1:
        body = " ".join(map(str, steps))
    else:
        body = " ".join(map(str, steps[:head])) + " ... " + " ".join(map(str, steps[-tail:]))
    return f"{body} ({len(steps)})"


def _kept_text(sched: Schedule) -> str:
    if sched.saved is not None and sched.kept == sched.saved:
        return f"all {len(sched.saved)}" if sched.saved else "none"
    return steps_text(sched.kept)


def render(plan: Plan, source: str = "") -> str:
    """The human-readable plan (``axolotl-savefix plan``)."""
    epochs = f"{plan.num_epochs:g} epoch{'' if plan.num_epochs == 1 else 's'}"
    which = "patched (the plugin is in the config)" if plan.patched_run else f"stock (add `plugins: [{PLUGIN}]` to fix)"
    lines = [
        f"checkpoint plan{f' for {source}' if source else ''}: this run is {which}",
        f"  {plan.batches_per_epoch} batches per epoch, gradient accumulation {plan.grad_accum}: "
        f"{plan.steps_per_epoch} optimizer steps per epoch; {epochs}; the run stops at step {plan.max_steps}",
    ]
    lines += [f"  note: {note}" for note in plan.notes]
    if plan.resume_warning:
        lines.append(f"  WARNING: {plan.resume_warning}")
    width = max(len(steps_text(plan.stock.saved)), len(steps_text(plan.patched.saved)), 5)
    lines.append(f"  {'':8}{'saves at':<{width}}  keeps")
    for name, sched in (("stock", plan.stock), ("patched", plan.patched)):
        lines.append(f"  {name:<8}{steps_text(sched.saved):<{width}}  {_kept_text(sched)}")
    if plan.stock.evals or plan.patched.evals:
        lines.append(f"  evals   stock {steps_text(plan.stock.evals)}; patched {steps_text(plan.patched.evals)}")
    if plan.checkpoint_bytes:
        how = "measured: allocated on disk" if plan.checkpoint_measured else "estimated"
        kept = plan.patched.kept or []
        disk_line = (
            f"  disk: one checkpoint {disk.human(plan.checkpoint_bytes)} ({how}); patched keeps {len(kept)}: "
            f"{disk.human(plan.checkpoint_bytes * len(kept))}"
        )
        if plan.free_bytes is not None:
            disk_line += f"; {disk.human(plan.free_bytes)} free in output_dir (margin {plan.margin:.0%})"
        lines.append(disk_line)
        if plan.limit_lowered_for_disk:
            lines.append(
                f"  disk: not every scheduled checkpoint fits: keeping the newest {plan.patched.limit}; "
                "set save_total_limit to choose, or free space"
            )
    warning = plan.disk_warning()
    if warning:
        lines.append(f"  DISK SHORT: {warning}")
    if plan.lost:
        lines.append(f"  LOST by this run: {steps_text(plan.lost)} of the {len(plan.requested)} checkpoints asked for")
    elif plan.requested:
        lines.append(f"  every one of the {len(plan.requested)} checkpoints asked for is saved and kept")
    else:
        lines.append("  no checkpoint is asked for: none is saved")
    return "\n".join(lines)


def log_lines(plan: Plan) -> list[str]:
    """The few lines a patched run logs at its start."""
    p = plan.patched
    limit = "all" if p.limit is None or (p.saved is not None and p.limit >= len(p.saved)) else f"the newest {p.limit}"
    lines = [
        f"plan: {plan.steps_per_epoch} steps per epoch, stops at step {plan.max_steps}; "
        f"saves at {steps_text(p.saved)}, keeps {limit}",
    ]
    if p.evals:
        lines.append(f"plan: evaluates at {steps_text(p.evals)}")
    said = (STREAMED, "save_strategy: 'no' saves no checkpoint")  # a run said these at config time
    lines += [f"plan: {note}" for note in plan.notes if not any(line in note for line in said)]
    return lines
